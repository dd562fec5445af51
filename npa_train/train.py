"""Training loop: :func:`fit` is what ``npa-train fit`` calls.

SGD (momentum 0.9, weight decay 1e-4), base learning rate 0.01 with poly decay
``lr * (1 - it / iters) ** 0.9`` (``it`` counted from 0), a fixed seed, the paper's
settings (Feng et al. 2020, §5.1) applied to the small :class:`SmallFCN`.

A run folder holds ``config.json`` (the resolved arguments, written first),
``log.csv`` (``iteration, lr, loss, seconds``, one row per ``log_every`` iterations)
and ``checkpoint.pt`` (written every ``checkpoint_every`` iterations, at the end,
and before stopping on a non-finite loss).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from npa_precompute.store import list_tiles, open_store, open_tile, store_info
from npa_train.data import StoreCropDataset, parse_crop, parse_tiles
from npa_train.loss import NPALoss, parse_reduction
from npa_train.model import SmallFCN

__all__ = [
    "LOSSES",
    "TrainingError",
    "fit",
    "load_checkpoint",
    "poly_lr",
    "resolve_device",
]

#: Allowed values of ``loss``.
LOSSES = ("npa", "ce")
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
POLY_POWER = 0.9
_RUN_FILES = ("config.json", "log.csv", "checkpoint.pt")


class TrainingError(RuntimeError):
    """Training stopped (a non-finite loss); the message names the iteration."""


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


def _positive_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _available_weights(store: str | os.PathLike, tiles: list[str] | None) -> list[str]:
    root = open_store(store)
    ids = tiles or list_tiles(root, complete_only=True)
    names: set[str] | None = None
    for t in ids:
        have = set(open_tile(root, t).weight_names)
        names = have if names is None else names & have
    return sorted(names or ())


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds the legacy global state other code may use
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    # Crops are a function of (seed, index), not of worker RNG state; one thread per
    # worker keeps workers from oversubscribing the cores.
    torch.set_num_threads(1)


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, *, map_location="cpu") -> tuple[SmallFCN, dict]:
    """Rebuild the model from ``checkpoint.pt`` (a file or its run folder).

    Returns
    -------
    (model in eval mode, checkpoint dict)
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    model = SmallFCN(**ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, ckpt


def fit(
    store: str | os.PathLike,
    out: str | os.PathLike,
    *,
    weights: str | None = None,
    loss: str = "npa",
    iters: int = 1000,
    batch: int = 4,
    crop: int | Sequence[int] = 256,
    tiles: str | Sequence[str] | None = None,
    lr: float = 0.01,
    device: str | None = None,
    seed: int = 0,
    workers: int = 0,
    reduction: str = "mean",
    log_every: int = 1,
    checkpoint_every: int = 500,
    width: int = 24,
    flip: bool = True,
    rotate: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callback: Callable[[int, float, float], None] | None = None,
) -> dict:
    """Train :class:`SmallFCN` on random crops of a weight store; write a run folder.

    Parameters
    ----------
    store : weight store written by ``npa-precompute run --images ...``
    out : run folder (created; refused if it already holds a run, unless ``overwrite``)
    weights : weights array name (e.g. ``"k32_log10_L0.5"``) for ``loss="npa"``;
        None (or ``"none"``) for ``loss="ce"``
    loss : {"npa", "ce"}
        ``npa``: :func:`~npa_train.loss.npa_cross_entropy` with the stored weights;
        ``ce``: plain cross-entropy (all weights 1), mean over non-ignored pixels.
    iters : optimizer steps (default 1000)
    batch : crops per step (default 4)
    crop : crop size, int or (h, w) (default 256)
    tiles : tile ids (list or comma-separated); None: every complete tile
    lr : base learning rate (default 0.01), poly decay with power 0.9
    device : {"cpu", "cuda"} or None (cuda if available)
    seed : seeds python, numpy and torch and the crop sampler (default 0)
    workers : DataLoader worker processes (default 0: load in the main process)
    reduction : loss reduction for ``loss="npa"`` (default ``"mean"``; see
        :data:`~npa_train.loss.REDUCTIONS`, ``"none"`` excepted)
    log_every : a log row (mean loss of the iterations since the last row) every
        this many iterations (default 1); the last iteration is always logged
    checkpoint_every : also save ``checkpoint.pt`` every this many iterations
        (default 500; 0: only at the end)
    width : first-stage width of :class:`SmallFCN` (default 24)
    flip, rotate : augmentation (random flips; random transpose)
    overwrite : replace an existing run in ``out``
    progress : show a tqdm progress bar with loss and lr
    callback : called as ``callback(iteration, lr, loss)`` after each step

    Returns
    -------
    dict
        ``iterations``, ``seconds``, ``iterations_per_s``, ``first_loss`` and
        ``last_loss`` (mean loss of the first and last ``min(10, iters)`` iterations),
        ``final_lr``, ``device``, ``out``, ``log``, ``checkpoint``.

    Notes
    -----
    Crop ``i`` depends only on ``seed`` and ``i``, so the data do not change with
    ``workers``. On the CPU a seed reproduces a run exactly; on CUDA the backward of
    bilinear upsampling uses atomic adds, so runs agree only to rounding.
    With ``workers=0`` reading crops can dominate a CUDA step: use a few workers there.
    An interrupt (Ctrl-C) saves ``checkpoint.pt`` before it propagates.

    Raises
    ------
    ValueError
        Bad arguments (named), ``loss="npa"`` without a weights name or ``loss="ce"``
        with one (the message lists the store's weights), an unavailable device, or
        an existing run in ``out``.
    StoreError
        Missing store, unknown/incomplete tile, no images, unknown weights name.
    TrainingError
        A non-finite loss; the checkpoint of the last finite step is saved first.
    """
    # ---- validate everything before any work ------------------------------------------------
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}, got {loss!r}")
    if isinstance(weights, str) and weights.strip().lower() in ("", "none"):
        weights = None
    iters = _positive_int("iters", iters)
    batch = _positive_int("batch", batch)
    crop = parse_crop(crop)
    tiles = parse_tiles(tiles)
    workers = _positive_int("workers", workers, minimum=0)
    log_every = _positive_int("log_every", log_every)
    checkpoint_every = _positive_int("checkpoint_every", checkpoint_every, minimum=0)
    seed = _positive_int("seed", seed, minimum=0)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (0 < lr < math.inf):
        raise ValueError(f"`lr` must be a positive number, got {lr!r}")
    reduction = parse_reduction(reduction)
    if reduction == "none":
        raise ValueError("`reduction` 'none' gives no scalar loss to train on")
    if loss == "ce" and reduction != "mean":
        raise ValueError("`reduction` applies to `loss` 'npa' only ('ce' is the plain mean)")
    dev = resolve_device(device)
    open_store(store)  # StoreError early for a missing store
    if loss == "npa" and weights is None:
        names = _available_weights(store, tiles)
        raise ValueError(
            "`loss` 'npa' needs a weights name (--weights); available in the store: "
            f"{', '.join(names) or 'none'}"
        )
    if loss == "ce" and weights is not None:
        raise ValueError(
            f"`loss` 'ce' is plain cross-entropy and uses no weights, got `weights` {weights!r}; "
            "pass --weights none, or --loss npa to train with them"
        )
    out = Path(out)
    existing = [f for f in _RUN_FILES if (out / f).exists()]
    if existing and not overwrite:
        raise ValueError(
            f"{out} already holds a run ({', '.join(existing)}); choose another --out or pass "
            "--overwrite"
        )

    # ---- data, model, optimizer ------------------------------------------------------------
    _seed_everything(seed)
    dataset = StoreCropDataset(
        store,
        weights,
        crop=crop,
        tiles=tiles,
        length=iters * batch,
        seed=seed,
        flip=flip,
        rotate=rotate,
    )
    info = store_info(open_store(store))
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=False,
        num_workers=workers,
        drop_last=True,
        pin_memory=dev.type == "cuda",
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=False,
    )
    model = SmallFCN(dataset.in_channels, dataset.num_classes, width=width).to(dev)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    criterion = NPALoss(ignore_index=dataset.ignore_index, reduction=reduction)

    out.mkdir(parents=True, exist_ok=True)
    for f in _RUN_FILES:
        (out / f).unlink(missing_ok=True)
    config = {
        "store": str(Path(store).resolve()),
        "weights": weights,
        "loss": loss,
        "reduction": reduction,
        "iters": iters,
        "batch": batch,
        "crop": list(crop),
        "tiles": dataset.tiles,
        "lr": lr,
        "lr_schedule": f"poly, power {POLY_POWER}",
        "momentum": MOMENTUM,
        "weight_decay": WEIGHT_DECAY,
        "device": str(dev),
        "seed": seed,
        "workers": workers,
        "log_every": log_every,
        "checkpoint_every": checkpoint_every,
        "flip": flip,
        "rotate": rotate,
        "model": "SmallFCN",
        "model_config": model.config(),
        "classes": dataset.classes,
        "num_classes": dataset.num_classes,
        "ignore_index": dataset.ignore_index,
        "in_channels": dataset.in_channels,
        "image_mean": dataset.mean.tolist(),
        "image_std": dataset.std.tolist(),
        "store_preset": info.get("preset"),
        "torch_version": str(torch.__version__),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    def checkpoint(iteration: int) -> None:
        _save_atomic(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "iteration": iteration,
                "args": config,
                "model_config": model.config(),
                "classes": dataset.classes,
                "in_channels": dataset.in_channels,
                "num_classes": dataset.num_classes,
                "ignore_index": dataset.ignore_index,
                "weights": weights,
                "image_mean": dataset.mean.tolist(),
                "image_std": dataset.std.tolist(),
            },
            out / "checkpoint.pt",
        )

    # ---- loop --------------------------------------------------------------------------------
    from tqdm import tqdm

    losses: list[float] = []
    pending: list[float] = []
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(total=iters, desc="fit", unit="it", disable=not progress, dynamic_ncols=True)
    cur_lr = lr
    try:
        with open(out / "log.csv", "w", newline="") as log_file:
            log = csv.writer(log_file)
            log.writerow(["iteration", "lr", "loss", "seconds"])
            for it, sample in enumerate(loader):
                iteration = it + 1
                cur_lr = poly_lr(lr, it, iters)
                for group in optimizer.param_groups:
                    group["lr"] = cur_lr
                image = sample["image"].to(dev, non_blocking=True)
                label = sample["label"].to(dev, non_blocking=True)
                weight = sample["weight"].to(dev, non_blocking=True) if loss == "npa" else None
                value = criterion(model(image), label, weight)
                loss_value = float(value.detach())
                if not math.isfinite(loss_value):
                    log_file.flush()
                    checkpoint(iteration - 1)
                    raise TrainingError(
                        f"non-finite loss ({loss_value}) at iteration {iteration} of {iters} "
                        f"(lr {cur_lr:.3g}); checkpoint of iteration {iteration - 1} saved to "
                        f"{out / 'checkpoint.pt'}. Lower --lr, or use reduction 'mean'."
                    )
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                losses.append(loss_value)
                pending.append(loss_value)
                if iteration % log_every == 0 or iteration == iters:
                    log.writerow(
                        [
                            iteration,
                            f"{cur_lr:.8g}",
                            f"{sum(pending) / len(pending):.6g}",
                            f"{time.perf_counter() - t0:.3f}",
                        ]
                    )
                    log_file.flush()
                    pending.clear()
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{cur_lr:.2e}", refresh=False)
                bar.update(1)
                if callback is not None:
                    callback(iteration, cur_lr, loss_value)
                if checkpoint_every and iteration % checkpoint_every == 0 and iteration < iters:
                    checkpoint(iteration)
    except KeyboardInterrupt:
        checkpoint(len(losses))
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    checkpoint(len(losses))
    n = min(10, len(losses))
    return {
        "iterations": len(losses),
        "seconds": seconds,
        "iterations_per_s": len(losses) / seconds if seconds > 0 else float("nan"),
        "first_loss": float(np.mean(losses[:n])),
        "last_loss": float(np.mean(losses[-n:])),
        "final_lr": cur_lr,
        "device": str(dev),
        "out": str(out),
        "log": str(out / "log.csv"),
        "checkpoint": str(out / "checkpoint.pt"),
    }
