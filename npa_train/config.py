"""The settings of a training run: :class:`TrainConfig` (parsed once, frozen).

``npa-train fit`` builds one from its options, :func:`npa_train.train.fit` from its
keyword arguments; :class:`npa_train.train.Trainer` runs it. The defaults are the
paper's recipe (Feng et al. 2020, §4.2/§5.1): SGD, momentum 0.9, weight decay 1e-4,
lr 0.01 with poly decay (power 0.9), batch 6, 513 × 513 crops, 5000 iterations,
auxiliary loss weight 0.4 (deep supervision), NPALoss weights k = 32, log10, L = 0.5.

This module imports neither torch nor zarr: the command line reads its defaults from
here without paying for them.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar

from npa_precompute.errors import ParameterError
from npa_precompute.params import (
    check_choice,
    check_int,
    check_number,
    parse_size,
    parse_tiles,
    parse_weights_option,
)
from npa_train.choices import (
    LOSSES,
    SPLITS,
    VAL_METRICS,
    WARP_ON,
    parse_model_name,
    parse_reduction,
)

__all__ = ["AUX_WEIGHT", "MOMENTUM", "POLY_POWER", "WEIGHT_DECAY", "TrainConfig"]

MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
POLY_POWER = 0.9
AUX_WEIGHT = 0.4


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run, checked and in canonical form.

    Parameters (as :func:`npa_train.train.fit`, where each is documented)
    ----------------------------------------------------------------------
    store, out : str, the weight store and the run folder
    weights : str or None
        A weights name; ``"none"`` (or ``""``, any case) for none, kept as ``"none"``;
        None (the default): not given, and :class:`npa_train.train.Trainer` chooses
        (:data:`npa_train.choices.DEFAULT_WEIGHTS` for ``loss="npa"`` when every training
        tile holds it, else none). ``Trainer.weights`` is the name it trains with.
    loss, reduction, model, width, pretrained, aux_weight : the criterion and network
    iters, batch, crop : steps, crops per step (per rank), crop ``(h, w)``
    tiles, val_tiles, split : training/validation tiles (tuples; None: all / none)
    lr, momentum, weight_decay, poly_power : SGD and the poly schedule
    augment, scale, rotation, flip, rotate, blur, normalize : the data
    focal_gamma, dice_smooth : loss parameters
    device, amp, amp_dtype, warp_on, workers : where and how it runs
    threads : torch's CPU threads (``torch.set_num_threads``); None: chosen by
        :func:`npa_train.device.choose_threads` from the usable cores and the loader workers,
        printed once
    seed : int >= 0
    log_every, checkpoint_every, val_every, best_metric : logging, checkpoints and
        validation during training (``val_every`` 0: none; ``best_metric`` one of
        :data:`npa_train.choices.VAL_METRICS`)
    resume, overwrite, progress : the run folder and the progress bar

    Raises
    ------
    ValueError, TypeError (``ParameterError`` naming the argument)
        At construction, for any bad value, before any work.
    """

    store: str
    out: str
    weights: str | None = None
    loss: str = "npa"
    reduction: str = "mean"
    model: str = "small_fcn"
    width: int = 24
    pretrained: str | None = None
    aux_weight: float = AUX_WEIGHT
    iters: int = 5000
    batch: int = 6
    crop: tuple[int, int] | int = 513
    tiles: tuple[str, ...] | None = None
    val_tiles: tuple[str, ...] | None = None
    split: str | None = None
    lr: float = 0.01
    momentum: float = MOMENTUM
    weight_decay: float = WEIGHT_DECAY
    poly_power: float = POLY_POWER
    augment: bool = True
    scale: tuple[float, float] = (0.5, 2.0)  # checked by AugmentConfig
    rotation: float = 10.0
    flip: bool = True
    rotate: bool = False
    blur: float = 0.5
    normalize: str = "store"
    focal_gamma: float = 2.0
    dice_smooth: float = 1.0
    device: str | None = None
    amp: bool | None = None
    amp_dtype: str = "bf16"
    warp_on: str = "auto"
    seed: int = 0
    workers: int | None = None
    threads: int | None = None
    log_every: int = 1
    checkpoint_every: int = 500
    val_every: int = 0
    best_metric: str = "mF1"
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    #: Keys of the run record that a resumed run must share with the checkpoint: the
    #: settings that change what is trained, plus what the data and model resolved to.
    RESUME_KEYS: ClassVar[tuple[str, ...]] = (
        "store", "weights", "loss", "reduction", "model", "model_config", "aux_weight", "iters",
        "batch", "crop", "tiles", "val_tiles", "lr", "momentum", "weight_decay", "poly_power",
        "seed", "augment", "normalize", "classes", "num_classes", "ignore_index", "in_channels",
        "focal_gamma", "dice_smooth", "class_weight",
    )  # fmt: skip

    def __post_init__(self) -> None:
        for name, value in self._parsed().items():
            object.__setattr__(self, name, value)

    def _parsed(self) -> dict[str, Any]:
        check_choice("loss", self.loss, LOSSES)
        reduction = parse_reduction(self.reduction)
        if reduction == "none":
            raise ParameterError("reduction", "'none' gives no scalar loss to train on")
        if self.loss not in ("npa", "focal") and reduction != "mean":
            raise ParameterError(
                "reduction", f"applies to the losses 'npa' and 'focal' only, not {self.loss!r}"
            )
        return {
            "store": str(self.store),
            "out": str(self.out),
            "weights": _weights(self.weights),
            "reduction": reduction,
            "model": parse_model_name(self.model),
            **self._parsed_numbers(),
            "crop": parse_size(self.crop, name="crop"),
            "tiles": _tuple(parse_tiles(self.tiles, name="tiles")),
            "val_tiles": _tuple(parse_tiles(self.val_tiles, name="val_tiles")),
            "split": None if self.split is None else check_choice("split", self.split, SPLITS),
            "warp_on": check_choice("warp_on", self.warp_on, WARP_ON),
            "amp_dtype": check_choice("amp_dtype", self.amp_dtype, ("bf16", "fp16")),
            "best_metric": check_choice("best_metric", self.best_metric, VAL_METRICS),
            "scale": tuple(self.scale) if isinstance(self.scale, (list, tuple)) else self.scale,
            "pretrained": None if self.pretrained is None else str(self.pretrained),
        }

    def _parsed_numbers(self) -> dict[str, Any]:
        workers, threads = self.workers, self.threads
        return {
            "width": check_int("width", self.width, minimum=1),
            "iters": check_int("iters", self.iters, minimum=1),
            "batch": check_int("batch", self.batch, minimum=1),
            "log_every": check_int("log_every", self.log_every, minimum=1),
            "checkpoint_every": check_int("checkpoint_every", self.checkpoint_every, minimum=0),
            "val_every": check_int("val_every", self.val_every, minimum=0),
            "seed": check_int("seed", self.seed, minimum=0),
            "workers": None if workers is None else check_int("workers", workers, minimum=0),
            "threads": None if threads is None else check_int("threads", threads, minimum=1),
            "lr": check_number("lr", self.lr, minimum=0.0, strict=True),
            "momentum": check_number("momentum", self.momentum, minimum=0.0),
            "weight_decay": check_number("weight_decay", self.weight_decay, minimum=0.0),
            "poly_power": check_number("poly_power", self.poly_power, minimum=0.0),
            "aux_weight": check_number("aux_weight", self.aux_weight, minimum=0.0),
        }

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``{name: default}`` of every setting with a default (for the command line)."""
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (tuples as lists)."""
        return {k: _json_ready(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from :meth:`to_dict` output or a run record (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def resume_differences(cls, old: dict, new: dict) -> list[str]:
        """``"key: checkpoint A, now B"`` for each of :attr:`RESUME_KEYS` that differs."""
        return [
            f"{k}: checkpoint {old.get(k)!r}, now {new.get(k)!r}"
            for k in cls.RESUME_KEYS
            if _json_ready(old.get(k)) != _json_ready(new.get(k))
        ]


def _weights(value) -> str | None:
    """None (not given) stays None; an explicit none becomes ``"none"``; else the name."""
    if value is None:
        return None
    return parse_weights_option(value) or "none"


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value
