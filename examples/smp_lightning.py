"""segmentation_models_pytorch + Lightning, trained with NPALoss (smp's loss conventions).

    python examples/smp_lightning.py --steps 20

An smp Unet (resnet18, no pretrained weights) in a LightningModule whose criterion is
npaloss's smp adapter: the weights are computed from each batch's masks on their device.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import segmentation_models_pytorch as smp
import torch
from vaihingen import VaihingenDataModule

from npa_train.adapters.smp import NPALoss


# --8<-- [start:module]
class SegModule(pl.LightningModule):
    def __init__(self, num_classes: int = 6, lr: float = 1e-3) -> None:
        super().__init__()
        self.model = smp.Unet("resnet18", encoder_weights=None, classes=num_classes)
        # self.loss_fn = smp.losses.DiceLoss(smp.losses.MULTICLASS_MODE, ignore_index=255)
        self.loss_fn = NPALoss(smp.losses.MULTICLASS_MODE, ignore_index=255, k=32)
        self.lr = lr

    def training_step(self, batch, batch_idx):
        loss = self.loss_fn(self.model(batch["image"]), batch["mask"])
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.loss_fn(self.model(batch["image"]), batch["mask"]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


# --8<-- [end:module]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps (100)")
    parser.add_argument("--crop", type=int, default=128, help="crop size in pixels (128)")
    args = parser.parse_args()
    torch.manual_seed(0)
    trainer = pl.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, limit_val_batches=1, enable_progress_bar=False,
                         enable_model_summary=False,
                         val_check_interval=max(args.steps, 1), num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(SegModule(), datamodule=VaihingenDataModule(crop=args.crop, batch_size=2))
    print(f"smp_lightning: {trainer.global_step} steps, train_loss "
          f"{float(trainer.callback_metrics['train_loss']):.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
