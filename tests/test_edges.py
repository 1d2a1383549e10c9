"""The object edge calibrated on the painted objects (edges.py): measured, recorded, applied."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_spoco.clustering import ClusterConfig
from napari_spoco.data import prepare_training_data
from napari_spoco.edges import MAX_EXPAND, edge_expand, expand_scores
from napari_spoco.errors import SpocoError
from napari_spoco.inference import Embedding


def disc(shape, centre, radius):
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def painted_scene(shape=(96, 96)):
    image = np.full(shape, 0.1, np.float32)
    labels = np.zeros(shape, np.int32)
    for k, (y, x) in enumerate([(24, 24), (24, 70), (70, 46)], start=1):
        d = disc(shape, (y, x), 12)
        image[d] = 1.0
        labels[d] = k
    return image, labels


def test_expand_scores_peak_at_the_growth_that_restores_a_shrunk_object():
    painted = disc((60, 60), (30, 30), 15)
    scores = expand_scores(disc((60, 60), (30, 30), 13), painted)
    assert len(scores) == MAX_EXPAND + 1 and int(np.argmax(scores)) == 2
    assert int(np.argmax(expand_scores(painted, painted))) == 0
    assert not expand_scores(np.zeros_like(painted), painted).any()


@pytest.mark.parametrize("shrink, expected", [(0, 0), (2, 2)])
def test_edge_expand_measures_how_far_the_foreground_falls_short(monkeypatch, shrink, expected):
    """A model whose foreground is the bright objects shrunk by ``shrink`` pixels (a stand-in for
    a head that stops short of the edge) is told to grow them by that much."""
    import napari_spoco.inference as inference
    from napari_spoco.model import ModelConfig, SpocoModel

    image, labels = painted_scene()
    data = prepare_training_data([image], [labels])

    def fake_embed(model, prepared, **kwargs):
        mask = prepared.data > 0.5  # the discs, normalised to about 1 on about 0
        fg = ndi.binary_erosion(mask, iterations=shrink) if shrink else mask
        return Embedding(np.zeros((2,) + mask.shape, np.float32), fg.astype(np.float32))

    monkeypatch.setattr(inference, "embed", fake_embed)
    model = SpocoModel.new(ModelConfig(ndim=2, base_features=8, depth=2))
    grow, scores = edge_expand(model, data)
    assert grow == expected and len(scores) == MAX_EXPAND + 1


@pytest.mark.parametrize("instance_shrink", [0, 2])
def test_edge_expand_follows_the_instances_segment_returns_not_the_raw_foreground(monkeypatch, instance_shrink):
    """The foreground reaches the edge exactly; the clustering returns the objects shrunk by
    ``instance_shrink`` pixels (as fragment absorption or a split can). The growth is what the
    returned objects need, not what the thresholded foreground would."""
    import napari_spoco.clustering as clustering
    import napari_spoco.inference as inference
    from napari_spoco.model import ModelConfig, SpocoModel

    image, labels = painted_scene()
    data = prepare_training_data([image], [labels])

    def fake_embed(model, prepared, **kwargs):
        mask = prepared.data > 0.5
        return Embedding(np.zeros((2,) + mask.shape, np.float32), mask.astype(np.float32))

    real = clustering.cluster_embeddings
    seen = []

    def shrunk_instances(embeddings, foreground, config, *rest):
        seen.append(config.expand)
        out = real(embeddings, foreground, config, *rest)
        if not instance_shrink:
            return out
        return np.where(ndi.binary_erosion(out > 0, iterations=instance_shrink), out, 0)

    monkeypatch.setattr(inference, "embed", fake_embed)
    monkeypatch.setattr(clustering, "cluster_embeddings", shrunk_instances)
    model = SpocoModel.new(ModelConfig(ndim=2, base_features=8, depth=2))
    model.history["edge_expand"] = 3  # a growth recorded before is not part of what is measured
    grow, scores = edge_expand(model, data)
    assert grow == instance_shrink
    assert seen and set(seen) == {0}


def test_training_records_the_edge_and_segment_grows_objects_by_it(tmp_path):
    from napari_spoco import TrainConfig, segment, train
    from napari_spoco.io import load_model, save_model
    from napari_spoco.model import ModelConfig

    image, labels = painted_scene()
    model = train([image], [labels], TrainConfig(steps=2, batch_size=2, patch_shape=(32, 32), device="cpu"),
                  model_config=ModelConfig(base_features=8, depth=2))
    assert model.history["edge_expand"] in range(MAX_EXPAND + 1)
    assert len(model.history["edge_scores"]) == MAX_EXPAND + 1
    loaded = load_model(save_model(model, tmp_path / "m.spoco.pt"))
    assert loaded.history["edge_expand"] == model.history["edge_expand"]

    import napari_spoco.segmentation as segmentation

    seen = []
    real = segmentation.cluster_embeddings

    def spy(embeddings, foreground, config, *rest):
        seen.append(config.expand)
        return real(embeddings, foreground, config, *rest)

    segmentation.cluster_embeddings = spy
    try:
        loaded.history["edge_expand"] = 2
        segment(loaded, image, device="cpu")
        segment(loaded, image, device="cpu", config=ClusterConfig(calibrated_edge=False))
        segment(loaded, image, device="cpu", config=ClusterConfig(expand=1))
    finally:
        segmentation.cluster_embeddings = real
    assert seen == [2, 0, 3]  # the calibrated growth comes on top of the user's


def test_training_measures_the_layout_first_and_the_edge_with_it(monkeypatch):
    """The edge is measured on the objects segment() will return, so after the layout that
    shapes them; the layout itself is measured without an earlier training's growth."""
    import napari_spoco.clustering as clustering
    import napari_spoco.layout as layout
    from napari_spoco import TrainConfig, train
    from napari_spoco.model import ModelConfig

    image, labels = painted_scene()
    config = TrainConfig(steps=2, batch_size=2, patch_shape=(32, 32), device="cpu")
    model = train([image], [labels], config, model_config=ModelConfig(base_features=8, depth=2))
    model.history["edge_expand"] = 3  # as an earlier training may have left it
    seen_growth, seen_layouts = [], []

    def fake_layout(model, data, seed=0):
        seen_growth.append(model.history.get("edge_expand"))
        return "separate", {"separate": 1.0, "tiled": 0.0, "objects": 3}

    real = clustering.cluster_embeddings

    def spy(embeddings, foreground, config, *rest):
        seen_layouts.append(config.layout)
        return real(embeddings, foreground, config, *rest)

    monkeypatch.setattr(layout, "measure_layout", fake_layout)
    monkeypatch.setattr(clustering, "cluster_embeddings", spy)
    model = train([image], [labels], config, model=model)
    assert seen_growth == [None]
    assert seen_layouts and set(seen_layouts) == {"separate"}
    assert model.history["layout"] == "separate" and model.history["edge_expand"] in range(MAX_EXPAND + 1)


