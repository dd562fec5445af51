"""Every matplotlib figure, drawn at its default size, keeps its titles, axis labels and
legends inside the canvas and apart from each other (issue 21: a bar chart's title cut at
the right edge, a colour bar over a panel title); legends cover no data (matplotlib and
Pillow); ``show`` draws mean-weight bars for every row, fills its width and spaces the
maps of a row evenly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from npa_precompute.colors import legend_image, preset_palette
from npa_precompute.pipeline import run_precompute
from npa_precompute.viz import show_figure
from npa_train.plot import _TAB10, Panel, Series, by_panel, figure_matplotlib, render_pillow


def _boxes(fig) -> list[tuple[str, object]]:
    """(what, display bbox) of every visible title, axis label, colour-bar label and legend."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    out = []
    if fig._suptitle is not None and fig._suptitle.get_text():
        out.append(("suptitle", fig._suptitle.get_window_extent(renderer)))
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for what, t in (("title", ax.title), ("xlabel", ax.xaxis.label),
                        ("ylabel", ax.yaxis.label)):  # fmt: skip
            if t.get_text() and t.get_visible():
                out.append((f"{what} {t.get_text()!r}", t.get_window_extent(renderer)))
        legend = ax.get_legend()
        if legend is not None:
            out.append((f"legend of {ax.get_title()!r}", legend.get_window_extent(renderer)))
    return out


def check_layout(fig) -> None:
    canvas = fig.bbox
    boxes = _boxes(fig)
    for what, b in boxes:
        assert b.x0 >= canvas.x0 - 1 and b.x1 <= canvas.x1 + 1, f"{what} cut left/right"
        assert b.y0 >= canvas.y0 - 1 and b.y1 <= canvas.y1 + 1, f"{what} cut top/bottom"
    for (wa, a), (wb, b) in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), f"{wa} overlaps {wb}"
    # no colour bar lies over another axes' title
    titles = [(ax.get_title(), ax.title.get_window_extent()) for ax in fig.axes if ax.get_title()]
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            for name, t in titles:
                assert not ax.get_window_extent().overlaps(t), f"colour bar over {name!r}"


def _data_points(ax, step: float = 2.0) -> np.ndarray:
    """Display coordinates of the drawn data of ``ax`` (lines, bars, histogram steps, error
    bars), each segment sampled every ``step`` px so that a segment crossing a box counts."""
    paths = [(line.get_path(), line.get_transform()) for line in ax.lines]
    paths += [(p.get_path(), p.get_transform()) for p in ax.patches]
    for coll in ax.collections:  # error bars
        paths += [(path, coll.get_transform()) for path in coll.get_paths()]
    out = []
    for path, transform in paths:
        for poly in path.to_polygons(transform, closed_only=False):
            for a, b in itertools.pairwise(poly):
                n = max(2, int(np.hypot(*(b - a)) / step) + 1)
                out.append(a + np.linspace(0, 1, n)[:, None] * (b - a))
    return np.concatenate(out) if out else np.empty((0, 2))


def check_legends_cover_no_data(fig) -> int:
    """No legend box holds a point of any line, bar or histogram of the figure; returns
    the number of legends checked."""
    fig.canvas.draw()
    n = 0
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None or not ax.get_visible():
            continue
        box = legend.get_window_extent()
        for other in fig.axes:
            pts = _data_points(other)
            inside = (
                (pts[:, 0] > box.x0) & (pts[:, 0] < box.x1)
                & (pts[:, 1] > box.y0) & (pts[:, 1] < box.y1)
            )  # fmt: skip
            assert not inside.any(), f"legend of {ax.get_title()!r} covers {other.get_title()!r}"
        n += 1
    return n


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.mktemp("fig")
    label = np.zeros((96, 128), dtype=np.uint8)
    label[:, 64:] = 1
    label[40:50, 20:34] = 4  # a car
    label[80:, :10] = 6  # ignore (black)
    pal = np.array([*preset_palette("isprs", 6), (0, 0, 0)], dtype=np.uint8)
    (base / "gt").mkdir()
    Image.fromarray(pal[label]).save(base / "gt" / "t_noBoundary.png")
    (base / "top").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(base / "top/t.png")
    out = base / "store.zarr"
    run_precompute([str(base / "gt")], out, images=[str(base / "top")], preset="isprs",
                   ks=(4, 8, 16, 32), transforms=("log10:L=0.5", "norm:L=0.5"),
                   chunk=32)  # fmt: skip
    return out


