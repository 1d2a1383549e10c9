"""Input validation, normalisation, the label convention and patch sampling."""

import numpy as np
import pytest

from napari_spoco.data import (
    PatchSampler,
    check_image,
    check_labels,
    normalize,
    object_rings,
    prepare_training_data,
    relabel_sequential,
    split_background,
)
from napari_spoco.errors import SpocoError


def test_rgb_becomes_grey_and_4d_is_refused():
    rgb = np.zeros((10, 12, 3), np.uint8)
    assert check_image(rgb).shape == (10, 12)
    with pytest.raises(SpocoError, match="2D .* or 3D"):
        check_image(np.zeros((2, 3, 8, 8)))


def test_nan_and_non_numeric_images_are_refused_with_advice():
    img = np.ones((8, 8), np.float32)
    img[2, 2] = np.nan
    with pytest.raises(SpocoError, match="NaN"):
        check_image(img)
    with pytest.raises(SpocoError, match="numeric"):
        check_image(np.array([["a", "b"], ["c", "d"]]))


def test_labels_must_match_shape_and_be_whole_non_negative_numbers():
    with pytest.raises(SpocoError, match="does not match"):
        check_labels(np.zeros((4, 4)), (5, 5))
    with pytest.raises(SpocoError, match="whole numbers"):
        check_labels(np.full((4, 4), 0.5), (4, 4))
    with pytest.raises(SpocoError, match=">= 0"):
        check_labels(np.full((4, 4), -1), (4, 4))


def test_normalize_maps_percentiles_to_zero_and_one():
    img = np.arange(1000, dtype=np.float32).reshape(10, 100)
    n = normalize(img, 0, 100)
    assert n.dtype == np.float32
    assert n.min() == pytest.approx(0) and n.max() == pytest.approx(1)
    assert np.isfinite(normalize(np.zeros((5, 5)))).all()  # constant image: no division by zero


def test_background_value_is_split_from_objects():
    lab = np.array([[0, 1, 9], [2, 9, 0]])
    obj, bg = split_background(lab, 9)
    assert obj.tolist() == [[0, 1, 0], [2, 0, 0]]
    assert bg.tolist() == [[False, False, True], [False, True, False]]


def test_rings_lie_just_outside_painted_objects():
    obj = np.zeros((9, 9), int)
    obj[4, 4] = 1
    ring = object_rings(obj, 1)
    assert ring.sum() == 4 and not ring[4, 4]


def test_default_negatives_are_background_and_the_pixels_touching_a_painted_object():
    """The foreground head's known negatives by default: painted background plus a 1-px ring
    (docs/method.md), so a pixel two steps from a painted object stays unlabelled."""
    image = np.random.default_rng(0).random((20, 20))
    lab = np.zeros((20, 20), int)
    lab[4:7, 4:7], lab[12:15, 12:15], lab[0, 19] = 1, 2, 9
    (prepared,) = prepare_training_data([image], [lab], background_label=9)
    assert prepared.negatives[0, 19] and prepared.negatives[7, 5] and prepared.negatives[11, 13]
    assert not prepared.negatives[8, 5] and not prepared.negatives[7, 7]  # two steps; a diagonal
    assert not (prepared.negatives & (prepared.objects > 0)).any()
    assert prepared.negatives.sum() == 1 + 2 * 12


def test_relabel_sequential_keeps_zero_and_compacts_ids():
    out = relabel_sequential(np.array([[0, 7], [3, 7]]))
    assert out.tolist() == [[0, 2], [1, 2]] and out.dtype == np.uint16


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.uint32, np.uint64])
def test_relabel_sequential_counts_ids_of_every_integer_type(dtype):
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 3, 9, 200, 201], dtype), size=(30, 40))
    labels[0, 0] = 0
    out = relabel_sequential(labels)
    ids = np.unique(labels[labels > 0])
    expected = np.searchsorted(ids, labels) + 1
    assert np.array_equal(out, np.where(labels > 0, expected, 0)) and out.dtype == np.uint16
    assert relabel_sequential(np.zeros((4, 5), dtype)).max() == 0


