"""NPALoss in MONAI's conventions, and a dictionary transform adding the weight map.

MONAI's losses take ``(B, C, *spatial)`` logits and ``(B, 1, *spatial)`` class indices
(or ``(B, *spatial)``), 2-D or 3-D; :class:`NPALoss` takes the same, so swapping the
loss of a MONAI pipeline is one line::

    # loss_function = monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)
    loss_function = NPALoss(k=(2, 8, 8))  # Eq. 1 window 5 x 17 x 17 voxels, log10, L = 0.5

The weights are computed from the (augmented) label batch on its device
(:func:`npa_train.online.npa_weights`: exact N-D Eq. 1 counts, any k per axis). For
pipelines that want the weight map in the batch instead, :class:`NPAWeightsd` adds it
to the data dictionary; placed in ``Compose`` after the spatial augmentation
(``RandAffined``, ``RandCropByPosNegLabeld``) it is aligned with the augmented label
by construction, and the loss then takes it as ``loss(logits, label, weight)``.

A search region in millimetres follows the voxel spacing: ``NPALoss(k_physical=10,
spacing=(5, 0.7, 0.7))`` is ``k = (2, 14, 14)`` (round half up of size / spacing per
axis); :class:`NPAWeightsd` reads the spacing of each ``MetaTensor`` label
(``pixdim``) when ``spacing`` is not given. Requires the ``monai`` extra.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from torch import Tensor

from npa_precompute.errors import ParameterError
from npa_precompute.regions import k_from_physical
from npa_precompute.transforms import parse_transform
from npa_train.loss import NPALoss as _NPALoss
from npa_train.loss import parse_k
from npa_train.online import npa_weights

__all__ = ["NPALoss", "NPAWeightsd"]


def _index_target(target: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """``(B, 1, *spatial)`` or ``(B, *spatial)`` class indices -> ``(B, *spatial)``."""
    if not isinstance(target, Tensor):
        raise TypeError(f"`target` must be a torch.Tensor, got {type(target).__name__}")
    shape = tuple(target.shape)
    if len(shape) == len(spatial) + 2 and shape[1] == 1 and shape[2:] == spatial:
        target = target[:, 0]
    elif not (len(shape) == len(spatial) + 1 and shape[1:] == spatial):
        raise ValueError(
            f"`target` must be (B, 1, *spatial) or (B, *spatial) class indices with spatial "
            f"{spatial} of `input`, got {shape}"
        )
    if target.is_floating_point():  # MONAI keeps labels as float MetaTensors
        rounded = target.round()
        if not torch.equal(rounded, target):
            raise ValueError("`target` holds non-integer labels; expected class indices")
        target = rounded
    return target.as_subclass(Tensor).long() if isinstance(target, MetaTensor) else target.long()


class NPALoss(_NPALoss):
    """NPALoss (pixel/voxel-weighted cross-entropy, softmax of the logits) for MONAI.

    Parameters
    ----------
    k
        Search region of Eq. 1: an int (every axis) or one per spatial axis, e.g.
        ``(2, 8, 8)`` for ``(D, H, W)`` volumes with thick slices (default 32).
    transform
        Weight transform spec (default ``"log10:L=0.5"``).
    ignore_index
        Label of ignored voxels (default None: none, as in MONAI).
    reduction
        ``"mean"`` over non-ignored voxels (default), ``"sum"``, ``"none"``
        (MONAI's names), or ``"weighted_mean"``, ``"batch"``.
    k_physical, spacing
        A search radius in physical units (mm) and the voxel
        spacing in the array's axis order, instead of ``k``
        (:class:`npa_train.loss.NPALoss`).

    Shape
    -----
    - input: ``(B, C, H, W)`` or ``(B, C, D, H, W)`` logits.
    - target: ``(B, 1, *spatial)`` or ``(B, *spatial)`` class indices (integer, or
      float with integer values as MONAI loads them).
    - weight: optional ``(B, 1, *spatial)`` or ``(B, *spatial)`` map
      (:class:`NPAWeightsd`), used instead of computing it.

    Raises
    ------
    ValueError
        A target whose shape matches neither form (e.g. a 4-D target for
        2-D logits with more than one channel); non-integer labels; as
        :class:`npa_train.loss.NPALoss` otherwise.
    """

    def __init__(
        self,
        k: int | Sequence[int] = 32,
        transform: str = "log10:L=0.5",
        ignore_index: int | None = None,
        reduction: str = "mean",
        *,
        k_physical: float | Sequence[float] | None = None,
        spacing: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__(k=k, transform=transform, ignore_index=ignore_index,
                         reduction=reduction, k_physical=k_physical, spacing=spacing)  # fmt: skip

    def forward(self, input: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        if isinstance(input, MetaTensor):
            input = input.as_subclass(Tensor)
        spatial = tuple(input.shape[2:])
        target = _index_target(target, spatial)
        if weight is not None:
            if isinstance(weight, MetaTensor):
                weight = weight.as_subclass(Tensor)
            if weight.ndim == len(spatial) + 2 and weight.shape[1] == 1:
                weight = weight[:, 0]
        return super().forward(input, target, weight)


class NPAWeightsd(MapTransform):
    """Add the NPA weight map of a channel-first label to the data dictionary.

    For each key, ``data[key]`` is a ``(1, H, W)`` or ``(1, D, H, W)`` label (MONAI's
    channel-first layout; tensor, ``MetaTensor`` or array, integer values) and
    ``data[f"{key}{weight_suffix}"]`` becomes its ``(1, *spatial)`` float32 weights
    (:func:`npa_train.online.npa_weights`: exact Eq. 1, then ``transform``; 0 at
    ``ignore_index``), a ``MetaTensor`` with the label's metadata when the label is one.

    Parameters
    ----------
    keys
        Label keys (``"label"``).
    k
        Search region, an int or one per spatial axis (default 32).
    transform
        Weight transform spec (default ``"log10:L=0.5"``).
    ignore_index
        Label whose voxels weigh 0 (default None).
    k_physical
        Search radius in physical units instead of ``k``; the spacing is
        ``spacing`` or, when None, the label's ``pixdim`` (MetaTensor).
    spacing
        Voxel spacing for ``k_physical`` in the array's axis order.
    weight_suffix
        Suffix of the added key (default ``"_npa_weight"``).
    allow_missing_keys
        MONAI's flag.

    Raises
    ------
    ValueError
        A label that is not channel-first with one channel (a ``(D, H, W)``
        or ``(H, W)`` label cannot be told from a channel-first one: add the channel
        with ``EnsureChannelFirstd``), non-integer labels, ``k_physical`` without a
        spacing to resolve it.
    """

    def __init__(
        self,
        keys: KeysCollection,
        k: int | Sequence[int] = 32,
        transform: str = "log10:L=0.5",
        ignore_index: int | None = None,
        *,
        k_physical: float | Sequence[float] | None = None,
        spacing: float | Sequence[float] | None = None,
        weight_suffix: str = "_npa_weight",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.k = parse_k(k)
        self.transform = parse_transform(transform).spec
        self.ignore_index = ignore_index
        self.k_physical = k_physical
        self.spacing = spacing
        if k_physical is not None and spacing is not None:
            self.k = parse_k(_region(k_from_physical(k_physical, spacing, name="k_physical")))
        self.weight_suffix = weight_suffix

    def _k_of(self, label) -> int | tuple[int, ...]:
        if self.k_physical is None or self.spacing is not None:
            return self.k
        pixdim = getattr(label, "pixdim", None)
        if pixdim is None:
            raise ParameterError(
                "spacing", "is needed with `k_physical` for a label without pixdim metadata"
            )
        spacing = [float(v) for v in np.asarray(pixdim).ravel()[: label.ndim - 1]]
        return _region(k_from_physical(self.k_physical, spacing, name="k_physical"))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            target = torch.as_tensor(label.as_subclass(Tensor) if isinstance(label, MetaTensor)
                                     else label)  # fmt: skip
            if target.ndim not in (3, 4) or target.shape[0] != 1:
                raise ValueError(
                    f"`{key}` must be a channel-first label (1, H, W) or (1, D, H, W), got "
                    f"shape {tuple(target.shape)}; a label without its channel axis cannot be "
                    "told from a volume: add it with EnsureChannelFirstd"
                )
            target = _index_target(target[None], tuple(target.shape[1:]))  # (1, *spatial)
            weights = npa_weights(target, self._k_of(label), self.transform,
                                  ignore_index=self.ignore_index,
                                  spatial_dims=target.ndim - 1)  # fmt: skip
            if isinstance(label, MetaTensor):
                weights = MetaTensor(weights, meta=dict(label.meta))
            d[f"{key}{self.weight_suffix}"] = weights
        return d


def _region(region: tuple[int, ...]) -> int | tuple[int, ...]:
    return region[0] if len(set(region)) == 1 else region
