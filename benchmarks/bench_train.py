"""Training-side benchmark: the augmented crop loader and the cost of the NPA loss.

Inputs: Vaihingen-sized (2048x2560) tiles mirror-tiled from the real Vaihingen crop
(RGB-coded eroded labels, IRRG images), written once as TIFF files and precomputed into
a store (k = 32, log10, L = 0.5, the default 256-pixel chunks); the weights are also
written as float32 TIFFs for the naive loader.

Measured (batch 6, 513 x 513 crops, the full augmentation: resize 0.5-2, rotation
±10°, mirrors, blur p = 0.5):

* **loader throughput**, crops/s delivered by a ``DataLoader`` with ``--workers`` workers
  (default 2), steady state (the first batches, worker start-up, are not timed):

  - ``store, warp in workers``: what ``npa-train fit`` does on a CPU: each worker reads
    the crop's window from the store and resamples it (finished crops);
  - ``store, windows only``: what a GPU run's workers do: read the windows (the
    resampling runs batched on the GPU); the CPU cost of that resampling is timed
    separately (per crop, one thread);
  - ``naive``: each worker decodes the tile's whole TIFF files (image, label, weights)
    with tifffile for every crop, cuts the same window and resamples it alike; and the
    same with Pillow.

* **where the time of one crop goes** (one process, one thread): window read per array,
  the resampling, the whole-TIFF decodes of the naive way.
* **loss cost**: forward + backward of ``npa_cross_entropy`` (and the other losses)
  against ``F.cross_entropy`` on the same logits (6 x 6 x 513 x 513, CPU), interleaved,
  median of ``--repeats``.

Prints a Markdown report; ``--write`` puts it into ``docs/benchmarks-train.md``.

Usage::

    python benchmarks/bench_train.py [--quick] [--workers 2] [--write]
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
    REAL_IMAGE,
    REAL_LABEL,
    VAIHINGEN_SHAPE,
    Entry,
    LoadMeter,
    add_write_option,
    fmt,
    machine_rows,
    md_table,
    mirror_tile,
    now,
    real_image,
    real_rgb_label,
    require_data,
    run_interleaved,
    verdict,
    wait_for_quiet,
    write_section,
)

WNAME = "k32_log10_L0.5"
CROP = 513
BATCH = 6
TARGET_CROPS_S = 60.0
TARGET_LOSS_RATIO = 1.1
_FORMAT = 1


# -- inputs ----------------------------------------------------------------------------------------
def ensure_inputs(data_dir: Path, n_tiles: int, log) -> tuple[Path, Path]:
    """Tiles as TIFF files (labels, images, weights) and their store; reused when current."""
    import tifffile

    from npa_precompute.pipeline import run_precompute
    from npa_precompute.readers import file_sha256
    from npa_precompute.store import open_store, open_tile

    root = data_dir / f"train_{VAIHINGEN_SHAPE[0]}x{VAIHINGEN_SHAPE[1]}_{n_tiles}"
    store = root / "store.zarr"
    manifest = root / "manifest.json"
    want = {"format": _FORMAT, "tiles": n_tiles, "label": file_sha256(REAL_LABEL),
            "image": file_sha256(REAL_IMAGE)}  # fmt: skip
    if manifest.is_file() and json.loads(manifest.read_text()) == want:
        log(f"reusing inputs in {root}")
        return root, store
    rgb, img = real_rgb_label(), real_image()
    for sub in ("gts", "top", "weights"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    log(f"writing {n_tiles} tiles of {VAIHINGEN_SHAPE} to {root}")
    for i in range(n_tiles):
        name = f"top_mosaic_09cm_area{i + 1}"
        off = ((i * 389) % 1024, (i * 613) % 1024)
        tifffile.imwrite(root / "gts" / f"{name}_noBoundary.tif",
                         mirror_tile(rgb, VAIHINGEN_SHAPE, off), photometric="rgb")  # fmt: skip
        tifffile.imwrite(root / "top" / f"{name}.tif", mirror_tile(img, VAIHINGEN_SHAPE, off),
                         photometric="rgb")  # fmt: skip
    run_precompute([str(root / "gts")], store, images=[str(root / "top")], ks="32",
                   transforms=("log10:L=0.5",), overwrite=True)  # fmt: skip
    r = open_store(store)
    for i in range(n_tiles):
        name = f"top_mosaic_09cm_area{i + 1}"
        w = open_tile(r, name).weights(WNAME)[...]
        tifffile.imwrite(root / "weights" / f"{name}.tif", w)
    manifest.write_text(json.dumps(want))
    return root, store


# ISPRS colours are 0/255 per channel: (R, G, B) > 0 as 3 bits -> class (255: black/ignore)
_ISPRS_LUT = np.full(8, 255, dtype=np.uint8)
for _cls, (_r, _g, _b) in enumerate(
    ((1, 1, 1), (0, 0, 1), (0, 1, 1), (0, 1, 0), (1, 1, 0), (1, 0, 0))
):
    _ISPRS_LUT[_r * 4 + _g * 2 + _b] = _cls


def _decode_isprs(rgb: np.ndarray) -> np.ndarray:
    """Plain numpy decoding (numba's OpenMP pool must not run in forked workers)."""
    bits = (rgb[..., 0] > 127) * 4 + (rgb[..., 1] > 127) * 2 + (rgb[..., 2] > 127)
    return _ISPRS_LUT[bits]


class NaiveDataset:
    """Same samples as StoreCropDataset, but every crop decodes the tile's whole files."""

    def __init__(self, ds, root: Path, reader: str, *, warp: bool = True) -> None:
        self.ds, self.root, self.reader, self.warp = ds, root, reader, warp

    def __len__(self) -> int:
        return len(self.ds)

    def _read(self, path: Path) -> np.ndarray:
        if self.reader == "tifffile":
            import tifffile

            return tifffile.imread(path)
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im)

    def __getitem__(self, index: int) -> dict:
        import torch

        from npa_train.augment import collate_windows

        p = self.ds.sample_params(index)
        image = self._read(self.root / "top" / f"{p.tile}.tif")
        rgb = self._read(self.root / "gts" / f"{p.tile}_noBoundary.tif")
        weight = self._read(self.root / "weights" / f"{p.tile}.tif")
        y0, y1, x0, x1 = p.window(self.ds.shapes[p.tile_index])
        label = _decode_isprs(rgb[y0:y1, x0:x1])
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])),
            "label": torch.from_numpy(np.ascontiguousarray(label)),
            "weight": torch.from_numpy(np.ascontiguousarray(weight[y0:y1, x0:x1])),
            "theta": torch.from_numpy(p.window_matrix(self.ds.shapes[p.tile_index])),
            "tile_index": p.tile_index, "index": index, "blur_sigma": p.blur_sigma,
            "tile": p.tile,
        }  # fmt: skip
        if not self.warp:
            return item
        out = self.ds.warp(collate_windows([item], ignore_index=self.ds.ignore_index), "cpu")
        return {k: out[k][0] for k in ("image", "label", "weight")}


