"""npa-train fit: run folder contents, poly lr, checkpoint, refusals, and that the loss falls."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner

import npa_train.train as train_mod
from npa_precompute.pipeline import run_precompute
from npa_precompute.presets import ISPRS
from npa_train.cli import main
from npa_train.model import SmallFCN
from npa_train.train import TrainingError, fit, load_checkpoint, poly_lr

WNAME = "k4_log10_L0.5"
DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Two small ISPRS-coded tiles whose image is a noisy function of the label."""
    folder = tmp_path_factory.mktemp("train_cli")
    rng = np.random.default_rng(0)
    palette = np.array((*ISPRS.palette, (0, 0, 0)), dtype=np.uint8)
    colours = rng.integers(0, 256, size=(7, 3))
    (folder / "gts").mkdir()
    (folder / "top").mkdir()
    for tid, (h, w) in {"areaA": (80, 96), "areaB": (64, 64)}.items():
        blocks = rng.integers(0, 7, size=(h // 8, w // 8))
        idx = np.kron(blocks, np.ones((8, 8), dtype=np.int64))
        tifffile.imwrite(folder / "gts" / f"{tid}_noBoundary.tif", palette[idx])
        image = np.clip(colours[idx] + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
        tifffile.imwrite(folder / "top" / f"{tid}.tif", image)
    out = folder / "store.zarr"
    run_precompute([str(folder / "gts")], out, images=[str(folder / "top")], ks="2,4", chunk=16)
    return out


def _read_log(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fit_args(store, out, *extra):
    return ["fit", "--store", str(store), "--out", str(out), "--iters", "10", "--batch", "2",
            "--crop", "32", "--device", "cpu", "--quiet", *extra]  # fmt: skip


def test_fit_writes_log_checkpoint_and_config(store, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, _fit_args(store, out, "--weights", WNAME, "--loss", "npa"))
    assert result.exit_code == 0, result.output
    assert "10 iterations" in result.output

    rows = _read_log(out / "log.csv")
    assert [int(r["iteration"]) for r in rows] == list(range(1, 11))
    for r in rows:
        it = int(r["iteration"]) - 1
        assert float(r["lr"]) == pytest.approx(0.01 * (1 - it / 10) ** 0.9, rel=1e-6)
        assert np.isfinite(float(r["loss"])) and float(r["loss"]) > 0
    assert float(rows[0]["lr"]) == 0.01 and float(rows[-1]["lr"]) == pytest.approx(0.01 * 0.1**0.9)

    config = json.loads((out / "config.json").read_text())
    assert config["weights"] == WNAME and config["loss"] == "npa" and config["iters"] == 10
    assert config["tiles"] == ["areaA", "areaB"] and config["momentum"] == 0.9
    assert config["weight_decay"] == 1e-4

    model, ckpt = load_checkpoint(out)
    assert ckpt["iteration"] == 10 and ckpt["weights"] == WNAME
    assert ckpt["classes"] == list(ISPRS.classes)
    assert (ckpt["in_channels"], ckpt["num_classes"]) == (3, 6)
    assert ckpt["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert ckpt["optimizer"]["param_groups"][0]["weight_decay"] == 1e-4
    assert isinstance(model, SmallFCN)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 20, 28)).shape == (1, 6, 20, 28)


def test_fit_ce_without_weights(store, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, _fit_args(store, out, "--loss", "ce", "--weights", "none"))
    assert result.exit_code == 0, result.output
    assert len(_read_log(out / "log.csv")) == 10
    assert json.loads((out / "config.json").read_text())["weights"] is None


def test_log_every_averages_rows(store, tmp_path):
    out = tmp_path / "run"
    summary = fit(store, out, weights=WNAME, iters=7, batch=1, crop=16, log_every=3,
                  progress=False, device="cpu")  # fmt: skip
    rows = _read_log(out / "log.csv")
    assert [int(r["iteration"]) for r in rows] == [3, 6, 7]
    assert summary["iterations"] == 7


def test_npa_without_weights_lists_available(store, tmp_path):
    result = CliRunner().invoke(main, _fit_args(store, tmp_path / "run", "--loss", "npa"))
    assert result.exit_code != 0
    assert "k2_log10_L0.5" in result.output and WNAME in result.output
    assert not (tmp_path / "run").exists()


def test_unknown_weights_name_lists_available(store, tmp_path):
    result = CliRunner().invoke(main, _fit_args(store, tmp_path / "run", "--weights", "k9_raw"))
    assert result.exit_code != 0
    assert "k9_raw" in result.output and WNAME in result.output


def test_ce_with_weights_name_refused(store, tmp_path):
    result = CliRunner().invoke(main, _fit_args(store, tmp_path / "r", "--loss", "ce", "--weights",
                                                WNAME))  # fmt: skip
    assert result.exit_code != 0 and "--weights none" in result.output


def test_unknown_tile_and_missing_store(store, tmp_path):
    result = CliRunner().invoke(main, _fit_args(store, tmp_path / "r", "--weights", WNAME,
                                                "--tiles", "areaA,nope"))  # fmt: skip
    assert result.exit_code != 0 and "nope" in result.output and "areaB" in result.output
    result = CliRunner().invoke(main, _fit_args(tmp_path / "none.zarr", tmp_path / "r"))
    assert result.exit_code != 0 and "no zarr store" in result.output


def test_existing_run_needs_overwrite(store, tmp_path):
    out = tmp_path / "run"
    args = _fit_args(store, out, "--weights", WNAME, "--iters", "2")
    assert CliRunner().invoke(main, args).exit_code == 0
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "--overwrite" in result.output
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_unavailable_is_a_clear_error(store, tmp_path):
    args = _fit_args(store, tmp_path / "r", "--weights", WNAME)
    args[args.index("--device") + 1] = "cuda"
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "CUDA is not available" in result.output


def test_bad_values_are_named(store, tmp_path):
    cases = [("--iters", "0", "`iters`"), ("--lr", "-1", "`lr`"), ("--workers", "-1", "`workers`"),
             ("--crop", "0", "`crop`")]  # fmt: skip
    for opt, val, name in cases:
        # a repeated option takes its last value
        args = [*_fit_args(store, tmp_path / "r", "--weights", WNAME), opt, val]
        result = CliRunner().invoke(main, args)
        assert result.exit_code != 0 and name in result.output, result.output


def test_same_seed_same_run_and_workers_do_not_change_it(store, tmp_path):
    kw = dict(weights=WNAME, iters=4, batch=2, crop=32, device="cpu", progress=False)
    fit(store, tmp_path / "a", seed=3, **kw)
    fit(store, tmp_path / "b", seed=3, workers=2, **kw)
    fit(store, tmp_path / "c", seed=4, **kw)
    a, b, c = (
        [float(r["loss"]) for r in _read_log(tmp_path / x / "log.csv")] for x in ("a", "b", "c")
    )
    assert a == b
    assert a != c


def test_non_finite_loss_stops_naming_the_iteration(store, tmp_path, monkeypatch):
    class NaNAtThirdCall(SmallFCN):
        calls = 0

        def forward(self, x):
            type(self).calls += 1
            out = super().forward(x)
            return out * float("nan") if type(self).calls == 3 else out

    monkeypatch.setattr(train_mod, "SmallFCN", NaNAtThirdCall)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="iteration 3 of 10"):
        fit(store, out, weights=WNAME, iters=10, batch=1, crop=16, device="cpu", progress=False)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert [int(r["iteration"]) for r in _read_log(out / "log.csv")] == [1, 2]


def test_package_exports():
    import npa_train

    for name in npa_train.__all__:
        assert hasattr(npa_train, name), name


def test_poly_lr():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 100, 100) == 0.0


def test_python_dash_m():
    result = subprocess.run(
        [sys.executable, "-m", "npa_train", "fit", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "--weights" in result.stdout


@pytest.mark.skipif(not (DEMO / "top").is_dir(), reason="demo data missing")
def test_npa_fit_on_demo_lowers_the_loss(tmp_path):
    store = tmp_path / "demo.zarr"
    run_precompute(
        [str(DEMO / "gts_eroded_for_participants")],
        store,
        images=[str(DEMO / "top")],
        ks="32",
        transforms=("log10:L=0.5",),
    )
    summary = fit(store, tmp_path / "run", weights="k32_log10_L0.5", loss="npa", iters=60,
                  batch=4, crop=128, device="cpu", progress=False, seed=0)  # fmt: skip
    losses = [float(r["loss"]) for r in _read_log(tmp_path / "run" / "log.csv")]
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert summary["last_loss"] == pytest.approx(np.mean(losses[-10:]), rel=1e-4)
    assert summary["last_loss"] < 0.7 * summary["first_loss"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fit_on_cuda(store, tmp_path):
    out = tmp_path / "run"
    args = _fit_args(store, out, "--weights", WNAME, "--workers", "2")
    args[args.index("--device") + 1] = "cuda"
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert len(_read_log(out / "log.csv")) == 10
    model, ckpt = load_checkpoint(out)  # loads onto the CPU
    assert ckpt["args"]["device"].startswith("cuda")
    assert next(model.parameters()).device.type == "cpu"
