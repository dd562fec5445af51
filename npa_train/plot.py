"""Line charts of runs: training curves (``npa-train plot``) and the figures of
``npa-train compare`` (Feng et al. 2020, Fig. 5: a metric against k or the transform;
Fig. 6: validation mF1 along training).

Two renderers, as ``npa-precompute show`` has:

* ``matplotlib`` (the ``viz`` extra, ``pip install npaloss[viz]``), imported lazily and
  drawn on the Agg canvas (no display needed);
* ``pillow``: simple line charts (axes, ticks, lines, error bars, dashed reference lines,
  a legend) for minimal installs.

``backend="auto"`` uses matplotlib when it is installed. The figure data are plain
:class:`Panel` / :class:`Series` objects, built from run folders read by
:mod:`npa_train.runrecord` and from the summaries of :mod:`npa_train.compare` (which
imports this module, never the reverse); nothing here imports torch.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from npa_precompute.errors import ParameterError
from npa_train.runrecord import RunRecord

__all__ = [
    "BACKENDS",
    "Panel",
    "Series",
    "by_panel",
    "plot_runs",
    "render_panels",
    "render_pillow",
    "training_panels",
    "validation_panel",
]

#: Renderers; ``auto`` uses matplotlib when it is installed, else Pillow.
BACKENDS = ("auto", "matplotlib", "pillow")

# matplotlib's tab10 colours, so both renderers colour series alike.
_TAB10 = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


@dataclass
class Series:
    """One line: ``y`` against ``x`` (numbers, or category names for a categorical axis);
    ``low``/``high``: optional error bar ends (e.g. min and max over seeds). Points whose
    ``y`` is None are left out."""

    label: str
    x: list
    y: list
    low: list | None = None
    high: list | None = None


@dataclass
class Panel:
    """One chart: its series, horizontal reference lines ``(label, y)`` and axis titles.
    ``categorical``: x holds category names, spaced evenly in first-seen order."""

    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    references: list[tuple[str, float]] = field(default_factory=list)
    categorical: bool = False

    def categories(self) -> list:
        cats: list = []
        for s in self.series:
            cats += [x for x in s.x if x not in cats]
        return cats

    def points(self, s: Series) -> list[tuple[float, float, float | None, float | None]]:
        """``(x, y, low, high)`` of the defined points of ``s``, x mapped to positions."""
        cats = self.categories() if self.categorical else None
        out = []
        for i, (x, y) in enumerate(zip(s.x, s.y, strict=True)):
            if y is None or x is None or not math.isfinite(float(y)):
                continue
            pos = float(cats.index(x)) if cats is not None else float(x)
            lo = None if s.low is None else s.low[i]
            hi = None if s.high is None else s.high[i]
            out.append((pos, float(y), lo, hi))
        return out


# -- figure data --------------------------------------------------------------------------------


def _column(rows: Sequence[dict] | None, column: str) -> tuple[list, list]:
    rows = [r for r in rows or () if r.get("iteration") is not None and column in r]
    return [r["iteration"] for r in rows], [r[column] for r in rows]


def _pct_column(rows, column: str) -> tuple[list, list]:
    xs, ys = _column(rows, column)
    return xs, [None if y is None else 100 * y for y in ys]


#: y-axis label per ``--loss``; each loss gets its own panel, since an NPA-weighted CE is
#: about (mean weight) x a plain CE and cannot be read against it on one axis.
_LOSS_LABELS = {
    "npa": "NPALoss (~ mean weight x CE)",
    "ce": "cross-entropy",
    "ce-weighted": "class-weighted CE",
    "focal": "focal loss",
    "dice": "Dice loss",
}


def training_panels(runs: Sequence[dict], metrics: Sequence[str] = ("mF1", "mIoU")) -> list[Panel]:
    """Panels of training curves: loss (one panel per ``--loss``, as their scales differ)
    and lr from ``log.csv``, then each validation
    metric of ``val.csv`` (in %; a class name selects its F1 column), one line per run.

    Parameters
    ----------
    runs : dicts with ``label``, ``log`` and ``val`` (rows of :func:`npa_train.compare.
        read_csv_rows`, or None)
    metrics : validation columns to plot (panels without data are left out)

    Returns
    -------
    list of Panel
    """
    losses: dict[str, Panel] = {}  # one panel per loss: their values are not comparable
    lr = Panel("learning rate", "iteration", "lr")
    for r in runs:
        kind = (r.get("config") or {}).get("loss") or "unknown"
        if kind not in losses:
            ylabel = _LOSS_LABELS.get(kind, f"{kind} loss")
            losses[kind] = Panel(f"training loss: {kind}", "iteration", ylabel)
        losses[kind].series.append(Series(r["label"], *_column(r["log"], "loss")))
        lr.series.append(Series(r["label"], *_column(r["log"], "lr")))
    panels = [*losses.values(), _merge_equal_series(lr)]
    for m in metrics:
        column = m if m in ("mF1", "mIoU", "OA", "boundary_f1") else f"f1:{m}"
        p = Panel(f"validation {m}", "iteration", f"{m if column == m else 'F1 ' + m} (%)")
        p.series = [Series(r["label"], *_pct_column(r["val"], column)) for r in runs]
        panels.append(p)
    return [p for p in panels if any(p.points(s) for s in p.series)]


def _merge_equal_series(panel: Panel) -> Panel:
    """Runs whose curves coincide (the same lr schedule) drawn once, as one labelled line:
    one run's line would otherwise hide the others' under it."""
    if len(panel.series) > 1 and all(
        (s.x, s.y) == (panel.series[0].x, panel.series[0].y) for s in panel.series
    ):
        first = panel.series[0]
        panel.series = [Series(f"all {len(panel.series)} runs (the same)", first.x, first.y)]
    return panel


def validation_panel(groups: Sequence[dict], metric: str = "mF1") -> Panel:
    """Fig. 6: validation ``metric`` (%) along training, one curve per run of each group
    of :func:`npa_train.compare.group_results` (label: the method and seed)."""
    column = metric if metric in ("mF1", "mIoU", "OA", "boundary_f1") else f"f1:{metric}"
    panel = Panel(f"validation {metric} along training", "iteration", f"{metric} (%)")
    for g in groups:
        for r in g["runs"]:
            xs, ys = _pct_column(r.get("val"), column)
            if xs:
                panel.series.append(Series(f"{g['label']} seed {r['config'].get('seed')}", xs,
                                           ys))  # fmt: skip
    return panel


def by_panel(data: dict, by: str, metric: str = "mF1") -> Panel:
    """Fig. 5: ``metric`` against k or the transform, from ``data`` (the output of
    :func:`npa_train.compare.by_series`); error bars span min–max over seeds; methods
    without k (or transform) are dashed horizontal reference lines."""
    panel = Panel(f"{metric} against {'k' if by == 'k' else 'the weight transform'}",
                  data["xlabel"], data["ylabel"], categorical=by == "transform")  # fmt: skip
    panel.series = [Series(s["label"], s["x"], s["y"], s["low"], s["high"])
                    for s in data["series"]]  # fmt: skip
    panel.references = [(r["label"], r["y"]) for r in data["references"]]
    return panel


# -- rendering ----------------------------------------------------------------------------------


def _grid(n: int) -> tuple[int, int]:
    cols = n if n <= 3 else 2
    return math.ceil(n / cols), cols


def _render_matplotlib(panels: Sequence[Panel], out: Path, title: str | None) -> None:
    figure_matplotlib(panels, title).savefig(out, dpi=100)


def figure_matplotlib(panels: Sequence[Panel], title: str | None = None):
    """The panels as a matplotlib Figure (Agg canvas; 5.6 x 3.9 inches per panel)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, cols = _grid(len(panels))
    fig = Figure(figsize=(5.6 * cols, 3.9 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        for i, s in enumerate(panel.series):
            pts = panel.points(s)
            if not pts:
                continue
            colour = [c / 255 for c in _TAB10[i % len(_TAB10)]]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            marker = "o" if len(pts) <= 30 else None
            if s.low is not None:
                err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
                ax.errorbar(xs, ys, yerr=err, color=colour, marker=marker, capsize=3,
                            label=s.label)  # fmt: skip
            else:
                ax.plot(xs, ys, color=colour, marker=marker, markersize=3, label=s.label)
        for j, (label, y) in enumerate(panel.references):
            colour = [c / 255 for c in _TAB10[(len(panel.series) + j) % len(_TAB10)]]
            ax.axhline(y, color=colour, linestyle="--", label=label)
        if panel.categorical:
            cats = panel.categories()
            ax.set_xticks(range(len(cats)), [str(c) for c in cats], rotation=15)
        ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig


# -- Pillow fallback ----------------------------------------------------------------------------

_PANEL_W, _PANEL_H = 560, 380
_LEFT, _RIGHT, _TOP, _BOTTOM = 66, 16, 30, 46
#: The legend lies under the x-axis title, never over the lines: rows of entries
#: ``_LEGEND_ROW`` px high; a panel holds ``_LEGEND_ROWS`` of them and grows for more.
_LEGEND_ROW, _LEGEND_ROWS = 16, 2


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, n: int = 5) -> tuple[list[float], float]:
    """About ``n`` round tick values covering [lo, hi] and their step."""
    if not hi > lo:
        lo, hi = lo - (abs(lo) or 1) * 0.5, hi + (abs(hi) or 1) * 0.5
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    ticks = [k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)]
    return ticks, step


