"""The store as a whole: create or check it, open it, read its root metadata, list its
tiles, and write zarr's consolidated listing."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import zarr
import zarr.errors

from npa_precompute.errors import StoreError
from npa_precompute.store.lock import LOCK_NAME
from npa_precompute.store.meta import _ATTR_KEY, SCHEMA_VERSION, StoreInfo

__all__ = [
    "check_out",
    "consolidate_store",
    "create_or_check_store",
    "drop_consolidated",
    "is_consolidated",
    "list_tiles",
    "open_store",
    "store_info",
    "store_path",
]


def store_path(root: zarr.Group) -> str | None:
    """The folder of a store opened from a local path (None for other zarr stores)."""
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
    where = f"store {store_path(root) or root}"
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
