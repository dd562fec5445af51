"""NPALoss with segmentation_models_pytorch's loss conventions.

smp's losses are built as ``smp.losses.DiceLoss(mode="multiclass", ignore_index=...)``
and called as ``loss(y_pred, y_true)`` with ``y_pred`` the model's ``(N, C, H, W)``
logits and ``y_true`` the ``(N, H, W)`` (or ``(N, 1, H, W)``) class indices; this
:class:`NPALoss` takes the same arguments and the same call, so swapping the loss is one
line::

    # loss_fn = smp.losses.DiceLoss(smp.losses.MULTICLASS_MODE, ignore_index=255)
    loss_fn = NPALoss(smp.losses.MULTICLASS_MODE, ignore_index=255)  # k=32, log10, L=0.5

Only the multi-class mode is meaningful: a pixel's affinity needs one label per pixel
(binary and multi-label targets have none). ``ignore_index=None`` (smp's default)
ignores no pixel. This module does not import smp itself.
"""

from __future__ import annotations

from torch import Tensor

from npa_train.loss import NPALoss as _NPALoss

__all__ = ["BINARY_MODE", "MULTICLASS_MODE", "MULTILABEL_MODE", "NPALoss"]

#: smp's mode names (``segmentation_models_pytorch.losses.constants``).
BINARY_MODE = "binary"
MULTICLASS_MODE = "multiclass"
MULTILABEL_MODE = "multilabel"


class NPALoss(_NPALoss):
    """NPALoss taking smp's model outputs and conventions.

    Everything after ``mode`` is keyword-only: smp's losses take other things second
    (``classes``, ``alpha``), so ``NPALoss("multiclass", 32)`` is refused rather than
    read as ``k``.

    Args:
        mode: ``"multiclass"`` (smp's ``MULTICLASS_MODE``), the only mode with one label
            per pixel.
        k: Search region of Eq. 1 (default 32).
        transform: Weight transform spec (default ``"log10:L=0.5"``).
        ignore_index: Label of ignored pixels (default None: none, as in smp; masks
            holding 255 then need ``ignore_index=255``).
        reduction: ``"mean"`` over non-ignored pixels (default), ``"weighted_mean"``,
            ``"batch"``, ``"sum"`` or ``"none"``.

    Shape:
        - y_pred: ``(N, C, H, W)`` logits.
        - y_true: ``(N, H, W)`` or ``(N, 1, H, W)`` integer class indices.

    Raises:
        ValueError: ``mode`` other than ``"multiclass"``; as
            :class:`npa_train.loss.NPALoss` otherwise.
    """

    def __init__(
        self,
        mode: str = MULTICLASS_MODE,
        *,
        k: int = 32,
        transform: str = "log10:L=0.5",
        ignore_index: int | None = None,
        reduction: str = "mean",
    ) -> None:
        if mode != MULTICLASS_MODE:
            raise ValueError(
                f"NPALoss needs mode='{MULTICLASS_MODE}' (one label per pixel), got {mode!r}; "
                "binary and multi-label targets have no single label to count neighbours of"
            )
        super().__init__(k=k, transform=transform, ignore_index=ignore_index,
                         reduction=reduction)  # fmt: skip
        self.mode = mode

    def forward(self, y_pred: Tensor, y_true: Tensor, weight: Tensor | None = None) -> Tensor:
        if isinstance(y_true, Tensor) and y_true.ndim == 4 and y_true.shape[1] == 1:
            y_true = y_true[:, 0]
        return super().forward(y_pred, y_true, weight)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, " + super().extra_repr()
