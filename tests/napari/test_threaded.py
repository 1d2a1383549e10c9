"""The dock widget with real napari thread workers (``widget.sync = False``): failures, closing
the viewer, layers removed or renamed, repeated clicks and painting while a job runs."""

import numpy as np
import pytest
from qtpy.QtCore import QThreadPool

from napari_spoco._napari import workers
from napari_spoco.errors import SpocoError
from napari_spoco.model import ModelConfig, SpocoModel


def wait_idle(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget._training and not widget._segmenting, timeout=timeout)
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
    widget.model = kept = SpocoModel.new(ModelConfig(ndim=2))
    widget._update_buttons()

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
        (widget.start_training if job == "training" else widget.start_segmentation)()
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
    assert widget.model is kept and np.array_equal(sparse.data, painted)
    assert "nuclei instances" not in viewer.layers
    assert widget.train_btn.isEnabled() and widget.segment_btn.isEnabled()


def _train_until_running(qtbot, widget):
    widget.steps_spin.setValue(100_000)
    widget.start_training()
    qtbot.waitUntil(lambda: widget.last_progress is not None and widget.last_progress.step >= 1, timeout=60_000)
    finished = []
    widget._train_worker.finished.connect(lambda: finished.append(True))
    return widget._train_job, finished


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
