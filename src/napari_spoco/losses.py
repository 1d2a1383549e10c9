"""The SPOCO loss (Wolny et al., CVPR 2022, section 3), one function per term; docs/method.md
lists the terms and where we depart from the paper's reference code.

Each term works on one sample: embeddings ``e`` of shape ``(E, P)`` (P pixels, flattened),
object labels ``(P,)`` (0 = not a painted object) and a background mask ``(P,)``. Terms are
vectorised over objects, pixels and anchors; only the batch is looped (a handful of samples).

Distances are computed from squared distances (distances.py, shared with the clustering) with a
small epsilon so that gradients stay finite where an embedding coincides with an anchor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .distances import kernel_two_sigma_sq, sq_dist

_EPS = 1e-8
# The soft masks' exponent is floored here: e^-80 ≈ 2e-35 is zero to every sum it enters, and x86's
# vectorised exp computes arguments below about -87 (results that underflow to subnormals or 0)
# about 10x slower; far anchors are most of a consistency term's (K, P) matrix
# (docs/benchmarks.md, "Training speed").
_MIN_EXPONENT = -80.0


@dataclass
class LossConfig:
    """Margins and weights; defaults are the paper's reference code's (docs/method.md, "Loss")."""

    delta_var: float = 0.5
    delta_dist: float = 2.0
    alpha: float = 1.0  # pull
    beta: float = 1.0  # push
    gamma: float = 0.001  # regulariser
    instance_weight: float = 1.0
    unlabelled_push_weight: float = 1.0
    consistency_weight: float = 1.0
    consistency_anchors: int = 20
    consistency_stop_fraction: float = 0.05
    #: Our addition: positive-vs-unlabelled foreground head (docs/method.md).
    foreground_weight: float = 3.0
    foreground_unlabelled_weight: float = 0.25
    #: Weigh the head's positives per painted object (each object's pixels share one object's
    #: weight) instead of per pixel. Measured and not adopted (lower on Usiigaci on every seed:
    #: docs/benchmarks.md, "Usiigaci variants").
    foreground_per_object: bool = False
    #: Training a 2D network started from a trained model: the unlabelled pixels' target is the
    #: EMA teacher's foreground probability instead of 0, so that unpainted objects are not learnt as
    #: background (docs/method.md, "Background"). False: always 0, as from a new network.
    foreground_unlabelled_teacher: bool = True
    #: With the teacher's target: 0 = its probability as it is (a soft target, which let one
    #: BBBC039 seed's edges drift 11 % outwards); c > 0 = a hard 0/1 target where the teacher is at
    #: least c sure (max(p, 1 - p) >= c), no target elsewhere. 0.9 measured on every 2D set
    #: (docs/benchmarks.md, "Hard targets where the teacher is sure").
    foreground_teacher_confidence: float = 0.9
    #: The teacher's target for 3D networks too. Off: on the packed 3D nuclei both forms scored
    #: lower than the negatives (docs/benchmarks.md, "Hard targets where the teacher is sure"); a
    #: switch so that variants can be measured.
    foreground_teacher_3d: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LossConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def object_masks(labels: torch.Tensor) -> torch.Tensor:
    """One-hot (K, P) float masks of the positive ids in ``labels`` (P,)."""
    ids = torch.unique(labels)
    ids = ids[ids > 0]
    return (labels[None, :] == ids[:, None]).to(torch.float32)


def object_means(e: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean embedding μ_k of each object: (K, E)."""
    return (masks @ e.T) / masks.sum(1, keepdim=True).clamp_min(1.0)


