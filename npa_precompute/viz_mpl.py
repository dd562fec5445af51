"""The matplotlib renderer of a tile figure (the ``viz`` extra): :func:`render_matplotlib`.

matplotlib is imported inside the functions, never at module level, so that importing
this module (and ``npa-precompute --help``) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from npa_precompute.colors import IGNORE_COLOR, colormap_lut, label_rgb
from npa_precompute.store import ArrayRef
from npa_precompute.summary import wrap_header
from npa_precompute.viz_data import (
    ShowData,
    _hist_panel,
    _luminance,
    _panel_title,
    _present_classes,
    _require_matplotlib,
    _row_ranges,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["render_matplotlib"]


def render_matplotlib(
    data: ShowData, *, dpi: int = 100, panel_in: float = 2.6, color_scale: str = "shared"
) -> Figure:
    """Draw a :class:`ShowData` with matplotlib (Agg canvas, no display).

    Layout: a first row with the image, the colour-coded label and the class legend;
    then one row per transformation with its maps by increasing k (as in the paper's
    Fig. 4: k = 8, 16, 32, 64) on one colour scale with one colour bar
    (``color_scale="shared"``), or each on its own with its own colour bar
    (``"panel"``), followed by the mean weight per class of each map in the window
    (horizontal bars, one per k; "mean count" for raw weights and affinity arrays,
    Eq. 1) and a histogram of the weights per class for the k closest to 32 (the
    share of each class's pixels per bin, log scale). The first row's bars move up
    beside the class legend when that makes the figure no wider (one row of four k).
    Each row is its own sub-figure (its columns are not pushed apart by another
    row's labels); the legends of bars and histograms lie beside their axes, not over
    the data. Ignore pixels are black and left out of every statistic.

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
        Axes: image (if any), label, legend, and per row of maps: one axes per map,
        one colour bar per row (``"shared"``) or per map (``"panel"``), the
        mean-weight bars and one histogram.

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
    units, bars_in_header = _mpl_layout(lead, [len(p) for _, p in data.rows])
    n_rows = 1 + len(data.rows)
    h, w = data.label.shape
    size = (units * panel_in, n_rows * (panel_in * h / w + 0.45) + 0.5)
    fig = Figure(
        figsize=tuple(round(v * dpi) / dpi for v in size),  # whole pixels: no PNG rounding
        dpi=dpi,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    # one sub-figure per row: a wide label or legend in one row does not push the
    # columns of another apart
    subs = fig.subfigures(n_rows, 1, squeeze=False).ravel()
    x0, y0, ww, hh = data.window
    title = f"NPALoss weights of {data.title}, window x0,y0,w,h = {x0},{y0},{ww},{hh}"
    sep = " " if len(title) + 22 < units * panel_in * 9 else "\n"  # ~9 chars an inch at 12 pt
    fig.suptitle(f"{title}{sep}(ignore pixels black)", fontsize=12)
    ids = _mpl_header(subs[0], data, lead, units, bars_in_header)
    for r, (row_title, panels) in enumerate(data.rows, start=1):
        n = len(panels)
        ratios = [_MAP_UNITS] * n + ([] if r == 1 and bars_in_header else [_BAR_UNITS])
        ratios.append(_HIST_UNITS)
        if units - sum(ratios) > 1e-6:
            ratios.append(units - sum(ratios))
        gs = subs[r].add_gridspec(1, len(ratios), width_ratios=ratios)
        _mpl_map_row(subs[r], gs, row_title, panels, data, cmap, color_scale)
        if not (r == 1 and bars_in_header):
            _mpl_mean_bars(subs[r].add_subplot(gs[0, n]), data, r - 1, ids)
            n += 1
        _mpl_histograms(subs[r].add_subplot(gs[0, n]), data, panels, ids)
    for ax in fig.axes:
        if ax.images:
            ax.set_xticks([])
            ax.set_yticks([])
    return fig


#: Widths of the cells of :func:`render_matplotlib`, in panels: a map, the bar chart of
#: a row (with its legend of k beside it), a histogram (with its class legend beside it).
_MAP_UNITS, _BAR_UNITS, _HIST_UNITS, _LEGEND_UNITS = 1.0, 1.45, 1.5, 1.0


def _mpl_layout(lead: int, n_maps: list[int]) -> tuple[float, bool]:
    """Figure width in panels, and whether the first row's bars go in the header row.

    Each row of maps is followed by its bar chart and histogram; the first row's bar chart
    moves up beside the class legend when that makes the figure no wider (Fig. 4's four
    k), so that no row leaves a wide blank.
    """
    head = lead + _LEGEND_UNITS
    if not n_maps:
        return head, False
    rows = [n * _MAP_UNITS + _BAR_UNITS + _HIST_UNITS for n in n_maps]
    in_row = max(head, *rows)
    up = max(head + 2 * _MAP_UNITS, n_maps[0] * _MAP_UNITS + _HIST_UNITS, *rows[1:], 0)
    return (up, True) if up <= in_row else (in_row, False)


def _mpl_header(sub, data: ShowData, lead: int, units: float, bars: bool) -> list[int]:
    """First row: image, colour-coded label, the class legend (and the first row's bars)."""
    from matplotlib.patches import Patch

    ratios = [_MAP_UNITS] * lead
    rest = units - lead * _MAP_UNITS
    ratios += [_LEGEND_UNITS, rest - _LEGEND_UNITS] if bars else [rest]
    gs = sub.add_gridspec(1, len(ratios), width_ratios=ratios)
    col = 0
    if data.image is not None:
        ax = sub.add_subplot(gs[0, col])
        ax.imshow(data.image, interpolation="nearest")
        ax.set_title("image (2–98 % stretch)", fontsize=10)
        col += 1
    ax = sub.add_subplot(gs[0, col])
    ax.imshow(label_rgb(data.label, data.palette, data.ignore_index), interpolation="nearest")
    ax.set_title("label", fontsize=10)
    ids, has_ignore = _present_classes(data)
    handles = [
        Patch(facecolor=data.palette[i] / 255.0, edgecolor="0.3", label=data.classes[i])
        for i in ids
    ]
    if has_ignore:
        handles.append(Patch(facecolor=np.asarray(IGNORE_COLOR) / 255.0, label="ignore"))
    ax = sub.add_subplot(gs[0, col + 1])
    ax.axis("off")
    ax.legend(handles=handles, loc="center left", fontsize=9, frameon=False, title="classes")
    if bars and data.rows:
        _mpl_mean_bars(sub.add_subplot(gs[0, col + 2]), data, 0, ids)
    return ids


def _quantity(ref: ArrayRef) -> str:
    """What a map holds: ``"count"`` (affinity arrays, raw weights: Eq. 1) or ``"weight"``."""
    return "count" if ref.kind == "affinity" or ref.transform == "raw" else "weight"


def _mpl_mean_bars(ax, data: ShowData, row: int, ids: list[int]) -> None:
    """Mean weight (or count) per class of one row's maps in the window, a bar per k."""
    title, panels = data.rows[row]
    n = len(panels)
    height = 0.8 / n
    shades = colormap_lut(256)[np.linspace(20, 230, n).astype(int)] / 255.0
    for j, (ref, values) in enumerate(panels):
        means = [float(values[data.label == i].mean()) for i in ids]
        ax.barh(
            np.arange(len(ids)) + (j - (n - 1) / 2) * height, means, height,
            color=shades[j], label="\n".join(wrap_header(_panel_title(ref), 14)),
        )  # fmt: skip
    ax.set_yticks(np.arange(len(ids)), [_short(data.classes[i]) for i in ids], fontsize=8)
    ax.invert_yaxis()  # classes top to bottom, as in the class legend
    what = _quantity(panels[0][0])
    ax.set_xlabel(f"mean {what}" + (" (Eq. 1)" if what == "count" else ""), fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    x0, y0, ww, hh = data.window
    ax.set_title(
        f"mean {what} per class, {title}\nin window x0,y0,w,h = {x0},{y0},{ww},{hh}", fontsize=10
    )
    # beside the axes: a legend inside would cover bars
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _mpl_map_row(sub, gs, title: str, panels, data: ShowData, cmap, color_scale) -> None:
    """One transformation's maps by increasing k, with one colour bar per row or per map."""
    mask = data.ignore_mask
    ranges = _row_ranges(panels, ~mask, color_scale)
    row_axes = []
    for j, ((ref, values), (lo, hi)) in enumerate(zip(panels, ranges, strict=True)):
        ax = sub.add_subplot(gs[0, j])
        row_axes.append(ax)
        shown = np.ma.masked_array(values, mask=mask)
        im = ax.imshow(shown, cmap=cmap, interpolation="nearest", vmin=lo, vmax=hi)
        text = f"{title}, {_panel_title(ref)}"
        if len(text) > 24:  # wider than the panel at 10 pt: the k on a second line
            text = f"{title},\n{_panel_title(ref)}"
        ax.set_title(text, fontsize=10)
        if color_scale == "panel":
            cb = sub.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            cb.ax.tick_params(labelsize=8)
    if color_scale == "shared":  # one bar for the row: the same colour, the same value
        cb = sub.colorbar(im, ax=row_axes, fraction=0.046 / len(row_axes), pad=0.02)
        cb.ax.tick_params(labelsize=8)
        whats = {_quantity(ref) for ref, _ in panels}
        if len(whats) == 1:  # the row's titles name the transformation
            what = whats.pop()
            cb.set_label(what + (" (Eq. 1)" if what == "count" else ""), fontsize=8)


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
    # beside the axes, not over the lines
    ax.legend(handles=legend, fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1, 1))
    ax.set_yscale("log")
    what = _quantity(ref)
    ax.set_title(f"{what}s per class, {_panel_title(ref)}", fontsize=10)
    ax.set_xlabel(what + (" (Eq. 1)" if what == "count" else ""), fontsize=9)
    ax.set_ylabel("share of class pixels", fontsize=9)
    ax.tick_params(labelsize=8)


def _short(name: str) -> str:
    """A class name for a tick label: long names broken in two lines."""
    return "\n".join(wrap_header(name, 11))
