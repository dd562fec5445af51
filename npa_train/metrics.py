"""Segmentation scores: confusion matrix, per-class F1/IoU, OA, boundary F1.

The numbers of Feng et al. (2020), Table 1 (per-class F1, mF1, mIoU, OA), plus a
boundary F1 and the F1 of small objects, since the paper's claim is about
boundaries and small objects.

Conventions
-----------
* The confusion matrix ``cm`` has ground truth in rows and predictions in columns:
  ``cm[g, p]`` counts the pixels of class ``g`` predicted as ``p``. Ignore pixels of
  the ground truth are left out.
* Per class ``c`` with ``TP = cm[c, c]``, ``FP = cm[:, c].sum() - TP`` and
  ``FN = cm[c, :].sum() - TP``: precision ``TP / (TP + FP)``, recall
  ``TP / (TP + FN)``, F1 ``2 TP / (2 TP + FP + FN)`` (= ``2 P R / (P + R)``) and IoU
  ``TP / (TP + FP + FN)``.
* A class absent from both the ground truth and the prediction has no score: all four
  are NaN, and it is left out of the means (a mean over no class is NaN). A class
  present on one side only scores F1 = IoU = 0; its precision (never predicted) or
  recall (absent from the ground truth) is NaN.
* mF1 and mIoU are plain means over ``classes_in_mean`` (the ISPRS tables leave
  clutter out); OA is ``trace(cm) / cm.sum()`` over every class.

Boundary F1 (:func:`boundary_counts`)
-------------------------------------
Boundary pixels of a label map are the pixels with a 4-neighbour of another class;
ignore pixels are never boundary pixels and never make a neighbour one
(:func:`label_boundaries`). A predicted boundary pixel counts as correct if a
ground-truth boundary pixel lies within ``tolerance`` pixels (Euclidean distance),
and a ground-truth boundary pixel counts as found if a predicted one does: boundary
precision and recall are these two fractions, boundary F1 their harmonic mean.

Eroded ground truth (ISPRS ``noBoundary``) replaces every class boundary with a
band of ignore pixels about 6 px wide, which would leave it without a single
boundary. So ignore pixels within ``ignore_fill`` px (8-neighbour steps) of a labelled
pixel first take the class of the nearest labelled pixel, which puts the boundary in
the middle of the band, where the full ground truth has it; ignore pixels farther
away (e.g. large no-data areas) stay ignore, and predicted boundary pixels there are
not scored. ``ignore_fill=0`` gives the plain definition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from npa_precompute.errors import ParameterError

__all__ = [
    "BoundaryCounts",
    "SegmentationMetrics",
    "boundary_counts",
    "clutter_classes",
    "confusion_matrix",
    "dilate",
    "fill_ignore",
    "label_boundaries",
    "means_by_clutter",
    "scores_from_confusion",
]

# Neighbour order of fill_ignore (ties go to the first labelled neighbour in this order).
_NEIGHBOURS_8 = ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def _nonneg_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an integer, got {value!r}")
    if value < 0:
        raise ParameterError(name, f"must be >= 0, got {value!r}")
    return int(value)


def _check_pair(target: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    target, pred = np.asarray(target), np.asarray(pred)
    if target.shape != pred.shape:
        raise ValueError(
            f"`target` and `pred` must have the same shape, got {target.shape} and {pred.shape}"
        )
    for name, a in (("target", target), ("pred", pred)):
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"`{name}` must hold integers, got dtype {a.dtype}")
    return target, pred


# -- confusion matrix and class scores ----------------------------------------------------------


def confusion_matrix(
    target: np.ndarray, pred: np.ndarray, num_classes: int, *, ignore_index: int | None = None
) -> np.ndarray:
    """Confusion matrix of one label map pair, ground truth in rows.

    Parameters
    ----------
    target : (...) integer array
        Ground truth: class indices ``0 .. num_classes - 1`` or ``ignore_index``.
    pred : (...) integer array, same shape
        Predicted class indices ``0 .. num_classes - 1``.
    num_classes : int
    ignore_index : int, optional
        Ground-truth value of ignored pixels; they are not counted (whatever ``pred``
        holds there). Default None: no pixel is ignored.

    Returns
    -------
    (num_classes, num_classes) int64
        ``cm[g, p]``: pixels of class ``g`` predicted as ``p``.

    Raises
    ------
    TypeError
        Non-integer arrays.
    ValueError
        Shapes differ, ``num_classes < 1``, or a value outside the classes (other than
        ``ignore_index`` in ``target``).
    """
    target, pred = _check_pair(target, pred)
    num_classes = _nonneg_int("num_classes", num_classes)
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be >= 1, got {num_classes}")
    t = target.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    if ignore_index is not None:
        keep = t != int(ignore_index)
        t, p = t[keep], p[keep]
    for name, a in (("target", t), ("pred", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            bad = np.unique(a[(a < 0) | (a >= num_classes)])[:10].tolist()
            extra = f" or the ignore value {ignore_index}" if name == "target" else ""
            raise ParameterError(
                name, f"holds values {bad} outside the classes 0..{num_classes - 1}{extra}"
            )
    cm = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes).astype(np.int64)


def _parse_classes_in_mean(classes_in_mean, num_classes: int) -> list[int]:
    if classes_in_mean is None:
        return list(range(num_classes))
    out = []
    for c in classes_in_mean:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise TypeError(f"`classes_in_mean` must hold class indices, got {c!r}")
        if not 0 <= c < num_classes:
            raise ValueError(
                f"`classes_in_mean` holds {c}, outside the classes 0..{num_classes - 1}"
            )
        out.append(int(c))
    if not out:
        raise ValueError("`classes_in_mean` must name at least one class")
    if len(set(out)) != len(out):
        raise ValueError(f"`classes_in_mean` lists a class more than once: {out}")
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def scores_from_confusion(cm: np.ndarray, *, classes_in_mean: Sequence[int] | None = None) -> dict:
    """Per-class precision, recall, F1 and IoU, their means, and OA from a confusion matrix.

    Parameters
    ----------
    cm : (C, C) integer array
        Ground truth in rows, predictions in columns (:func:`confusion_matrix`).
    classes_in_mean : sequence of int, optional
        Classes averaged into ``mF1`` and ``mIoU``; default every class. Classes
        with a NaN score (absent from ground truth and prediction) are left out.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1``, ``iou``: (C,) float64 (NaN where
        undefined, see the module notes); ``support`` (C,) int64 ground-truth pixels
        per class, ``predicted`` (C,) int64 predicted pixels per class; ``mF1``,
        ``mIoU``, ``OA``: float (NaN for an empty matrix); ``classes_in_mean``:
        list of int; ``pixels``: int.

    Raises
    ------
    ValueError
        ``cm`` not square, negative counts, or a bad ``classes_in_mean``.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 1:
        raise ValueError(f"`cm` must be a square (C, C) matrix, got shape {cm.shape}")
    if (cm < 0).any():
        raise ValueError("`cm` holds negative counts")
    cm = cm.astype(np.int64)
    n = cm.shape[0]
    in_mean = _parse_classes_in_mean(classes_in_mean, n)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)
    iou = _ratio(tp, support + predicted - tp)
    total = int(cm.sum())
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "iou": iou,
        "support": support,
        "predicted": predicted,
        "mF1": _nanmean(f1[in_mean]),
        "mIoU": _nanmean(iou[in_mean]),
        "OA": float(np.trace(cm) / total) if total else math.nan,
        "classes_in_mean": in_mean,
        "pixels": total,
    }


