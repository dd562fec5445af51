"""What a newcomer meets on the command lines: errors that name the option typed, a fast
``--help``, the paper's weights when ``--weights`` is left out, ``--threads``, and a
warning before training on labels that are all ignore."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner

from npa_precompute.cli import main as precompute
from npa_precompute.errors import ParameterError
from npa_precompute.pipeline import run_precompute
from npa_precompute.presets import ISPRS
from npa_train.cli import main as train
from npa_train.train import fit

PALETTE = np.array((*ISPRS.palette, (0, 0, 0)), dtype=np.uint8)
DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiles(folder: Path, labels: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    for sub in ("gts", "top"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for tid, idx in labels.items():
        tifffile.imwrite(folder / "gts" / f"{tid}_noBoundary.tif", PALETTE[idx])
        image = rng.integers(0, 256, size=(*idx.shape, 3)).astype(np.uint8)
        tifffile.imwrite(folder / "top" / f"{tid}.tif", image)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict:
    """``k32``: a store holding k32_log10_L0.5 (and k4); ``k4``: one holding only k4."""
    root = tmp_path_factory.mktemp("usability")
    rng = np.random.default_rng(1)
    idx = np.kron(rng.integers(0, 6, size=(5, 5)), np.ones((8, 8), np.int64))
    _tiles(root, {"areaA": idx, "areaB": idx[::-1].copy()})
    out = {}
    for name, ks in (("k32", "4,32"), ("k4", "4")):
        out[name] = root / f"{name}.zarr"
        run_precompute([str(root / "gts")], out[name], images=[str(root / "top")], ks=ks,
                       chunk=16)  # fmt: skip
    return out


def _invoke(cmd, args):
    return CliRunner().invoke(cmd, [str(a) for a in args])


def _fit_args(store, out, *extra):
    return ["fit", "--store", store, "--out", out, "--iters", "2", "--batch", "2", "--crop", "16",
            "--device", "cpu", "-q", *extra]  # fmt: skip


# -- --help without torch -----------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--help"], ["fit", "--help"], ["evaluate", "--help"]])
def test_npa_train_help_imports_no_heavy_module(args):
    code = (
        "import sys\n"
        "from npa_train.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'numba', 'zarr') if m in sys.modules))\n"
    )
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout
    assert "Options:" in r.stdout
    assert seconds < 2.5, f"{args}: {seconds:.2f} s"  # about 0.1 s; 5 s with torch imported


# -- errors name the option ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "option", "reason"),
    [
        (["--iters", "0"], "--iters", "must be an integer >= 1, got 0"),
        (["--lr", "-1"], "--lr", "must be a finite number > 0.0"),
        (["--crop", "0"], "--crop", "must be >= 1"),
        (["--focal-gamma", "-1", "--loss", "focal", "--weights", "none"], "--focal-gamma",
         "must be a finite number >= 0"),
        (["--blur", "2"], "--blur", "must be a probability in [0, 1]"),
        (["--loss", "ce", "--reduction", "sum", "--weights", "none"], "--reduction",
         "applies to the losses 'npa' and 'focal' only, not 'ce'"),
    ],
)  # fmt: skip
def test_fit_errors_name_the_option(stores, tmp_path, extra, option, reason):
    r = _invoke(train, _fit_args(stores["k32"], tmp_path / "r", *extra))
    assert r.exit_code == 2, r.output
    assert f"Invalid value for '{option}': {reason}" in r.output
    assert "`" not in r.output.split("Error:")[1]  # no Python parameter name left


def test_inference_and_precompute_errors_name_the_option(stores, tmp_path):
    fit(stores["k32"], tmp_path / "run", loss="ce", iters=1, batch=2, crop=16, device="cpu",
        progress=False)  # fmt: skip
    ev = ["evaluate", "--store", stores["k32"], "--checkpoint", tmp_path / "run", "--out",
          tmp_path / "e", "-q"]  # fmt: skip
    image = stores["k32"].parent / "top" / "areaA.tif"
    pr = ["predict", image, "--checkpoint", tmp_path / "run", "--out", tmp_path / "p", "-q"]
    labels = stores["k32"].parent / "gts"
    run = ["run", labels, "--out", tmp_path / "s.zarr", "-q"]
    cases = [
        (train, [*ev, "--window", "0"], "'--window': must be >= 1, got 0"),
        (train, [*ev, "--overlap", "1"], "'--overlap': must be in [0, 1), got '1'"),
        (train, [*ev, "--classes-in-mean", "roads"], "'--classes-in-mean': unknown class 'roads'"),
        (train, [*ev, "--boundary-ignore-fill", "-1"], "'--boundary-ignore-fill': must be >= 0"),
        (train, [*pr, "--batch", "0"], "'--batch': must be an integer >= 1"),
        (precompute, [*run, "--k", "4,-1"], "'--k': must be >= 0, got -1"),
        (precompute, [*run, "--transform", "log10:L=-1"], "'--transform': `L` must be >= 0"),
        (precompute, [*run, "--chunk", "8"], "'--chunk': must be an integer >= 16, got 8"),
        (precompute, [*run, "--preset", "index"], "'--num-classes': must be given"),
        (precompute, ["export", stores["k32"], "--tile", "areaA", "--array", "label", "--out",
                      tmp_path / "x.bmp"], "'--out': must end in one of .npy"),
        (precompute, ["show", stores["k32"], "--tile", "areaA", "--window", "0,0,0,4", "--out",
                      tmp_path / "f.png"], "'--window'"),
    ]  # fmt: skip
    for cmd, args, expected in cases:
        r = _invoke(cmd, args)
        assert r.exit_code == 2 and f"Invalid value for {expected}" in r.output, (args, r.output)
    assert not (tmp_path / "s.zarr").exists()


def test_library_errors_keep_the_python_names(stores, tmp_path):
    with pytest.raises(ParameterError, match=r"^`iters` must be an integer >= 1, got 0$") as exc:
        fit(stores["k32"], tmp_path / "r", weights="k32_log10_L0.5", iters=0)
    assert exc.value.param == "iters" and isinstance(exc.value, ValueError)
    with pytest.raises(ValueError, match=r"^`L` must be >= 0, got -1.0 in transform") as exc:
        run_precompute([str(stores["k32"].parent / "gts")], tmp_path / "s", transforms="ln:L=-1")
    assert exc.value.param == "transforms"


# -- --weights defaults to the paper's best when the store holds it -----------------------------


def test_fit_without_weights_uses_k32_log10_when_the_store_holds_it(stores, tmp_path):
    r = CliRunner().invoke(train, [str(a) for a in _fit_args(stores["k32"], tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert "--weights not given: training with k32_log10_L0.5" in r.output
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["weights"] == "k32_log10_L0.5" and config["loss"] == "npa"
    # given explicitly: no message
    r = _invoke(train, _fit_args(stores["k32"], tmp_path / "r2", "--weights", "k4_log10_L0.5"))
    assert r.exit_code == 0 and "not given" not in r.output
    # another loss takes no weights
    r = _invoke(train, _fit_args(stores["k32"], tmp_path / "r3", "--loss", "ce"))
    assert r.exit_code == 0 and "not given" not in r.output
    assert json.loads((tmp_path / "r3" / "config.json").read_text())["weights"] is None


def test_fit_without_weights_on_a_store_without_k32_lists_the_names(stores, tmp_path):
    r = _invoke(train, _fit_args(stores["k4"], tmp_path / "r"))
    assert r.exit_code == 2
    assert "Invalid value for '--loss': 'npa' needs a weights name (--weights)" in r.output
    assert "available in the store: k4_log10_L0.5" in r.output
    assert not (tmp_path / "r").exists()


# -- --threads ----------------------------------------------------------------------------------


def test_threads_sets_torch_threads_and_is_recorded(stores, tmp_path):
    before = torch.get_num_threads()
    try:
        for name in ("a", "b"):
            r = _invoke(train, _fit_args(stores["k32"], tmp_path / name, "--threads", "2",
                                         "--seed", "5"))  # fmt: skip
            assert r.exit_code == 0, r.output
            assert torch.get_num_threads() == 2
            assert json.loads((tmp_path / name / "config.json").read_text())["threads"] == 2
        a, b = (
            torch.load(tmp_path / n / "checkpoint.pt", weights_only=True)["model"] for n in "ab"
        )
        assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same threads: same run
        r = _invoke(train, ["predict", stores["k32"].parent / "top" / "areaA.tif", "--checkpoint",
                            tmp_path / "a", "--out", tmp_path / "p", "--window", "16", "-q",
                            "--threads", "1"])  # fmt: skip
        assert r.exit_code == 0, r.output
        assert torch.get_num_threads() == 1
        r = _invoke(train, ["evaluate", "--store", stores["k32"], "--checkpoint", tmp_path / "a",
                            "--out", tmp_path / "e", "--window", "16", "-q", "--threads",
                            "0"])  # fmt: skip
        assert r.exit_code == 2 and "'--threads'" in r.output
    finally:
        torch.set_num_threads(before)


def test_default_threads_follow_cores_workers_and_ranks():
    from npa_train.device import choose_threads, usable_cores

    assert choose_threads(0, cores=2) == (1, "2 usable core(s), 1 left free, 0 loader worker(s)")
    assert choose_threads(0, cores=1)[0] == 1  # a single core is used whole
    assert choose_threads(0, cores=16)[0] == 15  # one core left to the rest of the machine
    assert choose_threads(1, cores=4)[0] == 2  # and one per loader worker
    assert choose_threads(8, cores=4)[0] == 1  # never below 1
    assert choose_threads(0, ranks=2, cores=9)[0] == 4  # the node's ranks share the rest
    assert 1 <= usable_cores() <= (os.cpu_count() or 1)


# -- all ignore -------------------------------------------------------------------------------


def test_fit_on_an_all_ignore_store_warns(tmp_path):
    _tiles(tmp_path, {"blank": np.full((32, 32), 6)})  # 6: black, the ignore colour
    store = tmp_path / "store.zarr"
    run_precompute([str(tmp_path / "gts")], store, images=[str(tmp_path / "top")], ks="2")
    with pytest.warns(UserWarning, match=r"every label pixel of the training tile\(s\) blank is "
                      r"ignore \(255\): the loss is 0"):  # fmt: skip
        fit(store, tmp_path / "a", weights="k2_log10_L0.5", iters=1, batch=1, crop=16,
            device="cpu", progress=False)  # fmt: skip
    r = _invoke(train, _fit_args(store, tmp_path / "b", "--weights", "k2_log10_L0.5"))
    assert r.exit_code == 0 and "Warning: every label pixel" in r.output


def test_fit_on_labelled_tiles_does_not_warn(stores, tmp_path, recwarn):
    fit(stores["k4"], tmp_path / "r", weights="k4_log10_L0.5", iters=1, batch=1, crop=16,
        device="cpu", progress=False)  # fmt: skip
    assert not [w for w in recwarn if "label pixel" in str(w.message)]
