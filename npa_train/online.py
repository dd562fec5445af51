"""Exact NPA affinity counts and weights computed on the device from a batch of targets.

:func:`affinity_counts` is Eq. 1 of Feng et al. (2020) for a batch ``(N, H, W)`` of
integer labels, on whatever device the labels are (CPU or CUDA), image by image
**bit-identical** to :func:`npa_precompute.affinity_maps`; :func:`npa_weights` turns the
counts into the weights of a transform spec (``"log10:L=0.5"``, ...), float32 values
equal to :meth:`npa_precompute.WeightTransform.apply` of the same counts. With them
:class:`npa_train.loss.NPALoss` needs nothing but ``(logits, target)``: the weights of
the *augmented* label, whatever pipeline made it.

How the counts are computed
---------------------------
For each class ``c`` (every distinct label value, the ignore value included, as
``affinity_maps`` does) the indicator ``[label == c]`` is summed over the
``(2k + 1)²`` window of every pixel with integral images taken separably: window sums
along each row, then window sums of those down the columns. Each is a running sum,
``s[i] = s[i - 1] + x[i + k] - x[i - k - 1]``: the differences are computed for every
position at once and a cumulative sum adds them up (:func:`_box_sums`); indices are
clamped into the image, which *is* the edge-replicate padding of Eq. 1 (the paper's
Fig. 3), never materialised, so any ``k >= 0`` works, ``2k + 1 > H, W`` included, at a
cost that does not depend on ``k``. Then ``A = (2k + 1)² - s_c`` at the pixels of class
``c``.

Everything is integer arithmetic, exact, and no accumulator can overflow: every partial
sum of the running sums is itself a window count, in ``[0, 2k + 1]`` along the rows and
``[0, (2k + 1)²]`` down the columns, so the accumulators are int16 up to k = 90, int32
up to k = 23169 and int64 beyond (k up to :data:`npa_precompute.affinity.MAX_K`). The
result is int32 while every count fits (k <= 23169), else int64.

Memory: classes are processed in groups of at most ``max(1, group_elements // (N·H·W))``
(default ``group_elements`` = 2**25; the groups made as even as they can be); a group
holds three ``(G, N, H, W)`` arrays (the int16 indicators, the row sums, the window sums:
2 + 2 + 2/4/8 bytes per element), so the peak is about ``8 · group_elements`` bytes =
256 MiB (k <= 16383) on top of the ``(N, len(ks), H, W)`` output and one int64
``(N, H, W)`` index, whatever the number of classes (never an ``(N, C, H, W)`` int64
one-hot). A batch of 6 × 577² (513² grown by k = 32) with 6 classes + ignore is one
group of 7. On the CPU these buffers are kept between calls (per thread;
:func:`clear_workspace` frees them): freshly allocated memory is page-faulted in at
the cost of the arithmetic itself.

Volumes and anisotropic regions
-------------------------------
Targets ``(N, D, H, W)`` take a third pass, along the depth axis, and a region may give
one k per axis (``(k_d, k_h, k_w)``, 0 allowed: the pass along that axis is a copy).
After the passes along the last ``p`` axes every value is a window count over those
axes, at most ``prod(2 k_a + 1)`` over them, and each pass's accumulator is the
narrowest of int16/int32/int64 that holds that bound (:func:`_pass_dtypes`); counts are
int32 while the whole window - 1 fits (isotropic 3-D: k <= 644), else int64; a window of
more than 2**62 voxels is refused. Memory: groups of ``group_elements // (N·D·H·W)``
classes, and a group holds at most four ``(G, N, D, H, W)`` arrays (the third pass
writes the row-sum buffer again, a fourth array only when its dtype is wider).

Synchronisation: with ``classes`` given (the loss passes ``range(C)`` plus the ignore
value) nothing waits for the device; without it, the distinct values of the batch are
read first (``torch.unique``, one synchronisation) and checked.

Weights
-------
:func:`npa_weights` and :func:`label_weights` turn the counts into weights with
:func:`npa_train.weights.spec_weights`, the one counts-to-weights implementation for
tensors (lookup tables cached on the device; ``norm`` with min and max **per image** over
its non-ignored pixels, where ``apply`` takes them per tile). Ignored pixels weigh 0.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from npa_precompute.names import WeightsSpec
from npa_precompute.params import MAX_K, check_int
from npa_precompute.regions import parse_regions, window_size
from npa_precompute.transforms import WeightTransform, parse_transform
from npa_train.weights import CACHE, spec_weights, weights_from_counts

__all__ = [
    "DEFAULT_GROUP_ELEMENTS",
    "affinity_counts",
    "clear_workspace",
    "counts_dtype",
    "known_classes",
    "label_weights",
    "npa_weights",
    "npa_weights_crop",
    "weights_from_counts",
]

#: Default bound on ``classes in a group × N × H × W`` (see the module docstring).
DEFAULT_GROUP_ELEMENTS = 1 << 25
_INT32_MAX = 2**31 - 1


# ---- validation --------------------------------------------------------------------------------
def _check_target(target: Tensor) -> Tensor:
    if not isinstance(target, Tensor):
        raise TypeError(f"`target` must be a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"`target` must be an integer tensor of labels (e.g. int64), got dtype {target.dtype}"
        )
    if target.ndim not in (3, 4):
        raise ValueError(
            "`target` must have shape (N, H, W) or, for volumes, (N, D, H, W), got "
            f"{tuple(target.shape)} ({target.ndim}-D)"
        )
    if min(target.shape[1:]) < 1:
        axes = "H, W" if target.ndim == 3 else "D, H, W"
        raise ValueError(f"`target` must have {axes} >= 1, got shape {tuple(target.shape)}")
    if target.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        target = target.to(torch.int64)  # uint16/uint32/uint64: few ops are defined on them
    return target


def _check_values(values: list[int]) -> None:
    if values and values[0] < 0:
        raise ValueError(f"`target` holds negative labels, e.g. {values[0]}; labels must be >= 0")
    if values and values[-1] > _INT32_MAX:
        raise ValueError(
            f"`target` holds labels beyond int32 ({_INT32_MAX}), e.g. {values[-1]}; "
            "labels must be in [0, 2**31 - 1]"
        )


def _check_spatial_dims(target: Tensor, spatial_dims: int | None) -> None:
    """Refuse a target whose axes cannot be told apart: ``(N, 1, H, W)`` is MONAI's
    channel-first label batch as much as a batch of one-slice volumes."""
    if spatial_dims is None:
        if target.ndim == 4 and target.shape[1] == 1:
            raise ValueError(
                f"`target` of shape {tuple(target.shape)} is ambiguous: (N, 1, H, W) label "
                "maps with a channel axis, or (N, D, H, W) volumes of one slice? Pass "
                "target[:, 0] for label maps, or spatial_dims=3 for volumes"
            )
        return
    if spatial_dims not in (2, 3) or spatial_dims != target.ndim - 1:
        raise ValueError(
            f"`spatial_dims` {spatial_dims!r} does not fit `target` of shape "
            f"{tuple(target.shape)}: 2 for (N, H, W), 3 for (N, D, H, W)"
        )


def counts_dtype(k: int | Sequence[int], ndim: int = 2) -> torch.dtype:
    """dtype of :func:`affinity_counts` for search region ``k`` (an int, isotropic over
    ``ndim`` spatial axes, or one int per axis): int32 when every count, at most the
    window ``prod(2 k_a + 1)`` - 1, fits (2-D: k <= 23169; 3-D: k <= 644), else int64."""
    region = (int(k),) * ndim if isinstance(k, (int, np.integer)) else tuple(k)
    return torch.int32 if window_size(region) - 1 <= _INT32_MAX else torch.int64


def _smallest_int(bound: int) -> torch.dtype:
    """Narrowest signed dtype holding every integer of magnitude <= ``bound``."""
    for dt in (torch.int16, torch.int32):
        if bound <= torch.iinfo(dt).max:
            return dt
    return torch.int64


def _pass_dtypes(region: tuple[int, ...]) -> list[torch.dtype]:
    """Accumulator dtypes of the passes along the last axis, then the second to last, ...
    for search region ``region`` (one k per axis): after the passes along the last ``p``
    axes every value is a count over a window of ``prod(2 k_a + 1)`` over those axes
    (:func:`_box_sums`), so no partial sum can overflow. 2-D, k isotropic: int16 up to
    k = 90, int32 up to k = 23169, int64 beyond."""
    dtypes, bound = [], 1
    for k in reversed(region):
        bound *= 2 * k + 1
        dtypes.append(_smallest_int(bound))
    return dtypes


# ---- counts ------------------------------------------------------------------------------------
def _compiling() -> bool:
    """True while torch.compile traces (plain tensor code then; no buffer reuse, no loops)."""
    check = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(check()) if check is not None else False


def _cumsum_(x: Tensor, dim: int) -> Tensor:
    """In-place cumulative sum along ``dim``."""
    if x.device.type == "cpu" and dim % x.ndim != x.ndim - 1 and not _compiling():
        # torch's CPU cumsum along a non-innermost axis is a strided scalar loop; adding
        # whole rows (planes) one after another is several times faster
        for i in range(1, x.shape[dim]):
            x.select(dim, i).add_(x.select(dim, i - 1))
        return x
    return x.cumsum_(dim)


def _box_sums(x: Tensor, k: int, dim: int, out: Tensor) -> Tensor:
    """Sums of ``x`` over the windows ``[i - k, i + k]`` along ``dim`` (negative), ``x``
    padded with its edge elements: written to ``out``.

    A running sum: ``out[0]`` is the first window's sum, ``out[i] - out[i - 1] =
    x[i + k] - x[i - k - 1]`` (indices clamped into the sequence), and a cumulative sum
    along ``dim`` adds these up. Every partial sum is itself a window sum, so ``out``'s
    dtype only has to hold ``(2k + 1) · max(x)``; the cost does not depend on ``k``.
    """
    n = x.shape[dim]
    if k == 0:
        return out.copy_(x)

    def xs(a: int, b: int) -> Tensor:  # x[a:b] along dim
        return x.narrow(dim, a, b - a)

    def os(a: int, b: int) -> Tensor:
        return out.narrow(dim, a, b - a)

    first, last = xs(0, 1), xs(n - 1, n)
    # out[0] = (k + 1)·x[0] + x[1..min(k, n - 1)] + max(0, k - n + 1)·x[n - 1]
    s0 = os(0, 1)
    torch.mul(first.to(out.dtype), k + 1, out=s0)  # in out's dtype: x's may not hold it
    m = min(k, n - 1)
    if m >= 1:
        s0.add_(xs(1, m + 1).sum(dim, keepdim=True, dtype=out.dtype))
    if k > n - 1:
        s0.add_(last.to(out.dtype), alpha=k - n + 1)
    # differences for i in [1, n - 1]: x[min(i + k, n - 1)] - x[max(i - k - 1, 0)]
    a, b = 1, min(k, n - 1 - k)  # i + k inside, i - k - 1 before the start
    if b >= a:
        torch.sub(xs(a + k, b + k + 1), first, out=os(a, b + 1))
    a, b = k + 1, n - 1 - k  # both inside
    if b >= a:
        torch.sub(xs(a + k, b + k + 1), xs(a - k - 1, b - k), out=os(a, b + 1))
    a, b = max(k + 1, n - k), n - 1  # i + k past the end, i - k - 1 inside
    if b >= a:
        torch.sub(last, xs(a - k - 1, b - k), out=os(a, b + 1))
    a, b = max(1, n - k), min(k, n - 1)  # both outside
    if b >= a:
        region = os(a, b + 1)
        region.copy_((last - first).expand_as(region))
    return _cumsum_(out, dim)


class _Workspace(threading.local):
    """Reusable CPU buffers of the last shapes used (per thread): a fresh allocation of
    this size is page-faulted in by the CPU, which costs as much as the arithmetic."""

    def __init__(self) -> None:
        self.buffers: dict[tuple, Tensor] = {}

    def get(self, name: str, shape: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
        if device.type != "cpu" or _compiling():
            return torch.empty(shape, dtype=dtype, device=device)
        key = (name, dtype)
        buf = self.buffers.get(key)
        numel = int(np.prod(shape))
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype)
            self.buffers[key] = buf
        return buf[:numel].view(shape)

    def clear(self) -> None:
        self.buffers.clear()


_WORKSPACE = _Workspace()


def clear_workspace() -> None:
    """Free this thread's CPU work buffers of :func:`affinity_counts` (reallocated on the
    next call) and the cached lookup tables."""
    _WORKSPACE.clear()
    CACHE.clear()


def _values_tensor(values: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``values`` as a tensor on ``device``, cached (a host-to-device copy waits for the
    device; the cache keeps the training step free of it)."""
    key = ("values", tuple(values), dtype, str(device))
    return CACHE.get(key, lambda: torch.tensor(list(values), dtype=dtype).to(device))


