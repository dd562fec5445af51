"""npa-train fit/preview: run folder, poly lr, checkpoints and resume, splits, losses, refusals."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner
from helpers import write_train_store

import npa_train.model as model_mod
from npa_precompute.pipeline import run_precompute
from npa_precompute.presets import ISPRS
from npa_precompute.store import StoreError, open_store
from npa_train.checkpoint import CheckpointError, load_checkpoint
from npa_train.cli import main
from npa_train.criteria import median_frequency_weights
from npa_train.model import SmallFCN
from npa_train.splits import resolve_split
from npa_train.train import TrainingError, TrainingInterrupted, fit, poly_lr

WNAME = "k4_log10_L0.5"
DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Two small ISPRS-coded tiles whose image is a noisy function of the label."""
    return write_train_store(tmp_path_factory.mktemp("train_cli"))


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

    assert config["batch"] == 2 and config["crop"] == [32, 32] and config["model"] == "small_fcn"
    assert config["augment"]["scale"] == [0.5, 2.0] and config["augment"]["rotation"] == 10.0

    model, ckpt = load_checkpoint(out)
    cfg = ckpt["config"]
    assert ckpt["iteration"] == 10 and cfg["weights"] == WNAME
    assert cfg["classes"] == list(ISPRS.classes) and cfg["store_preset"] == "isprs"
    assert (cfg["in_channels"], cfg["num_classes"], cfg["ignore_index"]) == (3, 6, 255)
    assert len(cfg["image_mean"]) == len(cfg["image_std"]) == 3
    assert cfg["model_config"] == {"in_channels": 3, "num_classes": 6, "width": 24}
    assert not model.training
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
    result = CliRunner().invoke(main, _fit_args(store, tmp_path / "run", "--weights", "k9raw"))
    assert result.exit_code != 0
    assert "k9raw" in result.output and WNAME in result.output
    # a weights name of a k without counts: the k the store has and the command adding it
    result = CliRunner().invoke(main, _fit_args(store, tmp_path / "run", "--weights", "k9_raw"))
    assert result.exit_code != 0
    assert "k9_raw" in result.output and "it has k = 2, 4" in result.output
    assert "npa-precompute run" in result.output and "--k 9" in result.output


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
    cases = [("--iters", "0", "'--iters'"), ("--lr", "-1", "'--lr'"),
             ("--workers", "-1", "'--workers'"), ("--crop", "0", "'--crop'")]  # fmt: skip
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

    monkeypatch.setattr(model_mod, "SmallFCN", NaNAtThirdCall)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"iteration 3 of 10.*tile\(s\) area[AB]") as exc:
        fit(store, out, weights=WNAME, iters=10, batch=1, crop=16, device="cpu", progress=False)
    assert "samples 2-2" in str(exc.value) and "--resume" in str(exc.value)
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


def test_npa_train_group_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("fit", "preview", "evaluate", "predict"):
        assert command in result.output, command


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
    # (full augmentation: resize 0.5-2, rotation, mirrors, blur)
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
    assert ckpt["config"]["device"].startswith("cuda") and ckpt["config"]["amp"]
    assert next(model.parameters()).device.type == "cpu"


# ---- defaults, flags ---------------------------------------------------------------------------
def test_paper_recipe_is_the_default():
    from npa_train.config import TrainConfig

    p = TrainConfig.defaults()
    defaults = {k: p[k] for k in ("lr", "momentum", "weight_decay", "poly_power",
                                           "batch", "crop", "iters", "aux_weight", "scale",
                                           "rotation", "blur", "flip")}  # fmt: skip
    assert defaults == {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "poly_power": 0.9,
                        "batch": 6, "crop": 513, "iters": 5000, "aux_weight": 0.4,
                        "scale": (0.5, 2.0), "rotation": 10.0, "blur": 0.5,
                        "flip": True}  # fmt: skip
    help_text = CliRunner().invoke(main, ["fit", "--help"]).output
    flags = ("--batch", "--crop", "--iters", "--resume", "--model", "--pretrained", "--split",
             "--train-tiles", "--val-tiles", "--amp", "--aux-weight", "--scale", "--rotation",
             "--blur", "--warp-on", "--tiles", "--rotate")  # fmt: skip
    for flag in flags:
        assert flag in help_text, flag


