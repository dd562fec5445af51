"""Figures of a tile: image, labels and weight maps laid out like Feng et al. (2020), Fig. 4.

:func:`show_figure` is what ``npa-precompute show`` calls. Two renderers:

* ``matplotlib`` (the ``viz`` extra, ``pip install npaloss[viz]``): heat maps with
  colour bars, a class legend, bars of the mean weight per class and k, and a
  histogram of the weights per class; imported lazily, drawn on the Agg canvas (no
  display needed).
* ``pillow``: the same panels tiled with Pillow and a built-in viridis colour map
  computed in numpy, for minimal headless installs (no histogram).

The colours (class palettes, the viridis map) come from :mod:`npa_precompute.colors`,
shared with ``export``, ``npa-train preview`` and ``npa-train predict``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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
from npa_precompute.store import ArrayRef, open_store, open_tile, store_info
from npa_precompute.summary import check_window, parse_window, wrap_header

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
#: Colour ranges of the maps of :func:`show_figure`: ``shared`` by all maps of a row
#: (one transformation, every k: colours compare across k), or one per ``panel``.
COLOR_SCALES = ("shared", "panel")


class MissingDependencyError(ImportError):
    """An optional dependency (matplotlib, the ``viz`` extra) is not installed."""


# -- data -----------------------------------------------------------------------------------


@dataclass
class ShowData:
    """What a figure shows, read from the store for one window.

    Attributes
    ----------
    tile_id : str
    window : (x0, y0, w, h)
    image : (h, w, 3) float32 in [0, 1] (stretched) or None
    label : (h, w) integer array
    classes : list of str
    palette : (num_classes, 3) uint8
    ignore_index : int
    rows : list of (row title, list of (ArrayRef, (h, w) float64 values)); one row per
        transformation, panels ordered by k
    """

    tile_id: str
    window: tuple[int, int, int, int]
    image: np.ndarray | None
    label: np.ndarray
    classes: list[str]
    palette: np.ndarray
    ignore_index: int
    rows: list[tuple[str, list[tuple[ArrayRef, np.ndarray]]]] = field(default_factory=list)

    @property
    def ignore_mask(self) -> np.ndarray:
        return self.label == self.ignore_index

    @property
    def n_maps(self) -> int:
        return sum(len(panels) for _, panels in self.rows)


def _default_arrays(tile) -> list[str]:
    names = tile.weight_names
    if not names:
        return []
    specs = tile.meta.transform_specs
    first = specs[0] if specs else tile.ref(names[0]).transform
    return [n for n in names if tile.ref(n).transform == first]


def load_show_data(
    path: str | os.PathLike,
    tile: str,
    *,
    arrays: list[str] | tuple[str, ...] | None = None,
    window: str | tuple[int, int, int, int] | None = None,
) -> ShowData:
    """Read the image, labels and chosen maps of one tile window.

    Parameters
    ----------
    path : store folder
    tile : tile id
    arrays : weights names (``"k32_log10_L0.5"``) or affinity arrays (``"affinity/k32"``,
        ``"k32"``), keyword-only; default every k of the tile's first transformation
    window : ``"x0,y0,w,h"`` or a tuple (:func:`~npa_precompute.summary.parse_window`),
        keyword-only; default the whole tile

    Returns
    -------
    ShowData

    Raises
    ------
    StoreError
        Unknown tile or array (the message lists what exists).
    IncompleteTileError
        The tile's writing did not finish.
    ValueError
        A malformed window, one reaching outside the tile, or ``label`` / ``image``
        among ``arrays`` (they are always shown).
    """
    root = open_store(path)
    info = store_info(root)
    t = open_tile(root, tile)
    win = parse_window(window)
    rows_sl, cols_sl = check_window(win, t.shape, tile_id=tile)
    win = (cols_sl.start, rows_sl.start, cols_sl.stop - cols_sl.start, rows_sl.stop - rows_sl.start)
    names = list(arrays) if arrays else _default_arrays(t)
    refs: list[ArrayRef] = []
    for name in names:
        ref = t.ref(name)
        if ref.kind in ("label", "image"):
            raise ValueError(
                f"{ref.kind!r} is always shown; `arrays` takes weights or affinity arrays"
            )
        if ref.path not in [r.path for r in refs]:
            refs.append(ref)
    groups: dict[str, list[ArrayRef]] = {}
    for ref in refs:
        key = ref.transform if ref.kind == "weights" else "raw counts (Eq. 1)"
        groups.setdefault(key or ref.name, []).append(ref)
    box = (rows_sl.start, rows_sl.stop, cols_sl.start, cols_sl.stop)
    rows = []
    for key, group in groups.items():
        group.sort(key=lambda r: (r.k is None, r.k or 0, r.name))
        rows.append((key, [(r, t.read_window(r.path, *box).astype(np.float64)) for r in group]))
    image = None
    if t.image is not None:
        image = stretch_image(t.read_window("image", *box))
    return ShowData(
        tile_id=tile,
        window=win,
        image=image,
        label=t.read_window("label", *box),
        classes=list(info.classes),
        palette=class_palette(info),
        ignore_index=info.ignore_index,
        rows=rows,
    )


def _panel_title(ref: ArrayRef) -> str:
    if ref.k is not None:
        return f"k = {ref.k}"
    ks = ref.ks if ref.kind == "weights" else None
    return f"mean of k = {', '.join(map(str, ks))}" if ks else ref.name


def _hist_panel(panels: list[tuple[ArrayRef, np.ndarray]]) -> tuple[ArrayRef, np.ndarray]:
    """The panel whose k is closest to 32 (the paper's best search region)."""
    return min(panels, key=lambda p: (p[0].k is None, abs((p[0].k or 0) - 32), p[0].k or 0))


def _row_ranges(
    panels: list[tuple[ArrayRef, np.ndarray]], valid: np.ndarray, color_scale: str
) -> list[tuple[float, float]]:
    """``(vmin, vmax)`` per panel over the valid pixels: the row's range when ``shared``."""
    if color_scale not in COLOR_SCALES:
        raise ParameterError("color_scale", f"must be one of {COLOR_SCALES}, got {color_scale!r}")
    ranges = []
    for _, values in panels:
        v = values[valid & np.isfinite(values)]
        ranges.append((float(v.min()), float(v.max())) if v.size else (0.0, 1.0))
    if color_scale == "shared":
        row = (min(lo for lo, _ in ranges), max(hi for _, hi in ranges))
        ranges = [row] * len(ranges)
    return ranges


def _present_classes(data: ShowData) -> tuple[list[int], bool]:
    present = np.unique(data.label)
    ids = [int(c) for c in present if int(c) < len(data.classes)]
    return ids, bool((present == data.ignore_index).any())


def _luminance(rgb) -> float:
    r, g, b = (float(v) / 255.0 for v in rgb)
    return 0.299 * r + 0.587 * g + 0.114 * b


# -- matplotlib -----------------------------------------------------------------------------


def _require_matplotlib():
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingDependencyError(
            "this figure needs matplotlib: pip install npaloss[viz] "
            "(or use the Pillow renderer: --backend pillow)"
        ) from exc
    return matplotlib


def render_matplotlib(
    data: ShowData, *, dpi: int = 100, panel_in: float = 2.6, color_scale: str = "shared"
) -> Figure:
    """Draw a :class:`ShowData` with matplotlib (Agg canvas, no display).

    Layout: a first row with the image, the colour-coded label, the class legend and
    the mean weight per class of the first transformation's maps in the window
    (grouped bars by k); then one row per transformation with its maps by increasing
    k (as in the paper's Fig. 4: k = 8, 16, 32, 64) on one colour scale with one
    colour bar (``color_scale="shared"``), or each on its own with its own colour bar
    (``"panel"``), and beside them a histogram of the weights per class for the k
    closest to 32 (the share of each class's pixels per bin, log scale; a legend
    names the classes). Ignore pixels are black and left out of every statistic.

    Parameters
    ----------
    data : ShowData
    dpi : int, keyword-only, default 100
    panel_in : float, keyword-only
        Panel width in inches (default 2.6).
    color_scale : {"shared", "panel"}, keyword-only, default "shared"
        One colour range per row (all k of a transformation), or one per map.

    Returns
    -------
    matplotlib.figure.Figure
        Axes: image (if any), label, legend, and when maps are shown the mean-weight
        bars, one axes per map, one colour bar per row (``"shared"``) or per map
        (``"panel"``) and one histogram per row.

    Raises
    ------
    MissingDependencyError
        matplotlib is not installed.
    ValueError
        Unknown ``color_scale``.
    """
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    cmap = ListedColormap(colormap_lut(256) / 255.0, name="npa_viridis").with_extremes(
        bad=np.asarray(IGNORE_COLOR) / 255.0
    )
    lead = (1 if data.image is not None else 0) + 1
    max_maps = max((len(p) for _, p in data.rows), default=0)
    n_cols = max(max_maps + 1, lead + 3) if data.rows else lead + 1
    n_rows = 1 + len(data.rows)
    h, w = data.label.shape
    fig = Figure(
        figsize=(n_cols * panel_in, n_rows * (panel_in * h / w + 0.45) + 0.4),
        dpi=dpi,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(n_rows, n_cols)
    x0, y0, ww, hh = data.window
    fig.suptitle(
        f"NPALoss weights of {data.tile_id}, window x0,y0,w,h = {x0},{y0},{ww},{hh} "
        "(ignore pixels black)",
        fontsize=12,
    )
    col, ids = _mpl_header(fig, gs, data)
    if data.rows:
        _mpl_mean_bars(fig.add_subplot(gs[0, col + 2 :]), data, ids)
    for r, (title, panels) in enumerate(data.rows, start=1):
        _mpl_map_row(fig, gs, r, title, panels, data, cmap, color_scale)
        _mpl_histograms(fig.add_subplot(gs[r, len(panels)]), data, panels, ids)
    for ax in fig.axes:
        if ax.images:
            ax.set_xticks([])
            ax.set_yticks([])
    return fig


def _mpl_header(fig, gs, data: ShowData) -> tuple[int, list[int]]:
    """First row: image, colour-coded label and the class legend; (label column, classes)."""
    from matplotlib.patches import Patch

    col = 0
    if data.image is not None:
        ax = fig.add_subplot(gs[0, col])
        ax.imshow(data.image, interpolation="nearest")
        ax.set_title("image (2–98 % stretch)", fontsize=10)
        col += 1
    ax = fig.add_subplot(gs[0, col])
    ax.imshow(label_rgb(data.label, data.palette, data.ignore_index), interpolation="nearest")
    ax.set_title("label", fontsize=10)
    ids, has_ignore = _present_classes(data)
    handles = [
        Patch(facecolor=data.palette[i] / 255.0, edgecolor="0.3", label=data.classes[i])
        for i in ids
    ]
    if has_ignore:
        handles.append(Patch(facecolor=np.asarray(IGNORE_COLOR) / 255.0, label="ignore"))
    ax = fig.add_subplot(gs[0, col + 1])
    ax.axis("off")
    ax.legend(handles=handles, loc="center left", fontsize=9, frameon=False, title="classes")
    return col, ids


def _mpl_mean_bars(ax, data: ShowData, ids: list[int]) -> None:
    """Mean weight per class of the first row's maps in the window (grouped bars by k)."""
    title, panels = data.rows[0]
    n = len(panels)
    width = 0.8 / n
    shades = colormap_lut(256)[np.linspace(20, 230, n).astype(int)] / 255.0
    top = 0.0
    for j, (ref, values) in enumerate(panels):
        means = [float(values[data.label == i].mean()) for i in ids]
        top = max([top, *means])
        ax.bar(
            np.arange(len(ids)) + (j - (n - 1) / 2) * width, means, width,
            color=shades[j], label=_panel_title(ref),
        )  # fmt: skip
    ax.set_xticks(
        np.arange(len(ids)),
        [_short(data.classes[i]) for i in ids],
        fontsize=8,
        rotation=30 if len(ids) > 6 else 0,
    )
    ax.set_ylabel("mean weight", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    x0, y0, ww, hh = data.window
    ax.set_title(
        f"mean weight per class, {title}\nin window x0,y0,w,h = {x0},{y0},{ww},{hh}", fontsize=10
    )
    ax.legend(fontsize=8, ncol=min(n, 4), frameon=False, loc="upper left")
    ax.set_ylim(0, top * 1.35 if top > 0 else 1.0)


def _mpl_map_row(fig, gs, r: int, title: str, panels, data: ShowData, cmap, color_scale) -> None:
    """One transformation's maps by increasing k, with one colour bar per row or per map."""
    mask = data.ignore_mask
    ranges = _row_ranges(panels, ~mask, color_scale)
    row_axes = []
    for j, ((ref, values), (lo, hi)) in enumerate(zip(panels, ranges, strict=True)):
        ax = fig.add_subplot(gs[r, j])
        row_axes.append(ax)
        shown = np.ma.masked_array(values, mask=mask)
        im = ax.imshow(shown, cmap=cmap, interpolation="nearest", vmin=lo, vmax=hi)
        ax.set_title(f"{title}, {_panel_title(ref)}", fontsize=10)
        if color_scale == "panel":
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            cb.ax.tick_params(labelsize=8)
    if color_scale == "shared":  # one bar for the row: the same colour, the same value
        cb = fig.colorbar(im, ax=row_axes, fraction=0.046 / len(row_axes), pad=0.02)
        cb.ax.tick_params(labelsize=8)


def _mpl_histograms(ax, data: ShowData, panels, ids: list[int]) -> None:
    """Weights per class (share of the class's pixels per bin, log scale) for one k."""
    from matplotlib.lines import Line2D
    from matplotlib.patheffects import Normal, Stroke

    valid = ~data.ignore_mask
    ref, values = _hist_panel(panels)
    lo, hi = (float(values[valid].min()), float(values[valid].max())) if valid.any() else (0, 1)
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 41)
    # largest classes first and thickest, so small classes drawn later on top of
    # them stay visible where their histograms coincide
    order = sorted(ids, key=lambda c: -int((data.label == c).sum()))
    legend = []
    for j, i in enumerate(order):
        v = values[data.label == i]
        lw = 1.0 + 0.4 * (len(order) - 1 - j)
        *_, patches = ax.hist(
            v, bins=bins, weights=np.full(v.size, 1.0 / v.size), histtype="step",
            linewidth=lw, color=data.palette[i] / 255.0, label=data.classes[i],
        )  # fmt: skip
        effects = None
        if _luminance(data.palette[i]) > 0.7:  # a dark outline keeps white, yellow visible
            effects = [Stroke(linewidth=lw + 1.2, foreground="0.3"), Normal()]
            for patch in patches:
                patch.set_path_effects(effects)
        legend.append(
            Line2D([], [], color=data.palette[i] / 255.0, linewidth=lw,
                   path_effects=effects, label=data.classes[i])
        )  # fmt: skip
    ax.legend(handles=legend, fontsize=7, frameon=False, loc="best")
    ax.set_yscale("log")
    what = "counts" if ref.kind == "affinity" else "weights"
    ax.set_title(f"{what} per class, {_panel_title(ref)}", fontsize=10)
    ax.set_xlabel(what[:-1], fontsize=9)
    ax.set_ylabel("share of class pixels", fontsize=9)
    ax.tick_params(labelsize=8)


def _short(name: str) -> str:
    """A class name for a tick label: long names broken in two lines."""
    return "\n".join(wrap_header(name, 11))


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
        f"NPALoss weights of {data.tile_id}, window x0,y0,w,h = {x0},{y0},{ww},{hh}",
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
    data = load_show_data(path, tile, arrays=arrays, window=window)
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
