"""The SPOCO dock widget: the label → train → look → correct → export loop, top to bottom.

It only composes the panels, one module each, and wires what one panel's result means for
another; the panels share ``state.SpocoState`` (the model and where it came from, the job that
runs) and enable their own buttons from it:

* ``data_panel``: image, sparse labels, the layers made for painting;
* ``model_panel``: Default (the shipped 2D or 3D model) / New / Load… / Save…;
* ``train_panel``: Network, Train, Adapt, Stop, progress, loss curve and live preview (``preview``);
* ``segment_panel``: Segment into '<image> instances' (block by block into a lazy, zarr-backed
  layer for images larger than memory: ``blockwise_run``), and Suggest next (``suggest_row``);
* ``correct_panel``: instances → sparse labels, Evaluate against a ground truth;
* ``export_panel``: Export TIFF… (zarr… for lazy layers).

Each button copies its settings into a core config and calls one core function (through
``workers``); the worker thread never reads a widget, the GUI thread only touches layers.
"""

from __future__ import annotations

import napari
from napari.utils.notifications import show_info
from qtpy.QtCore import QEvent, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from ..pretrained import has_default_model
from . import dialogs, workers
from .correct_panel import CorrectPanel
from .data_panel import DataPanel
from .export_panel import ExportPanel
from .layers import referenced_stores
from .model_panel import ModelPanel
from .preview import PREVIEW_LAYER
from .segment_panel import RESULT_SUFFIX, SegmentPanel
from .state import Job, ModelState, SpocoState
from .train_panel import TrainPanel
from .widgets import select_layer

__all__ = ["PREVIEW_LAYER", "RESULT_SUFFIX", "SpocoWidget"]


class SpocoWidget(QWidget):
    """Dock widget: sparse labels → training with live preview → instances → export."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = SpocoState(
            viewer=napari_viewer,
            # A first Train fine-tunes the shipped model for the images' dimensionality (2D or
            # 3D) unless the user chose New.
            model=ModelState(start_from_default=has_default_model(2) or has_default_model(3)),
            confirm=lambda question: dialogs.confirm(self, question),
            ask_path=lambda *args: dialogs.ask_path(self, *args),
            sync=workers.sync_requested(),  # tests: run jobs inline
        )
        self.destroyed.connect(_closer(self.state))  # viewer closed: napari deletes its window
        self._docked = False

        self.data_panel = DataPanel(self.state)
        self.model_panel = ModelPanel(self.state, self.data_panel)
        self.train_panel = TrainPanel(self.state, self.data_panel)
        self.segment_panel = SegmentPanel(self.state, self.data_panel)
        self.correct_panel = CorrectPanel(self.state, self.data_panel)
        self.export_panel = ExportPanel(self.state)
        self.data_panel.image_changed.connect(self._on_image_changed)
        self.segment_panel.segmented.connect(self._on_segmented)
        self._on_image_changed(self.data_panel.image)
        # The panel was closed and opened again: its model comes back (trained, perhaps unsaved).
        if self.state.model.take_kept(napari_viewer):
            show_info(f"SPOCO: the model of the panel closed before is back ({self.state.model.describe()}"
                      f"{', not saved' if self.state.model.unsaved else ''}).")

        # The sections scroll rather than squeeze when the window is short.
        content = QWidget()
        layout = QVBoxLayout(content)
        for panel in (self.data_panel, self.model_panel, self.train_panel, self.segment_panel,
                      self.correct_panel, self.export_panel):
            layout.addWidget(panel)
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setWidget(content)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(content.sizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 30)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

    @property
    def sync(self) -> bool:
        """Run jobs inline instead of in a napari thread worker (tests; NAPARI_SPOCO_SYNC=1)."""
        return self.state.sync

    @sync.setter
    def sync(self, value: bool) -> None:
        self.state.sync = value

    def _on_image_changed(self, image) -> None:
        # Choosing an image chooses its segmentation, if it has one, for correcting.
        if image is not None and (image.name + RESULT_SUFFIX) in self.viewer.layers:
            select_layer(self.correct_panel.result_box, image.name + RESULT_SUFFIX)

    def _on_segmented(self, name: str) -> None:
        # A new segmentation is what one corrects, evaluates and exports next.
        select_layer(self.correct_panel.result_box, name)
        select_layer(self.export_panel.export_box, name)
        self.export_panel.update_buttons()  # Export TIFF… or zarr…, as the layer now is

    def event(self, event) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.ParentChange:
            # The panel's close button takes the widget out of the window for good (napari
            # makes a new one when the panel is opened again): stop what it runs.
            if self.parent() is None and self._docked:
                _closer(self.state)()
            self._docked = self.parent() is not None
        return super().event(event)


def _closer(state: SpocoState):
    """What closing the panel (or the viewer) does: stop the running job, and delete the
    session's block-wise results that no layer reads (the rest go when napari exits)."""

    def close(*args) -> None:
        if not state.closing.is_closed():  # a panel opened again takes the model over
            running = state.job.running if state.job.training else None
            state.model.keep_for(state.viewer, None if running is None else running is Job.ADAPT)
        state.closing()
        try:
            state.stores.sweep(referenced_stores(state.viewer))
        except Exception:  # noqa: BLE001 - a viewer being torn down: the stores go at exit
            pass

    return close
