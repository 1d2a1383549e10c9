"""From embeddings to instances: mean-shift in torch, HDBSCAN, consistency clustering, and the
post-processing that turns clusters into a clean label image.

Mean-shift follows scikit-learn's algorithm (flat kernel of radius = bandwidth, modes merged
within one bandwidth, every point assigned to its nearest mode) but runs the iterations for a
sample of seeds against a sample of points, as batched matrix products, then assigns all pixels
in chunks. Points far from every mode get a second round of their own, so small objects missed by
the sample are still found.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch

from .checks import check_field
from .data import relabel_sequential
from .distances import kernel_two_sigma_sq, sq_dist
from .errors import SpocoError
from .label_dtypes import label_dtype

METHODS = ("meanshift", "hdbscan", "consistency")
#: How objects lie in the image (ClusterConfig.layout; layout.py).
LAYOUTS = ("auto", "separate", "tiled")


@dataclass
class ClusterConfig:
    """Clustering and post-processing settings; defaults follow the paper's reference code where it has one."""

    method: str = "meanshift"
    bandwidth: float = 0.5  # δ_v
    foreground_threshold: float = 0.5
    min_size: int | None = None  # default 16 px (2D) / 64 voxels (3D)
    # segment() sets this where it filled min_size from the painted median (docs/method.md): the
    # floor then comes down to 15 % of the median piece the image itself holds, when that is
    # smaller, but no lower than half the painted median's share. A painting skewed towards large
    # objects moves the painted median; the image's pieces do not follow it.
    adaptive_min_size: bool = False
    max_size: int | None = None  # connected pieces larger than this are background (segment() sets it)
    split_components: bool = True
    # δ_d: touching pieces whose mean embeddings are closer than this are one object (measured:
    # docs/benchmarks.md; half the push margin 2δ_d that distinct neighbours are trained to keep).
    merge_distance: float = 2.0
    # Touching pieces whose contact the foreground head calls as foreground as their insides
    # (within boundary_tolerance) are one object: nothing the network learned separates them
    # (boundaries.py; docs/method.md, "Merging pieces with no boundary between them").
    boundary_merge: bool = True
    boundary_tolerance: float = 0.05
    expand: int = 0
    # Split pieces far less convex than the painted objects at the necks of their distance
    # transform (shapes.py; docs/method.md, "Splitting merged objects by shape"). segment()
    # fills object_size (median painted object, network pixels) and shape_reference (the
    # painted objects' convexity) from the model; without them nothing is split.
    shape_split: bool = True
    # With the shape split, cut a piece of convex objects (painted solidity >= 0.8) that is still
    # less convex than them along the line between its two deepest notches, where both parts are
    # as convex as the painted objects (shapes.cut_at_concavities; docs/method.md).
    concave_split: bool = True
    # With the shape split, seed it also at peaks that a higher point within a painted radius
    # outranks, where (nearly) all painted objects have one peak that way (the model's
    # history["single_peaked"]; shapes.single_peaked): packed nuclei overlap so far that the
    # lower centre lies on the higher one's slope (docs/method.md). segment() turns it off where
    # the model has no such record; cluster_embeddings called directly takes it as set.
    outranked_seeds: bool = True
    # Grow objects by the growth that best fitted the predicted pieces to the painted objects at
    # the end of training (edges.py; model.history["edge_expand"]), on top of ``expand``.
    calibrated_edge: bool = True
    # Background enclosed by one object (a nucleolus, a dark organelle) is part of it (holes.py;
    # docs/method.md, "Holes inside objects").
    fill_holes: bool = True
    # Objects grow into the background next to them that the foreground head still gives 0.2,
    # up to a tenth of the painted objects' radius (``object_size``) away (edges.grow_into_edge;
    # docs/method.md, "Growing objects into their uncertain edge").
    edge_growth: bool = True
    object_size: float | None = None
    shape_reference: float | None = None
    # Where objects stand on background, touching pieces with no boundary between them are
    # joined only when their union is at least this convex (the median painted object's
    # solidity; segment() fills it from the model; boundaries.merge_convex_unseparated).
    convex_reference: float | None = None
    # How objects lie: "separate" (on background: the shape split), "tiled" (filling the
    # image: the boundary merge), or "auto": segment() takes what training measured on the
    # painted objects (layout.py; model.history["layout"]), else the predicted foreground
    # fraction decides (above half the tile: tiled).
    layout: str = "auto"
    max_points: int = 10000
    n_seeds: int = 500
    hdbscan_min_cluster_size: int = 50
    hdbscan_max_points: int = 5000
    consistency_iou: float = 0.6
    consistency_anchors: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse values the clustering cannot use (a negative bandwidth used to be taken as
        positive; a foreground threshold of 2 silently found no object)."""
        if self.method not in METHODS:
            raise SpocoError(f"Unknown clustering method {self.method!r}; choose {', '.join(METHODS)}.")
        check_field(self, "bandwidth", "a positive, finite number", low=0, low_open=True)
        check_field(self, "merge_distance", "a positive, finite number", low=0, low_open=True)
        check_field(self, "foreground_threshold", "a number between 0 and 1 (exclusive)", low=0, high=1,
                    low_open=True, high_open=True)
        check_field(self, "min_size", "a whole number >= 0, or None", whole=True, low=0, optional=True)
        check_field(self, "max_size", "a whole number >= 0, or None", whole=True, low=0, optional=True)
        check_field(self, "expand", "a whole number >= 0", whole=True, low=0)
        check_field(self, "object_size", "a positive, finite number, or None", low=0, low_open=True, optional=True)
        for name in ("shape_reference", "convex_reference"):
            check_field(self, name, "a number in (0, 1], or None", low=0, high=1, low_open=True, optional=True)
        for name in ("shape_split", "concave_split", "outranked_seeds", "boundary_merge", "calibrated_edge", "adaptive_min_size", "fill_holes",
                     "edge_growth"):
            if not isinstance(getattr(self, name), bool):
                raise SpocoError(f"ClusterConfig.{name} = {getattr(self, name)!r}: expected True or False.")
        check_field(self, "boundary_tolerance", "a number in [0, 1]", low=0, high=1)
        if self.layout not in LAYOUTS:
            raise SpocoError(f"ClusterConfig.layout = {self.layout!r}: choose one of {', '.join(LAYOUTS)}.")
        for name in ("max_points", "n_seeds", "hdbscan_min_cluster_size", "hdbscan_max_points", "consistency_anchors"):
            check_field(self, name, "a whole number >= 1", whole=True, low=1)
        check_field(self, "consistency_iou", "a number in [0, 1]", low=0, high=1)

    def to_dict(self) -> dict:
        return asdict(self)


def _chunked_nearest(points: torch.Tensor, centers: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to the nearest center, for every point, in chunks.

    The nearest center minimises |c|² − 2 p·c (|p|² is the same for every center), one fused
    matrix product per chunk; |p|² is added to the minimum only."""
    idx = torch.empty(points.shape[0], dtype=torch.long)
    dist = torch.empty(points.shape[0], dtype=points.dtype)
    ct = centers.T.contiguous()
    cc = (centers * centers).sum(1)[None, :]
    for s in range(0, points.shape[0], chunk):
        p = points[s : s + chunk]
        m = torch.addmm(cc, p, ct, alpha=-2.0).min(1)
        idx[s : s + chunk] = m.indices
        dist[s : s + chunk] = (m.values + (p * p).sum(1)).clamp_min(0.0)
    return idx, dist


