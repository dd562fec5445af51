"""NPALoss for mmsegmentation 1.x, registered in ``mmseg.registry.MODELS`` on import.

In a config, one line adds the import and one changes the loss::

    custom_imports = dict(imports=["npa_train.adapters.mmseg"], allow_failed_imports=False)
    model = dict(
        decode_head=dict(
            # loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
            loss_decode=dict(type="NPALoss", k=32, transform="log10:L=0.5", loss_weight=1.0),
        ),
    )

The loss takes mmseg's call, ``loss(cls_score, label, weight=None, ignore_index=255,
avg_factor=None, reduction_override=None, **kwargs)`` as ``BaseDecodeHead.loss_by_feat``
makes it (``cls_score`` resized to the label, ``label`` ``(N, H, W)``), computes the NPA
weights from ``label`` on its device (the label after mmseg's whole pipeline) and reduces
like mmseg's ``CrossEntropyLoss``: ``"mean"`` divides the weighted sum by ``avg_factor``
when given, else by the number of pixels (``avg_non_ignore=False``, mmseg's default) or
of non-ignored pixels (``avg_non_ignore=True``); ``"sum"``; ``"none"`` (the
``(N, H, W)`` map). A ``weight`` from mmseg (e.g. an OHEM sampler's) multiplies the NPA
weights. ``loss_weight`` scales the result and ``loss_name`` (default ``"loss_npa"``)
names it in the log.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from npa_train.loss import HALF_DTYPES, npa_cross_entropy, parse_k
from npa_train.online import npa_weights

try:
    from mmseg.registry import MODELS
except ImportError as exc:
    from npa_train.adapters import missing_framework

    raise missing_framework(
        __name__,
        "mmseg",
        "'mmsegmentation>=1.0,<2' mmengine ftfy regex, and an mmcv >= 2.0, < 2.2 of your own "
        "(no extra installs mmcv: mmseg's models need a full build with its compiled ops)",
        exc,
    ) from exc

__all__ = ["NPALoss"]

_REDUCTIONS = ("none", "mean", "sum")


class NPALoss(nn.Module):
    """NPALoss with mmsegmentation's loss interface.

    Args:
        k: Search region of Eq. 1 (default 32).
        transform: Weight transform spec (default ``"log10:L=0.5"``).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        loss_weight: Factor of the loss (default 1.0).
        loss_name: Name in mmseg's loss dict (default ``"loss_npa"``; must start with
            ``loss_`` to be trained on).
        avg_non_ignore: ``"mean"`` divides by the non-ignored pixels instead of all
            pixels (default False, as mmseg's ``CrossEntropyLoss``).
        ignore_index: Label of ignored pixels when the call does not pass one (255).
    """

    def __init__(
        self,
        k: int = 32,
        transform: str = "log10:L=0.5",
        reduction: str = "mean",
        loss_weight: float = 1.0,
        loss_name: str = "loss_npa",
        avg_non_ignore: bool = False,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        from npa_precompute.transforms import parse_transform

        self.k = parse_k(k)
        if self.k is None:
            raise ValueError("`k` must be an integer >= 0")
        self.transform = parse_transform(transform).spec
        if reduction not in _REDUCTIONS:
            raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.loss_weight = float(loss_weight)
        self._loss_name = str(loss_name)
        self.avg_non_ignore = bool(avg_non_ignore)
        self.ignore_index = int(ignore_index)

    @property
    def loss_name(self) -> str:
        """Name of this loss in mmseg's loss dict."""
        return self._loss_name

    def forward(
        self,
        cls_score: Tensor,
        label: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
        ignore_index: int | None = None,
        **kwargs,
    ) -> Tensor:
        reduction = reduction_override or self.reduction
        if reduction not in _REDUCTIONS:
            raise ValueError(
                f"`reduction_override` must be one of {_REDUCTIONS}, got {reduction!r}"
            )
        ignore = self.ignore_index if ignore_index is None else int(ignore_index)
        if cls_score.dtype in HALF_DTYPES:
            cls_score = cls_score.float()
        if label.ndim == 4 and label.shape[1] == 1:
            label = label[:, 0]
        w = npa_weights(label, self.k, self.transform, ignore_index=ignore,
                        num_classes=int(cls_score.shape[1]))  # fmt: skip
        if weight is not None:
            w = w * weight.to(w.dtype)
        if reduction == "none":
            loss = npa_cross_entropy(cls_score, label, w, ignore_index=ignore, reduction="none")
            return self.loss_weight * loss
        if reduction == "mean":
            if avg_factor is not None:
                denom = torch.as_tensor(avg_factor, dtype=w.dtype, device=w.device)
            elif self.avg_non_ignore:
                denom = (label != ignore).sum().to(w.dtype)
            else:
                denom = torch.tensor(float(label.numel()), dtype=w.dtype, device=w.device)
            # a zero denominator (every pixel ignored) gives 0, never NaN: mmseg divides by
            # avg_factor + eps, here the denominator is at least eps
            w = w / denom.clamp_min(torch.finfo(w.dtype).eps)
        loss = npa_cross_entropy(cls_score, label, w, ignore_index=ignore, reduction="sum")
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, transform={self.transform!r}, reduction={self.reduction!r}, "
            f"loss_weight={self.loss_weight}, loss_name={self.loss_name!r}, "
            f"avg_non_ignore={self.avg_non_ignore}"
        )


def _register() -> None:
    existing = MODELS.module_dict.get("NPALoss")
    if existing is not None and getattr(existing, "__module__", None) != __name__:
        raise KeyError(
            f"mmseg's MODELS already holds another 'NPALoss' ({existing.__module__}."
            f"{existing.__qualname__}); npa_train.adapters.mmseg cannot register its own"
        )
    MODELS.register_module(name="NPALoss", module=NPALoss, force=True)  # re-imports too


_register()
