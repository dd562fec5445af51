"""The baselines of the paper's Table 1 and the ``--loss`` names (Feng et al. 2020, §5.1).

Each baseline is a function plus a thin ``nn.Module`` with ``forward(logits, target,
weight=None)``, sharing the input checks, ignore handling and reductions of
:mod:`npa_train.loss` (NPALoss, Eq. 4): class-weighted cross-entropy with median-frequency
weights, softmax focal loss (gamma = 2) and multi-class soft dice. :func:`build_criterion`
makes the module for a ``--loss`` name (:data:`npa_train.choices.LOSSES`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from npa_precompute.errors import ParameterError
from npa_precompute.params import check_number
from npa_train.choices import LOSSES, parse_reduction
from npa_train.loss import (
    NPALoss,
    check_loss_inputs,
    npa_cross_entropy,
    parse_ignore_index,
    prepare_pixels,
    reduce_pixels,
)

__all__ = [
    "ClassWeightedCE",
    "DiceLoss",
    "FocalLoss",
    "build_criterion",
    "class_weighted_cross_entropy",
    "dice_loss",
    "focal_loss",
    "median_frequency_weights",
]


def class_weighted_cross_entropy(
    logits: Tensor,
    target: Tensor,
    class_weight: Tensor | Sequence[float],
    *,
    ignore_index: int = 255,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy with a weight per class (the ``ce-weighted`` baseline).

    Pixel ``p`` of class ``y_p`` gets weight ``class_weight[y_p]``; ``"mean"`` divides
    by the sum of the weights of the non-ignored pixels, so the result equals
    ``F.cross_entropy(logits, target, weight=class_weight, ignore_index=ignore_index)``
    (but is 0, not NaN, when every pixel is ignored or has weight 0).

    Parameters
    ----------
    logits
        Unnormalized class scores.
    target
        Class indices in ``[0, C)`` or ``ignore_index``.
    class_weight
        ``C`` non-negative finite weights (e.g.
        :func:`median_frequency_weights`).
    ignore_index
        Target value of pixels that contribute nothing. Default 255.
    reduction
        ``"mean"`` (default: weighted mean, as ``F.cross_entropy``), ``"sum"``
        or ``"none"``.

    Shape
    -----
    - logits: ``(N, C, H, W)``; target: ``(N, H, W)``; class_weight: ``(C,)``.
    - output: ``()``, or ``(N, H, W)`` for ``reduction="none"``.

    Raises
    ------
    ValueError
        ``class_weight`` not of length ``C``, negative or non-finite;
        ``reduction`` not one of the three; bad inputs as in :func:`npa_cross_entropy`.

    Examples
    --------
    >>> logits = torch.zeros(1, 2, 1, 2)
    >>> target = torch.tensor([[[0, 1]]])
    >>> round(class_weighted_cross_entropy(logits, target, [1.0, 3.0]).item(), 4)  # log 2
    0.6931
    """
    check_loss_inputs(logits, target, None)
    if reduction not in ("mean", "sum", "none"):
        raise ParameterError("reduction", f"must be 'mean', 'sum' or 'none', got {reduction!r}")
    cw = torch.as_tensor(class_weight, dtype=logits.dtype, device=logits.device)
    c = logits.shape[1]
    if cw.ndim != 1 or cw.shape[0] != c:
        raise ValueError(
            f"`class_weight` must hold {c} values (one per class), got {tuple(cw.shape)}"
        )
    if not bool(torch.isfinite(cw).all()) or bool((cw < 0).any()):
        raise ValueError(f"`class_weight` must be finite and >= 0, got {cw.tolist()}")
    ignore_index = parse_ignore_index(ignore_index)
    t = target.long()
    valid = t != ignore_index
    weight = cw[
        torch.where(valid, t, torch.zeros((), dtype=t.dtype, device=t.device)).clamp(0, c - 1)
    ]
    red = {"mean": "weighted_mean", "sum": "sum", "none": "none"}[reduction]
    return npa_cross_entropy(logits, target, weight, ignore_index=ignore_index, reduction=red)


