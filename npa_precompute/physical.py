"""Search regions given in metres: the ground sampling distance of the label tiles.

``npa-precompute run --k-metres 2.88`` resolves each radius to the integer k of the
tiles' pixel size by :func:`npa_precompute.regions.k_from_physical` (round half up of
radius / pixel size, per axis): 2.88 m is k = 32 at 9 cm (Vaihingen), 58 at 5 cm
(Potsdam), 10 at 30 cm (LoveDA). The pixel size comes from ``gsd`` or, without it, from
each label's GeoTIFF georeferencing (the CRS's units, metres for a projected CRS; a
geographic CRS in degrees is refused).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

from npa_precompute.errors import ParameterError, ParameterTypeError
from npa_precompute.geo import georef_is_geographic, georef_pixel_size, read_georef
from npa_precompute.regions import compact_region, k_from_physical, parse_spacing, region_attr

__all__ = ["parse_radii", "resolve_k_metres", "resolve_k_mm"]

#: Relative difference of pixel sizes below which two tiles share one ground sampling
#: distance (float rounding of two writers).
_SAME_GSD = 1e-6


def parse_radii(radii, *, name: str = "k_metres") -> tuple[float, ...]:
    """Physical radii from a number, a sequence of numbers or ``"2.88,5.76"``; each >= 0."""
    if isinstance(radii, str):
        parts = [p.strip() for p in radii.split(",") if p.strip()]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ParameterError(name, f"must be comma-separated numbers, got {radii!r}") from None
    elif isinstance(radii, (int, float)) and not isinstance(radii, bool):
        values = [float(radii)]
    else:
        try:
            values = [float(v) for v in radii]
        except (TypeError, ValueError):
            raise ParameterTypeError(name, f"must be numbers, got {radii!r}") from None
    if not values:
        raise ParameterError(name, "must hold at least one radius")
    for v in values:
        if not (math.isfinite(v) and v >= 0):
            raise ParameterError(name, f"must be finite and >= 0, got {v!r}")
    return tuple(dict.fromkeys(values))


def _common_spacing(spacings, *, name: str, what: str, axes: str, override: str, items: str):
    """The one spacing of ``(path, spacing)`` pairs (equal within :data:`_SAME_GSD`), or a
    :class:`ParameterError` naming ``name`` (two differ) or ``override`` (no pairs)."""
    found = first = None
    for path, size in spacings:
        if found is None:
            found, first = size, path
        elif any(abs(a - b) > _SAME_GSD * max(a, b) for a, b in zip(size, found, strict=True)):
            raise ParameterError(
                name,
                f"needs one {what}, but {first} has {found} and {path} has {size} ({axes}); "
                f"precompute them into separate stores or give `{override}`",
            )
    if found is None:
        raise ParameterError(override, f"is needed: no label {items} to read it from")
    return found


def _georef_gsds(labels: Iterable[str | os.PathLike]):
    """``(path, (h, w))`` pixel sizes of the labels' GeoTIFF georeferencing, in metres."""
    for path in labels:
        georef = read_georef(path)
        if georef is None:
            raise ParameterError(
                "gsd",
                f"is needed: {path} has no GeoTIFF georeferencing to read the ground sampling "
                "distance from; give it in metres per pixel",
            )
        if georef_is_geographic(georef):
            raise ParameterError(
                "gsd",
                f"is needed: {path} is in a geographic CRS ({georef.get('crs') or 'degrees'}), "
                "whose pixel size is in degrees, not metres; give the ground sampling "
                "distance in metres per pixel",
            )
        yield path, georef_pixel_size(georef)


def _tiles_gsd(labels: Iterable[str | os.PathLike]) -> tuple[float, float]:
    """The one pixel size (H, W) of the labels' GeoTIFF georeferencing."""
    return _common_spacing(
        _georef_gsds(labels), name="k_metres", what="ground sampling distance",
        axes="m per pixel along H, W", override="gsd", items="tiles",
    )  # fmt: skip


def _header_spacings(labels: Iterable[str | os.PathLike]):
    """``(path, (d, h, w))`` voxel spacings in mm of the label volumes' files."""
    from npa_precompute.volumes import volume_spacing

    for path in labels:
        sp = volume_spacing(path)
        if sp is None:
            raise ParameterError(
                "spacing", f"is needed: {path} has no voxel spacing in its file (mm, D,H,W)"
            )
        yield path, sp


