"""npa_train: NPALoss (pixel-weighted cross-entropy), store crops, a small FCN and training.

Feng et al., "Neighboring Pixel Affinity Loss for Semantic Segmentation in
High-Resolution Aerial Imagery", ISPRS Annals V-2-2020. The weights come from the
store written by ``npa-precompute run``.
"""

from __future__ import annotations

from npa_train.data import CropParams, StoreCropDataset
from npa_train.loss import REDUCTIONS, NPALoss, npa_cross_entropy
from npa_train.model import SmallFCN
from npa_train.train import TrainingError, fit, load_checkpoint, poly_lr, resolve_device

__all__ = [
    "REDUCTIONS",
    "CropParams",
    "NPALoss",
    "SmallFCN",
    "StoreCropDataset",
    "TrainingError",
    "fit",
    "load_checkpoint",
    "npa_cross_entropy",
    "poly_lr",
    "resolve_device",
]
