"""The training loop: progress, stopping, determinism, fine-tuning, and one honest learning test."""

import threading

import numpy as np
import pytest
import torch

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
    with pytest.raises(SpocoError, match="model is 2D but the images are 3D") as refused:
        train([vol], [lab], _quick(1), model=model2d)
    assert "use the shipped 3D starting model (Default in the napari panel, --init default" in str(refused.value)


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


def _disks(seed=0):
    """128² image of 16 bright disks on a noisy background (some nearly touching), 4 painted."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:128, :128]
    truth = np.zeros((128, 128), np.uint16)
    k = 1
    for cy in range(14, 128, 32):
        for cx in range(14, 128, 32):
            cy2, cx2, r = cy + rng.integers(-3, 4), cx + rng.integers(-3, 4), rng.integers(8, 13)
            truth[((yy - cy2) ** 2 + (xx - cx2) ** 2 < r * r) & (truth == 0)] = k
            k += 1
    image = ((truth > 0) * 150.0 + rng.normal(30, 10, truth.shape)).astype(np.float32)
    sparse = np.where(np.isin(truth, [1, 6, 11, 16]), truth, 0).astype(np.uint16)
    return image, sparse, truth


def test_a_short_training_beats_the_untrained_model_on_synthetic_disks():
    image, sparse, truth = _disks()
    untrained = SpocoModel.new(ModelConfig(), seed=0)
    before = evaluate(truth, segment(untrained, image, device="cpu"))["AP50"]
    model = train([image], [sparse], TrainConfig(steps=60, device="cpu"))
    after = evaluate(truth, segment(model, image, device="cpu"))["AP50"]
    print(f"synthetic disks AP50: untrained {before:.3f}, after 60 steps {after:.3f}")
    assert after >= before + 0.3


def test_a_short_training_beats_the_untrained_model_on_real_nuclei():
    """The shipped BBBC039 crop: 8 of 36 nuclei painted; AP50 on all nuclei of the training crop
    and of a held-out crop must rise clearly above the untrained network's."""
    data = load_sample()
    untrained = SpocoModel.new(ModelConfig(), seed=0)
    pairs = [(data.train_image, data.train_truth), (data.test_image, data.test_truth)]
    before = np.mean([evaluate(t, segment(untrained, i, device="cpu"))["AP50"] for i, t in pairs])
    model = train([data.train_image], [data.train_sparse], TrainConfig(steps=250, device="cpu"))
    after = [evaluate(t, segment(model, i, device="cpu"))["AP50"] for i, t in pairs]
    print(f"nuclei AP50: untrained {before:.3f}, after 250 steps train crop {after[0]:.3f}, held-out {after[1]:.3f}")
    assert np.mean(after) >= before + 0.15


def test_iter_train_closed_early_still_leaves_a_usable_model(tiny_pair):
    from napari_spoco.training import iter_train

    image, sparse, _ = tiny_pair
    gen = iter_train([image], [sparse], TrainConfig(steps=50, patch_shape=(32, 32), batch_size=2))
    first = next(gen)
    assert first.step == 1 and first.model is not None
    model = first.model
    gen.close()
    assert model.history["steps"] == 1 and not model.student.training
    assert model.device.type == "cpu"


def test_training_from_scratch_is_untouched_by_the_stable_fine_tuning_start(tiny_pair):
    # The fine-tuning start (fixed teacher momentum, frozen BatchNorm statistics, warm-up,
    # teacher predictions; docs/method.md) applies to trained models only: from scratch, and
    # from a new network handed in, the run is the one it was before, bit for bit.
    from dataclasses import replace

    image, sparse, _ = tiny_pair
    a = train([image], [sparse], _quick(3), model_config=SMALL)
    b = train([image], [sparse], replace(_quick(3), stable_start=False), model_config=SMALL)
    c = train([image], [sparse], _quick(3), model=SpocoModel.new(SMALL))
    for m in (a, b, c):
        assert m.predictor is m.student
    for net in ("student", "teacher"):
        for x, y, z in zip(getattr(a, net).state_dict().values(), getattr(b, net).state_dict().values(),
                           getattr(c, net).state_dict().values()):
            assert torch.equal(x, y) and torch.equal(x, z)


def test_training_again_starts_the_teacher_from_the_network_that_predicted(tiny_pair):
    # A first round from scratch predicts with its student; its teacher followed the momentum
    # warm-up and differs. Training again on the same images is protected and predicts with the
    # teacher: that teacher must start as the student the user saw, not as the old average.
    from dataclasses import replace

    image, sparse, _ = tiny_pair
    first = train([image], [sparse], _quick(5), model_config=SMALL)
    assert first.predictor is first.student
    seen = {k: v.clone() for k, v in first.student.state_dict().items()}
    assert any(not torch.equal(v, first.teacher.state_dict()[k]) for k, v in seen.items())
    again = train([image], [sparse], replace(_quick(1), learning_rate=1e-12), model=first)
    assert again.history["stable_start"] and again.predictor is again.teacher
    for k, v in again.teacher.state_dict().items():
        assert torch.allclose(v.float(), seen[k].float(), atol=1e-6), k


