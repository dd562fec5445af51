"""``npa-train fit/preview --weights online:...``: weights of the augmented label.

With augmentation off (integer crops) and the margin covering k, online weights are the
store's weights bit for bit, so a fit with them is the same run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_train_store

from npa_precompute import affinity_maps, parse_transform
from npa_precompute.pipeline import run_precompute
from npa_train.augment import AugmentConfig, warp_windows
from npa_train.cli import main
from npa_train.data import StoreCropDataset
from npa_train.train import fit

WNAME = "k4_log10_L0.5"
ONLINE = "online:k4_log10_L0.5"
IGN = 255


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_train_store(tmp_path_factory.mktemp("train_online"))


def _state(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


def _log(out: Path) -> list[list[str]]:
    with open(out / "log.csv", newline="") as f:
        return [row[:4] for row in csv.reader(f)]  # without the seconds


# ---- the dataset -------------------------------------------------------------------------------
@pytest.mark.parametrize("crop", [32, 72])  # 72: larger than the 64 x 64 tile
def test_online_crops_equal_store_crops_without_augmentation(store, crop):
    aug = AugmentConfig.identity(crop)
    a = StoreCropDataset(store, WNAME, augment=aug, seed=1, length=40)
    b = StoreCropDataset(store, ONLINE, augment=aug, seed=1, length=40)
    assert b.margin == 4 and b.store_weights is None and a.margin == 0
    # crops whose k-margin reaches beyond the tile are among them (the tile's edge is
    # repeated there, as Eq. 1 pads the whole tile)
    at_border = 0
    for i in range(40):
        p = b.sample_params(i)
        y0, y1, x0, x1 = p.window(b.shapes[p.tile_index])
        h, w = b.shapes[p.tile_index]
        at_border += min(y0, x0, h - y1, w - x1) < 4
    assert at_border >= 5
    for i in range(40):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]), i
        assert torch.equal(x["label"], y["label"]), i
        assert torch.equal(x["weight"], y["weight"]), i  # bit for bit, border crops too


def test_online_crops_with_mirrors_and_transposes_equal_store_crops(store):
    aug = AugmentConfig.identity(32, hflip=True, vflip=True, transpose=True)
    a = StoreCropDataset(store, WNAME, augment=aug, seed=2, length=30)
    b = StoreCropDataset(store, ONLINE, augment=aug, seed=2, length=30)
    for i in range(30):
        assert torch.equal(a[i]["weight"], b[i]["weight"]), i


def test_window_mode_equals_crop_mode(store):
    for aug in (AugmentConfig.identity(32), AugmentConfig(crop=32)):
        crop_ds = StoreCropDataset(store, ONLINE, augment=aug, seed=3, length=12)
        win_ds = StoreCropDataset(store, ONLINE, augment=aug, seed=3, length=12, output="window")
        out = win_ds.warp(win_ds.collate([win_ds[i] for i in range(6)]), "cpu")
        for i in range(6):
            ref = crop_ds[i]
            assert torch.equal(out["label"][i], ref["label"])
            torch.testing.assert_close(out["weight"][i], ref["weight"])


def test_augmented_online_weights_are_those_of_the_grown_label(store):
    """Under the full augmentation: the weights are Eq. 1 + transform of the resampled
    label grown by k, cut to the crop; its interior is the crop's label."""
    ds = StoreCropDataset(store, ONLINE, augment=AugmentConfig(crop=32), seed=4, length=20,
                          output="window")  # fmt: skip
    k, transform = ds.online.k, ds.online.transform  # a WeightsSpec
    items = [ds[i] for i in range(8)]
    batch = ds.collate(items)
    out = ds.warp(batch, "cpu")
    kw = dict(mean=ds.mean_table, std=ds.std_table, crop=ds.crop, ignore_index=IGN)
    grown = warp_windows(batch, margin=k, **kw)["label_margin"]
    assert grown.shape == (8, 32 + 2 * k, 32 + 2 * k)
    for i in range(8):
        lab = out["label"][i].numpy()
        inner = grown[i, k:-k, k:-k].numpy()
        inside = lab != IGN
        assert np.array_equal(lab[inside], inner[inside])
        counts = affinity_maps(grown[i].numpy(), k)[0][k:-k, k:-k]
        want = transform.apply(counts, ~inside)
        np.testing.assert_array_equal(out["weight"][i].numpy(), want)


