"""npa-train compare / plot on hand-made run and evaluation folders, against numbers
computed by hand (median of 3 seeds, grouping, spread, figures read back)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from npa_precompute.errors import ParameterError
from npa_precompute.names import WeightsSpec
from npa_precompute.params import parse_weights_option
from npa_train.cli import main
from npa_train.compare import (
    by_series,
    compare,
    group_results,
    load_results,
    summarize,
)
from npa_train.plot import plot_runs, render_pillow, training_panels

CLASSES = ["impervious surfaces", "building", "low vegetation", "tree", "car", "clutter"]
FOREGROUND = CLASSES[:5]
VAL_HEADER = ["iteration", "seconds", "mF1", "mIoU", "OA", "boundary_f1"] + [
    f"f1:{c}" for c in CLASSES
]


def _config(**changes) -> dict:
    config = {"store": "/data/a.zarr", "weights": None, "loss": "ce", "reduction": "mean",
              "model": "fcn", "aux_weight": 0.0, "iters": 100, "batch": 6, "crop": [513, 513],
              "lr": 0.01, "tiles": ["1", "3"], "val_tiles": ["11"], "seed": 0,
              "seconds": 12.5, "threads": 2}  # fmt: skip
    config.update(changes)
    return config


def _run(root: Path, name: str, *, val: list[dict] | None = None, log=True, **changes) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(_config(**changes)))
    if log:
        (run / "log.csv").write_text(
            "iteration,lr,loss,aux_loss,seconds\n1,0.01,2.0,,0.1\n2,0.009,1.5,,0.2\n"
            "3,0.008,1.2,,0.3\n"
        )
    if val is not None:
        with open(run / "val.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(VAL_HEADER)
            for row in val:
                writer.writerow(["" if row.get(k) is None else row[k] for k in VAL_HEADER])
    return run


def _val_row(iteration: int, mf1: float, car=0.5) -> dict:
    row = {"iteration": iteration, "seconds": iteration * 0.1, "mF1": mf1, "mIoU": mf1 - 0.1,
           "OA": mf1 + 0.05, "boundary_f1": 0.4}  # fmt: skip
    row.update({f"f1:{c}": 0.9 for c in FOREGROUND})
    row["f1:car"] = car
    row["f1:clutter"] = None  # undefined: an empty cell
    return row


def _eval(root: Path, name: str, run: Path, mf1, miou, oa, car, *, boundary=0.5) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    per_class = {c: {"f1": 0.9, "iou": 0.8} for c in CLASSES}
    per_class["car"]["f1"] = car
    per_class["clutter"]["f1"] = None
    metrics = {"model": "x", "checkpoint": str(run / "checkpoint.pt"), "store": "/data/e.zarr",
               "tiles": ["11", "15"], "window": [513, 513], "overlap": "1/3",
               "per_class": per_class, "mF1": mf1, "mIoU": miou, "OA": oa,
               "boundary": {"f1": boundary}, "classes_in_mean": FOREGROUND,
               "small_objects": {"car": car}}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture
def runs(tmp_path) -> dict:
    """npa k32 lr 0.01: 3 seeds scored by evaluate; ce: 2 seeds scored by val.csv;
    npa k32 lr 0.02: 1 seed (evaluate)."""
    npa = {"loss": "npa", "weights": "k32_log10_L0.5"}
    evals = []
    for seed, (mf1, miou, oa, car) in enumerate(
        [(0.80, 0.70, 0.88, 0.70), (0.86, 0.74, 0.90, 0.60), (0.84, 0.72, 0.86, 0.75)]
    ):
        run = _run(tmp_path, f"npa_{seed}", seed=seed, **npa)
        evals.append(_eval(tmp_path, f"eval_npa_{seed}", run, mf1, miou, oa, car))
    ce = [
        _run(tmp_path, f"ce_{s}", seed=s, val=[_val_row(50, 0.5), _val_row(100, m, car=c)])
        for s, m, c in ((0, 0.78, 0.40), (1, 0.82, 0.60))
    ]
    lr2 = _run(tmp_path, "npa_lr2", seed=0, lr=0.02, **npa)
    lr2_eval = _eval(tmp_path, "eval_npa_lr2", lr2, 0.9, 0.8, 0.95, 0.8)
    return {"root": tmp_path, "evals": evals, "ce": ce, "lr2": lr2_eval}


def _all(runs) -> list:
    return [*runs["evals"], *runs["ce"], runs["lr2"]]


def test_median_of_three_seeds_grouping_and_spread(runs):
    groups = group_results(load_results(_all(runs)))
    assert [len(g["runs"]) for g in groups] == [3, 2, 1]
    assert groups[0]["label"] == "fcn npa (k32_log10_L0.5) [lr=0.01]"
    assert groups[1]["label"] == "fcn ce"
    assert groups[2]["label"] == "fcn npa (k32_log10_L0.5) [lr=0.02]"
    rows = summarize(groups)["rows"]
    npa, ce, lr2 = (r["metrics"] for r in rows)
    # median of 0.80, 0.86, 0.84 is 0.84; min 0.80, max 0.86
    assert (npa["mF1"]["median"], npa["mF1"]["min"], npa["mF1"]["max"]) == (0.84, 0.80, 0.86)
    assert npa["mIoU"]["median"] == 0.72 and npa["OA"]["median"] == 0.88
    assert (npa["car"]["median"], npa["car"]["min"], npa["car"]["max"]) == (0.70, 0.60, 0.75)
    assert npa["boundary_f1"]["median"] == 0.5
    # two seeds: the median is their mean; val.csv's last row is used, not the first
    assert ce["mF1"]["median"] == pytest.approx(0.80)
    assert ce["car"]["median"] == pytest.approx(0.50)
    assert ce["mIoU"]["median"] == pytest.approx(0.70)
    # one seed: its value; an undefined class stays undefined (n = 0)
    assert lr2["mF1"] == {"median": 0.9, "min": 0.9, "max": 0.9, "n": 1}
    assert npa["clutter"] == {"median": None, "min": None, "max": None, "n": 0}
    assert [r["seeds"] for r in rows] == [[0, 1, 2], [0, 1], [0]]


def test_undefined_values_are_left_out_of_the_median(tmp_path):
    evals = []
    for seed, car in enumerate([0.6, None, 0.8]):
        run = _run(tmp_path, f"r{seed}", seed=seed)
        evals.append(_eval(tmp_path, f"e{seed}", run, 0.8, 0.7, 0.9, car))
    row = summarize(group_results(load_results(evals)))["rows"][0]
    assert row["metrics"]["car"] == {"median": pytest.approx(0.7), "min": 0.6, "max": 0.8, "n": 2}
    assert row["n"] == 3


def test_markdown_and_csv_hold_the_hand_computed_numbers(runs, tmp_path):
    out = tmp_path / "cmp"
    result = compare(_all(runs), out, backend="pillow")
    md = (out / "compare.md").read_text()
    assert md == result["markdown"]
    header = md.splitlines()[0]
    assert header.startswith("| Method | n | seeds | impervious surfaces |")
    assert "clutter" not in header  # not in the means, as Table 1
    assert "| fcn npa (k32_log10_L0.5) [lr=0.01] | 3 | 0,1,2 | 90.00 | 90.00 | 90.00 | " in md
    assert "| 70.00 | 84.00 | 72.00 | 88.00 | 50.00 | 80.00–86.00 | 70.00–74.00 |" in md
    assert "86.00–90.00 | 60.00–75.00 |" in md and "| car F1 min–max |" in md
    assert "| fcn ce | 2 | 0,1 |" in md and "val.csv: last validation row" in md
    with open(out / "compare.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == [
        "fcn npa (k32_log10_L0.5) [lr=0.01]", "fcn ce", "fcn npa (k32_log10_L0.5) [lr=0.02]"
    ]  # fmt: skip
    assert (rows[0]["mF1"], rows[0]["mF1_min"], rows[0]["mF1_max"]) == ("84", "80", "86")
    assert (rows[0]["f1:car"], rows[0]["f1:car_min"], rows[0]["f1:car_max"]) == ("70", "60", "75")
    assert rows[0]["f1:clutter"] == "" and rows[0]["seeds"] == "0 1 2"
    assert rows[1]["mF1"] == "80" and rows[1]["n"] == "2" and rows[1]["lr"] == "0.01"
    assert rows[2]["lr"] == "0.02" and json.loads(rows[2]["scored_on"])["kind"] == "evaluate"
    # ce runs have val.csv: Fig. 6 is drawn, one curve per run
    assert Image.open(result["files"]["fig6"]).size == (560, 380)


def test_an_evaluation_supersedes_its_run_folders_val_csv(tmp_path):
    run = _run(tmp_path, "r0", val=[_val_row(100, 0.5)])
    ev = _eval(tmp_path, "e0", run, 0.8, 0.7, 0.9, 0.6)
    results = load_results([run, ev])
    assert len(results) == 1 and results[0]["scores"]["mF1"] == 0.8
    assert results[0]["val"][0]["mF1"] == 0.5  # the curve stays available for Fig. 6


def test_a_relative_checkpoint_path_is_found_from_where_evaluate_ran(tmp_path, monkeypatch):
    run = _run(tmp_path, "runs/r0", seed=4)
    ev = _eval(tmp_path, "evals/e0", Path("runs/r0"), 0.8, 0.7, 0.9, 0.6)
    monkeypatch.chdir(tmp_path)
    assert load_results([ev])[0]["config"]["seed"] == 4
    assert Path(load_results([ev])[0]["run"]).resolve() == run.resolve()


def test_refusals_name_the_folder(tmp_path):
    a = _eval(tmp_path, "a", _run(tmp_path, "ra", seed=1), 0.8, 0.7, 0.9, 0.6)
    b = _eval(tmp_path, "b", _run(tmp_path, "rb", seed=1), 0.8, 0.7, 0.9, 0.6)
    with pytest.raises(ParameterError, match="same seed 1") as info:
        group_results(load_results([a, b]))
    assert info.value.param == "runs"
    with pytest.raises(ParameterError, match="no val.csv"):
        load_results([_run(tmp_path, "bare")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ParameterError, match="neither metrics.json"):
        load_results([tmp_path / "empty"])
    orphan = _eval(tmp_path, "orphan", tmp_path / "gone", 0.8, 0.7, 0.9, 0.6)
    with pytest.raises(ParameterError, match="has no config.json"):
        load_results([orphan])


@pytest.mark.parametrize(
    ("name", "prefix", "k", "transform"),
    [
        ("k32_log10_L0.5", "", 32, "log10_L0.5"),
        ("online:k8_norm_L0", "online:", 8, "norm_L0"),
        ("ms_k8-16-32_log10_L0.5", "ms_k8-16-32_", None, "log10_L0.5"),
        (None, "", None, None),
        ("none", "", None, None),
    ],
)
def test_parse_weights_name(name, prefix, k, transform):
    # compare reads a run's weights with the one weights-name type, WeightsSpec
    spec = None if parse_weights_option(name) is None else WeightsSpec.parse(name)
    got = ({"prefix": "", "k": None, "transform": None} if spec is None else
           {"prefix": spec.family, "k": spec.k, "transform": spec.transform.slug})  # fmt: skip
    assert got == {"prefix": prefix, "k": k, "transform": transform}


def _by_runs(root: Path) -> list[Path]:
    paths = []
    spec = [("k8_log10_L0.5", 0.80), ("k32_log10_L0.5", 0.85), ("k16_log10_L0.5", 0.83),
            ("k32_norm_L0", 0.82), (None, 0.78)]  # fmt: skip
    for i, (weights, mf1) in enumerate(spec):
        loss = "ce" if weights is None else "npa"
        for seed, delta in enumerate((-0.01, 0.0, 0.02)):
            run = _run(root, f"r{i}_{seed}", seed=seed, loss=loss, weights=weights)
            paths.append(_eval(root, f"e{i}_{seed}", run, mf1 + delta, 0.7, 0.9, 0.6))
    return paths


def test_by_k_and_by_transform_series(tmp_path):
    summary = summarize(group_results(load_results(_by_runs(tmp_path))))
    data = by_series(summary, "k")
    log10, norm = data["series"]
    assert log10["label"] == "fcn npa (log10_L0.5)" and log10["x"] == [8, 16, 32]
    assert log10["y"] == pytest.approx([80, 83, 85])
    assert log10["low"] == pytest.approx([79, 82, 84])
    assert log10["high"] == pytest.approx([82, 85, 87])
    assert norm["x"] == [32] and norm["y"] == pytest.approx([82])
    assert data["references"] == [{"label": "fcn ce", "y": pytest.approx(78)}]
    data = by_series(summary, "transform", "car")
    labels = {s["label"]: s for s in data["series"]}
    assert labels["fcn npa (k32)"]["x"] == ["log10_L0.5", "norm_L0"]
    assert labels["fcn npa (k32)"]["y"] == pytest.approx([60, 60])
    with pytest.raises(ParameterError, match="unknown metric"):
        by_series(summary, "k", "nope")


@pytest.mark.parametrize("backend", ["pillow", "matplotlib"])
def test_compare_cli_writes_table_csv_and_fig5(tmp_path, backend):
    out = tmp_path / "cmp"
    args = ["compare", *map(str, _by_runs(tmp_path)), "--out", str(out), "--by", "k",
            "--backend", backend]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "| fcn npa (k32_log10_L0.5) | 3 | 0,1,2 |" in result.output
    assert "5 method(s) from 15 run(s)" in result.output
    with open(out / "compare.csv", newline="") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert rows["fcn npa (k16_log10_L0.5)"]["mF1"] == "83"
    assert rows["fcn ce"]["mF1_max"] == "80"
    fig = Image.open(out / "fig5_mF1_by_k.png")
    assert fig.size[0] > 300 and fig.size[1] > 200
    assert not (out / "fig6_val_mF1.png").exists()  # no val.csv in these runs


def test_compare_cli_refusals(tmp_path):
    run = _run(tmp_path, "bare")
    result = CliRunner().invoke(main, ["compare", str(run), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "no val.csv" in result.output
    result = CliRunner().invoke(main, ["compare", str(run), "--out", "o", "--by", "x"])
    assert result.exit_code == 2 and "--by" in result.output


def test_training_panels_and_plot_cli(tmp_path):
    a = _run(tmp_path, "a", val=[_val_row(1, 0.5), _val_row(3, 0.7)])
    b = _run(tmp_path, "b")
    runs = load_results([a])
    runs[0]["label"] = "a"
    panels = training_panels(runs, ["mF1", "car"])
    assert [p.title for p in panels] == [
        "training loss: ce", "learning rate", "validation mF1", "validation car"
    ]  # fmt: skip
    assert panels[0].series[0].y == [2.0, 1.5, 1.2]
    assert panels[2].series[0].x == [1.0, 3.0] and panels[2].series[0].y == [50.0, 70.0]
    assert render_pillow(panels).size == (2 * 560, 2 * 380)
    out = tmp_path / "curves.png"
    result = CliRunner().invoke(main, ["plot", str(a), str(b), "--out", str(out),
                                       "--backend", "pillow"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        "2 run(s), panels: training loss: ce, learning rate, validation mF1, validation mIoU"
        in (result.output)
    )
    assert Image.open(out).size == (1120, 760)
    info = plot_runs([b], tmp_path / "m.png", backend="matplotlib")
    assert info["panels"] == ["training loss: ce", "learning rate"] and info["runs"] == ["b"]
    c = _run(tmp_path, "c", loss="npa", weights="k32_log10_L0.5")
    info = plot_runs([b, c], tmp_path / "two.png", backend="matplotlib")  # NPA and CE apart
    assert info["panels"] == ["training loss: ce", "training loss: npa", "learning rate"]
    log = [{"iteration": i, "loss": 1.0 / i, "lr": 0.01 / i} for i in (1, 2, 3)]
    runs = [{"label": n, "log": log, "val": None, "config": {"loss": "ce"}} for n in "xy"]
    lr = training_panels(runs)[-1]  # one schedule: one line, not one hidden under another
    assert [s.label for s in lr.series] == ["all 2 runs (the same)"] and lr.series[0].y == [
        0.01, 0.005, 0.01 / 3
    ]  # fmt: skip
    runs[1]["log"] = [{**row, "lr": 2 * row["lr"]} for row in log]
    assert [s.label for s in training_panels(runs)[-1].series] == ["x", "y"]
    result = CliRunner().invoke(main, ["plot", str(tmp_path), "--out", str(out)])
    assert result.exit_code != 0 and "no run folder" in result.output