def resolve_k_metres(
    radii, gsd=None, labels: Sequence[str | os.PathLike] = ()
) -> tuple[tuple[int, ...], dict]:
    """Integer search regions of physical radii for 2-D label tiles.

    Parameters
    ----------
    radii : float, sequence of float or str
        Search radii in metres (``2.88`` or ``"2.88,5.76"``), >= 0.
    gsd : float or (float, float), optional
        Ground sampling distance in metres per pixel (one value, or along H and W).
        Default: read from every label's GeoTIFF georeferencing (they must agree).
    labels : label files, used when ``gsd`` is None

    Returns
    -------
    ks : tuple of int or (k_h, k_w)
        One k per radius (duplicates dropped): ``round_half_up(radius / gsd)``; a
        region ``(k_h, k_w)`` where non-square pixels round differently along H and W.
    record : dict
        ``{"unit": "m", "radii": [...], "spacing": [h, w], "spacing_source":
        "gsd" | "georef", "ks": [...], "rounding": "half up of radius / spacing"}``, what
        the store keeps (tile params ``k_physical``).

    Raises
    ------
    ParameterError
        Bad radii or ``gsd``; no ``gsd`` while a label has no georeferencing or a
        geographic CRS (degrees); labels with different pixel sizes; a radius that
        rounds to 0.
    """
    values = parse_radii(radii)
    if gsd is not None:
        spacing, source = parse_spacing(gsd, 2, name="gsd"), "gsd"
    else:
        spacing, source = _tiles_gsd(labels), "georef"
    return _resolve(values, spacing, source, "m", "k_metres")


def _resolve(values, spacing, source: str, unit: str, name: str):
    """The ks and the record of radii ``values`` at ``spacing``: one k per radius, the int
    k where every axis rounds alike, else the region tuple of one k per axis."""
    ks: list[int | tuple[int, ...]] = []
    used = []
    for r in values:
        k = compact_region(k_from_physical(r, spacing, ndim=len(spacing), name=name))
        used.append(region_attr(k))
        if k not in ks:
            ks.append(k)
    record = {
        "unit": unit,
        "radii": list(values),
        "spacing": list(spacing),
        "spacing_source": source,
        "ks": used,
        "rounding": "half up of radius / spacing",
    }
    return tuple(ks), record


def resolve_k_mm(
    radii, spacing=None, labels: Sequence[str | os.PathLike] = ()
) -> tuple[tuple[int, ...], dict]:
    """Integer search regions of physical radii in mm for label volumes.

    Parameters
    ----------
    radii : float, sequence of float or str
        Search radii in mm (``5`` or ``"2.5,5"``), >= 0.
    spacing : float or (float, float, float), optional
        Voxel spacing in mm (one value, or along D, H, W). Default: read from every
        label's NIfTI header (:func:`npa_precompute.volumes.volume_spacing`; they must
        agree).
    labels : label volumes, used when ``spacing`` is None

    Returns
    -------
    ks : tuple of int or (k_d, k_h, k_w)
        One k per radius (duplicates dropped): ``round_half_up(radius / spacing)``
        (:func:`npa_precompute.regions.k_from_physical`, the rule of ``k_metres``); the
        int k where every axis rounds alike, else the region of one k per axis (10 mm
        at 5 x 0.7 x 0.7 mm: ``(2, 14, 14)``, stored as ``affinity/k2x14x14``).
    record : dict
        As :func:`resolve_k_metres`, ``"unit": "mm"``, ``"spacing_source": "spacing" |
        "header"``: the tiles' params ``k_physical``.

    Raises
    ------
    ParameterError
        Bad radii or ``spacing`` (argument ``k_mm`` or ``spacing``); no ``spacing`` while a
        label has none in its file (a TIFF stack); volumes with different spacings; a
        radius that rounds to 0 along every axis.
    InputError
        A NIfTI header whose spacing is not positive and finite (naming the file).
    """
    values = parse_radii(radii, name="k_mm")
    if spacing is not None:
        found, source = parse_spacing(spacing, 3, name="spacing"), "spacing"
    else:
        found = _common_spacing(
            _header_spacings(labels), name="k_mm", what="voxel spacing",
            axes="mm along D, H, W", override="spacing", items="volumes",
        )  # fmt: skip
        source = "header"
    return _resolve(values, found, source, "mm", "k_mm")
