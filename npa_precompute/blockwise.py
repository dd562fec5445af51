"""Blockwise precompute of rasters larger than memory, on Dask.

The affinity at a pixel (Eq. 1 of Feng et al. 2020) depends only on the labels in
its ``(2k + 1)``-square window, and the replicate padding applies only at the
borders of the whole raster. So a raster can be cut into blocks, each block read
with a halo of ``k_max`` pixels on every side (clipped at the raster border),
and the same numba kernel run per block: the halo makes the block's own pixels
exact, and at the raster border the kernel's edge replicate padding is exactly
the raster's. This is ``dask.array.map_overlap(depth=k_max, boundary="nearest")``
written as one task per block, which also works when a block is smaller than
``k_max`` and lets each task read its window straight from the file. Results are
bit-identical to the in-memory path (:func:`npa_precompute.pipeline.process_tile`).

Each block's task reads its window (tifffile's zarr interface decodes only the
TIFF tiles it touches), decodes the labels with the preset, computes every k,
applies the weight transformations and writes the block into the store. The
store's arrays are sharded in blocks, so each task writes whole shards of its own
and no shard has two writers. ``norm`` (Eq. 2) needs the tile's min and max
count: when it is asked for, a second pass over the blocks writes it from the
stored counts. The tile is marked complete after its last block.

Peak memory per worker is a few block-sized arrays: the window with halo,
its affinity maps, one weights array, compression buffers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from npa_precompute import defaults
from npa_precompute._kernels import valid_min_max
from npa_precompute.affinity import affinity_maps
from npa_precompute.errors import ParameterError
from npa_precompute.imagestats import band_sums_of, stats_from_sums
from npa_precompute.names import counts_name
from npa_precompute.readers import InputError, Raster
from npa_precompute.regions import region_attr
from npa_precompute.transforms import weights_attrs, weights_name

__all__ = [
    "DaskOptions",
    "block_grid",
    "check_block",
    "check_memory_limit",
    "count_blocks",
    "dask_client",
    "process_tile_blockwise",
    "worker_memory_needed",
]


#: How long to wait for a scheduler given by address before giving up.
CONNECT_TIMEOUT = "20s"


@dataclass(frozen=True)
class DaskOptions:
    """How a blockwise run is cut and where it runs.

    Attributes
    ----------
    block : int
        Block side in pixels (default 2048): one task per block, and the shard side
        of the store's arrays. Must be a multiple of the store's chunk side.
    scheduler : str or None
        None (default): start a ``dask.distributed.LocalCluster``; an address such as
        ``tcp://10.0.0.5:8786``: join that cluster (its workers must see the input
        files and the store at the same paths); ``"synchronous"``: run the blocks one
        after another in this process, without Dask.
    workers : int
        Worker processes of the local cluster (default 1).
    memory_limit : str, int or None
        Memory limit per local worker, e.g. ``"2GB"`` or ``"1.5 GiB"`` (Dask's byte
        units) or bytes; None lets Dask split the machine's memory between the workers.
        A limit below what a block needs (:func:`worker_memory_needed`) is refused:
        Dask would pause the worker for good instead of failing.

    Raises
    ------
    ValueError
        ``block`` < 16, ``workers`` < 1, or a ``memory_limit`` that is not a positive size.
    """

    block: int = defaults.BLOCK
    scheduler: str | None = None
    workers: int = 1
    memory_limit: str | int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.block, int) or self.block < 16:
            raise ParameterError("block", f"must be an integer >= 16, got {self.block!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ParameterError("workers", f"must be an integer >= 1, got {self.workers!r}")
        if self.memory_limit is not None:
            self.memory_limit_bytes  # noqa: B018 - validates

    @property
    def memory_limit_bytes(self) -> int | None:
        """``memory_limit`` in bytes (None without a limit)."""
        if self.memory_limit is None:
            return None
        value = self.memory_limit
        if isinstance(value, str):
            from dask.utils import parse_bytes

            try:
                value = parse_bytes(value)
            except ValueError:
                value = None
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ParameterError(
                "memory_limit",
                f"must be a positive size such as '2GB' or '1.5 GiB', got {self.memory_limit!r}",
            )
        return value


#: Resident memory of a worker process before its first block (Python, numpy, numba's
#: compiled kernels, zarr, distributed), measured at 200-250 MB on Linux.
WORKER_BASE_BYTES = 250 * 2**20


def worker_memory_needed(block: int, ks, n_transforms: int, image_bands: int = 0) -> int:
    """A generous estimate of one worker's peak memory for one block, in bytes.

    The window with its halo (``(block + 2 max k)²`` pixels) holds the raw RGB label,
    the decoded labels and their temporaries and every k's counts; the block itself one
    weights array at a time, the image, and compression buffers; plus
    :data:`WORKER_BASE_BYTES`. Measured peaks stay below it (2048-pixel blocks, 4 k, one
    transform: ~120 MB over the base, estimated 150 MB).
    """
    from npa_precompute.affinity import affinity_dtype

    ks = tuple(ks)
    window = (block + 2 * max(ks)) ** 2
    count_bytes = affinity_dtype(max(ks)).itemsize
    per_window = 3 + 4 + 1 + 4 + len(ks) * count_bytes
    per_block = count_bytes + 4 + 4 * min(n_transforms, 1) + image_bands + 4
    return WORKER_BASE_BYTES + window * per_window + block * block * per_block


def block_grid(shape: tuple[int, int], block: int) -> list[tuple[int, int, int, int]]:
    """Blocks ``(r0, r1, c0, c1)`` covering an ``(H, W)`` raster, row-major, last ones clipped."""
    h, w = shape
    return [
        (r, min(r + block, h), c, min(c + block, w))
        for r in range(0, h, block)
        for c in range(0, w, block)
    ]


@contextlib.contextmanager
def dask_client(opts: DaskOptions) -> Iterator[object | None]:
    """A ``distributed.Client`` for ``opts`` (None for ``scheduler="synchronous"``).

    Raises
    ------
    ImportError
        dask.distributed is not installed (``pip install 'npaloss[dask]'``).
    OSError
        The scheduler at ``opts.scheduler`` cannot be reached.
    """
    if opts.scheduler == "synchronous":
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "blockwise precompute on Dask needs dask.distributed: pip install 'npaloss[dask]'"
        ) from exc
    if opts.scheduler:
        client = _connect(Client, opts.scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    import dask

    # Dask's nannies set MALLOC_TRIM_THRESHOLD_=65536 in their workers, which turns off
    # glibc's adaptive mmap threshold: every block-sized buffer is then mmapped and page-
    # faulted anew, and compressing/writing a block costs 2.2x the CPU time (measured).
    # Each task's memory is a few same-sized blocks, so glibc's default is kept here.
    # Workers ignore Ctrl-C (a SIG_IGN disposition survives the spawn): the terminal sends
    # SIGINT to the whole process group, and this process stops the cluster itself.
    # Task errors reach this process as exceptions with clear messages, so the workers'
    # own error logs (a traceback per failed task) are silenced.
    config = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    main_thread = threading.current_thread() is threading.main_thread()
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        with dask.config.set(config):
            cluster = LocalCluster(
                n_workers=opts.workers,
                threads_per_worker=1,
                processes=True,
                memory_limit=opts.memory_limit_bytes or "auto",
                dashboard_address=":0",  # a free port: None does not disable it (dask#8136)
                silence_logs=logging.CRITICAL,
            )
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, old_int)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def _connect(client_cls, address: str):
    """``Client(address)``, given up after :data:`CONNECT_TIMEOUT` whatever answers there.

    A port that accepts connections but does not speak Dask's protocol (a dashboard, a
    web server) can keep ``Client`` waiting past its own timeout, so the connection is
    made in a daemon thread and abandoned when it takes too long.
    """
    from dask.utils import parse_timedelta

    result: dict = {}

    def target() -> None:
        try:
            result["client"] = client_cls(address, timeout=CONNECT_TIMEOUT)
        except BaseException as exc:  # reported below, in the calling thread
            result["error"] = exc

    thread = threading.Thread(target=target, name="npaloss-dask-connect", daemon=True)
    thread.start()
    thread.join(parse_timedelta(CONNECT_TIMEOUT) + 5)
    if "client" in result:
        return result["client"]
    why = result.get("error")
    why = f"{type(why).__name__}: {why}" if why else f"no answer within {CONNECT_TIMEOUT}"
    raise OSError(
        f"cannot reach the Dask scheduler at {address} ({why}); check --scheduler: the "
        "scheduler's address, e.g. tcp://host:8786, not its dashboard"
    )


def run_tasks(client, fn: Callable, calls: Sequence[tuple], progress: Callable[[], None] | None):
    """Run ``fn(*args)`` for each args of ``calls``, in this process or on the cluster."""
    if client is None:
        for args in calls:
            yield fn(*args)
            if progress:
                progress()
        return
    from distributed import as_completed

    futures = [client.submit(fn, *args, pure=False) for args in calls]
    try:
        for fut in as_completed(futures):
            yield fut.result()
            if progress:
                progress()
    except BaseException:
        client.cancel(futures)
        raise


def set_threads(threads: int | None) -> None:
    """Set numba's thread count to ``threads`` (None or 0: leave it as it is)."""
    if threads:
        import numba

        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))


