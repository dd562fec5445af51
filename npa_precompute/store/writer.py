"""Writing a tile: one writer, :class:`TileWriter`, for every array of every path.

The in-memory precompute (:func:`write_tile`), the blockwise precompute and the grow of
a complete tile all create a tile's arrays with :meth:`TileWriter.add`, write them
(whole, or block by block from worker processes) with :meth:`TileWriter.add` /
:meth:`TileWriter.write`, and end with :meth:`TileWriter.commit`, the tile's last write,
which names the arrays in its attrs and sets ``complete``. Every write

* names the tile, array and store in an ``OSError`` (:class:`StoreWriteError`, e.g. a
  full disk), and
* is made only while the run that started it holds the store's lock (its
  :class:`~npa_precompute.store.lock.LockGuard`, when given).

A new tile (:meth:`TileWriter.create`) is not readable until its commit; a grown one
(:meth:`TileWriter.grow`) stays readable with its old arrays, and the new ones belong to
it only from the commit on (an interrupted grow leaves arrays no reader uses, deleted by
the next grow).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from npa_precompute.names import counts_name
from npa_precompute.regions import region_attr
from npa_precompute.store.layout import list_tiles, store_path
from npa_precompute.store.lock import LockGuard
from npa_precompute.store.meta import TileMeta, leftover_arrays, stored_weights, tile_meta

__all__ = [
    "StoreWriteError",
    "TileWriter",
    "discard_incomplete_tile",
    "write_tile",
    "writing",
]

_DIMS = {2: ("y", "x"), 3: ("y", "x", "band")}
#: Dimension names of a volume's arrays (D, H, W).
_VOLUME_DIMS = ("z", "y", "x")


class StoreWriteError(OSError):
    """Writing an array of a tile failed (disk full, read-only, ...): names tile and array."""


@contextlib.contextmanager
def writing(tile_id: str, name: str, store: str | os.PathLike | None = None) -> Iterator[None]:
    """Name the tile and array in an ``OSError`` raised while writing them.

    ``[Errno 28] No space left on device`` becomes ``[Errno 28] No space left on device:
    writing array 'weights/k32_log10_L0.5' of tile 'area1' in store runs/s.zarr``.

    Raises
    ------
    StoreWriteError
        An ``OSError`` with the same errno and the tile and array in its message.
    """
    try:
        yield
    except StoreWriteError:
        raise
    except OSError as exc:
        where = f"array {name!r} of tile {tile_id!r}" if name else f"tile {tile_id!r}"
        where = f"writing {where}"
        if store is not None:
            where += f" in store {store}"
        why = exc.strerror or str(exc)
        raise StoreWriteError(exc.errno, f"{why}: {where}") from exc


def _compressor(dtype: np.dtype) -> BloscCodec:
    # zstd level 1 with byte shuffle: smaller than level 3 with bitshuffle on weights
    # (0.8 vs 1.2 bytes per pixel for float32 log10 weights) and twice as fast to write.
    shuffle = "shuffle" if np.dtype(dtype).itemsize > 1 else "noshuffle"
    return BloscCodec(cname="zstd", clevel=1, shuffle=shuffle)


def _create(
    group: zarr.Group,
    name: str,
    data: np.ndarray | None,
    chunk: int,
    dims,
    *,
    shape: tuple[int, ...] | None = None,
    dtype=None,
    shard: int | None = None,
    volume: bool = False,
    **kw,
) -> zarr.Array:
    # Chunks of `chunk` px are what a crop reads; they are packed into shards (one file per
    # shard instead of one per chunk: writing is bound by per-file cost), and zarr reads a
    # crop's chunks from a shard by byte range, never the whole shard. In-memory tiles use
    # one shard per array; blockwise runs use one shard per block, so that each block's
    # task writes whole shards of its own.
    shape = tuple(data.shape) if data is not None else tuple(shape)
    dtype = data.dtype if data is not None else np.dtype(dtype)
    if volume:  # (D, H, W): chunks of chunk/4 x chunk/2 x chunk/2 voxels, one shard
        sides = (max(1, chunk // 4), max(1, chunk // 2), max(1, chunk // 2))
        chunks = tuple(min(c, n) for c, n in zip(sides, shape, strict=True))
        shards = tuple(-(-n // c) * c for c, n in zip(chunks, shape, strict=True))
        dims = _VOLUME_DIMS
    else:
        h, w = shape[:2]
        ch, cw = min(chunk, h), min(chunk, w)
        chunks = (ch, cw, *shape[2:])
        if shard is None:
            shards = (-(-h // ch) * ch, -(-w // cw) * cw, *shape[2:])
        else:
            shards = (min(shard, -(-h // ch) * ch), min(shard, -(-w // cw) * cw), *shape[2:])
    arr = group.create_array(
        name,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        shards=shards,
        compressors=_compressor(dtype),
        dimension_names=dims,
        **kw,
    )
    if data is not None:
        arr[...] = data
    return arr


def _clear_tile(root: zarr.Group, tile_id: str) -> None:
    """Remove a tile and anything left in its folder (chunks without metadata included)."""
    tiles = root["tiles"]
    if tile_id in tiles:
        del tiles[tile_id]
    store_dir = store_path(root)
    if store_dir is not None:
        shutil.rmtree(Path(store_dir) / "tiles" / tile_id, ignore_errors=True)


def discard_incomplete_tile(root: zarr.Group, tile_id: str) -> bool:
    """Remove ``tile_id`` if it is in the store and not complete; True if it was removed."""
    if tile_id not in list_tiles(root):
        return False
    if tile_meta(root["tiles"][tile_id]).complete:
        return False
    with writing(tile_id, "", store_path(root)):
        _clear_tile(root, tile_id)
    return True


def _attrs(attrs: TileMeta | Mapping | None) -> dict:
    """A tile's attrs as a dict, without ``complete`` (set by :meth:`TileWriter.commit`)."""
    if attrs is None:
        return {}
    out = attrs.to_dict() if isinstance(attrs, TileMeta) else dict(attrs)
    out.pop("complete", None)
    return out