def test_the_foreground_target_of_unpainted_pixels_comes_from_the_teacher_only_after_a_trained_start(
        tiny_pair, monkeypatch):
    # Unpainted pixels are unknown: a trained start's teacher says what they are (docs/method.md,
    # "Background"); a new network knows nothing, so there they count as background, as before.
    import napari_spoco.training as tr

    image, sparse, _ = tiny_pair
    real_loss = tr.spoco_loss
    seen = []

    def recording(*args, **kwargs):
        seen.append(args[8] if len(args) > 8 else kwargs.get("teacher_fg_logits"))
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(tr, "spoco_loss", recording)
    trained = train([image], [sparse], _quick(2), model_config=SMALL)
    assert seen and all(t is None for t in seen)
    seen.clear()
    train([image], [sparse], _quick(2), model=SpocoModel.new(SMALL))
    assert seen and all(t is None for t in seen)
    seen.clear()
    train([image], [sparse], _quick(2), model=trained)
    # (the calls before the two steps measure how well the start fits: embeddings only)
    assert len(seen) >= 2 and all(t is not None and t.shape[0] == 2 for t in seen[-2:])


def test_a_3d_fine_tuning_takes_the_teachers_foreground_target_only_when_asked(monkeypatch):
    # Off by default in 3D (measured lower on packed nuclei: docs/benchmarks.md); the switch
    # LossConfig.foreground_teacher_3d turns it on, so that variants can be measured.
    from dataclasses import replace

    import napari_spoco.training as tr
    from napari_spoco.losses import LossConfig

    rng = np.random.default_rng(0)
    vol = rng.normal(size=(8, 24, 24)).astype(np.float32)
    lab = np.zeros((8, 24, 24), np.uint16)
    lab[2:6, 3:9, 3:9] = 1
    lab[2:6, 14:20, 14:20] = 2
    real_loss = tr.spoco_loss
    seen = []

    def recording(*args, **kwargs):
        seen.append(args[8] if len(args) > 8 else kwargs.get("teacher_fg_logits"))
        return real_loss(*args, **kwargs)

    cfg = TrainConfig(steps=2, batch_size=1, patch_shape=(8, 16, 16), device="cpu")
    trained = train([vol], [lab], cfg, model_config=SMALL)
    monkeypatch.setattr(tr, "spoco_loss", recording)
    train([vol], [lab], cfg, model=trained)
    assert seen and all(t is None for t in seen)
    seen.clear()
    train([vol], [lab], replace(cfg, loss=LossConfig(foreground_teacher_3d=True)), model=trained)
    assert len(seen) >= 2 and all(t is not None and t.shape[0] == 1 and t.ndim == 4 for t in seen[-2:])


def test_a_step_with_non_finite_gradients_is_skipped_and_never_reaches_the_weights(tiny_pair, monkeypatch):
    """A finite loss can still give NaN/inf gradients (a bfloat16 backward that overflows); one
    Adam step with them would leave NaN weights behind. Such a step is skipped, and several in
    a row end training with a clear message, the weights as they were."""
    import napari_spoco.training as tr

    image, sparse, _ = tiny_pair
    real_loss = tr.spoco_loss
    bad = {1, 2}  # the steps (counted from 0) whose gradients are poisoned

    def poisoned(emb, *args, **kwargs):
        losses = real_loss(emb, *args, **kwargs)
        if poisoned.calls in bad:  # sqrt at 0: the value stays 0, its gradient is not finite
            losses["total"] = losses["total"] + torch.sqrt((emb * 0).abs()).sum()
        poisoned.calls += 1
        return losses

    poisoned.calls = 0
    monkeypatch.setattr(tr, "spoco_loss", poisoned)
    cfg = TrainConfig(steps=4, batch_size=2, patch_shape=(32, 32), device="cpu", precision="float32")
    model = train([image], [sparse], cfg, model_config=ModelConfig(base_features=4, depth=2))
    assert len(model.history["losses"]) == 4
    assert all(torch.isfinite(p).all() for p in model.student.parameters())
    assert all(torch.isfinite(p).all() for p in model.teacher.parameters())

    bad.update(range(2, 100))
    poisoned.calls = 0
    with pytest.raises(SpocoError, match="NaN/inf gradients"):
        train([image], [sparse], TrainConfig(**{**cfg.__dict__, "steps": 20}), model_config=ModelConfig(base_features=4, depth=2))
