"""Segmentation models: a small CPU FCN, the paper's networks and torchvision's FCN / DeepLabV3.

============================  ==========  ==  ===  ===============================
``name``                      backbone    OS  aux  paper (Feng et al. 2020)
============================  ==========  ==  ===  ===============================
``small_fcn``                 own, small  8   no   none (a CPU stand-in)
``fcn``                       ResNet-101  32  no   FCN: Tables 1-2, Figs. 5-6
``fcn_dilated``               ResNet-101  8   yes  FCN-dilated: Table 3
``pspnet``                    ResNet-101  8   yes  PSPNet: Table 3
``deeplabv3``                 ResNet-101  8   yes  DeepLabV3: Table 3
``fcn_r50``                   ResNet-50   32  no   FCN, smaller GPUs
``fcn_dilated_r50``           ResNet-50   8   yes  FCN-dilated, smaller GPUs
``pspnet_r50``                ResNet-50   8   yes  PSPNet, smaller GPUs
``deeplabv3_r50``             ResNet-50   8   yes  DeepLabV3, smaller GPUs
``fcn_resnet50``              ResNet-50   8   yes  torchvision's FCN (dilated)
``fcn_resnet101``             ResNet-101  8   yes  torchvision's FCN (dilated)
``deeplabv3_resnet50``        ResNet-50   8   yes  torchvision's DeepLabV3
``deeplabv3_resnet101``       ResNet-101  8   yes  torchvision's DeepLabV3
============================  ==========  ==  ===  ===============================

(OS: output stride of the backbone features the head classifies; aux: an auxiliary FCN
head on ``layer3`` for deep supervision when built with ``aux=True``.) :func:`model_spec`
gives these facts per name (:class:`ModelSpec`). The paper's networks
(:class:`PaperSegmenter`) follow mmsegmentation's reference configs (heads, widths,
auxiliary head); torchvision's (:class:`TorchvisionSegmenter`) are kept as they were
(checkpoints record their names): ``fcn_resnet101`` is dilated, i.e. close to the paper's
FCN-dilated (torchvision's one-convolution head), not its FCN.

Every ResNet model needs the ``torchvision`` extra (``pip install
"npaloss[torchvision]"``, a torchvision build matching the installed torch). They are
built with random weights: nothing is ever downloaded; ImageNet weights come from a
local file (:func:`load_pretrained`). The trainer adds ``aux_weight`` (0.4) times the
same loss, with the same pixel weights, on the auxiliary output. ``in_channels`` other
than 3 (e.g. 4 for RGBIR) replaces the backbone's first convolution.

Output contract (every model built here, and every model
:func:`npa_train.checkpoint.load_checkpoint` returns):

* **eval mode**: ``model(x)`` returns the logits **Tensor** ``(N, num_classes, H, W)`` at
  the input resolution (the auxiliary head is not evaluated);
* train mode: the same Tensor, except for models with an auxiliary head, which return a
  dict ``{"out": logits, "aux": aux_logits}`` (both ``(N, num_classes, H, W)``).

:func:`logits_of` accepts either form (a Tensor, or a dict with key ``"out"``) and returns
the main logits.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from npa_precompute.errors import ParameterError
from npa_precompute.params import check_int
from npa_train.choices import MODELS, PAPER_MODELS, TORCHVISION_MODELS, parse_model_name
from npa_train.zipcheck import ZIP_READ_ERRORS, damaged_entry

__all__ = [
    "MODELS",
    "MODEL_SPECS",
    "PAPER_MODELS",
    "TORCHVISION_MODELS",
    "ModelSpec",
    "PaperSegmenter",
    "PyramidPooling",
    "SmallFCN",
    "TorchvisionSegmenter",
    "build_model",
    "load_pretrained",
    "logits_of",
    "model_config",
    "model_name",
    "model_spec",
    "parse_model_name",
]


@dataclass(frozen=True)
class ModelSpec:
    """Facts about one model name that a trainer needs (instead of testing name prefixes).

    Attributes
    ----------
    name : the :data:`MODELS` name
    backbone : ``"resnet101"``, ``"resnet50"`` or ``None`` (``small_fcn``)
    output_stride : input size / size of the features the main head classifies (8 or 32)
    has_aux : the model has an auxiliary head on ``layer3`` when built with ``aux=True``
        (train mode then returns ``{"out", "aux"}``)
    needs_batch_ge2 : train mode needs a batch of at least 2 (batch norm after a 1x1
        pooled branch: ASPP image pooling, PSP bin 1)
    channels_last_ok : ``torch.channels_last`` suits it on CUDA (the ResNet models)
    paper : the network of Feng et al. 2020 it stands for, and where ("" if none)
    """

    name: str
    backbone: str | None
    output_stride: int
    has_aux: bool
    needs_batch_ge2: bool
    channels_last_ok: bool
    paper: str = ""


def _specs() -> dict[str, ModelSpec]:
    out = {"small_fcn": ModelSpec("small_fcn", None, 8, False, False, False)}
    paper = {
        "fcn": (32, False, False, "FCN (Tables 1-2, Figs. 5-6)"),
        "fcn_dilated": (8, True, False, "FCN-dilated (Table 3)"),
        "pspnet": (8, True, True, "PSPNet (Table 3)"),
        "deeplabv3": (8, True, True, "DeepLabV3 (Table 3)"),
    }
    for name, (stride, aux, ge2, what) in paper.items():
        out[name] = ModelSpec(name, "resnet101", stride, aux, ge2, True, what)
        r50 = f"{name}_r50"
        out[r50] = ModelSpec(r50, "resnet50", stride, aux, ge2, True, f"{what}, ResNet-50")
    for name in TORCHVISION_MODELS:
        arch, depth = name.split("_resnet")
        what = "FCN-dilated (torchvision head)" if arch == "fcn" else ""
        out[name] = ModelSpec(name, f"resnet{depth}", 8, True, arch == "deeplabv3", True, what)
    return out


#: :class:`ModelSpec` of every name of :data:`MODELS`.
MODEL_SPECS: dict[str, ModelSpec] = _specs()


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a model name (aliases such as ``SmallFCN`` accepted).

    Raises
    ------
    ValueError
        Unknown name (the message lists :data:`MODELS`).
    """
    return MODEL_SPECS[parse_model_name(name)]


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