def _read(writer, name: str, window: tuple):
    """A window of the tile's array ``name``, as written so far."""
    import zarr

    r0, r1, c0, c1 = window
    path = os.path.join(writer.store, "tiles", writer.tile_id, name)
    return zarr.open_array(path, mode="r")[r0:r1, c0:c1]


def _first_pass(writer, cfg, label: Raster, image, win, kmax, threads) -> dict:
    """One block: read with halo, decode, Eq. 1 for every k, write label/image/counts/weights."""
    from npa_precompute.presets import LabelError

    set_threads(threads)
    r0, r1, c0, c1 = win
    h, w = label.shape[:2]
    rr0, rr1, cc0, cc1 = max(0, r0 - kmax), min(h, r1 + kmax), max(0, c0 - kmax), min(w, c1 + kmax)
    raw = label.read(slice(rr0, rr1), slice(cc0, cc1))
    try:
        lab = cfg.preset.decode(
            raw,
            source=f"{label.path} (rows {rr0}:{rr1}, columns {cc0}:{cc1})",
            unknown_colors=cfg.unknown_colors,
        )
    except LabelError as exc:
        raise InputError(str(exc)) from None
    t0 = time.perf_counter()
    aff = affinity_maps(lab, cfg.ks)
    kernel_s = time.perf_counter() - t0
    inner = (slice(r0 - rr0, r1 - rr0), slice(c0 - cc0, c1 - cc0))
    lab = np.ascontiguousarray(lab[inner])
    ignore = lab == cfg.preset.ignore_index
    dtype = np.dtype(cfg.weight_dtype)
    writer.write("label", lab, win)
    out = {
        "kernel_seconds": kernel_s,
        "class_pixels": np.bincount(lab[~ignore].ravel(), minlength=cfg.preset.num_classes),
        "ignored": int(ignore.sum()),
        "ranges": [],
    }
    if image is not None:
        img = image.read(slice(r0, r1), slice(c0, c1))
        writer.write("image", img, win)
        out["band_sums"], out["band_squares"] = band_sums_of(img)
    stored = cfg.stored_pairs()
    for i, k in enumerate(cfg.ks):
        a = np.ascontiguousarray(aff[i][inner])
        writer.write(f"affinity/{counts_name(k)}", a, win)
        lo, hi = valid_min_max(a, ignore)
        out["ranges"].append((int(lo), int(hi)))
        for t in cfg.transforms:
            if t.kind != "norm" and (k, t) in stored:
                name = f"weights/{weights_name(k, t)}"
                writer.write(name, t.apply(a, ignore, dtype=dtype), win)
    return out


