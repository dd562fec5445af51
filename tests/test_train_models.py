"""npa_train.model: the small FCN, the paper's networks and torchvision's (optional extra),
pretrained files.

The torchvision tests skip where torchvision does not import (the plain CPU venv); CI
installs the extra and runs them.
"""

from __future__ import annotations

import pytest
import torch

from npa_train.model import (
    MODEL_SPECS,
    MODELS,
    PAPER_MODELS,
    TORCHVISION_MODELS,
    ModelSpec,
    PaperSegmenter,
    PyramidPooling,
    SmallFCN,
    build_model,
    logits_of,
    model_config,
    model_name,
    model_spec,
)
from npa_train.pretrained import load_pretrained

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


# ---- the paper's networks ------------------------------------------------------------------------
def test_model_specs():
    assert set(MODEL_SPECS) == set(MODELS) and len(MODELS) == 13
    r101 = ("fcn", "fcn_dilated", "pspnet", "deeplabv3")
    assert PAPER_MODELS == (*r101, *(f"{n}_r50" for n in r101))
    assert model_spec("fcn") == ModelSpec(
        "fcn", "resnet101", 32, False, False, True, "FCN (Tables 1-2, Figs. 5-6)"
    )
    assert model_spec("pspnet_r50") == ModelSpec(
        "pspnet_r50", "resnet50", 8, True, True, True, "PSPNet (Table 3), ResNet-50"
    )
    strides = {n: s.output_stride for n, s in MODEL_SPECS.items()}
    assert [n for n, s in strides.items() if s == 32] == ["fcn", "fcn_r50"]
    assert all(s == 8 for n, s in strides.items() if n not in ("fcn", "fcn_r50"))
    no_aux = [n for n, s in MODEL_SPECS.items() if not s.has_aux]
    assert no_aux == ["small_fcn", "fcn", "fcn_r50"]
    ge2 = [n for n, s in MODEL_SPECS.items() if s.needs_batch_ge2]
    assert ge2 == ["pspnet", "pspnet_r50", "deeplabv3", "deeplabv3_r50",
                   "deeplabv3_resnet50", "deeplabv3_resnet101"]  # fmt: skip
    assert [n for n, s in MODEL_SPECS.items() if not s.channels_last_ok] == ["small_fcn"]
    assert model_spec("fcn_resnet101").backbone == "resnet101"
    assert model_spec("SmallFCN").name == "small_fcn"
    with pytest.raises(ValueError, match="`model`"):
        model_spec("fcn32")


