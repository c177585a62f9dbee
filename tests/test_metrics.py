"""Matching, average precision (DSB2018 definition) and Dice against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.metrics import ERROR_KINDS, average_precision, dice, error_kinds, iou_matrix, matching


def _example() -> tuple[np.ndarray, np.ndarray]:
    """3 ground-truth and 3 predicted objects on a 10 x 20 grid.

    gt 1  rows 0-4, cols 0-4   (25 px)   pred 1 rows 0-4, cols 1-4   (20 px): inter 20, union 25, IoU 0.8
    gt 2  rows 0-4, cols 10-14 (25 px)   pred 2 rows 0-4, cols 12-16 (25 px): inter 15, union 35, IoU 3/7=0.4286
    gt 3  rows 7-9, cols 0-3   (12 px)   no prediction                      -> false negative
                                         pred 3 rows 7-9, cols 10-13 (12 px) -> false positive
    """
    gt = np.zeros((10, 20), np.int32)
    pred = np.zeros((10, 20), np.int32)
    gt[0:5, 0:5] = 1
    gt[0:5, 10:15] = 2
    gt[7:10, 0:4] = 3
    pred[0:5, 1:5] = 5  # label ids need not match nor be consecutive
    pred[0:5, 12:17] = 9
    pred[7:10, 10:14] = 2
    return gt, pred


def test_iou_matrix_by_hand():
    gt, pred = _example()
    iou = iou_matrix(gt, pred)
    # rows: gt 1, 2, 3; columns: pred labels sorted 2, 5, 9
    expected = np.array([[0.0, 0.8, 0.0], [0.0, 0.0, 3 / 7], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(iou, expected)


def test_matching_at_05_by_hand():
    gt, pred = _example()
    m = matching(gt, pred, 0.5)
    # only gt1-pred1 (IoU 0.8) is above 0.5: TP 1, FP 2 (pred 2, pred 3), FN 2 (gt 2, gt 3)
    assert (m.tp, m.fp, m.fn, m.n_true, m.n_pred) == (1, 2, 2, 3, 3)
    assert m.mean_matched_iou == pytest.approx(0.8)
    # AP = 1 / (1 + 2 + 2) = 0.2
    assert average_precision(gt, pred, 0.5) == pytest.approx(0.2)
    assert m.precision == pytest.approx(1 / 3) and m.recall == pytest.approx(1 / 3)


def test_matching_at_other_thresholds_by_hand():
    gt, pred = _example()
    # IoU > 0.3: gt2-pred2 (0.4286) matches too: TP 2, FP 1, FN 1, AP = 2/4
    m = matching(gt, pred, 0.3)
    assert (m.tp, m.fp, m.fn) == (2, 1, 1)
    assert m.average_precision == pytest.approx(0.5)
    assert m.mean_matched_iou == pytest.approx((0.8 + 3 / 7) / 2)
    # IoU > 0.75: still gt1-pred1 only -> 0.2; IoU > 0.85: nothing -> 0 / (0 + 3 + 3) = 0
    assert average_precision(gt, pred, 0.75) == pytest.approx(0.2)
    assert average_precision(gt, pred, 0.85) == 0.0


def test_matching_is_one_to_one_below_05():
    # one 10 x 10 gt square (100 px) overlapped by two predictions inside it:
    # a = cols 0-3 (40 px): IoU 40/100 = 0.4;  b = cols 4-8 (50 px): IoU 50/100 = 0.5
    # at IoU > 0.3 both qualify but only one may match: the larger, b -> TP 1, FP 1 (a), FN 0
    gt = np.zeros((10, 12), np.int32)
    gt[:, 0:10] = 1
    pred = np.zeros_like(gt)
    pred[:, 0:4] = 1
    pred[:, 4:9] = 2
    m = matching(gt, pred, 0.3)
    assert (m.tp, m.fp, m.fn) == (1, 1, 0)
    assert m.mean_matched_iou == pytest.approx(0.5)
    assert m.average_precision == pytest.approx(0.5)


def test_dice_by_hand():
    gt, pred = _example()
    # |gt| = 25 + 25 + 12 = 62, |pred| = 20 + 25 + 12 = 57, overlap = 20 + 15 = 35 -> 70 / 119
    assert dice(gt, pred) == pytest.approx(70 / 119)


def test_empty_and_perfect_cases():
    empty = np.zeros((10, 20), np.int32)
    assert average_precision(empty, empty) == 1.0
    assert dice(empty, empty) == 1.0
    gt, _ = _example()
    assert average_precision(gt, gt) == 1.0
    assert average_precision(gt, empty) == 0.0
    assert matching(gt, empty).fn == 3


def test_bad_inputs():
    gt, pred = _example()
    with pytest.raises(ValueError, match="same shape"):
        average_precision(gt, pred[:5])
    with pytest.raises(ValueError, match="threshold"):
        matching(gt, pred, 1.5)
    with pytest.raises(ValueError, match="negative"):
        average_precision(-gt, pred)


def test_error_kinds_by_hand():
    """One object of each kind on a 20 x 20 grid (every unmatched pair has IoU exactly 0.5)."""
    gt = np.zeros((20, 20), np.int32)
    pred = np.zeros((20, 20), np.int32)
    gt[0:5, 0:5], gt[0:5, 5:10] = 1, 2      # two touching objects ...
    pred[0:5, 0:10] = 11                    # ... found as one: both merged
    gt[10:15, 0:10] = 3                     # one object ...
    pred[10:15, 0:5], pred[10:15, 5:10] = 12, 13  # ... found as two halves: split
    gt[16:20, 0:4] = 4                      # not found: missed
    gt[0:4, 12:16] = 5
    pred[0:8, 12:16] = 14                   # twice its size: too large
    gt[10:18, 12:16] = 6
    pred[10:14, 12:16] = 15                 # half its size: too small
    gt[16:20, 6:10] = 7
    pred[16:20, 6:10] = 16                  # found
    pred[16:20, 16:20] = 17                 # on background: spurious
    counts = error_kinds(gt, pred)
    assert list(counts) == list(ERROR_KINDS)
    assert counts == {"found": 1, "merged": 2, "missed": 1, "split": 1, "too_large": 1, "too_small": 1,
                      "spurious": 1, "wrong_other": 5}
    m = matching(gt, pred)
    assert counts["found"] == m.tp
    assert sum(counts[k] for k in ("merged", "missed", "split", "too_large", "too_small")) == m.fn
    assert counts["spurious"] + counts["wrong_other"] == m.fp


def test_error_kinds_empty_and_bad_threshold():
    gt = np.zeros((8, 8), np.int32)
    gt[2:5, 2:5] = 1
    assert error_kinds(gt, np.zeros_like(gt))["missed"] == 1
    assert error_kinds(np.zeros_like(gt), gt)["spurious"] == 1
    with pytest.raises(ValueError, match="0.5"):
        error_kinds(gt, gt, 0.3)