def _norm_pass(writer, cfg, win, ranges, threads) -> None:
    """One block of ``norm`` weights (Eq. 2) from the stored counts and the tile's range."""
    set_threads(threads)
    ignore = _read(writer, "label", win) == cfg.preset.ignore_index
    dtype = np.dtype(cfg.weight_dtype)
    stored = cfg.stored_pairs()
    for i, k in enumerate(cfg.ks):
        norms = [t for t in cfg.transforms if t.kind == "norm" and (k, t) in stored]
        if not norms:
            continue
        a = _read(writer, f"affinity/{counts_name(k)}", win)
        for t in norms:
            w = t.apply(a, ignore, dtype=dtype, value_range=ranges[i])
            writer.write(f"weights/{weights_name(k, t)}", w, win)


def check_memory_limit(opts: DaskOptions, cfg, image_bands: int = 0) -> None:
    """Refuse a local worker memory limit below :func:`worker_memory_needed`.

    Dask pauses a worker whose memory passes ``distributed.worker.memory.pause`` (80 %
    by default) of its limit and waits for memory to be freed, which never happens
    while its only task holds the block: the run would stall without a word.

    Raises
    ------
    ValueError
        The limit is too low (the message gives the estimate and what to change).
    """
    limit = opts.memory_limit_bytes
    if limit is None or opts.scheduler is not None:
        return
    import dask

    pause = dask.config.get("distributed.worker.memory.pause", 0.8) or 1.0
    need = worker_memory_needed(opts.block, cfg.ks, len(cfg.transforms), image_bands)
    if limit * pause < need:
        raise ParameterError(
            "memory_limit",
            f"{opts.memory_limit} is too low for {opts.block}-pixel blocks with "
            f"k up to {max(cfg.ks)}: a worker needs about {need / 1e6:.0f} MB and Dask pauses "
            f"it at {pause:.0%} of its limit, so give at least {need / pause / 1e6:.0f} MB "
            "(--memory-limit) or use smaller blocks (--block)",
        )


