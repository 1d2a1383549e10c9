"""Instance segmentation scores: AP at IoU thresholds (DSB convention), SBD, |DiC|.

Conventions for empty images: with no true and no predicted object every score is perfect
(AP = 1, SBD = 1); with objects on one side only, AP = 0 and SBD = 0.
"""

from __future__ import annotations

import numpy as np

from .data import count_objects
from .errors import SpocoError

THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))


def _label_indices(gt: np.ndarray, pred: np.ndarray):
    """Both images' sorted unique ids and each pixel's index into them (flat)."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise SpocoError(f"Prediction shape {pred.shape} differs from ground-truth shape {gt.shape}.")
    g_ids, g = np.unique(gt.ravel(), return_inverse=True)
    p_ids, p = np.unique(pred.ravel(), return_inverse=True)
    return g_ids, g.ravel(), p_ids, p.ravel()


def _overlaps(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersection matrix (n_gt, n_pred) and object sizes: a dense table, for few objects
    (:func:`iou_matrix`, benchmarks); the scores read :func:`_touching_pairs`."""
    g_ids, g, p_ids, p = _label_indices(gt, pred)
    inter = np.zeros((len(g_ids), len(p_ids)), dtype=np.int64)
    np.add.at(inter, (g, p), 1)
    g_size = inter.sum(1)
    p_size = inter.sum(0)
    # Drop the background row/column (id 0) where present.
    gi = g_ids != 0
    pi = p_ids != 0
    return inter[np.ix_(gi, pi)], g_size[gi], p_size[pi]


def _object_index(ids: np.ndarray) -> np.ndarray:
    """For sorted unique label ids: each id's index among the non-zero ones, -1 for 0."""
    index = np.cumsum(ids != 0) - 1
    index[ids == 0] = -1
    return index


def _touching_pairs(gt: np.ndarray, pred: np.ndarray):
    """The (true, predicted) object pairs that share pixels: their indices among the true and
    the predicted objects, their intersections, and every object's size. Memory and time grow
    with the pixels and the pairs that touch, not with n_true × n_pred as :func:`iou_matrix`'s
    table does (20 000 objects a side would need gigabytes)."""
    g_ids, g, p_ids, p = _label_indices(gt, pred)
    g_size = np.bincount(g, minlength=len(g_ids))[g_ids != 0]
    p_size = np.bincount(p, minlength=len(p_ids))[p_ids != 0]
    # indices among the objects, background (id 0, wherever it sorts: ids may be negative) at -1
    g, p = _object_index(g_ids)[g], _object_index(p_ids)[p]
    both = (g >= 0) & (p >= 0)
    n_pred = max(len(p_size), 1)
    pairs, inter = np.unique(g[both].astype(np.int64) * n_pred + p[both], return_counts=True)
    gi, pj = np.divmod(pairs, n_pred)
    return gi, pj, inter, g_size, p_size


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    inter, gs, ps = _overlaps(gt, pred)
    union = gs[:, None] + ps[None, :] - inter
    return inter / np.maximum(union, 1)


def average_precision(gt: np.ndarray, pred: np.ndarray, thresholds=THRESHOLDS) -> dict[float, float]:
    """AP_t = TP / (TP + FP + FN) with one-to-one matching at IoU > t, for each t ≥ 0.5.

    For t ≥ 0.5 a matching with IoU > t is necessarily unique, so TP is a count of pairs.
    """
    gi, pj, inter, gs, ps = _touching_pairs(gt, pred)
    iou = inter / np.maximum(gs[gi] + ps[pj] - inter, 1)  # of the pairs that touch; the rest is 0
    n_gt, n_pred = len(gs), len(ps)
    out = {}
    for t in thresholds:
        if t < 0.5:
            raise ValueError("thresholds below 0.5 need an assignment step; use t >= 0.5")
        if n_gt == 0 and n_pred == 0:
            out[float(t)] = 1.0
            continue
        tp = int((iou > t).sum())
        fp = n_pred - tp
        fn = n_gt - tp
        out[float(t)] = tp / (tp + fp + fn)
    return out


def symmetric_best_dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """min(mean over true objects of best Dice, mean over predicted objects of best Dice)."""
    gi, pj, inter, gs, ps = _touching_pairs(gt, pred)
    if len(gs) == 0 and len(ps) == 0:
        return 1.0
    if len(gs) == 0 or len(ps) == 0:
        return 0.0
    dice = 2 * inter / (gs[gi] + ps[pj])
    best_g, best_p = np.zeros(len(gs)), np.zeros(len(ps))  # an object touching none: 0
    np.maximum.at(best_g, gi, dice)
    np.maximum.at(best_p, pj, dice)
    return float(min(best_g.mean(), best_p.mean()))


def count_difference(gt: np.ndarray, pred: np.ndarray) -> int:
    """|DiC|: absolute difference between the numbers of objects."""
    return abs(count_objects(gt) - count_objects(pred))


def evaluate(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """AP50, AP75, mAP (0.5…0.95), SBD and |DiC| for one image."""
    ap = average_precision(gt, pred)
    return {
        "AP50": ap[0.5],
        "AP75": ap[0.75],
        "mAP": float(np.mean(list(ap.values()))),
        "SBD": symmetric_best_dice(gt, pred),
        "DiC": float(count_difference(gt, pred)),
        "n_true": float(count_objects(gt)),
        "n_pred": float(count_objects(pred)),
    }
