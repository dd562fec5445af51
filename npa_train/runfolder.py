"""The run folder of a :class:`~npa_train.train.Trainer`: its record, a fresh start, a resume.

``config.json`` is the run record (:meth:`RunFolder.run_record`: the settings plus what
the data, model and machine resolved to; schema :data:`npa_train.runrecord.RUN_RECORD_SCHEMA`),
written first by :meth:`RunFolder.start_folder`. :meth:`RunFolder.restore` continues a run
from its ``checkpoint.pt`` after checking that it was made with the same world size and
settings (:meth:`npa_train.config.TrainConfig.resume_differences`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from npa_train.checkpoint import read_checkpoint
from npa_train.config import TrainConfig
from npa_train.model import model_config
from npa_train.runrecord import RUN_RECORD_SCHEMA

__all__ = ["RUN_FILES", "RunFolder"]

#: The files a run folder holds; a new run (not ``resume``) removes them first.
RUN_FILES = ("config.json", "log.csv", "checkpoint.pt", "val.csv", "best.pt")


class RunFolder:
    """Run-folder stages of :class:`~npa_train.train.Trainer` (a mixin).

    Uses the trainer's ``cfg``, ``out``, ``ckpt_path``, ``ddp``, ``dataset``, ``net``,
    ``optimizer``, ``scaler`` and the values :meth:`~npa_train.train.Trainer.check`
    resolved; sets ``record``, and on a resume ``start``, ``losses``, ``pending`` and
    ``seconds0``.
    """

    def _check_out(self) -> None:
        existing = [f for f in RUN_FILES if (self.out / f).exists()]
        if self.cfg.resume and not self.ckpt_path.is_file():
            raise ValueError(f"--resume: no checkpoint.pt in {self.out} to resume from")
        if existing and not (self.cfg.overwrite or self.cfg.resume):
            raise ValueError(
                f"{self.out} already holds a run ({', '.join(existing)}); choose another --out, "
                "pass --resume to continue it or --overwrite to replace it"
            )

    def run_record(self, class_weight, pretrained_report) -> dict:
        """``config.json``: the settings plus what the data, model and machine resolved to."""
        cfg, ds, world = self.cfg, self.dataset, self.ddp.world_size
        record = cfg.to_dict()
        for key in ("out", "resume", "overwrite", "progress", "scale", "rotation", "flip",
                    "rotate", "blur", "width", "amp_dtype"):  # fmt: skip
            record.pop(key)
        amp_dtype = str(self.amp_dtype).replace("torch.", "") if self.amp else None
        record.update({
            "store": str(Path(cfg.store).resolve()),
            "weights": self.weights,
            "model_config": model_config(self.net),
            "aux_weight": self.aux_weight,
            "pretrained": _resolved(cfg.pretrained),
            "pretrained_report": pretrained_report,
            "world_size": world, "effective_batch": cfg.batch * world,
            "distributed_backend": self.ddp.backend,
            "tiles": ds.tiles, "val_tiles": self.val_tiles,
            "lr_schedule": f"poly, power {cfg.poly_power}",
            "augment": self.aug.to_dict(),
            "focal_gamma": cfg.focal_gamma if cfg.loss == "focal" else None,
            "dice_smooth": cfg.dice_smooth if cfg.loss == "dice" else None,
            "class_weight": class_weight,
            "device": str(self.dev), "amp": self.amp, "amp_dtype": amp_dtype,
            "warp_on": self.warp_on, "workers": self.workers,
            "threads": torch.get_num_threads(),
            "classes": ds.classes, "num_classes": ds.num_classes,
            "ignore_index": ds.ignore_index, "in_channels": ds.in_channels,
            "image_dtype": ds.image_dtype,
            "image_mean": ds.mean.tolist(), "image_std": ds.std.tolist(),
            "store_preset": ds.info.preset,
            # the classes validation (and evaluate) average: the preset's foreground
            "classes_in_mean": [ds.classes[i] for i in ds.info.foreground],
            "run_record_schema": RUN_RECORD_SCHEMA,
            "torch_version": str(torch.__version__),
        })  # fmt: skip
        return record

    # ---- stage 3: a new run folder, or the state of a checkpoint ---------------------------
    def start_folder(self) -> None:
        """Empty the run folder of an earlier run and write ``config.json`` (rank 0)."""
        self.ddp.barrier()  # every rank has checked --out before rank 0 writes to it
        if self.ddp.main:
            self.out.mkdir(parents=True, exist_ok=True)
            for f in RUN_FILES:
                (self.out / f).unlink(missing_ok=True)
            text = json.dumps(self.record, indent=2) + "\n"
            (self.out / "config.json").write_text(text)

    def restore(self) -> None:
        """Continue from ``checkpoint.pt``: model, optimizer, scaler, RNG, losses, timing.

        Raises
        ------
        ValueError
            Another world size, other settings (:attr:`TrainConfig.RESUME_KEYS`, named
            in the message) or weights that do not fit the model.
        """
        ckpt = read_checkpoint(self.ckpt_path, "cpu")  # every rank reads it
        old = ckpt["config"]
        self._check_resume(old)
        try:
            self.net.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise ValueError(f"--resume: checkpoint weights do not fit the model: {exc}") from exc
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        rng = ckpt.get("rng") or {}
        if rng.get("torch") is not None:
            torch.set_rng_state(rng["torch"])
        if self.dev.type == "cuda" and rng.get("cuda") and self.ddp.world_size == 1:
            torch.cuda.set_rng_state_all(list(rng["cuda"]))
        self.start = self.resumed_from = self.saved_at = int(ckpt["iteration"])
        self.losses = [float(x) for x in ckpt.get("losses", [])]
        self.pending = [(float(a), None if x is None else float(x))
                        for a, x in ckpt.get("log_pending", [])]  # fmt: skip
        self.seconds0 = float(ckpt.get("seconds", 0.0))
        self.record["pretrained_report"] = old.get("pretrained_report")
        self.record["pretrained"] = old.get("pretrained")

    def _check_resume(self, old: dict) -> None:
        old_world, world = int(old.get("world_size") or 1), self.ddp.world_size
        if old_world != world:
            raise ValueError(
                f"--resume: the run in {self.out} was trained with world size {old_world} "
                f"(processes), it is now started with world size {world}; resume it with "
                f"{old_world} process(es) (torchrun --nnodes x --nproc-per-node): the world "
                f"size fixes the effective batch ({self.cfg.batch} x {old_world}) and the "
                "crops of each step"
            )
        diff = TrainConfig.resume_differences(old, self.record)
        if diff:
            raise ValueError(
                f"--resume: the run in {self.out} was made with other settings; pass the same "
                "options as the first time, or start a new run. Differences: " + "; ".join(diff)
            )


def _resolved(path) -> str | None:
    return None if path is None else str(Path(path).resolve())
