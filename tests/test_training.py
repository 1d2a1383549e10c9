"""The training loop: progress, stopping, determinism, fine-tuning, and one honest learning test."""

import threading

import numpy as np
import pytest

from napari_spoco.errors import SpocoError
from napari_spoco.metrics import evaluate
from napari_spoco.model import ModelConfig, SpocoModel
from napari_spoco.sample import load_sample
from napari_spoco.segmentation import segment
from napari_spoco.training import TrainConfig, train

SMALL = ModelConfig(base_features=8, depth=2)


def _quick(steps=3, **kw):
    return TrainConfig(steps=steps, batch_size=2, patch_shape=(32, 32), device="cpu", **kw)


def test_progress_is_reported_every_step(tiny_pair):
    image, sparse, _ = tiny_pair
    seen = []
    model = train([image], [sparse], _quick(4), model_config=SMALL, callback=seen.append)
    assert [p.step for p in seen] == [1, 2, 3, 4]
    assert all(np.isfinite(p.losses["total"]) and p.elapsed > 0 for p in seen)
    assert seen[-1].fraction == pytest.approx(1.0)
    assert model.history["steps"] == 4


def test_stop_event_ends_training_early_and_leaves_a_usable_model(tiny_pair):
    image, sparse, _ = tiny_pair
    stop = threading.Event()

    def cb(p):
        if p.step == 2:
            stop.set()

    model = train([image], [sparse], _quick(50), model_config=SMALL, callback=cb, stop=stop)
    assert model.history["steps"] == 2
    labels = segment(model, image, device="cpu")
    assert labels.shape == image.shape


def test_same_seed_gives_identical_models(tiny_pair):
    image, sparse, _ = tiny_pair
    a = train([image], [sparse], _quick(3), model_config=SMALL)
    b = train([image], [sparse], _quick(3), model_config=SMALL)
    for pa, pb in zip(a.student.parameters(), b.student.parameters()):
        assert (pa == pb).all()


def test_fine_tuning_continues_from_the_given_model(tiny_pair):
    image, sparse, _ = tiny_pair
    model = train([image], [sparse], _quick(2), model_config=SMALL)
    again = train([image], [sparse], _quick(2), model=model)
    assert again is model and model.history["steps"] == 4


def test_3d_training_runs_and_2d_model_refuses_3d_images():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(8, 24, 24)).astype(np.float32)
    lab = np.zeros((8, 24, 24), np.uint16)
    lab[2:6, 3:9, 3:9] = 1
    lab[2:6, 14:20, 14:20] = 2
    model = train([vol], [lab], TrainConfig(steps=2, batch_size=1, patch_shape=(8, 16, 16), device="cpu"),
                  model_config=SMALL)
    assert model.config.ndim == 3
    model2d = SpocoModel.new(SMALL)
    with pytest.raises(SpocoError, match="model is 2D but the images are 3D"):
        train([vol], [lab], _quick(1), model=model2d)


def test_background_label_is_not_an_object(tiny_pair):
    image, sparse, truth = tiny_pair
    lab = sparse.copy()
    lab[:4, :4] = 99
    # With 99 as background only the 3 painted disks are objects; without, 99 would be a 4th.
    train([image], [lab], _quick(1, background_label=99), model_config=SMALL)
    only_bg = np.where(sparse == 1, 1, 0)
    only_bg[:4, :4] = 99
    with pytest.raises(SpocoError, match="one painted object"):
        train([image], [only_bg], _quick(1, background_label=99), model_config=SMALL)


def test_a_short_training_beats_the_untrained_model_on_real_nuclei():
    """Learning test on the shipped BBBC039 crop: 8 of 36 nuclei painted, AP50 on all of them
    and on the held-out crop must rise well above the untrained network's."""
    data = load_sample()
    config = TrainConfig(steps=150, device="cpu", seed=0)
    untrained = SpocoModel.new(ModelConfig(), seed=0)
    before = evaluate(data.test_truth, segment(untrained, data.test_image, device="cpu"))["AP50"]
    model = train([data.train_image], [data.train_sparse], config)
    after_train = evaluate(data.train_truth, segment(model, data.train_image, device="cpu"))["AP50"]
    after_test = evaluate(data.test_truth, segment(model, data.test_image, device="cpu"))["AP50"]
    print(f"AP50 untrained {before:.3f}, trained: train crop {after_train:.3f}, held-out {after_test:.3f}")
    assert after_test >= before + 0.25
    assert after_train >= 0.35
