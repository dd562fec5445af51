"""Every matplotlib figure, drawn at its default size, keeps its titles, axis labels and
legends inside the canvas and apart from each other (issue 21: a bar chart's title cut at
the right edge, a colour bar over a panel title)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from npa_precompute.colors import legend_image, preset_palette
from npa_precompute.pipeline import run_precompute
from npa_precompute.viz import show_figure
from npa_train.plot import Panel, Series, figure_matplotlib


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
    check_layout(show_figure(store, "t", arrays=arrays, backend="matplotlib"))


def test_plot_curves_layout():
    xs = list(range(1, 41))
    npa = Panel("training loss: npa", "iteration", "NPALoss (~ mean weight x CE)",
                [Series("k32 run", xs, [3 - 0.05 * x for x in xs])])  # fmt: skip
    ce = Panel("training loss: ce", "iteration", "cross-entropy",
               [Series("ce run", xs, [1.5 - 0.02 * x for x in xs])])  # fmt: skip
    lr = Panel("learning rate", "iteration", "lr",
               [Series("k32 run", xs, [0.01 * (1 - x / 41) ** 0.9 for x in xs])])  # fmt: skip
    check_layout(figure_matplotlib([npa, ce, lr]))


def test_legend_png_names_every_colour(tmp_path):
    classes = ["impervious surfaces", "building", "low vegetation", "tree", "car", "clutter"]
    img = legend_image(classes, preset_palette("isprs", 6), errors=True)
    arr = np.asarray(img)
    for colour in [*preset_palette("isprs", 6), (255, 0, 0)]:  # every class and 'wrong'
        assert (arr == np.asarray(colour, dtype=np.uint8)).all(axis=2).sum() > 100
    assert img.size[0] >= 300 and img.size[1] >= 20 * (len(classes) + 6)
