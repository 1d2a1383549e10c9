"""GUI tests: a real napari viewer (make_napari_viewer) on a real display, Xvfb in CI.

Skipped, with the reason, where napari or a display is missing; scripts/test.sh provides both.
"""

import os
import sys

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and os.environ.get("QT_QPA_PLATFORM") != "offscreen":
    pytest.skip("no display: run the GUI tests through scripts/test.sh (xvfb-run)", allow_module_level=True)


@pytest.fixture
def notes(monkeypatch):
    """Capture the widget's napari notifications: {'error': [...], 'warning': [...], 'info': [...]}."""
    import importlib

    seen = {"error": [], "warning": [], "info": []}
    for name in PANEL_MODULES:
        module = importlib.import_module(f"napari_spoco._napari.{name}")
        for kind in seen:
            if hasattr(module, f"show_{kind}"):
                monkeypatch.setattr(module, f"show_{kind}", lambda msg, kind=kind: seen[kind].append(str(msg)))
    return seen


# The modules that talk to the user through napari's notifications (each imports show_*).
PANEL_MODULES = ("state", "widget", "data_panel", "model_panel", "train_panel", "segment_panel", "correct_panel", "export_panel",
                 "suggest_row")


def _choose(picker, name):
    """Choose a layer in a panel's layer picker by its name, as a user does in the combo box."""
    picker.native.setCurrentText(name)
    assert picker.value is not None and picker.value.name == name, [c.name for c in picker.choices if c]


@pytest.fixture
def choose():
    return _choose


@pytest.fixture
def spoco(make_napari_viewer, qtbot, notes):
    """A viewer with the sample opened and the SPOCO dock widget; jobs run inline (sync)."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-spoco", "sparse_nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-spoco", "SPOCO")
    widget.sync = True
    widget.train_panel.preview_spin.setValue(0)
    return viewer, widget


@pytest.fixture
def napari_notes(monkeypatch):
    """What reaches napari's notification manager directly (the widget's own messages go
    through the ``notes`` fixture instead): notifications, and errors handed to it (napari
    shows those as traceback notifications), e.g. by a thread worker whose error nobody handled."""
    from napari.utils.notifications import notification_manager

    seen = []

    def notified(notification):
        seen.append(str(notification.message))

    def received(exctype, value, traceback=None, thread=None):
        seen.append(f"{exctype.__name__}: {value}")

    monkeypatch.setattr(notification_manager, "receive_error", received)
    notification_manager.notification_ready.connect(notified)
    yield seen
    notification_manager.notification_ready.disconnect(notified)


@pytest.fixture
def balls():
    """A (16, 40, 40) volume of three bright balls and its truth (ids 1-3), for 3D GUI tests."""
    import numpy as np

    zz, yy, xx = np.mgrid[:16, :40, :40]
    truth = np.zeros((16, 40, 40), np.uint32)
    for i, (z, y, x) in enumerate([(8, 10, 10), (8, 28, 12), (8, 20, 30)], start=1):
        truth[(zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 < 25] = i
    volume = (truth > 0) * 100.0 + np.random.default_rng(0).normal(10, 3, truth.shape)
    return volume.astype(np.float32), truth