def _tick_text(value: float, step: float) -> str:
    if value == 0:
        return "0"
    if step < 1e-3:
        return f"{value:.1e}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0
    if step == 2.5 * 10 ** math.floor(math.log10(step)) and step < 10:
        decimals += 1
    return f"{value:.{decimals}f}"


def _ranges(panel: Panel) -> tuple[float, float, float, float]:
    xs, ys = [], [y for _, y in panel.references]
    for s in panel.series:
        for x, y, lo, hi in panel.points(s):
            xs.append(x)
            ys += [v for v in (y, lo, hi) if v is not None]
    if panel.categorical:
        xs = [-0.5, len(panel.categories()) - 0.5]
    xs, ys = xs or [0.0, 1.0], ys or [0.0, 1.0]
    xpad = 0.0 if panel.categorical else 0.04 * (max(xs) - min(xs) or 1.0)
    pad = 0.06 * (max(ys) - min(ys) or 1.0)
    return min(xs) - xpad, max(xs) + xpad, min(ys) - pad, max(ys) + pad


def _legend_entries(panel: Panel) -> list[tuple[str, tuple, bool, bool]]:
    """``(label, colour, dashed, marker)`` of each drawn series and reference line."""
    out = []
    for i, s in enumerate(panel.series):
        n = len(panel.points(s))
        if n:
            out.append((s.label, _TAB10[i % len(_TAB10)], False, n <= 30))
    for j, (label, _) in enumerate(panel.references):
        out.append((label, _TAB10[(len(panel.series) + j) % len(_TAB10)], True, False))
    return out


