"""Painted objects pasted beside painted objects (pasting.py, data.PatchSampler): the pasted
copy must make a touching pair whose both objects stay complete and known, and never change the
training images themselves."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_spoco.data import PatchSampler, prepare_training_data
from napari_spoco.errors import SpocoError
from napari_spoco.pasting import GAP, Donors, paste_beside
from napari_spoco.training import PASTE_SHARE, TrainConfig, paste_share_for


def _disc_image(shape=(120, 120), centres=((40, 40), (80, 85), (30, 95)), radius=10):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i
    rng = np.random.default_rng(0)
    image = (labels > 0) * (100.0 + 20 * rng.random(shape)) + 5 * rng.random(shape)
    return image.astype(np.float32), labels


def test_pasted_object_touches_one_and_covers_none():
    image, labels = _disc_image()
    data = prepare_training_data([image], [labels])
    d = data[0]
    donors = Donors([d.image], [d.objects], [d.boxes])
    placed = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        img, obj, bg, neg = d.image.copy(), d.objects.copy(), d.background.copy(), d.negatives.copy()
        if not paste_beside(rng, donors, img, obj, bg, neg, ring_width=1):
            continue
        placed += 1
        new = obj == obj.max()
        assert obj.max() == 4 and new.sum() > 0
        # every painted object is as it was: none covered, so each stays complete
        assert np.array_equal(obj[~new], d.objects[~new]) and np.array_equal(obj[d.objects > 0], d.objects[d.objects > 0])
        # the copy keeps GAP pixels from every painted object and touches one of them just beyond
        near = ndi.binary_dilation(d.objects > 0, iterations=GAP)
        assert not (new & near).any()
        assert (ndi.binary_dilation(new, iterations=GAP + 1) & (d.objects > 0)).any()
        # its pixels are a painted object's pixels, its ring is known not inside any object
        assert np.isclose(img[0][new].mean(), d.image[0][d.objects > 0].mean(), rtol=0.2)
        assert not neg[new].any() and not bg[new].any()
        ring = ndi.binary_dilation(new) & ~new & (obj == 0)
        assert neg[ring].all()
    assert placed >= 15  # three discs with room around them: nearly every try finds a place


def test_paste_share_zero_draws_the_patches_of_before_and_pasting_never_writes_the_images():
    image, labels = _disc_image()
    data = prepare_training_data([image], [labels])
    before = [a.copy() for a in (data[0].image, data[0].objects, data[0].background, data[0].negatives)]
    plain = PatchSampler(data, (48, 48), 0.8, seed=5)
    off = PatchSampler(data, (48, 48), 0.8, seed=5)
    off.enable_paste(0.0)
    for _ in range(10):
        for a, b in zip(plain.sample(), off.sample()):
            assert np.array_equal(a, b)
    on = PatchSampler(data, (48, 48), 1.0, seed=5)
    on.enable_paste(1.0)
    pasted = sum(len(np.unique(on.sample()[1])) - 1 for _ in range(30))
    unpasted = sum(len(np.unique(PatchSampler(data, (48, 48), 1.0, seed=s).sample()[1])) - 1 for s in range(30))
    assert pasted > unpasted  # the pastes add objects ...
    for a, b in zip(before, (data[0].image, data[0].objects, data[0].background, data[0].negatives)):
        assert np.array_equal(a, b)  # ... to copies of the crops, never to the training images


def test_paste_share_is_automatic_for_convex_objects_only():
    auto = TrainConfig(steps=1)
    assert paste_share_for(auto, 2, 0.92) == PASTE_SHARE
    assert paste_share_for(auto, 2, 0.6) == 0.0  # cells, EM profiles, leaves: not pasted
    assert paste_share_for(auto, 2, 0.78) == 0.0  # a 2D outline this concave is not a nucleus's
    assert paste_share_for(auto, 3, 0.79) == PASTE_SHARE  # ... a 3D voxel hull this convex is
    assert paste_share_for(auto, 3, 0.6) == 0.0
    assert paste_share_for(auto, 3, None) == 0.0
    assert paste_share_for(auto, 2, None) == 0.0
    assert paste_share_for(TrainConfig(steps=1, paste_share=0.25), 3, 0.5) == 0.25
    with pytest.raises(SpocoError, match="paste_share"):
        TrainConfig(steps=1, paste_share=1.5)


def test_pasted_object_in_3d_keeps_the_gap_and_touches_one():
    # 3D pastes are on by default for nuclei-like objects (training.PASTE_MIN_SOLIDITY)
    zz, yy, xx = np.mgrid[:32, :64, :64]
    labels = np.zeros((32, 64, 64), np.int32)
    for i, (cz, cy, cx) in enumerate(((16, 20, 20), (16, 40, 44), (10, 50, 15)), start=1):
        labels[((zz - cz) / 3) ** 2 + ((yy - cy) / 6) ** 2 + ((xx - cx) / 6) ** 2 < 1] = i
    image = (labels > 0)[None].astype(np.float32)
    donors = Donors([image], [labels], [ndi.find_objects(labels)])
    placed = 0
    for seed in range(10):
        obj, bg, neg, img = labels.copy(), np.zeros(labels.shape, bool), np.zeros(labels.shape, bool), image.copy()
        if not paste_beside(np.random.default_rng(seed), donors, img, obj, bg, neg, ring_width=1):
            continue
        placed += 1
        new = obj == obj.max()
        assert obj.max() == 4 and np.array_equal(obj[~new], labels[~new])
        assert not (new & ndi.binary_dilation(labels > 0, iterations=GAP)).any()
        assert (ndi.binary_dilation(new, iterations=GAP + 1) & (labels > 0)).any()
        assert neg[ndi.binary_dilation(new) & ~new & (obj == 0)].all()
    assert placed >= 8