def _mean_shift_modes(
    sample: torch.Tensor, seeds: torch.Tensor, bandwidth: float, merge_radius: float, max_iter: int = 30
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat-kernel mean-shift of ``seeds`` over ``sample``; returns merged modes and their support.

    Modes are merged greedily, strongest first, within ``merge_radius``.
    """
    h2 = bandwidth * bandwidth
    st = sample.T.contiguous()
    ss = (sample * sample).sum(1)[None, :]
    # a column of ones: the product with the 0/1 matrix below gives each seed's count beside its
    # sum, without a pass of its own over the (seeds × sample) matrix
    ones = torch.cat([sample, torch.ones(sample.shape[0], 1, dtype=sample.dtype)], 1)
    active = torch.ones(seeds.shape[0], dtype=torch.bool)
    for _ in range(max_iter):
        if not active.any():
            break
        a = seeds[active]
        # |a − s|² ≤ h² as |s|² − 2 a·s ≤ h² − |a|²: one fused product, then the comparison in
        # place (0.0/1.0 in the product's own memory: no boolean copy and no conversion)
        within = torch.addmm(ss, a, st, alpha=-2.0).le_(h2 - (a * a).sum(1, keepdim=True))
        summed = within @ ones
        count = summed[:, -1:]
        new = torch.where(count > 0, summed[:, :-1] / count.clamp_min(1.0), a)
        moved = ((new - a) ** 2).sum(1) > (1e-2 * bandwidth) ** 2
        seeds[active] = new
        idx = torch.nonzero(active).squeeze(1)
        active[idx[~moved]] = False
    return strongest_modes(seeds, st, h2, merge_radius)


def strongest_modes(seeds: torch.Tensor, st: torch.Tensor, h2: float, merge_radius: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Converged ``seeds`` to modes: each one's support (sample columns ``st`` within √h2), then
    greedy suppression, strongest first, of seeds within ``merge_radius`` of a kept one."""
    support = (sq_dist(seeds, st) <= h2).sum(1)
    order = torch.argsort(support, descending=True)
    seeds, support = seeds[order], support[order]
    close = (sq_dist(seeds, seeds.T) < merge_radius**2).numpy()
    suppressed = (support == 0).numpy()
    keep = []
    for i in range(seeds.shape[0]):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= close[i]
    return seeds[keep], support[keep]


def mean_shift(
    points: np.ndarray | torch.Tensor,
    bandwidth: float = 0.5,
    max_points: int = 10000,
    n_seeds: int = 500,
    min_cluster_size: int = 1,
    rounds: int = 3,
    merge_factor: float = 2.0,
    seed: int = 0,
) -> np.ndarray:
    """Cluster ``points`` (N, E); returns labels (N,) in 0..K-1.

    Modes closer than ``merge_factor × bandwidth`` are one cluster: the pull term only keeps an
    object's pixels within δ_v of its mean, so one object's pixels can be up to 2δ_v apart, and
    scikit-learn's merge radius of one bandwidth splits such loose objects (measured in
    tests/test_clustering.py). Points further than ``merge_factor`` bandwidths from every mode get
    up to ``rounds`` rounds of their own; after that they join their nearest mode.
    """
    x = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    n = x.shape[0]
    labels = torch.full((n,), -1, dtype=torch.long)
    if n == 0:
        return labels.numpy()
    g = torch.Generator().manual_seed(seed)
    modes_all = torch.empty((0, x.shape[1]))
    todo = torch.arange(n)
    for _ in range(rounds):
        if todo.numel() < max(1, min_cluster_size):
            break
        pts = x if todo.numel() == n else x[todo]  # the first round: every point, without a copy
        sample = pts[torch.randperm(pts.shape[0], generator=g)[:max_points]]
        seeds = sample[torch.randperm(sample.shape[0], generator=g)[:n_seeds]].clone()
        merge = merge_factor * bandwidth
        modes, _ = _mean_shift_modes(sample, seeds, bandwidth, merge)
        if modes.shape[0] == 0:
            break
        # A new mode within one bandwidth of an old one is the same cluster.
        if modes_all.shape[0]:
            _, d2 = _chunked_nearest(modes, modes_all)
            modes = modes[d2 >= merge**2]
        modes_all = torch.cat([modes_all, modes])
        idx, d2 = _chunked_nearest(pts, modes_all)
        near = d2 <= merge**2
        labels[todo[near]] = idx[near]
        todo = todo[~near]
    if todo.numel() and modes_all.shape[0]:
        # Leftovers after the last round join their nearest mode, as cluster_all=True does.
        idx, _ = _chunked_nearest(x[todo], modes_all)
        labels[todo] = idx
    return labels.numpy()


_EPSILON_SEARCH_BROKEN = False  # set once scikit-learn's ε search has failed in this process


def hdbscan_cluster(
    points: np.ndarray,
    min_cluster_size: int = 50,
    max_points: int = 5000,
    epsilon: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """HDBSCAN (scikit-learn, cluster_selection_epsilon = ``epsilon`` = δ_v) on a random sample
    of ``max_points``; every point then takes the label of its nearest *clustered* sample point.

    The points are foreground pixels (the foreground head decided that), so none of them is
    noise: HDBSCAN's noise samples are left out of the nearest-neighbour reference instead of
    turning pixels into background. ``min_cluster_size`` is in pixels of the full set, scaled
    to the sample. Measured on BBBC039 (docs/benchmarks.md): a 5 000-point sample with this
    assignment matches the hdbscan package on all points in AP50, in about half the time.
    """
    global _EPSILON_SEARCH_BROKEN
    from sklearn.cluster import HDBSCAN

    x = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    g = torch.Generator().manual_seed(seed)
    sel = torch.randperm(n, generator=g)[:max_points]
    frac = sel.numel() / n
    mcs = max(5, int(round(min_cluster_size * frac)))
    if sel.numel() <= mcs:
        return np.zeros(n, dtype=np.int64)
    sample = x[sel].numpy()
    sample_labels = None
    if epsilon > 0 and not _EPSILON_SEARCH_BROKEN:
        try:
            sample_labels = HDBSCAN(min_cluster_size=mcs, cluster_selection_epsilon=epsilon, copy=True).fit_predict(sample)
        except TypeError:
            # scikit-learn 1.9's ε search converts one-element arrays to scalars, which NumPy
            # >= 2.4 refuses ("only 0-dimensional arrays can be converted..."). Without ε,
            # clusters that ε would have joined stay apart; the neighbour merge in postprocess()
            # joins the touching ones (same AP50 on BBBC039). Remembered, so it is paid once.
            _EPSILON_SEARCH_BROKEN = True
    if sample_labels is None:
        sample_labels = HDBSCAN(min_cluster_size=mcs, copy=True).fit_predict(sample)
    clustered = sample_labels >= 0
    if not clustered.any():
        return np.zeros(n, dtype=np.int64)
    idx, _ = _chunked_nearest(x, x[sel[torch.from_numpy(clustered)]])
    return sample_labels[clustered][idx.numpy()].astype(np.int64)


def consistency_filter(
    labels: np.ndarray,
    student_points: np.ndarray,
    teacher_points: np.ndarray,
    bandwidth: float = 0.5,
    iou_threshold: float = 0.6,
    n_anchors: int = 30,
    max_points: int = 20000,
    seed: int = 0,
    against: Literal["student", "cluster"] = "student",
) -> np.ndarray:
    """Drop the clusters on which the EMA teacher does not agree with the student (consistency
    clustering, Wolny et al. 2022; docs/method.md). Dropped pixels become −1.

    ``labels`` (N,) are the student's clusters (−1 = none) of N pixels whose student and teacher
    embeddings are ``student_points`` and ``teacher_points`` (N, E). Up to ``n_anchors`` anchor
    pixels are drawn inside each cluster. Each anchor gives two instance masks, one around its
    embedding in the student and one around its embedding in the teacher, as the consistency
    training term builds them: soft masks exp(−d²/2σ²) with value 0.5 at d = δ_v
    (``bandwidth``). Their agreement is the soft IoU Σ min / Σ max (the IoU itself for binary
    masks): 1 for a teacher identical to the student, about 0.5 where the teacher merges the
    cluster with another of the same size, near 0 where it scatters it. The cluster is kept if
    the median over its anchors is at least ``iou_threshold``. Masks are measured on a random
    sample of ``max_points`` pixels plus the cluster's anchors, so no cluster is missing.

    ``against="cluster"`` is the reference's rule, kept for comparison: the teacher's hard
    δ_v-ball is compared with the student's cluster itself. That tests the student against
    itself as much as the teacher: a δ_v-ball around one pixel covers its cluster only when
    every embedding sits at its object's mean, whereas training only keeps pixels within δ_v of
    the mean (one object's pixels may be 2δ_v apart), and a mean-shift cluster holds several
    look-alike objects. On the shipped sample crops (shipped model, fine-tuned or not) the
    student's *own* δ_v-balls overlap their clusters with a median IoU of about 0.3 (10th–90th
    percentile 0.16–0.59): that rule keeps 2–11 % of the foreground even when the teacher *is*
    the student, and loses nearly every object (docs/method.md).
    """
    if against not in ("student", "cluster"):
        raise SpocoError(f"against must be 'student' or 'cluster', not {against!r}.")
    rng = np.random.default_rng(seed)
    n = labels.shape[0]
    sample = rng.permutation(n)[:max_points]
    in_sample = np.zeros(n, dtype=bool)
    in_sample[sample] = True
    s = torch.as_tensor(np.asarray(student_points), dtype=torch.float32)
    t = torch.as_tensor(np.asarray(teacher_points), dtype=torch.float32)
    lab = torch.as_tensor(labels)
    inv_two_sigma_sq = 1.0 / kernel_two_sigma_sq(bandwidth)
    ref_s, ref_t = s[sample].T.contiguous(), t[sample].T.contiguous()

    def sq_dist_to_ref(x: torch.Tensor, ref: torch.Tensor, a: np.ndarray, extra: np.ndarray) -> torch.Tensor:
        """(anchors, sample + extra) squared distances."""
        xa = x[torch.as_tensor(a)]
        d = sq_dist(xa, ref)
        return torch.cat([d, sq_dist(xa, x[torch.as_tensor(extra)].T.contiguous())], 1) if extra.size else d

    dropped = []
    for k in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == k)
        anchors = rng.choice(members, size=min(n_anchors, members.size), replace=False)
        extra = anchors[~in_sample[anchors]]
        d_teacher = sq_dist_to_ref(t, ref_t, anchors, extra)
        if against == "student":
            # Exponents clamped at −40 (kernel 4e-18): pixels about 6 away (common, with objects
            # pushed 2δ_d apart) would give denormal floats, about 7× slower to compute with.
            soft_t = torch.exp(-(d_teacher * inv_two_sigma_sq).clamp_max(40.0))
            soft_s = torch.exp(-(sq_dist_to_ref(s, ref_s, anchors, extra) * inv_two_sigma_sq).clamp_max(40.0))
            iou = torch.minimum(soft_t, soft_s).sum(1) / torch.maximum(soft_t, soft_s).sum(1).clamp_min(1e-12)
        else:
            ball = d_teacher < bandwidth**2
            cluster = (lab[torch.as_tensor(np.concatenate([sample, extra]))] == int(k))[None, :]
            iou = (ball & cluster).sum(1).float() / (ball | cluster).sum(1).float().clamp_min(1.0)
        if float(torch.median(iou)) < iou_threshold:
            dropped.append(int(k))
    out = labels.copy()
    if dropped:
        out[np.isin(labels, dropped)] = -1
    return out


def cluster_embeddings(
    embeddings: np.ndarray,
    foreground: np.ndarray | None = None,
    config: ClusterConfig | None = None,
    teacher_embeddings: np.ndarray | None = None,
) -> np.ndarray:
    """Turn an embedding image (E, *spatial) into an instance label image (*spatial).

    Background: pixels whose calibrated foreground score is below the threshold are 0. Without a
    foreground map, the largest cluster is taken as background (the reference's rule). Clusters
    are split into connected components (a fully convolutional network gives look-alike objects
    far apart similar embeddings), small pieces removed, optionally expanded, and relabelled 1..N.
    """
    config = config or ClusterConfig()
    if config.method not in METHODS:
        raise SpocoError(f"Unknown clustering method {config.method!r}; choose one of {', '.join(METHODS)}.")
    spatial = embeddings.shape[1:]
    ndim = len(spatial)
    lowest = smallest_piece(ndim)
    min_size = config.min_size if config.min_size is not None else lowest
    if foreground is not None:
        mask = foreground >= config.foreground_threshold
    else:
        mask = np.ones(spatial, dtype=bool)
    flat_idx = np.flatnonzero(mask)
    result = np.zeros(int(np.prod(spatial)), dtype=np.int64)
    if flat_idx.size == 0:
        return np.zeros(spatial, dtype=label_dtype(0))
    pts = embeddings.reshape(embeddings.shape[0], -1)[:, flat_idx].T
    if config.method == "hdbscan":
        lab = hdbscan_cluster(pts, config.hdbscan_min_cluster_size, config.hdbscan_max_points, config.bandwidth,
                              config.seed)
    else:
        lab = mean_shift(pts, config.bandwidth, config.max_points, config.n_seeds, min_size, seed=config.seed)
        if config.method == "consistency":
            if teacher_embeddings is None:
                raise SpocoError("Consistency clustering needs the teacher's embeddings (embed with with_teacher=True).")
            tpts = teacher_embeddings.reshape(teacher_embeddings.shape[0], -1)[:, flat_idx].T
            lab = consistency_filter(lab, pts, tpts, config.bandwidth, config.consistency_iou,
                                     config.consistency_anchors, config.max_points, config.seed)
    if foreground is None and (lab >= 0).any():
        largest = np.bincount(lab[lab >= 0]).argmax()
        lab = np.where(lab == largest, -1, lab)
    result[flat_idx] = lab + 1
    labels = result.reshape(spatial)
    from .boundaries import applies as looks_tiled
    from .shapes import applies

    tiled = looks_tiled(flat_idx.size / labels.size) if config.layout == "auto" else config.layout == "tiled"
    shape = None
    if config.shape_split and foreground is not None and not tiled and applies(config.shape_reference,
                                                                              config.object_size):
        shape = (config.shape_reference, config.object_size, config.concave_split, config.outranked_seeds)
    boundary = convex = None
    if config.boundary_merge and foreground is not None and tiled:
        boundary = (foreground, config.boundary_tolerance)
    elif config.boundary_merge and shape is not None and config.convex_reference:
        convex = (foreground, config.boundary_tolerance, config.convex_reference)
    adaptive = (config.object_size, lowest) if config.adaptive_min_size and config.object_size else None
    grow = (foreground, config.object_size) if config.edge_growth and foreground is not None and config.object_size else None
    return postprocess(labels, min_size, config.split_components, config.expand,
                       embeddings, config.merge_distance, config.max_size, shape, boundary, foreground, adaptive,
                       config.fill_holes, convex, grow)


#: Pieces under this share of an object's size are fragments (``segmentation.auto_min_size``).
FRAGMENT_SHARE = 0.15


def smallest_piece(ndim: int) -> int:
    """The fragment floor where nothing else sets one: 16 pixels in 2D, 64 voxels in 3D."""
    return 16 if ndim == 2 else 64


def adapted_min_size(labels: np.ndarray, min_size: int, painted_median: float, lowest: int) -> int:
    """The fragment floor from the image's own pieces: 15 % of the median piece (pieces of at
    least ``lowest`` pixels) where that is below ``min_size``, never below 15 % of half the
    painted median. Users paint, and suggestions point to, large objects more often than small
    ones; the painted median then moves and a floor that follows it removes true small objects
    (measured on EM: docs/benchmarks.md, "The fragment floor when the painting is skewed")."""
    sizes = np.bincount(labels.ravel())[1:]
    pieces = sizes[sizes >= lowest]
    if pieces.size == 0:
        return min_size
    reference = max(float(np.median(pieces)), 0.5 * painted_median)
    return max(lowest, min(min_size, int(FRAGMENT_SHARE * reference)))


def adjacency(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a < b) of touching labels (face connectivity) and their contact counts, sorted.

    Each contact is one int64 key ``a * (n + 1) + b``: a flat sort is several times faster than
    sorting rows (``np.unique(axis=0)``), and slicing the label image along each axis avoids
    copying it."""
    n = int(labels.max(initial=0))
    keys = []
    for axis in range(labels.ndim):
        after = labels[(slice(None),) * axis + (slice(1, None),)]
        before = labels[(slice(None),) * axis + (slice(None, -1),)]
        sel = (after != before) & (after > 0) & (before > 0)
        x, y = after[sel].astype(np.int64), before[sel].astype(np.int64)
        keys.append(np.minimum(x, y) * (n + 1) + np.maximum(x, y))
    key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    if key.size == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    uniq, counts = np.unique(key, return_counts=True)
    return np.stack([uniq // (n + 1), uniq % (n + 1)], 1), counts


def join_neighbours(neighbours: list, a: int, b: int) -> None:
    """Fragment ``b`` merged into ``a``: ``a`` takes ``b``'s neighbours, and they point at ``a``."""
    nb_a, nb_b = neighbours[a], neighbours[b]
    neighbours[b] = None
    nb_a.discard(b)
    nb_b.discard(a)
    for c in nb_b:
        links = neighbours[c]
        links.discard(b)
        links.add(a)
    nb_a |= nb_b


def merge_similar_neighbours(
    labels: np.ndarray, embeddings: np.ndarray, max_distance: float
) -> np.ndarray:
    """Agglomerate touching fragments whose mean embeddings are closer than ``max_distance``,
    closest pair first, updating means as fragments merge.

    Mean-shift clusters pixels without looking at where they are; an object whose embedding
    drifts across its extent (as after a few minutes of CPU training) comes out in touching
    pieces whose means are still close. Distinct touching objects are pushed 2δ_d apart by
    training; the default ``max_distance`` (ClusterConfig) is half that, δ_d.

    The heap holds one entry per fragment, its nearest neighbour, not one per touching pair: a
    packed mass that one cluster holds whole touches thousands of one-voxel specks, and
    re-pushing every neighbour of the mass at each merge cost 3-41 s per 3D block
    (docs/benchmarks.md, "A hub of specks in the neighbour merge"). An entry is exact while
    neither side has changed; one whose neighbour has changed is a lower bound (the neighbour
    pushed its own nearest when it changed) and is recomputed when popped. The result is the
    closest-pair-first partition (tests/test_clustering.py); each fragment takes the smallest
    original id among its pieces.
    """
    import heapq

    n = int(labels.max(initial=0))
    if n < 2:
        return labels
    flat = labels.ravel()
    inside = np.flatnonzero(flat)  # the sums read labelled pixels only (a fifth of a nuclei image)
    ids = flat[inside]
    size = np.bincount(ids, minlength=n + 1).astype(np.float64)
    emb = embeddings.reshape(embeddings.shape[0], -1)
    sums = np.stack([np.bincount(ids, weights=emb[c, inside], minlength=n + 1) for c in range(len(emb))], 1)
    pairs, _ = adjacency(labels)
    if len(pairs) == 0:
        return labels
    # Python lists and sets: the loop below reads them item by item. Every entry of a
    # neighbour set is a fragment that has not been merged away (merges rewrite the sets).
    parent = list(range(n + 1))
    sizes = size.tolist()
    neighbours: list[set[int] | None] = [set() for _ in range(n + 1)]
    for a, b in pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    means = sums / np.maximum(size, 1.0)[:, None]
    version = [0] * (n + 1)  # bumped when a fragment grows: entries made before are stale

    # every fragment's nearest neighbour at the start, for all pairs at once
    d0 = np.linalg.norm(means[pairs[:, 0]] - means[pairs[:, 1]], axis=1)
    src, dst = np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1], pairs[:, 0]])
    dd = np.concatenate([d0, d0])
    order = np.lexsort((dd, src))
    first = order[np.r_[True, src[order][1:] != src[order][:-1]]]
    first = first[dd[first] < max_distance]
    heap = [(d, x, y, 0, 0) for d, x, y in zip(dd[first].tolist(), src[first].tolist(), dst[first].tolist())]
    heapq.heapify(heap)
    push, pop = heapq.heappush, heapq.heappop

    def push_nearest(x: int) -> None:
        others = list(neighbours[x])
        if not others:
            return
        diff = means[others] - means[x]
        d2 = np.einsum("ij,ij->i", diff, diff)
        k = int(d2.argmin())
        d = float(np.sqrt(d2[k]))
        if d < max_distance:
            y = others[k]
            push(heap, (d, x, y, version[x], version[y]))

    while heap:
        d, x, y, vx, vy = pop(heap)
        if d >= max_distance:
            break  # every entry is at most the distance of the pair it stands for
        if parent[x] != x or version[x] != vx:
            continue  # x was merged away, or has grown and pushed a newer entry
        if parent[y] != y or version[y] != vy:
            push_nearest(x)  # the neighbour changed since: x's nearest, again
            continue
        # the fragment with more neighbours stays, so that fewer neighbour sets are rewritten
        a, b = (x, y) if len(neighbours[x]) >= len(neighbours[y]) else (y, x)
        parent[b] = a
        version[a] += 1
        sums[a] += sums[b]
        sizes[a] += sizes[b]
        means[a] = sums[a] / sizes[a]
        join_neighbours(neighbours, a, b)
        push_nearest(a)
    root = np.asarray(parent)
    while True:  # point every fragment at its final root
        up = root[root]
        if np.array_equal(up, root):
            break
        root = up
    smallest = np.full(n + 1, n + 1, np.int64)
    np.minimum.at(smallest, root, np.arange(n + 1))
    return smallest[root][labels]