def test_unusable_edge_records_and_settings_are_refused(tmp_path):
    from napari_spoco.io import load_model, save_model
    from napari_spoco.model import ModelConfig, SpocoModel

    model = SpocoModel.new(ModelConfig(ndim=2, base_features=8, depth=2))
    model.history["edge_expand"] = 9
    path = save_model(model, tmp_path / "bad.spoco.pt")
    with pytest.raises(SpocoError, match="edge_expand"):
        load_model(path)
    with pytest.raises(SpocoError, match="calibrated_edge"):
        ClusterConfig(calibrated_edge=1)


def test_objects_share_one_embedded_window_only_when_it_is_no_larger_than_their_crops():
    from napari_spoco.edges import _windows

    near = [(1, (slice(0, 40), slice(0, 40))), (2, (slice(10, 50), slice(10, 50)))]
    (window, members), = _windows(near, (500, 500))
    assert window == (slice(0, 50), slice(0, 50)) and [i for i, _ in members] == [1, 2]
    far = [(1, (slice(0, 40), slice(0, 40))), (2, (slice(400, 440), slice(400, 440)))]
    assert [w for w, _ in _windows(far, (500, 500))] == [r for _, r in far]


def test_a_failed_edge_measurement_keeps_the_trained_model_and_grows_nothing(monkeypatch, tmp_path):
    import napari_spoco.edges as edges
    from napari_spoco import TrainConfig, train
    from napari_spoco.io import load_model, save_model
    from napari_spoco.model import ModelConfig

    def broken(*args, **kwargs):
        raise MemoryError("no room to cluster")

    monkeypatch.setattr(edges, "edge_expand", broken)
    image, labels = painted_scene()
    with pytest.warns(UserWarning, match="edge to the painted ones"):
        model = train([image], [labels], TrainConfig(steps=2, batch_size=2, patch_shape=(32, 32), device="cpu"),
                      model_config=ModelConfig(base_features=8, depth=2))
    assert model.history["steps"] == 2 and model.history["edge_expand"] == 0
    assert load_model(save_model(model, tmp_path / "m.spoco.pt")).history["edge_expand"] == 0
