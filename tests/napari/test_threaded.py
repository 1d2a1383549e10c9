"""The dock widget with real napari thread workers (``widget.sync = False``): failures, closing
the viewer, layers removed or renamed, repeated clicks and painting while a job runs."""

import gc
import threading
import time

import numpy as np
import pytest
from napari.layers import Labels
from qtpy.QtCore import QThreadPool

from napari_spoco._napari import workers
from napari_spoco._napari.state import ModelSource
from napari_spoco._napari.widget import PREVIEW_LAYER
from napari_spoco.errors import SpocoError
from napari_spoco.model import ModelConfig, SpocoModel


def open_spoco_progress():
    from napari.utils import progress

    return [p for p in progress._all_instances if str(p.desc).startswith("SPOCO")]


def wait_idle(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: widget.state.job.idle, timeout=timeout)
    # the worker's thread ends just after its last signal
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=10_000)


@pytest.fixture
def threaded(spoco):
    viewer, widget = spoco
    widget.sync = False
    return viewer, widget


@pytest.mark.parametrize("job", ["training", "segmentation"])
@pytest.mark.parametrize("exc", [SpocoError("The images are too small to train on."), RuntimeError("boom")])
def test_a_failing_job_is_reported_once(threaded, qtbot, notes, napari_notes, monkeypatch, job, exc):
    viewer, widget = threaded
    sparse = viewer.layers["nuclei sparse labels"]
    painted = sparse.data.copy()
    kept = SpocoModel.new(ModelConfig(ndim=2))
    widget.state.model.use(kept, ModelSource.NEW)

    def fail(*args, **kwargs):
        raise exc

    def fail_training(*args, **kwargs):  # a generator, like iter_train
        raise exc
        yield

    if job == "training":
        monkeypatch.setattr(workers, "iter_train", fail_training)
    else:
        monkeypatch.setattr(workers, "segment", fail)
    with qtbot.capture_exceptions() as raised:
        (widget.train_panel.start_training if job == "training" else widget.segment_panel.start_segmentation)()
        wait_idle(qtbot, widget)
        qtbot.wait(100)  # let any re-raised error or extra notification arrive
    assert not raised, f"re-raised on the GUI thread: {raised}"
    assert not napari_notes, f"extra napari notification: {napari_notes}"
    assert len(notes["error"]) == 1 and not notes["warning"], notes
    assert str(exc) in notes["error"][0] and "Traceback" not in notes["error"][0]
    if isinstance(exc, SpocoError):
        assert notes["error"][0] == str(exc)
    else:
        assert "RuntimeError" in notes["error"][0]
    assert widget.state.model.current is kept and np.array_equal(sparse.data, painted)
    assert "nuclei instances" not in viewer.layers
    assert widget.train_panel.train_btn.isEnabled() and widget.segment_panel.segment_btn.isEnabled()
    assert not open_spoco_progress()  # its bar left napari's activity dock


def _train_until_running(qtbot, widget):
    widget.train_panel.steps_spin.setValue(100_000)
    widget.train_panel.start_training()
    qtbot.waitUntil(lambda: widget.train_panel.last_progress is not None and widget.train_panel.last_progress.step >= 1, timeout=60_000)
    finished = []
    widget.train_panel.worker.finished.connect(lambda: finished.append(True))
    return widget.train_panel.job, finished


@pytest.mark.parametrize("how", ["viewer closed", "panel closed"])
def test_closing_the_viewer_or_the_panel_stops_training(threaded, qtbot, notes, how):
    viewer, widget = threaded
    job, finished = _train_until_running(qtbot, widget)
    with qtbot.capture_exceptions() as raised:
        if how == "viewer closed":
            viewer.close()
        else:  # the panel's close button (napari: QtViewerDockWidget.destroyOnClose)
            viewer.window.remove_dock_widget(widget)
        qtbot.waitUntil(lambda: bool(finished), timeout=10_000)  # the current step, then the end
        assert job.stop.is_set()
        qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=5_000)
        qtbot.wait(200)  # late signals reach a widget that is gone without an error
    assert not raised, raised
    assert not notes["error"], notes["error"]
    assert not open_spoco_progress()  # no bar left behind in napari's activity dock


