"""Tiled embedding reproduces whole-image embedding; segmentation returns the input's shape."""

import math

import numpy as np
import pytest

from napari_spoco.errors import SpocoError
from napari_spoco.inference import _axis_layout, embed, plan_tiles
from napari_spoco.model import ModelConfig, SpocoModel
from napari_spoco.segmentation import segment


def _model(ndim=2):
    m = SpocoModel.new(ModelConfig(ndim=ndim, base_features=4, depth=3), seed=0)
    # Give BatchNorm non-trivial running statistics, as after training.
    for mod in m.student.modules():
        if hasattr(mod, "running_var"):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return m


@pytest.mark.parametrize("shape,tile", [((150, 133), (64, 64)), ((20, 40, 36), (16, 24, 24))])
def test_tiled_embedding_matches_whole_image(shape, tile):
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape).astype(np.float32)
    model = _model(len(shape))
    whole = embed(model, image, tile_shape=tuple(s * 2 for s in shape), device="cpu")
    tiled = embed(model, image, tile_shape=tile, overlap=12, device="cpu")
    assert whole.embeddings.shape == (16,) + shape
    assert tiled.foreground.shape == shape
    err = np.abs(whole.embeddings - tiled.embeddings)
    scale = np.abs(whole.embeddings).mean()
    assert err.max() < 0.05 * scale, (err.max(), scale)


def test_tiles_overlapping_by_twice_the_tile_reach_reproduce_the_whole_image_exactly():
    image = np.random.default_rng(3).normal(size=(300, 260)).astype(np.float32)
    model = _model(2)
    whole = embed(model, image, tile_shape=(512, 512), device="cpu")
    tiled = embed(model, image, tile_shape=(128, 128), device="cpu")  # default overlap: 2 × 22 px (tile_reach)
    scale = np.abs(whole.embeddings).mean()
    assert np.abs(whole.embeddings - tiled.embeddings).max() < 1e-5 * scale
    assert np.abs(whole.foreground - tiled.foreground).max() < 1e-5


