"""End-to-end benchmark: ``npa-precompute run`` on real files, and where the time goes.

Writes N Vaihingen-sized (2048x2560) tiles as real files once (RGB-coded TIFF labels
and IRRG TIFF images, both mirror-tiled from the real Vaihingen crop, each tile from
another offset of the mirror tiling), then:

* runs :func:`npa_precompute.pipeline.run_precompute` with 4 k x 3 transforms into a
  fresh compressed store with 1 worker and with 2 workers, and the ``npa-precompute
  run`` command line once (a new process, as a user runs it): wall time, Mpix/s, Mpix/s
  per core, CPU seconds, bytes stored per pixel, the kernel's share of the time;
* times the steps of one tile in this process by calling the library pieces directly
  (read, decode, hash, kernel, transforms, compress, write);
* ``--part derived`` (issue 13; also part of ``--part all``, the default): counts only
  (``--no-store-weights``) against today's default (4 k x log10 materialized) and against
  4 k x 3 transforms materialized, run round-robin with 2 workers (Mpix/s, bytes/pixel);
  the time to add one k to a 16-tile store in place against recomputing it; the
  augmenting loader's crops/s with weights derived from the counts against stored
  weights; the time to derive a 513 x 513 window on one core.

Prints a Markdown report (``--write`` also puts it into ``docs/benchmarks.md``, each part
into its own section).

Usage::

    python benchmarks/bench_pipeline.py [--tiles 16] [--quick] [--data-dir DIR] [--write]
                                        [--part all|main|derived]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    REAL_IMAGE,
    REAL_LABEL,
    VAIHINGEN_SHAPE,
    LoadMeter,
    add_write_option,
    cpu_seconds,
    fmt,
    machine_rows,
    md_table,
    mirror_tile,
    now,
    real_image,
    real_rgb_label,
    require_data,
    verdict,
    wait_for_quiet,
    write_section,
)

from npa_precompute import affinity_maps, parse_transform, weights_name
from npa_precompute.imagestats import image_stats as tile_image_stats
from npa_precompute.pipeline import run_precompute
from npa_precompute.presets import get_preset
from npa_precompute.readers import file_sha256, read_image, read_label
from npa_precompute.store import create_or_check_store, open_store, write_tile

KS = (8, 16, 32, 64)
TRANSFORMS = ("log10:L=0.5", "ln:L=0.5", "norm:L=0.5")
_FORMAT = 1  # bump when the generated tiles change


# -- input files ----------------------------------------------------------------------------
def _codec_text() -> str:
    """The store's compressor as configured in npa_precompute.store (not hard-coded here)."""
    from npa_precompute.store.writer import _compressor

    c = _compressor(np.dtype(np.float32))
    return f"Blosc {c.cname.value} level {c.clevel}, {c.shuffle.value}"


def tile_offset(i: int, crop_shape: tuple[int, int]) -> tuple[int, int]:
    """Deterministic offset of tile ``i`` (0-based) into the mirror tiling of the crop."""
    return ((i * 389) % (2 * crop_shape[0]), (i * 613) % (2 * crop_shape[1]))


def tile_paths(root: Path, i: int) -> tuple[Path, Path]:
    name = f"top_mosaic_09cm_area{i + 1:02d}"
    return (
        root / "gts_eroded_for_participants" / f"{name}_noBoundary.tif",
        root / "top" / f"{name}.tif",
    )


def ensure_tiles(data_dir: Path, n: int, shape: tuple[int, int], log) -> Path:
    """Write tiles 0..n-1 under ``data_dir`` unless they are there from an earlier run."""
    import tifffile

    root = data_dir / f"vaihingen_{shape[0]}x{shape[1]}"
    manifest = root / "manifest.json"
    want = {
        "format": _FORMAT,
        "shape": list(shape),
        "label_sha256": file_sha256(REAL_LABEL),
        "image_sha256": file_sha256(REAL_IMAGE),
    }
    have = json.loads(manifest.read_text()) if manifest.is_file() else {}
    if {k: have.get(k) for k in want} != want:
        shutil.rmtree(root, ignore_errors=True)
        have = {**want, "tiles": 0}
    done = int(have.get("tiles", 0))
    if done >= n and all(p.is_file() for i in range(n) for p in tile_paths(root, i)):
        log(f"reusing {n} tiles in {root}")
        return root
    rgb, img = real_rgb_label(), real_image()
    (root / "gts_eroded_for_participants").mkdir(parents=True, exist_ok=True)
    (root / "top").mkdir(parents=True, exist_ok=True)
    log(f"writing {n} tiles of {shape[0]}x{shape[1]} to {root}")
    for i in range(n):
        label_path, image_path = tile_paths(root, i)
        off = tile_offset(i, rgb.shape[:2])
        tifffile.imwrite(label_path, mirror_tile(rgb, shape, off), photometric="rgb")
        tifffile.imwrite(image_path, mirror_tile(img, shape, off), photometric="rgb")
    manifest.write_text(json.dumps({**want, "tiles": max(n, done)}, indent=1))
    return root


