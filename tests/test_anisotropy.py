"""Anisotropic voxels: spacing from the user or the TIFF metadata, cubic voxels for the network."""

import numpy as np
import pytest
import tifffile

from napari_spoco import segment
from napari_spoco import segmentation as seg_module
from napari_spoco.cli import main
from napari_spoco.errors import SpocoError
from napari_spoco.io import load_model, read_voxel_size, save_model
from napari_spoco.scaling import anisotropy, axis_factors, check_voxel_size
from napari_spoco.training import TrainConfig, train


def test_coarse_axes_are_brought_to_the_finest_spacing_within_a_limit():
    assert anisotropy((2.0, 0.5, 0.5), 3) == (4.0, 1.0, 1.0)
    assert anisotropy((6.0, 1.0, 1.0), 3) == (4.0, 1.0, 1.0)  # capped
    assert anisotropy(None, 3) == (1.0, 1.0, 1.0) and anisotropy((0.3, 0.3), 2) == (1.0, 1.0)
    assert axis_factors(0.5, (1.0, 0.5, 0.5), 3) == (1.0, 0.5, 0.5)
    assert check_voxel_size([1, 2, 3]) == (1.0, 2.0, 3.0) and check_voxel_size(None) is None
    for bad in ([0, 1, 1], [1], "abc", [1, float("nan"), 1]):
        with pytest.raises(SpocoError, match="[Vv]oxel size"):
            check_voxel_size(bad)
    with pytest.raises(SpocoError, match="has 2 values but the image has 3 spatial axes"):
        check_voxel_size([1, 1], 3)


def test_voxel_size_is_read_from_imagej_and_ome_tiffs(tmp_path):
    vol = np.zeros((4, 16, 16), np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", vol, imagej=True, resolution=(4.0, 4.0),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    tifffile.imwrite(tmp_path / "ome.tif", vol, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 1.5, "PhysicalSizeY": 0.3, "PhysicalSizeX": 0.3})
    tifffile.imwrite(tmp_path / "plain.tif", vol)
    assert read_voxel_size(tmp_path / "ij.tif", 3) == (2.0, 0.25, 0.25)
    assert read_voxel_size(tmp_path / "ome.tif", 3) == (1.5, 0.3, 0.3)
    assert read_voxel_size(tmp_path / "plain.tif", 3) is None
    assert read_voxel_size(tmp_path / "missing.tif", 3) is None


def _blobs(z_step: int, depth: int = 24, z: tuple[int, int] = (8, 16)):
    """Balls of radius 6 in an isotropic grid of ``depth`` x 32 x 32 (centres at slices ``z``),
    sampled every ``z_step``-th slice."""
    zz, yy, xx = np.mgrid[:depth, :32, :32]
    truth = np.zeros((depth, 32, 32), np.uint16)
    for i, (cz, y, x) in enumerate([(z[0], 8, 8), (z[0], 22, 22), (z[1], 8, 22), (z[1], 22, 8)], start=1):
        truth[(zz - cz) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 < 36] = i
    image = (truth > 0) * 100.0 + np.random.default_rng(0).normal(10, 2, truth.shape)
    return image[::z_step].astype(np.float32), truth[::z_step]


def test_training_and_segmenting_run_on_cubic_voxels_and_labels_come_back_at_the_image_shape(monkeypatch, tmp_path):
    image, truth = _blobs(z_step=3)  # 8 x 32 x 32, voxel 3 x 1 x 1
    config = TrainConfig(steps=1, patch_shape=(16, 32, 32), batch_size=1, device="cpu", voxel_size=(3.0, 1.0, 1.0))
    model = train([image], [truth], config)
    assert model.voxel_size == (3.0, 1.0, 1.0) and model.network_factors() == (3.0, 1.0, 1.0)
    model = load_model(save_model(model, tmp_path / "m.spoco.pt"))  # the voxel size travels in the file
    seen = []
    real = seg_module._segment_at_network_scale
    monkeypatch.setattr(seg_module, "_segment_at_network_scale",
                        lambda m, img, *a, **k: seen.append(img.shape) or real(m, img, *a, **k))
    labels = segment(model, image, device="cpu")  # the model's voxel size by default
    assert seen[-1] == (24, 32, 32) and labels.shape == image.shape
    segment(model, image, device="cpu", voxel_size=(1.0, 1.0, 1.0))  # this image's own spacing
    assert seen[-1] == (8, 32, 32)
    with pytest.raises(SpocoError, match="has 2 values"):
        segment(model, image, device="cpu", voxel_size=(1.0, 1.0))


def test_cli_reads_the_spacing_from_the_files_and_says_so(tmp_path, capsys):
    image, truth = _blobs(z_step=2)
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", image, imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 1.0, "axes": "ZYX"})
    tifffile.imwrite(tmp_path / "labels" / "a.tif", truth)
    out = tmp_path / "m.spoco.pt"
    base = ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"), "--steps", "1",
            "--device", "cpu", "--patch-size", "16", "32", "32", "--batch-size", "1", "--init", "none"]
    assert main(base + ["--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Voxel size 1 x 0.5 x 0.5 (from the TIFF metadata); axes interpolated by 2 x 1 x 1" in err
    assert load_model(out).history["voxel_size"] == [1.0, 0.5, 0.5]
    assert main(base + ["--out", str(tmp_path / "n.spoco.pt"), "--voxel-size", "1", "1"]) == 2
    assert "has 2 values but the image has 3 spatial axes" in capsys.readouterr().err
    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(out), "--images", str(tmp_path / "images"), "--out", str(pred),
                 "--device", "cpu"]) == 0
    assert "segmented resized by 2, 1, 1 along Z, Y, X" in capsys.readouterr().err
    assert tifffile.imread(pred / "a.tif").shape == image.shape


