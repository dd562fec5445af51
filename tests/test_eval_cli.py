"""npa-train evaluate / predict through CliRunner, reading metrics.json and the PNGs back."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from click.testing import CliRunner
from PIL import Image

from npa_precompute.pipeline import run_precompute
from npa_precompute.presets import ISPRS
from npa_precompute.store import open_store, open_tile
from npa_train.checkpoint import CheckpointError, ModelInfo, model_info_from_checkpoint
from npa_train.cli_eval import evaluate_cmd, predict_cmd
from npa_train.evaluate import evaluate, evaluate_model, format_table
from npa_train.metrics import confusion_matrix, scores_from_confusion
from npa_train.model import SmallFCN
from npa_train.predict import normalization

PALETTE = np.array((*ISPRS.palette, (0, 0, 0)), dtype=np.uint8)  # index 6 -> black = ignore
# distinct, well separated image colours per label value (6 = ignore band)
COLOURS = np.array(
    [[200, 200, 200], [30, 30, 220], [40, 220, 220], [30, 160, 30], [230, 230, 20],
     [220, 30, 30], [90, 60, 120]],
    dtype=np.float64,
)  # fmt: skip
TILES = {"areaA": (80, 96), "areaB": (64, 64)}
FAST = ["--window", "48", "--overlap", "0.5", "--batch", "8", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """A two-tile ISPRS-coded store (image = colour of the label + noise) and a checkpoint."""
    from npa_train.train import fit

    folder = tmp_path_factory.mktemp("eval_cli")
    rng = np.random.default_rng(0)
    (folder / "gts").mkdir()
    (folder / "top").mkdir()
    for tid, (h, w) in TILES.items():
        blocks = rng.integers(0, 7, size=(h // 8, w // 8))
        idx = np.kron(blocks, np.ones((8, 8), dtype=np.int64))
        tifffile.imwrite(folder / "gts" / f"{tid}_noBoundary.tif", PALETTE[idx])
        image = np.clip(COLOURS[idx] + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)
        tifffile.imwrite(folder / "top" / f"{tid}.tif", image)
    store = folder / "store.zarr"
    run_precompute([str(folder / "gts")], store, images=[str(folder / "top")], ks="2", chunk=16)
    run = folder / "run"
    fit(store, run, weights=None, loss="ce", iters=2, batch=2, crop=32, device="cpu",
        progress=False)  # fmt: skip
    return {"folder": folder, "store": store, "run": run, "ckpt": run / "checkpoint.pt"}


def _invoke(cmd, args):
    return CliRunner().invoke(cmd, [str(a) for a in args])


def _variant_checkpoint(src: Path, dst: Path, *, in_channels: int, num_classes: int) -> Path:
    """A copy of ``src`` whose model has other bands/classes (entries rewritten wherever kept)."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    model = SmallFCN(in_channels, num_classes, width=4)
    classes = list(ISPRS.classes) if num_classes == 6 else [f"c{i}" for i in range(num_classes)]
    ckpt["model"] = model.state_dict()
    for section in (ckpt, ckpt.get("config"), ckpt.get("args")):
        if not isinstance(section, dict):
            continue
        updates = {
            "model_config": model.config(),
            "in_channels": in_channels,
            "num_classes": num_classes,
            "classes": classes,
            "image_mean": [100.0] * in_channels,
            "image_std": [50.0] * in_channels,
        }
        for key, value in updates.items():
            if key in section:
                section[key] = value
    torch.save(ckpt, dst)
    return dst


# -- evaluate ---------------------------------------------------------------------------------


