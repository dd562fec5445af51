"""A damaged checkpoint (bytes zeroed inside a tensor) is refused, naming the file, on every
read: read_checkpoint, load_model (predict, evaluate) and fit --resume."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import write_train_store

from npa_train.checkpoint import CheckpointError, load_model, read_checkpoint
from npa_train.cli import main
from npa_train.evaluate import evaluate
from npa_train.train import fit

pytestmark = pytest.mark.usefixtures("one_thread")

KW = dict(weights="k4_log10_L0.5", iters=2, batch=2, crop=32, device="cpu", progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    store = write_train_store(tmp_path_factory.mktemp("integrity"))
    out = tmp_path_factory.mktemp("irun") / "run"
    fit(store, out, **KW)
    return store, out


def _zero_inside_largest_tensor(path: Path, count: int = 64) -> str:
    """Zero ``count`` bytes in the middle of the largest entry of a torch.save zip."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
        start = info.header_offset + 30 + name_len + extra_len
        f.seek(start + info.file_size // 2)
        before = f.read(count)
        assert before != bytes(count)
        f.seek(start + info.file_size // 2)
        f.write(bytes(count))
    return info.filename


def test_damaged_checkpoint_is_refused_naming_the_file(run, tmp_path):
    store, out = run
    damaged = tmp_path / "damaged.pt"
    shutil.copy(out / "checkpoint.pt", damaged)
    entry = _zero_inside_largest_tensor(damaged)
    # torch alone reads it, with other weights: the damage is silent without the check
    a = torch.load(damaged, weights_only=True)["model"]
    b = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert not all(torch.equal(a[k], b[k]) for k in b)
    match = rf"{damaged} is damaged: the checksum \(CRC-32\) of its entry '{entry}'"
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(damaged)
    with pytest.raises(CheckpointError, match=match):
        load_model(damaged, device="cpu")
    with pytest.raises(CheckpointError, match=match):
        evaluate(store, damaged, None, tiles="areaB", window=32, device="cpu", progress=False)
    read_checkpoint(out / "checkpoint.pt")  # the intact one still reads


def test_resume_from_a_damaged_checkpoint_is_refused(run, tmp_path):
    store, out = run
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    _zero_inside_largest_tensor(cut / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=f"{cut / 'checkpoint.pt'} is damaged"):
        fit(store, cut, resume=True, **{**KW, "iters": 4})
    r = CliRunner().invoke(main, ["predict", str(store.parent / "top"), "--checkpoint", str(cut),
                                  "--out", str(tmp_path / "p"), "--quiet"])  # fmt: skip
    assert r.exit_code != 0 and f"{cut / 'checkpoint.pt'} is damaged" in r.output


def test_a_file_that_is_not_a_zip_is_not_a_readable_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match=f"{bad} is not a readable checkpoint"):
        read_checkpoint(bad)


def test_damaged_pretrained_file_is_refused_naming_it(tmp_path):
    """``--pretrained`` (the trainer's --init) reads its state dict through the same CRC check."""
    from npa_precompute.errors import ParameterError
    from npa_train.model import build_model, load_pretrained

    model = build_model("small_fcn", width=8)
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save(model.state_dict(), good)
    shutil.copy(good, bad)
    entry = _zero_inside_largest_tensor(bad)
    with pytest.raises(ParameterError, match=rf"{bad} is damaged: .* entry '{entry}'") as exc:
        load_pretrained(build_model("small_fcn", width=8), bad)
    assert exc.value.param == "pretrained"
    assert load_pretrained(build_model("small_fcn", width=8), good)["kind"] == "full"