# -- clutter in or out of the means ------------------------------------------------------------


def clutter_classes(classes: Sequence[str], foreground: Sequence[int] | None = None) -> list[int]:
    """Indices of the clutter classes: those outside ``foreground``, the store's foreground
    classes (:attr:`npa_precompute.store.StoreInfo.foreground`, from its preset).

    The preset is the one definition: ISPRS's clutter/background is outside its
    foreground, LoveDA's background is inside (a scored class).

    Parameters
    ----------
    classes : class names, in index order
    foreground : indices of the foreground classes; None: every class

    Returns
    -------
    list of int
        Sorted indices; empty when no class is clutter.
    """
    if foreground is None:
        return []
    keep = {int(i) for i in foreground}
    return [i for i in range(len(classes)) if i not in keep]


def means_by_clutter(
    cm: np.ndarray, clutter: Sequence[int], *, classes: Sequence[str] | None = None
) -> dict:
    """mF1 and mIoU of a confusion matrix with clutter in the means and without it.

    Published ISPRS numbers differ in this alone (and in eroded vs full ground truth):
    mmsegmentation averages all 6 classes, Feng et al. (2020) and most remote-sensing
    papers the 5 foreground classes. OA covers every class either way.

    Parameters
    ----------
    cm : (C, C) integer array, ground truth in rows (:func:`confusion_matrix`)
    clutter : indices of the clutter classes (:func:`clutter_classes`)
    classes : class names (default ``class_0 ...``)

    Returns
    -------
    dict
        ``clutter`` (names), ``with_clutter`` and ``without_clutter``: each ``classes``
        (names averaged), ``mF1``, ``mIoU`` (NaN when undefined; a class absent from
        ground truth and prediction is left out, as in :func:`scores_from_confusion`).
        With no clutter class the two entries are equal.

    Raises
    ------
    ValueError
        A bad ``cm`` or a clutter index outside it.
    """
    cm = np.asarray(cm)
    n = cm.shape[0] if cm.ndim == 2 else 0
    names = list(classes) if classes is not None else [f"class_{i}" for i in range(n)]
    clutter = sorted({int(i) for i in clutter})
    if any(not 0 <= i < n for i in clutter):
        raise ValueError(f"`clutter` holds indices outside 0..{n - 1}: {clutter}")
    every = list(range(n))
    without = [i for i in every if i not in clutter] or every
    out = {"clutter": [names[i] for i in clutter]}
    for key, in_mean in (("with_clutter", every), ("without_clutter", without)):
        s = scores_from_confusion(cm, classes_in_mean=in_mean)
        out[key] = {"classes": [names[i] for i in in_mean], "mF1": s["mF1"], "mIoU": s["mIoU"]}
    return out


