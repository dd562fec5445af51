"""Reading a tile: :func:`open_tile` gives a :class:`Tile`, whose arrays are found by name
(:meth:`Tile.ref`, an :class:`ArrayRef`) and read by window (:meth:`Tile.read_window`,
through :mod:`npa_precompute.shards`); weights that are not stored are derived from the
counts (:mod:`npa_precompute.derived`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import zarr

from npa_precompute.errors import ParameterError, StoreError
from npa_precompute.names import counts_name, parse_counts_name
from npa_precompute.regions import compact_region, format_region, region_order
from npa_precompute.store.layout import list_tiles, open_store, store_info
from npa_precompute.store.meta import (
    IncompleteTileError,
    TileMeta,
    array_params,
    stored_weights,
    tile_ks,
)

__all__ = ["ArrayRef", "Tile", "open_tile", "open_weights"]


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
    k : int, tuple of int or None
        Search region of ``affinity`` and ``weights`` arrays: an int, or one k per axis
        (``(2, 14, 14)`` of ``affinity/k2x14x14``); None for multi-scale weights.
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
    k: int | tuple[int, ...] | None = None
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
    def shape(self) -> tuple[int, ...]:
        """(H, W), or (D, H, W) of a label volume."""
        return tuple(self.label.shape)

    @property
    def is_volume(self) -> bool:
        """Whether the tile is a label volume (its arrays are (D, H, W))."""
        return self.label.ndim == 3

    @property
    def weight_dtype(self) -> np.dtype:
        """dtype of the tile's weights (``params.weight_dtype``, float32 by default)."""
        return self.meta.weight_dtype

    @property
    def affinity_ks(self) -> list[int | tuple[int, ...]]:
        """k whose counts the tile holds, ints or region tuples (one k per axis), by
        largest k (arrays named by the tile's params; an array left half-written by an
        interrupted grow is not among them)."""
        return list(self._listing[0])

    @property
    def stored_weight_names(self) -> list[str]:
        """Names of the weights arrays materialized in the store."""
        return list(self._listing[1])

    @cached_property
    def _listing(self) -> tuple[tuple, tuple[str, ...]]:
        # listed once, as the tile was when opened (like :attr:`meta`): a zarr listing
        # reads the metadata of every array in the group
        ks = sorted(set(tile_ks(self.group, self.meta)), key=region_order)
        return tuple(ks), tuple(sorted(stored_weights(self.group, self.meta)))

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

    def affinity(self, k: int | tuple[int, ...]) -> zarr.Array:
        """Raw Eq. 1 counts for search region ``k`` (an int, or one k per axis).

        Raises
        ------
        StoreError
            If ``k`` was not precomputed (the message lists the k that were).
        """
        k = compact_region(k)
        if k not in self.affinity_ks:
            have = ", ".join(format_region(h) for h in self.affinity_ks) or "none"
            raise StoreError(
                f"tile {self.tile_id!r} has no affinity for k={format_region(k)}; available "
                f"k: {have}"
            )
        return self.group["affinity"][counts_name(k)]

    def available(self) -> list[str]:
        """Paths of every array :meth:`array` gives (label, image, counts, named weights)."""
        names = ["label"] + (["image"] if self.image is not None else [])
        names += [f"affinity/{counts_name(k)}" for k in self.affinity_ks]
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
        k = parse_counts_name(text)
        if k is not None and k in self.affinity_ks:
            return ArrayRef(f"affinity/{counts_name(k)}", "affinity", self.affinity(k), k=k)
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

    def read_window(self, name: str, y0: int, y1: int, x0: int, x1: int, *,
                    depth: int | None = None) -> np.ndarray:  # fmt: skip
        """``array(name)[y0:y1, x0:x1]`` as a numpy array, read through :meth:`reader`.

        Stored arrays with the layout this package writes are read straight from their
        shard files (about three times faster than zarr for a crop's window). A volume's
        window is ``array(name)[:, y0:y1, x0:x1]`` (every slice), or
        ``array(name)[depth, y0:y1, x0:x1]`` (one slice), read through zarr.

        Parameters
        ----------
        name : str, as :meth:`ref`
        y0, y1, x0, x1 : int, the window (within the tile)
        depth : int, keyword-only
            Of a volume: the slice (index along D) to read; default every slice.

        Returns
        -------
        (y1 - y0, x1 - x0[, C]) array of the array's dtype; of a volume
        (D, y1 - y0, x1 - x0), or (y1 - y0, x1 - x0) with ``depth``

        Raises
        ------
        StoreError, TypeError
            As :meth:`ref`.
        ParameterError
            ``depth`` outside ``0 .. D - 1``, or given for a 2-D tile.
        """
        if not self.is_volume:
            if depth is not None:
                raise ParameterError("depth", f"applies to volumes; tile {self.tile_id!r} is 2-D")
            return self.reader(name).read(y0, y1, x0, x1)
        if depth is not None and not 0 <= int(depth) < self.shape[0]:
            raise ParameterError(
                "depth", f"must be in 0 .. {self.shape[0] - 1} (tile {self.tile_id!r} has "
                f"{self.shape[0]} slices), got {depth}"
            )  # fmt: skip
        z = slice(None) if depth is None else int(depth)
        return np.asarray(self.ref(name).array[z, y0:y1, x0:x1])

    def count_range(self, k: int, *, compute: bool = True) -> tuple[int, int] | None:
        """(min, max) of the counts of ``k`` over the tile's non-ignore pixels.

        From the tile's ``count_range`` attr; a tile written before it was recorded has it
        computed from the counts (the whole array is read once; None with
        ``compute=False``). ``max < 0``: every pixel is ignored.
        """
        k = compact_region(k)
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


def open_weights(store: str | os.PathLike, tile: str, name: str):
    """Open the weights ``name`` of one tile for reading, stored or derived from the counts.

    Parameters
    ----------
    store : store folder
    tile : tile id
    name : weights name such as ``"k32_log10_L0.5"``, ``"k16_norm_L0"`` or
        ``"ms_k8-16-32_log10_L0.5"``; any transformation of a k whose counts are stored

    Returns
    -------
    zarr.Array (a materialized array of that name) or
    :class:`~npa_precompute.derived.DerivedWeights`
        Both slice like numpy arrays and give the same float values.

    Raises
    ------
    StoreError
        No store, unknown or incomplete tile, not a weights name, or a k the tile has
        no counts for (the message lists the k it has and the command that adds them).
    """
    return open_tile(open_store(store), tile).weights(name)
