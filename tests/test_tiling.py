"""Tile-by-tile segmentation of large images: cores partition the image, each object is kept
once, and the result matches whole-image segmentation."""

import numpy as np
import pytest

from napari_spoco import evaluate
from napari_spoco.pretrained import load_default_model
from napari_spoco.sample import load_sample
from napari_spoco.segmentation import segment
from napari_spoco.tiling import centres, core_bounds, fit_tile, paste_claimed, tiles


def test_cores_partition_the_image_and_regions_add_the_halo():
    shape = (300, 1000)
    cover = np.zeros(shape, int)
    for core, region in tiles(shape, (128, 256), (16, 32), divisor=4):
        cover[core] += 1
        for c, r, h, n in zip(core, region, (16, 32), shape):
            assert r.start == max(0, c.start - h) and r.stop == min(n, c.stop + h)
            assert r.stop - r.start <= (128, 256)[0 if h == 16 else 1]
    assert (cover == 1).all()
    assert core_bounds(100, 128, 16) == [(0, 100)]  # fits: one tile, no halo needed
    assert all(b % 4 == 0 for a, b in core_bounds(1000, 256, 32, divisor=4)[:-1])


def test_centres_are_mean_coordinates():
    lab = np.zeros((5, 6), int)
    lab[1:3, 1:5] = 2
    c = centres(lab)
    assert np.isnan(c[0]).all() and np.isnan(c[1]).all()
    assert np.allclose(c[2], [1.5, 2.5])


def test_an_object_found_by_two_tiles_is_pasted_once():
    out = np.zeros((10, 20), np.int64)
    obj = np.zeros((10, 12), int)
    obj[3:7, 8:12] = 1  # centre x = 9.5 in the left tile's frame
    left_core, left_region = (slice(0, 10), slice(0, 10)), (slice(0, 10), slice(0, 12))
    nxt = paste_claimed(out, obj, left_core, left_region, 1, margin=2)
    assert nxt == 2 and (out == 1).sum() == 16
    # The right tile (x 8..20, core 10..20) sees the same object slightly larger.
    right = np.zeros((10, 12), int)
    right[3:7, 0:5] = 7
    nxt = paste_claimed(out, right, (slice(0, 10), slice(10, 20)), (slice(0, 10), slice(8, 20)), nxt, margin=2)
    assert nxt == 2 and set(np.unique(out)) == {0, 1}


@pytest.mark.parametrize("embed_first", [True, False])
def test_tiled_segmentation_matches_whole_image_segmentation(monkeypatch, embed_first):
    # Both ways of a multi-tile Segment: the whole image embedded once and clustered tile by
    # tile, and (for embeddings too large for that) each tile embedded with its halo.
    from napari_spoco import segmentation

    if not embed_first:
        monkeypatch.setattr(segmentation, "EMBED_FIRST_MAX_BYTES", 0)
    s = load_sample()
    model = load_default_model(2)
    whole = segment(model, s.test_image, device="cpu")
    done = []
    tiled = segment(model, s.test_image, device="cpu", tile_shape=(160, 160), progress=lambda i, n: done.append((i, n)))
    assert done[-1][0] == done[-1][1] > 1  # really went tile by tile
    assert tiled.shape == whole.shape and tiled.dtype == whole.dtype
    agreement = evaluate(whole, tiled)
    assert agreement["AP50"] >= 0.85, agreement
    assert abs(evaluate(s.test_truth, tiled)["AP50"] - evaluate(s.test_truth, whole)["AP50"]) <= 0.05


def test_the_default_tile_is_shaped_to_the_image_within_its_voxel_count():
    """A volume deeper than the default block but no larger in voxels is one tile; a larger one
    is cut only along the axes longer than the block, those axes given the room the others
    leave; never more voxels than the block, never a side longer than the image."""
    block = (64, 384, 384)
    budget = int(np.prod(block))
    assert fit_tile((102, 224, 224), block) == (102, 224, 224)
    for shape in ((200, 224, 224), (30, 1024, 1024), (400, 400, 400), (70, 390, 2000), (5, 5, 10**7)):
        got = fit_tile(shape, block)
        assert np.prod(got) <= budget and all(1 <= g <= n for g, n in zip(got, shape)), (shape, got)
        assert np.prod(got) >= 0.9 * budget, (shape, got)  # the room is used
    assert fit_tile((200, 224, 224), block)[1:] == (224, 224)  # whole across, cut along z only
    assert fit_tile((30, 1024, 1024), block)[0] == 30
    assert fit_tile((1500, 3000), (2048, 2048))[0] == 1500


def test_a_deep_volume_within_the_block_is_clustered_once(monkeypatch):
    """No slabs for a volume of 100×48×48 (the default block's 64 planes): one clustering."""
    from napari_spoco import segmentation
    from napari_spoco.model import ModelConfig, SpocoModel

    calls = []
    real = segmentation.cluster_embeddings

    def spy(embeddings, *rest):
        calls.append(embeddings.shape)
        return real(embeddings, *rest)

    monkeypatch.setattr(segmentation, "cluster_embeddings", spy)
    model = SpocoModel.new(ModelConfig(ndim=3, base_features=4, depth=2))
    volume = np.random.default_rng(0).random((100, 48, 48)).astype(np.float32)
    segment(model, volume, device="cpu", tta=False)
    assert len(calls) == 1 and calls[0][1:] == (100, 48, 48)
    calls.clear()
    segment(model, volume, device="cpu", tta=False, tile_shape=(64, 48, 48))  # given: kept
    assert len(calls) > 1
