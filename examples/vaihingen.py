"""Random crops of an ISPRS tile as a Lightning data module (used by the other examples).

Reads the Vaihingen crop in ``../shared/data`` when it is there, else the demo tiles in
``data/demo`` (both RGB colour-coded ISPRS ground truth, decoded by npaloss's ``isprs``
preset: 6 classes, 255 = the eroded boundary band).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from npa_precompute.presets import get_preset
from npa_precompute.readers import read_image, read_label

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "vaihingen_crop"


def tile_paths() -> tuple[Path, Path]:
    """(image, label) of the Vaihingen crop, or of the first demo tile."""
    shared = (
        SHARED / "top" / "top_mosaic_09cm_area1.tif",
        SHARED / "gts_eroded_for_participants" / "top_mosaic_09cm_area1_noBoundary.tif",
    )
    if all(p.is_file() for p in shared):
        return shared
    demo = ROOT / "data" / "demo"
    label = demo / "gts_eroded_for_participants" / "demo_area1_noBoundary.tif"
    return demo / "top" / "demo_area1.tif", label


class RandomCrops(Dataset):
    """``length`` random ``size``² crops of one tile: ``{"image": (3, s, s) float32,
    "mask": (s, s) int64}``, the image scaled to [0, 1]."""

    def __init__(self, size: int = 128, length: int = 64, seed: int = 0) -> None:
        image_path, label_path = tile_paths()
        self.image = torch.from_numpy(read_image(image_path)[..., :3].astype(np.float32) / 255)
        self.label = torch.from_numpy(get_preset("isprs").decode(read_label(label_path)))
        self.size, self.length, self.seed = size, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 100_003 + index)
        h, w = self.label.shape
        y = int(torch.randint(0, h - self.size + 1, (), generator=g))
        x = int(torch.randint(0, w - self.size + 1, (), generator=g))
        s = self.size
        image = self.image[y : y + s, x : x + s].permute(2, 0, 1).contiguous()
        return {"image": image, "mask": self.label[y : y + s, x : x + s].long()}


class VaihingenDataModule(pl.LightningDataModule):
    """Train and validation loaders of :class:`RandomCrops` (different seeds)."""

    def __init__(self, crop: int = 128, batch_size: int = 4, length: int = 64) -> None:
        super().__init__()
        self.crop, self.batch_size, self.length = crop, batch_size, length

    def train_dataloader(self) -> DataLoader:
        data = RandomCrops(self.crop, self.length, seed=0)
        return DataLoader(data, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        data = RandomCrops(self.crop, 2 * self.batch_size, seed=1)
        return DataLoader(data, batch_size=self.batch_size)
