"""Segmentation models: a small CPU FCN and torchvision's FCN / DeepLabV3 (optional extra).

========================  ===============================================================
``name``                  model
========================  ===============================================================
``small_fcn``             :class:`SmallFCN`: a compact stride-8 FCN that trains on a CPU
``fcn_resnet50``          torchvision FCN, ResNet-50 backbone (output stride 8)
``fcn_resnet101``         torchvision FCN, ResNet-101 backbone (the paper's backbone)
``deeplabv3_resnet50``    torchvision DeepLabV3, ResNet-50
``deeplabv3_resnet101``   torchvision DeepLabV3, ResNet-101
========================  ===============================================================

The torchvision models need the ``torchvision`` extra (``pip install
"npaloss[torchvision]"``, a torchvision build matching the installed torch). They are
built with ``weights=None, weights_backbone=None``: nothing is ever downloaded;
pretrained weights come from a local file (:func:`load_pretrained`). With ``aux=True``
(default) they keep torchvision's auxiliary FCN head on ``layer3`` for deep
supervision (the trainer adds ``aux_weight`` (0.4) times the same loss, with the same
pixel weights, on its output). ``in_channels`` other than 3 (e.g. 4 for RGBIR) replaces
the backbone's first convolution.

Output contract (every model built here, and every model :func:`npa_train.train.load_checkpoint`
returns):

* **eval mode**: ``model(x)`` returns the logits **Tensor** ``(N, num_classes, H, W)`` at
  the input resolution (the auxiliary head is not evaluated);
* train mode: the same Tensor, except for models with an auxiliary head, which return a
  dict ``{"out": logits, "aux": aux_logits}`` (both ``(N, num_classes, H, W)``).

:func:`logits_of` accepts either form (a Tensor, or a dict with key ``"out"``) and returns
the main logits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from npa_precompute.errors import ParameterError
from npa_precompute.params import check_int
from npa_train.choices import MODELS, TORCHVISION_MODELS

__all__ = [
    "MODELS",
    "TORCHVISION_MODELS",
    "SmallFCN",
    "TorchvisionSegmenter",
    "build_model",
    "load_pretrained",
    "logits_of",
    "model_config",
    "model_name",
]

_ALIASES = {"SmallFCN": "small_fcn", "small-fcn": "small_fcn"}


def _block(cin: int, cout: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallFCN(nn.Module):
    """Small FCN: stride-8 encoder, 1x1 classifiers at strides 8 and 4, bilinear upsampling.

    Not the paper's ResNet-101 models: a compact stand-in that trains on a laptop.
    Encoder of conv-BN-ReLU blocks down to stride 8 (the last blocks dilated for
    context), a 1x1 classifier, a 1x1 skip classifier from stride 4 added in (as in
    FCN-8s), and bilinear upsampling to the input size.

    Args:
        in_channels: Image bands (3 for IRRG/RGB, 4 for RGBIR).
        num_classes: Output classes.
        width: Channels of the first stage (doubled at each of the two further
            downsamplings). Default 24.

    Shape:
        - input: ``(N, in_channels, H, W)``, any ``H, W`` (not necessarily multiples of 8).
        - output: ``(N, num_classes, H, W)`` logits (a Tensor in train and eval mode).

    Raises:
        ValueError: ``in_channels``, ``num_classes`` or ``width`` below 1.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 6, *, width: int = 24) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("num_classes", num_classes),
                        ("width", width)):  # fmt: skip
            check_int(name, v, minimum=1)
        self.in_channels, self.num_classes, self.width = in_channels, num_classes, width
        c1, c2, c3 = width, 2 * width, 4 * width
        self.stage1 = nn.Sequential(_block(in_channels, c1, stride=2), _block(c1, c1))  # /2
        self.stage2 = nn.Sequential(_block(c1, c2, stride=2), _block(c2, c2))  # /4
        self.stage3 = nn.Sequential(  # /8
            _block(c2, c3, stride=2), _block(c3, c3, dilation=2), _block(c3, c3, dilation=4)
        )
        self.classifier = nn.Conv2d(c3, num_classes, 1)
        self.skip = nn.Conv2d(c2, num_classes, 1)
        nn.init.zeros_(self.skip.weight)
        nn.init.zeros_(self.skip.bias)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        f4 = self.stage2(self.stage1(x))
        out = self.classifier(self.stage3(f4))
        out = F.interpolate(out, size=f4.shape[-2:], mode="bilinear", align_corners=False)
        out = out + self.skip(f4)
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)

    def config(self) -> dict:
        """Constructor arguments (stored in checkpoints): ``SmallFCN(**config)``."""
        return {"in_channels": self.in_channels, "num_classes": self.num_classes,
                "width": self.width}  # fmt: skip