def _worker_init(_):
    import torch

    torch.set_num_threads(1)


def loader_rate(dataset, n_batches: int, workers: int, start: int, collate=None) -> dict:
    """Crops/s of a DataLoader, timed from the end of the 2nd batch to the last."""
    import torch
    from torch.utils.data import DataLoader

    total = (n_batches + 2) * BATCH
    loader = DataLoader(dataset, batch_size=BATCH, sampler=range(start, start + total),
                        num_workers=workers, collate_fn=collate, worker_init_fn=_worker_init,
                        prefetch_factor=4 if workers else None,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    meter = LoadMeter().start()
    t = None
    for i, _ in enumerate(loader):
        if i == 1:
            t = time.perf_counter()
    wall = time.perf_counter() - t
    return {"crops_s": n_batches * BATCH / wall, "others": meter.stop(), "crops": n_batches * BATCH}


def per_crop_breakdown(ds_store, root: Path, n: int) -> dict[str, float]:
    """Median milliseconds per crop of each step, one process, one thread."""
    import tifffile
    import torch
    from PIL import Image

    from npa_train.augment import collate_windows

    torch.set_num_threads(1)
    names = ("image", "label", "weight")
    keys = [f"read {a} window: {how}" for how in ("ShardReader", "zarr slicing") for a in names]
    keys += ["resample (CPU)", "tifffile: decode whole image + label + weight",
             "Pillow: decode whole image + label"]  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in keys}
    for i in range(n):
        p = ds_store.sample_params(10_000 + i)
        readers = ds_store._tile_arrays(p.tile)
        y0, y1, x0, x1 = p.window(ds_store.shapes[p.tile_index])
        for a, r in zip(names, readers, strict=True):
            t0 = time.perf_counter()
            r.read(y0, y1, x0, x1)
            times[f"read {a} window: {type(r).__name__}"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r.array[y0:y1, x0:x1]
            times[f"read {a} window: zarr slicing"].append(time.perf_counter() - t0)
        item = ds_store.window_item(10_000 + i)
        batch = collate_windows([item], ignore_index=ds_store.ignore_index)
        t0 = time.perf_counter()
        ds_store.warp(batch, "cpu")
        times["resample (CPU)"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        tifffile.imread(root / "top" / f"{p.tile}.tif")
        tifffile.imread(root / "gts" / f"{p.tile}_noBoundary.tif")
        tifffile.imread(root / "weights" / f"{p.tile}.tif")
        times["tifffile: decode whole image + label + weight"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for f in (root / "top" / f"{p.tile}.tif", root / "gts" / f"{p.tile}_noBoundary.tif"):
            with Image.open(f) as im:
                np.asarray(im)
        times["Pillow: decode whole image + label"].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items() if v}


def window_pixels(ds, n: int) -> float:
    px = []
    for i in range(n):
        p = ds.sample_params(10_000 + i)
        y0, y1, x0, x1 = p.window(ds.shapes[p.tile_index])
        px.append((y1 - y0) * (x1 - x0))
    return float(np.mean(px))


def loss_timings(repeats: int, threads: int) -> list[tuple[str, float]]:
    import torch
    import torch.nn.functional as F

    from npa_train.criteria import build_criterion
    from npa_train.loss import npa_cross_entropy

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    n, c, h, w = 6, 6, CROP, CROP
    logits = torch.randn(n, c, h, w, generator=g).requires_grad_()
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[torch.rand(n, h, w, generator=g) < 0.15] = 255
    weight = torch.rand(n, h, w, generator=g) * 3 + 0.5
    crit = {
        "ce-weighted": build_criterion("ce-weighted", class_weight=[1, 1.2, 0.9, 1.1, 5, 0.9]),
        "focal": build_criterion("focal"),
        "dice": build_criterion("dice"),
    }

    def run(fn):
        def go():
            loss = fn()
            loss.backward()
            logits.grad = None

        return go

    entries = [
        Entry(("F.cross_entropy",), run(lambda: F.cross_entropy(logits, target, ignore_index=255)),
              n * h * w, repeats),
        Entry(("npa_cross_entropy (mean)",), run(lambda: npa_cross_entropy(logits, target, weight)),
              n * h * w, repeats),
        Entry(("npa_cross_entropy (batch, Eq. 4)",),
              run(lambda: npa_cross_entropy(logits, target, weight, reduction="batch")),
              n * h * w, repeats),
    ]  # fmt: skip
    for name, module in crit.items():
        entries.append(Entry((name,), run(lambda m=module: m(logits, target)), n * h * w, repeats))
    run_interleaved(entries)
    return [(e.key[0], e.seconds) for e in entries]


# -- report ----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer crops, repeats")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--tiles", type=int, default=4, help="tiles in the store (default 4)")
    parser.add_argument("--repeats", type=int, default=None, help="loss repeats (default 15)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="loader measurements per loader, round-robin (default 3)",
    )
    parser.add_argument("--data-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "npaloss-bench",
                        help="where inputs are written once and reused")  # fmt: skip
    add_write_option(parser, "benchmarks-train.md")
    args = parser.parse_args()
    require_data()

    from npa_train.augment import AugmentConfig
    from npa_train.data import StoreCropDataset

    log = lambda msg: print(f"# {msg}", file=sys.stderr, flush=True)  # noqa: E731
    load_start = os.getloadavg()
    root, store = ensure_inputs(args.data_dir, args.tiles, log)
    n_batches = 4 if args.quick else 10
    rounds = args.rounds or (1 if args.quick else 3)
    repeats = args.repeats or (5 if args.quick else 15)
    aug = AugmentConfig(crop=CROP)

    crop_ds = StoreCropDataset(store, WNAME, augment=aug, length=10**9, output="crop")
    win_ds = StoreCropDataset(store, WNAME, augment=aug, length=10**9, output="window")
    rows = []
    configs = {
        "store": (crop_ds, 0, None),
        "store_win": (win_ds, 10**6, win_ds.collate),
        "tiff": (NaiveDataset(crop_ds, root, "tifffile"), 0, None),
        "tiff_win": (NaiveDataset(win_ds, root, "tifffile", warp=False), 10**6, win_ds.collate),
        "pillow": (NaiveDataset(crop_ds, root, "pillow"), 0, None),
    }
    runs: dict[str, list[dict]] = {k: [] for k in configs}
    for r in range(rounds):  # round-robin: the loaders share the machine's drift alike
        for key, (dataset, start, collate) in configs.items():
            wait_for_quiet(10.0)
            log(f"loader {key}, round {r + 1} of {rounds}")
            runs[key].append(loader_rate(dataset, n_batches, args.workers,
                                         start + r * (n_batches + 2) * BATCH, collate))  # fmt: skip

    def med(key):
        return {
            "crops_s": statistics.median(x["crops_s"] for x in runs[key]),
            "others": statistics.median(x["others"] for x in runs[key]),
            "crops": sum(x["crops"] for x in runs[key]),
            "spread": (min(x["crops_s"] for x in runs[key]), max(x["crops_s"] for x in runs[key])),
        }

    r_store, r_win, r_tiff, r_tiff_win, r_pil = (med(k) for k in configs)
    log("per-crop breakdown")
    steps = per_crop_breakdown(win_ds, root, 8 if args.quick else 24)
    mean_window = window_pixels(win_ds, 500)
    log("loss timings")
    losses = loss_timings(repeats, 1)  # one thread: steadier on a shared machine

    met = r_store["crops_s"] >= TARGET_CROPS_S
    met_gpu = r_win["crops_s"] >= TARGET_CROPS_S
    for name, r, ref in (
        ("store: read + resample in the workers (CPU training)", r_store, r_tiff),
        ("naive tifffile: whole files per crop + resample in the workers", r_tiff, r_tiff),
        ("naive Pillow: whole files per crop + resample in the workers", r_pil, r_tiff),
        ("store: read windows in the workers (GPU training: resampled on the GPU)", r_win,
         r_tiff_win),
        ("naive tifffile: whole files per crop, windows only", r_tiff_win, r_tiff_win),
    ):  # fmt: skip
        spread = f"{fmt(r['spread'][0])}–{fmt(r['spread'][1])}"
        ratio_naive = fmt(r["crops_s"] / ref["crops_s"], 2)
        rows.append([name, fmt(r["crops_s"]), spread, ratio_naive, fmt(r["others"], 2), r["crops"]])
    ce = dict(losses)["F.cross_entropy"]
    npa = dict(losses)["npa_cross_entropy (mean)"]
    ratio = npa / ce
    text = [
        f"Run {now()}: `python benchmarks/bench_train.py{' --quick' if args.quick else ''} "
        f"--workers {args.workers}` on {args.tiles} Vaihingen-sized tiles ({VAIHINGEN_SHAPE[0]}"
        f"×{VAIHINGEN_SHAPE[1]}, mirror-tiled from the real crop), batch {BATCH}, {CROP}² crops, "
        "the full augmentation (resize 0.5–2, rotation ±10°, mirrors, blur p = 0.5).",
        "",
        "### Loader throughput",
        "",
        md_table(
            [
                "loader",
                "crops/s (median)",
                "min–max",
                "× naive tifffile (same work)",
                "other load (cores)",
                "crops timed",
            ],
            rows,
            "lrrrrr",
        ),
        "",
        f"Target ≥ {TARGET_CROPS_S:.0f} aligned {CROP}² crops/s with the full augmentation on "
        f"{args.workers} workers: {verdict(met)} for CPU training (read + resample in the "
        f"workers), {verdict(met_gpu)} for feeding a GPU (the workers read; the GPU resamples).",
        "",
        "### Where the time of one crop goes (one process, one thread, median ms)",
        "",
        md_table(["step", "ms per crop"], [[k, fmt(v)] for k, v in steps.items()], "lr"),
        "",
        f"Mean window read per crop: {mean_window / 1e3:,.0f} kpx "
        f"({mean_window / CROP**2:.2f}× the crop: scale 0.5 needs a 1026² window plus rotation).",
        "",
        f"### Loss cost (forward + backward, {BATCH}×6×{CROP}×{CROP} float32 logits, CPU, "
        f"one thread, median of {repeats}, interleaved)",
        "",
        md_table(
            ["loss", "ms", "× F.cross_entropy"],
            [[k, fmt(v * 1e3), fmt(v / ce, 3)] for k, v in losses],
            "lrr",
        ),
        "",
        f"Target NPA loss ≤ {TARGET_LOSS_RATIO}× `F.cross_entropy`: "
        f"{verdict(ratio <= TARGET_LOSS_RATIO)} ({ratio:.2f}×).",
        "",
        "### Machine",
        "",
        md_table(["item", "value"], machine_rows(load_start), "ll"),
    ]
    report = "\n".join(text)
    print(report)
    if args.write:
        write_section(args.write, "bench_train", report)
        log(f"written to {args.write}")


if __name__ == "__main__":
    main()