def test_a_panel_opened_again_gets_back_the_model_of_the_closed_one(threaded, qtbot, notes):
    """napari makes a new panel when SPOCO is opened again: the model trained in the closed one
    (not saved) must come back with it, still marked unsaved, and not come back in another viewer."""
    viewer, widget = threaded
    job, finished = _train_until_running(qtbot, widget)
    viewer.window.remove_dock_widget(widget)  # the panel's close button
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=5_000)
    _, again = viewer.window.add_plugin_dock_widget("napari-spoco", "SPOCO")
    state = again.state.model
    assert state.current is not None and state.unsaved and state.describe() == "shipped default, fine-tuned"
    assert state.current is widget.state.model.current
    assert any("the model of the panel closed before is back" in n and "not saved" in n for n in notes["info"]), notes
    # Replacing it asks first, as for any unsaved model.
    asked = []
    again.state.confirm = lambda question: asked.append(question) or False
    again.model_panel.new_model_btn.click()
    assert asked and again.state.model.current is state.current


def _gate(monkeypatch, name):
    """Hold the worker's first call of ``workers.<name>`` until the test opens the gate."""
    real = getattr(workers, name)
    entered, gate = threading.Event(), threading.Event()

    def gated(*args, **kwargs):
        if not entered.is_set():
            entered.set()
            assert gate.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(workers, name, gated)
    return entered, gate


@pytest.mark.parametrize("change", ["renamed", "removed"])
def test_layers_renamed_or_removed_during_segmentation(threaded, qtbot, notes, monkeypatch, change):
    viewer, widget = threaded
    image = viewer.layers["nuclei"]
    image.scale = (2, 2)
    widget.model_panel.default_model_btn.click()
    entered, gate = _gate(monkeypatch, "segment")
    with qtbot.capture_exceptions() as raised:
        widget.segment_panel.start_segmentation()
        qtbot.waitUntil(entered.is_set, timeout=10_000)
        if change == "renamed":
            image.name = "renamed"
        else:
            viewer.layers.remove("nuclei")
            viewer.layers.remove("nuclei sparse labels")
        gate.set()
        wait_idle(qtbot, widget)
    assert not raised, raised
    assert not notes["error"], notes["error"]
    assert "nuclei instances" not in viewer.layers
    if change == "renamed":
        result = viewer.layers["renamed instances"]
        assert result.data.shape == image.data.shape and result.data.max() >= 10
        assert tuple(result.scale) == (2, 2)
        assert widget.correct_panel.result_box.value.name == "renamed instances" and not notes["warning"]
    else:  # nowhere to put it: said so, nothing added
        assert len(notes["warning"]) == 1 and "'nuclei' was removed" in notes["warning"][0]
        assert not any(isinstance(layer, Labels) for layer in viewer.layers)
        assert "removed" in widget.segment_panel.segment_label.text()
    assert widget.state.model.current is not None and widget.segment_panel.segment_btn.isEnabled() == (change == "renamed")


@pytest.mark.parametrize("change", ["renamed", "removed"])
def test_layers_renamed_or_removed_during_training(threaded, qtbot, notes, monkeypatch, change):
    viewer, widget = threaded
    viewer.layers["nuclei"].scale = viewer.layers["nuclei sparse labels"].scale = (2, 2)
    widget.train_panel.steps_spin.setValue(4)
    widget.train_panel.preview_spin.setValue(1)
    # The first preview is computed while the image is renamed or removed.
    entered, gate = _gate(monkeypatch, "segment_preview")
    placed = []  # where each preview went

    def show_preview(result, show=widget.train_panel._show_preview):
        show(result)
        placed.append(tuple(viewer.layers[PREVIEW_LAYER].scale))

    monkeypatch.setattr(widget.train_panel, "_show_preview", show_preview)
    with qtbot.capture_exceptions() as raised:
        widget.train_panel.start_training()
        qtbot.waitUntil(entered.is_set, timeout=60_000)
        if change == "renamed":
            viewer.layers["nuclei"].name = "renamed"
            viewer.layers["nuclei sparse labels"].name = "renamed labels"
        else:
            viewer.layers.remove("nuclei")
            viewer.layers.remove("nuclei sparse labels")
        gate.set()
        wait_idle(qtbot, widget)
    assert not raised, raised
    assert not notes["error"] and not notes["warning"], notes
    # The model keeps the whole run.
    assert widget.train_panel.last_progress.step == 4 and "Trained 4 steps" in widget.train_panel.train_label.text()
    assert widget.state.model.current is not None and widget.state.model.source is ModelSource.DEFAULT and widget.state.model.fine_tuned
    assert widget.state.model.describe() == "shipped default, fine-tuned"
    # Every preview lies on the image (scale 2), or, with the image gone, is not moved.
    assert len(placed) >= 2 and set(placed) == {(2, 2)}, placed
    if change == "renamed":
        assert widget.train_panel.last_preview.step > 0


