"""Segmentation metrics: object matching, average precision (DSB2018 / StarDist) and Dice.

``average_precision`` is the Data Science Bowl 2018 definition used by StarDist and
Cellpose: at an IoU threshold ``t``, ground-truth and predicted objects are matched one
to one (a pair may match only if its IoU is above ``t``; among those the matching of
largest total IoU is taken), and

    AP(t) = TP / (TP + FP + FN)

with TP the matched pairs, FP the unmatched predictions and FN the unmatched
ground-truth objects. For ``t >= 0.5`` the matching is unique anyway (two objects cannot
both overlap a third by more than half of their union).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .labels import check_labels


@dataclass(frozen=True)
class Matching:
    """Result of matching predicted objects to ground-truth objects at one IoU threshold.

    Attributes
    ----------
    threshold : float
        The IoU a pair must exceed to match.
    tp, fp, fn : int
        Matched pairs, unmatched predictions, unmatched ground-truth objects.
    n_true, n_pred : int
        Objects in the ground truth and in the prediction.
    mean_matched_iou : float
        Mean IoU over the matched pairs (0 when there are none).
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    n_true: int
    n_pred: int
    mean_matched_iou: float

    @property
    def average_precision(self) -> float:
        """TP / (TP + FP + FN); 1.0 when both images are empty."""
        denom = self.tp + self.fp + self.fn
        return self.tp / denom if denom else 1.0

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else 1.0

    @property
    def recall(self) -> float:
        return self.tp / self.n_true if self.n_true else 1.0

    @property
    def f1(self) -> float:
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else 1.0