@dataclass
class TileWriter:
    """The writer of one tile's arrays (see the module docstring).

    Made by :meth:`create` (a new tile) or :meth:`grow` (new arrays in a complete tile),
    in the run's process; it pickles to worker processes (the tile group is opened again
    there), which write their blocks with :meth:`write`.

    Attributes
    ----------
    store : str, the store folder
    tile_id : str
    chunk : int, chunk side in pixels of the arrays it creates
    shard : int or None
        Shard side in pixels (a multiple of ``chunk``; one block of the blockwise path),
        None for one shard per array.
    guard : LockGuard or None
        Checked before every write (None: not checked).
    volume : bool
        The tile is a label volume: its arrays are (D, H, W), chunked ``chunk // 4`` x
        ``chunk // 2`` x ``chunk // 2`` (64 x 128 x 128 voxels at the default 256), one
        shard per array, ``dimension_names`` ``z, y, x``.
    """

    store: str
    tile_id: str
    chunk: int = 256
    shard: int | None = None
    guard: LockGuard | None = None
    volume: bool = False

    def __post_init__(self) -> None:
        if self.shard is not None and (self.shard < self.chunk or self.shard % self.chunk):
            raise ValueError(
                f"`shard` ({self.shard}) must be a positive multiple of `chunk` ({self.chunk})"
            )
        self._group: zarr.Group | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_group": None}

    @classmethod
    def create(cls, root: zarr.Group, tile_id: str, attrs: TileMeta | Mapping, *,
               chunk: int = 256, shard: int | None = None,
               guard: LockGuard | None = None, volume: bool = False) -> TileWriter:  # fmt: skip
        """Start a new tile ``tile_id`` (any earlier version is removed), ``complete`` False.

        Parameters
        ----------
        root : the store's root group, opened ``r+``
        attrs : TileMeta (:func:`~npa_precompute.store.meta.build_tile_meta`) or dict
        chunk, shard, guard, volume : see the class

        Raises
        ------
        StoreWriteError, StoreLockedError
        """
        w = cls(store_path(root), tile_id, chunk, shard, guard, volume)
        with w._writing(""):
            _clear_tile(root, tile_id)
            w._group = root["tiles"].create_group(
                tile_id, attributes={**_attrs(attrs), "complete": False}
            )
            w._group.create_group("affinity")
            w._group.create_group("weights")
        return w

    @classmethod
    def grow(cls, root: zarr.Group, tile_id: str, *, chunk: int = 256,
             shard: int | None = None, guard: LockGuard | None = None) -> TileWriter:  # fmt: skip
        """Add arrays to the complete tile ``tile_id``, which stays readable as it is until
        :meth:`commit` names them. Leftovers of an interrupted grow are deleted first.

        Raises
        ------
        StoreWriteError, StoreLockedError
        """
        w = cls(store_path(root), tile_id, chunk, shard, guard)
        group = w._group = root["tiles"][tile_id]
        with w._writing(""):
            meta = tile_meta(group)
            if meta.stored_weights is None:
                # a tile written before stored_weights was recorded: name its arrays first,
                # so that the new ones stay outside it until the commit
                group.attrs["stored_weights"] = stored_weights(group, meta)
            for path in leftover_arrays(group):
                sub, name = path.split("/")
                del group[sub][name]
        return w

    @property
    def group(self) -> zarr.Group:
        """The tile's group (opened ``r+``)."""
        if self._group is None:
            path = os.path.join(self.store, "tiles", self.tile_id)
            self._group = zarr.open_group(path, mode="r+", use_consolidated=False)
        return self._group

    @contextlib.contextmanager
    def _writing(self, name: str) -> Iterator[None]:
        if self.guard is not None:
            self.guard.check()
        with writing(self.tile_id, name, self.store):
            yield

    def add(self, path: str, data: np.ndarray | None = None, *,
            shape: tuple[int, ...] | None = None, dtype=None, fill_value=0,
            attrs: Mapping | None = None) -> zarr.Array:  # fmt: skip
        """Create the array ``path`` of the tile and write ``data`` into it (if given).

        Parameters
        ----------
        path : ``"label"``, ``"image"``, ``"affinity/k<K>"``, ``"weights/<name>"`` or any
            ``"<group>/<name>"`` (the group is created when missing)
        data : (H, W) or (H, W, C) array ((D, H, W) for a volume), or None for an empty
            array of ``shape``, ``dtype`` to be written block by block (:meth:`write`)
        fill_value : value of unwritten pixels (the ignore index for labels)
        attrs : the array's attrs (``k``, ``transform``, ...)

        Returns
        -------
        zarr.Array, chunked ``chunk`` x ``chunk``, sharded ``shard`` x ``shard`` (or one
        shard), Blosc zstd, with ``dimension_names`` ``y, x[, band]``

        Raises
        ------
        StoreWriteError, StoreLockedError
        """
        parent, _, name = path.rpartition("/")
        with self._writing(path):
            group = self.group
            if parent:
                group = group[parent] if parent in group else group.create_group(parent)
            ndim = len(data.shape if data is not None else shape)
            return _create(group, name, data, self.chunk, _DIMS[ndim], shape=shape,
                           dtype=dtype, shard=self.shard, fill_value=fill_value,
                           volume=self.volume, attributes=dict(attrs or {}))  # fmt: skip

    def write(self, path: str, data: np.ndarray, window: tuple[int, int, int, int]) -> None:
        """Write ``data`` into the window ``(r0, r1, c0, c1)`` of the array ``path`` (made
        by :meth:`add`); from any process.

        Raises
        ------
        StoreWriteError, StoreLockedError
        """
        r0, r1, c0, c1 = window
        with self._writing(path):
            array = zarr.open_array(os.path.join(self.store, "tiles", self.tile_id, path),
                                    mode="r+")  # fmt: skip
            array[r0:r1, c0:c1] = data

    def commit(self, attrs: TileMeta | Mapping) -> None:
        """The tile's last write: its attrs (naming its arrays: ``params``,
        ``stored_weights``, ``count_range``, ...) and ``complete``, in one write.

        Raises
        ------
        StoreWriteError, StoreLockedError
        """
        with self._writing(""):
            self.group.attrs.update({**_attrs(attrs), "complete": True})


