"""Test-time augmentation: the network's output averaged over a tile and its mirror images in Y
and X (docs/method.md, "Test-time augmentation"), on by default wherever a user segments, off in
live previews, and reachable from predict."""

import inspect

import numpy as np
import pytest
import torch

from napari_spoco.inference import embed, tta_flips
from napari_spoco.model import ModelConfig, SpocoModel


def _model(ndim: int) -> SpocoModel:
    m = SpocoModel.new(ModelConfig(ndim=ndim, base_features=4, depth=3), seed=1)
    gen = torch.Generator().manual_seed(ndim)  # torch seeds its global generator at random in each process
    for mod in m.student.modules():  # running statistics as after training
        if hasattr(mod, "running_var"):
            mod.running_mean.uniform_(-0.2, 0.2, generator=gen)
            mod.running_var.uniform_(0.5, 2.0, generator=gen)
    return m


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


@pytest.mark.parametrize("shape", [(64, 48), (16, 32, 24)])
def test_tta_is_the_mean_of_the_mirrored_images_embeddings_mirrored_back(shape):
    """With no reflected margin and a shape the network divides, mirroring a tile is mirroring
    the image: the augmented embedding must be the mean of the plain ones (four in 2D, two in 3D),
    each flipped back."""
    model = _model(len(shape))
    image = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    views = []
    flips = tta_flips(len(shape))
    assert len(flips) == (4 if len(shape) == 2 else 2)
    for axes in flips:
        e = embed(model, np.flip(image, axes).copy(), device="cpu", margin=0, tta=False)
        views.append((np.flip(e.embeddings, tuple(a for a in axes)), np.flip(e.foreground, axes)))
    want = np.mean([v[0] for v in views], 0)
    want_fg = 1 / (1 + np.exp(-np.mean([_logit(v[1]) for v in views], 0)))  # logits are averaged
    got = embed(model, image, device="cpu", margin=0)  # on by default
    scale = np.abs(want).mean()
    assert np.abs(got.embeddings - want).max() < 1e-5 * scale
    assert np.abs(got.foreground - want_fg).max() < 1e-4
    plain = embed(model, image, device="cpu", margin=0, tta=False)
    assert np.abs(plain.embeddings - got.embeddings).max() > 1e-3 * scale  # it does change something


@pytest.mark.parametrize("shape,whole_tile,tile", [((300, 260), (512, 512), (128, 128)),
                                                   ((24, 150, 130), (64, 256, 256), (64, 96, 80))])
def test_tta_tiles_still_reproduce_the_whole_image_exactly(shape, whole_tile, tile):
    """Each mirrored view of a tile is exact beyond the receptive radius, so their mean is too;
    the kept part of each view is taken from the mirrored output at the mirrored place, so the
    tiles' parts must line up in 3D (mirrored in Y and X) as in 2D."""
    model = _model(len(shape))
    image = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    whole = embed(model, image, tile_shape=whole_tile, device="cpu", tta=True, precision="float32")
    tiled = embed(model, image, tile_shape=tile, device="cpu", tta=True, precision="float32")
    assert np.abs(whole.embeddings - tiled.embeddings).max() < 1e-5 * np.abs(whole.embeddings).mean()
    assert np.abs(whole.foreground - tiled.foreground).max() < 1e-5


def test_tta_is_on_where_users_segment_and_off_in_live_previews(monkeypatch):
    from napari_spoco import segment, segmentation
    from napari_spoco.batch import PredictOptions
    from napari_spoco.blockwise import segment_blockwise
    from napari_spoco.segmentation import segment_series

    for f in (segment, embed, segment_blockwise, segment_series):
        assert inspect.signature(f).parameters["tta"].default is True, f.__name__
    assert PredictOptions(None).tta is True

    seen = []
    real = segmentation.embed

    def spy(*args, **kwargs):
        seen.append(kwargs["tta"])
        return real(*args, **kwargs)

    monkeypatch.setattr(segmentation, "embed", spy)
    model = _model(2)
    image = np.random.default_rng(4).normal(size=(96, 96)).astype(np.float32)
    segmentation.segment_preview(model, image, (slice(0, 64), slice(0, 64)))
    segment(model, image, device="cpu")
    segment(model, image, device="cpu", tta=False)
    assert seen == [False, True, False]


def test_predict_no_tta_reaches_segment(folders, monkeypatch):
    import napari_spoco.segmentation as seg
    from napari_spoco.cli import main
    from napari_spoco.io import save_model

    seen = []

    def fake(model, image, **kwargs):
        seen.append(kwargs["tta"])
        return np.zeros(image.shape, np.uint16)

    monkeypatch.setattr(seg, "segment", fake)
    model = save_model(SpocoModel.new(ModelConfig(ndim=2)), folders / "m.spoco.pt")
    for flag, out in (([], "a"), (["--no-tta"], "b")):
        assert main(["predict", "--model", str(model), "--images", str(folders / "images"),
                     "--out", str(folders / out), *flag]) == 0
    assert seen == [True, False]


def test_tta_runs_the_network_once_per_view_four_times_in_2d_twice_in_3d():
    """3D averages two views (as it is, mirrored in Y and X together): the network's time halves
    against four views at the same accuracy (docs/method.md, "Test-time augmentation")."""
    for shape, want in (((64, 48), [(), (-1,), (-2,), (-2, -1)]), ((16, 32, 24), [(), (-2, -1)])):
        model = _model(len(shape))
        calls = []
        hook = model.student.register_forward_hook(lambda mod, inp, out, calls=calls: calls.append(inp[0].shape))
        try:
            embed(model, np.zeros(shape, np.float32), device="cpu", margin=0, precision="float32")
        finally:
            hook.remove()
        assert len(calls) == len(want), shape
        assert list(tta_flips(len(shape))) == want
