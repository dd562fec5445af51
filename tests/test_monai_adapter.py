"""npa_train.adapters.monai: NPALoss in MONAI's conventions, NPAWeightsd, a 3-D UNet."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from npa_train.loss import npa_cross_entropy
from npa_train.online import npa_weights


@pytest.fixture(scope="module")
def mn() -> SimpleNamespace:
    """MONAI and the adapter, imported by the worker that runs these tests only (as a
    module-level import, pytest's collection would load MONAI in every xdist worker)."""
    pytest.importorskip("monai")
    from monai.data import MetaTensor
    from monai.networks.nets import UNet
    from monai.transforms import Compose, RandFlipd

    from npa_train.adapters.monai import NPALoss, NPAWeightsd

    return SimpleNamespace(
        MetaTensor=MetaTensor, UNet=UNet, Compose=Compose, RandFlipd=RandFlipd,
        NPALoss=NPALoss, NPAWeightsd=NPAWeightsd,
    )  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def _spheres(n, size=24, seed=0):
    """(n, size, size, size) labels: two balls of classes 1 and 2 on background 0."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(size)] * 3, indexing="ij")
    out = np.zeros((n, size, size, size), dtype=np.int64)
    for i in range(n):
        for label in (1, 2):
            c = rng.uniform(6, size - 6, 3)
            r = rng.uniform(3, 6)
            out[i][(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r**2] = label
    return torch.from_numpy(out)


def test_loss_takes_channel_targets_float_labels_and_metatensors(mn):
    target = _spheres(2, 12)
    logits = torch.randn(2, 3, 12, 12, 12)
    want = npa_cross_entropy(logits, target, npa_weights(target, (1, 2, 2), ignore_index=None),
                             ignore_index=-1)  # fmt: skip
    loss = mn.NPALoss(k=(1, 2, 2))
    assert torch.equal(loss(logits, target), want)
    assert torch.equal(loss(logits, target[:, None]), want)  # (B, 1, D, H, W)
    assert torch.equal(loss(mn.MetaTensor(logits), mn.MetaTensor(target[:, None].float())), want)
    with pytest.raises(ValueError, match=r"`target` must be \(B, 1, \*spatial\)"):
        loss(logits, torch.zeros(2, 2, 12, 12, 12, dtype=torch.long))
    with pytest.raises(ValueError, match="non-integer labels"):
        loss(logits, target.float() + 0.5)
    # 2-D logits with a (B, 1, H, W) target
    t2 = target[:, 0]
    assert torch.equal(mn.NPALoss(k=2)(logits[:, :, 0], t2[:, None]),
                       mn.NPALoss(k=2)(logits[:, :, 0], t2))  # fmt: skip


def test_weightsd_adds_the_weights_of_the_augmented_label(mn):
    label = mn.MetaTensor(
        _spheres(1, 16)[:1].float(), affine=torch.diag(torch.tensor([5.0, 0.7, 0.7, 1]))
    )
    pipeline = mn.Compose([mn.RandFlipd(keys="label", prob=1.0, spatial_axis=2),
                           mn.NPAWeightsd(keys="label", k=(1, 3, 3))])  # fmt: skip
    out = pipeline({"label": label})
    flipped = torch.flip(label.as_subclass(torch.Tensor), dims=(3,)).long()
    w = out["label_npa_weight"]
    assert isinstance(w, mn.MetaTensor) and w.shape == (1, 16, 16, 16)
    assert torch.equal(
        w.as_subclass(torch.Tensor), npa_weights(flipped, (1, 3, 3), ignore_index=None)
    )
    # k in mm from the label's pixdim: 2 mm at (5, 0.7, 0.7) mm is k = (0, 3, 3)
    by_mm = mn.NPAWeightsd(keys="label", k_physical=2.0)({"label": label})["label_npa_weight"]
    want = npa_weights(label.as_subclass(torch.Tensor).long(), (0, 3, 3), ignore_index=None)
    assert torch.equal(by_mm.as_subclass(torch.Tensor), want)
    with pytest.raises(ValueError, match="channel-first label"):
        mn.NPAWeightsd(keys="label")({"label": torch.zeros(4, 5, 6, 7)})  # 4 channels: not a label
    with pytest.raises(ValueError, match="EnsureChannelFirstd"):
        mn.NPAWeightsd(keys="label")({"label": torch.zeros(5, 6)})


def test_monai_3d_unet_trains_20_steps_on_the_cpu(mn):
    torch.manual_seed(0)
    target = _spheres(2, 24, seed=1)
    image = target.float()[:, None] + 0.3 * torch.randn(2, 1, 24, 24, 24)
    net = mn.UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(8, 16, 32),
                  strides=(2, 2), num_res_units=1)  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = mn.NPALoss(k=(2, 4, 4))
    weight = mn.NPAWeightsd(keys="label", k=(2, 4, 4))({"label": target[:1]})["label_npa_weight"]
    assert weight.shape == (1, 24, 24, 24)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn(net(image), target[:, None])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
