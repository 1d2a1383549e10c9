"""The dock widget's parts on their own: the shared state and its signals, each panel's
buttons following it, the magicgui layer pickers following the layer list, and the jobs
showing in napari's activity dock."""

import numpy as np
import pytest
from napari.layers import Image, Labels
from napari.utils import progress
from qtpy.QtGui import QMovie

from napari_spoco._napari.state import Job, JobState, ModelSource, ModelState
from napari_spoco._napari.widget import SpocoWidget
from napari_spoco.model import ModelConfig, SpocoModel


@pytest.fixture(scope="module")
def tiny_model():
    return SpocoModel.new(ModelConfig(ndim=2))


def test_model_state_says_where_the_model_came_from_and_emits_every_change(tiny_model):
    state = ModelState(start_from_default=True)
    emitted = []
    state.changed.connect(lambda: emitted.append(state.describe()))
    assert state.current is None and state.source is ModelSource.NONE and state.describe() == "none"

    state.use(tiny_model, ModelSource.DEFAULT)
    state.stepped(tiny_model, 1)
    assert state.unsaved and state.run_step == 1
    state.run_ended(tiny_model, self_supervised=True)
    assert state.adapted and not state.fine_tuned and state.run_step is None
    state.run_ended(tiny_model, self_supervised=False)
    assert emitted == ["shipped default"] * 2 + ["shipped default, adapted", "shipped default, adapted, fine-tuned"]

    state.saved("m.spoco.pt")
    assert state.source is ModelSource.FILE and not state.unsaved and state.describe() == "m.spoco.pt"
    state.run_ended(tiny_model, self_supervised=False)
    assert state.describe() == "m.spoco.pt, fine-tuned"

    state.use(None, ModelSource.NONE)  # New: the next Train starts from scratch
    assert not state.start_from_default and state.current is None
    state.stepped(tiny_model, 1)  # a new network is the model from its first step on
    assert state.current is tiny_model and state.source is ModelSource.NEW
    other = SpocoModel.new(ModelConfig(ndim=2))
    state.run_ended(other, self_supervised=False)  # a run that returned another model
    assert state.current is other and state.describe() == "new" and len(emitted) == 9


def test_job_state_allows_one_job_and_says_why(monkeypatch):
    import napari_spoco._napari.state as state_module

    warnings = []
    monkeypatch.setattr(state_module, "show_warning", warnings.append)
    job = JobState()
    seen = []
    job.changed.connect(lambda: seen.append(job.running))
    assert job.idle and not job.refuse("anything")
    job.start(Job.ADAPT)
    assert job.training and not job.segmenting and job.refuse("segmenting")
    assert job.refuse("replacing the model", segmenting=False)
    job.finish()
    job.start(Job.SEGMENT)
    assert job.refuse("training") and not job.refuse("replacing the model", segmenting=False)
    job.finish()
    assert seen == [Job.ADAPT, None, Job.SEGMENT, None]
    assert len(warnings) == 3 and "Training is running" in warnings[0] and "Segmentation is running" in warnings[2]


def _enabled(widget) -> dict[str, bool]:
    buttons = {
        "train": widget.train_panel.train_btn, "adapt": widget.train_panel.adapt_btn,
        "stop": widget.train_panel.stop_btn, "segment": widget.segment_panel.segment_btn,
        "default": widget.model_panel.default_model_btn, "new": widget.model_panel.new_model_btn,
        "load": widget.model_panel.load_model_btn, "save": widget.model_panel.save_model_btn,
    }
    return {name: b.isEnabled() for name, b in buttons.items()}


def test_each_panel_enables_its_buttons_from_the_shared_state(spoco, tiny_model):
    viewer, widget = spoco
    state = widget.state
    assert _enabled(widget) == dict(train=True, adapt=True, stop=False, segment=False,
                                    default=True, new=True, load=True, save=False)
    state.model.use(tiny_model, ModelSource.NEW)
    assert _enabled(widget)["segment"] and _enabled(widget)["save"]
    assert "2D small model (new)" in widget.model_panel.model_label.text()

    state.job.start(Job.TRAIN)
    assert _enabled(widget) == dict(train=False, adapt=False, stop=True, segment=False,
                                    default=False, new=False, load=False, save=False)
    state.job.finish()
    state.job.start(Job.SEGMENT)  # the model may be replaced or saved while it segments
    assert _enabled(widget) == dict(train=False, adapt=False, stop=False, segment=False,
                                    default=True, new=True, load=True, save=True)
    state.job.finish()
    assert _enabled(widget) == dict(train=True, adapt=True, stop=False, segment=True,
                                    default=True, new=True, load=True, save=True)

    widget.train_panel.loss_plot.add(1.0)
    state.model.use(None, ModelSource.NONE)  # New: no model, no loss curve
    assert not _enabled(widget)["segment"] and not widget.train_panel.loss_plot.values
    assert "Train starts a new network" in widget.model_panel.model_label.text()