def _legend_rows(entries, width: float, text_width) -> list[list[tuple[float, tuple]]]:
    """Entries flowed into rows ``width`` px wide: rows of ``(x offset, entry)``."""
    rows: list[list] = [[]]
    x = 0.0
    for entry in entries:
        w = 30 + text_width(entry[0]) + 18  # swatch, label, gap
        if rows[-1] and x + w > width:
            rows.append([])
            x = 0.0
        rows[-1].append((x, entry))
        x += w
    return [r for r in rows if r]


def _draw_panel(draw, panel: Panel, x0: int, y0: int, font, small, height: int) -> None:
    px0, py0 = x0 + _LEFT, y0 + _TOP
    px1 = x0 + _PANEL_W - _RIGHT
    py1 = y0 + height - _BOTTOM - _LEGEND_ROWS * _LEGEND_ROW - 6
    xmin, xmax, ymin, ymax = _ranges(panel)
    xspan, yspan = (xmax - xmin) or 1.0, (ymax - ymin) or 1.0

    def to_px(x: float, y: float) -> tuple[float, float]:
        return px0 + (x - xmin) / xspan * (px1 - px0), py1 - (y - ymin) / yspan * (py1 - py0)

    draw.text(((px0 + px1) / 2, y0 + 6), panel.title, fill="black", font=font, anchor="mt")
    draw.text((px0, py0 - 4), panel.ylabel, fill="black", font=small, anchor="lb")
    draw.text(((px0 + px1) / 2, py1 + 30), panel.xlabel, fill="black", font=small, anchor="mt")
    ticks, step = _nice_ticks(ymin, ymax)
    for t in ticks:
        y = to_px(xmin, t)[1]
        draw.line([(px0, y), (px1, y)], fill=(225, 225, 225))
        draw.text((px0 - 4, y), _tick_text(t, step), fill="black", font=small, anchor="rm")
    if panel.categorical:
        xticks = [(float(i), str(c)) for i, c in enumerate(panel.categories())]
    else:
        values, xstep = _nice_ticks(xmin, xmax)
        xticks = [(v, _tick_text(v, xstep)) for v in values if xmin <= v <= xmax]
    for v, text in xticks:
        x = to_px(v, ymin)[0]
        draw.line([(x, py1), (x, py1 + 4)], fill="black")
        draw.text((x, py1 + 6), text, fill="black", font=small, anchor="mt")
    draw.rectangle([px0, py0, px1, py1], outline="black")
    for i, s in enumerate(panel.series):
        pts = panel.points(s)
        if not pts:
            continue
        colour = _TAB10[i % len(_TAB10)]
        xy = [to_px(x, y) for x, y, _, _ in pts]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for (x, _, lo, hi), (u, v) in zip(pts, xy, strict=True):
            if lo is not None and hi is not None:
                top, bottom = to_px(x, hi)[1], to_px(x, lo)[1]
                draw.line([(u, top), (u, bottom)], fill=colour)
                draw.line([(u - 4, top), (u + 4, top)], fill=colour)
                draw.line([(u - 4, bottom), (u + 4, bottom)], fill=colour)
            if len(pts) <= 30:
                draw.ellipse([u - 3, v - 3, u + 3, v + 3], fill=colour)
    for j, (_, yref) in enumerate(panel.references):
        colour = _TAB10[(len(panel.series) + j) % len(_TAB10)]
        y = to_px(xmin, yref)[1]
        for a in range(int(px0), int(px1), 12):
            draw.line([(a, y), (min(a + 7, px1), y)], fill=colour, width=2)
    rows = _legend_rows(_legend_entries(panel), px1 - px0, lambda t: draw.textlength(t, small))
    for k, row in enumerate(rows):  # under the x-axis title, styled as the lines are drawn
        y = py1 + 50 + _LEGEND_ROW * k + _LEGEND_ROW / 2
        for dx, (label, colour, dashed, marker) in row:
            x = px0 + dx
            for a, b in ((0, 6), (10, 16), (20, 26)) if dashed else ((0, 26),):
                draw.line([(x + a, y), (x + b, y)], fill=colour, width=2)
            if marker:
                draw.ellipse([x + 10, y - 3, x + 16, y + 3], fill=colour)
            draw.text((x + 30, y), label, fill="black", font=small, anchor="lm")


