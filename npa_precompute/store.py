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
reads the attrs by key.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import shutil
import socket
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr
import zarr.errors
from zarr.codecs import BloscCodec

__all__ = [
    "LOCK_NAME",
    "SCHEMA_VERSION",
    "ArrayRef",
    "IncompleteTileError",
    "StoreError",
    "StoreInfo",
    "StoreLock",
    "StoreLockedError",
    "StoreWriteError",
    "Tile",
    "TileMeta",
    "add_arrays",
    "array_params",
    "build_tile_meta",
    "check_out",
    "commit_arrays",
    "consolidate_store",
    "create_or_check_store",
    "create_tile",
    "discard_incomplete_tile",
    "drop_consolidated",
    "is_consolidated",
    "leftover_arrays",
    "list_tiles",
    "mark_complete",
    "open_store",
    "open_tile",
    "store_info",
    "tile_meta",
    "write_tile",
    "writing",
]

#: Version of the layout above; bumped on any incompatible change.
SCHEMA_VERSION = 1
_ATTR_KEY = "npaloss"


class StoreError(RuntimeError):
    """The store is missing, of another schema, or lacks what was asked for."""


class IncompleteTileError(StoreError):
    """A tile whose writing did not finish (its ``complete`` marker is missing)."""


class StoreLockedError(StoreError):
    """Another run holds the store's lock (it is writing the store now)."""


class StoreWriteError(OSError):
    """Writing an array of a tile failed (disk full, read-only, ...): names tile and array."""


# -- typed metadata -------------------------------------------------------------------------


def _malformed(where: str, key: str, value, why: str) -> StoreError:
    return StoreError(f"{where}: attr {key!r} is malformed ({why}): {value!r}")


def _parse(d: Mapping, key: str, parse: Callable, where: str, *, required: bool = False):
    """``parse(d[key])``, None when absent (or a StoreError naming ``key`` when required)."""
    if key not in d:
        if required:
            raise StoreError(f"{where}: attr {key!r} is missing")
        return None
    value = d[key]
    if value is None:
        return None
    try:
        return parse(value)
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        raise _malformed(where, key, value, str(exc) or type(exc).__name__) from None


def _ints(v) -> tuple[int, ...]:
    if isinstance(v, (str, bytes, Mapping)):
        raise TypeError("expected a list of integers")
    return tuple(_int(x) for x in v)


def _int(v) -> int:
    if isinstance(v, bool) or int(v) != v:
        raise ValueError("expected an integer")
    return int(v)


def _floats(v) -> tuple[float, ...]:
    if isinstance(v, (str, bytes, Mapping)):
        raise TypeError("expected a list of numbers")
    return tuple(float(x) for x in v)


def _strs(v) -> tuple[str, ...]:
    if isinstance(v, (str, bytes, Mapping)):
        raise TypeError("expected a list of strings")
    return tuple(str(x) for x in v)


def _colors(v) -> tuple[tuple[int, ...], ...]:
    out = tuple(_ints(c) for c in v)
    if any(len(c) != 3 for c in out):
        raise ValueError("expected (r, g, b) triples")
    return out


def _mapping(v) -> dict:
    if not isinstance(v, Mapping):
        raise TypeError("expected a mapping")
    return dict(v)


def _ranges(v) -> dict[int, tuple[int, int]]:
    out = {}
    for k, r in _mapping(v).items():
        lo, hi = _ints(r)
        out[int(k)] = (lo, hi)
    return out


def _lists(v):
    """Tuples back to JSON lists, recursively."""
    if isinstance(v, (tuple, list)):
        return [_lists(x) for x in v]
    return v


@dataclass(frozen=True)
class StoreInfo:
    """The store's root metadata (``attrs["npaloss"]`` of the store's root group).

    Attributes
    ----------
    preset : str or None
        Label decoding preset (``isprs``, ``loveda``, ``indexed``).
    classes : tuple of str
        Class names in index order.
    num_classes : int
    ignore_index : int
        Label value of ignored pixels (also the label arrays' fill value).
    palette : tuple of (r, g, b) or None
        Class colours of colour-coded labels (``isprs``).
    ignore_colors : tuple of (r, g, b)
        Colours decoded to ``ignore_index``.
    label_remap : dict of str to int, or None
        Raw label value -> class index applied when decoding (e.g. LoveDA's 0 -> 255).
    foreground_classes : tuple of int or None
        Classes averaged in the reported means (ISPRS: all but clutter).
    created_by : str or None
        ``"npaloss <version>"`` of the run that created the store.
    schema_version : int or None
        :data:`SCHEMA_VERSION` of the layout (None in a tile's ``params.preset`` copy).
    extra : dict
        Keys this version does not know, kept so that :meth:`to_dict` round-trips.
    """

    classes: tuple[str, ...]
    num_classes: int
    ignore_index: int
    preset: str | None = None
    palette: tuple[tuple[int, ...], ...] | None = None
    ignore_colors: tuple[tuple[int, ...], ...] | None = None
    label_remap: dict[str, int] | None = None
    foreground_classes: tuple[int, ...] | None = None
    created_by: str | None = None
    schema_version: int | None = None
    extra: dict = field(default_factory=dict, compare=False)

    _KEYS = ("preset", "classes", "num_classes", "ignore_index", "palette", "ignore_colors",
             "label_remap", "foreground_classes", "created_by", "schema_version")  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping, *, where: str = "store") -> StoreInfo:
        """Parse the root attrs (as written by :meth:`to_dict`).

        Raises
        ------
        StoreError
            A key missing or malformed (the message names ``where`` and the key).
        """
        if not isinstance(d, Mapping):
            raise StoreError(f"{where}: the npaloss attrs are not a mapping: {d!r}")
        classes = _parse(d, "classes", _strs, where, required=True)
        num = _parse(d, "num_classes", _int, where)
        return cls(
            classes=classes,
            num_classes=len(classes) if num is None else num,
            ignore_index=_parse(d, "ignore_index", _int, where, required=True),
            preset=_parse(d, "preset", str, where),
            palette=_parse(d, "palette", _colors, where),
            ignore_colors=_parse(d, "ignore_colors", _colors, where),
            label_remap=_parse(d, "label_remap", _remap, where),
            foreground_classes=_parse(d, "foreground_classes", _ints, where),
            created_by=_parse(d, "created_by", str, where),
            schema_version=_parse(d, "schema_version", _int, where),
            extra={k: v for k, v in d.items() if k not in cls._KEYS},
        )

    def to_dict(self) -> dict:
        """The JSON attrs (lists, not tuples); optional keys that are None are left out,
        except ``palette`` and ``label_remap``, which are always written."""
        out = {}
        for key in self._KEYS:
            value = getattr(self, key)
            if value is not None or key in ("palette", "label_remap"):
                out[key] = _lists(value)
        return {**out, **self.extra}

    @property
    def foreground(self) -> tuple[int, ...]:
        """:attr:`foreground_classes`, every class when the store does not record them."""
        if self.foreground_classes:
            return self.foreground_classes
        return tuple(range(self.num_classes))