def test_a_second_train_click_does_not_start_a_second_run(threaded, qtbot, notes, monkeypatch, tmp_path):
    from napari_spoco.pretrained import load_default_model

    viewer, widget = threaded
    runs = []
    real = workers.training_job

    def counted(job):
        runs.append(job)
        return (yield from real(job))

    monkeypatch.setattr(workers, "training_job", counted)
    widget.state.confirm = lambda question: True  # "discard the unsaved training?" would be yes
    widget.train_panel.steps_spin.setValue(3)
    widget.train_panel.start_training()
    assert widget.state.job.training and not widget.train_panel.train_btn.isEnabled() and not widget.train_panel.adapt_btn.isEnabled()
    qtbot.waitUntil(lambda: widget.train_panel.last_progress is not None, timeout=60_000)
    trained = widget.state.model.current
    widget.train_panel.start_training()
    widget.train_panel.train_btn.click()  # disabled: nothing happens
    widget.train_panel.start_adaptation()
    # Nor can the model being trained be swapped for another.
    assert not widget.model_panel.use_default_model() and not widget.model_panel.load_model_from(str(tmp_path / "any.spoco.pt"))
    widget.model_panel.new_model()
    assert widget.state.model.current is trained
    assert not widget.model_panel.save_model_to(str(tmp_path / "half.spoco.pt")) and not (tmp_path / "half.spoco.pt").exists()
    assert len(notes["warning"]) == 6 and all("Training is running" in w for w in notes["warning"]), notes
    wait_idle(qtbot, widget)
    assert len(runs) == 1 and not notes["error"]
    assert len(widget.train_panel.loss_plot.values) == 3
    assert widget.state.model.current is trained and widget.state.model.current.history["steps"] == load_default_model(2).history["steps"] + 3


def test_no_training_starts_while_segmenting(threaded, qtbot, notes, monkeypatch):
    viewer, widget = threaded
    widget.model_panel.default_model_btn.click()
    model = widget.state.model.current
    entered, gate = _gate(monkeypatch, "segment")
    widget.segment_panel.start_segmentation()
    qtbot.waitUntil(entered.is_set, timeout=10_000)
    assert not widget.train_panel.train_btn.isEnabled() and not widget.train_panel.adapt_btn.isEnabled()
    widget.train_panel.start_training()  # would train the model that is segmenting
    widget.train_panel.start_adaptation()
    assert not widget.state.job.training and widget.state.model.current is model
    assert len(notes["warning"]) == 2 and all("Segmentation is running" in w for w in notes["warning"]), notes
    gate.set()
    wait_idle(qtbot, widget)
    assert "nuclei instances" in viewer.layers and widget.train_panel.last_progress is None and not notes["error"]


def test_painting_during_training_is_kept(threaded, qtbot, notes):
    viewer, widget = threaded
    sparse = viewer.layers["nuclei sparse labels"]
    before = sparse.data.copy()
    widget.train_panel.steps_spin.setValue(4)
    widget.train_panel.preview_spin.setValue(1)  # previews are shown while the user paints
    widget.train_panel.start_training()
    qtbot.waitUntil(lambda: widget.train_panel.last_progress is not None, timeout=60_000)
    # Paint as the brush does, and write into the array as a script would.
    sparse.brush_size = 9
    sparse.paint((200, 40), 7)
    sparse.data[10:20, 10:20] = 9
    sparse.refresh()
    painted = sparse.data.copy()
    assert (painted == 7).sum() > 20 and (painted[10:20, 10:20] == 9).all()
    # The run trains on the labels as they were when Train was pressed.
    assert np.array_equal(widget.train_panel.job.labels[0], before)
    wait_idle(qtbot, widget)
    assert widget.train_panel.last_progress.step == 4 and not notes["error"]
    assert np.array_equal(sparse.data, painted)
    assert viewer.layers.selection.active is None or viewer.layers.selection.active.name == sparse.name