def render_pillow(panels: Sequence[Panel], *, title: str | None = None):
    """Draw panels with Pillow only (no matplotlib): line charts with axes, round ticks,
    markers, min–max error bars, dashed reference lines and a legend.

    Returns
    -------
    PIL.Image.Image, mode RGB
        Panels of 560×380 px in the grid of :func:`render_panels`, under a title strip;
        the legend lies under each panel's x-axis title (16 px taller per legend row
        past two, when the labels need more).
    """
    from PIL import Image, ImageDraw

    rows, cols = _grid(len(panels))
    head = 28 if title else 0
    font, small = _font(15 * _SUPERSAMPLE), _font(12 * _SUPERSAMPLE)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_width(text: str) -> float:
        return measure.textlength(text, font=small) / _SUPERSAMPLE

    n_legend = max(
        len(_legend_rows(_legend_entries(p), _PANEL_W - _LEFT - _RIGHT, text_width)) for p in panels
    )
    panel_h = _PANEL_H + max(0, n_legend - _LEGEND_ROWS) * _LEGEND_ROW
    size = (cols * _PANEL_W, rows * panel_h + head)
    # drawn at _SUPERSAMPLE times the size and scaled down: smooth lines, not staircases
    img = Image.new("RGB", tuple(_SUPERSAMPLE * v for v in size), "white")
    draw = _ScaledDraw(ImageDraw.Draw(img), _SUPERSAMPLE)
    if title:
        draw.text((size[0] / 2, 6), title, fill="black", font=font, anchor="mt")
    for i, panel in enumerate(panels):
        r, c = divmod(i, cols)
        _draw_panel(draw, panel, c * _PANEL_W, head + r * panel_h, font, small, panel_h)
    return img.resize(size, Image.Resampling.LANCZOS)


