"""Pretrained weights into a model of :mod:`npa_train.model` (``--pretrained``).

:func:`load_pretrained` takes a local file: a whole segmentation state dict of the same
network, or an ImageNet ResNet's into the backbone (``conv1`` adapted to other band
counts); a file that does not fit is refused naming the missing, unexpected or
mis-shaped keys, and a damaged zip entry is named (:mod:`npa_train.zipcheck`).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from npa_precompute.errors import ParameterError
from npa_train.model import PaperSegmenter, SmallFCN, TorchvisionSegmenter
from npa_train.zipcheck import ZIP_READ_ERRORS, damaged_entry

__all__ = ["load_pretrained"]


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