def test_threaded_segmentation_keeps_gui_responsive(threaded, qtbot, notes, choose):
    from qtpy.QtCore import QTimer

    viewer, widget = threaded
    viewer.show()  # drawn, as for a user
    big = np.tile(viewer.layers["nuclei"].data, (3, 3))  # 768 x 768: a few seconds of work
    viewer.add_image(big, name="big")
    choose(widget.data_panel.image_box, "big")
    widget.model_panel.default_model_btn.click()
    gc.collect()  # not a collection of the garbage earlier tests left (~0.3 s with napari's heap)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    clicked = time.perf_counter()
    # The click adds the (empty) result layer, and napari draws it on the next turn of the
    # event loop: that is the click's response; from the first tick on the job runs.
    widget.segment_panel.start_segmentation()
    placed = []  # when the result reaches its layer: main-thread work by design
    viewer.layers["big instances"].events.data.connect(lambda e: placed.append(time.perf_counter()))
    timer.start(50)
    wait_idle(qtbot, widget)
    qtbot.wait(100)  # ticks after the result was placed
    timer.stop()
    assert viewer.layers["big instances"].data.max() >= 50 and not notes["error"] and placed
    ticks = np.array(ticks)
    gaps = np.diff(ticks)
    working = gaps[ticks[1:] < placed[0]]  # while the worker ran
    print(f"segmentation: click answered in {ticks[0] - clicked:.3f} s (50 ms timer included), "
          f"then {len(gaps)} gaps, max {gaps.max():.3f} s at {ticks[gaps.argmax() + 1] - ticks[0]:.2f} of "
          f"{ticks[-1] - ticks[0]:.2f} s; result placed at {placed[0] - ticks[0]:.2f} s")
    # 0.25 s: on 2 vCPUs the worker's last phase (Python post-processing of ~2 000 fragments
    # while torch's thread pool winds down) has cost the GUI up to 0.156 s (a fresh-clone CI run;
    # 0.08-0.13 s in most runs, 0.055 s measured headless). A segmentation on the GUI thread
    # blocks it for the whole 3-8 s run, so the bound still tells the two apart.
    assert len(working) > 10 and working.max() <= 0.25, f"GUI blocked for {working.max():.3f} s while segmenting"
    # placing a 768² result in napari takes the main thread a moment, longer on a slow CPU
    assert gaps.max() <= 0.5, f"GUI blocked for {gaps.max():.3f} s"


def test_a_preview_that_cannot_be_made_warns_once_and_training_goes_on(threaded, qtbot, notes, choose):
    """Real thread worker: the user chooses a 3D volume in the Image box while a 2D model trains;
    its preview fails in the worker, which yields one warning, and the run ends with all its steps."""
    viewer, widget = threaded
    nuclei = np.asarray(viewer.layers["nuclei"].data)
    widget.train_panel.steps_spin.setValue(30)
    widget.train_panel.preview_spin.setValue(1)
    widget.train_panel.start_training()
    qtbot.waitUntil(lambda: widget.train_panel.last_progress is not None, timeout=60_000)
    viewer.add_image(np.stack([nuclei] * 4), name="volume")
    choose(widget.data_panel.image_box, "volume")
    wait_idle(qtbot, widget)
    skipped = [m for m in notes["warning"] if m.startswith("No live preview of 'volume'")]
    assert len(skipped) == 1 and "Training goes on." in skipped[0], notes["warning"]
    assert widget.train_panel.last_progress.step == 30 and not notes["error"], notes["error"]
    assert "Trained 30 steps" in widget.train_panel.train_label.text()