def warm_up(label_path: Path) -> float:
    """Run every compiled piece once on a small crop, so that the on-disk JIT cache is current.

    The workers of a run are new processes: with a stale cache (after an edit of the
    kernels) each would compile on its first tile and the run would time the compiler.
    Returns the seconds this took (compilation when the cache was stale).
    """
    t0 = time.perf_counter()
    preset = get_preset("isprs")
    label = preset.decode(read_label(label_path)[:64, :64])
    aff = affinity_maps(label, KS)
    ignore = label == preset.ignore_index
    for t in TRANSFORMS:
        parse_transform(t).apply(aff[0], ignore)
    return time.perf_counter() - t0


# -- measurements ---------------------------------------------------------------------------
def store_bytes(path: Path) -> dict[str, dict[str, int]]:
    """Apparent and on-disk (``du``) bytes of a store, in total and per kind of array."""
    out: dict[str, dict[str, int]] = {}
    for dirpath, _, files in os.walk(path):
        rel = Path(dirpath).relative_to(path).parts
        kind = rel[2] if len(rel) >= 3 and rel[0] == "tiles" else "metadata"
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            if f == "zarr.json":
                kind_f = "metadata"
            else:
                kind_f = kind
            for key in (kind_f, "total"):
                d = out.setdefault(key, {"apparent": 0, "disk": 0, "files": 0})
                d["apparent"] += st.st_size
                d["disk"] += st.st_blocks * 512
                d["files"] += 1
    return out


def library_run(
    labels: list[Path],
    image_dir: Path,
    out: Path,
    workers: int,
    wait_idle: float = 0.0,
    *,
    ks=KS,
    transforms=TRANSFORMS,
    store_weights: bool = True,
    fresh: bool = True,
) -> dict:
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    wait_for_quiet(wait_idle)
    meter = LoadMeter().start()
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    summary = run_precompute(
        [str(p) for p in labels],
        out,
        images=[str(image_dir)],
        preset="isprs",
        ks=ks,
        transforms=transforms,
        workers=workers,
        store_weights=store_weights,
    )
    wall = time.perf_counter() - t0
    return {
        "wall": wall,
        "cpu": cpu_seconds() - cpu0,
        "others": meter.stop(),
        "pixels": summary.pixels,
        "kernel": summary.kernel_seconds,
        "tiles": len(summary.written),
        "grown": len(summary.grown),
        "bytes": store_bytes(out),
    }


def cli_command() -> list[str]:
    exe = Path(sys.executable).parent / "npa-precompute"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "npa_precompute"]


def cli_run(
    labels: list[Path], image_dir: Path, out: Path, workers: int, wait_idle: float = 0.0
) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    wait_for_quiet(wait_idle)
    cmd = [*cli_command(), "run", *map(str, labels), "--images", str(image_dir), "--out", str(out)]
    cmd += ["--preset", "isprs", "--k", ",".join(map(str, KS))]
    for t in TRANSFORMS:
        cmd += ["--transform", t]
    cmd += ["--workers", str(workers), "-q"]
    meter = LoadMeter().start()
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return {
        "wall": wall,
        "cpu": cpu_seconds() - cpu0,
        "others": meter.stop(),
        "line": proc.stdout.strip().splitlines()[-1],
        "bytes": store_bytes(out),
        "cmd": cmd,
    }


def time_steps(label_path: Path, image_path: Path, scratch: Path, repeats: int) -> dict:
    """Median wall and CPU seconds of each step of one tile, done here step by step."""
    import resource

    import numba
    import zarr

    def cpu() -> float:
        u = resource.getrusage(resource.RUSAGE_SELF)
        return u.ru_utime + u.ru_stime

    preset = get_preset("isprs")
    transforms = [parse_transform(t) for t in TRANSFORMS]
    disk_store = scratch / "steps.zarr"
    shutil.rmtree(disk_store, ignore_errors=True)
    create_or_check_store(disk_store, preset.to_attrs(), overwrite=True)
    disk_root = open_store(disk_store, mode="r+")
    all_threads = numba.config.NUMBA_NUM_THREADS
    state: dict = {}

    def read_lbl():
        state["raw"] = read_label(label_path)

    def read_img():
        state["image"] = read_image(image_path)

    def decode():
        state["label"] = preset.decode(state["raw"], source=str(label_path))

    def image_stats():
        tile_image_stats(state["image"])

    def hashing():
        file_sha256(label_path)
        file_sha256(image_path)

    def kernel_all():
        numba.set_num_threads(all_threads)
        state["aff"] = affinity_maps(state["label"], KS)

    def kernel_one():
        numba.set_num_threads(1)
        affinity_maps(state["label"], KS)
        numba.set_num_threads(all_threads)

    def transform():
        ignore = state["label"] == preset.ignore_index
        state["weights"] = [
            (weights_name(k, t), t.apply(state["aff"][i], ignore), {"k": k})
            for i, k in enumerate(KS)
            for t in transforms
        ]

    def write(root) -> None:
        write_tile(
            root,
            "t",
            label=state["label"],
            ignore_index=preset.ignore_index,
            image=state["image"],
            affinity={k: state["aff"][i] for i, k in enumerate(KS)},
            weights=state["weights"],
            attrs={},
        )

    def write_memory():
        root = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
        root.create_group("tiles")
        write(root)

    def write_disk():
        write(disk_root)

    steps: list[tuple[str, Callable[[], None], bool]] = [
        ("read label TIFF (`read_label`)", read_lbl, True),
        ("read image TIFF (`read_image`)", read_img, True),
        ("decode RGB → indices (`decode`)", decode, True),
        ("SHA-256 of both files (`file_sha256`)", hashing, True),
        ("image mean and std (`imagestats.image_stats`)", image_stats, True),
        (f"kernel, 4 k, {all_threads} threads (`affinity_maps`)", kernel_all, True),
        ("kernel, 4 k, 1 thread (as in a worker of 2)", kernel_one, False),
        ("12 transforms (`WeightTransform.apply`)", transform, True),
        ("compress into an in-memory store (`write_tile`)", write_memory, False),
        ("compress + write to disk (`write_tile`)", write_disk, True),
    ]
    timings = {name: ([], []) for name, _, _ in steps}
    for _ in range(repeats):
        for name, fn, _ in steps:
            c0, t0 = cpu(), time.perf_counter()
            fn()
            timings[name][0].append(time.perf_counter() - t0)
            timings[name][1].append(cpu() - c0)
    shutil.rmtree(disk_store, ignore_errors=True)
    return {
        name: {
            "wall": statistics.median(timings[name][0]),
            "cpu": statistics.median(timings[name][1]),
            "in_sum": in_sum,
        }
        for name, _, in_sum in steps
    }


