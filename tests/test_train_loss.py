"""npa_train.loss: values against F.cross_entropy and hand computations, edge cases, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from npa_train.criteria import (
    ClassWeightedCE,
    DiceLoss,
    FocalLoss,
    build_criterion,
    class_weighted_cross_entropy,
    dice_loss,
    focal_loss,
    median_frequency_weights,
)
from npa_train.loss import (
    LOSSES,
    REDUCTIONS,
    NPALoss,
    npa_cross_entropy,
    npa_loss,
)

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
    # k=None: no weights of its own, so weight=None is plain cross-entropy
    torch.testing.assert_close(
        NPALoss(k=None, ignore_index=7, reduction=reduction)(logits, target),
        npa_cross_entropy(logits, target, None, ignore_index=7, reduction=reduction),
    )


def test_module_defaults_and_repr():
    m = NPALoss()
    assert (m.k, m.transform, m.ignore_index, m.reduction) == (32, "log10:L=0.5", 255, "mean")
    assert "reduction='mean'" in repr(m) and "k=32" in repr(m)


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


# ---- fast path (custom backward) == plain autograd ---------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "weighted_mean", "batch", "sum"])
def test_fast_path_equals_autograd_reference(reduction):
    logits, target, weight = _random_case(n=3, c=5, h=6, w=4, seed=21, dtype=torch.float64)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    fast = npa_cross_entropy(a, target, weight, reduction=reduction)  # weight needs no grad
    per_pixel = npa_cross_entropy(b, target, weight, reduction="none")
    valid = target != IGN
    denom = {"mean": valid.sum(), "weighted_mean": (weight * valid).sum(), "batch": 3, "sum": 1}
    ref = per_pixel.sum() / denom[reduction]
    torch.testing.assert_close(fast, ref)
    fast.backward()
    ref.backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_fast_path_gradient_by_finite_differences_and_single_backward():
    # the fast path (weights without grad) against central differences, in float64
    logits, target, weight = _random_case(n=1, c=3, h=2, w=3, seed=22, dtype=torch.float64)
    z = logits.clone().requires_grad_()
    npa_cross_entropy(z, target, weight).backward()
    eps = 1e-6
    num = torch.zeros_like(logits)
    for i in range(logits.numel()):
        d = torch.zeros(logits.numel(), dtype=torch.float64)
        d[i] = eps
        d = d.view_as(logits)
        hi = npa_cross_entropy(logits + d, target, weight)
        lo = npa_cross_entropy(logits - d, target, weight)
        num.view(-1)[i] = (hi - lo) / (2 * eps)
    torch.testing.assert_close(z.grad, num, atol=1e-7, rtol=1e-6)
    # its gradient buffer is reused: a second backward through it is refused, clearly
    loss = npa_cross_entropy(logits.clone().requires_grad_(), target, weight)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()


# ---- class-weighted CE -------------------------------------------------------------------------
def test_class_weighted_equals_torch_weighted_cross_entropy():
    logits, target, _ = _random_case(seed=30)
    cw = torch.tensor([0.5, 1.0, 2.0, 0.25, 3.0, 0.0])
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    ref = F.cross_entropy(a, target, weight=cw, ignore_index=IGN)
    got = class_weighted_cross_entropy(b, target, cw)
    torch.testing.assert_close(got, ref)
    ref.backward()
    got.backward()
    torch.testing.assert_close(b.grad, a.grad)
    for red in ("sum", "none"):
        torch.testing.assert_close(
            class_weighted_cross_entropy(logits, target, cw, reduction=red),
            F.cross_entropy(logits, target, weight=cw, ignore_index=IGN, reduction=red),
        )
    module = ClassWeightedCE(cw.tolist())
    torch.testing.assert_close(module(logits, target), ref.detach())


def test_class_weighted_all_ignored_is_zero_and_bad_weights_named():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = class_weighted_cross_entropy(logits, torch.full((1, 2, 2), IGN), [1.0, 2.0, 3.0])
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    with pytest.raises(ValueError, match="`class_weight`"):
        class_weighted_cross_entropy(logits, torch.zeros(1, 2, 2, dtype=torch.long), [1.0, 2.0])
    with pytest.raises(ValueError, match="`class_weight`"):
        class_weighted_cross_entropy(logits, torch.zeros(1, 2, 2, dtype=torch.long), [1, -1, 1])


# ---- median-frequency weights ------------------------------------------------------------------
def test_median_frequency_weights_by_hand():
    # tile 1: 100 px (10 of class 0, 30 of 1, 60 of 2); tile 2: 200 px (50 of 1, 50 of 2,
    # 100 of class 3 = clutter). freq: c0 10/100 = 0.1 (only tile 1 has it), c1 80/300,
    # c2 110/300, c3 100/200 = 0.5; median of (0.1, 0.2667, 0.3667, 0.5) = 0.31667
    w = median_frequency_weights([[10, 30, 60, 0], [0, 50, 50, 100]])
    med = (80 / 300 + 110 / 300) / 2
    np.testing.assert_allclose(w, [med / 0.1, med / (80 / 300), med / (110 / 300), med / 0.5])
    # the clutter rule: class 3 takes the lowest weight of the others (class 2's)
    wb = median_frequency_weights([[10, 30, 60, 0], [0, 50, 50, 100]], background=[3])
    np.testing.assert_allclose(wb, [*w[:3], w[2]])
    np.testing.assert_allclose(wb, [3.16666667, 1.1875, 0.86363636, 0.86363636])


def test_median_frequency_weights_absent_class_and_one_image():
    w = median_frequency_weights([20, 0, 60, 20], background=[1])
    # one image: freq = share; median of (0.2, 0.6, 0.2) = 0.2; absent class 1 -> 0
    np.testing.assert_allclose(w, [1.0, 0.0, 1 / 3, 1.0])
    with pytest.raises(ValueError, match="no pixel"):
        median_frequency_weights([0, 0])
    with pytest.raises(ValueError, match="`background`"):
        median_frequency_weights([1, 2], background=[5])
    with pytest.raises(ValueError, match="`class_pixels`"):
        median_frequency_weights([1, -2])


# ---- focal -------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_focal_with_gamma_0_is_cross_entropy(reduction):
    logits, target, _ = _random_case(seed=40)
    torch.testing.assert_close(
        focal_loss(logits, target, gamma=0.0, reduction=reduction),
        F.cross_entropy(logits, target, ignore_index=IGN, reduction=reduction),
    )


def test_focal_hand_computed():
    # pixel a: p_t = 1/2 -> 0.25 * ln 2 = 0.17328680; pixel b: logits (2, 0), target 0:
    # p_t = e^2 / (e^2 + 1) = 0.88079708, (1 - p_t)^2 = 0.01420934, -ln p_t = 0.12692801
    logits = torch.tensor([[[[0.0, 2.0]], [[0.0, 0.0]]]], dtype=torch.float64)
    target = torch.tensor([[[0, 0]]])
    got = focal_loss(logits, target, reduction="none")
    torch.testing.assert_close(
        got, torch.tensor([[[0.17328680, 0.01420934 * 0.12692801]]], dtype=torch.float64)
    )
    assert focal_loss(logits, target).item() == pytest.approx((0.17328680 + 0.0018036) / 2, 1e-5)


def test_focal_gradcheck_and_extremes():
    logits, target, _ = _random_case(n=1, c=3, h=2, w=3, seed=41, dtype=torch.float64)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda z: focal_loss(z, target), (logits,))
    z = torch.tensor([[[[1e4, -1e4]], [[-1e4, 1e4]]]], requires_grad=True)
    loss = focal_loss(z, torch.tensor([[[0, 0]]]))
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(z.grad).all()
    with pytest.raises(ValueError, match="`gamma`"):
        focal_loss(z, torch.tensor([[[0, 0]]]), gamma=-1)


# ---- dice --------------------------------------------------------------------------------------
def test_dice_hand_computed_2x2():
    # 2 classes, 2x2 image; softmax probabilities of class 0 by pixel: p = sigmoid(z0 - z1)
    # z0 - z1 = (0, ln 3, -ln 3, 0) -> p0 = (1/2, 3/4, 1/4, 1/2); target (0, 0, 1, ignore)
    d = torch.tensor([[0.0, math.log(3.0)], [-math.log(3.0), 0.0]], dtype=torch.float64)
    logits = torch.stack([d, torch.zeros_like(d)])[None]  # (1, 2, 2, 2)
    target = torch.tensor([[[0, 0], [1, IGN]]])
    # valid pixels: p0 = (1/2, 3/4, 1/4), p1 = (1/2, 1/4, 3/4); g0 = (1, 1, 0), g1 = (0, 0, 1)
    # class 0: inter 5/4, sum p 3/2, sum g 2 -> dice (2.5 + s) / (3.5 + s)
    # class 1: inter 3/4, sum p 3/2, sum g 1 -> dice (1.5 + s) / (2.5 + s)
    for s in (0.0, 1.0):
        expected = 1 - ((2.5 + s) / (3.5 + s) + (1.5 + s) / (2.5 + s)) / 2
        got = dice_loss(logits, target, smooth=s)
        assert got.item() == pytest.approx(expected, abs=1e-12)
    assert DiceLoss(smooth=0.0)(logits, target).item() == pytest.approx(
        1 - (2.5 / 3.5 + 1.5 / 2.5) / 2
    )


def test_dice_perfect_prediction_and_absent_class():
    logits = torch.tensor([[[[20.0, -20.0]], [[-20.0, 20.0]], [[-20.0, -20.0]]]])
    target = torch.tensor([[[0, 1]]])  # class 2 absent from target and prediction
    assert dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)  # smooth 1
    # without smoothing the absent class's tiny probabilities give it dice 0
    assert dice_loss(logits, target, smooth=0.0).item() == pytest.approx(1 / 3, abs=1e-6)


# ---- every loss: ignore, all-ignored, no NaN, module == function -------------------------------
@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_all_ignored_is_zero_and_finite(name):
    crit = build_criterion(name, class_weight=[1.0] * 6)
    logits = torch.randn(2, 6, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGN)
    loss = crit(logits, target, torch.rand(2, 4, 4))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_ignores_ignored_pixels(name):
    crit = build_criterion(name, class_weight=[0.5, 1, 2, 1, 3, 1])
    logits, target, weight = _random_case(seed=50)
    spoiled = logits.clone()
    spoiled[:, :, target[0] == IGN] = 0  # change nothing but ignored pixels' logits (image 0)
    ign = (target == IGN).unsqueeze(1).expand_as(logits)
    b = torch.where(ign, torch.full_like(logits, 123.0), logits)
    torch.testing.assert_close(crit(logits, target, weight), crit(b, target, weight))


def test_build_criterion_modules_and_errors():
    assert isinstance(build_criterion("npa"), NPALoss)
    assert build_criterion("ce").reduction == "mean"
    assert isinstance(build_criterion("ce-weighted", class_weight=[1, 2]), ClassWeightedCE)
    assert isinstance(build_criterion("focal"), FocalLoss)
    assert build_criterion("focal").gamma == 2.0
    assert isinstance(build_criterion("dice"), DiceLoss)
    with pytest.raises(ValueError, match="`loss`"):
        build_criterion("lovasz")
    with pytest.raises(ValueError, match="class_weight"):
        build_criterion("ce-weighted")
    logits, target, weight = _random_case(seed=51)
    torch.testing.assert_close(FocalLoss(1.5)(logits, target, weight),
                               focal_loss(logits, target, weight, gamma=1.5))  # fmt: skip


# ---- label mistakes: a clear error before any weight is computed (issue 20) ---------------------
def _masks(c=6, seed=60):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, c, 12, 14, generator=g)
    target = torch.randint(0, c, (2, 12, 14), generator=g)
    target[1] = 255  # a no-data image (its counts reach (2k + 1)², past the table: IndexError)
    return logits, target


def _loveda_raw(seed=61):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 7, 12, 14, generator=g), torch.randint(0, 8, (2, 12, 14), generator=g)


@pytest.mark.parametrize(
    ("case", "make", "ignore_index", "shown", "bad", "fix"),
    [
        ("smp default", _masks, None, "None: no pixel is ignored", "[255]", "set ignore_index=255"),
        ("torch default", _masks, -100, "(-100)", "[255]", "set ignore_index=255"),
        ("raw LoveDA", _loveda_raw, 255, "(255)", "[7]", "LoveDA: 0 is no-data, map c to c-1"),
    ],
)  # fmt: skip
def test_label_mistakes_name_values_ignore_index_and_fix(case, make, ignore_index, shown, bad,
                                                         fix):  # fmt: skip
    from npa_train.adapters.smp import NPALoss as SmpNPALoss

    logits, target = make()
    crits = [NPALoss(ignore_index=ignore_index), NPALoss(k=4, transform="norm:L=0.5",
             ignore_index=ignore_index)]  # fmt: skip
    if ignore_index is None:
        crits.append(SmpNPALoss())  # smp's default ignore_index=None
    for crit in crits:
        with pytest.raises(ValueError) as info:  # not IndexError from a table gather
            crit(logits, target)
        msg = str(info.value)
        assert "outside [0," in msg and bad in msg and shown in msg and fix in msg, msg
        assert str(-(2**63)) not in msg
    with pytest.raises(ValueError, match="outside") as info:
        npa_loss(logits, target, k=2, ignore_index=ignore_index)
    assert fix in str(info.value)


def test_label_check_comes_before_the_weights(monkeypatch):
    """The weights are computed only for checked labels (so no gather ever sees a label
    outside the classes); valid labels still take the no-read-back path."""
    import npa_train.loss as loss_mod

    calls = []
    real = loss_mod.label_weights
    monkeypatch.setattr(loss_mod, "label_weights",
                        lambda *a, **k: calls.append(k["classes"]) or real(*a, **k))  # fmt: skip
    logits, target = _masks()
    with pytest.raises(ValueError, match="ignore_index=255"):
        NPALoss(ignore_index=None)(logits, target)
    assert calls == []
    NPALoss(ignore_index=255)(logits, target)
    assert calls == [[0, 1, 2, 3, 4, 5, 255]]


def test_unchecked_online_weights_never_read_out_of_bounds():
    """npa_weights(num_classes=...) does not check (documented): a stray label gives some
    weight, never an IndexError (on CUDA: never a device-side assert)."""
    from npa_train.online import npa_weights

    _, target = _masks()
    w = npa_weights(target, 3, num_classes=6, ignore_index=None)  # 255 not among the classes
    assert w.shape == target.shape and bool(torch.isfinite(w).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_label_mistakes_on_cuda_are_errors_not_device_asserts():
    logits, target = _masks()
    logits, target = logits.cuda(), target.cuda()
    with pytest.raises(ValueError, match="set ignore_index=255"):
        NPALoss(ignore_index=None)(logits, target)
    # the device is still usable (a device-side assert would poison the context)
    ok = NPALoss(ignore_index=255)(logits, target)
    assert torch.isfinite(ok).item()
    # valid labels: the weights wait for nothing beyond the one value check
    torch.cuda.set_sync_debug_mode("warn")
    try:
        NPALoss(ignore_index=255)(logits, target)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_npa_loss_module_keeps_its_parsed_settings():
    crit = NPALoss(k=8, transform="ln:L=0.50", ignore_index=None)
    assert crit.spec.name == "online:k8_ln_L0.5" and crit.transform == "ln:L=0.5"
    crit.k = 4
    assert crit.spec.k == 4 and crit.spec.transform == crit.spec.transform
    crit.transform = "raw"
    assert crit.spec.name == "online:k4_raw" and crit.k == 4
    assert NPALoss(k=None).spec is None
    logits, target = _masks()
    target[target == 255] = 0
    torch.testing.assert_close(crit(logits, target), npa_loss(logits, target, k=4,
                               transform="raw", ignore_index=None))  # fmt: skip
