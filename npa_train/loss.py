"""Pixel-weighted cross-entropy: the NPALoss of Feng et al. (2020), Eq. 4.

.. math::

    L = -\\frac{1}{D} \\sum_{n,i,j} [y_{nij} \\ne \\text{ignore}] \\; AT_{nij} \\,
        \\log \\operatorname{softmax}(z_{n \\cdot ij})_{y_{nij}}

with ``AT`` the transformed neighbouring-pixel-affinity weight map precomputed by
``npa-precompute`` and ``D`` chosen by ``reduction``:

==================  ============================================================
``reduction``       ``D``
==================  ============================================================
``"mean"``          number of non-ignored pixels (default)
``"weighted_mean"`` sum of the weights over the non-ignored pixels
``"batch"``         ``N``, the mini-batch size (Eq. 4 taken literally)
``"sum"``           1
``"none"``          no reduction: the ``(N, H, W)`` map of weighted losses
==================  ============================================================

Ignored pixels contribute nothing, whatever their weight; a batch in which every
pixel is ignored (or whose weights sum to 0, for ``weighted_mean``) gives a loss of
exactly 0 with zero gradients, never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["REDUCTIONS", "NPALoss", "npa_cross_entropy"]

#: Allowed values of ``reduction``.
REDUCTIONS = ("mean", "weighted_mean", "batch", "sum", "none")


def parse_reduction(reduction: str) -> str:
    """Return ``reduction`` if it is one of :data:`REDUCTIONS`, else raise ValueError."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _parse_ignore_index(ignore_index: int) -> int:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"`ignore_index` must be an int, got {type(ignore_index).__name__}")
    return ignore_index


