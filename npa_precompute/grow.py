"""Growing a complete tile in place: counts for more k, more materialized weights.

A re-run of ``npa-precompute run`` that asks for k or weights a current tile lacks (same
source files, same dtype, chunk and decoding) adds just those arrays to it, without
rewriting the arrays it has: their files, bytes and mtimes stay as they are. The new
counts are computed from the tile's stored labels (the decoded labels of the same,
unchanged source file), block by block with a halo of the largest new k (one block, the
whole tile, without ``--dask``), exactly as a fresh precompute computes them.

Crash safety: the tile stays complete and readable with its old arrays while it grows.
The new arrays belong to it only once its attrs name them (``params.ks`` for counts,
``stored_weights`` for weights, with ``count_range``), which is the grow's last write,
one atomic file replace. A grow that is interrupted (Ctrl-C, SIGKILL, an error) leaves
arrays that no reader uses, and the next run deletes them and grows the tile again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from npa_precompute._kernels import valid_min_max
from npa_precompute.affinity import affinity_dtype, affinity_maps
from npa_precompute.blockwise import block_grid, run_tasks, set_threads
from npa_precompute.names import counts_name
from npa_precompute.regions import region_attr
from npa_precompute.transforms import WeightTransform, weights_attrs, weights_name

__all__ = ["grow_blocks", "grow_tile"]


def _array(writer, name: str):
    import zarr

    return zarr.open_array(os.path.join(writer.store, "tiles", writer.tile_id, name), mode="r")


def _first_pass(writer, cfg, new_ks, new_weights, range_ks, win, halo, single, threads):
    """One block: counts of the new k from the stored labels (with halo), their ranges, and
    the new weights (``norm`` only when the block is the whole tile)."""
    set_threads(threads)
    r0, r1, c0, c1 = win
    label = _array(writer, "label")
    h, w = label.shape
    rr0, rr1 = max(0, r0 - halo), min(h, r1 + halo)
    cc0, cc1 = max(0, c0 - halo), min(w, c1 + halo)
    lab = np.asarray(label[rr0:rr1, cc0:cc1])
    inner = (slice(r0 - rr0, r1 - rr0), slice(c0 - cc0, c1 - cc0))
    lab_in = np.ascontiguousarray(lab[inner])
    ignore = lab_in == cfg.preset.ignore_index
    counts: dict[int, np.ndarray] = {}
    kernel_s = 0.0
    if new_ks:
        t0 = time.perf_counter()
        aff = affinity_maps(lab, new_ks)
        kernel_s = time.perf_counter() - t0
        for i, k in enumerate(new_ks):
            a = np.ascontiguousarray(aff[i][inner])
            writer.write(f"affinity/{counts_name(k)}", a, win)
            counts[k] = a

    def get(k: int) -> np.ndarray:
        if k not in counts:
            counts[k] = np.ascontiguousarray(
                _array(writer, f"affinity/{counts_name(k)}")[r0:r1, c0:c1]
            )
        return counts[k]

    ranges = {k: tuple(int(v) for v in valid_min_max(get(k), ignore)) for k in range_ks}
    dtype = np.dtype(cfg.weight_dtype)
    for k, t in new_weights:
        if t.kind != "norm" or single:
            w = t.apply(get(k), ignore, dtype=dtype)
            writer.write(f"weights/{weights_name(k, t)}", w, win)
    return {"kernel_seconds": kernel_s, "ranges": ranges}


def _norm_pass(writer, cfg, norms, ranges, win, threads) -> None:
    """One block of new ``norm`` weights from the stored counts and the tile's range."""
    set_threads(threads)
    r0, r1, c0, c1 = win
    ignore = _array(writer, "label")[r0:r1, c0:c1] == cfg.preset.ignore_index
    dtype = np.dtype(cfg.weight_dtype)
    for k, t in norms:
        a = _array(writer, f"affinity/{counts_name(k)}")[r0:r1, c0:c1]
        w = t.apply(a, ignore, dtype=dtype, value_range=ranges[k])
        writer.write(f"weights/{weights_name(k, t)}", w, win)


