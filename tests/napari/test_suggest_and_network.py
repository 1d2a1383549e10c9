"""The shipped 3D starting model, the Network choice and Suggest next, in the real widget (jobs
run inline: the ``spoco`` fixture)."""

import numpy as np
import pytest
from napari.layers import Points

from napari_spoco._napari.state import ModelSource
from napari_spoco._napari.suggest_row import SUGGESTIONS_LAYER
from napari_spoco.model import network_name
from napari_spoco.pretrained import has_default_model, load_default_model

pytestmark = pytest.mark.skipif(not has_default_model(3), reason="no shipped 3D model")


def _add_volume(viewer, widget, choose, balls, paint=True):
    """The ``balls`` volume as an image layer, two of its three balls painted."""
    volume, truth = balls
    viewer.add_image(volume, name="vol")
    choose(widget.data_panel.image_box, "vol")
    if paint:
        layer = widget.data_panel.new_sparse_labels()
        layer.data = np.where(truth <= 2, truth, 0).astype(np.uint32)
        widget.data_panel.all_pairs_check.setChecked(False)
    return truth


def test_first_train_on_a_volume_fine_tunes_the_shipped_3d_model(spoco, notes, choose, balls):
    viewer, widget = spoco
    _add_volume(viewer, widget, choose, balls)
    assert "shipped 3D starting model" in widget.model_panel.model_label.text()
    widget.train_panel.steps_spin.setValue(1)
    widget.train_panel.train_btn.click()
    assert not notes["error"], notes["error"]
    state = widget.state.model
    assert state.current.config.ndim == 3 and state.source is ModelSource.DEFAULT and state.fine_tuned
    assert state.current.history["steps"] == load_default_model(3).history["steps"] + 1
    assert "3D small model (shipped default, fine-tuned)" in widget.model_panel.model_label.text()


def test_default_loads_the_model_that_fits_the_chosen_image(spoco, notes, choose, balls):
    viewer, widget = spoco
    panel, state = widget.model_panel, widget.state.model
    widget.state.confirm = lambda question: True
    assert panel.use_default_model() and state.current.config.ndim == 2  # the 2D sample
    _add_volume(viewer, widget, choose, balls, paint=False)
    assert "3D starting model" in panel.default_model_btn.toolTip()
    panel.default_model_btn.click()
    assert state.current.config.ndim == 3 and state.source is ModelSource.DEFAULT
    widget.data_panel.series_check.setChecked(True)  # the stack is 2D+t: the 2D model
    panel.default_model_btn.click()
    assert state.current.config.ndim == 2
    viewer.add_image(np.zeros((2, 3, 16, 16), np.float32), name="4d")
    choose(widget.data_panel.image_box, "4d")
    assert not panel.use_default_model() and state.current.config.ndim == 2  # kept
    assert "no shipped 4D starting model" in notes["warning"][-1]


def test_network_choice_gives_a_new_network_its_preset(spoco, notes, monkeypatch):
    import napari_spoco._napari.workers as workers

    viewer, widget = spoco
    train, state = widget.train_panel, widget.state.model
    jobs = []
    monkeypatch.setattr(workers, "training_job", lambda job: jobs.append(job))  # no training
    assert train.network_box.isEnabled() and train.network_box.currentText() == "auto"
    train.network_box.setCurrentText("large")
    assert state.network == "large" and "new large network" in widget.model_panel.model_label.text()
    train.train_btn.click()  # large: the shipped (medium) 2D model is skipped
    assert jobs[-1].model is None and network_name(jobs[-1].model_config) == "large"
    train.network_box.setCurrentText("small")
    assert "new small network" in widget.model_panel.model_label.text()
    train.train_btn.click()  # small: not the shipped model's preset either
    assert jobs[-1].model is None and network_name(jobs[-1].model_config) == "small"
    train.network_box.setCurrentText("medium")
    assert "fine-tunes the shipped 2D starting model (a medium network)" in widget.model_panel.model_label.text()
    train.train_btn.click()  # medium (or auto): fine-tunes the shipped model
    assert jobs[-1].model is state.current and state.source is ModelSource.DEFAULT
    # With a model, the box shows its network and is disabled: training keeps the network.
    assert not train.network_box.isEnabled() and "medium network" in train.network_box.toolTip()


def test_a_large_network_trains_and_is_named_in_the_model_line(spoco, notes):
    viewer, widget = spoco
    widget.train_panel.network_box.setCurrentText("large")
    widget.train_panel.steps_spin.setValue(1)
    widget.train_panel.train_btn.click()
    assert not notes["error"], notes["error"]
    model = widget.state.model.current
    assert network_name(model.config) == "large" and widget.state.model.source is ModelSource.NEW
    assert "2D large model (new)" in widget.model_panel.model_label.text()
    assert widget.train_panel.network_box.currentText() == "large" and not widget.train_panel.network_box.isEnabled()


