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
    raise ImportError(
        "npa_train.adapters.torchgeo needs torchgeo: pip install 'npaloss[torchgeo]' "
        "(torchgeo>=0.8)"
        f" ({type(exc).__name__}: {exc})"
    ) from exc

from npa_train.adapters.smp import NPALoss

__all__ = ["NPASegmentationTask"]


class NPASegmentationTask(SemanticSegmentationTask):
    """torchgeo's ``SemanticSegmentationTask`` (``tasks.SemanticSegmentation`` from 0.10 on)
    with the ``"npa"`` loss (the default here).

    Args:
        loss: ``"npa"`` (NPALoss, weights from the mask), or one of torchgeo's.
        npa_k: Search region of Eq. 1 (default 32).
        npa_transform: Weight transform spec (default ``"log10:L=0.5"``).
        npa_reduction: ``"mean"`` over non-ignored pixels (default), ``"weighted_mean"``,
            ``"batch"`` or ``"sum"``.
        **kwargs: torchgeo's arguments (``model``, ``backbone``, ``weights``,
            ``in_channels``, ``num_classes``, ``ignore_index``, ``lr``, ...);
            ``ignore_index`` (default None) is NPALoss's too.

    Raises:
        ValueError: ``loss="npa"`` with a ``task`` other than ``"multiclass"``.
    """

    def __init__(
        self,
        loss: str = "npa",
        npa_k: int = 32,
        npa_transform: str = "log10:L=0.5",
        npa_reduction: str = "mean",
        **kwargs: Any,
    ) -> None:
        super().__init__(loss=loss, **kwargs)

    def configure_losses(self) -> None:
        """``loss="npa"``: NPALoss; any other name: torchgeo's own."""
        if self.hparams["loss"] != "npa":
            return super().configure_losses()
        task = self.hparams.get("task", "multiclass")
        if task != "multiclass":
            raise ValueError(f"loss 'npa' needs task='multiclass', got {task!r}")
        self.criterion = NPALoss(
            k=self.hparams["npa_k"],
            transform=self.hparams["npa_transform"],
            ignore_index=self.hparams["ignore_index"],
            reduction=self.hparams["npa_reduction"],
        )
        return None
