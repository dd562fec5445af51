"""Validation during training (``npa-train fit --val-every N``).

Every N iterations and at the end, the model in training is scored on the validation
tiles exactly as ``npa-train evaluate`` scores a checkpoint
(:func:`npa_train.evaluate.evaluate_model`): overlapping sliding windows of the crop
size with overlap 1/3, overlapping predictions averaged, the same metrics (F1 per class,
mF1, mIoU and OA over the store's foreground classes, boundary F1). This is the paper's
Fig. 6 (mF1 along training; Feng et al. 2020, §5.3).

``val.csv`` in the run folder: ``iteration, seconds, mF1, mIoU, OA, boundary_f1`` and
``f1:<class>`` per class, as fractions in [0, 1] (an empty cell: undefined, e.g. a
class absent from both ground truth and prediction). ``best.pt`` is the checkpoint of
the iteration with the highest ``best_metric`` so far (the first of equal ones).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from npa_train.checkpoint import model_info_from_checkpoint
from npa_train.config import TrainConfig
from npa_train.runlog import CsvLog, rows_until

__all__ = ["VAL_OVERLAP", "Validator", "val_header"]

#: Overlap of the validation sliding windows (the paper's inference, §5.1).
VAL_OVERLAP = "1/3"


def val_header(classes) -> list[str]:
    """The columns of ``val.csv`` for these class names."""
    return ["iteration", "seconds", "mF1", "mIoU", "OA", "boundary_f1",
            *(f"f1:{c}" for c in classes)]  # fmt: skip


def _cell(value) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"


class Validator:
    """Scores a model on the validation tiles and keeps ``val.csv`` (rank 0 writes it).

    Parameters
    ----------
    config : TrainConfig of the run (``store``, ``crop``, ``batch``, ``best_metric``)
    record : the run record (``config.json``): classes, normalization, image dtype
    tiles : validation tile ids
    device, amp : where and how the model runs
    out : run folder, or None on ranks other than 0 (nothing written)
    start : iteration the run starts at; rows of an earlier ``val.csv`` up to it are
        kept (a resumed run) and the best among them counts
    """

    def __init__(self, config: TrainConfig, record: dict, tiles, device, amp, out, start=0):
        self.cfg, self.tiles, self.device, self.amp = config, list(tiles), device, bool(amp)
        self.info = model_info_from_checkpoint({"config": record}, "the model in training")
        self.header = val_header(self.info.classes)
        self.last: float | None = None
        self.best: tuple[int, float] | None = None
        path = None if out is None else Path(out) / "val.csv"
        kept = rows_until(path, self.header, start) if path is not None and start else []
        col = self.header.index(config.best_metric)
        for row in kept:
            self._track(int(row[0]), float(row[col]) if row[col] else None)
        self.log = CsvLog(path, self.header, kept)

    def _track(self, iteration: int, value: float | None) -> bool:
        self.last = value
        if value is None or not math.isfinite(value):
            return False
        if self.best is None or value > self.best[1]:
            self.best = (iteration, value)
            return True
        return False

    @torch.no_grad()
    def score(self, model: torch.nn.Module, iteration: int, seconds: float) -> bool:
        """Score ``model`` (in eval mode), write a row; True when ``best_metric`` improved."""
        from npa_train.evaluate import evaluate_model

        result = evaluate_model(
            self.cfg.store, model, self.info, None, tiles=self.tiles, window=self.cfg.crop,
            overlap=VAL_OVERLAP, batch=self.cfg.batch, device=self.device, amp=self.amp,
            save_images=False, progress=False,
        )  # fmt: skip
        values = {"mF1": result["mF1"], "mIoU": result["mIoU"], "OA": result["OA"],
                  "boundary_f1": result["boundary"]["f1"]}  # fmt: skip
        values.update({f"f1:{c}": v["f1"] for c, v in result["per_class"].items()})
        self.log.write([iteration, f"{seconds:.3f}",
                        *(_cell(values.get(k)) for k in self.header[2:])])  # fmt: skip
        return self._track(iteration, values[self.cfg.best_metric])

    def best_summary(self) -> dict:
        """``best_metric``, ``best_iteration`` and ``best_value`` (None before any score)."""
        it, value = self.best if self.best is not None else (None, None)
        return {"best_metric": self.cfg.best_metric, "best_iteration": it, "best_value": value}

    def close(self) -> None:
        self.log.close()
