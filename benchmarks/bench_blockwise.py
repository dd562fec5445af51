"""Blockwise (``--dask``) precompute against the in-memory path: throughput, scaling, memory.

Writes square label rasters mirror-tiled from the real Vaihingen crop as tiled TIFFs
(256-pixel TIFF tiles, zlib, written tile by tile so no raster is ever in memory
whole), then runs :func:`npa_precompute.pipeline.run_precompute` with k = 8, 16, 32,
64 and log10:L=0.5, each run in a fresh process (so its peak resident memory is its
own):

* in memory vs blockwise (2048-pixel blocks, in-process scheduler) on the same raster;
* blockwise on a Dask LocalCluster with 1 and 2 worker processes (peak memory per worker
  read on the workers);
* blockwise at growing raster sizes: seconds per Mpix should stay flat (cost linear in
  pixels) and so should peak memory.

Peak memory is ``ru_maxrss`` growth over the same process after a warm-up run (imports
and compiled kernels loaded), i.e. what the run itself added.

Usage::

    python benchmarks/bench_blockwise.py [--sizes 2048,4096,8192,12288] [--quick] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    add_write_option,
    machine_rows,
    md_table,
    real_rgb_label,
    require_data,
    wait_for_quiet,
    write_mirror_tiff,
    write_section,
)

KS = (8, 16, 32, 64)
TRANSFORM = "log10:L=0.5"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


MEMORY_LIMIT = "1GB"  # per local worker: less than the in-memory path needs from 6000^2 on


def probe(label: Path, out: Path, mode: str, block: int, workers: int) -> dict:
    """One run in this (fresh) process; returns seconds and peak memory growth."""
    from npa_precompute.blockwise import DaskOptions
    from npa_precompute.pipeline import run_precompute

    warm = out.with_name(out.name + ".warm")
    small = out.with_name("warm.tif")
    write_mirror_tiff(small, real_rgb_label(), (512, 512))
    sync = DaskOptions(block=512, scheduler="synchronous")
    run_precompute([str(small)], warm, ks=KS, transforms=[TRANSFORM], overwrite=True, dask=sync)
    base = _rss_mib()
    opts = None
    if mode == "blockwise":
        opts = DaskOptions(block=block, scheduler="synchronous")
    elif mode == "cluster":
        opts = DaskOptions(block=block, workers=workers, memory_limit=MEMORY_LIMIT)
    worker_peaks: list[float] = []
    started: list[float] = []
    if mode == "cluster":
        # measure the workers too: wrap the client so their peak RSS is read before closing
        import npa_precompute.blockwise as bw

        original = bw.dask_client

        from contextlib import contextmanager

        @contextmanager
        def measured(o):
            t = time.perf_counter()
            with original(o) as client:
                client.wait_for_workers(o.workers)
                started.append(time.perf_counter() - t)
                yield client
                peaks = client.run(_rss_mib)
                worker_peaks.extend(peaks.values())

        bw.dask_client = measured
    t0 = time.perf_counter()
    summary = run_precompute(
        [str(label)], out, ks=KS, transforms=[TRANSFORM], overwrite=True, dask=opts
    )
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "pixels": summary.pixels,
        "grown_mib": _rss_mib() - base,
        "base_mib": base,
        "worker_peak_mib": max(worker_peaks) if worker_peaks else None,
        "cluster_start_s": started[0] if started else 0.0,
    }


def run_probe(label: Path, out: Path, mode: str, block: int, workers: int, wait: float) -> dict:
    wait_for_quiet(wait)
    cmd = [sys.executable, __file__, "--probe", mode, str(label), str(out), str(block),
           str(workers)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"probe {mode} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return r


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--probe":
        mode, label, out, block, workers = argv[1:6]
        r = probe(Path(label), Path(out), mode, int(block), int(workers))
        print(json.dumps(r))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=None, help="raster sides (default 2048,4096,8192,12288)")
    parser.add_argument("--quick", action="store_true", help="sizes 1024,2048,4096")
    parser.add_argument("--block", type=int, default=2048, help="block side (default 2048)")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "npaloss-bench-blockwise"
    )
    parser.add_argument("--wait-idle", type=float, default=20.0, metavar="S")
    add_write_option(parser)
    args = parser.parse_args(argv)
    require_data()
    sizes = [int(s) for s in (args.sizes or ("1024,2048,4096" if args.quick else
                                             "2048,4096,8192,12288")).split(",")]  # fmt: skip
    args.data_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load_start = os.getloadavg()

    def log(msg: str) -> None:
        print(f"[bench_blockwise {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    labels = {}
    for n in sizes:
        path = args.data_dir / f"mosaic_{n}" / f"area{n}.tif"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            log(f"writing {path}")
            write_mirror_tiff(path, real_rgb_label(), (n, n))
        labels[n] = path
    scratch = args.data_dir / "stores"
    scratch.mkdir(exist_ok=True)
    cmp_n = sizes[-2] if len(sizes) > 1 else sizes[0]
    rows_cmp = []
    res = {}
    for mode, workers in (("memory", 1), ("blockwise", 1), ("cluster", 1), ("cluster", 2)):
        log(f"{mode} x{workers} on {cmp_n}^2")
        r = run_probe(labels[cmp_n], scratch / f"{mode}{workers}.zarr", mode, args.block,
                      workers, args.wait_idle)  # fmt: skip
        res[(mode, workers)] = r
    base = res[("memory", 1)]["seconds"]
    names = {
        ("memory", 1): "in memory (`run`)",
        ("blockwise", 1): "blockwise, in-process scheduler",
        ("cluster", 1): f"blockwise, LocalCluster 1 worker ({MEMORY_LIMIT})",
        ("cluster", 2): f"blockwise, LocalCluster 2 workers ({MEMORY_LIMIT} each)",
    }
    for key, r in res.items():
        worker = r["worker_peak_mib"]
        work = r["seconds"] - r["cluster_start_s"]
        rows_cmp.append((
            names[key], f"{r['seconds']:.1f}", f"{r['cluster_start_s']:.1f}",
            f"{r['pixels'] / work / 1e6:.1f}", f"{base / r['seconds']:.2f}",
            f"{r['grown_mib']:.0f}", f"{worker:.0f}" if worker else "-",
        ))  # fmt: skip
    log(f"cluster x2 on {sizes[-1]}^2 (memory limit {MEMORY_LIMIT} per worker)")
    big = run_probe(labels[sizes[-1]], scratch / "big.zarr", "cluster", args.block, 2,
                    args.wait_idle)  # fmt: skip
    rows_size = []
    for n in sizes:
        log(f"blockwise on {n}^2")
        r = run_probe(labels[n], scratch / f"size{n}.zarr", "blockwise", args.block, 1,
                      args.wait_idle)  # fmt: skip
        rows_size.append((
            f"{n}×{n}", f"{r['pixels'] / 1e6:.0f}", f"{r['seconds']:.1f}",
            f"{r['seconds'] / r['pixels'] * 1e6 * 1000:.0f}",
            f"{r['grown_mib']:.0f}", f"{r['pixels'] * 29 / 2**20:.0f}",
        ))  # fmt: skip
    text = "\n".join(
        [
            "## Blockwise benchmark (`benchmarks/bench_blockwise.py`)",
            "",
            f"Labels: RGB-coded TIFFs mirror-tiled from the real Vaihingen crop (256-pixel TIFF "
            f"tiles, zlib); k = {', '.join(map(str, KS))}, {TRANSFORM}, float32 weights; "
            f"blocks of {args.block} pixels; each run in a fresh process, peak memory = growth "
            "of its maximum resident set over a warm-up run. Total "
            f"{time.perf_counter() - t_start:.0f} s.",
            "",
            "### Machine",
            "",
            md_table(("item", "value"), machine_rows(load_start)),
            "",
            f"### Same raster ({cmp_n}×{cmp_n}), in memory against blockwise",
            "",
            md_table(
                (
                    "run",
                    "s",
                    "of which cluster start s",
                    "Mpix/s after start",
                    "speed vs in memory",
                    "peak growth MiB (main process)",
                    "peak RSS MiB per worker",
                ),
                rows_cmp,
            ),
            "",
            "### Blockwise cost and memory against raster size (in-process scheduler)",
            "",
            md_table(
                (
                    "raster",
                    "Mpix",
                    "s",
                    "ms per Mpix",
                    "peak growth MiB",
                    "in-memory arrays MiB (29 B/px)",
                ),
                rows_size,
            ),
            "",
            f"On a LocalCluster of 2 workers limited to {MEMORY_LIMIT} each, the "
            f"{sizes[-1]}×{sizes[-1]} raster ({big['pixels'] * 29 / 2**30:.1f} GiB of arrays "
            f"in memory) took {big['seconds']:.1f} s ({big['cluster_start_s']:.1f} s cluster "
            f"start), peak RSS per worker {big['worker_peak_mib']:.0f} MiB.",
            "",
            "In memory, a tile needs its RGB label (3 B/px), decoded label (1), four uint16 count "
            "maps (8), four float32 weight maps (16) and the tile-wide intermediates: about 29 "
            "bytes per pixel before compression buffers. Blockwise, only a block with its halo "
            "is held at a time.",
        ]
    )
    print(text)
    if args.write:
        write_section(Path(args.write), "bench_blockwise", text)
        log(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
