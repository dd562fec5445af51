"""torchgeo's SemanticSegmentationTask with ``loss="npa"`` (torchgeo 0.8 to 0.10).

The one-line change in a torchgeo training script::

    # task = SemanticSegmentationTask(model="unet", backbone="resnet50", num_classes=6,
    #                                 loss="ce", ignore_index=255)
    task = NPASegmentationTask(model="unet", backbone="resnet50", num_classes=6,
                               loss="npa", ignore_index=255)  # k=32, log10, L=0.5

Everything else (models, metrics, optimizer, ``Trainer``, ``LightningCLI`` configs with
``class_path: npa_train.adapters.torchgeo.NPASegmentationTask``) is torchgeo's. The
weights are computed from each batch's ``mask`` *after* torchgeo's (kornia's, GPU-side)
augmentation, so they are always aligned with the mask the loss sees. The other loss
names (``ce``, ``bce``, ``jaccard``, ``focal``) still work.
"""

from __future__ import annotations

from typing import Any

try:
    try:  # torchgeo >= 0.10 (where trainers.SemanticSegmentationTask is a deprecated alias)
        from torchgeo.tasks import SemanticSegmentation as SemanticSegmentationTask
    except ImportError:
        from torchgeo.trainers import SemanticSegmentationTask
except ImportError as exc:
    from npa_train.adapters import missing_framework

    raise missing_framework(
        __name__, "torchgeo", "'torchgeo>=0.8' lightning requests", exc
    ) from exc

import torch
from torch import Tensor

from npa_precompute.errors import ParameterError
from npa_train.adapters.smp import NPALoss
from npa_train.online import npa_weights

__all__ = ["NPA_REDUCTIONS", "ClassWeightedNPALoss", "NPASegmentationTask"]

#: ``npa_reduction`` values the task can use: its steps log one number per batch, so the
#: per-pixel map of ``"none"`` is refused.
NPA_REDUCTIONS = ("mean", "weighted_mean", "batch", "sum")


class ClassWeightedNPALoss(NPALoss):
    """NPALoss whose pixel weight is the NPA weight times the weight of the pixel's class.

    ``w[n, y, x] = npa[n, y, x] · class_weight[target[n, y, x]]`` (0 at ignored pixels),
    then NPALoss's reduction of ``w · CE``; torchgeo's ``class_weights`` this way act as
    they do in its ``"ce"`` loss, on top of the NPA weights. A ``weight`` given to the
    call is used as it is (neither NPA nor class weights are applied to it).

    Args:
        class_weight: ``(C,)`` non-negative finite weights, one per class.
        **kwargs: :class:`npa_train.adapters.smp.NPALoss`'s keyword arguments.

    Raises:
        ValueError: ``class_weight`` not 1-D, negative or not finite; at call time
            ``C`` of the logits differing from ``len(class_weight)``.
    """

    def __init__(self, class_weight: Tensor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        cw = torch.as_tensor(class_weight, dtype=torch.float32).detach().clone()
        if cw.ndim != 1 or not bool(torch.isfinite(cw).all()) or bool((cw < 0).any()):
            raise ParameterError(
                "class_weights", f"must be finite weights >= 0, one per class, got {cw.tolist()}"
            )
        self.register_buffer("class_weight", cw)

    def forward(self, y_pred: Tensor, y_true: Tensor, weight: Tensor | None = None) -> Tensor:
        if y_true.ndim == 4 and y_true.shape[1] == 1:
            y_true = y_true[:, 0]
        if weight is None:
            c = int(y_pred.shape[1])
            if c != self.class_weight.numel():
                raise ParameterError(
                    "class_weights",
                    f"has {self.class_weight.numel()} weights but the model gives {c} classes",
                )
            w = npa_weights(y_true, self.k, self.transform, ignore_index=self.ignore_index,
                            num_classes=c, group_elements=self.group_elements)  # fmt: skip
            # out-of-range labels are clamped here and refused by the loss's value check
            weight = w * self.class_weight[y_true.long().clamp(0, c - 1)]
        return super().forward(y_pred, y_true, weight)


class NPASegmentationTask(SemanticSegmentationTask):
    """torchgeo's ``SemanticSegmentationTask`` (``tasks.SemanticSegmentation`` from 0.10 on)
    with the ``"npa"`` loss (the default here).

    Args:
        loss: ``"npa"`` (NPALoss, weights from the mask), or one of torchgeo's.
        npa_k: Search region of Eq. 1 (default 32).
        npa_transform: Weight transform spec (default ``"log10:L=0.5"``).
        npa_reduction: ``"mean"`` over non-ignored pixels (default), ``"weighted_mean"``,
            ``"batch"`` or ``"sum"`` (:data:`NPA_REDUCTIONS`; ``"none"`` is refused: the
            task logs one number per step).
        **kwargs: torchgeo's arguments (``model``, ``backbone``, ``weights``,
            ``in_channels``, ``num_classes``, ``ignore_index``, ``class_weights``,
            ``lr``, ...); ``ignore_index`` (default None) is NPALoss's too. With
            ``loss="npa"``, ``class_weights`` multiply the NPA weights: each pixel weighs
            ``npa · class_weights[label]`` (:class:`ClassWeightedNPALoss`).

    Raises:
        ValueError: ``loss="npa"`` with a ``task`` other than ``"multiclass"``;
            ``npa_reduction`` not in :data:`NPA_REDUCTIONS`; ``class_weights`` negative,
            not finite or not one per class.
    """

    def __init__(
        self,
        loss: str = "npa",
        npa_k: int = 32,
        npa_transform: str = "log10:L=0.5",
        npa_reduction: str = "mean",
        **kwargs: Any,
    ) -> None:
        if npa_reduction not in NPA_REDUCTIONS:
            raise ParameterError(
                "npa_reduction",
                f"must be one of {NPA_REDUCTIONS}, got {npa_reduction!r} (the task's steps "
                "log the loss as one number per batch)",
            )
        super().__init__(loss=loss, **kwargs)

    def configure_losses(self) -> None:
        """``loss="npa"``: NPALoss (times ``class_weights`` when given); any other name:
        torchgeo's own."""
        if self.hparams["loss"] != "npa":
            return super().configure_losses()
        task = self.hparams.get("task", "multiclass")
        if task != "multiclass":
            raise ValueError(f"loss 'npa' needs task='multiclass', got {task!r}")
        options = dict(
            k=self.hparams["npa_k"],
            transform=self.hparams["npa_transform"],
            ignore_index=self.hparams["ignore_index"],
            reduction=self.hparams["npa_reduction"],
        )
        class_weights = self.hparams.get("class_weights")
        if class_weights is None:
            self.criterion = NPALoss(**options)
        else:
            num_classes = self.hparams.get("num_classes")
            if num_classes is not None and len(class_weights) != num_classes:
                raise ParameterError(
                    "class_weights",
                    f"must give one weight per class ({num_classes}), got {len(class_weights)}",
                )
            self.criterion = ClassWeightedNPALoss(class_weights, **options)
        return None