def _remap(v) -> dict[str, int]:
    return {str(k): _int(x) for k, x in _mapping(v).items()}


@dataclass(frozen=True)
class TileMeta:
    """A tile's attrs (``tiles/<tile_id>`` group), as written by the precompute.

    Built for both precompute paths by :func:`build_tile_meta`. Optional entries are
    None in tiles written before they were recorded (or, during a blockwise run, before
    the tile's last block).

    Attributes
    ----------
    tile_id : str
    shape : (H, W)
    source : dict
        ``label_path``, ``label_sha256``, ``image_path``, ``image_sha256`` (None
        without image): what a later run compares to know the tile is current.
    params : dict
        The run's parameters (``ks``, ``transforms``, ``weight_dtype``,
        ``unknown_colors``, ``chunk``, ``preset``): :meth:`PrecomputeConfig.params`.
    npaloss_version : str or None
    georef : dict or None
        GeoTIFF georeferencing of the source (:mod:`npa_precompute.geo`).
    ignore_fraction : float or None
    class_pixels : tuple of int or None
        Non-ignore pixels per class.
    count_range : dict of int to (int, int), or None
        (min, max) of the counts of each k over non-ignore pixels (Eq. 2's range).
    stored_weights : tuple of str or None
        Names of the weights arrays that belong to the tile (None: every array).
    image_mean, image_std : tuple of float or None
        Per-band image statistics (:mod:`npa_precompute.imagestats`).
    blockwise : dict or None
        ``{"block", "halo"}`` of a tile written block by block.
    complete : bool
        Set last, after every array is written.
    extra : dict
        Keys this version does not know (kept by :meth:`to_dict`).
    """

    tile_id: str
    shape: tuple[int, int] | None = None
    source: dict | None = None
    params: dict = field(default_factory=dict)
    npaloss_version: str | None = None
    georef: dict | None = None
    ignore_fraction: float | None = None
    class_pixels: tuple[int, ...] | None = None
    count_range: dict[int, tuple[int, int]] | None = None
    stored_weights: tuple[str, ...] | None = None
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None
    blockwise: dict | None = None
    complete: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    _KEYS = ("tile_id", "shape", "source", "params", "npaloss_version", "georef",
             "ignore_fraction", "class_pixels", "count_range", "stored_weights", "image_mean",
             "image_std", "blockwise", "complete")  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping, *, tile_id: str = "", where: str = "") -> TileMeta:
        """Parse a tile's attrs (``tile_id`` when they lack one).

        Raises
        ------
        StoreError
            A malformed entry (the message names the tile and the key).
        """
        where = where or f"tile {tile_id!r}"
        if not isinstance(d, Mapping):
            raise StoreError(f"{where}: the attrs are not a mapping: {d!r}")
        shape = _parse(d, "shape", _ints, where)
        if shape is not None and len(shape) != 2:
            raise _malformed(where, "shape", d["shape"], "expected (H, W)")
        return cls(
            tile_id=_parse(d, "tile_id", str, where) or tile_id,
            shape=shape,
            source=_parse(d, "source", _mapping, where),
            params=_parse(d, "params", _mapping, where) or {},
            npaloss_version=_parse(d, "npaloss_version", str, where),
            georef=_parse(d, "georef", _mapping, where),
            ignore_fraction=_parse(d, "ignore_fraction", float, where),
            class_pixels=_parse(d, "class_pixels", _ints, where),
            count_range=_parse(d, "count_range", _ranges, where),
            stored_weights=_parse(d, "stored_weights", _strs, where),
            image_mean=_parse(d, "image_mean", _floats, where),
            image_std=_parse(d, "image_std", _floats, where),
            blockwise=_parse(d, "blockwise", _mapping, where),
            complete=d.get("complete") is True,
            extra={k: v for k, v in d.items() if k not in cls._KEYS},
        )

    def to_dict(self) -> dict:
        """The JSON attrs; None entries are left out, except ``georef`` (always written)."""
        out = {}
        for key in self._KEYS:
            value = getattr(self, key)
            if key == "count_range" and value is not None:
                value = {str(k): list(r) for k, r in value.items()}
            if value is not None or key == "georef":
                out[key] = _lists(value)
        return {**out, **self.extra}

    @property
    def ks(self) -> tuple[int, ...] | None:
        """k of the counts the tile's params name (None: not recorded)."""
        ks = self.params.get("ks")
        return None if ks is None else tuple(int(k) for k in ks)

    @property
    def transform_specs(self) -> tuple[str, ...]:
        """Transformation specs of the tile's params (e.g. ``"log10:L=0.5"``)."""
        return tuple(self.params.get("transforms") or ())

    @property
    def weight_dtype(self) -> np.dtype:
        """dtype of the tile's weights (float32 when not recorded)."""
        return np.dtype(self.params.get("weight_dtype") or "float32")

    @property
    def chunk(self) -> int | None:
        """Chunk side in pixels of the tile's arrays."""
        chunk = self.params.get("chunk")
        return None if chunk is None else int(chunk)

    @property
    def unknown_colors(self) -> str | None:
        """How colours outside the palette were decoded (``error`` or ``ignore``)."""
        return self.params.get("unknown_colors")

    @property
    def preset_name(self) -> str | None:
        """Name of the decoding preset the tile was made with."""
        info = self.preset_info
        return None if info is None else info.preset

    @property
    def preset_info(self) -> StoreInfo | None:
        """The decoding preset the tile was made with (None: not recorded).

        Raises
        ------
        StoreError
            Malformed ``params.preset`` (the message names the tile).
        """
        preset = self.params.get("preset")
        if not preset:
            return None
        return StoreInfo.from_dict(preset, where=f"tile {self.tile_id!r} params.preset")

    @property
    def label_path(self) -> str | None:
        """The label file the tile was computed from."""
        return (self.source or {}).get("label_path")

    @property
    def image_path(self) -> str | None:
        """The image file of the tile (None without image)."""
        return (self.source or {}).get("image_path")


