"""The shipped starting model and self-supervised pretraining (library and CLI)."""

import pytest
import tifffile
import torch

from napari_spoco import evaluate, segment
from napari_spoco.cli import main
from napari_spoco.errors import SpocoError
from napari_spoco.pretrained import DEFAULT_MODELS, has_default_model, load_default_model
from napari_spoco.sample import load_sample
from napari_spoco.training import TrainConfig, pretrain, pretrain_config


def test_shipped_default_model_is_small_2d_and_a_fresh_copy_each_time():
    from importlib.resources import files

    assert has_default_model(2) and not has_default_model(3)
    size = files("napari_spoco._models").joinpath(DEFAULT_MODELS[2]).stat().st_size
    assert size < 5_000_000
    a, b = load_default_model(2), load_default_model(2)
    assert a.config.ndim == 2 and a.history["steps"] > 1000
    with torch.no_grad():
        next(a.student.parameters()).add_(1.0)
    assert not torch.equal(next(a.student.parameters()), next(b.student.parameters()))
    with pytest.raises(SpocoError, match="no 3D starting model"):
        load_default_model(3)


def test_default_model_segments_unseen_nuclei_without_any_training():
    # The sample crops' source fields were held out of the default model's training set.
    s = load_sample()
    untrained = segment(load_default_model(2), s.test_image, device="cpu")
    assert evaluate(s.test_truth, untrained)["AP50"] >= 0.5


def test_pretrain_uses_consistency_and_teacher_foreground_only_and_keeps_the_size_prior(tiny_pair):
    image, _, _ = tiny_pair
    start = load_default_model(2)
    before = [p.clone() for p in start.student.parameters()]
    seen = []
    model = pretrain([image], TrainConfig(steps=3, patch_shape=(32, 32), batch_size=2), model=start,
                     callback=lambda p: seen.append(p.losses))
    assert len(seen) == 3 and model.history["steps"] == start.history["steps"]  # same object, +3
    assert all(v == 0.0 for loss in seen for k, v in loss.items() if k not in ("consistency", "foreground", "total"))
    assert all(loss["consistency"] > 0 and loss["foreground"] > 0 for loss in seen)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.student.parameters()))
    assert model.history["object_size_median"] > 0


def test_cli_pretrain_then_train_from_it(tmp_path, tiny_pair, capsys):
    image, sparse, _ = tiny_pair
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", image)
    tifffile.imwrite(tmp_path / "labels" / "a.tif", sparse)
    adapted = tmp_path / "adapted.spoco.pt"
    assert main(["pretrain", "--images", str(tmp_path / "images"), "--out", str(adapted), "--steps", "2",
                 "--device", "cpu"]) == 0
    assert adapted.is_file() and "shipped 2D model" in capsys.readouterr().err
    final = tmp_path / "final.spoco.pt"
    assert main(["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                 "--out", str(final), "--init", str(adapted), "--steps", "2", "--device", "cpu"]) == 0
    assert final.is_file()


def test_cli_init_none_trains_from_scratch(tmp_path, tiny_pair, capsys):
    from napari_spoco.io import load_model

    image, sparse, _ = tiny_pair
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", image)
    tifffile.imwrite(tmp_path / "labels" / "a.tif", sparse)
    out = tmp_path / "m.pt"
    assert main(["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                 "--out", str(out), "--init", "none", "--steps", "2", "--device", "cpu"]) == 0
    assert load_model(out).history["steps"] == 2
    assert "shipped" not in capsys.readouterr().err


def test_pretrain_from_a_model_keeps_the_teacher_near_it(tiny_pair):
    # Started from a trained model the teacher's momentum is the fixed 0.999, not the warm-up
    # that lets a scratch teacher follow the student: after 5 steps it has barely moved.
    image, _, _ = tiny_pair
    start = load_default_model(2)
    original = [p.clone() for p in start.teacher.parameters()]
    model = pretrain([image], pretrain_config(steps=5, patch_shape=(32, 32), batch_size=2), model=start)
    student_move = sum(float((a - b.detach()).abs().sum()) for a, b in zip(original, model.student.parameters()))
    teacher_move = sum(float((a - b).abs().sum()) for a, b in zip(original, model.teacher.parameters()))
    assert 0 < teacher_move < 0.02 * student_move


def test_pretrain_config_is_gentler_than_training():
    assert pretrain_config().learning_rate < TrainConfig().learning_rate
    assert pretrain_config(steps=7).steps == 7
