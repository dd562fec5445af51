"""inspect / show / export of a weight store, on a tiny hand-built ISPRS store."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import click
import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner
from PIL import Image

from npa_precompute.cli_inspect import export_cmd, inspect_cmd, show_cmd
from npa_precompute.export import export_array
from npa_precompute.pipeline import run_precompute
from npa_precompute.store import IncompleteTileError, StoreError, open_store, open_tile
from npa_precompute.summary import (
    check_window,
    consolidate_store,
    format_inspect,
    inspect_store,
    parse_window,
    resolve_array,
)
from npa_precompute.viz import (
    MissingDependencyError,
    colormap_lut,
    load_show_data,
    render_pillow,
    show_figure,
)

PALETTE = np.array(
    [[255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]],
    dtype=np.uint8,
)
CLASSES = [
    "impervious surfaces",
    "building",
    "low vegetation",
    "tree",
    "car",
    "clutter/background",
]
CAR, IMPERVIOUS, IGNORE = 4, 0, 255


def _label() -> np.ndarray:
    """32x32 impervious surfaces, a 2x2 car at rows/cols 10-11, a 2x2 ignore block at 20-21."""
    label = np.zeros((32, 32), dtype=np.uint8)
    label[10:12, 10:12] = CAR
    label[20:22, 20:22] = IGNORE
    return label


def _write_rgb_label(path: Path, label: np.ndarray) -> None:
    rgb = np.zeros((*label.shape, 3), dtype=np.uint8)  # black = ignore
    known = label < len(PALETTE)
    rgb[known] = PALETTE[label[known]]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Tiles t1 (complete) and t2 (marked incomplete), k = 1, 2, raw and log10:L=0.5."""
    base = tmp_path_factory.mktemp("inspect")
    rng = np.random.default_rng(0)
    for tid in ("t1", "t2"):
        _write_rgb_label(base / "gt" / f"{tid}_noBoundary.png", _label())
        image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        (base / "top").mkdir(exist_ok=True)
        Image.fromarray(image).save(base / "top" / f"{tid}.png")
    out = base / "store.zarr"
    run_precompute(
        [str(base / "gt")],
        out,
        images=[str(base / "top")],
        preset="isprs",
        ks=(1, 2),
        transforms=("raw", "log10:L=0.5"),
        chunk=16,
    )
    zarr.open_group(out / "tiles" / "t2", mode="r+").attrs["complete"] = False
    return out


def _cli() -> click.Group:
    @click.group()
    def group() -> None:
        pass

    for cmd in (inspect_cmd, show_cmd, export_cmd):
        group.add_command(cmd)
    return group


def _stored(store: Path, path: str) -> np.ndarray:
    return zarr.open_array(store / "tiles" / "t1" / path, mode="r")[...]


# -- inspect --------------------------------------------------------------------------------


