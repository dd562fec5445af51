"""Online NPA weights (npa_train.online): their cost next to a training step.

Inputs: crops of a Vaihingen-sized (2048x2560) tile mirror-tiled from the real Vaihingen
crop (RGB-coded eroded labels: 6 classes + the ignore band), precomputed into a store
(k = 32, log10, L = 0.5) for the comparison with reading the weights from the store.

Measured side by side in one run (interleaved, median of ``--repeats``):

* **CPU** (one torch thread and the process's CPU time by default: the steadiest numbers
  on a shared machine; ``--threads``, ``--clock wall`` for others):
  ``npa_weights`` for a batch of 6 x 513² labels (what ``NPALoss(weight=None)`` computes)
  at k = 8, 16, 32, 64; the same for the grown labels the trainer uses
  (``--weights online:``: (513 + 2k)², cut to the crop); the small FCN's forward +
  backward (+ loss) on the same batch; reading the same weights from the store (6 crop
  windows of ``k32_log10_L0.5`` decompressed, what the loader workers do with store
  weights). Targets: online weights at k = 32 <= 15 % of the FCN step; time(k = 64) /
  time(k = 8) <= 1.3.
* **GPU** (when CUDA is available): the same weights on the device against a
  DeepLabV3-ResNet101 training step (torchvision, no pretrained weights, batch 6 x 513²,
  bf16 autocast, SGD), CUDA-event timed; the weights must not synchronise with the host
  (checked with ``torch.cuda.set_sync_debug_mode("error")``). Target: <= 2 % of the step.

Prints a Markdown report; ``--write`` puts it into ``docs/benchmarks-train.md``
(section ``bench_online``); ``--json PATH`` also writes the numbers.

Usage::

    python benchmarks/bench_online.py [--quick] [--write] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Entry,
    LoadMeter,
    add_write_option,
    fmt,
    machine_rows,
    md_table,
    now,
    require_data,
    verdict,
    write_section,
)

CROP = 513
BATCH = 6
KS = (8, 16, 32, 64)
TARGET_CPU = 0.15
TARGET_FLAT = 1.3
TARGET_GPU = 0.02


def crops(store: Path, n: int, seed: int = 0):
    """``n`` crop positions (tile, y, x) of 513² and their labels (N, 513, 513) uint8."""
    from npa_precompute.store import list_tiles, open_store, open_tile

    root = open_store(store)
    tiles = list_tiles(root, complete_only=True)
    rng = np.random.default_rng(seed)
    out, where = [], []
    for i in range(n):
        tid = tiles[i % len(tiles)]
        t = open_tile(root, tid)
        h, w = t.shape
        y, x = int(rng.integers(0, h - CROP)), int(rng.integers(0, w - CROP))
        out.append(np.asarray(t.label[y : y + CROP, x : x + CROP]))
        where.append((tid, y, x))
    return np.stack(out), where


def grown_labels(store: Path, where, k: int) -> np.ndarray:
    """The crops' labels grown by k each side (tile edge repeated), as the trainer has."""
    from npa_precompute.store import open_store, open_tile

    root = open_store(store)
    out = []
    for tid, y, x in where:
        lab = np.asarray(open_tile(root, tid).label[...])
        h, w = lab.shape
        ys = np.clip(np.arange(y - k, y + CROP + k), 0, h - 1)
        xs = np.clip(np.arange(x - k, x + CROP + k), 0, w - 1)
        out.append(lab[np.ix_(ys, xs)])
    return np.stack(out)


def cpu_section(store: Path, repeats: int, threads: int, clock: str, log) -> dict:
    import torch

    from npa_precompute.shards import ShardReader, ZarrReader
    from npa_train.loss import NPALoss
    from npa_train.model import SmallFCN
    from npa_train.online import affinity_counts, npa_weights, weights_from_counts

    torch.set_num_threads(threads)
    labels, where = crops(store, BATCH)
    target = torch.from_numpy(labels).long()
    grown = {k: torch.from_numpy(grown_labels(store, where, k)).long() for k in KS}
    classes = [*range(6), 255]

    def online(k):
        return lambda: npa_weights(target, k, "log10:L=0.5", num_classes=6)

    def trainer(k):
        g = grown[k]

        def go():
            counts = affinity_counts(g, k, classes=classes)[:, 0, k:-k, k:-k]
            return weights_from_counts(counts, target, "log10:L=0.5", k=k)

        return go

    # the exactness of what is timed: equal to the store's weights
    from npa_precompute.store import open_store, open_tile

    root = open_store(store)
    stored = np.stack([
        np.asarray(open_tile(root, tid).weights("k32_log10_L0.5")[y : y + CROP, x : x + CROP])
        for tid, y, x in where
    ])  # fmt: skip
    assert np.array_equal(trainer(32)().numpy(), stored), "trainer path != store weights"

    torch.manual_seed(0)
    model = SmallFCN(3, 6)
    image = torch.randn(BATCH, 3, CROP, CROP)
    weight = torch.from_numpy(stored)
    crit = NPALoss(k=None)

    def fcn_step():
        model.zero_grad(set_to_none=True)
        crit(model(image), target, weight).backward()

    readers = {}
    for tid, _, _ in where:
        if tid not in readers:
            arr = open_tile(root, tid).weights("k32_log10_L0.5")
            readers[tid] = ShardReader.create(arr) or ZarrReader(arr)

    def store_read():
        return [readers[t].read(y, y + CROP, x, x + CROP) for t, y, x in where]

    entries = [Entry(("fcn",), fcn_step, BATCH * CROP * CROP, repeats),
               Entry(("store",), store_read, BATCH * CROP * CROP, repeats)]  # fmt: skip
    entries += [Entry(("online", k), online(k), BATCH * CROP * CROP, repeats) for k in KS]
    entries += [Entry(("trainer", k), trainer(k), BATCH * CROP * CROP, repeats) for k in KS]
    log(f"CPU timings, {threads} thread(s), {clock} clock, {repeats} repeats")
    meter = LoadMeter().start()
    interleaved(entries, time.process_time if clock == "cpu" else time.perf_counter)
    others = meter.stop()
    ms = {e.key: e.seconds * 1e3 for e in entries}
    return {"threads": threads, "clock": clock, "others": others,
            "ms": {" ".join(map(str, k)): v for k, v in ms.items()}}  # fmt: skip


