"""Drop-in adapters: each trains a few steps on the CPU and its loss falls.

Each framework is an optional extra (``make test`` installs them all); a test whose
framework is missing is skipped with the reason.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn

from npa_precompute import affinity_maps
from npa_precompute.presets import get_preset
from npa_precompute.transforms import parse_transform
from npa_train.loss import NPALoss as CoreNPALoss
from npa_train.loss import npa_cross_entropy
from npa_train.online import npa_weights, npa_weights_crop

IGN = 255
C = 4


def _toy(n=8, h=32, w=32, seed=0):
    """Blocky labels with an ignore band, images that encode the labels plus noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, C, (n, h // 8, w // 8), generator=g)
    label = coarse.repeat_interleave(8, 1).repeat_interleave(8, 2)
    label[:, :, 13:15] = IGN
    palette = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0], [0, 0, 0]])
    image = palette[label.clamp(max=C)].permute(0, 3, 1, 2)
    image = image + 0.3 * torch.randn(image.shape, generator=g)
    return image.contiguous(), label


def _falls(losses, factor=0.8):
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert np.isfinite(losses).all()
    assert last < factor * first, (first, last, losses)


def _import(name: str, reason: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.skip(f"{reason}: {type(exc).__name__}: {exc}")


# ---- segmentation_models_pytorch --------------------------------------------------------------
def test_smp_conventions_without_smp():
    from npa_train.adapters.smp import MULTICLASS_MODE, NPALoss

    image, label = _toy(n=2)
    logits = torch.randn(2, C, 32, 32)
    loss = NPALoss(MULTICLASS_MODE, ignore_index=IGN)
    core = CoreNPALoss(ignore_index=IGN)
    assert torch.equal(loss(logits, label), core(logits, label))
    assert torch.equal(loss(logits, label[:, None]), core(logits, label))  # (N, 1, H, W)
    # smp's default ignore_index=None ignores nothing (a 255 would be out of range)
    clean = label.clamp(max=C - 1)
    w = npa_weights(clean, 32, ignore_index=None)
    assert torch.equal(NPALoss()(logits, clean), npa_cross_entropy(logits, clean, w))
    with pytest.raises(ValueError, match="multiclass"):
        NPALoss("binary")
    with pytest.raises(ValueError, match="outside"):
        NPALoss()(logits, label)  # 255 without ignore_index


def test_smp_npa_options_are_keyword_only():
    from npa_train.adapters.smp import NPALoss

    # smp's losses take classes/alpha second: a positional 32 must not become k
    with pytest.raises(TypeError, match="positional"):
        NPALoss("multiclass", 32)
    assert NPALoss("multiclass", k=8).k == 8


# ---- label mistakes: a clear error through every adapter ---------------------------------------
# online.py's value check (issue 20 item 1) seen through the adapters: what their users read


def _blocky(values, n=2, size=64, block=16, seed=0):
    """Labels drawn from ``values`` in ``block``-pixel squares (large uniform areas, as in
    real masks: a window that holds only the stray value is what crashed a table gather)."""
    g = torch.Generator().manual_seed(seed)
    vals = torch.tensor(values)
    coarse = vals[torch.randint(0, len(values), (n, size // block, size // block), generator=g)]
    return coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)


LABEL_MISTAKES = {
    # smp's default ignore_index=None on masks holding 255
    "smp-default-None-with-255": (None, [0, 1, 2, 3, 4, 5, 255], 6, ["255", "None",
                                                                     "ignore_index=255"]),
    # torch's default ignore_index=-100 on masks holding 255
    "torch-default-100-with-255": (-100, [0, 1, 2, 3, 4, 5, 255], 6, ["255", "-100",
                                                                      "ignore_index=255"]),
    # raw LoveDA labels 0..7 with 7 classes (0 is no-data)
    "raw-loveda-0-7": (None, list(range(8)), 7, ["7", "None", "LoveDA"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(LABEL_MISTAKES))
def test_label_mistakes_give_a_named_error_through_the_adapters(case):
    from npa_train.adapters.smp import NPALoss

    ignore_index, values, classes, words = LABEL_MISTAKES[case]
    label = _blocky(values)
    logits = torch.randn(label.shape[0], classes, *label.shape[1:])
    # smp's (and torchgeo's task's) NPALoss, and the core one the Lightning module uses
    for loss in (NPALoss(ignore_index=ignore_index), CoreNPALoss(ignore_index=ignore_index)):
        with pytest.raises(ValueError) as info:  # not IndexError
            loss(logits, label)
        message = str(info.value)
        assert "-9223372036854775808" not in message  # never the internal sentinel
        assert "ignore_index" in message
        for word in words:  # the bad value, the ignore_index in effect, the usual fix
            assert word in message, (word, message)


def test_smp_unet_trains_and_loss_falls():
    smp = _import("segmentation_models_pytorch", "segmentation_models_pytorch is not installed")
    from npa_train.adapters.smp import MULTICLASS_MODE, NPALoss

    assert smp.losses.MULTICLASS_MODE == MULTICLASS_MODE
    torch.manual_seed(0)
    model = smp.Unet(encoder_name="resnet18", encoder_weights=None, in_channels=3, classes=C)
    loss_fn = NPALoss(smp.losses.MULTICLASS_MODE, ignore_index=IGN)  # the one line
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    image, label = _toy()
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = loss_fn(model(image), label)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    _falls(losses)


# ---- PyTorch Lightning -------------------------------------------------------------------------
class _Recorder:
    def __init__(self, pl):
        class Rec(pl.Callback):
            def __init__(self):
                self.losses = []

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                self.losses.append(float(outputs["loss"]))

        self.callback = Rec()


def _trainer(pl, steps, callbacks):
    return pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=callbacks,
                      num_sanity_val_steps=0)  # fmt: skip


def _loader(batch=4, n=8, as_dict=True):
    image, label = _toy(n=n)
    data = [{"image": image[i], "mask": label[i]} if as_dict else (image[i], label[i])
            for i in range(n)]  # fmt: skip
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False)


def test_lightning_module_trains_and_loss_falls():
    pl = _import("lightning.pytorch", "lightning is not installed")
    from npa_train.adapters.lightning import NPASegmentationModule
    from npa_train.model import SmallFCN

    torch.manual_seed(0)
    module = NPASegmentationModule(SmallFCN(3, C, width=8), k=8, ignore_index=IGN, lr=0.05)
    rec = _Recorder(pl).callback
    _trainer(pl, 24, [rec]).fit(module, _loader(), _loader(as_dict=False))
    assert len(rec.losses) == 24
    _falls(rec.losses)
    assert module.hparams.k == 8 and "model" not in module.hparams


def test_lightning_cli_builds_the_module_from_a_config():
    _import("lightning.pytorch", "lightning is not installed")
    _import("jsonargparse", "jsonargparse (LightningCLI) is not installed")
    from lightning.pytorch.cli import LightningCLI

    from npa_train.adapters.lightning import NPASegmentationModule

    cli = LightningCLI(
        NPASegmentationModule,
        run=False,
        save_config_callback=None,
        args=[
            "--model.model=npa_train.model.SmallFCN",
            "--model.model.init_args.in_channels=3",
            f"--model.model.init_args.num_classes={C}",
            "--model.k=16",
            "--model.transform=ln:L=0.5",
            "--trainer.accelerator=cpu",
            "--trainer.logger=false",
        ],
    )
    assert isinstance(cli.model, NPASegmentationModule)
    assert cli.model.criterion.k == 16 and cli.model.criterion.transform == "ln:L=0.5"
    assert cli.model.model.num_classes == C


# ---- torchgeo ----------------------------------------------------------------------------------
def test_torchgeo_task_trains_with_trainer_and_loss_falls():
    pl = _import("lightning.pytorch", "lightning is not installed")
    _import("torchgeo.trainers", "torchgeo is not installed or does not import")
    from npa_train.adapters.smp import NPALoss
    from npa_train.adapters.torchgeo import NPASegmentationTask

    torch.manual_seed(0)
    task = NPASegmentationTask(model="fcn", in_channels=3, num_classes=C, num_filters=16,
                               ignore_index=IGN, lr=0.01, loss="npa", npa_k=8)  # fmt: skip
    assert isinstance(task.criterion, NPALoss) and task.criterion.k == 8
    rec = _Recorder(pl).callback
    _trainer(pl, 24, [rec]).fit(task, _loader(), _loader())
    _falls(rec.losses)
    # torchgeo's own losses still work
    ce = NPASegmentationTask(model="fcn", in_channels=3, num_classes=C, num_filters=4,
                             ignore_index=IGN, loss="ce")  # fmt: skip
    assert isinstance(ce.criterion, nn.CrossEntropyLoss)
    with pytest.raises(ValueError, match="multiclass"):
        NPASegmentationTask(model="fcn", in_channels=3, task="binary", loss="npa")


# ---- mmsegmentation 1.x ------------------------------------------------------------------------
def _mmseg():
    return _import("npa_train.adapters.mmseg", "mmsegmentation 1.x is not installed")


def test_mmseg_registers_and_takes_mmsegs_call():
    adapter = _mmseg()
    from mmseg.registry import MODELS

    assert MODELS.module_dict["NPALoss"] is adapter.NPALoss
    loss = adapter.NPALoss(k=8, loss_weight=0.5)
    assert loss.loss_name == "loss_npa"
    image, label = _toy(n=2)
    score = torch.randn(2, C, 32, 32)
    w = npa_weights(label, 8, ignore_index=IGN)
    per_pixel = npa_cross_entropy(score, label, w, reduction="none")
    valid = (label != IGN).sum()
    # BaseDecodeHead.loss_by_feat: loss(seg_logits, seg_label, weight=seg_weight, ignore_index=)
    got = loss(score, label, weight=None, ignore_index=IGN)
    torch.testing.assert_close(got, 0.5 * per_pixel.sum() / label.numel(), rtol=1e-6, atol=0)
    avg = adapter.NPALoss(k=8, avg_non_ignore=True)(score, label, ignore_index=IGN)
    torch.testing.assert_close(avg, per_pixel.sum() / valid, rtol=1e-6, atol=0)
    factor = adapter.NPALoss(k=8)(score, label, ignore_index=IGN, avg_factor=10.0)
    torch.testing.assert_close(factor, per_pixel.sum() / 10, rtol=1e-6, atol=0)
    total = adapter.NPALoss(k=8)(score, label, ignore_index=IGN, reduction_override="sum")
    torch.testing.assert_close(total, per_pixel.sum(), rtol=1e-6, atol=0)
    none = adapter.NPALoss(k=8)(score, label, ignore_index=IGN, reduction_override="none")
    torch.testing.assert_close(none, per_pixel)
    sample_w = torch.rand(label.shape)  # e.g. an OHEM sampler's weights multiply ours
    weighted = adapter.NPALoss(k=8)(score, label, weight=sample_w, ignore_index=IGN,
                                    reduction_override="sum")  # fmt: skip
    torch.testing.assert_close(weighted, (per_pixel * sample_w).sum(), rtol=1e-5, atol=0)
    # another ignore value per call; fp16 scores (AmpOptimWrapper) give a float32 loss
    other = label.clone()
    other[other == IGN] = 7
    assert adapter.NPALoss(k=8)(score.half(), other, ignore_index=7).dtype == torch.float32
    all_ignored = torch.full_like(label, IGN)
    z = adapter.NPALoss(avg_non_ignore=True)(score, all_ignored, ignore_index=IGN)
    assert z.item() == 0.0


def test_mmseg_builds_from_a_config_dict(monkeypatch):
    adapter = _mmseg()
    from mmengine.registry import build_from_cfg
    from mmseg.registry import MODELS

    cfg = dict(type="NPALoss", k=16, transform="ln:L=0.5", loss_weight=2.0, avg_non_ignore=True)
    try:
        importlib.import_module("mmseg.models")
    except ImportError:
        # mmseg.models (which MODELS.build imports first) needs mmcv's compiled ops, which
        # mmcv-lite lacks: build as a registry does once mmseg's models are imported
        monkeypatch.setattr(MODELS, "_imported", True)
    built = build_from_cfg(cfg, MODELS)
    assert isinstance(built, adapter.NPALoss)
    assert (built.k, built.transform, built.loss_weight) == (16, "ln:L=0.5", 2.0)
    assert built.avg_non_ignore is True


def test_mmseg_loss_trains_a_model_and_falls():
    adapter = _mmseg()
    from mmengine.registry import build_from_cfg
    from mmseg.registry import MODELS

    with pytest.MonkeyPatch.context() as mp:
        try:
            importlib.import_module("mmseg.models")
        except ImportError:
            mp.setattr(MODELS, "_imported", True)
        loss_decode = build_from_cfg(dict(type="NPALoss", k=8), MODELS)
    assert isinstance(loss_decode, adapter.NPALoss)
    torch.manual_seed(0)
    from npa_train.model import SmallFCN

    model = SmallFCN(3, C, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    image, label = _toy()
    losses = []
    for _ in range(20):
        opt.zero_grad()
        seg_logits = model(image)
        # the decode head's call
        loss = loss_decode(seg_logits, label, weight=None, ignore_index=IGN)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    _falls(losses)


def test_mmseg_decode_head_with_npaloss():
    _mmseg()
    try:
        models = importlib.import_module("mmseg.models")
    except ImportError as exc:
        pytest.skip(
            "mmseg.models needs mmcv's compiled ops (mmcv._ext), which mmcv-lite does not "
            f"have ({exc}); the decode head itself was not exercised"
        )
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    head = models.decode_heads.FCNHead(
        in_channels=8, channels=8, num_convs=1, num_classes=C,
        loss_decode=dict(type="NPALoss", k=8),
    )  # fmt: skip
    _, label = _toy(n=2)
    samples = []
    for i in range(2):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=label[i][None])
        samples.append(s)
    logits = torch.randn(2, C, 8, 8, requires_grad=True)
    losses = head.loss_by_feat(logits, samples)
    assert "loss_npa" in losses and torch.isfinite(losses["loss_npa"])
    losses["loss_npa"].backward()


# ---- torchgeo: class weights and reductions with loss="npa" ----------------------------------
def test_torchgeo_class_weights_multiply_the_npa_weights():
    _import("torchgeo.trainers", "torchgeo is not installed or does not import")
    from npa_train.adapters.torchgeo import ClassWeightedNPALoss, NPASegmentationTask

    cw = [0.5, 2.0, 1.0, 3.0]
    task = NPASegmentationTask(model="fcn", in_channels=3, num_classes=C, num_filters=4,
                               ignore_index=IGN, loss="npa", npa_k=8, class_weights=cw)  # fmt: skip
    assert isinstance(task.criterion, ClassWeightedNPALoss)
    _, label = _toy(n=2)
    logits = torch.randn(2, C, 32, 32)
    w = npa_weights(label, 8, ignore_index=IGN) * torch.tensor(cw)[label.clamp(max=C - 1)]
    expected = npa_cross_entropy(logits, label, w, ignore_index=IGN)
    torch.testing.assert_close(task.criterion(logits, label), expected, rtol=1e-6, atol=0)
    plain = NPASegmentationTask(model="fcn", in_channels=3, num_classes=C, num_filters=4,
                                ignore_index=IGN, loss="npa", npa_k=8)  # fmt: skip
    assert not torch.allclose(plain.criterion(logits, label), expected)  # not dropped
    with pytest.raises(ValueError, match="class_weights"):
        NPASegmentationTask(model="fcn", in_channels=3, num_classes=C, num_filters=4,
                            loss="npa", class_weights=[1.0, 2.0])  # fmt: skip
    with pytest.raises(ValueError, match="class_weights"):
        NPASegmentationTask(model="fcn", in_channels=3, num_classes=C, num_filters=4,
                            loss="npa", class_weights=[1.0, -2.0, 1.0, 1.0])  # fmt: skip


def test_torchgeo_refuses_reductions_it_cannot_log():
    _import("torchgeo.trainers", "torchgeo is not installed or does not import")
    from npa_train.adapters.torchgeo import NPASegmentationTask

    with pytest.raises(ValueError, match="npa_reduction.*'none'"):
        NPASegmentationTask(model="fcn", in_channels=3, num_classes=C, npa_reduction="none")
    task = NPASegmentationTask(model="fcn", in_channels=3, num_classes=C, num_filters=4,
                               npa_reduction="weighted_mean")  # fmt: skip
    assert task.criterion.reduction == "weighted_mean"


# ---- crop borders: the tile's weights from a label window with a margin ----------------------
def _tile_weights(label: np.ndarray, k: int, spec: str, ignore: int) -> np.ndarray:
    """The store's weights of a whole tile: affinity_maps then WeightTransform.apply."""
    counts = affinity_maps(label, [k])[0]
    return parse_transform(spec).apply(counts, label == ignore)


@pytest.mark.parametrize("spec", ["log10:L=0.5", "raw"])
def test_npa_weights_crop_equals_the_tiles_weights(shared_data, spec):
    from PIL import Image

    gt = shared_data / "vaihingen_crop/gts_eroded_for_participants"
    tile = get_preset("isprs").decode(
        np.asarray(Image.open(gt / "top_mosaic_09cm_area1_noBoundary.tif"))
    )
    k, size = 32, 128
    full = _tile_weights(tile, k, spec, IGN)
    t = torch.from_numpy(tile.astype(np.int64))[None]
    # interior, at the corner, at the right edge: window = crop grown by k, clipped to the tile
    for top, left in ((200, 150), (0, 0), (300, tile.shape[1] - size)):
        y0, x0 = max(top - k, 0), max(left - k, 0)
        y1, x1 = min(top + size + k, tile.shape[0]), min(left + size + k, tile.shape[1])
        window = t[:, y0:y1, x0:x1]
        got = npa_weights_crop(window, (top - y0, left - x0, size, size), k, spec,
                               ignore_index=IGN, num_classes=6)  # fmt: skip
        want = full[top : top + size, left : left + size]
        assert np.array_equal(got[0].numpy(), want), (top, left)
        # the crop's own weights (padded at the crop's edges) differ near its border
        own = npa_weights(t[:, top : top + size, left : left + size], k, spec, ignore_index=IGN)
        assert not np.array_equal(own[0].numpy(), want)
    # a larger margin than k changes nothing
    wide = npa_weights_crop(t, (200, 150, size, size), k, spec, ignore_index=IGN)
    assert np.array_equal(wide[0].numpy(), full[200 : 200 + size, 150 : 150 + size])
    with pytest.raises(ValueError, match="crop"):
        npa_weights_crop(t, (500, 0, size, size), k)
    with pytest.raises(ValueError, match="crop"):
        npa_weights_crop(t, (0, 0, size), k)


# ---- install: the wheel the README's install lines build -------------------------------------
def test_wheel_has_the_packages_entry_points_and_extras(tmp_path):
    import subprocess
    import sys
    import zipfile
    from email.parser import Parser
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # offline: the environment's setuptools builds it (no isolated build environment)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-cache-dir", "-w", str(tmp_path), str(root)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        pytest.skip("pip is not installed in this environment")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("npaloss-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(info).decode())
        entry = z.read(info.replace("METADATA", "entry_points.txt")).decode()
    for module in ("npa_precompute/__init__.py", "npa_train/__init__.py",
                   "npa_train/adapters/__init__.py", "npa_train/adapters/torchgeo.py",
                   "npa_train/adapters/smp.py", "npa_train/adapters/lightning.py",
                   "npa_train/adapters/mmseg.py"):  # fmt: skip
        assert module in names, module
    assert "npa-precompute = npa_precompute.cli:main" in entry
    assert "npa-train = npa_train.cli:main" in entry
    extras = set(meta.get_all("Provides-Extra"))
    assert {"torchgeo", "lightning", "smp", "mmseg", "adapters"} <= extras
    requires = meta.get_all("Requires-Dist")
    by_extra = {e: [r for r in requires if f'extra == "{e}"' in r] for e in extras}
    assert any(r.startswith("torchgeo") for r in by_extra["torchgeo"])
    assert any(r.startswith("segmentation-models-pytorch") for r in by_extra["smp"])
    # users bring their own mmcv: no extra installs one (mmcv-lite would shadow theirs)
    for extra in ("mmseg", "adapters"):
        assert by_extra[extra] and not [r for r in by_extra[extra] if r.startswith("mmcv")]
