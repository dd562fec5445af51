"""The checkpoint format of ``npa-train fit``: writing, reading, rebuilding the model.

A checkpoint is one ``torch.save`` file (``checkpoint.pt``, and ``best.pt`` with
validation during training) holding a dict:

``format``
    :data:`CHECKPOINT_FORMAT`, checked on read.
``config``
    The run record (what ``config.json`` holds): the settings of
    :class:`npa_train.config.TrainConfig` plus what training resolved from the data
    (``classes``, ``num_classes``, ``ignore_index``, ``in_channels``, ``image_dtype``,
    ``image_mean``, ``image_std``, ``store_preset``, ``model_config``, ...).
``model``
    The model's state dict (unwrapped from DDP: it loads in a single process).
``optimizer``, ``scaler``, ``iteration``, ``losses``, ``log_pending``, ``seconds``, ``rng``
    What :class:`npa_train.train.Trainer` needs to resume bit for bit.

Inference (``predict``, ``evaluate``) reads the model and a :class:`ModelInfo` through
:func:`load_model`; nothing here imports the trainer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from npa_train.device import resolve_device
from npa_train.zipcheck import ZIP_READ_ERRORS, damaged_entry

__all__ = [
    "CHECKPOINT_FORMAT",
    "NORMALIZE",
    "CheckpointError",
    "ModelInfo",
    "checkpoint_file",
    "load_checkpoint",
    "load_model",
    "model_info_from_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "verify_checkpoint_file",
]

#: Format tag written into every checkpoint and checked on read.
CHECKPOINT_FORMAT = "npa_train.checkpoint/2"
#: Image normalizations a checkpoint may record (``config["normalize"]``).
NORMALIZE = ("store", "tile")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the data it is applied to."""


def checkpoint_file(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path / "checkpoint.pt"`` when ``path`` is a run folder."""
    path = Path(path)
    return path / "checkpoint.pt" if path.is_dir() else path


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` (tagged with :data:`CHECKPOINT_FORMAT`) to ``path`` atomically.

    The file is written next to ``path`` and renamed over it, so a crash leaves either
    the old checkpoint or the new one, never half of one.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    os.replace(tmp, path)


def verify_checkpoint_file(file: Path) -> None:
    """Check the CRC-32 of every entry of a ``torch.save`` file (a zip archive).

    ``torch.load`` never checks them, so a file with damaged bytes inside a tensor
    (a bad disk, a partial copy) would load silently with other weights. The check reads
    the file once more: measured on a 656 MiB checkpoint (the paper's DeepLabv3 with
    its SGD momentum, page cache warm, a loaded 2-core machine) 1.8 s, against 3.4 s
    for ``torch.load``.

    Raises
    ------
    CheckpointError
        Not a zip archive, an unreadable archive, or an entry whose CRC does not match
        (the message names the file and the entry).
    """
    try:
        bad = damaged_entry(file)
    except ZIP_READ_ERRORS as exc:
        raise CheckpointError(
            f"{file} is not a readable checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if bad is not None:
        raise CheckpointError(
            f"{file} is damaged: the checksum (CRC-32) of its entry {bad!r} does not match its "
            "bytes (a corrupted or partly overwritten file); use another copy or checkpoint"
        )


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint dict (a file or its run folder) and check its format.

    Parameters
    ----------
    path : checkpoint file, or the run folder holding ``checkpoint.pt``
    map_location : as ``torch.load``

    Returns
    -------
    dict with at least ``format``, ``config`` and ``model`` (see the module docstring)

    Raises
    ------
    CheckpointError
        No such file, not a readable ``torch.save`` file, a damaged one (a CRC-32 that
        does not match: :func:`verify_checkpoint_file`), not an ``npa-train``
        checkpoint, or another format version (the message names it).

    Notes
    -----
    Every read (``predict``, ``evaluate``, ``fit --resume``) goes through here, so
    every read verifies the file's checksums first.
    """
    file = checkpoint_file(path)
    if not file.is_file():
        raise CheckpointError(f"no checkpoint at {file}")
    verify_checkpoint_file(file)
    try:
        ckpt = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load raises many kinds (UnpicklingError, struct.error, ...)
        raise CheckpointError(
            f"{file} is not a readable checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(
            f"{file} is not an npa-train checkpoint (no 'model' and 'config' entries)"
        )
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{file} has checkpoint format {ckpt.get('format')!r}; this version of npa-train "
            f"reads {CHECKPOINT_FORMAT!r}"
        )
    return ckpt