def test_online_spec_errors(store):
    with pytest.raises(ValueError, match="online"):
        StoreCropDataset(store, "online:k4_sqrt_L1")
    with pytest.raises(ValueError, match="online"):
        StoreCropDataset(store, "online:")


# ---- fit ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("warp_on", ["loader", "device"])
def test_fit_online_equals_fit_store_without_augmentation(store, tmp_path, warp_on):
    kw = dict(loss="npa", iters=6, batch=2, crop=32, augment=False, device="cpu", seed=5,
              progress=False, warp_on=warp_on)  # fmt: skip
    a = fit(store, tmp_path / "store", weights=WNAME, **kw)
    b = fit(store, tmp_path / "online", weights=ONLINE, **kw)
    assert a["last_loss"] == b["last_loss"]
    assert _log(tmp_path / "store") == _log(tmp_path / "online")
    sa, sb = _state(tmp_path / "store"), _state(tmp_path / "online")
    assert all(torch.equal(sa[key], sb[key]) for key in sa)
    config = json.loads((tmp_path / "online" / "config.json").read_text())
    assert config["weights"] == ONLINE


def test_fit_and_preview_cli_with_online_weights(store, tmp_path):
    out = tmp_path / "run"
    args = ["fit", "--store", str(store), "--out", str(out), "--iters", "4", "--batch", "2",
            "--crop", "32", "--device", "cpu", "--quiet", "--weights", ONLINE]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "4 iterations" in result.output
    rows = _log(out)[1:]
    assert len(rows) == 4 and all(np.isfinite(float(r[2])) for r in rows)
    # --resume checks the weights spec like any other setting
    result = CliRunner().invoke(main, [*args[:-1], "k4_log10_L0.5", "--resume"])
    assert result.exit_code != 0 and "weights" in result.output

    prev = tmp_path / "preview"
    result = CliRunner().invoke(main, ["preview", "--store", str(store), "--weights", ONLINE,
                                       "--n", "3", "--crop", "32", "--out", str(prev)])  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads((prev / "preview.json").read_text())
    assert meta["weights"] == ONLINE and len(meta["samples"]) == 3
    w = np.load(prev / "000_weight.npy")
    lab = np.load(prev / "000_label.npy")
    assert np.all(w[lab == IGN] == 0) and np.all(w[lab != IGN] >= 0.5)

    bad = CliRunner().invoke(main, ["fit", "--store", str(store), "--out", str(tmp_path / "x"),
                                    "--weights", "online:k4_sqrt", "--iters", "1",
                                    "--device", "cpu"])  # fmt: skip
    assert bad.exit_code != 0 and "online" in bad.output
    missing = CliRunner().invoke(main, ["fit", "--store", str(store), "--out",
                                        str(tmp_path / "y"), "--device", "cpu"])  # fmt: skip
    assert missing.exit_code != 0 and "online:k32_log10_L0.5" in missing.output


def test_fit_online_on_the_real_crop(shared_data, tmp_path):
    labels = shared_data / "vaihingen_crop" / "gts_eroded_for_participants"
    images = shared_data / "vaihingen_crop" / "top"
    st = tmp_path / "store.zarr"
    run_precompute([str(labels)], st, images=[str(images)], ks="8",
                   transforms=("log10:L=0.5",))  # fmt: skip
    out = tmp_path / "fit"
    summary = fit(st, out, weights="online:k32_log10_L0.5", loss="npa", iters=3, batch=2,
                  crop=160, device="cpu", seed=0, progress=False)  # fmt: skip
    assert summary["iterations"] == 3 and np.isfinite(summary["last_loss"])
    # the weights of one augmented crop are exact Eq. 1 of its grown label
    ds = StoreCropDataset(st, "online:k32_log10_L0.5", crop=160, seed=0, length=4,
                          output="window")  # fmt: skip
    batch = ds.collate([ds[i] for i in range(2)])
    out_b = ds.warp(batch, "cpu")
    kw = dict(mean=ds.mean_table, std=ds.std_table, crop=ds.crop, ignore_index=IGN)
    grown = warp_windows(batch, margin=32, **kw)["label_margin"]
    for i in range(2):
        counts = affinity_maps(grown[i].numpy(), 32)[0][32:-32, 32:-32]
        lab = out_b["label"][i].numpy()
        want = parse_transform("log10:L=0.5").apply(counts, lab == IGN)
        np.testing.assert_array_equal(out_b["weight"][i].numpy(), want)
