"""Fast reads of the windows of the store's sharded arrays.

:class:`npa_precompute.store.TileWriter` writes every array as zarr v3 with its 256²
chunks packed into shard files: the default chunk key encoding with ``/``, one sharding
codec with the index at the end (little-endian uint64 offset/length pairs and a
CRC32C), inner chunks encoded with the bytes codec (little-endian) and Blosc. zarr's
general read path costs about three times the decompression itself for a crop's
window, so :class:`ShardReader` reads that layout straight from the shard files (the
shard index once, then one ``pread`` and one Blosc decompression per chunk a window
touches). Any other layout is read through zarr (:class:`ZarrReader`);
:func:`window_reader` picks one and warns once per store when it has to fall back.
:meth:`npa_precompute.store.Tile.read_window` and the training dataset read through it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import zarr

__all__ = [
    "ShardReader",
    "SlowReadWarning",
    "ZarrReader",
    "unsupported_layout",
    "window_reader",
]

_NO_CHUNK = 2**64 - 1


class ZarrReader:
    """Windows of a zarr array through zarr's own slicing (any layout)."""

    def __init__(self, array) -> None:
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.asarray(self.array[y0:y1, x0:x1])


class ShardReader:
    """Windows of a sharded zarr v3 array read straight from its shard files.

    Supports the layout ``npa-precompute`` writes: a local store, the default chunk key
    encoding with ``/``, one sharding codec with the index at the end (little-endian
    uint64 offset/length pairs and a CRC32C), and inner chunks encoded with the bytes
    codec (little-endian) and Blosc; 2-D arrays or 3-D arrays whose last axis is one
    chunk. Each shard's index is read once; a window then costs one ``os.pread`` and one
    Blosc decompression per chunk it touches. Missing shards or chunks read as the fill
    value, as in zarr. :meth:`create` returns None for any other layout.

    Attributes
    ----------
    bytes_read : int
        Bytes read from shard files so far (indexes included).
    """

    def __init__(self, array, root: Path, key: str, chunk_shape, shard_shape) -> None:
        import numcodecs

        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.fill = array.fill_value
        self.root, self.key = root, key
        self.chunk_shape, self.shard_shape = tuple(chunk_shape), tuple(shard_shape)
        self.per_shard = (shard_shape[0] // chunk_shape[0], shard_shape[1] // chunk_shape[1])
        self._codec = numcodecs.Blosc()
        self._index: dict[tuple[int, int], np.ndarray | None] = {}
        self._fds: dict[tuple[int, int], int] = {}
        self.bytes_read = 0

    @classmethod
    def create(cls, array) -> ShardReader | None:
        """A reader for ``array``, or None when its layout is not the supported one
        (:func:`unsupported_layout` says why)."""
        found = _layout(array)
        return None if isinstance(found, str) else cls(array, *found)

    def _path(self, sy: int, sx: int) -> str:
        parts = ["c", str(sy), str(sx)] + (["0"] if len(self.shape) == 3 else [])
        return os.path.join(self.root, self.key, *parts)

    def _shard(self, sy: int, sx: int) -> tuple[int, np.ndarray] | None:
        if (sy, sx) not in self._index:
            path = self._path(sy, sx)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                self._index[(sy, sx)] = None
                return None
            n = self.per_shard[0] * self.per_shard[1]
            size = os.fstat(fd).st_size
            nbytes = 16 * n + 4
            raw = os.pread(fd, nbytes, size - nbytes)
            self.bytes_read += len(raw)
            if len(raw) != nbytes:
                os.close(fd)
                raise OSError(f"shard {path} is truncated (no complete index)")
            index = np.frombuffer(raw[:-4], dtype="<u8").reshape(*self.per_shard, 2)
            self._fds[(sy, sx)] = fd
            self._index[(sy, sx)] = index
        index = self._index[(sy, sx)]
        return None if index is None else (self._fds[(sy, sx)], index)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """``array[y0:y1, x0:x1]`` (within the array's bounds)."""
        rest = self.shape[2:]
        out = np.empty((y1 - y0, x1 - x0, *rest), dtype=self.dtype)
        ch, cw = self.chunk_shape[:2]
        sh, sw = self.shard_shape[:2]
        for cy in range(y0 // ch, (y1 - 1) // ch + 1):
            for cx in range(x0 // cw, (x1 - 1) // cw + 1):
                ya, yb = max(y0, cy * ch), min(y1, (cy + 1) * ch)
                xa, xb = max(x0, cx * cw), min(x1, (cx + 1) * cw)
                dst = out[ya - y0 : yb - y0, xa - x0 : xb - x0]
                shard = self._shard(cy * ch // sh, cx * cw // sw)
                entry = None
                if shard is not None:
                    fd, index = shard
                    off, nb = (int(v) for v in index[(cy * ch % sh) // ch, (cx * cw % sw) // cw])
                    if not (off == _NO_CHUNK and nb == _NO_CHUNK):
                        entry = (fd, off, nb)
                if entry is None:
                    dst[...] = self.fill
                    continue
                fd, off, nb = entry
                data = os.pread(fd, nb, off)
                self.bytes_read += len(data)
                chunk = np.frombuffer(self._codec.decode(data), dtype=self.dtype.newbyteorder("<"))
                chunk = chunk.reshape(self.chunk_shape)
                dst[...] = chunk[ya - cy * ch : yb - cy * ch, xa - cx * cw : xb - cx * cw]
        return out

    def close(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        self._index.clear()

    def __del__(self) -> None:
        self.close()


def _layout(array) -> tuple | str:
    """``(root, key, chunk_shape, shard_shape)`` of an array :class:`ShardReader` can
    read, else the reason it cannot (a sentence)."""
    try:
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
        from zarr.codecs.sharding import ShardingCodecIndexLocation
        from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding
        from zarr.storage import LocalStore

        md = array.metadata
        codecs = tuple(md.codecs)
        if md.zarr_format != 3 or len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
            return "not a sharded zarr v3 array"
        sc = codecs[0]
        inner, index = tuple(sc.codecs), tuple(sc.index_codecs)
        little = ("little", None)
        if not (
            sc.index_location == ShardingCodecIndexLocation.end
            and len(index) == 2
            and isinstance(index[0], BytesCodec)
            and getattr(index[0].endian, "value", index[0].endian) == "little"
            and isinstance(index[1], Crc32cCodec)
        ):
            return "a shard index other than little-endian at the end with a CRC32C"
        if not (
            len(inner) == 2
            and isinstance(inner[0], BytesCodec)
            and getattr(inner[0].endian, "value", inner[0].endian) in little
            and isinstance(inner[1], BloscCodec)
        ):
            return "chunks not encoded with the bytes codec and Blosc alone"
        enc = md.chunk_key_encoding
        if not isinstance(enc, DefaultChunkKeyEncoding) or enc.separator != "/":
            return "a chunk key encoding other than the default with '/'"
        store = array.store_path.store
        if not isinstance(store, LocalStore):
            return f"a {type(store).__name__}, not a local folder"
        dtype = np.dtype(array.dtype)
        if dtype.itemsize > 1 and dtype.byteorder == ">":
            return "a big-endian dtype"
        chunk, shard = tuple(sc.chunk_shape), tuple(md.chunk_grid.chunk_shape)
        nd = len(array.shape)
        if nd not in (2, 3) or len(chunk) != nd or len(shard) != nd:
            return f"{nd} dimensions"
        if nd == 3 and not (chunk[2] == shard[2] == array.shape[2]):
            return "bands split over several chunks"
        if shard[0] % chunk[0] or shard[1] % chunk[1]:
            return "shards that are not a whole number of chunks"
        return Path(store.root), array.store_path.path, chunk, shard
    except Exception as exc:  # an unfamiliar zarr version: fall back to zarr's reads
        version = getattr(zarr, "__version__", "?")
        return f"zarr {version} metadata this reader does not know ({exc})"


def unsupported_layout(array) -> str | None:
    """Why :class:`ShardReader` cannot read ``array`` (a sentence), None when it can."""
    found = _layout(array)
    return found if isinstance(found, str) else None


#: Stores whose fallback to zarr reads was announced in this process.
_WARNED: set[str] = set()


class SlowReadWarning(UserWarning):
    """An array is read through zarr's general path (about 3x slower for a crop's window)
    because its layout is not the one :class:`ShardReader` reads."""


def window_reader(array, *, fast: bool = True, stacklevel: int = 2) -> ShardReader | ZarrReader:
    """The fastest reader of ``array``'s windows: a :class:`ShardReader` where the layout
    allows, else a :class:`ZarrReader`.

    Falling back says so once per store and process (a :class:`SlowReadWarning` naming
    the store, the array and the reason), instead of silently reading about three times
    slower. Stores written by this package never fall back.

    Parameters
    ----------
    array : zarr.Array
    fast : bool, default True
        False: always a :class:`ZarrReader` (no warning).
    stacklevel : int, default 2
        Passed to :func:`warnings.warn`.
    """
    if not fast:
        return ZarrReader(array)
    found = _layout(array)
    if not isinstance(found, str):
        return ShardReader(array, *found)
    store = array.store_path.store
    key = f"{type(store).__name__}:{getattr(store, 'root', id(store))}"
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(
            f"reading {array.path!r} of {getattr(store, 'root', store)} through zarr (about 3x "
            f"slower for a crop's window) because its layout is not the one npa-precompute "
            f"writes: {found}; further arrays of this store are not announced",
            SlowReadWarning,
            stacklevel=stacklevel,
        )
    return ZarrReader(array)