# -- boundaries ---------------------------------------------------------------------------------


def label_boundaries(label: np.ndarray, *, ignore_index: int | None = None) -> np.ndarray:
    """Boundary pixels: pixels with a 4-neighbour of another class.

    Parameters
    ----------
    label : (H, W) integer array
    ignore_index : int, optional
        Ignore pixels are never boundary pixels, and an ignore neighbour does not make
        a pixel one. Pixels outside the map are no neighbours (the tile border is no
        boundary).

    Returns
    -------
    (H, W) bool

    Raises
    ------
    TypeError, ValueError
        Not a 2-D integer array.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"`label` must be a 2-D (H, W) array, got shape {label.shape}")
    if not np.issubdtype(label.dtype, np.integer):
        raise TypeError(f"`label` must hold integers, got dtype {label.dtype}")
    valid = np.ones(label.shape, bool) if ignore_index is None else label != ignore_index
    out = np.zeros(label.shape, dtype=bool)
    # vertical neighbours (rows y, y + 1), then horizontal (columns x, x + 1)
    diff = (label[1:] != label[:-1]) & valid[1:] & valid[:-1]
    out[1:] |= diff
    out[:-1] |= diff
    diff = (label[:, 1:] != label[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    out[:, 1:] |= diff
    out[:, :-1] |= diff
    return out


def _shifted(a: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """``out[y, x] = a[y + dy, x + dx]``, ``fill`` outside ``a``."""
    h, w = a.shape
    out = np.full_like(a, fill)
    if abs(dy) >= h or abs(dx) >= w:  # shifted out entirely (slices would wrap around)
        return out
    ys_out = slice(max(0, -dy), min(h, h - dy))
    xs_out = slice(max(0, -dx), min(w, w - dx))
    ys_in = slice(max(0, dy), min(h, h + dy))
    xs_in = slice(max(0, dx), min(w, w + dx))
    out[ys_out, xs_out] = a[ys_in, xs_in]
    return out


def fill_ignore(label: np.ndarray, ignore_index: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Give ignore pixels near labelled ones the class of the nearest (8-neighbour steps).

    ``radius`` rounds: in each, every ignore pixel with a labelled 8-neighbour takes its
    class (the first labelled one in the order up, down, left, right, then the
    diagonals). An ignore band of width ``b`` closes after ``ceil(b / 2)`` rounds,
    with the boundary in its middle.

    Parameters
    ----------
    label : (H, W) integer array
    ignore_index : int
    radius : int >= 0

    Returns
    -------
    filled : (H, W) array of ``label``'s dtype
        ``label`` with the filled pixels set; ``ignore_index`` elsewhere as before.
    known : (H, W) bool
        True where ``filled`` holds a class.

    Raises
    ------
    TypeError, ValueError
        Bad ``radius`` or a non-2-D ``label``.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"`label` must be a 2-D (H, W) array, got shape {label.shape}")
    radius = _nonneg_int("radius", radius)
    filled = label.copy()
    known = label != ignore_index
    for _ in range(radius):
        if known.all():
            break
        new_known = np.zeros_like(known)
        new_vals = np.zeros_like(filled)
        for dy, dx in _NEIGHBOURS_8:
            nk = _shifted(known, dy, dx, False)
            take = nk & ~known & ~new_known
            if take.any():
                new_vals[take] = _shifted(filled, dy, dx, 0)[take]
                new_known |= take
        if not new_known.any():
            break
        filled[new_known] = new_vals[new_known]
        known |= new_known
    return filled, known


def _disk_offsets(radius: int) -> list[tuple[int, int]]:
    r = int(radius)
    return [
        (dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= r * r
    ]


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a disk: True where a True pixel lies within ``radius`` px.

    Parameters
    ----------
    mask : (H, W) bool
    radius : int >= 0 (Euclidean distance; 0 returns a copy)

    Returns
    -------
    (H, W) bool
    """
    mask = np.asarray(mask, dtype=bool)
    radius = _nonneg_int("radius", radius)
    out = mask.copy()
    for dy, dx in _disk_offsets(radius):
        if dy or dx:
            out |= _shifted(mask, dy, dx, False)
    return out


