"""GeoTIFF georeferencing kept from the inputs through the store into export and predict.

The reference for every file written here is rasterio (GDAL): inputs are written with
it and outputs read back with it, so the tags npa_precompute.geo reads and writes with
tifffile are checked against an independent implementation.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
from click.testing import CliRunner
from helpers import ISPRS_PALETTE
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import Affine

from npa_precompute.cli import main as precompute_main
from npa_precompute.export import export_array
from npa_precompute.geo import (
    GEOTIFF_TAGS,
    geotiff_extratags,
    read_georef,
    same_georef,
    shift_georef,
    tile_georef,
    write_geotiff,
)
from npa_precompute.pipeline import run_precompute
from npa_precompute.readers import InputError
from npa_precompute.store import open_store, open_tile

UTM32N = "EPSG:32632"
#: UTM 32N, origin (496000, 5420000), 0.09 m pixels (Vaihingen's resolution)
T_UTM = Affine(0.09, 0.0, 496000.0, 0.0, -0.09, 5420000.0)
#: 20 degrees rotated, 0.5 m pixels
T_ROT = Affine.translation(496000.0, 5420000.0) @ Affine.rotation(20.0) @ Affine.scale(0.5, -0.5)
H, W = 40, 48
WINDOW = (5, 7, 20, 10)  # x0, y0, w, h
FAST = ["--window", "32", "--overlap", "0.5", "--batch", "8", "--device", "cpu", "-q"]


def _write_rio(path: Path, array: np.ndarray, transform: Affine, crs: str | None) -> Path:
    """An (H, W) or (H, W, C) array as a GeoTIFF written by rasterio (GDAL)."""
    bands = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", width=array.shape[1], height=array.shape[0],
        count=bands.shape[0], dtype=array.dtype, crs=crs, transform=transform,
    ) as ds:  # fmt: skip
        ds.write(bands)
    return path


def _rio(path: Path) -> tuple[CRS | None, Affine, np.ndarray]:
    with rasterio.open(path) as ds:
        return ds.crs, ds.transform, ds.read()


def _index_label(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 6, size=(H // 8, W // 8)), np.ones((8, 8), np.int64))


def _image(idx: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 3, (*idx.shape, 3))
    return np.clip(ISPRS_PALETTE[idx] * 0.8 + 20 + noise, 0, 255).astype(np.uint8)


def _expected_window(t: Affine, x0: int, y0: int) -> list[float]:
    # rasterio's transform @ (col, row): x = a*col + b*row + c, as shift_georef computes it
    x, y = t @ (x0, y0)
    return [t.a, t.b, x, t.d, t.e, y]


def _geotags(path: Path) -> set[int]:
    with tifffile.TiffFile(path) as tif:
        return {code for code in GEOTIFF_TAGS if code in tif.pages[0].tags}


@pytest.fixture(scope="module")
def geo(tmp_path_factory) -> dict:
    """An ISPRS GeoTIFF label + image pair precomputed through the CLI, and a checkpoint."""
    from npa_train.train import fit

    folder = tmp_path_factory.mktemp("geo")
    idx = _index_label()
    label = _write_rio(folder / "gts" / "area1_noBoundary.tif", ISPRS_PALETTE[idx], T_UTM, UTM32N)
    image = _write_rio(folder / "top" / "area1.tif", _image(idx), T_UTM, UTM32N)
    store = folder / "store.zarr"
    result = CliRunner().invoke(
        precompute_main,
        ["run", str(folder / "gts"), "--images", str(folder / "top"), "--out", str(store),
         "--k", "2", "--chunk", "16"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = folder / "run"
    fit(store, run, weights=None, loss="ce", iters=1, batch=2, crop=32, device="cpu",
        progress=False)  # fmt: skip
    return {"folder": folder, "label": label, "image": image, "store": store, "run": run}


# -- read_georef / write_geotiff against rasterio ---------------------------------------------


def test_read_georef_of_a_rasterio_geotiff(tmp_path):
    path = _write_rio(tmp_path / "a.tif", np.zeros((H, W), np.uint8), T_UTM, UTM32N)
    g = read_georef(path)
    assert g["crs"] == UTM32N
    assert g["transform"] == [0.09, 0.0, 496000.0, 0.0, -0.09, 5420000.0]
    assert g["raster_type"] == "area"
    directory = g["geokeys"]["directory"]
    keys = {directory[i]: directory[i + 3] for i in range(4, len(directory), 4)}
    assert keys[3072] == 32632 and keys[1024] == 1  # ProjectedCSTypeGeoKey, projected model
    assert json.loads(json.dumps(g)) == g  # fits the store's JSON attrs unchanged


@pytest.mark.parametrize(
    ("transform", "crs", "tags"),
    [
        (T_UTM, UTM32N, {33550, 33922, 34735, 34737}),
        (T_ROT, UTM32N, {34264, 34735, 34737}),
        (Affine(0.25, 0.0, 8.5, 0.0, -0.25, 49.0), "EPSG:4326", {33550, 33922, 34735, 34736}),
        (Affine(0.5, 0.0, 1000.0, 0.125, -0.5, 2000.0), UTM32N, {34264, 34735}),
    ],
    ids=["utm", "rotated", "geographic", "sheared"],
)
def test_write_geotiff_round_trips(tmp_path, transform, crs, tags):
    src = _write_rio(tmp_path / "src.tif", np.zeros((H, W), np.uint8), transform, crs)
    g = read_georef(src)
    assert g["crs"] == crs
    assert g["transform"] == list(transform)[:6]  # the values GDAL reads, exactly
    data = np.arange(H * W, dtype=np.uint16).reshape(H, W)
    out = tmp_path / "out.tif"
    write_geotiff(out, data, g, compression="zlib")
    assert read_georef(out) == g
    assert tags <= _geotags(out)
    # a matrix only when rotated or sheared, else tie point + pixel scale
    assert (34264 in _geotags(out)) == (transform.b != 0 or transform.d != 0)
    assert (33922 in _geotags(out)) == (transform.b == 0 and transform.d == 0)
    rio_crs, rio_t, values = _rio(out)
    assert rio_crs == CRS.from_string(crs)
    assert rio_t == transform
    np.testing.assert_array_equal(values[0], data)


# rasterio's own window_transform still multiplies an Affine with `*` (deprecated there)
@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
def test_shift_georef_matches_rasterio_window_transform(tmp_path):
    for t in (T_UTM, T_ROT):
        src = _write_rio(tmp_path / "s.tif", np.zeros((H, W), np.uint8), t, UTM32N)
        g = read_georef(src)
        shifted = shift_georef(g, 7, 5)
        assert shifted["transform"] == _expected_window(t, 5, 7)
        assert g["transform"] == list(t)[:6]  # not modified
        assert shifted["geokeys"] == g["geokeys"] and shifted["crs"] == UTM32N
        with rasterio.open(src) as ds:
            win = ds.window_transform(rasterio.windows.Window(5, 7, 20, 10))
        assert Affine(*shifted["transform"]).almost_equals(win, precision=1e-9)
    assert shift_georef(None, 3, 4) is None


def test_pixel_is_point_is_moved_to_the_corner_as_gdal_does(tmp_path):
    # tie point at the centre of pixel (0, 0): GDAL reports the corner half a pixel up-left
    directory = [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 2, 3072, 0, 1, 32632]
    src = tmp_path / "point.tif"
    tifffile.imwrite(
        src,
        np.zeros((H, W), np.uint8),
        extratags=[
            (33550, "d", 3, (0.5, 0.5, 0.0), True),
            (33922, "d", 6, (0.0, 0.0, 0.0, 1000.0, 2000.0, 0.0), True),
            (34735, "H", len(directory), tuple(directory), True),
        ],
    )
    g = read_georef(src)
    assert g["raster_type"] == "point" and g["crs"] == UTM32N
    assert g["transform"] == [0.5, 0.0, 999.75, 0.0, -0.5, 2000.25]
    assert Affine(*g["transform"]) == _rio(src)[1]
    out = tmp_path / "out.tif"
    write_geotiff(out, np.zeros((H, W), np.uint8), g)
    with tifffile.TiffFile(out) as tif:  # written back as PixelIsPoint, tie point at the centre
        assert tif.pages[0].tags[33922].value == (0.0, 0.0, 0.0, 1000.0, 2000.0, 0.0)
        assert list(tif.pages[0].tags[34735].value) == directory
    assert read_georef(out) == g


def test_a_crs_without_epsg_code_is_kept_verbatim(tmp_path):
    # user-defined projected CRS (32767) with a citation: no EPSG code, keys written back
    directory = [1, 1, 0, 3, 1024, 0, 1, 1, 1026, 34737, 9, 0, 3072, 0, 1, 32767]
    src = tmp_path / "user.tif"
    tifffile.imwrite(
        src,
        np.zeros((8, 8), np.uint8),
        extratags=[
            (33550, "d", 3, (2.0, 2.0, 0.0), True),
            (33922, "d", 6, (0.0, 0.0, 0.0, 10.0, 20.0, 0.0), True),
            (34735, "H", len(directory), tuple(directory), True),
            (34737, "s", 0, "my local|", True),
        ],
    )
    g = read_georef(src)
    assert g["crs"] is None
    assert g["geokeys"] == {"directory": directory, "double_params": None,
                            "ascii_params": "my local|"}  # fmt: skip
    write_geotiff(tmp_path / "out.tif", np.zeros((8, 8), np.uint8), shift_georef(g, 2, 3))
    assert read_georef(tmp_path / "out.tif") == {**g, "transform": [2.0, 0.0, 16.0, 0.0, -2.0,
                                                                     16.0]}  # fmt: skip


def test_files_without_georeferencing_give_none(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((4, 4), np.uint8))
    png = tmp_path / "plain.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    assert read_georef(plain) is None
    assert read_georef(png) is None
    assert geotiff_extratags(None) == []
    write_geotiff(tmp_path / "none.tif", np.ones((4, 4), np.uint8), None)
    assert _geotags(tmp_path / "none.tif") == set()
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        read_georef(tmp_path / "nope.tif")


def test_ground_control_points_warn_and_are_not_kept(tmp_path):
    path = tmp_path / "gcps.tif"
    ties = (0.0, 0.0, 0.0, 10.0, 20.0, 0.0, 7.0, 7.0, 0.0, 17.0, 13.0, 0.0)
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), extratags=[(33922, "d", 12, ties, True)])
    with pytest.warns(UserWarning, match=r"gcps\.tif is georeferenced by 2 ground control"):
        assert read_georef(path) is None


_DIRECTORY = (1, 1, 0, 1, 3072, 0, 1, 32632)


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ([(34735, "H", 8, (1, 1, 0, 5, 3072, 0, 1, 32632), True)], "announces 5 keys"),
        ([(34735, "H", 8, (1, 1, 0, 1, 2057, 34736, 1, 3), True),
          (34736, "d", 2, (1.0, 2.0), True)], "GeoDoubleParamsTag"),
        ([(34264, "d", 12, tuple(range(12)), True)], "16"),
        ([(33550, "d", 3, (0.0, 1.0, 0.0), True),
          (33922, "d", 6, (0, 0, 0, 1.0, 2.0, 0), True)], "zero scale"),
        ([(33550, "d", 3, (1.0, 1.0, 0.0), True)], "without a tie point"),
        ([(33550, "d", 3, (1.0, 1.0, 0.0), True),
          (33922, "d", 5, (0, 0, 0, 1.0, 2.0), True)], "6 per tie point"),
        ([(34264, "d", 16, (1.0, 2.0, 0, 5.0, 2.0, 4.0, 0, 6.0, *(0.0,) * 7, 1.0), True),
          (34735, "H", 8, _DIRECTORY, True)], "singular"),
    ],
    ids=["directory-count", "double-offset", "matrix-count", "zero-scale", "no-tiepoint",
         "tiepoint-count", "singular"],
)  # fmt: skip
def test_malformed_geotags_are_a_value_error_naming_the_file(tmp_path, tags, message):
    path = tmp_path / "bad_geo.tif"
    tifffile.imwrite(path, np.zeros((4, 4), np.uint8), extratags=tags)
    with pytest.raises(ValueError, match=message) as exc:
        read_georef(path)
    assert str(path) in str(exc.value)
    with pytest.raises(InputError, match="bad_geo.tif"):  # the precompute's error type
        tile_georef(path)


def test_georef_arguments_are_checked():
    with pytest.raises(ValueError, match="georef"):
        shift_georef({"crs": None}, 1, 1)
    with pytest.raises(ValueError, match="transform"):
        geotiff_extratags({"transform": [1.0, 0.0, 0.0, 0.0, -1.0]})
    with pytest.raises(ValueError, match="raster_type"):
        geotiff_extratags({"transform": [1.0, 0, 0, 0, -1.0, 0], "raster_type": "centre"})
    with pytest.raises(ValueError, match="geokeys"):
        geotiff_extratags({"transform": [1.0, 0, 0, 0, -1.0, 0], "geokeys": {"dir": []}})


def test_same_georef_tolerates_rounding_only():
    g = {"crs": UTM32N, "transform": list(T_UTM)[:6]}
    assert same_georef(g, {**g, "transform": [0.09, 0.0, 496000.0 + 1e-9, 0.0, -0.09, 5.42e6]})
    assert not same_georef(g, shift_georef(g, 0, 1))  # one pixel off
    assert not same_georef(g, {**g, "crs": "EPSG:32633"})
    assert same_georef(g, {**g, "crs": None})  # an unknown CRS does not contradict
    assert same_georef(None, None) and not same_georef(g, None)


# -- the store ---------------------------------------------------------------------------------


def test_store_keeps_the_georeferencing_of_the_inputs(geo):
    attrs = open_tile(open_store(geo["store"]), "area1").attrs
    assert attrs["georef"] == read_georef(geo["label"])
    assert attrs["georef"]["crs"] == UTM32N
    assert attrs["georef"]["transform"] == [0.09, 0.0, 496000.0, 0.0, -0.09, 5420000.0]


def test_image_georef_is_used_when_the_label_has_none(tmp_path):
    idx = _index_label(1).astype(np.uint8)
    Image.fromarray(idx).save(tmp_path / "t1_label.png")
    _write_rio(tmp_path / "t1.tif", _image(idx), T_ROT, UTM32N)
    store = tmp_path / "s.zarr"
    run_precompute([str(tmp_path / "t1_label.png")], store, images=[str(tmp_path / "t1.tif")],
                   preset="index", num_classes=6, ks="2", chunk=16)  # fmt: skip
    g = open_tile(open_store(store), "t1").attrs["georef"]
    assert g["transform"] == list(T_ROT)[:6] and g["crs"] == UTM32N
    out = export_array(store, "t1", "k2_log10_L0.5", tmp_path / "w.tif", window=WINDOW)
    crs, t, _ = _rio(out)
    assert crs == CRS.from_string(UTM32N)
    assert list(t)[:6] == _expected_window(T_ROT, 5, 7)
    assert 34264 in _geotags(out)  # rotated: ModelTransformation


def test_plain_inputs_store_no_georef_and_export_plain_tiffs(tmp_path):
    idx = _index_label(2).astype(np.uint8)
    tifffile.imwrite(tmp_path / "t2_label.tif", idx)
    Image.fromarray(_image(idx)).save(tmp_path / "t2.png")
    store = tmp_path / "s.zarr"
    run_precompute([str(tmp_path / "t2_label.tif")], store, images=[str(tmp_path / "t2.png")],
                   preset="index", num_classes=6, ks="2", chunk=16)  # fmt: skip
    assert open_tile(open_store(store), "t2").attrs["georef"] is None
    out = export_array(store, "t2", "label", tmp_path / "l.tif", window=WINDOW)
    assert _geotags(out) == set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NotGeoreferencedWarning
        crs, t, values = _rio(out)
    assert crs is None and t == Affine.identity()
    np.testing.assert_array_equal(values[0], idx[7:17, 5:25])


def test_label_and_image_georeferenced_differently_is_an_input_error(tmp_path):
    idx = _index_label(3)
    label = _write_rio(tmp_path / "gts" / "t3_noBoundary.tif", ISPRS_PALETTE[idx], T_UTM, UTM32N)
    moved = T_UTM @ Affine.translation(1, 0)  # one pixel east
    image = _write_rio(tmp_path / "top" / "t3.tif", _image(idx), moved, UTM32N)
    with pytest.raises(InputError, match="georeferenced differently") as exc:
        run_precompute([str(label)], tmp_path / "s.zarr", images=[str(image)], ks="2", chunk=16)
    assert str(label) in str(exc.value) and str(image) in str(exc.value)
    with pytest.raises(InputError, match="georeferenced differently"):
        tile_georef(label, _write_rio(tmp_path / "i4326.tif", _image(idx), T_UTM, "EPSG:32633"))


# -- export and predict ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "window", "bands"),
    [("label", None, 1), ("image", None, 3), ("k2_log10_L0.5", WINDOW, 1), ("k2", WINDOW, 1),
     ("image", WINDOW, 3)],
)  # fmt: skip
def test_export_cli_writes_the_georeferencing(geo, tmp_path, array, window, bands):
    out = tmp_path / "out.tif"
    args = ["export", str(geo["store"]), "--tile", "area1", "--array", array, "--out", str(out)]
    if window:
        args += ["--window", ",".join(map(str, window))]
    result = CliRunner().invoke(precompute_main, args)
    assert result.exit_code == 0, result.output
    crs, t, values = _rio(out)
    assert crs == CRS.from_string(UTM32N)
    x0, y0, w, h = window or (0, 0, W, H)
    assert list(t)[:6] == _expected_window(T_UTM, x0, y0)
    assert values.shape == (bands, h, w)
    tile = open_tile(open_store(geo["store"]), "area1")
    stored = {"label": tile.label, "image": tile.image}.get(array)
    if stored is not None:
        expected = np.asarray(stored[y0 : y0 + h, x0 : x0 + w])
        np.testing.assert_array_equal(np.moveaxis(values, 0, -1).squeeze(-1) if bands == 1
                                      else np.moveaxis(values, 0, -1), expected)  # fmt: skip
    assert read_georef(out) == shift_georef(tile.attrs["georef"], y0, x0)


def test_export_png_and_npy_stay_plain(geo, tmp_path):
    png = export_array(geo["store"], "area1", "label", tmp_path / "l.png", window=WINDOW)
    npy = export_array(geo["store"], "area1", "label", tmp_path / "l.npy", window=WINDOW)
    assert read_georef(png) is None
    assert np.load(npy).shape == (10, 20)


def test_predict_tif_carries_the_image_georeferencing(geo, tmp_path):
    from npa_train.cli_eval import predict_cmd

    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, tifffile.imread(geo["image"]))
    out = tmp_path / "pred"
    args = [str(geo["image"]), str(plain), "--checkpoint", str(geo["run"]), "--out", str(out)]
    result = CliRunner().invoke(predict_cmd, [*args, "--format", "tif", *FAST])
    assert result.exit_code == 0, result.output
    crs, t, values = _rio(out / "area1_label.tif")
    assert crs == CRS.from_string(UTM32N)
    assert t == T_UTM
    assert values.shape == (1, H, W) and values.max() < 6
    assert read_georef(out / "area1_label.tif") == read_georef(geo["image"])
    # the same image without geotags: the same label map, no georeferencing
    assert read_georef(out / "plain_label.tif") is None
    np.testing.assert_array_equal(tifffile.imread(out / "plain_label.tif"), values[0])
    result = CliRunner().invoke(predict_cmd, [*args, *FAST])  # PNG: plain
    assert result.exit_code == 0, result.output
    assert read_georef(out / "area1_label.png") is None
    np.testing.assert_array_equal(np.asarray(Image.open(out / "area1_label.png")), values[0])


def test_predict_refuses_an_image_with_malformed_geotags_for_tif(geo, tmp_path):
    from npa_train.predict import predict

    bad = tmp_path / "bad.tif"
    tifffile.imwrite(bad, tifffile.imread(geo["image"]),
                     extratags=[(34264, "d", 4, (1.0, 0.0, 0.0, 1.0), True)])  # fmt: skip
    with pytest.raises(InputError, match="bad.tif"):
        predict(geo["run"], [bad], tmp_path / "o", fmt="tif", window=32, device="cpu",
                progress=False)  # fmt: skip
    # PNG outputs do not need the georeferencing, so the tags are not read
    res = predict(geo["run"], [bad], tmp_path / "o", window=32, device="cpu", progress=False)
    assert Path(res[0]["label"]).suffix == ".png"
