"""Training patches zoomed in Y and X (data.PatchSampler.enable_scale_jitter, data._zoom_patch):
objects keep their ids and grow or shrink with the zoom, the negatives are the ring of the zoomed
objects (never a resized ring), and off means the patches of before."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_spoco.data import PatchSampler, _zoom_patch, object_rings, prepare_training_data
from napari_spoco.errors import SpocoError
from napari_spoco.training import (
    FEW_PAINTED,
    SCALE_JITTER,
    TrainConfig,
    pretrain_config,
    scale_jitter_for,
    scale_jitter_note,
)


def _discs(shape=(160, 160), centres=((40, 40), (100, 110), (50, 120)), radius=12):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i
    labels[140:150, 10:40] = 9  # painted background
    rng = np.random.default_rng(0)
    image = (labels > 0) * (100.0 + 20 * rng.random(shape)) + 5 * rng.random(shape)
    return image.astype(np.float32), labels


@pytest.mark.parametrize("src", [40, 90])
def test_zoomed_patch_scales_objects_and_redraws_the_ring(src):
    image, labels = _discs()
    data = prepare_training_data([image], [labels], background_label=9)
    d = data[0]
    box = (slice(20, 20 + src), slice(20, 20 + src))
    img, obj, bg, neg = _zoom_patch(d.image[(slice(None),) + box], d.objects[box], d.background[box], (60, 60), 1)
    assert img.shape == (1, 60, 60) and obj.shape == bg.shape == neg.shape == (60, 60)
    zoom = 60 / src
    before, after = (d.objects[box] == 1).sum(), (obj == 1).sum()
    assert after == pytest.approx(before * zoom**2, rel=0.15)  # the object grows or shrinks with the zoom
    assert set(np.unique(obj)) <= set(np.unique(d.objects[box]))  # ids kept, none made up
    # the negatives: painted background and a 1-px ring of the zoomed objects, never inside one
    assert np.array_equal(neg, bg | object_rings(obj, 1)) and not (neg & (obj > 0)).any()
    ring = ndi.binary_dilation(obj == 1) & (obj == 0)
    assert neg[ring].all()
    # intensities are interpolated, not invented: the object stays bright, the rest dark
    inside, outside = img[0][obj == 1].mean(), img[0][(obj == 0) & ~ring].mean()
    assert inside > 0.7 and outside < 0.3 * inside


def test_scale_jitter_off_draws_the_patches_of_before_and_on_varies_object_sizes():
    image, labels = _discs()
    data = prepare_training_data([image], [labels])
    plain, off = PatchSampler(data, (64, 64), 1.0, seed=3), PatchSampler(data, (64, 64), 1.0, seed=3)
    off.enable_scale_jitter(1.0)
    for _ in range(10):
        for a, b in zip(plain.sample(), off.sample()):
            assert np.array_equal(a, b)
    on = PatchSampler(data, (64, 64), 1.0, seed=3)
    on.enable_scale_jitter(2.0)
    sizes = []
    for _ in range(60):
        img, obj, bg, neg = on.sample()
        assert img.shape == (1, 64, 64) and obj.shape == (64, 64)
        assert np.array_equal(neg, bg | object_rings(obj, 1))
        sizes += [(obj == i).sum() for i in np.unique(obj) if i and not _touches_border(obj == i)]
    area = np.pi * 12**2
    assert min(sizes) < 0.6 * area and max(sizes) > 1.6 * area  # zoomed out and in, up to 2x in width


def _touches_border(mask):
    return mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()


def test_scale_jitter_applies_to_y_and_x_of_3d_patches():
    rng = np.random.default_rng(1)
    vol = rng.random((20, 100, 100)).astype(np.float32)
    labels = np.zeros(vol.shape, np.int32)
    labels[5:12, 20:40, 20:40], labels[5:12, 60:80, 60:80] = 1, 2
    sampler = PatchSampler(prepare_training_data([vol], [labels]), (16, 48, 48), 1.0, seed=2)
    sampler.enable_scale_jitter(1.5)
    for _ in range(10):
        img, obj, bg, neg = sampler.sample()
        assert img.shape == (1, 16, 48, 48) and obj.shape == (16, 48, 48)
        assert not (neg & (obj > 0)).any()


def test_scale_jitter_is_automatic_by_default_and_below_one_is_refused():
    assert TrainConfig().scale_jitter is None
    with pytest.raises(SpocoError, match="scale_jitter"):
        TrainConfig(scale_jitter=0.5)


def test_automatic_zoom_only_for_a_painting_of_few_objects():
    auto, off, two = TrainConfig(), TrainConfig(scale_jitter=1.0), TrainConfig(scale_jitter=2.0)
    assert scale_jitter_for(auto, 8) == SCALE_JITTER > 1
    assert scale_jitter_for(auto, FEW_PAINTED - 1) == SCALE_JITTER
    assert scale_jitter_for(auto, FEW_PAINTED) == 1.0 and scale_jitter_for(auto, 124) == 1.0
    assert scale_jitter_for(auto, 0) == 1.0  # nothing painted (self-supervised): nothing to zoom for
    assert scale_jitter_for(off, 8) == 1.0 and scale_jitter_for(two, 500) == 2.0  # set by hand: kept


def test_training_records_the_automatic_zoom_and_the_painted_count():
    from napari_spoco import train
    from napari_spoco.training import pretrain

    image, objects = _discs()
    objects[objects == 9] = 0  # three painted discs
    small = dict(steps=1, device="cpu", patch_shape=(32, 32), batch_size=2)
    few = train([image], [objects], TrainConfig(**small))
    assert few.history["painted_objects"] == 3
    assert few.history["scale_jitter"] == SCALE_JITTER and few.history["scale_jitter_auto"]
    assert scale_jitter_note(few.history) == f"Patches were zoomed by up to {SCALE_JITTER:g}x, as only 3 objects are painted."
    hand = train([image], [objects], TrainConfig(**small, scale_jitter=1.5))
    assert not hand.history["scale_jitter_auto"] and scale_jitter_note(hand.history) == ""
    # adaptation (no labels) never zooms and keeps the record of the supervised run before it
    adapted = pretrain([image], pretrain_config(**small, scale_jitter=2.0), model=few)
    assert adapted.history["scale_jitter"] == SCALE_JITTER and adapted.history["painted_objects"] == 3


def test_automatic_zoom_stays_off_for_many_painted_objects():
    from napari_spoco import train

    yy, xx = np.mgrid[:120, :150]
    labels = np.zeros((120, 150), np.int32)
    for i in range(FEW_PAINTED):  # small discs on a 4 x 5 grid
        cy, cx = 15 + 30 * (i // 5), 15 + 30 * (i % 5)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = i + 1
    image = (labels > 0) * 100.0 + np.random.default_rng(0).random(labels.shape)
    many = train([image.astype(np.float32)], [labels],
                 TrainConfig(steps=1, device="cpu", patch_shape=(32, 32), batch_size=2))
    assert many.history["painted_objects"] == FEW_PAINTED
    assert many.history["scale_jitter"] == 1.0 and many.history["scale_jitter_auto"]
    assert scale_jitter_note(many.history) == ""