@pytest.mark.parametrize("color_scale", ["shared", "panel"])
def test_show_figure_layout(store, color_scale):
    check_layout(show_figure(store, "t", backend="matplotlib", color_scale=color_scale))


def test_show_arrays_mixed_kinds_layout(store):
    arrays = ["k4_log10_L0.5", "k32_log10_L0.5", "k8_norm_L0.5", "affinity/k16"]
    fig = show_figure(store, "t", arrays=arrays, backend="matplotlib")
    check_layout(fig)
    # each row's shared colour bar says what it measures
    captions = [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert captions == ["weight", "weight", "count (Eq. 1)"], captions


def test_show_legends_beside_the_data(store):
    arrays = ["k16_ln_L0.5", "ms_k4-8-16_log10_L0.5", "k32_raw"]
    for fig in (show_figure(store, "t", backend="matplotlib"),
                show_figure(store, "t", arrays=arrays, backend="matplotlib")):  # fmt: skip
        for ax in fig.axes:  # bars and histograms: the legend lies outside the axes
            if ax.get_legend() is not None and (ax.patches or ax.lines):
                assert not ax.get_legend().get_window_extent().overlaps(ax.bbox), ax.get_title()
        assert check_legends_cover_no_data(fig) >= 3  # classes, bars, histogram


def _rows_of_maps(fig) -> list[list]:
    """The map axes of each row of a ``show`` figure, left to right."""
    maps = [ax for ax in fig.axes if ax.images and "k = " in ax.get_title()]
    rows: dict[float, list] = {}
    for ax in maps:
        rows.setdefault(round(ax.get_position().y0, 3), []).append(ax)
    return [sorted(r, key=lambda a: a.get_position().x0) for r in rows.values()]


def test_show_bars_for_every_row_filling_the_width(store):
    # a derived ln row, a multi-scale row and raw counts (Eq. 1): each gets its bars
    arrays = ["k16_ln_L0.5", "ms_k4-8-16_log10_L0.5", "k32_raw"]
    fig = show_figure(store, "t", arrays=arrays, backend="matplotlib")
    check_layout(fig)
    bars = [ax for ax in fig.axes if ax.get_title().startswith("mean ")]
    assert [ax.get_title().split(",")[0] for ax in bars] == [
        "mean weight per class", "mean weight per class", "mean count per class"
    ]  # fmt: skip
    assert "count" in bars[2].get_xlabel()
    from npa_precompute.viz import load_show_data

    data = load_show_data(store, "t", arrays=arrays)
    for ax, (_, panels) in zip(bars, data.rows, strict=True):
        values = panels[0][1]
        want = [values[data.label == c].mean() for c in (0, 1, 4)]  # the classes present
        assert len(ax.patches) == 3
        np.testing.assert_allclose([p.get_width() for p in ax.patches], want, rtol=1e-6)
    # each row's drawing reaches the right part of the figure: no wide blank beside it
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width = fig.bbox.width
    for (m,) in _rows_of_maps(fig):
        y0, y1 = m.get_window_extent().y0, m.get_window_extent().y1
        same_row = [a for a in fig.axes if a.bbox.y1 > y0 and a.bbox.y0 < y1]
        right = max(a.get_tightbbox(renderer).x1 for a in same_row)
        assert right > 0.9 * width, f"row of {m.get_title()!r} ends at {right / width:.0%}"


def test_show_maps_of_a_row_evenly_spaced(store):
    # a wide legend or bar chart in the row above no longer pushes one column apart
    fig = show_figure(store, "t", backend="matplotlib")
    fig.canvas.draw()
    (row,) = _rows_of_maps(fig)
    assert len(row) == 4
    boxes = [ax.get_window_extent() for ax in row]
    gaps = [b.x0 - a.x1 for a, b in itertools.pairwise(boxes)]
    assert max(gaps) - min(gaps) < 2, gaps


def test_plot_curves_layout():
    xs = list(range(1, 41))
    npa = Panel("training loss: npa", "iteration", "NPALoss (~ mean weight x CE)",
                [Series("k32 run", xs, [3 - 0.05 * x for x in xs])])  # fmt: skip
    ce = Panel("training loss: ce", "iteration", "cross-entropy",
               [Series("ce run", xs, [1.5 - 0.02 * x for x in xs])])  # fmt: skip
    lr = Panel("learning rate", "iteration", "lr",
               [Series("k32 run", xs, [0.01 * (1 - x / 41) ** 0.9 for x in xs])])  # fmt: skip
    check_layout(figure_matplotlib([npa, ce, lr]))
    assert check_legends_cover_no_data(figure_matplotlib([npa, ce, lr])) == 3


def _fig5() -> Panel:
    """Fig. 5 with curves starting high at the left (where a legend used to sit)."""
    return by_panel({"xlabel": "k", "ylabel": "mF1 (%)",
                     "references": [{"label": "fcn ce", "y": 81.5}],
                     "series": [{"label": "fcn npa (log10_L0.5)", "x": [8, 16, 32, 64],
                                 "y": [86, 84, 83, 80], "low": [85, 83, 82, 79],
                                 "high": [87, 85, 84, 82]},
                                {"label": "fcn npa (norm_L0)", "x": [8, 16, 32, 64],
                                 "y": [85.5, 83, 82.5, 81], "low": None, "high": None}]},
                    "k")  # fmt: skip


def test_fig5_matplotlib_legend_covers_no_data():
    fig = figure_matplotlib([_fig5()])
    check_layout(fig)
    assert check_legends_cover_no_data(fig) == 1


def _frame(img: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the plot frame: the rows / columns that are dark along
    more than half of the image."""
    dark = img.max(axis=2) < 110
    rows = np.flatnonzero(dark.sum(axis=1) > 0.5 * img.shape[1])
    cols = np.flatnonzero(dark.sum(axis=0) > 0.5 * (rows[-1] - rows[0]))
    return rows[0], rows[-1], cols[0], cols[-1]


@pytest.mark.parametrize("panel", ["fig5", "loss"])
def test_pillow_legend_off_the_curves(panel):
    xs = list(range(1, 300, 5))
    if panel == "fig5":
        p = _fig5()
    else:  # a training loss starting high at the left
        loss = [3 * np.exp(-x / 80) + 0.6 for x in xs]
        p = Panel("training loss: npa", "iteration", "NPALoss", [Series("a run", xs, loss)])
    img = np.asarray(render_pillow([p])).astype(int)
    assert img.shape[:2] == (380, 560)
    top, bottom, left, right = _frame(img)
    inner = img[top + 2 : bottom - 1, left + 2 : right - 1]
    blue = np.abs(img - _TAB10[0]).max(axis=2) < 40
    # the curve is drawn inside the frame; no legend text (black) there
    assert blue[top:bottom, left:right].sum() > 200
    assert not (inner.max(axis=2) < 90).any(), "text inside the plot area"
    # the legend: its swatch and label lie under the frame, apart from every curve pixel
    below = blue[bottom + 1 :]
    assert below.sum() > 20
    ys, xs_ = np.nonzero(below)
    legend_box = (bottom + 1 + ys.min(), bottom + 1 + ys.max(), xs_.min(), xs_.max())
    curve_ys, _ = np.nonzero(blue[: bottom + 1])
    assert legend_box[0] > curve_ys.max()


def test_legend_png_names_every_colour(tmp_path):
    classes = ["impervious surfaces", "building", "low vegetation", "tree", "car", "clutter"]
    img = legend_image(classes, preset_palette("isprs", 6), errors=True)
    arr = np.asarray(img)
    for colour in [*preset_palette("isprs", 6), (255, 0, 0)]:  # every class and 'wrong'
        assert (arr == np.asarray(colour, dtype=np.uint8)).all(axis=2).sum() > 100
    assert img.size[0] >= 300 and img.size[1] >= 20 * (len(classes) + 6)
    # predict/evaluate's key also explains the class-index PNGs: three more lines
    with_indices = legend_image(classes, preset_palette("isprs", 6), errors=True, indices=True)
    assert with_indices.size[1] == img.size[1] + 3 * int(16 * 1.6)
