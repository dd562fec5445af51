"""A minimal LightningModule trained with NPALoss (PyTorch Lightning >= 2).

In your own LightningModule the change is one line, the criterion::

    # self.criterion = nn.CrossEntropyLoss(ignore_index=255)
    self.criterion = NPALoss(ignore_index=255)  # from npa_train.loss; k=32, log10, L=0.5

:class:`NPASegmentationModule` is a ready one for any segmentation model whose forward
returns ``(N, C, H, W)`` logits (or torchvision's ``{"out", "aux"}``): SGD with poly
decay (the paper's recipe, §4.2), ``train_loss``/``val_loss`` logged. Its constructor is
type-hinted, so ``LightningCLI`` builds it from a config::

    # config.yaml, for `LightningCLI(NPASegmentationModule, YourDataModule)`
    model:
      model:
        class_path: segmentation_models_pytorch.Unet
        init_args: {encoder_name: resnet34, encoder_weights: null, classes: 6}
      k: 32
      transform: log10:L=0.5
      ignore_index: 255

Batches are dicts with ``image`` and ``mask`` (torchgeo's) or ``(image, mask)`` pairs.
Lightning is imported from ``lightning.pytorch``, else from ``pytorch_lightning``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from npa_train.loss import NPALoss
from npa_train.model import logits_of

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the older package name
    try:
        import pytorch_lightning as pl
    except ImportError as exc:
        from npa_train.adapters import missing_framework

        raise missing_framework(__name__, "lightning", "'lightning>=2.0'", exc) from exc

__all__ = ["NPALoss", "NPASegmentationModule"]


def _unpack(batch: Any, image_key: str, mask_key: str) -> tuple[Tensor, Tensor]:
    if isinstance(batch, Mapping):
        return batch[image_key], batch[mask_key]
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        f"a batch must be a dict with {image_key!r} and {mask_key!r} or an (image, mask) pair, "
        f"got {type(batch).__name__}"
    )


class NPASegmentationModule(pl.LightningModule):
    """A segmentation model trained with NPALoss, weights computed from each batch's masks.

    Args:
        model: The network: ``forward(image)`` gives ``(N, C, H, W)`` logits or a dict
            with ``"out"`` (and optionally ``"aux"``, weighted ``aux_weight``).
        k: Search region of Eq. 1 (default 32, the paper's best).
        transform: Weight transform spec (default ``"log10:L=0.5"``).
        ignore_index: Mask value of ignored pixels (default 255; None: none).
        reduction: NPALoss reduction (default ``"mean"`` over non-ignored pixels).
        lr: Base learning rate of SGD (default 0.01), decayed as
            ``(1 - step / total_steps) ** poly_power``.
        momentum: SGD momentum (0.9).
        weight_decay: SGD weight decay (1e-4).
        poly_power: Power of the poly decay (0.9).
        aux_weight: Weight of an auxiliary output's loss (0.4).
        image_key: Key of the images in dict batches (``"image"``).
        mask_key: Key of the masks in dict batches (``"mask"``).
    """

    def __init__(
        self,
        model: nn.Module,
        k: int = 32,
        transform: str = "log10:L=0.5",
        ignore_index: int | None = 255,
        reduction: str = "mean",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        poly_power: float = 0.9,
        aux_weight: float = 0.4,
        image_key: str = "image",
        mask_key: str = "mask",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.criterion = NPALoss(k=k, transform=transform, ignore_index=ignore_index,
                                 reduction=reduction)  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return logits_of(self.model(x))

    def _loss(self, batch: Any) -> tuple[Tensor, int]:
        x, y = _unpack(batch, self.hparams.image_key, self.hparams.mask_key)
        if y.ndim == 4 and y.shape[1] == 1:
            y = y[:, 0]
        out = self.model(x)
        loss = self.criterion(logits_of(out), y)
        if isinstance(out, Mapping) and out.get("aux") is not None and self.hparams.aux_weight:
            loss = loss + self.hparams.aux_weight * self.criterion(out["aux"], y)
        return loss, int(x.shape[0])

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, n = self._loss(batch)
        self.log("train_loss", loss, batch_size=n, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, n = self._loss(batch)
        self.log("val_loss", loss, batch_size=n, prog_bar=True)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum,
                              weight_decay=hp.weight_decay)  # fmt: skip
        total = max(int(self.trainer.estimated_stepping_batches), 1)

        def poly(step: int) -> float:
            return max(0.0, 1.0 - min(step, total) / total) ** hp.poly_power

        sched = torch.optim.lr_scheduler.LambdaLR(opt, poly)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
