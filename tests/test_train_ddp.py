"""npa-train fit under torchrun: DDP on the CPU with gloo and 2 processes.

Per-rank crop streams, losses all-reduced across ranks, NPALoss gradients under DDP, rank 0
alone writing the run folder, and an interrupted DDP run resumed to the same losses and
weights, bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import write_train_store

from npa_train.augment import AugmentConfig
from npa_train.checkpoint import load_checkpoint
from npa_train.cli import main
from npa_train.criteria import build_criterion
from npa_train.data import StoreCropDataset
from npa_train.distributed import all_reduce_mean, distributed_env, rank_sample_indices
from npa_train.model import SmallFCN, build_model

ROOT = Path(__file__).resolve().parents[1]
WNAME = "k4_log10_L0.5"
SEED, ITERS, BATCH, CROP = 3, 4, 2, 32
_TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                  "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Two small ISPRS-coded tiles whose image is a noisy function of the label."""
    return write_train_store(tmp_path_factory.mktemp("train_ddp"))


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_VARS}
    path = env.get("PYTHONPATH")
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + (os.pathsep + path if path else ""))
    return env


def _fit_options(store, out) -> list[str]:
    return ["--store", str(store), "--out", str(out), "--weights", WNAME, "--iters", str(ITERS),
            "--batch", str(BATCH), "--crop", str(CROP), "--seed", str(SEED), "--device", "cpu",
            "--checkpoint-every", "2"]  # fmt: skip


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--tee", "3", *args]  # fmt: skip
    return subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=180)


def _rows(out: Path) -> list[dict]:
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _losses(out: Path) -> list[tuple[str, str, str]]:
    return [(r["iteration"], r["lr"], r["loss"]) for r in _rows(out)]


