"""Batch precompute: labels (and images) -> affinity maps -> weights -> the zarr store.

:func:`run_precompute` is what ``npa-precompute run`` calls. Tiles are processed
whole (the edge padding of Eq. 1 happens at tile borders, as in the paper), one
tile per worker process, each worker writing only its own tile's arrays.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from npa_precompute import defaults
from npa_precompute._kernels import count_ranges
from npa_precompute._version import __version__
from npa_precompute._workers import in_worker, init_worker
from npa_precompute.affinity import affinity_maps
from npa_precompute.blockwise import DaskOptions, check_block
from npa_precompute.errors import ParameterError
from npa_precompute.geo import tile_georef
from npa_precompute.imagestats import image_stats
from npa_precompute.params import parse_ks
from npa_precompute.physical import resolve_k_metres, resolve_k_mm
from npa_precompute.presets import Preset, get_preset
from npa_precompute.readers import (
    InputError,
    Raster,
    TileSource,
    discover_tiles,
    file_sha256,
    read_image,
    read_label,
)
from npa_precompute.regions import compact_region, format_region, parse_regions, region_attr
from npa_precompute.store import (
    LOCK_NAME,
    SCHEMA_VERSION,
    LockGuard,
    StoreError,
    StoreInfo,
    StoreLock,
    TileMeta,
    build_tile_meta,
    check_out,
    consolidate_store,
    create_or_check_store,
    discard_incomplete_tile,
    drop_consolidated,
    is_consolidated,
    list_tiles,
    open_store,
    stored_weights,
    tile_meta,
    write_tile,
)
from npa_precompute.transforms import (
    WeightRangeError,
    WeightTransform,
    check_weight_range,
    parse_transform,
    weights_attrs,
    weights_name,
)
from npa_precompute.volumes import read_volume, volume_run
from npa_precompute.warmup import compile_kernels

__all__ = ["PrecomputeConfig", "RunSummary", "process_tile", "run_precompute"]


@dataclass(frozen=True)
class PrecomputeConfig:
    """Parameters of one precompute run; ``params()`` is what decides if a tile is current.

    Checks itself when made (as :class:`npa_train.config.TrainConfig` does), so every
    path that builds one (:func:`run_precompute`, a grow's union of a tile's and a run's
    parameters) holds valid values.

    Attributes
    ----------
    preset : Preset
    ks : tuple of int or of region tuples
        Search regions k (Eq. 1); anything :func:`~npa_precompute.params.parse_ks` takes:
        ints, and regions with one k per spatial axis (``(2, 14, 14)``, ``"4x8"``) whose
        length must match the tiles' (2, or 3 for volumes). An isotropic region is kept
        as its int k (:func:`~npa_precompute.regions.compact_region`).
    transforms : tuple of WeightTransform
        Weight transformations; specs such as ``"log10:L=0.5"`` are parsed, duplicates
        dropped.
    weight_dtype : {"float32", "float16"}
    unknown_colors : {"error", "ignore"}
    chunk : int, >= 16
    store_weights : bool or tuple of str
        Weights arrays to materialize: True every k x transform, False none (counts
        only, the weights are derived when read), or a tuple of weights names.

    Raises
    ------
    ParameterError
        A bad value, naming its argument (``ks`` as ``k``, ``transforms``,
        ``weight_dtype``, ``unknown_colors``, ``chunk``).
    WeightRangeError
        A (k, transformation, dtype) whose weights would overflow the dtype.
    """

    preset: Preset
    ks: tuple[int | tuple[int, ...], ...] = defaults.KS
    transforms: tuple[WeightTransform, ...] = (parse_transform(defaults.TRANSFORMS[0]),)
    weight_dtype: str = defaults.WEIGHT_DTYPE
    unknown_colors: str = defaults.UNKNOWN_COLORS
    chunk: int = defaults.CHUNK
    store_weights: bool | tuple[str, ...] = True
    #: the physical radii the ks were resolved from (:func:`npa_precompute.physical.
    #: resolve_k_metres`), recorded in the tiles' params as ``k_physical``; None: k given
    k_physical: dict | None = None
    #: the tiles are (D, H, W) label volumes (:mod:`npa_precompute.volumes`): windows of
    #: (2k + 1)**3 voxels; recorded in the params as ``volume: true`` (absent for 2-D)
    volume: bool = False

    def __post_init__(self) -> None:
        ks = tuple(dict.fromkeys(compact_region(r) for r in parse_regions(self.ks, self.ndim)))
        object.__setattr__(self, "ks", ks)
        transforms = self.transforms
        if isinstance(transforms, (str, WeightTransform)):
            transforms = [transforms]
        try:
            parsed = tuple(dict.fromkeys(
                t if isinstance(t, WeightTransform) else parse_transform(t) for t in transforms
            ))  # fmt: skip
        except WeightRangeError:
            check_weight_range(ks, transforms, self.weight_dtype, ndim=self.ndim)  # the limit
            raise
        except ValueError as exc:
            raise ParameterError("transforms", str(exc), message=str(exc)) from None
        if not parsed:
            raise ParameterError("transforms", "must name at least one weight transformation")
        object.__setattr__(self, "transforms", parsed)
        if self.weight_dtype not in ("float32", "float16"):
            raise ParameterError(
                "weight_dtype", f"must be 'float32' or 'float16', got {self.weight_dtype!r}"
            )
        if self.unknown_colors not in ("error", "ignore"):
            raise ParameterError(
                "unknown_colors", f"must be 'error' or 'ignore', got {self.unknown_colors!r}"
            )
        if not isinstance(self.chunk, int) or isinstance(self.chunk, bool) or self.chunk < 16:
            raise ParameterError("chunk", f"must be an integer >= 16, got {self.chunk!r}")
        check_weight_range(ks, parsed, self.weight_dtype, ndim=self.ndim)

    @property
    def ndim(self) -> int:
        """Spatial axes of the tiles: 3 for volumes, else 2."""
        return 3 if self.volume else 2

    def stored_pairs(self) -> list[tuple[int, WeightTransform]]:
        """(k, transformation) of the weights arrays a tile written with this config holds."""
        pairs = [(k, t) for k in self.ks for t in self.transforms]
        if self.store_weights is True:
            return pairs
        names = set(self.store_weights or ())
        return [(k, t) for k, t in pairs if weights_name(k, t) in names]

    def params(self) -> dict:
        params = {
            "ks": [region_attr(k) for k in self.ks],
            "transforms": [t.spec for t in self.transforms],
            "weight_dtype": self.weight_dtype,
            "unknown_colors": self.unknown_colors,
            "chunk": self.chunk,
            "preset": self.preset.to_attrs(),
        }
        if self.k_physical is not None:
            params["k_physical"] = self.k_physical
        if self.volume:
            params["volume"] = True
        return params


@dataclass
class RunSummary:
    """What a run did: tiles written and skipped, pixels, time.

    ``kernel_seconds`` is the affinity kernel's time summed over tiles, compilation
    excluded; ``compile_seconds`` is the time spent compiling the numba kernels (the
    first run on a machine only: later runs load them from numba's cache).
    """

    store: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    grown: list[str] = field(default_factory=list)
    pixels: int = 0
    seconds: float = 0.0
    kernel_seconds: float = 0.0
    compile_seconds: float = 0.0
    compile_reason: str = ""

    @property
    def mpix_per_s(self) -> float:
        """Throughput, the one-off compilation left out."""
        seconds = self.seconds - self.compile_seconds
        return self.pixels / seconds / 1e6 if seconds > 0 else float("nan")

    def add(self, kind: str, result: dict) -> None:
        """Count one tile's ``result`` (``tile``, ``pixels``, ``kernel_seconds``) as
        ``kind``: ``"written"`` or ``"grown"``."""
        getattr(self, kind).append(result["tile"])
        self.pixels += result["pixels"]
        self.kernel_seconds += result["kernel_seconds"]

    def text(self) -> str:
        grown = f", {len(self.grown)} grown in place" if self.grown else ""
        compiled = (
            f"; numba kernels compiled in {self.compile_seconds:.1f} s: {self.compile_reason}"
            if self.compile_seconds
            else ""
        )
        return (
            f"{len(self.written)} tile(s) written{grown}, {len(self.skipped)} up to date and "
            "skipped; "
            f"{self.pixels / 1e6:.2f} Mpix in {self.seconds:.1f} s "
            f"({self.mpix_per_s:.1f} Mpix/s; affinity kernel {self.kernel_seconds:.1f} s summed "
            f"over tiles{compiled}) -> "
            f"{self.store}"
        )


def _source_attrs(src: TileSource) -> dict:
    return {
        "label_path": str(src.label),
        "label_sha256": file_sha256(src.label),
        "image_path": str(src.image) if src.image else None,
        "image_sha256": file_sha256(src.image) if src.image else None,
    }


def process_tile(store: str, src: TileSource, cfg: PrecomputeConfig, source: dict,
                 guard: LockGuard | None = None) -> dict:  # fmt: skip
    """Compute and write one tile; returns {"tile", "pixels", "kernel_seconds"}.

    ``guard``, the run's :class:`~npa_precompute.store.LockGuard`, is checked before each
    write (a worker whose run has ended writes nothing).

    Raises
    ------
    InputError
        The label or image cannot be read or decoded, their shapes differ, their GeoTIFF
        tags are malformed, or they are georeferenced differently.
    """
    from npa_precompute.presets import LabelError

    vol = read_volume(src.label) if cfg.volume else None
    raw = vol.labels if vol is not None else read_label(src.label)
    try:
        label = cfg.preset.decode(raw, source=str(src.label), unknown_colors=cfg.unknown_colors,
                                  volume=cfg.volume)  # fmt: skip
    except LabelError as exc:
        raise InputError(str(exc)) from None
    image = None
    stats = {}
    if src.image is not None:
        image = read_image(src.image)
        if image.shape[:2] != label.shape:
            raise InputError(
                f"tile {src.tile_id!r}: image {src.image} has shape {image.shape[:2]} but label "
                f"{src.label} has shape {label.shape}"
            )
        stats = image_stats(image)
    georef = None if cfg.volume else tile_georef(src.label, src.image, tile_id=src.tile_id)
    t0 = time.perf_counter()
    aff = affinity_maps(label, cfg.ks)
    kernel_s = time.perf_counter() - t0
    ignore = label == cfg.preset.ignore_index
    dtype = np.dtype(cfg.weight_dtype)
    minmax = np.empty((len(cfg.ks), 2), dtype=np.int64)
    rows = (len(cfg.ks), -1, label.shape[-1])  # the kernel walks rows: a volume's D * H
    count_ranges(aff.reshape(rows), ignore.reshape(rows[1:]), minmax)  # min/max per k (Eq. 2)
    ranges = {k: (int(minmax[i, 0]), int(minmax[i, 1])) for i, k in enumerate(cfg.ks)}
    stored = cfg.stored_pairs()

    def weights() -> Iterable[tuple[str, np.ndarray, dict]]:
        for i, k in enumerate(cfg.ks):
            for t in cfg.transforms:
                if (k, t) in stored:
                    w = t.apply(aff[i], ignore, dtype=dtype, value_range=ranges[k])
                    yield weights_name(k, t), w, weights_attrs(k, t)

    meta = build_tile_meta(
        tile_id=src.tile_id,
        shape=label.shape,
        source=source,
        params=cfg.params(),
        georef=georef,
        class_pixels=np.bincount(label[~ignore].ravel(), minlength=cfg.preset.num_classes),
        ignored=int(ignore.sum()),
        count_range=ranges,
        stored_weights=[weights_name(k, t) for k, t in stored],
        image_stats=stats or None,
        spacing=None if vol is None else vol.attrs(),
    )
    root = open_store(store, mode="r+")
    write_tile(
        root,
        src.tile_id,
        label=label,
        ignore_index=cfg.preset.ignore_index,
        image=image,
        affinity={k: aff[i] for i, k in enumerate(cfg.ks)},
        weights=weights(),
        attrs=meta,
        chunk=cfg.chunk,
        guard=guard,
    )
    return {"tile": src.tile_id, "pixels": int(label.size), "kernel_seconds": kernel_s}


def _grow_job(store: str, tile_id: str, cfg, new_ks, new_weights, guard=None) -> dict:
    from npa_precompute.grow import grow_tile

    return grow_tile(store, tile_id, cfg, new_ks, new_weights, guard=guard)


def _remove_store(path: Path, *, keep_folder: bool) -> None:
    import shutil

    if keep_folder:
        for child in path.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _open_rasters(
    sources: Sequence[TileSource], cfg, opts: DaskOptions
) -> dict[str, tuple[Raster, Raster | None]]:
    """Before any store is touched: open every tile's label and image for window reads,
    warn about inputs read whole, refuse a too-low memory limit."""
    from npa_precompute.blockwise import check_memory_limit

    rasters = {
        src.tile_id: (
            Raster(src.label, role="label"),
            Raster(src.image, role="image") if src.image else None,
        )
        for src in sources
    }
    images = [image for _, image in rasters.values() if image is not None]
    for r in [label for label, _ in rasters.values()] + images:
        if not r.windowed:
            warnings.warn(
                f"{r.path} has no windowed reads (a PNG, or a TIFF stored as one strip): "
                "each worker reads it whole once; memory is then not bounded by the block "
                "size. Convert it to a tiled TIFF for rasters larger than memory.",
                UserWarning,
                stacklevel=4,
            )
    check_memory_limit(opts, cfg, max((r.shape[2] for r in images), default=0))
    return rasters


def _run_blockwise(store, todo, grow, opts, rasters, summary: RunSummary, progress,
                   guard) -> None:  # fmt: skip
    from npa_precompute.blockwise import count_blocks, dask_client, process_tile_blockwise
    from npa_precompute.grow import grow_blocks, grow_tile

    if not todo and not grow:  # every tile is current: no cluster to start
        return
    total = sum(count_blocks(rasters[src.tile_id][0], c, opts.block) for src, _, c in todo)
    total += sum(grow_blocks(rasters[src.tile_id][0].shape[:2], opts.block, nw)
                 for src, _, _, nw in grow)  # fmt: skip
    done = 0
    current = None
    threads = max(1, (os.cpu_count() or 1) // opts.workers) if opts.scheduler is None else None
    try:
        with dask_client(opts) as client:
            for src, source, tile_cfg in todo:
                label, image = rasters[src.tile_id]

                def tick(tile=src.tile_id) -> None:
                    nonlocal done
                    done += 1
                    if progress:
                        progress(done, total, tile)

                current = src.tile_id
                r = process_tile_blockwise(
                    store, src, tile_cfg, source, client=client, opts=opts, label=label,
                    image=image, progress=tick, guard=guard,
                )  # fmt: skip
                current = None
                summary.add("written", r)
            for src, tile_cfg, new_ks, new_weights in grow:

                def tick(tile=src.tile_id) -> None:
                    nonlocal done
                    done += 1
                    if progress:
                        progress(done, total, tile)

                r = grow_tile(store, src.tile_id, tile_cfg, new_ks, new_weights, client=client,
                              block=opts.block, threads=threads, progress=tick,
                              guard=guard)  # fmt: skip
                summary.add("grown", r)
    except InputError:
        # Bad label or image content, found by a block: the in-memory path finds it before
        # it writes the tile, so leave no empty incomplete tile either. The local cluster is
        # closed by now, so no block of this tile is still being written.
        if current is not None:
            with contextlib.suppress(OSError, StoreError):  # best effort: the error is the news
                discard_incomplete_tile(open_store(store, mode="r+"), current)
        raise


#: params that a tile and a run must share for the tile to be grown rather than recomputed
_FIXED_PARAMS = ("weight_dtype", "unknown_colors", "chunk", "preset", "volume")


def _plan_tile(group, meta: TileMeta, source: dict, cfg: PrecomputeConfig, overwrite: bool):
    """What a run does with one existing tile.

    Returns ``(action, tile_cfg, new_ks, new_weights)``, action one of ``"write"``
    (compute the whole tile with ``tile_cfg``), ``"grow"`` (add ``new_ks`` and the
    weights arrays ``new_weights``; the tile's params become ``tile_cfg.params()``),
    ``"skip"`` (current), ``"changed"`` (complete, made with another dtype, chunk or
    decoding: an error without ``overwrite``).
    """
    if overwrite or not meta.complete:
        return "write", cfg, (), ()
    old = meta.params
    params = cfg.params()
    if any(old.get(key) != params.get(key) for key in _FIXED_PARAMS):
        return "changed", None, (), ()
    old_ks = list(meta.ks or ())
    old_t = [parse_transform(spec) for spec in meta.transform_specs]
    ks = tuple(old_ks + [k for k in cfg.ks if k not in old_ks])
    transforms = tuple(dict.fromkeys(old_t + list(cfg.transforms)))
    have = set(stored_weights(group, meta))
    asked = [(k, t) for k, t in cfg.stored_pairs() if weights_name(k, t) not in have]
    stored = tuple(sorted(have | {weights_name(k, t) for k, t in asked}))
    tile_cfg = replace(cfg, ks=ks, transforms=transforms, store_weights=stored)
    if meta.source != source:
        return "write", tile_cfg, (), ()  # the source changed: recomputed whole
    new_ks = tuple(k for k in cfg.ks if k not in old_ks)
    if not new_ks and not asked and set(cfg.transforms) <= set(old_t):
        return "skip", None, (), ()
    if cfg.volume or any(isinstance(k, tuple) for k in new_ks):
        return "write", tile_cfg, (), ()  # the grow works on 2-D blocks of isotropic k
    return "grow", tile_cfg, new_ks, tuple(asked)


def run_precompute(
    labels: Sequence[str],
    out: str | os.PathLike,
    *,
    images: Sequence[str] | None = None,
    preset: str = defaults.PRESET,
    ks: int | str | Iterable[int] = defaults.KS,
    transforms: Sequence[str] = defaults.TRANSFORMS,
    weight_dtype: str = defaults.WEIGHT_DTYPE,
    num_classes: int | None = None,
    ignore_index: int | None = None,
    unknown_colors: str = defaults.UNKNOWN_COLORS,
    chunk: int = defaults.CHUNK,
    workers: int = defaults.WORKERS,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    dask: DaskOptions | None = None,
    store_weights: bool = True,
    notify: Callable[[str], None] | None = None,
    k_metres: float | str | Sequence[float] | None = None,
    gsd: float | Sequence[float] | None = None,
    volume: bool = False,
    k_mm: float | str | Sequence[float] | None = None,
    spacing: float | Sequence[float] | None = None,
) -> RunSummary:
    """Precompute affinity maps and weights for whole tiles into a zarr store.

    Parameters
    ----------
    labels : label files, folders or glob patterns
    out : store folder (created if missing)
    images : image files, folders or globs, paired with labels by the preset's naming
        rules (:func:`npa_precompute.readers.discover_tiles`); None stores weights only
    preset : {"isprs", "loveda", "index"}
    ks : search regions k (Eq. 1), default 8, 16, 32, 64; ints, or one k per spatial
        axis (``"2x14x14,4"``, ``[(4, 8)]``: arrays ``affinity/k2x14x14``,
        ``weights/k2x14x14_<transform>``; not with ``dask``)
    transforms : weight transformation specs (:func:`parse_transform`), default log10:L=0.5
    weight_dtype : {"float32", "float16"}
    num_classes, ignore_index : for ``preset="index"``
    unknown_colors : {"error", "ignore"} colours outside the palette (``isprs``)
    chunk : chunk side in pixels (default 256)
    workers : tiles processed in parallel, one process each
    overwrite : recompute tiles that are already current or were made with other
        parameters (their arrays are replaced); recreate a store made with other
        preset settings. Without it a tile whose label or image file changed is
        recomputed whole (with its k and transformations and the run's), a current tile
        that lacks some of the run's k or weights arrays grows in place
        (:mod:`npa_precompute.grow`: only the missing arrays are written, its params become
        the union), and a complete tile made with another dtype, chunk or decoding is an
        error.
    progress : callback(done, total, tile_id) after each tile (after each block with
        ``dask``)
    dask : process each tile block by block on Dask instead of whole in memory
        (:class:`npa_precompute.blockwise.DaskOptions`: block side, local cluster or
        scheduler address); bit-identical results, memory bounded by a few blocks.
        ``workers`` is then unused (``dask.workers`` sizes the local cluster).
    store_weights : write a weights array per k and transformation (default); False
        writes the counts only and records the transformations as the tiles' named
        weights, which every reader derives from the counts, bit for bit
        (:mod:`npa_precompute.derived`)
    notify : callback(message) for what the user should know while the run waits (the
        numba kernels being compiled, the first time only)
    k_metres : search radii in metres instead of ``ks`` (which must then be left at its
        default): each becomes ``k = round_half_up(radius / gsd)`` along H and W (one k
        per axis when the pixels are not square: a region ``k_hxk_w``)
        (:func:`npa_precompute.physical.resolve_k_metres`); the tiles' params record the
        radii, the pixel size and the k used (``k_physical``)
    gsd : ground sampling distance in metres per pixel for ``k_metres`` (one value or
        along H, W); default: each label's GeoTIFF georeferencing (a geographic CRS in
        degrees is refused)
    volume : read TIFF labels as (D, H, W) page stacks; NIfTI labels are always volumes
        (:mod:`npa_precompute.volumes`, :func:`~npa_precompute.volumes.volume_run`): (D, H,
        W) counts and weights of ``(2k + 1)**3`` windows (``prod(2 k_a + 1)`` for a
        region), 3-D chunks, tile attr ``spacing``
    k_mm : search radii in mm instead of ``ks``, for volumes: each becomes
        ``k = round_half_up(radius / spacing)`` along every axis, a region such as
        ``k2x14x14`` where they differ (10 mm at 5 x 0.7 x 0.7 mm)
        (:func:`npa_precompute.physical.resolve_k_mm`), recorded as ``k_physical``
    spacing : voxel spacing in mm for ``k_mm`` (one value or along D, H, W); default: the
        NIfTI headers

    The run holds the store's lock (:class:`npa_precompute.store.StoreLock`) from its
    first write to its last; a run over an up-to-date store writes nothing (it works on a
    read-only file system).

    Returns
    -------
    RunSummary

    Raises
    ------
    ValueError
        Bad parameters (named in the message), checked before any tile is written;
        :class:`~npa_precompute.transforms.WeightRangeError` when a (k, transform, dtype)
        would store weights that overflow the dtype.
    InputError
        Missing, unreadable or mismatched files (pairing is checked before any tile is
        written; a label whose content is bad stops the run naming the file, and the
        tiles finished before it stay complete).
    StoreError
        ``out`` holds a store with other settings, or complete tiles made with other
        parameters (and ``overwrite`` is False); ``out`` is a file;
        :class:`~npa_precompute.store.StoreLockedError` when another run is writing it.
    OSError
        Writing failed (:class:`~npa_precompute.store.StoreWriteError` names the tile and
        the array, e.g. on a full disk).
    """
    t_start = time.perf_counter()
    preset_obj = get_preset(preset, num_classes=num_classes, ignore_index=ignore_index)
    ks = parse_ks(ks)
    if gsd is not None and k_metres is None:
        raise ParameterError("gsd", "applies only with `k_metres`")
    if spacing is not None and k_mm is None:
        raise ParameterError("spacing", "applies only with `k_mm`")
    for name, radii in (("k_metres", k_metres), ("k_mm", k_mm)):
        if radii is not None and ks != parse_ks(defaults.KS):
            raise ParameterError(name, "replaces `ks`: give one or the other")
    # checked at once, as for the regions' axes (D, H, W) or (H, W); the labels decide below
    region_3d = any(isinstance(k, tuple) and len(k) == 3 for k in ks)
    cfg = PrecomputeConfig(preset_obj, ks, transforms, weight_dtype, unknown_colors, chunk,
                           bool(store_weights), volume=region_3d)  # fmt: skip
    if not isinstance(workers, int) or workers < 1:
        raise ParameterError("workers", f"must be an integer >= 1, got {workers!r}")
    if dask is not None:
        check_block(dask.block, cfg.chunk)
    sources = discover_tiles(labels, images, preset=preset)
    volume = volume_run(sources, volume, images, dask, preset_obj, k_metres, k_mm)
    # the ks of the tiles' pixel or voxel size, and the labels' axes: the config checks
    # them again, at once (a region's axes, the weights' range of 3-D windows)
    changes: dict = {"volume": volume, "ks": ks}  # as given: a region's axes are checked
    if k_metres is not None:
        ks, k_physical = resolve_k_metres(k_metres, gsd, [src.label for src in sources])
        changes |= {"ks": ks, "k_physical": k_physical}
    if k_mm is not None:
        ks, k_physical = resolve_k_mm(k_mm, spacing, [src.label for src in sources])
        changes |= {"ks": ks, "k_physical": k_physical}
    cfg = replace(cfg, **changes)
    if dask is not None and any(isinstance(k, tuple) for k in cfg.ks):
        aniso = ", ".join(format_region(k) for k in cfg.ks if isinstance(k, tuple))
        raise ParameterError("dask", f"computes isotropic k only; k = {aniso} has one k per "
                             "axis: leave out `dask` (the tile is computed in memory)")  # fmt: skip
    rasters = _open_rasters(sources, cfg, dask) if dask is not None else {}

    path = Path(out)
    check_out(path, overwrite=overwrite)
    existed = path.exists()
    if not existed:
        path.mkdir(parents=True, exist_ok=True)
    with StoreLock(path) as lock:
        summary = _run_locked(
            out, sources, cfg, rasters, existed=existed, overwrite=overwrite, workers=workers,
            progress=progress, dask=dask, notify=notify, guard=lock.guard,
        )  # fmt: skip
    summary.seconds = time.perf_counter() - t_start
    return summary


def _run_jobs(jobs, workers: int, summary: RunSummary, progress) -> None:
    """Run the in-memory ``(fn, args, kind)`` tile jobs, one process each when ``workers`` >
    1, adding each result to ``summary`` under ``kind`` ("written" or "grown")."""
    total = len(jobs)
    if workers == 1 or total <= 1:
        for i, (fn, args, kind) in enumerate(jobs):
            r = fn(*args)
            summary.add(kind, r)
            if progress:
                progress(i + 1, total, r["tile"])
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")
    parent = os.getpid()
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=init_worker, initargs=(threads, parent)
    ) as pool:
        futures = {pool.submit(in_worker, parent, fn, *args): kind for fn, args, kind in jobs}
        for i, fut in enumerate(as_completed(futures)):
            try:
                r = fut.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
            summary.add(futures[fut], r)
            if progress:
                progress(i + 1, total, r["tile"])


def _run_locked(out, sources, cfg: PrecomputeConfig, rasters, *, existed: bool,
                overwrite: bool, workers: int, progress, dask, notify,
                guard: LockGuard) -> RunSummary:  # fmt: skip
    """The part of :func:`run_precompute` that reads and writes the store (lock held)."""
    path = Path(out)
    info = replace(
        StoreInfo.from_dict({**cfg.preset.to_attrs(), "schema_version": SCHEMA_VERSION}),
        created_by=f"npaloss {__version__}",
    )
    fresh = not any(c.name != LOCK_NAME for c in path.iterdir())
    root = create_or_check_store(out, info, overwrite=overwrite)
    try:
        params = cfg.params()
        existing = set(list_tiles(root))
        todo: list[tuple[TileSource, dict, PrecomputeConfig]] = []
        grow: list[tuple[TileSource, PrecomputeConfig, tuple, tuple]] = []
        summary = RunSummary(store=str(out))
        changed = []
        for src in sources:
            source = _source_attrs(src)
            group = root["tiles"][src.tile_id] if src.tile_id in existing else None
            action, tile_cfg, new_ks, new_weights = (
                _plan_tile(group, tile_meta(group), source, cfg, overwrite) if group is not None
                else ("write", cfg, (), ())
            )  # fmt: skip
            if action == "skip":
                summary.skipped.append(src.tile_id)
            elif action == "changed":
                changed.append(src.tile_id)
            elif action == "grow":
                grow.append((src, tile_cfg, new_ks, new_weights))
            else:
                todo.append((src, source, tile_cfg))
        if changed:
            old = tile_meta(root["tiles"][changed[0]])
            raise StoreError(
                f"{len(changed)} complete tile(s) ({', '.join(changed[:5])}"
                f"{', ...' if len(changed) > 5 else ''}) were made with other parameters "
                f"(dtype {old.weight_dtype}, chunk {old.chunk}, unknown colours "
                f"{old.unknown_colors}, preset {old.preset_name}); "
                f"this run asks for dtype {params['weight_dtype']}, chunk {params['chunk']}, "
                f"unknown colours {params['unknown_colors']}, preset "
                f"{params['preset']['preset']} (more k or transformations would be added in "
                "place, but these cannot). Recomputing replaces their arrays: pass --overwrite "
                "to do so, or write to another --out"
            )
        store = os.path.abspath(out)  # workers of a Dask cluster may run in another folder
        if todo or grow:
            from npa_precompute.kernel_cache import compile_reason

            summary.compile_reason = compile_reason()
            summary.compile_seconds = compile_kernels(cfg, notify, summary.compile_reason)
            drop_consolidated(root)  # stale while tiles are rewritten; consolidated again below
        jobs = [(process_tile, (store, s, c, so, guard), "written") for s, so, c in todo]
        jobs += [(_grow_job, (store, s.tile_id, c, nk, nw, guard), "grown")
                 for s, c, nk, nw in grow]  # fmt: skip
        if dask is not None:
            _run_blockwise(store, todo, grow, dask, rasters, summary, progress, guard)
        else:
            _run_jobs(jobs, workers, summary, progress)
    except BaseException:
        # A run that stops before its first tile (e.g. the Dask scheduler cannot be
        # reached) leaves no empty store behind that it created itself.
        if fresh and not list_tiles(root):
            _remove_store(path, keep_folder=existed)
        raise
    summary.written.sort()
    summary.grown.sort()
    if fresh or summary.written or summary.grown or not is_consolidated(out):
        consolidate_store(out)  # for xarray/napari, which read the consolidated listing
    return summary