# -- the benchmark ----------------------------------------------------------------------------
def _prepare_tiles(n_tiles: int, data_dir: Path, log) -> tuple[Path, list[Path], Path]:
    """The mirror-tiled Vaihingen-sized tiles' folder, label files and image folder, with
    the kernels compiled."""
    require_data()
    root = ensure_tiles(data_dir, n_tiles, VAIHINGEN_SHAPE, log)
    labels = [tile_paths(root, i)[0] for i in range(n_tiles)]
    log(f"warm-up (compiles only if the JIT cache is stale): {warm_up(labels[0]):.1f} s")
    return root, labels, root / "top"


def run(n_tiles: int, quick: bool, data_dir: Path, keep: bool, wait_idle: float, log) -> str:
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    root, labels, image_dir = _prepare_tiles(n_tiles, data_dir, log)
    scratch = Path(tempfile.mkdtemp(prefix="stores-", dir=data_dir))
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        runs = {}
        for workers in sorted({1, min(2, ncpu)}):
            log(f"run_precompute, {n_tiles} tiles, workers={workers}")
            runs[f"library, workers={workers}"] = (
                workers,
                library_run(labels, image_dir, scratch / f"w{workers}.zarr", workers, wait_idle),
            )
        cli = None
        if not quick:
            workers = min(2, ncpu)
            log(f"npa-precompute run, {n_tiles} tiles, --workers {workers}")
            cli = cli_run(labels, image_dir, scratch / "cli.zarr", workers, wait_idle)
            runs[f"`npa-precompute run`, --workers {workers}"] = (workers, cli)
        log("timing the steps of one tile")
        label0, image0 = tile_paths(root, 0)
        wait_for_quiet(wait_idle)
        steps = time_steps(label0, image0, scratch, 1 if quick else 3)
    finally:
        if keep:
            log(f"stores kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return report(
        n_tiles=n_tiles,
        quick=quick,
        root=root,
        runs=runs,
        cli=cli,
        steps=steps,
        load_start=load_start,
        elapsed=time.perf_counter() - t_start,
    )


