"""Defaults of ``npa-precompute run`` and :func:`npa_precompute.pipeline.run_precompute`.

Plain values (no numba, zarr or numpy import), so the command line reads them at start-up
and neither it nor the library types them again. Source of the k and the transform: the
paper's Fig. 5 (k = 8, 16, 32, 64) and Table 2 (log10 with L = 0.5, the best).
"""

from __future__ import annotations

__all__ = [
    "BLOCK",
    "CHUNK",
    "KS",
    "PRESET",
    "TRANSFORMS",
    "UNKNOWN_COLORS",
    "WEIGHT_DTYPE",
    "WORKERS",
]

#: Label convention (``isprs``: RGB colour-coded ISPRS ground truth).
PRESET = "isprs"
#: Search regions k (Fig. 5).
KS = (8, 16, 32, 64)
#: Weight transformations (Table 2's best).
TRANSFORMS = ("log10:L=0.5",)
#: dtype of the weights arrays.
WEIGHT_DTYPE = "float32"
#: What colours outside the palette do: ``error`` or ``ignore``.
UNKNOWN_COLORS = "error"
#: Chunk side of the store's arrays, pixels.
CHUNK = 256
#: Tiles processed in parallel.
WORKERS = 1
#: Block side of the blockwise (``--dask``) path, pixels.
BLOCK = 2048
