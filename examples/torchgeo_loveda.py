"""torchgeo: NPASegmentationTask with torchgeo's LoveDA datamodule, trained with Lightning.

    python examples/torchgeo_loveda.py --steps 20

Reads the two LoveDA Rural tiles in ``../shared/data/loveda_crop`` with torchgeo's
``LoveDADataModule`` (torchgeo's convention: 8 classes, 0 = no-data, ignored), random
crops by kornia on the batch's device; the LoveDA crop has only a ``Train`` split, so it
validates on it too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import kornia.augmentation as K
import lightning.pytorch as pl
import torch
from torchgeo.datamodules import LoveDADataModule
from torchgeo.datasets import LoveDA

from npa_train.adapters.torchgeo import NPASegmentationTask

ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "loveda_crop"


class LoveDACrop(LoveDADataModule):
    """torchgeo's LoveDA datamodule on the Rural train tiles only, in random crops."""

    def __init__(self, crop: int = 128, **kwargs) -> None:
        super().__init__(**kwargs)
        self.train_aug = K.AugmentationSequential(
            K.Normalize(mean=self.mean, std=self.std), K.RandomCrop((crop, crop)),
            K.RandomHorizontalFlip(), data_keys=None, keepdim=True,
        )  # fmt: skip
        self.val_aug = K.AugmentationSequential(
            K.Normalize(mean=self.mean, std=self.std), K.CenterCrop((crop, crop)),
            data_keys=None, keepdim=True,
        )  # fmt: skip

    def setup(self, stage: str) -> None:
        self.train_dataset = LoveDA(split="train", **self.kwargs)
        self.val_dataset = LoveDA(split="train", **self.kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps (100)")
    parser.add_argument("--crop", type=int, default=128, help="crop size in pixels (128)")
    args = parser.parse_args()
    torch.manual_seed(0)
    # --8<-- [start:task]
    datamodule = LoveDACrop(crop=args.crop, batch_size=2, root=str(ROOT), scene=["rural"])
    # task = SemanticSegmentationTask(model="unet", backbone="resnet18", num_classes=8,
    #                                 loss="ce", ignore_index=0)
    task = NPASegmentationTask(
        model="unet",
        backbone="resnet18",
        weights=None,
        num_classes=8,
        ignore_index=0,
        loss="npa",
        npa_k=32,
    )
    trainer = pl.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(task, datamodule=datamodule)
    # --8<-- [end:task]
    loss = float(trainer.callback_metrics["train_loss"])
    print(f"torchgeo_loveda: {trainer.global_step} steps, train_loss {loss:.4f}")


if __name__ == "__main__":
    main()
