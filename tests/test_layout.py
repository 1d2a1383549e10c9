"""Which post-processing fits the user's objects (layout.py): measured on the painted objects,
recorded by training, used by segment()."""

import numpy as np
import pytest

from napari_spoco.clustering import ClusterConfig, cluster_embeddings
from napari_spoco.data import prepare_training_data
from napari_spoco.errors import SpocoError
from napari_spoco.inference import Embedding
from napari_spoco.layout import decide, measure_layout, recovered
from napari_spoco.model import ModelConfig, SpocoModel


def packed_discs(shape=(128, 128), spacing=16, radius=9):
    """Discs on a grid, each overlapping its neighbours (necks of about 8 px): a packed mass that
    covers most of the image, as packed nuclei do. Returns (image, truth)."""
    truth = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf)
    yy, xx = np.indices(shape)
    k = 0
    for y in range(spacing // 2 + 4, shape[0] - 4, spacing):
        for x in range(spacing // 2 + 4, shape[1] - 4, spacing):
            k += 1
            d = np.hypot(yy - y, xx - x)
            win = (d <= radius) & (d < best)
            truth[win], best[win] = k, d[win]
    image = np.where(truth > 0, 1.0, 0.1).astype(np.float32)
    return image, truth


def fake_network(monkeypatch):
    """A network whose foreground is the bright pixels and whose embedding is one point for all:
    the clustering then sees one piece per connected mass, as after minutes of training on
    packed objects, and only the post-processing can separate them."""
    import napari_spoco.inference as inference
    import napari_spoco.segmentation as segmentation

    def embed(model, prepared, **kwargs):
        fg = (prepared.data > 0.5).astype(np.float32)
        return Embedding(np.zeros((2,) + fg.shape, np.float32), fg)

    monkeypatch.setattr(segmentation, "embed", embed)  # segment()
    monkeypatch.setattr(inference, "embed", embed)  # measure_layout() embeds each window once itself


def test_decide_needs_more_than_chance():
    yes, no = np.ones(10, bool), np.zeros(10, bool)
    assert decide(yes, no) == "separate"
    assert decide(no, yes) == "tiled"
    assert decide(yes, yes) is None
    # 4 objects only one way, 2 only the other: could be chance
    a = np.array([1, 1, 1, 1, 0, 0, 1, 1], bool)
    b = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    assert decide(a, b) is None


def test_recovered_is_the_best_iou_per_painted_object():
    painted = np.zeros((10, 10), int)
    painted[:5, :5] = 1
    painted[5:, 5:] = 2
    labels = np.zeros_like(painted)
    labels[:5, :5] = 7  # exact
    labels[5:, :] = 3  # twice too large
    assert recovered(labels, painted, [1, 2]) == pytest.approx([1.0, 0.5])


def test_packed_objects_are_measured_as_separate_and_segmented_so(monkeypatch):
    """Packed discs cover most of the image, so the foreground-fraction rule calls them tiled and
    the boundary merge joins them all; the painted discs show that the shape split recovers them."""
    fake_network(monkeypatch)
    image, truth = packed_discs()
    painted = np.where(np.isin(truth, [9, 11, 13, 23, 25, 27, 37, 39, 41, 44]), truth, 0)
    data = prepare_training_data([image], [painted])
    model = SpocoModel.new(ModelConfig(ndim=2, base_features=8, depth=2))
    from napari_spoco.shapes import painted_solidity

    sizes = np.bincount(painted.ravel())[1:]
    model.history.update(object_size_median=float(np.median(sizes[sizes > 0])),
                         object_solidity=painted_solidity([painted]))
    import napari_spoco.inference as inference

    calls = []
    counted = inference.embed
    monkeypatch.setattr(inference, "embed", lambda *a, **k: calls.append(1) or counted(*a, **k))
    layout, shares = measure_layout(model, data)
    assert layout == "separate", shares
    assert shares["separate"] >= 0.9 and shares["tiled"] == 0.0 and shares["objects"] == 10
    assert len(calls) == 1  # one window, embedded once for both layouts

    from napari_spoco import evaluate, segment

    before = segment(model, image, device="cpu")  # no measured layout: the fraction rule (tiled)
    model.history["layout"] = layout
    after = segment(model, image, device="cpu")
    assert before.max() <= 2
    assert evaluate(truth, after)["AP50"] > 0.9
    # an explicit choice wins over the model's record
    assert segment(model, image, device="cpu", config=ClusterConfig(layout="tiled")).max() <= 2


def test_a_packed_mass_is_split_before_the_size_cap_drops_it():
    """The cap on piece size (background the head has not learned) looks at the pieces after the
    shape split: a mass of touching objects larger than the cap is cut, not dropped."""
    image, truth = packed_discs()
    fg = (truth > 0).astype(np.float32)
    config = ClusterConfig(layout="separate", object_size=250.0, shape_reference=0.95, min_size=16,
                           max_size=2500, calibrated_edge=False)
    labels = cluster_embeddings(np.zeros((2,) + fg.shape, np.float32), fg, config)
    assert labels.max() >= 0.9 * truth.max()
    # a mass that stays huge after the split (one convex blob) is still dropped as background
    blob = np.zeros((128, 128), np.float32)
    blob[10:110, 10:110] = 1.0
    assert cluster_embeddings(np.zeros((2, 128, 128), np.float32), blob, config).max() == 0


def test_layout_setting_is_checked():
    with pytest.raises(SpocoError, match="layout"):
        ClusterConfig(layout="packed")


def test_training_records_the_layout(tmp_path):
    from napari_spoco import TrainConfig, train
    from napari_spoco.io import load_model, save_model

    image, truth = packed_discs((64, 64))
    painted = np.where(np.isin(truth, [1, 6, 11]), truth, 0)
    model = train([image], [painted], TrainConfig(steps=2, batch_size=2, patch_shape=(32, 32), device="cpu"),
                  model_config=ModelConfig(base_features=8, depth=2))
    assert model.history["layout"] in ("separate", "tiled", None)
    assert "layout_scores" in model.history
    loaded = load_model(save_model(model, tmp_path / "m.spoco.pt"))
    assert loaded.history["layout"] == model.history["layout"]


def test_a_failed_measurement_keeps_the_trained_model(monkeypatch):
    import napari_spoco.layout as layout
    from napari_spoco import TrainConfig, train

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(layout, "measure_layout", broken)
    image, truth = packed_discs((64, 64))
    painted = np.where(np.isin(truth, [1, 6, 11]), truth, 0)
    with pytest.warns(UserWarning, match="how the objects lie"):
        model = train([image], [painted], TrainConfig(steps=2, batch_size=2, patch_shape=(32, 32), device="cpu"),
                      model_config=ModelConfig(base_features=8, depth=2))
    assert model.history["steps"] == 2 and model.history["layout"] is None


def test_the_layout_note_says_which_painted_objects_it_counts():
    """The note after training counts the painted objects measured whole in its windows, which
    may be fewer than those painted: it must say so, not pass for the painted count."""
    from napari_spoco.layout import layout_note

    note = layout_note({"layout": "separate", "layout_scores": {"separate": 0.875, "tiled": 0.5, "objects": 7}})
    assert note.startswith("Objects stand apart (of the 7 painted objects measured whole, splitting merged pieces "
                           "recovers 88%, joining unseparated ones 50%)")
    assert layout_note({}) == ""


def _spread_painting(truth: np.ndarray, count: int) -> np.ndarray:
    ids = np.unique(truth[truth > 0])
    return np.where(np.isin(truth, ids[:: len(ids) // count][:count]), truth, 0)


def test_windows_grow_until_enough_painted_objects_lie_whole_in_them(monkeypatch):
    """Large objects painted far apart leave too few of them whole in a window of the usual size
    to decide anything (the foreground rule then joined packed nuclei in 3D: AP50 0.04 where the
    shape split gave 0.80); the window grows, within ``GROWN`` times its budget, until it holds
    ``MIN_OBJECTS`` (here the cap comes first, at 7), and the measurement decides. With fewer painted objects than any test could
    decide on, it keeps its size."""
    import napari_spoco.layout as layout
    from napari_spoco.shapes import painted_solidity

    fake_network(monkeypatch)
    monkeypatch.setattr(layout, "MAX_PIXELS", {2: 20_000, 3: 20_000})
    image, truth = packed_discs(shape=(392, 392), spacing=32, radius=18)
    model = SpocoModel.new(ModelConfig(ndim=2, base_features=8, depth=2))

    def measured(painted):
        sizes = np.bincount(painted.ravel())[1:]
        model.history.update(object_size_median=float(np.median(sizes[sizes > 0])),
                             object_solidity=painted_solidity([painted]))
        data = prepare_training_data([image], [painted])
        windows = layout.segment_windows(model, data)
        pixels = sum(int(np.prod(w.labels["separate"].shape)) for w in windows)
        return pixels, measure_layout(model, data, windows=windows)

    pixels, (chosen, shares) = measured(_spread_painting(truth, 16))
    assert 20_000 < pixels <= layout.GROWN * 20_000
    assert shares["objects"] >= layout.DECIDABLE and chosen == "separate", shares
    monkeypatch.setattr(layout, "GROWN", 1)  # the window of the usual size: too few to decide
    pixels, (chosen, shares) = measured(_spread_painting(truth, 16))
    assert pixels <= 20_000 and shares["objects"] < layout.DECIDABLE and chosen is None, shares
    monkeypatch.setattr(layout, "GROWN", 4)
    pixels, (chosen, shares) = measured(_spread_painting(truth, 4))  # four painted: never decidable
    assert pixels <= 20_000 and chosen is None
