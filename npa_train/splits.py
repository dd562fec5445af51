"""Training and validation tiles: explicit lists or a named split (:data:`SPLITS`).

The named splits are those of the papers (``vaihingen-paper``: Feng et al. 2020, §5.1,
train areas 1, 3, 5, 7, 13, 17, 21, 23, 26, 32, 37 and validation areas 11, 15, 28, 30,
34).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from npa_precompute.errors import ParameterError
from npa_precompute.params import parse_tiles
from npa_precompute.store import StoreError, list_tiles, open_store, open_tile, store_info
from npa_train.choices import SPLITS

if TYPE_CHECKING:
    import zarr

__all__ = ["SPLITS", "available_weights", "resolve_split"]


def resolve_split(
    store: str | os.PathLike,
    *,
    tiles: str | Sequence[str] | None = None,
    val_tiles: str | Sequence[str] | None = None,
    split: str | None = None,
    root: zarr.Group | None = None,
) -> tuple[list[str] | None, list[str]]:
    """Training and validation tile ids from explicit lists or a named split.

    Parameters
    ----------
    store : weight store
    tiles : training tiles (list or comma-separated); None: every complete tile not in
        ``val_tiles``
    val_tiles : validation tiles (recorded in the run for evaluation, never trained on)
    split : a name of :data:`SPLITS` (e.g. ``"vaihingen-paper"``) instead of the lists
    root : the store opened already (:func:`~npa_precompute.store.open_store`), so it is
        not opened again; None: ``store`` is opened

    Returns
    -------
    (train tiles or None for "all complete tiles", validation tiles)

    Raises
    ------
    ValueError
        Unknown split, a split together with explicit lists, a split for another preset,
        or a tile both in training and validation.
    StoreError
        Tiles of the split or of ``val_tiles`` missing from the store (the message lists
        the missing ones and the tiles present); an incomplete validation tile.
    """
    tiles, val = parse_tiles(tiles), parse_tiles(val_tiles) or []
    root = open_store(store) if root is None else root
    present = list_tiles(root)
    if split is not None:
        if split not in SPLITS:
            raise ParameterError("split", f"must be one of {tuple(SPLITS)}, got {split!r}")
        if tiles or val:
            raise ParameterError(
                "split",
                "cannot be combined with explicit tile lists (--tiles, --val-tiles)",
                message="give either `split` or explicit train/validation tiles, not both",
            )
        spec = SPLITS[split]
        preset = store_info(root).preset
        if preset != spec["preset"]:
            raise ValueError(
                f"split {split!r} is for stores made with the {spec['preset']!r} preset; "
                f"{store} was made with {preset!r}"
            )
        tiles = [spec["pattern"].format(n) for n in spec["train"]]
        val = [spec["pattern"].format(n) for n in spec["val"]]
        missing = [t for t in tiles + val if t not in present]
        if missing:
            raise StoreError(
                f"split {split!r} needs {len(missing)} tile(s) missing from {store}: "
                f"{', '.join(missing)}; the store holds: {', '.join(present) or 'none'}"
            )
    unknown = [t for t in val if t not in present]
    if unknown:
        raise StoreError(
            f"validation tile(s) {', '.join(unknown)} not in the store; tiles: "
            f"{', '.join(present) or 'none'}"
        )
    for t in val:
        open_tile(root, t)  # IncompleteTileError for an unfinished tile
    if tiles is not None:
        both = sorted(set(tiles) & set(val))
        if both:
            raise ValueError(f"tile(s) {', '.join(both)} are in both training and validation")
    elif val:
        tiles = [t for t in list_tiles(root, complete_only=True) if t not in val]
        if not tiles:
            raise StoreError(f"no complete tile of {store} is left for training besides {val}")
    return tiles, val


def available_weights(
    store: str | os.PathLike, tiles: list[str] | None, *, root: zarr.Group | None = None
) -> list[str]:
    """Weights array names every one of ``tiles`` (None: every complete tile) holds, sorted.

    Tiles that cannot be opened (incomplete) are skipped; a missing store raises
    ``StoreError``. ``root``: the store opened already (as :func:`resolve_split`).
    """
    root = open_store(store) if root is None else root
    ids = tiles or list_tiles(root, complete_only=True)
    names: set[str] | None = None
    for t in ids:
        try:
            have = set(open_tile(root, t).weight_names)
        except StoreError:
            continue
        names = have if names is None else names & have
    return sorted(names or ())
