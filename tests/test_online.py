"""Online affinity and weights (npa_train.online) and NPALoss without a weight map.

The counts must be the integers of ``npa_precompute.affinity_maps`` bit for bit, image by
image, and the weights the float32 values of ``WeightTransform.apply``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from npa_precompute import affinity_maps, parse_transform
from npa_precompute.names import WeightsSpec
from npa_precompute.presets import get_preset
from npa_train.loss import NPALoss, npa_cross_entropy, npa_loss
from npa_train.online import (
    affinity_counts,
    clear_workspace,
    counts_dtype,
    npa_weights,
    weights_from_counts,
)

IGN = 255
CUDA = torch.cuda.is_available()
TRANSFORMS = ["log10:L=0.5", "ln:L=0.5", "log:a=2,L=0.25", "norm:L=0.5", "raw", "log10:L=0"]


def _reference(labels: np.ndarray, ks) -> np.ndarray:
    """affinity_maps image by image, as int64 (N, len(ks), H, W)."""
    return np.stack([affinity_maps(img, ks).astype(np.int64) for img in labels])


def _blocky(rng, n, h, w, c, cell):
    coarse = rng.integers(0, c, (n, -(-h // cell), -(-w // cell)))
    return np.repeat(np.repeat(coarse, cell, 1), cell, 2)[:, :h, :w]


def _assert_counts(labels: np.ndarray, ks, **kw):
    got = affinity_counts(torch.from_numpy(np.ascontiguousarray(labels)), ks, **kw)
    assert got.dtype == counts_dtype(max(ks))
    np.testing.assert_array_equal(got.numpy().astype(np.int64), _reference(labels, ks))


# ---- counts ------------------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [1, 2, 6, 300])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64])
def test_counts_equal_affinity_maps_on_random_shapes(classes, dtype):
    if classes == 300 and dtype == np.uint8:
        pytest.skip("300 classes do not fit uint8")
    rng = np.random.default_rng(classes * 7 + np.dtype(dtype).itemsize)
    shapes = [(1, 1), (1, 7), (9, 1), (2, 3), (17, 40), (61, 23), (130, 97)]
    for i, (h, w) in enumerate(shapes):
        n = 1 + i % 3
        cell = [1, 3, 8][i % 3]
        labels = _blocky(rng, n, h, w, classes, cell).astype(dtype)
        ks = [0, 1, 2, 32, max(h, w) + 3]  # the last one: 2k + 1 beyond the image
        _assert_counts(labels, ks)


def test_counts_on_a_few_hundred_pixels_non_square_and_300_classes():
    rng = np.random.default_rng(3)
    labels = _blocky(rng, 1, 151, 233, 300, 4).astype(np.int32)
    labels[rng.random(labels.shape) < 0.01] = 255  # ignore pixels are a class of Eq. 1 too
    _assert_counts(labels, [0, 1, 2, 32, 400])


def test_mixed_images_in_one_batch():
    """Images with different class sets, ignore bands and constant images, batched."""
    rng = np.random.default_rng(4)
    h, w = 48, 64
    a = _blocky(rng, 1, h, w, 6, 8)[0]
    b = np.full((h, w), 3)
    c = _blocky(rng, 1, h, w, 2, 2)[0] + 4  # classes 4, 5 only
    d = a.copy()
    d[:, 20:24] = IGN  # an ignore band
    labels = np.stack([a, b, c, d]).astype(np.uint8)
    _assert_counts(labels, [1, 2, 8, 32, 100])


@pytest.mark.parametrize("group_elements", [1, 50, 5000])
def test_class_groups_give_the_same_counts(group_elements):
    rng = np.random.default_rng(5)
    labels = _blocky(rng, 3, 30, 45, 12, 3).astype(np.int64)
    _assert_counts(labels, [0, 3, 16], group_elements=group_elements)


def test_given_classes_equal_the_distinct_values():
    rng = np.random.default_rng(6)
    labels = _blocky(rng, 2, 40, 50, 6, 5)
    labels[0, :5] = IGN
    t = torch.from_numpy(labels)
    full = affinity_counts(t, [2, 9])
    listed = affinity_counts(t, [2, 9], classes=[*range(6), IGN])
    more = affinity_counts(t, [2, 9], classes=torch.tensor([*range(10), IGN, 300]))
    assert torch.equal(full, listed) and torch.equal(full, more)


def test_large_k_uses_wider_accumulators_exactly():
    rng = np.random.default_rng(7)
    labels = _blocky(rng, 1, 20, 30, 3, 4)
    for k in (90, 91, 200, 23169, 23170, 10**6):
        got = affinity_counts(torch.from_numpy(labels), k)
        assert got.dtype == counts_dtype(k)
        np.testing.assert_array_equal(
            got[:, 0].numpy().astype(np.int64), _reference(labels, [k])[:, 0]
        )


def test_documented_example_and_shape():
    t = torch.tensor([[[0, 0, 1], [0, 0, 1], [2, 2, 1]]])
    got = affinity_counts(t, [1, 0])
    assert got.shape == (1, 2, 3, 3) and got.dtype == torch.int32
    assert got[0, 0].tolist() == [[0, 3, 3], [3, 5, 3], [3, 5, 3]]
    assert got[0, 1].tolist() == [[0] * 3] * 3


def test_workspace_reuse_and_clear_do_not_change_results():
    rng = np.random.default_rng(8)
    big = torch.from_numpy(_blocky(rng, 2, 70, 90, 6, 6))
    small = torch.from_numpy(_blocky(rng, 1, 9, 11, 3, 2))
    first = affinity_counts(big, [4, 20])
    affinity_counts(small, [1])  # smaller shapes reuse the larger buffers
    assert torch.equal(affinity_counts(big, [4, 20]), first)
    clear_workspace()
    assert torch.equal(affinity_counts(big, [4, 20]), first)


def _real_labels(shared_data):
    gt = shared_data / "vaihingen_crop/gts_eroded_for_participants"
    rgb = np.asarray(Image.open(gt / "top_mosaic_09cm_area1_noBoundary.tif"))
    vaihingen = get_preset("isprs").decode(rgb)
    masks = shared_data / "loveda_crop/Train/Rural/masks_png"
    loveda = [get_preset("loveda").decode(np.asarray(Image.open(masks / f"{i}.png")))
              for i in (0, 1)]  # fmt: skip
    return vaihingen, loveda


def test_real_crops_bit_identical(shared_data):
    vaihingen, loveda = _real_labels(shared_data)
    ks = [1, 8, 16, 32, 64]
    _assert_counts(vaihingen[None], ks)  # 512 x 512, 6 classes + ignore band
    _assert_counts(np.stack(loveda), ks)  # 2 x 1024 x 1024, 7 classes + no-data
    # crops of the real labels, batched, also cut at odd sizes
    crops = np.stack([vaihingen[:300, 17:433], loveda[0][500:800, 100:516]])
    _assert_counts(crops, [0, 2, 32, 700])


# ---- weights -----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", TRANSFORMS)
def test_weights_equal_weight_transform_apply(spec):
    rng = np.random.default_rng(9)
    labels = _blocky(rng, 3, 37, 52, 6, 4).astype(np.int64)
    labels[0, :, :6] = IGN
    labels[1] = 2  # constant image: norm gives L everywhere
    labels[2, rng.random((37, 52)) < 0.05] = IGN
    for k in (0, 1, 8, 32):
        got = npa_weights(torch.from_numpy(labels), k, spec)
        assert got.dtype == torch.float32 and not got.requires_grad
        for i in range(3):
            a = affinity_maps(labels[i], k)[0]
            want = parse_transform(spec).apply(a, labels[i] == IGN)
            np.testing.assert_array_equal(got[i].numpy(), want)  # bit for bit
        with_classes = npa_weights(torch.from_numpy(labels), k, spec, num_classes=6)
        assert torch.equal(with_classes, got)


def test_weights_for_a_k_beyond_the_lookup_table():
    rng = np.random.default_rng(10)
    labels = _blocky(rng, 1, 12, 16, 3, 4)
    k = 1500  # (2k + 1)^2 > 2**22 possible counts: evaluated for the distinct counts
    got = npa_weights(torch.from_numpy(labels), k, "ln:L=0.5")
    a = affinity_maps(labels[0], k)[0]
    np.testing.assert_array_equal(got[0].numpy(), parse_transform("ln:L=0.5").apply(a))


def test_weights_of_an_all_ignored_image_are_zero():
    labels = torch.full((2, 5, 6), IGN)
    labels[1, 0, 0] = 1
    for spec in TRANSFORMS:
        w = npa_weights(labels, 2, spec)
        assert torch.all(w[0] == 0) and w[1, 0, 0] > 0
        assert torch.count_nonzero(w[1]) <= 1


def test_weights_from_counts_directly():
    t = torch.tensor([[[0, 0, 1], [0, 0, 1], [2, 2, 1]]])
    counts = affinity_counts(t, 1)[:, 0]
    w = weights_from_counts(counts, t, "log10:L=0.5")  # no k: reads the largest count
    want = parse_transform("log10:L=0.5").apply(affinity_maps(t[0].numpy(), 1)[0])
    np.testing.assert_array_equal(w[0].numpy(), want)


def parse_online_spec(name):  # the one weights-name type, as the old (k, transform) pair
    spec = WeightsSpec.parse(name)
    return spec.k, spec.transform


def test_parse_online_spec():
    assert parse_online_spec("online:k32_log10_L0.5") == (32, parse_transform("log10:L=0.5"))
    assert parse_online_spec("k8_ln_L0") == (8, parse_transform("ln:L=0"))
    assert parse_online_spec("k16_log_a2_L0.5") == (16, parse_transform("log:a=2,L=0.5"))
    assert parse_online_spec("k4_norm_L0.5") == (4, parse_transform("norm:L=0.5"))
    assert parse_online_spec("k0_raw") == (0, parse_transform("raw"))
    for bad in ("online:", "k32", "kx_log10_L0.5", "k32_log10", "k32_exp_L1", "k-1_raw",
                "k32_log10_L-1", "k32_log_a1_L0.5"):  # fmt: skip
        with pytest.raises(ValueError, match="online"):
            parse_online_spec(bad)


# ---- the loss ----------------------------------------------------------------------------------
def _case(seed=11, n=3, c=6, h=33, w=47, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    rng = np.random.default_rng(seed)
    target = _blocky(rng, n, h, w, c, 5)
    target[rng.random(target.shape) < 0.1] = IGN
    target[0, :4] = IGN
    return logits, torch.from_numpy(target)


def _precomputed(target: torch.Tensor, k: int, spec: str) -> torch.Tensor:
    t = target.numpy()
    return torch.from_numpy(np.stack([
        parse_transform(spec).apply(affinity_maps(img, k)[0], img == IGN) for img in t
    ]))  # fmt: skip


@pytest.mark.parametrize("reduction", ["mean", "weighted_mean", "batch", "sum", "none"])
@pytest.mark.parametrize("spec", ["log10:L=0.5", "norm:L=0.5"])
def test_npaloss_without_weight_equals_npa_cross_entropy_with_precomputed(reduction, spec):
    logits, target = _case()
    weight = _precomputed(target, 32, spec)
    want = npa_cross_entropy(logits, target, weight, reduction=reduction)
    got = NPALoss(k=32, transform=spec, reduction=reduction)(logits, target)
    assert torch.equal(got, want)
    assert torch.equal(npa_loss(logits, target, k=32, transform=spec, reduction=reduction), want)
    # a given weight map is used as it is (today's behaviour)
    other = torch.rand(target.shape)
    assert torch.equal(
        NPALoss(reduction=reduction)(logits, target, other),
        npa_cross_entropy(logits, target, other, reduction=reduction),
    )


def test_npaloss_gradients_equal_those_with_precomputed_weights():
    logits, target = _case(seed=12)
    weight = _precomputed(target, 8, "log10:L=0.5")
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    NPALoss(k=8)(a, target).backward()
    npa_cross_entropy(b, target, weight).backward()
    assert torch.equal(a.grad, b.grad)


def test_gradcheck():
    logits, target = _case(seed=13, n=2, c=3, h=5, w=6, dtype=torch.float64)
    target = target.clamp(max=2)
    target[0, 0, 0] = IGN
    logits.requires_grad_()
    # the per-pixel path (reduction="none") through torch's gradcheck
    assert torch.autograd.gradcheck(
        lambda z: npa_loss(z, target, k=2, reduction="none"), (logits,), fast_mode=True
    )
    # the fused scalar path can be backpropagated once (gradcheck backpropagates twice):
    # central differences; the weights do not depend on the logits, so the loss is
    # npa_cross_entropy with the target's weights, whatever the logits
    w = npa_weights(target, 2).double()
    for reduction in ("mean", "weighted_mean", "batch", "sum"):
        z = logits.detach().clone().requires_grad_()
        npa_loss(z, target, k=2, reduction=reduction).backward()
        assert torch.equal(
            npa_loss(z.detach(), target, k=2, reduction=reduction),
            npa_cross_entropy(z.detach(), target, w, reduction=reduction),
        )
        eps = 1e-6
        num = torch.zeros_like(z)
        flat = num.view(-1)
        base = logits.detach().clone()
        for i in range(base.numel()):
            p, m = base.clone(), base.clone()
            p.view(-1)[i] += eps
            m.view(-1)[i] -= eps
            fp = npa_cross_entropy(p, target, w, reduction=reduction)
            fm = npa_cross_entropy(m, target, w, reduction=reduction)
            flat[i] = (fp - fm) / (2 * eps)
        torch.testing.assert_close(z.grad, num, rtol=1e-6, atol=1e-7)


def test_autocast_logits_give_a_float32_loss():
    logits, target = _case(seed=14)
    half = logits.to(torch.bfloat16)
    got = NPALoss()(half.requires_grad_(), target)
    assert got.dtype == torch.float32
    assert torch.equal(got, NPALoss()(half.detach().float(), target))
    got.backward()
    assert half.grad.dtype == torch.bfloat16 and torch.isfinite(half.grad.float()).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model = torch.nn.Conv2d(3, 6, 1)
        x = torch.randn(3, 3, 33, 47)
        out = model(x)
        assert out.dtype == torch.bfloat16
        loss = NPALoss()(out, target)
    assert loss.dtype == torch.float32
    loss.backward()


def test_torch_compile_gives_the_same_loss_and_gradient():
    logits, target = _case(seed=15, n=2, h=24, w=30)
    crit = NPALoss(k=4)
    a = logits.clone().requires_grad_()
    ref = crit(a, target)
    ref.backward()
    compiled = torch.compile(crit, backend="aot_eager")
    b = logits.clone().requires_grad_()
    got = compiled(b, target)
    got.backward()
    assert torch.equal(got.detach(), ref.detach())
    assert torch.equal(b.grad, a.grad)


# ---- bad input ---------------------------------------------------------------------------------
def test_bad_targets_get_clear_errors():
    logits = torch.zeros(1, 3, 4, 5)
    good = torch.zeros(1, 4, 5, dtype=torch.int64)
    crit = NPALoss()
    with pytest.raises(TypeError, match="integer"):
        npa_weights(good.float())
    with pytest.raises(TypeError, match="integer"):
        npa_weights(good.bool())
    with pytest.raises(TypeError, match="integer"):
        crit(logits, good.float())
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        npa_weights(good[0])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        affinity_counts(good[None, None], 2)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        crit(logits, good[0])
    neg = good.clone()
    neg[0, 0, 0] = -3
    with pytest.raises(ValueError, match="negative"):
        npa_weights(neg)
    with pytest.raises(ValueError, match="negative"):
        affinity_counts(neg, 1)
    with pytest.raises(ValueError, match="outside"):
        crit(logits, neg)
    huge = good.clone()
    huge[0, 0, 0] = 2**40
    with pytest.raises(ValueError, match="int32"):
        npa_weights(huge)
    with pytest.raises(ValueError, match="outside"):
        crit(logits, huge)


def test_bad_k_transform_and_devices():
    with pytest.raises(ValueError, match="`k`"):
        NPALoss(k=-1)
    with pytest.raises(TypeError, match="`k`"):
        NPALoss(k=2.5)
    with pytest.raises(ValueError, match="`k`"):
        npa_weights(torch.zeros(1, 2, 2, dtype=torch.int64), -1)
    with pytest.raises(ValueError, match="`k`"):
        affinity_counts(torch.zeros(1, 2, 2, dtype=torch.int64), [4, -1])
    with pytest.raises(ValueError, match="unknown transform"):
        NPALoss(transform="log7")
    with pytest.raises(ValueError, match="unknown transform"):
        npa_weights(torch.zeros(1, 2, 2, dtype=torch.int64), 2, "sqrt:L=1")
    logits = torch.zeros(1, 3, 4, 5, device="meta")
    with pytest.raises(ValueError, match="move them together"):
        NPALoss()(logits, torch.zeros(1, 4, 5, dtype=torch.int64))


def test_all_ignored_batch_gives_exactly_zero_and_zero_gradient():
    logits = torch.randn(2, 6, 8, 9, requires_grad=True)
    target = torch.full((2, 8, 9), IGN)
    for reduction in ("mean", "weighted_mean", "batch", "sum"):
        loss = NPALoss(reduction=reduction)(logits, target)
        assert loss.item() == 0.0
        (g,) = torch.autograd.grad(loss, logits)
        assert torch.all(g == 0)


def test_k_larger_than_the_image_is_exact():
    logits, target = _case(seed=16, n=2, h=7, w=5)
    weight = _precomputed(target, 50, "log10:L=0.5")
    assert torch.equal(NPALoss(k=50)(logits, target), npa_cross_entropy(logits, target, weight))


# ---- CUDA (skipped without a GPU) --------------------------------------------------------------
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_cuda_counts_and_weights_equal_the_cpu_and_never_synchronise():
    rng = np.random.default_rng(17)
    labels = _blocky(rng, 4, 129, 200, 6, 7)
    labels[rng.random(labels.shape) < 0.02] = IGN
    cpu = torch.from_numpy(labels)
    gpu = cpu.cuda()
    ks = [0, 2, 32, 64, 300]
    assert torch.equal(affinity_counts(gpu, ks).cpu(), affinity_counts(cpu, ks))
    for spec in TRANSFORMS:
        assert torch.equal(npa_weights(gpu, 32, spec).cpu(), npa_weights(cpu, 32, spec))
    npa_weights(gpu, 32, num_classes=6)  # warm the device tables
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        w = npa_weights(gpu, 32, num_classes=6)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(w.cpu(), npa_weights(cpu, 32))
    logits = torch.randn(4, 6, 129, 200, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = NPALoss()(logits * 1.0, gpu)
    assert loss.dtype == torch.float32
    loss.backward()