def build_tile_meta(
    *,
    tile_id: str,
    shape: tuple[int, int],
    source: dict,
    params: dict,
    georef: dict | None,
    class_pixels: Sequence[int] | np.ndarray | None = None,
    ignored: int | None = None,
    count_range: Mapping[int, tuple[int, int]] | None = None,
    stored_weights: Iterable[str] | None = None,
    image_stats: Mapping[str, Sequence[float]] | None = None,
    blockwise: dict | None = None,
) -> TileMeta:
    """The attrs of a tile, built the same way by both precompute paths.

    The in-memory path (:func:`npa_precompute.pipeline.process_tile`) gives everything
    at once; the blockwise path (:func:`npa_precompute.blockwise.process_tile_blockwise`)
    first without the per-pixel results (written with the empty arrays), then with them
    when its last block is done.

    Parameters
    ----------
    tile_id, shape, source, params, georef : see :class:`TileMeta`
    class_pixels : (num_classes,) non-ignore pixels per class
    ignored : ignored pixels (``ignore_fraction`` is ``ignored / (H * W)``)
    count_range : {k: (min, max)} of the counts over non-ignore pixels
    stored_weights : names of the weights arrays the tile holds (sorted here)
    image_stats : ``{"image_mean", "image_std"}`` of :mod:`npa_precompute.imagestats`
    blockwise : ``{"block", "halo"}`` of a blockwise run

    Returns
    -------
    TileMeta
        ``complete`` False: :func:`write_tile` and :func:`mark_complete` set it last.
    """
    from npa_precompute import __version__

    stats = image_stats or {}
    n = int(shape[0]) * int(shape[1])
    return TileMeta(
        tile_id=tile_id,
        shape=(int(shape[0]), int(shape[1])),
        source=dict(source),
        params=dict(params),
        npaloss_version=__version__,
        georef=georef,
        ignore_fraction=None if ignored is None else float(ignored / n),
        class_pixels=None if class_pixels is None else tuple(int(c) for c in class_pixels),
        count_range=None if count_range is None else _ranges(count_range),
        stored_weights=None if stored_weights is None else tuple(sorted(stored_weights)),
        image_mean=None if "image_mean" not in stats else tuple(stats["image_mean"]),
        image_std=None if "image_std" not in stats else tuple(stats["image_std"]),
        blockwise=blockwise,
    )


#: The lock file in the store folder (see :class:`StoreLock`).
LOCK_NAME = ".npaloss.lock"
#: errno values of file systems that do not support locks.
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


