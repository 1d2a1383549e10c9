"""Splitting merged objects by shape (shapes.py): what is split, what is kept, and when it applies."""

import numpy as np
import pytest

from napari_spoco.clustering import ClusterConfig, cluster_embeddings
from napari_spoco.errors import SpocoError
from napari_spoco.shapes import (
    _concavities,
    cut_at_concavities,
    object_radius,
    painted_solidities,
    painted_solidity,
    solidity,
    solidity_floor,
    split_by_shape,
)


def disc(shape, centre, radius):
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def pair(shape, ndim_offset=0):
    """Two discs (balls) of radius 10 whose centres are 17 px apart: touching, with a neck."""
    c = [s // 2 for s in shape]
    a, b = list(c), list(c)
    a[-1] -= 8 + ndim_offset
    b[-1] += 9
    return disc(shape, a, 10), disc(shape, b, 10)


def test_solidity_of_a_box_a_disc_and_a_merged_pair():
    box = np.zeros((20, 30), bool)
    box[5:15, 5:25] = True
    assert solidity(box) == pytest.approx(1.0)
    assert solidity(disc((40, 40), (20, 20), 12)) > 0.93
    a, b = pair((40, 80))
    assert solidity(a | b) < 0.9


def test_the_solidity_floor_never_exceeds_the_solidity_and_is_close_for_round_pieces():
    """split_by_shape skips the convex hulls of pieces whose floor is already as convex as the
    reference: a floor above the solidity would leave merged pieces unsplit."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        shape = tuple(int(n) for n in rng.integers(1, 25, size=2))
        noise = ndi.binary_dilation(rng.random(shape) > rng.uniform(0.5, 0.98), iterations=int(rng.integers(0, 3)))
        lab, _ = ndi.label(noise)
        for i, box in enumerate(ndi.find_objects(lab), start=1):
            piece = lab[box] == i
            assert solidity_floor(piece) <= solidity(piece) + 1e-9
            checked += 1
    assert checked > 400
    a, b = pair((40, 80))
    for piece in (disc((40, 40), (20, 20), 12), a | b, np.ones((1, 7), bool), np.eye(9, dtype=bool)):
        assert solidity_floor(piece) <= solidity(piece) + 1e-9
    assert solidity_floor(disc((40, 40), (20, 20), 12)) > 0.85  # a round piece skips its hulls
    ball = disc((20, 20, 20), (10, 10, 10), 6)
    assert solidity_floor(ball) <= solidity(ball) + 1e-9  # 3D: the box alone


def test_a_merged_pair_is_split_in_two_and_single_objects_are_kept(ndim=2):
    shape = (48, 96) if ndim == 2 else (32, 32, 64)
    a, b = pair(shape)
    size = float(a.sum())
    labels = np.zeros(shape, np.int64)
    labels[a | b] = 1
    out = split_by_shape(labels, reference=0.93, object_size=size, min_size=int(0.15 * size))
    ids = [i for i in np.unique(out) if i]
    assert len(ids) == 2
    for obj in (a, b):  # each part is one of the discs, near enough
        best = max((out == i)[obj].sum() / ((out == i) | obj).sum() for i in ids)
        assert best > 0.85

    ellipse = np.zeros(shape, np.int64)  # one elongated, convex object: no neck, no cut
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    c = [s // 2 for s in shape]
    ellipse[sum(((g - cc) / r) ** 2 for g, cc, r in zip(grid, c, [8] * (ndim - 1) + [30])) <= 1] = 4
    out = split_by_shape(ellipse, reference=0.93, object_size=size, min_size=int(0.15 * size))
    assert set(np.unique(out)) == {0, 4}


def test_a_merged_pair_of_balls_is_split_in_3d():
    test_a_merged_pair_is_split_in_two_and_single_objects_are_kept(ndim=3)


def test_a_piece_is_tried_below_the_painted_reference_or_try_below_and_its_seeds_decide():
    # Painted objects as irregular as phase-contrast cells or occluded leaves set a low reference
    # (0.6); a touching pair (0.87 convex) is still tried below shapes.TRY_BELOW, and its two
    # seeds cut it (docs/method.md, "Splitting merged objects by shape").
    from napari_spoco import shapes

    a, b = pair((48, 96))
    labels = (a | b).astype(np.int64)
    assert shapes.TRY_BELOW == 0.9 and solidity(a | b) < 0.9
    out = split_by_shape(labels, reference=0.6, object_size=float(a.sum()), min_size=20)
    assert len(set(np.unique(out)) - {0}) == 2
    # a bar as convex as a box is not tried, although its flat ridge has a seed every radius ...
    bar = np.zeros((30, 120), np.int64)
    bar[10:20, 5:115] = 1
    out = split_by_shape(bar, reference=0.6, object_size=80.0, min_size=10)
    assert set(np.unique(out)) == {0, 1}
    # ... which would cut it if it were tried: the gate is what keeps it whole
    out = split_by_shape(bar, reference=1.01, object_size=80.0, min_size=10)
    assert len(set(np.unique(out)) - {0}) >= 2


def test_painted_solidity_is_a_low_percentile_of_the_painted_objects():
    lab = np.zeros((60, 120), np.int32)
    for k, x in enumerate(range(15, 120, 30), start=1):
        lab[disc(lab.shape, (30, x), 10)] = k
    assert painted_solidity([lab]) > 0.9
    assert painted_solidity([np.zeros((10, 10), np.int32)]) is None
    # a square and a thin L: the percentiles lie between them, measured once or each time
    lab[5:15, 5:15] = 5
    lab[40:58, 5:8] = 6
    lab[55:58, 5:30] = 6
    values = painted_solidities([lab])
    assert len(values) == 6 and min(values) < 0.5
    for q in (10, 50):
        assert painted_solidity([lab], q, values=values) == painted_solidity([lab], q)
    assert painted_solidity([lab], 10) < painted_solidity([lab], 50)
    assert object_radius(np.pi * 100, 2) == pytest.approx(10)


def clustered(shape, fg_mask, **kw):
    """One embedding for every pixel (mean-shift finds one cluster), foreground = fg_mask."""
    emb = np.zeros((4,) + shape, np.float32)
    return cluster_embeddings(emb, fg_mask.astype(np.float32), ClusterConfig(min_size=20, **kw))


def test_clustering_splits_by_shape_only_with_the_models_reference_and_on_background():
    a, b = pair((96, 160))
    size = float(a.sum())
    kw = dict(object_size=size, shape_reference=0.93)
    assert clustered((96, 160), a | b).max() == 1  # no reference: as before
    assert clustered((96, 160), a | b, **kw).max() == 2
    assert clustered((96, 160), a | b, shape_split=False, **kw).max() == 1
    # the same pair filling most of a small image: objects tile it, necks are no evidence
    a2, b2 = pair((22, 40))
    assert (a2 | b2).mean() > 0.5
    assert clustered((22, 40), a2 | b2, **kw).max() == 1
    assert split_by_shape((a2 | b2).astype(np.int64), 0.93, size, 20).max() == 2  # the gate, not the shape


def test_cluster_config_refuses_unusable_shape_settings():
    with pytest.raises(SpocoError, match="shape_reference"):
        ClusterConfig(shape_reference=1.5)
    with pytest.raises(SpocoError, match="object_size"):
        ClusterConfig(object_size=-3)
    with pytest.raises(SpocoError, match="shape_split"):
        ClusterConfig(shape_split="yes")
    with pytest.raises(SpocoError, match="outranked_seeds"):
        ClusterConfig(outranked_seeds=1)


def test_training_records_the_painted_convexity_and_segment_uses_it(tmp_path):
    from napari_spoco import TrainConfig, segment, train
    from napari_spoco.io import load_model, save_model
    from napari_spoco.model import ModelConfig

    rng = np.random.default_rng(0)
    image = rng.normal(0.1, 0.02, (96, 96)).astype(np.float32)
    sparse = np.zeros((96, 96), np.int32)
    for k, (y, x) in enumerate([(24, 24), (24, 70), (70, 46)], start=1):
        d = disc(image.shape, (y, x), 10)
        image[d] = 1.0
        sparse[d] = k
    model = train([image], [sparse], TrainConfig(steps=2, batch_size=2, patch_shape=(32, 32), device="cpu"),
                  model_config=ModelConfig(base_features=8, depth=2))
    assert 0.9 < model.history["object_solidity"] <= 1.0
    loaded = load_model(save_model(model, tmp_path / "m.spoco.pt"))
    assert loaded.history["object_solidity"] == model.history["object_solidity"]
    seen = {}
    import napari_spoco.segmentation as segmentation

    real = segmentation.cluster_embeddings

    def spy(embeddings, foreground, config, *rest):
        seen["config"] = config
        return real(embeddings, foreground, config, *rest)

    segmentation.cluster_embeddings = spy
    try:
        segment(loaded, image, device="cpu")
    finally:
        segmentation.cluster_embeddings = real
    assert seen["config"].shape_reference == loaded.history["object_solidity"]
    assert seen["config"].object_size == loaded.history["object_size_median"]
    # the median painted object's convexity, for the convex merge (boundaries.py)
    median = loaded.history["object_solidity_median"]
    assert loaded.history["object_solidity"] <= median <= 1.0
    assert seen["config"].convex_reference == median
    # three round painted discs each have one peak: the split may seed at outranked peaks
    assert loaded.history["single_peaked"] is True
    assert seen["config"].outranked_seeds is True


def test_a_model_file_with_an_unusable_convexity_is_refused(tmp_path):
    from napari_spoco.io import load_model, save_model
    from napari_spoco.model import ModelConfig, SpocoModel

    model = SpocoModel.new(ModelConfig(base_features=4, depth=2))
    model.history["object_solidity"] = 3.0
    path = save_model(model, tmp_path / "m.spoco.pt")
    with pytest.raises(SpocoError, match="object_solidity"):
        load_model(path)
    model.history["object_solidity"] = 0.9
    model.history["object_solidity_median"] = "round"
    path = save_model(model, tmp_path / "m2.spoco.pt")
    with pytest.raises(SpocoError, match="object_solidity_median"):
        load_model(path)
    model.history["object_solidity_median"] = 0.95
    model.history["single_peaked"] = "yes"
    path = save_model(model, tmp_path / "m3.spoco.pt")
    with pytest.raises(SpocoError, match="single_peaked"):
        load_model(path)


def test_with_a_foreground_map_the_seeds_come_from_its_confident_core():
    """One elongated piece whose distance transform has a single peak is kept whole; where the
    head marks a contact across it (a dim line), the confident core falls in two and the piece
    is cut there. (The convexity gate is opened with a reference above 1: this is the seeds.)"""
    grid = np.ogrid[:40, :80]
    ellipse = ((grid[0] - 20) / 10.0) ** 2 + ((grid[1] - 40) / 30.0) ** 2 <= 1
    labels = ellipse.astype(np.int64)
    half = float(ellipse.sum()) / 2
    fg = np.where(ellipse, 0.98, 0.0)
    fg[:, 40] = np.where(ellipse[:, 40], 0.4, 0.0)
    assert set(np.unique(split_by_shape(labels, 1.01, half, 20))) == {0, 1}
    out = split_by_shape(labels, 1.01, half, 20, foreground=fg)
    assert len(np.unique(out)) == 3
    assert set(np.unique(out[:, :39])) - {0} != set(np.unique(out[:, 42:])) - {0}  # the cut is at the line
    assert abs(int(np.flatnonzero(out[20, 1:] != out[20, :-1])[1]) - 40) <= 1
    # no dim line: the same map does not cut
    assert set(np.unique(split_by_shape(labels, 1.01, half, 20, foreground=np.where(ellipse, 0.98, 0.0)))) == {0, 1}


def test_balls_merged_along_a_diagonal_are_split_in_3d():
    """Seeds are at least a painted radius apart in Euclidean distance: two merged balls whose
    centres are 1.5 radii apart along the space diagonal are 0.87 radii apart on each axis, so a
    cube of one radius (scikit-image's default footprint) kept one seed for both (this test
    failed with it)."""
    shape, r = (40, 40, 40), 8.0
    step = 1.5 * r / (2 * np.sqrt(3))
    a = disc(shape, [20 - step] * 3, r)
    b = disc(shape, [20 + step] * 3, r) & ~a
    labels = (a | b).astype(np.int64)
    out = split_by_shape(labels, reference=0.97, object_size=float(disc(shape, (20, 20, 20), r).sum()), min_size=50)
    ids = [i for i in np.unique(out) if i]
    assert len(ids) == 2
    for obj in (a, b):
        assert max((out == i)[obj].sum() / ((out == i) | obj).sum() for i in ids) > 0.8


def test_spaced_peaks_are_the_highest_points_within_the_spacing_and_that_far_apart():
    """Against the definition, point by point: positive, highest within ``spacing`` (Euclidean)
    of itself, and no higher kept peak within ``spacing``."""
    from scipy import ndimage as ndi

    from napari_spoco.shapes import spaced_peaks

    rng = np.random.default_rng(3)
    for ndim, spacing in ((2, 2.5), (2, 4.2), (3, 2.2), (3, 3.7)):
        shape = (24,) * ndim
        inside = ndi.gaussian_filter(rng.random(shape), 2) > 0.5
        values = np.where(inside, ndi.gaussian_filter(rng.random(shape), 1.5) - 0.45, 0.0)
        pts = np.argwhere(inside & (values > 0))
        order = np.argsort(-values[tuple(pts.T)], kind="stable")
        expected = []
        for p in pts[order]:
            near = pts[((pts - p) ** 2).sum(1) <= spacing**2]
            if values[tuple(near.T)].max() > values[tuple(p)]:
                continue
            if any(((q - p) ** 2).sum() <= spacing**2 for q in expected):
                continue
            expected.append(p)
        got = spaced_peaks(values, inside, spacing)
        assert len(expected) > 3
        assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, np.array(expected).tolist()))


def _dynamics(values: np.ndarray, inside: np.ndarray) -> dict[tuple, float]:
    """Every regional maximum's dynamic by a union-find over the pixels from the highest down
    (face neighbours; the highest maximum gets inf): how far one must descend from it to reach
    something higher. An independent check of ``shapes._is_peak``'s flood."""
    flat = np.flatnonzero(inside)
    order = flat[np.argsort(-values.ravel()[flat], kind="stable")]
    parent = {}
    top = {}  # root -> (height, pixel) of its highest point

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    dyn = {}
    strides = np.array(values.strides) // values.itemsize
    for i in order:
        parent[i], top[i] = i, (values.flat[i], i)
        coord = np.unravel_index(i, values.shape)
        for ax in range(values.ndim):
            for d in (-1, 1):
                c = coord[ax] + d
                if not 0 <= c < values.shape[ax]:
                    continue
                j = i + d * strides[ax]
                if j not in parent:
                    continue
                a, b = find(i), find(j)
                if a == b:
                    continue
                low, high = sorted((a, b), key=lambda r: top[r])
                if top[low][1] != i:  # a maximum meets higher ground here
                    dyn[top[low][1]] = top[low][0] - values.flat[i]
                parent[low] = high
    for r in {find(i) for i in order}:
        dyn[top[r][1]] = np.inf
    return {np.unravel_index(k, values.shape): v for k, v in dyn.items()}


def test_spaced_peaks_with_a_dynamic_keep_outranked_peaks_of_that_depth():
    """Against the definition: a local maximum that the ball rule drops is a seed where its
    dynamic reaches ``min_dynamic`` and no kept seed lies within ``spacing``; with
    ``min_dynamic`` the ball rule's seeds are all still there."""
    from scipy import ndimage as ndi

    from napari_spoco.shapes import spaced_peaks

    rng = np.random.default_rng(5)
    added = {}
    got = ball = np.zeros((0, 2), np.int64)  # the seeds of the case before, for the median case
    for ndim, spacing, depth in ((2, 4.2, 0.0), (2, 4.2, "median"), (3, 3.7, 0.0)):
        shape = (24,) * ndim
        if depth != "median":  # the median case looks at the field of the case before
            inside = ndi.gaussian_filter(rng.random(shape), 2) > 0.5
            values = np.where(inside, ndi.gaussian_filter(rng.random(shape), 1.5) - 0.45, 0.0)
            dyn = _dynamics(np.where(inside, values, -np.inf), inside)
        else:  # a depth that some of the peaks added at depth 0 reach and others do not (the flood)
            depth = float(np.median([dyn[tuple(p)] for p in set(map(tuple, got.tolist())) - set(map(tuple, ball.tolist()))]))
        pts = np.argwhere(inside & (values > 0))
        order = np.argsort(-values[tuple(pts.T)], kind="stable")
        expected = []
        for p in pts[order]:
            if any(((q - p) ** 2).sum() <= spacing**2 for q in expected):
                continue
            near = pts[((pts - p) ** 2).sum(1) <= spacing**2]
            highest = values[tuple(near.T)].max() <= values[tuple(p)]
            local = values[tuple(p)] >= ndi.maximum_filter(np.where(inside, values, -np.inf), 3)[tuple(p)]
            if highest or (local and dyn.get(tuple(p), -1.0) >= depth):
                expected.append(p)
        ball = spaced_peaks(values, inside, spacing)
        got = spaced_peaks(values, inside, spacing, min_dynamic=depth)
        assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, np.array(expected).tolist()))
        assert set(map(tuple, ball.tolist())) <= set(map(tuple, got.tolist()))
        added[(ndim, depth > 0)] = len(got) - len(ball)
    assert all(n > 0 for n in added.values()), added  # each case exercised the rule
    assert added[(2, True)] < added[(2, False)]  # and the depth told peaks apart


