"""1 · Image and sparse labels: which image to train on and segment, the labels painted on it,
and the layers made for painting."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QFormLayout, QGroupBox, QHBoxLayout, QPushButton, QSpinBox

from ..data import channel_count
from ..errors import SpocoError
from ..label_dtypes import EDITABLE_LABELS_DTYPE
from .layers import (
    LINK_ID_KEY,
    LINK_KEY,
    is_segmentation,
    linked_image,
    looks_like_time_series,
    refuse_if_too_large,
    spatial_shape,
)
from .state import SpocoState
from .widgets import layer_picker, select_layer


class DataPanel(QGroupBox):
    """The image, its sparse labels, and how to read them (2D+t, background value, other pairs).

    ``image_changed`` is emitted with the newly chosen image layer (or None).
    """

    image_changed = Signal(object)

    def __init__(self, state: SpocoState, parent=None) -> None:
        super().__init__("1 · Image and sparse labels", parent)
        self.state = state
        self.viewer = state.viewer
        form = QFormLayout(self)
        self.image_box = layer_picker(self.viewer, Image, "The image to train on and segment (2D, 3D, 2D+t or RGB).",
                                      closed=state.closing.is_closed)
        form.addRow("Image", self.image_box.native)
        self.labels_box = layer_picker(
            self.viewer,
            Labels,
            "Sparse labels: paint a few whole objects, each with its own id. Unpainted pixels are 'unknown', "
            "not background. A segmentation made by Segment is listed too (choose it to train on every "
            "object in it), but never chosen by itself.",
            closed=state.closing.is_closed,
            auto=lambda layer: not is_segmentation(layer),
        )
        form.addRow("Sparse labels", self.labels_box.native)
        row = QHBoxLayout()
        self.new_labels_btn = QPushButton("New sparse labels")
        self.new_labels_btn.setToolTip("Add an empty labels layer that fits the image, ready to paint.")
        self.new_labels_btn.clicked.connect(self.new_sparse_labels)
        self.bg_brush_btn = QPushButton("Background brush")
        self.bg_brush_btn.setToolTip("Paint pixels you are sure are background (optional).")
        self.bg_brush_btn.clicked.connect(self.background_brush)
        row.addWidget(self.new_labels_btn)
        row.addWidget(self.bg_brush_btn)
        form.addRow(row)
        self.bg_spin = QSpinBox()
        self.bg_spin.setRange(1, 2**31 - 1)
        self.bg_spin.setValue(65535)
        self.bg_spin.setToolTip("The label value the background brush paints; never used as an object id.")
        form.addRow("Background value", self.bg_spin)
        self.series_check = QCheckBox("3D stack is 2D+t (a series of 2D images)")
        self.series_check.setToolTip(
            "Ticked: each frame is trained and segmented as a 2D image. Unticked: the stack is a "
            "Z volume and a 3D network is used. Guessed from the axis name (t/time)."
        )
        form.addRow(self.series_check)
        self.all_pairs_check = QCheckBox("Also train on other images' sparse labels")
        self.all_pairs_check.setChecked(True)
        self.all_pairs_check.setToolTip(
            "Labels layers made with 'New sparse labels' remember their image; with this ticked, "
            "every such pair with painted objects joins the training."
        )
        form.addRow(self.all_pairs_check)
        self.image_box.changed.connect(self._on_image_changed)
        self.labels_box.changed.connect(self.update_buttons)
        self._on_image_changed()

    # ------------------------------------------------------------------ what the others read
    @property
    def image(self) -> Image | None:
        return self.image_box.value

    @property
    def labels(self) -> Labels | None:
        return self.labels_box.value

    @property
    def series(self) -> bool:
        """The chosen image is a 2D+t stack, trained and segmented frame by frame."""
        image = self.image
        return bool(image is not None and len(spatial_shape(image)) == 3 and self.series_check.isChecked())

    @property
    def model_ndim(self) -> int:
        """The dimensionality of a model for the chosen image: 2 with no image or a 2D, 2D+t or
        RGB image, 3 for a Z volume; otherwise the image's own number of axes."""
        image = self.image
        return 2 if image is None else len(spatial_shape(image)) - int(self.series)

    @property
    def background_label(self) -> int:
        return int(self.bg_spin.value())

    def pairs(self) -> list:
        """(image, sparse labels) layer pairs to train on: the chosen pair, and with 'Also train
        on other images' sparse labels', every linked pair with painted pixels."""
        # napari hands plugins proxies of its layers: compare layers by name, never by identity.
        image, labels = self.image, self.labels
        pairs = [(image, labels)]
        if self.all_pairs_check.isChecked():
            for layer in list(self.viewer.layers):
                if not isinstance(layer, Labels) or layer.name == labels.name:
                    continue
                other = linked_image(self.viewer, layer)
                if not (isinstance(other, Image) and np.asarray(layer.data).any()):
                    continue
                if channel_count(other.data) != channel_count(image.data):  # one network, one input
                    show_warning(f"Not training on '{other.name}': it is {_kind(other)} and '{image.name}' "
                                 f"is {_kind(image)}; a model reads one kind.")
                    continue
                pairs.append((other, layer))
        return pairs

    # ------------------------------------------------------------------ state
    def update_buttons(self, *args) -> None:
        self.new_labels_btn.setEnabled(self.image is not None)
        self.bg_brush_btn.setEnabled(self.labels is not None)

    def _on_image_changed(self, *args) -> None:
        image = self.image
        is3d = image is not None and len(spatial_shape(image)) == 3
        self.series_check.setEnabled(is3d)
        self.series_check.setChecked(bool(is3d and looks_like_time_series(image)))
        if image is not None:  # pick the labels layer that belongs to this image, if any
            for layer in list(self.viewer.layers):
                linked = linked_image(self.viewer, layer) if isinstance(layer, Labels) else None
                if linked is not None and linked.unique_id == image.unique_id:
                    select_layer(self.labels_box, layer.name)
                    break
        self.update_buttons()
        self.image_changed.emit(image)

    # ------------------------------------------------------------------ actions
    def new_sparse_labels(self) -> Labels | None:
        image = self.image
        if image is None:
            show_warning("Open or select an image first.")
            return None
        try:  # a labels layer of the image's shape lives in memory
            refuse_if_too_large(image, "painting sparse labels")
        except SpocoError as exc:
            show_warning(str(exc))
            return None
        shape = spatial_shape(image)
        layer = self.viewer.add_labels(
            np.zeros(shape, dtype=EDITABLE_LABELS_DTYPE),
            name=f"{image.name} sparse labels",
            scale=image.scale[-len(shape):],
            translate=image.translate[-len(shape):],
            metadata={LINK_KEY: image.name, LINK_ID_KEY: image.unique_id},
        )
        layer.selected_label = 1
        layer.brush_size = max(3, min(shape[-2:]) // 40)
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        select_layer(self.labels_box, layer.name)
        show_info("Paint a few whole objects, one id each (press M for a fresh id). Unpainted pixels stay 'unknown'.")
        return layer

    def background_brush(self) -> None:
        layer = self.labels
        if layer is None:
            show_warning("Choose or create a sparse-labels layer first.")
            return
        dtype = np.dtype(layer.data.dtype)
        if dtype.kind in "iu" and self.background_label > np.iinfo(dtype).max:
            show_warning(
                f"'{layer.name}' holds {dtype} values (at most {np.iinfo(dtype).max}) and cannot hold the background "
                f"value {self.background_label}: set 'Background value' to at most {np.iinfo(dtype).max}, a value no "
                "object uses, or paint in a layer made with 'New sparse labels' (32-bit)."
            )
            return
        layer.selected_label = self.background_label
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        show_info(f"Background brush: painting value {self.background_label}. Press M for an object id again.")


def _kind(layer: Image) -> str:
    return "colour" if channel_count(layer.data) > 1 else "grey"
