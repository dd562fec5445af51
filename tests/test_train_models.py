"""npa_train.model: the small FCN, the torchvision models (optional extra), pretrained files.

The torchvision tests skip where torchvision does not import (the plain CPU venv); CI
installs the extra and runs them.
"""

from __future__ import annotations

import pytest
import torch

from npa_train.model import (
    MODELS,
    TORCHVISION_MODELS,
    SmallFCN,
    build_model,
    load_pretrained,
    logits_of,
    model_config,
    model_name,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _torchvision():
    return pytest.importorskip("torchvision", exc_type=ImportError)


# ---- small FCN and helpers -----------------------------------------------------------------------
def test_small_fcn_shapes_any_size_and_bands():
    m = build_model("small_fcn", in_channels=4, num_classes=7, width=8)
    assert isinstance(m, SmallFCN) and model_name(m) == "small_fcn"
    assert model_config(m) == {"in_channels": 4, "num_classes": 7, "width": 8}
    for h, w in ((20, 28), (33, 17)):
        out = m(torch.randn(2, 4, h, w))
        assert isinstance(out, torch.Tensor) and out.shape == (2, 7, h, w)
    m.eval()
    assert m(torch.randn(1, 4, 16, 16)).shape == (1, 7, 16, 16)


def test_build_model_errors_and_logits_of():
    assert MODELS[0] == "small_fcn" and set(TORCHVISION_MODELS) < set(MODELS)
    with pytest.raises(ValueError, match="`model`"):
        build_model("unet")
    with pytest.raises(ValueError, match="`in_channels`"):
        build_model("small_fcn", in_channels=0)
    assert build_model("SmallFCN", width=4).width == 4  # older checkpoints' name
    x = torch.zeros(1, 2, 3, 3)
    assert logits_of(x) is x and logits_of({"out": x, "aux": x + 1}) is x
    with pytest.raises(TypeError):
        logits_of({"aux": x})


def test_small_fcn_pretrained_round_trip_and_mismatch(tmp_path):
    a = build_model("small_fcn", width=4)
    torch.save(a.state_dict(), tmp_path / "a.pt")
    b = build_model("small_fcn", width=4)
    assert load_pretrained(b, tmp_path / "a.pt")["kind"] == "full"
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    with pytest.raises(ValueError, match="does not fit small_fcn"):
        load_pretrained(build_model("small_fcn", width=8), tmp_path / "a.pt")


def test_pretrained_bad_files(tmp_path):
    m = build_model("small_fcn", width=4)
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(ValueError, match="not a readable PyTorch state dict"):
        load_pretrained(m, tmp_path / "notes.txt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds no state dict"):
        load_pretrained(m, tmp_path / "list.pt")
    with pytest.raises(ValueError, match="does not exist"):
        load_pretrained(m, tmp_path / "missing.pt")


def test_torchvision_missing_is_a_clear_import_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *args, **kw):
        if name.startswith("torchvision"):
            raise ImportError("no torchvision here")
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r"npaloss\[torchvision\]"):
        build_model("deeplabv3_resnet50")


# ---- torchvision models --------------------------------------------------------------------------
def test_deeplabv3_forward_backward_with_aux_loss_and_4_bands():
    _torchvision()
    from npa_train.loss import NPALoss

    torch.manual_seed(0)
    m = build_model("deeplabv3_resnet50", in_channels=4, num_classes=6)
    assert m.backbone.conv1.in_channels == 4
    assert model_name(m) == "deeplabv3_resnet50"
    assert model_config(m) == {"in_channels": 4, "num_classes": 6, "aux": True}
    x = torch.randn(2, 4, 64, 64)
    out = m(x)
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == (2, 6, 64, 64) and out["aux"].shape == (2, 6, 64, 64)
    target = torch.randint(0, 6, (2, 64, 64))
    target[:, :8] = 255
    weight = torch.rand(2, 64, 64) + 0.5
    crit = NPALoss()
    loss = crit(out["out"], target, weight) + 0.4 * crit(out["aux"], target, weight)
    loss.backward()
    assert torch.isfinite(loss)
    assert m.backbone.conv1.weight.grad.abs().sum() > 0
    assert m.aux_classifier[4].weight.grad.abs().sum() > 0  # the auxiliary head is trained
    m.eval()
    with torch.no_grad():
        y = m(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 6, 64, 64)  # eval: a Tensor


@pytest.mark.parametrize("arch", TORCHVISION_MODELS)
def test_every_torchvision_arch_builds_offline_with_or_without_aux(arch):
    _torchvision()
    m = build_model(arch, num_classes=3, aux=arch.endswith("50"))
    assert (m.aux_classifier is not None) == arch.endswith("50")
    assert m.classifier[4].out_channels == 3
    rebuilt = build_model(model_name(m), **model_config(m))
    assert rebuilt.state_dict().keys() == m.state_dict().keys()


def test_fcn_output_in_train_mode_without_aux_is_a_tensor():
    _torchvision()
    m = build_model("fcn_resnet50", num_classes=2, aux=False)
    out = m(torch.randn(1, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 32, 32)


def test_pretrained_backbone_only_resnet(tmp_path):
    tv = _torchvision()
    resnet = tv.models.resnet50(weights=None)
    torch.save(resnet.state_dict(), tmp_path / "resnet50.pt")
    m = build_model("fcn_resnet50", in_channels=4, num_classes=6)
    report = load_pretrained(m, tmp_path / "resnet50.pt")
    assert report["kind"] == "backbone" and report["adapted"] == ["backbone.conv1.weight"]
    assert all(k.startswith(("classifier.", "aux_classifier.")) for k in report["random"])
    w = resnet.state_dict()
    assert torch.equal(m.backbone.layer4[2].conv3.weight, w["layer4.2.conv3.weight"])
    c1 = m.backbone.conv1.weight
    assert torch.equal(c1[:, :3], w["conv1.weight"])
    torch.testing.assert_close(c1[:, 3], w["conv1.weight"].mean(1))
    # a ResNet-50 file does not fit a ResNet-101 backbone: named missing keys
    with pytest.raises(ValueError, match=r"missing \d+: layer3\.\d+"):
        load_pretrained(build_model("fcn_resnet101"), tmp_path / "resnet50.pt")


def test_pretrained_full_segmentation_state_dict(tmp_path):
    tv = _torchvision()
    # torchvision's COCO layout: 21 classes; saved wrapped, as training scripts often do
    src = tv.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True
    )
    torch.save({"state_dict": src.state_dict()}, tmp_path / "coco.pt")
    m = build_model("deeplabv3_resnet50", num_classes=6)
    report = load_pretrained(m, tmp_path / "coco.pt")
    assert report["kind"] == "full" and report["adapted"] == []
    assert report["random"] == [
        "aux_classifier.4.bias", "aux_classifier.4.weight",
        "classifier.4.bias", "classifier.4.weight",
    ]  # fmt: skip
    sd = src.state_dict()
    assert torch.equal(m.classifier[0].convs[0][0].weight, sd["classifier.0.convs.0.0.weight"])
    assert torch.equal(m.backbone.conv1.weight, sd["backbone.conv1.weight"])
    # another architecture's head does not fit: the error names the keys
    with pytest.raises(ValueError, match="does not fit fcn_resnet50.*unexpected"):
        load_pretrained(build_model("fcn_resnet50"), tmp_path / "coco.pt")
