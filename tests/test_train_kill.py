"""`npa-train fit --val-every` killed (SIGKILL: no chance to save) between a checkpoint and
its validation, then resumed: log.csv, val.csv and best.pt equal an uninterrupted run's."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import write_train_store

WNAME = "k4_log10_L0.5"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_train_store(tmp_path_factory.mktemp("kill"))


def _args(store, out, *extra) -> list[str]:
    return ["fit", "--store", str(store), "--out", str(out), "--weights", WNAME,
            "--val-tiles", "areaB", "--iters", "8", "--batch", "2", "--crop", "32",
            "--seed", "3", "--lr", "0.05", "--val-every", "2", "--device", "cpu",
            "--quiet", *extra]  # fmt: skip


def _rows(path: Path) -> list[dict]:
    """The rows of a run's CSV log without the timing column (which differs by run)."""
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def _assert_same_run(out: Path, ref: Path) -> None:
    assert _rows(out / "log.csv") == _rows(ref / "log.csv")
    assert _rows(out / "val.csv") == _rows(ref / "val.csv")
    for name in ("best.pt", "checkpoint.pt"):
        a = torch.load(out / name, weights_only=True)
        b = torch.load(ref / name, weights_only=True)
        assert a["iteration"] == b["iteration"], name
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"]), name


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory) -> Path:
    """The uninterrupted run, in a process of the same environment. It checkpoints every
    iteration; the killed runs checkpoint every 1 or 2: how often a run saves changes
    nothing it computes (best.pt and the last checkpoint.pt are those of the same steps)."""
    ref = tmp_path_factory.mktemp("kill_ref") / "ref"
    args = _args(store, ref, "--checkpoint-every", "1")
    done = subprocess.run([sys.executable, "-m", "npa_train", *args], env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return ref


def _resume(store, out, *extra) -> None:
    done = subprocess.run([sys.executable, "-m", "npa_train", *_args(store, out, *extra),
                           "--resume"], env=ENV, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_kill_as_soon_as_the_first_checkpoint_appears(store, reference, tmp_path):
    extra = ("--checkpoint-every", "2")
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "npa_train", *_args(store, out, *extra)],
                            env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        t0 = time.time()
        while not (out / "checkpoint.pt").exists() and proc.poll() is None:
            assert time.time() - t0 < 300
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 2
    _resume(store, out, *extra)
    _assert_same_run(out, reference)


# kills itself (SIGKILL) when the first validation starts: iteration 2, after the checkpoint
# of iteration 1; a checkpoint of 2 saved before validating 2 would make --resume skip it
_KILL_IN_VALIDATION = """
import os, signal, sys
from npa_train import validation

def score(self, model, iteration, seconds):
    os.kill(os.getpid(), signal.SIGKILL)

validation.Validator.score = score
from npa_train.cli import main
main(sys.argv[1:], prog_name="npa-train")
"""


def test_kill_inside_a_validation_loses_no_row(store, reference, tmp_path):
    extra = ("--checkpoint-every", "1")
    script = tmp_path / "kill_in_validation.py"
    script.write_text(_KILL_IN_VALIDATION)
    out = tmp_path / "killed"
    done = subprocess.run([sys.executable, str(script), *_args(store, out, *extra)], env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert not (out / "val.csv").read_text().splitlines()[1:]  # no row yet
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 1
    _resume(store, out, *extra)
    _assert_same_run(out, reference)
