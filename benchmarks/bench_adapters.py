"""NPALoss in the frameworks: step cost against cross-entropy, loss scale, crop borders.

Three parts, each on the real crops in ``../shared/data`` (``NPALOSS_SHARED_DATA``
overrides), weights ``log10:L=0.5``:

``speed``
    One training step of ``smp.Unet("resnet18")`` (batch 4 × 3 × 256², 6 classes,
    SGD) with the smp adapter's ``NPALoss(k=32)`` over the same step with
    ``nn.CrossEntropyLoss``, interleaved, median of 10 timed steps each after one
    warm-up step. Target (issue 20): ratio <= 1.05 on the CPU.
``scale``
    NPALoss is (mean weight) × CE when the weights and the per-pixel CE are independent:
    the mean weight over the non-ignored pixels per dataset and k (0, 8, 16, 32, 64),
    of the whole tiles and of the 256² crops the online loss sees.
``borders``
    Online weights are Eq. 1 of the crop, padded at the crop's edges: how many pixels
    of 256² crops (non-overlapping, all of each tile) get other weights than the tile's,
    the mean |Δ| and how far from the crop's border they lie (k = 32, 64).

Prints a Markdown report; ``--write`` puts it into ``docs/benchmarks.md`` (section
``bench_adapters``).

Usage::

    nice python benchmarks/bench_adapters.py [--part speed,scale,borders] [--write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    SHARED_DATA,
    LoadMeter,
    add_write_option,
    machine_rows,
    md_table,
    now,
    real_labels,
    require_data,
    write_section,
)

from npa_train.online import npa_weights

KS = (0, 8, 16, 32, 64)
SPEC = "log10:L=0.5"
CROP = 256
IGN = 255


def loveda_labels() -> list[np.ndarray]:
    """The two LoveDA Rural tiles decoded by the ``loveda`` preset (0 no-data -> 255)."""
    from PIL import Image

    from npa_precompute.presets import get_preset

    masks = SHARED_DATA / "loveda_crop" / "Train" / "Rural" / "masks_png"
    return [get_preset("loveda").decode(np.asarray(Image.open(masks / f"{i}.png"))) for i in (0, 1)]


def datasets() -> dict[str, list[np.ndarray]]:
    return {"Vaihingen crop (512²)": [real_labels()], "LoveDA Rural (2 × 1024²)": loveda_labels()}


def _crops(tile: np.ndarray) -> list[tuple[int, int]]:
    h, w = tile.shape
    return [(y, x) for y in range(0, h - CROP + 1, CROP) for x in range(0, w - CROP + 1, CROP)]


def _weights(label: np.ndarray, k: int) -> torch.Tensor:
    return npa_weights(torch.from_numpy(label.astype(np.int64))[None], k, SPEC, ignore_index=IGN)[0]


# -- scale -----------------------------------------------------------------------------------------
def part_scale() -> str:
    rows = []
    for name, tiles in datasets().items():
        cells = []
        for k in KS:
            tile_w, crop_w = [], []
            for tile in tiles:
                valid = torch.from_numpy(tile != IGN)
                tile_w.append(_weights(tile, k)[valid])
                for y, x in _crops(tile):
                    crop = tile[y : y + CROP, x : x + CROP]
                    crop_w.append(_weights(crop, k)[torch.from_numpy(crop != IGN)])
            cells.append(f"{torch.cat(tile_w).mean():.2f} ({torch.cat(crop_w).mean():.2f})")
        rows.append([name, *cells])
    table = md_table(["dataset", *[f"k = {k}" for k in KS]], rows, "l" + "r" * len(KS))
    return (
        "### Loss scale: mean NPA weight (log10, L = 0.5) over the non-ignored pixels\n\n"
        "Whole tiles, and in brackets the 256² crops the online loss sees. With "
        '`reduction="mean"` (Eq. 4, the default) NPALoss is about this factor × CE.\n\n'
        + table
        + "\n"
    )


# -- borders ---------------------------------------------------------------------------------------
def part_borders() -> str:
    rows = []
    for name, tiles in datasets().items():
        for k in (32, 64):
            differ = valid_n = 0
            abs_sum = 0.0
            abs_diff_sum = 0.0
            farthest = 0
            for tile in tiles:
                full = _weights(tile, k)
                for y, x in _crops(tile):
                    crop = tile[y : y + CROP, x : x + CROP]
                    own = _weights(crop, k)
                    ref = full[y : y + CROP, x : x + CROP]
                    valid = torch.from_numpy(crop != IGN)
                    delta = (own - ref).abs()[valid]
                    changed = delta > 0
                    differ += int(changed.sum())
                    valid_n += int(valid.sum())
                    abs_sum += float(delta.sum())
                    abs_diff_sum += float(delta[changed].sum())
                    ys, xs = torch.nonzero((own != ref) & valid, as_tuple=True)
                    if len(ys):
                        edge = torch.minimum(
                            torch.minimum(ys, CROP - 1 - ys), torch.minimum(xs, CROP - 1 - xs)
                        )
                        farthest = max(farthest, int(edge.max()))
            rows.append(
                [
                    name,
                    k,
                    f"{100 * differ / valid_n:.1f} %",
                    f"{abs_sum / valid_n:.3f}",
                    f"{abs_diff_sum / max(differ, 1):.3f}",
                    farthest,
                ]
            )
    table = md_table(
        ["dataset", "k", "pixels whose weight differs", "mean |Δ| (all pixels)",
         "mean |Δ| (differing pixels)", "farthest from the crop's edge (px)"],
        rows,
        "lrrrrr",
    )  # fmt: skip
    return (
        "### Crop borders: online weights of 256² crops against the tile's\n\n"
        "Every non-overlapping 256² crop of each tile, weights of the crop alone (Eq. 1 "
        "padded at the crop's edges, what the adapters compute) against the tile's (what "
        "the store holds, and what `npa_train.online.npa_weights_crop` gives from a label "
        "window with a k-pixel margin); non-ignored pixels.\n\n" + table + "\n"
    )


# -- speed -----------------------------------------------------------------------------------------
def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    label = real_labels()
    crops = [label[y : y + CROP, x : x + CROP] for y, x in _crops(label)][:4]
    target = torch.from_numpy(np.stack(crops).astype(np.int64))
    g = torch.Generator().manual_seed(0)
    image = torch.randn((4, 3, CROP, CROP), generator=g)
    return image, target


def part_speed(repeats: int = 10) -> tuple[str, dict]:
    import segmentation_models_pytorch as smp
    from torch import nn

    from npa_train.adapters.smp import NPALoss

    torch.manual_seed(0)
    model = smp.Unet(encoder_name="resnet18", encoder_weights=None, in_channels=3, classes=6)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    image, target = _batch()
    losses = {"CE": nn.CrossEntropyLoss(ignore_index=IGN),
              "NPALoss k=32": NPALoss(k=32, ignore_index=IGN)}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in losses}

    def step(loss_fn) -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(image), target).backward()
        opt.step()

    for loss_fn in losses.values():  # warm-up
        step(loss_fn)
    meter = LoadMeter().start()
    for _ in range(repeats):
        for name, loss_fn in losses.items():
            t0 = time.perf_counter()
            step(loss_fn)
            times[name].append(time.perf_counter() - t0)
    others = meter.stop()
    w_times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        npa_weights(target, 32, SPEC, ignore_index=IGN, num_classes=6)
        w_times.append(time.perf_counter() - t0)
    ce, npa = (statistics.median(times[n]) for n in losses)
    ratio = npa / ce
    rows = [
        ["CE step", f"{ce * 1e3:.0f} ms"],
        ["NPALoss step (k = 32, weights from the batch)", f"{npa * 1e3:.0f} ms"],
        ["ratio NPALoss / CE (target <= 1.05)", f"**{ratio:.3f}**"],
        ["the weights alone (4 × 256², k = 32)", f"{statistics.median(w_times) * 1e3:.1f} ms"],
        ["other processes' load during the steps (cores)", f"{others:.2f}"],
    ]
    text = (
        "### Step cost: smp Unet-r18, batch 4 × 3 × 256², 6 classes, SGD\n\n"
        f"Interleaved, median of {repeats} steps each after one warm-up; "
        f"torch threads: {torch.get_num_threads()}.\n\n"
        + md_table(["", "value"], rows, "lr")
        + "\n"
    )
    return text, {"ce_s": ce, "npa_s": npa, "ratio": ratio, "others_load": others}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="speed,scale,borders",
                        help="comma-separated parts: speed, scale, borders")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per loss (10)")
    add_write_option(parser)
    args = parser.parse_args()
    require_data()
    parts = [p.strip() for p in args.part.split(",") if p.strip()]
    unknown = set(parts) - {"speed", "scale", "borders"}
    if unknown:
        parser.error(f"--part: unknown {sorted(unknown)}; choose from speed, scale, borders")
    load0 = os.getloadavg()
    sections = []
    if "speed" in parts:
        sections.append(part_speed(args.repeats)[0])
    if "scale" in parts:
        sections.append(part_scale())
    if "borders" in parts:
        sections.append(part_borders())
    machine = md_table(["item", "value"], machine_rows(load0), "ll")
    text = (
        f"## NPALoss in the frameworks (bench_adapters, {now()})\n\n"
        + "\n".join(sections)
        + "\n"
        + machine
        + "\n"
    )
    print(text)
    if args.write:
        write_section(args.write, "bench_adapters", text)
        print(f"wrote {args.write}", file=sys.stderr)


if __name__ == "__main__":
    main()