def test_planned_tiles_cover_the_image_within_budget_with_less_work_than_fixed_tiles():
    rng = np.random.default_rng(4)
    for _ in range(40):
        ndim = int(rng.integers(2, 4))
        div, ov = 4, 56
        padded = tuple(int(rng.integers(16, 700 if ndim == 2 else 200)) // div * div + div for _ in range(ndim))
        budget = 512 * 512 if ndim == 2 else 64 * 160 * 160
        plan = plan_tiles(padded, budget, ov, div)
        assert math.prod(t for t, _ in plan) <= budget
        for n, (t, starts) in zip(padded, plan):
            assert starts[0] == 0 and starts[-1] + t == n and all(s0 % div == 0 for s0 in starts)
            assert all(b - a <= t - ov for a, b in zip(starts, starts[1:]))  # overlap >= ov
        fixed = (512, 512) if ndim == 2 else (64, 160, 160)
        old = [_axis_layout(n, f, min(ov, f // 2), div) for n, f in zip(padded, fixed)]
        work = lambda lay: math.prod(t * len(st) for t, st in lay)  # noqa: E731
        assert work(plan) <= work(old)


def test_a_network_whose_overlaps_nearly_fill_a_tile_gets_few_tiles_not_thousands():
    # The large preset: receptive radius 252 px (overlap 504), size divisor 32. No tile that
    # keeps anything fits 512² px, and the smallest tiles there are once meant 29 x 29 tiles of
    # 544² for a 256² image with its margins (768²): 841 forward passes instead of one.
    from napari_spoco.model import REFERENCE

    ov, div = 2 * REFERENCE.receptive_radius, REFERENCE.size_divisor
    assert plan_tiles((768, 768), 512 * 512, ov, div) == [(768, [0]), (768, [0])]
    for n in (1536, 4608):
        plan = plan_tiles((n, n), 512 * 512, ov, div)
        for t, starts in plan:
            assert t >= 2 * ov + div and starts[0] == 0 and starts[-1] + t == n
            assert all(b - a <= t - ov for a, b in zip(starts, starts[1:]))  # overlap >= ov
        work = math.prod(t * len(st) for t, st in plan)
        assert work <= 4 * n * n, (n, plan)  # at most a few times the image, not hundreds


def test_planned_3d_tiles_reproduce_the_whole_volume_exactly():
    image = np.random.default_rng(5).normal(size=(24, 90, 80)).astype(np.float32)
    model = _model(3)
    whole = embed(model, image, tile_shape=(256, 256, 256), device="cpu")
    seen = []
    tiled = embed(model, image, max_tile_voxels=64 * 64 * 64, device="cpu", progress=lambda i, n: seen.append(n))
    assert seen and seen[-1] > 1  # it did tile
    scale = np.abs(whole.embeddings).mean()
    assert np.abs(whole.embeddings - tiled.embeddings).max() < 1e-5 * scale


def test_segment_returns_labels_of_the_input_shape():
    model = _model()
    image = np.random.default_rng(1).normal(size=(70, 90)).astype(np.float32)
    labels = segment(model, image, device="cpu")
    assert labels.shape == image.shape and labels.dtype in (np.uint16, np.uint32)
    ids = np.unique(labels[labels > 0])
    assert (ids == np.arange(1, len(ids) + 1)).all()  # consecutive from 1


def test_negative_margin_or_overlap_is_refused():
    with pytest.raises(SpocoError, match="0 or more pixels"):
        embed(_model(2), np.zeros((32, 32), np.float32), margin=-1, device="cpu")
    with pytest.raises(SpocoError, match="0 or more pixels"):
        embed(_model(2), np.zeros((32, 32), np.float32), overlap=-4, device="cpu")


def test_wrong_dimensionality_is_refused():
    with pytest.raises(SpocoError, match="2D model but the image is 3D"):
        embed(_model(2), np.zeros((8, 16, 16), np.float32))


def test_embed_takes_a_prepared_image_as_it_is():
    from napari_spoco.data import intensity_range
    from napari_spoco.inference import prepare_image

    model = _model()
    image = np.random.default_rng(3).normal(size=(48, 64)).astype(np.float32)
    prepared = prepare_image(model, image)
    assert prepared.shape == (48, 64) and prepared.value_range == intensity_range(image)
    np.testing.assert_array_equal(embed(model, prepared, device="cpu").embeddings,
                                  embed(model, image, device="cpu").embeddings)
    # a crop keeps the whole image's range: it embeds like the image cropped with that range
    box = (slice(8, 40), slice(16, 48))
    np.testing.assert_array_equal(
        embed(model, prepared.crop(box), device="cpu").embeddings,
        embed(model, image[box], device="cpu", value_range=prepared.value_range).embeddings)
    with pytest.raises(SpocoError, match="carries its range"):
        embed(model, prepared, value_range=(0.0, 1.0))
    with pytest.raises(SpocoError, match="prepared for another model"):
        embed(_model(3), prepared)


def test_images_too_large_for_memory_are_refused_with_advice(monkeypatch):
    import napari_spoco.inference as inf

    monkeypatch.setattr(inf, "_available_bytes", lambda: 10 * 2**20)  # pretend 10 MiB are free
    with pytest.raises(SpocoError, match="Crop or downsample"):
        embed(_model(), np.zeros((512, 512), np.float32))


def test_rgb_images_are_segmented_as_grey():
    rgb = np.random.default_rng(2).integers(0, 255, size=(40, 48, 3)).astype(np.uint8)
    labels = segment(_model(), rgb, device="cpu")
    assert labels.shape == (40, 48)


@pytest.mark.parametrize("ndim,depth", [(2, 1), (2, 2), (2, 3), (2, 4), (2, 5), (3, 2), (3, 3)])
def test_tile_reach_is_exactly_how_far_an_aligned_cut_changes_the_output(ndim, depth):
    # A crop starting and ending on the size grid, against the same pixels of the whole image:
    # identical from tile_reach pixels inside the cut on, different one pixel closer.
    import torch

    torch.manual_seed(depth)
    config = ModelConfig(ndim=ndim, base_features=8, depth=depth)
    model = SpocoModel.new(config, seed=depth)
    net = model.student.eval().double()  # float64: the smallest differences stand out of rounding
    for mod in net.modules():
        if hasattr(mod, "running_var"):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    reach, div = config.tile_reach, config.size_divisor
    lead = (max(8, config.size_divisor),) * (ndim - 1)
    lo = -(-(reach + 8) // div) * div  # the cut, on the grid, with room for the reach on both sides
    width = 4 * lo
    image = torch.from_numpy(np.random.default_rng(depth).normal(size=(1, 1, *lead, width)))
    with torch.inference_mode():
        whole = net(image)[..., lo:3 * lo]
        crop = net(image[..., lo:3 * lo].contiguous())
    diff = (whole - crop).abs().amax(dim=tuple(range(whole.ndim - 1))).numpy()  # per X position
    scale = float(whole.abs().mean())
    inside = np.minimum(np.arange(2 * lo), np.arange(2 * lo)[::-1])  # distance from the nearer cut
    assert diff[inside >= reach].max() < 1e-14 * scale
    assert diff[inside == reach - 1].max() > 1e-13 * scale, (reach, diff[: reach + 2])