def _torchvision():
    try:
        import torchvision  # noqa: F401
        import torchvision.models.segmentation as seg
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        raise ImportError(
            "the torchvision models need torchvision: pip install 'npaloss[torchvision]' "
            f"(a torchvision build matching torch {torch.__version__}); importing it "
            f"failed with: {type(exc).__name__}: {exc}"
        ) from exc
    return seg


class TorchvisionSegmenter(nn.Module):
    """torchvision's FCN or DeepLabV3 (ResNet-50/101), built offline, any band count.

    The parameters keep torchvision's names (``backbone.*``, ``classifier.*``,
    ``aux_classifier.*``), so a torchvision state dict loads as is.

    Args:
        arch: One of :data:`TORCHVISION_MODELS`.
        in_channels: Image bands; not 3 replaces ``backbone.conv1`` (a fresh
            ``Conv2d(in_channels, 64, 7, 2, 3, bias=False)``).
        num_classes: Output classes.
        aux: Keep the auxiliary FCN head on ``layer3`` (deep supervision). Default True.

    Shape:
        - input: ``(N, in_channels, H, W)``; DeepLabV3 in train mode needs ``N >= 2``
          (batch norm after its global pooling branch).
        - output: eval mode, or ``aux=False``: logits ``(N, num_classes, H, W)``; train
          mode with ``aux``: ``{"out": logits, "aux": aux_logits}``.

    Raises:
        ImportError: torchvision missing or not importable.
        ValueError: Unknown ``arch``, ``in_channels`` or ``num_classes`` below 1.
    """

    def __init__(
        self, arch: str, in_channels: int = 3, num_classes: int = 6, *, aux: bool = True
    ) -> None:
        super().__init__()
        if arch not in TORCHVISION_MODELS:
            raise ValueError(f"`arch` must be one of {TORCHVISION_MODELS}, got {arch!r}")
        check_int("in_channels", in_channels, minimum=1)
        check_int("num_classes", num_classes, minimum=1)
        seg = _torchvision()
        net = getattr(seg, arch)(
            weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=bool(aux)
        )
        self.arch, self.in_channels, self.num_classes, self.aux = (
            arch,
            in_channels,
            num_classes,
            bool(aux),
        )
        self.backbone = net.backbone
        self.classifier = net.classifier
        self.aux_classifier = net.aux_classifier
        if in_channels != 3:
            old = self.backbone.conv1
            self.backbone.conv1 = nn.Conv2d(
                in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
            )
            nn.init.kaiming_normal_(self.backbone.conv1.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        size = x.shape[-2:]
        feats = self.backbone(x)
        out = F.interpolate(self.classifier(feats["out"]), size=size, mode="bilinear",
                            align_corners=False)  # fmt: skip
        if self.training and self.aux_classifier is not None:
            aux = F.interpolate(self.aux_classifier(feats["aux"]), size=size, mode="bilinear",
                                align_corners=False)  # fmt: skip
            return {"out": out, "aux": aux}
        return out

    def config(self) -> dict:
        """Constructor arguments (stored in checkpoints)."""
        return {"arch": self.arch, "in_channels": self.in_channels,
                "num_classes": self.num_classes, "aux": self.aux}  # fmt: skip


def parse_model_name(name: str) -> str:
    """Canonical model name (accepts ``SmallFCN`` from older checkpoints)."""
    name = _ALIASES.get(name, name)
    if name not in MODELS:
        raise ValueError(f"`model` must be one of {MODELS}, got {name!r}")
    return name


def build_model(
    name: str,
    *,
    in_channels: int = 3,
    num_classes: int = 6,
    aux: bool = True,
    width: int = 24,
    **_ignored,
) -> nn.Module:
    """Build a model by name (see :data:`MODELS`), randomly initialised.

    Parameters
    ----------
    name : model name
    in_channels, num_classes : bands and classes
    aux : auxiliary head (torchvision models only)
    width : first-stage width (``small_fcn`` only)

    Raises
    ------
    ValueError
        Unknown name or bad sizes.
    ImportError
        A torchvision model without torchvision.
    """
    name = parse_model_name(name)
    if name == "small_fcn":
        return SmallFCN(in_channels, num_classes, width=width)
    return TorchvisionSegmenter(name, in_channels, num_classes, aux=aux)


def model_name(model: nn.Module) -> str:
    """The :data:`MODELS` name of a model built here."""
    if isinstance(model, SmallFCN):
        return "small_fcn"
    if isinstance(model, TorchvisionSegmenter):
        return model.arch
    raise TypeError(f"not a model of npa_train: {type(model).__name__}")


def model_config(model: nn.Module) -> dict:
    """Keyword arguments that rebuild ``model`` with :func:`build_model` (besides the name)."""
    cfg = dict(model.config())
    cfg.pop("arch", None)
    return cfg


def logits_of(output: Tensor | Mapping[str, Tensor]) -> Tensor:
    """The main logits of a model output: a Tensor, or a dict's ``"out"``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and "out" in output:
        return output["out"]
    raise TypeError(f"model output must be a Tensor or a dict with 'out', got {type(output)}")


# ---- pretrained weights from a local file --------------------------------------------------------
def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ParameterError("pretrained", f"file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ParameterError(
            "pretrained",
            f"{path} is not a readable PyTorch state dict ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})",
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(v, Tensor) for v in obj.values())
    ):
        raise ParameterError(
            "pretrained", f"{path} holds no state dict (a mapping of parameter names to tensors)"
        )
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def _adapt_conv1(w: Tensor, in_channels: int) -> Tensor:
    """A 3-band first convolution for ``in_channels`` bands.

    More bands: the first three keep their filters, each extra band gets the mean of
    the three. Fewer: the dropped bands' filters are spread evenly over the kept ones
    (1 band: the sum, which equals the 3-band response to a grey image).
    """
    cin = w.shape[1]
    if in_channels > cin:
        extra = w.mean(1, keepdim=True).expand(-1, in_channels - cin, -1, -1)
        return torch.cat([w, extra], 1).contiguous()
    return (w[:, :in_channels] + w[:, in_channels:].sum(1, keepdim=True) / in_channels).contiguous()


def _mismatch_error(path, what: str, missing, unexpected, shapes) -> ValueError:
    def few(keys):
        keys = sorted(keys)
        return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")

    parts = []
    if missing:
        parts.append(f"missing {len(missing)}: {few(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)}: {few(unexpected)}")
    if shapes:
        parts.append("shape mismatch: " + "; ".join(shapes[:4]))
    return ParameterError("pretrained", f"{path} does not fit {what}: " + " | ".join(parts))


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load weights from a local file into ``model`` (nothing is downloaded).

    Accepted files (``torch.save`` of a state dict, possibly wrapped as
    ``{"state_dict": ...}`` or ``{"model": ...}``, ``module.`` prefixes stripped):

    * a **backbone-only ResNet** state dict (torchvision ``resnet50``/``resnet101`` keys
      ``conv1.*``, ``bn1.*``, ``layer1-4.*``; ``fc.*`` is dropped) into a torchvision
      model's backbone; the heads stay randomly initialised;
    * a **full segmentation** state dict (``backbone.*``, ``classifier.*``, optionally
      ``aux_classifier.*``) of the same architecture, e.g. torchvision's COCO weights
      or an ``npa-train`` checkpoint: the last convolution of each head is kept random
      when its class count differs; an auxiliary head missing from the file stays random;
    * for ``small_fcn``: a ``SmallFCN`` state dict of the same configuration.

    A 3-band ``conv1`` is adapted to ``in_channels`` bands (:func:`_adapt_conv1`).

    Returns
    -------
    dict
        ``kind`` ("backbone" or "full"), ``loaded`` (number of tensors), ``random``
        (parameter names left at their initialisation), ``adapted`` (names reshaped).

    Raises
    ------
    ValueError
        Unreadable file, no state dict, or keys/shapes that do not fit the model (the
        message lists a few missing and unexpected keys).
    """
    path = Path(path)
    sd = _read_state_dict(path)
    target = model.state_dict()
    adapted: list[str] = []
    random_keys: list[str] = []

    if isinstance(model, SmallFCN):
        missing = set(target) - set(sd)
        unexpected = set(sd) - set(target)
        shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in set(sd) & set(target) if sd[k].shape != target[k].shape]  # fmt: skip
        if missing or unexpected or shapes:
            raise _mismatch_error(path, f"small_fcn {model.config()}", missing, unexpected, shapes)
        model.load_state_dict(sd)
        return {"kind": "full", "loaded": len(sd), "random": [], "adapted": []}

    if not isinstance(model, TorchvisionSegmenter):
        raise TypeError(f"`model` must be built by npa_train, got {type(model).__name__}")
    full = any(k.startswith("backbone.") for k in sd)
    if full:
        kind, prefix, own = "full", "", target
    else:
        kind, prefix = "backbone", "backbone."
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        own = {k[len(prefix) :]: v for k, v in target.items() if k.startswith(prefix)}
    new: dict[str, Tensor] = {}
    missing, unexpected, shapes = [], [], []
    head_last = ("classifier.4.", "aux_classifier.4.")
    for k, v in own.items():
        if k not in sd:
            if k.endswith("num_batches_tracked"):  # absent from older torchvision files
                new[k] = v
            elif kind == "full" and k.startswith("aux_classifier."):
                random_keys.append(k)
            else:
                missing.append(k)
            continue
        src = sd[k]
        if src.shape == v.shape:
            new[k] = src
        elif (
            k.endswith("conv1.weight")
            and k in ("conv1.weight", "backbone.conv1.weight")
            and (src.ndim == 4 and src.shape[0] == v.shape[0] and src.shape[2:] == v.shape[2:])
        ):
            new[k] = _adapt_conv1(src, v.shape[1])
            adapted.append(prefix + k)
        elif kind == "full" and k.startswith(head_last):
            random_keys.append(k)  # another number of classes: keep this layer random
        else:
            shapes.append(f"{k}: file {tuple(src.shape)} vs model {tuple(v.shape)}")
    for k in sd:
        if k not in own and not (
            kind == "full" and k.startswith("aux_classifier.") and not model.aux
        ):
            unexpected.append(k)
    if missing or unexpected or shapes:
        what = f"{model.arch} ({kind} weights, in_channels {model.in_channels})"
        raise _mismatch_error(path, what, missing, unexpected, shapes)
    if kind == "backbone":
        model.backbone.load_state_dict(new, strict=True)
        random_keys = [k for k in target if not k.startswith("backbone.")]
    else:
        model.load_state_dict(new, strict=False)
    return {"kind": kind, "loaded": len(new), "random": sorted(random_keys),
            "adapted": adapted}  # fmt: skip
