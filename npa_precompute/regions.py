"""Search regions of Eq. 1 in any number of spatial axes, and k from physical sizes.

A *search region* is one half-width per spatial axis: ``(k_h, k_w)`` for a label map,
``(k_d, k_h, k_w)`` for a volume, so the window holds ``prod(2 k_a + 1)`` pixels or
voxels. An int ``k`` is the isotropic region ``(k,) * ndim``; a 0 along an axis counts
that axis' own line only. No numba, no torch: both packages import it.

Physical sizes resolve to integer half-widths by **round half up** of
``radius / spacing`` along each axis (:func:`k_from_physical`): 2.88 m at 0.09 m is
k = 32, 2.9 m at 0.05 m is 58, 2.88 m at 0.3 m is 10 (9.6 rounds up).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

from npa_precompute.errors import ParameterError, ParameterTypeError
from npa_precompute.params import MAX_K, _k_token, parse_ks

__all__ = [
    "MAX_WINDOW",
    "Region",
    "compact_region",
    "format_region",
    "k_from_physical",
    "parse_region",
    "parse_regions",
    "parse_spacing",
    "region_attr",
    "region_order",
    "unsigned_count_dtype",
    "window_size",
]

#: One half-width per spatial axis.
Region = tuple[int, ...]

#: Largest window ``prod(2 k_a + 1)``: every count (at most the window - 1) and every
#: partial window sum then fits in int64.
MAX_WINDOW = 2**62


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def window_size(region: Region) -> int:
    """Pixels (voxels) in the window of ``region``: ``prod(2 k_a + 1)``."""
    return math.prod(2 * int(k) + 1 for k in region)


def unsigned_count_dtype(window: int) -> np.dtype:
    """Narrowest unsigned dtype holding every count of a window of ``window`` voxels
    (``0 .. window - 1``): uint16, uint32 or uint64."""
    for dt in (np.uint16, np.uint32, np.uint64):
        if window - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ParameterError("k", f"window of {window} voxels is too large")


def format_region(region: int | Region) -> str:
    """``(2, 16, 16)`` -> ``"2x16x16"``; an int, or an isotropic region, prints as its
    one k (``32``, ``(3, 3, 3)`` -> ``"3"``). The k part of the store's names
    (``affinity/k2x16x16``, ``weights/k2x16x16_log10_L0.5``); :func:`parse_region` reads it."""
    if not isinstance(region, (tuple, list)):
        return str(int(region))
    if len(set(region)) == 1:
        return str(region[0])
    return "x".join(str(k) for k in region)


def parse_region(text: str) -> int | Region:
    """The inverse of :func:`format_region`: ``"32"`` -> 32, ``"2x14x14"`` -> (2, 14, 14),
    ``"3x3"`` -> 3 (:func:`compact_region`).

    Raises
    ------
    ValueError
        ``text`` is not digits, or digits joined by ``x``.
    """
    if not all(a.isdigit() for a in text.split("x")):
        raise ValueError(f"not a search region: {text!r}")
    return compact_region(_k_token(text))


def compact_region(region: int | Sequence[int]) -> int | Region:
    """A store's key of a search region: the int k of an isotropic region (``(3, 3, 3)``
    -> 3, as every store written before regions keys it), else the tuple of its k per
    axis (``[2, 14, 14]`` -> ``(2, 14, 14)``, the form attrs read back from JSON)."""
    if _is_int(region):
        return int(region)
    region = tuple(int(k) for k in region)
    return region[0] if len(set(region)) == 1 else region


def region_attr(region: int | Sequence[int]) -> int | list[int]:
    """A region as the store's attrs record it (``k`` of counts and weights arrays, the
    params' ``ks``): the int k, or the list of k per axis of an anisotropic region."""
    k = compact_region(region)
    return list(k) if isinstance(k, tuple) else k


def region_order(region: int | Region) -> tuple:
    """Sort key of store keys (ints and region tuples together): by largest k, then
    the per-axis k (``8 < (2, 14, 14) < 14 < 32``)."""
    axes = tuple(region) if isinstance(region, (tuple, list)) else (int(region),)
    return (max(axes), len(set(axes)) == 1, axes)


def _one_region(value, ndim: int) -> Region:
    """One region (int or sequence of ints) checked and expanded to ``ndim`` axes."""
    if _is_int(value):
        region = (int(value),) * ndim
    else:
        if isinstance(value, str) or not isinstance(value, (Sequence, np.ndarray)):
            raise ParameterTypeError(
                "k", f"must hold integers or tuples of integers, got {value!r}"
            )
        items = list(value)
        if len(items) != ndim:
            raise ParameterError(
                "k",
                f"tuple {tuple(items)!r} must have one int per spatial axis ({ndim} for "
                f"{'(D, H, W)' if ndim == 3 else '(H, W)' if ndim == 2 else f'{ndim}-D'} "
                f"data), got {len(items)}",
            )
        for v in items:
            if not _is_int(v):
                raise ParameterTypeError("k", f"must hold integers, got {v!r} in {value!r}")
        region = tuple(int(v) for v in items)
    for v in region:
        if v < 0:
            raise ParameterError("k", f"must be >= 0, got {v}")
        if v > MAX_K:
            raise ParameterError("k", f"must be <= {MAX_K}, got {v}")
    if window_size(region) > MAX_WINDOW:
        raise ParameterError(
            "k",
            f"region {region} has a window of {window_size(region)} voxels; at most "
            f"2**62 are supported",
        )
    return region