def interleaved(entries, clock) -> None:
    """:func:`_common.run_interleaved` with a choice of clock: the process's CPU time
    (``time.process_time``) does not count the time other processes of a shared machine
    take the cores away; with one torch thread it is the compute time of each call."""
    for e in entries:
        e.fn()  # warm-up: JIT of nothing, but buffers, tables, allocator
    for _ in range(max(e.repeats for e in entries)):
        for e in entries:
            t0 = clock()
            e.fn()
            e.times.append(clock() - t0)


def gpu_section(store: Path, repeats: int, log) -> dict | None:
    import torch

    if not torch.cuda.is_available():
        return None
    from npa_train.online import npa_weights

    dev = torch.device("cuda")
    labels, _ = crops(store, BATCH)
    target = torch.from_numpy(labels).long().to(dev)
    res: dict = {"device": torch.cuda.get_device_name(0)}
    # exact on the device, and no host synchronisation in the weights
    cpu_w = npa_weights(target.cpu(), 32, num_classes=6)
    for k in KS:
        npa_weights(target, k, num_classes=6)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        w = npa_weights(target, 32, num_classes=6)
        res["no_sync"] = True
    except RuntimeError as exc:
        res["no_sync"] = False
        res["sync_error"] = str(exc)[:300]
        w = npa_weights(target, 32, num_classes=6)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    res["equal_to_cpu"] = bool(torch.equal(w.cpu(), cpu_w))

    def cuda_ms(fn, n):
        times = []
        for _ in range(n):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        return statistics.median(times)

    res["online_ms"] = {k: cuda_ms(lambda k=k: npa_weights(target, k, num_classes=6), 3 * repeats)
                        for k in KS}  # fmt: skip
    try:
        import torchvision  # noqa: F401

        from npa_train.loss import NPALoss
        from npa_train.model import build_model

        torch.backends.cudnn.benchmark = True
        model = build_model("deeplabv3_resnet101", in_channels=3, num_classes=6, aux=True)
        model.to(dev).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        image = torch.randn(BATCH, 3, CROP, CROP, device=dev).contiguous(
            memory_format=torch.channels_last
        )
        crit = NPALoss(k=None)
        weight = w

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(image)
            loss = crit(out["out"].float(), target, weight)
            loss = loss + 0.4 * crit(out["aux"].float(), target, weight)
            loss.backward()
            opt.step()

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        log("GPU: DeepLabV3-ResNet101 step")
        res["deeplab_step_ms"] = cuda_ms(step, repeats)
        # the step with the weights computed inside it (NPALoss(weight=None))
        crit_online = NPALoss(k=32)

        def step_online():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(image)
            loss = crit_online(out["out"], target)
            loss = loss + 0.4 * crit_online(out["aux"], target)
            loss.backward()
            opt.step()

        step_online()
        res["deeplab_step_online_ms"] = cuda_ms(step_online, repeats)
    except Exception as exc:  # report it, keep the weight timings
        res["deeplab_error"] = f"{type(exc).__name__}: {exc}"
    return res


