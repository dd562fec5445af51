"""Weights derived at read time from the stored affinity counts.

The store keeps, per tile, the raw counts of Eq. 1 for every k (``affinity/k<K>``).
Any weights array ``k<K>_<transform>`` is an exact function of those counts: a lookup
table per k and transformation, evaluated once per possible count in float64 and
rounded to float32 (:meth:`~npa_precompute.transforms.WeightTransform.apply`), with 0 at
ignore pixels; ``norm`` (Eq. 2) also needs the tile's min and max count over its
non-ignore pixels, which the store records per tile and k (tile attr ``count_range``).
So every reader can ask for any weights name whose counts are stored, materialized or
not, and gets the values the precompute would have written, bit for bit.

Names (:func:`parse_weights_name`):

* ``k<K>_<slug>``, e.g. ``k32_log10_L0.5``, ``k16_norm_L0``, ``k32_raw``,
  ``k32_log_a2_L0.5``: one k, one transformation (:func:`~npa_precompute.weights_name`).
* ``ms_k<K1>-<K2>-..._<slug>``, e.g. ``ms_k8-16-32_log10_L0.5``: multi-scale weights,
  the mean over the listed k of the per-k weights,
  ``W = (1/n) * sum_k W_k`` with ``W_k`` the float32 weights ``k<K>_<slug>`` (0 at
  ignore pixels), summed in float64 in increasing k and rounded to float32 (then to the
  store's weights dtype). ``norm`` normalizes each k with its own range.

:func:`npa_precompute.open_weights` opens one of them as a read-only array (numpy-style slicing).
Deriving a 513 x 513 window costs about as much as decompressing it: one table lookup
per pixel on one core (:func:`derive`); :class:`TorchDeriver` does the same on a torch
device (the trainer's GPU), where ``log`` tables are gathered and ``norm``/``raw`` are
evaluated with the same float64 operations, so both give identical float32 values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from npa_precompute._kernels import gather_masked, gather_masked_add, valid_min_max
from npa_precompute.errors import StoreError
from npa_precompute.transforms import MAX_TABLE, WeightTransform, parse_transform, weights_name

__all__ = [
    "DerivedWeights",
    "Deriver",
    "TorchDeriver",
    "WeightsSpec",
    "derive",
    "parse_weights_name",
]

_FLOAT = r"[0-9][0-9.eE+\-]*"
_SLUG = re.compile(
    rf"^(?:(?P<raw>raw)|(?P<kind>norm|log10|ln)_L(?P<L>{_FLOAT})"
    rf"|log_a(?P<a>{_FLOAT})_L(?P<La>{_FLOAT}))$"
)
_SINGLE = re.compile(r"^k(?P<k>[0-9]+)_(?P<slug>.+)$")
_MULTI = re.compile(r"^ms_k(?P<ks>[0-9]+(?:-[0-9]+)+)_(?P<slug>.+)$")


@dataclass(frozen=True)
class WeightsSpec:
    """What a weights name asks for: search regions and one transformation.

    Attributes
    ----------
    ks : tuple of int
        One k (``k32_...``), or two or more in increasing order (``ms_k8-16-32_...``).
    transform : WeightTransform
    multiscale : bool
        True for ``ms_`` names (the mean over ``ks``), even of a single k.
    """

    ks: tuple[int, ...]
    transform: WeightTransform
    multiscale: bool = False

    @property
    def name(self) -> str:
        """Canonical name, e.g. ``"k32_log10_L0.5"`` or ``"ms_k8-16-32_log10_L0.5"``."""
        if not self.multiscale:
            return weights_name(self.ks[0], self.transform)
        return f"ms_k{'-'.join(map(str, self.ks))}_{self.transform.slug}"

    @property
    def k(self) -> int | None:
        """The k of a single-k name, None for multi-scale names."""
        return None if self.multiscale else self.ks[0]

    def attrs(self) -> dict:
        """Attrs of the derived array, like a stored weights array's plus ``ks``, ``derived``."""
        return {
            "k": self.k,
            "ks": list(self.ks),
            "transform": self.transform.spec,
            "transform_params": self.transform.to_dict(),
            "derived": True,
        }


def _parse_slug(slug: str) -> WeightTransform | None:
    m = _SLUG.match(slug)
    if m is None:
        return None
    try:
        if m["raw"]:
            return parse_transform("raw")
        if m["kind"]:
            return parse_transform(f"{m['kind']}:L={m['L']}")
        return parse_transform(f"log:a={m['a']},L={m['La']}")
    except ValueError:
        return None


