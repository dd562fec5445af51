"""Weights derived at read time from the stored affinity counts.

The store keeps, per tile, the raw counts of Eq. 1 for every k (``affinity/k<K>``).
Any weights array ``k<K>_<transform>`` is an exact function of those counts: a lookup
table per k and transformation, evaluated once per possible count in float64 and
rounded to float32 (:meth:`~npa_precompute.transforms.WeightTransform.apply`), with 0 at
ignore pixels; ``norm`` (Eq. 2) also needs the tile's min and max count over its
non-ignore pixels, which the store records per tile and k (tile attr ``count_range``).
So every reader can ask for any weights name whose counts are stored, materialized or
not, and gets the values the precompute would have written, bit for bit.

Names (:class:`~npa_precompute.names.WeightsSpec`, re-exported here with
:func:`parse_weights_name`):

* ``k<K>_<slug>``, e.g. ``k32_log10_L0.5``, ``k16_norm_L0``, ``k32_raw``,
  ``k32_log_a2_L0.5``: one k, one transformation (:func:`~npa_precompute.weights_name`).
* ``ms_k<K1>-<K2>-..._<slug>``, e.g. ``ms_k8-16-32_log10_L0.5``: multi-scale weights,
  the mean over the listed k of the per-k weights,
  ``W = (1/n) * sum_k W_k`` with ``W_k`` the float32 weights ``k<K>_<slug>`` (0 at
  ignore pixels), summed in float64 in increasing k and rounded to float32 (then to the
  store's weights dtype). ``norm`` normalizes each k with its own range.

:func:`npa_precompute.open_weights` opens one of them as a read-only array (numpy-style slicing).
Deriving a 513 x 513 window costs about as much as decompressing it: one table lookup
per pixel on one core (:func:`derive`); :class:`npa_train.weights.TorchDeriver` does the
same on a torch device (the trainer's GPU), with identical float32 values.

Every derived path (:func:`npa_precompute.open_weights`, ``Tile.weights``, ``export``, ``inspect``,
``show``, the trainer's dataset, ``preview``) builds a :class:`Deriver`, which refuses
weights the store's dtype cannot hold (``k130_raw`` in a float16 store) with the check
``npa-precompute run`` applies (:func:`~npa_precompute.transforms.check_weight_range`),
as a :class:`~npa_precompute.transforms.WeightRangeError` of the argument ``weights``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from npa_precompute._kernels import gather_masked, gather_masked_add, valid_min_max
from npa_precompute.errors import StoreError
from npa_precompute.names import WeightsSpec, parse_weights_name
from npa_precompute.regions import compact_region, format_region, window_size
from npa_precompute.transforms import MAX_TABLE, WeightRangeError, check_weight_range

__all__ = [
    "DerivedWeights",
    "Deriver",
    "WeightsSpec",
    "check_derivable",
    "derive",
    "parse_weights_name",
]


def check_derivable(spec: WeightsSpec, dtype: np.dtype | str, *, ndim: int = 2) -> None:
    """Refuse weights whose values ``dtype`` cannot hold, as ``npa-precompute run`` does.

    Single-k weights: :func:`~npa_precompute.transforms.check_weight_range` in ``dtype``.
    Multi-scale weights: each k's in float32 (they are computed in float32), and the
    largest possible mean in ``dtype`` (``ms_k2-130_raw`` fits float16 where
    ``k130_raw`` does not). ``ndim``: spatial axes of the tile (3 for a volume, whose
    windows hold ``(2k + 1)**3`` voxels).

    Raises
    ------
    WeightRangeError
        Of the argument ``weights``: the name, the largest weight and the limit of ``dtype``.
    """
    dtype = np.dtype(dtype)
    names = {"transforms": "transform", "k": "k =", "dtype": "a store written with --dtype"}
    try:
        check_weight_range(spec.ks, [spec.transform], np.float32 if spec.multiscale else dtype,
                           names=names, ndim=ndim)  # fmt: skip
        if spec.multiscale:
            top = sum(spec.transform.max_weight(k, ndim) for k in spec.ks) / len(spec.ks)
            with np.errstate(over="ignore"):  # rounded as Deriver rounds: float64 -> 32 -> dtype
                stored = np.float64(top).astype(np.float32).astype(dtype)
            if not np.isfinite(stored):
                limit = float(np.finfo(dtype).max)
                raise WeightRangeError(
                    f"the mean over k = {', '.join(map(str, spec.ks))} reaches {top:.6g}, "
                    f"above {limit:.6g}, the largest {dtype}; use a store written with "
                    "--dtype float32, or smaller k"
                )
    except WeightRangeError as exc:
        reason = f"{spec.name!r} cannot be derived in this store's {dtype} weights: {exc}"
        raise WeightRangeError(reason, detail=str(exc), param="weights") from None


def _window(k: int | tuple[int, ...], ndim: int) -> int:
    """Voxels in the window of ``k`` (an int: ``(2k + 1)**ndim``; a region tuple: the
    product over its axes)."""
    return window_size(k if isinstance(k, tuple) else (int(k),) * ndim)


def _needs_range(spec: WeightsSpec, k: int | tuple[int, ...], ndim: int = 2) -> bool:
    """Whether deriving ``k`` of ``spec`` needs the tile's min/max count."""
    return spec.transform.needs_range or _window(k, ndim) > MAX_TABLE


