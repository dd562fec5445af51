"""Weights names: the one grammar of every name a weights option or array can have.

================================  ===============================================
name                              meaning
================================  ===============================================
``k32_log10_L0.5``                one k, one transformation: stored, or derived from
                                  the stored counts (``k16_ln_L0.5``, ``k130_raw``,
                                  ``k32_norm_L0.5``, ``k32_log_a2_L0.5``)
``k2x14x14_log10_L0.5``           one anisotropic search region, one k per spatial axis
                                  (D, H, W; ``k4x8_...`` for (H, W)): a store keeps
                                  its counts as ``affinity/k2x14x14``
``ms_k8-16-32_log10_L0.5``        multi-scale: the mean over the listed k of the
                                  per-k weights (two k or more)
``online:k32_log10_L0.5``         computed from each augmented label during training
                                  (:mod:`npa_train.online`); ``online:ms_...`` too
================================  ===============================================

The transformation part is :attr:`WeightTransform.slug
<npa_precompute.transforms.WeightTransform.slug>` (:func:`~npa_precompute.transforms.parse_slug`
reads it). :class:`WeightsSpec` parses and formats all of them; ``WeightsSpec.parse(n).name``
is the canonical spelling of ``n`` (``k8-32-16`` sorted, ``L0.50`` as ``L0.5``).

Imports numpy only (no numba, zarr, torch).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from npa_precompute.errors import ParameterError, ParameterTypeError
from npa_precompute.params import MAX_K
from npa_precompute.regions import compact_region, format_region, parse_region, region_attr
from npa_precompute.transforms import WeightTransform, parse_slug, weights_name

__all__ = ["ONLINE_PREFIX", "WeightsSpec", "counts_name", "parse_counts_name", "parse_weights_name"]

#: Prefix of weights computed during training from the augmented label.
ONLINE_PREFIX = "online:"
_MS_PREFIX = "ms_k"
_FORMS = (
    "expected k<K>_<transform> (k32_log10_L0.5, k32_ln_L0.5, k32_norm_L0.5, k32_log_a2_L0.5, "
    "k32_raw; one k per axis: k2x14x14_log10_L0.5), multi-scale ms_k<K1>-<K2>-..._<transform> "
    "(ms_k8-16-32_log10_L0.5), either "
    "after online: for weights computed during training (online:k32_log10_L0.5)"
)


@dataclass(frozen=True)
class WeightsSpec:
    """What a weights name asks for: search regions, one transformation, where computed.

    Build it with :meth:`parse`; :attr:`name` formats it back.

    Attributes
    ----------
    ks : tuple of int, or one region tuple
        One k (``k32_...``), or one or more in increasing order (``ms_k8-16-32_...``; a
        name lists two or more, ``ms_k3-3_...`` is the mean over k = 3 alone), each in
        ``[0, MAX_K]``. The online API (:func:`npa_train.online.npa_weights`,
        One search region with a k per spatial axis, ``((k_h, k_w),)`` or ``((k_d, k_h,
        k_w),)``, is a single-k spec too: :meth:`parse` reads ``k2x16x16_...`` (an
        isotropic ``k3x3x3_...`` as ``k3_...``), the name of a stored region's weights;
        the online API (:func:`npa_train.online.npa_weights`,
        :class:`~npa_train.loss.NPALoss`) takes it as well. Multi-scale names hold ints.
    transform : WeightTransform
    multiscale : bool
        True for ``ms_`` names (the mean over ``ks``).
    online : bool
        True for ``online:`` names (computed from the augmented label during training).

    Raises
    ------
    ValueError
        ``ks`` empty, unsorted, repeated or out of range, more than one k for a
        single-k name, or a region tuple that is not 2 or 3 ints of a single-k spec.

    Examples
    --------
    >>> spec = WeightsSpec.parse("online:k32_log10_L0.50")
    >>> spec.k, spec.transform.spec, spec.name, spec.array_name
    (32, 'log10:L=0.5', 'online:k32_log10_L0.5', 'k32_log10_L0.5')
    >>> WeightsSpec.parse("ms_k32-8-16_ln_L0.5").ks
    (8, 16, 32)
    >>> WeightsSpec.parse("k2x14x14_log10_L0.5").k
    (2, 14, 14)
    """

    ks: tuple[int | tuple[int, ...], ...]
    transform: WeightTransform
    multiscale: bool = False
    online: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.transform, WeightTransform):
            raise TypeError(f"`transform` must be a WeightTransform, got {self.transform!r}")
        if any(isinstance(k, (tuple, list)) for k in self.ks):
            object.__setattr__(self, "ks", (self._region(),))
            return
        ks = tuple(int(k) for k in self.ks)
        if any(not 0 <= k <= MAX_K for k in ks) or list(ks) != sorted(set(ks)):
            raise ValueError(f"`ks` must be increasing k in [0, {MAX_K}], got {self.ks}")
        if not ks or (len(ks) != 1 and not self.multiscale):
            raise ValueError(f"`ks` must hold one k (or more, multi-scale), got {ks}")
        object.__setattr__(self, "ks", ks)

    def _region(self) -> tuple[int, ...]:
        """The one region tuple of ``ks``, checked (one k per spatial axis, 2 or 3)."""
        if self.multiscale or len(self.ks) != 1 or len(self.ks[0]) not in (2, 3):
            raise ValueError(
                "`ks` may hold one region tuple of 2 or 3 ints (one k per spatial axis, "
                f"single-k only), got {self.ks}"
            )
        region = tuple(int(k) for k in self.ks[0])
        if any(not 0 <= k <= MAX_K for k in region):
            raise ValueError(f"`ks` must hold k in [0, {MAX_K}], got {self.ks}")
        return region

    @classmethod
    def parse(cls, name: str | WeightsSpec) -> WeightsSpec:
        """Parse a weights name (a leading ``weights/`` and spaces are ignored).

        Raises
        ------
        ParameterTypeError
            ``name`` is not a string (argument ``weights``).
        ParameterError
            Not a weights name (argument ``weights``; the message shows the forms).
        """
        if isinstance(name, WeightsSpec):
            return name
        if not isinstance(name, str):
            raise ParameterTypeError(
                "weights", f"must be a weights name (a string), got {type(name).__name__}"
            )
        text = name.strip().removeprefix("weights/")
        online = text.lower().startswith(ONLINE_PREFIX)
        if online:
            text = text[len(ONLINE_PREFIX) :]
        multiscale = text.startswith(_MS_PREFIX)
        head, _, slug = text[len("ms_") if multiscale else 0 :].partition("_")
        digits = head[1:].split("-")
        try:
            if head[:1] != "k" or not all(d.replace("x", "").isdigit() for d in digits):
                raise ValueError("no k")
            regions = [parse_region(d) for d in digits]
            if multiscale and any(isinstance(r, tuple) for r in regions):
                raise ValueError("multi-scale names take one k per region (k8-16-32), not "
                                 "one k per axis")  # fmt: skip
            if multiscale and len(digits) < 2:
                raise ValueError("a multi-scale name lists two or more k")
            if len(regions) > 1 or not isinstance(regions[0], tuple):
                regions = sorted(set(regions))
            return cls(tuple(regions), parse_slug(slug), multiscale=multiscale, online=online)
        except ValueError as exc:
            why = "" if str(exc) == "no k" else f" ({exc})"
            reason = f"{name!r} is not a weights name{why}: {_FORMS}"
            raise ParameterError("weights", reason, message=reason) from None

    @property
    def array_name(self) -> str:
        """The name without ``online:``: the store's array name, e.g. ``"k32_log10_L0.5"``."""
        if not self.multiscale:
            return weights_name(self.ks[0], self.transform)
        ks = self.ks if len(self.ks) > 1 else self.ks * 2  # ms_k3-3: two listed, one k
        return f"{_MS_PREFIX}{'-'.join(map(str, ks))}_{self.transform.slug}"

    @property
    def name(self) -> str:
        """Canonical name, e.g. ``"k32_log10_L0.5"``, ``"online:ms_k8-16-32_log10_L0.5"``."""
        return (ONLINE_PREFIX if self.online else "") + self.array_name

    def __str__(self) -> str:
        return self.name

    @property
    def k(self) -> int | tuple[int, ...] | None:
        """The k (or region tuple) of a single-k name, None for multi-scale names."""
        return None if self.multiscale else self.ks[0]

    @property
    def halo(self) -> int:
        """Pixels of label each weight depends on beyond its own, on each side: max k
        (over the axes, for a region tuple)."""
        last = self.ks[-1]
        return max(last) if isinstance(last, tuple) else last

    @property
    def family(self) -> str:
        """The name up to its k or transformation: ``""``, ``"online:"``,
        ``"ms_k8-16-32_"``, ``"online:ms_k8-16-32_"`` (names that differ only in the k of
        a single-k name, or only in the transformation, share it)."""
        head = ONLINE_PREFIX if self.online else ""
        if not self.multiscale:
            return head
        return head + self.array_name[: -len(self.transform.slug)]

    def stored(self) -> WeightsSpec:
        """The same weights as the store derives them (without ``online:``)."""
        return replace(self, online=False)

    def attrs(self) -> dict:
        """Attrs of a derived array, like a stored weights array's plus ``ks``, ``derived``."""
        return {
            "k": None if self.k is None else region_attr(self.k),
            "ks": [region_attr(k) for k in self.ks],
            "transform": self.transform.spec,
            "transform_params": self.transform.to_dict(),
            "derived": True,
        }


def parse_weights_name(name: str | WeightsSpec) -> WeightsSpec:
    """:meth:`WeightsSpec.parse` as a function."""
    return WeightsSpec.parse(name)


def counts_name(k: int | tuple[int, ...]) -> str:
    """Name of the counts array of search region ``k`` in a tile's ``affinity`` group:
    ``"k32"``, ``"k2x14x14"`` (one k per axis; an isotropic region is its int k)."""
    return f"k{format_region(compact_region(k))}"


def parse_counts_name(name: str) -> int | tuple[int, ...] | None:
    """The k of a counts array name (``"k32"`` -> 32, ``"affinity/k2x14x14"`` -> (2, 14,
    14)), None if ``name`` is not one (the inverse of :func:`counts_name`)."""
    text = name.strip().strip("/").removeprefix("affinity/")
    if text[:1] != "k":
        return None
    try:
        return parse_region(text[1:])
    except ValueError:
        return None