def parse_weights_name(name: str) -> WeightsSpec:
    """Parse a weights name: ``k32_log10_L0.5``, ``k16_norm_L0``, ``ms_k8-16-32_ln_L0.5``, ...

    Raises
    ------
    TypeError
        ``name`` is not a string.
    ValueError
        Not a weights name (the message shows the accepted forms).
    """
    if not isinstance(name, str):
        raise TypeError(f"weights name must be a string, got {type(name).__name__}")
    text = name.strip().removeprefix("weights/")
    single, multi = _SINGLE.match(text), _MULTI.match(text)
    m = single or multi
    transform = _parse_slug(m["slug"]) if m else None
    if transform is None:
        raise ValueError(
            f"{name!r} is not a weights name: expected k<K>_<transform> (k32_log10_L0.5, "
            "k32_ln_L0.5, k32_norm_L0.5, k32_log_a2_L0.5, k32_raw) or multi-scale "
            "ms_k<K1>-<K2>-..._<transform> (ms_k8-16-32_log10_L0.5)"
        )
    if single:
        return WeightsSpec((int(single["k"]),), transform)
    ks = tuple(sorted({int(k) for k in multi["ks"].split("-")}))
    return WeightsSpec(ks, transform, multiscale=True)


def _needs_range(transform: WeightTransform, k: int) -> bool:
    """Whether deriving ``k`` with ``transform`` needs the tile's min/max count."""
    return transform.kind == "norm" or (2 * k + 1) ** 2 > MAX_TABLE


class Deriver:
    """Derives one weights name of one tile from windows of its counts and labels.

    Parameters
    ----------
    spec : WeightsSpec
    ranges : {k: (min, max) count over the tile's non-ignore pixels, or None}
        Needed for ``norm`` (and for k > 1023); other transformations use them to size
        the lookup table like the precompute did, and the largest possible count
        ``(2k + 1)**2 - 1`` when None. ``max < 0``: every pixel of the tile is ignored.
    ignore_index : label value of ignored pixels (weight 0)
    dtype : float32 or float16, the weights dtype of the store

    Raises
    ------
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
    ) -> None:
        self.spec = spec
        self.ranges = {int(k): (None if r is None else (int(r[0]), int(r[1])))
                       for k, r in ranges.items()}  # fmt: skip
        for k in spec.ks:
            if self.ranges.get(k) is None and _needs_range(spec.transform, k):
                raise ValueError(f"deriving {spec.name!r} needs the tile's count range for k={k}")
        self.ignore_index = int(ignore_index)
        self.dtype = np.dtype(dtype)
        self._tables: dict[int, np.ndarray | None] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tables": {}}  # tables are rebuilt where they are used

    def table(self, k: int) -> np.ndarray | None:
        """float32 weights of the counts ``0 .. max`` for ``k`` (None: too large, per pixel)."""
        if k not in self._tables:
            t = self.spec.transform
            r = self.ranges.get(k)
            lo, hi = r if r is not None else (0, (2 * k + 1) ** 2 - 1)
            if hi < 0:
                self._tables[k] = np.zeros(0, dtype=np.float32)
            elif hi < MAX_TABLE:
                self._tables[k] = t.table(hi + 1, lo=lo, hi=hi).astype(np.float32)
            else:
                self._tables[k] = None
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
            out = self.spec.transform._formula(counts.astype(np.float64), lo, hi)
            out = out.astype(np.float32)
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
                f"{bad} count(s) of k={k} exceed the tile's recorded maximum "
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
    label : the window of the tile's labels
    ignore_index : keyword-only
    ranges : {k: (min, max)} over the whole tile's non-ignore pixels; required for ``norm``.
        For a whole tile, ``None`` takes them from ``counts`` and ``label``.
    dtype : float32 (default) or float16
    """
    spec = name if isinstance(name, WeightsSpec) else parse_weights_name(name)
    if isinstance(counts, Mapping):
        counts = [counts[k] for k in spec.ks]
    if ranges is None:
        ignore = np.ascontiguousarray(label) == ignore_index
        ranges = {k: tuple(int(v) for v in valid_min_max(np.ascontiguousarray(c), ignore))
                  for k, c in zip(spec.ks, counts, strict=True)}  # fmt: skip
    return Deriver(spec, ranges, ignore_index=ignore_index, dtype=dtype)(counts, label)


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
    parts += ["--k", ",".join(str(k) for k in ks)]
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
    if isinstance(name, WeightsSpec):
        spec = name
    else:
        try:
            spec = parse_weights_name(name)
        except ValueError as exc:
            have = ", ".join(tile.weight_names) or "none"
            raise StoreError(f"tile {tile.tile_id!r}: {exc}; its named weights: {have}") from None
    have = tile.affinity_ks
    missing = [k for k in spec.ks if k not in have]
    if missing:
        ks = ", ".join(map(str, missing))
        raise StoreError(
            f"tile {tile.tile_id!r} has no affinity counts for k = {ks}, which weights "
            f"{spec.name!r} are derived from; it has k = {', '.join(map(str, have)) or 'none'} "
            f"(named weights: {', '.join(tile.weight_names) or 'none'}; any other transform "
            "of these k works too). Add the missing k to the store in place (existing arrays "
            "are kept) with: "
            f"{add_command(tile, missing)} (pass all the store's label files to add them "
            "to every tile)"
        )
    ranges = {}
    for k in spec.ks:
        ranges[k] = tile.count_range(k, compute=_needs_range(spec.transform, k))
    return Deriver(spec, ranges, ignore_index=tile.ignore_index, dtype=tile.weight_dtype)


