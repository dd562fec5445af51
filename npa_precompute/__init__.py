"""npa_precompute: neighboring pixel affinity maps and NPALoss weights into a zarr store.

Feng et al., "Neighboring Pixel Affinity Loss for Semantic Segmentation in
High-Resolution Aerial Imagery", ISPRS Annals V-2-2020.
"""

from __future__ import annotations

__version__ = "0.1.0"

from npa_precompute.affinity import affinity_maps, parse_ks
from npa_precompute.transforms import WeightTransform, parse_transform, weights_name

__all__ = [
    "WeightTransform",
    "__version__",
    "affinity_maps",
    "parse_ks",
    "parse_transform",
    "weights_name",
]