def report(*, n_tiles, quick, root, runs, cli, steps, load_start, elapsed) -> str:
    import numba

    h, w = VAIHINGEN_SHAPE
    px_tile = h * w
    out = []
    cmd = "python benchmarks/bench_pipeline.py" + (" --quick" if quick else "")
    if n_tiles != (4 if quick else 16):
        cmd += f" --tiles {n_tiles}"
    out.append("## End-to-end benchmark (`benchmarks/bench_pipeline.py`)\n")
    out.append(
        f"`{cmd}`, {now()}, {elapsed:.0f} s. {n_tiles} Vaihingen-sized {h}×{w} tiles written "
        "as real files (uncompressed RGB-coded TIFF labels and IRRG TIFF images, like the "
        "ISPRS release; mirror-tiled from the real crop, each tile from another offset), "
        f"k = {', '.join(map(str, KS))} × transforms {', '.join(TRANSFORMS)}, float32 "
        f"weights, chunks 256² in one shard per array, {_codec_text()} (the store's "
        "defaults). Each run starts "
        "from an empty store; writes go to the OS page cache (no fsync). The files are "
        f"kept in `{root}` for the next run."
        + (" **Quick run: fewer tiles, not for the record.**" if quick else "")
        + "\n"
    )
    out.append("### Machine\n")
    out.append(
        md_table(
            ["", ""],
            machine_rows(load_start, [("numba threads", str(numba.config.NUMBA_NUM_THREADS))]),
            "ll",
        )
        + "\n"
    )

    out.append("### Whole runs\n")
    out.append(
        "Per worker: Mpix/s ÷ workers. CPU s: user + system time of this process and its "
        "workers over the run; Mpix per CPU-second is throughput per busy core (the "
        "fairer per-core figure: even one worker keeps more than one core busy at times, "
        "in the kernel's threads and in zarr's compression). Kernel "
        "share: the `affinity_maps` seconds summed over tiles (`RunSummary.kernel_seconds`, "
        "timed inside each worker) ÷ (wall × workers), the fraction of the available "
        "worker time spent in the kernel. With 1 worker the kernel runs on all cores and "
        "the rest on one; with 2 workers each worker's kernel runs on 1 thread (cores ÷ "
        "workers). The command line's wall time includes starting Python and importing; "
        "its kernel seconds come from the summary line it prints. Last column: cores kept busy by "
        "other processes during the run (`/proc/stat` minus this process and its workers).\n"
    )
    rows = []
    for name, (workers, r) in runs.items():
        pixels = r.get("pixels", n_tiles * px_tile)
        kernel = r.get("kernel")
        if kernel is None and "line" in r:
            kernel = _kernel_from_line(r["line"])
        mps = pixels / r["wall"] / 1e6
        rows.append(
            (
                name,
                fmt(r["wall"]),
                fmt(mps),
                fmt(mps / workers),
                fmt(r["cpu"]),
                fmt(pixels / r["cpu"] / 1e6),
                fmt(r["bytes"]["total"]["disk"] / pixels),
                fmt(kernel) if kernel is not None else "n/a",
                f"{100 * kernel / (r['wall'] * workers):.1f} %" if kernel is not None else "n/a",
                fmt(r["others"]),
            )
        )
    out.append(
        md_table(
            [
                "run",
                "wall s",
                "Mpix/s",
                "Mpix/s per worker",
                "CPU s",
                "Mpix per CPU-s",
                "bytes stored / pixel",
                "kernel s",
                "kernel share",
                "other processes, cores busy",
            ],
            rows,
        )
        + "\n"
    )
    if cli:
        out.append(f"Its summary line: `{cli['line']}`\n")

    first = next(iter(runs.values()))[1]
    b = first["bytes"]
    pixels = n_tiles * px_tile
    out.append("### What the store holds (per label pixel, on disk as `du` counts it)\n")
    raw_bytes = {"label": 1, "image": 3, "affinity": 2 * len(KS), "weights": 4 * 12}
    rows = []
    for kind in ("label", "image", "affinity", "weights", "metadata", "total"):
        if kind not in b:
            continue
        d = b[kind]
        raw = raw_bytes.get(kind, sum(raw_bytes.values()) if kind == "total" else None)
        rows.append(
            (
                kind,
                d["files"],
                fmt(d["apparent"] / pixels),
                fmt(d["disk"] / pixels),
                raw if raw is not None else "—",
                fmt(raw / (d["apparent"] / pixels)) + "×" if raw else "—",
            )
        )
    out.append(
        md_table(
            ["arrays", "files", "bytes/pixel", "on disk bytes/pixel", "uncompressed", "ratio"],
            rows,
        )
        + "\n"
    )

    out.append("### Where the time of one tile goes (in this process, step by step)\n")
    out.append(
        "Median of the repeats; each step calls the library piece `process_tile` uses, on "
        "tile 1, one after the other like `process_tile` (the weights are all computed "
        "before the write here, lazily inside it there). CPU s above wall s means the step "
        "used more than one core. Shares are of the sum of the steps; the 1-worker run's "
        "wall time per tile is shown for comparison (it also holds the store and tile "
        "metadata and the class counts, and was timed at another moment).\n"
    )
    w1 = runs.get("library, workers=1", next(iter(runs.values())))[1]
    per_tile = w1["wall"] / n_tiles
    total = sum(v["wall"] for v in steps.values() if v["in_sum"])
    rows = []
    for name, v in steps.items():
        share = f"{100 * v['wall'] / total:.1f} %" if v["in_sum"] else "(not in sum)"
        rows.append((name, fmt(v["wall"]), fmt(v["cpu"]), fmt(px_tile / v["wall"] / 1e6), share))
    rows.append(("**sum of the steps**", fmt(total), "", fmt(px_tile / total / 1e6), "100 %"))
    rows.append(
        ("per tile in the 1-worker run", fmt(per_tile), "", fmt(px_tile / per_tile / 1e6), "")
    )
    out.append(md_table(["step", "wall s", "CPU s", "Mpix/s", "share of the sum"], rows) + "\n")

    out.append("### Targets\n")
    rows = []
    for name, (workers, r) in runs.items():
        kernel = r.get("kernel")
        if kernel is None and "line" in r:
            kernel = _kernel_from_line(r["line"])
        if kernel is None:
            continue
        share = kernel / (r["wall"] * workers)
        rows.append(
            (
                f"kernel ≥ ⅓ of the wall time: {name}",
                f"{100 * share:.1f} %",
                "≥ 33.3 %",
                verdict(share >= 1 / 3),
            )
        )
    kshare = steps[next(n for n in steps if n.startswith("kernel, 4 k,"))]["wall"] / total
    rows.append(
        (
            "kernel ≥ ⅓ of the wall time: one tile, step by step",
            f"{100 * kshare:.1f} %",
            "≥ 33.3 %",
            verdict(kshare >= 1 / 3),
        )
    )
    for name, (workers, r) in runs.items():
        pixels = r.get("pixels", n_tiles * px_tile)
        rows.append(
            (
                f"throughput per core: {name}",
                f"{fmt(pixels / r['wall'] / 1e6 / workers)} Mpix/s per worker, "
                f"{fmt(pixels / r['cpu'] / 1e6)} Mpix per CPU-second",
                "stated",
                verdict(None),
            )
        )
    rows.append(
        (
            "bytes stored per pixel (4 k × 3 transforms, label, image)",
            fmt(first["bytes"]["total"]["disk"] / pixels),
            "stated",
            verdict(None),
        )
    )
    out.append(md_table(["target", "measured", "target", "verdict"], rows, "lrrl") + "\n")
    return "\n".join(out)


