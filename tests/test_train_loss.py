"""npa_train.loss: values against F.cross_entropy and hand computations, edge cases, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from npa_train.loss import REDUCTIONS, NPALoss, npa_cross_entropy

IGN = 255


def _random_case(n=2, c=6, h=5, w=7, *, seed=0, ignore_frac=0.3, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g, dtype=dtype) * 3
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[torch.rand(n, h, w, generator=g) < ignore_frac] = IGN
    weight = torch.rand(n, h, w, generator=g, dtype=dtype) * 2 + 0.1
    return logits, target, weight


# ---- uniform weights == F.cross_entropy --------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index", [255, -100, 0])
def test_uniform_weights_equal_cross_entropy(reduction, ignore_index):
    logits, target, _ = _random_case(seed=1)
    target[target == IGN] = ignore_index
    ref = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)
    got = npa_cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    ones = torch.ones(target.shape)
    got1 = npa_cross_entropy(logits, target, ones, ignore_index=ignore_index, reduction=reduction)
    torch.testing.assert_close(got1, ref, rtol=1e-6, atol=1e-6)


def test_uniform_weights_gradient_equals_cross_entropy():
    logits, target, _ = _random_case(seed=2)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    F.cross_entropy(a, target, ignore_index=IGN).backward()
    npa_cross_entropy(b, target, torch.ones(target.shape)).backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7)


# ---- a hand-computed 1x2x1x2 example -----------------------------------------------------------
# pixel a: logits (0, 0), target 0 -> ce = ln 2          = 0.69314718
# pixel b: logits (1, 0), target 1 -> ce = ln(1 + e)     = 1.31326169
# weights (2.0, 0.5): weighted losses 1.38629436 and 0.65663084, sum 2.04292520
LOGITS = torch.tensor([[[[0.0, 1.0]], [[0.0, 0.0]]]], dtype=torch.float64)  # (1, 2, 1, 2)
WEIGHT = torch.tensor([[[2.0, 0.5]]], dtype=torch.float64)


@pytest.mark.parametrize(
    ("reduction", "expected"),
    [
        ("sum", 2.04292520),  # 1.38629436 + 0.65663084
        ("mean", 1.02146260),  # 2.04292520 / 2 non-ignored pixels
        ("weighted_mean", 0.81717008),  # 2.04292520 / (2.0 + 0.5)
        ("batch", 2.04292520),  # 2.04292520 / N = 1 image
        ("none", [[[1.38629436, 0.65663084]]]),
    ],
)
def test_hand_computed_example(reduction, expected):
    target = torch.tensor([[[0, 1]]])
    got = npa_cross_entropy(LOGITS, target, WEIGHT, reduction=reduction)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), atol=1e-7, rtol=0)


@pytest.mark.parametrize(
    ("reduction", "expected"),
    [
        ("sum", 1.38629436),  # pixel b ignored: its weight 0.5 counts for nothing
        ("mean", 1.38629436),  # / 1 non-ignored pixel
        ("weighted_mean", 0.69314718),  # / 2.0 (the ignored pixel's 0.5 is not in the sum)
        ("batch", 1.38629436),
        ("none", [[[1.38629436, 0.0]]]),
    ],
)
def test_hand_computed_example_with_ignored_pixel(reduction, expected):
    target = torch.tensor([[[0, IGN]]])
    got = npa_cross_entropy(LOGITS, target, WEIGHT, reduction=reduction)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), atol=1e-7, rtol=0)


def test_batch_is_sum_over_batch_size():
    logits, target, weight = _random_case(n=3, seed=3)
    s = npa_cross_entropy(logits, target, weight, reduction="sum")
    b = npa_cross_entropy(logits, target, weight, reduction="batch")
    torch.testing.assert_close(b, s / 3)


def test_mean_and_weighted_mean_denominators():
    logits, target, weight = _random_case(seed=4)
    valid = target != IGN
    per_pixel = F.cross_entropy(logits, target, ignore_index=IGN, reduction="none") * weight
    per_pixel = per_pixel * valid
    mean = npa_cross_entropy(logits, target, weight, reduction="mean")
    wmean = npa_cross_entropy(logits, target, weight, reduction="weighted_mean")
    torch.testing.assert_close(mean, per_pixel.sum() / valid.sum())
    torch.testing.assert_close(wmean, per_pixel.sum() / weight[valid].sum())


def test_weighted_mean_of_constant_weights_is_plain_mean():
    logits, target, _ = _random_case(seed=5)
    w = torch.full(target.shape, 3.7)
    got = npa_cross_entropy(logits, target, w, reduction="weighted_mean")
    torch.testing.assert_close(got, F.cross_entropy(logits, target, ignore_index=IGN))


def test_weights_at_ignored_pixels_are_not_used():
    logits, target, weight = _random_case(seed=6)
    spoiled = weight.clone()
    spoiled[target == IGN] = float("nan")
    for reduction in REDUCTIONS:
        a = logits.clone().requires_grad_()
        b = logits.clone().requires_grad_()
        la = npa_cross_entropy(a, target, weight, reduction=reduction)
        lb = npa_cross_entropy(b, target, spoiled, reduction=reduction)
        torch.testing.assert_close(la, lb)
        la.sum().backward()
        lb.sum().backward()
        torch.testing.assert_close(a.grad, b.grad)
        assert torch.isfinite(b.grad).all()


def test_ignore_index_that_is_a_class_does_not_leak():
    # ignore value 0 is also a class index (LoveDA raw masks): its pixels must add nothing
    logits = torch.tensor([[[[5.0, 0.0]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    got = npa_cross_entropy(logits, target, ignore_index=0, reduction="sum")
    torch.testing.assert_close(got, torch.tensor(math.log(2.0)))


# ---- all-ignored crops, extreme logits, gradients ----------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_ignored_gives_zero_loss_and_zero_gradient(reduction):
    logits = torch.randn(2, 6, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGN)
    weight = torch.rand(2, 4, 4, requires_grad=True)
    loss = npa_cross_entropy(logits, target, weight, reduction=reduction)
    assert not torch.isnan(loss).any()
    assert torch.equal(loss, torch.zeros_like(loss))
    loss.sum().backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_all_ignored_without_weights_is_zero():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = npa_cross_entropy(logits, torch.full((1, 2, 2), IGN))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_weighted_mean_with_zero_weights_is_zero():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    loss = npa_cross_entropy(logits, target, torch.zeros(1, 2, 2), reduction="weighted_mean")
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_extreme_logits_stay_finite(reduction):
    logits = torch.tensor([[[[1e4, -1e4]], [[-1e4, 1e4]]]], requires_grad=True)  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 0]]])  # pixel a right by 2e4, pixel b wrong by 2e4
    loss = npa_cross_entropy(logits, target, torch.ones(1, 1, 2), reduction=reduction)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()
    if reduction == "none":
        torch.testing.assert_close(loss.detach(), torch.tensor([[[0.0, 2e4]]]))
    if reduction == "sum":
        assert loss.item() == pytest.approx(2e4)


@pytest.mark.parametrize("reduction", ["mean", "weighted_mean", "batch", "sum", "none"])
def test_gradcheck_float64(reduction):
    logits, target, weight = _random_case(n=2, c=3, h=2, w=3, seed=7, dtype=torch.float64)
    target[0, 0, 0] = IGN
    logits.requires_grad_()
    weight.requires_grad_()

    def f(z, w):
        return npa_cross_entropy(z, target, w, reduction=reduction)

    assert torch.autograd.gradcheck(f, (logits, weight))


def test_float64_logits_with_float32_weights():
    logits, target, weight = _random_case(seed=8, dtype=torch.float64)
    got = npa_cross_entropy(logits, target, weight.float())
    assert got.dtype == torch.float64


def test_integer_targets_of_any_width():
    logits, target, weight = _random_case(seed=9)
    ref = npa_cross_entropy(logits, target, weight)
    torch.testing.assert_close(npa_cross_entropy(logits, target.to(torch.uint8), weight), ref)
    torch.testing.assert_close(npa_cross_entropy(logits, target.int(), weight), ref)


# ---- module ------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_module_equals_function(reduction):
    logits, target, weight = _random_case(seed=10)
    target[target == IGN] = 7
    module = NPALoss(ignore_index=7, reduction=reduction)
    torch.testing.assert_close(
        module(logits, target, weight),
        npa_cross_entropy(logits, target, weight, ignore_index=7, reduction=reduction),
    )
    torch.testing.assert_close(
        module(logits, target),
        npa_cross_entropy(logits, target, None, ignore_index=7, reduction=reduction),
    )


def test_module_defaults_and_repr():
    m = NPALoss()
    assert (m.ignore_index, m.reduction) == (255, "mean")
    assert "reduction='mean'" in repr(m)


def test_module_rejects_bad_reduction_at_construction():
    with pytest.raises(ValueError, match="`reduction`"):
        NPALoss(reduction="avg")


# ---- errors name the argument ------------------------------------------------------------------
def test_bad_logits_shape():
    with pytest.raises(ValueError, match="`logits`"):
        npa_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.long))


def test_bad_target_shape():
    with pytest.raises(ValueError, match="`target`"):
        npa_cross_entropy(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long))


def test_bad_weight_shape():
    with pytest.raises(ValueError, match="`weight`"):
        npa_cross_entropy(
            torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), torch.ones(1, 4, 4)
        )


def test_bad_dtypes():
    z, t = torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(TypeError, match="`target`"):
        npa_cross_entropy(z, t.float())
    with pytest.raises(TypeError, match="`logits`"):
        npa_cross_entropy(z.long(), t)
    with pytest.raises(TypeError, match="`weight`"):
        npa_cross_entropy(z, t, torch.ones(1, 2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="`ignore_index`"):
        npa_cross_entropy(z, t, ignore_index=True)


def test_bad_reduction():
    with pytest.raises(ValueError, match="`reduction`"):
        npa_cross_entropy(
            torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), reduction="avg"
        )


def test_target_out_of_range():
    z = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match=r"`target`.*\[3\]"):
        npa_cross_entropy(z, torch.tensor([[[0, 1], [2, 3]]]))
    with pytest.raises(ValueError, match=r"`target`.*\[-1\]"):
        npa_cross_entropy(z, torch.tensor([[[0, 1], [2, -1]]]))


def test_negative_or_nonfinite_weight_at_valid_pixel():
    z, t = torch.zeros(1, 3, 1, 2), torch.tensor([[[0, 1]]])
    with pytest.raises(ValueError, match="`weight`"):
        npa_cross_entropy(z, t, torch.tensor([[[1.0, -0.5]]]))
    with pytest.raises(ValueError, match="`weight`"):
        npa_cross_entropy(z, t, torch.tensor([[[1.0, float("inf")]]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cuda_equals_cpu(reduction):
    logits, target, weight = _random_case(seed=11)
    cpu = npa_cross_entropy(logits, target, weight, reduction=reduction)
    gpu = npa_cross_entropy(logits.cuda(), target.cuda(), weight.cuda(), reduction=reduction)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="`target`"):
        npa_cross_entropy(logits.cuda(), target, weight.cuda())
    bad = target.clone()
    bad[0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"`target`.*\[9\]"):
        npa_cross_entropy(logits.cuda(), bad.cuda(), weight.cuda())
