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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
import zarr.errors
from zarr.codecs import BloscCodec

__all__ = [
    "LOCK_NAME",
    "SCHEMA_VERSION",
    "IncompleteTileError",
    "StoreError",
    "StoreLock",
    "StoreLockedError",
    "StoreWriteError",
    "Tile",
    "add_arrays",
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
    """The holder's line (it writes it right after taking the lock: wait for it a little)."""
    import time

    for _ in range(10):
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


def store_info(root: zarr.Group) -> dict:
    """The store's root attrs (classes, palette, ignore value, preset, schema version)."""
    return dict(root.attrs[_ATTR_KEY])


def create_or_check_store(path: str | os.PathLike, info: dict, *, overwrite: bool) -> zarr.Group:
    """Create a store with root attrs ``info`` or check an existing one against them.

    An existing store whose preset, classes or ignore value differ is refused
    unless ``overwrite``, which recreates it empty.

    Raises
    ------
    StoreError
        Existing store with other settings and ``overwrite`` False, or a path that
        exists but is not an npaloss store.
    """
    path = Path(path)
    info = {**info, "schema_version": SCHEMA_VERSION}
    if (path / "zarr.json").is_file():
        try:
            root = open_store(path, mode="r+")
        except StoreError:
            if not overwrite:
                raise
            root = None
        if root is not None:
            old = store_info(root)
            keys = ("preset", "classes", "ignore_index", "palette", "label_remap")
            diff = [k for k in keys if old.get(k) != info.get(k)]
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
    root = zarr.create_group(path, attributes={_ATTR_KEY: info}, overwrite=False)
    root.create_group("tiles")
    return root


def drop_consolidated(root: zarr.Group) -> None:
    """Rewrite the root metadata without zarr's consolidated listing.

    Called before tiles are (re)written, so that readers of the consolidated listing
    never see a stale one; :func:`consolidate_store` writes it again at the end of a run.
    """
    root.attrs[_ATTR_KEY] = store_info(root)


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
    if root["tiles"][tile_id].attrs.get("complete") is True:
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
    attrs: dict,
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
    attrs : tile attrs (source paths, hashes, params); ``complete`` is added last
    chunk : chunk side in pixels
    """
    store = _store_path(root)
    with writing(tile_id, "", store):
        _clear_tile(root, tile_id)
        g = root["tiles"].create_group(tile_id, attributes={**attrs, "complete": False})
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
    attrs: dict,
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
    attrs : tile attrs; ``complete`` is set False
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
        g = root["tiles"].create_group(tile_id, attributes={**attrs, "complete": False})
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


def mark_complete(group: zarr.Group, attrs: dict | None = None) -> None:
    """Add ``attrs`` to a tile group and set its ``complete`` marker (the tile's last write)."""
    tile_id = group.path.rsplit("/", 1)[-1]
    with writing(tile_id, "", getattr(group.store, "root", None)):
        if attrs:
            group.attrs.update(attrs)
        group.attrs["complete"] = True


@dataclass
class Tile:
    """A complete tile of the store, opened for reading (arrays are read lazily).

    Attributes
    ----------
    tile_id : str
    group : zarr.Group
    label : zarr.Array, (H, W) uint8|uint16
    image : zarr.Array (H, W, C) or None
    attrs : dict, the tile's attrs
    ignore_index : int, the store's ignore value
    """

    tile_id: str
    group: zarr.Group
    label: zarr.Array
    image: zarr.Array | None
    attrs: dict
    ignore_index: int = 255

    def __post_init__(self) -> None:
        self._ranges: dict[int, tuple[int, int]] = {}

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.label.shape)

    @property
    def weight_dtype(self) -> np.dtype:
        """dtype of the tile's weights (``params.weight_dtype``, float32 by default)."""
        return np.dtype((self.attrs.get("params") or {}).get("weight_dtype") or "float32")

    @property
    def affinity_ks(self) -> list[int]:
        """k whose counts the tile holds (arrays named by the tile's params; an array left
        half-written by an interrupted grow is not among them)."""
        return sorted(set(_tile_ks(self.group, self.attrs)))

    @property
    def stored_weight_names(self) -> list[str]:
        """Names of the weights arrays materialized in the store."""
        return sorted(_stored_weights(self.group, self.attrs))

    @property
    def weight_names(self) -> list[str]:
        """The tile's named weights: every stored array, and every k x transform of its
        params (derived from the counts when not stored). Any other transformation of a
        stored k can be asked for too (:meth:`weights`)."""
        from npa_precompute.transforms import weights_name

        params = self.attrs.get("params") or {}
        names = set(self.stored_weight_names)
        ks = self.affinity_ks
        for spec in params.get("transforms") or []:
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

    def count_range(self, k: int, *, compute: bool = True) -> tuple[int, int] | None:
        """(min, max) of the counts of ``k`` over the tile's non-ignore pixels.

        From the tile's ``count_range`` attr; a tile written before it was recorded has it
        computed from the counts (the whole array is read once; None with
        ``compute=False``). ``max < 0``: every pixel is ignored.
        """
        k = int(k)
        recorded = (self.attrs.get("count_range") or {}).get(str(k))
        if recorded is not None:
            return int(recorded[0]), int(recorded[1])
        if k not in self._ranges:
            if not compute:
                return None
            from npa_precompute._kernels import valid_min_max

            counts = np.ascontiguousarray(self.affinity(k)[...])
            ignore = np.asarray(self.label[...]) == self.ignore_index
            lo, hi = valid_min_max(counts, ignore)
            self._ranges[k] = (int(lo), int(hi))
        return self._ranges[k]


def _tile_ks(group: zarr.Group, attrs: dict) -> list[int]:
    """k of the counts arrays that belong to a tile (named in its params)."""
    if "affinity" not in group:
        return []
    present = {int(n[1:]) for n in group["affinity"].array_keys() if n[1:].isdigit()}
    named = (attrs.get("params") or {}).get("ks")
    return [k for k in present if named is None or k in named]


def _stored_weights(group: zarr.Group, attrs: dict) -> list[str]:
    """Names of the materialized weights arrays that belong to a tile: those its
    ``stored_weights`` attr lists (every array of the group for stores written before it)."""
    if "weights" not in group:
        return []
    present = list(group["weights"].array_keys())
    named = attrs.get("stored_weights")
    return [n for n in present if named is None or n in named]


def leftover_arrays(group: zarr.Group) -> list[str]:
    """Paths (``affinity/k64``, ``weights/...``) of arrays in a tile's groups that do not
    belong to it: written by a grow that was interrupted before its commit."""
    attrs = dict(group.attrs)
    out = []
    if "affinity" in group:
        ks = set(_tile_ks(group, attrs))
        out += [f"affinity/{n}" for n in group["affinity"].array_keys()
                if not (n[1:].isdigit() and int(n[1:]) in ks)]  # fmt: skip
    if "weights" in group:
        kept = set(_stored_weights(group, attrs))
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
    if "stored_weights" not in group.attrs:
        # a tile written before stored_weights was recorded: name its arrays first, so that
        # the new ones stay outside it until commit_arrays
        group.attrs["stored_weights"] = _stored_weights(group, dict(group.attrs))
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


def commit_arrays(group: zarr.Group, attrs: dict) -> None:
    """Make a grow's new arrays part of the tile: one atomic write of its attrs
    (``params`` naming the new k, ``stored_weights`` the new weights, ``count_range``)."""
    group.attrs.update(attrs)


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
    ignore = int(store_info(root).get("ignore_index", 255))
    return Tile(tile_id, g, g["label"], image, attrs, ignore)


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
