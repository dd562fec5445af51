"""npa_precompute: neighboring pixel affinity maps and NPALoss weights into a zarr store.

Feng et al., "Neighboring Pixel Affinity Loss for Semantic Segmentation in
High-Resolution Aerial Imagery", ISPRS Annals V-2-2020.

The names below are imported on first use (numba and zarr load only when needed), so
``npa-precompute --help`` and ``npa-train --help`` start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "affinity_maps": "npa_precompute.affinity",
    "open_weights": "npa_precompute.store",
    "parse_ks": "npa_precompute.params",
    "WeightTransform": "npa_precompute.transforms",
    "WeightsSpec": "npa_precompute.names",
    "parse_transform": "npa_precompute.transforms",
    "weights_name": "npa_precompute.transforms",
}

if TYPE_CHECKING:  # pragma: no cover
    from npa_precompute.affinity import affinity_maps
    from npa_precompute.names import WeightsSpec
    from npa_precompute.params import parse_ks
    from npa_precompute.store import open_weights
    from npa_precompute.transforms import WeightTransform, parse_transform, weights_name

__all__ = [
    "WeightTransform",
    "WeightsSpec",
    "__version__",
    "affinity_maps",
    "open_weights",
    "parse_ks",
    "parse_transform",
    "weights_name",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'npa_precompute' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