def derived_weights(tile, name: str | WeightsSpec) -> DerivedWeights:
    """The weights ``name`` of an opened tile, derived from its counts (:func:`tile_deriver`)."""
    deriver = tile_deriver(tile, name)
    return DerivedWeights(tile, deriver.spec, deriver)


class TorchDeriver:
    """Derives one weights name on a torch device, for a batch of windows of several tiles.

    ``log`` transformations gather from the same float32 table as :class:`Deriver`
    (evaluating the logarithm on a GPU would not round like numpy); ``raw`` and ``norm``
    are the same float64 operations as the table's, evaluated per pixel: IEEE-754
    subtraction, division and addition round identically on every device. So the
    weights equal :class:`Deriver`'s bit for bit.

    Parameters
    ----------
    spec : WeightsSpec
    ranges : per tile, {k: (min, max) or None}
    ignore_index : int
    """

    def __init__(
        self,
        spec: WeightsSpec,
        ranges: Sequence[Mapping[int, tuple[int, int] | None]],
        *,
        ignore_index: int,
    ) -> None:
        t = spec.transform
        for k in spec.ks:
            if (2 * k + 1) ** 2 > MAX_TABLE:
                raise ValueError(f"k={k} is too large to derive on the device")
            if t.kind == "norm" and any(r.get(k) is None for r in ranges):
                raise ValueError(f"deriving {spec.name!r} needs every tile's range for k={k}")
        self.spec = spec
        self.ignore_index = int(ignore_index)
        if t.kind == "norm":
            self._ranges = np.array([[r[k] for k in spec.ks] for r in ranges], dtype=np.float64)
        else:
            self._ranges = None
        self._tables = None
        if t.kind not in ("raw", "norm"):
            # one table per k for every tile: a log table's values do not depend on its length
            self._tables = [t.table((2 * k + 1) ** 2).astype(np.float32) for k in spec.ks]
        self._device_cache: dict = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_device_cache": {}}

    def _on(self, device):
        import torch

        key = str(device)
        if key not in self._device_cache:
            tables = (None if self._tables is None else
                      [torch.from_numpy(x).to(device) for x in self._tables])  # fmt: skip
            ranges = None if self._ranges is None else torch.from_numpy(self._ranges).to(device)
            self._device_cache[key] = (tables, ranges)
        return self._device_cache[key]

    def __call__(self, counts, label, tile_index):
        """Weights (N, H, W) float32 of counts (N, K, H, W), labels (N, H, W) on one device.

        ``counts`` may be int16/int32 tensors holding uint16/uint32 counts bit for bit
        (torch has no unsigned types before 2.3); ``tile_index`` (N,) indexes ``ranges``.
        """
        import torch

        dev = counts.device
        tables, ranges = self._on(dev)
        if counts.dtype == torch.int16:
            c = counts.to(torch.int32) & 0xFFFF
        elif counts.dtype == torch.int32:
            c = counts.to(torch.int64) & 0xFFFFFFFF
        else:
            c = counts.to(torch.int64)
        valid = label != self.ignore_index
        zero = torch.zeros((), dtype=torch.float32, device=dev)
        t = self.spec.transform
        acc = None
        for i, _k in enumerate(self.spec.ks):
            ci = c[:, i]
            if t.kind == "raw":
                w = ci.to(torch.float64).to(torch.float32)
            elif t.kind == "norm":
                r = ranges[tile_index.to(dev)]  # (N, K, 2)
                lo = r[:, i, 0].view(-1, 1, 1)
                hi = r[:, i, 1].view(-1, 1, 1)
                span = hi - lo
                w64 = (ci.to(torch.float64) - lo) / torch.where(span > 0, span, 1.0) + t.L
                w64 = torch.where(span > 0, w64, torch.full((), float(t.L), device=dev,
                                                            dtype=torch.float64))  # fmt: skip
                w = w64.to(torch.float32)
            else:
                table = tables[i]
                w = table[ci.clamp(0, table.numel() - 1).long()]
            w = torch.where(valid, w, zero)
            if not self.spec.multiscale:
                return w
            acc = w.to(torch.float64) if acc is None else acc + w.to(torch.float64)
        return (acc / len(self.spec.ks)).to(torch.float32)


def multiscale_formula(per_k: Sequence[np.ndarray]) -> np.ndarray:
    """The README's multi-scale formula on already computed float32 per-k weights."""
    acc = np.zeros(np.shape(per_k[0]), dtype=np.float64)
    for w in per_k:
        acc += np.asarray(w, dtype=np.float64)
    return (acc / len(per_k)).astype(np.float32)