def test_inspect_json_stats_equal_numpy(store):
    result = CliRunner().invoke(_cli(), ["inspect", str(store), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["classes"] == CLASSES
    t1 = next(t for t in report["tiles"] if t["tile"] == "t1")
    label = _stored(store, "label")
    valid = label != IGNORE
    weights = [a for a in t1["arrays"] if a["kind"] == "weights"]
    assert {a["path"] for a in weights} == {
        "weights/k1_raw",
        "weights/k2_raw",
        "weights/k1_log10_L0.5",
        "weights/k2_log10_L0.5",
    }
    for a in weights:
        w = _stored(store, a["path"])[valid].astype(np.float64)
        s = a["stats"]
        assert s["pixels"] == valid.sum() == 32 * 32 - 4
        assert s["min"] == w.min()
        assert s["max"] == w.max()
        assert s["mean"] == pytest.approx(w.mean(), rel=1e-12)
        for p in (50, 90, 99):
            assert s[f"p{p}"] == pytest.approx(np.percentile(w, p), rel=1e-12)
        assert s["share_at_min"] == pytest.approx(np.mean(w == w.min()))
        assert a["k"] == int(a["path"].split("/k")[1].split("_")[0])
        assert a["transform"] in ("raw", "log10:L=0.5")
    assert t1["class_pixels"]["car"] == 4
    assert t1["class_pixels"]["impervious surfaces"] == 32 * 32 - 8
    assert t1["ignore_pixels"] == 4


def test_inspect_layout_and_stored_bytes(store):
    report = inspect_store(store, "t1")
    assert [t["tile"] for t in report["tiles"]] == ["t1"]
    arrays = {a["path"]: a for a in report["tiles"][0]["arrays"]}
    assert list(arrays)[:4] == ["label", "image", "affinity/k1", "affinity/k2"]
    lab = arrays["label"]
    assert (lab["shape"], lab["dtype"], lab["chunks"]) == ([32, 32], "uint8", [16, 16])
    assert lab["dimension_names"] == ["y", "x"]
    assert arrays["image"]["shape"] == [32, 32, 3]
    assert arrays["affinity/k2"]["k"] == 2
    for path, a in arrays.items():
        folder = store / "tiles" / "t1" / path / "c"
        on_disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        assert a["stored_bytes"] == on_disk > 0
        assert a["nbytes"] == math.prod(a["shape"]) * np.dtype(a["dtype"]).itemsize
        assert a["compression_ratio"] == pytest.approx(a["nbytes"] / on_disk)


def test_class_means_hand_computed(store):
    # k = 1: each car pixel sees 5 impervious pixels in its 3x3 window; the 12 impervious
    # pixels around the car see 1 (4 corners) or 2 (8 sides) car pixels, and likewise the
    # 12 around the ignore block see ignore pixels: an impervious sum of 2 * 20.
    arrays = {a["path"]: a for a in inspect_store(store, "t1")["tiles"][0]["arrays"]}
    raw = arrays["weights/k1_raw"]["stats"]
    n_imp = 32 * 32 - 8
    assert raw["class_mean"]["car"] == 5.0
    assert raw["class_mean"]["impervious surfaces"] == pytest.approx(40 / n_imp)
    assert raw["class_mean"]["building"] is None
    # boundary pixels: 4 car + 12 + 12 rings, weights 4 * 5 + 20 + 20; interior all 0
    assert raw["boundary_mean"] == pytest.approx(60 / 28)
    assert raw["interior_mean"] == 0.0
    assert raw["share_at_min"] == pytest.approx((n_imp - 24) / (32 * 32 - 4))
    log = arrays["weights/k1_log10_L0.5"]["stats"]
    r10 = math.sqrt(10)
    ring = 4 * math.log10(1 + r10) + 8 * math.log10(2 + r10)
    assert log["class_mean"]["car"] == pytest.approx(math.log10(5 + r10), rel=1e-6)
    assert log["class_mean"]["impervious surfaces"] == pytest.approx(
        ((n_imp - 24) * 0.5 + 2 * ring) / n_imp, rel=1e-6
    )
    assert log["min"] == pytest.approx(0.5)


def test_inspect_incomplete_tile_listed_without_stats(store):
    t2 = next(t for t in inspect_store(store)["tiles"] if t["tile"] == "t2")
    assert t2["complete"] is False
    assert "class_pixels" not in t2
    assert all("stats" not in a for a in t2["arrays"])
    text = format_inspect(inspect_store(store))
    assert "tile t2  32x32  INCOMPLETE" in text
    assert "car" in text and "boundary" in text


def test_inspect_unknown_tile_lists_tiles(store):
    with pytest.raises(StoreError, match=r"no tile 'nope' in the store; tiles: t1, t2"):
        inspect_store(store, "nope")
    result = CliRunner().invoke(_cli(), ["inspect", str(store), "--tile", "nope"])
    assert result.exit_code == 1
    assert "Error: no tile 'nope'" in result.output
    assert "Traceback" not in result.output


# -- array names and windows ----------------------------------------------------------------


def test_resolve_array_names(store):
    tile = open_tile(open_store(store), "t1")
    assert resolve_array(tile, "k2").path == "affinity/k2"
    assert resolve_array(tile, "affinity/k1").k == 1
    ref = resolve_array(tile, "weights/k2_log10_L0.5")
    assert (ref.kind, ref.k, ref.transform, ref.name) == (
        "weights",
        2,
        "log10:L=0.5",
        "k2_log10_L0.5",
    )
    assert resolve_array(tile, "image").kind == "image"
    with pytest.raises(StoreError, match=r"no array 'k3'; available: label, image, affinity/k1"):
        resolve_array(tile, "k3")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3", "four integers"),
        ("a,b,c,d", "four integers"),
        ("-1,0,4,4", "must be >= 0"),
        ("0,0,0,4", "must be >= 1"),
    ],
)
def test_parse_window_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_window(text)