def pull_term(e: torch.Tensor, masks: torch.Tensor, mu: torch.Tensor, delta_var: float,
              d2: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over objects of mean over its pixels of max(0, d(e_i, μ_k) − δ_v)².

    ``d2``: ``sq_dist(mu, e)`` when the caller has it (spoco_loss shares one between the terms
    that measure pixels against the object means)."""
    if masks.shape[0] == 0:
        return e.sum() * 0.0
    d = torch.sqrt((sq_dist(mu, e) if d2 is None else d2) + _EPS)
    hinge = F.relu(d - delta_var) ** 2
    return ((hinge * masks).sum(1) / masks.sum(1).clamp_min(1.0)).mean()


def push_term(mu: torch.Tensor, delta_dist: float) -> torch.Tensor:
    """Mean over object pairs of max(0, 2δ_d − d(μ_k, μ_l))²; 0 with fewer than 2 objects."""
    k = mu.shape[0]
    if k < 2:
        return mu.sum() * 0.0
    d = torch.sqrt(sq_dist(mu, mu.T) + _EPS)
    iu = torch.triu_indices(k, k, offset=1, device=mu.device)
    return (F.relu(2.0 * delta_dist - d[iu[0], iu[1]]) ** 2).mean()


def regularizer_term(mu: torch.Tensor) -> torch.Tensor:
    """Mean norm of the object means ‖μ_k‖ (keeps the embedding near the origin)."""
    if mu.shape[0] == 0:
        return mu.sum() * 0.0
    return torch.sqrt((mu * mu).sum(1) + _EPS).mean()


def soft_mask(e: torch.Tensor, anchors: torch.Tensor, delta_var: float) -> torch.Tensor:
    """Differentiable selection S(i) = exp(−d(e_i, anchor)² / 2σ²), 0.5 at distance δ_v."""
    return torch.exp(-sq_dist(anchors, e) / kernel_two_sigma_sq(delta_var))


def dice_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row Dice loss 1 − 2ΣST/(ΣS² + ΣT²), optionally restricted by a 0/1 ``weight``."""
    if weight is not None:
        pred = pred * weight
        target = target * weight
    inter = (pred * target).sum(-1)
    denom = (pred * pred).sum(-1) + (target * target).sum(-1)
    return 1.0 - 2.0 * inter / denom.clamp_min(_EPS)


def instance_term(
    e: torch.Tensor,
    masks: torch.Tensor,
    mu: torch.Tensor,
    known: torch.Tensor,
    delta_var: float,
    d2: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dice between each object's soft mask (anchor = μ_k, as the reference) and its true mask.

    The comparison is restricted to ``known`` pixels (painted objects and background scribbles):
    unlabelled pixels may belong to unpainted objects, and are handled by the unlabelled-push
    and consistency terms instead.
    """
    if masks.shape[0] == 0:
        return e.sum() * 0.0
    s = soft_mask(e, mu, delta_var) if d2 is None else torch.exp(-d2 / kernel_two_sigma_sq(delta_var))
    return dice_loss(s, masks, known.to(s.dtype)[None, :]).mean()


def unlabelled_push_term(
    e: torch.Tensor, mu: torch.Tensor, unlabelled: torch.Tensor, delta_dist: float,
    d2: torch.Tensor | None = None,
) -> torch.Tensor:
    """Push pixels outside every painted object at least δ_d from each object's mean (mean over
    those pixels, then over objects). Measured on all pixels and masked: cheaper than gathering
    the unlabelled ones, which are most of a patch."""
    n = int(unlabelled.sum())
    if mu.shape[0] == 0 or n == 0:
        return e.sum() * 0.0
    d = torch.sqrt((sq_dist(mu, e) if d2 is None else d2) + _EPS)
    return ((F.relu(delta_dist - d) ** 2) * unlabelled.to(d.dtype)).sum(1).mean() / n


@torch.no_grad()
def pick_consistency_anchors(
    e: torch.Tensor,
    region: torch.Tensor,
    delta_var: float,
    max_anchors: int,
    stop_fraction: float,
    generator: torch.Generator,
    candidates: int = 512,
) -> torch.Tensor:
    """Anchor pixels in ``region``: each one removes its δ_v-neighbourhood (in ``e``) from
    the remaining region; stop after ``max_anchors`` or once < ``stop_fraction`` remains.

    Drawn as the sequential definition draws them (each anchor uniform among the pixels still
    remaining), in batches: the first eligible pixel of a sequence of uniform draws from the
    remaining ones is uniform among the eligible, so a batch of ``candidates`` draws is picked
    from with their own distances alone, and one product with all pixels then counts what each
    anchor removed (for the stop rule). One pass over a patch instead of one per anchor, and
    over the whole patch with a mask rather than a gathered copy of the remaining pixels (the
    region is most of a patch): docs/benchmarks.md, "Training speed"."""
    dv2 = delta_var**2
    e = e.float()
    alive = region.clone()
    total = int(alive.sum())
    e_sq = (e * e).sum(0, keepdim=True)  # (1, P)
    anchors: list[torch.Tensor] = []
    count = 0
    n = total
    while count < max_anchors:
        if n == 0 or n < stop_fraction * total:
            break
        rest = torch.nonzero(alive).squeeze(1)
        draws = torch.randint(n, (candidates,), generator=generator, device=generator.device)
        cand = rest[draws.to(rest.device)]
        c = e[:, cand].T.cpu().numpy()  # (M, E)
        blocked = np.zeros(len(cand), dtype=bool)
        picked: list[int] = []
        while count + len(picked) < max_anchors:
            free = np.flatnonzero(~blocked)
            if free.size == 0:
                break
            j = int(free[0])
            picked.append(j)
            blocked |= ((c - c[j]) ** 2).sum(1) < dv2  # a draw blocks itself and its repeats
        new = cand[torch.as_tensor(picked, device=cand.device)]
        # which of the new anchors removes each remaining pixel first (len(new): none)
        a = e[:, new].T  # (A, E)
        d2 = torch.addmm(e_sq, a, e, alpha=-2.0).add_((a * a).sum(1, keepdim=True))
        near = (d2 < dv2).logical_and_(alive)
        near[torch.arange(len(new), device=near.device), new] = True
        small = torch.uint8 if len(new) < 256 else torch.int16
        rank = torch.arange(len(new), 0, -1, dtype=small, device=near.device)[:, None]
        first = len(new) - (near.to(small) * rank).amax(0).long()  # argmax(0) is 5x slower
        removed = torch.bincount(first, minlength=len(new) + 1)[:-1].cumsum(0)
        before = n - torch.cat([removed.new_zeros(1), removed[:-1]])  # remaining before each anchor
        keep = int(((before > 0) & (before >= stop_fraction * total)).sum())  # non-increasing: a prefix
        anchors.append(new[:keep])
        count += keep
        if keep < len(new):
            break
        alive &= first >= keep
        n -= int(removed[-1]) if len(new) else 0
    if not anchors:
        return torch.zeros(0, dtype=torch.long, device=e.device)
    return torch.cat(anchors).to(e.device)


def _soft_masks_fused(e: torch.Tensor, anchors: torch.Tensor, delta_var: float) -> torch.Tensor:
    """:func:`soft_mask` around the embeddings of the ``anchors`` pixels, without autograd and
    in place on one (K, P) buffer (the consistency term's own backward is analytic)."""
    a = e[:, anchors].T  # (K, E)
    d2 = torch.addmm((e * e).sum(0, keepdim=True), a, e, alpha=-2.0)
    two_sigma_sq = kernel_two_sigma_sq(delta_var)
    d2.add_((a * a).sum(1, keepdim=True)).clamp_(0.0, -_MIN_EXPONENT * two_sigma_sq)
    return d2.mul_(-1.0 / two_sigma_sq).exp_()


class _ConsistencyDice(torch.autograd.Function):
    """Mean over anchors of the Dice loss between the student's soft masks and the teacher's
    (a constant), with the gradient written out: autograd's graph of the same expression keeps
    and revisits half a dozen (K, P) intermediates and was most of a 3D training step's loss
    time. d(Dice)/dS, times dS/d(d²) = −S/2σ², then d(d²)/de for the pixels and the anchors."""

    @staticmethod
    def forward(ctx, e, teacher_masks, anchors, delta_var):
        with torch.no_grad():
            s = _soft_masks_fused(e, anchors, delta_var)
            t = teacher_masks
            inter = torch.linalg.vecdot(s, t, dim=1)
            denom = (torch.linalg.vecdot(s, s, dim=1) + torch.linalg.vecdot(t, t, dim=1)).clamp_min(_EPS)
            loss = (1.0 - 2.0 * inter / denom).mean()
        ctx.save_for_backward(e, s, t, anchors, inter, denom)
        ctx.delta_var = delta_var
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        e, s, t, anchors, inter, denom = ctx.saved_tensors
        k = s.shape[0]
        two_sigma_sq = kernel_two_sigma_sq(ctx.delta_var)
        # dL/dS = -(2/K)(T/D - 2 I S / D²); G = dL/d(d²) = dL/dS * (-S / 2σ²)
        g = t * (1.0 / denom)[:, None]
        g.addcmul_(s, (2.0 * inter / denom**2)[:, None], value=-1.0)
        g.mul_(s).mul_(float(grad_out) * 2.0 / (k * two_sigma_sq))
        a = e[:, anchors].T  # (K, E)
        # d² = |a|² - 2 a·e + |e|²: d/de_p = 2 (e_p - a_k), d/da_k = 2 (a_k - e_p)
        grad_e = torch.addmm(e * (2.0 * g.sum(0))[None, :], a.T, g, alpha=-2.0)
        grad_a = a * (2.0 * g.sum(1))[:, None] - 2.0 * (g @ e.T)
        grad_e.index_add_(1, anchors, grad_a.T)
        return grad_e, None, None, None


def consistency_term(
    e_student: torch.Tensor,
    e_teacher: torch.Tensor,
    anchors: torch.Tensor,
    delta_var: float,
) -> torch.Tensor:
    """Dice between the soft masks the student and the teacher build around the same anchor
    pixels (each around its own embedding of that pixel). The teacher is treated as a constant."""
    if anchors.numel() == 0:
        return e_student.sum() * 0.0
    with torch.no_grad():
        s_g = _soft_masks_fused(e_teacher.detach(), anchors, delta_var)
    return _ConsistencyDice.apply(e_student, s_g, anchors, delta_var)


def foreground_term(
    logits: torch.Tensor,
    objects: torch.Tensor,
    negatives: torch.Tensor,
    unlabelled_weight: float = 0.25,
    per_object: bool = False,
    unlabelled_target: torch.Tensor | None = None,
    confidence: float = 0.0,
) -> torch.Tensor:
    """BCE of the foreground head: painted objects are 1; ``negatives`` (background scribbles
    and the rings just outside painted objects) are 0; the remaining unlabelled pixels count as 0
    with a small share ``unlabelled_weight`` of the negative weight.

    The small share teaches "far from anything painted, and unlike painted objects, is
    background" without letting the many unpainted objects outvote the painted ones. Positives
    and negatives are balanced, so a few scribbles weigh as much as a large background.
    ``unlabelled_target`` (probabilities, shaped like ``logits``) replaces the unlabelled pixels'
    0: a fine-tuned head then keeps its start's opinion where nothing was painted. ``confidence``
    > 0 makes that target hard (0/1) where the teacher is at least that sure and drops the rest,
    so the edge of an unpainted object cannot drift with the teacher (docs/method.md).
    """
    pos = objects > 0
    neg = negatives & ~pos
    unl = ~(pos | neg)
    if not bool(pos.any()):
        return logits.sum() * 0.0
    bce = F.binary_cross_entropy_with_logits(logits, pos.to(logits.dtype), reduction="none")
    zero = logits.sum() * 0.0
    if per_object:  # each painted object (per batch item) weighs the same, whatever its size
        batch = torch.arange(objects.shape[0], device=objects.device).view(-1, *([1] * (objects.dim() - 1)))
        uid = (objects.long() + batch * (int(objects.max()) + 1))[pos]
        _, inverse, counts = torch.unique(uid, return_inverse=True, return_counts=True)
        pos_term = (bce[pos] / counts[inverse].to(bce.dtype)).sum() / len(counts)
    else:
        pos_term = bce[pos].mean()
    neg_known = bce[neg].mean() if bool(neg.any()) else zero
    if not bool(unl.any()):
        neg_unl = zero
    elif unlabelled_target is None:
        neg_unl = bce[unl].mean()
    elif confidence <= 0:
        neg_unl = F.binary_cross_entropy_with_logits(logits[unl], unlabelled_target[unl].to(logits.dtype))
    else:
        t = unlabelled_target[unl]
        sure = torch.maximum(t, 1 - t) >= confidence
        neg_unl = (F.binary_cross_entropy_with_logits(logits[unl][sure], (t[sure] > 0.5).to(logits.dtype))
                   if bool(sure.any()) else zero)
    w = unlabelled_weight if bool(neg.any()) else 1.0
    return 0.5 * pos_term + 0.5 * ((1.0 - w) * neg_known + w * neg_unl)


def foreground_consistency_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """BCE of the student's foreground logits against the teacher's probabilities (a constant).

    Used by self-supervised adaptation only (docs/method.md): the consistency term constrains the
    embeddings but says nothing about the foreground head, which would otherwise drift.
    """
    target = torch.sigmoid(teacher_logits.detach())
    return F.binary_cross_entropy_with_logits(student_logits, target)


def spoco_loss(
    emb: torch.Tensor,
    objects: torch.Tensor,
    background: torch.Tensor,
    config: LossConfig,
    teacher_emb: torch.Tensor | None = None,
    fg_logits: torch.Tensor | None = None,
    negatives: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    teacher_fg_logits: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """All terms, averaged over the batch, and their weighted sum under ``"total"``.

    ``emb``/``teacher_emb``: (B, E, *spatial); ``objects``: (B, *spatial) int;
    ``background``: (B, *spatial) bool; ``fg_logits``: (B, *spatial) or None;
    ``negatives``: (B, *spatial) bool, the foreground head's negatives (default: ``background``);
    ``teacher_fg_logits``: (B, *spatial), given when training started from a trained model: the
    unlabelled pixels' foreground target (``LossConfig.foreground_unlabelled_teacher``).
    """
    generator = generator or torch.Generator().manual_seed(0)
    b, e_dim = emb.shape[:2]
    terms: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("pull", "push", "reg", "instance", "unlabelled_push", "consistency")
    }
    for i in range(b):
        e = emb[i].reshape(e_dim, -1)
        lab = objects[i].reshape(-1)
        bg = background[i].reshape(-1)
        masks = object_masks(lab)
        mu = object_means(e, masks)
        known = (lab > 0) | bg
        d2 = sq_dist(mu, e) if mu.shape[0] else None  # pixels against object means, shared
        terms["pull"].append(pull_term(e, masks, mu, config.delta_var, d2))
        terms["push"].append(push_term(mu, config.delta_dist))
        terms["reg"].append(regularizer_term(mu))
        terms["instance"].append(instance_term(e, masks, mu, known, config.delta_var, d2))
        terms["unlabelled_push"].append(unlabelled_push_term(e, mu, lab == 0, config.delta_dist, d2))
        if teacher_emb is not None and config.consistency_weight > 0:
            region = (lab == 0) & ~bg
            anchors = pick_consistency_anchors(
                e.detach(), region, config.delta_var, config.consistency_anchors,
                config.consistency_stop_fraction, generator,
            )
            eg = teacher_emb[i].reshape(e_dim, -1)
            terms["consistency"].append(consistency_term(e, eg, anchors, config.delta_var))
        else:
            terms["consistency"].append(emb.sum() * 0.0)
    out = {k: torch.stack(v).mean() for k, v in terms.items()}
    if fg_logits is not None and config.foreground_weight > 0:
        out["foreground"] = foreground_term(
            fg_logits, objects, background if negatives is None else negatives,
            config.foreground_unlabelled_weight, config.foreground_per_object,
            torch.sigmoid(teacher_fg_logits.detach())
            if teacher_fg_logits is not None and config.foreground_unlabelled_teacher else None,
            config.foreground_teacher_confidence,
        )
    else:
        out["foreground"] = emb.sum() * 0.0
    out["total"] = (
        config.alpha * out["pull"]
        + config.beta * out["push"]
        + config.gamma * out["reg"]
        + config.instance_weight * out["instance"]
        + config.unlabelled_push_weight * out["unlabelled_push"]
        + config.consistency_weight * out["consistency"]
        + config.foreground_weight * out["foreground"]
    )
    return out
