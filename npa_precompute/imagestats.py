"""Per-band image statistics (mean and standard deviation) of the tiles.

Computed from exact uint64 sums of values and squares, so the statistics of a tile are
the same floats whether its sums come from the whole image (:func:`image_stats`, the
in-memory precompute and the predictor) or are added up block by block
(:func:`band_sums_of` per block, then :func:`stats_from_sums`, the blockwise precompute).
They are stored in each tile's attrs (``image_mean``, ``image_std``) and normalize the
images for training.
"""

from __future__ import annotations

import numpy as np

__all__ = ["band_sums_of", "image_stats", "stats_from_sums"]


def band_sums_of(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-band sums of the values and of their squares.

    Parameters
    ----------
    image : (H, W, C) uint8 or uint16 array

    Returns
    -------
    sums, squares : (C,) uint64 arrays
    """
    from npa_precompute._kernels import band_sums

    c = image.shape[2]
    sums = np.zeros(c, dtype=np.uint64)
    squares = np.zeros(c, dtype=np.uint64)
    band_sums(np.ascontiguousarray(image), sums, squares)
    return sums, squares


def stats_from_sums(sums: np.ndarray, squares: np.ndarray, n: int) -> dict:
    """Per-band mean and standard deviation from exact uint64 sums of values and squares.

    Parameters
    ----------
    sums, squares : (C,) uint64 arrays (:func:`band_sums_of`, possibly added over blocks)
    n : int, pixels summed

    Returns
    -------
    dict
        ``{"image_mean": [C floats], "image_std": [C floats]}`` (population std), the
        same floats whether the sums come from one tile or from its blocks.
    """
    mean = [int(s) / n for s in sums]
    var = [max(int(q) / n - m * m, 0.0) for q, m in zip(squares, mean, strict=True)]
    return {"image_mean": mean, "image_std": [v**0.5 for v in var]}


def image_stats(image: np.ndarray) -> dict:
    """Per-band mean and standard deviation of an (H, W, C) uint8/uint16 image.

    Exact integer sums in one pass (no float64 copy of the image).

    Returns
    -------
    dict
        ``{"image_mean": [C floats], "image_std": [C floats]}`` for the tile attrs.
    """
    sums, squares = band_sums_of(image)
    return stats_from_sums(sums, squares, image.shape[0] * image.shape[1])
