"""Validation during training (fit --val-every): val.csv equals a separate evaluate of the
same checkpoint, best.pt is the checkpoint of the best logged metric, resume keeps both."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import write_train_store

from npa_precompute.errors import ParameterError
from npa_train.cli import main
from npa_train.compare import read_csv_rows as read_val_log
from npa_train.evaluate import evaluate
from npa_train.train import fit
from npa_train.validation import val_header

pytestmark = pytest.mark.usefixtures("one_thread")

WNAME = "k4_log10_L0.5"
KW = dict(weights=WNAME, val_tiles="areaB", iters=6, batch=2, crop=32, device="cpu",
          progress=False, seed=4, val_every=2, lr=0.05)  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_train_store(tmp_path_factory.mktemp("val"))


@pytest.fixture(scope="module")
def run(store, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("valrun") / "run"
    return out, fit(store, out, **KW)


def _scores(store, checkpoint) -> dict:
    return evaluate(store, checkpoint, None, tiles="areaB", window=32, overlap="1/3",
                    device="cpu", progress=False)  # fmt: skip


def test_val_csv_rows_and_columns(run):
    out, summary = run
    rows = read_val_log(out / "val.csv")
    assert [int(r["iteration"]) for r in rows] == [2, 4, 6]
    header = (out / "val.csv").read_text().splitlines()[0].split(",")
    classes = torch.load(out / "checkpoint.pt", weights_only=True)["config"]["classes"]
    assert header == val_header(classes) and header[:6] == [
        "iteration", "seconds", "mF1", "mIoU", "OA", "boundary_f1"]  # fmt: skip
    assert all(0.0 <= r["OA"] <= 1.0 for r in rows)
    best = max(rows, key=lambda r: r["mF1"])
    assert summary["best_metric"] == "mF1"
    assert summary["best_iteration"] == int(best["iteration"])
    assert summary["best_value"] == pytest.approx(best["mF1"], rel=1e-5)


def test_validation_equals_a_separate_evaluate_of_the_checkpoint(store, run):
    out, _ = run
    last = read_val_log(out / "val.csv")[-1]
    scores = _scores(store, out / "checkpoint.pt")  # the checkpoint of iteration 6
    for key in ("mF1", "mIoU", "OA"):
        assert last[key] == pytest.approx(scores[key], rel=1e-5), key
    assert last["boundary_f1"] == pytest.approx(scores["boundary"]["f1"], rel=1e-5)
    for c, v in scores["per_class"].items():
        if math.isnan(v["f1"]):
            assert last[f"f1:{c}"] is None
        else:
            assert last[f"f1:{c}"] == pytest.approx(v["f1"], rel=1e-5), c


def test_best_pt_is_the_checkpoint_of_the_best_logged_metric(store, run):
    out, summary = run
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["iteration"] == summary["best_iteration"]
    assert _scores(store, out / "best.pt")["mF1"] == pytest.approx(summary["best_value"], rel=1e-5)
    rows = read_val_log(out / "val.csv")
    # no later row beats it; an earlier equal one would have been kept
    assert all(r["mF1"] <= summary["best_value"] + 1e-12 for r in rows)


def test_resume_keeps_the_validation_log(store, run, tmp_path):
    out, _ = run
    cut = tmp_path / "cut"

    def stop_at_3(iteration, lr, loss):
        if iteration == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(store, cut, callback=stop_at_3, **KW)
    assert [int(r["iteration"]) for r in read_val_log(cut / "val.csv")] == [2]
    fit(store, cut, resume=True, **KW)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in read_val_log(cut / "val.csv")]
    ref = [{k: v for k, v in r.items() if k != "seconds"} for r in read_val_log(out / "val.csv")]
    assert strip == ref


def test_val_every_needs_validation_tiles(store, tmp_path):
    with pytest.raises(ParameterError, match="`val_every` needs validation tiles"):
        fit(store, tmp_path / "x", **{**KW, "val_tiles": None})
    r = CliRunner().invoke(main, ["fit", "--store", str(store), "--out", str(tmp_path / "y"),
                                  "--weights", WNAME, "--val-every", "2",
                                  "--iters", "2"])  # fmt: skip
    assert r.exit_code == 2 and "--val-every" in r.output and "validation tiles" in r.output
