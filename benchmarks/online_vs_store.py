"""Online weights against store weights on the real crops, under the paper's augmentation.

Both are exact, for different label maps: store weights are Eq. 1 on the whole tile at its
original scale, resampled with the crop (bilinear among non-ignored pixels); online
weights (``npa-train fit --weights online:k32_log10_L0.5``) are Eq. 1 on the augmented
label at the training scale (k output pixels, i.e. k / scale tile pixels). This script
measures how far apart they are on the real crops in ``../shared/data`` (the Vaihingen
512² crop with the ``isprs`` preset, the two LoveDA 1024² tiles with ``loveda``): the
same samples (seed, index) of ``StoreCropDataset`` with the paper's augmentation
(resize 0.5-2, rotation ±10°, mirrors, blur), k = 32, log10, L = 0.5.

Per pixel (non-ignored in both, same label in both): the absolute difference of the two
weights; reported as mean and 99th percentile overall, per class, at boundaries (a pixel
with an 8-neighbour of another label value in the crop, the ignore band of eroded ground
truth included, as ``npa-precompute inspect`` counts them; so are pixels next to the fill
brought in from outside the tile) and inside classes, and by the sample's scale; with the
mean weight of each.

Prints a Markdown report; ``--write`` puts it into ``docs/online-weights.md``
(section ``online_vs_store``).

Usage::

    python benchmarks/online_vs_store.py [--samples 240] [--crop 256] [--write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED_DATA, add_write_option, fmt, md_table, now, write_section

WNAME = "k32_log10_L0.5"
SCALE_BINS = ((0.5, 0.8), (0.8, 1.25), (1.25, 2.0))
DATASETS = {
    "Vaihingen crop (isprs, 1 × 512²)": (
        "isprs", "vaihingen_crop/gts_eroded_for_participants", "vaihingen_crop/top"),
    "LoveDA crop (loveda, 2 × 1024²)": (
        "loveda", "loveda_crop/Train/Rural/masks_png", "loveda_crop/Train/Rural/images_png"),
}  # fmt: skip


def boundary_mask(label: np.ndarray) -> np.ndarray:
    """True where a pixel has an 8-neighbour of another label value in the crop (the
    ignore value included, as ``npa-precompute inspect`` counts them: the boundaries of
    eroded ground truth are its ignore band)."""
    h, w = label.shape
    padded = np.pad(label, 1, mode="edge")
    out = np.zeros(label.shape, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out |= padded[dy : dy + h, dx : dx + w] != label
    return out


def collect(store: Path, n: int, crop: int, seed: int, batch: int = 8) -> dict:
    from npa_train.augment import AugmentConfig
    from npa_train.data import StoreCropDataset

    aug = AugmentConfig(crop=crop)
    a = StoreCropDataset(store, WNAME, augment=aug, seed=seed, length=n, output="window")
    b = StoreCropDataset(store, f"online:{WNAME}", augment=aug, seed=seed, length=n,
                         output="window")  # fmt: skip
    cols: dict[str, list] = {k: [] for k in ("cls", "edge", "scale", "ws", "wo")}
    same_label = total = 0
    for start in range(0, n, batch):
        idx = range(start, min(n, start + batch))
        oa = a.warp(a.collate([a[i] for i in idx]), "cpu")
        ob = b.warp(b.collate([b[i] for i in idx]), "cpu")
        for j, i in enumerate(idx):
            la, lb = oa["label"][j].numpy(), ob["label"][j].numpy()
            valid = (la != a.ignore_index) & (lb != a.ignore_index)
            total += int(valid.sum())
            keep = valid & (la == lb)
            same_label += int(keep.sum())
            cols["cls"].append(la[keep])
            cols["edge"].append(boundary_mask(la)[keep])
            cols["scale"].append(np.full(int(keep.sum()), a.sample_params(i).scale))
            cols["ws"].append(oa["weight"][j].numpy()[keep])
            cols["wo"].append(ob["weight"][j].numpy()[keep])
    out = {k: np.concatenate(v) for k, v in cols.items()}
    out["classes"] = a.classes
    out["same_label"] = same_label / max(total, 1)
    return out


def rows_for(d: dict) -> list[list[str]]:
    diff = np.abs(d["wo"].astype(np.float64) - d["ws"])

    def row(name, m):
        if not m.any():
            return [name, "0", "", "", "", ""]
        return [name, fmt(int(m.sum())), fmt(float(d["ws"][m].mean())),
                fmt(float(d["wo"][m].mean())), fmt(float(diff[m].mean())),
                fmt(float(np.percentile(diff[m], 99)))]  # fmt: skip

    rows = [row("all pixels", np.ones(diff.shape, bool))]
    rows += [row(f"class {c}: {name}", d["cls"] == c) for c, name in enumerate(d["classes"])]
    rows += [row("boundary pixels", d["edge"]), row("interior pixels", ~d["edge"])]
    rows += [row(f"scale {lo}–{hi}", (d["scale"] >= lo) & (d["scale"] < hi))
             for lo, hi in SCALE_BINS]  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=240, help="crops per dataset")
    parser.add_argument("--crop", type=int, default=256, help="crop side (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    add_write_option(parser, "online-weights.md")
    args = parser.parse_args()
    from npa_precompute.pipeline import run_precompute

    t0 = time.perf_counter()
    parts = [
        f"### Online against store weights (`benchmarks/online_vs_store.py`, {now()})",
        "",
        f"{args.samples} crops of {args.crop}² per dataset, seed {args.seed}, the paper's "
        f"augmentation, `{WNAME}` from the store against `online:{WNAME}`. Pixels compared: "
        "non-ignored in both crops with the same label in both (the online crop is sampled "
        "on the grown crop's grid, so a label can differ where a nearest-neighbour sample "
        "falls on a tie); |Δ| = |online − store|.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (preset, labels, images) in DATASETS.items():
            lab, img = SHARED_DATA / labels, SHARED_DATA / images
            if not lab.is_dir():
                sys.exit(f"{lab} not found; set NPALOSS_SHARED_DATA")
            store = Path(tmp) / f"{preset}.zarr"
            run_precompute([str(lab)], store, images=[str(img)], preset=preset, ks="32",
                           transforms=("log10:L=0.5",))  # fmt: skip
            d = collect(store, args.samples, args.crop, args.seed)
            print(f"[{time.perf_counter() - t0:6.1f}s] {name}", file=sys.stderr, flush=True)
            parts += [
                f"**{name}** — {fmt(len(d['wo']))} pixels compared "
                f"({d['same_label']:.4%} of the non-ignored pixels have the same label in both)",
                "",
                md_table(
                    ["pixels", "n", "mean store w", "mean online w", "mean \\|Δ\\|", "p99 \\|Δ\\|"],
                    rows_for(d),
                ),
                "",
            ]
    text = "\n".join(parts)
    print(text)
    if args.write:
        write_section(args.write, "online_vs_store", text)


if __name__ == "__main__":
    main()