def test_the_segment_panel_sends_its_settings_as_one_cluster_config(spoco, tiny_model, monkeypatch):
    """The clustering method chosen in the panel travels in the ClusterConfig, nowhere else."""
    import napari_spoco._napari.workers as workers

    viewer, widget = spoco
    seen = []

    def fake(model, image, method=None, config=None, **kwargs):
        seen.append((method, config))
        return np.zeros(image.shape[:2], np.uint16)

    monkeypatch.setattr(workers, "segment", fake)
    widget.state.model.use(tiny_model, ModelSource.NEW)
    panel = widget.segment_panel
    panel.method_box.setCurrentText("hdbscan")
    panel.bandwidth_spin.setValue(0.7)
    assert panel.shape_check.isChecked()  # the shape split is on by default, as in the library
    assert panel.boundary_check.isChecked()  # so is the merge of pieces with no boundary between them
    panel.shape_check.setChecked(False)
    panel.segment_btn.click()
    (method, config), = seen
    assert method is None and (config.method, config.bandwidth) == ("hdbscan", 0.7)
    assert config.shape_split is False and config.boundary_merge
    assert panel.edge_check.isChecked() and config.calibrated_edge
    assert panel.step_checks["fill_holes"].isChecked() and config.fill_holes
    assert panel.step_checks["edge_growth"].isChecked() and config.edge_growth
    panel.boundary_check.setChecked(False)
    panel.edge_check.setChecked(False)
    panel.step_checks["fill_holes"].setChecked(False)
    panel.step_checks["edge_growth"].setChecked(False)
    panel.segment_btn.click()
    assert seen[-1][1].boundary_merge is False and seen[-1][1].calibrated_edge is False
    assert seen[-1][1].fill_holes is False and seen[-1][1].edge_growth is False
    assert seen[-1][1].layout == "auto" and panel.layout_box.currentText() == "auto"
    panel.layout_box.setCurrentText("separate")  # the user knows better than the measurement
    panel.segment_btn.click()
    assert seen[-1][1].layout == "separate"


def _names(picker):
    return [layer.name if layer is not None else None for layer in picker.choices]


@pytest.mark.parametrize("docked", [True, False])
def test_layer_pickers_follow_layers_added_removed_and_renamed(make_napari_viewer, docked):
    viewer = make_napari_viewer()
    if docked:
        _, widget = viewer.window.add_plugin_dock_widget("napari-spoco", "SPOCO")
    else:
        widget = SpocoWidget(viewer)
    data, correct = widget.data_panel, widget.correct_panel
    assert data.image is None and not widget.train_panel.adapt_btn.isEnabled()

    viewer.add_image(np.zeros((32, 32), np.float32), name="a")
    viewer.add_image(np.zeros((32, 32), np.float32), name="b")
    viewer.add_labels(np.zeros((32, 32), np.uint32), name="seg")
    assert _names(data.image_box) == ["a", "b"] and data.image.name == "a"
    assert isinstance(data.image, Image) and isinstance(data.labels, Labels)
    assert _names(correct.gt_box) == [None, "seg"] and correct.gt_box.value is None  # optional
    assert widget.export_panel.export_box.value.name == "seg"
    assert widget.train_panel.adapt_btn.isEnabled() and widget.train_panel.train_btn.isEnabled()

    data.image_box.native.setCurrentText("b")
    viewer.layers["b"].name = "b renamed"  # the renamed layer stays chosen
    assert _names(data.image_box) == ["a", "b renamed"] and data.image.name == "b renamed"
    assert data.image_box.current_choice == "b renamed"
    viewer.layers["seg"].name = "seg 2"
    assert data.labels.name == "seg 2" and widget.export_panel.export_box.value.name == "seg 2"

    viewer.layers.move(1, 0)  # reordered: same layers (magicgui keeps its item order), same choice
    assert sorted(_names(data.image_box)) == ["a", "b renamed"] and data.image.name == "b renamed"

    viewer.layers.remove("b renamed")
    assert _names(data.image_box) == ["a"] and data.image.name == "a"
    viewer.layers.remove("seg 2")
    assert data.labels is None and correct.result_box.value is None and _names(correct.gt_box) == [None]
    assert not widget.train_panel.train_btn.isEnabled() and not widget.export_panel.export_btn.isEnabled()
    assert widget.train_panel.adapt_btn.isEnabled()
    viewer.layers.remove("a")
    assert data.image is None and not widget.train_panel.adapt_btn.isEnabled()
    assert not widget.data_panel.new_labels_btn.isEnabled()


