"""Affinity counts -> NPA weights on a torch device: the one implementation for tensors.

Both weights computed during training (:mod:`npa_train.online`, from each augmented
label) and weights derived from the store's counts on the training device
(:class:`TorchDeriver`, used by :class:`npa_train.data.StoreCropDataset` in ``"window"``
mode) go through :func:`spec_weights`; the numpy path is
:meth:`npa_precompute.transforms.WeightTransform.apply` and
:class:`npa_precompute.derived.Deriver`. All give the same float32 values:

* transformations whose weights depend on the count alone (``log10``, ``ln``, ``log``)
  gather from the float32 lookup table of
  :meth:`~npa_precompute.transforms.WeightTransform.table` (the formula in float64 on the
  host: evaluating the logarithm on a GPU would not round like numpy), kept on the device
  in :data:`CACHE`; beyond :data:`~npa_precompute.transforms.MAX_TABLE` possible counts the
  distinct counts go through the host (one synchronisation);
* ``raw`` is the count cast to float32 (exact through float64);
* ``norm`` (Eq. 2) evaluates ``(A - min) / (max - min) + L`` in float64 on the device
  (IEEE basic operations round alike everywhere) with the min and max over the
  non-ignored pixels of each image, or the ranges given (a tile's, as the store's);
* multi-scale weights: the mean of the per-k float32 weights, summed in float64 in
  increasing k, rounded to float32.

Ignored pixels weigh 0. Imports torch and numpy only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from npa_precompute.names import WeightsSpec
from npa_precompute.regions import parse_regions, window_size
from npa_precompute.transforms import MAX_TABLE, WeightTransform, parse_transform

__all__ = ["CACHE", "DeviceCache", "TorchDeriver", "spec_weights", "weights_from_counts"]


class DeviceCache:
    """Small tensors kept on their device (lookup tables, value lists), made once per key.

    A host-to-device copy waits for the device: the cache keeps training steps free of
    them. Thread-safe; when it holds ``limit`` entries it is emptied before the next one
    is added (keys are few in practice: one per transform, k, device and class list).

    Parameters
    ----------
    limit : int, default 256
    """

    def __init__(self, limit: int = 256) -> None:
        self.limit = int(limit)
        self._items: dict[Hashable, Tensor] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], Tensor]) -> Tensor:
        """The tensor of ``key``, made by ``make()`` the first time (or after a clear)."""
        value = self._items.get(key)
        if value is None:
            value = make()
            with self._lock:
                if len(self._items) >= self.limit:
                    self._items.clear()
                self._items[key] = value
        return value

    def clear(self) -> None:
        """Drop every tensor (they are made again when next asked for)."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


#: The cache of every device-side table of the weights and the online counts.
CACHE = DeviceCache()


def _table(transform: WeightTransform, size: int, device: torch.device) -> Tensor:
    """float32 weights of the counts ``0 .. size - 1`` on ``device`` (cached)."""

    def make() -> Tensor:
        return torch.from_numpy(transform.table(size).astype(np.float32)).to(device)

    return CACHE.get(("table", transform.spec, size, str(device)), make)


def _window(k: int | tuple[int, ...], ndim: int) -> int:
    """Pixels (voxels) in the window of ``k`` over ``ndim`` spatial axes: the counts
    ``0 .. window - 1`` are the possible ones (``(2k + 1)**2`` for a label map)."""
    return window_size(k if isinstance(k, tuple) else (int(k),) * ndim)