def _check_backbone(m, stride: int, depth_layer3: int):
    """Output stride measured on a 64x64 input; dilation as mmseg's -d8 (contracted)."""
    m.eval()
    with torch.no_grad():
        feats = m.backbone(torch.zeros(1, m.in_channels, 64, 64))
    assert feats["out"].shape == (1, 2048, 64 // stride, 64 // stride)
    if "aux" in feats:
        assert feats["aux"].shape == (1, 1024, 8, 8)
    assert len(m.backbone.layer3) == depth_layer3
    dil = [(m.backbone.layer3[i].conv2.dilation[0], m.backbone.layer4[i].conv2.dilation[0])
           for i in (0, 1)]  # fmt: skip
    assert dil == ([(1, 1), (1, 1)] if stride == 32 else [(1, 2), (2, 4)])


@pytest.mark.parametrize(
    ("arch", "stride", "aux"),
    [("fcn_r50", 32, False), ("fcn_dilated_r50", 8, True), ("pspnet_r50", 8, True),
     ("deeplabv3_r50", 8, True)],
)  # fmt: skip
def test_paper_network_stride_heads_and_one_training_step(arch, stride, aux):
    _torchvision()
    from npa_train.loss import NPALoss

    torch.manual_seed(0)
    m = build_model(arch, num_classes=5)
    assert isinstance(m, PaperSegmenter) and model_name(m) == arch
    assert model_config(m) == {"in_channels": 3, "num_classes": 5, "aux": aux}
    _check_backbone(m, stride, 6)
    head = m.classifier
    assert (head.conv_seg.in_channels, head.conv_seg.out_channels) == (512, 5)
    assert head.dropout.p == 0.1 and isinstance(head.dropout, torch.nn.Dropout2d)
    assert abs(float(head.conv_seg.weight.detach().std()) - 0.01) < 0.002  # mmseg: N(0, 0.01)
    if aux:  # torchvision FCNHead(1024): mmseg's auxiliary FCNHead, channels 256, 1 conv
        a = m.aux_classifier
        assert (a[0].in_channels, a[0].out_channels, a[0].kernel_size) == (1024, 256, (3, 3))
        assert a[4].out_channels == 5
    else:
        assert m.aux_classifier is None
    # one SGD step, batch 2 at 64x64, the trainer's loss (main + 0.4 aux)
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x, target = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    target[:, :8] = 255
    weight = torch.rand(2, 64, 64) + 0.5
    out = m(x)
    crit = NPALoss()
    if aux:
        assert set(out) == {"out", "aux"} and out["aux"].shape == (2, 5, 64, 64)
        loss = crit(out["out"], target, weight) + 0.4 * crit(out["aux"], target, weight)
    else:
        assert isinstance(out, torch.Tensor)
        loss = crit(out, target, weight)
    assert logits_of(out).shape == (2, 5, 64, 64) and torch.isfinite(loss)
    before = m.backbone.layer1[0].conv1.weight.detach().clone()
    opt.zero_grad()
    loss.backward()
    assert m.classifier.conv_seg.weight.grad.abs().sum() > 0
    if aux:
        assert m.aux_classifier[4].weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, m.backbone.layer1[0].conv1.weight)
    m.eval()
    with torch.no_grad():
        y = m(x[:1])
    assert isinstance(y, torch.Tensor) and y.shape == (1, 5, 64, 64)


def test_paper_heads_follow_mmseg_configs():
    _torchvision()
    psp = build_model("pspnet_r50", aux=False).classifier.body
    assert isinstance(psp, PyramidPooling) and psp.bins == (1, 2, 3, 6)
    assert [s[0].output_size for s in psp.stages] == [1, 2, 3, 6]
    assert psp.bottleneck[0].in_channels == 2048 + 4 * 512
    assert psp.bottleneck[0].kernel_size == (3, 3) and psp.bottleneck[0].out_channels == 512
    aspp = build_model("deeplabv3_r50", aux=False).classifier.body
    assert [c[0].dilation[0] for c in aspp.convs[1:4]] == [12, 24, 36]
    assert aspp.convs[0][0].kernel_size == (1, 1) and len(aspp.convs) == 5  # + image pooling
    assert (aspp.project[0].in_channels, aspp.project[0].kernel_size) == (5 * 512, (3, 3))
    fcn = build_model("fcn_r50").classifier.body
    assert [c[0].in_channels for c in fcn.convs] == [2048, 512]
    assert fcn.conv_cat[0].in_channels == 2048 + 512
    # PSP's 1x1 bin and ASPP's image pooling: batch norm needs N >= 2 in train mode
    for arch in ("pspnet_r50", "deeplabv3_r50"):
        assert model_spec(arch).needs_batch_ge2
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            build_model(arch, aux=False).train()(torch.zeros(1, 3, 32, 32))
    m = build_model("fcn_dilated_r50", aux=False).train()
    assert not model_spec("fcn_dilated_r50").needs_batch_ge2
    assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 6, 32, 32)


