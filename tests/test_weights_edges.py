"""Weights at the edges (issue "Nothing lost in the seams", items 6 and 7).

* Derived weights a float16 store cannot hold (``k130_raw``, ``k130_norm_L70000``) are
  refused on every derived path with the range check ``run`` applies, naming the weights
  and the limit, and reported against the option that named them.
* Online weights: k = 0 trains; a halo that cannot fit is a usage error on ``--weights``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_train_store

from npa_precompute.cli import main as precompute_main
from npa_precompute.derived import derive, open_weights
from npa_precompute.export import export_array
from npa_precompute.pipeline import run_precompute
from npa_precompute.store import open_store, open_tile
from npa_precompute.summary import inspect_store
from npa_precompute.transforms import WeightRangeError
from npa_train.cli import main as train_main
from npa_train.data import MAX_GROWN_PIXELS, StoreCropDataset, write_preview

pytestmark = pytest.mark.usefixtures("one_thread")

OVERFLOWING = ["k130_raw", "k130_norm_L70000", "ms_k2-130_norm_L70000"]


@pytest.fixture(scope="module")
def half_store(tmp_path_factory) -> Path:
    """A float16 store with the counts of k = 2 and 130 and images (one 40 x 48 tile)."""
    import tifffile

    root = tmp_path_factory.mktemp("half")
    rng = np.random.default_rng(1)
    idx = np.kron(rng.integers(0, 6, size=(5, 6)), np.ones((8, 8), dtype=np.int64))
    palette = np.array([(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0),
                        (255, 255, 0), (255, 0, 0)], dtype=np.uint8)  # fmt: skip
    (root / "gts").mkdir()
    (root / "top").mkdir()
    tifffile.imwrite(root / "gts" / "areaA_noBoundary.tif", palette[idx])
    tifffile.imwrite(root / "top" / "areaA.tif", rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    out = root / "half.zarr"
    run_precompute([str(root / "gts")], out, images=[str(root / "top")], ks="2,130",
                   weight_dtype="float16", chunk=16)  # fmt: skip
    return out


def _tile(store: Path) -> str:
    return next(iter(open_store(store)["tiles"].group_keys()))


@pytest.mark.parametrize("name", OVERFLOWING)
def test_every_derived_path_refuses_float16_overflow(half_store, tmp_path, name):
    tile = _tile(half_store)
    limit = "65504"
    with pytest.raises(WeightRangeError, match=limit) as info:
        open_weights(half_store, tile, name)
    assert name in str(info.value) and info.value.param == "weights"
    with pytest.raises(WeightRangeError, match=limit):
        open_tile(open_store(half_store), tile).weights(name)
    with pytest.raises(WeightRangeError, match=limit):
        export_array(half_store, tile, name, tmp_path / "w.npy")
    assert not (tmp_path / "w.npy").exists()
    with pytest.raises(WeightRangeError, match=limit):
        inspect_store(half_store, tile, weights=[name])
    with pytest.raises(WeightRangeError, match=limit):
        StoreCropDataset(half_store, name, crop=16)
    with pytest.raises(WeightRangeError, match=limit):
        write_preview(half_store, name, 1, tmp_path / "preview", crop=16)
    counts = np.zeros((4, 4), dtype=np.uint32)
    with pytest.raises(WeightRangeError, match=limit):
        derive(name, {2: counts, 130: counts}, counts, ignore_index=255, dtype="float16")
    # what fits is derived as before: the mean over k = 2 and 130 of raw counts fits float16
    assert open_weights(half_store, tile, "k2_raw").dtype == np.float16
    ms = open_weights(half_store, tile, "ms_k2-130_raw")[...]
    assert ms.dtype == np.float16 and np.isfinite(ms).all() and ms.max() > 2048


def test_the_commands_report_the_overflow_against_their_option(half_store, tmp_path):
    tile = _tile(half_store)
    runner = CliRunner()
    cases = [
        (precompute_main, ["export", str(half_store), "--tile", tile, "--array", "k130_raw",
                           "--out", str(tmp_path / "w.npy")], "'--array'"),
        (precompute_main, ["inspect", str(half_store), "--weights", "k130_raw"], "'--weights'"),
        (precompute_main, ["show", str(half_store), "--tile", tile, "--arrays", "k130_raw",
                           "--out", str(tmp_path / "f.png"), "--backend", "pillow"],
         "'--arrays'"),
        (train_main, ["fit", "--store", str(half_store), "--out", str(tmp_path / "run"),
                      "--weights", "k130_norm_L70000", "--iters", "1", "--crop", "16",
                      "--device", "cpu", "--quiet"], "'--weights'"),
        (train_main, ["preview", "--store", str(half_store), "--weights", "k130_raw", "--n",
                      "1", "--crop", "16", "--out", str(tmp_path / "p")], "'--weights'"),
    ]  # fmt: skip
    for main, args, option in cases:
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        out = " ".join(result.output.split())
        assert option in out and "65504" in out and "cannot be derived" in out, out
    assert not (tmp_path / "w.npy").exists() and not (tmp_path / "run" / "log.csv").exists()


# ---- online weights at the edges of k ----------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_train_store(tmp_path_factory.mktemp("edges"))


@pytest.mark.parametrize("output", ["crop", "window"])
def test_online_k0_weights_are_the_margin(store, output):
    ds = StoreCropDataset(store, "online:k0_log10_L0.5", crop=24, length=4, output=output)
    if output == "window":
        batch = ds.warp(ds.collate([ds[i] for i in range(2)]), "cpu")
        label, weight = batch["label"], batch["weight"]
    else:
        item = ds[0]
        label, weight = item["label"], item["weight"]
    # k = 0: a window of one pixel holds one class, A = 0, log10(0 + 10**0.5) = 0.5
    assert torch.equal(weight, torch.where(label == 255, 0.0, 0.5).to(torch.float32))


def test_fit_with_online_k0(store, tmp_path):
    result = CliRunner().invoke(train_main, [
        "fit", "--store", str(store), "--out", str(tmp_path / "run"), "--iters", "2",
        "--batch", "2", "--crop", "24", "--device", "cpu", "--quiet",
        "--weights", "online:k0_log10_L0.5"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_halo_that_cannot_fit_is_a_usage_error(store, tmp_path):
    with pytest.raises(ValueError, match="k <= 3839") as info:
        StoreCropDataset(store, "online:k1000000_log10_L0.5", crop=513)
    assert info.value.param == "weights" and str(MAX_GROWN_PIXELS) in str(info.value)
    # the largest halo that fits is accepted
    StoreCropDataset(store, "online:k3839_log10_L0.5", crop=513, length=1)
    result = CliRunner().invoke(train_main, [
        "fit", "--store", str(store), "--out", str(tmp_path / "run"), "--iters", "1",
        "--crop", "32", "--device", "cpu", "--weights", "online:k1000000_log10_L0.5"])  # fmt: skip
    out = " ".join(result.output.split())
    assert result.exit_code == 2 and "'--weights'" in out and "k <= 4080" in out, out