def focal_loss(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    gamma: float = 2.0,
    ignore_index: int = 255,
    reduction: str = "mean",
) -> Tensor:
    """Softmax (multi-class) focal loss, Lin et al. 2017: ``-(1 - p_t)^gamma log p_t``.

    ``p_t`` is the softmax probability of the target class; ``gamma = 0`` gives the
    cross-entropy. ``1 - p_t`` is computed as ``-expm1(log p_t)`` (accurate when
    ``p_t`` is close to 1), and ``log p_t`` by ``log_softmax``: finite for any logits.

    Parameters
    ----------
    logits
        Unnormalized class scores.
    target
        Class indices in ``[0, C)`` or ``ignore_index``.
    weight
        Optional per-pixel weights (as in :func:`npa_cross_entropy`); None: 1.
    gamma
        Focusing parameter ``>= 0``. Default 2 (the paper's baseline).
    ignore_index
        Target value of pixels that contribute nothing. Default 255.
    reduction
        As in :func:`npa_cross_entropy` (default ``"mean"`` over non-ignored
        pixels).

    Shape
    -----
    - logits: ``(N, C, H, W)``; target, weight: ``(N, H, W)``.
    - output: ``()``, or ``(N, H, W)`` for ``reduction="none"``.

    Raises
    ------
    ValueError
        ``gamma`` negative or non-finite; bad inputs as in
        :func:`npa_cross_entropy`.

    Examples
    --------
    >>> logits = torch.tensor([[[[0.0]], [[0.0]]]])  # p_t = 1/2
    >>> round(focal_loss(logits, torch.tensor([[[0]]])).item(), 4)  # 0.25 * log 2
    0.1733
    """
    check_loss_inputs(logits, target, weight)
    check_number("gamma", gamma, minimum=0)
    ignore_index = parse_ignore_index(ignore_index)
    reduction = parse_reduction(reduction)
    safe_target, valid, w = prepare_pixels(logits, target, weight, ignore_index)
    logpt = F.log_softmax(logits, dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
    if gamma == 0:
        per_pixel = -logpt
    else:
        per_pixel = -((-torch.expm1(logpt)).clamp_min(0) ** gamma) * logpt
    return reduce_pixels(per_pixel * w, valid, w, reduction, logits.shape[0])


def dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = 255,
    smooth: float = 1.0,
) -> Tensor:
    """Multi-class soft dice loss: ``1 - mean_c dice_c`` over the whole batch.

    .. math::

        \\text{dice}_c = \\frac{2 \\sum_p v_p \\, s_{pc} \\, g_{pc} + \\text{smooth}}
                             {\\sum_p v_p (s_{pc} + g_{pc}) + \\text{smooth}}

    with ``s = softmax(logits)``, ``g`` the one-hot target and ``v`` the non-ignored
    mask (sums over all pixels of all images). Every class counts, present or not; with
    ``smooth > 0`` a class absent from target and prediction scores ``dice ≈ 1``. A batch with every
    pixel ignored gives 0 (and zero gradients), never NaN.

    Parameters
    ----------
    logits
        Unnormalized class scores.
    target
        Class indices in ``[0, C)`` or ``ignore_index``.
    ignore_index
        Target value of pixels that contribute nothing. Default 255.
    smooth
        Additive smoothing ``>= 0``. Default 1. With 0, a class with an empty
        denominator counts as ``dice = 1``.

    Shape
    -----
    - logits: ``(N, C, H, W)``; target: ``(N, H, W)``; output: ``()``.

    Raises
    ------
    ValueError
        ``smooth`` negative or non-finite; bad inputs as in
        :func:`npa_cross_entropy`.

    Examples
    --------
    >>> logits = torch.tensor([[[[9.0, -9.0]], [[-9.0, 9.0]]]])  # right on both pixels
    >>> dice_loss(logits, torch.tensor([[[0, 1]]]), smooth=0.0).item() < 1e-6
    True
    """
    check_loss_inputs(logits, target, None)
    check_number("smooth", smooth, minimum=0)
    ignore_index = parse_ignore_index(ignore_index)
    safe_target, valid, _ = prepare_pixels(logits, target, None, ignore_index)
    c = logits.shape[1]
    probs = F.softmax(logits, dim=1) * valid.unsqueeze(1).to(logits.dtype)
    onehot = F.one_hot(safe_target, c).permute(0, 3, 1, 2).to(logits.dtype)
    onehot = onehot * valid.unsqueeze(1).to(logits.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    card = probs.sum(dims) + onehot.sum(dims)
    num, den = 2 * inter + smooth, card + smooth
    one = torch.ones((), dtype=logits.dtype, device=logits.device)
    dice = torch.where(den > 0, num / torch.where(den > 0, den, one), one)
    return 1 - dice.mean()


def median_frequency_weights(
    class_pixels: Sequence | np.ndarray,
    *,
    background: Sequence[int] = (),
) -> np.ndarray:
    """Median-frequency class weights (Eigen & Fergus 2015), background rule of the paper.

    ``freq[c]`` = pixels of class ``c`` / total pixels of the images (tiles) where ``c``
    is present; ``weight[c] = median(freq) / freq[c]``, the median over the classes
    present. Each class in ``background`` (ISPRS clutter/background) then gets the
    lowest weight of the other present classes (Feng et al. 2020, §5.1). Classes absent
    from every image get weight 0 (they have no pixels to weigh).

    Parameters
    ----------
    class_pixels : (T, C) or (C,) array of non-negative counts
        Non-ignored pixels per tile and class (the store's ``class_pixels`` tile attr);
        a 1-D array is one image.
    background : sequence of int
        Class indices that get the lowest weight of the others.

    Returns
    -------
    (C,) float64

    Raises
    ------
    ValueError
        Negative counts, no pixel at all, or a ``background`` index out of range.

    Examples
    --------
    >>> median_frequency_weights([[10, 30, 60, 0], [0, 50, 50, 100]], background=[3])
    array([3.16666667, 1.1875    , 0.86363636, 0.86363636])
    """
    px = np.asarray(class_pixels, dtype=np.float64)
    if px.ndim == 1:
        px = px[None]
    if px.ndim != 2:
        raise ValueError(f"`class_pixels` must be (T, C) or (C,), got shape {px.shape}")
    if (px < 0).any() or not np.isfinite(px).all():
        raise ValueError("`class_pixels` must be finite and >= 0")
    c = px.shape[1]
    bg = sorted({int(b) for b in background})
    if any(b < 0 or b >= c for b in bg):
        raise ValueError(f"`background` indices must be in [0, {c}), got {list(background)}")
    totals = px.sum(1)  # pixels per image
    if totals.sum() == 0:
        raise ValueError("`class_pixels` holds no pixel at all")
    present = px > 0
    image_pixels = (present * totals[:, None]).sum(0)  # per class: pixels of images with it
    counts = px.sum(0)
    has = counts > 0
    freq = np.zeros(c)
    freq[has] = counts[has] / image_pixels[has]
    weights = np.zeros(c)
    weights[has] = np.median(freq[has]) / freq[has]
    others = [i for i in range(c) if has[i] and i not in bg]
    for b in bg:
        if has[b] and others:
            weights[b] = weights[others].min()
    return weights


class ClassWeightedCE(nn.Module):
    """Class-weighted cross-entropy; see :func:`class_weighted_cross_entropy`.

    Parameters
    ----------
    class_weight
        ``C`` weights (kept as a buffer: moves with ``.to(device)``).
    ignore_index
        Default 255.
    reduction
        ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Shape
    -----
    - logits ``(N, C, H, W)``, target ``(N, H, W)``; ``weight`` is not used.
    """

    def __init__(self, class_weight, ignore_index: int = 255, reduction: str = "mean") -> None:
        super().__init__()
        self.register_buffer("class_weight", torch.as_tensor(class_weight, dtype=torch.float32))
        self.ignore_index = parse_ignore_index(ignore_index)
        if reduction not in ("mean", "sum", "none"):
            raise ParameterError("reduction", f"must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return class_weighted_cross_entropy(
            logits, target, self.class_weight, ignore_index=self.ignore_index,
            reduction=self.reduction,
        )  # fmt: skip

    def extra_repr(self) -> str:
        w = ", ".join(f"{x:.3g}" for x in self.class_weight.tolist())
        return f"class_weight=[{w}], ignore_index={self.ignore_index}"


class FocalLoss(nn.Module):
    """Softmax focal loss; see :func:`focal_loss`.

    Parameters
    ----------
    gamma
        Default 2.
    ignore_index
        Default 255.
    reduction
        Default ``"mean"``.

    Shape
    -----
    - logits ``(N, C, H, W)``, target ``(N, H, W)``, weight ``(N, H, W)`` or None.
    """

    def __init__(self, gamma: float = 2.0, ignore_index: int = 255, reduction: str = "mean"):
        super().__init__()
        self.gamma = check_number("gamma", gamma, minimum=0)
        self.ignore_index = parse_ignore_index(ignore_index)
        self.reduction = parse_reduction(reduction)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return focal_loss(logits, target, weight, gamma=self.gamma,
                          ignore_index=self.ignore_index, reduction=self.reduction)  # fmt: skip

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, ignore_index={self.ignore_index}"


class DiceLoss(nn.Module):
    """Multi-class soft dice loss; see :func:`dice_loss`.

    Parameters
    ----------
    ignore_index
        Default 255.
    smooth
        Default 1.

    Shape
    -----
    - logits ``(N, C, H, W)``, target ``(N, H, W)``; ``weight`` is not used.
    """

    def __init__(self, ignore_index: int = 255, smooth: float = 1.0) -> None:
        super().__init__()
        self.ignore_index = parse_ignore_index(ignore_index)
        self.smooth = check_number("smooth", smooth, minimum=0)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return dice_loss(logits, target, ignore_index=self.ignore_index, smooth=self.smooth)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, smooth={self.smooth}"


def build_criterion(
    name: str,
    *,
    ignore_index: int = 255,
    reduction: str = "mean",
    class_weight: Sequence[float] | None = None,
    gamma: float = 2.0,
    smooth: float = 1.0,
) -> nn.Module:
    """The loss module for a ``--loss`` name; ``forward(logits, target, weight=None)``.

    Parameters
    ----------
    name : one of :data:`LOSSES`
    ignore_index : int
    reduction : for ``npa`` (any of :data:`REDUCTIONS`) and ``focal``; the others use
        their own mean
    class_weight : required for ``ce-weighted``
    gamma : focal parameter
    smooth : dice smoothing

    Raises
    ------
    ValueError
        Unknown name, or ``ce-weighted`` without ``class_weight``.
    """
    if name not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}, got {name!r}")
    if name in ("npa", "ce"):
        # the trainer passes the weights (stored or online) itself: k=None, so that a missing
        # weight means 1 (plain cross-entropy for "ce")
        return NPALoss(k=None, ignore_index=ignore_index,
                       reduction=reduction if name == "npa" else "mean")  # fmt: skip
    if name == "ce-weighted":
        if class_weight is None:
            raise ValueError("`loss` 'ce-weighted' needs `class_weight`")
        return ClassWeightedCE(class_weight, ignore_index=ignore_index)
    if name == "focal":
        return FocalLoss(gamma, ignore_index=ignore_index, reduction=reduction)
    return DiceLoss(ignore_index=ignore_index, smooth=smooth)