@dataclass(frozen=True)
class BoundaryCounts:
    """Boundary pixel counts of one or more label map pairs (add them to pool tiles).

    Attributes
    ----------
    pred_pixels : predicted boundary pixels scored
    pred_matched : of those, with a ground-truth boundary pixel within the tolerance
    gt_pixels : ground-truth boundary pixels
    gt_matched : of those, with a predicted boundary pixel within the tolerance
    """

    pred_pixels: int = 0
    pred_matched: int = 0
    gt_pixels: int = 0
    gt_matched: int = 0

    def __add__(self, other: BoundaryCounts) -> BoundaryCounts:
        return BoundaryCounts(
            self.pred_pixels + other.pred_pixels,
            self.pred_matched + other.pred_matched,
            self.gt_pixels + other.gt_pixels,
            self.gt_matched + other.gt_matched,
        )

    @property
    def precision(self) -> float:
        """``pred_matched / pred_pixels``; NaN without predicted boundary pixels."""
        return self.pred_matched / self.pred_pixels if self.pred_pixels else math.nan

    @property
    def recall(self) -> float:
        """``gt_matched / gt_pixels``; NaN without ground-truth boundary pixels."""
        return self.gt_matched / self.gt_pixels if self.gt_pixels else math.nan

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall.

        NaN when neither side has boundary pixels; 0 when only one side has any, or
        when none is matched.
        """
        if not self.pred_pixels and not self.gt_pixels:
            return math.nan
        if not self.pred_pixels or not self.gt_pixels:
            return 0.0
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


def boundary_counts(
    target: np.ndarray,
    pred: np.ndarray,
    *,
    tolerance: int = 3,
    ignore_index: int | None = None,
    ignore_fill: int = 4,
) -> BoundaryCounts:
    """Boundary pixels of ground truth and prediction, and how many match (module notes).

    Parameters
    ----------
    target : (H, W) integer array, ground truth (may hold ``ignore_index``)
    pred : (H, W) integer array, prediction
    tolerance : int, default 3
        Distance in pixels (Euclidean) within which boundary pixels match.
    ignore_index : int, optional
        Ground-truth ignore value; default None: no ignore pixels.
    ignore_fill : int, default 4
        Ignore pixels within this many 8-neighbour steps of a labelled pixel take the
        nearest pixel's class before the ground-truth boundaries are drawn
        (:func:`fill_ignore`): an eroded ground truth's ignore bands (ISPRS
        ``noBoundary``: about 6 px wide) close up. 0: ignore pixels stay ignore.
        Pixels still ignore afterwards are left out on both sides.

    Returns
    -------
    BoundaryCounts

    Raises
    ------
    TypeError, ValueError
        Shapes differ, not 2-D integer arrays, negative ``tolerance`` or ``ignore_fill``.
    """
    target, pred = _check_pair(target, pred)
    if target.ndim != 2:
        raise ValueError(f"`target` must be a 2-D (H, W) array, got shape {target.shape}")
    tolerance = _nonneg_int("tolerance", tolerance)
    ignore_fill = _nonneg_int("ignore_fill", ignore_fill)
    if ignore_index is None:
        gt, domain = target, np.ones(target.shape, dtype=bool)
        sentinel = None
    else:
        gt, domain = fill_ignore(target, ignore_index, ignore_fill)
        sentinel = int(ignore_index)
    gt_b = label_boundaries(gt, ignore_index=sentinel)
    if sentinel is None:
        pred_b = label_boundaries(pred)
    else:
        wide = np.result_type(pred.dtype, np.min_scalar_type(sentinel))
        pred_masked = np.where(domain, pred.astype(wide), sentinel)
        pred_b = label_boundaries(pred_masked, ignore_index=sentinel)
    return BoundaryCounts(
        pred_pixels=int(pred_b.sum()),
        pred_matched=int((pred_b & dilate(gt_b, tolerance)).sum()),
        gt_pixels=int(gt_b.sum()),
        gt_matched=int((gt_b & dilate(pred_b, tolerance)).sum()),
    )


# -- accumulation over tiles -------------------------------------------------------------------


class SegmentationMetrics:
    """Accumulate a confusion matrix and boundary counts over tiles; score them at the end.

    Parameters
    ----------
    num_classes : int
    classes : sequence of str, optional
        Class names (default ``class_0 ...``), the keys of the per-class results.
    ignore_index : int, optional
        Ground-truth ignore value.
    classes_in_mean : sequence of int, optional
        Classes averaged into mF1 and mIoU (default every class; ISPRS: 0..4).
    small_classes : sequence of int, default ()
        Classes whose F1 is reported as small-object F1 (ISPRS: car, 4).
    boundary_tolerance : int, default 3
    ignore_fill : int, default 4
        See :func:`boundary_counts`.

    Examples
    --------
    >>> m = SegmentationMetrics(2, classes=["a", "b"])
    >>> tile = m.update(np.array([[0, 1]]), np.array([[0, 0]]))  # this tile's scores
    >>> round(tile["OA"], 2), round(m.compute()["OA"], 2)
    (0.5, 0.5)
    """

    def __init__(
        self,
        num_classes: int,
        *,
        classes: Sequence[str] | None = None,
        ignore_index: int | None = None,
        classes_in_mean: Sequence[int] | None = None,
        small_classes: Sequence[int] = (),
        boundary_tolerance: int = 3,
        ignore_fill: int = 4,
    ) -> None:
        num_classes = _nonneg_int("num_classes", num_classes)
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.classes = (
            list(classes) if classes is not None else [f"class_{i}" for i in range(num_classes)]
        )
        if len(self.classes) != num_classes:
            raise ValueError(
                f"`classes` names {len(self.classes)} classes, `num_classes` is {num_classes}"
            )
        self.ignore_index = ignore_index
        self.classes_in_mean = _parse_classes_in_mean(classes_in_mean, num_classes)
        self.small_classes = (
            _parse_classes_in_mean(small_classes, num_classes) if small_classes else []
        )
        self.boundary_tolerance = _nonneg_int("boundary_tolerance", boundary_tolerance)
        self.ignore_fill = _nonneg_int("ignore_fill", ignore_fill)
        self.cm = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.boundary = BoundaryCounts()

    def update(self, target: np.ndarray, pred: np.ndarray) -> dict:
        """Add one (H, W) ground truth / prediction pair; return its own scores.

        Returns
        -------
        dict
            The pair's scores, as :meth:`compute` for this pair alone.
        """
        cm = confusion_matrix(target, pred, self.num_classes, ignore_index=self.ignore_index)
        b = boundary_counts(
            target,
            pred,
            tolerance=self.boundary_tolerance,
            ignore_index=self.ignore_index,
            ignore_fill=self.ignore_fill,
        )
        self.cm += cm
        self.boundary = self.boundary + b
        return self._scores(cm, b)

    def compute(self) -> dict:
        """Scores of everything added so far.

        Returns
        -------
        dict
            ``per_class`` {name: {precision, recall, f1, iou, support, predicted}},
            ``mF1``, ``mIoU``, ``OA``, ``classes_in_mean`` (names), ``boundary``
            (:meth:`BoundaryCounts.to_dict` plus ``tolerance``, ``ignore_fill``),
            ``small_objects`` {name: F1}, ``confusion_matrix`` (list of lists, ground
            truth in rows), ``pixels``. Undefined scores are NaN.
        """
        return self._scores(self.cm, self.boundary)

    def _scores(self, cm: np.ndarray, b: BoundaryCounts) -> dict:
        s = scores_from_confusion(cm, classes_in_mean=self.classes_in_mean)
        per_class = {
            name: {
                "precision": float(s["precision"][i]),
                "recall": float(s["recall"][i]),
                "f1": float(s["f1"][i]),
                "iou": float(s["iou"][i]),
                "support": int(s["support"][i]),
                "predicted": int(s["predicted"][i]),
            }
            for i, name in enumerate(self.classes)
        }
        return {
            "per_class": per_class,
            "mF1": s["mF1"],
            "mIoU": s["mIoU"],
            "OA": s["OA"],
            "classes_in_mean": [self.classes[i] for i in self.classes_in_mean],
            "boundary": {
                **b.to_dict(),
                "tolerance": self.boundary_tolerance,
                "ignore_fill": self.ignore_fill,
            },
            "small_objects": {self.classes[i]: float(s["f1"][i]) for i in self.small_classes},
            "confusion_matrix": cm.tolist(),
            "pixels": s["pixels"],
        }