def test_overlapping_unequal_balls_are_split_from_the_lower_centre():
    """Packed nuclei overlap: a ball of radius 8 whose centre lies 14 voxels from that of a ball
    of radius 11. Within a painted radius of the smaller centre the distance transform rises
    toward the larger one, so the ball rule finds one seed; the smaller centre is still a peak
    of its own, and the pair is cut (docs/method.md, "Splitting merged objects by shape")."""
    from napari_spoco.shapes import split_by_shape

    shape = (36, 36, 48)
    a = disc(shape, (18, 18, 16), 11)
    b = disc(shape, (18, 18, 30), 8) & ~a
    labels = (a | b).astype(np.int64)
    size = float(disc(shape, (18, 18, 24), 10).sum())
    assert len(np.unique(split_by_shape(labels, 0.97, size, min_size=50))) == 2  # the ball rule: whole
    out = split_by_shape(labels, 0.97, size, min_size=50, outranked=True)
    ids = [i for i in np.unique(out) if i]
    assert len(ids) == 2
    for obj in (a, b):
        assert max((out == i)[obj].sum() / ((out == i) | obj).sum() for i in ids) > 0.75


def test_single_peaked_painted_objects_and_irregular_ones():
    """Round painted objects each have one peak: True. A painted object shaped as the
    overlapping unequal pair above (an irregular cell with two lobes) has two: False, unless it
    is one among more than ``MAX_TWO_PEAKED``'s share of round ones. Objects cut by the image's
    edge say nothing; none left: None."""
    from napari_spoco.shapes import MAX_TWO_PEAKED, single_peaked

    shape = (40, 40, 56)
    round_ = np.zeros(shape, np.int64)
    round_[disc(shape, (20, 20, 14), 9)] = 1
    round_[disc(shape, (20, 20, 40), 10)] = 2
    size = float(disc(shape, (20, 20, 20), 10).sum())
    assert single_peaked([round_], size) is True
    lobed = np.zeros(shape, np.int64)
    lobed[disc(shape, (20, 20, 20), 11) | disc(shape, (20, 20, 34), 8)] = 1
    assert single_peaked([round_, lobed], size) is False
    many = int(np.ceil(1 / MAX_TWO_PEAKED))  # one lobed object among this many round ones passes
    assert single_peaked([round_] * (many // 2) + [lobed], size) is True
    assert single_peaked([round_] * (many // 2 - 2) + [lobed], size) is False
    assert single_peaked([lobed[:, :, 10:]], size) is None  # cut by the edge
    assert single_peaked([round_], None) is None
    yy, xx = np.mgrid[:64, :64]
    flat = ((yy - 32) ** 2 + (xx - 30) ** 2 <= 12**2).astype(np.int64)
    assert single_peaked([flat], float(flat.sum())) is True  # 2D


def test_segment_seeds_at_outranked_peaks_only_where_the_painted_objects_allow_it():
    """The model's record turns the rule on; without it (older models) or where painted objects
    had two peaks, the ball rule alone."""
    from napari_spoco.model import ModelConfig, SpocoModel
    from napari_spoco.segmentation import model_cluster_config

    model = SpocoModel.new(ModelConfig(base_features=4, depth=2))
    model.history.update(object_size_median=300.0, object_solidity=0.9)
    assert model_cluster_config(model).outranked_seeds is False  # no record
    model.history["single_peaked"] = False
    assert model_cluster_config(model).outranked_seeds is False
    model.history["single_peaked"] = True
    assert model_cluster_config(model).outranked_seeds is True
    assert model_cluster_config(model, ClusterConfig(outranked_seeds=False)).outranked_seeds is False


def test_the_outranked_seeds_follow_their_switch_in_postprocess():
    from napari_spoco.clustering import postprocess

    shape = (36, 36, 48)
    a = disc(shape, (18, 18, 16), 11)
    b = disc(shape, (18, 18, 30), 8) & ~a
    labels = (a | b).astype(np.int64)
    size = float(disc(shape, (18, 18, 24), 10).sum())
    assert postprocess(labels, 50, shape=(0.97, size, False, False)).max() == 1
    assert postprocess(labels, 50, shape=(0.97, size, False, True)).max() == 2


def unequal_pair():
    """An elongated nucleus pressed on a larger round one: the contact is as wide as the smaller
    object, so the distance transform rises from the small one into the large one with a single
    peak, but the outline keeps a notch on each side of the contact."""
    yy, xx = np.mgrid[:64, :48]
    top = ((yy - 18) / 12.0) ** 2 + ((xx - 22) / 9.0) ** 2 <= 1
    low = (yy - 42) ** 2 + (xx - 24) ** 2 <= 16**2
    return top, low


def test_a_pair_whose_distance_transform_has_one_peak_is_cut_between_its_notches():
    top, low = unequal_pair()
    labels = (top | low).astype(np.int64)
    size = float(np.median([top.sum(), low.sum()]))
    assert set(np.unique(split_by_shape(labels, 0.9, size, int(0.15 * size)))) == {0, 1}  # one peak
    out = split_by_shape(labels, 0.9, size, int(0.15 * size), concave=True)
    ids = [i for i in np.unique(out) if i]
    assert len(ids) == 2
    assert ((out > 0) == (labels > 0)).all()  # every pixel stays in one of the parts
    for obj in (top, low):
        best = max(((out == i) & obj).sum() / ((out == i) | obj).sum() for i in ids)
        assert best > 0.85


def test_concavities_are_not_cut_where_they_are_no_evidence_of_a_contact():
    top, low = unequal_pair()
    labels = (top | low).astype(np.int64) * 3
    size = float(np.median([top.sum(), low.sum()]))
    # painted objects that are not convex (phase-contrast cells, EM profiles): notches are their own
    assert (split_by_shape(labels, 0.7, size, 20, concave=True) == labels).all()
    # notches shallower than a third of the painted radius: a pixelated outline
    assert (split_by_shape(labels, 0.9, size * 4, 20, concave=True) == labels).all()
    # a bean-shaped nucleus has one notch; a hole enclosed by the piece is not a second one
    yy, xx = np.mgrid[:64, :64]
    bean = ((yy - 32) ** 2 + (xx - 30) ** 2 <= 16**2) & ~((yy - 32) ** 2 + (xx - 50) ** 2 <= 10**2)
    assert len(_concavities(np.pad(bean, 1))) >= 1
    holed = bean & ~((yy - 32) ** 2 + (xx - 24) ** 2 <= 3**2)
    for piece in (bean, holed):
        assert cut_at_concavities(np.pad(piece, 1), 0.8, 2.0, 20) is None
        assert [d for d, _ in _concavities(np.pad(piece, 1)) if d >= 2.0] == [_concavities(np.pad(piece, 1))[0][0]]
    # 3D pieces keep the distance-transform split alone
    ball = np.zeros((8, 64, 48), np.int64)
    ball[:, top | low] = 1
    assert (split_by_shape(ball, 0.9, size * 8, 20, concave=True) == split_by_shape(ball, 0.9, size * 8, 20)).all()


def test_the_concave_split_follows_its_switch_in_postprocess():
    from napari_spoco.clustering import postprocess

    top, low = unequal_pair()
    labels = (top | low).astype(np.int64)
    size = float(np.median([top.sum(), low.sum()]))
    on = postprocess(labels, min_size=20, shape=(0.9, size, True))
    off = postprocess(labels, min_size=20, shape=(0.9, size, False))
    assert (postprocess(labels, min_size=20, shape=(0.9, size)) == off).all()  # two-value form: off
    assert on.max() == 2 and off.max() == 1
    with pytest.raises(SpocoError):
        ClusterConfig(concave_split="yes")