def test_amp_on_cpu_is_refused(store, tmp_path):
    with pytest.raises(ValueError, match="`amp`"):
        fit(store, tmp_path / "r", weights=WNAME, iters=1, device="cpu", amp=True)


# ---- resume --------------------------------------------------------------------------------------
def _losses(out: Path) -> list[str]:
    return [r["loss"] for r in _read_log(out / "log.csv")]


def _state(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


class _Stop(Exception):
    pass


def _stop_at(n, exc=KeyboardInterrupt):
    def callback(iteration, lr, loss):
        if iteration == n:
            raise exc()

    return callback


@pytest.mark.parametrize(("stop", "interrupt"), [(KeyboardInterrupt, True), (_Stop, False)])
def test_interrupted_and_resumed_run_equals_uninterrupted(store, tmp_path, stop, interrupt):
    kw = dict(weights=WNAME, iters=6, batch=2, crop=32, device="cpu", progress=False, seed=1,
              checkpoint_every=2)  # fmt: skip
    full = fit(store, tmp_path / "full", **kw)
    out = tmp_path / "cut"
    with pytest.raises(stop):
        fit(store, out, callback=_stop_at(3, stop), **kw)
    # Ctrl-C saves iteration 3; a crash (like a kill) leaves the checkpoint of iteration 2
    # and a log row for iteration 3 that the resume drops and recomputes
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == (3 if interrupt else 2)
    assert len(_losses(out)) == 3
    resumed = fit(store, out, resume=True, **kw)
    assert resumed["resumed_from"] == (3 if interrupt else 2)
    assert _losses(out) == _losses(tmp_path / "full")  # bit-identical, as logged
    a, b = _state(out), _state(tmp_path / "full")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["iterations"] == 6 and resumed["last_loss"] == full["last_loss"]
    # resuming a finished run does nothing
    again = fit(store, out, resume=True, **kw)
    assert again["iterations"] == 6 and _losses(out) == _losses(tmp_path / "full")


def test_resume_keeps_partial_log_averages(store, tmp_path):
    kw = dict(weights=WNAME, iters=6, batch=1, crop=16, device="cpu", progress=False,
              log_every=4, checkpoint_every=0)  # fmt: skip
    fit(store, tmp_path / "full", **kw)
    with pytest.raises(KeyboardInterrupt):
        fit(store, tmp_path / "cut", callback=_stop_at(2), **kw)
    fit(store, tmp_path / "cut", resume=True, **kw)
    rows = _read_log(tmp_path / "cut" / "log.csv")
    assert [r["iteration"] for r in rows] == ["4", "6"]
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")


def test_resume_refuses_other_settings_other_model_and_no_checkpoint(store, tmp_path):
    kw = dict(weights=WNAME, iters=3, batch=1, crop=16, device="cpu", progress=False)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(store, out, callback=_stop_at(1), **kw)
    with pytest.raises(ValueError, match=r"other settings.*lr: checkpoint 0\.01, now 0\.02"):
        fit(store, out, resume=True, **{**kw, "lr": 0.02})
    with pytest.raises(ValueError, match="model_config"):
        fit(store, out, resume=True, width=8, **kw)
    with pytest.raises(ValueError, match="no checkpoint.pt"):
        fit(store, tmp_path / "empty", resume=True, **kw)
    # the CLI says the same
    args = _fit_args(store, out, "--weights", WNAME, "--resume", "--iters", "3", "--batch", "1",
                     "--crop", "16", "--loss", "ce", "--weights", "none")  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "loss: checkpoint 'npa', now 'ce'" in result.output


def test_load_checkpoint_errors(store, tmp_path):
    out = tmp_path / "run"
    fit(store, out, weights=WNAME, iters=1, batch=1, crop=16, device="cpu", progress=False)
    model, ckpt = load_checkpoint(out / "checkpoint.pt", map_location="cpu")
    with pytest.raises(ValueError, match="classes"):
        load_checkpoint(out, expect={"classes": ["a", "b"]})
    assert load_checkpoint(out, expect={"num_classes": 6, "in_channels": 3})[1]["iteration"] == 1
    ckpt["config"]["model_config"]["width"] = 12  # claims another model than the weights
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="do not fit model small_fcn"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing")


def test_load_checkpoint_refuses_other_formats(store, tmp_path):
    # the layout of the first trainer version (no "config", no "format") and a format tag of
    # another version are refused by name, not half read
    net = SmallFCN(3, 6, width=4)
    legacy = {"model": net.state_dict(), "optimizer": {}, "iteration": 5,
              "model_config": net.config(), "classes": list(ISPRS.classes),
              "in_channels": 3, "num_classes": 6, "image_mean": [1.0, 2.0, 3.0],
              "image_std": [4.0, 5.0, 6.0]}  # fmt: skip
    torch.save(legacy, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="no 'model' and 'config' entries"):
        load_checkpoint(tmp_path)
    out = tmp_path / "run"
    fit(store, out, weights=WNAME, iters=1, batch=1, crop=16, device="cpu", progress=False)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["format"] == "npa_train.checkpoint/2"
    torch.save({**ckpt, "format": "npa_train.checkpoint/9"}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=r"format 'npa_train.checkpoint/9'; this version"):
        load_checkpoint(tmp_path / "future.pt")


def test_sigkill_then_resume_loses_nothing(store, tmp_path):
    # an `npa-train fit` process killed (SIGKILL: no chance to save) mid-run, then resumed
    # with --resume, equals a run that went through
    def cli(out, *extra):
        args = [sys.executable, "-m", "npa_train", *_fit_args(store, out, "--weights", WNAME),
                "--iters", "30", "--batch", "2", "--crop", "48", "--checkpoint-every", "3",
                "--seed", "2", "--threads", "1", *extra]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    out = tmp_path / "killed"
    proc = cli(out)
    t0 = time.time()
    try:
        while time.time() - t0 < 120:
            rows = _read_log(out / "log.csv") if (out / "log.csv").exists() else []
            if len(rows) >= 7 or proc.poll() is not None:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = torch.load(out / "checkpoint.pt", weights_only=True)["iteration"]
    assert 3 <= done < 30 and done % 3 == 0
    resumed = cli(out, "--resume")
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read().decode()
    # the reference: the same run in this process (the CLI's processes equal it bit for bit)
    fit(store, tmp_path / "ref", weights=WNAME, iters=30, batch=2, crop=48, checkpoint_every=3,
        seed=2, device="cpu", progress=False, threads=1)  # fmt: skip
    assert len(_losses(out)) == 30
    assert _losses(out) == _losses(tmp_path / "ref")
    a, b = _state(out), _state(tmp_path / "ref")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- Ctrl-C and SIGTERM inside an iteration ----------------------------------------------------
def _signal_during(monkeypatch, where, calls, signums):
    """Send ``signums`` to this process from inside the forward pass (after its BatchNorm
    layers updated their running statistics) or right after ``optimizer.step()``, at the
    ``calls``-th call: like a Ctrl-C landing in the middle of an iteration."""

    def send(n):
        if n == calls:
            for s in signums:
                os.kill(os.getpid(), s)

    if where == "forward":

        class Signalling(SmallFCN):
            n = 0

            def forward(self, x):
                out = super().forward(x)
                type(self).n += 1
                send(type(self).n)
                return out

        monkeypatch.setattr(model_mod, "SmallFCN", Signalling)
    else:

        class SignallingSGD(torch.optim.SGD):
            n = 0

            def step(self, closure=None):
                result = super().step(closure)
                type(self).n += 1
                send(type(self).n)
                return result

        monkeypatch.setattr(torch.optim, "SGD", SignallingSGD)


def _log_rows(out: Path) -> list[tuple]:
    # everything but the wall-clock seconds
    return [(r["iteration"], r["lr"], r["loss"], r["aux_loss"]) for r in _read_log(out / "log.csv")]


def _assert_same_run(out: Path, ref: Path) -> None:
    assert _log_rows(out) == _log_rows(ref)
    a, b = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (out, ref))
    assert a["iteration"] == b["iteration"] and a["losses"] == b["losses"]
    assert a["model"].keys() == b["model"].keys()
    for k in b["model"]:  # the weights and the BatchNorm buffers, num_batches_tracked too
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]) for k in sb)