def check_block(block: int, chunk: int) -> None:
    """Refuse a block side that is not a multiple of the chunk side.

    Raises
    ------
    ParameterError
        ``block`` not a multiple of ``chunk`` (each block's task writes whole shards).
    """
    if block % chunk:
        why = (f"`block` ({block}) must be a multiple of `chunk` ({chunk}): each block's "
               "task writes whole shards of the store")  # fmt: skip
        raise ParameterError("block", why, message=why)


def count_blocks(label: Raster, cfg, block: int) -> int:
    """Tasks a tile needs: one per block, twice when a ``norm`` transformation is asked for."""
    n = len(block_grid(label.shape[:2], block))
    return 2 * n if any(t.kind == "norm" for _, t in cfg.stored_pairs()) else n


def process_tile_blockwise(
    store: str,
    src,
    cfg,
    source: dict,
    *,
    client,
    opts: DaskOptions,
    label: Raster | None = None,
    image: Raster | None = None,
    progress: Callable[[], None] | None = None,
    guard=None,
) -> dict:
    """Compute and write one tile block by block; returns {"tile", "pixels", "kernel_seconds"}.

    Parameters
    ----------
    store : store folder (already created, see :func:`npa_precompute.store.create_or_check_store`)
    src : :class:`npa_precompute.readers.TileSource`
    cfg : :class:`npa_precompute.pipeline.PrecomputeConfig`
    source : the tile's source attrs (paths and sha256)
    client : ``distributed.Client`` or None (in this process, block after block)
    opts : :class:`DaskOptions`; ``opts.block`` must be a multiple of ``cfg.chunk``
    label, image : the label and image opened as :class:`~npa_precompute.readers.Raster`
        (opened here if None)
    progress : called after each block's task
    guard : :class:`~npa_precompute.store.LockGuard` of the run, checked before each write

    Raises
    ------
    InputError
        Unreadable files, label content the preset refuses (the message names the
        file and the window), or an image whose size differs from the label's.
    ValueError
        ``opts.block`` not a multiple of ``cfg.chunk``.
    """
    from npa_precompute.affinity import affinity_dtype
    from npa_precompute.geo import tile_georef
    from npa_precompute.store import TileWriter, build_tile_meta, open_store

    check_block(opts.block, cfg.chunk)
    label = label if label is not None else Raster(src.label, role="label")
    if image is None and src.image is not None:
        image = Raster(src.image, role="image")
    if image is not None and image.shape[:2] != label.shape[:2]:
        raise InputError(
            f"tile {src.tile_id!r}: image {src.image} has shape {image.shape[:2]} but label "
            f"{src.label} has shape {label.shape[:2]}"
        )
    shape = label.shape[:2]
    kmax = max(cfg.ks)
    preset = cfg.preset
    tile = {
        "tile_id": src.tile_id,
        "shape": shape,
        "source": source,
        "params": cfg.params(),
        "georef": tile_georef(src.label, src.image, tile_id=src.tile_id),
        "blockwise": {"block": opts.block, "halo": kmax},
    }
    writer = TileWriter.create(open_store(store, mode="r+"), src.tile_id,
                               build_tile_meta(**tile), chunk=cfg.chunk, shard=opts.block,
                               guard=guard)  # fmt: skip
    writer.add("label", shape=shape, dtype=preset.label_dtype, fill_value=preset.ignore_index)
    if image is not None:
        writer.add("image", shape=(*shape, image.shape[2]), dtype=image.dtype)
    aff_dtype = affinity_dtype(kmax)
    for k in cfg.ks:
        writer.add(
            f"affinity/{counts_name(k)}", shape=shape, dtype=aff_dtype, attrs={"k": region_attr(k)}
        )
    for k, t in cfg.stored_pairs():
        writer.add(f"weights/{weights_name(k, t)}", shape=shape, dtype=cfg.weight_dtype,
                   fill_value=0.0, attrs=weights_attrs(k, t))  # fmt: skip
    threads = max(1, (os.cpu_count() or 1) // opts.workers) if opts.scheduler is None else None
    blocks = block_grid(shape, opts.block)
    calls = [(writer, cfg, label, image, b, kmax, threads) for b in blocks]
    first = _add_first_passes(run_tasks(client, _first_pass, calls, progress), cfg)
    ranges = first["ranges"]
    if any(t.kind == "norm" for _, t in cfg.stored_pairs()):
        calls2 = [(writer, cfg, b, ranges, threads) for b in blocks]
        for _ in run_tasks(client, _norm_pass, calls2, progress):
            pass
    n = shape[0] * shape[1]
    sums = first["band_sums"]
    final = build_tile_meta(
        **tile,
        class_pixels=first["class_pixels"],
        ignored=first["ignored"],
        count_range=dict(zip(cfg.ks, ranges, strict=True)),
        stored_weights=[weights_name(k, t) for k, t in cfg.stored_pairs()],
        image_stats=None if sums is None else stats_from_sums(*sums, n),
    )
    writer.commit(final)
    return {"tile": src.tile_id, "pixels": int(n), "kernel_seconds": first["kernel_seconds"]}


def _add_first_passes(results, cfg) -> dict:
    """The tile's totals from its blocks' :func:`_first_pass` results: ``class_pixels``,
    ``ignored``, ``kernel_seconds``, ``ranges`` [(min, max) per k; (0, -1) when every pixel
    is ignored] and ``band_sums`` ((sums, squares) of the image, None without image)."""
    n_classes = cfg.preset.num_classes
    class_pixels = np.zeros(n_classes, dtype=np.int64)
    ignored = 0
    kernel_s = 0.0
    lo = [None] * len(cfg.ks)
    hi = [-1] * len(cfg.ks)
    sums = squares = None
    for r in results:
        class_pixels += r["class_pixels"][:n_classes]
        ignored += r["ignored"]
        kernel_s += r["kernel_seconds"]
        for i, (blo, bhi) in enumerate(r["ranges"]):
            if bhi >= 0:
                lo[i] = blo if lo[i] is None else min(lo[i], blo)
                hi[i] = max(hi[i], bhi)
        if "band_sums" in r:
            if sums is None:
                sums, squares = r["band_sums"].copy(), r["band_squares"].copy()
            else:
                sums += r["band_sums"]
                squares += r["band_squares"]
    return {
        "class_pixels": class_pixels,
        "ignored": ignored,
        "kernel_seconds": kernel_s,
        "ranges": [(0 if a is None else a, b) for a, b in zip(lo, hi, strict=True)],
        "band_sums": None if sums is None else (sums, squares),
    }
