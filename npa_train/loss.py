"""Pixel-weighted cross-entropy: the NPALoss of Feng et al. (2020), Eq. 4.

.. math::

    L = -\\frac{1}{D} \\sum_{n,i,j} [y_{nij} \\ne \\text{ignore}] \\; AT_{nij} \\,
        \\log \\operatorname{softmax}(z_{n \\cdot ij})_{y_{nij}}

with ``AT`` the transformed neighbouring-pixel-affinity weight map (precomputed by
``npa-precompute``, or computed from the target batch on the device by
:mod:`npa_train.online`: :func:`npa_loss`, :class:`NPALoss` without a ``weight``) and
``D`` chosen by ``reduction``:

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

The baselines of the paper's Table 1 live in :mod:`npa_train.criteria`, each as a function
plus a thin ``nn.Module`` with the same ``forward(logits, target, weight=None)``:

==================  ====================================================================
``--loss``          loss
==================  ====================================================================
``npa``             :func:`npa_cross_entropy` with the stored (or online) weights
``ce``              plain cross-entropy, :func:`npa_cross_entropy` without weights
``ce-weighted``     class-weighted cross-entropy (:func:`class_weighted_cross_entropy`)
                    with median-frequency weights (:func:`median_frequency_weights`)
``focal``           softmax focal loss, gamma = 2 (:func:`focal_loss`)
``dice``            multi-class soft dice (:func:`dice_loss`)
==================  ====================================================================

:func:`npa_train.criteria.build_criterion` makes the module for a name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from npa_precompute.errors import ParameterError
from npa_precompute.names import WeightsSpec
from npa_precompute.params import MAX_K, check_int
from npa_precompute.transforms import WeightTransform, parse_transform
from npa_train.choices import LOSSES, REDUCTIONS, parse_reduction
from npa_train.online import DEFAULT_GROUP_ELEMENTS, known_classes, label_weights

__all__ = [
    "LOSSES",
    "REDUCTIONS",
    "NPALoss",
    "check_loss_inputs",
    "npa_cross_entropy",
    "npa_loss",
    "parse_ignore_index",
    "prepare_pixels",
    "reduce_pixels",
]


def parse_ignore_index(ignore_index: int) -> int:
    """``ignore_index`` checked as an int (shared with :mod:`npa_train.criteria`)."""
    return check_int("ignore_index", ignore_index)


def check_loss_inputs(logits: Tensor, target: Tensor, weight: Tensor | None) -> None:
    """Types and shapes of a loss call (values are checked in :func:`prepare_pixels`).

    Raises
    ------
    TypeError, ValueError
        Naming ``logits``, ``target`` or ``weight``.
    """
    if not isinstance(logits, Tensor):
        raise TypeError(f"`logits` must be a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(target, Tensor):
        raise TypeError(f"`target` must be a torch.Tensor, got {type(target).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"`logits` must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.ndim not in (4, 5):
        raise ValueError(
            "`logits` must have shape (N, C, H, W) or, for volumes, (N, C, D, H, W), got "
            f"{tuple(logits.shape)} ({logits.ndim}-D)"
        )
    if logits.shape[1] < 1:
        raise ValueError(f"`logits` must have at least one class (C >= 1), got {logits.shape}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"`target` must be an integer tensor (int64), got dtype {target.dtype}")
    want = (logits.shape[0], *logits.shape[2:])
    axes = "(N, H, W)" if logits.ndim == 4 else "(N, D, H, W)"
    if tuple(target.shape) != want:
        raise ValueError(
            f"`target` must have shape {axes} = {want} to match `logits` "
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
    if tuple(weight.shape) != want:
        raise ValueError(
            f"`weight` must have shape {axes} = {want} to match `logits` "
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

    Parameters
    ----------
    logits
        Unnormalized class scores ``z``.
    target
        Class indices ``y`` in ``[0, C)``, or ``ignore_index``. Any integer dtype
        (int64 preferred).
    weight
        Per-pixel weights ``w`` (the precomputed ``AT`` map), non-negative and
        finite at non-ignored pixels; values at ignored pixels are not used. ``None``
        (default) means 1 everywhere: plain cross-entropy. Cast to ``logits.dtype``.
    ignore_index
        Target value of pixels that contribute nothing. Default 255.
    reduction
        ``D`` above. One of

        - ``"mean"`` (default): divide by the number of non-ignored pixels;
        - ``"weighted_mean"``: divide by the sum of the weights over the
        non-ignored pixels (loss 0 when that sum is 0);
        - ``"batch"``: divide by the mini-batch size ``N`` (Eq. 4 literally, a
        per-image sum: hundreds of thousands of times a per-pixel mean);
        - ``"sum"``: no division;
        - ``"none"``: the weighted per-pixel losses, 0 at ignored pixels.

    Returns
    -------
    A scalar tensor, or a tensor of shape ``(N, H, W)`` for ``reduction="none"``.

    Shape
    -----
    - logits: ``(N, C, H, W)``, floating point.
    - target: ``(N, H, W)``, integer.
    - weight: ``(N, H, W)``, floating point, or ``None``.
    - output: ``()``, or ``(N, H, W)`` for ``reduction="none"``.

    Raises
    ------
    TypeError
        ``logits`` or ``weight`` not floating point, ``target`` not integer,
        ``ignore_index`` not an int.
    ValueError
        Shapes that do not match the above (the message names the
        argument), tensors on different devices, an unknown ``reduction``, target
        values outside ``[0, C)`` other than ``ignore_index``, or negative or
        non-finite weights at non-ignored pixels. The value checks cost one
        device synchronization.

    Notes
    -----
    With a scalar ``reduction`` and a ``weight`` that does not require grad (the
    training case), the gradient comes from one fused autograd node that reuses its
    log-probability buffer: it is cheaper than ``F.cross_entropy``'s backward, and it
    can be backpropagated once (a second ``backward`` through the same loss raises
    RuntimeError; compute the loss again instead of ``retain_graph=True``). With a
    ``weight`` that requires grad, or ``reduction="none"``, plain autograd ops are used.

    Examples
    --------
    >>> logits = torch.zeros(1, 2, 1, 2)
    >>> target = torch.tensor([[[0, 255]]])
    >>> weight = torch.tensor([[[2.0, 7.0]]])
    >>> round(npa_cross_entropy(logits, target, weight).item(), 4)  # 2 * log 2
    1.3863
    """
    check_loss_inputs(logits, target, weight)
    ignore_index = parse_ignore_index(ignore_index)
    reduction = parse_reduction(reduction)
    safe_target, valid, w = prepare_pixels(logits, target, weight, ignore_index)
    return _weighted_ce(logits, safe_target, valid, w, reduction)