def _check_inputs(logits: Tensor, target: Tensor, weight: Tensor | None) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"`logits` must be a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(target, Tensor):
        raise TypeError(f"`target` must be a torch.Tensor, got {type(target).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"`logits` must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.ndim != 4:
        raise ValueError(
            f"`logits` must have shape (N, C, H, W), got {tuple(logits.shape)} ({logits.ndim}-D)"
        )
    if logits.shape[1] < 1:
        raise ValueError(f"`logits` must have at least one class (C >= 1), got {logits.shape}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"`target` must be an integer tensor (int64), got dtype {target.dtype}")
    n, _, h, w = logits.shape
    if tuple(target.shape) != (n, h, w):
        raise ValueError(
            f"`target` must have shape (N, H, W) = {(n, h, w)} to match `logits` "
            f"{tuple(logits.shape)}, got {tuple(target.shape)}"
        )
    if target.device != logits.device:
        raise ValueError(
            f"`target` is on {target.device} but `logits` on {logits.device}; move them together"
        )
    if weight is None:
        return
    if not isinstance(weight, Tensor):
        raise TypeError(f"`weight` must be a torch.Tensor or None, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"`weight` must be a floating-point tensor, got dtype {weight.dtype}")
    if tuple(weight.shape) != (n, h, w):
        raise ValueError(
            f"`weight` must have shape (N, H, W) = {(n, h, w)} to match `logits` "
            f"{tuple(logits.shape)}, got {tuple(weight.shape)}"
        )
    if weight.device != logits.device:
        raise ValueError(
            f"`weight` is on {weight.device} but `logits` on {logits.device}; move them together"
        )


def npa_cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    ignore_index: int = 255,
    reduction: str = "mean",
) -> Tensor:
    """Pixel-weighted cross-entropy (NPALoss, Feng et al. 2020, Eq. 4).

    .. math::

        L = -\\frac{1}{D} \\sum_{n,i,j} v_{nij} \\, w_{nij} \\,
            \\log \\operatorname{softmax}(z_{n \\cdot ij})_{y_{nij}},
        \\qquad v_{nij} = [y_{nij} \\ne \\text{ignore\\_index}]

    The log-probabilities come from ``log_softmax`` (finite for logits of any
    magnitude). With ``weight=None`` (all weights 1) and ``reduction`` ``"mean"``,
    ``"sum"`` or ``"none"`` the result equals
    ``F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=...)``,
    except that a batch with every pixel ignored gives 0 here (NaN there for ``"mean"``).

    Args:
        logits: Unnormalized class scores ``z``.
        target: Class indices ``y`` in ``[0, C)``, or ``ignore_index``. Any integer dtype
            (int64 preferred).
        weight: Per-pixel weights ``w`` (the precomputed ``AT`` map), non-negative and
            finite at non-ignored pixels; values at ignored pixels are not used. ``None``
            (default) means 1 everywhere: plain cross-entropy. Cast to ``logits.dtype``.
        ignore_index: Target value of pixels that contribute nothing. Default 255.
        reduction: ``D`` above. One of

            - ``"mean"`` (default): divide by the number of non-ignored pixels;
            - ``"weighted_mean"``: divide by the sum of the weights over the
              non-ignored pixels (loss 0 when that sum is 0);
            - ``"batch"``: divide by the mini-batch size ``N`` (Eq. 4 literally, a
              per-image sum: hundreds of thousands of times a per-pixel mean);
            - ``"sum"``: no division;
            - ``"none"``: the weighted per-pixel losses, 0 at ignored pixels.

    Returns:
        A scalar tensor, or a tensor of shape ``(N, H, W)`` for ``reduction="none"``.

    Shape:
        - logits: ``(N, C, H, W)``, floating point.
        - target: ``(N, H, W)``, integer.
        - weight: ``(N, H, W)``, floating point, or ``None``.
        - output: ``()``, or ``(N, H, W)`` for ``reduction="none"``.

    Raises:
        TypeError: ``logits`` or ``weight`` not floating point, ``target`` not integer,
            ``ignore_index`` not an int.
        ValueError: Shapes that do not match the above (the message names the
            argument), tensors on different devices, an unknown ``reduction``, target
            values outside ``[0, C)`` other than ``ignore_index``, or negative or
            non-finite weights at non-ignored pixels. The value checks cost one
            device synchronization.

    Example:
        >>> logits = torch.zeros(1, 2, 1, 2)
        >>> target = torch.tensor([[[0, 255]]])
        >>> weight = torch.tensor([[[2.0, 7.0]]])
        >>> round(npa_cross_entropy(logits, target, weight).item(), 4)  # 2 * log 2
        1.3863
    """
    _check_inputs(logits, target, weight)
    ignore_index = _parse_ignore_index(ignore_index)
    reduction = parse_reduction(reduction)
    num_classes = logits.shape[1]

    target = target.long()
    valid = target != ignore_index
    if weight is None:
        w = valid.to(logits.dtype)
    else:
        w = torch.where(valid, weight.to(logits.dtype), torch.zeros((), dtype=logits.dtype))
    # One sync for all value checks.
    bad_target = (valid & ((target < 0) | (target >= num_classes))).any()
    checks = [bad_target]
    if weight is not None:
        checks.append(((w < 0) | ~torch.isfinite(w)).any())
    flags = torch.stack(checks).tolist()
    if flags[0]:
        found = torch.unique(target[valid & ((target < 0) | (target >= num_classes))])[:8]
        raise ValueError(
            f"`target` holds values outside [0, {num_classes}) that are not `ignore_index` "
            f"{ignore_index}: {found.tolist()}"
        )
    if len(flags) > 1 and flags[1]:
        raise ValueError("`weight` must be finite and >= 0 at non-ignored pixels")

    safe_target = torch.where(valid, target, torch.zeros((), dtype=target.dtype))
    logp = F.log_softmax(logits, dim=1)
    nll = -logp.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    # w is exactly 0 at ignored pixels, and nll is finite there (class 0 stands in for
    # the ignore value), so ignored pixels add 0 to the loss and to every gradient.
    per_pixel = nll * w
    if reduction == "none":
        return per_pixel
    total = per_pixel.sum()
    if reduction == "sum":
        return total
    if reduction == "batch":
        return total / logits.shape[0]
    if reduction == "mean":
        denom = valid.sum().clamp_min(1).to(logits.dtype)
    else:  # weighted_mean
        wsum = w.sum()
        denom = torch.where(wsum > 0, wsum, torch.ones((), dtype=logits.dtype))
    return total / denom


class NPALoss(nn.Module):
    """Pixel-weighted cross-entropy as a module; see :func:`npa_cross_entropy`.

    Args:
        ignore_index: Target value of pixels that contribute nothing. Default 255.
        reduction: ``"mean"`` (default), ``"weighted_mean"``, ``"batch"``, ``"sum"`` or
            ``"none"``.

    Shape:
        - logits: ``(N, C, H, W)``, floating point.
        - target: ``(N, H, W)``, integer.
        - weight: ``(N, H, W)``, floating point, or ``None`` (all 1: plain cross-entropy).
        - output: ``()``, or ``(N, H, W)`` for ``reduction="none"``.

    Raises:
        TypeError: ``ignore_index`` not an int.
        ValueError: Unknown ``reduction`` (at construction); bad inputs at call time as
            in :func:`npa_cross_entropy`.

    Example:
        >>> criterion = NPALoss(ignore_index=255)
        >>> logits = torch.zeros(2, 6, 4, 4, requires_grad=True)
        >>> target = torch.randint(0, 6, (2, 4, 4))
        >>> weight = torch.rand(2, 4, 4)
        >>> criterion(logits, target, weight).backward()
    """

    def __init__(self, ignore_index: int = 255, reduction: str = "mean") -> None:
        super().__init__()
        self.ignore_index = _parse_ignore_index(ignore_index)
        self.reduction = parse_reduction(reduction)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return npa_cross_entropy(
            logits, target, weight, ignore_index=self.ignore_index, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}"