def _camera(viewer):
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def test_suggest_next_marks_doubtful_objects_and_next_visits_them(spoco, notes):
    viewer, widget = spoco
    widget.model_panel.default_model_btn.click()
    row = widget.segment_panel.suggest_row
    assert not row.suggest_btn.isEnabled() and not row.next_btn.isEnabled()
    widget.segment_panel.segment_btn.click()
    result = viewer.layers["nuclei instances"]
    assert row.embedding is not None and row.suggest_btn.isEnabled()
    row.k_spin.setValue(4)
    row.suggest_btn.click()
    assert not notes["error"], notes["error"]
    points = viewer.layers[SUGGESTIONS_LAYER]
    assert isinstance(points, Points) and len(points.data) == 4
    assert np.all(points.data >= 0) and np.all(points.data < np.array(result.data.shape))
    ids = set(np.unique(result.data)) - {0}
    assert set(points.features["id"]) <= ids and list(points.features["rank"]) == [1, 2, 3, 4]
    assert list(points.features["score"]) == sorted(points.features["score"], reverse=True)
    # the painted nuclei give the size objects should have, and are not suggested again
    assert row.painted_sizes(result.data.shape) is not None
    from napari_spoco.suggestions import painted_instances

    painted = painted_instances(result.data, widget.data_panel.labels.data, widget.data_panel.background_label)
    assert painted and not set(points.features["id"]) & set(painted)
    for i in range(2):
        assert row.go_to_next() == i
        assert np.allclose(_camera(viewer).center[-2:], points.data[i], atol=0.5)
        assert result.selected_label == points.features["id"][i]
        # the status line gives the signals behind the score; crowding is not one of them
        assert f"id {points.features['id'][i]}, score" in row.label.text() and "crowding" not in row.label.text()
        assert "foreground" in row.label.text()
    row.k_spin.setValue(2)
    row.suggest_btn.click()  # the same layer, updated
    assert len(viewer.layers[SUGGESTIONS_LAYER].data) == 2 and len(viewer.layers[SUGGESTIONS_LAYER].features) == 2
    assert row.go_to_next() == 0


def _segment_with_nothing_painted(viewer, widget):
    """The sample image alone (its Labels layers removed), segmented by the shipped model; the result layer."""
    for layer in [layer for layer in viewer.layers if layer.__class__.__name__ == "Labels"]:
        viewer.layers.remove(layer)
    assert widget.data_panel.labels is None
    widget.model_panel.default_model_btn.click()
    widget.segment_panel.segment_btn.click()
    return viewer.layers["nuclei instances"]


def test_sparse_labels_picker_never_takes_a_segmentation_by_itself(spoco, notes, choose):
    """A Segment result appearing when no painted layer is chosen stays unchosen (the picker
    lists it for the user); a painted layer added later is taken."""
    viewer, widget = spoco
    result = _segment_with_nothing_painted(viewer, widget)
    assert not notes["error"], notes["error"]
    assert widget.data_panel.labels is None and result in widget.data_panel.labels_box.choices
    assert not widget.train_panel.train_btn.isEnabled()
    painted = viewer.add_labels(np.zeros(result.data.shape, np.uint16), name="painted")
    assert widget.data_panel.labels is painted
    viewer.layers.remove(painted)  # gone: back to none, not to the segmentation
    assert widget.data_panel.labels is None
    choose(widget.data_panel.labels_box, "nuclei instances")  # the user's choice is kept
    viewer.add_labels(np.zeros(result.data.shape, np.uint16), name="later")
    assert widget.data_panel.labels is result


def test_use_selected_as_labels_with_no_sparse_labels_makes_them(spoco, notes):
    """Segment, then accept an object before painting anything: the accepted object starts a new
    sparse-labels layer of the image, chosen in the picker (not a refusal, not the result)."""
    viewer, widget = spoco
    result = _segment_with_nothing_painted(viewer, widget)
    correct = widget.correct_panel
    assert widget.data_panel.labels is None and correct.promote_sel_btn.isEnabled()
    ids = np.unique(result.data)
    result.selected_label = int(ids[ids > 0][0])
    assert correct.promote(selected_only=True) == 1
    assert not notes["error"] and not notes["warning"], (notes["error"], notes["warning"])
    sparse = widget.data_panel.labels
    assert sparse is viewer.layers["nuclei sparse labels"] and sparse is not result
    assert len(np.unique(sparse.data)) == 2 and np.array_equal(sparse.data > 0, result.data == result.selected_label)


def test_use_selected_as_background_paints_the_instance_with_the_background_value(spoco, notes):
    """A wrong instance (debris, a wall) marked with the button becomes painted background in the
    sparse labels, with the data panel's background value, around what is painted already."""
    viewer, widget = spoco
    result = _segment_with_nothing_painted(viewer, widget)
    correct = widget.correct_panel
    ids = [int(i) for i in np.unique(result.data) if i > 0]
    assert len(ids) >= 2 and correct.background_sel_btn.isEnabled()
    result.selected_label = ids[0]
    assert correct.promote(selected_only=True) == 1  # one accepted object starts the sparse labels
    widget.data_panel.bg_spin.setValue(4000)
    result.selected_label = ids[1]
    correct.background_sel_btn.click()
    assert not notes["error"] and not notes["warning"], (notes["error"], notes["warning"])
    sparse = widget.data_panel.labels.data
    assert np.array_equal(sparse == 4000, result.data == ids[1])
    assert np.array_equal((sparse > 0) & (sparse != 4000), result.data == ids[0])  # the object is kept
    result.selected_label = ids[1]  # painted already: a warning that says so, the labels unchanged
    assert correct.mark_selected_background() == 0 and "painted" in notes["warning"][-1]
    result.selected_label = max(ids) + 1  # no such instance: a warning, the labels unchanged
    assert correct.mark_selected_background() == 0 and "is not in" in notes["warning"][-1]
    assert np.array_equal(widget.data_panel.labels.data, sparse)


