"""Training loop: :func:`fit` is what ``npa-train fit`` calls.

The paper's recipe (Feng et al. 2020, §4.2/§5.1) is the default: SGD with momentum 0.9
and weight decay 1e-4, base learning rate 0.01 with poly decay
``lr * (1 - it / iters) ** 0.9`` (``it`` counted from 0), batch 6, 513 × 513 crops with
the augmentation of :mod:`npa_train.augment`, 5000 iterations, a fixed seed, and for
models with an auxiliary head deep supervision with weight 0.4 (the same loss and the
same pixel weights on the auxiliary output).

A run folder holds ``config.json`` (the resolved settings, written first), ``log.csv``
(``iteration, lr, loss, aux_loss, seconds``, one row per ``log_every`` iterations; ``loss``
is the total that is minimized, ``aux_loss`` the auxiliary term before weighting) and
``checkpoint.pt`` (every ``checkpoint_every`` iterations, at the end, on Ctrl-C or
SIGTERM, and before stopping on a non-finite loss).

Ctrl-C (SIGINT) or SIGTERM finishes the current iteration, saves the checkpoint and stops
(``fit`` then raises ``KeyboardInterrupt``, or ``_Terminated`` for SIGTERM): a signal only
asks to stop, and the loop stops at the next iteration boundary, so a checkpoint never
holds part of an iteration (BatchNorm statistics of a forward pass, an optimizer step
not yet counted). A second Ctrl-C (or SIGTERM) aborts at once without saving; the last
periodic checkpoint is kept. Under DDP a request on any rank travels with the loss
all-reduce of the step, so all ranks stop after the same iteration. DataLoader workers
ignore both signals (the main process shuts them down).

``resume=True`` continues a run from its ``checkpoint.pt``: model, optimizer, AMP scaler,
RNG states, the iteration and the loss history are restored, rows of ``log.csv`` past
the checkpoint are dropped, and the data continue at the next sample (sample ``i`` is a
function of the seed and ``i`` only), so on the CPU an interrupted (Ctrl-C, SIGTERM, or a
kill after a periodic checkpoint) and resumed run logs the same losses, bit for bit, and
ends with the same weights and BatchNorm buffers as an uninterrupted one
(given the same environment: torch build and number of threads; on CUDA, up to the
rounding of non-deterministic kernels).

Under torchrun (``WORLD_SIZE`` > 1; ``torchrun --nproc-per-node N -m npa_train fit ...``)
:func:`fit` trains with DistributedDataParallel: NCCL on CUDA (rank ``r`` of a node on
``cuda:LOCAL_RANK``), gloo on the CPU. ``batch`` is per rank; the effective batch is
``batch * world_size``, and step ``it`` trains on the samples a single process with that
effective batch would draw at that step, rank ``r`` on the ``r``-th slice
(:func:`rank_sample_indices`), so the ranks' crops are disjoint and a function of (seed,
index) only. DDP averages the gradients, so the loss minimized (and logged, all-reduced)
is the mean of the ranks' losses. ``lr`` is used as given, whatever the world size (no
automatic scaling). Rank 0 alone writes ``config.json``, ``log.csv``, the progress bar
and ``checkpoint.pt`` (the unwrapped model's state dict: it loads in a single process);
every rank reads the checkpoint on ``resume``, which must use the same world size. Torch's
own RNG (dropout) is reseeded from (seed, rank, step) at every step, so on the CPU a
resumed DDP run equals an uninterrupted one bit for bit, too.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from npa_precompute.store import StoreError, list_tiles, open_store, open_tile, store_info
from npa_train.augment import AugmentConfig
from npa_train.data import StoreCropDataset, parse_crop, parse_tiles
from npa_train.loss import LOSSES, build_criterion, median_frequency_weights, parse_reduction
from npa_train.model import (
    TORCHVISION_MODELS,
    build_model,
    load_pretrained,
    model_config,
    parse_model_name,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "LOSSES",
    "SPLITS",
    "WARP_ON",
    "TrainingError",
    "all_reduce_mean",
    "distributed_env",
    "fit",
    "load_checkpoint",
    "poly_lr",
    "rank_sample_indices",
    "resolve_device",
    "resolve_split",
]

MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
POLY_POWER = 0.9
AUX_WEIGHT = 0.4
CHECKPOINT_FORMAT = "npa_train.checkpoint/2"
#: Where the geometric augmentation runs: ``device`` (batched on the training device),
#: ``loader`` (per sample, on the CPU, in the DataLoader workers), ``auto`` (device on
#: CUDA, loader on the CPU).
WARP_ON = ("auto", "device", "loader")
_RUN_FILES = ("config.json", "log.csv", "checkpoint.pt")
_LOG_HEADER = ["iteration", "lr", "loss", "aux_loss", "seconds"]

#: Named tile splits: preset, tile id pattern, train and validation area numbers.
SPLITS = {
    "vaihingen-paper": {
        "preset": "isprs",
        "pattern": "top_mosaic_09cm_area{}",
        "train": (1, 3, 5, 7, 13, 17, 21, 23, 26, 32, 37),
        "val": (11, 15, 28, 30, 34),
    }
}

# Settings that define a run: a resumed run must have the same.
_IDENTITY = (
    "store", "weights", "loss", "reduction", "model", "model_config", "aux_weight", "iters",
    "batch", "crop", "tiles", "val_tiles", "lr", "momentum", "weight_decay", "poly_power",
    "seed", "augment", "normalize", "classes", "num_classes", "ignore_index", "in_channels",
    "focal_gamma", "dice_smooth", "class_weight",
)  # fmt: skip


class TrainingError(RuntimeError):
    """Training stopped (a non-finite loss); the message names the iteration and tiles."""


class _Terminated(BaseException):
    """SIGTERM stopped :func:`fit` (raised after the checkpoint is saved, or to abort)."""


#: A second stop signal within this many seconds of the first is taken for the same
#: request relayed (a wrapper that forwards the terminal's Ctrl-C), not a request to abort.
_REPEAT_S = 1.0


class _StopSignals:
    """SIGINT and SIGTERM while :func:`fit` trains (a context manager; main thread only).

    The first signal only records the request (``signum``): the loop stops at the next
    iteration boundary, so a checkpoint never holds part of an iteration (BatchNorm
    statistics of a forward pass, an optimizer step without its bookkeeping). A later
    one, at least :data:`_REPEAT_S` after it, aborts at once: ``KeyboardInterrupt`` for
    SIGINT, :class:`_Terminated` for SIGTERM. A SIGINT that is ignored (a background job)
    stays ignored; outside the main thread nothing is installed.
    """

    def __init__(self, announce: bool) -> None:
        self.signum: int | None = None
        self.announce = announce
        self._at = 0.0
        self._old: dict = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                if s == signal.SIGINT and signal.getsignal(s) is signal.SIG_IGN:
                    continue
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, signal.SIG_DFL if old is None else old)
        self._old.clear()

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._at = signum, now
            if self.announce:  # os.write: no buffered stream is re-entered from a handler
                name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
                os.write(
                    2,
                    f"\n{name}: stopping after the current iteration, then saving the "
                    "checkpoint; press Ctrl-C again to abort without saving\n".encode(),
                )
            return
        if now - self._at < _REPEAT_S:
            return
        raise KeyboardInterrupt if signum == signal.SIGINT else _Terminated()


def poly_lr(base_lr: float, it: int, iters: int, power: float = POLY_POWER) -> float:
    """Poly learning rate ``base_lr * (1 - it / iters) ** power`` for step ``it`` (from 0)."""
    return base_lr * (1.0 - it / iters) ** power


def resolve_device(device: str | None) -> torch.device:
    """``None`` -> cuda if available else cpu; ``"cuda"`` unavailable -> ValueError.

    Raises
    ------
    ValueError
        Unknown device string, or a CUDA device requested on a machine without one.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"`device` must be 'cpu' or 'cuda', got {device!r}") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"`device` must be 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "`device` 'cuda' was requested but CUDA is not available (torch "
                f"{torch.__version__}, built with CUDA {torch.version.cuda}); use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"`device` {device!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    return dev


def _int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _number(name: str, value, *, minimum: float = 0.0, strict: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.number))
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        op = ">" if strict else ">="
        raise ValueError(f"`{name}` must be a finite number {op} {minimum}, got {value!r}")
    return value


def resolve_split(
    store: str | os.PathLike,
    *,
    tiles: str | Sequence[str] | None = None,
    val_tiles: str | Sequence[str] | None = None,
    split: str | None = None,
) -> tuple[list[str] | None, list[str]]:
    """Training and validation tile ids from explicit lists or a named split.

    Parameters
    ----------
    store : weight store
    tiles : training tiles (list or comma-separated); None: every complete tile not in
        ``val_tiles``
    val_tiles : validation tiles (recorded in the run for evaluation, never trained on)
    split : a name of :data:`SPLITS` (e.g. ``"vaihingen-paper"``) instead of the lists

    Returns
    -------
    (train tiles or None for "all complete tiles", validation tiles)

    Raises
    ------
    ValueError
        Unknown split, a split together with explicit lists, a split for another preset,
        or a tile both in training and validation.
    StoreError
        Tiles of the split or of ``val_tiles`` missing from the store (the message lists
        the missing ones and the tiles present); an incomplete validation tile.
    """
    tiles, val = parse_tiles(tiles), parse_tiles(val_tiles) or []
    root = open_store(store)
    present = list_tiles(root)
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {tuple(SPLITS)}, got {split!r}")
        if tiles or val:
            raise ValueError("give either `split` or explicit train/validation tiles, not both")
        spec = SPLITS[split]
        preset = store_info(root).get("preset")
        if preset != spec["preset"]:
            raise ValueError(
                f"split {split!r} is for stores made with the {spec['preset']!r} preset; "
                f"{store} was made with {preset!r}"
            )
        tiles = [spec["pattern"].format(n) for n in spec["train"]]
        val = [spec["pattern"].format(n) for n in spec["val"]]
        missing = [t for t in tiles + val if t not in present]
        if missing:
            raise StoreError(
                f"split {split!r} needs {len(missing)} tile(s) missing from {store}: "
                f"{', '.join(missing)}; the store holds: {', '.join(present) or 'none'}"
            )
    unknown = [t for t in val if t not in present]
    if unknown:
        raise StoreError(
            f"validation tile(s) {', '.join(unknown)} not in the store; tiles: "
            f"{', '.join(present) or 'none'}"
        )
    for t in val:
        open_tile(root, t)  # IncompleteTileError for an unfinished tile
    if tiles is not None:
        both = sorted(set(tiles) & set(val))
        if both:
            raise ValueError(f"tile(s) {', '.join(both)} are in both training and validation")
    elif val:
        tiles = [t for t in list_tiles(root, complete_only=True) if t not in val]
        if not tiles:
            raise StoreError(f"no complete tile of {store} is left for training besides {val}")
    return tiles, val


def _available_weights(store: str | os.PathLike, tiles: list[str] | None) -> list[str]:
    root = open_store(store)
    ids = tiles or list_tiles(root, complete_only=True)
    names: set[str] | None = None
    for t in ids:
        try:
            have = set(open_tile(root, t).weight_names)
        except StoreError:
            continue
        names = have if names is None else names & have
    return sorted(names or ())


def _worker_init(worker_id: int) -> None:
    # Crops are a function of (seed, index), not of worker RNG state; the workers' own
    # generators are still seeded distinctly (torch gives each worker base_seed + id,
    # base_seed drawn from the loader's seeded generator) for any other randomness.
    import random

    torch.set_num_threads(1)
    # the main process handles Ctrl-C and SIGTERM (at an iteration boundary) and then shuts
    # the workers down; the terminal's Ctrl-C and torchrun's killpg reach the workers too
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)  # noqa: NPY002 - seeds the legacy global state other code may use


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _legacy_config(ckpt: dict) -> dict:
    """Config of a checkpoint written by the first version of the trainer."""
    args = dict(ckpt.get("args") or {})
    return {
        **args,
        "model": "small_fcn",
        "model_config": dict(ckpt["model_config"]),
        "classes": ckpt.get("classes", args.get("classes")),
        "num_classes": ckpt.get("num_classes", args.get("num_classes")),
        "ignore_index": ckpt.get("ignore_index", args.get("ignore_index")),
        "in_channels": ckpt.get("in_channels", args.get("in_channels")),
        "image_mean": ckpt.get("image_mean", args.get("image_mean")),
        "image_std": ckpt.get("image_std", args.get("image_std")),
        "store_preset": args.get("store_preset"),
    }