class Deriver:
    """Derives one weights name of one tile from windows of its counts and labels.

    Parameters
    ----------
    spec : WeightsSpec
    ranges : {k: (min, max) count over the tile's non-ignore pixels, or None}
        Needed for ``norm`` (and for k > 1023); other transformations use them to size
        the lookup table like the precompute did, and the largest possible count
        ``(2k + 1)**ndim - 1`` when None. ``max < 0``: every pixel of the tile is ignored.
    ignore_index : label value of ignored pixels (weight 0)
    dtype : float32 or float16, the weights dtype of the store
    ndim : spatial axes of the tile, keyword-only (2: a label map, 3: a volume)

    Raises
    ------
    WeightRangeError
        ``dtype`` cannot hold the weights (:func:`check_derivable`).
    ValueError
        A range is missing where it is needed.
    """

    def __init__(
        self,
        spec: WeightsSpec,
        ranges: Mapping[int, tuple[int, int] | None],
        *,
        ignore_index: int,
        dtype: np.dtype | str = np.float32,
        ndim: int = 2,
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.ndim = int(ndim)
        check_derivable(spec, self.dtype, ndim=self.ndim)
        self.spec = spec
        self.ranges = {compact_region(k): (None if r is None else (int(r[0]), int(r[1])))
                       for k, r in ranges.items()}  # fmt: skip
        for k in spec.ks:
            if self.ranges.get(k) is None and _needs_range(spec, k, self.ndim):
                raise ValueError(f"deriving {spec.name!r} needs the tile's count range for k={k}")
        self.ignore_index = int(ignore_index)
        self._tables: dict[int, np.ndarray | None] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tables": {}}  # tables are rebuilt where they are used

    def table(self, k: int) -> np.ndarray | None:
        """float32 weights of the counts ``0 .. max`` for ``k`` (None: too large, per pixel)."""
        if k not in self._tables:
            r = self.ranges.get(k)
            lo, hi = r if r is not None else (0, _window(k, self.ndim) - 1)
            self._tables[k] = self.spec.transform.lookup_table(lo, hi)
        return self._tables[k]

    def derive_k(self, k: int, counts: np.ndarray, label: np.ndarray) -> np.ndarray:
        """float32 weights of one k for a window (any shape; counts and label alike)."""
        counts = np.ascontiguousarray(counts)
        label = np.ascontiguousarray(label)
        if counts.shape != label.shape:
            raise ValueError(f"counts shape {counts.shape} differs from label shape {label.shape}")
        table = self.table(k)
        if table is None:  # astronomically large k: per pixel, as WeightTransform.apply
            lo, hi = self.ranges[k]
            out = self.spec.transform.per_pixel(counts, lo, hi)
            out[label == self.ignore_index] = 0
            return out
        out = np.empty(counts.shape, dtype=np.float32)
        bad = gather_masked(counts.reshape(-1), label.reshape(-1), self.ignore_index, table,
                            out.reshape(-1))  # fmt: skip
        self._check(bad, k, table)
        return out

    def _add_k(self, k: int, counts: np.ndarray, label: np.ndarray, acc: np.ndarray) -> None:
        """acc += float64 weights of one k (acc: float64, the window's shape, contiguous)."""
        table = self.table(k)
        if table is None:
            acc += self.derive_k(k, counts, label)
            return
        counts = np.ascontiguousarray(counts)
        label = np.ascontiguousarray(label)
        if counts.shape != label.shape:
            raise ValueError(f"counts shape {counts.shape} differs from label shape {label.shape}")
        bad = gather_masked_add(counts.reshape(-1), label.reshape(-1), self.ignore_index, table,
                                acc.reshape(-1))  # fmt: skip
        self._check(bad, k, table)

    @staticmethod
    def _check(bad: int, k: int, table: np.ndarray) -> None:
        if bad:
            raise StoreError(
                f"{bad} count(s) of k={format_region(k)} exceed the tile's recorded maximum "
                f"{len(table) - 1}: the counts or the tile's count_range attr are corrupted; "
                "recompute the tile (npa-precompute run --overwrite)"
            )

    def __call__(self, counts: Sequence[np.ndarray], label: np.ndarray) -> np.ndarray:
        """Weights of a window: ``counts[i]`` the window of ``affinity/k<ks[i]>``."""
        ks = self.spec.ks
        if len(counts) != len(ks):
            raise ValueError(f"{self.spec.name!r} needs {len(ks)} count windows, got {len(counts)}")
        if not self.spec.multiscale:
            out = self.derive_k(ks[0], counts[0], label)
        else:  # sum of the float32 per-k weights in float64, in increasing k
            acc = np.zeros(np.shape(label), dtype=np.float64)
            for k, c in zip(ks, counts, strict=True):
                self._add_k(k, c, label, acc)
            acc /= len(ks)
            out = acc.astype(np.float32)
        return out if self.dtype == np.float32 else out.astype(self.dtype)


def derive(
    name: str | WeightsSpec,
    counts: Sequence[np.ndarray] | Mapping[int, np.ndarray],
    label: np.ndarray,
    *,
    ignore_index: int,
    ranges: Mapping[int, tuple[int, int] | None] | None = None,
    dtype: np.dtype | str = np.float32,
) -> np.ndarray:
    """Weights ``name`` of a window from its counts and labels (one call, no caching).

    Parameters
    ----------
    name : weights name or WeightsSpec
    counts : the windows of ``affinity/k<K>`` for the name's k, in increasing k (or {k: window})
    label : the window of the tile's labels, (h, w) or, of a volume, (d, h, w)
    ignore_index : keyword-only
    ranges : {k: (min, max)} over the whole tile's non-ignore pixels; required for ``norm``.
        For a whole tile, ``None`` takes them from ``counts`` and ``label``.
    dtype : float32 (default) or float16
    """
    spec = WeightsSpec.parse(name)
    if isinstance(counts, Mapping):
        counts = [counts[k] for k in spec.ks]
    if ranges is None:
        ignore = np.ascontiguousarray(label) == ignore_index
        ranges = {k: tuple(int(v) for v in valid_min_max(np.ascontiguousarray(c), ignore))
                  for k, c in zip(spec.ks, counts, strict=True)}  # fmt: skip
    return Deriver(spec, ranges, ignore_index=ignore_index, dtype=dtype,
                   ndim=max(2, np.ndim(label)))(counts, label)  # fmt: skip


class DerivedWeights:
    """A weights array of a tile computed from its counts when sliced (read-only).

    Behaves like the stored ``zarr.Array`` for reading: ``shape``, ``dtype``, ``ndim``,
    ``attrs``, numpy-style ``[...]`` slicing and ``np.asarray``. Values equal the array
    ``npa-precompute run`` would have stored, bit for bit.
    """

    def __init__(self, tile, spec: WeightsSpec, deriver: Deriver) -> None:
        self.tile_id = tile.tile_id
        self.spec = spec
        self.name = spec.name
        self.path = f"{tile.group.path}/weights/{spec.name}"
        self.deriver = deriver
        self.label = tile.label
        self.counts = [tile.affinity(k) for k in spec.ks]
        self.shape = tuple(int(s) for s in tile.label.shape)
        self.dtype = deriver.dtype
        self.ndim = len(self.shape)
        self.attrs = spec.attrs()

    def __getitem__(self, key) -> np.ndarray:
        label = np.asarray(self.label[key])
        counts = [np.asarray(c[key]) for c in self.counts]
        return self.deriver(counts, label)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"<DerivedWeights {self.name} of tile {self.tile_id!r} {self.shape} {self.dtype}>"


def _store_path(tile) -> str:
    root = getattr(tile.group.store, "root", None)
    return str(root) if root is not None else "STORE"


def add_command(tile, ks: Sequence[int]) -> str:
    """The ``npa-precompute run`` line that adds counts for ``ks`` to ``tile`` in place."""
    import shlex

    meta = tile.meta
    parts = ["npa-precompute", "run", meta.label_path or "LABELS"]
    if meta.image_path:
        parts += ["--images", meta.image_path]
    parts += ["--out", _store_path(tile)]
    preset = meta.preset_info
    if preset is not None and preset.preset and preset.preset != "isprs":
        parts += ["--preset", preset.preset]
        if preset.preset == "index":
            parts += ["--num-classes", str(preset.num_classes),
                      "--ignore-index", str(preset.ignore_index)]  # fmt: skip
    parts += ["--k", ",".join(format_region(k) for k in ks)]
    for spec in meta.transform_specs:
        parts += ["--transform", spec]
    parts += ["--no-store-weights"]
    if meta.weight_dtype != np.float32:
        parts += ["--dtype", meta.weight_dtype.name]
    if (meta.unknown_colors or "error") != "error":
        parts += ["--unknown-colors", meta.unknown_colors]
    if (meta.chunk or 256) != 256:
        parts += ["--chunk", str(meta.chunk)]
    return " ".join(shlex.quote(p) for p in parts)


def tile_deriver(tile, name: str | WeightsSpec) -> Deriver:
    """A :class:`Deriver` for weights ``name`` of an opened tile (ranges from its attrs, or
    computed from its counts for tiles written before they were recorded).

    Raises
    ------
    StoreError
        Not a weights name, or counts of a k the tile lacks (the message lists the k it
        has and the command that adds the missing ones).
    """
    try:
        spec = WeightsSpec.parse(name)
    except ValueError as exc:
        have = ", ".join(tile.weight_names) or "none"
        raise StoreError(f"tile {tile.tile_id!r}: {exc}; its named weights: {have}") from None
    if spec.online:
        raise StoreError(
            f"{spec.name!r} names weights computed from each augmented label during training "
            f"(npa-train fit --weights {spec.name}); the store derives {spec.array_name!r}"
        )
    have = tile.affinity_ks
    missing = [k for k in spec.ks if compact_region(k) not in have]
    if missing:
        ks = ", ".join(map(format_region, missing))
        held = ", ".join(map(format_region, have)) or "none"
        raise StoreError(
            f"tile {tile.tile_id!r} has no affinity counts for k = {ks}, which weights "
            f"{spec.name!r} are derived from; it has k = {held} "
            f"(named weights: {', '.join(tile.weight_names) or 'none'}; any other transform "
            "of these k works too). Add the missing k to the store in place (existing arrays "
            "are kept) with: "
            f"{add_command(tile, missing)} (pass all the store's label files to add them "
            "to every tile)"
        )
    ranges = {}
    for k in spec.ks:
        ranges[k] = tile.count_range(k, compute=_needs_range(spec, k, tile.label.ndim))
    return Deriver(spec, ranges, ignore_index=tile.ignore_index, dtype=tile.weight_dtype,
                   ndim=tile.label.ndim)  # fmt: skip


def derived_weights(tile, name: str | WeightsSpec) -> DerivedWeights:
    """The weights ``name`` of an opened tile, derived from its counts (:func:`tile_deriver`)."""
    deriver = tile_deriver(tile, name)
    return DerivedWeights(tile, deriver.spec, deriver)


def multiscale_formula(per_k: Sequence[np.ndarray]) -> np.ndarray:
    """The README's multi-scale formula on already computed float32 per-k weights."""
    acc = np.zeros(np.shape(per_k[0]), dtype=np.float64)
    for w in per_k:
        acc += np.asarray(w, dtype=np.float64)
    return (acc / len(per_k)).astype(np.float32)