class StoreLock:
    """An exclusive lock on a store folder, held by the run that writes it.

    ``flock`` on the file :data:`LOCK_NAME` in the store folder, taken without waiting:
    a second run on the same store is refused (:class:`StoreLockedError`, naming the
    process that holds it) instead of both deleting and rewriting each other's tiles.
    The lock belongs to the open file, so the kernel releases it when the process ends
    however it ends (SIGKILL, crash, power loss of a client): a killed run never leaves
    a stale lock behind. The file itself stays (it holds the last holder's pid, host and
    start time, for the message).

    On NFS (Linux clients) ``flock`` is carried out as a POSIX byte-range lock, which
    every client sees; on file systems without lock support (some FUSE or SMB mounts,
    Lustre without its ``flock`` mount option) locking fails: the run then goes on with a
    warning that a second writer would not be detected. A store on a read-only file
    system cannot be written by anyone: the lock is not needed there.

    Use it as a context manager, or :meth:`acquire` / :meth:`release`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> StoreLock:
        """Take the lock (the store folder must exist).

        Raises
        ------
        StoreLockedError
            Another process holds it.
        """
        lock_path = self.path / LOCK_NAME
        for _ in range(10):
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
                writable = True
            except OSError as exc:
                if exc.errno not in _READ_ONLY:
                    raise
                try:  # a read-only file system: lock the existing file if there is one
                    fd, writable = os.open(lock_path, os.O_RDONLY), False
                except OSError:
                    return self
            try:
                _lock(fd)
            except BlockingIOError:
                holder = _read_text(fd)
                os.close(fd)
                raise StoreLockedError(
                    f"store {self.path} is being written by another npa-precompute run"
                    f"{f' ({holder})' if holder else ''}; wait for it to finish, or write to "
                    "another --out (two runs writing one store would replace each other's tiles)"
                ) from None
            except OSError as exc:
                os.close(fd)
                if exc.errno not in _NO_LOCKS:
                    raise
                warnings.warn(
                    f"cannot lock store {self.path} ({exc.strerror}: this file system does not "
                    "support file locks); a second run writing this store at the same time "
                    "would not be detected",
                    UserWarning,
                    stacklevel=2,
                )
                return self
            try:
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the store was removed and made again while we waited: retry
                os.close(fd)
                continue
            if writable:
                host = socket.gethostname()
                since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} on {host}, since {since}".encode())
            self._fd = fd
            return self
        raise StoreLockedError(f"cannot lock store {self.path}: its lock file keeps changing")

    def release(self) -> None:
        """Give the lock back (closing the file releases it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            raise BlockingIOError(errno.EWOULDBLOCK, "locked") from None
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_text(fd: int) -> str:
    """The holder's line (it writes it right after taking the lock: wait for it up to 1 s,
    which a loaded machine can take between the two)."""
    import time

    for _ in range(50):
        try:
            text = os.pread(fd, 200, 0).decode(errors="replace").strip()
        except (OSError, AttributeError):  # no os.pread on Windows
            return ""
        if text:
            return text
        time.sleep(0.02)
    return ""


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


def _store_path(root: zarr.Group) -> str | None:
    root_dir = getattr(root.store, "root", None)
    return str(root_dir) if root_dir is not None else None


def check_out(path: str | os.PathLike, *, overwrite: bool) -> None:
    """Refuse an ``--out`` that cannot be a store, before anything is written there.

    Raises
    ------
    StoreError
        ``path`` is a file, a folder holding other files, or (without ``overwrite``)
        a zarr store that is not an npaloss store or has another schema.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise StoreError(f"--out {path} is a file, not a store folder")
    if (path / LOCK_NAME).exists():
        return  # an npaloss store, maybe being created right now: checked under its lock
    if (path / "zarr.json").is_file():
        if not overwrite:
            open_store(path)
    elif path.is_dir() and any(c.name != LOCK_NAME for c in path.iterdir()):
        raise StoreError(f"{path} exists and is not a zarr store; choose another --out")


def _compressor(dtype: np.dtype) -> BloscCodec:
    # zstd level 1 with byte shuffle: smaller than level 3 with bitshuffle on weights
    # (0.8 vs 1.2 bytes per pixel for float32 log10 weights) and twice as fast to write.
    shuffle = "shuffle" if np.dtype(dtype).itemsize > 1 else "noshuffle"
    return BloscCodec(cname="zstd", clevel=1, shuffle=shuffle)


def open_store(path: str | os.PathLike, mode: str = "r") -> zarr.Group:
    """Open an existing weight store.

    Parameters
    ----------
    path : store folder
    mode : {"r", "r+"}

    Raises
    ------
    StoreError
        No store at ``path``, not an npaloss store, or a schema version this
        package cannot read.
    """
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise StoreError(f"no zarr store at {path} (missing zarr.json)")
    root = zarr.open_group(path, mode=mode, use_consolidated=False)
    info = root.attrs.get(_ATTR_KEY)
    if not isinstance(info, dict):
        raise StoreError(f"{path} is a zarr group but not an npaloss weight store")
    if info.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"{path} has store schema {info.get('schema_version')}, this package reads "
            f"{SCHEMA_VERSION}"
        )
    return root


def store_info(root: zarr.Group) -> StoreInfo:
    """The store's root metadata (classes, palette, ignore value, preset, schema version).

    Raises
    ------
    StoreError
        Not an npaloss store, or root attrs that are malformed (the message names the key).
    """
    where = f"store {_store_path(root) or root}"
    if _ATTR_KEY not in root.attrs:
        raise StoreError(f"{where} is a zarr group but not an npaloss weight store")
    return StoreInfo.from_dict(root.attrs[_ATTR_KEY], where=where)


def create_or_check_store(
    path: str | os.PathLike, info: StoreInfo | Mapping, *, overwrite: bool
) -> zarr.Group:
    """Create a store with root metadata ``info`` or check an existing one against it.

    ``info`` is a :class:`StoreInfo` or its dict form (e.g. a preset's ``to_attrs()``);
    its ``schema_version`` is set to :data:`SCHEMA_VERSION`.

    An existing store whose preset, classes or ignore value differ is refused
    unless ``overwrite``, which recreates it empty.

    Raises
    ------
    StoreError
        Existing store with other settings and ``overwrite`` False, or a path that
        exists but is not an npaloss store.
    """
    path = Path(path)
    if isinstance(info, StoreInfo):
        info = replace(info, schema_version=SCHEMA_VERSION)
    else:
        info = StoreInfo.from_dict({**info, "schema_version": SCHEMA_VERSION}, where="new store")
    new = info.to_dict()
    if (path / "zarr.json").is_file():
        try:
            root = open_store(path, mode="r+")
        except StoreError:
            if not overwrite:
                raise
            root = None
        if root is not None:
            old = store_info(root).to_dict()
            keys = ("preset", "classes", "ignore_index", "palette", "label_remap")
            diff = [k for k in keys if old.get(k) != new.get(k)]
            if not diff:
                if "tiles" not in root:
                    root.create_group("tiles")
                return root
            if not overwrite:
                raise StoreError(
                    f"store {path} was made with other settings ({', '.join(diff)} differ: "
                    f"{ {k: old.get(k) for k in diff} }); pass --overwrite to recreate it"
                )
    elif path.exists() and not path.is_dir():
        raise StoreError(f"--out {path} is a file, not a store folder")
    elif path.exists() and any(c.name != LOCK_NAME for c in path.iterdir()):
        raise StoreError(f"{path} exists and is not a zarr store; choose another --out")
    # Recreated in place: everything goes but the lock file, which the running process holds.
    if path.is_dir():
        for child in path.iterdir():
            if child.name == LOCK_NAME:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    root = zarr.create_group(path, attributes={_ATTR_KEY: new}, overwrite=False)
    root.create_group("tiles")
    return root


def drop_consolidated(root: zarr.Group) -> None:
    """Rewrite the root metadata without zarr's consolidated listing.

    Called before tiles are (re)written, so that readers of the consolidated listing
    never see a stale one; :func:`consolidate_store` writes it again at the end of a run.
    """
    root.attrs[_ATTR_KEY] = dict(root.attrs[_ATTR_KEY])


def is_consolidated(path: str | os.PathLike) -> bool:
    """Whether the store's root metadata holds zarr's consolidated listing."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("consolidated_metadata") is not None


def list_tiles(root: zarr.Group, *, complete_only: bool = False) -> list[str]:
    """Tile ids in the store, sorted; with ``complete_only`` only finished tiles."""
    if "tiles" not in root:
        return []
    tiles = root["tiles"]
    names = sorted(tiles.group_keys())
    if complete_only:
        names = [t for t in names if tiles[t].attrs.get("complete") is True]
    return names


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
    **kw,
) -> zarr.Array:
    # Chunks of `chunk` px are what a crop reads; they are packed into shards (one file per
    # shard instead of one per chunk: writing is bound by per-file cost), and zarr reads a
    # crop's chunks from a shard by byte range, never the whole shard. In-memory tiles use
    # one shard per array; blockwise runs use one shard per block, so that each block's
    # task writes whole shards of its own.
    shape = tuple(data.shape) if data is not None else tuple(shape)
    dtype = data.dtype if data is not None else np.dtype(dtype)
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
    store_dir = _store_path(root)
    if store_dir is not None:
        shutil.rmtree(Path(store_dir) / "tiles" / tile_id, ignore_errors=True)


def discard_incomplete_tile(root: zarr.Group, tile_id: str) -> bool:
    """Remove ``tile_id`` if it is in the store and not complete; True if it was removed."""
    if tile_id not in list_tiles(root):
        return False
    if tile_meta(root["tiles"][tile_id]).complete:
        return False
    with writing(tile_id, "", _store_path(root)):
        _clear_tile(root, tile_id)
    return True


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
) -> None:
    """Write one tile, replacing any earlier version, and mark it complete last.

    Parameters
    ----------
    label : (H, W) uint8|uint16 decoded labels
    image : (H, W, C) uint8|uint16 or None
    affinity : {k: (H, W) raw counts}
    weights : iterable of (name, array, attrs) produced lazily (one weights array in
        memory at a time)
    attrs : TileMeta (:func:`build_tile_meta`) or the attrs as a dict; ``complete`` is
        added last
    chunk : chunk side in pixels
    """
    store = _store_path(root)
    with writing(tile_id, "", store):
        _clear_tile(root, tile_id)
        g = root["tiles"].create_group(tile_id, attributes={**_attrs(attrs), "complete": False})
    with writing(tile_id, "label", store):
        _create(g, "label", label, chunk, ("y", "x"), fill_value=ignore_index)
    if image is not None:
        with writing(tile_id, "image", store):
            _create(g, "image", image, chunk, ("y", "x", "band"), fill_value=0)
    with writing(tile_id, "affinity", store):
        aff = g.create_group("affinity")
    for k, a in affinity.items():
        with writing(tile_id, f"affinity/k{k}", store):
            _create(aff, f"k{k}", a, chunk, ("y", "x"), fill_value=0, attributes={"k": int(k)})
    with writing(tile_id, "weights", store):
        wg = g.create_group("weights")
    for name, w, wattrs in weights:
        with writing(tile_id, f"weights/{name}", store):
            _create(wg, name, w, chunk, ("y", "x"), fill_value=0.0, attributes=wattrs)
    with writing(tile_id, "", store):
        g.attrs["complete"] = True


