"""The library owns its defaults: ``npa_train.fit`` and ``npa-train fit`` train the same run
when ``weights`` is left out, and ``fit`` opens the store once and resolves the split once."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner

import npa_train.train as train_module
from npa_precompute.errors import ParameterError
from npa_precompute.pipeline import run_precompute
from npa_precompute.presets import ISPRS
from npa_train.cli import main
from npa_train.config import TrainConfig
from npa_train.train import fit

pytestmark = pytest.mark.usefixtures("one_thread")

KW = dict(iters=2, batch=2, crop=16, device="cpu", progress=False, seed=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Two 40 x 40 ISPRS tiles with k32_log10_L0.5 (and k4)."""
    root = tmp_path_factory.mktemp("defaults")
    palette = np.array((*ISPRS.palette, (0, 0, 0)), dtype=np.uint8)
    rng = np.random.default_rng(2)
    for sub in ("gts", "top"):
        (root / sub).mkdir()
    for tid in ("areaA", "areaB"):
        idx = np.kron(rng.integers(0, 6, size=(5, 5)), np.ones((8, 8), np.int64))
        tifffile.imwrite(root / "gts" / f"{tid}_noBoundary.tif", palette[idx])
        tifffile.imwrite(root / "top" / f"{tid}.tif", rng.integers(0, 256, (40, 40, 3), np.uint8))
    out = root / "store.zarr"
    run_precompute([str(root / "gts")], out, images=[str(root / "top")], ks="4,32", chunk=16)
    return out


def _losses(out: Path) -> list[str]:
    with open(out / "log.csv", newline="") as f:
        return [r["loss"] for r in csv.DictReader(f)]


def test_python_and_cli_train_the_same_run_without_weights(store, tmp_path):
    notes = []
    fit(store, tmp_path / "py", notify=lambda arg, note: notes.append((arg, note)), **KW)
    assert notes == [("weights", "not given: training with k32_log10_L0.5 (k = 32, log10, "
                      "L = 0.5, the paper's best), which the store holds")]  # fmt: skip
    r = CliRunner().invoke(main, ["fit", "--store", str(store), "--out", str(tmp_path / "cli"),
                                  "--iters", "2", "--batch", "2", "--crop", "16", "--seed", "1",
                                  "--device", "cpu", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "--weights not given: training with k32_log10_L0.5" in r.output
    py = json.loads((tmp_path / "py" / "config.json").read_text())
    cli = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert py["weights"] == cli["weights"] == "k32_log10_L0.5"
    assert _losses(tmp_path / "py") == _losses(tmp_path / "cli")
    # the default is the library's: TrainConfig keeps "not given" apart from "none"
    assert TrainConfig(store, "x").weights is None
    assert TrainConfig(store, "x", weights="None").weights == "none"
    with pytest.raises(ParameterError, match="'npa' needs a weights name"):
        fit(store, tmp_path / "none", weights="none", **KW)
    fit(store, tmp_path / "ce", loss="ce", **KW)
    assert json.loads((tmp_path / "ce" / "config.json").read_text())["weights"] is None


class _Stop(Exception):
    pass


@pytest.mark.parametrize("tiles", [{}, {"val_tiles": "areaB"}, {"split": None, "tiles": "areaA"}])
def test_fit_opens_the_store_once_and_resolves_the_split_once(store, tmp_path, monkeypatch,
                                                              tiles):  # fmt: skip
    counts = {"open": 0, "split": 0}
    open_group, resolve_split = zarr.open_group, train_module.resolve_split

    def counting_open(*args, **kwargs):
        counts["open"] += 1
        return open_group(*args, **kwargs)

    def counting_split(*args, **kwargs):
        counts["split"] += 1
        return resolve_split(*args, **kwargs)

    def stop(iteration, lr, loss):
        raise _Stop

    monkeypatch.setattr(zarr, "open_group", counting_open)
    monkeypatch.setattr(train_module, "resolve_split", counting_split)
    with pytest.raises(_Stop):  # stops after the first step: its batch is read
        fit(store, tmp_path / "run", callback=stop, **KW, **tiles)
    assert counts == {"open": 1, "split": 1}