_LUT_MAX = 1 << 16


def _dense_index(labels: Tensor, values: list[int]) -> Tensor:
    """Position of each label in the sorted ``values`` (int64, same shape); a label not in
    ``values`` gets some position (the caller guarantees there is none)."""
    dev = labels.device
    if len(values) == 1:
        return torch.zeros(labels.shape, dtype=torch.int64, device=dev)
    if values[0] >= 0 and values[-1] < _LUT_MAX:

        def make_lut() -> Tensor:
            host = torch.zeros(values[-1] + 1, dtype=torch.int64)
            host[torch.tensor(values)] = torch.arange(len(values))
            return host.to(dev)

        lut = CACHE.get(("lut", tuple(values), str(dev)), make_lut)
        idx = labels.reshape(-1)
        if labels.dtype not in (torch.int32, torch.int64):
            idx = idx.to(torch.int32)  # index_select takes int32/int64 indices
        return lut.index_select(0, idx.clamp(0, values[-1])).view(labels.shape)
    vals = _values_tensor(values, labels.dtype, dev)
    return torch.searchsorted(vals, labels.contiguous()).clamp_(max=len(values) - 1)


def affinity_counts(
    target: Tensor,
    ks: int | str | Iterable[int | Sequence[int]],
    *,
    classes: Sequence[int] | Tensor | None = None,
    group_elements: int = DEFAULT_GROUP_ELEMENTS,
    spatial_dims: int | None = None,
) -> Tensor:
    """Exact Eq. 1 counts of a batch of label maps or volumes, on ``target``'s device.

    ``A[n, i, y, x]`` is the number of pixels of the ``(2k_i + 1)²`` window centred on
    ``(y, x)`` of image ``n``, padded with its edge pixels, whose label differs from the
    label at ``(y, x)``; every distinct value is a class (the ignore value included).
    Image by image the same integers as :func:`npa_precompute.affinity_maps`. For
    volumes ``(N, D, H, W)`` the window is ``(2k_d + 1)(2k_h + 1)(2k_w + 1)`` voxels,
    padded with the edge voxels, and ``A[n, i, z, y, x]`` counts its voxels of another
    label.

    Parameters
    ----------
    target : (N, H, W) or (N, D, H, W) integer tensor
        Labels in ``[0, 2**31 - 1]``, any integer dtype, on any device.
    ks : int, str or iterable
        Search regions: an int ``k >= 0`` (the same along every axis) or one int per
        spatial axis (``(k_h, k_w)``, ``(k_d, k_h, k_w)``; 0 along an axis allowed), e.g.
        ``32``, ``"8,16,32"``, ``[(2, 16, 16), 8]``, ``"2x16x16"``; the window may exceed
        the image. A bare tuple of ints is a list of isotropic regions. Duplicates are
        dropped, order is kept (:func:`npa_precompute.regions.parse_regions`).
    classes : sequence of int or 1-D tensor, optional, keyword-only
        The label values to count. Default: the distinct values of ``target`` (read
        with one device synchronisation, and checked). When given, nothing is read
        back from the device; ``target`` must hold no other value (the count of a pixel
        whose value is not listed is undefined).
    group_elements : int, keyword-only
        Bound on ``classes per group × N × D × H × W``: the memory bound of the module
        docstring (at least one class per group).
    spatial_dims : {2, 3}, optional, keyword-only
        Spatial axes of ``target``, to confirm a ``(N, 1, H, W)`` target is a batch of
        one-slice volumes (refused as ambiguous without it); None: from ``target.ndim``.

    Returns
    -------
    (N, len(ks), H, W) or (N, len(ks), D, H, W) tensor on ``target``'s device
        int32 while the largest window - 1 fits (2-D: k <= 23169; 3-D isotropic:
        k <= 644), else int64 (:func:`counts_dtype`).

    Raises
    ------
    TypeError
        ``target`` not an integer tensor (floating point, bool), ``ks`` not integers.
    ValueError
        ``target`` not 3-D/4-D or empty along a spatial axis, or ``(N, 1, H, W)``
        without ``spatial_dims=3`` (a channel axis or one slice?), a ``k < 0``, a region
        tuple whose length is not the number of spatial axes, labels negative or beyond
        int32 (checked when ``classes`` is None), ``group_elements < 1``.

    Example
    -------
    >>> t = torch.tensor([[[0, 0, 1], [0, 0, 1], [2, 2, 1]]])
    >>> affinity_counts(t, 1)[0, 0]
    tensor([[0, 3, 3],
            [3, 5, 3],
            [3, 5, 3]], dtype=torch.int32)
    """
    target = _check_target(target)
    _check_spatial_dims(target, spatial_dims)
    spatial = tuple(target.shape[1:])
    regions = parse_regions(ks, len(spatial))
    group_elements = check_int("group_elements", group_elements, minimum=1)
    n = target.shape[0]
    dev = target.device
    if classes is None:
        values = torch.unique(target).tolist()  # sorted; the one synchronisation
        _check_values(values)
    else:
        values = classes.tolist() if isinstance(classes, Tensor) else [int(c) for c in classes]
        values = sorted(set(values))
    top = max(regions, key=window_size)
    out = torch.zeros((n, len(regions), *spatial), dtype=counts_dtype(top), device=dev)
    if n == 0 or not values:
        return out
    # a value the target's dtype cannot hold cannot occur in it
    info = torch.iinfo(target.dtype)
    values = [v for v in values if info.min <= v <= info.max]
    if not values:
        return out
    per_image = n * math.prod(spatial)
    group = max(1, group_elements // max(per_image, 1))
    group = -(-len(values) // -(-len(values) // group))  # as even as the groups can be
    # labels in the narrowest dtype that holds the values (fewer bytes for every comparison)
    small = next(
        dt
        for dt in (torch.uint8, torch.int16, torch.int32, torch.int64)
        if torch.iinfo(dt).min <= values[0] and values[-1] <= torch.iinfo(dt).max
    )
    labels = target if target.dtype == small else target.to(small)
    dense = _dense_index(labels, values)  # (N, *spatial) int64: position of each label
    for g0 in range(0, len(values), group):
        _count_group(labels, dense, values, g0, min(group, len(values) - g0), regions, out)
    return out


def _count_group(
    labels: Tensor,
    dense: Tensor,
    values: list[int],
    g0: int,
    g: int,
    regions: tuple[tuple[int, ...], ...],
    out: Tensor,
) -> None:
    """Counts of the pixels of the classes ``values[g0 : g0 + g]`` into ``out``."""
    ws, dev = _WORKSPACE, labels.device
    vals = _values_tensor(values[g0 : g0 + g], labels.dtype, dev)
    shape = (g, *labels.shape)
    ind = torch.eq(labels.unsqueeze(0), vals.view(-1, *[1] * labels.ndim),
                   out=ws.get("ind", shape, torch.int16, dev))  # fmt: skip
    # each pixel's own class within the group (its plane in the per-class sums)
    in_group = None
    if g == len(values):
        own = dense.unsqueeze(0)
    else:
        own = (dense - g0).clamp_(0, g - 1).unsqueeze(0)
        in_group = (dense >= g0) & (dense < g0 + g)
    for i, region in enumerate(regions):
        # the window sums separably: along each row, then those down the columns (then
        # along the depth axis): running sums, see _box_sums
        sums = ind
        for p, (k, dt) in enumerate(zip(reversed(region), _pass_dtypes(region), strict=True)):
            buf = ws.get(("rows", "sums")[p % 2], shape, dt, dev)
            sums = _box_sums(sums, k, -1 - p, buf)
        mine = sums.gather(0, own)[0]  # (N, *spatial): the window count of the own class
        total = torch.full((), window_size(region), dtype=sums.dtype, device=dev)
        diff = total - mine
        if in_group is None:
            out[:, i] = diff
        else:
            out[:, i] = torch.where(in_group, diff.to(out.dtype), out[:, i])


# ---- weights -----------------------------------------------------------------------------------
def label_weights(
    label_margin: Tensor,
    label: Tensor,
    spec: WeightsSpec,
    *,
    classes: Sequence[int],
    ignore_index: int | None,
    group_elements: int = DEFAULT_GROUP_ELEMENTS,
    spatial_dims: int | None = None,
) -> Tensor:
    """Weights of ``spec`` of the labels ``label`` (N, h, w), counted on ``label_margin``
    (N, h + 2m, w + 2m): the same labels grown by ``m >= 0`` pixels on each side (``m = 0``:
    the same tensor), then cut to ``label``; 0 where ``label`` is ``ignore_index``.
    Volumes: ``label`` (N, d, h, w), ``label_margin`` grown along each spatial axis
    (by its own margin, 0 allowed), ``spatial_dims=3`` to confirm a ``(N, 1, H, W)``
    volume batch (:func:`affinity_counts`).

    The internal path of :func:`npa_weights`, :class:`~npa_train.loss.NPALoss` and the
    dataset's ``online:`` weights: nothing is checked and nothing is read back from the
    device (``classes``, every value the labels hold, ``ignore_index`` included, are
    given; other values give undefined weights, never an out-of-bounds read).
    """
    with torch.no_grad():
        counts = affinity_counts(label_margin, spec.ks, classes=classes,
                                 group_elements=group_elements,
                                 spatial_dims=spatial_dims)  # fmt: skip
        if tuple(label_margin.shape) != tuple(label.shape):
            cut = [slice(None)] * 2  # N, the k axis
            for grown, size in zip(label_margin.shape[1:], label.shape[1:], strict=True):
                m = (grown - size) // 2
                cut.append(slice(m, m + size))
            counts = counts[tuple(cut)]
        valid = None if ignore_index is None else label != ignore_index
        return spec_weights(counts, valid, spec)


def known_classes(num_classes: int, ignore_index: int | None) -> list[int]:
    """The label values of a batch whose labels are checked: ``0 .. num_classes - 1`` and
    ``ignore_index`` (nothing to read back from the device)."""
    classes = list(range(num_classes))
    if ignore_index is not None and not 0 <= ignore_index < num_classes:
        classes.append(int(ignore_index))
    return classes


def npa_weights(
    target: Tensor,
    k: int | Sequence[int] = 32,
    transform: str | WeightTransform = "log10:L=0.5",
    *,
    ignore_index: int | None = 255,
    num_classes: int | None = None,
    group_elements: int = DEFAULT_GROUP_ELEMENTS,
    spatial_dims: int | None = None,
) -> Tensor:
    """NPA pixel weights of a batch of label maps, computed on ``target``'s device.

    :func:`affinity_counts` for one ``k``, then the transform of ``transform`` (the
    canonical specs of ``npa-precompute``: ``raw``, ``norm:L=<f>``, ``log10:L=<f>``,
    ``ln:L=<f>``, ``log:a=<f>,L=<f>``): float32 values equal to
    ``parse_transform(transform).apply(counts, target == ignore_index)`` image by image
    (for ``norm``: min and max per image). 0 at ignored pixels. No gradient.

    Parameters
    ----------
    target : (N, H, W) or (N, D, H, W) integer tensor of labels (any device)
    k : search region ``k >= 0`` (default 32, the paper's best), or one k per spatial
        axis (``(k_d, k_h, k_w)`` for volumes)
    transform : spec string or :class:`~npa_precompute.WeightTransform`
    ignore_index : label whose pixels weigh 0 (it still counts as a class in Eq. 1);
        None: none
    num_classes : when given, the labels are ``0 .. num_classes - 1`` and
        ``ignore_index``: nothing is read back from the device (no synchronisation);
        other values must not occur (they are not checked: :class:`NPALoss` checks
        them). None: the distinct values are read and checked (one synchronisation).
    group_elements : memory bound of :func:`affinity_counts`
    spatial_dims : 2 or 3, to confirm that a ``(N, 1, H, W)`` target holds one-slice
        volumes (:func:`affinity_counts`); None: from ``target.ndim``

    Returns
    -------
    (N, H, W) or (N, D, H, W) float32 tensor on ``target``'s device

    Raises
    ------
    TypeError, ValueError
        As :func:`affinity_counts`; an unknown transform spec; ``k`` not one integer >= 0
        nor one per spatial axis.
    """
    if not isinstance(k, (Sequence, np.ndarray)):
        k = check_int("k", k, minimum=0, maximum=MAX_K)
    transform = parse_transform(transform)
    target = _check_target(target)
    _check_spatial_dims(target, spatial_dims)
    region = parse_regions([k], target.ndim - 1)[0]
    if ignore_index is not None:
        ignore_index = check_int("ignore_index", ignore_index)
    group_elements = check_int("group_elements", group_elements, minimum=1)
    if num_classes is not None:
        classes = known_classes(check_int("num_classes", num_classes, minimum=1), ignore_index)
    else:
        classes = torch.unique(target).tolist()  # the one synchronisation
        _check_values([v for v in classes if v != ignore_index])
    spec = WeightsSpec((k if isinstance(k, int) else region,), transform)
    return label_weights(target, target, spec, classes=classes, ignore_index=ignore_index,
                         group_elements=group_elements,
                         spatial_dims=target.ndim - 1)  # fmt: skip


def npa_weights_crop(
    label: Tensor,
    crop: tuple[int, int, int, int],
    k: int = 32,
    transform: str | WeightTransform = "log10:L=0.5",
    *,
    ignore_index: int | None = 255,
    num_classes: int | None = None,
) -> Tensor:
    """NPA weights of a crop computed from a larger label window around it: the tile's
    weights at the crop, not the crop's own (whose Eq. 1 pads at the crop's edges).

    The counts are those of the window (edge-replicate padded at the window's edges), cut
    to ``crop``. They equal the tile's counts at every crop pixel when the window holds
    the crop grown by ``k`` pixels on each side, or reaches the tile's edge on a side
    where it cannot (a crop at the tile's border): read the window
    ``[top - k, top + h + k) × [left - k, left + w + k)`` clipped to the tile. Then the
    weights equal the tile's stored weights for ``raw``/``log10``/``ln``/``log``
    (``norm`` takes its min and max over the crop, as :func:`npa_weights` per image).

    Parameters
    ----------
    label : (N, H, W) integer tensor
        Label windows (any device), e.g. the crop plus a margin of ``k`` pixels.
    crop : (top, left, height, width)
        The crop's place in the window, in pixels; it must lie inside the window.
    k, transform, ignore_index, num_classes
        As :func:`npa_weights`.

    Returns
    -------
    (N, height, width) float32 tensor on ``label``'s device

    Raises
    ------
    ValueError
        ``crop`` not four integers inside the window, ``label`` not (N, H, W) (volumes
        have no crop form); as :func:`npa_weights`.

    Example
    -------
    >>> tile = torch.randint(0, 3, (1, 64, 64))
    >>> w = npa_weights_crop(tile[:, 8:56, 8:56], (8, 8, 32, 32), k=8)  # 8-pixel margin
    >>> torch.equal(w, npa_weights(tile, 8)[:, 16:48, 16:48])
    True
    """
    k = check_int("k", k, minimum=0)
    if not (isinstance(crop, (tuple, list)) and len(crop) == 4):
        raise ValueError(f"`crop` must be (top, left, height, width), got {crop!r}")
    top, left, h, w = (check_int("crop", v, minimum=0) for v in crop)
    label = _check_target(label)
    if label.ndim != 3:
        raise ValueError(f"`label` must be (N, H, W) label windows, got {tuple(label.shape)}")
    wh, ww = label.shape[-2:]
    if h < 1 or w < 1 or top + h > wh or left + w > ww:
        raise ValueError(
            f"`crop` (top, left, height, width) = {tuple(crop)} must lie inside the label "
            f"window of {wh} x {ww} pixels"
        )
    # pixels farther than k from the crop do not change its counts: cut them off first
    y0, x0 = max(top - k, 0), max(left - k, 0)
    sub = label[:, y0 : min(top + h + k, wh), x0 : min(left + w + k, ww)]
    # raw weights are the counts themselves (exact in float32; 0 at ignored pixels, which
    # weigh 0 whatever their count), with npa_weights' checks
    counts = npa_weights(sub, k, "raw", ignore_index=ignore_index, num_classes=num_classes)
    cy, cx = top - y0, left - x0
    counts = counts[:, cy : cy + h, cx : cx + w].to(counts_dtype(k))
    target = sub[:, cy : cy + h, cx : cx + w]
    return weights_from_counts(counts, target, transform, k=k, ignore_index=ignore_index)
