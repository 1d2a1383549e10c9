"""Object scale: choosing it from painted objects, resizing, and undoing it on the way out."""

import numpy as np
import pytest

from napari_spoco.clustering import ClusterConfig
from napari_spoco.errors import SpocoError
from napari_spoco.io import load_model, save_model
from napari_spoco.model import ModelConfig, SpocoModel
from napari_spoco.scaling import (
    auto_scale,
    check_scale,
    enlarge_labels,
    median_diameter,
    resize_image,
    resize_labels,
    training_scale,
)
from napari_spoco.segmentation import segment
from napari_spoco.training import TrainConfig, train

SMALL = ModelConfig(base_features=8, depth=2)


def _big_disks(radius=35, size=256):
    """Four disks of the given radius (two painted) on a noisy background."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    truth = np.zeros((size, size), np.uint16)
    for i, (cy, cx) in enumerate([(64, 64), (64, 192), (192, 64), (192, 192)], start=1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = i
    image = ((truth > 0) * 150.0 + rng.normal(30, 10, truth.shape)).astype(np.float32)
    sparse = np.where(np.isin(truth, [1, 4]), truth, 0).astype(np.uint16)
    return image, sparse, truth


def test_median_diameter_is_that_of_a_disk_of_the_median_area():
    lab = np.zeros((100, 100), np.int32)
    lab[:10, :10] = 1  # 100 px
    lab[20:40, 20:40] = 2  # 400 px
    lab[50:80, 50:80] = 3  # 900 px
    assert median_diameter([lab]) == pytest.approx(2 * np.sqrt(400 / np.pi))
    lab[90:, 90:] = 7  # painted background, not an object
    assert median_diameter([lab], background_label=7) == pytest.approx(2 * np.sqrt(400 / np.pi))
    assert median_diameter([np.zeros((5, 5), int)]) is None


def test_auto_scale_brings_large_and_small_2d_objects_towards_30_px():
    _, sparse_big, _ = _big_disks(radius=35)  # 70 px across: shrunk
    assert auto_scale([sparse_big]) == pytest.approx(30 / 70, abs=0.01)
    _, sparse_mid, _ = _big_disks(radius=12)  # 24 px: left alone
    assert auto_scale([sparse_mid]) == 1.0
    _, sparse_small, _ = _big_disks(radius=8)  # 16 px: doubled (a whole factor)
    assert auto_scale([sparse_small]) == 2.0
    _, sparse_tiny, _ = _big_disks(radius=3)  # 6 px: doubled too, not more (4x the time already)
    assert auto_scale([sparse_tiny]) == 2.0
    assert auto_scale([np.zeros((64, 64), int)]) == 1.0  # nothing painted
    assert auto_scale([np.ones((8, 64, 64), int)]) == 1.0  # 3D: left to the user
    tiny_3d = np.zeros((16, 64, 64), int)
    tiny_3d[4:7, 10:13, 10:13] = 1
    assert auto_scale([tiny_3d]) == 1.0  # small 3D objects too (8x the time)


@pytest.mark.parametrize("bad", [0, -1, 10, float("nan"), "half"])
def test_bad_scales_are_refused_with_a_message(bad):
    with pytest.raises(SpocoError, match="[Ss]cale"):
        check_scale(bad)


def test_resize_labels_keeps_ids_and_restores_the_shape():
    _, _, truth = _big_disks()
    small = resize_labels(truth, (100, 100))
    assert small.shape == (100, 100) and set(np.unique(small)) == set(np.unique(truth))
    back = resize_labels(small, truth.shape)
    assert back.shape == truth.shape
    assert (back == truth).mean() > 0.97  # only boundary pixels move


def _smoothed_and_interpolated(labels, shape, sigma):
    """enlarge_labels' definition computed the slow way: every id's smoothed mask interpolated
    over the whole image, then the highest score per pixel."""
    import torch
    from scipy import ndimage as ndi

    ids = np.unique(labels)
    mode = "bilinear" if labels.ndim == 2 else "trilinear"
    scores = []
    for i in ids:
        mask = ndi.gaussian_filter((labels == i).astype(np.float32), sigma, mode="nearest")
        scores.append(torch.nn.functional.interpolate(torch.from_numpy(mask)[None, None], size=shape, mode=mode,
                                                      align_corners=False)[0, 0].numpy())
    return ids[np.argmax(np.stack(scores), axis=0)]


def test_enlarge_labels_is_each_smoothed_mask_interpolated_over_the_whole_image():
    rng = np.random.default_rng(3)
    from scipy import ndimage as ndi

    flat = ndi.label(ndi.gaussian_filter(rng.random((48, 40)), 2) > 0.52)[0]  # blobs, some on the border
    assert flat.max() >= 4 and (flat[0] > 0).any() | (flat[-1] > 0).any() | (flat[:, 0] > 0).any()
    for shape in [(91, 75), (100, 80), (60, 150)]:
        np.testing.assert_array_equal(enlarge_labels(flat, shape), _smoothed_and_interpolated(flat, shape, 0.75))
    vol = ndi.label(ndi.gaussian_filter(rng.random((10, 24, 20)), 1.5) > 0.53)[0].astype(np.uint16)
    assert vol.max() >= 3
    out = enlarge_labels(vol, (17, 50, 38))  # Z enlarged less than Y and X, as for anisotropic voxels
    assert out.dtype == vol.dtype
    np.testing.assert_array_equal(out, _smoothed_and_interpolated(vol, (17, 50, 38), 0.75))
    assert enlarge_labels(flat, flat.shape) is flat


def test_enlarge_labels_smooths_the_staircase_that_nearest_neighbour_leaves():
    _, _, truth = _big_disks()
    for n in (100, 136, 150):  # shrunk to 0.39-0.59 of its size, as objects wider than 45 px are
        small = resize_labels(truth, (n, n))
        nearest = (resize_labels(small, truth.shape) != truth).sum()
        smooth = enlarge_labels(small, truth.shape)
        assert set(np.unique(smooth)) == set(np.unique(truth))
        assert (smooth != truth).sum() < 0.85 * nearest


def test_resize_image_averages_when_shrinking():
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    small = resize_image(img, (2, 2))
    np.testing.assert_allclose(small, [[2.5, 4.5], [10.5, 12.5]])
    stack = np.stack([img, 2 * img])  # leading axes are channels
    np.testing.assert_allclose(resize_image(stack, (2, 2))[1], 2 * small)


def test_training_picks_the_scale_from_painted_objects_and_the_file_keeps_it(tmp_path):
    image, sparse, _ = _big_disks(radius=35)
    cfg = TrainConfig(steps=2, batch_size=2, patch_shape=(32, 32), device="cpu")
    model = train([image], [sparse], cfg, model_config=SMALL)
    assert model.pixel_scale == pytest.approx(0.43, abs=0.01)
    # object sizes are recorded at the network's scale (where the fragment filter works)
    assert model.history["object_size_median"] == pytest.approx(np.pi * 35**2 * 0.43**2, rel=0.1)
    loaded = load_model(save_model(model, tmp_path / "m.spoco.pt"))
    assert loaded.pixel_scale == model.pixel_scale
    fixed = train([image], [sparse], TrainConfig(**{**cfg.__dict__, "scale": 1.0}), model_config=SMALL)
    assert fixed.pixel_scale == 1.0


def test_small_painted_objects_train_at_scale_2_and_come_back_at_the_images_size():
    image, sparse, _ = _big_disks(radius=7)  # 14 px across
    cfg = TrainConfig(steps=2, batch_size=2, patch_shape=(32, 32), device="cpu")
    model = train([image], [sparse], cfg, model_config=SMALL)
    assert model.pixel_scale == 2.0
    assert model.history["object_size_median"] == pytest.approx(np.pi * 7**2 * 4, rel=0.15)
    labels = segment(model, image, device="cpu")
    assert labels.shape == image.shape


def test_fine_tuning_keeps_the_starting_models_scale():
    """Weights learned at one scale are not silently retrained at another."""
    image, sparse, _ = _big_disks(radius=12)  # small objects: auto would say 1.0
    start = SpocoModel.new(SMALL)
    start.history["pixel_scale"] = 0.5
    cfg = TrainConfig(steps=1, batch_size=2, patch_shape=(32, 32), device="cpu")
    assert train([image], [sparse], cfg, model=start).pixel_scale == 0.5
    assert training_scale([sparse], None, model_scale=1.0) == 1.0


def test_a_model_fine_tuned_at_full_size_keeps_it_when_large_objects_are_painted_later():
    """A later round's large objects must not shrink every image the model learned at 1.0;
    a start nobody fine-tuned (the shipped ones: no fine_tuned_on) still takes the painted size."""
    from napari_spoco.scaling import kept_scale_of, scale_note

    image, sparse, _ = _big_disks(radius=35)  # 70 px across: auto asks for 30/70
    cfg = TrainConfig(steps=1, batch_size=2, patch_shape=(32, 32), device="cpu")
    def trained_start(**history):
        start = SpocoModel.new(SMALL)  # train() fine-tunes the model it is given in place
        start.history.update(steps=10, **history)  # a trained start at 1.0
        return start

    start = trained_start()  # that no user fine-tuned
    assert kept_scale_of(start) == (1.0, False)
    assert train([image], [sparse], cfg, model=start).pixel_scale == 0.43
    start = trained_start(fine_tuned_on=["another image"])
    assert kept_scale_of(start) == (1.0, True)
    assert train([image], [sparse], cfg, model=start).pixel_scale == 1.0
    note = scale_note(1.0, [sparse], None, *kept_scale_of(start))
    assert note == "The model works at scale 1; keeping it (the painted objects alone would ask for 0.43)."
    assert scale_note(0.43, [sparse], None, *kept_scale_of(None)).startswith("Painted objects are about 70 px")
    assert kept_scale_of(None) == (1.0, False)


def test_train_cli_keeps_the_full_size_of_a_model_trained_before_and_says_so(tmp_path, capsys):
    import tifffile

    from napari_spoco.cli import main
    from napari_spoco.io import load_model, save_model

    image, sparse, _ = _big_disks(radius=35)
    for name, array in (("images", image), ("labels", sparse)):
        (tmp_path / name).mkdir()
        tifffile.imwrite(tmp_path / name / "disks.tif", array)
    before = SpocoModel.new(SMALL)
    before.history.update(steps=10, fine_tuned_on=["another image"])
    save_model(before, tmp_path / "before.spoco.pt")
    assert main(["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                 "--init", str(tmp_path / "before.spoco.pt"), "--out", str(tmp_path / "after.spoco.pt"),
                 "--steps", "1", "--device", "cpu", "--patch-size", "32", "32", "--batch-size", "2"]) == 0
    assert "keeping it (the painted objects alone would ask for 0.43); --scale with a number changes it" in capsys.readouterr().err
    assert load_model(tmp_path / "after.spoco.pt").pixel_scale == 1.0


def test_segment_at_a_scale_is_segmentation_of_the_resized_image_brought_back():
    image, _, truth = _big_disks(radius=35)
    model = SpocoModel.new(SMALL)
    model.history.update(object_size_median=900.0, pixel_scale=0.5)
    labels, emb = segment(model, image, device="cpu", return_embedding=True)
    assert labels.shape == image.shape and emb.embeddings.shape[1:] == image.shape
    assert emb.foreground.shape == image.shape

    native = SpocoModel(model.config, model.student, model.teacher, {"object_size_median": 900.0})
    from napari_spoco.data import intensity_range, relabel_sequential

    small = resize_image(image, (128, 128))
    expected = segment(native, small, device="cpu", value_range=intensity_range(image))
    np.testing.assert_array_equal(labels, relabel_sequential(enlarge_labels(expected, image.shape)))

    from napari_spoco.segmentation import preview_box, segment_preview

    box = preview_box(image.shape, (100, 150), (120, 90))
    assert segment_preview(model, image, box, intensity_range(image)).shape == (120, 90)


def test_sizes_given_in_image_pixels_are_converted_to_the_networks(monkeypatch):
    import napari_spoco.segmentation as seg

    seen = {}

    def fake(model, image, config, *rest):
        seen["config"], seen["shape"] = config, image.shape
        return np.zeros(image.shape, np.uint16)

    monkeypatch.setattr(seg, "_segment_at_network_scale", fake)
    model = SpocoModel.new(SMALL)
    model.history["pixel_scale"] = 0.5
    out = segment(model, np.random.rand(100, 60), config=ClusterConfig(min_size=400, max_size=8000, expand=4))
    assert out.shape == (100, 60) and seen["shape"] == (50, 30)
    assert (seen["config"].min_size, seen["config"].max_size, seen["config"].expand) == (100, 2000, 2)


def test_the_user_is_told_why_training_runs_at_a_scale():
    from napari_spoco.scaling import scale_note

    _, sparse, _ = _big_disks(radius=35)
    assert scale_note(1.0, [sparse]) == ""
    assert "about 70 px across" in scale_note(0.43, [sparse]) and "0.43" in scale_note(0.43, [sparse])
    assert "keeping it" in scale_note(0.5, [sparse], model_scale=0.5)
