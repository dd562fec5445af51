"""Neighboring pixel affinity maps (Feng et al. 2020, Eq. 1): validation and dispatch.

The kernels live in :mod:`npa_precompute._kernels`; this module checks and casts
the inputs, picks a method, allocates the output and calls them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numba
import numpy as np

from npa_precompute import _kernels
from npa_precompute.errors import ParameterError
from npa_precompute.params import MAX_K, parse_ks  # numba-free home of the k parser

__all__ = ["MAX_K", "METHODS", "affinity_dtype", "affinity_maps", "dense_labels", "parse_ks"]

#: Exact methods of :func:`affinity_maps`; ``auto`` picks one per call.
METHODS = ("auto", "integral", "columns")

_INTEGRAL_BAND_ROWS = 128
_LUT_MAX_SPAN = 1 << 24
_COLUMNS_MIN_BAND_ROWS = 64


def _hist_dtype(out_dtype: np.dtype) -> np.dtype:
    """Signed dtype for the per-column counts (at most 2k + 1) of the columns kernel: the
    signed twin of the output's dtype, which holds (2k + 1)**2 - 1 and so 2k + 1. Tied to
    the output so that numba compiles one variant per output dtype, not per pair (each
    variant of the parallel kernel takes 3-5 s to compile)."""
    return np.dtype(np.dtype(out_dtype).str.replace("u", "i"))


def affinity_dtype(k: int) -> np.dtype:
    """Smallest unsigned dtype that holds every count of Eq. 1 for search region ``k``.

    Counts lie in ``[0, (2k + 1)**2 - 1]``: ``uint16`` up to k = 127, ``uint32`` up to
    k = 32767, ``uint64`` beyond.
    """
    top = (2 * int(k) + 1) ** 2 - 1
    for dt in (np.uint16, np.uint32, np.uint64):
        if top <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ParameterError("k", f"must be <= {MAX_K}, got {k}")


def dense_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber label values to ``0 .. n - 1`` in increasing order of value.

    Parameters
    ----------
    labels : (H, W) integer array

    Value spans up to 2**24 are renumbered through a lookup table in two linear
    passes; wider spans fall back to sorting (``np.unique``).

    Returns
    -------
    dense : (H, W) uint8, uint16 or int32 array (the narrowest that fits n values)
    values : (n,) array of the distinct label values, ``values[dense] == labels``
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"`labels` must be 2-D (H, W), got shape {labels.shape}")
    lo = int(labels.min()) if labels.size else 0
    hi = int(labels.max()) if labels.size else 0
    span = hi - lo + 1
    if span <= _LUT_MAX_SPAN and hi < 2**63:
        # one pass to mark the values present, one to renumber through a lookup table
        blocks = numba.get_num_threads() if span <= 1 << 16 else 1
        seen = np.zeros((blocks, span), dtype=np.uint8)
        _kernels.mark_present(np.ascontiguousarray(labels), lo, seen)
        present = np.flatnonzero(seen.any(axis=0))
        values = (present + lo).astype(labels.dtype)
        n = len(values)
        dt = np.uint8 if n <= 2**8 else np.uint16 if n <= 2**16 else np.int32
        lut = np.zeros(span, dtype=dt)
        lut[present] = np.arange(n, dtype=dt)
        dense = np.empty(labels.shape, dtype=dt)
        _kernels.apply_lut(np.ascontiguousarray(labels), lo, lut, dense)
        return dense, values
    values, dense = np.unique(labels, return_inverse=True)
    dense = dense.reshape(labels.shape)
    n = len(values)
    dt = np.uint8 if n <= 2**8 else np.uint16 if n <= 2**16 else np.int32
    return np.ascontiguousarray(dense, dtype=dt), values


def affinity_maps(
    labels: np.ndarray,
    ks: int | str | Iterable[int | Iterable[int]],
    *,
    method: str = "auto",
) -> np.ndarray:
    """Neighboring pixel affinity maps, exact Eq. 1 of Feng et al. (2020), for several k.

    ``A[x, y]`` is the number of pixels in the ``(2k + 1) x (2k + 1)`` window centred
    on ``(x, y)`` whose label differs from the label at ``(x, y)``; the label map is
    padded with its edge pixels (replicate padding, the paper's Fig. 3), so every
    window holds ``(2k + 1)**2`` pixels and ``A`` lies in ``[0, (2k + 1)**2 - 1]``.

    Volumes ``(D, H, W)`` and anisotropic regions: a region is one k per spatial axis,
    ``(k_h, k_w)`` or ``(k_d, k_h, k_w)`` (0 along an axis allowed), the window
    ``prod(2 k_a + 1)`` voxels, edge-padded the same way, and ``A`` lies in
    ``[0, prod(2 k_a + 1) - 1]``.

    Every distinct value of ``labels`` is a class of its own, including an ignore
    value such as 255: this is the literal Eq. 1. A pixel next to an ignored
    boundary band therefore counts the band as "different". Weights at the ignore
    pixels themselves are zeroed later, by the weight transformation step.

    Parameters
    ----------
    labels : (H, W) or (D, H, W) integer array
        Ground-truth label map of a whole tile (or a label volume), every axis >= 1.
        Any integer dtype and any number of distinct values.
    ks : int, str or iterable
        Search regions: ints k >= 0 (the same along every axis; ``2k + 1`` may exceed
        the size), e.g. ``(8, 16, 32, 64)`` or ``"8,16,32,64"``, or tuples of one k per
        spatial axis, e.g. ``[(2, 16, 16), 8]`` or ``"2x16x16,8"``
        (:func:`npa_precompute.regions.parse_regions`). Duplicates are dropped, order
        is kept.
    method : {"auto", "integral", "columns"}, keyword-only
        For 2-D maps and isotropic k: ``integral``: per-class summed-area tables
        (integral images) built once per row band and shared by every k; cost grows
        with the number of classes. ``columns``: per-column class counts slid row by
        row, with a running sum along each run of equal labels; cost nearly independent
        of k and of the number of classes. ``auto`` (default) picks ``columns``, the
        faster in every case of ``benchmarks/bench_affinity.py``. Volumes and
        anisotropic regions are counted by per-class separable box sums (running sums
        along W, H, D; cost independent of k, linear in the number of classes, memory
        ``(min(D, 2k_d + 3) + 3) H W`` numbers per thread); they take ``auto``
        only. All methods are exact and return identical arrays.

    Returns
    -------
    (len(ks), H, W) or (len(ks), D, H, W) array
        The narrowest unsigned dtype that holds the largest window - 1: ``uint16``
        while ``prod(2 k_a + 1) - 1 <= 65535`` (2-D isotropic: k <= 127; 3-D: k <= 19),
        ``uint32`` while it fits (2-D: k <= 32767; 3-D: k <= 812), ``uint64`` beyond
        (windows up to 2**62).

    Raises
    ------
    TypeError
        If ``labels`` is not an integer array or ``ks`` holds non-integers.
    ValueError
        If ``labels`` is not 2-D/3-D or empty, a k is < 0 or > ``MAX_K``, a region tuple
        has the wrong length, or ``method`` is unknown (or not ``auto`` for a volume or
        an anisotropic region).

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.array([[0, 0, 1], [0, 0, 1], [2, 2, 1]])
    >>> affinity_maps(labels, 1)[0]
    array([[0, 3, 3],
           [3, 5, 3],
           [3, 5, 3]], dtype=uint16)
    """
    from npa_precompute.regions import parse_regions, unsigned_count_dtype, window_size

    labels = np.asarray(labels)
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"`labels` must be an integer array, got dtype {labels.dtype}")
    if labels.ndim not in (2, 3):
        raise ValueError(f"`labels` must be 2-D (H, W) or 3-D (D, H, W), got shape {labels.shape}")
    if min(labels.shape) < 1:
        axes = "H, W" if labels.ndim == 2 else "D, H, W"
        raise ValueError(f"`labels` must have {axes} >= 1, got shape {labels.shape}")
    regions = parse_regions(ks, labels.ndim)
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    flat, values = dense_labels(labels.reshape(-1, labels.shape[-1]))
    dense = flat.reshape(labels.shape)
    n_classes = len(values)
    out = np.empty(
        (len(regions), *labels.shape),
        dtype=unsigned_count_dtype(max(window_size(r) for r in regions)),
    )
    planar = [i for i, r in enumerate(regions) if labels.ndim == 2 and r[0] == r[1]]
    if len(planar) == len(regions):
        _affinity_2d(dense, [r[0] for r in regions], n_classes, method, out)
        return out
    if method != "auto":
        raise ValueError(
            f"`method` {method!r} counts 2-D maps with isotropic k only; volumes and "
            "anisotropic regions take method='auto'"
        )
    if planar:
        part = np.empty((len(planar), *labels.shape), dtype=out.dtype)
        _affinity_2d(dense, [regions[i][0] for i in planar], n_classes, method, part)
        out[planar] = part
    boxed = [i for i in range(len(regions)) if i not in planar]
    volume = dense if dense.ndim == 3 else dense[None]
    box_regions = np.array([(0,) * (3 - labels.ndim) + regions[i] for i in boxed], np.int64)
    top = max(map(window_size, box_regions))
    acc = np.zeros(1, np.int16 if top < 2**15 else np.int32 if top < 2**31 else np.int64)
    # the kernel writes the unsigned type of its accumulator, narrowed below where ``out``
    # is narrower (the values fit): one compiled variant per accumulator, not per pair
    # (each 3-D variant takes numba 8-14 s to compile)
    part = np.empty((len(boxed), *volume.shape), dtype=acc.dtype.str.replace("i", "u"))
    width = volume.shape[2]
    bands = max(1, min(-(-2 * numba.get_num_threads() // n_classes), width // 64))
    _kernels.affinity_boxes(volume, box_regions, n_classes, bands, acc, part)
    out[boxed] = part.reshape(len(boxed), *labels.shape)
    return out


def _affinity_2d(dense: np.ndarray, ks: list[int], n_classes: int, method: str, out) -> None:
    """Isotropic 2-D counts with the ``integral`` or ``columns`` kernel into ``out``."""
    h, w = dense.shape
    if method == "auto":
        method = "columns"  # the faster in every case measured (docs/benchmarks.md)
    if method == "integral":
        _kernels.affinity_integral(
            dense, np.asarray(ks, dtype=np.int64), n_classes, _INTEGRAL_BAND_ROWS, out
        )
    else:
        probe = np.zeros((), dtype=_hist_dtype(out.dtype))
        # Each band starts with O(W * (2k + 1)) work to fill its column counts: use as few
        # bands as keep every thread busy (two per thread, to even out their costs).
        band_rows = max(_COLUMNS_MIN_BAND_ROWS, -(-h // (2 * numba.get_num_threads())))
        _kernels.affinity_columns(
            dense, np.asarray(ks, dtype=np.int64), n_classes, band_rows, probe, out
        )