def _read_checkpoint(path: Path, map_location) -> dict:
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not an npa-train checkpoint (no 'model' entry)")
    if "config" not in ckpt:
        if "model_config" not in ckpt:
            raise ValueError(f"{path} is not an npa-train checkpoint (no 'config' entry)")
        ckpt["config"] = _legacy_config(ckpt)
    return ckpt


def _rebuild(ckpt: dict, path: Path) -> nn.Module:
    cfg = ckpt["config"]
    name = parse_model_name(cfg["model"])
    model = build_model(name, **cfg["model_config"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise ValueError(
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
        ``ckpt["config"]`` holds ``classes``, ``num_classes``, ``ignore_index``,
        ``in_channels``, ``image_mean``, ``image_std``, ``store_preset``, ``model`` (name),
        ``model_config``, ``weights``, ``loss``, ``crop``, ``tiles``, ``val_tiles``, ...;
        ``ckpt["iteration"]`` the iterations done.

    Raises
    ------
    ValueError
        No file, not a checkpoint, weights that do not fit the recorded model, or a
        config that differs from ``expect`` (the message names the keys).
    ImportError
        A torchvision model without torchvision.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    ckpt = _read_checkpoint(path, map_location)
    if expect:
        diff = [f"{k}: checkpoint {ckpt['config'].get(k)!r}, expected {v!r}"
                for k, v in expect.items() if ckpt["config"].get(k) != v]  # fmt: skip
        if diff:
            raise ValueError(f"checkpoint {path} does not match: " + "; ".join(diff))
    model = _rebuild(ckpt, path)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.eval()
    return model, ckpt


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def _read_log(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[1:] if rows and rows[0] == _LOG_HEADER else []


# ---- distributed (torchrun) ----------------------------------------------------------------------
def distributed_env() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the environment torchrun sets.

    Outside torchrun (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``) this is ``(0, 0, 1)``.

    Returns
    -------
    (rank, local_rank, world_size) : tuple of int

    Raises
    ------
    ValueError
        ``WORLD_SIZE``, ``RANK`` or ``LOCAL_RANK`` not a non-negative integer, ``RANK`` or
        ``LOCAL_RANK`` missing while ``WORLD_SIZE`` > 1, or ``RANK`` >= ``WORLD_SIZE`` (the
        message names the variable).
    """

    def read(name: str, default: str | None) -> int:
        text = os.environ.get(name, default)
        if text is None:
            raise ValueError(f"`{name}` is not set but WORLD_SIZE is {world}; start with torchrun")
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"`{name}` must be a non-negative integer, got {text!r}")
        return value

    world = read("WORLD_SIZE", "1")
    if world <= 1:
        return 0, 0, 1
    rank, local_rank = read("RANK", None), read("LOCAL_RANK", None)
    if rank >= world:
        raise ValueError(f"`RANK` must be < WORLD_SIZE {world}, got {rank}")
    return rank, local_rank, world


class _Dist:
    """This process's place in a DDP run (``world_size`` 1: a plain single-process run)."""

    def __init__(self, rank=0, local_rank=0, world_size=1, backend=None, owned=False, device=None):
        self.rank, self.local_rank, self.world_size = rank, local_rank, world_size
        self.backend, self.owned, self.device = backend, owned, device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            if self.backend == "nccl":
                torch.distributed.barrier(device_ids=[self.device.index])
            else:
                torch.distributed.barrier()

    def close(self) -> None:
        if self.owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owned = False


def _start_distributed(dev: torch.device) -> _Dist:
    """Join (or, under torchrun, create) the default process group; pick this rank's device."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        backend, owned = dist.get_backend(), False
    else:
        rank, local_rank, world = distributed_env()
        backend, owned = ("nccl" if dev.type == "cuda" else "gloo"), True
    if world == 1:
        return _Dist(device=dev)
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE is {world} but this torch build has no torch.distributed")
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(
                f"`LOCAL_RANK` {local_rank} needs device cuda:{local_rank} but only {count} CUDA "
                f"device(s) are present; start at most {count} processes per node "
                "(torchrun --nproc-per-node)"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if owned:
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return _Dist(rank, local_rank, world, backend, owned, dev)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the ranks of the default process group.

    Parameters
    ----------
    values : Tensor, any shape, floating dtype (float64 recommended: the mean of float32
        values is then exact for two ranks); on the CPU for gloo, on the rank's GPU for NCCL

    Returns
    -------
    Tensor
        A new tensor of the same shape and dtype: the elementwise sum over the ranks divided
        by the world size; a copy of ``values`` outside a process group (or with one rank).
        A collective: every rank must call it.

    Raises
    ------
    TypeError
        ``values`` not a floating-point tensor.
    """
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        raise TypeError(f"`values` must be a floating-point Tensor, got {values!r}")
    out = values.detach().clone()
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return out
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def rank_sample_indices(iteration: int, batch: int, rank: int = 0, world_size: int = 1) -> range:
    """Dataset indices rank ``rank`` trains on at step ``iteration`` (counted from 0).

    Step ``iteration`` of a run on ``world_size`` processes with ``batch`` crops per rank
    uses the global batch of samples ``iteration * world_size * batch`` up to (excluding)
    ``(iteration + 1) * world_size * batch``, which is the batch a single process with
    ``batch * world_size`` crops per step draws; rank ``r`` takes the ``r``-th slice of it.
    So the ranks' crops are disjoint, depend on (seed, index) only and a resumed run
    continues every rank's stream. With ``world_size=1`` this is ``fit``'s stream.

    Parameters
    ----------
    iteration : int >= 0
    batch : int >= 1, crops per rank and step
    rank : int, 0 <= rank < world_size
    world_size : int >= 1

    Returns
    -------
    range of ``batch`` ints

    Raises
    ------
    ValueError
        An argument out of range (named).
    """
    iteration = _int("iteration", iteration, minimum=0)
    batch = _int("batch", batch)
    world_size = _int("world_size", world_size)
    rank = _int("rank", rank, minimum=0)
    if rank >= world_size:
        raise ValueError(f"`rank` must be < world_size {world_size}, got {rank}")
    first = (iteration * world_size + rank) * batch
    return range(first, first + batch)


class _RankSampler:
    """Indices of steps ``start .. iters - 1`` for one rank (:func:`rank_sample_indices`)."""

    def __init__(self, start: int, iters: int, batch: int, rank: int, world_size: int) -> None:
        self.start, self.iters, self.batch = start, iters, batch
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        for it in range(self.start, self.iters):
            yield from rank_sample_indices(it, self.batch, self.rank, self.world_size)

    def __len__(self) -> int:
        return (self.iters - self.start) * self.batch


def _step_seed(seed: int, rank: int, iteration: int) -> int:
    """Torch seed of one rank's step in a DDP run (dropout etc.; not the crops)."""
    return int(np.random.SeedSequence([seed, rank, iteration]).generate_state(1, np.uint64)[0])


def fit(
    store: str | os.PathLike,
    out: str | os.PathLike,
    *,
    weights: str | None = None,
    loss: str = "npa",
    reduction: str = "mean",
    model: str = "small_fcn",
    width: int = 24,
    pretrained: str | os.PathLike | None = None,
    aux_weight: float = AUX_WEIGHT,
    iters: int = 5000,
    batch: int = 6,
    crop: int | Sequence[int] = 513,
    tiles: str | Sequence[str] | None = None,
    val_tiles: str | Sequence[str] | None = None,
    split: str | None = None,
    lr: float = 0.01,
    momentum: float = MOMENTUM,
    weight_decay: float = WEIGHT_DECAY,
    poly_power: float = POLY_POWER,
    augment: bool = True,
    scale: Sequence[float] = (0.5, 2.0),
    rotation: float = 10.0,
    flip: bool = True,
    rotate: bool = False,
    blur: float = 0.5,
    normalize: str = "store",
    focal_gamma: float = 2.0,
    dice_smooth: float = 1.0,
    device: str | None = None,
    amp: bool | None = None,
    amp_dtype: str = "bf16",
    warp_on: str = "auto",
    seed: int = 0,
    workers: int | None = None,
    log_every: int = 1,
    checkpoint_every: int = 500,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callback: Callable[[int, float, float], None] | None = None,
) -> dict:
    """Train a segmentation model on augmented crops of a weight store; write a run folder.

    Parameters
    ----------
    store : weight store written by ``npa-precompute run --images ...``
    out : run folder (created; refused if it already holds a run, unless ``overwrite`` or
        ``resume``)
    weights : weights array name (e.g. ``"k32_log10_L0.5"``) for ``loss="npa"``, or
        ``"online:k32_log10_L0.5"``: the same weights computed on the device from each
        augmented crop's label (:class:`npa_train.data.StoreCropDataset`); None (or
        ``"none"``) for the other losses
    loss : one of :data:`npa_train.loss.LOSSES`
        ``npa`` (stored weights), ``ce``, ``ce-weighted`` (median-frequency class weights
        from the training tiles' ``class_pixels``, background classes at the lowest of the
        others), ``focal`` (gamma ``focal_gamma``), ``dice``.
    reduction : ``npa``/``focal`` reduction (default ``"mean"``; not ``"none"``)
    model : one of :data:`npa_train.model.MODELS` (default ``small_fcn``)
    width : first-stage width of ``small_fcn``
    pretrained : local weights file for the model (:func:`npa_train.model.load_pretrained`)
    aux_weight : weight of the auxiliary loss of torchvision models (default 0.4; 0 builds
        the model without its auxiliary head)
    iters, batch, crop : optimizer steps (5000), crops per step (6), crop size (513)
    tiles, val_tiles, split : see :func:`resolve_split`
    lr, momentum, weight_decay, poly_power : SGD and poly schedule (0.01, 0.9, 1e-4, 0.9)
    augment : False: only random crop positions (no resize, rotation, mirror, blur)
    scale, rotation, flip, rotate, blur : resize range (0.5, 2.0), max angle (10°),
        random mirrors, random transposes, blur probability (0.5)
    normalize : ``"store"`` (pooled mean/std of the training tiles) or ``"tile"``
    focal_gamma, dice_smooth : loss parameters (2, 1)
    device : ``"cpu"``, ``"cuda"`` or None (cuda if available)
    amp : mixed precision (CUDA only); None: on for CUDA. The loss is computed in float32
    amp_dtype : ``"bf16"`` (default; fp16 where bf16 is unsupported) or ``"fp16"`` (with a
        gradient scaler)
    warp_on : one of :data:`WARP_ON`
    seed : seeds torch and every sample's augmentation
    workers : DataLoader workers; None: 0 on the CPU, ``min(8, cores - 1)`` with CUDA
    log_every : a ``log.csv`` row (mean of the iterations since the last row) every this
        many iterations; the last iteration is always logged
    checkpoint_every : also save ``checkpoint.pt`` every this many iterations (0: only at
        the end)
    resume : continue the run in ``out`` from its checkpoint (same settings required)
    overwrite : replace an existing run in ``out``
    progress : tqdm progress bar with loss and lr
    callback : ``callback(iteration, lr, loss)`` after each step (on every rank under DDP,
        with the loss averaged over the ranks); an exception it raises stops the run, and
        a ``KeyboardInterrupt`` from it saves the checkpoint of that step first

    Under torchrun (``WORLD_SIZE`` > 1, or an initialized default process group) this
    trains with DistributedDataParallel: see the module docstring. ``device`` then picks
    the device type only: rank ``r`` uses ``cuda:LOCAL_RANK``. A process group that
    ``fit`` creates is destroyed when it returns or raises; one that exists already is
    used and left as it is. ``config.json`` and the checkpoint record ``world_size``,
    ``effective_batch`` (``batch * world_size``) and ``distributed_backend``.

    Returns
    -------
    dict
        ``iterations`` (done in total), ``seconds`` and ``iterations_per_s`` (this
        session), ``first_loss`` and ``last_loss`` (mean total loss of the first and last
        ``min(10, iters)`` iterations), ``final_lr``, ``device``, ``out``, ``log``,
        ``checkpoint``, ``resumed_from`` (iteration, or None), ``world_size``, ``rank``.

    Raises
    ------
    ValueError
        Bad arguments (named); a weights name missing for ``npa`` or given for another
        loss (the message lists the store's weights); an unavailable device; an existing
        run in ``out``; ``resume`` without a checkpoint, or with other settings, another
        model/classes or another world size than the checkpoint (the message names them);
        bad torchrun variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``) or a
        ``LOCAL_RANK`` without its CUDA device.
    StoreError
        Missing store, unknown/incomplete tile, no images, unknown weights name (the
        message lists those available), split tiles missing.
    TrainingError
        A non-finite loss; the message names the iteration and the batch's tiles, and
        the checkpoint of the last finite step is saved first.
    KeyboardInterrupt, npa_train.train._Terminated
        Ctrl-C or SIGTERM (see the module docstring; signals are handled when ``fit``
        runs in the main thread). The exception carries ``checkpoint_iteration`` (the
        iteration ``checkpoint.pt`` holds, None if none was saved) and ``partial``
        (False: stopped after a completed iteration, which was saved; True: aborted
        inside an iteration, which was not).
    ImportError
        A torchvision model without torchvision.
    """
    # ---- validate everything before any work ------------------------------------------------
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}, got {loss!r}")
    if isinstance(weights, str) and weights.strip().lower() in ("", "none"):
        weights = None
    model_name = parse_model_name(model)
    iters = _int("iters", iters)
    batch = _int("batch", batch)
    crop = parse_crop(crop)
    log_every = _int("log_every", log_every)
    checkpoint_every = _int("checkpoint_every", checkpoint_every, minimum=0)
    seed = _int("seed", seed, minimum=0)
    lr = _number("lr", lr, strict=True)
    momentum = _number("momentum", momentum)
    weight_decay = _number("weight_decay", weight_decay)
    poly_power = _number("poly_power", poly_power)
    aux_weight = _number("aux_weight", aux_weight)
    reduction = parse_reduction(reduction)
    if reduction == "none":
        raise ValueError("`reduction` 'none' gives no scalar loss to train on")
    if loss not in ("npa", "focal") and reduction != "mean":
        raise ValueError(f"`reduction` applies to `loss` 'npa' and 'focal' only, not {loss!r}")
    if warp_on not in WARP_ON:
        raise ValueError(f"`warp_on` must be one of {WARP_ON}, got {warp_on!r}")
    if amp_dtype not in ("bf16", "fp16"):
        raise ValueError(f"`amp_dtype` must be 'bf16' or 'fp16', got {amp_dtype!r}")
    if model_name.startswith("deeplabv3") and batch < 2:
        raise ValueError("`batch` must be >= 2 for DeepLabV3 (batch norm in its pooling branch)")
    aug = AugmentConfig.from_options(crop, augment=augment, scale=scale, rotation=rotation,
                                     flip=flip, rotate=rotate, blur=blur)  # fmt: skip
    dev = resolve_device(device)
    env_rank, _, env_world = distributed_env()
    if amp is None:
        amp = dev.type == "cuda"
    if amp and dev.type != "cuda":
        raise ValueError("`amp` (mixed precision) needs --device cuda")
    if workers is None:
        cores = os.cpu_count() or 1
        if env_world > 1:  # the node's cores are shared by its ranks
            local = os.environ.get("LOCAL_WORLD_SIZE", "1")
            cores //= max(int(local), 1) if local.isdigit() else 1
        workers = min(8, max(cores - 1, 0)) if dev.type == "cuda" else 0
    workers = _int("workers", workers, minimum=0)
    if warp_on == "auto":
        warp_on = "device" if dev.type == "cuda" else "loader"
    if pretrained is not None and not Path(pretrained).is_file():
        raise ValueError(f"`pretrained` file {pretrained} does not exist")
    open_store(store)  # StoreError early for a missing store
    train_tiles, val = resolve_split(store, tiles=tiles, val_tiles=val_tiles, split=split)
    if loss == "npa" and weights is None:
        names = _available_weights(store, train_tiles)
        raise ValueError(
            "`loss` 'npa' needs a weights name (--weights); available in the store: "
            f"{', '.join(names) or 'none'}; or computed from the augmented labels: "
            "online:k32_log10_L0.5 (any k<K>_<transform>)"
        )
    if loss != "npa" and weights is not None:
        raise ValueError(
            f"`loss` {loss!r} uses no stored weights, got `weights` {weights!r}; "
            "pass --weights none, or --loss npa to train with them"
        )
    out = Path(out)
    ckpt_path = out / "checkpoint.pt"
    existing = [f for f in _RUN_FILES if (out / f).exists()]
    if resume and not ckpt_path.is_file():
        raise ValueError(f"--resume: no checkpoint.pt in {out} to resume from")
    if existing and not (overwrite or resume):
        raise ValueError(
            f"{out} already holds a run ({', '.join(existing)}); choose another --out, pass "
            "--resume to continue it or --overwrite to replace it"
        )

    if train_tiles is None:
        root = open_store(store)
        unfinished = sorted(set(list_tiles(root)) - set(list_tiles(root, complete_only=True)))
        if unfinished and env_rank == 0:
            warnings.warn(
                f"skipping incomplete tile(s) {', '.join(unfinished)} of {store} (their writing "
                "did not finish; re-run `npa-precompute run` to complete them)",
                stacklevel=2,
            )

    ddp = _start_distributed(dev)
    dev = ddp.device
    try:
        # ---- data, model, optimizer --------------------------------------------------------
        world = ddp.world_size
        torch.manual_seed(seed)
        dataset = StoreCropDataset(
            store, weights, augment=aug, tiles=train_tiles, length=iters * batch * world,
            seed=seed, normalize=normalize, output="window" if warp_on == "device" else "crop",
        )  # fmt: skip
        info = dataset.info
        class_weight = None
        if loss == "ce-weighted":
            if dataset.class_pixels.sum() == 0:
                raise StoreError(
                    "`loss` 'ce-weighted' needs the tiles' class_pixels attrs (pixels per class), "
                    f"which the training tiles of {store} lack or hold only zeros; re-run "
                    "`npa-precompute run` to write them"
                )
            fg = info.get("foreground_classes") or list(range(dataset.num_classes))
            background = [c for c in range(dataset.num_classes) if c not in fg]
            class_weight = median_frequency_weights(
                dataset.class_pixels, background=background
            ).tolist()
        net = build_model(model_name, in_channels=dataset.in_channels,
                          num_classes=dataset.num_classes, aux=aux_weight > 0,
                          width=width)  # fmt: skip
        has_aux = getattr(net, "aux_classifier", None) is not None
        pretrained_report = None
        if pretrained is not None and not resume:
            pretrained_report = load_pretrained(net, pretrained)
        net.to(dev)
        channels_last = dev.type == "cuda" and model_name in TORCHVISION_MODELS
        if channels_last:
            net.to(memory_format=torch.channels_last)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
        optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum,
                                    weight_decay=weight_decay)  # fmt: skip
        criterion = build_criterion(loss, ignore_index=dataset.ignore_index, reduction=reduction,
                                    class_weight=class_weight, gamma=focal_gamma,
                                    smooth=dice_smooth).to(dev)  # fmt: skip
        amp_torch_dtype = torch.bfloat16 if amp_dtype == "bf16" else torch.float16
        if amp and amp_dtype == "bf16" and not torch.cuda.is_bf16_supported():
            amp_torch_dtype = torch.float16
        scaler = torch.amp.GradScaler(
            "cuda", enabled=bool(amp) and amp_torch_dtype == torch.float16
        )

        config = {
            "store": str(Path(store).resolve()),
            "weights": weights,
            "loss": loss,
            "reduction": reduction,
            "model": model_name,
            "model_config": model_config(net),
            "aux_weight": aux_weight if has_aux else 0.0,
            "pretrained": str(Path(pretrained).resolve()) if pretrained is not None else None,
            "pretrained_report": pretrained_report,
            "iters": iters,
            "batch": batch,
            "world_size": world,
            "effective_batch": batch * world,
            "distributed_backend": ddp.backend,
            "crop": list(crop),
            "tiles": dataset.tiles,
            "val_tiles": val,
            "split": split,
            "lr": lr,
            "lr_schedule": f"poly, power {poly_power}",
            "momentum": momentum,
            "weight_decay": weight_decay,
            "poly_power": poly_power,
            "augment": aug.to_dict(),
            "normalize": normalize,
            "focal_gamma": focal_gamma if loss == "focal" else None,
            "dice_smooth": dice_smooth if loss == "dice" else None,
            "class_weight": class_weight,
            "device": str(dev),
            "amp": bool(amp),
            "amp_dtype": str(amp_torch_dtype).replace("torch.", "") if amp else None,
            "warp_on": warp_on,
            "seed": seed,
            "workers": workers,
            "log_every": log_every,
            "checkpoint_every": checkpoint_every,
            "classes": dataset.classes,
            "num_classes": dataset.num_classes,
            "ignore_index": dataset.ignore_index,
            "in_channels": dataset.in_channels,
            "image_mean": dataset.mean.tolist(),
            "image_std": dataset.std.tolist(),
            "store_preset": info.get("preset"),
            "torch_version": str(torch.__version__),
        }

        start, losses, pending, seconds0, resumed_from = 0, [], [], 0.0, None
        if resume:
            # every rank reads the checkpoint (the run folder is on a file system they share)
            ckpt = _read_checkpoint(ckpt_path, "cpu")
            old = ckpt["config"]
            old_world = int(old.get("world_size") or 1)
            if old_world != world:
                raise ValueError(
                    f"--resume: the run in {out} was trained with world size {old_world} "
                    f"(processes), it is now started with world size {world}; resume it with "
                    f"{old_world} process(es) (torchrun --nnodes x --nproc-per-node): the world "
                    f"size fixes the effective batch ({batch} x {old_world}) and the crops of "
                    "each step"
                )
            diff = [
                f"{k}: checkpoint {old.get(k)!r}, now {config.get(k)!r}"
                for k in _IDENTITY
                if _json_ready(old.get(k)) != _json_ready(config.get(k))
            ]
            if diff:
                raise ValueError(
                    f"--resume: the run in {out} was made with other settings; pass the same "
                    "options as the first time, or start a new run. Differences: " + "; ".join(diff)
                )
            try:
                net.load_state_dict(ckpt["model"])
            except RuntimeError as exc:
                raise ValueError(
                    f"--resume: checkpoint weights do not fit the model: {exc}"
                ) from exc
            optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            rng = ckpt.get("rng") or {}
            if rng.get("torch") is not None:
                torch.set_rng_state(rng["torch"])
            if dev.type == "cuda" and rng.get("cuda") and world == 1:
                torch.cuda.set_rng_state_all(list(rng["cuda"]))
            start = int(ckpt["iteration"])
            losses = [float(x) for x in ckpt.get("losses", [])]
            pending = [
                (float(a), None if x is None else float(x)) for a, x in ckpt.get("log_pending", [])
            ]
            seconds0 = float(ckpt.get("seconds", 0.0))
            resumed_from = start
            config["pretrained_report"] = old.get("pretrained_report")
            config["pretrained"] = old.get("pretrained")
        else:
            ddp.barrier()  # every rank has checked --out before rank 0 writes to it
            if ddp.main:
                out.mkdir(parents=True, exist_ok=True)
                for f in _RUN_FILES:
                    (out / f).unlink(missing_ok=True)
                (out / "config.json").write_text(json.dumps(_json_ready(config), indent=2) + "\n")

        saved_at = start if resume else None  # the iteration checkpoint.pt holds

        def checkpoint(iteration: int, elapsed: float) -> None:
            # rank 0 writes; the model, optimizer, scaler and logged losses are the same on
            # every rank (DDP averages the gradients; the losses are all-reduced), and under
            # DDP each step reseeds torch from (seed, rank, step), so nothing else is needed
            nonlocal saved_at
            if not ddp.main:
                saved_at = iteration  # what rank 0 saves
                return
            _save_atomic(
                {
                    "format": CHECKPOINT_FORMAT,
                    "config": config,
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                    "iteration": iteration,
                    "losses": list(losses),
                    "log_pending": list(pending),
                    "seconds": elapsed,
                    "rng": {
                        "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if dev.type == "cuda" else [],
                    },
                },
                ckpt_path,
            )
            saved_at = iteration

        # keep the log rows up to the checkpoint; rows after it are recomputed identically
        rows = []
        if resume and ddp.main:
            rows = [r for r in _read_log(out / "log.csv") if r and int(r[0]) <= start]
        summary_base = {"device": str(dev), "out": str(out), "log": str(out / "log.csv"),
                        "checkpoint": str(ckpt_path), "resumed_from": resumed_from,
                        "world_size": world, "rank": ddp.rank}  # fmt: skip
        if start >= iters:
            final_lr = poly_lr(lr, iters - 1, iters, poly_power)
            return _summary(losses, 0, 0.0, final_lr, summary_base)

        if world == 1:
            sampler, loader_seed = range(start * batch, iters * batch), seed * 1_000_003 + start
        else:
            sampler = _RankSampler(start, iters, batch, ddp.rank, world)
            loader_seed = _step_seed(seed * 1_000_003 + start, ddp.rank, 0)
        loader = DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            num_workers=workers,
            collate_fn=dataset.collate,
            drop_last=True,
            pin_memory=dev.type == "cuda",
            worker_init_fn=_worker_init if workers else None,
            generator=torch.Generator().manual_seed(loader_seed),
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
        )
        model = net
        if world > 1:
            # after the resume: DDP broadcasts rank 0's parameters and buffers at construction
            model = nn.parallel.DistributedDataParallel(
                net, device_ids=[dev.index] if dev.type == "cuda" else None
            )

        # ---- loop ----------------------------------------------------------------------------
        from tqdm import tqdm

        aux_w = aux_weight if has_aux else 0.0
        net.train()
        t0 = time.perf_counter()
        bar = tqdm(total=iters, initial=start, desc="fit", unit="it",
                   disable=not (progress and ddp.main), dynamic_ncols=True)  # fmt: skip
        cur_lr = lr
        done = start
        # `whole`: model, optimizer, RNG and log are those of `done` completed iterations
        # (false from the start of an iteration until its bookkeeping is done)
        whole = True
        stopped = None  # (interrupted, terminated) once the loop stops on a request
        stop_errors = (KeyboardInterrupt, _Terminated)
        if world > 1:  # a collective broken by a rank that stopped ("Connection closed by peer")
            stop_errors += (RuntimeError,)
        log_file = open(out / "log.csv", "w", newline="") if ddp.main else None
        # a stop signal is a request (see _StopSignals): the loop ends at the boundary of an
        # iteration; under DDP the requests ride on the loss all-reduce of each step, so
        # every rank stops after the same one
        signals = _StopSignals(announce=ddp.main).__enter__()
        try:
            with log_file if log_file is not None else contextlib.nullcontext():
                log = csv.writer(log_file) if log_file is not None else None
                if log is not None:
                    log.writerow(_LOG_HEADER)
                    log.writerows(rows)
                    log_file.flush()
                for it, sample in enumerate(loader, start=start):
                    whole = False
                    iteration = it + 1
                    if world > 1:
                        torch.manual_seed(_step_seed(seed, ddp.rank, it))
                    cur_lr = poly_lr(lr, it, iters, poly_power)
                    for group in optimizer.param_groups:
                        group["lr"] = cur_lr
                    b = dataset.warp(sample, dev)
                    image = b["image"]
                    if channels_last:
                        image = image.contiguous(memory_format=torch.channels_last)
                    weight = b["weight"] if loss == "npa" else None
                    with torch.autocast(device_type=dev.type, dtype=amp_torch_dtype,
                                        enabled=bool(amp)):  # fmt: skip
                        output = model(image)
                    if isinstance(output, dict):
                        main_out, aux_out = output["out"], output.get("aux")
                    else:
                        main_out, aux_out = output, None
                    value = criterion(main_out.float(), b["label"], weight)
                    aux_value = None
                    if aux_out is not None and aux_w > 0:
                        aux_value = criterion(aux_out.float(), b["label"], weight)
                        value = value + aux_w * aux_value
                    if world > 1:
                        # the mean over the ranks: what DDP's averaged gradient minimizes;
                        # with it, whether any rank was asked to stop (Ctrl-C, SIGTERM)
                        both = [value, value if aux_value is None else aux_value]
                        asked = signals.signum
                        flags = value.new_tensor(
                            [asked == signal.SIGINT, asked == signal.SIGTERM], dtype=torch.float64
                        )
                        mean = all_reduce_mean(
                            torch.cat([torch.stack(both).detach().double(), flags])
                        ).tolist()
                        loss_value = mean[0]
                        aux_float = mean[1] if aux_value is not None else None
                        requested = (mean[2] > 0, mean[3] > 0)
                    else:
                        loss_value = float(value.detach())
                        aux_float = float(aux_value.detach()) if aux_value is not None else None
                    if not math.isfinite(loss_value):  # the same on every rank
                        if log_file is not None:
                            log_file.flush()
                        checkpoint(it, seconds0 + time.perf_counter() - t0)
                        idx = b["index"].tolist()
                        where = f" on rank {ddp.rank}" if world > 1 else ""
                        raise TrainingError(
                            f"non-finite loss ({loss_value}) at iteration {iteration} of {iters} "
                            f"(lr {cur_lr:.3g}); batch samples {idx[0]}-{idx[-1]}{where} from "
                            f"tile(s) {', '.join(sorted(set(b['tile'])))}; checkpoint of "
                            f"iteration {it} saved to {ckpt_path} (resume with --resume). Lower "
                            "--lr, or check the weights of those tiles."
                        )
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(value).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    done = iteration
                    losses.append(loss_value)
                    pending.append((loss_value, aux_float))
                    if iteration % log_every == 0 or iteration == iters:
                        auxs = [a for _, a in pending if a is not None]
                        if log is not None:
                            log.writerow([
                                iteration,
                                f"{cur_lr:.8g}",
                                f"{sum(v for v, _ in pending) / len(pending):.6g}",
                                f"{sum(auxs) / len(auxs):.6g}" if auxs else "",
                                f"{seconds0 + time.perf_counter() - t0:.3f}",
                            ])  # fmt: skip
                            log_file.flush()
                        pending.clear()
                    whole = True
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{cur_lr:.2e}", refresh=False)
                    bar.update(1)
                    if callback is not None:
                        callback(iteration, cur_lr, loss_value)
                    if checkpoint_every and iteration % checkpoint_every == 0 and iteration < iters:
                        checkpoint(iteration, seconds0 + time.perf_counter() - t0)
                    if world == 1:
                        requested = (signals.signum == signal.SIGINT,
                                     signals.signum == signal.SIGTERM)  # fmt: skip
                    if any(requested) and iteration < iters:
                        stopped = requested
                        break
            if stopped is not None:
                if saved_at != done:
                    checkpoint(done, seconds0 + time.perf_counter() - t0)
                ddp.barrier()  # no rank leaves before the checkpoint is written
                raise _Terminated() if stopped[1] else KeyboardInterrupt()
        except stop_errors as exc:
            # saved only when whole: a stop request, an exception at a boundary (e.g. from
            # `callback`); not an abort (a second Ctrl-C) in the middle of an iteration, nor
            # a TrainingError (which saved the last finite step)
            if whole and saved_at != done:
                # under DDP the optimizer step of `done` followed a completed all-reduce
                checkpoint(done, seconds0 + time.perf_counter() - t0)
            with contextlib.suppress(AttributeError, TypeError):
                exc.checkpoint_iteration = saved_at  # what checkpoint.pt holds now
                exc.partial = not whole  # stopped inside an iteration, which was not saved
            raise
        finally:
            bar.close()
            signals.__exit__()
        seconds = time.perf_counter() - t0
        checkpoint(done, seconds0 + seconds)
        ddp.barrier()  # no rank leaves before the last checkpoint is written
        return _summary(losses, done - start, seconds, cur_lr, summary_base)
    finally:
        ddp.close()


def _summary(losses: list[float], steps: int, seconds: float, final_lr: float, base: dict) -> dict:
    n = min(10, len(losses))
    return {
        "iterations": len(losses),
        "seconds": seconds,
        "iterations_per_s": steps / seconds if seconds > 0 else float("nan"),
        "first_loss": float(np.mean(losses[:n])) if n else float("nan"),
        "last_loss": float(np.mean(losses[-n:])) if n else float("nan"),
        "final_lr": final_lr,
        **base,
    }