def write_tile(
    root: zarr.Group,
    tile_id: str,
    *,
    label: np.ndarray,
    ignore_index: int,
    image: np.ndarray | None,
    affinity: dict[int, np.ndarray],
    weights: Iterable[tuple[str, np.ndarray, dict]],
    attrs: TileMeta | dict,
    chunk: int = 256,
    guard: LockGuard | None = None,
    more: Iterable[tuple[str, np.ndarray, dict]] = (),
) -> None:
    """Write one tile held in memory with a :class:`TileWriter`, replacing any earlier
    version, and mark it complete last.

    Parameters
    ----------
    label : (H, W) uint8|uint16 decoded labels, or (D, H, W) of a volume (its arrays are
        then chunked in 3-D, :class:`TileWriter`)
    image : (H, W, C) uint8|uint16 or None (None for a volume)
    affinity : {k: (H, W) or (D, H, W) raw counts}, k an int or a region tuple (array
        ``affinity/k32``, ``affinity/k2x14x14``: :func:`~npa_precompute.names.counts_name`)
    weights : iterable of (name, array, attrs) produced lazily (one weights array in
        memory at a time)
    attrs : TileMeta (:func:`~npa_precompute.store.meta.build_tile_meta`) or dict
    chunk : chunk side in pixels
    guard : checked before each write (:class:`~npa_precompute.store.lock.LockGuard`)
    more : (path, array, attrs) of any other array of the tile (``"<group>/<name>"``)
    """
    w = TileWriter.create(root, tile_id, attrs, chunk=chunk, guard=guard,
                          volume=label.ndim == 3)  # fmt: skip
    w.add("label", label, fill_value=ignore_index)
    if image is not None:
        w.add("image", image)
    for k, a in affinity.items():
        w.add(f"affinity/{counts_name(k)}", a, attrs={"k": region_attr(k)})
    for name, data, wattrs in weights:
        w.add(f"weights/{name}", data, fill_value=0.0, attrs=wattrs)
    for path, data, more_attrs in more:
        w.add(path, data, attrs=more_attrs)
    w.commit(attrs)
