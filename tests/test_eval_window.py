"""Sliding-window placement and probability averaging (npa_train.predict)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from npa_precompute.params import parse_size
from npa_train.predict import (
    coverage_count,
    parse_overlap,
    sliding_window_probs,
    window_grid,
    window_starts,
    window_stride,
)


class WindowStub(nn.Module):
    """Logits that depend on the pixel, its position in the window and the window's content.

    ``logit_c = (c + 1) * 0.7 * x0 - c * mean(x1 over the window) + 0.02 * c * row
    - 0.01 * (c % 2) * col`` (row, col inside the window): a pixel's probabilities differ
    between the windows covering it, so averaging is visible.
    """

    def __init__(self, num_classes: int = 4, as_dict: bool = False) -> None:
        super().__init__()
        self.num_classes, self.as_dict = num_classes, as_dict

    def forward(self, x: torch.Tensor):
        n, _, h, w = x.shape
        rows = torch.arange(h, dtype=x.dtype, device=x.device).view(1, h, 1)
        cols = torch.arange(w, dtype=x.dtype, device=x.device).view(1, 1, w)
        mean1 = x[:, 1].mean(dim=(1, 2)).view(n, 1, 1)
        out = torch.stack(
            [
                (c + 1) * 0.7 * x[:, 0] - c * mean1 + 0.02 * c * rows - 0.01 * (c % 2) * cols
                for c in range(self.num_classes)
            ],
            dim=1,
        )
        return {"out": out, "aux": out} if self.as_dict else out


MEAN = (100.0, 50.0, 20.0)
STD = (40.0, 30.0, 10.0)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _brute_force(image, window, ys, xs, num_classes=4):
    """Average, per pixel, the softmax of every listed window covering it (padded with 0)."""
    h, w, _ = image.shape
    norm = (image.astype(np.float64) - MEAN) / STD
    ph, pw = max(h, window), max(w, window)
    padded = np.zeros((ph, pw, 3))
    padded[:h, :w] = norm
    stub = WindowStub(num_classes).double()
    probs = {}
    for y0 in ys:
        for x0 in xs:
            win = torch.from_numpy(padded[y0 : y0 + window, x0 : x0 + window].transpose(2, 0, 1))
            probs[(y0, x0)] = torch.softmax(stub(win[None]), dim=1)[0].numpy()
    out = np.zeros((num_classes, h, w))
    for y in range(h):
        for x in range(w):
            covering = [
                probs[(y0, x0)][:, y - y0, x - x0]
                for (y0, x0) in probs
                if y0 <= y < y0 + window and x0 <= x < x0 + window
            ]
            out[:, y, x] = np.mean(covering, axis=0)
    return out


# -- geometry ---------------------------------------------------------------------------------


def test_parse_overlap_accepts_fractions_and_decimals():
    assert parse_overlap("1/3") == Fraction(1, 3)
    assert parse_overlap("0.5") == Fraction(1, 2)
    assert parse_overlap("0") == 0 and parse_overlap(0) == 0
    assert parse_overlap(0.25) == Fraction(1, 4)
    assert parse_overlap(" 2/3 ") == Fraction(2, 3)


@pytest.mark.parametrize("bad", ["1", 1, 1.0, "-0.1", -0.5, "3/2", "abc", "1/0", float("nan")])
def test_parse_overlap_refuses_values_outside_0_1(bad):
    with pytest.raises(ValueError, match="`overlap`"):
        parse_overlap(bad)


def parse_window_size(window):
    return parse_size(window, name="window")


def test_parse_window_size_refuses_sides_below_1():
    assert parse_window_size(513) == (513, 513) and parse_window_size((64, 32)) == (64, 32)
    with pytest.raises(ValueError, match="`window` must be >= 1"):
        parse_window_size(0)
    with pytest.raises(ValueError, match="`window` must be >= 1"):
        parse_window_size((-3, 4))
    with pytest.raises(TypeError, match="`window`"):
        parse_window_size("513")


def test_stride_is_window_times_one_minus_overlap_at_least_1():
    assert window_stride(513, "1/3") == (342, 342)
    assert window_stride(256, "1/3") == (170, 170)  # 170.67 rounded down
    assert window_stride(64, "0.5") == (32, 32)
    assert window_stride(64, 0) == (64, 64)
    assert window_stride(10, "0.95") == (1, 1)  # 0.5 -> at least 1
    assert window_stride((64, 30), "1/2") == (32, 15)


def test_window_starts_clamp_the_last_window_to_the_border():
    assert window_starts(144, 64, 32) == [0, 32, 64, 80]
    assert window_starts(300, 256, 170) == [0, 44]
    assert window_starts(128, 64, 32) == [0, 32, 64]  # last start already on the border
    assert window_starts(64, 64, 32) == [0]
    assert window_starts(40, 64, 32) == [0]  # shorter than the window: padded
    assert window_starts(7, 3, 1) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="`stride`"):
        window_starts(10, 3, 0)


def test_coverage_300_square_window_256():
    # starts 0 and 44 on both axes: windows [0, 256) and [44, 300)
    per_axis = np.array([1] * 44 + [2] * 212 + [1] * 44)
    expected = np.outer(per_axis, per_axis)
    for overlap in ("1/3", "0"):  # stride 170 or 256: the same two windows
        assert window_grid((300, 300), 256, overlap) == [(0, 0), (0, 44), (44, 0), (44, 44)]
        np.testing.assert_array_equal(coverage_count((300, 300), 256, overlap), expected)


def test_coverage_144_side_window_64_stride_32():
    # windows [0,64) [32,96) [64,128) [80,144)
    per_axis = np.array([1] * 32 + [2] * 32 + [2] * 16 + [3] * 16 + [2] * 32 + [1] * 16)
    assert per_axis.size == 144
    np.testing.assert_array_equal(
        coverage_count((144, 144), 64, "0.5"), np.outer(per_axis, per_axis)
    )
    # a 144 x 100 tile: columns start at 0, 32, 36: windows [0,64) [32,96) [36,100)
    cols = np.array([1] * 32 + [2] * 4 + [3] * 28 + [2] * 32 + [1] * 4)
    np.testing.assert_array_equal(coverage_count((144, 100), 64, "0.5"), np.outer(per_axis, cols))


def test_every_pixel_is_covered_for_any_size():
    for h, w in [(1, 1), (5, 300), (513, 514), (1000, 777), (63, 64), (65, 64)]:
        for overlap in ("0", "1/3", "0.5", "0.9"):
            c = coverage_count((h, w), 64, overlap)
            assert c.shape == (h, w) and c.min() >= 1, (h, w, overlap)


# -- averaged probabilities -------------------------------------------------------------------


def test_probabilities_equal_the_brute_force_average_over_windows():
    image = _image(144, 100)
    probs = sliding_window_probs(
        WindowStub(), image, mean=MEAN, std=STD, window=64, overlap="0.5", batch=5
    )
    expected = _brute_force(image, 64, [0, 32, 64, 80], [0, 32, 36])
    assert probs.shape == (4, 144, 100) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    # the average differs from any single window's answer: averaging really happened
    single = _brute_force(image[:64, :64], 64, [0], [0])  # window (0, 0) alone
    assert np.abs(probs[:, 40:60, 40:60] - single[:, 40:60, 40:60]).max() > 1e-3


def test_batch_size_and_dict_outputs_do_not_change_the_result():
    image = _image(90, 70, seed=1)
    kw = {"mean": MEAN, "std": STD, "window": 32, "overlap": "1/3"}
    a = sliding_window_probs(WindowStub(), image, batch=1, **kw)
    b = sliding_window_probs(WindowStub(as_dict=True), image, batch=64, **kw)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_tile_smaller_than_the_window_is_padded_and_cropped():
    image = _image(40, 50, seed=2)
    probs = sliding_window_probs(WindowStub(), image, mean=MEAN, std=STD, window=64, overlap="1/3")
    assert probs.shape == (4, 40, 50)
    np.testing.assert_allclose(probs, _brute_force(image, 64, [0], [0]), rtol=2e-5, atol=1e-6)
    # smaller along one axis only: rows padded, columns slide (starts 0, 32, 36)
    image = _image(40, 100, seed=3)
    probs = sliding_window_probs(WindowStub(), image, mean=MEAN, std=STD, window=64, overlap=0.5)
    np.testing.assert_allclose(
        probs, _brute_force(image, 64, [0], [0, 32, 36]), rtol=2e-5, atol=1e-6
    )


def test_uint16_images_and_progress_callback():
    image = (_image(50, 50).astype(np.uint16) * 200).astype(np.uint16)
    seen = []
    probs = sliding_window_probs(
        WindowStub(),
        image,
        mean=(20000.0, 10000.0, 4000.0),
        std=(8000.0, 6000.0, 2000.0),
        window=32,
        overlap="0.5",
        batch=3,
        on_batch=seen.append,
    )
    assert np.isfinite(probs).all() and probs.shape == (4, 50, 50)
    assert sum(seen) == len(window_grid((50, 50), 32, "0.5")) == 9 and max(seen) <= 3


def test_sliding_window_refuses_bad_arguments():
    image = _image(20, 20)
    kw = {"mean": MEAN, "std": STD}
    with pytest.raises(ValueError, match="`window`"):
        sliding_window_probs(WindowStub(), image, window=0, **kw)
    with pytest.raises(ValueError, match="`overlap`"):
        sliding_window_probs(WindowStub(), image, overlap="1", **kw)
    with pytest.raises(ValueError, match="`batch`"):
        sliding_window_probs(WindowStub(), image, batch=0, **kw)
    with pytest.raises(ValueError, match="`amp` needs a CUDA device"):
        sliding_window_probs(WindowStub(), image, amp=True, device="cpu", **kw)
    with pytest.raises(ValueError, match="3 bands"):
        sliding_window_probs(WindowStub(), image, mean=(1.0,), std=(1.0,))
    with pytest.raises(ValueError, match="expected 6"):
        sliding_window_probs(WindowStub(4), image, num_classes=6, window=16, **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", [False, True])
def test_cuda_matches_cpu(amp):
    image = _image(200, 170, seed=4)
    kw = {"mean": MEAN, "std": STD, "window": 64, "overlap": "1/3", "batch": 8}
    cpu = sliding_window_probs(WindowStub(), image, **kw)
    gpu = sliding_window_probs(WindowStub().cuda(), image, device="cuda", amp=amp, **kw)
    np.testing.assert_allclose(gpu, cpu, atol=2e-2 if amp else 1e-5)