def test_training_sets_without_two_objects_are_refused(tiny_pair):
    image, sparse, _ = tiny_pair
    with pytest.raises(SpocoError, match="no painted objects"):
        prepare_training_data([image], [np.zeros_like(sparse)])
    with pytest.raises(SpocoError, match="one painted object"):
        prepare_training_data([image], [np.where(sparse == 1, 1, 0)])
    with pytest.raises(SpocoError, match="2 images but 1"):
        prepare_training_data([image, image], [sparse])
    with pytest.raises(SpocoError, match="2D and 3D"):
        prepare_training_data([image, np.zeros((4, 8, 8))], [sparse, np.ones((4, 8, 8), int)])


def test_patches_have_the_requested_shape_even_from_small_images(tiny_pair):
    image, sparse, _ = tiny_pair
    data = prepare_training_data([image], [sparse])
    sampler = PatchSampler(data, (96, 80), seed=0)
    img, obj, bg, neg = sampler.batch(5)
    assert img.shape == (5, 1, 96, 80) and obj.shape == (5, 96, 80)
    assert (obj > 0).any()


def test_patches_mostly_contain_painted_objects(tiny_pair):
    image, sparse, _ = tiny_pair
    big = np.pad(image, 200, mode="constant")
    big_lab = np.pad(sparse, 200)
    data = prepare_training_data([big], [big_lab])
    sampler = PatchSampler(data, (32, 32), object_fraction=0.8, seed=0)
    hits = np.mean([(sampler.sample()[1] > 0).any() for _ in range(200)])
    assert hits > 0.7  # random 32² crops of this 464² image would hit labels ~5% of the time


def test_patches_visit_painted_background_strokes_as_asked(tiny_pair):
    """A correction stroke in a corner of a large image: patches not centred on an object are
    centred on it at the share asked; at 0 (the default) the patches are those of the same image
    with nothing painted there."""
    image, sparse, _ = tiny_pair
    big = np.pad(image, ((0, 400), (0, 400)), mode="constant")
    big_lab = np.pad(sparse, ((0, 400), (0, 400)))
    big_lab[-20:, -40:] = 99  # the stroke, far from the painted objects
    data = prepare_training_data([big], [big_lab], background_label=99)

    def stroke_share(**kw):
        sampler = PatchSampler(data, (32, 32), object_fraction=0.0, seed=0, **kw)
        return np.mean([sampler.sample()[2].any() for _ in range(300)])

    # random 32² crops of this 464² image would hit it ~1% of the time
    assert 0.35 < stroke_share(background_fraction=0.5) < 0.65
    assert stroke_share(background_fraction=1.0) == 1.0
    assert stroke_share() < 0.1
    # off, or on with nothing painted as background: the patches of the sampling without it
    plain = prepare_training_data([big], [np.where(big_lab == 99, 0, big_lab)])
    ref = PatchSampler(plain, (32, 32), seed=3).batch(40)
    for d, f in ((data, 0.0), (plain, 0.5)):
        got = PatchSampler(d, (32, 32), seed=3, background_fraction=f).batch(40)
        assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])


