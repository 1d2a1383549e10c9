"""Colour and channels as the network's input (docs/method.md, "Colour and channels")."""

import numpy as np
import pytest
import tifffile
import torch

from napari_spoco import ModelConfig, SpocoModel, TrainConfig, segment, train
from napari_spoco.augment import random_geometry
from napari_spoco.data import channel_count, channels_first, check_image, intensity_range, normalize
from napari_spoco.errors import SpocoError

SMALL = ModelConfig(base_features=8, depth=2)


def _quick(steps=3):
    return TrainConfig(steps=steps, batch_size=2, patch_shape=(32, 32), device="cpu")


def _two_channel(image):
    """(2, Y, X): the image, and a second stain 1000× brighter with its own structure."""
    rng = np.random.default_rng(1)
    return np.stack([image, 1000 * image[::-1] + rng.normal(0, 10, image.shape)]).astype(np.float32)


def test_channels_are_counted_and_moved_first():
    rgb = np.zeros((20, 30, 4), np.uint8)  # RGBA: alpha is no image content
    assert channel_count(rgb) == 3 and channels_first(rgb).shape == (3, 20, 30)
    stack = np.zeros((20, 2, 30))
    assert channel_count(stack, channel_axis=1) == 2 and channels_first(stack, 1).shape == (2, 20, 30)
    assert channel_count(np.zeros((5, 20, 30))) == 1  # a short volume, not channels
    with pytest.raises(SpocoError, match="channel_axis 3"):
        channel_count(stack, channel_axis=3)


def test_grey_models_still_read_colour_as_luminance_and_refuse_channel_stacks():
    rgb = np.random.default_rng(0).random((20, 30, 3)).astype(np.float32)
    grey = check_image(rgb)
    assert grey.shape == (20, 30)
    assert np.allclose(grey, rgb @ np.array([0.299, 0.587, 0.114], np.float32))
    with pytest.raises(SpocoError, match="has 2 channels but this model reads one"):
        check_image(np.zeros((2, 20, 30)), channel_axis=0)


def test_each_channel_is_normalised_on_its_own(tiny_pair):
    image, _, _ = tiny_pair
    x = check_image(_two_channel(image), channels=2, channel_axis=0)
    ranges = intensity_range(x, channels=2)
    assert len(ranges) == 2 and ranges[1][1] > 100 * ranges[0][1]
    n = normalize(x, channels=2)
    for c in n:  # both stains span about [0, 1], whatever their brightness
        assert -0.2 < np.percentile(c, 1) < 0.05 and 0.95 < np.percentile(c, 99.8) < 1.05
    crop = normalize(x[:, :32], value_range=ranges, channels=2)  # a crop normalised like the whole
    assert np.allclose(crop, n[:, :32])


def test_a_colour_model_wants_its_channels():
    model = SpocoModel.new(ModelConfig(base_features=8, depth=2, in_channels=3))
    with pytest.raises(SpocoError, match="reads 3 channels but the image has 1"):
        segment(model, np.zeros((32, 32), np.float32), device="cpu")
    with pytest.raises(SpocoError, match="reads 3 channels but the image has 2"):
        segment(model, np.zeros((2, 32, 32), np.float32), device="cpu", channel_axis=0)


def test_geometry_flips_spatial_axes_only():
    rng = np.random.default_rng(3)
    img = np.stack([np.full((4, 4), c, np.float32) for c in range(3)])
    img[:, 0, 0] += 10  # a corner marker
    lab = np.zeros((4, 4), np.int64)
    lab[0, 0] = 1
    for _ in range(20):
        gi, gl = random_geometry(rng, img, lab)
        assert [float(c.min()) for c in gi] == [0.0, 1.0, 2.0]  # channel order kept
        assert np.array_equal(gi[0] >= 10, gl == 1)  # image and labels moved together


@torch.no_grad()
def test_widening_a_grey_model_starts_from_what_it_saw_in_grey(tiny_pair):
    image, _, _ = tiny_pair
    model = SpocoModel.new(SMALL, seed=0)
    grey = segment(model, image, device="cpu", return_embedding=True, precision="float32")[1].embeddings
    model.widen_input(3)
    assert model.config.in_channels == 3 and model.student.encoders[0][0].in_channels == 3
    assert model.teacher.encoders[0][0].in_channels == 3 and model.history["widened_from_channels"] == 1
    same = np.repeat(image[..., None], 3, axis=-1)  # three equal channels = the grey image
    wide = segment(model, same, device="cpu", return_embedding=True, precision="float32")[1].embeddings
    assert np.allclose(wide, grey, atol=1e-4)
    assert not model.teacher.encoders[0][0].weight.requires_grad
    with pytest.raises(SpocoError, match="only a one-channel model"):
        model.widen_input(2)


def test_training_on_channels_keeps_them_in_the_model_file(tmp_path, tiny_pair):
    from napari_spoco.io import load_model, save_model

    image, sparse, _ = tiny_pair
    stack = _two_channel(image)
    model = train([stack], [sparse], _quick(), model_config=SMALL, channel_axis=0)
    assert model.config.in_channels == 2
    again = load_model(save_model(model, tmp_path / "two.spoco.pt"))
    assert again.config.in_channels == 2
    a = segment(again, stack, device="cpu", channel_axis=0)
    b = segment(again, np.moveaxis(stack, 0, -1), device="cpu", channel_axis=-1)
    assert a.shape == image.shape and np.array_equal(a, b)