@pytest.mark.parametrize("arch", ["fcn", "fcn_dilated", "pspnet", "deeplabv3"])
def test_paper_networks_resnet101(arch):
    _torchvision()
    m = build_model(arch, in_channels=4, num_classes=6)
    assert m.backbone.conv1.in_channels == 4 and model_spec(arch).backbone == "resnet101"
    _check_backbone(m, model_spec(arch).output_stride, 23)
    assert (m.aux_classifier is not None) == (arch != "fcn")
    rebuilt = build_model(model_name(m), **model_config(m))
    assert rebuilt.state_dict().keys() == m.state_dict().keys()


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    tv = pytest.importorskip("torchvision", exc_type=ImportError)
    torch.manual_seed(1)
    resnet = tv.models.resnet50(weights=None)
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(resnet.state_dict(), path)
    return path, resnet.state_dict()


@pytest.mark.parametrize("arch", ["fcn_r50", "fcn_dilated_r50", "pspnet_r50", "deeplabv3_r50"])
def test_pretrained_imagenet_resnet_into_paper_networks(arch, resnet50_file):
    path, sd = resnet50_file
    m = build_model(arch, num_classes=6)
    report = load_pretrained(m, path)
    assert report["kind"] == "backbone" and report["adapted"] == []
    assert report["loaded"] == sum(1 for k in sd if not k.startswith("fc."))
    assert report["random"] and all(
        k.startswith(("classifier.", "aux_classifier.")) for k in report["random"]
    )
    assert ("aux_classifier.4.weight" in report["random"]) == model_spec(arch).has_aux
    for k, v in m.backbone.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_pretrained_paper_network_full_state_dict(tmp_path):
    _torchvision()
    src = build_model("pspnet_r50", num_classes=6)
    torch.save({"model": src.state_dict()}, tmp_path / "psp.pt")
    m = build_model("pspnet_r50", num_classes=3)
    report = load_pretrained(m, tmp_path / "psp.pt")
    assert report["kind"] == "full" and report["random"] == [
        "aux_classifier.4.bias", "aux_classifier.4.weight",
        "classifier.conv_seg.bias", "classifier.conv_seg.weight",
    ]  # fmt: skip
    w = src.state_dict()["classifier.body.bottleneck.0.weight"]
    assert torch.equal(m.classifier.body.bottleneck[0].weight, w)
    with pytest.raises(ValueError, match="does not fit deeplabv3_r50.*unexpected"):
        load_pretrained(build_model("deeplabv3_r50"), tmp_path / "psp.pt")


def test_pretrained_imagenet_resnet101_into_fcn(tmp_path, resnet50_file):
    """The paper's setup: torchvision's ImageNet ResNet-101 file (random weights here,
    178 MB written and read back: about 6 s)."""
    tv = _torchvision()
    # a ResNet-50 file does not fit the paper's ResNet-101 FCN; a ResNet-101 file does
    with pytest.raises(ValueError, match=r"missing \d+: layer3\.\d+"):
        load_pretrained(build_model("fcn"), resnet50_file[0])
    r101 = tv.models.resnet101(weights=None).state_dict()
    torch.save(r101, tmp_path / "resnet101.pth")
    m = build_model("fcn", in_channels=4)
    report = load_pretrained(m, tmp_path / "resnet101.pth")
    assert report["kind"] == "backbone" and report["adapted"] == ["backbone.conv1.weight"]
    assert torch.equal(m.backbone.layer3[22].conv3.weight, r101["layer3.22.conv3.weight"])
    torch.testing.assert_close(m.backbone.conv1.weight[:, 3], r101["conv1.weight"].mean(1))


def test_fit_refuses_batch_1_for_a_pooling_branch(tmp_path):
    # the trainer reads ModelSpec.needs_batch_ge2 (not the name), before any work
    from npa_precompute.errors import ParameterError
    from npa_train.train import fit

    for arch in ("pspnet_r50", "deeplabv3_r50"):
        with pytest.raises(ParameterError, match=f"`batch` must be >= 2 for {arch}"):
            fit(tmp_path / "no_store", tmp_path / "out", model=arch, batch=1, loss="ce")
    assert not (tmp_path / "out").exists()