def test_evaluate_writes_metrics_table_and_pngs(data, tmp_path):
    out = tmp_path / "eval"
    loud = [a for a in FAST if a != "-q"]
    result = _invoke(
        evaluate_cmd, ["--store", data["store"], "--checkpoint", data["run"], "--out", out, *loud]
    )
    assert result.exit_code == 0, result.output
    assert "| Method |" in result.output and "2 tile(s), 13 windows" in result.output
    quiet = _invoke(evaluate_cmd, ["--store", data["store"], "--checkpoint", data["run"],
                                   "--out", tmp_path / "q", "--no-images", *FAST])  # fmt: skip
    assert quiet.exit_code == 0 and "| Method |" not in quiet.output  # -q: no table
    assert quiet.output.count("\n") == 1 and "2 tile(s), 13 windows" in quiet.output

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tiles"] == ["areaA", "areaB"]
    assert metrics["window"] == [48, 48] and metrics["stride"] == [24, 24]
    assert metrics["overlap"] == "1/2"
    assert metrics["classes_in_mean"] == list(ISPRS.classes[:5])  # clutter left out
    assert metrics["per_tile"]["areaA"]["windows"] == 9  # starts 0, 24, 32 x 0, 24, 48
    assert metrics["per_tile"]["areaB"]["windows"] == 4  # starts 0, 16 x 0, 16
    assert metrics["small_objects"].keys() == {"car"}
    assert metrics["boundary"]["tolerance"] == 3

    # the label PNGs hold the predictions: recompute every score from them
    root = open_store(data["store"])
    cm = np.zeros((6, 6), dtype=np.int64)
    for tid, shape in TILES.items():
        pred = np.asarray(Image.open(out / f"{tid}_label.png"))
        assert pred.shape == shape and pred.dtype == np.uint8 and pred.max() < 6
        label = open_tile(root, tid).label[...]
        cm += confusion_matrix(label, pred, 6, ignore_index=255)
        colour = np.asarray(Image.open(out / f"{tid}_color.png").convert("RGB"))
        np.testing.assert_array_equal(colour, PALETTE[:6][pred])
        error = np.asarray(Image.open(out / f"{tid}_error.png").convert("RGB"))
        valid = label != 255
        np.testing.assert_array_equal(error[~valid], 0)
        np.testing.assert_array_equal(error[valid & (label == pred)], 255)
        np.testing.assert_array_equal(
            error[valid & (label != pred)], [[255, 0, 0]] * int((valid & (label != pred)).sum())
        )
    assert metrics["confusion_matrix"] == cm.tolist()
    s = scores_from_confusion(cm, classes_in_mean=range(5))
    assert metrics["OA"] == pytest.approx(s["OA"])
    assert metrics["mF1"] == pytest.approx(s["mF1"])
    assert metrics["mIoU"] == pytest.approx(s["mIoU"])
    for i, name in enumerate(ISPRS.classes):
        f1 = metrics["per_class"][name]["f1"]
        assert (f1 is None and math.isnan(s["f1"][i])) or f1 == pytest.approx(s["f1"][i])
    assert metrics["small_objects"]["car"] == metrics["per_class"]["car"]["f1"]

    table = (out / "metrics.md").read_text()
    header = table.splitlines()[0]
    assert header == (
        "| Method | impervious surfaces | building | low vegetation | tree | car | mF1 | mIoU "
        "| OA | Boundary F1 |"
    )
    assert f"{100 * s['mF1']:.2f}" in table.splitlines()[2]


def test_library_evaluate_matches_the_cli_and_nan_is_null(data, tmp_path):
    result = evaluate(
        data["store"], data["ckpt"], tmp_path / "e", window=48, overlap="1/2", batch=8,
        device="cpu", tiles="areaB", classes_in_mean="building,car", small_classes=[3],
        progress=False,
    )  # fmt: skip
    assert result["tiles"] == ["areaB"] and result["classes_in_mean"] == ["building", "car"]
    assert result["small_objects"].keys() == {"tree"}
    written = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert written["mF1"] == pytest.approx(result["mF1"])
    # a class that neither ground truth nor prediction holds is NaN here, null in the file
    for name, scores in result["per_class"].items():
        if scores["support"] == 0 and scores["predicted"] == 0:
            assert math.isnan(scores["f1"]) and written["per_class"][name]["f1"] is None


