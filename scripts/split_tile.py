"""Cut one tile (image + label) into a north and a south half, for toy train/val splits.

Used by docs/experiments.md to train on one part of the 512x512 Vaihingen crop in
../shared/data and evaluate on the other. The halves are written under --out (keep them
out of the repository: runs/ is git-ignored) with ISPRS-style names, so that
``npa-precompute run --preset isprs`` pairs them: ``top/<stem>_{north,south}.tif`` and
``gts/<stem>_{north,south}_noBoundary.tif``.

    python scripts/split_tile.py IMAGE LABEL --out runs/toy [--rows 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import tifffile

from npa_precompute.readers import read_image, read_label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("label", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=None, help="rows of the north half")
    args = parser.parse_args()
    image, label = read_image(args.image), read_label(args.label)
    if image.shape[:2] != label.shape[:2]:
        raise SystemExit(f"image {image.shape[:2]} and label {label.shape[:2]} differ in size")
    rows = args.rows if args.rows is not None else label.shape[0] // 2
    if not 0 < rows < label.shape[0]:
        raise SystemExit(f"--rows must be in 1..{label.shape[0] - 1}, got {rows}")
    stem = args.image.stem
    for part, sl in (("north", slice(0, rows)), ("south", slice(rows, None))):
        for folder, name, arr in (
            ("top", f"{stem}_{part}.tif", image[sl]),
            ("gts", f"{stem}_{part}_noBoundary.tif", label[sl]),
        ):
            (args.out / folder).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(args.out / folder / name, arr, photometric="rgb")
            print(args.out / folder / name, arr.shape)


if __name__ == "__main__":
    main()
