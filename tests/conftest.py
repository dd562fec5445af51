"""Shared fixtures: brute-force Eq. 1, the real data crops, tiny label files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
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


@pytest.fixture(scope="module")
def one_thread():
    """torch on one intra-op thread for a test module: small models and tensor ops on a
    shared 2-core machine run faster and steadier that way (``pytestmark`` uses it)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data crops not found at {SHARED_DATA}")
    return SHARED_DATA


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


#: Modules whose tests time, signal or kill processes, or start clusters and torchrun:
#: under pytest-xdist (``make test`` runs ``-n 2 --dist loadgroup``) they run one after
#: another on one worker, so two of them never compete for the cores and their timeouts
#: stay those measured on one busy worker.
SERIAL_MODULES = frozenset(
    {"test_store_safety", "test_train_ddp", "test_blockwise", "test_paper_gpu_script"}
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = getattr(item, "module", None)  # doctest items have none
        if module is not None and module.__name__.rsplit(".", 1)[-1] in SERIAL_MODULES:
            item.add_marker(pytest.mark.xdist_group("serial"))