def _rebuild(ckpt: dict, path: Path) -> nn.Module:
    from npa_train.model import build_model, parse_model_name

    cfg = ckpt["config"]
    name = parse_model_name(cfg["model"])
    model = build_model(name, **cfg["model_config"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit model {name} {cfg['model_config']}: "
            + " ".join(first)
        ) from exc
    return model


def load_checkpoint(
    path: str | os.PathLike, map_location="cpu", *, expect: dict | None = None
) -> tuple[nn.Module, dict]:
    """Rebuild the model of ``checkpoint.pt`` (a file or its run folder), in eval mode.

    Every model kind of :data:`npa_train.model.MODELS` is rebuilt (the torchvision ones
    need torchvision); in eval mode it returns the logits Tensor ``(N, C, H, W)`` (see
    :mod:`npa_train.model`).

    Parameters
    ----------
    path : checkpoint file or run folder
    map_location : where tensors are loaded (as ``torch.load``); a device string or
        ``torch.device`` also moves the model there
    expect : optional ``{key: value}`` the checkpoint's config must hold (e.g.
        ``{"classes": [...], "in_channels": 3}``)

    Returns
    -------
    (model, ckpt)
        ``ckpt["config"]`` is the run record (see the module docstring);
        ``ckpt["iteration"]`` the iterations done.

    Raises
    ------
    CheckpointError
        No file, not a checkpoint, weights that do not fit the recorded model, or a
        config that differs from ``expect`` (the message names the keys).
    ImportError
        A torchvision model without torchvision.
    """
    file = checkpoint_file(path)
    ckpt = read_checkpoint(file, map_location)
    if expect:
        diff = [f"{k}: checkpoint {ckpt['config'].get(k)!r}, expected {v!r}"
                for k, v in expect.items() if ckpt["config"].get(k) != v]  # fmt: skip
        if diff:
            raise CheckpointError(f"checkpoint {file} does not match: " + "; ".join(diff))
    model = _rebuild(ckpt, file)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.eval()
    return model, ckpt


@dataclass(frozen=True)
class ModelInfo:
    """What inference needs to know about a checkpoint's model and training data.

    Attributes
    ----------
    classes : tuple of str
    num_classes, in_channels : int
    ignore_index : int or None
    image_mean, image_std : tuple of float, per band (normalization ``(x - mean) / std``)
    preset : str or None, the training store's preset
    normalize : {"store", "tile"}
        ``store``: every image is normalized with ``image_mean``/``image_std`` (the
        training tiles' pooled statistics); ``tile``: each image with its own per-band
        mean and std (as the model was trained).
    name : str, a short description for tables (model, loss, weights)
    path : str, the checkpoint file
    image_dtype : str or None
        ``"uint8"`` or ``"uint16"``: the training images' dtype (None in checkpoints that
        predate it, or for training tiles of both dtypes).
    train_tiles, val_tiles : tuple of str
        The training store's tiles the model was trained on, and those it kept for
        validation (``--val-tiles``); empty when the checkpoint does not record them.
    store : str or None, the training store's path
    """

    classes: tuple[str, ...]
    num_classes: int
    in_channels: int
    ignore_index: int | None
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    preset: str | None = None
    name: str = "model"
    normalize: str = "store"
    path: str = ""
    image_dtype: str | None = None
    train_tiles: tuple[str, ...] = ()
    val_tiles: tuple[str, ...] = ()
    store: str | None = None


def _entry(cfg: dict, key: str, types: type | tuple[type, ...] = object):
    value = cfg.get(key)
    return value if value is not None and isinstance(value, types) else None


def _model_name(cfg: dict) -> str:
    parts = [str(_entry(cfg, "model", str) or "model")]
    loss = _entry(cfg, "loss", str)
    if loss:
        parts.append(str(loss))
    weights = _entry(cfg, "weights", str)
    if loss == "npa" and weights:
        parts.append(f"({weights})")
    return " ".join(parts)


def _check_info(cfg: dict, path: str) -> None:
    missing = [k for k in ("num_classes", "in_channels", "image_mean", "image_std")
               if cfg.get(k) is None]  # fmt: skip
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    num_classes, in_channels = int(cfg["num_classes"]), int(cfg["in_channels"])
    classes = cfg.get("classes") or range(num_classes)
    if len(classes) != num_classes:
        raise CheckpointError(
            f"checkpoint {path} names {len(classes)} classes but has num_classes {num_classes}"
        )
    bands = len(cfg["image_mean"]), len(cfg["image_std"])
    if bands != (in_channels, in_channels):
        raise CheckpointError(
            f"checkpoint {path}: image_mean/image_std have {bands[0]}/{bands[1]} bands, "
            f"in_channels is {in_channels}"
        )
    normalize = _entry(cfg, "normalize", str) or "store"
    if normalize not in NORMALIZE:
        raise CheckpointError(
            f"checkpoint {path}: unknown normalize {normalize!r} (this version knows {NORMALIZE})"
        )
    if _entry(cfg, "image_dtype", str) not in (None, "uint8", "uint16"):
        raise CheckpointError(
            f"checkpoint {path}: unknown image_dtype {cfg['image_dtype']!r} (uint8 or uint16)"
        )


def model_info_from_checkpoint(ckpt: dict, path: str = "") -> ModelInfo:
    """Read :class:`ModelInfo` from a checkpoint dict (its ``config`` entry).

    Raises
    ------
    CheckpointError
        No ``config`` entry, or a required entry missing or inconsistent.
    """
    cfg = ckpt.get("config")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"checkpoint {path} has no 'config' entry")
    _check_info(cfg, path)
    num_classes = int(cfg["num_classes"])
    classes = cfg.get("classes") or [f"class_{i}" for i in range(num_classes)]
    ignore = cfg.get("ignore_index")
    return ModelInfo(
        classes=tuple(str(c) for c in classes),
        num_classes=num_classes,
        in_channels=int(cfg["in_channels"]),
        ignore_index=None if ignore is None else int(ignore),
        image_mean=tuple(float(v) for v in cfg["image_mean"]),
        # a zero std (a constant band) would divide by 0
        image_std=tuple(float(v) if float(v) > 1e-6 else 1.0 for v in cfg["image_std"]),
        preset=_entry(cfg, "store_preset", str),
        normalize=_entry(cfg, "normalize", str) or "store",
        name=_model_name(cfg),
        path=str(path),
        image_dtype=_entry(cfg, "image_dtype", str),
        train_tiles=tuple(str(t) for t in _entry(cfg, "tiles", (list, tuple)) or ()),
        val_tiles=tuple(str(t) for t in _entry(cfg, "val_tiles", (list, tuple)) or ()),
        store=_entry(cfg, "store", str),
    )


def load_model(
    checkpoint: str | os.PathLike, *, device: str | torch.device | None = None
) -> tuple[nn.Module, ModelInfo]:
    """Load a checkpoint written by ``npa-train fit`` (a file or its run folder).

    Parameters
    ----------
    checkpoint : path to ``checkpoint.pt`` (or ``best.pt``) or the run folder holding it
    device : {"cpu", "cuda"}, torch.device or None (cuda if available)

    Returns
    -------
    model : torch.nn.Module in eval mode, on ``device``
    info : ModelInfo

    Raises
    ------
    CheckpointError
        No such file, a file that is not a readable ``npa-train`` checkpoint, or a
        model whose library (torchvision) is not installed.
    ValueError
        An unavailable device.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    file = checkpoint_file(checkpoint)
    try:
        model, ckpt = load_checkpoint(file, map_location="cpu")
    except (CheckpointError, KeyError, RuntimeError, TypeError, ImportError) as exc:
        # load_state_dict errors, or a torchvision model without torchvision installed
        raise CheckpointError(f"cannot load checkpoint {file}: {exc}") from exc
    info = model_info_from_checkpoint(ckpt, str(file))
    return model.to(dev).eval(), info