def _one_k(
    counts: Tensor,
    transform: WeightTransform,
    k: int | tuple[int, ...] | None,
    ranges: Tensor | None,
) -> Tensor:
    """float32 weights of counts ``(N, H, W)`` or ``(N, D, H, W)`` of one k (ignored
    pixels not zeroed)."""
    dev = counts.device
    if transform.needs_range:
        c = counts.to(torch.float64)
        per_image = (-1, *[1] * (counts.ndim - 1))
        lo = ranges[:, 0].view(per_image)
        hi = ranges[:, 1].view(per_image)
        span = hi - lo
        one = torch.ones((), dtype=torch.float64, device=dev)
        scaled = (c - lo) / torch.where(span > 0, span, one) + transform.L
        flat = torch.full((), transform.L, dtype=torch.float64, device=dev)
        return torch.where(span > 0, scaled, flat).to(torch.float32)
    if transform.kind == "raw":  # exact: counts are integers far below 2**53
        return counts.to(torch.float64).to(torch.float32)
    if k is None:
        size = (int(counts.max()) if counts.numel() else 0) + 1  # one synchronisation
    else:
        size = _window(k, counts.ndim - 1)
    if size > MAX_TABLE:  # huge k: the distinct counts through the host (one synchronisation)
        uniq, inv = torch.unique(counts, return_inverse=True)
        host = uniq.cpu().numpy()
        return torch.from_numpy(transform.per_pixel(host, 0, 0)).to(dev)[inv]
    table = _table(transform, size, dev)
    idx = counts.reshape(-1)
    if idx.dtype not in (torch.int32, torch.int64):
        idx = idx.to(torch.int32)
    # clamped: a count beyond the table (labels outside the classes counted, which the
    # caller checks) never reads out of bounds, which on CUDA is a device-side assert
    return table.index_select(0, idx.clamp(0, size - 1)).view(counts.shape)


def _image_ranges(counts: Tensor, valid: Tensor | None) -> Tensor:
    """(N, 2) float64: min and max count of each image (volume) over its non-ignored
    pixels, over all its spatial axes."""
    c = counts.to(torch.float64)
    dims = tuple(range(1, c.ndim))
    if valid is None:
        return torch.stack([c.amin(dim=dims), c.amax(dim=dims)], dim=1)
    big = torch.full((), float("inf"), dtype=torch.float64, device=counts.device)
    lo = torch.where(valid, c, big).amin(dim=dims)
    hi = torch.where(valid, c, -big).amax(dim=dims)
    return torch.stack([lo, hi], dim=1)


def spec_weights(
    counts: Tensor,
    valid: Tensor | None,
    spec: WeightsSpec,
    *,
    ranges: Tensor | None = None,
    sized: bool = True,
) -> Tensor:
    """Weights ``(N, H, W)`` float32 of the counts ``(N, len(spec.ks), H, W)`` of ``spec``;
    volumes: ``(N, D, H, W)`` of ``(N, len(spec.ks), D, H, W)``.

    Parameters
    ----------
    counts : (N, K, H, W) or (N, K, D, H, W) integer tensor
        The Eq. 1 counts of ``spec.ks`` in that order (non-negative values).
    valid : (N, H, W) or (N, D, H, W) bool tensor or None
        False at ignored pixels (weight 0); None: no pixel is ignored.
    spec : WeightsSpec
    ranges : (N, K, 2) float64 tensor, optional, keyword-only
        The (min, max) count per image and k that ``norm`` scales with (a tile's, for
        weights equal to the store's); default: each image's over its ``valid`` pixels.
    sized : bool, default True, keyword-only
        Whether the lookup tables are sized by the window of k (``(2k + 1)**2`` counts,
        ``(2k_d + 1)(2k_h + 1)(2k_w + 1)`` for a volume's region); False reads the
        largest count from the device instead (one synchronisation).

    Returns
    -------
    (N, H, W) or (N, D, H, W) float32 tensor on ``counts``' device. No checks: callers
    check once (a region tuple of ``spec`` has one k per spatial axis of ``counts``).
    """
    transform = spec.transform
    acc = None
    for i, k in enumerate(spec.ks):
        c = counts[:, i]
        r = None
        if transform.needs_range:
            r = _image_ranges(c, valid) if ranges is None else ranges[:, i]
        w = _one_k(c, transform, k if sized else None, r)
        if valid is not None:
            w = torch.where(valid, w, torch.zeros((), dtype=torch.float32, device=w.device))
        if not spec.multiscale:
            return w
        acc = w.to(torch.float64) if acc is None else acc + w.to(torch.float64)
    return (acc / len(spec.ks)).to(torch.float32)