def parse_regions(ks, ndim: int) -> tuple[Region, ...]:
    """Search regions for ``ndim`` spatial axes, in the given order without duplicates.

    Parameters
    ----------
    ks : int, str or iterable
        An int (one isotropic region); a string of comma-separated regions, each an int
        or ``x``-separated ints (``"8,16"``, ``"2x16x16,8"``); or an iterable whose items
        are ints (isotropic) or sequences of ``ndim`` ints (``[(2, 16, 16), 8]``). A bare
        tuple of ints is a list of isotropic regions, as for 2-D maps.
    ndim : int
        Number of spatial axes (2 or 3).

    Returns
    -------
    tuple of tuples of ``ndim`` ints

    Raises
    ------
    ParameterError
        Empty list; a half-width < 0 or > :data:`MAX_K`; a tuple whose length is not
        ``ndim``; a window of more than :data:`MAX_WINDOW` voxels.
    ParameterTypeError
        A value that is not an integer.
    """
    if isinstance(ks, str):
        items: list = list(parse_ks(ks))
    elif _is_int(ks):
        items = [int(ks)]
    elif isinstance(ks, Iterable):
        items = list(ks)
        if all(_is_int(v) for v in items):
            items = list(parse_ks(items))  # the 2-D rules and messages, unchanged
    else:
        raise ParameterTypeError("k", f"must be an int, a string or a list, got {ks!r}")
    if not items:
        raise ParameterError("k", "must hold at least one search region")
    out: list[Region] = []
    for item in items:
        region = _one_region(item, ndim)
        if region not in out:
            out.append(region)
    return tuple(out)


def parse_spacing(
    spacing, ndim: int, *, name: str = "spacing", allow_zero: bool = False
) -> tuple[float, ...]:
    """Pixel/voxel spacing (or a physical size): one number for every axis or one per axis.

    Raises
    ------
    ParameterError
        A value that is not finite, not > 0 (``>= 0`` with ``allow_zero``), or a
        sequence whose length is not ``ndim``; the message names ``name``.
    ParameterTypeError
        Not a number or a sequence of numbers.
    """
    if isinstance(spacing, (int, float, np.integer, np.floating)) and not isinstance(spacing, bool):
        values = [float(spacing)] * ndim
    else:
        try:
            values = [float(v) for v in spacing]
        except (TypeError, ValueError):
            raise ParameterTypeError(
                name, f"must be a number or {ndim} numbers, got {spacing!r}"
            ) from None
        if len(values) != ndim:
            raise ParameterError(
                name, f"must have one value per spatial axis ({ndim}), got {len(values)}"
            )
    for v in values:
        if not (math.isfinite(v) and (v > 0 or (allow_zero and v == 0))):
            bound = ">= 0" if allow_zero else "positive"
            raise ParameterError(name, f"must be {bound} and finite, got {spacing!r}")
    return tuple(values)


def k_from_physical(size, spacing, *, ndim: int | None = None, name: str = "k_physical") -> Region:
    """Integer half-widths of a physical search radius: ``round_half_up(size / spacing)``.

    Parameters
    ----------
    size : float or sequence of float
        Radius of the search region in the units of ``spacing`` (metres, mm), one value
        for every axis or one per axis; >= 0.
    spacing : float or sequence of float
        Pixel/voxel size along each axis, > 0 (one value: isotropic).
    ndim : int, optional
        Number of spatial axes; default: the length of ``spacing`` or ``size`` (else 2).
    name : str
        Argument name for error messages (``"k_metres"``, ``"k_mm"``).

    Returns
    -------
    tuple of int
        One k per axis. The quotient is rounded half up in decimal (``2.88 / 0.09`` is
        32 although the binary float quotient is 31.999...): ``k = floor(q + 1/2)`` of
        the exact decimal quotient of the two numbers as written.

    Raises
    ------
    ParameterError
        Spacing not positive/finite, a negative size, a length mismatch, or a region
        that rounds to 0 along every axis while the size is not 0.
    """
    if ndim is None:
        ndim = next(
            (len(v) for v in (spacing, size) if not isinstance(v, (int, float, np.number))),
            2,
        )
    if ndim not in (2, 3):
        raise ParameterError(
            "spacing",
            f"must have one value per spatial axis (2 for (H, W), 3 for (D, H, W)), got {ndim}",
        )
    spacing = parse_spacing(spacing, ndim)
    sizes = parse_spacing(size, ndim, name=name, allow_zero=True)
    ks = []
    for s, d in zip(sizes, spacing, strict=True):
        q = Decimal(repr(s)) / Decimal(repr(d))
        k = int(q.quantize(Decimal(1), rounding=ROUND_HALF_UP))
        if k > MAX_K:
            raise ParameterError(name, f"{s} at spacing {d} is k = {k} > {MAX_K}")
        ks.append(k)
    if all(k == 0 for k in ks) and any(s > 0 for s in sizes):
        raise ParameterError(
            name,
            f"{size!r} at spacing {spacing} rounds to k = 0 along every axis; give a radius "
            "of at least half a pixel/voxel",
        )
    return tuple(ks)
