"""6 · Export: a labels layer to a TIFF file (the same format as the command line and
File ▸ Save Selected Layers…), or a lazy one (a block-wise result, any dask- or zarr-backed
layer) to a zarr store, copied chunk by chunk in a thread worker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QFormLayout, QGroupBox, QPushButton

from ..io import write_labels
from ..out_of_core import STORE_KEY, copy_labels, recover_interrupted_copy
from . import workers
from .dialogs import error_message
from .layers import image_data, is_lazy_layer, referenced_stores, refuse_if_too_large
from .state import SpocoState
from .widgets import layer_picker
from .writers import zarr_target

TIFF_TIP = "uint16 or uint32 TIFF (by the largest id), the layer's shape, 2D or 3D."
ZARR_TIP = "A zarr store of the layer's shape and ids, written chunk by chunk (it is read from disk as needed)."


class ExportPanel(QGroupBox):
    def __init__(self, state: SpocoState, parent=None) -> None:
        super().__init__("6 · Export", parent)
        self.state, self.viewer = state, state.viewer
        self._copying = False
        form = QFormLayout(self)
        self.export_box = layer_picker(self.viewer, Labels, "The labels layer to save.", closed=state.closing.is_closed)
        form.addRow("Labels", self.export_box.native)
        self.export_btn = QPushButton("Export TIFF…")
        self.export_btn.setToolTip(TIFF_TIP)
        self.export_btn.clicked.connect(lambda: self.export_labels(None))
        form.addRow(self.export_btn)
        self.export_box.changed.connect(self.update_buttons)
        self.update_buttons()

    def update_buttons(self, *args) -> None:
        if self.state.closing.closed:
            return
        layer = self.export_box.value
        lazy = layer is not None and is_lazy_layer(layer)
        self.export_btn.setText("Export zarr…" if lazy else "Export TIFF…")
        self.export_btn.setToolTip(ZARR_TIP if lazy else TIFF_TIP)
        self.export_btn.setEnabled(layer is not None and not self._copying)

    def export_labels(self, path: str | None) -> bool:
        """Save the chosen layer: a TIFF, or for a lazy layer a zarr store (a lazy layer that
        fits in memory is also written as TIFF when given a .tif name). False when nothing
        was (or is being) written."""
        layer = self.export_box.value
        if layer is None:
            show_warning("Choose a labels layer to export.")
            return False
        lazy = is_lazy_layer(layer)
        if lazy:
            path = path or self.state.ask_path("Export labels", True, f"{layer.name}.zarr",
                                               "Zarr store (*.zarr);;TIFF (*.tif *.tiff)")
        else:
            path = path or self.state.ask_path("Export labels", True, f"{layer.name}.tif", "TIFF (*.tif *.tiff)")
        if not path:
            return False
        if lazy and Path(path).suffix.lower() not in (".tif", ".tiff"):
            return self._export_zarr(layer, path)
        if Path(path).suffix.lower() not in (".tif", ".tiff"):
            path = str(path) + ".tif"
        if Path(path).exists() and not self.state.confirm(f"{path} exists. Replace it?"):
            show_info("Export cancelled; nothing was overwritten.")
            return False
        try:
            refuse_if_too_large(layer, "one TIFF (export it as .zarr)")
            written = write_labels(path, np.asarray(image_data(layer)), overwrite=True)
        except Exception as exc:  # noqa: BLE001
            show_error(error_message(exc, "Export"))
            return False
        show_info(f"Saved '{layer.name}' to {written}")
        return True

    def _export_zarr(self, layer, path: str) -> bool:
        sources = referenced_stores(self.viewer) | {
            str(lay.source.path) for lay in self.viewer.layers if getattr(lay.source, "path", None)}
        try:
            target = zarr_target(path, sources)
        except Exception as exc:  # noqa: BLE001
            show_error(error_message(exc, "Export"))
            return False
        try:
            if recover_interrupted_copy(target, clean=False) is not None:  # before asking; the worker cleans up
                show_info(f"An earlier export to {target} was interrupted; its previous store was put back.")
        except OSError as exc:
            show_error(error_message(exc, "Export"))
            return False
        if target.exists() and not self.state.confirm(f"{target} exists. Replace it?"):
            show_info("Export cancelled; nothing was overwritten.")
            return False
        # the old store is replaced only once the copy is complete (copy_labels(replace=True))
        store, name = layer.metadata.get(STORE_KEY), layer.name
        self.state.stores.hold(store)  # a new segmentation must not delete what is being copied
        self._copying = True
        self.update_buttons()
        activity = workers.Activity(f"SPOCO exporting '{name}'", widget=self)

        def finished() -> None:
            activity.close()
            self.state.stores.release(store)
            self._copying = False
            self.update_buttons()

        workers.launch(copy_labels, image_data(layer), target, None, True,
                       on_return=lambda written: show_info(f"Saved '{name}' to {written} (zarr)"),
                       on_error=lambda exc: show_error(error_message(exc, "Export")),
                       on_finish=finished, sync=self.state.sync)
        return True