def _weighted_ce(
    logits: Tensor, safe_target: Tensor, valid: Tensor, w: Tensor, reduction: str
) -> Tensor:
    """Eq. 4 of checked inputs (:func:`prepare_pixels`'s outputs; ``w`` 0 at ignored pixels)."""
    n = logits.shape[0]
    if reduction != "none" and not (w.requires_grad or safe_target.requires_grad):
        # Fast path (the training case): one custom autograd node whose backward is
        # softmax - one-hot scaled per pixel, computed in place (no N x C x H x W temporaries
        # beyond the saved log-probabilities): as cheap as F.cross_entropy.
        if reduction == "sum":
            coef = w
        elif reduction == "batch":
            coef = w / n
        elif reduction == "mean":
            coef = w / valid.sum().clamp_min(1).to(w.dtype)
        else:  # weighted_mean
            wsum = w.sum()
            coef = w / torch.where(wsum > 0, wsum, torch.ones((), dtype=w.dtype))
        return _WeightedNLL.apply(logits, safe_target, coef)
    logp = F.log_softmax(logits, dim=1)
    nll = -logp.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    # w is exactly 0 at ignored pixels, and nll is finite there (class 0 stands in for
    # the ignore value), so ignored pixels add 0 to the loss and to every gradient.
    return reduce_pixels(nll * w, valid, w, reduction, n)


