"""The records of run and evaluation folders, typed: what ``compare`` and ``plot`` read.

A run folder (``npa-train fit --out RUN``) holds ``config.json``, the run record: the
settings of :class:`npa_train.config.TrainConfig` plus what training resolved from the
data (``classes``, ``classes_in_mean``, ``store_preset``, ``seed``, ...) and
``run_record_schema`` (:data:`RUN_RECORD_SCHEMA`); ``log.csv`` and, with validation during
training, ``val.csv`` (:mod:`npa_train.runlog`). An evaluation folder (``npa-train
evaluate --out EVAL``) holds ``metrics.json``, whose ``checkpoint`` leads back to its run.

:class:`RunRecord` and :class:`EvalRecord` read them once; :class:`Scores` is what either
scored. The classes averaged into mF1 and mIoU (``classes_in_mean``) are the store's
foreground classes, from its preset, written by the trainer (validation) and by
``evaluate``; records that predate ``classes_in_mean`` (schema 0) leave out the ISPRS
clutter class by name, as the code that wrote them did.

Plain Python (csv, json): no torch, no numpy.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "RUN_RECORD_SCHEMA",
    "EvalRecord",
    "RunRecord",
    "Scores",
    "read_csv_rows",
]

#: Version of the run record (``config.json``): 1 adds ``classes_in_mean`` and this key.
RUN_RECORD_SCHEMA = 1
#: What records of schema 0 (no ``classes_in_mean``) left out of the means.
_SCHEMA0_CLUTTER = ("clutter", "clutter/background")
#: Scalar scores of :class:`Scores` (besides the per-class F1).
SCALAR_METRICS = ("mF1", "mIoU", "OA", "boundary_f1")


def _number(text: str | None) -> float | None:
    if text is None or not str(text).strip():
        return None
    value = float(text)
    return None if math.isnan(value) else value


def read_csv_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``log.csv`` or ``val.csv`` as dicts of floats (``None`` for empty cells).

    Parameters
    ----------
    path : the CSV file; its first line names the columns.

    Returns
    -------
    list of dict
        One dict per row, ``{column: float | None}``, in file order.

    Raises
    ------
    ValueError
        A cell that is no number (the message names file, line and column).
    OSError
        The file cannot be read.
    """
    rows = []
    with open(path, newline="") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            try:
                rows.append({k: _number(v) for k, v in row.items() if k is not None})
            except ValueError as exc:
                raise ValueError(f"{path}, line {line}: not a number ({exc})") from None
    return rows


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return value


@dataclass(frozen=True)
class Scores:
    """What a model scored: fractions in [0, 1], None where undefined.

    Attributes
    ----------
    mF1, mIoU, OA, boundary_f1 : float or None
    f1 : dict ``{class name: F1 or None}``, every class scored
    classes_in_mean : tuple of str, the classes averaged into mF1 and mIoU
    """

    mF1: float | None
    mIoU: float | None
    OA: float | None
    boundary_f1: float | None
    f1: dict
    classes_in_mean: tuple[str, ...]

    @classmethod
    def from_metrics(cls, metrics: dict) -> Scores:
        """From ``metrics.json`` (:func:`npa_train.evaluate.evaluate`)."""
        f1 = {c: s.get("f1") for c, s in metrics["per_class"].items()}
        return cls(metrics.get("mF1"), metrics.get("mIoU"), metrics.get("OA"),
                   (metrics.get("boundary") or {}).get("f1"), f1,
                   tuple(metrics.get("classes_in_mean") or f1))  # fmt: skip

    @classmethod
    def from_val_row(cls, row: dict, classes_in_mean: tuple[str, ...]) -> Scores:
        """From a row of ``val.csv`` (:func:`read_csv_rows`)."""
        f1 = {k[3:]: v for k, v in row.items() if k.startswith("f1:")}
        return cls(row.get("mF1"), row.get("mIoU"), row.get("OA"), row.get("boundary_f1"), f1,
                   tuple(c for c in classes_in_mean if c in f1))  # fmt: skip

    def value(self, metric: str) -> float | None:
        """A scalar of :data:`SCALAR_METRICS`, else the F1 of the class named ``metric``
        (None when undefined or no such class)."""
        v = getattr(self, metric) if metric in SCALAR_METRICS else self.f1.get(metric)
        return None if v is None or not math.isfinite(v) else float(v)

    def as_dict(self) -> dict:
        """``mF1``, ``mIoU``, ``OA``, ``boundary_f1``, ``f1``, ``classes_in_mean`` (a list)."""
        return {"mF1": self.mF1, "mIoU": self.mIoU, "OA": self.OA,
                "boundary_f1": self.boundary_f1, "f1": dict(self.f1),
                "classes_in_mean": list(self.classes_in_mean)}  # fmt: skip


