"""What evaluate and predict check about the data they are given: the image dtype the
checkpoint was trained on, the tiles it was trained and validated on, and a clean run
on a PNG (no warning from torch)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner
from PIL import Image

from npa_precompute.pipeline import run_precompute
from npa_precompute.presets import ISPRS
from npa_train.checkpoint import CheckpointError, load_model
from npa_train.cli import main
from npa_train.evaluate import evaluate
from npa_train.predict import predict

PALETTE = np.array((*ISPRS.palette, (0, 0, 0)), dtype=np.uint8)
FAST = ["--window", "32", "--overlap", "0", "--batch", "8", "--device", "cpu", "-q"]


def _store(folder: Path, dtype) -> Path:
    """Two ISPRS-coded tiles (areaA 48x40, areaB 32x32), images of ``dtype``."""
    rng = np.random.default_rng(0)
    for sub in ("gts", "top"):
        (folder / sub).mkdir(parents=True)
    for tid, (h, w) in {"areaA": (48, 40), "areaB": (32, 32)}.items():
        idx = np.kron(rng.integers(0, 6, size=(h // 8, w // 8)), np.ones((8, 8), np.int64))
        tifffile.imwrite(folder / "gts" / f"{tid}_noBoundary.tif", PALETTE[idx])
        image = rng.integers(0, 256, size=(h, w, 3))
        if dtype == np.uint16:
            image = image * 257  # the full 16-bit range
        tifffile.imwrite(folder / "top" / f"{tid}.tif", image.astype(dtype))
    store = folder / "store.zarr"
    run_precompute([str(folder / "gts")], store, images=[str(folder / "top")], ks="2", chunk=16)
    return store


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """A uint8 and a uint16 store, a checkpoint of each validated on areaB, and a uint8
    checkpoint trained on every tile."""
    from npa_train.train import fit

    root = tmp_path_factory.mktemp("eval_checks")
    out = {}
    for name, dtype in (("u8", np.uint8), ("u16", np.uint16)):
        store = _store(root / name, dtype)
        run = root / name / "run"
        fit(store, run, loss="ce", iters=1, batch=2, crop=16, val_tiles="areaB", device="cpu",
            progress=False)  # fmt: skip
        out[name] = {"store": store, "run": run, "folder": root / name}
    fit(out["u8"]["store"], root / "all", loss="ce", iters=1, batch=2, crop=16, device="cpu",
        progress=False)  # fmt: skip
    out["all"] = root / "all"
    return out


def _invoke(args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


# -- defect 6: the image dtype ----------------------------------------------------------------


def test_fit_records_the_image_dtype(runs):
    for name, dtype in (("u8", "uint8"), ("u16", "uint16")):
        config = json.loads((runs[name]["run"] / "config.json").read_text())
        assert config["image_dtype"] == dtype
        assert load_model(runs[name]["run"], device="cpu")[1].image_dtype == dtype
    assert max(json.loads((runs["u16"]["run"] / "config.json").read_text())["image_mean"]) > 255


def test_predict_refuses_a_uint8_image_for_a_uint16_checkpoint(runs, tmp_path):
    image = runs["u8"]["folder"] / "top" / "areaA.tif"
    out = tmp_path / "pred"
    r = _invoke(["predict", image, "--checkpoint", runs["u16"]["run"], "--out", out, *FAST])
    assert r.exit_code == 1, r.output
    assert f"{image} is uint8" in r.output and "trained on uint16 images" in r.output
    assert not out.exists()  # refused before anything is written
    with pytest.raises(CheckpointError, match="is uint8, but checkpoint .* uint16 images"):
        predict(runs["u16"]["run"], image, out, window=32, device="cpu", progress=False)
    # the same image with the checkpoint of its dtype
    r = _invoke(["predict", image, "--checkpoint", runs["u8"]["run"], "--out", out, *FAST])
    assert r.exit_code == 0, r.output
    assert np.asarray(Image.open(out / "areaA_label.png")).shape == (48, 40)


def test_predict_uint16_image_for_a_uint8_checkpoint(runs, tmp_path):
    wide = runs["u16"]["folder"] / "top" / "areaA.tif"  # values up to 65535
    r = _invoke(["predict", wide, "--checkpoint", runs["u8"]["run"], "--out", tmp_path, *FAST])
    assert r.exit_code == 1
    assert "is uint16 with values up to" in r.output and "trained on uint8 images" in r.output
    # 8-bit data in a 16-bit file: the same values, taken with a warning
    narrow = tmp_path / "narrow.tif"
    tifffile.imwrite(narrow, tifffile.imread(runs["u8"]["folder"] / "top" / "areaA.tif")
                     .astype(np.uint16))  # fmt: skip
    with pytest.warns(UserWarning, match=r"values are all below 256 \(max \d+\)"):
        predict(runs["u8"]["run"], narrow, tmp_path / "n", window=32, device="cpu",
                progress=False)  # fmt: skip
    predict(runs["u8"]["run"], runs["u8"]["folder"] / "top" / "areaA.tif", tmp_path / "e",
            window=32, device="cpu", progress=False)  # fmt: skip
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "n" / "narrow_label.png")),
        np.asarray(Image.open(tmp_path / "e" / "areaA_label.png")),
    )


def test_a_checkpoint_without_the_dtype_is_checked_by_its_mean(runs, tmp_path):
    ckpt = torch.load(runs["u16"]["run"] / "checkpoint.pt", map_location="cpu", weights_only=True)
    del ckpt["config"]["image_dtype"]  # as written before the dtype was recorded
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    image = runs["u8"]["folder"] / "top" / "areaA.tif"
    with pytest.raises(CheckpointError, match="is uint8, but checkpoint .* uint16 images"):
        predict(old, image, tmp_path / "p", window=32, device="cpu", progress=False)


def test_evaluate_refuses_a_store_of_another_dtype(runs, tmp_path):
    with pytest.raises(CheckpointError, match=r"store .* is uint8, but checkpoint .* uint16"):
        evaluate(runs["u8"]["store"], runs["u16"]["run"], None, window=32, device="cpu",
                 progress=False)  # fmt: skip


# -- defect 8: the tiles evaluate scores ------------------------------------------------------


def test_evaluate_defaults_to_the_checkpoints_validation_tiles(runs, tmp_path):
    out = tmp_path / "eval"
    args = ["evaluate", "--store", runs["u8"]["store"], "--checkpoint", runs["u8"]["run"],
            "--out", out, *FAST]  # fmt: skip
    r = _invoke(args)
    assert r.exit_code == 0, r.output
    assert "1 tile(s) (the checkpoint's validation tiles)" in r.output
    assert "Warning" not in r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tiles"] == ["areaB"] and metrics["tiles_from"] == "val_tiles"
    assert metrics["training_tiles"] == []
    assert "areaB (the checkpoint's validation tiles)" in (out / "metrics.md").read_text()
    assert not (out / "areaA_label.png").exists()


def test_evaluate_warns_when_it_scores_training_tiles(runs, tmp_path):
    store = runs["u8"]["store"]
    with pytest.warns(UserWarning, match=r"tile\(s\) areaA of .* are training tiles of "
                      r"checkpoint .*its validation tiles are areaB"):  # fmt: skip
        result = evaluate(store, runs["u8"]["run"], tmp_path / "a", tiles="areaA", window=32,
                          device="cpu", progress=False)  # fmt: skip
    assert result["tiles_from"] == "given" and result["training_tiles"] == ["areaA"]
    assert "training tiles of the model: areaA" in (tmp_path / "a" / "metrics.md").read_text()
    # a run without --val-tiles trained on every tile: evaluating them all warns
    r = _invoke(["evaluate", "--store", store, "--checkpoint", runs["all"], "--out",
                 tmp_path / "b", *FAST])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "Warning: tile(s) areaA, areaB of" in r.output and "--val-tiles" in r.output
    # the validation tile alone: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(store, runs["u8"]["run"], None, tiles="areaB", window=32, device="cpu",
                 progress=False)  # fmt: skip


def test_evaluate_on_a_store_without_the_validation_tiles(runs, tmp_path):
    ckpt = torch.load(runs["u8"]["run"] / "checkpoint.pt", map_location="cpu", weights_only=True)
    ckpt["config"]["val_tiles"] = ["elsewhere"]
    moved = tmp_path / "moved.pt"
    torch.save(ckpt, moved)
    with pytest.warns(UserWarning, match="lacks elsewhere: evaluating every tile"):
        result = evaluate(runs["u8"]["store"], moved, None, window=32, device="cpu",
                          progress=False)  # fmt: skip
    assert result["tiles"] == ["areaA", "areaB"] and result["tiles_from"] == "store"


# -- defect 9: predict on a PNG ---------------------------------------------------------------


def test_predict_on_a_png_prints_no_torch_warning(runs, tmp_path):
    # Pillow's arrays are read-only; torch warns once per process about them, so the CLI
    # runs in a fresh process
    png = tmp_path / "tile.png"
    Image.fromarray(tifffile.imread(runs["u8"]["folder"] / "top" / "areaA.tif")).save(png)
    r = subprocess.run(
        [sys.executable, "-m", "npa_train", "predict", str(png), "--checkpoint",
         str(runs["u8"]["run"]), "--out", str(tmp_path / "o"), *FAST],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "not writable" not in r.stderr and "Warning" not in r.stderr, r.stderr
    assert (tmp_path / "o" / "tile_label.png").is_file()
