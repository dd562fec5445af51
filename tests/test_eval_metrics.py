"""Scores of npa_train.metrics against hand-computed numbers (confusion matrix, boundary F1)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from npa_train.metrics import (
    BoundaryCounts,
    SegmentationMetrics,
    boundary_counts,
    confusion_matrix,
    dilate,
    fill_ignore,
    label_boundaries,
    scores_from_confusion,
)

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"

# Rows: ground truth, columns: prediction. Classes 0, 1, 2 and 3 are "foreground",
# 4 is clutter (left out of the means); class 3 is absent from both sides.
CM = np.array(
    [
        [8, 2, 0, 0, 0],
        [1, 5, 0, 0, 2],
        [0, 0, 0, 0, 3],
        [0, 0, 0, 0, 0],
        [1, 0, 1, 0, 4],
    ]
)


def _pairs_from_cm(cm: np.ndarray, ignore: int = 255, n_ignore: int = 7):
    """Flat (target, pred) arrays realising ``cm``, plus ignore pixels with any prediction."""
    t, p = [], []
    for g in range(cm.shape[0]):
        for q in range(cm.shape[1]):
            t += [g] * int(cm[g, q])
            p += [q] * int(cm[g, q])
    t += [ignore] * n_ignore
    p += [0, 1, 2, 3, 4, 4, 4][:n_ignore]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(t))
    return np.array(t, np.uint8)[order], np.array(p, np.uint8)[order]


def test_confusion_matrix_counts_and_excludes_ignore():
    target, pred = _pairs_from_cm(CM)
    cm = confusion_matrix(target.reshape(2, -1), pred.reshape(2, -1), 5, ignore_index=255)
    np.testing.assert_array_equal(cm, CM)
    assert cm.dtype == np.int64


def test_scores_match_hand_computed_values():
    s = scores_from_confusion(CM, classes_in_mean=[0, 1, 2, 3])
    # class 0: TP 8, 10 in GT, 10 predicted
    assert s["precision"][0] == pytest.approx(0.8)
    assert s["recall"][0] == pytest.approx(0.8)
    assert s["f1"][0] == pytest.approx(0.8)
    assert s["iou"][0] == pytest.approx(8 / 12)
    # class 1: TP 5, 8 in GT, 7 predicted
    assert s["precision"][1] == pytest.approx(5 / 7)
    assert s["recall"][1] == pytest.approx(5 / 8)
    assert s["f1"][1] == pytest.approx(10 / 15)  # = 2PR/(P+R)
    assert s["iou"][1] == pytest.approx(5 / 10)
    # class 2: in GT (3) and predicted once, never right
    assert (s["precision"][2], s["recall"][2], s["f1"][2], s["iou"][2]) == (0, 0, 0, 0)
    # class 3: absent from both -> undefined
    assert all(math.isnan(s[k][3]) for k in ("precision", "recall", "f1", "iou"))
    # class 4 (clutter): TP 4, 6 in GT, 9 predicted
    assert s["precision"][4] == pytest.approx(4 / 9)
    assert s["recall"][4] == pytest.approx(4 / 6)
    assert s["f1"][4] == pytest.approx(8 / 15)
    assert s["iou"][4] == pytest.approx(4 / 11)
    assert s["OA"] == pytest.approx(17 / 27)
    # means over 0, 1, 2 (3 is NaN and left out; 4 is not in the mean)
    assert s["mF1"] == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    assert s["mIoU"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    np.testing.assert_array_equal(s["support"], [10, 8, 3, 0, 6])
    np.testing.assert_array_equal(s["predicted"], [10, 7, 1, 0, 9])
    assert s["pixels"] == 27


def test_means_over_every_class_by_default_and_class_only_predicted():
    s = scores_from_confusion(CM)
    assert s["mF1"] == pytest.approx((0.8 + 2 / 3 + 0 + 8 / 15) / 4)
    cm = np.array([[3, 1], [0, 0]])  # class 1 predicted once, absent from GT
    s = scores_from_confusion(cm)
    assert s["precision"][1] == 0 and math.isnan(s["recall"][1])
    assert s["f1"][1] == 0 and s["iou"][1] == 0


def test_all_classes_absent_gives_nan_means():
    s = scores_from_confusion(np.zeros((3, 3), int))
    assert math.isnan(s["mF1"]) and math.isnan(s["mIoU"]) and math.isnan(s["OA"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"classes_in_mean": [5]}, "`classes_in_mean` holds 5"),
        ({"classes_in_mean": []}, "at least one"),
        ({"classes_in_mean": [0, 0]}, "more than once"),
    ],
)
def test_scores_refuse_bad_classes_in_mean(kwargs, match):
    with pytest.raises(ValueError, match=match):
        scores_from_confusion(CM, **kwargs)


def test_confusion_matrix_refuses_values_outside_the_classes():
    with pytest.raises(ValueError, match=r"`target` holds values \[7\]"):
        confusion_matrix(np.array([0, 7]), np.array([0, 1]), 5, ignore_index=255)
    with pytest.raises(ValueError, match=r"`pred` holds values \[5\]"):
        confusion_matrix(np.array([0, 1]), np.array([0, 5]), 5)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.zeros(3, int), np.zeros(4, int), 5)
    with pytest.raises(TypeError, match="integers"):
        confusion_matrix(np.zeros(3), np.zeros(3, int), 5)


def test_accumulator_pools_tiles_and_reports_small_objects():
    target, pred = _pairs_from_cm(CM, n_ignore=0)
    half = len(target) // 2
    m = SegmentationMetrics(
        5,
        classes=["a", "b", "c", "d", "clutter"],
        ignore_index=255,
        classes_in_mean=[0, 1, 2, 3],
        small_classes=[1],
    )
    m.update(target[None, :half], pred[None, :half])
    m.update(target[None, half:], pred[None, half:])
    r = m.compute()
    assert r["confusion_matrix"] == CM.tolist()
    assert r["mF1"] == pytest.approx((0.8 + 2 / 3) / 3)
    assert r["small_objects"] == {"b": pytest.approx(2 / 3)}
    assert math.isnan(r["per_class"]["d"]["f1"])
    assert r["classes_in_mean"] == ["a", "b", "c", "d"]


# -- boundaries -------------------------------------------------------------------------------


def test_label_boundaries_four_neighbours_and_ignore():
    label = np.array(
        [
            [0, 0, 1],
            [0, 0, 1],
            [2, 255, 1],
        ],
        dtype=np.uint8,
    )
    expected = np.array(
        [
            [0, 1, 1],
            [1, 1, 1],
            [1, 0, 0],  # (2,0): 4-neighbour 0 above; 255 is never a boundary; (2,2) has 1s only
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(label_boundaries(label, ignore_index=255), expected)
    # without an ignore value 255 is a class like the others
    assert label_boundaries(label)[2, 1] and label_boundaries(label)[2, 2]


def test_dilate_is_a_euclidean_disk():
    m = np.zeros((7, 7), bool)
    m[3, 3] = True
    d = dilate(m, 2)
    assert d.sum() == 13  # offsets with dy² + dx² <= 4
    assert d[3, 1] and d[1, 3] and d[2, 2] and not d[1, 2]
    np.testing.assert_array_equal(dilate(m, 0), m)


def _halves(boundary_col: int, shape=(10, 10)) -> np.ndarray:
    """Class 0 in columns < boundary_col, class 1 from it on."""
    label = np.zeros(shape, np.uint8)
    label[:, boundary_col:] = 1
    return label


def test_boundary_f1_shift_within_and_beyond_tolerance():
    gt = _halves(5)  # boundary pixels: columns 4 and 5 (20 px)
    shifted = _halves(7)  # predicted boundary pixels: columns 6 and 7
    # tolerance 2: col 6 is 1 px and col 7 2 px from GT col 5; GT col 4 is 2 px from col 6
    b = boundary_counts(gt, shifted, tolerance=2)
    assert b == BoundaryCounts(pred_pixels=20, pred_matched=20, gt_pixels=20, gt_matched=20)
    assert b.f1 == 1.0
    # tolerance 1: only col 6 (pred) and col 5 (GT) match
    b = boundary_counts(gt, shifted, tolerance=1)
    assert (b.pred_matched, b.gt_matched) == (10, 10)
    assert b.precision == 0.5 and b.recall == 0.5 and b.f1 == 0.5
    # shifted by 4: predicted boundary in columns 8, 9, 3-4 px from GT col 5: nothing matches
    b = boundary_counts(gt, _halves(9), tolerance=2)
    assert (b.pred_pixels, b.pred_matched, b.gt_pixels, b.gt_matched) == (20, 0, 20, 0)
    assert b.f1 == 0.0
    # identical maps match at tolerance 0
    assert boundary_counts(gt, gt, tolerance=0).f1 == 1.0


def test_boundary_f1_undefined_and_one_sided_cases():
    flat = np.zeros((5, 5), np.uint8)
    b = boundary_counts(flat, flat)
    assert math.isnan(b.f1) and math.isnan(b.precision) and math.isnan(b.recall)
    b = boundary_counts(_halves(2, (5, 5)), flat)  # GT boundary, none predicted
    assert b.f1 == 0.0 and b.recall == 0.0 and math.isnan(b.precision)


def test_ignore_band_fill_puts_the_boundary_in_the_middle():
    # GT: class 0 in columns 0-2, ignore band in columns 3-6 (4 wide), class 1 from column 7
    gt = _halves(7)
    gt[:, 3:7] = 255
    pred = _halves(5)  # the full ground truth: boundary between columns 4 and 5
    # plain definition: the band leaves no GT boundary, predicted boundaries there are not scored
    b = boundary_counts(gt, pred, tolerance=0, ignore_index=255, ignore_fill=0)
    assert b == BoundaryCounts(0, 0, 0, 0) and math.isnan(b.f1)
    # one fill round leaves a 2 px ignore core: still no boundary
    assert boundary_counts(gt, pred, tolerance=0, ignore_index=255, ignore_fill=1).gt_pixels == 0
    # two rounds close the band exactly where the full GT has its boundary
    filled, known = fill_ignore(gt, 255, 2)
    np.testing.assert_array_equal(filled, pred)
    assert known.all()
    b = boundary_counts(gt, pred, tolerance=0, ignore_index=255, ignore_fill=2)
    assert b == BoundaryCounts(20, 20, 20, 20)
    # a prediction 2 px off (boundary between columns 6 and 7) matches within 2 px only
    assert boundary_counts(gt, _halves(7), tolerance=1, ignore_index=255, ignore_fill=2).f1 == 0.5
    assert boundary_counts(gt, _halves(7), tolerance=2, ignore_index=255, ignore_fill=2).f1 == 1.0


def test_ignore_far_from_labels_is_not_scored():
    gt = np.full((12, 10), 255, np.uint8)
    gt[:2] = 0  # labelled rows 0-1, then 10 rows of no-data
    pred = _halves(5, (12, 10))  # a predicted boundary in every row
    b = boundary_counts(gt, pred, tolerance=0, ignore_index=255, ignore_fill=3)
    # rows 0-4 are labelled or filled (class 0, no GT boundary); the predicted boundary
    # pixels in rows 0-4 are scored (10 px), rows 5-11 are not
    assert b == BoundaryCounts(pred_pixels=10, pred_matched=0, gt_pixels=0, gt_matched=0)


def test_eroded_ground_truth_recovers_the_full_ground_truth_boundaries():
    """On the demo tile, the full GT scored against its eroded (noBoundary) version."""
    from npa_precompute.presets import ISPRS
    from npa_precompute.readers import read_label

    full = ISPRS.decode(read_label(DEMO / "gts_for_participants" / "demo_area2.tif"))
    eroded = ISPRS.decode(
        read_label(DEMO / "gts_eroded_for_participants" / "demo_area2_noBoundary.tif")
    )
    assert (eroded == 255).mean() > 0.1 and (full == 255).sum() == 0
    # the plain definition finds no boundary at all in eroded ground truth
    assert math.isnan(boundary_counts(eroded, full, ignore_index=255, ignore_fill=0).f1)
    b = boundary_counts(eroded, full, tolerance=3, ignore_index=255, ignore_fill=4)
    assert b.gt_pixels > 30_000 and b.recall > 0.99 and b.f1 > 0.95


def test_dilate_radius_beyond_the_mask():
    """A radius reaching past a thin mask (1 x 2, radius 3: offsets of 3 rows or columns)
    shifts whole copies out instead of wrapping slices round (a broadcast error before)."""
    m = np.array([[True, False]])
    np.testing.assert_array_equal(dilate(m, 3), [[True, True]])
    col = np.zeros((5, 1), bool)
    col[4, 0] = True
    np.testing.assert_array_equal(dilate(col, 6)[:, 0], [True] * 5)
    np.testing.assert_array_equal(dilate(col, 2)[:, 0], [False, False, True, True, True])
