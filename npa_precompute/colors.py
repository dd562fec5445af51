"""Colours: class palettes, the viridis heat map and image stretching, in numpy.

One place for the colours of every picture the project draws: ``npa-precompute show``
(:mod:`npa_precompute.viz`) and ``export``, ``npa-train preview`` and the label maps
of ``npa-train predict`` / ``evaluate``. Needs neither matplotlib nor Pillow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from npa_precompute.store import StoreInfo

__all__ = [
    "IGNORE_COLOR",
    "class_palette",
    "colormap_lut",
    "heatmap_rgb",
    "label_rgb",
    "legend_image",
    "preset_palette",
    "stretch_image",
]

#: Colour of ignored pixels in label figures and heat maps.
IGNORE_COLOR = (0, 0, 0)

# matplotlib's viridis sampled at 17 evenly spaced points; interpolated to a 256 LUT.
_VIRIDIS_ANCHORS = (
    (68, 1, 84), (72, 24, 106), (71, 45, 123), (66, 64, 134), (59, 82, 139), (51, 99, 141),
    (44, 114, 142), (38, 130, 142), (33, 145, 140), (31, 160, 136), (40, 174, 128),
    (63, 188, 115), (94, 201, 98), (132, 212, 75), (173, 220, 48), (216, 226, 25),
    (253, 231, 37),
)  # fmt: skip

# Qualitative colours for stores without a palette (matplotlib's tab10).
_TAB10 = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


def colormap_lut(n: int = 256) -> np.ndarray:
    """A viridis colour map as an ``(n, 3)`` uint8 lookup table (no matplotlib needed).

    Raises
    ------
    ValueError
        If ``n < 2``.
    """
    if n < 2:
        raise ValueError(f"`n` must be >= 2, got {n}")
    anchors = np.asarray(_VIRIDIS_ANCHORS, dtype=np.float64)
    x = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, n)
    lut = np.stack([np.interp(t, x, anchors[:, c]) for c in range(3)], axis=1)
    return np.round(lut).astype(np.uint8)


def heatmap_rgb(
    values: np.ndarray,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    mask: np.ndarray | None = None,
    bad_color: tuple[int, int, int] = IGNORE_COLOR,
) -> tuple[np.ndarray, float, float]:
    """Colour a 2-D array with :func:`colormap_lut`.

    Parameters
    ----------
    values : (H, W) numeric array
    vmin, vmax : float, optional
        Colour range; default the min / max of the unmasked finite values.
    mask : (H, W) bool, optional
        True where a pixel is drawn in ``bad_color`` (ignore pixels).
    bad_color : (r, g, b), default black

    Returns
    -------
    rgb : (H, W, 3) uint8
    vmin, vmax : float, the range used
    """
    v = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(v)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool)
    good = v[~bad]
    if vmin is not None:
        lo = float(vmin)
    else:
        lo = float(good.min()) if good.size else 0.0
    if vmax is not None:
        hi = float(vmax)
    else:
        hi = float(good.max()) if good.size else 1.0
    span = hi - lo if hi > lo else 1.0
    lut = colormap_lut(256)
    idx = np.clip(np.nan_to_num((v - lo) / span * 255.0), 0, 255).astype(np.uint8)
    rgb = lut[idx]
    rgb[bad] = bad_color
    return rgb, lo, hi


def class_palette(info: StoreInfo) -> np.ndarray:
    """Class colours of a store as an ``(num_classes, 3)`` uint8 array.

    The store's palette (``isprs``), LoveDA's colour map for ``loveda``, else
    matplotlib's tab10 colours, repeated as needed.

    Parameters
    ----------
    info : StoreInfo
        The store's root metadata (:func:`npa_precompute.store.store_info`).
    """
    return _palette(info.preset, info.num_classes, info.palette)


def preset_palette(preset: str | None, num_classes: int) -> np.ndarray:
    """Class colours ``(num_classes, 3)`` uint8 of a preset (e.g. a checkpoint's).

    The preset's own palette when it has one for exactly ``num_classes`` classes
    (``isprs``), LoveDA's colour map for ``loveda``, else matplotlib's tab10 colours.
    """
    palette = None
    if preset in ("isprs", "loveda"):
        from npa_precompute.presets import get_preset

        p = get_preset(preset)
        if p.num_classes == num_classes and p.palette:
            palette = [list(c) for c in p.palette]
    return _palette(preset, num_classes, palette)


def _palette(preset: str | None, n: int, palette) -> np.ndarray:
    if palette:
        colors = palette
    elif preset == "loveda":
        from npa_precompute.presets import LOVEDA_COLORS

        colors = LOVEDA_COLORS
    else:
        colors = [_TAB10[i % len(_TAB10)] for i in range(n)]
    return np.asarray(colors[:n], dtype=np.uint8).reshape(-1, 3)


def label_rgb(label: np.ndarray, palette: np.ndarray, ignore_index: int) -> np.ndarray:
    """Colour-code decoded labels: ``palette[c]`` per class, :data:`IGNORE_COLOR` elsewhere.

    Parameters
    ----------
    label : (H, W) integer array
    palette : (num_classes, 3) uint8 array
    ignore_index : int, label value of ignored pixels (values outside the classes are
        drawn like ignore)

    Returns
    -------
    (H, W, 3) uint8
    """
    label = np.asarray(label)
    lut = np.zeros((max(int(label.max(initial=0)), len(palette) - 1, ignore_index) + 1, 3))
    lut[:] = IGNORE_COLOR
    lut[: len(palette)] = palette
    lut[ignore_index] = IGNORE_COLOR
    return lut.astype(np.uint8)[label]


def stretch_image(image: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """First three bands, each stretched linearly from its ``low`` to ``high`` percentile.

    Parameters
    ----------
    image : (H, W, C) array; C < 3 gives a grey image of band 0
    low, high : percentiles, default 2 and 98

    Returns
    -------
    (H, W, 3) float32 in [0, 1]
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    bands = img[..., :3] if img.shape[2] >= 3 else np.repeat(img[..., :1], 3, axis=2)
    out = np.empty(bands.shape, dtype=np.float32)
    for c in range(3):
        b = bands[..., c].astype(np.float32)
        lo, hi = np.percentile(b, [low, high]) if b.size else (0.0, 1.0)
        out[..., c] = (b - lo) / (hi - lo) if hi > lo else 0.0
    return np.clip(out, 0.0, 1.0)


#: Error-map colours of :func:`npa_train.predict.write_label_maps`, and their meaning.
ERROR_KEY = (
    ((255, 255, 255), "right (prediction = ground truth)"),
    ((255, 0, 0), "wrong"),
    (IGNORE_COLOR, "ignored (no ground truth)"),
)


def legend_image(
    classes,
    palette: np.ndarray,
    *,
    errors: bool = False,
    indices: bool = False,
    font_size: int = 16,
):
    """A key to the colour-coded label PNGs (``*_color.png``) and error maps (``*_error.png``).

    Parameters
    ----------
    classes : sequence of str, the class names, in class-index order
    palette : (num_classes, 3) uint8 class colours
    errors : bool
        Also explain the error map's colours (:data:`ERROR_KEY`).
    indices : bool
        Also say that ``*_label.png`` holds the class indices as grey values (near black in
        an image viewer), the numbers of the class lines.
    font_size : int, pixels

    Returns
    -------
    PIL.Image.Image
        RGB, white background: one swatch and name per line under a heading.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=font_size)
    bold = ImageFont.load_default(size=font_size + 2)
    rows: list[tuple[tuple | None, str]] = [(None, "*_color.png: predicted class")]
    rows += [(tuple(int(v) for v in palette[i]), f"{i}  {c}") for i, c in enumerate(classes)]
    rows.append((IGNORE_COLOR, "ignore (not a class)"))
    if errors:
        rows += [(None, ""), (None, "*_error.png: prediction vs ground truth")]
        rows += [(c, text) for c, text in ERROR_KEY]
    if indices:
        rows += [(None, ""), (None, "*_label.png|tif: grey value = class number above"),
                 (None, "(for further processing; near black in a viewer)")]  # fmt: skip
    line, pad, box = int(font_size * 1.6), 12, font_size
    width = max(int(bold.getlength(t)) + (box + 10) * (c is not None) for c, t in rows)
    img = Image.new("RGB", (width + 2 * pad, line * len(rows) + 2 * pad), "white")
    draw = ImageDraw.Draw(img)
    for i, (colour, text) in enumerate(rows):
        y = pad + i * line
        if colour is None:
            draw.text((pad, y), text, fill="black", font=bold)
            continue
        draw.rectangle([pad, y + 2, pad + box, y + 2 + box], fill=colour, outline="grey")
        draw.text((pad + box + 10, y), text, fill="black", font=font)
    return img