# one torch thread everywhere (the default depends on the cores and the loader workers):
# runs in this process and in CLI processes with loader workers then compute the same
_SIG_KW = dict(weights=WNAME, iters=6, batch=2, crop=32, device="cpu", progress=False, seed=1,
               checkpoint_every=0, threads=1)  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sig") / "full"
    fit(store, out, **_SIG_KW)
    return out


@pytest.mark.parametrize("where", ["forward", "step"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_inside_an_iteration_stops_after_it(
    store, tmp_path, monkeypatch, uninterrupted, signum, where
):
    # the signal lands inside iteration 3 (its forward pass has already moved the BatchNorm
    # running statistics, or its optimizer step is done but not yet counted): iteration 3
    # is finished, saved, and the run stops there
    out = tmp_path / "cut"
    _signal_during(monkeypatch, where, 3, [signum])
    with pytest.raises(TrainingInterrupted) as info:
        fit(store, out, **_SIG_KW)
    assert info.value.signum == signum and info.value.terminated == (signum == signal.SIGTERM)
    assert info.value.partial is False and info.value.checkpoint_iteration == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 3 and len(ckpt["losses"]) == 3
    tracked = [v for k, v in ckpt["model"].items() if k.endswith("num_batches_tracked")]
    assert tracked and all(int(v) == 3 for v in tracked)
    assert [r[0] for r in _log_rows(out)] == ["1", "2", "3"]
    monkeypatch.undo()
    assert fit(store, out, resume=True, **_SIG_KW)["resumed_from"] == 3
    _assert_same_run(out, uninterrupted)


def test_second_ctrl_c_aborts_without_saving_and_a_relayed_one_does_not(
    store, tmp_path, monkeypatch, uninterrupted
):
    import npa_train.stopping as stopping

    kw = {**_SIG_KW, "checkpoint_every": 2}
    # two SIGINTs at once (a wrapper relaying the terminal's Ctrl-C): one request
    out = tmp_path / "relayed"
    _signal_during(monkeypatch, "forward", 3, [signal.SIGINT, signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        fit(store, out, **kw)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 3
    monkeypatch.undo()
    # a second Ctrl-C (later than stopping.REPEAT_S) aborts inside the iteration: the
    # periodic checkpoint of iteration 2 is kept, nothing of iteration 3 is saved
    out = tmp_path / "aborted"
    monkeypatch.setattr(stopping, "REPEAT_S", 0.0)
    _signal_during(monkeypatch, "forward", 3, [signal.SIGINT, signal.SIGINT])
    with pytest.raises(TrainingInterrupted) as info:
        fit(store, out, **kw)
    assert info.value.partial is True and info.value.checkpoint_iteration == 2
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 2
    tracked = [v for k, v in ckpt["model"].items() if k.endswith("num_batches_tracked")]
    assert all(int(v) == 2 for v in tracked)
    monkeypatch.undo()
    fit(store, out, resume=True, **kw)
    _assert_same_run(out, uninterrupted)


_CTRL_C = """
import os, signal, sys
import npa_train.model as m

class Signalling(m.SmallFCN):
    n = 0

    def forward(self, x):
        out = super().forward(x)
        type(self).n += 1
        if type(self).n == 3:  # Ctrl-C in a terminal: the whole process group, workers too
            os.killpg(os.getpgid(0), signal.SIGINT)
        return out

m.SmallFCN = Signalling
from npa_train.cli import main
main(sys.argv[1:], prog_name="npa-train")
"""


def test_ctrl_c_to_the_process_group_of_the_cli(store, tmp_path, uninterrupted):
    # `npa-train fit` with DataLoader workers in its own session; the Ctrl-C reaches the
    # workers too: they keep going, the run stops after iteration 3 with the usual note
    script = tmp_path / "ctrl_c.py"
    script.write_text(_CTRL_C)
    kw = _SIG_KW

    def args(out, *extra):
        return ["fit", "--store", str(store), "--out", str(out), "--weights", WNAME, "--iters",
                str(kw["iters"]), "--batch", str(kw["batch"]), "--crop", str(kw["crop"]),
                "--seed", str(kw["seed"]), "--checkpoint-every", "0", "--device", "cpu",
                "--workers", "2", "--threads", "1", "--quiet", *extra]  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "cut"
    proc = subprocess.run([sys.executable, str(script), *args(out)], env=env, capture_output=True,
                          text=True, timeout=120, start_new_session=True)  # fmt: skip
    assert proc.returncode == 130, proc.stderr
    assert "Ctrl-C: stopping after the current iteration" in proc.stderr
    assert f"interrupted: the checkpoint in {out} is saved" in proc.stderr
    assert "Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 3
    resumed = subprocess.run([sys.executable, "-m", "npa_train", *args(out, "--resume")], env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    # the same steps as the in-process run without loader workers, bit for bit
    _assert_same_run(out, uninterrupted)


# ---- losses through fit ------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["ce-weighted", "focal", "dice"])
def test_baseline_losses_train(store, tmp_path, loss):
    out = tmp_path / loss
    summary = fit(store, out, loss=loss, iters=4, batch=2, crop=32, device="cpu", progress=False)
    assert np.isfinite(summary["last_loss"])
    config = json.loads((out / "config.json").read_text())
    assert config["loss"] == loss and config["weights"] is None
    if loss == "ce-weighted":
        root = open_store(store)
        px = [root["tiles"][t].attrs["class_pixels"] for t in ("areaA", "areaB")]
        expected = median_frequency_weights(px, background=[5])  # clutter/background
        np.testing.assert_allclose(config["class_weight"], expected)
        assert config["class_weight"][5] == pytest.approx(min(expected[:5]))
    if loss == "focal":
        assert config["focal_gamma"] == 2.0
    with pytest.raises(ValueError, match="uses no stored weights"):
        fit(store, tmp_path / "x", loss=loss, weights=WNAME, iters=1)


def test_all_ignored_tile_gives_zero_loss_not_nan(tmp_path):
    palette = np.array((*ISPRS.palette, (0, 0, 0)), dtype=np.uint8)
    (tmp_path / "gts").mkdir()
    (tmp_path / "top").mkdir()
    tifffile.imwrite(tmp_path / "gts" / "blank_noBoundary.tif", palette[np.full((32, 32), 6)])
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "top" / "blank.tif", image)
    path = tmp_path / "store.zarr"
    run_precompute([str(tmp_path / "gts")], path, images=[str(tmp_path / "top")], ks="2")
    for loss, w in (("npa", "k2_log10_L0.5"), ("ce", None), ("focal", None), ("dice", None)):
        out = tmp_path / loss
        with pytest.warns(UserWarning, match="every label pixel .* is ignore"):
            fit(path, out, loss=loss, weights=w, iters=2, batch=2, crop=16, device="cpu",
                progress=False)  # fmt: skip
        assert [float(v) for v in _losses(out)] == [0.0, 0.0]


# ---- splits --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vaihingen_like(tmp_path_factory) -> Path:
    """16 tiny tiles named like the Vaihingen release (all labelled areas)."""
    folder = tmp_path_factory.mktemp("vaihingen_like")
    palette = np.array(ISPRS.palette, dtype=np.uint8)
    rng = np.random.default_rng(3)
    (folder / "gts").mkdir()
    (folder / "top").mkdir()
    for n in (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37):
        name = f"top_mosaic_09cm_area{n}"
        idx = np.kron(rng.integers(0, 6, (3, 3)), np.ones((8, 8), dtype=np.int64))
        tifffile.imwrite(folder / "gts" / f"{name}_noBoundary.tif", palette[idx])
        tifffile.imwrite(folder / "top" / f"{name}.tif", (idx[..., None] * 30 + 9).astype(np.uint8)
                         .repeat(3, -1))  # fmt: skip
    out = folder / "store.zarr"
    run_precompute([str(folder / "gts")], out, images=[str(folder / "top")], ks="1", chunk=16)
    return out


def test_vaihingen_paper_split(vaihingen_like, tmp_path):
    train, val = resolve_split(vaihingen_like, split="vaihingen-paper")
    assert train == [f"top_mosaic_09cm_area{n}" for n in (1, 3, 5, 7, 13, 17, 21, 23, 26, 32, 37)]
    assert val == [f"top_mosaic_09cm_area{n}" for n in (11, 15, 28, 30, 34)]
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["fit", "--store", str(vaihingen_like), "--out", str(out),
                                       "--split", "vaihingen-paper", "--loss", "ce", "--iters",
                                       "2", "--batch", "2", "--crop", "16", "--device", "cpu",
                                       "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["tiles"] == train and config["val_tiles"] == val
    assert config["split"] == "vaihingen-paper"


def test_split_with_missing_tiles_lists_them(store, vaihingen_like):
    with pytest.raises(StoreError, match=r"16 tile\(s\) missing.*area1,.*area34.*holds: areaA"):
        resolve_split(store, split="vaihingen-paper")
    with pytest.raises(ValueError, match="`split`"):
        resolve_split(store, split="potsdam")
    with pytest.raises(ValueError, match="not both"):
        resolve_split(vaihingen_like, split="vaihingen-paper", tiles="top_mosaic_09cm_area1")


def test_explicit_train_and_val_tiles(store, tmp_path):
    assert resolve_split(store, val_tiles="areaB") == (["areaA"], ["areaB"])
    assert resolve_split(store, tiles="areaA", val_tiles="areaB") == (["areaA"], ["areaB"])
    assert resolve_split(store) == (None, [])
    with pytest.raises(ValueError, match="both training and validation"):
        resolve_split(store, tiles="areaA,areaB", val_tiles="areaB")
    with pytest.raises(StoreError, match="validation tile.*nope.*areaA, areaB"):
        resolve_split(store, val_tiles="nope")
    out = tmp_path / "run"
    args = _fit_args(store, out, "--weights", WNAME, "--train-tiles", "areaA", "--val-tiles",
                     "areaB", "--iters", "2")  # fmt: skip
    assert CliRunner().invoke(main, args).exit_code == 0
    _, ckpt = load_checkpoint(out)
    assert ckpt["config"]["tiles"] == ["areaA"] and ckpt["config"]["val_tiles"] == ["areaB"]


# ---- the batched warp in the loop; preview -------------------------------------------------------
def test_fit_with_the_batched_warp_on_the_cpu(store, tmp_path):
    out = tmp_path / "run"
    summary = fit(store, out, weights=WNAME, iters=3, batch=3, crop=24, device="cpu",
                  warp_on="device", progress=False)  # fmt: skip
    assert np.isfinite(summary["last_loss"])
    assert json.loads((out / "config.json").read_text())["warp_on"] == "device"


def test_preview_writes_aligned_triplets(store, tmp_path):
    from PIL import Image

    out = tmp_path / "preview"
    result = CliRunner().invoke(main, ["preview", "--store", str(store), "--weights", WNAME,
                                       "--n", "3", "--out", str(out), "--seed", "4", "--crop",
                                       "40"])  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "preview.json").read_text())
    assert len(meta["samples"]) == 3 and meta["seed"] == 4 and meta["weights"] == WNAME
    palette = np.array((*ISPRS.palette,), dtype=np.uint8)
    for i in range(3):
        label = np.load(out / f"{i:03d}_label.npy")
        weight = np.load(out / f"{i:03d}_weight.npy")
        image = np.load(out / f"{i:03d}_image.npy")
        assert label.shape == weight.shape == (40, 40) and image.shape == (3, 40, 40)
        assert (weight[label == 255] == 0).all() and (weight[label != 255] > 0).all()
        rgb = np.asarray(Image.open(out / f"{i:03d}_label.png").convert("RGB"))
        valid = label != 255
        np.testing.assert_array_equal(rgb[valid], palette[label[valid]])
        assert (rgb[~valid] == 0).all()
        heat = np.asarray(Image.open(out / f"{i:03d}_weight.png").convert("RGB"))
        assert (heat[~valid] == 0).all() and heat.shape == (40, 40, 3)
        # the triplet: titles above the panels, the image first, the heat map with its bar
        trip = np.asarray(Image.open(out / f"{i:03d}_triplet.png").convert("RGB"))
        top = trip.shape[0] - 40
        assert top > 0 and (trip[:top] < 128).any()
        np.testing.assert_array_equal(
            trip[top:, :40], np.asarray(Image.open(out / f"{i:03d}_image.png").convert("RGB"))
        )
        x = next(
            x for x in range(trip.shape[1] - 40) if np.array_equal(trip[top:, x : x + 40], heat)
        )
        bar = trip[top:, x + 43 : x + 55].astype(int)  # viridis, the maximum at the top
        assert np.abs(bar[0] - (253, 231, 37)).max() <= 16
        assert np.abs(bar[-1] - (68, 1, 84)).max() <= 16
        assert Image.open(out / f"{i:03d}_image.png").size == (40, 40)
    # the samples are the first ones a fit with the same seed trains on
    from npa_train.data import StoreCropDataset

    ds = StoreCropDataset(store, WNAME, crop=40, seed=4)
    np.testing.assert_array_equal(ds[1]["label"].numpy(), np.load(out / "001_label.npy"))


def test_preview_errors(store, tmp_path):
    result = CliRunner().invoke(main, ["preview", "--store", str(store), "--weights", "k7_raw",
                                       "--out", str(tmp_path / "p")])  # fmt: skip
    assert result.exit_code != 0 and "k7_raw" in result.output and WNAME in result.output
    result = CliRunner().invoke(main, ["preview", "--store", str(store), "--n", "0", "--out",
                                       str(tmp_path / "p")])  # fmt: skip
    assert result.exit_code != 0 and "Invalid value for '--n': must be an integer >= 1" in (
        result.output
    )


# ---- torchvision models through fit (the optional extra) ---------------------------------------
def test_fit_resume_and_load_a_torchvision_model(store, tmp_path):
    tv = pytest.importorskip("torchvision", exc_type=ImportError)
    torch.save(tv.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pt")
    kw = dict(weights=WNAME, model="fcn_resnet50", iters=4, batch=2, crop=32, device="cpu",
              progress=False, seed=3, pretrained=tmp_path / "r50.pt")  # fmt: skip
    fit(store, tmp_path / "full", **kw)
    with pytest.raises(KeyboardInterrupt):
        fit(store, tmp_path / "cut", callback=_stop_at(2), **kw)
    fit(store, tmp_path / "cut", resume=True, **kw)
    # dropout in the FCN heads draws from torch's RNG: restored on resume, so equal
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")
    rows = _read_log(tmp_path / "full" / "log.csv")
    assert all(float(r["aux_loss"]) > 0 for r in rows)  # deep supervision was on
    model, ckpt = load_checkpoint(tmp_path / "full")
    cfg = ckpt["config"]
    assert cfg["model"] == "fcn_resnet50" and cfg["aux_weight"] == 0.4
    assert cfg["pretrained_report"]["kind"] == "backbone"
    with torch.no_grad():
        out = model(torch.randn(1, 3, 40, 48))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 6, 40, 48)
    with pytest.raises(ValueError, match="`batch`"):
        fit(store, tmp_path / "x", weights=WNAME, model="deeplabv3_resnet50", batch=1, iters=1)
    with pytest.raises(ValueError, match="`pretrained`"):
        fit(store, tmp_path / "y", **{**kw, "pretrained": tmp_path / "missing.pt"})


def test_incomplete_tiles_are_skipped_with_a_warning_and_refused_when_named(store, tmp_path):
    import shutil

    from npa_precompute.store import IncompleteTileError

    copy = tmp_path / "store.zarr"
    shutil.copytree(store, copy)
    open_store(copy, mode="r+")["tiles"]["areaB"].attrs["complete"] = False
    kw = dict(weights=WNAME, iters=1, batch=1, crop=16, device="cpu", progress=False)
    with pytest.warns(UserWarning, match="skipping incomplete tile.*areaB"):
        fit(copy, tmp_path / "a", **kw)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["tiles"] == ["areaA"]
    with pytest.raises(IncompleteTileError, match="areaB"):
        fit(copy, tmp_path / "b", tiles="areaA,areaB", **kw)
