"""Metrics on hand-made label images whose scores can be worked out on paper."""

import numpy as np
import pytest

from napari_spoco import metrics
from napari_spoco.metrics import average_precision, count_difference, evaluate, iou_matrix, symmetric_best_dice


def _squares():
    gt = np.zeros((10, 10), int)
    gt[0:4, 0:4] = 1  # 16 px
    gt[6:10, 6:10] = 2  # 16 px
    return gt


def test_perfect_prediction_scores_one_whatever_the_ids():
    gt = _squares()
    pred = np.where(gt == 1, 7, np.where(gt == 2, 3, 0))
    m = evaluate(gt, pred)
    assert m["AP50"] == 1.0 and m["mAP"] == 1.0 and m["SBD"] == 1.0 and m["DiC"] == 0


def test_iou_of_a_shifted_square():
    gt = _squares()
    pred = np.zeros_like(gt)
    pred[0:4, 1:5] = 1  # overlaps 12 px of object 1; union 20
    iou = iou_matrix(gt, pred)
    assert iou.shape == (2, 1)
    assert iou[0, 0] == pytest.approx(12 / 20)
    assert iou[1, 0] == 0


def test_ap_counts_tp_fp_fn_at_each_threshold():
    gt = _squares()
    pred = np.zeros_like(gt)
    pred[0:4, 1:5] = 1  # IoU 0.6 with object 1
    pred[8:9, 0:2] = 2  # a false positive
    ap = average_precision(gt, pred, thresholds=(0.5, 0.6, 0.7))
    # t=0.5: TP=1, FP=1, FN=1 -> 1/3; t=0.6: IoU must be > t -> TP=0 -> 0.
    assert ap[0.5] == pytest.approx(1 / 3)
    assert ap[0.6] == 0.0
    assert ap[0.7] == 0.0


def test_sbd_is_the_smaller_direction():
    gt = _squares()
    pred = np.zeros_like(gt)
    pred[0:4, 0:4] = 1  # perfect on object 1, object 2 missed
    # gt->pred: (1 + 0) / 2 = 0.5; pred->gt: 1.0 -> SBD 0.5
    assert symmetric_best_dice(gt, pred) == pytest.approx(0.5)


def test_dice_in_sbd_matches_hand_value():
    gt = _squares()[:5, :5]
    pred = np.zeros_like(gt)
    pred[0:2, 0:4] = 1  # 8 px inside the 16 px object: dice 2*8/(16+8)
    assert symmetric_best_dice(gt, pred) == pytest.approx(16 / 24)


def test_count_difference_and_empty_conventions():
    gt = _squares()
    assert count_difference(gt, np.zeros_like(gt)) == 2
    empty = np.zeros((5, 5), int)
    assert evaluate(empty, empty)["AP50"] == 1.0
    assert evaluate(empty, empty)["SBD"] == 1.0
    assert evaluate(gt, np.zeros_like(gt))["AP50"] == 0.0
    assert evaluate(np.zeros_like(gt), gt)["SBD"] == 0.0


def test_metrics_work_in_3d():
    gt = np.zeros((3, 6, 6), int)
    gt[:, :3, :3] = 1
    assert evaluate(gt, gt)["mAP"] == 1.0


def test_scores_from_touching_pairs_equal_those_of_the_full_iou_table():
    """AP and SBD read only the object pairs that share pixels; on random label images (with
    and without background, one side empty) they must equal the full table's."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        shape = tuple(int(n) for n in rng.integers(1, 25, 2))
        k = int(rng.integers(1, 8))
        gt = (rng.integers(0, k, shape) * rng.integers(0, 2, shape)).astype(np.uint16) + 3 * (trial % 5 == 0)
        pred = np.where(rng.random(shape) < 0.7, gt, rng.integers(0, k + 2, shape)).astype(np.int32)
        if trial % 11 == 0:
            pred[:] = 0
        if trial % 4 == 1:  # signed ids: background is not the smallest id
            gt = gt.astype(np.int32) - 2 * (gt % 2).astype(np.int32) * gt.astype(np.int32)
            pred = -pred
        iou = iou_matrix(gt, pred)
        for t, ap in average_precision(gt, pred).items():
            tp = int((iou > t).sum())
            n_gt, n_pred = iou.shape
            want = 1.0 if n_gt == n_pred == 0 else tp / (n_gt + n_pred - tp)
            assert ap == want, (trial, t)
        if iou.shape[0] and iou.shape[1]:
            inter, gs, ps = metrics._overlaps(gt, pred)
            dice = 2 * inter / (gs[:, None] + ps[None, :])
            assert symmetric_best_dice(gt, pred) == float(min(dice.max(1).mean(), dice.max(0).mean()))


def test_many_objects_are_scored_without_a_table_of_every_pair():
    """10 000 objects a side: a full n_true × n_pred table would take 800 MB; the scores need
    only the pairs that touch."""
    import tracemalloc

    gt = np.arange(1, 10_001, dtype=np.int32).repeat(8).reshape(200, 400)
    pred = np.roll(gt, 1)  # each object shifted by one pixel: IoU 7/9
    tracemalloc.start()
    try:
        scores = evaluate(gt, pred)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scores["AP50"] == 1.0 and scores["AP75"] == 1.0 and abs(scores["SBD"] - 7 / 8) < 1e-9
    assert peak < 100e6, f"{peak / 1e6:.0f} MB"