def absorb_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Pieces under ``min_size`` join the neighbour they share most boundary with, or vanish."""
    n = int(labels.max(initial=0))
    if n == 0 or min_size <= 1:
        return labels
    size = np.bincount(labels.ravel(), minlength=n + 1)
    small = size < min_size
    small[0] = False
    if not small.any():
        return labels
    pairs, counts = adjacency(labels)
    target = np.arange(n + 1)
    best = np.zeros(n + 1)
    for (a, b), c in zip(pairs, counts):
        for s, o in ((a, b), (b, a)):
            if small[s] and not small[o] and c > best[s]:
                best[s], target[s] = c, o
    target[small & (best == 0)] = 0
    return target[labels]


def postprocess(
    labels: np.ndarray,
    min_size: int,
    split_components: bool = True,
    expand: int = 0,
    embeddings: np.ndarray | None = None,
    merge_distance: float = 0.0,
    max_size: int | None = None,
    shape: tuple[float, float] | tuple[float, float, bool] | tuple[float, float, bool, bool] | None = None,
    boundary: tuple[np.ndarray, float] | None = None,
    foreground: np.ndarray | None = None,
    adaptive: tuple[float, int] | None = None,
    fill_holes: bool = False,
    convex: tuple[np.ndarray, float, float] | None = None,
    grow: tuple[np.ndarray, float] | None = None,
) -> np.ndarray:
    """Clusters to clean instances: split into connected components, merge touching pieces with
    similar mean embeddings, split pieces less convex than ``shape = (reference solidity, object
    size[, concave[, outranked]])`` at their necks (shapes.py; seeded from the confident core of ``foreground`` where it
    is given; with ``concave``, pieces of convex objects it leaves whole between their two deepest
    notches; with ``outranked``, seeded also at peaks outranked within the spacing), drop pieces over ``max_size`` (background), merge touching
    pieces with no boundary between them in ``boundary = (foreground probability, tolerance)``
    (boundaries.py), fold pieces under ``min_size`` into their neighbour (or drop
    them; with ``adaptive = (painted median, lowest floor)`` the floor may come down to the
    pieces' own scale, :func:`adapted_min_size`), with ``convex = (foreground probability,
    tolerance, reference solidity)`` join touching pieces with no boundary between them whose
    union is at least that convex (boundaries.py), with ``fill_holes`` give the background
    enclosed by one instance to it (holes.py), optionally grow instances by ``expand`` pixels
    into the background, with ``grow = (foreground probability, painted object size)`` grow them
    into their uncertain edge (edges.grow_into_edge), and relabel 1..N.

    The size cap looks at connected pieces, not at whole clusters: a fully convolutional network
    gives look-alike objects far apart the same embedding, so one cluster can hold dozens of
    separate cells (measured on ISBI EM: capping whole clusters dropped a third to half of the
    cells, and AP50 swung between 0.23 and 0.54 with the clustering seed).
    """
    labels = np.asarray(labels)
    if split_components and labels.max() > 0:
        from skimage.measure import label as connected_regions

        # One pass over the image: neighbours (face connectivity) with the same id join.
        labels = connected_regions(labels, background=0, connectivity=1).astype(np.int64)
    if embeddings is not None and merge_distance > 0:
        labels = merge_similar_neighbours(labels, embeddings, merge_distance)
    if shape is not None and labels.max() > 0:
        from .shapes import split_by_shape

        labels = split_by_shape(labels, shape[0], shape[1], min_size, foreground,
                                concave=len(shape) > 2 and bool(shape[2]),
                                outranked=len(shape) > 3 and bool(shape[3]))
    if max_size is not None and labels.max() > 0:
        # A piece far larger than any painted object is background the foreground head has not
        # learned yet (early in training): better shown as nothing than as one giant object.
        # Checked after the shape split: a packed mass of touching objects is cut into them
        # first, and only what stays huge is dropped.
        sizes = np.bincount(labels.ravel())
        huge = sizes > max_size
        huge[0] = False
        labels = np.where(huge[labels], 0, labels)
    if boundary is not None and labels.max() > 1:
        from .boundaries import merge_unseparated

        labels = merge_unseparated(labels, boundary[0], boundary[1])
    if adaptive is not None and labels.max() > 0:
        min_size = adapted_min_size(labels, min_size, adaptive[0], adaptive[1])
    if min_size > 1 and labels.max() > 0:
        labels = absorb_small(labels, min_size)
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels = np.where(small[labels], 0, labels)
    if convex is not None and labels.max() > 1:
        from .boundaries import merge_convex_unseparated

        labels = merge_convex_unseparated(labels, *convex)
    if fill_holes and labels.max() > 0:
        from .holes import fill_holes as fill

        labels = fill(labels)
    if expand > 0:
        from skimage.segmentation import expand_labels

        labels = expand_labels(labels, distance=expand)
    if grow is not None and labels.max() > 0:
        from .edges import grow_into_edge

        labels = grow_into_edge(labels, grow[0], grow[1])
    return relabel_sequential(labels)
