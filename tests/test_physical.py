"""k in physical units: --k-metres / --gsd (GeoTIFF georeferencing) and NPALoss(k_physical)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from helpers import ISPRS_PALETTE
from rasterio.crs import CRS
from rasterio.transform import Affine

from npa_precompute.cli import main as precompute_main
from npa_precompute.errors import ParameterError
from npa_precompute.regions import k_from_physical
from npa_precompute.store import open_store, open_tile
from npa_train.loss import NPALoss

VAIHINGEN = "vaihingen_crop/gts_eroded_for_participants/top_mosaic_09cm_area1_noBoundary.tif"


def test_round_half_up_of_radius_over_spacing():
    assert k_from_physical(2.88, 0.09) == (32, 32)  # Vaihingen, 9 cm (31.999... in binary)
    assert k_from_physical(2.9, 0.05) == (58, 58)  # Potsdam, 5 cm
    assert k_from_physical(2.88, 0.3) == (10, 10)  # LoveDA, 30 cm: 9.6
    assert k_from_physical(0.25, 0.5) == (1, 1)  # exactly half: up
    assert k_from_physical(0.74, 0.5) == (1, 1) and k_from_physical(0.75, 0.5) == (2, 2)
    assert k_from_physical(10, (5, 0.7, 0.7)) == (2, 14, 14)  # anisotropic CT voxels
    assert k_from_physical((0, 3, 3), (1, 1, 1)) == (0, 3, 3)
    assert k_from_physical(0, 0.09) == (0, 0)


@pytest.mark.parametrize(
    ("size", "spacing", "message"),
    [(1.0, 0.0, "`spacing` must be positive"), (1.0, -0.1, "`spacing` must be positive"),
     (1.0, float("nan"), "`spacing`"), (1.0, (1, 1, 1, 1), "`spacing` must have one value"),
     (0.2, 0.5, "rounds to k = 0 along every axis"), (-1, 0.5, "`k_physical` must be >= 0"),
     ((1, 2), (1, 1, 1), "`k_physical` must have one value per spatial axis")],
)  # fmt: skip
def test_bad_physical_sizes_name_the_argument(size, spacing, message):
    with pytest.raises(ParameterError, match=message):
        k_from_physical(size, spacing, ndim=None if isinstance(spacing, tuple) else 2)


def _affinity(store, k, tile="top_mosaic_09cm_area1"):
    t = open_tile(open_store(store), tile)
    return t.affinity(k)[...]


def test_k_metres_with_gsd_equals_k_32_on_the_vaihingen_crop(shared_data, tmp_path):
    label = str(shared_data / VAIHINGEN)
    runner = CliRunner()
    common = ["--transform", "raw", "--store-weights", "-q"]
    by_k = runner.invoke(precompute_main, ["run", label, "--out", str(tmp_path / "k"),
                                           "--k", "32", *common])  # fmt: skip
    assert by_k.exit_code == 0, by_k.output
    metres = ["--k-metres", "2.88", "--gsd", "0.09"]
    by_m = runner.invoke(precompute_main, ["run", label, "--out", str(tmp_path / "m"),
                                           *metres, *common])  # fmt: skip
    assert by_m.exit_code == 0, by_m.output
    np.testing.assert_array_equal(_affinity(tmp_path / "m", 32), _affinity(tmp_path / "k", 32))
    meta = open_tile(open_store(tmp_path / "m"), "top_mosaic_09cm_area1").meta
    assert meta.params["ks"] == [32]
    assert meta.params["k_physical"] == {
        "unit": "m", "radii": [2.88], "spacing": [0.09, 0.09], "spacing_source": "gsd",
        "ks": [32], "rounding": "half up of radius / spacing",
    }  # fmt: skip
    text = runner.invoke(precompute_main, ["inspect", str(tmp_path / "m")])
    assert text.exit_code == 0, text.output
    assert (
        "k from physical radii at 0.09 x 0.09 m/pixel (gsd, rounded half up): 2.88 m -> k = 32"
        in text.output
    )
    assert "affinity/k32" in text.output
    report = json.loads(
        runner.invoke(precompute_main, ["inspect", str(tmp_path / "m"), "--json"]).output
    )
    assert report["tiles"][0]["k_physical"]["ks"] == [32]
    plain = json.loads(
        runner.invoke(precompute_main, ["inspect", str(tmp_path / "k"), "--json"]).output
    )
    assert plain["tiles"][0]["k_physical"] is None


def _geotiff(path, crs, size):
    rgb = ISPRS_PALETTE[np.random.default_rng(0).integers(0, 6, (40, 50))]
    transform = Affine(size, 0, 500000.0, 0, -size, 5400000.0)
    profile = dict(driver="GTiff", width=50, height=40, count=3, dtype="uint8",
                   crs=CRS.from_string(crs), transform=transform)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    return path


def test_gsd_is_read_from_the_georeferencing(tmp_path):
    label = _geotiff(tmp_path / "area1.tif", "EPSG:32632", 0.05)  # Potsdam-like, UTM metres
    args = [
        "run",
        str(label),
        "--out",
        str(tmp_path / "s"),
        "--k-metres",
        "0.2,2.9",
        "--transform",
        "raw",
        "-q",
    ]
    result = CliRunner().invoke(precompute_main, args)
    assert result.exit_code == 0, result.output
    meta = open_tile(open_store(tmp_path / "s"), "area1").meta
    assert meta.params["ks"] == [4, 58]
    assert meta.params["k_physical"]["spacing_source"] == "georef"
    np.testing.assert_allclose(meta.params["k_physical"]["spacing"], [0.05, 0.05])


def test_geographic_crs_without_gsd_is_refused(tmp_path):
    label = _geotiff(tmp_path / "area1.tif", "EPSG:4326", 1e-6)  # degrees
    runner = CliRunner()
    args = ["run", str(label), "--out", str(tmp_path / "s"), "--k-metres", "2.88", "-q"]
    result = runner.invoke(precompute_main, args)
    assert result.exit_code == 2
    assert "--gsd" in result.output and "geographic CRS" in result.output
    ok = runner.invoke(precompute_main, [*args, "--gsd", "0.09", "--transform", "raw"])
    assert ok.exit_code == 0, ok.output


def test_bad_k_metres_usage(shared_data, tmp_path):
    label = str(shared_data / VAIHINGEN)
    runner = CliRunner()
    out = ["--out", str(tmp_path / "s")]
    no_geo = runner.invoke(precompute_main, ["run", label, *out, "--k-metres", "2.88"])
    assert no_geo.exit_code == 2 and "--gsd" in no_geo.output and "georeferencing" in no_geo.output
    both = runner.invoke(precompute_main, ["run", label, *out, "--k", "8", "--k-metres", "1"])
    assert both.exit_code == 2 and "--k-metres replaces --k" in both.output
    zero = runner.invoke(
        precompute_main, ["run", label, *out, "--k-metres", "0.04", "--gsd", "0.09"]
    )
    assert zero.exit_code == 2 and "--k-metres" in zero.output and "rounds to k = 0" in zero.output
    bad_gsd = runner.invoke(precompute_main, ["run", label, *out, "--k-metres", "1", "--gsd", "0"])
    assert bad_gsd.exit_code == 2 and "--gsd" in bad_gsd.output and "positive" in bad_gsd.output
    lone = runner.invoke(precompute_main, ["run", label, *out, "--gsd", "0.09"])
    assert lone.exit_code == 2 and "--gsd" in lone.output and "only with" in lone.output


def test_npaloss_k_physical_resolves_once():
    assert NPALoss(k_physical=2.88, spacing=0.09).k == 32
    assert NPALoss(k_physical=10, spacing=(5, 0.7, 0.7)).k == (2, 14, 14)
    assert NPALoss(k_physical=(2, 2), spacing=(1, 0.5)).k == (2, 4)
    logits = torch.randn(2, 3, 12, 13)
    target = torch.randint(0, 3, (2, 12, 13))
    by_m = NPALoss(k_physical=0.27, spacing=0.09)(logits, target)
    assert torch.equal(by_m, NPALoss(k=3)(logits, target))
    with pytest.raises(ParameterError, match="`spacing` is needed"):
        NPALoss(k_physical=2.88)
    with pytest.raises(ParameterError, match="`spacing` must be positive"):
        NPALoss(k_physical=2.88, spacing=(0.5, 0, 0.5))
    with pytest.raises(ParameterError, match="`k_physical` replaces `k`"):
        NPALoss(k=8, k_physical=2.88, spacing=0.09)
    with pytest.raises(ParameterError, match="rounds to k = 0"):
        NPALoss(k_physical=(0.1, 0.1, 0.1), spacing=(5, 0.7, 0.7))
    with pytest.raises(ParameterError, match="`spacing` applies only"):
        NPALoss(spacing=0.09)
