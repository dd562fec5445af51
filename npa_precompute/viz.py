"""Figures of a tile: image, labels and weight maps laid out like Feng et al. (2020), Fig. 4.

:func:`show_figure` is what ``npa-precompute show`` calls. Two renderers:

* ``matplotlib`` (the ``viz`` extra, ``pip install npaloss[viz]``): heat maps with
  colour bars, a class legend, bars of the mean weight per class and k per row, and a
  histogram of the weights per class; imported lazily, drawn on the Agg canvas (no
  display needed).
* ``pillow``: the same panels tiled with Pillow and a built-in viridis colour map
  computed in numpy, for minimal headless installs (no histogram).

The colours (class palettes, the viridis map) come from :mod:`npa_precompute.colors`,
shared with ``export``, ``npa-train preview`` and ``npa-train predict``.

This module holds the Pillow renderer and the entry point; the data a figure shows
(:class:`ShowData`, :func:`load_show_data`) is read in :mod:`npa_precompute.viz_data`
and the matplotlib renderer lives in :mod:`npa_precompute.viz_mpl`. Their public names
are re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from npa_precompute.colors import (
    IGNORE_COLOR,
    class_palette,
    colormap_lut,
    heatmap_rgb,
    label_rgb,
    stretch_image,
)
from npa_precompute.errors import ParameterError
from npa_precompute.viz_data import (
    COLOR_SCALES,
    MissingDependencyError,
    ShowData,
    _panel_title,
    _present_classes,
    _require_matplotlib,
    _row_ranges,
    load_show_data,
)
from npa_precompute.viz_mpl import render_matplotlib

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from PIL import Image as PILImage

__all__ = [
    "BACKENDS",
    "COLOR_SCALES",
    "IGNORE_COLOR",
    "MissingDependencyError",
    "ShowData",
    "class_palette",
    "colormap_lut",
    "heatmap_rgb",
    "label_rgb",
    "load_show_data",
    "panel_row",
    "render_matplotlib",
    "render_pillow",
    "show_figure",
    "stretch_image",
]

#: Renderers of :func:`show_figure`; ``auto`` uses matplotlib when it is installed.
BACKENDS = ("auto", "matplotlib", "pillow")


# -- Pillow ---------------------------------------------------------------------------------

_PAD = 8
_TITLE_H = 22
_BAR_W = 12
_BAR_TEXT_W = 48


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def render_pillow(
    data: ShowData, *, panel_px: int = 320, color_scale: str = "shared"
) -> PILImage.Image:
    """Draw a :class:`ShowData` with Pillow only (no matplotlib).

    The grid of :func:`render_matplotlib` without the bar chart and histograms: a
    first row with the image, the label and the class legend, then one row per
    transformation with its maps by increasing k, each with a colour bar and its
    min / max (the row's, with ``color_scale="shared"``). Each panel is the window
    scaled (nearest neighbour) so that its longer side is ``panel_px``.

    Size: with ``pw, ph`` the panel size, ``lead`` the panels before the legend
    (image and label: 2, label only: 1), ``m`` the most maps in a row and ``r`` the
    number of transformations, the image is ``max(m, lead + 1) * (pw + 76)`` wide
    and ``(r + 1) * (ph + 30) + 30`` high.

    Parameters
    ----------
    data : ShowData
    panel_px : int, keyword-only, default 320
    color_scale : {"shared", "panel"}, keyword-only, default "shared"
        One colour range per row (all k of a transformation), or one per map.

    Returns
    -------
    PIL.Image.Image, mode RGB

    Raises
    ------
    ValueError
        If ``panel_px < 16``, or an unknown ``color_scale``.
    """
    from PIL import Image, ImageDraw

    if panel_px < 16:
        raise ParameterError("panel_px", f"must be >= 16, got {panel_px}")
    h, w = data.label.shape
    scale = panel_px / max(h, w)
    pw, ph = max(1, round(w * scale)), max(1, round(h * scale))
    lead = (1 if data.image is not None else 0) + 1
    n_cols = max(max((len(p) for _, p in data.rows), default=0), lead + 1)
    n_rows = 1 + len(data.rows)
    cell_w = pw + 2 * _PAD + _BAR_W + _BAR_TEXT_W
    cell_h = ph + _TITLE_H + _PAD
    width = n_cols * cell_w
    height = n_rows * cell_h + _PAD + _TITLE_H
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font, small = _font(13), _font(11)
    x0, y0, ww, hh = data.window
    draw.text(
        (_PAD, _PAD // 2),
        f"NPALoss weights of {data.title}, window x0,y0,w,h = {x0},{y0},{ww},{hh}",
        fill=(0, 0, 0),
        font=font,
    )

    def origin(r: int, c: int) -> tuple[int, int]:
        return c * cell_w + _PAD, _PAD + _TITLE_H + r * cell_h + _TITLE_H

    def put(rgb: np.ndarray, r: int, c: int, title: str) -> tuple[int, int]:
        left, top = origin(r, c)
        im = Image.fromarray(np.ascontiguousarray(rgb)).resize((pw, ph), Image.Resampling.NEAREST)
        canvas.paste(im, (left, top))
        draw.text((left, top - _TITLE_H + 4), title, fill=(0, 0, 0), font=font)
        return left, top

    c = 0
    if data.image is not None:
        put((data.image * 255 + 0.5).astype(np.uint8), 0, c, "image (2-98 % stretch)")
        c += 1
    put(label_rgb(data.label, data.palette, data.ignore_index), 0, c, "label")
    ids, has_ignore = _present_classes(data)
    entries = [(data.classes[i], tuple(int(v) for v in data.palette[i])) for i in ids]
    if has_ignore:
        entries.append(("ignore", IGNORE_COLOR))
    lx, ly = origin(0, lead)
    for name, color in entries:
        draw.rectangle((lx, ly, lx + 14, ly + 14), fill=color, outline=(80, 80, 80))
        draw.text((lx + 20, ly), name, fill=(0, 0, 0), font=small)
        ly += 20
    mask = data.ignore_mask
    bar = colormap_lut(256)[::-1]
    for r, (title, panels) in enumerate(data.rows, start=1):
        ranges = _row_ranges(panels, ~mask, color_scale)
        for j, ((ref, values), (lo, hi)) in enumerate(zip(panels, ranges, strict=True)):
            rgb, lo, hi = heatmap_rgb(values, vmin=lo, vmax=hi, mask=mask)
            left, top = put(rgb, r, j, f"{title}, {_panel_title(ref)}")
            bx = left + pw + 4
            strip = Image.fromarray(np.repeat(bar[:, None, :], _BAR_W, axis=1))
            canvas.paste(strip.resize((_BAR_W, ph), Image.Resampling.BILINEAR), (bx, top))
            draw.text((bx + _BAR_W + 3, top), f"{hi:.3g}", fill=(0, 0, 0), font=small)
            draw.text((bx + _BAR_W + 3, top + ph - 12), f"{lo:.3g}", fill=(0, 0, 0), font=small)
    return canvas


def panel_row(
    panels: list[np.ndarray],
    titles: list[str],
    *,
    colorbar: tuple[int, float, float] | None = None,
    gap: int = 4,
) -> PILImage.Image:
    """Panels side by side under their titles, with an optional colour bar (Pillow).

    Parameters
    ----------
    panels : list of (h, w, 3) uint8 arrays, drawn at their own size, top-aligned
    titles : list of str, one per panel; wrapped at spaces to the panel's width (a
        column is widened to its longest word)
    colorbar : (index, vmin, vmax), optional, keyword-only
        A viridis bar (:func:`colormap_lut`, ``vmax`` at the top) with its two values,
        right of panel ``index``: the range of a :func:`heatmap_rgb` panel.
    gap : int, keyword-only, default 4
        White pixels between columns.

    Returns
    -------
    PIL.Image.Image, mode RGB
        Panels start ``top`` pixels down, where ``top`` is 17 px per title line plus 4
        (14 px type).

    Raises
    ------
    ValueError
        ``titles`` and ``panels`` differ in length.
    """
    from PIL import Image, ImageDraw

    if len(titles) != len(panels):
        raise ValueError(f"{len(panels)} panels but {len(titles)} titles")
    font = _font(14)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def width(text: str) -> int:
        return int(np.ceil(measure.textlength(text, font=font)))

    cols = []
    for i, (panel, title) in enumerate(zip(panels, titles, strict=True)):
        extra = 0
        if colorbar is not None and colorbar[0] == i:
            labels = (f"{colorbar[2]:.3g}", f"{colorbar[1]:.3g}")
            extra = 3 + _BAR_W + 3 + max(width(t) for t in labels)
        words = title.split() or [""]
        col_w = max(panel.shape[1] + extra, *(width(w) for w in words))
        lines, line = [], ""
        for word in words:
            trial = f"{line} {word}".strip()
            if line and width(trial) > col_w:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
        cols.append((panel, lines, col_w, extra))
    line_h = 17
    top = max(len(lines) for _, lines, _, _ in cols) * line_h + 4
    height = top + max(p.shape[0] for p in panels)
    canvas = Image.new("RGB", (sum(c[2] for c in cols) + gap * (len(cols) - 1), height), "white")
    draw = ImageDraw.Draw(canvas)
    bar = colormap_lut(256)[::-1]
    x = 0
    for panel, lines, col_w, extra in cols:
        for j, line in enumerate(lines):
            draw.text((x, 2 + j * line_h), line, fill=(0, 0, 0), font=font)
        canvas.paste(Image.fromarray(np.ascontiguousarray(panel)), (x, top))
        if extra:
            ph = panel.shape[0]
            bx = x + panel.shape[1] + 3
            strip = Image.fromarray(np.repeat(bar[:, None, :], _BAR_W, axis=1))
            canvas.paste(strip.resize((_BAR_W, ph), Image.Resampling.BILINEAR), (bx, top))
            draw.text((bx + _BAR_W + 3, top), f"{colorbar[2]:.3g}", fill=(0, 0, 0), font=font)
            draw.text(
                (bx + _BAR_W + 3, top + max(ph - 12, 12)),
                f"{colorbar[1]:.3g}",
                fill=(0, 0, 0),
                font=font,
            )
        x += col_w + gap
    return canvas


# -- entry point ----------------------------------------------------------------------------


def show_figure(
    path: str | os.PathLike,
    tile: str,
    *,
    arrays: list[str] | tuple[str, ...] | None = None,
    window: str | tuple[int, int, int, int] | None = None,
    out: str | os.PathLike | None = None,
    backend: str = "auto",
    dpi: int = 100,
    panel_px: int = 320,
    color_scale: str = "shared",
    depth: int | None = None,
) -> Figure | PILImage.Image:
    """One figure of a tile window: image, labels, weight maps (and histograms).

    Parameters
    ----------
    path : store folder
    tile : tile id
    arrays : names of weights or affinity arrays, keyword-only; default every k of
        the tile's first transformation (see :func:`load_show_data`)
    window : ``"x0,y0,w,h"`` or a tuple, keyword-only; default the whole tile
    out : output PNG path, keyword-only; None draws without saving
    backend : {"auto", "matplotlib", "pillow"}, keyword-only
        ``auto`` (default) uses matplotlib when installed, else Pillow.
    dpi : int, keyword-only
        matplotlib resolution (default 100): the PNG is the figure size times dpi.
    panel_px : int, keyword-only
        Pillow panel size (default 320), see :func:`render_pillow`.
    color_scale : {"shared", "panel"}, keyword-only, default "shared"
        One colour range for all maps of a row (every k of a transformation), or one
        per map.
    depth : int, keyword-only
        Of a volume tile: the slice (index along D) drawn; default the middle one.

    Returns
    -------
    matplotlib.figure.Figure (matplotlib) or PIL.Image.Image (pillow)

    Raises
    ------
    StoreError
        Unknown tile or array (the message lists what exists).
    IncompleteTileError
        The tile's writing did not finish.
    ValueError
        Unknown backend or colour scale, or a malformed window or one reaching outside
        the tile.
    MissingDependencyError
        ``backend="matplotlib"`` without matplotlib installed.
    """
    if backend not in BACKENDS:
        raise ParameterError("backend", f"must be one of {BACKENDS}, got {backend!r}")
    if color_scale not in COLOR_SCALES:
        raise ParameterError("color_scale", f"must be one of {COLOR_SCALES}, got {color_scale!r}")
    if backend == "auto":
        try:
            _require_matplotlib()
            backend = "matplotlib"
        except MissingDependencyError:
            backend = "pillow"
    elif backend == "matplotlib":
        _require_matplotlib()
    data = load_show_data(path, tile, arrays=arrays, window=window, depth=depth)
    if backend == "matplotlib":
        fig = render_matplotlib(data, dpi=dpi, color_scale=color_scale)
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out, dpi=dpi)
        return fig
    img = render_pillow(data, panel_px=panel_px, color_scale=color_scale)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        img.save(out)
    return img
