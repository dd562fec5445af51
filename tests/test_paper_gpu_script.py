"""scripts/paper_gpu.sh: each paper experiment trains the paper's network for it (dry run)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paper_gpu.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _dry(tmp_path, *args) -> subprocess.CompletedProcess:
    cmd = ["bash", str(SCRIPT), "--dry-run", "--data", "/data/V", "--out", str(tmp_path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _fits(stdout: str) -> list[tuple[str, str, str, str]]:
    """(model, loss, weights, seed) of every `npa-train fit` line."""
    out = []
    for line in stdout.splitlines():
        if line.startswith("+ npa-train fit"):
            opt = dict(re.findall(r"--(model|loss|weights|seed) (\S+)", line))
            out.append((opt["model"], opt["loss"], opt["weights"], opt["seed"]))
    return out


def test_each_stage_uses_the_papers_network(tmp_path):
    r = _dry(tmp_path, "--pretrained", "r101.pth", "--seeds", "0 1 2")
    assert r.returncode == 0, r.stderr
    fits = _fits(r.stdout)
    stages = re.split(r"^== ", r.stdout, flags=re.M)
    by_stage = {s.split("\n", 1)[0]: _fits(s) for s in stages if s.strip()}
    assert [s for s in by_stage if s.startswith(("stores", "table", "fig", "compare"))] == [
        "stores", "table1", "table2", "fig5", "table3", "compare"
    ]  # fmt: skip
    assert {m for m, *_ in by_stage["table1"] + by_stage["table2"] + by_stage["fig5"]} == {"fcn"}
    assert sorted({(m, lo) for m, lo, *_ in by_stage["table3"]}) == [
        ("deeplabv3", "ce"), ("deeplabv3", "npa"), ("fcn_dilated", "ce"), ("fcn_dilated", "npa"),
        ("pspnet", "ce"), ("pspnet", "npa"),
    ]  # fmt: skip
    assert [lo for _, lo, _, s in by_stage["table1"] if s == "0"] == [
        "ce", "npa", "ce-weighted", "focal", "dice"
    ]  # fmt: skip
    assert [w for *_, w, s in by_stage["table2"] if s == "0"] == [
        "k32_norm_L0", "k32_norm_L0.5", "k32_ln_L0.5", "k32_log10_L0.5"
    ]  # fmt: skip
    assert [w for *_, w, s in by_stage["fig5"] if s == "1"] == [
        f"k{k}_log10_L0.5" for k in (8, 16, 32, 64)
    ]
    assert len(fits) == 3 * (5 + 4 + 4 + 6)
    assert r.stdout.count("+ npa-precompute run") == 2
    assert "--iters 5000 " in r.stdout and "--pretrained r101.pth " in r.stdout
    assert r.stdout.count("+ npa-train evaluate") == len(fits)
    # every run validates during training (Fig. 6) and is scored on both ground truths
    assert all("--val-every 500" in line for line in r.stdout.splitlines()
               if line.startswith("+ npa-train fit"))  # fmt: skip
    assert r.stdout.count("--full-gt ") == len(fits)
    compares = [line for line in r.stdout.splitlines() if line.startswith("+ npa-train compare")]
    assert len(compares) == 4 and sum("--by k " in c for c in compares) == 1


def test_r50_iters_seeds_resume_and_skip(tmp_path):
    run = tmp_path / "runs" / "pspnet_r50_ce_s4"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"")
    done = tmp_path / "eval" / "pspnet_r50_ce_s4"
    done.mkdir(parents=True)
    (done / "metrics.md").write_text("")
    r = _dry(tmp_path, "--pretrained", "r50.pth", "--r50", "--iters", "40", "--seeds", "4",
             "table3")  # fmt: skip
    assert r.returncode == 0, r.stderr
    fits = _fits(r.stdout)
    assert [m for m, *_ in fits] == [
        "fcn_dilated_r50", "fcn_dilated_r50", "pspnet_r50", "pspnet_r50",
        "deeplabv3_r50", "deeplabv3_r50",
    ]  # fmt: skip
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("+ npa-train")]
    psp_ce = [ln for ln in lines if "pspnet_r50_ce_s4" in ln]
    assert len(psp_ce) == 1 and psp_ce[0].endswith("--resume")  # fit resumed, eval skipped
    assert sum(ln.endswith("--resume") for ln in lines) == 1
    assert all("--iters 40 " in ln for ln in lines if " fit " in ln)


def test_bad_arguments(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "table1"], capture_output=True, text=True)
    assert r.returncode == 2 and "--data DIR is required" in r.stderr
    r = _dry(tmp_path, "table1")
    assert r.returncode == 2 and "--pretrained FILE" in r.stderr
    r = _dry(tmp_path, "--pretrained", "x", "table9")
    assert r.returncode == 2 and "unknown argument 'table9'" in r.stderr
    r = _dry(tmp_path, "stores")  # precompute needs no weights file
    assert r.returncode == 0 and r.stdout.count("+ npa-precompute run") == 2