def report(cpu: dict, gpu: dict | None, load0, quick: bool, source: str) -> tuple[str, dict]:
    ms = cpu["ms"]
    fcn, store = ms["fcn"], ms["store"]
    on = {k: ms[f"online {k}"] for k in KS}
    tr = {k: ms[f"trainer {k}"] for k in KS}
    ratio = on[32] / fcn
    flat = on[64] / on[8]
    rows = [[f"k = {k}", fmt(on[k]), fmt(100 * on[k] / fcn, 2), fmt(tr[k]),
             fmt(100 * tr[k] / fcn, 2)] for k in KS]  # fmt: skip
    lines = [
        f"### Online weights (`benchmarks/bench_online.py`, {now()}{', --quick' if quick else ''})",
        "",
        f"Batch of {BATCH} × {CROP}² crops of {source}, mirror-tiled (6 classes + ignore "
        f"band), log10, L = 0.5; CPU on {cpu['threads']} torch thread(s), each call "
        f"timed by {'the process CPU time' if cpu['clock'] == 'cpu' else 'the wall clock'} "
        f"(other processes kept {cpu['others']:.2f} cores busy meanwhile); medians of "
        "interleaved runs, so the ratios come from one run.",
        "",
        md_table(
            [
                "",
                "`npa_weights` 6×513² (ms)",
                "% of FCN step",
                "trainer: grown (513+2k)², cut (ms)",
                "% of FCN step",
            ],
            rows,
        ),
        "",
        md_table(
            ["reference on the same batch", "ms"],
            [
                ["small FCN forward + NPA loss + backward", fmt(fcn)],
                [
                    "reading the same weights from the store (6 windows, `k32_log10_L0.5`)",
                    fmt(store),
                ],
            ],
        ),
        "",
        md_table(
            ["target", "measured", "verdict"],
            [
                [
                    f"online weights, k = 32 ≤ {TARGET_CPU:.0%} of the FCN step (CPU)",
                    f"{ratio:.1%}",
                    verdict(ratio <= TARGET_CPU),
                ],
                [
                    f"time(k = 64) / time(k = 8) ≤ {TARGET_FLAT}",
                    f"{flat:.2f}",
                    verdict(flat <= TARGET_FLAT),
                ],
                [
                    "online k = 32 against reading the stored weights",
                    f"{on[32] / store:.2f}×",
                    verdict(None),
                ],
            ],
        ),
        "",
    ]
    out = {"cpu": cpu, "ratio_k32_fcn": ratio, "k64_over_k8": flat}
    if gpu is None:
        lines += ["GPU: not measured (no CUDA device on this machine); the script measures it "
                  "when one is present.", ""]  # fmt: skip
    else:
        g = gpu
        lines += [f"GPU ({g['device']}): weights equal the CPU's: {g['equal_to_cpu']}; no host "
                  f"synchronisation: {g['no_sync']}.", ""]  # fmt: skip
        grow = [[f"k = {k}", fmt(g["online_ms"][k])] for k in KS]
        lines += [md_table(["`npa_weights` on the GPU", "ms"], grow), ""]
        if "deeplab_step_ms" in g:
            gr = g["online_ms"][32] / g["deeplab_step_ms"]
            out["gpu_ratio"] = gr
            lines += [md_table(
                ["DeepLabV3-ResNet101 step, 6×513², bf16", "ms"],
                [["with weights passed in", fmt(g["deeplab_step_ms"])],
                 ["with `NPALoss(k=32)` computing them (main + aux loss)",
                  fmt(g["deeplab_step_online_ms"])]],
            ), "", md_table(["target", "measured", "verdict"],
                            [[f"online weights ≤ {TARGET_GPU:.0%} of the step", f"{gr:.2%}",
                              verdict(gr <= TARGET_GPU)]]), ""]  # fmt: skip
        else:
            lines += [f"DeepLabV3 step not measured: {g.get('deeplab_error')}", ""]
    out["gpu"] = gpu
    lines += ["", md_table(["machine", ""], machine_rows(load0))]
    return "\n".join(lines), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 9)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on the CPU (default 1: steadiest on a shared "
                        "machine)")  # fmt: skip
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="time each call by this process's CPU time (default; immune to "
                        "other processes on the cores) or by the wall clock")  # fmt: skip
    parser.add_argument("--data-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "npaloss-bench")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    add_write_option(parser, "benchmarks-train.md")
    args = parser.parse_args()
    load0 = os.getloadavg()
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    import _common
    import bench_train
    from bench_train import ensure_inputs

    source = "the real Vaihingen labels"
    if not (_common.REAL_LABEL.is_file() and _common.REAL_IMAGE.is_file()):
        # e.g. on a GPU machine without ../shared/data: the repository's synthetic demo tile
        demo = _common.ROOT / "data" / "demo"
        label = demo / "gts_eroded_for_participants" / "demo_area1_noBoundary.tif"
        image = demo / "top" / "demo_area1.tif"
        if not label.is_file():
            require_data()
        log(f"{_common.REAL_LABEL} not found: using the demo tile {label}")
        for mod in (_common, bench_train):
            mod.REAL_LABEL, mod.REAL_IMAGE = label, image
        source = "the synthetic demo labels (data/demo; the real crop was not found)"

    _, store = ensure_inputs(args.data_dir, 2, log)
    repeats = args.repeats or (3 if args.quick else 9)
    cpu = cpu_section(store, repeats, args.threads, args.clock, log)
    gpu = gpu_section(store, repeats, log)
    text, numbers = report(cpu, gpu, load0, args.quick, source)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2, default=str) + "\n")
    if args.write:
        write_section(args.write, "bench_online", text)
        log(f"wrote {args.write}")


if __name__ == "__main__":
    main()