def create_tile(
    root: zarr.Group,
    tile_id: str,
    *,
    shape: tuple[int, int],
    label_dtype: np.dtype,
    ignore_index: int,
    image: tuple[int, np.dtype] | None,
    affinity: dict[int, np.dtype],
    weights: Iterable[tuple[str, dict]],
    weight_dtype: np.dtype,
    attrs: TileMeta | dict,
    chunk: int,
    shard: int,
) -> zarr.Group:
    """Create one tile's empty arrays (``complete`` False) for blockwise writing.

    The layout is :func:`write_tile`'s, except that each array is sharded in
    ``shard`` x ``shard`` pixels (a multiple of ``chunk``): the blockwise precompute
    writes each shard from exactly one task. Call :func:`mark_complete` after the
    last block is written.

    Parameters
    ----------
    shape : (H, W) of the tile
    label_dtype : dtype of the decoded labels (uint8 or uint16)
    image : (bands, dtype) of the image, or None
    affinity : {k: dtype of its raw counts}
    weights : (name, attrs) of each weights array
    weight_dtype : float32 or float16
    attrs : TileMeta (:func:`build_tile_meta`) or the attrs as a dict; ``complete`` is
        set False
    chunk, shard : chunk and shard sides in pixels

    Raises
    ------
    ValueError
        ``shard`` not a positive multiple of ``chunk``.
    """
    if shard < chunk or shard % chunk:
        raise ValueError(f"`shard` ({shard}) must be a positive multiple of `chunk` ({chunk})")
    with writing(tile_id, "", _store_path(root)):  # metadata only: no array is written here
        _clear_tile(root, tile_id)
        g = root["tiles"].create_group(tile_id, attributes={**_attrs(attrs), "complete": False})
        kw = {"shape": tuple(shape), "shard": shard}
        _create(g, "label", None, chunk, ("y", "x"), dtype=label_dtype, fill_value=ignore_index,
                **kw)  # fmt: skip
        if image is not None:
            bands, dt = image
            kw_img = {**kw, "shape": (*shape, bands)}
            _create(g, "image", None, chunk, ("y", "x", "band"), dtype=dt, fill_value=0, **kw_img)
        aff = g.create_group("affinity")
        for k, dt in affinity.items():
            attrs_k = {"k": int(k)}
            _create(aff, f"k{k}", None, chunk, ("y", "x"), dtype=dt, fill_value=0,
                    attributes=attrs_k, **kw)  # fmt: skip
        wg = g.create_group("weights")
        for name, wattrs in weights:
            _create(wg, name, None, chunk, ("y", "x"), dtype=weight_dtype, fill_value=0.0,
                    attributes=wattrs, **kw)  # fmt: skip
    return g