def test_mark_background_paints_only_unlabelled_pixels_of_the_chosen_instances():
    from napari_spoco.data import mark_background

    sparse = np.zeros((10, 10), np.uint16)
    sparse[0:3, 0:3] = 1  # painted object
    pred = np.zeros((10, 10), np.int32)
    pred[0:4, 0:4] = 1  # overlaps the painted object: only its unpainted pixels become background
    pred[6:9, 6:9] = 2  # not chosen
    out, marked = mark_background(sparse, pred, [1, 5], background_label=300)
    assert marked == 1 and out.dtype == sparse.dtype
    assert np.array_equal(out[0:3, 0:3], sparse[0:3, 0:3]) and out[3, 3] == 300 and out[0, 3] == 300
    assert (out[6:9, 6:9] == 0).all() and (out == 300).sum() == 16 - 9
    out, marked = mark_background(sparse, pred, None, background_label=300)  # every instance
    assert marked == 2 and (out[6:9, 6:9] == 300).all()
    again, marked = mark_background(out, pred, None, background_label=300)  # nothing left to paint
    assert marked == 0 and np.array_equal(again, out)
    with pytest.raises(SpocoError, match="cannot hold the background value"):
        mark_background(sparse.astype(np.uint8), pred, [1], background_label=300)
    with pytest.raises(SpocoError, match="positive whole number"):
        mark_background(sparse, pred, [1], background_label=0)
    with pytest.raises(SpocoError, match="different shapes"):
        mark_background(sparse, pred[:5], [1], background_label=300)


def test_promote_instances_fills_only_unlabelled_pixels_with_fresh_ids():
    from napari_spoco.data import promote_instances

    sparse = np.zeros((10, 10), np.uint32)
    sparse[0:3, 0:3] = 1  # painted object
    sparse[9, 9] = 7  # painted background value
    pred = np.zeros((10, 10), np.uint16)
    pred[0:4, 0:4] = 1  # touches painted object 1: skipped
    pred[5:8, 5:10] = 2  # free: promoted, except the background-painted pixel it does not cover
    pred[8:10, 8:10] = 3  # covers the background pixel: promoted around it
    out, promoted, skipped = promote_instances(sparse, pred, None, background_label=7)
    assert (promoted, skipped) == (2, 1)
    assert out[9, 9] == 7 and np.array_equal(out[0:3, 0:3], sparse[0:3, 0:3])
    assert set(np.unique(out[5:8, 5:10])) == {2} and out[8, 8] == 3  # fresh ids, 7 skipped
    assert out.dtype == sparse.dtype and sparse.max() == 7  # input untouched


def test_promote_selected_instance_only_and_shape_mismatch_is_refused():
    from napari_spoco.data import promote_instances

    sparse = np.zeros((6, 6), np.uint16)
    pred = np.zeros((6, 6), np.uint16)
    pred[0:2, 0:2], pred[3:5, 3:5] = 4, 5
    out, promoted, _ = promote_instances(sparse, pred, [5])
    assert promoted == 1 and set(np.unique(out)) == {0, 1} and out[3, 3] == 1
    with pytest.raises(SpocoError, match="different shapes"):
        promote_instances(sparse, pred[:5])


def test_normalize_with_a_given_range_matches_the_whole_image():
    from napari_spoco.data import intensity_range, normalize

    image = np.random.default_rng(0).gamma(2.0, 50.0, (64, 64)).astype(np.float32)
    whole = normalize(image)
    crop = normalize(image[10:30, 20:40], value_range=intensity_range(image))
    assert np.allclose(crop, whole[10:30, 20:40])


def test_count_objects_leaves_out_unlabelled_and_painted_background():
    from napari_spoco.data import count_objects

    labels = np.array([[0, 1, 1, 65535], [7, 7, 0, 65535]], np.uint16)
    assert count_objects(labels) == 3  # 65535 is an id when no background value is given
    assert count_objects(labels, background_label=65535) == 2
    assert count_objects(np.zeros((4, 4), np.uint8)) == 0


def test_cli_and_gui_read_their_choices_and_defaults_from_the_library():
    from napari_spoco.cli import _parser as build_parser
    from napari_spoco.clustering import METHODS, ClusterConfig
    from napari_spoco.model import DEVICES

    args = build_parser().parse_args(["predict", "--model", "m", "--images", "i", "--out", "o"])
    defaults = ClusterConfig()
    assert (args.method, args.bandwidth, args.foreground_threshold, args.expand) == (
        defaults.method, defaults.bandwidth, defaults.foreground_threshold, defaults.expand)
    actions = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["predict"]._actions}
    assert tuple(actions["method"].choices) == METHODS and tuple(actions["device"].choices) == DEVICES