def prepare_pixels(
    logits: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int | None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(safe_target, valid, w)``: targets with 0 at ignored pixels, the non-ignored
    mask, and the weights (1 without ``weight``) with 0 at ignored pixels.

    ``ignore_index`` None: no pixel is ignored. One device synchronization for all value
    checks (the labels, and ``weight`` when given).
    """
    num_classes = logits.shape[1]
    target = target.long()
    zero = torch.zeros((), dtype=target.dtype, device=target.device)
    if ignore_index is None:
        valid = torch.ones(target.shape, dtype=torch.bool, device=target.device)
        safe_target = target
    else:
        valid = target != ignore_index
        safe_target = torch.where(valid, target, zero)
    lo, hi = torch.aminmax(safe_target) if safe_target.numel() else (zero, zero)
    checks = [lo, hi]
    if weight is None:
        w = valid.to(logits.dtype)
    else:
        w = torch.where(valid, weight.to(logits.dtype), torch.zeros((), dtype=logits.dtype))
        if w.numel():
            wlo, whi = torch.aminmax(w.detach())
            checks += [wlo, whi]
    flags = torch.stack([c.double() for c in checks]).tolist()
    if flags[0] < 0 or flags[1] >= num_classes:
        found = torch.unique(target[valid & ((target < 0) | (target >= num_classes))])[:8]
        raise _label_error(found.tolist(), num_classes, ignore_index)
    if len(flags) > 2 and not (flags[2] >= 0 and math.isfinite(flags[3])):
        raise ValueError("`weight` must be finite and >= 0 at non-ignored pixels")
    return safe_target, valid, w


def _label_error(found: list[int], num_classes: int, ignore_index: int | None) -> ValueError:
    """The error for labels outside ``[0, num_classes)``: the values, the ``ignore_index``
    in effect and the usual fixes."""
    shown = "None: no pixel is ignored" if ignore_index is None else str(ignore_index)
    hints = []
    if 255 in found:
        hints.append("if 255 marks pixels to leave out (no-data, boundaries), set "
                     "ignore_index=255")  # fmt: skip
    if num_classes in found:
        hints.append(f"if the labels are 1..{num_classes} with 0 as no-data (LoveDA: 0 is "
                     "no-data, map c to c-1, and 0 to the ignore_index)")  # fmt: skip
    if found and found[0] < 0:
        hints.append("labels must be >= 0 (torch's ignore value -100 is no label here: "
                     "map it to ignore_index)")  # fmt: skip
    fix = f"; {'; '.join(hints)}" if hints else ""
    return ValueError(
        f"`target` holds values outside [0, {num_classes}) (the {num_classes} classes of "
        f"`logits`) that are not `ignore_index` ({shown}): {found}{fix}"
    )


def reduce_pixels(per_pixel: Tensor, valid: Tensor, w: Tensor, reduction: str, n: int) -> Tensor:
    """Per-pixel losses reduced as ``reduction`` says (see the module docstring's table)."""
    if reduction == "none":
        return per_pixel
    total = per_pixel.sum()
    if reduction == "sum":
        return total
    if reduction == "batch":
        return total / n
    if reduction == "mean":
        return total / valid.sum().clamp_min(1).to(per_pixel.dtype)
    wsum = w.sum()  # weighted_mean
    return total / torch.where(wsum > 0, wsum, torch.ones((), dtype=per_pixel.dtype))


class _WeightedNLL(torch.autograd.Function):
    """``sum(coef * -log_softmax(logits)[target])``; gradient w.r.t. ``logits`` only.

    The backward turns the saved log-probabilities (an intermediate of this node, kept
    on ``ctx``) into the gradient in place: no new N x C x H x W buffer, which on a CPU
    is most of the cost (a fresh allocation of that size is page-faulted in). So this
    node can be backpropagated once; a second backward through the same graph
    (``retain_graph=True``) raises a RuntimeError.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, coef: Tensor) -> Tensor:
        logp = F.log_softmax(logits, dim=1)
        nll = logp.gather(1, target.unsqueeze(1))
        coef = coef.to(logp.dtype)
        ctx.logp, ctx.target, ctx.coef = logp, target, coef
        return -torch.dot(nll.reshape(-1), coef.reshape(-1))

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if ctx.logp is None:
            raise RuntimeError(
                "npa_cross_entropy: a second backward through the same loss is not supported "
                "(its gradient buffer is reused); compute the loss again instead of "
                "retain_graph=True"
            )
        logp, target, coef = ctx.logp, ctx.target, ctx.coef
        ctx.logp = ctx.target = ctx.coef = None
        scale = (coef * grad_out).unsqueeze(1)  # (N, 1, H, W)
        grad = logp.exp_()  # softmax
        grad.mul_(scale)
        grad.scatter_add_(1, target.unsqueeze(1), -scale)
        return grad, None, None


def parse_k(k) -> int | tuple[int, ...] | None:
    """``k`` (search region, Eq. 1) checked: None, an int in [0, :data:`MAX_K`], or a
    tuple of one such int per spatial axis (``(k_h, k_w)`` or ``(k_d, k_h, k_w)``)."""
    if k is None:
        return None
    if isinstance(k, (tuple, list)):
        if len(k) not in (2, 3):
            raise ParameterError(
                "k", f"tuple must have one int per spatial axis (2 or 3), got {tuple(k)!r}"
            )
        return tuple(check_int("k", v, minimum=0, maximum=MAX_K) for v in k)
    return check_int("k", k, minimum=0, maximum=MAX_K)


#: Half-precision logits dtypes; the losses compute in float32 for them.
HALF_DTYPES = (torch.float16, torch.bfloat16)


def npa_loss(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    k: int | Sequence[int] | None = 32,
    transform: str = "log10:L=0.5",
    ignore_index: int | None = 255,
    reduction: str = "mean",
    group_elements: int = DEFAULT_GROUP_ELEMENTS,
) -> Tensor:
    """NPALoss from ``(logits, target)`` alone: the weights of ``target`` computed on its
    device when ``weight`` is None (:func:`npa_train.online.npa_weights`), then
    :func:`npa_cross_entropy`.

    Parameters
    ----------
    logits
        ``(N, C, H, W)`` unnormalized class scores. float16/bfloat16 logits
        (autocast) are upcast: weights and loss are float32.
    target
        ``(N, H, W)`` class indices in ``[0, C)`` or ``ignore_index``.
    weight
        ``(N, H, W)`` weights to use instead (e.g. from the store), or None.
    k
        Search region of Eq. 1 (default 32, the paper's best), or one k per spatial
        axis (``(k_d, k_h, k_w)`` for volumes); None: no weights (plain
        cross-entropy when ``weight`` is None).
    transform
        Weight transform spec (``"log10:L=0.5"``, ``"ln:L=0.5"``,
        ``"norm:L=0.5"`` with min/max per image, ``"log:a=2,L=0.5"``, ``"raw"``).
    ignore_index
        Target value of ignored pixels: weight 0, no loss; it still counts
        as a class of its own in Eq. 1, as in ``npa-precompute``. None: no pixel is
        ignored (segmentation_models_pytorch's default).
    reduction
        As :func:`npa_cross_entropy`.
    group_elements
        Memory bound of the weight computation
        (:func:`npa_train.online.affinity_counts`).

    The inputs are checked once: shapes and dtypes, then the target values (and a given
    ``weight``'s) in one synchronisation, *before* any weight is computed, so a label
    outside ``[0, C)`` that is not ``ignore_index`` is a ValueError naming the values, the
    ``ignore_index`` in effect and the usual fix (on CUDA too, never a device-side
    assert). The weights are then computed under ``torch.no_grad`` with the classes
    ``0 .. C - 1`` plus ``ignore_index``: nothing more is read back from the device.

    Raises
    ------
    TypeError, ValueError
        As :func:`npa_cross_entropy`; ``k`` negative or not an
        integer; an unknown ``transform``.
    """
    if ignore_index is not None:
        ignore_index = parse_ignore_index(ignore_index)
    return _npa_loss(logits, target, weight, online_spec(k, transform), ignore_index,
                     parse_reduction(reduction),
                     check_int("group_elements", group_elements, minimum=1))  # fmt: skip


def online_spec(
    k: int | Sequence[int] | None, transform: str | WeightTransform
) -> WeightsSpec | None:
    """The weights :func:`npa_loss` computes for ``k`` and ``transform`` (None for k None):
    ``k`` an int, or one per spatial axis (a region tuple, :func:`parse_k`).

    Raises
    ------
    ParameterError
        ``k`` not an integer in [0, :data:`MAX_K`], a tuple of 2 or 3 of them, or None.
    ValueError
        An unknown transform spec.
    """
    transform = parse_transform(transform)
    k = parse_k(k)
    return None if k is None else WeightsSpec((k,), transform, online=True)


def _npa_loss(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    spec: WeightsSpec | None,
    ignore_index: int | None,
    reduction: str,
    group_elements: int,
) -> Tensor:
    """:func:`npa_loss` of parsed settings: one input check (shapes, then the label and
    weight values in one synchronisation), the weights, Eq. 4."""
    check_loss_inputs(logits, target, weight)
    if logits.dtype in HALF_DTYPES:
        logits = logits.float()
    safe_target, valid, w = prepare_pixels(logits, target, weight, ignore_index)
    if weight is None and spec is not None:  # labels checked: no read-back for the weights
        classes = known_classes(int(logits.shape[1]), ignore_index)
        w = label_weights(target, target, spec, classes=classes, ignore_index=ignore_index,
                          group_elements=group_elements,
                          spatial_dims=logits.ndim - 2).to(logits.dtype)  # fmt: skip
    return _weighted_ce(logits, safe_target, valid, w, reduction)


def _k_of_physical(k, k_physical, spacing) -> int | tuple[int, ...]:
    """``k`` of a physical radius (NPALoss): an int when isotropic, else one per axis."""
    from npa_precompute.regions import k_from_physical

    if k not in (None, 32):
        raise ParameterError("k_physical", "replaces `k`: give one or the other")
    if spacing is None:
        raise ParameterError("spacing", "is needed with `k_physical` (pixel/voxel size)")
    region = k_from_physical(k_physical, spacing, name="k_physical")
    return region[0] if len(set(region)) == 1 else region


class NPALoss(nn.Module):
    """NPALoss (pixel-weighted cross-entropy) as a module; see :func:`npa_loss`.

    ``forward(logits, target, weight=None)``: with ``weight=None`` the weights are
    computed from ``target`` on its device (exact Eq. 1 with search region ``k``, then
    ``transform``: the same values ``npa-precompute`` stores for the same label map);
    a given ``weight`` map (e.g. read from the store) is used as it is.

    Parameters
    ----------
    k
        Search region (default 32). None: no weights of its own, so ``weight=None``
        means plain cross-entropy (what ``npa-train`` uses, passing the weights).
    transform
        Weight transform spec, default ``"log10:L=0.5"`` (the paper's best).
    ignore_index
        Target value of pixels that contribute nothing. Default 255; None:
        no pixel is ignored.
    reduction
        ``"mean"`` (default), ``"weighted_mean"``, ``"batch"``, ``"sum"`` or
        ``"none"``.
    group_elements
        Memory bound of the weight computation.
    k_physical
        Search radius in physical units instead of ``k`` (keyword-only; ``k``
        then stays at its default): one value, or one per spatial axis, in the units
        of ``spacing``. Resolved once to ``k = round_half_up(k_physical / spacing)``
        per axis (:func:`npa_precompute.regions.k_from_physical`): 2.88 (m) at 0.09
        is k = 32; ``(10, 10, 10)`` (mm) at ``(5, 0.7, 0.7)`` is ``(2, 14, 14)``.
    spacing
        Pixel/voxel size for ``k_physical`` (one value, or one per spatial
        axis in the order (D,) H, W), > 0.

    Works under autocast (float16/bfloat16 logits are upcast: weights and loss in
    float32), with DistributedDataParallel (each rank weighs its own targets) and with
    ``torch.compile`` (with graph breaks where the target values are checked).

    Shape
    -----
    - logits: ``(N, C, H, W)``, floating point.
    - target: ``(N, H, W)``, integer.
    - weight: ``(N, H, W)``, floating point, or ``None``.
    - output: ``()``, or ``(N, H, W)`` for ``reduction="none"``.

    Raises
    ------
    TypeError
        ``ignore_index`` not an int, ``k`` not an int, a tuple or None.
    ValueError
        Unknown ``reduction`` or ``transform``, ``k < 0``, ``spacing`` not
        positive, ``k_physical`` without ``spacing`` or rounding to 0 along every axis
        (at construction); bad inputs at call time as in :func:`npa_cross_entropy`.

    Examples
    --------
    >>> criterion = NPALoss(k=32, transform="log10:L=0.5", ignore_index=255)
    >>> logits = torch.zeros(2, 6, 4, 4, requires_grad=True)
    >>> target = torch.randint(0, 6, (2, 4, 4))
    >>> criterion(logits, target).backward()  # weights from the target
    >>> criterion(logits.detach(), target, torch.rand(2, 4, 4)).shape  # given weights
    torch.Size([])
    """

    def __init__(
        self,
        k: int | None = 32,
        transform: str = "log10:L=0.5",
        ignore_index: int | None = 255,
        reduction: str = "mean",
        group_elements: int = DEFAULT_GROUP_ELEMENTS,
        *,
        k_physical: float | Sequence[float] | None = None,
        spacing: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if k_physical is not None:
            k = _k_of_physical(k, k_physical, spacing)
        elif spacing is not None:
            raise ParameterError("spacing", "applies only with `k_physical`")
        #: the weights computed from the target (None: k None), parsed once
        self.spec = online_spec(k, transform)
        self._transform = parse_transform(transform)
        self.ignore_index = None if ignore_index is None else parse_ignore_index(ignore_index)
        self.reduction = parse_reduction(reduction)
        self.group_elements = check_int("group_elements", group_elements, minimum=1)

    @property
    def k(self) -> int | tuple[int, ...] | None:
        """Search region of the weights computed from the target (None: none): an int,
        or one k per spatial axis."""
        return None if self.spec is None else self.spec.k

    @k.setter
    def k(self, value: int | Sequence[int] | None) -> None:
        self.spec = online_spec(value, self._transform)

    @property
    def transform(self) -> str:
        """Canonical spec of the weight transformation, e.g. ``"log10:L=0.5"``."""
        return self._transform.spec

    @transform.setter
    def transform(self, value: str | WeightTransform) -> None:
        self._transform = parse_transform(value)
        self.spec = online_spec(self.k, self._transform)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return _npa_loss(logits, target, weight, self.spec, self.ignore_index, self.reduction,
                         self.group_elements)  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, transform={self.transform!r}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}"
        )