def test_fine_tuning_a_grey_model_on_colour_widens_it(tiny_pair):
    image, sparse, _ = tiny_pair
    rgb = np.stack([image, image * 0.5, image[::-1]], axis=-1)
    start = train([image], [sparse], _quick(2), model_config=SMALL)
    assert start.config.in_channels == 1
    tuned = train([rgb], [sparse], _quick(2), model=start)
    assert tuned.config.in_channels == 3 and tuned.history["widened_from_channels"] == 1
    # new input: no stable fine-tuning start (docs/method.md), the student predicts
    assert tuned.predictor is tuned.student
    assert segment(tuned, rgb, device="cpu").shape == image.shape
    with pytest.raises(SpocoError, match="images hold different numbers of channels"):
        train([rgb, image], [sparse, sparse], _quick(1), model_config=SMALL)


def test_cli_trains_and_predicts_on_channel_stacks(tmp_path, tiny_pair, capsys):
    from napari_spoco.cli import main

    image, sparse, _ = tiny_pair
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    tifffile.imwrite(tmp_path / "images" / "cells.tif", _two_channel(image), imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "labels" / "cells.tif", sparse)
    model = tmp_path / "m.spoco.pt"
    base = ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"), "--out", str(model),
            "--steps", "2", "--init", "none", "--device", "cpu", "--patch-size", "32", "32", "--batch-size", "2"]
    assert main(base) == 2  # without --channel-axis: refused, with what to do
    assert "--channel-axis 0" in capsys.readouterr().err and not model.exists()
    assert main(base + ["--channel-axis", "0"]) == 0
    assert "reads 2 channels (axis 0)" in capsys.readouterr().err
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model), "--images", str(tmp_path / "images"), "--out", str(out),
                 "--device", "cpu", "--channel-axis", "0"]) == 0
    assert tifffile.imread(out / "cells.tif").shape == image.shape


def test_previews_of_a_colour_model_normalise_each_channel_like_the_whole_image(tiny_pair):
    from napari_spoco.segmentation import segment_preview

    image, _, _ = tiny_pair
    rgb = np.stack([image, 0.5 * image, image[::-1]], axis=-1)
    model = SpocoModel.new(ModelConfig(base_features=8, depth=2, in_channels=3))
    box = (slice(0, 32), slice(16, 48))
    whole = segment(model, rgb, device="cpu", tile_shape=(64, 64))
    grey_range = intensity_range(check_image(rgb))  # what a caller that thinks in grey passes
    for value_range in (None, grey_range):
        crop = segment_preview(model, rgb, box, value_range)
        assert crop.shape == (32, 32)
    emb_whole = segment(model, rgb, device="cpu", return_embedding=True)[1].embeddings
    ranges = intensity_range(check_image(rgb, channels=3), channels=3)
    emb_crop = segment(model, rgb[box], device="cpu", value_range=ranges, return_embedding=True)[1].embeddings
    assert whole.shape == image.shape
    assert np.abs(emb_crop[:, 8:-8, 8:-8] - emb_whole[(slice(None),) + box][:, 8:-8, 8:-8]).max() < 1e-3


def test_a_spatial_axis_given_as_channel_axis_is_refused_before_anything_is_saved(tmp_path, tiny_pair):
    image, sparse, _ = tiny_pair
    stack = _two_channel(image)
    for bad, what in ((1, "spatial axis"), ("0", "whole number"), (True, "whole number"), (0.0, "whole number")):
        with pytest.raises(SpocoError, match=what):
            channel_count(stack, channel_axis=bad)
    with pytest.raises(SpocoError, match="spatial axis"):
        channel_count(image, channel_axis=0)  # a grey 2D image has no channel axis
    model = SpocoModel.new(ModelConfig(base_features=8, depth=2, in_channels=2))
    with pytest.raises(SpocoError, match="spatial axis"):
        segment(model, stack, device="cpu", channel_axis=1)
    with pytest.raises(SpocoError, match="1 to 64 channels"):
        SpocoModel.new(SMALL).widen_input(0)


def test_a_refused_training_leaves_the_grey_model_grey(tiny_pair):
    image, sparse, _ = tiny_pair
    rgb = np.stack([image] * 3, axis=-1)
    model = SpocoModel.new(SMALL)
    with pytest.raises(SpocoError, match="Patch shape"):
        train([rgb], [sparse], TrainConfig(steps=1, patch_shape=(33, 33), device="cpu"), model=model)
    assert model.config.in_channels == 1 and model.student.encoders[0][0].in_channels == 1


def test_planar_colour_tiffs_keep_their_axis_order_with_channel_axis(tmp_path, tiny_pair):
    from napari_spoco.io import read_image

    image, _, _ = tiny_pair
    planar = np.stack([image, image, image]).astype(np.uint16)
    tifffile.imwrite(tmp_path / "p.tif", planar, photometric="rgb", planarconfig="separate")
    assert read_image(tmp_path / "p.tif").shape == (64, 64, 3)  # as always: colour, channels last
    assert read_image(tmp_path / "p.tif", keep_channels=True).shape == (3, 64, 64)  # the file's axis 0