def test_layer_pickers_let_go_of_the_layer_list_when_the_panel_closes(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    events = viewer.layers.events

    def connected():
        return {name: len(getattr(events, name).callbacks) for name in ("inserted", "removed", "renamed")}

    before = connected()
    _, widget = viewer.window.add_plugin_dock_widget("napari-spoco", "SPOCO")
    assert all(connected()[name] > n for name, n in before.items())
    viewer.window.remove_dock_widget(widget)  # the panel's close button; the viewer lives on
    with qtbot.capture_exceptions() as raised:
        layer = viewer.add_image(np.zeros((8, 8), np.float32), name="later")  # the pickers let go here
        layer.name = "renamed"
        viewer.layers.remove(layer)
    assert not raised, raised
    assert connected() == before


def _activity_bars(viewer):
    from napari._qt.widgets.qt_progress_bar import QtLabeledProgressBar

    dialog = viewer.window._qt_window._activity_dialog
    # (a closed bar lingers until Qt deletes it: only the bars of open progress objects count)
    return {bar.progress.desc: bar for bar in dialog.findChildren(QtLabeledProgressBar)
            if bar.progress in progress._all_instances}


def _open_spoco_progress():
    return [p for p in progress._all_instances if str(p.desc).startswith("SPOCO")]


def test_training_and_segmentation_show_in_napari_activity_dock(spoco, qtbot):
    viewer, widget = spoco
    train = widget.train_panel
    seen = []  # what napari's activity dock showed at each step of the run
    original = train._on_train_yield

    indicator = viewer.window._qt_window._activity_dialog._toggleButton._inProgressIndicator
    animated = []  # napari's "in progress" indicator: shown, its animation paused (it costs steps)

    def on_yield(item):
        original(item)
        bar = _activity_bars(viewer).get("SPOCO training")
        seen.append((item.step, bar.qt_progress_bar.value(), bar.qt_progress_bar.maximum()) if bar else None)
        animated.append((not indicator.isHidden(), indicator.movie().state() == QMovie.MovieState.Running))

    train._on_train_yield = on_yield
    train.steps_spin.setValue(3)
    train.train_btn.click()
    # The bar moves with the steps (the first and the last, at most twice a second between).
    assert seen[0] == (1, 1, 3) and seen[-1] == (3, 3, 3) and len(seen) == 3
    assert all(value <= step for step, value, _ in seen) and sorted(seen) == seen
    assert train.activity.closed and not _open_spoco_progress()  # closed when the run ends
    assert animated == [(True, False)] * 3
    # after the run (napari hides its indicator once the bar is deleted), it animates again only
    # for other open progress objects
    qtbot.waitUntil(lambda: indicator.isHidden() or bool(len(progress._all_instances)), timeout=10_000)
    assert (indicator.movie().state() == QMovie.MovieState.Running) == bool(len(progress._all_instances))

    segment = widget.segment_panel
    during = []
    original_segmented = segment._on_segmented
    segment._on_segmented = lambda result: (
        during.append(sorted(_activity_bars(viewer))), original_segmented(result)
    )
    segment.segment_btn.click()
    assert during == [["SPOCO segmenting 'nuclei'"]] and not _open_spoco_progress()


def test_cancel_in_napari_activity_dock_stops_training(spoco, qtbot):
    viewer, widget = spoco
    widget.sync = False
    train = widget.train_panel
    train.steps_spin.setValue(100_000)
    train.train_btn.click()
    qtbot.waitUntil(lambda: train.last_progress is not None and train.last_progress.step >= 2, timeout=60_000)
    _activity_bars(viewer)["SPOCO training"].cancel_button.click()
    qtbot.waitUntil(lambda: widget.state.job.idle, timeout=20_000)
    assert train.job.stop.is_set() and train.last_progress.step < 100_000
    assert "stopping" not in train.train_label.text() and "Stopped after" in train.train_label.text()
    assert not _open_spoco_progress()
    assert widget.state.model.current is not None and widget.state.model.fine_tuned


def test_the_train_message_does_not_count_painted_background_as_an_object():
    from napari_spoco._napari.layers import TrainingSet

    lab = np.zeros((8, 8), np.uint16)
    lab[:2, :2], lab[4:, 4:], lab[0, 7] = 1, 2, 65535
    assert TrainingSet([np.zeros((8, 8))], [lab], ["a"], background_label=65535).n_objects == 2
