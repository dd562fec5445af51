"""Weight transformations against Eq. 2 and Eq. 3 written out."""

from __future__ import annotations

import math

import numpy as np
import pytest

from npa_precompute.transforms import WeightTransform, parse_transform, weights_name

A = np.array([[0, 3, 10], [100, 4224, 7]], dtype=np.uint16)


def test_log10_matches_eq3():
    w = parse_transform("log10:L=0.5").apply(A)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, np.log10(A + 10**0.5), rtol=1e-6)
    assert w[0, 0] == pytest.approx(0.5)  # A = 0 gives L


def test_ln_and_general_log_match_eq3():
    np.testing.assert_allclose(
        parse_transform("ln:L=0.5").apply(A), np.log(A + math.e**0.5), rtol=1e-6
    )
    w = parse_transform("log:a=2,L=1").apply(A)
    np.testing.assert_allclose(w, np.log2(A + 2.0), rtol=1e-6)
    assert w[0, 0] == pytest.approx(1.0)


def test_norm_matches_eq2_with_ignore_excluded_and_zeroed():
    ignore = np.array([[False, False, False], [False, True, False]])
    w = parse_transform("norm:L=0.5").apply(A, ignore)
    valid = A[~ignore].astype(float)  # min 0, max 100 once 4224 is ignored
    expected = (A - valid.min()) / (valid.max() - valid.min()) + 0.5
    expected[ignore] = 0
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert w[1, 0] == pytest.approx(1.5) and w[1, 1] == 0


def test_norm_of_constant_map_is_L():
    w = parse_transform("norm:L=0.25").apply(np.full((4, 4), 9, np.uint16))
    np.testing.assert_array_equal(w, np.float32(0.25))


def test_raw_and_ignore_zero():
    ignore = A > 1000
    w = parse_transform("raw").apply(A, ignore)
    np.testing.assert_array_equal(w, np.where(ignore, 0, A).astype(np.float32))


def test_float16_on_request():
    w = parse_transform("log10:L=0.5").apply(A, dtype=np.float16)
    assert w.dtype == np.float16
    np.testing.assert_allclose(w, np.log10(A + 10**0.5), rtol=1e-3)
    with pytest.raises(ValueError, match="float32 or float16"):
        parse_transform("raw").apply(A, dtype=np.float64)


@pytest.mark.parametrize(
    ("text", "canonical", "slug"),
    [
        ("raw", "raw", "raw"),
        ("norm:L=0.5", "norm:L=0.5", "norm_L0.5"),
        ("NORM : L = 1.0", "norm:L=1", "norm_L1"),
        ("log10", "log10:L=0.5", "log10_L0.5"),
        ("ln:L=0", "ln:L=0", "ln_L0"),
        ("log:L=0.5,a=2", "log:a=2,L=0.5", "log_a2_L0.5"),
    ],
)
def test_canonical_specs_roundtrip(text, canonical, slug):
    t = parse_transform(text)
    assert t.spec == canonical and t.slug == slug
    assert parse_transform(t.spec) == t


def test_weights_name():
    assert weights_name(32, "log10:L=0.5") == "k32_log10_L0.5"
    assert weights_name(8, WeightTransform("norm", L=0.0)) == "k8_norm_L0"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sqrt", "unknown transform"),
        ("norm:L=-0.1", "`L` must be >= 0"),
        ("log:a=1,L=0.5", "`a` must be > 1"),
        ("log:a=0.5", "`a` must be > 1"),
        ("log:L=0.5", "needs a base"),
        ("log10:L=abc", "`L` in transform 'log10:L=abc' must be a number"),
        ("log10:L=nan", "must be finite"),
        ("norm:a=2", "unknown parameter"),
        ("norm:L=1,L=2", "given twice"),
        ("raw:L=1", "no parameters"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_transform(spec)


def test_spec_type_error():
    with pytest.raises(TypeError, match="must be a string"):
        parse_transform(0.5)


def test_table_and_per_pixel_paths_agree(monkeypatch):
    import npa_precompute.transforms as tr

    ignore = A == 7
    for spec in ("log10:L=0.5", "norm:L=0.5", "ln:L=0", "raw"):
        t = parse_transform(spec)
        fast = t.apply(A, ignore)
        monkeypatch.setattr(tr, "MAX_TABLE", 0)
        slow = t.apply(A, ignore)
        monkeypatch.undo()
        np.testing.assert_array_equal(fast, slow)


def test_all_ignored_gives_zeros():
    w = parse_transform("norm:L=0.5").apply(A, np.ones(A.shape, bool))
    np.testing.assert_array_equal(w, 0)
