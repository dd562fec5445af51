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
SIGTERM, and before stopping on a non-finite loss; format: :mod:`npa_train.checkpoint`).
With ``val_every`` N > 0 the validation tiles are scored every N iterations and at the
end (:mod:`npa_train.validation`): ``val.csv`` and ``best.pt``. An iteration is validated
before its checkpoint is saved, so a run killed at any moment and resumed has the same
``log.csv``, ``val.csv`` and ``best.pt`` as an uninterrupted one (timings aside).

The run is a :class:`Trainer` of a :class:`~npa_train.config.TrainConfig`, in stages
(check, setup, restore, loader, step, log, checkpoint, validate); :func:`fit` builds both.

Ctrl-C (SIGINT) or SIGTERM finishes the current iteration, saves the checkpoint and stops
(``fit`` then raises :class:`TrainingInterrupted`, a ``KeyboardInterrupt``): a signal only
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

import gc
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from npa_precompute.errors import ParameterError
from npa_precompute.params import check_amp
from npa_precompute.store import StoreError, list_tiles, open_store
from npa_train.augment import AugmentConfig
from npa_train.checkpoint import save_checkpoint
from npa_train.choices import DEFAULT_WEIGHTS
from npa_train.config import TrainConfig
from npa_train.criteria import build_criterion, median_frequency_weights
from npa_train.data import StoreCropDataset
from npa_train.device import choose_threads, resolve_device
from npa_train.distributed import (
    all_reduce_mean,
    distributed_env,
    start_distributed,
    step_seed,
)
from npa_train.loader import default_workers, step_loader
from npa_train.model import build_model, model_spec
from npa_train.pretrained import load_pretrained
from npa_train.runfolder import RunFolder
from npa_train.runlog import CsvLog, rows_until
from npa_train.splits import available_weights, resolve_split
from npa_train.stopping import StopSignals, TrainingError, TrainingInterrupted
from npa_train.validation import Validator

__all__ = [
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "fit",
    "poly_lr",
]

_LOG_HEADER = ["iteration", "lr", "loss", "aux_loss", "seconds"]


def poly_lr(base_lr: float, it: int, iters: int, power: float = 0.9) -> float:
    """Poly learning rate ``base_lr * (1 - it / iters) ** power`` for step ``it`` (from 0).

    Source: the paper's schedule (Feng et al. 2020, §5.1; power 0.9).
    """
    return base_lr * (1.0 - it / iters) ** power


