"""The names ``npa-train`` offers as option choices, and the defaults its options share
with the library functions, importable without torch.

:mod:`npa_train.loss`, :mod:`npa_train.model`, :mod:`npa_train.train` and
:mod:`npa_train.predict` re-export them; the command line (:mod:`npa_train.cli`) reads
them from here so that ``npa-train --help`` does not import torch.
"""

from __future__ import annotations

from npa_precompute.errors import ParameterError

__all__ = [
    "DEFAULT_WEIGHTS",
    "FORMATS",
    "INFERENCE_BATCH",
    "LOSSES",
    "MODELS",
    "PAPER_MODELS",
    "REDUCTIONS",
    "SPLITS",
    "TORCHVISION_MODELS",
    "VAL_METRICS",
    "WARP_ON",
    "WINDOW",
    "WINDOW_OVERLAP",
    "parse_model_name",
    "parse_reduction",
]

#: Allowed values of ``reduction``.
REDUCTIONS = ("mean", "weighted_mean", "batch", "sum", "none")
#: Loss names of :func:`npa_train.criteria.build_criterion` (``npa-train fit --loss``).
LOSSES = ("npa", "ce", "ce-weighted", "focal", "dice")
#: The paper's networks (Feng et al. 2020, §4.2) on ImageNet ResNet-101 backbones, as
#: mmsegmentation's reference configs define them, and their ResNet-50 variants (``_r50``):
#: ``fcn`` (output stride 32; Tables 1-2, Figs. 5-6), ``fcn_dilated``, ``pspnet`` and
#: ``deeplabv3`` (output stride 8; Table 3). They need the ``torchvision`` extra.
PAPER_MODELS = (
    "fcn", "fcn_dilated", "pspnet", "deeplabv3",
    "fcn_r50", "fcn_dilated_r50", "pspnet_r50", "deeplabv3_r50",
)  # fmt: skip
#: torchvision's own architectures (the ``torchvision`` extra); both are dilated (output
#: stride 8): ``fcn_resnet101`` is the paper's FCN-dilated up to its head, not its FCN.
TORCHVISION_MODELS = ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101")
#: Allowed model names.
MODELS = ("small_fcn", *PAPER_MODELS, *TORCHVISION_MODELS)
#: Where the geometric augmentation runs: ``device`` (batched on the training device),
#: ``loader`` (per sample, on the CPU, in the DataLoader workers), ``auto`` (device on
#: CUDA, loader on the CPU).
WARP_ON = ("auto", "device", "loader")
#: Named tile splits: preset, tile id pattern, train and validation area numbers.
SPLITS = {
    "vaihingen-paper": {
        "preset": "isprs",
        "pattern": "top_mosaic_09cm_area{}",
        "train": (1, 3, 5, 7, 13, 17, 21, 23, 26, 32, 37),
        "val": (11, 15, 28, 30, 34),
    }
}
#: Metrics validation during training logs and ``fit --best-metric`` may select ``best.pt``
#: by (all: higher is better; the means over the store's foreground classes).
VAL_METRICS = ("mF1", "mIoU", "OA", "boundary_f1")
#: Label map formats :func:`npa_train.predict.predict` writes.
FORMATS = ("png", "tif")
#: Weights ``npa-train fit --loss npa`` uses when ``--weights`` is not given and the store
#: holds them: the paper's best (k = 32, log10, L = 0.5; Table 2, Fig. 5).
DEFAULT_WEIGHTS = "k32_log10_L0.5"
#: Sliding-window side of :func:`npa_train.evaluate.evaluate` and
#: :func:`npa_train.predict.predict` (``--window``): the paper's crop side.
WINDOW = 513
#: Overlap of neighbouring windows (``--overlap``): the paper's stride of 2/3 of a window.
WINDOW_OVERLAP = "1/3"
#: Windows per forward pass in evaluate and predict (``--batch``).
INFERENCE_BATCH = 4

#: Older spellings of model names (checkpoints written before the names were settled).
MODEL_ALIASES = {"SmallFCN": "small_fcn", "small-fcn": "small_fcn"}


def parse_reduction(reduction: str) -> str:
    """``reduction`` if it is one of :data:`REDUCTIONS`.

    Raises
    ------
    ParameterError
        Any other value (argument ``reduction``).
    """
    if reduction not in REDUCTIONS:
        raise ParameterError("reduction", f"must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def parse_model_name(name: str) -> str:
    """Canonical model name (accepts ``SmallFCN`` from older checkpoints).

    Raises
    ------
    ValueError
        Not a name of :data:`MODELS`.
    """
    name = MODEL_ALIASES.get(name, name)
    if name not in MODELS:
        raise ValueError(f"`model` must be one of {MODELS}, got {name!r}")
    return name
