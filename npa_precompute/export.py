"""Exporting one array of a tile (or a window of it) to .npy, .png or .tif.

:func:`export_array` is what ``npa-precompute export`` calls. Formats, chosen by the
output file's suffix:

=========  =============================================================================
suffix     what is written
=========  =============================================================================
``.npy``   the stored values and dtype, exactly
``.tif``   the stored values via tifffile (weights as float32, labels as their
           indices, raw counts as uint16/uint32, images as (H, W, C)), readable by
           QGIS, napari, GDAL; a JSON description names the store, tile, array, window;
           a tile made from GeoTIFFs (``georef`` tile attr) gets its CRS and transform
           back, shifted to the window (:mod:`npa_precompute.geo`)
``.png``   labels: a palette PNG holding the class indices with the class colours
           (ignore black), so it reads back as indices; raw counts: 16-bit greyscale;
           weights: a viridis heat map (ignore black) with its value range in the PNG
           text chunks ``vmin`` / ``vmax``; images: 8-bit RGB (first three bands);
           never georeferenced (as ``.npy``)
=========  =============================================================================
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from npa_precompute.colors import IGNORE_COLOR, class_palette, heatmap_rgb
from npa_precompute.errors import ParameterError
from npa_precompute.geo import geotiff_extratags, shift_georef
from npa_precompute.store import StoreInfo, open_store, open_tile, store_info
from npa_precompute.summary import check_window, parse_window

__all__ = ["FORMATS", "export_array"]

#: Output suffixes :func:`export_array` writes.
FORMATS = (".npy", ".png", ".tif", ".tiff")


def _write_png(
    out: Path, kind: str, values: np.ndarray, info: StoreInfo, ignore: int, label
) -> None:
    from PIL import Image, PngImagePlugin

    if kind == "label":
        if values.dtype.itemsize > 1 or int(values.max(initial=0)) > 255:
            raise ValueError(
                f"labels of dtype {values.dtype} do not fit a palette PNG; export to .tif or .npy"
            )
        palette = np.zeros((256, 3), dtype=np.uint8)
        palette[:] = IGNORE_COLOR
        colors = class_palette(info)
        palette[: len(colors)] = colors
        if ignore < 256:
            palette[ignore] = IGNORE_COLOR
        idx = np.ascontiguousarray(values, dtype=np.uint8)
        im = Image.frombytes("P", (idx.shape[1], idx.shape[0]), idx.tobytes())
        im.putpalette(palette.ravel().tolist())
        im.save(out)
    elif kind == "affinity":
        if values.dtype != np.uint16 and int(values.max(initial=0)) > 65535:
            raise ValueError(
                f"raw counts up to {int(values.max())} do not fit a 16-bit PNG; export to .tif "
                "or .npy"
            )
        Image.fromarray(np.ascontiguousarray(values, dtype=np.uint16)).save(out)
    elif kind == "weights":
        rgb, lo, hi = heatmap_rgb(values, mask=label == ignore)
        meta = PngImagePlugin.PngInfo()
        meta.add_text("vmin", repr(lo))
        meta.add_text("vmax", repr(hi))
        meta.add_text("colormap", "viridis; ignore pixels black")
        Image.fromarray(rgb).save(out, pnginfo=meta)
    else:  # image
        if values.dtype != np.uint8:
            raise ValueError(f"images of dtype {values.dtype} export to .tif or .npy, not .png")
        bands = values[..., :3] if values.shape[2] >= 3 else values[..., 0]
        Image.fromarray(np.ascontiguousarray(bands)).save(out)


def _write_tif(
    out: Path,
    kind: str,
    values: np.ndarray,
    description: dict,
    georef: dict | None = None,
    volume: bool = False,
) -> None:
    import tifffile

    if kind == "weights":
        values = values.astype(np.float32, copy=False)
    bands = values.ndim == 3 and not volume  # (H, W, C); a volume is D pages of (H, W)
    photometric = "rgb" if bands and values.shape[2] == 3 else "minisblack"
    extra = {"planarconfig": "contig"} if bands else {}
    tifffile.imwrite(
        out,
        np.ascontiguousarray(values),
        photometric=photometric,
        compression="zlib",
        description=json.dumps(description),
        metadata=None,
        extratags=geotiff_extratags(georef),
        **extra,
    )


def export_array(
    path: str | os.PathLike,
    tile: str,
    array: str,
    out: str | os.PathLike,
    *,
    window: str | tuple[int, int, int, int] | None = None,
    depth: int | None = None,
) -> Path:
    """Write one array of a tile, or a window of it, to ``.npy``, ``.png`` or ``.tif``.

    Parameters
    ----------
    path : store folder
    tile : tile id
    array : ``"label"``, ``"image"``, ``"affinity/k32"`` (or ``"k32"``), or a weights
        name such as ``"k32_log10_L0.5"`` (see :func:`~npa_precompute.summary.resolve_array`)
    out : output file; its suffix picks the format (module docstring)
    window : ``"x0,y0,w,h"`` or a tuple, keyword-only; default the whole tile
    depth : int, keyword-only
        Of a volume: the one slice (index along D) to write; default every slice
        (``.npy`` and ``.tif`` only: a (D, h, w) array, a TIFF of D pages)

    Returns
    -------
    pathlib.Path
        The file written (its folder is created when missing). A ``.tif`` of a tile
        with a ``georef`` attr carries its GeoTIFF tags, its origin moved to the window.

    Raises
    ------
    StoreError
        Unknown tile or array (the message lists what exists).
    IncompleteTileError
        The tile's writing did not finish.
    ValueError
        An unsupported suffix, a malformed window or one reaching outside the tile
        (the message gives the tile's shape), or values a PNG cannot hold
        (labels > 255, counts > 65535, non-uint8 images).
    ParameterError
        ``depth`` outside the volume, given for a 2-D tile, or missing for a volume
        written to ``.png``.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise ParameterError("out", f"must end in one of {', '.join(FORMATS)}, got {out.name!r}")
    win = parse_window(window)
    root = open_store(path)
    info = store_info(root)
    t = open_tile(root, tile)
    ref = t.ref(array)
    plane = t.shape[-2:] if t.is_volume else t.shape
    rows, cols = check_window(win, plane, tile_id=tile)
    box = (rows.start, rows.stop, cols.start, cols.stop)
    values = t.read_window(ref.path, *box, depth=depth)
    stack = t.is_volume and depth is None
    if stack and suffix == ".png":
        raise ParameterError(
            "depth",
            f"is needed to write tile {tile!r}, a volume of shape {t.shape}, to .png (one "
            "slice); the whole volume goes to .npy or .tif (a stack of D pages)",
        )
    ignore = info.ignore_index
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(out, values)
    elif suffix == ".png":
        label = None
        if ref.kind == "weights":
            label = t.read_window("label", *box, depth=depth)
        _write_png(out, ref.kind, values, info, ignore, label)
    else:
        description = {
            "npaloss": {
                "store": str(path),
                "tile": tile,
                "array": ref.path,
                "window_x0_y0_w_h": [cols.start, rows.start, cols.stop - cols.start,
                                     rows.stop - rows.start],
                "k": ref.k,
                "transform": ref.transform,
                "derived": ref.derived,
                "classes": list(info.classes) if ref.kind == "label" else None,
                "ignore_index": ignore,
            }
        }  # fmt: skip
        if t.is_volume:
            description["npaloss"] |= {"depth": depth, "spacing": t.meta.spacing}
        georef = shift_georef(t.meta.georef, rows.start, cols.start)
        _write_tif(out, ref.kind, values, description, georef, volume=stack)
    return out