_SUPERSAMPLE = 3


class _ScaledDraw:
    """An ``ImageDraw`` whose coordinates and line widths are multiplied by ``s``."""

    def __init__(self, draw, s: int) -> None:
        self.draw, self.s = draw, s

    def _xy(self, xy) -> list[float]:
        flat = [v for p in xy for v in p] if isinstance(xy[0], (tuple, list)) else list(xy)
        return [v * self.s for v in flat]

    def line(self, xy, fill=None, width: int = 1) -> None:
        self.draw.line(self._xy(xy), fill=fill, width=width * self.s, joint="curve")

    def rectangle(self, xy, **kw) -> None:
        self.draw.rectangle(self._xy(xy), width=self.s, **kw)

    def ellipse(self, xy, **kw) -> None:
        self.draw.ellipse(self._xy(xy), **kw)

    def text(self, xy, text, **kw) -> None:
        self.draw.text(tuple(self._xy(xy)), text, **kw)

    def textlength(self, text, font) -> float:
        return self.draw.textlength(text, font=font) / self.s


def render_panels(
    panels: Sequence[Panel],
    out: str | os.PathLike,
    *,
    backend: str = "auto",
    title: str | None = None,
) -> str:
    """Draw panels into one PNG (a row of up to 3, else 2 columns).

    Parameters
    ----------
    panels : the charts
    out : PNG file to write (its folder is created)
    backend : ``auto`` (matplotlib if installed, else Pillow), ``matplotlib`` or ``pillow``
    title : figure title, optional

    Returns
    -------
    str
        The renderer used: ``"matplotlib"`` or ``"pillow"``.

    Raises
    ------
    ParameterError
        Unknown ``backend``, no panel (param ``panels``).
    ImportError
        ``backend="matplotlib"`` without matplotlib (``pip install npaloss[viz]``).
    """
    if backend not in BACKENDS:
        raise ParameterError("backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if not panels:
        raise ParameterError("panels", "nothing to draw")
    has_mpl = importlib.util.find_spec("matplotlib") is not None
    if backend == "auto":
        backend = "matplotlib" if has_mpl else "pillow"
    if backend == "matplotlib" and not has_mpl:
        raise ImportError(
            "this figure needs matplotlib: pip install npaloss[viz] (or --backend pillow)"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if backend == "matplotlib":
        _render_matplotlib(panels, out, title)
    else:
        render_pillow(panels, title=title).save(out)
    return backend


def plot_runs(
    runs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    metrics: Sequence[str] = ("mF1", "mIoU"),
    backend: str = "auto",
) -> dict:
    """Training curves of run folders in one figure: loss, lr, validation metrics.

    Parameters
    ----------
    runs : ``npa-train fit`` run folders (``log.csv``; ``val.csv`` when validated during
        training)
    out : PNG file
    metrics : validation metrics (``val.csv`` columns: mF1, mIoU, OA, boundary_f1, or a
        class name for its F1), default mF1 and mIoU
    backend : see :func:`render_panels`

    Returns
    -------
    dict
        ``out``, ``backend``, ``panels`` (titles), ``runs`` (labels).

    Raises
    ------
    ParameterError
        No run, a folder without ``config.json`` (param ``runs``), nothing to plot.
    """
    if not runs:
        raise ParameterError("runs", "give at least one run folder")
    loaded = []
    for path in runs:
        if not (Path(path) / "config.json").is_file():
            raise ParameterError("runs", f"{path} is no run folder (no config.json)")
        record = RunRecord.read(path)
        loaded.append({"run": str(record.folder), "config": record.config, "log": record.log,
                       "val": record.val})  # fmt: skip
    names = [Path(r["run"]).name for r in loaded]
    for r, name in zip(loaded, names, strict=True):
        r["label"] = name if names.count(name) == 1 else r["run"]
    panels = training_panels(loaded, metrics)
    if not panels:
        raise ParameterError("runs", "no log.csv or val.csv rows to plot in the given runs")
    used = render_panels(panels, out, backend=backend)
    return {"out": str(out), "backend": used, "panels": [p.title for p in panels],
            "runs": [r["label"] for r in loaded]}  # fmt: skip