class ColourOracle(torch.nn.Module):
    """Classifies each pixel by the nearest label colour of the fixture (a perfect model)."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.colours = torch.tensor(COLOURS[:6], dtype=torch.float32)

    def forward(self, x):
        raw = x * self.std + self.mean
        d = ((raw[:, None] - self.colours[None, :, :, None, None]) ** 2).sum(dim=2)
        return -d / 100.0


def test_a_perfect_model_scores_1(data):
    info = ModelInfo(
        classes=ISPRS.classes, num_classes=6, in_channels=3, ignore_index=255,
        image_mean=(120.0, 120.0, 120.0), image_std=(60.0, 60.0, 60.0), name="oracle",
    )  # fmt: skip
    model = ColourOracle(info.image_mean, info.image_std)
    result = evaluate_model(
        data["store"], model, info, None, window=40, overlap="1/3", progress=False
    )
    assert result["OA"] == 1.0 and result["mF1"] == 1.0 and result["mIoU"] == 1.0
    assert all(s["f1"] == 1.0 for s in result["per_class"].values() if s["support"])
    assert "| oracle | 100.00 | 100.00 |" in format_table(result)


# -- predict ----------------------------------------------------------------------------------


def test_predict_matches_evaluate_on_the_same_tile(data, tmp_path):
    ev = tmp_path / "eval"
    r = _invoke(
        evaluate_cmd,
        ["--store", data["store"], "--checkpoint", data["ckpt"], "--out", ev, "--tiles", "areaA",
         "--no-images", *FAST],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert not (ev / "areaA_label.png").exists()
    r = _invoke(
        evaluate_cmd,
        ["--store", data["store"], "--checkpoint", data["ckpt"], "--out", ev, "--tiles", "areaA",
         *FAST],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    expected = np.asarray(Image.open(ev / "areaA_label.png"))

    pr = tmp_path / "pred"
    image = data["folder"] / "top" / "areaA.tif"
    r = _invoke(predict_cmd, [image, "--checkpoint", data["run"], "--out", pr, *FAST])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.asarray(Image.open(pr / "areaA_label.png")), expected)
    colour = np.asarray(Image.open(pr / "areaA_color.png").convert("RGB"))
    np.testing.assert_array_equal(colour, PALETTE[:6][expected])  # the isprs palette

    args = [image, "--checkpoint", data["ckpt"], "--out", pr, "--format", "tif", *FAST]
    r = _invoke(predict_cmd, args)
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(tifffile.imread(pr / "areaA_label.tif"), expected)


def test_predict_uint16_and_small_images(data, tmp_path):
    rng = np.random.default_rng(1)
    # 8-bit values in a 16-bit file (the checkpoint was trained on uint8 images; wider uint16
    # values are refused: tests/test_eval_checks.py), smaller than the window
    img16 = rng.integers(0, 256, size=(30, 20, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "small16.tif", img16)
    args = [tmp_path / "small16.tif", "--checkpoint", data["ckpt"], "--out", tmp_path / "o"]
    r = _invoke(predict_cmd, [*args, *FAST])
    assert r.exit_code == 0, r.output
    label = np.asarray(Image.open(tmp_path / "o" / "small16_label.png"))
    assert label.shape == (30, 20) and label.max() < 6


def test_predict_refuses_a_band_count_other_than_the_checkpoints(data, tmp_path):
    img = np.zeros((20, 20, 4), np.uint8)
    tifffile.imwrite(tmp_path / "rgbir.tif", img, photometric="rgb", extrasamples=[0])
    args = ["--checkpoint", data["ckpt"], "--out", tmp_path / "o"]
    r = _invoke(predict_cmd, [tmp_path / "rgbir.tif", *args])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    assert "has 4 band(s)" in r.output and "in_channels 3" in r.output
    r = _invoke(predict_cmd, [tmp_path / "nope.tif", *args])
    assert r.exit_code == 1 and "matches no file" in r.output


# -- refusals ---------------------------------------------------------------------------------


def _eval_args(data, out, *extra):
    return ["--store", data["store"], "--checkpoint", data["ckpt"], "--out", out, "-q", *extra]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tiles", "nope"], "no tile 'nope' in the store; tiles: areaA, areaB"),
        (["--window", "0"], "'--window': must be >= 1, got 0"),
        (["--overlap", "1"], "'--overlap': must be in [0, 1), got '1'"),
        (["--overlap", "-0.2"], "'--overlap': must be in [0, 1)"),
        (["--overlap", "half"], "'--overlap': must be a fraction like '1/3'"),
        (["--batch", "0"], "'--batch': must be an integer >= 1"),
        (["--classes-in-mean", "roads"], "'--classes-in-mean': unknown class 'roads'"),
        (["--boundary-tolerance", "-1"], "'--boundary-tolerance': must be >= 0"),
        (["--device", "cpu", "--amp"], "'--amp': needs a CUDA device"),
    ],
)
def test_evaluate_refusals_name_the_argument(data, tmp_path, extra, message):
    r = _invoke(evaluate_cmd, _eval_args(data, tmp_path / "o", *extra))
    # a bad option value is a usage error (2) naming the option; the rest exit with 1
    assert r.exit_code == (1 if extra[0] == "--tiles" else 2), r.output
    assert isinstance(r.exception, SystemExit)
    assert message in r.output and "`" not in r.output
    assert "Traceback" not in r.output


def test_evaluate_refuses_an_incomplete_tile(data, tmp_path):
    store = tmp_path / "store.zarr"
    shutil.copytree(data["store"], store)
    zarr.open_group(store / "tiles" / "areaB", mode="r+").attrs["complete"] = False
    copy = {**data, "store": store}
    r = _invoke(evaluate_cmd, _eval_args(copy, tmp_path / "o", "--tiles", "areaB"))
    assert r.exit_code == 1 and "tile 'areaB' is incomplete" in r.output
    r = _invoke(evaluate_cmd, _eval_args(copy, tmp_path / "o"))
    assert r.exit_code == 1 and "incomplete tiles (areaB)" in r.output
    r = _invoke(evaluate_cmd, _eval_args(copy, tmp_path / "o", "--tiles", "areaA"))
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    ("in_channels", "num_classes", "message"),
    [
        (4, 6, "expects in_channels 4, but the images of store"),
        (3, 7, "predicts num_classes 7"),
    ],
)
def test_evaluate_refuses_a_checkpoint_of_other_bands_or_classes(
    data, tmp_path, in_channels, num_classes, message
):
    ckpt = _variant_checkpoint(
        data["ckpt"], tmp_path / "other.pt", in_channels=in_channels, num_classes=num_classes
    )
    r = _invoke(evaluate_cmd, _eval_args({**data, "ckpt": ckpt}, tmp_path / "o"))
    assert r.exit_code == 1 and message in r.output, r.output
    if num_classes == 7:
        assert "has num_classes 6" in r.output
    else:
        assert "have 3 band(s)" in r.output
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_evaluate_refuses_a_missing_or_broken_checkpoint(data, tmp_path):
    r = _invoke(evaluate_cmd, _eval_args({**data, "ckpt": tmp_path / "none.pt"}, tmp_path / "o"))
    assert r.exit_code == 1 and "no checkpoint at" in r.output
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    r = _invoke(evaluate_cmd, _eval_args({**data, "ckpt": tmp_path / "junk.pt"}, tmp_path / "o"))
    assert r.exit_code == 1 and "cannot load checkpoint" in r.output
    r = _invoke(evaluate_cmd, _eval_args({**data, "store": tmp_path / "nostore"}, tmp_path / "o"))
    assert r.exit_code == 1 and "no zarr store" in r.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_evaluate_on_cuda_agrees_with_cpu(data, tmp_path):
    labels = {}
    for name, extra in [
        ("cpu", ["--device", "cpu"]),
        ("cuda", ["--device", "cuda"]),
        ("amp", ["--device", "cuda", "--amp"]),
    ]:
        args = ["--window", "48", "--overlap", "0.5", "-q", *extra]
        r = _invoke(evaluate_cmd, _eval_args(data, tmp_path / name, *args))
        assert r.exit_code == 0, r.output
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["device"].startswith(extra[1]) and metrics["amp"] == ("--amp" in extra)
        labels[name] = np.asarray(Image.open(tmp_path / name / "areaA_label.png"))
    assert (labels["cuda"] == labels["cpu"]).mean() > 0.999
    assert (labels["amp"] == labels["cpu"]).mean() > 0.99


# -- checkpoint contents and normalization ------------------------------------------------------

_META = {
    "classes": list(ISPRS.classes),
    "num_classes": 6,
    "in_channels": 3,
    "ignore_index": 255,
    "image_mean": [120.0, 110.0, 100.0],
    "image_std": [50.0, 0.0, 40.0],
    "store_preset": "isprs",
    "model": "SmallFCN",
    "loss": "npa",
    "weights": "k32_log10_L0.5",
}


@pytest.mark.parametrize(
    "ckpt",
    [
        {"model": {"w": torch.zeros(1)}, "config": _META},  # entries under "config"
    ],
)  # fmt: skip
def test_model_info_reads_the_checkpoint_config(ckpt):
    info = model_info_from_checkpoint(ckpt, "x.pt")
    assert info.classes == ISPRS.classes and (info.num_classes, info.in_channels) == (6, 3)
    assert info.image_std == (50.0, 1.0, 40.0)  # a zero std would divide by 0
    assert info.preset == "isprs" and info.normalize == "store"
    assert info.name == "SmallFCN npa (k32_log10_L0.5)"


def test_model_info_refuses_incomplete_checkpoints():
    with pytest.raises(CheckpointError, match="lacks in_channels"):
        model_info_from_checkpoint({"config": {**_META, "in_channels": None}}, "x.pt")
    with pytest.raises(CheckpointError, match="names 6 classes but has num_classes 5"):
        model_info_from_checkpoint({"config": {**_META, "num_classes": 5}}, "x.pt")
    with pytest.raises(CheckpointError, match="unknown normalize 'band'"):
        model_info_from_checkpoint({"config": {**_META, "normalize": "band"}}, "x.pt")


class Recorder(torch.nn.Module):
    """Zero logits; keeps the first batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        return torch.zeros(x.shape[0], 6, *x.shape[2:])


@pytest.mark.parametrize("normalize", ["store", "tile"])
def test_images_are_normalized_as_the_model_was_trained(data, normalize):
    info = model_info_from_checkpoint({"config": {**_META, "normalize": normalize}})
    tile = open_tile(open_store(data["store"]), "areaB")  # 64 x 64: one window of 64
    model = Recorder()
    evaluate_model(data["store"], model, info, None, tiles=["areaB"], window=64, progress=False)
    image = tile.image[...].astype(np.float64)
    if normalize == "tile":
        mean, std = image.mean(axis=(0, 1)), image.std(axis=(0, 1))
        assert normalization(info, tile.image[...])["mean"] == pytest.approx(mean)
    else:
        mean, std = np.array([120.0, 110.0, 100.0]), np.array([50.0, 1.0, 40.0])
    expected = ((image - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(model.seen[0][0].numpy(), expected, rtol=1e-5, atol=1e-4)
