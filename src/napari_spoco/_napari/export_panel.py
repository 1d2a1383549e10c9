"""6 · Export: a labels layer to a TIFF file (the same format as the command line and
File ▸ Save Selected Layers…)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QFormLayout, QGroupBox, QPushButton

from ..io import write_labels
from .dialogs import error_message
from .state import SpocoState
from .widgets import layer_picker


class ExportPanel(QGroupBox):
    def __init__(self, state: SpocoState, parent=None) -> None:
        super().__init__("6 · Export", parent)
        self.state, self.viewer = state, state.viewer
        form = QFormLayout(self)
        self.export_box = layer_picker(self.viewer, Labels, "The labels layer to save.", closed=state.closing.is_closed)
        form.addRow("Labels", self.export_box.native)
        self.export_btn = QPushButton("Export TIFF…")
        self.export_btn.setToolTip("uint16 or uint32 TIFF (by the largest id), the layer's shape, 2D or 3D.")
        self.export_btn.clicked.connect(lambda: self.export_labels(None))
        form.addRow(self.export_btn)
        self.export_box.changed.connect(self.update_buttons)
        self.update_buttons()

    def update_buttons(self, *args) -> None:
        if not self.state.closing.closed:
            self.export_btn.setEnabled(self.export_box.value is not None)

    def export_labels(self, path: str | None) -> bool:
        layer = self.export_box.value
        if layer is None:
            show_warning("Choose a labels layer to export.")
            return False
        path = path or self.state.ask_path("Export labels", True, f"{layer.name}.tif", "TIFF (*.tif *.tiff)")
        if not path:
            return False
        if Path(path).suffix.lower() not in (".tif", ".tiff"):
            path = str(path) + ".tif"
        if Path(path).exists() and not self.state.confirm(f"{path} exists. Replace it?"):
            show_info("Export cancelled; nothing was overwritten.")
            return False
        try:
            written = write_labels(path, np.asarray(layer.data), overwrite=True)
        except Exception as exc:  # noqa: BLE001
            show_error(error_message(exc, "Export"))
            return False
        show_info(f"Saved '{layer.name}' to {written}")
        return True