def _sequential(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel to 0..N with N the number of distinct non-zero labels."""
    values, inverse = np.unique(labels.ravel(), return_inverse=True)
    if values.size and values[0] == 0:
        return inverse.reshape(labels.shape), values.size - 1
    return (inverse + 1).reshape(labels.shape), values.size


def _overlap(gt_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """Pixels shared by every ground-truth and predicted object, background first: an
    (n_true + 1, n_pred + 1) int64 matrix, objects in increasing label order."""
    gt = check_labels(gt_labels, "ground-truth labels", ndim=None)
    pred = check_labels(pred_labels, "predicted labels", ndim=None)
    if gt.shape != pred.shape:
        raise ValueError(f"Ground truth {gt.shape} and prediction {pred.shape} must have the same shape.")
    gt, n_true = _sequential(gt)
    pred, n_pred = _sequential(pred)
    return np.bincount(
        (gt.ravel() * (n_pred + 1) + pred.ravel()).astype(np.int64), minlength=(n_true + 1) * (n_pred + 1)
    ).reshape(n_true + 1, n_pred + 1)


def iou_matrix(gt_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """IoU of every ground-truth object with every predicted object.

    Parameters
    ----------
    gt_labels, pred_labels : ndarray
        Instance label images of the same shape (0 = background).

    Returns
    -------
    ndarray
        (n_true, n_pred) float64 IoU matrix, objects in increasing label order.
    """
    return _iou(_overlap(gt_labels, pred_labels))


def _iou(overlap: np.ndarray) -> np.ndarray:
    """(n_true, n_pred) IoU of the objects of an :func:`_overlap` matrix."""
    area_true = overlap.sum(axis=1, keepdims=True)
    area_pred = overlap.sum(axis=0, keepdims=True)
    union = area_true + area_pred - overlap
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, overlap / np.maximum(union, 1), 0.0)
    return iou[1:, 1:]


def matching(gt_labels: np.ndarray, pred_labels: np.ndarray, threshold: float = 0.5) -> Matching:
    """Match predicted to ground-truth objects one to one at IoU > ``threshold``.

    Parameters
    ----------
    gt_labels, pred_labels : ndarray
        (H, W) (or any shape) instance labels, 0 = background.
    threshold : float
        IoU threshold in [0, 1).

    Returns
    -------
    Matching
        TP, FP, FN, object counts and the mean IoU of the matched pairs.
    """
    threshold = float(threshold)
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"The IoU threshold must be in [0, 1), got {threshold}.")
    iou = iou_matrix(gt_labels, pred_labels)
    n_true, n_pred = iou.shape
    if n_true == 0 or n_pred == 0:
        return Matching(threshold, 0, n_pred, n_true, n_true, n_pred, 0.0)
    candidate = iou > threshold
    if threshold >= 0.5:
        # unique by construction: each row/column has at most one IoU above 0.5
        rows, cols = np.nonzero(candidate)
    else:
        from scipy.optimize import linear_sum_assignment

        cost = np.where(candidate, -iou, 0.0)
        rows, cols = linear_sum_assignment(cost)
        keep = candidate[rows, cols]
        rows, cols = rows[keep], cols[keep]
    tp = int(rows.size)
    mean_iou = float(iou[rows, cols].mean()) if tp else 0.0
    return Matching(threshold, tp, n_pred - tp, n_true - tp, n_true, n_pred, mean_iou)


def average_precision(gt_labels: np.ndarray, pred_labels: np.ndarray, threshold: float = 0.5) -> float:
    """DSB2018 average precision TP / (TP + FP + FN) at IoU > ``threshold``.

    Parameters
    ----------
    gt_labels, pred_labels : ndarray
        Instance labels of the same shape (0 = background).
    threshold : float
        IoU threshold (0.5 by default; 0.75 for a stricter score).

    Returns
    -------
    float
        In [0, 1]; 1.0 when neither image holds an object.
    """
    return matching(gt_labels, pred_labels, threshold).average_precision


def dice(gt_labels: np.ndarray, pred_labels: np.ndarray) -> float:
    """Dice coefficient 2|A and B| / (|A| + |B|) of the foregrounds (label > 0).

    Returns 1.0 when both foregrounds are empty.
    """
    gt = np.asarray(gt_labels) > 0
    pred = np.asarray(pred_labels) > 0
    if gt.shape != pred.shape:
        raise ValueError(f"Ground truth {gt.shape} and prediction {pred.shape} must have the same shape.")
    total = int(gt.sum()) + int(pred.sum())
    return 2.0 * int(np.logical_and(gt, pred).sum()) / total if total else 1.0


#: The kinds of :func:`error_kinds` that ground-truth objects fall in (they add up to their number).
TRUE_OBJECT_KINDS = ("found", "merged", "missed", "split", "too_large", "too_small")
#: All kinds of :func:`error_kinds`, in the order a report lists them.
ERROR_KINDS = TRUE_OBJECT_KINDS + ("spurious", "wrong_other")


def error_kinds(gt_labels: np.ndarray, pred_labels: np.ndarray, threshold: float = 0.5) -> dict[str, int]:
    """Why objects are not matched at IoU > ``threshold`` (0.5 or more): a count per kind.

    Ground-truth objects: ``found`` (matched), else ``merged`` (the prediction that holds most
    of it also holds more than half of another ground-truth object), ``missed`` (predictions
    cover less than half of it), ``split`` (two predictions hold more than a fifth of it each),
    ``too_large`` / ``too_small`` (one prediction, whose outline is off). Unmatched
    predictions: ``spurious`` (mostly on background), else ``wrong_other`` (the pieces of
    splits, merges and poor outlines). So found + merged + missed + split + too_large +
    too_small is the number of ground-truth objects, and found + spurious + wrong_other the
    number of predictions.
    """
    threshold = float(threshold)
    if not 0.5 <= threshold < 1.0:
        raise ValueError(f"The IoU threshold must be in [0.5, 1), got {threshold}.")
    overlap = _overlap(gt_labels, pred_labels)
    area_true = overlap.sum(axis=1)[1:]
    area_pred = overlap.sum(axis=0)[1:]
    inter = overlap[1:, 1:]
    counts = dict.fromkeys(ERROR_KINDS, 0)
    n_true, n_pred = inter.shape
    if n_true == 0 or n_pred == 0:
        counts["missed"], counts["spurious"] = n_true, n_pred
        return counts
    matched = _iou(overlap) > threshold  # one-to-one for thresholds >= 0.5
    share_of_true = inter / np.maximum(area_true[:, None], 1)  # (true, pred): part of each true object
    holds = share_of_true > 0.5  # the prediction holds more than half of the true object
    for g in range(n_true):
        if matched[g].any():
            counts["found"] += 1
            continue
        share = share_of_true[g]
        if share.sum() < 0.5:
            counts["missed"] += 1
        elif int((share > 0.2).sum()) >= 2:
            counts["split"] += 1
        else:
            p = int(share.argmax())
            others = holds[:, p].copy()
            others[g] = False
            if others.any():
                counts["merged"] += 1
            else:
                counts["too_large" if area_pred[p] > area_true[g] else "too_small"] += 1
    on_objects = inter.sum(axis=0) / np.maximum(area_pred, 1)
    for p in np.flatnonzero(~matched.any(axis=0)):
        counts["spurious" if on_objects[p] < 0.5 else "wrong_other"] += 1
    return counts