class Trainer(RunFolder):
    """One training run of :class:`TrainConfig`, in stages.

    :meth:`run` calls, in order: :meth:`check` (arguments against the store and the run
    folder, before any work), :meth:`setup` (process group, data, model, criterion,
    optimizer, the run record), :meth:`restore` (``resume``) or :meth:`start_folder`,
    :meth:`build_loader`, then :meth:`train_step` per iteration with :meth:`log_step`,
    :meth:`validate` and :meth:`save_checkpoint`. Each stage is a method a subclass may
    override (a new optimizer, another schedule).

    Parameters
    ----------
    config : TrainConfig
    callback : ``callback(iteration, lr, loss)`` after each step, as :func:`fit`
    notify : ``notify(argument, note)`` for each of :attr:`notes` (rank 0), as :func:`fit`
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        callback: Callable | None = None,
        notify: Callable[[str, str], None] | None = None,
    ) -> None:
        self.cfg = config
        self.callback = callback
        self.notify = notify
        #: ``(argument, note)`` for each default chosen from the data (e.g. the weights)
        self.notes: list[tuple[str, str]] = []
        self.out = Path(config.out)
        self.ckpt_path = self.out / "checkpoint.pt"
        self.losses: list[float] = []
        self.pending: list[tuple[float, float | None]] = []
        self.start, self.seconds0, self.resumed_from = 0, 0.0, None
        self.saved_at: int | None = None
        self.done = 0
        self.whole = True  # model, optimizer, RNG and log are those of `done` iterations
        self.validator: Validator | None = None

    # ---- stage 1: arguments against the machine, the store and the run folder -------------
    def check(self) -> None:
        """Resolve the device and the tiles, and check everything before any work.

        Raises the errors :func:`fit` documents (``ParameterError``, ``StoreError``,
        ``ValueError``).
        """
        cfg = self.cfg
        if model_spec(cfg.model).needs_batch_ge2 and cfg.batch < 2:
            raise ParameterError(
                "batch", f"must be >= 2 for {cfg.model} (batch norm in its pooling branch)"
            )
        self.aug = AugmentConfig.from_options(
            cfg.crop, augment=cfg.augment, scale=cfg.scale, rotation=cfg.rotation,
            flip=cfg.flip, rotate=cfg.rotate, blur=cfg.blur,
        )  # fmt: skip
        self.dev = resolve_device(cfg.device)
        self.amp = self.dev.type == "cuda" if cfg.amp is None else bool(cfg.amp)
        check_amp(self.amp, self.dev)
        self.workers = cfg.workers if cfg.workers is not None else default_workers(self.dev)
        self.warp_on = cfg.warp_on
        if self.warp_on == "auto":
            self.warp_on = "device" if self.dev.type == "cuda" else "loader"
        if cfg.pretrained is not None and not Path(cfg.pretrained).is_file():
            raise ParameterError("pretrained", f"file {cfg.pretrained} does not exist")
        self.root = open_store(cfg.store)  # the one open of the store before training
        self.train_tiles, self.val_tiles = resolve_split(
            cfg.store, tiles=cfg.tiles, val_tiles=cfg.val_tiles, split=cfg.split, root=self.root
        )
        if cfg.val_every and not self.val_tiles:
            raise ParameterError(
                "val_every", "needs validation tiles (--val-tiles or --split) to score"
            )
        self.weights = self.resolve_weights()
        self._check_out()
        self._warn_unfinished()

    def _set_threads(self) -> None:
        """``torch.set_num_threads``: the config's, or :func:`choose_threads`'s (printed)."""
        if self.cfg.threads is not None:
            torch.set_num_threads(self.cfg.threads)
            return
        local = os.environ.get("LOCAL_WORLD_SIZE", "1")
        ranks = int(local) if local.isdigit() and self.ddp.world_size > 1 else 1
        threads, reason = choose_threads(self.workers, ranks=ranks)
        torch.set_num_threads(threads)
        if self.ddp.main and self.cfg.progress:
            print(f"torch threads: {threads} ({reason}; --threads N to choose)", file=sys.stderr)

    def resolve_weights(self) -> str | None:
        """The weights name to train with: ``weights``, or the default when not given.

        The default (``weights`` None) is :data:`~npa_train.choices.DEFAULT_WEIGHTS` for
        ``loss="npa"`` when every training tile holds it (a note in :attr:`notes`), and
        none for the other losses.

        Raises
        ------
        ParameterError
            ``npa`` without weights (the message lists the store's), or weights for
            another loss.
        """
        cfg = self.cfg
        given = None if cfg.weights in (None, "none") else cfg.weights
        if cfg.loss != "npa" or given is not None:
            self._check_weights(given)
            return given
        names = available_weights(cfg.store, self.train_tiles, root=self.root)
        if cfg.weights is None and DEFAULT_WEIGHTS in names:
            note = (f"not given: training with {DEFAULT_WEIGHTS} (k = 32, log10, L = 0.5, the "
                    "paper's best), which the store holds")  # fmt: skip
            self.notes.append(("weights", note))
            return DEFAULT_WEIGHTS
        self._check_weights(None, names)
        return None

    def _check_weights(self, weights: str | None, names=()) -> None:
        cfg = self.cfg
        if cfg.loss == "npa" and weights is None:
            raise ParameterError(
                "loss",
                "'npa' needs a weights name (--weights); available in the store: "
                f"{', '.join(names) or 'none'}; or computed from the augmented labels: "
                "online:k32_log10_L0.5 (any k<K>_<transform>)",
            )
        if cfg.loss != "npa" and weights is not None:
            raise ParameterError(
                "loss",
                f"{cfg.loss!r} uses no stored weights, got the weights name {weights!r}; "
                "pass --weights none, or --loss npa to train with them",
            )

    def _warn_unfinished(self) -> None:
        if self.train_tiles is not None or distributed_env()[0] != 0:
            return
        root = self.root
        unfinished = sorted(set(list_tiles(root)) - set(list_tiles(root, complete_only=True)))
        if unfinished:
            warnings.warn(
                f"skipping incomplete tile(s) {', '.join(unfinished)} of {self.cfg.store} (their "
                "writing did not finish; re-run `npa-precompute run` to complete them)",
                stacklevel=4,
            )

    # ---- stage 2: data, model, criterion, optimizer, the run record ------------------------
    def setup(self) -> None:
        """Build the dataset, model, criterion, optimizer and AMP scaler (seeded)."""
        cfg, world = self.cfg, self.ddp.world_size
        self._set_threads()
        torch.manual_seed(cfg.seed)
        self.dataset = StoreCropDataset(
            cfg.store, self.weights, augment=self.aug, tiles=self.train_tiles,
            length=cfg.iters * cfg.batch * world, seed=cfg.seed, normalize=cfg.normalize,
            output="window" if self.warp_on == "device" else "crop", root=self.root,
        )  # fmt: skip
        self._warn_all_ignore()
        class_weight = self._class_weight()
        self.net = build_model(cfg.model, in_channels=self.dataset.in_channels,
                               num_classes=self.dataset.num_classes, aux=cfg.aux_weight > 0,
                               width=cfg.width)  # fmt: skip
        has_aux = getattr(self.net, "aux_classifier", None) is not None
        self.aux_weight = cfg.aux_weight if has_aux else 0.0
        report = None
        if cfg.pretrained is not None and not cfg.resume:
            report = load_pretrained(self.net, cfg.pretrained)
        self.net.to(self.dev)
        self.channels_last = self.dev.type == "cuda" and model_spec(cfg.model).channels_last_ok
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)  # fmt: skip
        self.criterion = build_criterion(
            cfg.loss, ignore_index=self.dataset.ignore_index, reduction=cfg.reduction,
            class_weight=class_weight, gamma=cfg.focal_gamma, smooth=cfg.dice_smooth,
        ).to(self.dev)  # fmt: skip
        self.amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bf16" else torch.float16
        if self.amp and cfg.amp_dtype == "bf16" and not torch.cuda.is_bf16_supported():
            self.amp_dtype = torch.float16
        fp16 = self.amp and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        self.record = self.run_record(class_weight, report)

    def _warn_all_ignore(self) -> None:
        ds = self.dataset
        if ds.labelled_pixels == 0 and self.ddp.main:
            warnings.warn(
                f"every label pixel of the training tile(s) {', '.join(ds.tiles)} is ignore "
                f"({ds.ignore_index}): the loss is 0 and the model learns nothing; check the "
                "labels and how the preset decodes them",
                stacklevel=4,
            )

    def _class_weight(self) -> list[float] | None:
        """Median-frequency class weights of ``ce-weighted`` (background at the lowest)."""
        if self.cfg.loss != "ce-weighted":
            return None
        ds = self.dataset
        if ds.class_pixels.sum() == 0:
            raise StoreError(
                "`loss` 'ce-weighted' needs the tiles' class_pixels attrs (pixels per class), "
                f"which the training tiles of {self.cfg.store} lack or hold only zeros; re-run "
                "`npa-precompute run` to write them"
            )
        background = [c for c in range(ds.num_classes) if c not in ds.info.foreground]
        return median_frequency_weights(ds.class_pixels, background=background).tolist()

    # ---- stage 4: the loader -----------------------------------------------------------------
    def build_loader(self) -> DataLoader:
        """Batches of steps ``start .. iters - 1``; sample ``i`` depends on (seed, i) only."""
        cfg = self.cfg
        return step_loader(self.dataset, batch=cfg.batch, iters=cfg.iters, start=self.start,
                           seed=cfg.seed, workers=self.workers, device=self.dev,
                           ddp=self.ddp)  # fmt: skip

    # ---- stage 5: the loop -------------------------------------------------------------------
    def run(self) -> dict:
        """Check, set up, restore or start, then train; returns :func:`fit`'s summary."""
        self.check()
        self.ddp = start_distributed(self.dev)
        self.dev = self.ddp.device
        if self.notify is not None and self.ddp.main:
            for argument, note in self.notes:
                self.notify(argument, note)
        try:
            self.setup()
            self.restore() if self.cfg.resume else self.start_folder()
            if self.cfg.val_every:
                self.validator = Validator(self.cfg, self.record, self.val_tiles, self.dev,
                                           self.amp, self.out if self.ddp.main else None,
                                           self.start)  # fmt: skip
            if self.start >= self.cfg.iters:
                final_lr = poly_lr(self.cfg.lr, self.cfg.iters - 1, self.cfg.iters,
                                   self.cfg.poly_power)  # fmt: skip
                return self.summary(0, 0.0, final_lr)
            return self._train(self.build_loader())
        finally:
            # DDP's reducer holds the process group: while it lives, destroying the group
            # leaves gloo's threads running into interpreter shutdown, where a rank can abort
            # ("terminate called without an active exception", seen once in CI)
            if self.ddp.world_size > 1:
                self.model = getattr(self, "net", None)
                gc.collect()
            self.ddp.close()

    def _train(self, loader: DataLoader) -> dict:
        from tqdm import tqdm

        cfg, ddp = self.cfg, self.ddp
        self.model = self.net
        if ddp.world_size > 1:
            # after the resume: DDP broadcasts rank 0's parameters and buffers at construction
            ids = [self.dev.index] if self.dev.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.net.train()
        self.t0, self.cur_lr, self.done = time.perf_counter(), cfg.lr, self.start
        self.bar = tqdm(total=cfg.iters, initial=self.start, desc="fit", unit="it",
                        disable=not (cfg.progress and ddp.main), dynamic_ncols=True)  # fmt: skip
        keep = (
            rows_until(self.out / "log.csv", _LOG_HEADER, self.start)
            if cfg.resume and ddp.main
            else []
        )
        self.log = CsvLog(self.out / "log.csv" if ddp.main else None, _LOG_HEADER, keep)
        self.signals = StopSignals(announce=ddp.main).__enter__()
        try:
            self._loop(loader)
        finally:
            self.bar.close()
            self.signals.__exit__()
            self.log.close()
            if self.validator is not None:
                self.validator.close()
        seconds = time.perf_counter() - self.t0
        self.save_checkpoint(self.done)
        ddp.barrier()  # no rank leaves before the last checkpoint is written
        return self.summary(self.done - self.start, seconds, self.cur_lr)

    def _loop(self, loader: DataLoader) -> None:
        # a stop signal is a request (StopSignals): the loop ends at an iteration boundary;
        # under DDP the requests ride on the loss all-reduce, so every rank stops after the
        # same iteration. A collective broken by a rank that stopped raises RuntimeError.
        stop_errors = (KeyboardInterrupt, RuntimeError) if self.ddp.world_size > 1 else (
            KeyboardInterrupt,)  # fmt: skip
        try:
            for it, sample in enumerate(loader, start=self.start):
                requested = self.train_step(it, sample)
                if requested is not None and self.done < self.cfg.iters:
                    if self.saved_at != self.done:
                        self.save_checkpoint(self.done)
                    self.ddp.barrier()  # no rank leaves before the checkpoint is written
                    raise TrainingInterrupted(requested, self.saved_at, partial=False)
        except stop_errors as exc:
            # saved only when whole: a stop request, an exception at a boundary (e.g. from
            # `callback`); not an abort (a second Ctrl-C) in the middle of an iteration, nor
            # a TrainingError (which saved the last finite step)
            if self.whole and self.saved_at != self.done:
                self.save_checkpoint(self.done)
            if isinstance(exc, TrainingInterrupted):
                exc.checkpoint_iteration, exc.partial = self.saved_at, not self.whole
                raise
            if isinstance(exc, KeyboardInterrupt):  # from the callback, or outside the handler
                raise TrainingInterrupted(signal.SIGINT, self.saved_at, not self.whole) from exc
            raise

    def train_step(self, it: int, sample: dict) -> int | None:
        """Train on step ``it``'s batch, then log, checkpoint and validate.

        Returns the stop signal (``signal.SIGINT`` or ``SIGTERM``) requested on any rank,
        or None.
        """
        cfg = self.cfg
        self.whole = False
        iteration = it + 1
        if self.ddp.world_size > 1:
            torch.manual_seed(step_seed(cfg.seed, self.ddp.rank, it))
        self.cur_lr = poly_lr(cfg.lr, it, cfg.iters, cfg.poly_power)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cur_lr
        batch = self.prepare_batch(sample)
        value, aux_value = self.forward_loss(batch)
        loss_value, aux_float, requested = self._reduce(value, aux_value)
        if not math.isfinite(loss_value):  # the same on every rank
            self._non_finite(it, loss_value, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(value).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.done = iteration
        self.losses.append(loss_value)
        self.pending.append((loss_value, aux_float))
        self.log_step(iteration)
        self.whole = True
        self.bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{self.cur_lr:.2e}",
                             **self._val_postfix(), refresh=False)  # fmt: skip
        self.bar.update(1)
        if self.callback is not None:
            self.callback(iteration, self.cur_lr, loss_value)
        # validation first: a checkpoint of `iteration` means its validation is in val.csv
        # and best.pt, so a kill between the two is resumed from the checkpoint before and
        # scores `iteration` again (never skips it)
        self.validate(iteration)
        if cfg.checkpoint_every and iteration % cfg.checkpoint_every == 0 and iteration < cfg.iters:
            self.save_checkpoint(iteration)
        if self.ddp.world_size == 1:
            requested = self.signals.signum
        return requested

    def prepare_batch(self, sample: dict) -> dict:
        """The batch on the device: warped there (``warp_on="device"``), channels-last."""
        batch = self.dataset.warp(sample, self.dev)
        if self.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

    def forward_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The loss to minimize (with ``aux_weight`` × the auxiliary loss) and the aux term."""
        weight = batch["weight"] if self.cfg.loss == "npa" else None
        with torch.autocast(device_type=self.dev.type, dtype=self.amp_dtype, enabled=self.amp):
            output = self.model(batch["image"])
        main_out, aux_out = (output["out"], output.get("aux")) if isinstance(output, dict) else (
            output, None)  # fmt: skip
        value = self.criterion(main_out.float(), batch["label"], weight)
        aux_value = None
        if aux_out is not None and self.aux_weight > 0:
            aux_value = self.criterion(aux_out.float(), batch["label"], weight)
            value = value + self.aux_weight * aux_value
        return value, aux_value

    def _reduce(self, value, aux_value) -> tuple[float, float | None, int | None]:
        """Loss and aux loss as floats (the mean over the ranks), and a stop request."""
        if self.ddp.world_size == 1:
            aux = float(aux_value.detach()) if aux_value is not None else None
            return float(value.detach()), aux, None
        # the mean over the ranks: what DDP's averaged gradient minimizes; with it, whether
        # any rank was asked to stop (Ctrl-C, SIGTERM)
        both = [value, value if aux_value is None else aux_value]
        asked = self.signals.signum
        flags = value.new_tensor([asked == signal.SIGINT, asked == signal.SIGTERM],
                                 dtype=torch.float64)  # fmt: skip
        mean = all_reduce_mean(torch.cat([torch.stack(both).detach().double(), flags])).tolist()
        requested = signal.SIGTERM if mean[3] > 0 else signal.SIGINT if mean[2] > 0 else None
        return mean[0], (mean[1] if aux_value is not None else None), requested

    def _non_finite(self, it: int, loss_value: float, batch: dict) -> None:
        self.save_checkpoint(it)
        idx = batch["index"].tolist()
        where = f" on rank {self.ddp.rank}" if self.ddp.world_size > 1 else ""
        raise TrainingError(
            f"non-finite loss ({loss_value}) at iteration {it + 1} of {self.cfg.iters} "
            f"(lr {self.cur_lr:.3g}); batch samples {idx[0]}-{idx[-1]}{where} from "
            f"tile(s) {', '.join(sorted(set(batch['tile'])))}; checkpoint of iteration {it} "
            f"saved to {self.ckpt_path} (resume with --resume). Lower --lr, or check the "
            "weights of those tiles."
        )

    # ---- logging, checkpoints, validation ------------------------------------------------------
    def log_step(self, iteration: int) -> None:
        """A ``log.csv`` row (mean of the steps since the last) every ``log_every`` steps."""
        if iteration % self.cfg.log_every and iteration != self.cfg.iters:
            return
        auxs = [a for _, a in self.pending if a is not None]
        self.log.write([
            iteration,
            f"{self.cur_lr:.8g}",
            f"{sum(v for v, _ in self.pending) / len(self.pending):.6g}",
            f"{sum(auxs) / len(auxs):.6g}" if auxs else "",
            f"{self.elapsed():.3f}",
        ])  # fmt: skip
        self.pending.clear()

    def elapsed(self) -> float:
        """Training seconds of the run so far (every session)."""
        return self.seconds0 + time.perf_counter() - self.t0

    def checkpoint_state(self, iteration: int) -> dict:
        """What :func:`npa_train.checkpoint.save_checkpoint` writes (see that module)."""
        cuda = self.dev.type == "cuda"
        return {
            "config": self.record,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "iteration": iteration,
            "losses": list(self.losses),
            "log_pending": list(self.pending),
            "seconds": self.elapsed(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if cuda else [],
            },
        }

    def save_checkpoint(self, iteration: int, path: Path | None = None) -> None:
        """Rank 0 writes ``checkpoint.pt`` (or ``path``) holding ``iteration`` steps.

        The model, optimizer, scaler and logged losses are the same on every rank (DDP
        averages the gradients; the losses are all-reduced) and each DDP step reseeds
        torch from (seed, rank, step), so rank 0's state is the run's.
        """
        if path is None:
            self.saved_at = iteration
        if self.ddp.main:
            save_checkpoint(self.checkpoint_state(iteration), path or self.ckpt_path)

    def validate(self, iteration: int) -> None:
        """Score the validation tiles every ``val_every`` steps and at the end (rank 0).

        A row of ``val.csv``; ``best.pt`` when ``best_metric`` improves.
        """
        v, cfg = self.validator, self.cfg
        if v is None or (iteration % cfg.val_every and iteration != cfg.iters):
            return
        if self.ddp.main:
            self.net.eval()
            improved = v.score(self.net, iteration, self.elapsed())
            self.net.train()
            if improved:
                self.save_checkpoint(iteration, self.out / "best.pt")
        self.ddp.barrier()

    def _val_postfix(self) -> dict:
        v = self.validator
        if v is None or v.last is None:
            return {}
        return {self.cfg.best_metric: f"{100 * v.last:.2f}"}

    def summary(self, steps: int, seconds: float, final_lr: float) -> dict:
        """:func:`fit`'s return value."""
        n = min(10, len(self.losses))
        result = {
            "iterations": len(self.losses),
            "seconds": seconds,
            "iterations_per_s": steps / seconds if seconds > 0 else float("nan"),
            "first_loss": float(np.mean(self.losses[:n])) if n else float("nan"),
            "last_loss": float(np.mean(self.losses[-n:])) if n else float("nan"),
            "final_lr": final_lr,
            "device": str(self.dev), "out": str(self.out), "log": str(self.out / "log.csv"),
            "checkpoint": str(self.ckpt_path), "resumed_from": self.resumed_from,
            "world_size": self.ddp.world_size, "rank": self.ddp.rank,
        }  # fmt: skip
        if self.validator is not None:
            result.update(self.validator.best_summary())
        return result


def fit(
    store: str | os.PathLike,
    out: str | os.PathLike,
    *,
    callback: Callable[[int, float, float], None] | None = None,
    notify: Callable[[str, str], None] | None = None,
    **settings,
) -> dict:
    """Train a segmentation model on augmented crops of a weight store; write a run folder.

    Parameters
    ----------
    store : weight store written by ``npa-precompute run --images ...``
    out : run folder (created; refused if it already holds a run, unless ``overwrite`` or
        ``resume``)
    weights : weights array name (e.g. ``"k32_log10_L0.5"``) for ``loss="npa"``, or
        ``"online:k32_log10_L0.5"``: the same weights computed on the device from each
        augmented crop's label (:class:`npa_train.data.StoreCropDataset`); ``"none"`` for
        the other losses; None (default): ``k32_log10_L0.5`` (the paper's best) with
        ``loss="npa"`` when every training tile holds it, none with the other losses
    loss : one of :data:`npa_train.loss.LOSSES`
        ``npa`` (stored weights), ``ce``, ``ce-weighted`` (median-frequency class weights
        from the training tiles' ``class_pixels``, background classes at the lowest of the
        others), ``focal`` (gamma ``focal_gamma``), ``dice``.
    reduction : ``npa``/``focal`` reduction (default ``"mean"``; not ``"none"``)
    model : one of :data:`npa_train.model.MODELS` (default ``small_fcn``)
    width : first-stage width of ``small_fcn``
    pretrained : local weights file for the model (:func:`npa_train.pretrained.load_pretrained`)
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
    val_every : score the validation tiles (``val_tiles`` or ``split``) every this many
        iterations and at the end, with sliding windows of the crop size and overlap 1/3
        (:mod:`npa_train.validation`); 0 (default): never
    best_metric : the ``val.csv`` column ``best.pt`` is chosen by (default ``"mF1"``)
    callback : ``callback(iteration, lr, loss)`` after each step (on every rank under DDP,
        with the loss averaged over the ranks); an exception it raises stops the run, and
        a ``KeyboardInterrupt`` from it saves the checkpoint of that step first
    notify : ``notify(argument, note)`` (rank 0), before training, for each default chosen
        from the data: ``("weights", "not given: training with k32_log10_L0.5 ...")``

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
    TrainingInterrupted
        Ctrl-C or SIGTERM (see the module docstring; signals are handled when ``fit``
        runs in the main thread): ``signum``, ``checkpoint_iteration`` (the iteration
        ``checkpoint.pt`` holds, None if none was saved) and ``partial`` (False: stopped
        after a completed iteration, which was saved; True: aborted inside an iteration,
        which was not).
    ImportError
        A torchvision model without torchvision.
    """
    return Trainer(TrainConfig(store, out, **settings), callback=callback, notify=notify).run()