def test_window_outside_tile_names_shape():
    assert check_window((2, 3, 4, 5), (32, 32)) == (slice(3, 8), slice(2, 6))
    with pytest.raises(ValueError, match=r"tile 't1' of shape \(H, W\) = \(32, 32\)"):
        check_window((30, 0, 4, 4), (32, 32), tile_id="t1")


# -- show -----------------------------------------------------------------------------------


def test_show_matplotlib_panels_and_size(store, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "fig.png"
    fig = show_figure(store, "t1", out=out, backend="matplotlib", dpi=40)
    # image, label, legend, mean-weight bars, 2 maps (k = 1, 2 of raw), 1 colour bar for the
    # row (one scale), 1 hist
    assert len(fig.axes) == 8
    titles = [ax.get_title() for ax in fig.axes]
    assert "raw, k = 1" in titles and "raw, k = 2" in titles
    with Image.open(out) as im:
        assert im.size == tuple(np.rint(fig.get_size_inches() * 40).astype(int))


def _map_axes(fig, title_start: str):
    return [ax for ax in fig.axes if ax.get_title().startswith(title_start) and ax.images]


def test_show_one_colour_scale_per_row_legend_and_window(store):
    pytest.importorskip("matplotlib")
    valid = _label() != IGNORE
    k1, k2 = _stored(store, "affinity/k1"), _stored(store, "affinity/k2")
    # shared: both k of the row on the range of the row (the k = 2 counts reach higher)
    fig = show_figure(store, "t1", arrays=["k1_raw", "k2_raw"], backend="matplotlib", dpi=30)
    clims = [ax.images[0].get_clim() for ax in _map_axes(fig, "raw, k = ")]
    assert clims == [(k1[valid].min(), k2[valid].max())] * 2 and k1.max() < k2.max()
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 1
    # per panel: each its own range and colour bar
    fig = show_figure(store, "t1", arrays=["k1_raw", "k2_raw"], backend="matplotlib", dpi=30,
                      color_scale="panel")  # fmt: skip
    clims = [ax.images[0].get_clim() for ax in _map_axes(fig, "raw, k = ")]
    assert clims == [(k1[valid].min(), k1[valid].max()), (k2[valid].min(), k2[valid].max())]
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 2
    # the histogram names its classes; the bar chart its window
    fig = show_figure(store, "t1", window="0,0,16,16", backend="matplotlib", dpi=30)
    hist = next(ax for ax in fig.axes if " per class, k = " in ax.get_title())
    assert [t.get_text() for t in hist.get_legend().get_texts()] == ["impervious surfaces", "car"]
    bars = next(ax for ax in fig.axes if ax.get_title().startswith("mean weight per class"))
    assert "in window x0,y0,w,h = 0,0,16,16" in bars.get_title()
    with pytest.raises(ValueError, match="`color_scale` must be one of"):
        show_figure(store, "t1", color_scale="global")
    args = ["show", str(store), "--tile", "t1", "--color-scale", "panel", "--out",
            str(store.parent / "f.png")]  # fmt: skip
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output


def test_show_pillow_shares_the_row_range(store):
    valid = _label() != IGNORE
    k2 = _stored(store, "affinity/k2")
    data = load_show_data(store, "t1", arrays=["k1_raw", "k2_raw"])
    img = np.asarray(render_pillow(data, panel_px=32))
    shared = np.asarray(render_pillow(data, panel_px=32, color_scale="panel"))
    assert img.shape == shared.shape and not np.array_equal(img, shared)
    # the k = 1 panel drawn on the row's range equals a heat map of it with that range
    from npa_precompute.viz import heatmap_rgb

    rgb, lo, hi = heatmap_rgb(_stored(store, "affinity/k1"), vmin=0, vmax=k2[valid].max(),
                              mask=~valid)  # fmt: skip
    left, top = 8, 8 + 22 + (32 + 22 + 8) + 22  # origin(1, 0) of render_pillow
    np.testing.assert_array_equal(img[top : top + 32, left : left + 32], rgb)


def test_panel_row_titles_and_colour_bar():
    from npa_precompute.viz import panel_row

    rng = np.random.default_rng(0)
    panels = [rng.integers(0, 256, (30, 50, 3)).astype(np.uint8) for _ in range(3)]
    img = np.asarray(panel_row(panels, ["a", "b", "c"], colorbar=(1, 0.5, 3.25)))
    top = img.shape[0] - 30
    assert top == 17 + 4  # one line of titles (14 px type, readable; was 11 px)
    np.testing.assert_array_equal(img[top:, :50], panels[0])
    np.testing.assert_array_equal(img[top:, 54:104], panels[1])
    lut = colormap_lut(256)
    bar = img[top:, 104 + 3 : 104 + 3 + 12]
    # the bar's top is the maximum's colour, its bottom the minimum's (resampled: within 16)
    assert np.abs(bar[0].astype(int) - lut[-1]).max() <= 16
    assert np.abs(bar[-1].astype(int) - lut[0]).max() <= 16
    assert (img[:top] < 128).any()  # the titles
    assert img.shape[1] > 3 * 50 + 2 * 4 + 15  # the colour bar and its values widen column 1
    with pytest.raises(ValueError, match="3 panels but 2 titles"):
        panel_row(panels, ["a", "b"])


def test_show_two_transforms_rows(store):
    pytest.importorskip("matplotlib")
    data = load_show_data(
        store, "t1", arrays=["k2_raw", "k1_log10_L0.5", "k1_raw"], window="4,4,24,20"
    )
    assert [(t, [r.k for r, _ in p]) for t, p in data.rows] == [
        ("raw", [1, 2]),
        ("log10:L=0.5", [1]),
    ]
    assert data.label.shape == (20, 24)
    fig = show_figure(store, "t1", arrays=["k2_raw", "k1_log10_L0.5", "k1_raw"], dpi=30)
    assert len(fig.axes) == 4 + (2 + 1 + 1) + (1 + 1 + 1)  # maps, one colour bar, a histogram


def test_show_pillow_size(store, tmp_path):
    out = tmp_path / "fig.png"
    result = CliRunner().invoke(
        _cli(),
        ["show", str(store), "--tile", "t1", "--window", "0,0,32,16", "--backend", "pillow",
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # panels 320x160; 3 columns (image, label, legend / 2 maps); 2 rows of panels
    with Image.open(out) as im:
        assert im.size == (3 * (320 + 76), 2 * (160 + 30) + 30)
    img = render_pillow(load_show_data(store, "t1", arrays=["k1_raw"]), panel_px=64)
    assert img.size == (3 * (64 + 76), 2 * (64 + 30) + 30)


def test_show_without_matplotlib(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match=r"pip install npaloss\[viz\]"):
        show_figure(store, "t1", backend="matplotlib")
    img = show_figure(store, "t1", backend="auto", panel_px=32)
    assert isinstance(img, Image.Image)


def test_show_refuses_bad_input(store, tmp_path):
    with pytest.raises(IncompleteTileError, match="'t2' is incomplete"):
        show_figure(store, "t2", backend="pillow")
    with pytest.raises(ValueError, match="always shown"):
        show_figure(store, "t1", arrays=["label"], backend="pillow")
    result = CliRunner().invoke(
        _cli(), ["show", str(store), "--tile", "t1", "--window", "0,0,64,8", "--out",
                 str(tmp_path / "x.png")]
    )  # fmt: skip
    assert result.exit_code == 1
    assert "shape (H, W) = (32, 32)" in result.output
    assert "Traceback" not in result.output


def test_colormap_lut_ends():
    lut = colormap_lut()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert lut[0].tolist() == [68, 1, 84] and lut[-1].tolist() == [253, 231, 37]


# -- export ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["k1_log10_L0.5", "label", "affinity/k2", "image"])
@pytest.mark.parametrize("suffix", [".npy", ".tif"])
def test_export_round_trip(store, tmp_path, name, suffix):
    out = export_array(store, "t1", name, tmp_path / f"a{suffix}")
    back = np.load(out) if suffix == ".npy" else tifffile.imread(out)
    path = name if "/" in name or name in ("label", "image") else f"weights/{name}"
    expected = _stored(store, path)
    assert back.dtype == expected.dtype
    np.testing.assert_array_equal(back, expected)


def test_export_window_equals_slice(store, tmp_path):
    for suffix in (".npy", ".tif"):
        out = export_array(store, "t1", "k2_raw", tmp_path / f"w{suffix}", window="3,5,10,7")
        back = np.load(out) if suffix == ".npy" else tifffile.imread(out)
        np.testing.assert_array_equal(back, _stored(store, "weights/k2_raw")[5:12, 3:13])


def test_export_png(store, tmp_path):
    label = _stored(store, "label")
    out = export_array(store, "t1", "label", tmp_path / "l.png")
    with Image.open(out) as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im), label)
        palette = np.asarray(im.getpalette(), dtype=np.uint8).reshape(-1, 3)
    assert palette[CAR].tolist() == [255, 255, 0]
    assert palette[IGNORE].tolist() == [0, 0, 0]
    out = export_array(store, "t1", "k2", tmp_path / "a.png")
    with Image.open(out) as im:
        assert im.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(im), _stored(store, "affinity/k2"))
    out = export_array(store, "t1", "k1_raw", tmp_path / "w.png", window="8,8,6,6")
    with Image.open(out) as im:
        assert im.size == (6, 6) and im.mode == "RGB"
        assert float(im.text["vmax"]) == 5.0 and float(im.text["vmin"]) == 0.0