def _kernel_from_line(line: str) -> float | None:
    import re

    m = re.search(r"affinity kernel ([0-9.]+) s", line)
    return float(m.group(1)) if m else None


# -- issue 13: counts only, derived weights, stores that grow --------------------------------
GROW_K = 24
DERIVED_NAME = "k32_log10_L0.5"
#: (row label, store key, run_precompute options) of the runs compared round-robin
CONFIGS = (
    ("counts only (`--no-store-weights`), 4 k", "counts",
     {"transforms": TRANSFORMS, "store_weights": False}),
    ("today's default: 4 k × log10 stored", "default", {"transforms": ("log10:L=0.5",)}),
    ("4 k × 3 transforms stored", "full", {"transforms": TRANSFORMS}),
)  # fmt: skip


def _files(store: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in (store / "tiles").rglob("*") if p.is_file()}  # fmt: skip


def _same_new_arrays(grown: Path, fresh: Path, tile: str, names: list[str]) -> bool:
    from npa_precompute.store import open_tile

    a, b = open_tile(open_store(grown), tile), open_tile(open_store(fresh), tile)
    if not np.array_equal(a.affinity(GROW_K)[...], b.affinity(GROW_K)[...]):
        return False
    return all(np.array_equal(a.weights(n)[...], b.weights(n)[...]) for n in names)


def loader_compare(stores: dict[str, Path], workers: int, repeats: int, n_batches: int, log):
    """Crops/s of the augmenting loader with stored and with derived weights, round-robin."""
    import torch
    from bench_train import BATCH, loader_rate

    from npa_train.data import StoreCropDataset

    for store in stores.values():  # from the page cache, both alike (not the disk)
        for f in store.rglob("*"):
            if f.is_file():
                f.read_bytes()
    out = {}
    for mode in ("crop", "window"):
        ds = {kind: StoreCropDataset(stores[kind], DERIVED_NAME, seed=0, length=10**7,
                                     output=mode) for kind in ("stored", "derived")}  # fmt: skip
        assert all(d is None for d in ds["stored"]._derivers)
        assert all(d is not None for d in ds["derived"]._derivers)
        if mode == "crop":  # the same crops, bit for bit
            for i in range(2):
                assert torch.equal(ds["stored"][i]["weight"], ds["derived"][i]["weight"])
        rates: dict[str, list[dict]] = {"stored": [], "derived": []}
        for r in range(repeats):
            for kind in ("stored", "derived"):
                log(f"loader, {mode} mode, {kind} weights, repeat {r + 1}/{repeats}")
                rates[kind].append(loader_rate(ds[kind], n_batches, workers, 100_000 * (r + 1),
                                               ds[kind].collate))  # fmt: skip
        out[mode] = rates
    return out, BATCH


