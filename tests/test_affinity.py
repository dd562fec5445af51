"""affinity_maps against brute-force Eq. 1 on fixed, random, edge and real inputs."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import brute_force_affinity
from PIL import Image

from npa_precompute import affinity_maps
from npa_precompute.affinity import affinity_dtype, dense_labels, parse_ks
from npa_precompute.presets import get_preset

METHODS = ["integral", "columns", "auto"]


def test_hand_checked_k1_example():
    # 3x3 map, k = 1, edge-replicate padding (the paper's Fig. 3 setting).
    labels = np.array([[0, 0, 1], [0, 0, 1], [2, 2, 1]])
    # Centre pixel (class 0): window is the whole map, 4 zeros -> 5 differ.
    # Top-left (class 0): padded window rows (0,0,1) x cols (0,0,1) -> only label row 1 / col 1
    # values, all 0 -> 0 differ. Top-right (class 1): padded cols (1,2,2) rows (0,0,1):
    # labels [[0,1,1],[0,1,1],[0,1,1]] -> 3 differ.
    expected = np.array([[0, 3, 3], [3, 5, 3], [3, 5, 3]])
    for m in METHODS:
        got = affinity_maps(labels, 1, method=m)
        assert got.shape == (1, 3, 3)
        np.testing.assert_array_equal(got[0], expected)


def test_single_pixel_and_single_class_are_zero():
    for m in METHODS:
        np.testing.assert_array_equal(affinity_maps(np.array([[7]]), [0, 3], method=m), 0)
        np.testing.assert_array_equal(affinity_maps(np.full((5, 9), 3), [0, 1, 20], method=m), 0)


def test_k0_is_zero_everywhere():
    labels = np.random.default_rng(0).integers(0, 6, (17, 13))
    np.testing.assert_array_equal(affinity_maps(labels, 0)[0], 0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(12))
def test_random_shapes_classes_and_k_match_brute_force(method, seed):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(1, 48, 2))
    n_classes = int(rng.integers(1, 14))
    labels = rng.integers(0, n_classes, (h, w))
    if seed % 2:  # blocky, spatially coherent labels, like real ground truth
        blocks = rng.integers(0, n_classes, (h // 5 + 1, w // 5 + 1))
        labels = np.kron(blocks, np.ones((5, 5), dtype=int))[:h, :w]
    ks = [0, 1, 2, 5, int(rng.integers(3, 60))]  # includes 2k + 1 > H, W
    got = affinity_maps(labels, ks, method=method)
    for i, k in enumerate(dict.fromkeys(ks)):
        np.testing.assert_array_equal(got[i], brute_force_affinity(labels, k), err_msg=f"k={k}")


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32,
                                   np.int64, np.uint64])  # fmt: skip
def test_any_integer_dtype(dtype):
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    values = np.array([info.min, info.max, 0, 1], dtype=dtype)
    labels = values[rng.integers(0, 4, (20, 23))]
    ref = brute_force_affinity(labels, 3)
    for m in METHODS:
        np.testing.assert_array_equal(affinity_maps(labels, 3, method=m)[0], ref)


def test_many_classes_300_distinct_values():
    rng = np.random.default_rng(5)
    labels = rng.permutation(np.arange(300).repeat(2))[: 24 * 25].reshape(24, 25) * 1000
    assert len(np.unique(labels)) >= 256
    ref = brute_force_affinity(labels, 4)
    for m in METHODS:
        np.testing.assert_array_equal(affinity_maps(labels, [4], method=m)[0], ref)


def test_rows_and_columns_of_one_pixel():
    rng = np.random.default_rng(9)
    for shape in [(1, 40), (40, 1), (2, 31)]:
        labels = rng.integers(0, 3, shape)
        for m in METHODS:
            got = affinity_maps(labels, [1, 7, 50], method=m)
            for i, k in enumerate([1, 7, 50]):
                np.testing.assert_array_equal(got[i], brute_force_affinity(labels, k))


def test_methods_agree_on_tall_tile_across_row_bands():
    # taller than one row band of either kernel, so band halos and seams are exercised
    rng = np.random.default_rng(11)
    blocks = rng.integers(0, 6, (120, 12))
    labels = np.kron(blocks, np.ones((5, 7), dtype=np.uint8))  # 600 x 84
    ks = [1, 8, 32]
    a = affinity_maps(labels, ks, method="integral")
    b = affinity_maps(labels, ks, method="columns")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[1], brute_force_affinity(labels, 8))


def test_random_labels_take_the_vector_path_and_stay_exact():
    # every pixel its own run: the columns kernel switches to its all-class histogram
    labels = np.random.default_rng(2).integers(0, 3, (30, 200))
    np.testing.assert_array_equal(
        affinity_maps(labels, 6, method="columns")[0], brute_force_affinity(labels, 6)
    )


def test_output_dtype_and_range():
    labels = np.random.default_rng(0).integers(0, 2, (9, 9))
    assert affinity_maps(labels, 127).dtype == np.uint16
    assert affinity_maps(labels, 128).dtype == np.uint32
    assert affinity_dtype(32767) == np.uint32
    assert affinity_dtype(32768) == np.uint64
    out = affinity_maps(labels, [1, 32])
    assert out.dtype == np.uint16 and out.shape == (2, 9, 9)
    assert out[1].max() <= 65 * 65 - 1


def test_large_k_beyond_uint16_is_exact():
    labels = np.array([[0, 1], [1, 1]])
    k = 200  # (2k+1)^2 - 1 = 160800 > 65535
    got = affinity_maps(labels, k)
    assert got.dtype == np.uint32
    # replicate padding: top-left pixel's label covers (k+1)^2 window pixels
    assert got[0, 0, 0] == (2 * k + 1) ** 2 - (k + 1) ** 2
    np.testing.assert_array_equal(got[0], brute_force_affinity(labels, k))


def test_dense_labels_roundtrip():
    labels = np.array([[5, -3, 5], [70000, -3, 5]], dtype=np.int64)
    dense, values = dense_labels(labels)
    np.testing.assert_array_equal(values[dense], labels)
    assert dense.max() == 2 and dense.dtype == np.uint8


@pytest.mark.parametrize(
    ("ks", "message"),
    [(-1, "`k` must be >= 0, got -1"), ("8,x", "comma-separated"), ([], "at least one"),
     (2**31, "`k` must be <="), ([1.5], "must hold integers")],
)  # fmt: skip
def test_bad_k(ks, message):
    with pytest.raises((ValueError, TypeError), match=message):
        affinity_maps(np.zeros((3, 3), int), ks)


def test_bad_labels():
    with pytest.raises(TypeError, match="`labels` must be an integer array"):
        affinity_maps(np.zeros((3, 3)), 1)
    with pytest.raises(ValueError, match="must be 2-D"):
        affinity_maps(np.zeros((3, 3, 3, 3), int), 1)
    with pytest.raises(ValueError, match="H, W >= 1"):
        affinity_maps(np.zeros((0, 3), int), 1)
    with pytest.raises(ValueError, match="`method` must be one of"):
        affinity_maps(np.zeros((3, 3), int), 1, method="fast")


def test_parse_ks_order_and_duplicates():
    assert parse_ks("32, 8,32") == (32, 8)
    assert parse_ks(np.int64(4)) == (4,)


def _real_labels(shared_data):
    gt = shared_data / "vaihingen_crop/gts_eroded_for_participants"
    rgb = np.asarray(Image.open(gt / "top_mosaic_09cm_area1_noBoundary.tif"))
    vaihingen = get_preset("isprs").decode(rgb)
    masks = shared_data / "loveda_crop/Train/Rural/masks_png"
    loveda = [
        get_preset("loveda").decode(np.asarray(Image.open(masks / f"{i}.png"))) for i in (0, 1)
    ]
    return [vaihingen, *loveda]


@pytest.mark.parametrize("method", ["integral", "columns"])
def test_real_vaihingen_and_loveda_crops(shared_data, method):
    for labels in _real_labels(shared_data):
        # LoveDA tiles are 1024^2: check a 256 x 320 sub-tile against brute force for big k,
        # the full tile for small k.
        got = affinity_maps(labels, [1, 2, 8, 32], method=method)
        sub = labels[:256, :320]
        got_sub = affinity_maps(sub, [32], method=method)[0]
        for i, k in enumerate([1, 2, 8]):
            np.testing.assert_array_equal(got[i], brute_force_affinity(labels, k))
        np.testing.assert_array_equal(got_sub, brute_force_affinity(sub, 32))
        if labels.shape[0] <= 512:
            np.testing.assert_array_equal(got[3], brute_force_affinity(labels, 32))


def test_thread_count_does_not_change_results():
    import numba

    rng = np.random.default_rng(12)
    labels = np.kron(rng.integers(0, 6, (90, 30)), np.ones((4, 4), dtype=np.uint8))
    labels[rng.random(labels.shape) < 0.02] = 255  # scattered ignore pixels
    threads = numba.get_num_threads()
    try:
        results = []
        for n in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS), threads}):
            numba.set_num_threads(n)
            results.append(affinity_maps(labels, [2, 9, 40]))
    finally:
        numba.set_num_threads(threads)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    np.testing.assert_array_equal(results[0][1], brute_force_affinity(labels, 9))


def test_uint64_labels_above_int64_range():
    top = np.iinfo(np.uint64).max
    labels = np.array([[top, top - 1], [top - 1, top - 1]], dtype=np.uint64)
    np.testing.assert_array_equal(affinity_maps(labels, 1)[0], brute_force_affinity(labels, 1))