def test_export_cli_and_errors(store, tmp_path):
    out = tmp_path / "c.npy"
    result = CliRunner().invoke(
        _cli(), ["export", str(store), "--tile", "t1", "--array", "k1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(out), _stored(store, "affinity/k1"))
    with pytest.raises(StoreError, match=r"no array 'k9raw'; available: .*k1_log10_L0.5"):
        export_array(store, "t1", "k9raw", tmp_path / "x.npy")
    # a weights name of a k without counts: the k the tile has and the command adding it
    with pytest.raises(
        StoreError,
        match=r"no affinity counts for k = 9, .* it has k = 1, 2 "
        r"\(named weights: .*k1_log10_L0\.5.*\)\. "
        r"Add the missing k .* npa-precompute run \S+t1_noBoundary.png .*--k 9",
    ):
        export_array(store, "t1", "k9_raw", tmp_path / "x.npy")
    with pytest.raises(IncompleteTileError, match="re-run `npa-precompute run`"):
        export_array(store, "t2", "label", tmp_path / "x.npy")
    with pytest.raises(ValueError, match=r"`out` must end in one of"):
        export_array(store, "t1", "label", tmp_path / "x.jpg")
    with pytest.raises(ValueError, match=r"reaches outside tile 't1' of shape"):
        export_array(store, "t1", "label", tmp_path / "x.npy", window="0,30,4,4")
    result = CliRunner().invoke(
        _cli(), ["export", str(store), "--tile", "t2", "--array", "label", "--out", str(out)]
    )
    assert result.exit_code == 1
    assert "Error: tile 't2' is incomplete" in result.output
    assert "Traceback" not in result.output


# -- other readers --------------------------------------------------------------------------


def test_consolidate_store_quiet_and_xarray(store, tmp_path):
    import shutil

    copy = tmp_path / "c.zarr"
    shutil.copytree(store, copy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        consolidate_store(copy)
    meta = json.loads((copy / "zarr.json").read_text())
    assert "tiles/t1/weights/k1_raw" in meta["consolidated_metadata"]["metadata"]
    xr = pytest.importorskip("xarray")
    ds = xr.open_zarr(copy, group="tiles/t1/weights", consolidated=False)
    assert ds["k1_log10_L0.5"].dims == ("y", "x")
    np.testing.assert_array_equal(ds["k1_raw"].values, _stored(store, "weights/k1_raw"))
    ds = xr.open_zarr(copy, group="tiles/t1")
    assert ds["image"].dims == ("y", "x", "band")
    np.testing.assert_array_equal(ds["label"].values, _stored(store, "label"))


def test_inspect_lists_k_in_numeric_order_and_explains_the_mean(tmp_path):
    _write_rgb_label(tmp_path / "gt" / "t_noBoundary.png", _label())
    out = tmp_path / "store.zarr"
    run_precompute([str(tmp_path / "gt")], out, preset="isprs", ks=(12, 2, 3), chunk=16)
    text = CliRunner().invoke(_cli(), ["inspect", str(out)]).output
    for prefix in ("affinity/k", "weights/k", "\n  k"):
        where = [text.index(f"{prefix}{k}") for k in (2, 3, 12)]
        assert where == sorted(where), (prefix, text)  # k3 before k12: numbers, not text
    assert "mean: the loss scale" in text and "weighted_mean" in text
