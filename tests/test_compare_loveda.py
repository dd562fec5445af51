"""LoveDA's background is a real scored class (its preset's foreground holds every class):
the trainer records it in classes_in_mean and compare shows it, while ISPRS clutter stays
out (issue: one definition of clutter, from the preset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from npa_precompute.pipeline import run_precompute
from npa_precompute.presets import LOVEDA
from npa_train.compare import compare, load_result
from npa_train.train import fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def loveda_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loveda")
    rng = np.random.default_rng(3)
    for sub in ("masks", "images"):
        (root / sub).mkdir()
    for tid in ("t1", "t2"):
        raw = np.kron(rng.integers(1, 8, size=(5, 5)), np.ones((8, 8), np.int64)).astype(np.uint8)
        tifffile.imwrite(root / "masks" / f"{tid}.tif", raw)  # 1 background ... 7 agriculture
        tifffile.imwrite(
            root / "images" / f"{tid}.tif", rng.integers(0, 256, (40, 40, 3), np.uint8)
        )
    store = root / "store.zarr"
    run_precompute([str(root / "masks")], store, images=[str(root / "images")], ks="4",
                   chunk=16, preset="loveda")  # fmt: skip
    out = root / "run"
    fit(store, out, weights="k4_log10_L0.5", val_tiles="t2", val_every=2, iters=2, batch=2,
        crop=16, device="cpu", progress=False)  # fmt: skip
    return out


def test_loveda_background_is_in_the_means_and_the_compare_table(loveda_run, tmp_path):
    config = json.loads((loveda_run / "config.json").read_text())
    assert config["classes_in_mean"] == list(LOVEDA.classes)  # background first
    assert config["run_record_schema"] == 1
    scores = load_result(loveda_run)["scores"]
    assert scores["classes_in_mean"] == list(LOVEDA.classes)
    result = compare([loveda_run], tmp_path / "cmp")
    header = result["markdown"].splitlines()[0].split(" | ")
    assert header[3 : 3 + 7] == list(LOVEDA.classes)
    assert result["summary"]["classes"] == list(LOVEDA.classes)


def test_a_record_without_classes_in_mean_keeps_loveda_background(loveda_run, tmp_path):
    # a run folder written before classes_in_mean was recorded (schema 0)
    old = tmp_path / "old"
    old.mkdir()
    config = json.loads((loveda_run / "config.json").read_text())
    for key in ("classes_in_mean", "run_record_schema"):
        config.pop(key)
    (old / "config.json").write_text(json.dumps(config))
    (old / "val.csv").write_text((loveda_run / "val.csv").read_text())
    assert load_result(old)["scores"]["classes_in_mean"] == list(LOVEDA.classes)