def weights_from_counts(
    counts: Tensor,
    target: Tensor,
    transform: str | WeightTransform = "log10:L=0.5",
    *,
    k: int | Sequence[int] | None = None,
    ignore_index: int | None = 255,
) -> Tensor:
    """Weights ``(N, H, W)`` float32 of counts ``(N, H, W)`` of one k, 0 where ``target``
    is ``ignore_index``: :meth:`~npa_precompute.WeightTransform.apply` image by image.
    Volumes: counts and target ``(N, D, H, W)``.

    Parameters
    ----------
    counts : (N, H, W) or (N, D, H, W) integer tensor, the Eq. 1 counts of ``target``
    target : integer tensor of labels, the shape of ``counts``
    transform : spec string or WeightTransform (default the paper's ``log10:L=0.5``)
    k : int or one int per spatial axis, optional, keyword-only
        The counts' search region: sizes the lookup table. None: the largest count is
        read from the device (one synchronisation).
    ignore_index : int or None, keyword-only
        Label whose pixels weigh 0 (default 255); None: none.

    ``norm`` uses each image's min and max over its non-ignored pixels.

    Raises
    ------
    ValueError
        ``counts`` and ``target`` not both (N, H, W) or both (N, D, H, W); ``k`` not an
        int nor one per spatial axis; an unknown transform.
    """
    transform = parse_transform(transform)
    if counts.ndim not in (3, 4) or tuple(counts.shape) != tuple(target.shape):
        raise ValueError(
            f"`counts` {tuple(counts.shape)} and `target` {tuple(target.shape)} must both be "
            "(N, H, W) or both (N, D, H, W)"
        )
    if k is not None:
        k = parse_regions([k], counts.ndim - 1)[0]
    spec = WeightsSpec((0 if k is None else k,), transform)
    valid = None if ignore_index is None else target != ignore_index
    return spec_weights(counts[:, None], valid, spec, sized=k is not None)


class TorchDeriver:
    """Derives one weights name of the store on a torch device, for a batch of windows of
    several tiles: :func:`spec_weights` with each tile's count ranges, so the weights
    equal :class:`npa_precompute.derived.Deriver`'s (and the precompute's) bit for bit.

    Parameters
    ----------
    spec : WeightsSpec
    ranges : per tile, {k: (min, max) or None}
        The tile's min and max count over its non-ignore pixels (``norm`` needs them).
    ignore_index : int, keyword-only

    Raises
    ------
    ValueError
        A k with more than :data:`~npa_precompute.transforms.MAX_TABLE` possible counts
        (derive those on the host), or a range ``norm`` needs is missing.
    """

    def __init__(
        self,
        spec: WeightsSpec,
        ranges: Sequence[Mapping[int, tuple[int, int] | None]],
        *,
        ignore_index: int,
    ) -> None:
        for k in spec.ks:
            if _window(k, 2) > MAX_TABLE:
                raise ValueError(f"k={k} is too large to derive on the device")
            if spec.transform.needs_range and any(r.get(k) is None for r in ranges):
                raise ValueError(f"deriving {spec.name!r} needs every tile's range for k={k}")
        self.spec = spec.stored()
        self.ignore_index = int(ignore_index)
        self._ranges = None
        if spec.transform.needs_range:
            self._ranges = np.array([[r[k] for k in spec.ks] for r in ranges], dtype=np.float64)
            self._key = ("ranges", self._ranges.shape, self._ranges.tobytes())

    def __call__(self, counts: Tensor, label: Tensor, tile_index: Tensor) -> Tensor:
        """Weights (N, H, W) float32 of counts (N, K, H, W), labels (N, H, W) on one device.

        ``counts`` may be int16/int32 tensors holding uint16/uint32 counts bit for bit
        (torch has no unsigned types before 2.3); ``tile_index`` (N,) indexes ``ranges``.
        """
        dev = counts.device
        if counts.dtype == torch.int16:
            c = counts.to(torch.int32) & 0xFFFF
        elif counts.dtype == torch.int32:
            c = counts.to(torch.int64) & 0xFFFFFFFF
        else:
            c = counts.to(torch.int64)
        ranges = None
        if self._ranges is not None:
            host = self._ranges
            table = CACHE.get((*self._key, str(dev)), lambda: torch.from_numpy(host).to(dev))
            ranges = table[tile_index.to(dev)]  # (N, K, 2)
        return spec_weights(c, label != self.ignore_index, self.spec, ranges=ranges)