@pytest.fixture(scope="module")
def ddp_run(store, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """An uninterrupted 4-iteration DDP run (2 ranks, batch 2 each), progress bar on."""
    out = tmp_path_factory.mktemp("ddp") / "full"
    result = _torchrun("-m", "npa_train", "fit", *_fit_options(store, out))
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result


# ---- the crop streams ----------------------------------------------------------------------------
def test_rank_sample_indices_slice_the_effective_batch():
    # rank r of W takes the r-th slice of the batch a single process with batch * W draws
    for world, batch in ((1, 3), (2, 2), (3, 1), (4, 6)):
        for it in range(5):
            ranks = [rank_sample_indices(it, batch, r, world) for r in range(world)]
            assert [i for r in ranks for i in r] == list(
                range(it * batch * world, (it + 1) * batch * world)
            )
    assert rank_sample_indices(7, 6) == range(42, 48)  # a single process: fit's stream
    assert rank_sample_indices(0, 2, 1, 2) == range(2, 4)
    assert rank_sample_indices(3, 2, 0, 2) == range(12, 14)


@pytest.mark.parametrize(
    ("args", "name"),
    [((-1, 2, 0, 2), "iteration"), ((0, 0, 0, 2), "batch"), ((0, 2, 2, 2), "rank"),
     ((0, 2, -1, 2), "rank"), ((0, 2, 0, 0), "world_size"), ((True, 2, 0, 1), "iteration")],
)  # fmt: skip
def test_rank_sample_indices_errors_name_the_argument(args, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        rank_sample_indices(*args)


def test_ranks_draw_different_crops(store):
    ds = StoreCropDataset(store, WNAME, crop=CROP, seed=SEED, length=100)
    for it in range(ITERS):
        params = {r: [ds.sample_params(i) for i in rank_sample_indices(it, BATCH, r, 2)]
                  for r in (0, 1)}  # fmt: skip
        keys = {r: [(p.tile, p.center, p.scale, p.angle) for p in ps] for r, ps in params.items()}
        assert not set(keys[0]) & set(keys[1]), keys
        windows = {r: [p.window(ds.shapes[p.tile_index]) for p in ps] for r, ps in params.items()}
        assert windows[0] != windows[1]
        # deterministic: a resumed run draws the same crops again
        again = [ds.sample_params(i) for i in rank_sample_indices(it, BATCH, 1, 2)]
        assert again == params[1]


# ---- environment and reduction -----------------------------------------------------------------
def test_distributed_env(monkeypatch):
    for k in _TORCHRUN_VARS:
        monkeypatch.delenv(k, raising=False)
    assert distributed_env() == (0, 0, 1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed_env() == (0, 0, 1)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="`RANK` is not set"):
        distributed_env()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed_env() == (3, 1, 4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="`RANK` must be < WORLD_SIZE 4"):
        distributed_env()
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(ValueError, match="`LOCAL_RANK` must be a non-negative integer"):
        distributed_env()


def test_all_reduce_mean_without_a_process_group():
    x = torch.tensor([1.5, 2.0], dtype=torch.float64)
    y = all_reduce_mean(x)
    assert torch.equal(x, y) and y is not x
    with pytest.raises(TypeError, match="`values`"):
        all_reduce_mean(torch.tensor([1, 2]))


_COLLECTIVES = """
import sys
import torch
import torch.distributed as dist
from npa_train.distributed import all_reduce_mean
from npa_train.loss import NPALoss

dist.init_process_group("gloo")
r, world = dist.get_rank(), dist.get_world_size()
# all_reduce_mean of the ranks' losses
loss = torch.tensor([[0.7310586, 2.4567891], [1.1920929e-07, 3.0]][r], dtype=torch.float32)
mean = all_reduce_mean(loss.double())
# NPALoss under DistributedDataParallel
torch.manual_seed(0)
net = torch.nn.Conv2d(3, 6, 3, padding=1)
ddp = torch.nn.parallel.DistributedDataParallel(net)
crit = NPALoss(k=4)


def data(rank):
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(2, 3, 20, 24, generator=g)
    t = torch.randint(0, 6, (2, 5, 6), generator=g).repeat_interleave(4, 1).repeat_interleave(4, 2)
    t[:, :2] = 255
    return x, t


x, t = data(r)
crit(ddp(x), t).backward()
# the gradient DDP averaged equals the mean of the ranks' single-process gradients
ref = torch.nn.Conv2d(3, 6, 3, padding=1)
ref.load_state_dict(net.state_dict())
grads = []
for rank in range(world):
    ref.zero_grad()
    xr, tr = data(rank)
    crit(ref(xr), tr).backward()
    grads.append(ref.weight.grad.clone())
want = sum(grads) / world
torch.save({"loss": loss, "mean": mean, "grad": net.weight.grad, "want": want},
           sys.argv[1] + f"/rank{r}.pt")
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def collectives(tmp_path_factory) -> list[dict]:
    """One torchrun of 2 gloo ranks for the collective checks below: what each rank saved."""
    out = tmp_path_factory.mktemp("collectives")
    script = out / "collectives.py"
    script.write_text(_COLLECTIVES)
    result = _torchrun(str(script), str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_all_reduce_mean_is_the_mean_of_the_ranks_losses(collectives):
    got = collectives
    expected = (got[0]["loss"].double() + got[1]["loss"].double()) / 2  # exact in float64
    assert torch.equal(got[0]["mean"], expected) and torch.equal(got[1]["mean"], expected)
    assert got[0]["mean"].dtype == torch.float64


def test_npaloss_under_ddp(collectives):
    # the gradient DDP averaged equals the mean of the ranks' single-process gradients
    for r, got in enumerate(collectives):
        torch.testing.assert_close(got["grad"], got["want"], rtol=1e-5, atol=1e-7, msg=f"rank {r}")
    assert not torch.equal(collectives[0]["grad"], torch.zeros_like(collectives[0]["grad"]))


# ---- torchrun -m npa_train fit -----------------------------------------------------------------
def test_ddp_fit_writes_one_run_from_rank_0(ddp_run):
    out, result = ddp_run
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "log.csv"]
    # --tee 3 prefixes every line of rank r with [default{r}]: only rank 0 prints
    prefixes = set(re.findall(r"\[default(\d+)\]:", result.stdout + result.stderr))
    assert prefixes == {"0"}, result.stdout + result.stderr
    summary = [ln for ln in result.stdout.splitlines() if "iterations, this session" in ln]
    assert len(summary) == 1 and "x 2 ranks, effective batch 4" in summary[0]
    assert "fit:" in result.stderr  # rank 0's progress bar
    rows = _rows(out)
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    config = json.loads((out / "config.json").read_text())
    assert (config["world_size"], config["batch"], config["effective_batch"]) == (2, 2, 4)
    assert config["distributed_backend"] == "gloo" and config["device"] == "cpu"
    # the unwrapped model's weights: the checkpoint loads in a single process
    model, ckpt = load_checkpoint(out)
    assert isinstance(model, SmallFCN) and ckpt["iteration"] == ITERS
    assert ckpt["config"]["world_size"] == 2 and ckpt["config"]["effective_batch"] == 4
    assert not any(k.startswith("module.") for k in ckpt["model"])


def test_ddp_logged_loss_is_the_mean_over_the_ranks_crops(store, ddp_run):
    # recompute step 1 of each rank by hand: the same initial weights (seeded before the
    # model is built), rank r's crops, the npa loss; the logged loss is their mean
    out, _ = ddp_run
    aug = AugmentConfig.from_options((CROP, CROP), augment=True, scale=(0.5, 2.0),
                                     rotation=10.0, flip=True, rotate=False, blur=0.5)  # fmt: skip
    ds = StoreCropDataset(store, WNAME, augment=aug, seed=SEED, length=100)
    criterion = build_criterion("npa", ignore_index=ds.ignore_index, reduction="mean")
    torch.manual_seed(SEED)
    net = build_model("small_fcn", in_channels=3, num_classes=6, aux=False, width=24).train()
    per_rank = []
    with torch.no_grad():
        for r in (0, 1):
            items = [ds[i] for i in rank_sample_indices(0, BATCH, r, 2)]
            image = torch.stack([it["image"] for it in items])
            label = torch.stack([it["label"] for it in items])
            weight = torch.stack([it["weight"] for it in items])
            per_rank.append(float(criterion(net(image), label, weight)))
    logged = float(_rows(out)[0]["loss"])
    assert logged == pytest.approx(np.mean(per_rank), rel=2e-5)
    assert abs(per_rank[0] - per_rank[1]) > 1e-3  # the ranks' crops differ, so would a rank alone
    assert logged != pytest.approx(per_rank[0], rel=1e-4)


_STOP = """
import sys
from npa_train.distributed import distributed_env
from npa_train.train import fit

def stop(iteration, lr, loss):  # rank 0 alone is interrupted, as by a Ctrl-C on its node
    if iteration == 2 and distributed_env()[0] == 0:
        raise KeyboardInterrupt

fit(sys.argv[1], sys.argv[2], weights={w!r}, iters={iters}, batch={batch}, crop={crop},
    seed={seed}, device="cpu", checkpoint_every=0, progress=False, callback=stop)
"""


@pytest.fixture(scope="module")
def cut_run(store, tmp_path_factory) -> tuple[Path, dict, list[tuple[str, str, str]]]:
    """A DDP run interrupted at iteration 2 (KeyboardInterrupt on rank 0): its folder, and
    its checkpoint and logged losses as they were before any test resumed it."""
    out = tmp_path_factory.mktemp("ddp") / "cut"
    script = out.parent / "stop.py"
    script.write_text(textwrap.dedent(_STOP).format(w=WNAME, iters=ITERS, batch=BATCH,
                                                    crop=CROP, seed=SEED))  # fmt: skip
    stopped = _torchrun(str(script), str(store), str(out))
    assert stopped.returncode != 0
    return out, torch.load(out / "checkpoint.pt", weights_only=True), _losses(out)


def _assert_same_state(a, b, where=()) -> None:
    """Equal nested checkpoint values: tensors bit for bit, everything else by ``==``."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same_state(a[key], b[key], (*where, key))
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, (*where, i))
    else:
        assert a == b, where


#: What a resumed run reads back from a checkpoint (the config is checked against the
#: options, ``seconds`` only continues the clock)
_RESUMED_STATE = ("model", "optimizer", "scaler", "iteration", "losses", "log_pending", "rng")


def test_ddp_interrupted_and_resumed_equals_uninterrupted(store, ddp_run, cut_run):
    full, _ = ddp_run
    out, ckpt, losses = cut_run
    # rank 0 saved step 2; rank 1, whose next collective broke, wrote nothing
    assert ckpt["iteration"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "log.csv"]
    assert [it for it, _, _ in losses] == ["1", "2"]

    resumed = _torchrun("-m", "npa_train", "fit", *_fit_options(store, out), "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "4 iterations (resumed at iteration 2)" in resumed.stdout
    assert _losses(out) == _losses(full)  # bit-identical as logged
    a = torch.load(out / "checkpoint.pt", weights_only=True)
    b = torch.load(full / "checkpoint.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == ITERS and a["losses"] == b["losses"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    assert a["config"]["world_size"] == 2


_SIGNAL = """
import os, signal, sys
import npa_train.model as m
from npa_train.distributed import distributed_env
from npa_train.train import fit

RANK = distributed_env()[0]

class Signalling(m.SmallFCN):
    n = 0

    def forward(self, x):  # after its BatchNorm layers moved their running statistics
        out = super().forward(x)
        type(self).n += 1
        if type(self).n == 2 and RANK == {rank}:  # inside iteration 2 of rank {rank} alone
            os.kill(os.getpid(), signal.{signame})
        return out

m.SmallFCN = Signalling

def record(iteration, lr, loss):  # the iterations this rank completed
    with open(os.path.join(sys.argv[3], f"rank{{RANK}}.txt"), "a") as f:
        f.write(f"{{iteration}}\\n")

fit(sys.argv[1], sys.argv[2], weights={w!r}, iters={iters}, batch={batch}, crop={crop},
    seed={seed}, device="cpu", checkpoint_every=0, progress=False, callback=record)
"""


@pytest.mark.parametrize(("rank", "signame"), [(1, "SIGTERM"), (0, "SIGINT")])
def test_ddp_signal_inside_an_iteration_on_one_rank(store, cut_run, tmp_path, rank, signame):
    # one rank gets the signal in the middle of iteration 2; the request travels with the
    # loss all-reduce of that step, so both ranks finish iteration 2 and stop there, and
    # rank 0 saves it, BatchNorm buffers too: the same state as a stop between iterations
    out = tmp_path / "cut"
    script = tmp_path / "stop_signal.py"
    script.write_text(textwrap.dedent(_SIGNAL).format(rank=rank, signame=signame, w=WNAME,
                                                      iters=ITERS, batch=BATCH, crop=CROP,
                                                      seed=SEED))  # fmt: skip
    stopped = _torchrun(str(script), str(store), str(out), str(tmp_path))
    assert stopped.returncode != 0
    for r in (0, 1):
        assert (tmp_path / f"rank{r}.txt").read_text().split() == ["1", "2"], r
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 2
    tracked = [v for k, v in ckpt["model"].items() if k.endswith("num_batches_tracked")]
    assert tracked and all(int(v) == 2 for v in tracked)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "log.csv"]
    # everything a resume reads equals the checkpoint of the run stopped between iterations
    # 2 and 3, which test_ddp_interrupted_and_resumed_equals_uninterrupted resumes to the
    # uninterrupted run bit for bit (a resume of its own here would repeat that: ~12 s)
    _, cut, cut_losses = cut_run
    for key in _RESUMED_STATE:
        _assert_same_state(ckpt[key], cut[key], (key,))
    assert _losses(out) == cut_losses


def test_resume_with_another_world_size_is_refused(store, ddp_run, monkeypatch):
    full, _ = ddp_run
    for k in _TORCHRUN_VARS:
        monkeypatch.delenv(k, raising=False)
    before = (full / "log.csv").read_text()
    args = ["fit", *_fit_options(store, full), "--resume", "--quiet"]
    result = CliRunner().invoke(main, args)  # one process
    assert result.exit_code != 0
    assert "trained with world size 2" in result.output
    assert "now started with world size 1" in result.output
    assert (full / "log.csv").read_text() == before
