"""The simulated user of benchmarks/active_labelling.py, on tiny synthetic label images.

The benchmark's verdict rests on what the simulated user paints for a suggestion and on how the
two curves are compared: the user must paint the unpainted true object under a suggested
instance (never a painted one, never background), skip a suggestion over nothing new, and stop
at K objects; the comparison must read "half as many objects" off the curves correctly.
Numpy only, well under a second.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "active_labelling.py"
if not _PATH.is_file():
    pytest.skip("benchmarks/ is not part of this checkout", allow_module_level=True)
_spec = importlib.util.spec_from_file_location("benchmark_active_labelling", _PATH)
al = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = al
_spec.loader.exec_module(al)


def _scene():
    """Truth: objects 1, 2 side by side, 3 apart, 4 elsewhere. Prediction: id 7 merges 1 and 2
    (more of 2 than of 1), id 8 is object 3, id 9 lies on background only, id 5 is object 4."""
    truth = np.zeros((20, 40), np.uint16)
    truth[2:8, 2:8] = 1
    truth[2:8, 8:18] = 2
    truth[12:18, 2:8] = 3
    truth[12:18, 30:36] = 4
    pred = np.zeros_like(truth)
    pred[2:8, 3:18] = 7
    pred[12:18, 2:8] = 8
    pred[1:5, 22:26] = 9
    pred[12:18, 30:36] = 5
    return truth, pred


def test_the_user_paints_the_largest_unpainted_object_under_a_suggestion():
    truth, pred = _scene()
    assert al.true_object_under(pred, 7, truth, set()) == 2
    assert al.true_object_under(pred, 7, truth, {2}) == 1  # the larger one is painted: the next one
    assert al.true_object_under(pred, 7, truth, {1, 2}) is None
    assert al.true_object_under(pred, 9, truth, set()) is None  # background only: skipped
    assert al.true_object_under(pred, 8, truth, {1}) == 3


def test_a_correcting_user_paints_every_object_making_up_a_suggestion():
    truth, pred = _scene()  # id 7: 30 px of object 1 (a third), 60 of object 2
    assert al.objects_under(pred, 7, truth, set()) == [2, 1]
    assert al.objects_under(pred, 7, truth, set(), share=0.5) == [2]
    assert al.objects_under(pred, 7, truth, {2}) == [1]
    assert al.objects_under(pred, 9, truth, set()) == []  # background only
    assert al.objects_under(pred, 7, truth, set(), share=0.9) == [2]  # no part makes up 90 %: the largest
    chosen, looked = al.pick_suggested([(0.9, 0, 7), (0.8, 0, 8)], [pred], [truth], [set()], 3,
                                       by_score=False, every_part=True)
    assert chosen == [(0, 2), (0, 1), (0, 3)] and looked == 2
    chosen, _ = al.pick_suggested([(0.9, 0, 7), (0.8, 0, 8)], [pred], [truth], [set()], 1,
                                  by_score=False, every_part=True)
    assert chosen == [(0, 2)]  # k bounds the parts too


def test_a_suggestion_on_no_object_is_marked_background_and_counts_towards_k():
    truth, pred = _scene()
    assert al.outside_share(pred, 9, truth) == 1.0 and al.outside_share(pred, 8, truth) == 0.0
    strokes: list = []
    ranked = [(0.9, 0, 9), (0.8, 0, 7), (0.7, 0, 8)]
    chosen, looked = al.pick_suggested(ranked, [pred], [truth], [set()], 2, by_score=False, strokes=strokes)
    assert strokes == [(0, 9)] and chosen == [(0, 2)] and looked == 2  # the stroke is one of the two
    chosen, _ = al.pick_suggested(ranked, [pred], [truth], [set()], 2, by_score=False)
    assert chosen == [(0, 2), (0, 3)]  # without strokes, id 9 is skipped as before
    # id 7 lies on objects for the most part (a row outside): never marked background
    wide = pred.copy()
    wide[8, 3:18] = 7
    assert al.outside_share(wide, 7, truth) < al.NO_OBJECT
    strokes = []
    assert al.pick_suggested([(0.9, 0, 7)], [wide], [truth], [set()], 1, strokes=strokes)[0] == [(0, 2)]
    assert strokes == []


def test_painted_background_fills_only_unpainted_pixels():
    truth, pred = _scene()
    background = np.zeros(truth.shape, bool)
    background[:, :10] = True  # over object 1 (painted) and 3 (not painted)
    labels = al.sparse_labels(truth, {1}, background)
    assert (labels[truth == 1] == 1).all()  # a painted object wins over background
    assert (labels[truth == 3] == al.BACKGROUND_VALUE).all()
    assert (labels[:, 10:][truth[:, 10:] == 2] == 0).all()
    assert np.array_equal(al.sparse_labels(truth, {1}), np.where(truth == 1, truth, 0))


def test_instances_mostly_on_painted_objects_are_excluded():
    truth, pred = _scene()
    assert al.painted_instances(pred, np.isin(truth, [3])) == [8]
    # id 7 covers 5 px columns of object 1 and 10 of object 2: painting 1 alone is a third of it
    assert al.painted_instances(pred, np.isin(truth, [1])) == []
    assert al.painted_instances(pred, np.isin(truth, [2])) == [7]
    assert al.painted_instances(np.zeros_like(pred), truth > 0) == []


def test_suggestions_are_walked_by_score_over_images_until_k_new_objects():
    truth, pred = _scene()
    preds, truths = [pred, pred], [truth, truth]
    ranked = [(0.9, 0, 9), (0.8, 1, 7), (0.8, 0, 7), (0.7, 0, 8), (0.6, 1, 5), (0.1, 0, 5)]
    chosen, looked = al.pick_suggested(ranked, preds, truths, [set(), {2}], k=3)
    # 9 is skipped (background); ties go to the lower image index; image 1 has 2 painted: object 1
    assert chosen == [(0, 2), (1, 1), (0, 3)]
    assert looked == 4
    # the same true object is not painted twice in one round: the second suggestion over it finds the next
    chosen, _ = al.pick_suggested([(0.9, 0, 7), (0.8, 0, 7), (0.7, 0, 7)], preds, truths, [set(), set()], k=5)
    assert chosen == [(0, 2), (0, 1)]


def test_random_picks_are_unpainted_seeded_and_at_most_what_is_left():
    objects = [[1, 2, 3, 4], [1, 2]]
    painted = [{1, 2}, set()]
    a = al.pick_random(objects, painted, 3, np.random.default_rng(0))
    assert a == al.pick_random(objects, painted, 3, np.random.default_rng(0))
    assert len(set(a)) == 3 and all(o not in painted[i] for i, o in a)
    assert sorted(al.pick_random(objects, painted, 10, np.random.default_rng(1))) == [(0, 3), (0, 4), (1, 1), (1, 2)]


def test_a_share_of_objects_per_round_is_rounded_up_so_the_default_rounds_reach_20_percent():
    for n in (1053, 411, 1251):  # the three 2D sets' training objects
        k = al.objects_per_round("2.5%", n)
        assert round(0.05 * n) + 6 * k >= 0.2 * n
    assert al.objects_per_round("7", 1000) == 7
    assert al.objects_per_round("2.5%", 400) == 10


def _result(random, suggested, n_objects=100):
    def curve(points):
        return [{"painted": x, "AP50": y} for x, y in points]

    return {"dataset": "toy", "seeds": [{"n_objects": n_objects, "curves": {"random": curve(random),
                                                                             "suggested": curve(suggested)}}]}


def test_the_comparison_reads_half_as_many_objects_off_the_curves():
    random = [(5, 0.5), (10, 0.55), (15, 0.6), (25, 0.7)]  # at 20 objects: 0.65 (interpolated)
    good = al.comparison(_result(random, [(5, 0.5), (10, 0.66), (15, 0.7)]), 0.2)
    assert good["ref_AP50"] == pytest.approx(0.65)
    assert good["need"] == 10 and good["verdict"].startswith("✓")
    late = al.comparison(_result(random, [(5, 0.5), (10, 0.6), (15, 0.66)]), 0.2)
    assert late["need"] == 15 and late["verdict"].startswith("✗")
    never = al.comparison(_result(random, [(5, 0.5), (10, 0.6)]), 0.2)
    assert "need" not in never and never["verdict"].startswith("✗")
    short = al.comparison(_result(random[:3], random[:3]), 0.2)  # random never reaches 20 objects
    assert short["verdict"].startswith("n/a")


def test_a_given_order_is_walked_as_given():
    """The suggested strategy walks the order of ``suggestions.spread_order``, not the scores."""
    truth, pred = _scene()
    ranked = [(0.2, 0, 8), (0.9, 0, 7), (0.5, 0, 5)]
    chosen, looked = al.pick_suggested(ranked, [pred], [truth], [set()], k=2, by_score=False)
    assert chosen == [(0, 3), (0, 2)] and looked == 2
    assert al.pick_suggested(ranked, [pred], [truth], [set()], k=2)[0] == [(0, 2), (0, 4)]


def test_the_table_shows_every_strategy_that_ran():
    r = _result([(5, 0.5), (10, 0.55)], [(5, 0.5), (10, 0.6)])
    r.update(n_train=2, n_test=1)
    seed = r["seeds"][0]
    seed["k"] = 5
    for st in ("random", "suggested"):
        for row, steps in zip(seed["curves"][st], (300, 400)):
            row["steps"] = steps
    assert al.present(r) == ["random", "suggested"] and "top AP50" not in al.table(r)
    seed["curves"]["top"] = [dict(row, AP50=0.4) for row in seed["curves"]["suggested"]]
    seed["curves"]["top"][1]["picked_median_px"] = 4670.0
    text = al.table(r)
    assert al.present(r) == ["random", "suggested", "top"] and "| top AP50 |" in text and "0.400" in text
    assert " /  / 4670 |" in text  # the median size a round painted, per strategy