def grow_blocks(shape: tuple[int, int], block: int | None, new_weights) -> int:
    """Tasks a grow needs: one per block, twice with new ``norm`` weights over several blocks."""
    n = len(block_grid(shape, block or max(shape)))
    return 2 * n if n > 1 and any(t.kind == "norm" for _, t in new_weights) else n


def grow_tile(
    store: str,
    tile_id: str,
    cfg,
    new_ks: Sequence[int],
    new_weights: Sequence[tuple[int, WeightTransform]],
    *,
    client=None,
    block: int | None = None,
    threads: int | None = None,
    progress: Callable[[], None] | None = None,
    guard=None,
) -> dict:
    """Add counts for ``new_ks`` and the weights arrays ``new_weights`` to a complete tile.

    Parameters
    ----------
    store : store folder
    tile_id : a complete tile whose source files are unchanged
    cfg : :class:`~npa_precompute.pipeline.PrecomputeConfig` of the grown tile: its
        ``params()`` (the union of the tile's k and transformations and the run's) are
        recorded
    new_ks : k whose counts the tile lacks
    new_weights : (k, transformation) of the weights arrays to materialize
    client : ``distributed.Client`` or None (in this process)
    block : block side (``--dask``), None for the whole tile in one block
    threads : numba threads per task (None: leave as is)
    progress : called after each block's task
    guard : :class:`~npa_precompute.store.LockGuard` of the run, checked before each write

    Returns
    -------
    dict ``{"tile", "pixels", "kernel_seconds"}``
    """
    from npa_precompute.store import TileWriter, open_store, stored_weights, tile_ks, tile_meta

    root = open_store(store, mode="r+")
    group = root["tiles"][tile_id]
    meta = tile_meta(group)
    shape = tuple(int(s) for s in group["label"].shape)
    new_ks = [int(k) for k in new_ks]
    new_weights = list(new_weights)
    recorded = dict(meta.count_range or {})
    old_ks = sorted(tile_ks(group, meta))
    range_ks = new_ks + [k for k in old_ks if k not in recorded]
    writer = TileWriter.grow(root, tile_id, chunk=cfg.chunk, shard=block, guard=guard)
    if new_ks:
        aff_dtype = affinity_dtype(max(new_ks))
    for k in new_ks:
        writer.add(
            f"affinity/{counts_name(k)}", shape=shape, dtype=aff_dtype, attrs={"k": region_attr(k)}
        )
    for k, t in new_weights:
        writer.add(f"weights/{weights_name(k, t)}", shape=shape, dtype=cfg.weight_dtype,
                   fill_value=0.0, attrs=weights_attrs(k, t))  # fmt: skip
    blocks = block_grid(shape, block or max(shape))
    single = len(blocks) == 1
    halo = max(new_ks, default=0)
    calls = [(writer, cfg, new_ks, new_weights, range_ks, b, halo, single, threads)
             for b in blocks]  # fmt: skip
    kernel_s = 0.0
    lo: dict[int, int] = {}
    hi: dict[int, int] = dict.fromkeys(range_ks, -1)
    for r in run_tasks(client, _first_pass, calls, progress):
        kernel_s += r["kernel_seconds"]
        for k, (blo, bhi) in r["ranges"].items():
            if bhi >= 0:
                lo[k] = min(lo.get(k, blo), blo)
                hi[k] = max(hi[k], bhi)
    ranges = dict(recorded)
    ranges.update({k: (lo.get(k, 0), hi[k]) for k in range_ks})
    norms = [(k, t) for k, t in new_weights if t.kind == "norm"]
    if norms and not single:
        tile_ranges = {k: tuple(ranges[k]) for k, _ in norms}
        calls2 = [(writer, cfg, norms, tile_ranges, b, threads) for b in blocks]
        for _ in run_tasks(client, _norm_pass, calls2, progress):
            pass
    stored = set(stored_weights(group, meta)) | {weights_name(k, t) for k, t in new_weights}
    writer.commit(replace(meta, params=cfg.params(), count_range=ranges,
                          stored_weights=tuple(sorted(stored))))  # fmt: skip
    return {"tile": tile_id, "pixels": int(shape[0] * shape[1]), "kernel_seconds": kernel_s}