def _attrs(attrs: TileMeta | Mapping | None) -> dict:
    """A tile's attrs as a dict, without ``complete`` (set by the writers)."""
    if attrs is None:
        return {}
    out = attrs.to_dict() if isinstance(attrs, TileMeta) else dict(attrs)
    out.pop("complete", None)
    return out


def mark_complete(group: zarr.Group, attrs: TileMeta | dict | None = None) -> None:
    """Add ``attrs`` (a :class:`TileMeta` or a dict) to a tile group and set its
    ``complete`` marker (the tile's last write)."""
    tile_id = group.path.rsplit("/", 1)[-1]
    attrs = _attrs(attrs)
    with writing(tile_id, "", getattr(group.store, "root", None)):
        if attrs:
            group.attrs.update(attrs)
        group.attrs["complete"] = True


@dataclass(frozen=True)
class ArrayRef:
    """One array of a tile, resolved from a user-given name (:meth:`Tile.ref`).

    Attributes
    ----------
    path : str
        Canonical path inside the tile: ``"label"``, ``"image"``, ``"affinity/k32"``
        or ``"weights/k32_log10_L0.5"``.
    kind : {"label", "image", "affinity", "weights"}
    array : zarr.Array, or :class:`~npa_precompute.derived.DerivedWeights` for derived weights
    k : int or None
        Search region of ``affinity`` and ``weights`` arrays (None for multi-scale weights).
    transform : str or None
        Canonical transform spec of ``weights`` arrays (e.g. ``"log10:L=0.5"``).
    derived : bool
        True for weights computed from the counts when read (not stored).
    ks : tuple of int or None
        The k averaged by multi-scale weights.
    """

    path: str
    kind: str
    array: object
    k: int | None = None
    transform: str | None = None
    derived: bool = False
    ks: tuple[int, ...] | None = None

    @property
    def name(self) -> str:
        """Short name: the path without ``weights/``."""
        return self.path.removeprefix("weights/")


