"""npa_train: NPALoss and its baselines, aligned augmented store crops, models and training.

Feng et al., "Neighboring Pixel Affinity Loss for Semantic Segmentation in
High-Resolution Aerial Imagery", ISPRS Annals V-2-2020. The weights come from the
store written by ``npa-precompute run``, or are computed exactly from the target batch
on its device (:mod:`npa_train.online`; ``NPALoss()(logits, target)``). Drop-in losses
for torchgeo, Lightning, segmentation_models_pytorch and mmsegmentation live in
:mod:`npa_train.adapters` (imported only on demand).

The names below are imported on first use (torch loads only when needed), so
``npa-train --help`` starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_MODULES = {
    "npa_train.augment": ("AugmentConfig", "CropParams", "sample_params", "warp_windows"),
    "npa_train.data": ("StoreCropDataset", "write_preview"),
    "npa_train.loss": ("LOSSES", "REDUCTIONS", "NPALoss", "npa_cross_entropy", "npa_loss"),
    "npa_train.criteria": (
        "ClassWeightedCE",
        "DiceLoss",
        "FocalLoss",
        "build_criterion",
        "class_weighted_cross_entropy",
        "dice_loss",
        "focal_loss",
        "median_frequency_weights",
    ),
    "npa_train.model": (
        "MODELS",
        "ModelSpec",
        "PaperSegmenter",
        "SmallFCN",
        "TorchvisionSegmenter",
        "build_model",
        "logits_of",
        "model_spec",
    ),
    "npa_train.pretrained": ("load_pretrained",),
    "npa_train.online": ("affinity_counts", "npa_weights"),
    "npa_train.checkpoint": ("CheckpointError", "load_checkpoint", "load_model"),
    "npa_train.config": ("TrainConfig",),
    "npa_train.device": ("resolve_device",),
    "npa_train.splits": ("SPLITS", "resolve_split"),
    "npa_train.train": ("Trainer", "TrainingError", "TrainingInterrupted", "fit", "poly_lr"),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}

if TYPE_CHECKING:  # pragma: no cover
    from npa_train.augment import AugmentConfig, CropParams, sample_params, warp_windows
    from npa_train.checkpoint import CheckpointError, load_checkpoint, load_model
    from npa_train.config import TrainConfig
    from npa_train.criteria import (
        ClassWeightedCE,
        DiceLoss,
        FocalLoss,
        build_criterion,
        class_weighted_cross_entropy,
        dice_loss,
        focal_loss,
        median_frequency_weights,
    )
    from npa_train.data import StoreCropDataset, write_preview
    from npa_train.device import resolve_device
    from npa_train.loss import LOSSES, REDUCTIONS, NPALoss, npa_cross_entropy, npa_loss
    from npa_train.model import (
        MODELS,
        ModelSpec,
        PaperSegmenter,
        SmallFCN,
        TorchvisionSegmenter,
        build_model,
        logits_of,
        model_spec,
    )
    from npa_train.online import affinity_counts, npa_weights
    from npa_train.pretrained import load_pretrained
    from npa_train.splits import SPLITS, resolve_split
    from npa_train.train import Trainer, TrainingError, TrainingInterrupted, fit, poly_lr

__all__ = [
    "LOSSES",
    "MODELS",
    "REDUCTIONS",
    "SPLITS",
    "AugmentConfig",
    "CheckpointError",
    "ClassWeightedCE",
    "CropParams",
    "DiceLoss",
    "FocalLoss",
    "ModelSpec",
    "NPALoss",
    "PaperSegmenter",
    "SmallFCN",
    "StoreCropDataset",
    "TorchvisionSegmenter",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "affinity_counts",
    "build_criterion",
    "build_model",
    "class_weighted_cross_entropy",
    "dice_loss",
    "fit",
    "focal_loss",
    "load_checkpoint",
    "load_model",
    "load_pretrained",
    "logits_of",
    "median_frequency_weights",
    "model_spec",
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


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'npa_train' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
