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
    "open_weights",
    "parse_ks",
    "parse_transform",
    "weights_name",
]


def open_weights(store, tile: str, name: str):
    """Open the weights ``name`` of a tile, stored or derived from its counts.

    Any transformation of a k whose counts the store holds (``k32_ln_L0.5``,
    ``k16_norm_L0``, ...) or a multi-scale mean (``ms_k8-16-32_log10_L0.5``); the
    values equal what ``npa-precompute run`` would have stored, bit for bit. Returns a
    read-only array (numpy-style slicing); see :func:`npa_precompute.derived.open_weights`.
    """
    from npa_precompute.derived import open_weights as _open_weights

    return _open_weights(store, tile, name)