@dataclass
class Tile:
    """A complete tile of the store, opened for reading (arrays are read lazily).

    Attributes
    ----------
    tile_id : str
    group : zarr.Group
    label : zarr.Array, (H, W) uint8|uint16
    image : zarr.Array (H, W, C) or None
    attrs : dict, the tile's attrs as stored (:attr:`meta` parses them)
    ignore_index : int, the store's ignore value
    fast_reads : bool, whether :meth:`read_window` reads shard files directly where the
        layout allows (default True); False reads everything through zarr
    """

    tile_id: str
    group: zarr.Group
    label: zarr.Array
    image: zarr.Array | None
    attrs: dict
    ignore_index: int = 255
    fast_reads: bool = True

    def __post_init__(self) -> None:
        self._ranges: dict[int, tuple[int, int]] = {}
        self._readers: dict[str, object] = {}

    @cached_property
    def meta(self) -> TileMeta:
        """The tile's attrs, typed.

        Raises
        ------
        StoreError
            Malformed attrs (the message names the tile and the key).
        """
        return TileMeta.from_dict(self.attrs, tile_id=self.tile_id)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.label.shape)

    @property
    def weight_dtype(self) -> np.dtype:
        """dtype of the tile's weights (``params.weight_dtype``, float32 by default)."""
        return self.meta.weight_dtype

    @property
    def affinity_ks(self) -> list[int]:
        """k whose counts the tile holds (arrays named by the tile's params; an array left
        half-written by an interrupted grow is not among them)."""
        return sorted(set(tile_ks(self.group, self.meta)))

    @property
    def stored_weight_names(self) -> list[str]:
        """Names of the weights arrays materialized in the store."""
        return sorted(stored_weights(self.group, self.meta))

    @property
    def weight_names(self) -> list[str]:
        """The tile's named weights: every stored array, and every k x transform of its
        params (derived from the counts when not stored). Any other transformation of a
        stored k can be asked for too (:meth:`weights`)."""
        from npa_precompute.transforms import weights_name

        names = set(self.stored_weight_names)
        ks = self.affinity_ks
        for spec in self.meta.transform_specs:
            try:
                names |= {weights_name(k, spec) for k in ks}
            except ValueError:
                continue
        return sorted(names)

    def weights(self, name: str):
        """The weights ``name`` (e.g. ``"k32_log10_L0.5"``, ``"ms_k8-16-32_log10_L0.5"``).

        Returns the stored ``zarr.Array`` when materialized, else a
        :class:`~npa_precompute.derived.DerivedWeights` computed from the counts (same
        values, bit for bit).

        Raises
        ------
        StoreError
            Not a weights name (the message lists the tile's named weights), or no counts
            for its k (the message lists the k the tile has and how to add more).
        """
        from npa_precompute.derived import derived_weights, parse_weights_name

        stored = self.stored_weight_names
        text = name.strip().removeprefix("weights/") if isinstance(name, str) else name
        if text in stored:
            return self.group["weights"][text]
        try:
            canonical = parse_weights_name(text).name
        except (ValueError, TypeError):
            canonical = None
        if canonical in stored:
            return self.group["weights"][canonical]
        return derived_weights(self, text)

    def affinity(self, k: int) -> zarr.Array:
        """Raw Eq. 1 counts for search region ``k``.

        Raises
        ------
        StoreError
            If ``k`` was not precomputed (the message lists the k that were).
        """
        if int(k) not in self.affinity_ks:
            raise StoreError(
                f"tile {self.tile_id!r} has no affinity for k={k}; available k: {self.affinity_ks}"
            )
        return self.group["affinity"][f"k{int(k)}"]

    def available(self) -> list[str]:
        """Paths of every array :meth:`array` gives (label, image, counts, named weights)."""
        names = ["label"] + (["image"] if self.image is not None else [])
        names += [f"affinity/k{k}" for k in self.affinity_ks]
        return names + self.weight_names

    def ref(self, name: str) -> ArrayRef:
        """Find the array ``name`` of the tile, with what it is.

        Parameters
        ----------
        name : str
            ``"label"``, ``"image"``, ``"affinity/k32"`` (or the shorthand ``"k32"``), a
            weights name such as ``"k32_log10_L0.5"`` (or ``"weights/k32_log10_L0.5"``):
            stored, or derived from the counts (any transformation of a stored k,
            ``ms_k8-16-32_...``).

        Raises
        ------
        TypeError
            If ``name`` is not a string.
        StoreError
            If the tile has no such array (the message lists the arrays it has), or
            weights of a k whose counts it lacks (the message says how to add them).
        """
        from npa_precompute.derived import DerivedWeights, parse_weights_name

        if not isinstance(name, str):
            raise TypeError(f"`name` must be a string, got {type(name).__name__}")
        text = name.strip().strip("/")
        if text == "label":
            return ArrayRef("label", "label", self.label)
        if text == "image" and self.image is not None:
            return ArrayRef("image", "image", self.image)
        short = text.removeprefix("affinity/")
        if short.startswith("k") and short[1:].isdigit() and int(short[1:]) in self.affinity_ks:
            k = int(short[1:])
            return ArrayRef(f"affinity/k{k}", "affinity", self.affinity(k), k=k)
        wname = text.removeprefix("weights/")
        try:
            wname = parse_weights_name(wname).name
            is_weights = True
        except ValueError:
            is_weights = wname in self.stored_weight_names
        if is_weights:
            arr = self.weights(wname)  # derived from the counts when not stored
            k, transform, ks = array_params(arr)
            derived = isinstance(arr, DerivedWeights)
            return ArrayRef(f"weights/{wname}", "weights", arr, k, transform, derived, ks)
        raise StoreError(
            f"tile {self.tile_id!r} has no array {name!r}; available: {', '.join(self.available())}"
        )

    def array(self, name: str):
        """The array ``name`` (see :meth:`ref`): a ``zarr.Array``, or
        :class:`~npa_precompute.derived.DerivedWeights` for weights derived from the counts.

        Raises
        ------
        StoreError, TypeError
            As :meth:`ref`.
        """
        return self.ref(name).array

    def reader(self, name: str):
        """The reader of the windows of array ``name`` that :meth:`read_window` uses
        (made once per tile and name): a :class:`~npa_precompute.shards.ShardReader` for
        stored arrays with the layout this package writes, else a
        :class:`~npa_precompute.shards.ZarrReader` (through zarr; with a warning once per
        store, :func:`~npa_precompute.shards.window_reader`, unless :attr:`fast_reads` is
        False). Weights derived from the counts are read through their ``__getitem__``.

        Raises
        ------
        StoreError, TypeError
            As :meth:`ref`.
        """
        reader = self._readers.get(name)
        if reader is None:
            from npa_precompute.shards import ZarrReader, window_reader

            arr = self.ref(name).array
            if isinstance(arr, zarr.Array):
                reader = window_reader(arr, fast=self.fast_reads, stacklevel=3)
            else:
                reader = ZarrReader(arr)
            self._readers[name] = reader
        return reader

    def read_window(self, name: str, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """``array(name)[y0:y1, x0:x1]`` as a numpy array, read through :meth:`reader`.

        Stored arrays with the layout this package writes are read straight from their
        shard files (about three times faster than zarr for a crop's window).

        Parameters
        ----------
        name : str, as :meth:`ref`
        y0, y1, x0, x1 : int, the window (within the tile)

        Returns
        -------
        (y1 - y0, x1 - x0[, C]) array of the array's dtype

        Raises
        ------
        StoreError, TypeError
            As :meth:`ref`.
        """
        return self.reader(name).read(y0, y1, x0, x1)

    def count_range(self, k: int, *, compute: bool = True) -> tuple[int, int] | None:
        """(min, max) of the counts of ``k`` over the tile's non-ignore pixels.

        From the tile's ``count_range`` attr; a tile written before it was recorded has it
        computed from the counts (the whole array is read once; None with
        ``compute=False``). ``max < 0``: every pixel is ignored.
        """
        k = int(k)
        recorded = (self.meta.count_range or {}).get(k)
        if recorded is not None:
            return recorded
        if k not in self._ranges:
            if not compute:
                return None
            from npa_precompute._kernels import valid_min_max

            counts = np.ascontiguousarray(self.affinity(k)[...])
            ignore = np.asarray(self.label[...]) == self.ignore_index
            lo, hi = valid_min_max(counts, ignore)
            self._ranges[k] = (int(lo), int(hi))
        return self._ranges[k]


def tile_ks(group: zarr.Group, meta: TileMeta) -> list[int]:
    """k of the counts arrays that belong to a tile (named in its params)."""
    if "affinity" not in group:
        return []
    present = {int(n[1:]) for n in group["affinity"].array_keys() if n[1:].isdigit()}
    named = meta.ks
    return [k for k in present if named is None or k in named]


def stored_weights(group: zarr.Group, meta: TileMeta) -> list[str]:
    """Names of the materialized weights arrays that belong to a tile: those its
    ``stored_weights`` attr lists (every array of the group for stores written before it)."""
    if "weights" not in group:
        return []
    present = list(group["weights"].array_keys())
    named = meta.stored_weights
    return [n for n in present if named is None or n in named]


def array_params(array) -> tuple[int | None, str | None, tuple[int, ...] | None]:
    """``(k, transform, ks)`` of a counts or weights array, from its attrs (None where
    absent): the search region, the canonical transformation spec, the k averaged by
    multi-scale weights."""
    attrs = array.attrs
    k, ks = attrs.get("k"), attrs.get("ks")
    return (
        None if k is None else int(k),
        attrs.get("transform"),
        None if ks is None else tuple(int(x) for x in ks),
    )


def tile_meta(group: zarr.Group) -> TileMeta:
    """The typed attrs of a tile group, complete or not (:class:`TileMeta`).

    Raises
    ------
    StoreError
        Malformed attrs (the message names the tile and the key).
    """
    return TileMeta.from_dict(dict(group.attrs), tile_id=group.path.rsplit("/", 1)[-1])


def leftover_arrays(group: zarr.Group) -> list[str]:
    """Paths (``affinity/k64``, ``weights/...``) of arrays in a tile's groups that do not
    belong to it: written by a grow that was interrupted before its commit."""
    meta = tile_meta(group)
    out = []
    if "affinity" in group:
        ks = set(tile_ks(group, meta))
        out += [f"affinity/{n}" for n in group["affinity"].array_keys()
                if not (n[1:].isdigit() and int(n[1:]) in ks)]  # fmt: skip
    if "weights" in group:
        kept = set(stored_weights(group, meta))
        out += [f"weights/{n}" for n in group["weights"].array_keys() if n not in kept]
    return sorted(out)


def add_arrays(
    group: zarr.Group,
    *,
    shape: tuple[int, int],
    affinity: dict[int, np.dtype],
    weights: Iterable[tuple[str, dict]],
    weight_dtype: np.dtype,
    chunk: int,
    shard: int | None = None,
) -> None:
    """Create new, empty counts and weights arrays in a complete tile (for a grow).

    Leftovers of an interrupted grow (:func:`leftover_arrays`) are deleted first. The
    tile's own arrays are not touched, and the new ones do not belong to it until
    :func:`commit_arrays` names them in its attrs.
    """
    meta = tile_meta(group)
    if meta.stored_weights is None:
        # a tile written before stored_weights was recorded: name its arrays first, so that
        # the new ones stay outside it until commit_arrays
        group.attrs["stored_weights"] = stored_weights(group, meta)
    for path in leftover_arrays(group):
        sub, name = path.split("/")
        del group[sub][name]
    aff = group["affinity"] if "affinity" in group else group.create_group("affinity")
    wg = group["weights"] if "weights" in group else group.create_group("weights")
    kw = {"shape": tuple(shape), "shard": shard}
    for k, dt in affinity.items():
        _create(aff, f"k{k}", None, chunk, ("y", "x"), dtype=dt, fill_value=0,
                attributes={"k": int(k)}, **kw)  # fmt: skip
    for name, wattrs in weights:
        _create(wg, name, None, chunk, ("y", "x"), dtype=weight_dtype, fill_value=0.0,
                attributes=wattrs, **kw)  # fmt: skip


def commit_arrays(
    group: zarr.Group,
    *,
    params: dict,
    count_range: Mapping[int, tuple[int, int]],
    stored_weights: Iterable[str],
) -> None:
    """Make a grow's new arrays part of the tile: one atomic write of its attrs
    (``params`` naming the new k, ``stored_weights`` the new weights, ``count_range``
    {k: (min, max)} of every k)."""
    group.attrs.update(
        {
            "params": dict(params),
            "count_range": {str(k): [int(r[0]), int(r[1])] for k, r in count_range.items()},
            "stored_weights": sorted(stored_weights),
        }
    )


def open_tile(root: zarr.Group, tile_id: str) -> Tile:
    """Open one tile for reading.

    Raises
    ------
    StoreError
        Unknown tile (the message lists the tiles present).
    IncompleteTileError
        The tile's writing did not finish; re-run ``npa-precompute run`` to complete it.
    """
    names = list_tiles(root)
    if tile_id not in names:
        raise StoreError(f"no tile {tile_id!r} in the store; tiles: {', '.join(names) or 'none'}")
    g = root["tiles"][tile_id]
    attrs = dict(g.attrs)
    if attrs.get("complete") is not True:
        raise IncompleteTileError(
            f"tile {tile_id!r} is incomplete (its writing did not finish); re-run "
            "`npa-precompute run` on the same inputs to complete it"
        )
    image = g["image"] if "image" in g else None
    return Tile(tile_id, g, g["label"], image, attrs, store_info(root).ignore_index)


def consolidate_store(path: str | os.PathLike) -> None:
    """Write zarr's consolidated metadata into the store's root ``zarr.json``.

    Readers that default to consolidated metadata (xarray, napari's zarr reader)
    then list every group and array from one file. Call it after the store's last
    write: tiles written later are missing from the consolidated listing until it is
    called again (this package itself never reads the consolidated listing).

    Parameters
    ----------
    path : str or os.PathLike
        Store folder.

    Raises
    ------
    StoreError
        If ``path`` is not an npaloss weight store.
    """
    open_store(path)
    with warnings.catch_warnings():
        # zarr warns that consolidated metadata is not (yet) part of the v3 spec.
        category = getattr(zarr.errors, "ZarrUserWarning", UserWarning)
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=category)
        # the store's lock file is no zarr node: zarr says so when it lists the root
        warnings.filterwarnings(
            "ignore", message=rf"Object at {LOCK_NAME} is not recognized", category=category
        )
        zarr.consolidate_metadata(str(path), zarr_format=3)
