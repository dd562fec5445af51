"""Random SIGKILLs of ``npa-precompute run``: no survivor, no wrong complete tile.

Kills ``run`` (in memory), ``run --workers 2``, ``run --dask`` (blocks in this process,
or on a local cluster) and a grow (a re-run adding k=5 to a current store) at random
moments, each on its own store, alternating two input sets so that every run rewrites
the tiles of the one before. After each kill it waits a few seconds for any process of
the killed run (found by an environment marker) to end, then checks every tile the store
marks complete: each array equals the one computed from the input files its attrs name.
A last uninterrupted run per store must complete every tile.

Usage::

    python scripts/kill_harness.py [--kills 32] [--seed 18] [--work /tmp/killharness]

Prints one line per kill and the counts; exits 1 if any survivor or wrong tile was found.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

# the tests' inputs, expected arrays and process finder: one definition for both
from helpers import marked_processes  # noqa: E402
from test_store_safety import KS, TILES, TRANSFORMS, expected_arrays, make_inputs  # noqa: E402

from npa_precompute.store import list_tiles, open_store, open_tile  # noqa: E402

GROW_KS = (2, 8, 5)
MODES = {
    "run": [],
    "workers": ["--workers", "2"],
    "dask": ["--chunk", "64", "--dask", "--block", "64", "--scheduler", "synchronous"],
    "dask-cluster": ["--chunk", "64", "--dask", "--block", "64", "--workers", "1"],
    "grow": [],
}


def wrong_tiles(store: Path, expected: dict) -> tuple[int, list[str]]:
    """(complete tiles checked, problems) of a store."""
    if not (store / "zarr.json").is_file():
        return 0, []
    root = open_store(store)
    problems = []
    complete = list_tiles(root, complete_only=True)
    for tid in complete:
        tile = open_tile(root, tid)
        sha = (tile.meta.source or {}).get("label_sha256")
        want = expected.get(sha)
        if want is None:
            problems.append(f"{tid}: attrs name an unknown label")
            continue
        names = ["label", "image"] + [f"affinity/k{k}" for k in tile.affinity_ks]
        names += [f"weights/{n}" for n in tile.stored_weight_names]
        for name in names:
            if not np.array_equal(tile.group[name][...], want[name]):
                problems.append(f"{tid}/{name} differs from its input's")
    return len(complete), problems


def command(mode: str, inputs: dict, store: Path, ks=KS) -> list[str]:
    cmd = [sys.executable, "-m", "npa_precompute", "run", inputs["gt"], "--images",
           inputs["top"], "--out", str(store), "--k", ",".join(map(str, ks)), "-q"]  # fmt: skip
    for t in TRANSFORMS:
        cmd += ["--transform", t]
    if mode != "grow":
        cmd.append("--overwrite")
    return cmd + MODES[mode]


def run(cmd: list[str], token: str, kill_after: float | None) -> tuple[int, float]:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "NPALOSS_HARNESS": token, "PYTHONPATH": path}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_after is None:
        _, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {err.decode()[-2000:]}")
    else:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.communicate()
    return proc.returncode, time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=32)
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--work", default="/tmp/npaloss-kill-harness")
    ap.add_argument("--grace", type=float, default=5.0, help="seconds a survivor may take")
    ap.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES)
    )
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        ap.error(f"unknown --modes {', '.join(sorted(unknown))}")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    sets = [make_inputs(work / "A", 1), make_inputs(work / "B", 2)]
    expected = {
        **expected_arrays(sets[0], sorted(set(GROW_KS))),
        **expected_arrays(sets[1], sorted(set(GROW_KS))),
    }
    rng = random.Random(args.seed)
    durations = {}
    for mode in modes:  # an uninterrupted run of each mode: where to aim the kills
        store = work / f"{mode}.zarr"
        _, durations[mode] = run(command(mode, sets[0], store), uuid.uuid4().hex, None)
    counts = {m: {"kills": 0, "finished": 0, "survivors": 0, "checked": 0} for m in modes}
    problems: list[str] = []
    order = [modes[i % len(modes)] for i in range(args.kills)]
    for i, mode in enumerate(order):
        store = work / f"{mode}.zarr"
        inputs = sets[i % 2]
        if mode == "grow":  # a current store of k 2, 8 that the killed run grows by k=5
            shutil.rmtree(store, ignore_errors=True)
            run(command("run", inputs, store), uuid.uuid4().hex, None)
            cmd = command("grow", inputs, store, ks=GROW_KS)
        else:
            cmd = command(mode, inputs, store)
        token = uuid.uuid4().hex
        delay = rng.uniform(0.0, 0.85 * durations[mode])  # mostly before the run ends
        rc, _ = run(cmd, token, delay)
        c = counts[mode]
        c["kills" if rc == -9 else "finished"] += 1
        deadline = time.monotonic() + args.grace
        alive = marked_processes(token)
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = marked_processes(token)
        c["survivors"] += len(alive)
        for pid in alive:  # do not let them spoil the next trials
            os.kill(pid, 9)
        n, bad = wrong_tiles(store, expected)
        c["checked"] += n
        problems += [f"kill {i} ({mode}): {p}" for p in bad]
        print(f"{i:3d} {mode:13s} kill at {delay:5.2f} s rc {rc:3d} survivors {len(alive)} "
              f"complete tiles {n} wrong {len(bad)}", flush=True)  # fmt: skip
    for mode in modes:  # finish every store: complete and right
        store = work / f"{mode}.zarr"
        run(command(mode, sets[0], store, ks=GROW_KS if mode == "grow" else KS), "x", None)
        n, bad = wrong_tiles(store, expected)
        if n != len(TILES):
            problems.append(f"{mode}: {n} complete tiles after a clean run")
        problems += [f"final {mode}: {p}" for p in bad]
    kills = sum(c["kills"] for c in counts.values())
    survivors = sum(c["survivors"] for c in counts.values())
    print("\nmode           kills finished survivors complete-tiles-checked")
    for mode, c in counts.items():
        print(
            f"{mode:13s} {c['kills']:6d} {c['finished']:8d} {c['survivors']:9d} {c['checked']:8d}"
        )
    print(f"\n{kills} SIGKILLs, {survivors} surviving processes, {len(problems)} wrong tiles")
    for p in problems:
        print("  " + p)
    return 1 if survivors or problems else 0


if __name__ == "__main__":
    sys.exit(main())
