"""Each SPOCO loss term on tiny tensors with answers worked out by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from napari_spoco.distances import kernel_two_sigma_sq
from napari_spoco.losses import (
    LossConfig,
    _soft_masks_fused,
    consistency_term,
    dice_loss,
    foreground_term,
    instance_term,
    object_masks,
    object_means,
    pick_consistency_anchors,
    pull_term,
    push_term,
    regularizer_term,
    soft_mask,
    spoco_loss,
    unlabelled_push_term,
)
from napari_spoco.model import ModelConfig, SpocoModel, ema_update, split_output


def _two_objects():
    # E=2, six pixels: object 1 = pixels 0,1; object 2 = pixels 2,3; pixels 4,5 unlabelled.
    e = torch.tensor([[0.0, 0.2, 5.0, 5.0, 1.0, 9.0], [0.0, 0.0, 0.0, 0.4, 1.0, 9.0]])
    labels = torch.tensor([1, 1, 2, 2, 0, 0])
    masks = object_masks(labels)
    return e, labels, masks, object_means(e, masks)


def test_object_means_are_per_object_averages():
    _, _, _, mu = _two_objects()
    assert torch.allclose(mu, torch.tensor([[0.1, 0.0], [5.0, 0.2]]))


def test_pull_is_zero_when_all_pixels_within_delta_var():
    e, _, masks, mu = _two_objects()
    assert pull_term(e, masks, mu, delta_var=0.5).item() == pytest.approx(0.0, abs=1e-6)


def test_pull_matches_hand_computed_hinge():
    # One object, pixels at distance 1 from the mean: hinge (1 - 0.5)^2 = 0.25 per pixel.
    e = torch.tensor([[-1.0, 1.0]])
    masks = torch.ones(1, 2)
    mu = object_means(e, masks)
    assert pull_term(e, masks, mu, 0.5).item() == pytest.approx(0.25, rel=1e-4)


def test_push_is_zero_beyond_twice_delta_dist_and_positive_inside():
    far = torch.tensor([[0.0, 0.0], [4.5, 0.0]])
    near = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    assert push_term(far, delta_dist=2.0).item() == 0.0
    assert push_term(near, delta_dist=2.0).item() == pytest.approx((4.0 - 3.0) ** 2, rel=1e-4)
    assert push_term(far[:1], 2.0).item() == 0.0  # a single object has nothing to push


def test_regularizer_is_mean_norm():
    mu = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert regularizer_term(mu).item() == pytest.approx(3.0, rel=1e-4)


def test_soft_mask_is_half_at_delta_var():
    delta = 0.5
    e = torch.tensor([[0.0, delta, 2 * delta]])
    s = soft_mask(e, torch.tensor([[0.0]]), delta)[0]
    assert s[0].item() == pytest.approx(1.0)
    assert s[1].item() == pytest.approx(0.5, rel=1e-5)
    assert s[2].item() == pytest.approx(0.5**4, rel=1e-4)
    assert kernel_two_sigma_sq(delta) == pytest.approx(delta**2 / math.log(2))


def test_fused_soft_masks_floor_far_pixels_without_changing_the_masks():
    # Far pixels are most of the consistency term's matrix; their exponent is floored (e^-80,
    # not a subnormal or 0) because x86's vectorised exp is about 10x slower on underflow.
    torch.manual_seed(0)
    e = torch.randn(4, 500) * 3.0  # distances from well inside δ_v to far beyond e^-87
    anchors = torch.tensor([0, 7, 250])
    plain = soft_mask(e, e[:, anchors].T, 0.5)
    fused = _soft_masks_fused(e, anchors, 0.5)
    assert (plain < 1e-38).float().mean() > 0.3  # the case occurs here
    assert torch.allclose(fused, plain, rtol=1e-4, atol=1e-6)
    assert fused.min() > 0 and fused.min() == pytest.approx(math.exp(-80.0), rel=1e-4)


def test_dice_loss_zero_for_identical_and_one_for_disjoint():
    a = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert dice_loss(a, a).item() == pytest.approx(0.0)
    assert dice_loss(a, 1 - a).item() == pytest.approx(1.0)


def test_instance_term_ignores_unlabelled_pixels():
    e, labels, masks, mu = _two_objects()
    known = labels > 0
    base = instance_term(e, masks, mu, known, 0.5)
    # Moving unlabelled pixels onto object 1's mean must not change the instance term.
    e2 = e.clone()
    e2[:, 4:] = mu[0][:, None]
    assert instance_term(e2, masks, mu, known, 0.5).item() == pytest.approx(base.item(), abs=1e-6)


def test_unlabelled_push_penalises_unlabelled_pixels_near_an_object():
    e, labels, masks, mu = _two_objects()
    unl = labels == 0
    far = unlabelled_push_term(e, mu, unl, delta_dist=0.5)
    assert far.item() == pytest.approx(0.0, abs=1e-6)  # pixel 4 is ~1.35 and ~4.1 away
    e2 = e.clone()
    e2[:, 4] = mu[0]
    near = unlabelled_push_term(e2, mu, unl, delta_dist=0.5)
    # pixel 4 on object 1's mean: (0.5 - 0)^2 = 0.25 for object 1, averaged over 2 pixels.
    assert near.item() == pytest.approx(0.25 / 2 / 2, rel=1e-3)


def test_gradients_reach_unlabelled_pixels_only_through_unlabelled_push_and_consistency():
    torch.manual_seed(0)
    e = torch.randn(4, 1, 16, requires_grad=True)
    labels = torch.zeros(1, 16, dtype=torch.long)
    labels[0, :4] = 1
    labels[0, 4:8] = 2
    bg = torch.zeros(1, 16, dtype=torch.bool)
    cfg = LossConfig(unlabelled_push_weight=0.0, consistency_weight=0.0, foreground_weight=0.0)
    emb = e.permute(1, 0, 2)  # (B=1, E=4, P=16)
    spoco_loss(emb, labels, bg, cfg)["total"].backward()
    assert e.grad[:, 0, 8:].abs().max().item() == 0.0
    assert e.grad[:, 0, :8].abs().max().item() > 0.0
    e.grad = None
    cfg = LossConfig(alpha=0, beta=0, gamma=0, instance_weight=0, consistency_weight=0.0, foreground_weight=0.0)
    spoco_loss(emb, labels, bg, cfg)["total"].backward()
    assert e.grad[:, 0, 8:].abs().max().item() > 0.0


def test_consistency_is_zero_for_identical_views_and_teacher_gets_no_gradient():
    torch.manual_seed(0)
    es = torch.randn(3, 50, requires_grad=True)
    et = es.detach().clone().requires_grad_(True)
    anchors = torch.tensor([0, 10, 20])
    loss = consistency_term(es, et, anchors, 0.5)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss2 = consistency_term(es, et + 0.3 * torch.randn(3, 50), anchors, 0.5)
    assert loss2.item() > 0.0
    loss2.backward()
    assert es.grad is not None and es.grad.abs().sum() > 0
    assert et.grad is None


def test_consistency_anchors_stay_in_region_and_respect_limits():
    torch.manual_seed(0)
    e = torch.randn(2, 200) * 3
    region = torch.zeros(200, dtype=torch.bool)
    region[50:150] = True
    anchors = pick_consistency_anchors(e, region, 0.5, 20, 0.05, torch.Generator().manual_seed(1))
    assert 0 < len(anchors) <= 20
    assert bool(region[anchors].all())
    # All region pixels in one tight cluster: one anchor removes them all.
    e_tight = torch.zeros(2, 200)
    one = pick_consistency_anchors(e_tight, region, 0.5, 20, 0.05, torch.Generator().manual_seed(1))
    assert len(one) == 1


def test_foreground_term_uses_painted_positives_and_known_negatives():
    objects = torch.tensor([[1, 1, 0, 0, 0]])
    negatives = torch.tensor([[False, False, True, False, False]])
    good = torch.tensor([[9.0, 9.0, -9.0, -9.0, -9.0]])
    bad = -good
    assert foreground_term(good, objects, negatives).item() < 0.01
    assert foreground_term(bad, objects, negatives).item() > 4.0
    # Unlabelled pixels count only a little: flipping them costs less than flipping a known one.
    flip_unl = good.clone()
    flip_unl[0, 3:] = 9.0
    flip_neg = good.clone()
    flip_neg[0, 2] = 9.0
    assert foreground_term(flip_unl, objects, negatives) < foreground_term(flip_neg, objects, negatives)


def test_unlabelled_pixels_follow_a_given_target_instead_of_background():
    """Fine-tuning: an unpainted object the start calls foreground is pulled towards foreground,
    not background; painted positives and known negatives keep their 0/1 targets."""
    objects = torch.tensor([[1, 1, 0, 0, 0]])
    negatives = torch.tensor([[False, False, True, False, False]])
    teacher = torch.tensor([[0.99, 0.99, 0.01, 0.99, 0.02]])  # pixel 3: an unpainted object
    logits = torch.zeros(1, 5, requires_grad=True)
    foreground_term(logits, objects, negatives, unlabelled_target=teacher).backward()
    assert logits.grad[0, 3] < 0 < logits.grad[0, 4]  # descent raises pixel 3, lowers pixel 4
    assert logits.grad[0, 0] < 0 < logits.grad[0, 2]
    logits.grad = None
    foreground_term(logits, objects, negatives).backward()
    assert logits.grad[0, 3] > 0  # without a target every unlabelled pixel is pushed to background
    # at the teacher's own logits the unlabelled pixels' gradient vanishes
    at_teacher = torch.logit(teacher).requires_grad_(True)
    foreground_term(at_teacher, objects, negatives, unlabelled_target=teacher).backward()
    assert torch.allclose(at_teacher.grad[0, 3:], torch.zeros(2), atol=1e-7)


def test_a_confidence_turns_the_teachers_foreground_into_hard_targets_where_it_is_sure():
    objects = torch.tensor([[1, 0, 0, 0, 0]])
    negatives = torch.tensor([[False, True, False, False, False]])
    teacher = torch.tensor([[0.5, 0.5, 0.95, 0.6, 0.02]])  # pixels 2-4 unlabelled; 3 unsure
    logits = torch.zeros(1, 5, requires_grad=True)
    foreground_term(logits, objects, negatives, unlabelled_target=teacher, confidence=0.9).backward()
    assert logits.grad[0, 3] == 0  # no target where the teacher is unsure
    assert logits.grad[0, 2] < 0 < logits.grad[0, 4]  # hard 1 and hard 0 where it is sure
    # a hard target keeps pulling past the teacher's own probability; the soft one does not
    at_teacher = torch.logit(teacher).requires_grad_(True)
    foreground_term(at_teacher, objects, negatives, unlabelled_target=teacher, confidence=0.9).backward()
    assert at_teacher.grad[0, 2] < 0 < at_teacher.grad[0, 4]
    # nobody sure: the unlabelled share adds nothing
    logits.grad = None
    unsure = torch.full((1, 5), 0.5)
    foreground_term(logits, objects, negatives, unlabelled_target=unsure, confidence=0.9).backward()
    assert torch.all(logits.grad[0, 2:] == 0)


def test_spoco_loss_gives_the_teacher_foreground_as_target_only_when_asked():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 1:3, 1:3] = 1
    labels[0, 5:7, 5:7] = 2
    bg = torch.zeros(1, 8, 8, dtype=torch.bool)
    emb = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    fg = torch.full((1, 8, 8), -2.0)
    teacher_fg = torch.full((1, 8, 8), 6.0)
    plain = spoco_loss(emb, labels, bg, LossConfig(), None, fg)["foreground"]
    followed = spoco_loss(emb, labels, bg, LossConfig(), None, fg, teacher_fg_logits=teacher_fg)["foreground"]
    off = spoco_loss(emb, labels, bg, LossConfig(foreground_unlabelled_teacher=False), None, fg,
                     teacher_fg_logits=teacher_fg)["foreground"]
    assert torch.allclose(off, plain)
    assert not torch.allclose(followed, plain)


def test_spoco_loss_runs_on_a_model_batch_and_backpropagates_to_the_student_only():
    model = SpocoModel.new(ModelConfig(base_features=4, depth=2))
    x = torch.randn(2, 1, 16, 16)
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[:, 2:6, 2:6] = 1
    labels[:, 9:13, 9:13] = 2
    bg = torch.zeros(2, 16, 16, dtype=torch.bool)
    emb, fg = split_output(model.student(x), model.config)
    with torch.no_grad():
        temb, _ = split_output(model.teacher(x + 0.1), model.config)
    losses = spoco_loss(emb, labels, bg, LossConfig(), temb, fg)
    assert set(losses) >= {"pull", "push", "reg", "instance", "unlabelled_push", "consistency", "foreground", "total"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.student.parameters())


def test_ema_update_moves_teacher_towards_student():
    model = SpocoModel.new(ModelConfig(base_features=4, depth=2))
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    t0 = [p.clone() for p in model.teacher.parameters()]
    ema_update(model.teacher, model.student, momentum=0.9)
    for p0, pt, ps in zip(t0, model.teacher.parameters(), model.student.parameters()):
        assert torch.allclose(pt, 0.9 * p0 + 0.1 * ps)


def test_foreground_consistency_is_smallest_when_the_student_agrees_with_the_teacher():
    from napari_spoco.losses import foreground_consistency_term

    teacher = torch.tensor([4.0, -4.0, 0.0])
    student = teacher.clone().requires_grad_(True)
    agree = foreground_consistency_term(student, teacher)
    disagree = foreground_consistency_term(-teacher, teacher)
    assert agree < disagree
    agree.backward()
    assert torch.allclose(student.grad, torch.zeros(3), atol=1e-6)  # the optimum: p_student = p_teacher


def _anchors_one_by_one(e, region, delta_var, max_anchors, stop_fraction, generator):
    """The definition: each anchor uniform among the pixels still remaining."""
    remaining = region.clone()
    total = int(region.sum())
    anchors = []
    while len(anchors) < max_anchors:
        n = int(remaining.sum())
        if n == 0 or n < stop_fraction * total:
            break
        idx = torch.nonzero(remaining).squeeze(1)
        pick = int(idx[torch.randint(len(idx), (1,), generator=generator).item()])
        anchors.append(pick)
        remaining &= ((e - e[:, pick : pick + 1]) ** 2).sum(0) >= delta_var**2
    return anchors


@pytest.mark.parametrize("candidates", [512, 3])
def test_consistency_anchors_are_drawn_as_one_at_a_time(candidates):
    # Pixels in 1D embedding space: a tight group of 6, a loose chain of 8, 4 loners, and 2 pixels
    # outside the region. Which pixels become anchors, and how many, must follow the same law as
    # drawing one anchor at a time (batches of candidates, the stop rule counted afterwards).
    x = [0.0, 0.1, 0.2, 0.25, 0.3, 0.35] + [2.0 + 0.3 * i for i in range(8)] + [6.0, 7.5, 9.0, 11.0, 20.0, 30.0]
    e = torch.tensor([x])
    region = torch.ones(len(x), dtype=torch.bool)
    region[-2:] = False
    runs = 2000

    def law(fn):
        chosen = torch.zeros(len(x))
        counts = torch.zeros(7)
        for seed in range(runs):
            anchors = [int(a) for a in fn(e, region, 0.5, 6, 0.3, torch.Generator().manual_seed(seed))]
            assert len(set(anchors)) == len(anchors) and all(region[a] for a in anchors)
            chosen[anchors] += 1
            counts[len(anchors)] += 1
        return chosen / runs, counts / runs

    def batched(*args):
        return pick_consistency_anchors(*args, candidates=candidates)

    ref_chosen, ref_counts = law(_anchors_one_by_one)
    new_chosen, new_counts = law(batched)
    assert (ref_counts > 0.05).sum() >= 2  # the stop rule really varies the count here
    assert (new_chosen - ref_chosen).abs().max() < 0.06
    assert (new_counts - ref_counts).abs().max() < 0.06


def _plain_consistency(es, et, anchors, delta_var):
    """The consistency term written with autograd, as the paper states it."""
    s_f = soft_mask(es, es[:, anchors].T, delta_var)
    s_g = soft_mask(et.detach(), et.detach()[:, anchors].T, delta_var)
    return dice_loss(s_f, s_g).mean()


def test_consistency_gradient_matches_autograd_of_the_plain_expression():
    torch.manual_seed(0)
    # Embeddings laid out as a channels-last network output gives them: (E, P) with stride (1, E).
    base = torch.randn(300, 4) * 0.8
    es = base.T.clone().requires_grad_(True)
    es_strided = base.clone().requires_grad_(True)
    et = base.T + 0.2 * torch.randn(4, 300)
    anchors = torch.tensor([3, 4, 50, 120, 299])  # 3 and 4 close to each other or not: both fine
    want = _plain_consistency(es, et, anchors, 0.5)
    (want * 1.7).backward()
    got = consistency_term(es_strided.T, et, anchors, 0.5)
    (got * 1.7).backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.allclose(es_strided.grad.T, es.grad, atol=1e-6, rtol=1e-4)
    assert es.grad.abs().max() > 1e-3  # a gradient that can differ


def test_terms_sharing_one_distance_matrix_give_what_each_gives_alone():
    torch.manual_seed(1)
    emb = torch.randn(2, 3, 8, 8, requires_grad=True)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, :3, :3], labels[0, 5:, 5:], labels[1, 2:6, 2:6] = 1, 2, 7
    bg = torch.zeros(2, 8, 8, dtype=torch.bool)
    bg[0, 0, 7] = bg[1, 7, 0] = True
    cfg = LossConfig(consistency_weight=0.0, foreground_weight=0.0)
    out = spoco_loss(emb, labels, bg, cfg)
    for name, fn in (("pull", lambda e, m, mu, lab, known: pull_term(e, m, mu, cfg.delta_var)),
                     ("instance", lambda e, m, mu, lab, known: instance_term(e, m, mu, known, cfg.delta_var)),
                     ("unlabelled_push", lambda e, m, mu, lab, known: unlabelled_push_term(e, mu, lab == 0, cfg.delta_dist))):
        alone = []
        for i in range(2):
            e, lab = emb[i].reshape(3, -1), labels[i].reshape(-1)
            m = object_masks(lab)
            alone.append(fn(e, m, object_means(e, m), lab, (lab > 0) | bg[i].reshape(-1)))
        assert out[name].item() == pytest.approx(torch.stack(alone).mean().item(), rel=1e-5), name


def test_foreground_term_per_object_weighs_each_painted_object_alike():
    # Two batch items; id 1 in both is two different objects. Item 0: a large object (id 1)
    # predicted right and a small one (id 2) predicted wrong; item 1: a mid-size object (id 1).
    objects = torch.zeros(2, 12, 12, dtype=torch.long)
    objects[0, :10, :10] = 1
    objects[0, 11:, 11:] = 2
    objects[1, 3:7, 3:7] = 1
    negatives = torch.zeros(2, 12, 12, dtype=torch.bool)
    negatives[:, 10, :4] = True
    logits = torch.full((2, 12, 12), -4.0)
    logits[objects > 0] = 4.0
    logits[0, 11:, 11:] = -4.0  # the small object missed
    bce = F.binary_cross_entropy_with_logits(logits, (objects > 0).float(), reduction="none")
    per_object = [bce[0][objects[0] == 1].mean(), bce[0][objects[0] == 2].mean(), bce[1][objects[1] == 1].mean()]
    neg = 0.75 * bce[negatives].mean() + 0.25 * bce[(objects == 0) & ~negatives].mean()
    got = foreground_term(logits, objects, negatives, per_object=True)
    assert got.item() == pytest.approx((0.5 * torch.stack(per_object).mean() + 0.5 * neg).item(), rel=1e-5)
    by_pixel = foreground_term(logits, objects, negatives)
    assert by_pixel.item() == pytest.approx((0.5 * bce[objects > 0].mean() + 0.5 * neg).item(), rel=1e-5)
    assert got > 3 * by_pixel  # the missed one-pixel object weighs a third, not 1/117
