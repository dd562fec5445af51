"""The zarr v3 weight store: layout, writing one tile, and reading tiles back.

Layout (``H, W`` the tile's shape)::

    <store>/                         attrs["npaloss"]: schema_version, preset, classes,
                                     palette, ignore_index, label_remap, ...
      tiles/<tile_id>/               attrs: complete, source paths, sha256 of the files,
                                     params, shape, image_mean / image_std
        label                        (H, W) uint8|uint16, fill_value = ignore index
        image                        (H, W, C) uint8|uint16 (when images were given)
        affinity/k<K>                (H, W) uint16|uint32 raw counts of Eq. 1
        weights/k<K>_<transform>     (H, W) float32|float16, attrs k, transform, ...

Arrays are chunked in ``chunk`` x ``chunk`` pixels (default 256), compressed with
Blosc zstd, and each array's chunks are packed into one shard (one file); a crop
reads only the chunks it touches. Every array has ``dimension_names`` (``y``, ``x``
[, ``band``]) so xarray and napari can label its axes. A tile's ``complete`` attr is
set last, after all of its arrays are written; readers refuse a tile without it
(:class:`IncompleteTileError`).
Each tile is written by one process into its own arrays, so no chunk ever has
two writers. A run holds an exclusive lock on the store (:class:`StoreLock`, the file
``.npaloss.lock`` in the store folder) from its first write to its last: a second run on
the same store is refused, so no tile is ever rewritten by two runs at once.

Reading goes through one API: :func:`store_info` (a :class:`StoreInfo`), :func:`open_tile`
(a :class:`Tile`, whose :attr:`Tile.meta` is a :class:`TileMeta`), :meth:`Tile.array` and
:meth:`Tile.read_window` (fast reads of the shard files, :mod:`npa_precompute.shards`).
Both precompute paths build a tile's attrs with :func:`build_tile_meta`; no other module

Modules, by concern: :mod:`~npa_precompute.store.meta` (typed metadata),
:mod:`~npa_precompute.store.layout` (the store as a whole),
:mod:`~npa_precompute.store.lock` (one writing run at a time),
:mod:`~npa_precompute.store.writer` (:class:`TileWriter`, the one writer of every array),
:mod:`~npa_precompute.store.reader` (:class:`Tile`). Their public names are imported here.
"""

from __future__ import annotations

from npa_precompute.errors import StoreError
from npa_precompute.store.layout import (
    check_out,
    consolidate_store,
    create_or_check_store,
    drop_consolidated,
    is_consolidated,
    list_tiles,
    open_store,
    store_info,
    store_path,
)
from npa_precompute.store.lock import LOCK_NAME, LockGuard, StoreLock, StoreLockedError
from npa_precompute.store.meta import (
    SCHEMA_VERSION,
    IncompleteTileError,
    StoreInfo,
    TileMeta,
    array_params,
    build_tile_meta,
    leftover_arrays,
    stored_weights,
    tile_ks,
    tile_meta,
)
from npa_precompute.store.reader import ArrayRef, Tile, open_tile, open_weights
from npa_precompute.store.writer import (
    StoreWriteError,
    TileWriter,
    discard_incomplete_tile,
    write_tile,
    writing,
)

__all__ = [
    "LOCK_NAME",
    "SCHEMA_VERSION",
    "ArrayRef",
    "IncompleteTileError",
    "LockGuard",
    "StoreError",
    "StoreInfo",
    "StoreLock",
    "StoreLockedError",
    "StoreWriteError",
    "Tile",
    "TileMeta",
    "TileWriter",
    "array_params",
    "build_tile_meta",
    "check_out",
    "consolidate_store",
    "create_or_check_store",
    "discard_incomplete_tile",
    "drop_consolidated",
    "is_consolidated",
    "leftover_arrays",
    "list_tiles",
    "open_store",
    "open_tile",
    "open_weights",
    "store_info",
    "store_path",
    "stored_weights",
    "tile_ks",
    "tile_meta",
    "write_tile",
    "writing",
]
