"""Eq. 1 on volumes: the three speed ratios of the volumes issue, measured in one run.

Inputs are synthetic label volumes (no labelled volume ships with an installable
package here): 4 classes, background and three kinds of random balls, deterministic.

* **online** (``npa_train.online.affinity_counts``, torch, CPU): counts of a batch of
  2 x 96³ with k = (8, 8, 8) against a MONAI ``UNet`` (3-D, channels 16-32-64-128,
  strides 2, 1 -> 4 channels) forward + backward + cross-entropy on the same batch.
  Target: <= 10 %.
* **flat in k**: the same counts with k = (2, 16, 16) against k = (8, 8, 8).
  Target: time ratio <= 1.3.
* **numba precompute** (``npa_precompute.affinity_maps``) of one 256³ volume at
  k = 8 on one core (``numba.set_num_threads(1)``): Mvox/s (target >= 50) and the
  speed-up over ``scipy.ndimage.uniform_filter`` of each class's indicator (float32,
  size 17, ``mode="nearest"``: the same edge padding), one core too (target >= 5x).

Times are medians of ``--repeats`` runs after one warm-up (compilation excluded), the
two k of the flatness ratio interleaved; by default the process's CPU time with one
torch thread (``--clock cpu``, the steadiest numbers on a shared machine: time spent
waiting for a core is not counted), or wall-clock time (``--clock wall``, ``--threads``).
Prints a Markdown table; ``--json PATH`` also writes the numbers.

Usage::

    python benchmarks/bench_volumes.py [--repeats 3] [--threads 1] [--clock cpu] [--json out.json]

Needs the ``monai`` and ``bench`` (scipy) extras.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np


def balls(shape, n_balls=40, classes=4, seed=0):
    """A (D, H, W) int64 volume: random balls of classes 1 .. classes - 1 on 0."""
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, dtype=np.int64)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    for _ in range(n_balls):
        c = [rng.uniform(0, n) for n in shape]
        r = rng.uniform(0.04, 0.15) * min(shape)
        inside = sum((g - ci) ** 2 for g, ci in zip(grid, c, strict=True)) <= r * r
        out[inside] = rng.integers(1, classes)
    return out


CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCK["cpu"]


def median_times(fns, repeats: int) -> list[float]:
    """Median time of each function, the functions interleaved within each repeat."""
    for fn in fns:
        fn()  # warm-up: compilation, workspaces
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            t = clock()
            fn()
            ts.append(clock() - t)
    return [statistics.median(ts) for ts in times]


def median_time(fn, repeats: int) -> float:
    return median_times([fn], repeats)[0]


def bench_online(repeats: int) -> dict:
    import torch
    from monai.networks.nets import UNet

    from npa_train.online import affinity_counts

    target = torch.from_numpy(np.stack([balls((96, 96, 96), seed=s) for s in (1, 2)]))
    classes = list(range(4))
    t_888, t_21616 = median_times(
        [lambda: affinity_counts(target, [(8, 8, 8)], classes=classes),
         lambda: affinity_counts(target, [(2, 16, 16)], classes=classes)],
        repeats,
    )  # fmt: skip
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=4, channels=(16, 32, 64, 128),
               strides=(2, 2, 2))  # fmt: skip
    image = torch.randn(2, 1, 96, 96, 96)

    def step():
        net.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(image), target)
        loss.backward()

    t_unet = median_time(step, repeats)
    return {
        "online_k888_s": t_888,
        "online_k2_16_16_s": t_21616,
        "unet_fwd_bwd_s": t_unet,
        "online_over_unet": t_888 / t_unet,
        "k2_16_16_over_k888": t_21616 / t_888,
    }


def bench_precompute(repeats: int) -> dict:
    import numba
    from scipy.ndimage import uniform_filter

    from npa_precompute.affinity import affinity_maps

    labels = balls((256, 256, 256), n_balls=120, seed=3).astype(np.uint8)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        t_numba = median_time(lambda: affinity_maps(labels, 8), repeats)
    finally:
        numba.set_num_threads(threads)

    def scipy_counts():
        out = np.empty(labels.shape, dtype=np.uint16)
        for c in np.unique(labels):
            mask = labels == c
            mean = uniform_filter(mask.astype(np.float32), size=17, mode="nearest")
            out[mask] = np.rint(17**3 * (1 - mean[mask])).astype(np.uint16)
        return out

    t_scipy = median_time(scipy_counts, max(1, repeats // 2))
    exact = np.array_equal(scipy_counts(), affinity_maps(labels[:], 8)[0])
    return {
        "numba_256_k8_s": t_numba,
        "numba_mvox_per_s": labels.size / t_numba / 1e6,
        "scipy_uniform_filter_s": t_scipy,
        "numba_speedup_over_scipy": t_scipy / t_numba,
        "scipy_counts_equal": bool(exact),
    }


def report(r: dict) -> str:
    rows = [
        ("online counts 2x96³, k=(8,8,8) / MONAI UNet fwd+bwd", r["online_over_unet"], "<= 0.10",
         f"{r['online_k888_s']:.3f} s / {r['unet_fwd_bwd_s']:.3f} s"),
        ("online k=(2,16,16) / k=(8,8,8)", r["k2_16_16_over_k888"], "<= 1.3",
         f"{r['online_k2_16_16_s']:.3f} s / {r['online_k888_s']:.3f} s"),
        ("numba 256³ k=8, one core (Mvox/s)", r["numba_mvox_per_s"], ">= 50",
         f"{r['numba_256_k8_s']:.3f} s"),
        ("numba / scipy uniform_filter per class (speed-up)", r["numba_speedup_over_scipy"],
         ">= 5", f"{r['scipy_uniform_filter_s']:.3f} s / {r['numba_256_k8_s']:.3f} s"),
    ]  # fmt: skip
    lines = [
        f"machine: {platform.processor() or platform.machine()}, torch threads "
        f"{r['torch_threads']}, {r['clock']} time",
        "",
        "| measure | value | target | times |",
        "|---|---:|---|---|",
    ]
    lines += [
        f"| {name} | {value:.3g} | {target} | {times} |" for name, value, target, times in rows
    ]
    lines.append(f"\nscipy's rounded counts equal the exact ones: {r['scipy_counts_equal']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--clock", choices=sorted(CLOCK), default="cpu")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    import torch

    global clock
    clock = CLOCK[args.clock]
    torch.set_num_threads(args.threads)
    results = {"torch_threads": torch.get_num_threads(), "clock": args.clock}
    results.update(bench_online(args.repeats))
    results.update(bench_precompute(args.repeats))
    print(report(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