def _flat_blobs(z_step: int):
    """:func:`_blobs` well inside the volume (objects cut by its edge do not count for the estimate)."""
    return _blobs(z_step, depth=36, z=(10, 24))


def test_the_voxel_size_is_estimated_from_how_flat_the_painted_objects_are():
    from napari_spoco.scaling import FLAT_ABOVE, estimate_voxel_size, painted_flatness

    _, round_balls = _flat_blobs(z_step=1)
    assert estimate_voxel_size([round_balls]) is None  # as deep as wide: cubic
    assert abs(painted_flatness([round_balls])[0] - 1.0) < 0.1
    _, flat = _flat_blobs(z_step=3)  # balls sampled every third slice: 3x flatter in voxels
    (z, y, x) = estimate_voxel_size([flat])
    assert 2.5 <= z <= 3.5 and (y, x) == (1.0, 1.0)
    assert estimate_voxel_size([flat], background_label=1) is not None  # three objects left
    few = np.where(flat > 2, flat, 0)
    assert estimate_voxel_size([few]) is None  # two objects say too little
    # flattened nuclei at cubic voxels (cells3d's are 1.57x flatter) are left cubic
    zz, yy, xx = np.mgrid[:20, :40, :40]
    nuclei = np.zeros((20, 40, 40), np.uint16)
    for i, (cy, cx) in enumerate([(10, 10), (10, 30), (30, 10), (30, 30)], start=1):
        nuclei[((zz - 10) / 5.0) ** 2 + ((yy - cy) / 8.0) ** 2 + ((xx - cx) / 8.0) ** 2 < 1] = i
    assert painted_flatness([nuclei])[0] < FLAT_ABOVE and estimate_voxel_size([nuclei]) is None
    assert estimate_voxel_size([np.ones((16, 16), np.uint16)]) is None  # 2D
    # objects painted on one slice each (napari's default brush) say nothing about depth
    strokes = np.zeros_like(round_balls)
    strokes[8], strokes[16] = round_balls[8], round_balls[16]
    assert painted_flatness([strokes])[1] == 0 and estimate_voxel_size([strokes]) is None
    # objects cut by the volume's first or last slice look flat: left out
    assert estimate_voxel_size([round_balls[8:]]) is None and painted_flatness([round_balls[8:]])[1] == 2
    # ids as large as a label image may hold are renumbered, not listed one by one
    huge = np.where(flat == 4, 2**31 - 1, flat).astype(np.uint32)
    assert estimate_voxel_size([huge]) == estimate_voxel_size([flat])
    # what the CLI and the panel say
    from napari_spoco.scaling import explain_voxel_estimate

    def estimate_note(labels):
        return explain_voxel_estimate(labels)[1]

    assert flat is not None and explain_voxel_estimate([flat])[0] == estimate_voxel_size([flat])
    assert "z-step taken as" in estimate_note([flat]) and "as nuclei are themselves" in estimate_note([round_balls])
    assert "too few painted objects" in estimate_note([few]) and estimate_note([np.ones((4, 4))]) == ""
    very_flat = np.zeros((12, 64, 64), np.uint16)
    for i, (y, x) in enumerate([(16, 16), (16, 48), (48, 16)], start=1):
        very_flat[4:7, y - 12:y + 12, x - 12:x + 12] = i  # 3 slices, 24 px across: 8x flatter
    assert estimate_voxel_size([very_flat])[0] == 4.0 and "capped at 4" in estimate_note([very_flat])


def test_training_estimates_the_voxel_size_when_nothing_records_it_and_keeps_a_given_one():
    image, truth = _flat_blobs(z_step=3)
    config = TrainConfig(steps=1, patch_shape=(8, 32, 32), batch_size=1, device="cpu")
    model = train([image], [truth], config)
    assert model.history["voxel_size_estimated"] and 2.5 <= model.voxel_size[0] <= 3.5
    assert model.network_factors()[0] == pytest.approx(model.voxel_size[0], abs=0.01)
    given = train([image], [truth], TrainConfig(steps=1, patch_shape=(8, 32, 32), batch_size=1, device="cpu",
                                                voxel_size=(1.0, 1.0, 1.0)))
    assert given.voxel_size == (1.0, 1.0, 1.0) and not given.history["voxel_size_estimated"]
    # fine-tuning keeps the starting model's voxel size
    again = train([image], [truth], config, model=model)
    assert again.voxel_size == model.voxel_size and not again.history["voxel_size_estimated"]


def test_cli_says_when_it_estimates_the_voxel_size(tmp_path, capsys):
    image, truth = _flat_blobs(z_step=3)
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", image)  # no spacing recorded
    tifffile.imwrite(tmp_path / "labels" / "a.tif", truth)
    base = ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"), "--steps", "1",
            "--device", "cpu", "--patch-size", "8", "32", "32", "--batch-size", "1", "--init", "none"]
    assert main(base + ["--out", str(tmp_path / "m.spoco.pt")]) == 0
    err = capsys.readouterr().err
    assert "flatter along z than across: z-step taken as" in err and "--voxel-size 1 1 1 for cubic" in err
    estimated = load_model(tmp_path / "m.spoco.pt")
    assert estimated.voxel_size[0] > 2.0 and estimated.history["voxel_size_estimated"]
    assert main(base + ["--out", str(tmp_path / "c.spoco.pt"), "--voxel-size", "1", "1", "1"]) == 0
    assert "flatter" not in capsys.readouterr().err
    assert load_model(tmp_path / "c.spoco.pt").voxel_size == (1.0, 1.0, 1.0)
