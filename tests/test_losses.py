"""Each SPOCO loss term on tiny tensors with answers worked out by hand."""

import math

import pytest
import torch

from napari_spoco.distances import kernel_two_sigma_sq
from napari_spoco.losses import (
    LossConfig,
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
