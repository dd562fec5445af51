"""Weight transformations of the affinity map (Feng et al. 2020, Eq. 2 and Eq. 3).

A transformation is written as a spec string with one canonical form:

==========================  ==================================  ==============
spec                        formula                             source
==========================  ==================================  ==============
``raw``                     ``AT = A``                          Eq. 1
``norm:L=<f>``              ``(A - min A) / (max A - min A) + L``  Eq. 2
``log10:L=<f>``             ``log10(A + 10**L)``                Eq. 3, a = 10
``ln:L=<f>``                ``ln(A + e**L)``                    Eq. 3, a = e
``log:a=<f>,L=<f>``         ``log_a(A + a**L)``                 Eq. 3
==========================  ==================================  ==============

``L`` is the weight margin (the weight of a pixel whose window holds one class
only; the paper finds L = 0.5 best, Table 2). ``L`` may be left out and defaults
to 0.5. Weights at ignore pixels are 0 whatever the transformation.

Array names use the transformation's *slug*, the spec with ``_`` for ``:`` and ``,`` and
no ``=`` (``log10_L0.5``, ``log_a2_L0.5``, ``raw``); :func:`parse_slug` reads it back.
Both grammars follow from :data:`PARAMS` (each kind's parameters, in order): a new
transformation is a ``PARAMS`` entry, a branch of :meth:`WeightTransform._formula` and
of :meth:`WeightTransform.max_weight` (and, if its weights depend on the tile's count
range like ``norm``, of :func:`npa_train.weights.weights_from_counts`).

Imports numpy only (the numba kernels of :meth:`WeightTransform.apply` load on first use).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from npa_precompute.errors import ParameterError
from npa_precompute.regions import format_region, region_attr, window_size

__all__ = [
    "DEFAULT_L",
    "WeightRangeError",
    "WeightTransform",
    "check_weight_range",
    "parse_slug",
    "parse_transform",
    "weights_attrs",
    "weights_name",
]

#: Weight margin used when a spec leaves ``L`` out (the paper's best, Table 2).
DEFAULT_L = 0.5

#: The kinds of transformation and their parameters, in the order specs and slugs list them.
PARAMS: dict[str, tuple[str, ...]] = {
    "raw": (),
    "norm": ("L",),
    "log10": ("L",),
    "ln": ("L",),
    "log": ("a", "L"),
}
_LN_FLOAT64_MAX = math.log(sys.float_info.max)


class WeightRangeError(ParameterError):
    """Weights of a (k, transformation, dtype) that cannot be represented (overflow).

    A :class:`~npa_precompute.errors.ParameterError` (so a ValueError) of the argument
    ``param`` (default ``"transforms"``; ``"weights"`` for a weights name), which the
    command lines report against the option that sets it. ``detail`` is the message
    without the transform spec it was found in (None when the message names no spec),
    for callers that name the spec their own way. ``check``: the arguments of the
    :func:`check_weight_range` call that raised it (None from elsewhere), so that a caller
    can repeat that very check with its own ``names`` (the CLI: its options).
    """

    def __init__(
        self,
        message: str,
        *,
        detail: str | None = None,
        param: str = "transforms",
        check: dict | None = None,
    ) -> None:
        super().__init__(param, message, message=message)
        self.detail = detail
        self.check = check


#: Largest count range evaluated through a lookup table (larger ones compute directly).
MAX_TABLE = 1 << 22


def _fmt(x: float) -> str:
    s = repr(float(x))
    return s[:-2] if s.endswith(".0") else s


def _parse_float(text: str, name: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"`{name}` in transform {spec!r} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"`{name}` in transform {spec!r} must be finite, got {text!r}")
    return value


@dataclass(frozen=True)
class WeightTransform:
    """One weight transformation; build it with :func:`parse_transform`.

    Attributes
    ----------
    kind : {"raw", "norm", "log10", "ln", "log"}
    L : float
        Weight margin, >= 0 (unused by ``raw``).
    a : float
        Logarithm base, > 1 (``log10``: 10, ``ln``: e; unused otherwise).
    """

    kind: str
    L: float = DEFAULT_L
    a: float = 10.0

    def __post_init__(self) -> None:
        if self.kind not in PARAMS:
            raise ValueError(f"transform kind must be one of {tuple(PARAMS)}, got {self.kind!r}")
        # parameters a kind does not take get their defaults, so that equal weights compare
        # equal (raw with any L is raw)
        if "L" not in PARAMS[self.kind]:
            object.__setattr__(self, "L", DEFAULT_L)
        if self.kind == "ln":
            object.__setattr__(self, "a", math.e)
        elif "a" not in PARAMS[self.kind]:
            object.__setattr__(self, "a", 10.0)
        if self.L < 0:
            raise ValueError(f"`L` must be >= 0, got {self.L}")
        if self.kind in ("log10", "ln", "log") and not self.a > 1:
            raise ValueError(f"`a` must be > 1, got {self.a}")
        if self.kind in ("log10", "ln", "log") and self.L * math.log(self.a) >= _LN_FLOAT64_MAX:
            limit = _LN_FLOAT64_MAX / math.log(self.a)
            base = {"log10": "10", "ln": "e"}.get(self.kind, _fmt(self.a))
            raise WeightRangeError(
                f"`L` = {_fmt(self.L)} is too large for {self.kind}: {base}**L overflows float64 "
                f"(L must be below {limit:.6g})"
            )

    @property
    def spec(self) -> str:
        """Canonical spec string, e.g. ``"log10:L=0.5"``; parses back to an equal object."""
        params = ",".join(f"{p}={_fmt(getattr(self, p))}" for p in PARAMS[self.kind])
        return f"{self.kind}:{params}" if params else self.kind

    @property
    def slug(self) -> str:
        """Path-safe form used in array names, e.g. ``"log10_L0.5"``, ``"log_a2_L0.5"``;
        :func:`parse_slug` reads it back."""
        return "_".join([self.kind, *(f"{p}{_fmt(getattr(self, p))}" for p in PARAMS[self.kind])])

    @property
    def needs_range(self) -> bool:
        """Whether the weights depend on the tile's (or image's) min and max count (``norm``)."""
        return self.kind == "norm"

    def max_weight(self, k: int | tuple[int, ...], ndim: int = 2) -> float:
        """The largest weight this transformation can give for search region ``k`` (float64).

        Counts of Eq. 1 lie in ``[0, (2k + 1)**ndim - 1]`` (``ndim`` spatial axes: 2 for
        label maps, 3 for volumes; a region tuple ``(k_d, k_h, k_w)``: ``[0, prod(2 k_a +
        1) - 1]``): ``raw`` reaches the top count, ``norm`` reaches ``1 + L``, ``log*``
        reaches ``log_a(top + a**L)``.
        """
        top = window_size(k if isinstance(k, tuple) else (int(k),) * int(ndim)) - 1
        if self.kind == "raw":
            return float(top)
        if self.kind == "norm":
            return 1.0 + self.L
        return math.log(top + self.a**self.L) / math.log(self.a)

    def to_dict(self) -> dict:
        """JSON-ready parameters: ``{"spec", "kind", "L", "a"}``."""
        return {"spec": self.spec, "kind": self.kind, "L": self.L, "a": self.a}

    def apply(
        self,
        affinity: np.ndarray,
        ignore_mask: np.ndarray | None = None,
        *,
        dtype: np.dtype | type = np.float32,
        value_range: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Transform an affinity map into pixel weights.

        Parameters
        ----------
        affinity : (H, W) or (D, H, W) unsigned integer
            Raw counts of Eq. 1 for one k (see :func:`~npa_precompute.affinity_maps`).
        ignore_mask : bool array of ``affinity``'s shape, optional
            True at ignore pixels: their weight is 0 and they do not enter the
            min/max of ``norm``.
        dtype : float32 (default) or float16, keyword-only
        value_range : (min, max) of the whole tile's non-ignore counts, keyword-only
            For a window of a tile (blockwise precompute): ``norm`` then uses the
            tile's range, as Eq. 2 does, instead of the window's; ``max < 0`` means
            every pixel of the tile is ignored. Default: taken from ``affinity``.

        Returns
        -------
        array of ``affinity``'s shape and ``dtype``. ``norm`` takes min and max over the tile's
        non-ignore pixels; a constant map gives ``L`` everywhere (Eq. 2 would
        divide by zero). ``log*`` gives ``L`` where A = 0 (Eq. 3). Values are the
        formula evaluated in float64, then rounded to ``dtype``.

        Raises
        ------
        ValueError
            ``affinity`` not a 2-D/3-D unsigned integer array, ``ignore_mask`` of another
            shape, or ``dtype`` not float32/float16.
        """
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise ValueError(f"`dtype` must be float32 or float16, got {dtype}")
        a = np.asarray(affinity)
        if a.ndim not in (2, 3) or not np.issubdtype(a.dtype, np.unsignedinteger):
            raise ValueError(
                "`affinity` must be an (H, W) or (D, H, W) unsigned integer array, got "
                f"{a.dtype} {a.shape}"
            )
        if ignore_mask is None:
            ignore = np.zeros(a.shape, dtype=bool)
        else:
            ignore = np.asarray(ignore_mask, dtype=bool)
            if ignore.shape != a.shape:
                raise ValueError(
                    f"`ignore_mask` shape {ignore.shape} differs from `affinity` shape {a.shape}"
                )
        from npa_precompute._kernels import gather_weights, valid_min_max

        if value_range is None:
            lo, hi = valid_min_max(a, ignore)
        else:
            lo, hi = (int(v) for v in value_range)
        table = self.lookup_table(lo, hi)
        if table is None:  # astronomically large k: evaluate per pixel
            out = self.per_pixel(a, lo, hi)
            out[ignore] = 0
        else:
            out = np.empty(a.shape, dtype=np.float32)
            if table.size:  # the kernel walks rows: a volume as its (D * H, W) rows
                rows = (-1, a.shape[-1])
                gather_weights(np.ascontiguousarray(a).reshape(rows),
                               np.ascontiguousarray(ignore).reshape(rows), table,
                               out.reshape(rows))  # fmt: skip
            else:  # every pixel ignored
                out.fill(0)
        return out if dtype == np.float32 else out.astype(dtype)

    def lookup_table(self, lo: int, hi: int) -> np.ndarray | None:
        """The float32 weights of the counts ``0 .. hi`` (the numpy path's lookup table).

        ``lo``/``hi``: the min and max count over the tile's non-ignore pixels (``hi < 0``:
        every pixel ignored, an empty table). Each count's weight is the formula evaluated
        in float64, rounded to float32, as every path computes it. None when ``hi`` reaches
        :data:`MAX_TABLE` (evaluate :meth:`per_pixel` instead).
        """
        if hi < 0:
            return np.zeros(0, dtype=np.float32)
        if hi >= MAX_TABLE:
            return None
        return self.table(hi + 1, lo=lo, hi=hi).astype(np.float32)

    def per_pixel(self, counts: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """float32 weights of ``counts`` evaluated pixel by pixel (the formula in float64),
        for counts too large for :meth:`lookup_table`; ignore pixels are not zeroed."""
        return self._formula(np.asarray(counts).astype(np.float64), lo, hi).astype(np.float32)

    def table(self, n: int, *, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Weights of the counts ``0 .. n - 1`` as float64: the transformation's lookup table.

        ``lo``/``hi`` are the tile's min and max count over non-ignore pixels (used by
        ``norm``, Eq. 2; ``hi`` defaults to ``n - 1``).
        """
        hi = n - 1 if hi is None else hi
        return self._formula(np.arange(n, dtype=np.float64), lo, hi)

    def _formula(self, counts: np.ndarray, lo: int, hi: int) -> np.ndarray:
        if self.kind == "raw":
            return counts
        if self.kind == "norm":
            if hi > lo:
                return (counts - lo) / (hi - lo) + self.L
            return np.full(counts.shape, self.L)
        return np.log(counts + self.a**self.L) / math.log(self.a)


def parse_transform(spec: str | WeightTransform) -> WeightTransform:
    """Parse a weight transformation spec such as ``"log10:L=0.5"``.

    Accepted: ``raw``, ``norm[:L=<f>]``, ``log10[:L=<f>]``, ``ln[:L=<f>]``,
    ``log:a=<f>[,L=<f>]`` (case-insensitive kind, spaces ignored).

    Raises
    ------
    TypeError
        If ``spec`` is not a string.
    ValueError
        Unknown kind or parameter, a parameter given twice or not a number,
        ``L < 0``, ``a <= 1``, or ``log`` without ``a``.
    """
    if isinstance(spec, WeightTransform):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"transform spec must be a string, got {type(spec).__name__}")
    text = spec.replace(" ", "")
    kind, _, rest = text.partition(":")
    kind = kind.lower()
    if kind not in PARAMS:
        raise ValueError(
            f"unknown transform {spec!r}: expected raw, norm:L=<f>, log10:L=<f>, ln:L=<f> "
            "or log:a=<f>,L=<f>"
        )
    allowed = PARAMS[kind]
    params: dict[str, float] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in allowed:
            raise ValueError(
                f"unknown parameter {item!r} in transform {spec!r}; "
                f"{kind} takes {', '.join(allowed) or 'no parameters'}"
            )
        if key in params:
            raise ValueError(f"parameter `{key}` given twice in transform {spec!r}")
        params[key] = _parse_float(value, key, spec)
    if kind == "log" and "a" not in params:
        raise ValueError(f"transform {spec!r} needs a base: log:a=<f>,L=<f>")
    try:
        return WeightTransform(kind, L=params.get("L", DEFAULT_L), a=params.get("a", 10.0))
    except WeightRangeError as exc:
        raise WeightRangeError(f"{exc} in transform {spec!r}", detail=str(exc)) from None
    except ValueError as exc:
        raise type(exc)(f"{exc} in transform {spec!r}") from None


def parse_slug(slug: str) -> WeightTransform:
    """The transformation of an array-name slug: ``"log10_L0.5"``, ``"log_a2_L0.5"``, ``"raw"``.

    The kind (lower case) and then each of its parameters (:data:`PARAMS`, in order) as
    ``_<name><value>``; the values are checked as :func:`parse_transform` checks them.

    Raises
    ------
    TypeError
        ``slug`` is not a string.
    ValueError
        Anything else (the message says what was expected).
    """
    if not isinstance(slug, str):
        raise TypeError(f"transform slug must be a string, got {type(slug).__name__}")
    kind, *values = slug.split("_")
    names = PARAMS.get(kind)
    if names is None or len(values) != len(names):
        raise ValueError(f"unknown transform {slug!r} in a weights name")
    items = []
    for name, text in zip(names, values, strict=True):
        value = text[len(name) :]
        if not text.startswith(name) or not value[:1].isdigit():
            raise ValueError(f"{kind} takes {'_'.join(names)} in that order, got {slug!r}")
        items.append(f"{name}={value}")
    return parse_transform(f"{kind}:{','.join(items)}" if items else kind)


#: How :func:`check_weight_range` names the parameters (the CLI passes its option names).
API_NAMES = {"transforms": "transform", "dtype": "`weight_dtype`", "k": "k ="}


def check_weight_range(
    ks: Iterable[int | tuple[int, ...]],
    transforms: Iterable[str | WeightTransform],
    dtype: str | np.dtype = "float32",
    *,
    names: dict[str, str] | None = None,
    ndim: int = 2,
) -> None:
    """Refuse every (k, transformation, dtype) whose largest weight is not finite in ``dtype``.

    Checked before anything is computed, so that no tile is ever stored with ``inf``
    weights (float32 tops out at 3.4028e38, float16 at 65504: ``raw`` counts of k >= 128,
    ``norm`` with L near the top, ``log*`` whose ``a**L`` overflows float64).

    Parameters
    ----------
    ks : search regions: ints, or tuples of one k per axis (their window is
        ``prod(2 k_a + 1)``)
    transforms : specs or :class:`WeightTransform`
    dtype : "float32" or "float16"
    names : how to name ``transforms``, ``dtype`` and ``k`` in messages (default: the
        :func:`~npa_precompute.pipeline.run_precompute` parameters)
    ndim : spatial axes of the counts (2: label maps, 3: volumes, whose windows hold
        ``(2k + 1)**3`` voxels), keyword-only

    Raises
    ------
    WeightRangeError
        Naming the transformation, the k, the dtype and the limit.
    """
    names = {**API_NAMES, **(names or {})}
    dtype = np.dtype(dtype)
    top_of = float(np.finfo(dtype).max)
    ks = list(ks)
    check = {"ks": ks, "transforms": transforms, "dtype": dtype, "ndim": ndim}
    for spec in transforms:
        try:
            t = parse_transform(spec)
        except WeightRangeError as exc:
            why = exc.detail or str(exc)
            raise WeightRangeError(f"{names['transforms']} {spec}: {why}", check=check) from None
        for k in ks:
            w = t.max_weight(k, ndim)
            with np.errstate(over="ignore"):  # rounded as apply() rounds: float64 -> 32 -> dtype
                stored = np.float64(w).astype(np.float32).astype(dtype)
            if np.isfinite(stored):
                continue
            where = f"{names['transforms']} {spec if isinstance(spec, str) else t.spec}"
            if t.kind != "norm":  # the largest norm weight is 1 + L whatever k
                where += f" with {names['k']} {format_region(k)}"
            if t.kind == "raw":
                side = (math.isqrt(int(top_of) + 1) if ndim == 2
                        else math.floor((top_of + 1) ** (1 / ndim) + 1e-9))  # fmt: skip
                kmax = int((side - 1) // 2)
                fix = f"use {names['dtype']} float32, or k <= {kmax} with {dtype}"
            elif t.kind == "norm":
                fix = f"L must be at most {top_of - 1:.6g} with {dtype}"
            else:
                fix = f"lower L, or use {names['dtype']} float32"
            raise WeightRangeError(
                f"{where}: weights reach {w:.6g}, above {top_of:.6g}, the largest {dtype} "
                f"({names['dtype']} {dtype}); {fix}",
                check=check,
            )


def weights_attrs(k: int | tuple[int, ...], transform: WeightTransform) -> dict:
    """Attrs of a weights array in the store: ``{"k", "transform", "transform_params"}``
    (``k`` an int, or for an anisotropic region its list of k per axis)."""
    return {"k": region_attr(k), "transform": transform.spec,
            "transform_params": transform.to_dict()}  # fmt: skip


def weights_name(k: int | tuple[int, ...], transform: WeightTransform | str) -> str:
    """Store name of a weights array: ``weights_name(32, "log10:L=0.5") == "k32_log10_L0.5"``,
    ``weights_name((2, 14, 14), "log10:L=0.5") == "k2x14x14_log10_L0.5"``
    (:func:`~npa_precompute.regions.format_region`).

    Raises
    ------
    ValueError
        If ``transform`` is not a valid spec.
    """
    return f"k{format_region(k)}_{parse_transform(transform).slug}"
