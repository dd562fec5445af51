"""Random-kill harness of ``npa-train fit --val-every``: SIGKILL at random moments, then
``--resume``, and compare the run folder with an uninterrupted run's.

Each episode starts a run, kills it (SIGKILL: no chance to save) at a random moment (a
random delay of up to 1.5 steps after a random iteration was logged), resumes it with
``--resume`` (killed again, up to ``--kills-per-episode`` times) and lets the last
resume finish. A kill before the first
checkpoint leaves nothing to resume: the episode then starts over with ``--overwrite``
(counted apart). The finished folder must equal the reference run's: ``log.csv`` and
``val.csv`` without their ``seconds`` column, and the iteration and weights of
``best.pt`` and ``checkpoint.pt``.

Usage::

    python scripts/kill_resume_fit.py --episodes 4 --kills-per-episode 3 [--seed 0]

The store is made in a temporary folder (two small synthetic ISPRS-coded tiles, as the
tests make). Prints one line per kill and a summary; exit status 1 if a run differs.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
WEIGHTS = "k4_log10_L0.5"


def make_store(folder: Path) -> Path:
    """Two ISPRS-coded tiles (96 x 96, 64 x 64) with k = 4 weights; ``areaB`` validates."""
    import tifffile

    from npa_precompute.pipeline import run_precompute
    from npa_precompute.presets import ISPRS

    rng = np.random.default_rng(0)
    palette = np.array((*ISPRS.palette, (0, 0, 0)), dtype=np.uint8)
    colours = rng.integers(0, 256, size=(7, 3))
    for sub in ("gts", "top"):
        (folder / sub).mkdir()
    for tid, (h, w) in {"areaA": (96, 96), "areaB": (64, 64)}.items():
        idx = np.kron(rng.integers(0, 7, size=(h // 8, w // 8)), np.ones((8, 8), dtype=np.int64))
        tifffile.imwrite(folder / "gts" / f"{tid}_noBoundary.tif", palette[idx])
        image = np.clip(colours[idx] + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
        tifffile.imwrite(folder / "top" / f"{tid}.tif", image)
    out = folder / "store.zarr"
    run_precompute([str(folder / "gts")], out, images=[str(folder / "top")], ks="4", chunk=16)
    return out


def fit_args(store: Path, out: Path, iters: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "npa_train", "fit", "--store", str(store), "--out", str(out),
            "--weights", WEIGHTS, "--val-tiles", "areaB", "--iters", str(iters), "--batch", "2",
            "--crop", "32", "--seed", "3", "--lr", "0.05", "--val-every", "3",
            "--checkpoint-every", "2", "--device", "cpu", "--quiet", *extra]  # fmt: skip


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def rows_with_seconds(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return [r["seconds"] for r in csv.DictReader(f)]


def differences(out: Path, ref: Path) -> list[str]:
    """What differs between two finished run folders (timings aside)."""
    diff = [name for name in ("log.csv", "val.csv") if rows(out / name) != rows(ref / name)]
    for name in ("best.pt", "checkpoint.pt"):
        a = torch.load(out / name, weights_only=True)
        b = torch.load(ref / name, weights_only=True)
        same = a["iteration"] == b["iteration"] and all(
            torch.equal(a["model"][k], b["model"][k]) for k in b["model"]
        )
        if not same:
            diff.append(f"{name} (iteration {a['iteration']} vs {b['iteration']})")
    return diff


def last_iteration(log: Path, since_ns: int) -> int:
    """The last iteration in ``log`` if it was written after ``since_ns``, else 0."""
    try:
        if log.stat().st_mtime_ns <= since_ns:
            return 0
        lines = log.read_text().splitlines()[1:]
        return int(lines[-1].split(",")[0]) if lines else 0
    except (OSError, ValueError, IndexError):
        return 0


def kill_at(args: list[str], log: Path, iteration: int, delay: float) -> bool:
    """Run ``args``; SIGKILL it ``delay`` s after it logged ``iteration`` (False: it ended).

    Startup (imports, reading the store) takes most of a small run's time, so the moment
    is drawn in training time: after a given logged iteration, within about one step and
    its validation or checkpoint.
    """
    launch = time.time_ns()
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and last_iteration(log, launch) < iteration:
        time.sleep(0.002)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--kills-per-episode", type=int, default=3)
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    opts = p.parse_args()
    rnd = random.Random(opts.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = make_store(tmp)
        t0 = time.perf_counter()
        subprocess.run(fit_args(store, tmp / "ref", opts.iters), env=ENV, check=True)
        duration = time.perf_counter() - t0
        step = float(rows_with_seconds(tmp / "ref" / "log.csv")[-1]) / opts.iters
        print(f"uninterrupted run: {duration:.1f} s, {step:.2f} s per step", flush=True)
        kills = early = bad = 0
        for ep in range(opts.episodes):
            out = tmp / f"ep{ep}"
            for n in range(opts.kills_per_episode):
                ckpt = out / "checkpoint.pt"
                start = torch.load(ckpt, weights_only=True)["iteration"] if ckpt.is_file() else 0
                extra = ("--resume",) if ckpt.is_file() else ("--overwrite",)
                after = rnd.randint(start + 1, opts.iters)
                delay = rnd.uniform(0.0, 1.5) * step
                args = fit_args(store, out, opts.iters, *extra)
                if not kill_at(args, out / "log.csv", after, delay):
                    print(f"episode {ep} kill {n}: finished before it", flush=True)
                    continue
                kills += 1
                it = torch.load(ckpt, weights_only=True)["iteration"] if ckpt.is_file() else None
                early += it is None
                print(f"episode {ep} kill {n}: {delay:.2f} s after iteration {after} was "
                      f"logged; checkpoint {it}", flush=True)  # fmt: skip
            extra = ("--resume",) if (out / "checkpoint.pt").is_file() else ("--overwrite",)
            subprocess.run(fit_args(store, out, opts.iters, *extra), env=ENV, check=True)
            diff = differences(out, tmp / "ref")
            bad += bool(diff)
            print(f"episode {ep}: {'differs: ' + ', '.join(diff) if diff else 'same'}", flush=True)
        print(f"{kills} kills ({early} before the first checkpoint) in {opts.episodes} "
              f"episodes; {bad} resumed run(s) differ from the uninterrupted one")  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