def test_suggest_next_without_sparse_labels_ranks_the_results_own_objects(spoco, notes, choose):
    """With the result itself chosen as sparse labels, its instances are predictions, not
    painted objects, and must still be suggested."""
    viewer, widget = spoco
    result = _segment_with_nothing_painted(viewer, widget)
    assert widget.data_panel.labels is None  # never chosen by itself
    row = widget.segment_panel.suggest_row
    row.suggest_btn.click()  # nothing chosen as the painting: every object is a candidate
    assert not notes["error"], notes["error"]
    assert set(viewer.layers[SUGGESTIONS_LAYER].features["id"]) <= set(np.unique(result.data)) - {0}
    choose(widget.data_panel.labels_box, "nuclei instances")
    row.k_spin.setValue(3)
    row.suggest_btn.click()
    assert not notes["error"], notes["error"]
    points = viewer.layers[SUGGESTIONS_LAYER]
    assert len(points.data) == 3 and set(points.features["id"]) <= set(np.unique(result.data)) - {0}
    assert row.painted_sizes(result.data.shape) is None  # sizes come from the result's own objects
    # Another image's segmentation chosen as sparse labels is no painting of this one either.
    viewer.add_image(np.ascontiguousarray(viewer.layers["nuclei"].data[::-1]), name="flipped")
    choose(widget.data_panel.image_box, "flipped")
    widget.segment_panel.segment_btn.click()
    choose(widget.data_panel.labels_box, "nuclei instances")
    flipped = viewer.layers["flipped instances"]
    assert row.painted_sizes(flipped.data.shape) is None
    row.suggest_btn.click()
    assert set(viewer.layers[SUGGESTIONS_LAYER].features["id"]) <= set(np.unique(flipped.data)) - {0}
    assert not notes["error"], notes["error"]


def test_segment_moves_the_panels_bar_with_the_networks_tiles_then_the_clustering(spoco, notes, monkeypatch):
    from napari_spoco._napari import workers

    viewer, widget = spoco
    widget.model_panel.default_model_btn.click()
    panel = widget.segment_panel
    seen = []
    real = panel._on_progress
    monkeypatch.setattr(panel, "_on_progress", lambda done, total: seen.append((done, total)) or real(done, total))
    panel._relay.progressed.disconnect()
    panel._relay.progressed.connect(panel._on_progress)
    totals = []
    real_to = workers.Activity.to
    monkeypatch.setattr(workers.Activity, "to", lambda self, n, total=None: totals.append(total) or real_to(self, n, total))
    panel.segment_btn.click()
    assert not notes["error"], notes["error"]
    assert len(seen) >= 2 and [d for d, _ in seen] == list(range(1, len(seen) + 1))
    assert {t for _, t in seen} == {len(seen)} and set(totals) == {len(seen)}
    assert panel.busy_bar.maximum() == panel.busy_bar.value() == len(seen)  # a count, not a busy bar


def test_suggest_next_in_3d_goes_to_the_slice(spoco, notes, choose, balls):
    viewer, widget = spoco
    _add_volume(viewer, widget, choose, balls, paint=False)
    widget.model_panel.default_model_btn.click()
    widget.segment_panel.segment_btn.click()
    result = viewer.layers["vol instances"]
    row = widget.segment_panel.suggest_row
    row.suggest_btn.click()
    assert not notes["error"], notes["error"]
    points = viewer.layers[SUGGESTIONS_LAYER]
    n = len(points.data)
    assert n >= 1 and points.data.shape[1] == 3 and set(points.features["id"]) <= set(np.unique(result.data)) - {0}
    viewer.dims.set_point(0, 0)
    assert row.go_to_next() == 0
    z, y, x = points.data[0]
    assert abs(viewer.dims.point[0] - z) <= 0.5 and np.allclose(_camera(viewer).center[-2:], (y, x), atol=0.5)


def test_training_on_a_segmentation_says_every_object_counts_as_painted(spoco, notes, choose):
    """A result chosen as sparse labels: Train then learns every predicted object, which the
    user may not mean, so the panel says so."""
    viewer, widget = spoco
    _segment_with_nothing_painted(viewer, widget)
    choose(widget.data_panel.labels_box, "nuclei instances")
    assert widget.data_panel.labels is viewer.layers["nuclei instances"]
    assert not any("is a segmentation" in n for n in notes["info"])
    widget.train_panel.steps_spin.setValue(1)
    widget.train_panel.train_btn.click()
    assert not notes["error"], notes["error"]
    assert any("'nuclei instances' is a segmentation: every object in it counts as painted" in n for n in notes["info"])
