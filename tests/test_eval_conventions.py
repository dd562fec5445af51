"""Scoring conventions side by side: clutter in/out of the means and eroded vs full ground
truth (evaluate --full-gt), against hand-computed confusion matrices."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner

from npa_precompute.errors import ParameterError
from npa_precompute.pipeline import run_precompute
from npa_precompute.presets import ISPRS, LOVEDA
from npa_train.cli_eval import evaluate_cmd
from npa_train.evaluate import evaluate_model, format_table
from npa_train.metrics import clutter_classes, means_by_clutter
from npa_train.predict import ModelInfo

# -- clutter in and out of the means, on a hand-made confusion matrix ----------------------------

CM = np.array([[8, 2, 0], [1, 5, 1], [0, 3, 2]])  # ground truth in rows: a, b, clutter


def test_means_with_and_without_clutter_by_hand():
    m = means_by_clutter(CM, [2], classes=["a", "b", "clutter"])
    f1 = {"a": 16 / 19, "b": 10 / 17, "clutter": 4 / 8}  # 2 TP / (support + predicted)
    iou = {"a": 8 / 11, "b": 5 / 12, "clutter": 2 / 6}  # TP / (support + predicted - TP)
    assert m["clutter"] == ["clutter"]
    assert m["without_clutter"]["classes"] == ["a", "b"]
    assert m["without_clutter"]["mF1"] == pytest.approx((f1["a"] + f1["b"]) / 2)
    assert m["without_clutter"]["mIoU"] == pytest.approx((iou["a"] + iou["b"]) / 2)
    assert m["with_clutter"]["classes"] == ["a", "b", "clutter"]
    assert m["with_clutter"]["mF1"] == pytest.approx(sum(f1.values()) / 3)
    assert m["with_clutter"]["mIoU"] == pytest.approx(sum(iou.values()) / 3)
    same = means_by_clutter(CM, [], classes=["a", "b", "c"])
    assert same["with_clutter"] == same["without_clutter"]
    with pytest.raises(ValueError, match="outside"):
        means_by_clutter(CM, [3])


def test_clutter_classes_are_those_outside_the_preset_foreground():
    # one definition, the preset's (issue 19.5): no class is clutter by its name alone
    assert clutter_classes(ISPRS.classes, ISPRS.foreground) == [5]
    assert clutter_classes(LOVEDA.classes, range(LOVEDA.num_classes)) == []  # background scored
    assert clutter_classes(["a", "Clutter", "b"]) == []
    assert clutter_classes(["a", "b", "c"], foreground=[0, 2]) == [1]
    assert clutter_classes(["a", "b"]) == []


# -- eroded vs full ground truth through evaluate ----------------------------------------------

H = W = 16
# image colours per class, far apart; the model below picks the nearest
COLOURS = np.array([[200, 200, 200], [30, 30, 220], [40, 220, 220], [30, 160, 30],
                    [230, 230, 20], [220, 30, 30]], dtype=np.float64)  # fmt: skip
PALETTE = np.array((*ISPRS.palette, (0, 0, 0)), dtype=np.uint8)  # 6 -> black = ignore


class NearestColour(torch.nn.Module):
    def __init__(self, mean, std) -> None:
        super().__init__()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.colours = torch.tensor(COLOURS, dtype=torch.float32)

    def forward(self, x):
        raw = x * self.std + self.mean
        return -((raw[:, None] - self.colours[None, :, :, None, None]) ** 2).sum(dim=2) / 100


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict:
    """One 16×16 tile: impervious (columns 0–7) | building (8–15) with a clutter block
    (rows 0–3, columns 12–15). Eroded ground truth: columns 7 and 8 ignore. The image
    shows column 8 in the impervious colour, so a perfect colour model errs there."""
    folder = tmp_path_factory.mktemp("conventions")
    full = np.zeros((H, W), np.int64)
    full[:, 8:] = 1
    full[:4, 12:] = 5
    eroded = full.copy()
    eroded[:, 7:9] = 6
    seen = full.copy()
    seen[:, 8] = 0
    for name, label in (("eroded", eroded), ("full", full)):
        (folder / name).mkdir()
        tifffile.imwrite(folder / name / "area1.tif", PALETTE[label])
    (folder / "top").mkdir()
    tifffile.imwrite(folder / "top" / "area1.tif", COLOURS[seen].astype(np.uint8))
    kw = {"images": [str(folder / "top")], "ks": "2", "chunk": 16}
    run_precompute([str(folder / "eroded")], folder / "eroded.zarr", **kw)
    run_precompute([str(folder / "full")], folder / "full.zarr", **kw)
    (folder / "other").mkdir()
    tifffile.imwrite(folder / "other" / "area2.tif", PALETTE[full])
    run_precompute([str(folder / "other")], folder / "other.zarr", ks="2", chunk=16)
    return {"folder": folder, "eroded": folder / "eroded.zarr", "full": folder / "full.zarr",
            "other": folder / "other.zarr"}  # fmt: skip


def _model():
    info = ModelInfo(
        classes=ISPRS.classes, num_classes=6, in_channels=3, ignore_index=255,
        image_mean=(120.0, 120.0, 120.0), image_std=(60.0, 60.0, 60.0), name="oracle",
    )  # fmt: skip
    return NearestColour(info.image_mean, info.image_std), info


def test_eroded_and_full_ground_truth_side_by_side(stores, tmp_path):
    model, info = _model()
    out = tmp_path / "eval"
    r = evaluate_model(stores["eroded"], model, info, out, window=16, overlap=0,
                       progress=False, full_gt=stores["full"])  # fmt: skip
    # eroded: the ignore band covers the wrong column; 112 impervious, 96 building and 16
    # clutter pixels, all right
    cm = np.zeros((6, 6), int)
    cm[0, 0], cm[1, 1], cm[5, 5] = 112, 96, 16
    assert np.array_equal(r["confusion_matrix"], cm)
    assert r["ignored_pixels"] == 32 and r["OA"] == 1.0
    assert r["means"]["without_clutter"]["mF1"] == 1.0
    assert r["means"]["with_clutter"]["mF1"] == 1.0
    # full: column 7 impervious (right), column 8 building predicted impervious (16 wrong)
    full = r["full_gt"]
    cm = np.zeros((6, 6), int)
    cm[0, 0], cm[1, 0], cm[1, 1], cm[5, 5] = 128, 16, 96, 16
    assert np.array_equal(full["confusion_matrix"], cm)
    assert full["ignored_pixels"] == 0 and full["OA"] == pytest.approx(240 / 256)
    f1_imp, f1_bld = 256 / (128 + 144), 192 / (112 + 96)
    iou_imp, iou_bld = 128 / 144, 96 / 112
    assert full["per_class"]["impervious surfaces"]["f1"] == pytest.approx(f1_imp)
    assert full["per_class"]["building"]["f1"] == pytest.approx(f1_bld)
    # low vegetation, tree, car: absent from both sides, left out of the means
    assert full["mF1"] == pytest.approx((f1_imp + f1_bld) / 2)
    wo, wi = full["means"]["without_clutter"], full["means"]["with_clutter"]
    assert wo["mF1"] == pytest.approx((f1_imp + f1_bld) / 2)
    assert wo["mIoU"] == pytest.approx((iou_imp + iou_bld) / 2)
    assert wi["mF1"] == pytest.approx((f1_imp + f1_bld + 1) / 3)
    assert wi["mIoU"] == pytest.approx((iou_imp + iou_bld + 1) / 3)
    assert len(wi["classes"]) == 6 and "clutter/background" not in wo["classes"]
    # written: metrics.json (null for undefined) and labelled tables in metrics.md
    written = json.loads((out / "metrics.json").read_text())
    assert written["full_gt"]["mF1"] == pytest.approx(full["mF1"])
    assert written["means"]["with_clutter"]["mIoU"] == 1.0
    md = (out / "metrics.md").read_text()
    assert md == format_table(r)
    assert "| store eroded.zarr | 32 (12.5 %) | out (5) | 100.00 | 100.00 | 100.00 |" in md
    assert "| full GT full.zarr (--full-gt) | 0 (0.0 %) | out (5) | 93.21 | 87.30 | 93.75 |" in md
    assert "| full GT full.zarr (--full-gt) | 0 (0.0 %) | in (6) | 95.48 | 91.53 | 93.75 |" in md
    assert "Full ground truth (--full-gt" in md and "| oracle | 94.12 | 92.31 | – |" in md


def test_without_full_gt_the_means_are_still_reported(stores):
    model, info = _model()
    r = evaluate_model(stores["full"], model, info, None, window=16, overlap=0, progress=False)
    assert "full_gt" not in r and r["ignored_pixels"] == 0
    assert r["means"]["clutter"] == ["clutter/background"]
    assert "full GT" not in format_table(r) and "| store full.zarr |" in format_table(r)


@pytest.mark.filterwarnings("ignore:tile\\(s\\) area1 .* are training tiles")
def test_full_gt_refusals_name_the_option(stores, tmp_path):
    model, info = _model()
    kw = {"window": 16, "overlap": 0, "progress": False}
    with pytest.raises(ParameterError, match="tile area1") as exc:
        evaluate_model(stores["eroded"], model, info, None, full_gt=stores["other"], **kw)
    assert exc.value.param == "full_gt"
    with pytest.raises(ParameterError, match="cannot read store"):
        evaluate_model(stores["eroded"], model, info, None, full_gt=tmp_path / "nope", **kw)
    from npa_train.train import fit

    run = tmp_path / "run"
    fit(stores["eroded"], run, weights=None, loss="ce", iters=1, batch=1, crop=16,
        device="cpu", progress=False)  # fmt: skip
    args = ["--store", stores["eroded"], "--checkpoint", run, "--out", tmp_path / "o",
            "--window", "16", "--overlap", "0", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(evaluate_cmd, [*map(str, args), "--full-gt", str(tmp_path)])
    assert result.exit_code == 2 and "Invalid value for '--full-gt'" in result.output
    result = CliRunner().invoke(evaluate_cmd, [*map(str, args), "--full-gt", str(stores["full"])])
    assert result.exit_code == 0, result.output
    assert "| full GT full.zarr (--full-gt) | 0 (0.0 %) | in (6) |" in result.output
    written = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert written["full_gt"]["store"] == str(stores["full"].resolve())