def _replace_conv1(backbone: nn.Module, in_channels: int) -> None:
    """A fresh ``Conv2d(in_channels, 64, 7, 2, 3, bias=False)`` as a ResNet's first layer."""
    old = backbone.conv1
    backbone.conv1 = nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
    )
    nn.init.kaiming_normal_(backbone.conv1.weight, mode="fan_out", nonlinearity="relu")


class _BackboneSegmenter(nn.Module):
    """A ResNet ``backbone`` (features ``"out"``, ``"aux"``), a ``classifier`` head and an
    optional ``aux_classifier``; logits upsampled (bilinear) to the input size."""

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


class TorchvisionSegmenter(_BackboneSegmenter):
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

    _last_layers = ("classifier.4.", "aux_classifier.4.")

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
            _replace_conv1(self.backbone, in_channels)


# ---- the paper's networks ------------------------------------------------------------------------
def _conv_bn_relu(cin: int, cout: int, k: int):
    """mmsegmentation's ``ConvModule`` (conv without bias, BN, ReLU), from torchvision."""
    from torchvision.ops import Conv2dNormActivation

    return Conv2dNormActivation(cin, cout, k)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module (Zhao et al. 2017), as mmsegmentation's ``PSPHead``.

    Each bin size ``b`` average-pools the features to ``b x b`` (adaptive pooling), maps
    them to ``channels`` with a 1x1 conv-BN-ReLU and upsamples them bilinearly
    (``align_corners=False``) to the input size; the input and the pooled maps are
    concatenated and fused by a 3x3 conv-BN-ReLU to ``channels``. Defaults as
    mmsegmentation's ``pspnet_r50-d8`` config (``pool_scales=(1, 2, 3, 6)``,
    ``channels=512``).

    Args:
        in_channels: Feature channels (2048 for a ResNet-50/101 ``layer4``).
        channels: Channels of each pooled branch and of the output. Default 512.
        bins: Pooled grid sizes. Default ``(1, 2, 3, 6)``.

    Shape:
        - input: ``(N, in_channels, h, w)``; train mode needs ``N >= 2`` (batch norm
          after the 1x1 bin).
        - output: ``(N, channels, h, w)``.
    """

    def __init__(self, in_channels: int, channels: int = 512, bins=(1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = tuple(int(b) for b in bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), _conv_bn_relu(in_channels, channels, 1))
            for b in self.bins
        )
        self.bottleneck = _conv_bn_relu(in_channels + len(self.bins) * channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False)
                  for stage in self.stages]  # fmt: skip
        return self.bottleneck(torch.cat([x, *pooled], 1))


class _FCNDecode(nn.Module):
    """mmsegmentation's ``FCNHead(num_convs=2, concat_input=True)`` body (before dropout)."""

    def __init__(self, in_channels: int, channels: int = 512) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            _conv_bn_relu(in_channels, channels, 3), _conv_bn_relu(channels, channels, 3)
        )
        self.conv_cat = _conv_bn_relu(in_channels + channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_cat(torch.cat([x, self.convs(x)], 1))


def _aspp(in_channels: int, channels: int = 512):
    """mmsegmentation's ``ASPPHead`` body: torchvision's ASPP (1x1 branch, rates 12, 24, 36,
    image pooling; ``channels`` each) fused by a 3x3 conv-BN-ReLU, as mmseg's bottleneck
    (torchvision's own ``project`` is a 1x1 conv with dropout 0.5)."""
    from torchvision.models.segmentation.deeplabv3 import ASPP

    aspp = ASPP(in_channels, (12, 24, 36), channels)
    aspp.project = _conv_bn_relu(5 * channels, channels, 3)
    return aspp


def _decode_head(kind: str, in_channels: int, num_classes: int) -> nn.Sequential:
    body = {"fcn": _FCNDecode, "pspnet": PyramidPooling, "deeplabv3": _aspp}[kind](in_channels)
    conv_seg = nn.Conv2d(512, num_classes, 1)
    head = nn.Sequential()
    head.add_module("body", body)
    head.add_module("dropout", nn.Dropout2d(0.1))  # mmseg BaseDecodeHead, dropout_ratio=0.1
    head.add_module("conv_seg", conv_seg)
    return head


def _init_head(head: nn.Module, last: nn.Conv2d) -> None:
    """mmsegmentation's initialisation: kaiming (fan_out) convs, unit BN, N(0, 0.01) classifier."""
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.normal_(last.weight, 0.0, 0.01)
    nn.init.zeros_(last.bias)


class PaperSegmenter(_BackboneSegmenter):
    """The paper's FCN, FCN-dilated, PSPNet and DeepLabV3 on a torchvision ResNet-50/101.

    Sources of each choice:

    * **Backbone**: torchvision's ``resnet50``/``resnet101`` (so ``--pretrained`` loads
      torchvision's ImageNet files, e.g. ``resnet101-63fe2227.pth``). mmsegmentation's
      configs use ``ResNetV1c`` (a deep stem of three 3x3 convolutions, ImageNet weights
      ``open-mmlab://resnet101_v1c``) which torchvision has no weights for. Output stride 8
      (``fcn_dilated``, ``pspnet``, ``deeplabv3``): ``layer3``/``layer4`` dilated 2/4 in
      place of stride 2 (``replace_stride_with_dilation=[False, True, True]``), the first
      block of each at the previous dilation, as mmseg's ``-d8`` configs (``dilations=(1,
      1, 2, 4)``, ``strides=(1, 2, 1, 1)``, ``contract_dilation=True``). Output stride 32
      (``fcn``): the plain ResNet, as the paper's FCN (§4.2, Table 1, car F1 64.88 vs
      FCN-dilated's 87.94) and Long et al.'s FCN-32s (one prediction at stride 32,
      upsampled).
    * **Heads** (mmseg ``configs/_base_/models/{fcn,pspnet,deeplabv3}_r50-d8.py``, on
      ``layer4``, 2048 channels, ``channels=512``, ``Dropout2d(0.1)`` then a 1x1
      classifier ``conv_seg``): ``fcn*``: ``FCNHead(num_convs=2, concat_input=True)``, two
      3x3 conv-BN-ReLU, the input concatenated and fused by a third; ``pspnet*``:
      :class:`PyramidPooling` (bins 1, 2, 3, 6); ``deeplabv3*``: ASPP (1x1 branch, 3x3
      rates 12, 24, 36, image pooling) from torchvision, fused by a 3x3 conv-BN-ReLU.
    * **Auxiliary head** (mmseg ``auxiliary_head``, ``loss_weight=0.4``; the weight is the
      trainer's ``aux_weight``): torchvision's ``FCNHead(1024, num_classes)`` on
      ``layer3``, the same layers as mmseg's ``FCNHead(in_channels=1024, channels=256,
      num_convs=1, concat_input=False)`` (plain ``Dropout`` instead of ``Dropout2d``), for
      ``fcn_dilated``, ``pspnet`` and ``deeplabv3``. The paper's FCN has none (``fcn``
      ignores ``aux``).
    * Logits are upsampled bilinearly (``align_corners=False``) to the input size; head
      initialisation as mmseg (kaiming convs, classifier ``N(0, 0.01)``).

    Parameter names: ``backbone.*`` (torchvision's ResNet names), ``classifier.*``
    (``classifier.conv_seg`` the last layer), ``aux_classifier.*``.

    Args:
        arch: One of :data:`PAPER_MODELS`.
        in_channels: Image bands; not 3 replaces ``backbone.conv1``.
        num_classes: Output classes.
        aux: Build the auxiliary head (where the network has one). Default True.

    Shape:
        - input: ``(N, in_channels, H, W)``; ``pspnet*``/``deeplabv3*`` in train mode need
          ``N >= 2`` (:attr:`ModelSpec.needs_batch_ge2`).
        - output: eval mode, or no auxiliary head: logits ``(N, num_classes, H, W)``; train
          mode with it: ``{"out": logits, "aux": aux_logits}``.

    Raises:
        ImportError: torchvision missing or not importable.
        ValueError: Unknown ``arch``, ``in_channels`` or ``num_classes`` below 1.
    """

    _last_layers = ("classifier.conv_seg.", "aux_classifier.4.")

    def __init__(
        self, arch: str, in_channels: int = 3, num_classes: int = 6, *, aux: bool = True
    ) -> None:
        super().__init__()
        if arch not in PAPER_MODELS:
            raise ValueError(f"`arch` must be one of {PAPER_MODELS}, got {arch!r}")
        check_int("in_channels", in_channels, minimum=1)
        check_int("num_classes", num_classes, minimum=1)
        seg = _torchvision()
        import torchvision.models as tvm
        from torchvision.models._utils import IntermediateLayerGetter

        spec = MODEL_SPECS[arch]
        aux = bool(aux) and spec.has_aux
        self.arch, self.in_channels, self.num_classes, self.aux = (
            arch,
            in_channels,
            num_classes,
            aux,
        )
        dilate = spec.output_stride == 8
        resnet = getattr(tvm, spec.backbone)(
            weights=None, replace_stride_with_dilation=[False, dilate, dilate]
        )
        layers = {"layer4": "out", **({"layer3": "aux"} if aux else {})}
        self.backbone = IntermediateLayerGetter(resnet, return_layers=layers)
        self.classifier = _decode_head(
            arch.removesuffix("_r50").removesuffix("_dilated"), 2048, num_classes
        )
        _init_head(self.classifier, self.classifier.conv_seg)
        self.aux_classifier = seg.fcn.FCNHead(1024, num_classes) if aux else None
        if aux:
            _init_head(self.aux_classifier, self.aux_classifier[4])
        if in_channels != 3:
            _replace_conv1(self.backbone, in_channels)


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
    name : model name (:data:`MODELS`; :func:`model_spec` gives its facts)
    in_channels, num_classes : bands (default 3) and classes (default 6)
    aux : auxiliary head on ``layer3`` (default True) for the ResNet models that have one
        (:attr:`ModelSpec.has_aux`; ``fcn``, ``fcn_r50`` and ``small_fcn`` ignore it)
    width : first-stage width (``small_fcn`` only, default 24)

    Returns
    -------
    torch.nn.Module
        :class:`SmallFCN`, :class:`PaperSegmenter` or :class:`TorchvisionSegmenter`.

    Raises
    ------
    ValueError
        Unknown name or bad sizes.
    ImportError
        A ResNet model without torchvision.
    """
    name = parse_model_name(name)
    if name == "small_fcn":
        return SmallFCN(in_channels, num_classes, width=width)
    if name in PAPER_MODELS:
        return PaperSegmenter(name, in_channels, num_classes, aux=aux)
    return TorchvisionSegmenter(name, in_channels, num_classes, aux=aux)


def model_name(model: nn.Module) -> str:
    """The :data:`MODELS` name of a model built here."""
    if isinstance(model, SmallFCN):
        return "small_fcn"
    if isinstance(model, (TorchvisionSegmenter, PaperSegmenter)):
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
    if zipfile.is_zipfile(path) and (bad := _damaged(path)) is not None:
        raise ParameterError(
            "pretrained",
            f"{path} is damaged: the checksum (CRC-32) of its entry {bad!r} does not match its "
            "bytes (a corrupted or partly downloaded file); fetch it again",
        )
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


def _damaged(path: Path) -> str | None:
    try:
        return damaged_entry(path)
    except ZIP_READ_ERRORS as exc:
        raise ParameterError("pretrained", f"{path} is not a readable archive ({exc})") from exc


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
      ``conv1.*``, ``bn1.*``, ``layer1-4.*``; ``fc.*`` is dropped, e.g. ImageNet
      ``resnet101-63fe2227.pth``) into the backbone of a ResNet model (the paper's
      networks and torchvision's); the heads stay randomly initialised;
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

    if not isinstance(model, (TorchvisionSegmenter, PaperSegmenter)):
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
    head_last = model._last_layers
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
