"""Test helpers shared by several test modules: brute-force Eq. 1, the real data crops' path,
tiny label files and stores.

They live here, not in ``conftest.py``, so that processes the tests spawn import them by a
name no other ``conftest`` (the repository root has one for doctests) can shadow.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NPALOSS_SHARED_DATA", ROOT.parent / "shared" / "data"))
ISPRS_PALETTE = np.array(
    [[255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]],
    dtype=np.uint8,
)


def brute_force_affinity(labels: np.ndarray, k: int) -> np.ndarray:
    """Eq. 1 by shifted comparisons over an explicitly edge-padded label map."""
    h, w = labels.shape
    padded = np.pad(labels, k, mode="edge")
    out = np.zeros((h, w), dtype=np.int64)
    for dx in range(2 * k + 1):
        for dy in range(2 * k + 1):
            out += padded[dx : dx + h, dy : dy + w] != labels
    return out


def write_isprs_tile(folder: Path, name: str, index: np.ndarray, *, ignore_mask=None) -> Path:
    """Write an RGB colour-coded ISPRS label TIFF (black where ``ignore_mask``)."""
    rgb = ISPRS_PALETTE[index]
    if ignore_mask is not None:
        rgb[ignore_mask] = 0
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.fromarray(rgb).save(path)
    return path


def write_image(folder: Path, name: str, image: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.fromarray(image).save(path)
    return path


def brute_force_at(labels: np.ndarray, k: int, points) -> np.ndarray:
    """Eq. 1 at chosen pixels only (exact; for large k on large tiles)."""
    padded = np.pad(labels, k, mode="edge")
    return np.array(
        [
            int((padded[y : y + 2 * k + 1, x : x + 2 * k + 1] != labels[y, x]).sum())
            for y, x in points
        ]
    )


def sample_points(shape, n: int = 400, seed: int = 0):
    """Random pixels plus every pixel of the four tile borders."""
    h, w = shape
    rng = np.random.default_rng(seed)
    pts = {
        (int(y), int(x)) for y, x in zip(rng.integers(0, h, n), rng.integers(0, w, n), strict=True)
    }
    pts |= {(0, x) for x in range(w)} | {(h - 1, x) for x in range(w)}
    pts |= {(y, 0) for y in range(h)} | {(y, w - 1) for y in range(h)}
    return sorted(pts)


def write_train_store(folder: Path) -> Path:
    """Two small ISPRS-coded tiles (80x96, 64x64) whose image is a noisy function of the
    label, precomputed with k = 2, 4 and 16-pixel chunks into ``folder/store.zarr``."""
    import tifffile

    from npa_precompute.pipeline import run_precompute
    from npa_precompute.presets import ISPRS

    rng = np.random.default_rng(0)
    palette = np.array((*ISPRS.palette, (0, 0, 0)), dtype=np.uint8)
    colours = rng.integers(0, 256, size=(7, 3))
    (folder / "gts").mkdir()
    (folder / "top").mkdir()
    for tid, (h, w) in {"areaA": (80, 96), "areaB": (64, 64)}.items():
        blocks = rng.integers(0, 7, size=(h // 8, w // 8))
        idx = np.kron(blocks, np.ones((8, 8), dtype=np.int64))
        tifffile.imwrite(folder / "gts" / f"{tid}_noBoundary.tif", palette[idx])
        image = np.clip(colours[idx] + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
        tifffile.imwrite(folder / "top" / f"{tid}.tif", image)
    out = folder / "store.zarr"
    run_precompute([str(folder / "gts")], out, images=[str(folder / "top")], ks="2,4", chunk=16)
    return out


def marked_processes(marker: str) -> list[int]:
    """Running (not zombie) processes whose environment holds ``marker``: the processes of
    a run started with it in its environment, children included (Linux ``/proc``)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            with open(f"/proc/{entry}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[-1].split()[0] in (b"Z", b"X"):
                    continue
        except OSError:
            continue
        out.append(int(entry))
    return out