def window_costs(stores: dict[str, Path], n: int) -> dict:
    """Median ms per crop window, one thread: read stored weights vs read counts + derive;
    and deriving exact 513 x 513 windows."""
    import numba
    import torch

    from npa_precompute.derived import Deriver, parse_weights_name
    from npa_precompute.store import open_tile
    from npa_train.data import StoreCropDataset

    numba.set_num_threads(1)
    torch.set_num_threads(1)
    ds_s = StoreCropDataset(stores["stored"], DERIVED_NAME, seed=0, length=10**7)
    ds_d = StoreCropDataset(stores["derived"], DERIVED_NAME, seed=0, length=10**7)
    times: dict[str, list[float]] = {k: [] for k in ("stored", "counts", "derive", "px")}
    for i in range(n):
        p = ds_s.sample_params(500_000 + i)
        y0, y1, x0, x1 = p.window(ds_s.shapes[p.tile_index])
        w_reader = ds_s._tile_arrays(p.tile)[2]
        label = ds_d._tile_arrays(p.tile)[1].read(y0, y1, x0, x1)
        counts_readers = ds_d._counts[p.tile]
        deriver = ds_d._derivers[p.tile_index]
        t0 = time.perf_counter()
        w_reader.read(y0, y1, x0, x1)
        times["stored"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        counts = [c.read(y0, y1, x0, x1) for c in counts_readers]
        times["counts"].append(time.perf_counter() - t0)
        deriver(counts, label)
        t0 = time.perf_counter()
        deriver(counts, label)
        times["derive"].append(time.perf_counter() - t0)
        times["px"].append((y1 - y0) * (x1 - x0))
    out = {k: statistics.median(v) * (1e3 if k != "px" else 1) for k, v in times.items()}
    tile = open_tile(open_store(stores["derived"]), ds_d.tiles[0])
    sl = (slice(700, 1213), slice(900, 1413))
    label = np.ascontiguousarray(tile.label[sl])
    exact = {}
    for name in ("k32_log10_L0.5", "k32_norm_L0.5", "k64_ln_L0.5", "ms_k8-16-32_log10_L0.5"):
        spec = parse_weights_name(name)
        d = Deriver(spec, {k: tile.count_range(k) for k in spec.ks}, ignore_index=255)
        counts = [np.ascontiguousarray(tile.affinity(k)[sl]) for k in spec.ks]
        d(counts, label)
        ts = []
        for _ in range(50):
            t0 = time.perf_counter()
            d(counts, label)
            ts.append(time.perf_counter() - t0)
        exact[name] = statistics.median(ts) * 1e3
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    out["exact"] = exact
    return out


def run_derived(n_tiles, quick, data_dir, keep, wait_idle, log) -> str:
    """The issue-13 part: counts only vs materialized, growing, the loader, derivation."""
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    root, labels, image_dir = _prepare_tiles(n_tiles, data_dir, log)
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = min(2, ncpu)
    repeats = 1 if quick else 2
    scratch = Path(tempfile.mkdtemp(prefix="stores-derived-", dir=data_dir))
    try:
        runs: dict[str, list[dict]] = {key: [] for _, key, _ in CONFIGS}
        for r in range(repeats):
            for name, key, kw in CONFIGS:
                log(f"[{r + 1}/{repeats}] {name}, {n_tiles} tiles, workers={workers}")
                runs[key].append(library_run(labels, image_dir, scratch / f"{key}.zarr", workers,
                                             wait_idle, **kw))  # fmt: skip
        grow = {}
        for key, kw in (("counts", CONFIGS[0][2]), ("full", CONFIGS[2][2])):
            store = scratch / f"{key}.zarr"
            before = _files(store)
            log(f"adding k = {GROW_K} to the {key} store in place")
            g = library_run(labels, image_dir, store, workers, wait_idle, ks=(GROW_K,),
                            fresh=False, **kw)  # fmt: skip
            after = _files(store)
            changed = [Path(p) for p, v in before.items() if after.get(p) != v]
            tile_attrs = sum(1 for p in changed if p.parent.parent.name == "tiles")
            rewritten = len(changed) - tile_attrs
            log(f"recomputing the {key} store with k = {GROW_K} added")
            f = library_run(labels, image_dir, scratch / f"{key}_5k.zarr", workers, wait_idle,
                            ks=(*KS, GROW_K), **kw)  # fmt: skip
            names = [weights_name(GROW_K, t) for t in TRANSFORMS] if key == "full" else []
            tid = tile_paths(root, 0)[1].stem
            grow[key] = {
                "grow": g,
                "fresh": f,
                "rewritten": rewritten,
                "attrs": tile_attrs,
                "equal": _same_new_arrays(store, scratch / f"{key}_5k.zarr", tid, names),
            }
        stores = {"stored": scratch / "full.zarr", "derived": scratch / "counts.zarr"}
        loader, batch = loader_compare(stores, workers, 1 if quick else 5, 8 if quick else 20, log)
        log("timing window reads and derivation on one thread")
        windows = window_costs(stores, 20 if quick else 60)
    finally:
        if keep:
            log(f"stores kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return report_derived(
        n_tiles=n_tiles, quick=quick, workers=workers, runs=runs, grow=grow, loader=loader,
        batch=batch, windows=windows, load_start=load_start,
        elapsed=time.perf_counter() - t_start,
    )  # fmt: skip


def report_derived(*, n_tiles, quick, workers, runs, grow, loader, batch, windows, load_start,
                   elapsed) -> str:  # fmt: skip
    import numba

    h, w = VAIHINGEN_SHAPE
    pixels = n_tiles * h * w
    cmd = "python benchmarks/bench_pipeline.py --part derived" + (" --quick" if quick else "")
    if n_tiles != (4 if quick else 16):
        cmd += f" --tiles {n_tiles}"
    out = ["## Counts only, derived weights, stores that grow (`bench_pipeline.py --part "
           "derived`, issue 13)\n"]  # fmt: skip
    out.append(
        f"`{cmd}`, {now()}, {elapsed:.0f} s. The same {n_tiles} Vaihingen-sized {h}×{w} tiles "
        f"as above (real files), k = {', '.join(map(str, KS))}, {workers} workers, each run "
        "from an empty store; the three kinds of run were made round-robin "
        f"({len(next(iter(runs.values())))} rounds; medians), so they share the machine's "
        "load. **The machine's 2 cores were shared with other developers' jobs during this "
        "session**: the last columns give the cores other processes kept busy; read the "
        "ratios of one round, not absolute times."
        + (" **Quick run: fewer tiles, not for the record.**" if quick else "")
        + "\n"
    )
    out.append("### Machine\n")
    out.append(md_table(["", ""], machine_rows(load_start, [
        ("numba threads", str(numba.config.NUMBA_NUM_THREADS))]), "ll") + "\n")  # fmt: skip

    def med(key, field):
        return statistics.median(r[field] for r in runs[key])

    full_wall, full_bytes = med("full", "wall"), runs["full"][-1]["bytes"]["total"]["disk"]
    full_cpu = med("full", "cpu")
    out.append("### Counts only against stored weights (end to end, `run_precompute`)\n")
    out.append(
        "CPU s: user + system time of this process and its workers (worker start-up, "
        "hashing and consolidation included): the figure least affected by other jobs, "
        "since it does not count the time spent waiting for a core.\n"
    )
    rows = []
    for name, key, _ in CONFIGS:
        wall = med(key, "wall")
        b = runs[key][-1]["bytes"]["total"]["disk"]
        per_round = ", ".join(fmt(full / r["wall"]) + "×" for r, full in zip(
            runs[key], (x["wall"] for x in runs["full"]), strict=True))  # fmt: skip
        cpu = med(key, "cpu")
        others = ", ".join(fmt(r["others"]) for r in runs[key])
        rows.append((name, fmt(wall), fmt(pixels / wall / 1e6), fmt(full_wall / wall) + "×",
                     per_round, fmt(cpu), fmt(full_cpu / cpu) + "×", fmt(b / pixels),
                     fmt(b / full_bytes), others))  # fmt: skip
    out.append(md_table(["run", "wall s", "Mpix/s", "throughput ÷ 4 k × 3 t",
                         "÷ 4 k × 3 t, each round", "CPU s", "4 k × 3 t's CPU ÷ this",
                         "bytes / pixel", "bytes ÷ 4 k × 3 t", "other processes, cores busy"],
                        rows) + "\n")  # fmt: skip
    rows = []
    for kind in ("label", "image", "affinity", "weights", "metadata", "total"):
        rows.append((kind, *(fmt(runs[key][-1]["bytes"].get(kind, {"disk": 0})["disk"] / pixels)
                             for _, key, _ in CONFIGS)))  # fmt: skip
    out.append("Bytes per label pixel on disk, by kind of array:\n")
    out.append(md_table(["arrays", *(n for n, _, _ in CONFIGS)], rows) + "\n")

    out.append(f"### Adding one k (k = {GROW_K}) to a {n_tiles}-tile store\n")
    out.append(
        f"`npa-precompute run ... --k {GROW_K}` on the store made above grows every tile in "
        f"place (one counts array, plus its 3 weights arrays where weights are stored), "
        f"against recomputing the store from scratch with k = {', '.join(map(str, KS))}, "
        f"{GROW_K}. 'Files rewritten': array files of the store whose size or mtime changed "
        "(the tiles' attrs files are rewritten by design: they name the new arrays).\n"
    )
    rows = []
    for key, label in (("counts", "counts only"), ("full", "4 k × 3 transforms stored")):
        g = grow[key]
        rows.append((label, fmt(g["grow"]["wall"]), fmt(g["fresh"]["wall"]),
                     fmt(g["fresh"]["wall"] / g["grow"]["wall"]) + "×", g["rewritten"],
                     g["attrs"], "yes" if g["equal"] else "**NO**",
                     f"{fmt(g['grow']['others'])} / {fmt(g['fresh']['others'])}"))  # fmt: skip
    header = ["store", "add one k, s", "recompute with it, s", "speed-up",
              "array files rewritten", "attrs files rewritten",
              "new arrays equal a fresh precompute (tile 1)",
              "other processes, cores busy (add / recompute)"]  # fmt: skip
    out.append(md_table(header, rows) + "\n")

    out.append("### Loader: derived against stored weights\n")
    out.append(
        f'`StoreCropDataset(store, "{DERIVED_NAME}")` in a DataLoader with {workers} workers, '
        f"batch {batch}, 513² crops, the paper's augmentation; crops/s in steady state, "
        "median of the rounds (stored and derived alternated; both stores read once before, "
        "so that both are read from the page cache). *crop* mode: what a CPU `fit` "
        "does (workers read and resample; derived: they read the uint16 counts and derive "
        "the window). *window* mode: what a GPU `fit` does (workers only read; derived: they "
        "ship the counts and the weights are derived in `warp` on the device, not timed "
        "here). Both stores give the same crops bit for bit (checked).\n"
    )
    rows = []
    for mode, rates in loader.items():
        s_ = statistics.median(r["crops_s"] for r in rates["stored"])
        d_ = statistics.median(r["crops_s"] for r in rates["derived"])
        others = ", ".join(fmt(r["others"]) for k in ("stored", "derived") for r in rates[k])
        rounds = ", ".join(fmt(d["crops_s"] / st["crops_s"]) for st, d in zip(
            rates["stored"], rates["derived"], strict=True))  # fmt: skip
        rows.append((mode, fmt(s_), fmt(d_), fmt(d_ / s_) + "×", rounds, others))
    out.append(md_table(["mode", "stored, crops/s", "derived, crops/s", "derived ÷ stored",
                         "each round", "other processes, cores busy (stored rounds, then "
                         "derived)"], rows) + "\n")  # fmt: skip
    out.append("### One window on one thread (ms, median)\n")
    out.append(
        f"Crop windows of the loader (mean {fmt(windows['px'] / 1e6)} Mpix: the window a "
        "513² crop maps into, which the random resize makes up to 4× larger):\n"
    )
    rows = [
        ("read the stored float32 weights (`ShardReader`)", fmt(windows["stored"])),
        ("read the uint16 counts (`ShardReader`)", fmt(windows["counts"])),
        ("derive the weights from them (`Deriver`)", fmt(windows["derive"])),
        ("counts + derive", fmt(windows["counts"] + windows["derive"])),
    ]
    out.append(md_table(["step", "ms"], rows) + "\n")
    out.append("Deriving an exact 513 × 513 window (counts and labels in memory):\n")
    out.append(md_table(["weights", "ms"], [(n, fmt(v)) for n, v in windows["exact"].items()])
               + "\n")  # fmt: skip

    out.append("### Targets (issue 13)\n")
    cw, dw = med("counts", "wall"), med("default", "wall")
    cb = runs["counts"][-1]["bytes"]["total"]["disk"]
    crop = loader["crop"]
    crop_ratio = statistics.median(r["crops_s"] for r in crop["derived"]) / statistics.median(
        r["crops_s"] for r in crop["stored"])  # fmt: skip
    win = loader["window"]
    win_ratio = statistics.median(r["crops_s"] for r in win["derived"]) / statistics.median(
        r["crops_s"] for r in win["stored"])  # fmt: skip
    k32 = windows["exact"]["k32_log10_L0.5"]
    rows = [
        ("`--no-store-weights` throughput ÷ 4 k × 3 transforms", fmt(full_wall / cw) + "×",
         "≥ 2.5×", verdict(full_wall / cw >= 2.5)),
        ("the same in CPU time (4 k × 3 t's CPU s ÷ counts only's)",
         fmt(full_cpu / med("counts", "cpu")) + "×", "stated", verdict(None)),
        ("`--no-store-weights` throughput ÷ today's default (4 k × log10)", fmt(dw / cw) + "×",
         "stated", verdict(None)),
        ("`--no-store-weights` bytes ÷ 4 k × 3 transforms", fmt(cb / full_bytes), "≤ 0.333",
         verdict(cb / full_bytes <= 1 / 3)),
        ("derive a 513² window, one core (k32_log10_L0.5)", f"{fmt(k32)} ms", "≤ 1 ms",
         verdict(k32 <= 1.0)),
        ("loader crops/s, derived ÷ stored (crop mode, CPU fit)", fmt(crop_ratio) + "×", "≥ 1×",
         verdict(crop_ratio >= 1.0)),
        ("loader crops/s, derived ÷ stored (window mode, GPU fit)", fmt(win_ratio) + "×",
         "≥ 1×", verdict(win_ratio >= 1.0)),
        (f"add k = {GROW_K} to {n_tiles} tiles ÷ recompute (counts only)",
         fmt(grow["counts"]["grow"]["wall"] / grow["counts"]["fresh"]["wall"]), "stated",
         verdict(None)),
        (f"add k = {GROW_K} to {n_tiles} tiles ÷ recompute (4 k × 3 transforms stored)",
         fmt(grow["full"]["grow"]["wall"] / grow["full"]["fresh"]["wall"]), "stated",
         verdict(None)),
    ]  # fmt: skip
    out.append(md_table(["target", "measured", "target", "verdict"], rows, "lrrl") + "\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=int, default=None, help="number of tiles (default 16)")
    parser.add_argument(
        "--quick", action="store_true", help="4 tiles, no command-line run, one repeat"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "npaloss-bench",
        help="where the tiles are written once and reused (default: $TMPDIR/npaloss-bench)",
    )
    parser.add_argument("--keep-stores", action="store_true", help="keep the stores written")
    parser.add_argument(
        "--part",
        choices=("all", "main", "derived"),
        default="all",
        help="main: the runs and steps of 4 k x 3 transforms; derived: counts only against "
        "stored weights, growing a store, the loader (issue 13); all: both (default)",
    )
    add_write_option(parser)
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=20.0,
        metavar="S",
        help="before each run, wait up to S seconds (default 20) until other processes keep "
        "less than a quarter of a core busy",
    )
    args = parser.parse_args(argv)
    n = args.tiles if args.tiles is not None else (4 if args.quick else 16)
    if n < 1:
        parser.error(f"`--tiles` must be >= 1, got {n}")

    def log(msg: str) -> None:
        print(f"[bench_pipeline {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    args.data_dir.mkdir(parents=True, exist_ok=True)
    parts = (("main", "bench_pipeline", run), ("derived", "bench_pipeline_derived", run_derived))
    for part, section, fn in parts:
        if args.part not in ("all", part):
            continue
        text = fn(n, args.quick, args.data_dir, args.keep_stores, args.wait_idle, log)
        print(text)
        if args.write:
            write_section(Path(args.write), section, text)
            log(f"wrote {args.write} ({section})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
