"""The store's typed metadata: the root's :class:`StoreInfo`, a tile's :class:`TileMeta`
(built by every precompute path with :func:`build_tile_meta`), and which arrays of a
tile group belong to it (:func:`tile_ks`, :func:`stored_weights`, :func:`leftover_arrays`).

No other module reads the attrs by key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import zarr

from npa_precompute.errors import StoreError
from npa_precompute.names import counts_name, parse_counts_name
from npa_precompute.regions import compact_region

__all__ = [
    "SCHEMA_VERSION",
    "IncompleteTileError",
    "StoreError",
    "StoreInfo",
    "TileMeta",
    "array_params",
    "build_tile_meta",
    "leftover_arrays",
    "stored_weights",
    "tile_ks",
    "tile_meta",
]

#: Version of the layout (the package docstring); bumped on any incompatible change.
SCHEMA_VERSION = 1
_ATTR_KEY = "npaloss"


class IncompleteTileError(StoreError):
    """A tile whose writing did not finish (its ``complete`` marker is missing)."""


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


def _ranges(v) -> dict[int | tuple[int, ...], tuple[int, int]]:
    """{k: (lo, hi)}; the attr's keys are counts names' k (``"32"``, ``"2x14x14"``)."""
    out = {}
    for k, r in _mapping(v).items():
        lo, hi = _ints(r)
        key = k if not isinstance(k, str) else parse_counts_name(f"k{k}")
        if key is None:
            raise ValueError(f"not a search region: {k!r}")
        out[compact_region(key)] = (lo, hi)
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
    shape : (H, W), or (D, H, W) for a label volume
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
    count_range : dict of int (or region tuple) to (int, int), or None
        (min, max) of the counts of each k over non-ignore pixels (Eq. 2's range); the
        attr's keys are the k of the counts names (``"32"``, ``"2x14x14"``).
    stored_weights : tuple of str or None
        Names of the weights arrays that belong to the tile (None: every array).
    image_mean, image_std : tuple of float or None
        Per-band image statistics (:mod:`npa_precompute.imagestats`).
    blockwise : dict or None
        ``{"block", "halo"}`` of a tile written block by block.
    spacing : dict or None
        Voxel spacing of a volume read from its file's header (NIfTI pixdim):
        ``{"values": [d_D, d_H, d_W], "unit": "mm", "axes": ["z", "y", "x"], "source"}``
        (:meth:`npa_precompute.volumes.Volume.attrs`).
    complete : bool
        Set last, after every array is written.
    extra : dict
        Keys this version does not know (kept by :meth:`to_dict`).
    """

    tile_id: str
    shape: tuple[int, ...] | None = None
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
    spacing: dict | None = None
    complete: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    _KEYS = ("tile_id", "shape", "source", "params", "npaloss_version", "georef",
             "ignore_fraction", "class_pixels", "count_range", "stored_weights", "image_mean",
             "image_std", "blockwise", "spacing", "complete")  # fmt: skip

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
        if shape is not None and len(shape) not in (2, 3):
            raise _malformed(where, "shape", d["shape"], "expected (H, W) or (D, H, W)")
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
            spacing=_parse(d, "spacing", _mapping, where),
            complete=d.get("complete") is True,
            extra={k: v for k, v in d.items() if k not in cls._KEYS},
        )

    def to_dict(self) -> dict:
        """The JSON attrs; None entries are left out, except ``georef`` (always written)."""
        out = {}
        for key in self._KEYS:
            value = getattr(self, key)
            if key == "count_range" and value is not None:
                value = {counts_name(k)[1:]: list(r) for k, r in value.items()}
            if value is not None or key == "georef":
                out[key] = _lists(value)
        return {**out, **self.extra}

    @property
    def ks(self) -> tuple[int | tuple[int, ...], ...] | None:
        """k of the counts the tile's params name, an int or a region tuple (one k per
        axis) each (None: not recorded)."""
        ks = self.params.get("ks")
        return None if ks is None else tuple(compact_region(k) for k in ks)

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
    shape: tuple[int, ...],
    source: dict,
    params: dict,
    georef: dict | None,
    class_pixels: Sequence[int] | np.ndarray | None = None,
    ignored: int | None = None,
    count_range: Mapping[int, tuple[int, int]] | None = None,
    stored_weights: Iterable[str] | None = None,
    image_stats: Mapping[str, Sequence[float]] | None = None,
    blockwise: dict | None = None,
    spacing: dict | None = None,
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
    ignored : ignored pixels (``ignore_fraction`` is ``ignored / (H * W)``, of a
        volume ``ignored / (D * H * W)``)
    count_range : {k: (min, max)} of the counts over non-ignore pixels
    stored_weights : names of the weights arrays the tile holds (sorted here)
    image_stats : ``{"image_mean", "image_std"}`` of :mod:`npa_precompute.imagestats`
    blockwise : ``{"block", "halo"}`` of a blockwise run
    spacing : voxel spacing of a volume (:class:`TileMeta`)

    Returns
    -------
    TileMeta
        ``complete`` False: :meth:`~npa_precompute.store.writer.TileWriter.commit` sets it last.
    """
    from npa_precompute._version import __version__

    stats = image_stats or {}
    n = int(np.prod([int(s) for s in shape], dtype=np.int64))
    return TileMeta(
        tile_id=tile_id,
        shape=tuple(int(s) for s in shape),
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
        spacing=None if spacing is None else dict(spacing),
    )


def tile_ks(group: zarr.Group, meta: TileMeta) -> list[int | tuple[int, ...]]:
    """k (int, or region tuple) of the counts arrays that belong to a tile (named in its
    params)."""
    if "affinity" not in group:
        return []
    present = {parse_counts_name(n) for n in group["affinity"].array_keys()} - {None}
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


def array_params(array) -> tuple[int | tuple[int, ...] | None, str | None, tuple | None]:
    """``(k, transform, ks)`` of a counts or weights array, from its attrs (None where
    absent): the search region (an int, or a tuple of one k per axis), the canonical
    transformation spec, the k averaged by multi-scale weights."""
    attrs = array.attrs
    k, ks = attrs.get("k"), attrs.get("ks")
    return (
        None if k is None else compact_region(k),
        attrs.get("transform"),
        None if ks is None else tuple(compact_region(x) for x in ks),
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
                if parse_counts_name(n) not in ks]  # fmt: skip
    if "weights" in group:
        kept = set(stored_weights(group, meta))
        out += [f"weights/{n}" for n in group["weights"].array_keys() if n not in kept]
    return sorted(out)