@dataclass(frozen=True)
class RunRecord:
    """A run folder, read: its record (``config.json``) and logs.

    Attributes
    ----------
    folder : Path
    config : dict, ``config.json`` as written
    log, val : rows of ``log.csv`` / ``val.csv`` (:func:`read_csv_rows`), or None
    schema : int, ``run_record_schema`` (0 for records written before it)
    """

    folder: Path
    config: dict
    log: list[dict] | None
    val: list[dict] | None
    schema: int

    @classmethod
    def read(cls, folder: str | os.PathLike) -> RunRecord:
        """Read a run folder.

        Raises
        ------
        FileNotFoundError
            No ``config.json``.
        ValueError
            Unreadable JSON or CSV, or a schema newer than :data:`RUN_RECORD_SCHEMA`.
        """
        folder = Path(folder)
        config = _read_json(folder / "config.json")
        schema = config.get("run_record_schema", 0)
        if not isinstance(schema, int) or schema > RUN_RECORD_SCHEMA:
            raise ValueError(
                f"{folder / 'config.json'} has run record schema {schema!r}; this version "
                f"reads up to {RUN_RECORD_SCHEMA}"
            )
        log, val = (read_csv_rows(folder / n) if (folder / n).is_file() else None
                    for n in ("log.csv", "val.csv"))  # fmt: skip
        return cls(folder, config, log, val, schema)

    @property
    def seed(self) -> int | None:
        return self.config.get("seed")

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names (of the record, else of the ``val.csv`` columns)."""
        names = self.config.get("classes")
        if names:
            return tuple(names)
        return tuple(k[3:] for k in (self.val or [{}])[0] if k.startswith("f1:"))

    @property
    def classes_in_mean(self) -> tuple[str, ...]:
        """The classes validation averaged: the store preset's foreground classes."""
        if self.config.get("classes_in_mean"):
            return tuple(self.config["classes_in_mean"])
        return tuple(c for c in self.classes if c.lower() not in _SCHEMA0_CLUTTER)

    def final_scores(self) -> Scores | None:
        """The last row of ``val.csv`` (the final model's scores), None without one."""
        return Scores.from_val_row(self.val[-1], self.classes_in_mean) if self.val else None


@dataclass(frozen=True)
class EvalRecord:
    """An evaluation folder, read (``metrics.json``).

    Attributes
    ----------
    folder : Path
    run : Path, the run folder of the evaluated checkpoint
    scores : Scores
    store, tiles, window, overlap : what was scored (as ``metrics.json`` records them)
    """

    folder: Path
    run: Path
    scores: Scores
    store: str | None
    tiles: tuple[str, ...]
    window: list | None
    overlap: str | None

    @classmethod
    def read(cls, folder: str | os.PathLike) -> EvalRecord:
        """Read an evaluation folder.

        Raises
        ------
        FileNotFoundError
            No ``metrics.json``.
        ValueError
            Unreadable JSON, or no ``per_class`` entry.
        """
        folder = Path(folder)
        metrics = _read_json(folder / "metrics.json")
        if not isinstance(metrics.get("per_class"), dict):
            raise ValueError(f"{folder / 'metrics.json'} has no per_class scores")
        return cls(folder, _run_folder_of(str(metrics.get("checkpoint", "")), folder),
                   Scores.from_metrics(metrics), metrics.get("store"),
                   tuple(metrics.get("tiles") or ()), metrics.get("window"),
                   metrics.get("overlap"))  # fmt: skip

    def scored_on(self) -> dict:
        """``{"kind": "evaluate", "store", "tiles", "window", "overlap", "classes_in_mean"}``."""
        return {"kind": "evaluate", "store": self.store, "tiles": list(self.tiles),
                "window": self.window, "overlap": self.overlap,
                "classes_in_mean": list(self.scores.classes_in_mean)}  # fmt: skip


def _run_folder_of(checkpoint: str, eval_dir: Path) -> Path:
    """The run folder of a ``metrics.json`` ``checkpoint`` entry (a file or a folder).

    A relative entry is relative to where ``evaluate`` ran: tried from the current
    folder, then from the evaluation folder; the first with a ``config.json`` wins."""
    path = Path(checkpoint)
    tries = [path] if path.is_absolute() else [Path.cwd() / path, eval_dir / path]
    folders = [p if p.is_dir() else p.parent for p in tries]
    return next((f for f in folders if (f / "config.json").is_file()), folders[0])
