"""npa_train: NPALoss and its baselines, aligned augmented store crops, models and training.

Feng et al., "Neighboring Pixel Affinity Loss for Semantic Segmentation in
High-Resolution Aerial Imagery", ISPRS Annals V-2-2020. The weights come from the
store written by ``npa-precompute run``, or are computed exactly from the target batch
on its device (:mod:`npa_train.online`; ``NPALoss()(logits, target)``). Drop-in losses
for torchgeo, Lightning, segmentation_models_pytorch and mmsegmentation live in
:mod:`npa_train.adapters` (imported only on demand).
"""

from __future__ import annotations

from npa_train.augment import AugmentConfig, CropParams, sample_params, warp_windows
from npa_train.data import StoreCropDataset, write_preview
from npa_train.loss import (
    LOSSES,
    REDUCTIONS,
    ClassWeightedCE,
    DiceLoss,
    FocalLoss,
    NPALoss,
    build_criterion,
    class_weighted_cross_entropy,
    dice_loss,
    focal_loss,
    median_frequency_weights,
    npa_cross_entropy,
    npa_loss,
)
from npa_train.model import (
    MODELS,
    SmallFCN,
    TorchvisionSegmenter,
    build_model,
    load_pretrained,
    logits_of,
)
from npa_train.online import affinity_counts, npa_weights
from npa_train.train import (
    SPLITS,
    TrainingError,
    fit,
    load_checkpoint,
    poly_lr,
    resolve_device,
    resolve_split,
)

__all__ = [
    "LOSSES",
    "MODELS",
    "REDUCTIONS",
    "SPLITS",
    "AugmentConfig",
    "ClassWeightedCE",
    "CropParams",
    "DiceLoss",
    "FocalLoss",
    "NPALoss",
    "SmallFCN",
    "StoreCropDataset",
    "TorchvisionSegmenter",
    "TrainingError",
    "affinity_counts",
    "build_criterion",
    "build_model",
    "class_weighted_cross_entropy",
    "dice_loss",
    "fit",
    "focal_loss",
    "load_checkpoint",
    "load_pretrained",
    "logits_of",
    "median_frequency_weights",
    "npa_cross_entropy",
    "npa_loss",
    "npa_weights",
    "poly_lr",
    "resolve_device",
    "resolve_split",
    "sample_params",
    "warp_windows",
    "write_preview",
]
