"""GeoTIFF georeferencing: read it from inputs, keep it in the store, write it to outputs.

Done with tifffile alone (no GDAL). The georeferencing of a GeoTIFF is kept as a small
JSON-serialisable dict (the ``georef`` tile attr of the store)::

    {
        "crs": "EPSG:32632",                 # or None (no EPSG code in the keys)
        "transform": [a, b, c, d, e, f],     # pixel corner (col, row) -> map (x, y)
        "raster_type": "area",               # or "point" (GTRasterTypeGeoKey)
        "geokeys": {                         # the GeoKey tags, verbatim, or None
            "directory": [1, 1, 0, 7, 1024, 0, 1, 1, ...],   # GeoKeyDirectoryTag
            "double_params": [298.257223563, ...] or None,   # GeoDoubleParamsTag
            "ascii_params": "WGS 84 / UTM zone 32N|..." or None,  # GeoAsciiParamsTag
        },
    }

``transform`` has the order of rasterio's ``Affine`` (and GDAL's geotransform
``(c, a, b, f, d, e)``): ``x = a * col + b * row + c``, ``y = d * col + e * row + f``,
where ``(col, row) = (0, 0)`` is the top-left *corner* of the top-left pixel whatever
the raster type (a PixelIsPoint file's tie point is moved by half a pixel, as GDAL and
rasterio do). It comes from ModelTiepointTag + ModelPixelScaleTag (first tie point,
preferred as in GDAL) or from the 4x4 ModelTransformationTag (rotated or sheared
grids). The CRS is the EPSG code of ProjectedCSTypeGeoKey (3072) or
GeographicTypeGeoKey (2048); the keys themselves are written back unchanged, so a
CRS without an EPSG code (user-defined) survives too, only ``crs`` is None.

Not kept: ground control points without an affine transform (a warning says so),
vertical (z) scale and offset. Nothing is ever reprojected or resampled.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np
import tifffile

__all__ = [
    "GEOTIFF_TAGS",
    "georef_is_geographic",
    "georef_pixel_size",
    "geotiff_extratags",
    "read_georef",
    "same_georef",
    "shift_georef",
    "tile_georef",
    "write_geotiff",
]

PIXEL_SCALE = 33550  # ModelPixelScaleTag, DOUBLE (ScaleX, ScaleY, ScaleZ)
TIEPOINT = 33922  # ModelTiepointTag, DOUBLE (I, J, K, X, Y, Z) * n
TRANSFORMATION = 34264  # ModelTransformationTag, DOUBLE[16], row-major 4x4
GEOKEY_DIRECTORY = 34735  # GeoKeyDirectoryTag, SHORT[4 + 4 * n]
GEO_DOUBLE_PARAMS = 34736  # GeoDoubleParamsTag, DOUBLE[]
GEO_ASCII_PARAMS = 34737  # GeoAsciiParamsTag, ASCII
#: The TIFF tag codes of GeoTIFF.
GEOTIFF_TAGS = (
    PIXEL_SCALE,
    TIEPOINT,
    TRANSFORMATION,
    GEOKEY_DIRECTORY,
    GEO_DOUBLE_PARAMS,
    GEO_ASCII_PARAMS,
)

_MODEL_TYPE = 1024  # GTModelTypeGeoKey: 1 projected, 2 geographic, 3 geocentric
_RASTER_TYPE = 1025  # GTRasterTypeGeoKey: 1 PixelIsArea, 2 PixelIsPoint
_GEOGRAPHIC_TYPE = 2048  # GeographicTypeGeoKey (EPSG code)
_PROJECTED_TYPE = 3072  # ProjectedCSTypeGeoKey (EPSG code)
_USER_DEFINED = 32767


def _numbers(value: Any, *, tag: str, path: str) -> list[float]:
    """A tag value (a scalar for count 1, else a tuple) as a list of finite floats."""
    try:
        arr = np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"{path}: malformed GeoTIFF {tag}: {value!r} is not numeric") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{path}: malformed GeoTIFF {tag}: non-finite values {arr.tolist()}")
    return [float(v) for v in arr]


def _parse_directory(directory: list[int], path: str) -> dict[int, tuple[int, int, int, int]]:
    """GeoKeyDirectory -> {key_id: (key_id, location, count, value_or_offset)}."""
    if len(directory) < 4:
        raise ValueError(
            f"{path}: malformed GeoKeyDirectoryTag: {len(directory)} values, need at least 4"
        )
    n = directory[3]
    if len(directory) < 4 + 4 * n:
        raise ValueError(
            f"{path}: malformed GeoKeyDirectoryTag: header announces {n} keys "
            f"({4 + 4 * n} values) but the tag holds {len(directory)} values"
        )
    entries = {}
    for i in range(n):
        key, loc, count, value = directory[4 + 4 * i : 8 + 4 * i]
        entries[key] = (key, loc, count, value)
    return entries


def _key_value(
    entry: tuple[int, int, int, int],
    doubles: list[float] | None,
    ascii_params: str | None,
    path: str,
) -> int | float | str | list | None:
    key, loc, count, value = entry
    if loc == 0:
        return value
    if loc == GEO_DOUBLE_PARAMS:
        if doubles is None or value + count > len(doubles):
            raise ValueError(
                f"{path}: malformed GeoTIFF keys: key {key} points at GeoDoubleParamsTag "
                f"[{value}:{value + count}] but that tag holds "
                f"{0 if doubles is None else len(doubles)} values"
            )
        vals = doubles[value : value + count]
        return vals[0] if count == 1 else vals
    if loc == GEO_ASCII_PARAMS:
        if ascii_params is None or value + count > len(ascii_params) + 1:
            raise ValueError(
                f"{path}: malformed GeoTIFF keys: key {key} points at GeoAsciiParamsTag "
                f"[{value}:{value + count}] but that tag holds "
                f"{0 if ascii_params is None else len(ascii_params)} characters"
            )
        return ascii_params[value : value + count].rstrip("|\x00")
    return None  # values stored in another tag (rare): kept verbatim, not interpreted


def _epsg(code: Any) -> str | None:
    if isinstance(code, int) and 0 < code < _USER_DEFINED:
        return f"EPSG:{code}"
    return None


def _crs_from_keys(keys: dict[int, Any]) -> str | None:
    model = keys.get(_MODEL_TYPE)
    if model == 1:
        return _epsg(keys.get(_PROJECTED_TYPE))
    if model == 2:
        return _epsg(keys.get(_GEOGRAPHIC_TYPE))
    if model is None:
        return _epsg(keys.get(_PROJECTED_TYPE)) or _epsg(keys.get(_GEOGRAPHIC_TYPE))
    return None  # geocentric or unknown model type


def read_georef(path: str | os.PathLike) -> dict | None:
    """The georeferencing of a GeoTIFF's first page, or None for a file without it.

    Parameters
    ----------
    path : str or PathLike
        Any image file; PNG, JPEG and TIFFs without GeoTIFF tags give None.

    Returns
    -------
    dict or None
        ``{"crs", "transform", "raster_type", "geokeys"}`` as described in the module
        docstring (JSON-serialisable: str, list of float, list of int). None when the
        file is not a TIFF or has no ModelTiepointTag/ModelTransformationTag; also None,
        with a warning, when it is georeferenced only by ground control points (several
        tie points without a pixel scale), which no affine transform describes.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Malformed GeoTIFF tags (wrong value counts, offsets outside the parameter tags,
        non-finite or zero scales, a singular transformation); the message names the file.
    """
    path_s = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path_s}")
    try:
        tif = tifffile.TiffFile(path)
    except tifffile.TiffFileError:
        return None  # not a TIFF (PNG, JPEG, ...)
    with tif:
        if not tif.pages:
            return None
        tags = tif.pages[0].tags
        raw = {code: tags[code].value for code in GEOTIFF_TAGS if code in tags}
    if not raw:
        return None

    geokeys = None
    keys: dict[int, Any] = {}
    if GEOKEY_DIRECTORY in raw:
        values = _numbers(raw[GEOKEY_DIRECTORY], tag="GeoKeyDirectoryTag", path=path_s)
        directory = [int(v) for v in values]
        doubles = None
        if GEO_DOUBLE_PARAMS in raw:
            doubles = _numbers(raw[GEO_DOUBLE_PARAMS], tag="GeoDoubleParamsTag", path=path_s)
        ascii_params = raw.get(GEO_ASCII_PARAMS)
        if isinstance(ascii_params, bytes):
            ascii_params = ascii_params.decode("latin-1")
        if ascii_params is not None and not isinstance(ascii_params, str):
            raise ValueError(f"{path_s}: malformed GeoAsciiParamsTag: {ascii_params!r}")
        entries = _parse_directory(directory, path_s)
        keys = {k: _key_value(e, doubles, ascii_params, path_s) for k, e in entries.items()}
        geokeys = {"directory": directory, "double_params": doubles, "ascii_params": ascii_params}
    raster_type = "point" if keys.get(_RASTER_TYPE) == 2 else "area"

    transform = None
    if PIXEL_SCALE in raw and TIEPOINT in raw:
        scale = _numbers(raw[PIXEL_SCALE], tag="ModelPixelScaleTag", path=path_s)
        ties = _numbers(raw[TIEPOINT], tag="ModelTiepointTag", path=path_s)
        if len(scale) < 2 or len(ties) < 6 or len(ties) % 6:
            raise ValueError(
                f"{path_s}: malformed GeoTIFF tags: ModelPixelScaleTag needs 3 values and "
                f"ModelTiepointTag 6 per tie point, got {len(scale)} and {len(ties)}"
            )
        if scale[0] == 0 or scale[1] == 0:
            raise ValueError(f"{path_s}: malformed ModelPixelScaleTag: zero scale {scale}")
        i, j, _, x, y, _ = ties[:6]
        a, e = scale[0], -scale[1]
        transform = [a, 0.0, x - i * a, 0.0, e, y - j * e]
    elif TRANSFORMATION in raw:
        m = _numbers(raw[TRANSFORMATION], tag="ModelTransformationTag", path=path_s)
        if len(m) != 16:
            raise ValueError(
                f"{path_s}: malformed ModelTransformationTag: {len(m)} values, need 16 (4x4)"
            )
        transform = [m[0], m[1], m[3], m[4], m[5], m[7]]
    elif PIXEL_SCALE in raw:
        raise ValueError(
            f"{path_s}: malformed GeoTIFF tags: ModelPixelScaleTag without a tie point"
        )
    elif TIEPOINT in raw:
        n = len(_numbers(raw[TIEPOINT], tag="ModelTiepointTag", path=path_s)) // 6
        warnings.warn(
            f"{path_s} is georeferenced by {n} ground control point(s) without a pixel scale "
            "or transformation; no affine transform describes it and its georeferencing is "
            "not kept",
            stacklevel=2,
        )
        return None
    else:
        return None  # GeoKeys without a position on the map: nothing to keep
    a, b, c, d, e, f = transform
    if a * e - b * d == 0:
        raise ValueError(f"{path_s}: malformed GeoTIFF tags: singular transform {transform}")
    if raster_type == "point":  # tie point at the pixel centre -> corner (GDAL, rasterio)
        c -= a * 0.5 + b * 0.5
        f -= d * 0.5 + e * 0.5
    return {
        "crs": _crs_from_keys(keys),
        "transform": [a, b, c, d, e, f],
        "raster_type": raster_type,
        "geokeys": geokeys,
    }


def _check(georef: Any) -> list[float]:
    if not isinstance(georef, dict) or "transform" not in georef:
        raise ValueError(
            f"`georef` must be a dict from read_georef with a 'transform', got {georef!r}"
        )
    t = georef["transform"]
    if (
        not isinstance(t, (list, tuple))
        or len(t) != 6
        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in t)
    ):
        raise ValueError(f"`georef['transform']` must be 6 finite numbers a..f, got {t!r}")
    if georef.get("raster_type", "area") not in ("area", "point"):
        raise ValueError(
            f"`georef['raster_type']` must be 'area' or 'point', got {georef['raster_type']!r}"
        )
    return [float(v) for v in t]


def shift_georef(georef: dict | None, row_off: int, col_off: int) -> dict | None:
    """The georeferencing of a window whose top-left pixel is ``(row_off, col_off)``.

    The new origin is the map position of that pixel's corner, computed as rasterio's
    ``transform * (col_off, row_off)``: ``c' = col_off * a + row_off * b + c``,
    ``f' = col_off * d + row_off * e + f``; everything else is unchanged.

    Parameters
    ----------
    georef : dict from :func:`read_georef`, or None
    row_off, col_off : int, the window's first row and column in the tile

    Returns
    -------
    dict or None
        A new dict (``georef`` is not modified); None for ``georef=None``.

    Raises
    ------
    ValueError
        ``georef`` is not a georeferencing dict.
    """
    if georef is None:
        return None
    a, b, c, d, e, f = _check(georef)
    col, row = float(col_off), float(row_off)
    return {
        **georef,
        "transform": [a, b, col * a + row * b + c, d, e, col * d + row * e + f],
    }


def same_georef(first: dict | None, second: dict | None, *, tol: float = 1e-6) -> bool:
    """Whether two georeferencings put the same pixels at the same map positions.

    The transforms may differ by ``tol`` of a pixel (float rounding of two writers);
    the CRS must be equal where both are known. None matches only None.

    Raises
    ------
    ValueError
        Either is not a georeferencing dict (or None).
    """
    if first is None or second is None:
        return first is None and second is None
    t1, t2 = _check(first), _check(second)
    crs1, crs2 = first.get("crs"), second.get("crs")
    if crs1 is not None and crs2 is not None and crs1 != crs2:
        return False
    pixel = max(abs(v) for v in (t1[0], t1[1], t1[3], t1[4]))
    return all(abs(u - v) <= tol * pixel for u, v in zip(t1, t2, strict=True))


def tile_georef(
    label: str | os.PathLike,
    image: str | os.PathLike | None = None,
    *,
    tile_id: str | None = None,
) -> dict | None:
    """The georeferencing of a tile: its label's, else its image's (None without either).

    Parameters
    ----------
    label : label file
    image : image file or None
    tile_id : str, optional, named in the error message

    Returns
    -------
    dict or None, see :func:`read_georef`

    Raises
    ------
    npa_precompute.readers.InputError
        Malformed GeoTIFF tags (the file named), or label and image both georeferenced
        but differently (:func:`same_georef`; both files named).
    """
    from npa_precompute.readers import InputError

    try:
        label_geo = read_georef(label)
        image_geo = read_georef(image) if image is not None else None
    except (OSError, ValueError) as exc:
        raise InputError(str(exc)) from None
    if label_geo is not None and image_geo is not None and not same_georef(label_geo, image_geo):
        where = f"tile {tile_id!r}: " if tile_id is not None else ""
        raise InputError(
            f"{where}label {label} and image {image} are georeferenced differently (label: "
            f"{label_geo['crs']}, transform {label_geo['transform']}; image: "
            f"{image_geo['crs']}, transform {image_geo['transform']})"
        )
    return label_geo if label_geo is not None else image_geo


def geotiff_extratags(georef: dict | None) -> list[tuple]:
    """tifffile ``extratags`` that write ``georef`` into a TIFF.

    A transform without rotation (``b == d == 0``) is written as ModelTiepointTag +
    ModelPixelScaleTag (what GDAL writes; readers that ignore the 4x4 matrix still
    understand it), any other as ModelTransformationTag. The GeoKey tags are written
    verbatim from ``georef["geokeys"]`` (raster type included: a PixelIsPoint tie
    point is moved back by half a pixel). Without ``geokeys`` only the transform is
    written (no CRS).

    Parameters
    ----------
    georef : dict from :func:`read_georef` / :func:`shift_georef`, or None

    Returns
    -------
    list of (code, dtype, count, value, writeonce) tuples; empty for None.

    Raises
    ------
    ValueError
        ``georef`` is not a georeferencing dict, or its ``geokeys`` are malformed.
    """
    if georef is None:
        return []
    a, b, c, d, e, f = _check(georef)
    if georef.get("raster_type", "area") == "point":
        c += a * 0.5 + b * 0.5
        f += d * 0.5 + e * 0.5
    if b == 0 and d == 0:
        tags = [
            (PIXEL_SCALE, "d", 3, (a, -e, 0.0), True),
            (TIEPOINT, "d", 6, (0.0, 0.0, 0.0, c, f, 0.0), True),
        ]
    else:
        matrix = (a, b, 0.0, c, d, e, 0.0, f, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
        tags = [(TRANSFORMATION, "d", 16, matrix, True)]
    geokeys = georef.get("geokeys")
    if geokeys is not None:
        if not isinstance(geokeys, dict) or not isinstance(geokeys.get("directory"), list):
            raise ValueError(
                f"`georef['geokeys']` must be a dict with a 'directory' list, got {geokeys!r}"
            )
        directory = geokeys["directory"]
        _parse_directory(directory, "`georef['geokeys']`")
        if not all(isinstance(v, int) and 0 <= v <= 65535 for v in directory):
            raise ValueError(
                f"`georef['geokeys']['directory']` must hold integers 0..65535, got {directory}"
            )
        tags.append((GEOKEY_DIRECTORY, "H", len(directory), tuple(directory), True))
        doubles = geokeys.get("double_params")
        if doubles:
            tags.append((GEO_DOUBLE_PARAMS, "d", len(doubles), tuple(doubles), True))
        text = geokeys.get("ascii_params")
        if text:
            tags.append((GEO_ASCII_PARAMS, "s", 0, text, True))
    return tags


def write_geotiff(
    path: str | os.PathLike, array: np.ndarray, georef: dict | None, **kwargs: Any
) -> None:
    """``tifffile.imwrite(path, array, **kwargs)`` with ``georef``'s GeoTIFF tags added.

    Parameters
    ----------
    path : output file
    array : (H, W) or (H, W, C) array (any dtype tifffile writes); its pixel ``(0, 0)``
        is the one ``georef["transform"]`` places at ``(c, f)``
    georef : dict from :func:`read_georef` / :func:`shift_georef`, or None (plain TIFF)
    **kwargs : passed to ``tifffile.imwrite`` (``compression``, ``photometric``,
        ``extratags``, ...)

    Raises
    ------
    ValueError
        ``georef`` is not a georeferencing dict.
    """
    extratags = [*kwargs.pop("extratags", ()), *geotiff_extratags(georef)]
    tifffile.imwrite(path, array, extratags=extratags, **kwargs)


def georef_pixel_size(georef: dict) -> tuple[float, float]:
    """Pixel size ``(along rows H, along columns W)`` in the CRS's units of a georef dict.

    The lengths of the transform's row step ``(b, e)`` and column step ``(a, d)``
    (rotated grids included).

    Raises
    ------
    ValueError
        ``georef`` is not a georeferencing dict of :func:`read_georef`.
    """
    a, b, _, d, e, _ = _check(georef)
    return math.hypot(b, e), math.hypot(a, d)


def georef_is_geographic(georef: dict) -> bool:
    """True when the georeferencing's model type is geographic (coordinates in degrees):
    GTModelTypeGeoKey = 2, or, without that key, a GeographicTypeGeoKey alone."""
    directory = ((georef or {}).get("geokeys") or {}).get("directory") or []
    keys = {
        directory[i]: directory[i + 3]
        for i in range(4, len(directory) - 3, 4)
        if directory[i + 1] == 0  # the value is in the directory itself
    }
    model = keys.get(_MODEL_TYPE)
    if model is not None:
        return model == 2
    return _GEOGRAPHIC_TYPE in keys and _PROJECTED_TYPE not in keys
