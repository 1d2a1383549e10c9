"""The SPOCO dock widget: the label → train → look → correct → export loop, top to bottom.

Layout and wiring only. Each button copies its settings into a core config and calls one core
function (through ``workers``); the worker thread never reads a widget, the GUI thread only
touches layers.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..clustering import ClusterConfig
from ..data import promote_instances
from ..errors import SpocoError
from ..io import load_model, save_model, write_labels
from ..metrics import evaluate
from ..model import ModelConfig, SpocoModel
from ..pretrained import has_default_model, load_default_model
from ..scaling import scale_note, training_scale
from ..segmentation import preview_box
from ..training import TrainConfig, TrainProgress, pretrain_config
from . import workers
from .layers import LINK_KEY, image_data, looks_like_time_series, spatial_shape, training_set
from .widgets import LayerBox, LossPlot

log = logging.getLogger(__name__)

PREVIEW_LAYER = "SPOCO preview"
EMBEDDING_SUFFIX = " embeddings (PCA)"
RESULT_SUFFIX = " instances"
MODEL_FILTER = "SPOCO model (*.spoco.pt *.pt);;All files (*)"
PREVIEW_SIZE_2D = (320, 320)
PREVIEW_SIZE_3D = (32, 160, 160)


def _message(exc: BaseException, what: str) -> str:
    if isinstance(exc, SpocoError):
        return str(exc)
    log.error("%s failed", what, exc_info=exc)
    return f"{what} failed: {type(exc).__name__}: {exc}"


class _Closing:
    """Called when the panel goes away (its Qt object destroyed, or the panel taken out of the
    viewer): a running training job is told to stop after its current step, and results that
    arrive later are dropped. Apart from the widget, so that it still works while the widget's
    Qt object is being destroyed."""

    def __init__(self) -> None:
        self.closed = False
        self.stop: threading.Event | None = None  # the running training job's

    def __call__(self, *args) -> None:
        self.closed = True
        if self.stop is not None:
            self.stop.set()


class SpocoWidget(QWidget):
    """Dock widget: sparse labels → training with live preview → instances → export."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.model: SpocoModel | None = None
        self.model_source = "none"
        # A first Train on 2D images fine-tunes the shipped model unless the user chose New.
        self.start_from_default = has_default_model(2)
        self._unsaved_training = False  # Default/New/Load ask before discarding it
        self.sync = workers.sync_requested()  # tests: run jobs inline
        self._train_job: workers.TrainJob | None = None
        self._train_worker = None
        self._training = False
        self._segmenting = False
        self._preview_request: workers.PreviewTarget | None = None
        self._closing = _Closing()
        self.destroyed.connect(self._closing)  # viewer closed: napari deletes its window
        self._docked = False
        self.last_progress: TrainProgress | None = None
        self.last_preview: workers.PreviewResult | None = None

        # The sections scroll rather than squeeze when the window is short.
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addWidget(self._data_section())
        layout.addWidget(self._model_section())
        layout.addWidget(self._train_section())
        layout.addWidget(self._segment_section())
        layout.addWidget(self._correct_section())
        layout.addWidget(self._export_section())
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
        self.image_box.currentTextChanged.connect(self._on_image_changed)
        self.labels_box.currentTextChanged.connect(self._update_buttons)
        self.result_box.currentTextChanged.connect(self._update_buttons)
        self.gt_box.currentTextChanged.connect(self._update_buttons)
        self.viewer.layers.events.inserted.connect(self._update_buttons)
        self.viewer.layers.events.removed.connect(self._update_buttons)
        self._on_image_changed()

    # ------------------------------------------------------------------ sections
    def _data_section(self) -> QGroupBox:
        box = QGroupBox("1 · Image and sparse labels")
        form = QFormLayout(box)
        self.image_box = LayerBox(self.viewer, Image)
        self.image_box.setToolTip("The image to train on and segment (2D, 3D, 2D+t or RGB).")
        form.addRow("Image", self.image_box)
        self.labels_box = LayerBox(self.viewer, Labels)
        self.labels_box.setToolTip(
            "Sparse labels: paint a few whole objects, each with its own id. Unpainted pixels "
            "are 'unknown', not background."
        )
        form.addRow("Sparse labels", self.labels_box)
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
        return box

    def _model_section(self) -> QGroupBox:
        box = QGroupBox("2 · Model")
        lay = QVBoxLayout(box)
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        lay.addWidget(self.model_label)
        row = QHBoxLayout()
        self.default_model_btn = QPushButton("Default")
        self.default_model_btn.setToolTip(
            "Use the shipped 2D starting model (trained on nuclei and phase-contrast cells): "
            "Segment right away, or Train to fine-tune it on your labels."
        )
        self.default_model_btn.clicked.connect(self.use_default_model)
        self.new_model_btn = QPushButton("New")
        self.new_model_btn.setToolTip("Forget the current model; the next training starts a new network from scratch.")
        self.new_model_btn.clicked.connect(self.new_model)
        self.load_model_btn = QPushButton("Load…")
        self.load_model_btn.clicked.connect(lambda: self.load_model_from(None))
        self.save_model_btn = QPushButton("Save…")
        self.save_model_btn.clicked.connect(lambda: self.save_model_to(None))
        for b in (self.default_model_btn, self.new_model_btn, self.load_model_btn, self.save_model_btn):
            row.addWidget(b)
        lay.addLayout(row)
        return box

    def _train_section(self) -> QGroupBox:
        box = QGroupBox("3 · Train")
        form = QFormLayout(box)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.steps_spin.setValue(300)
        self.steps_spin.setToolTip("Training steps (about 3 per second on a 2-core CPU in 2D).")
        form.addRow("Steps", self.steps_spin)
        self.minutes_spin = QDoubleSpinBox()
        self.minutes_spin.setRange(0, 24 * 60)
        self.minutes_spin.setDecimals(1)
        self.minutes_spin.setSpecialValueText("no limit")
        self.minutes_spin.setToolTip("Stop after this many minutes even if steps remain (0 = no limit).")
        form.addRow("Time limit (min)", self.minutes_spin)
        self.preview_spin = QSpinBox()
        self.preview_spin.setRange(0, 3600)
        self.preview_spin.setValue(10)
        self.preview_spin.setSpecialValueText("off")
        self.preview_spin.setToolTip(
            "Every this many seconds, segment the part of the image you are looking at into the "
            f"'{PREVIEW_LAYER}' layer."
        )
        form.addRow("Preview every (s)", self.preview_spin)
        row = QHBoxLayout()
        self.train_btn = QPushButton("Train")
        self.train_btn.clicked.connect(self.start_training)
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setToolTip("Stop after the current step; the model keeps what it learned.")
        self.stop_btn.clicked.connect(self.stop_training)
        self.adapt_btn = QPushButton("Adapt")
        self.adapt_btn.setToolTip(
            "Adapt the model to this image without labels (self-supervised consistency between "
            "two augmented views): useful while you are still painting. Train afterwards."
        )
        self.adapt_btn.clicked.connect(self.start_adaptation)
        row.addWidget(self.train_btn)
        row.addWidget(self.adapt_btn)
        row.addWidget(self.stop_btn)
        form.addRow(row)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        form.addRow(self.progress_bar)
        self.train_label = QLabel("Not trained yet.")
        self.train_label.setWordWrap(True)
        form.addRow(self.train_label)
        self.loss_plot = LossPlot()
        form.addRow(self.loss_plot)
        return box

    def _segment_section(self) -> QGroupBox:
        box = QGroupBox("4 · Segment")
        form = QFormLayout(box)
        self.method_box = QComboBox()
        self.method_box.addItems(["meanshift", "hdbscan", "consistency"])
        self.method_box.setToolTip(
            "meanshift: fast default. hdbscan: density-based, for very uneven object sizes. "
            "consistency: keeps only instances the student and teacher agree on."
        )
        form.addRow("Clustering", self.method_box)
        defaults = ClusterConfig()
        self.bandwidth_spin = QDoubleSpinBox()
        self.bandwidth_spin.setRange(0.05, 5.0)
        self.bandwidth_spin.setSingleStep(0.05)
        self.bandwidth_spin.setValue(defaults.bandwidth)
        self.bandwidth_spin.setToolTip("Mean-shift kernel / HDBSCAN merge distance in embedding space (δv).")
        form.addRow("Bandwidth", self.bandwidth_spin)
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(0, 10_000_000)
        self.min_size_spin.setSpecialValueText("auto")
        self.min_size_spin.setToolTip("Smaller pieces are merged into a neighbour or dropped (auto: from painted sizes).")
        form.addRow("Min size (px)", self.min_size_spin)
        self.embedding_check = QCheckBox("Also show embeddings (PCA → RGB)")
        form.addRow(self.embedding_check)
        self.segment_btn = QPushButton("Segment")
        self.segment_btn.clicked.connect(self.start_segmentation)
        form.addRow(self.segment_btn)
        self.segment_label = QLabel("")
        self.segment_label.setWordWrap(True)
        form.addRow(self.segment_label)
        return box

    def _correct_section(self) -> QGroupBox:
        box = QGroupBox("5 · Correct and evaluate")
        form = QFormLayout(box)
        self.result_box = LayerBox(self.viewer, Labels)
        self.result_box.setToolTip("The segmentation to promote or evaluate.")
        form.addRow("Segmentation", self.result_box)
        row = QHBoxLayout()
        self.promote_sel_btn = QPushButton("Use selected as labels")
        self.promote_sel_btn.setToolTip(
            "Copy the segmentation's selected instance (its 'label' in the layer controls) into the "
            "sparse labels, with a fresh id; painted pixels are never overwritten."
        )
        self.promote_sel_btn.clicked.connect(lambda: self.promote(selected_only=True))
        self.promote_all_btn = QPushButton("Use all as labels")
        self.promote_all_btn.clicked.connect(lambda: self.promote(selected_only=False))
        row.addWidget(self.promote_sel_btn)
        row.addWidget(self.promote_all_btn)
        form.addRow(row)
        self.gt_box = LayerBox(self.viewer, Labels, allow_none=True)
        self.gt_box.setToolTip("A dense ground-truth labels layer, if you have one.")
        form.addRow("Ground truth", self.gt_box)
        self.evaluate_btn = QPushButton("Evaluate")
        self.evaluate_btn.clicked.connect(self.evaluate)
        form.addRow(self.evaluate_btn)
        self.eval_label = QLabel("")
        self.eval_label.setWordWrap(True)
        form.addRow(self.eval_label)
        return box

    def _export_section(self) -> QGroupBox:
        box = QGroupBox("6 · Export")
        form = QFormLayout(box)
        self.export_box = LayerBox(self.viewer, Labels)
        form.addRow("Labels", self.export_box)
        self.export_btn = QPushButton("Export TIFF…")
        self.export_btn.setToolTip("uint16 or uint32 TIFF (by the largest id), the layer's shape, 2D or 3D.")
        self.export_btn.clicked.connect(lambda: self.export_labels(None))
        form.addRow(self.export_btn)
        return box

    # ------------------------------------------------------------------ state
    def event(self, event) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.ParentChange:
            # The panel's close button takes the widget out of the window for good (napari
            # makes a new one when the panel is opened again): stop what it runs.
            if self.parent() is None and self._docked:
                self._closing()
            self._docked = self.parent() is not None
        return super().event(event)

    def _busy(self, action: str, segmenting: bool = True) -> bool:
        """True, with a warning, while a job runs that ``action`` must not overlap: the buttons
        are disabled then, but the methods are also called directly (and by tests)."""
        if self._training:
            show_warning(f"Training is running: press Stop, or wait for it to end, before {action}.")
            return True
        if segmenting and self._segmenting:
            show_warning(f"Segmentation is running: wait for it to end before {action}.")
            return True
        return False

    def _update_buttons(self, *args) -> None:
        busy = self._training or self._segmenting
        image, labels = self.image_box.layer(), self.labels_box.layer()
        self.new_labels_btn.setEnabled(image is not None)
        self.bg_brush_btn.setEnabled(labels is not None)
        self.train_btn.setEnabled(not busy and image is not None and labels is not None)
        self.stop_btn.setEnabled(self._training)
        self.adapt_btn.setEnabled(not busy and image is not None)
        self.new_model_btn.setEnabled(not self._training)
        self.default_model_btn.setEnabled(not self._training and has_default_model(2))
        self.load_model_btn.setEnabled(not self._training)
        self.save_model_btn.setEnabled(self.model is not None and not self._training)
        self.segment_btn.setEnabled(self.model is not None and not busy and image is not None)
        has_result = self.result_box.layer() is not None
        self.promote_sel_btn.setEnabled(has_result and labels is not None)
        self.promote_all_btn.setEnabled(has_result and labels is not None)
        self.evaluate_btn.setEnabled(has_result and self.gt_box.layer() is not None)
        self.export_btn.setEnabled(self.export_box.layer() is not None)
        self._update_model_label()

    def _update_model_label(self) -> None:
        if self.model is None:
            text = (
                "No model yet: Train fine-tunes the shipped starting model (2D; 3D starts a new network)."
                if self.start_from_default
                else "No model yet: Train starts a new network."
            )
        else:
            steps = self.model.history.get("steps", 0)
            if self._training:
                done = self.last_progress.step if self.last_progress else 0
                text = f"{self.model.config.ndim}D model ({self.model_source}): training, step {done} of this run…"
            else:
                text = f"{self.model.config.ndim}D model ({self.model_source}), {steps} steps trained; Train fine-tunes it."
            if self.model.pixel_scale != 1.0:
                text += f" Works at scale {self.model.pixel_scale:g} (large objects)."
        self.model_label.setText(text)

    def _on_image_changed(self, *args) -> None:
        image = self.image_box.layer()
        is3d = image is not None and len(spatial_shape(image)) == 3
        self.series_check.setEnabled(is3d)
        self.series_check.setChecked(bool(is3d and looks_like_time_series(image)))
        if image is not None:  # pick the labels layer that belongs to this image, if any
            for layer in self.viewer.layers:
                if isinstance(layer, Labels) and layer.metadata.get(LINK_KEY) == image.name:
                    self.labels_box.setCurrentText(layer.name)
                    break
            if (image.name + RESULT_SUFFIX) in self.viewer.layers:
                self.result_box.setCurrentText(image.name + RESULT_SUFFIX)
        self._update_buttons()

    @property
    def series(self) -> bool:
        image = self.image_box.layer()
        return bool(image is not None and len(spatial_shape(image)) == 3 and self.series_check.isChecked())

    # ------------------------------------------------------------------ 1 · data
    def new_sparse_labels(self) -> Labels | None:
        image = self.image_box.layer()
        if image is None:
            show_warning("Open or select an image first.")
            return None
        shape = spatial_shape(image)
        name = f"{image.name} sparse labels"
        layer = self.viewer.add_labels(
            np.zeros(shape, dtype=np.uint32),
            name=name,
            scale=image.scale[-len(shape):],
            translate=image.translate[-len(shape):],
            metadata={LINK_KEY: image.name},
        )
        layer.selected_label = 1
        layer.brush_size = max(3, min(shape[-2:]) // 40)
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        self.labels_box.select(layer.name)
        show_info(
            "Paint a few whole objects, one id each (press M for a fresh id). Unpainted pixels "
            "stay 'unknown'."
        )
        return layer

    def background_brush(self) -> None:
        layer = self.labels_box.layer()
        if layer is None:
            show_warning("Choose or create a sparse-labels layer first.")
            return
        layer.selected_label = int(self.bg_spin.value())
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        show_info(f"Background brush: painting value {self.bg_spin.value()}. Press M for an object id again.")

    def _pairs(self) -> list:
        # napari hands plugins proxies of its layers: compare layers by name, never by identity.
        image, labels = self.image_box.layer(), self.labels_box.layer()
        pairs = [(image, labels)]
        if self.all_pairs_check.isChecked():
            for layer in self.viewer.layers:
                link = layer.metadata.get(LINK_KEY) if isinstance(layer, Labels) else None
                if layer.name == labels.name or link is None or link not in self.viewer.layers:
                    continue
                other = self.viewer.layers[link]
                if isinstance(other, Image) and np.asarray(layer.data).any():
                    pairs.append((other, layer))
        return pairs

    # ------------------------------------------------------------------ 2 · model
    def _may_replace_model(self) -> bool:
        """True unless the current model holds training that was never saved and the user
        declines to discard it."""
        return not self._unsaved_training or self._confirm(
            "The current model has training that has not been saved (Save… keeps it). Replace it anyway?"
        )

    def use_default_model(self) -> bool:
        # (a segmentation holds its own reference to the model: replacing it is safe then)
        if self._busy("replacing the model", segmenting=False) or not self._may_replace_model():
            return False
        try:
            self.model = load_default_model(2)
        except Exception as exc:  # noqa: BLE001
            show_error(_message(exc, "Loading the shipped model"))
            return False
        self.model_source = "shipped default"
        self.start_from_default = True
        self._unsaved_training = False
        self._update_buttons()
        return True

    def new_model(self) -> None:
        if self._busy("replacing the model", segmenting=False) or not self._may_replace_model():
            return
        self._unsaved_training = False
        self.model = None
        self.model_source = "none"
        self.start_from_default = False
        self.loss_plot.clear()
        self.train_label.setText("Not trained yet.")
        self._update_buttons()

    def _ask_path(self, title: str, save: bool, default: str, filters: str) -> str | None:
        """A file dialog (replaced in tests)."""
        if save:
            path, _ = QFileDialog.getSaveFileName(
                self, title, default, filters, options=QFileDialog.DontConfirmOverwrite
            )
        else:
            path, _ = QFileDialog.getOpenFileName(self, title, default, filters)
        return path or None

    def _confirm(self, question: str) -> bool:
        """A yes/no question (replaced in tests)."""
        answer = QMessageBox.question(self, "napari-spoco", question, QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
        return answer == QMessageBox.Yes

    def load_model_from(self, path: str | None) -> bool:
        if self._busy("replacing the model", segmenting=False):
            return False
        path = path or self._ask_path("Load SPOCO model", False, "", MODEL_FILTER)
        if not path or not self._may_replace_model():
            return False
        try:
            self.model = load_model(path)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            show_error(_message(exc, "Loading the model"))
            return False
        self._unsaved_training = False
        self.model_source = Path(path).name
        show_info(f"Loaded {Path(path).name}: {self.model.config.ndim}D, {self.model.history.get('steps', 0)} steps.")
        self._update_buttons()
        return True

    def save_model_to(self, path: str | None) -> bool:
        if self._busy("saving the model (its weights change at every step)", segmenting=False):
            return False
        if self.model is None:
            show_warning("There is no model to save yet: train one first.")
            return False
        path = path or self._ask_path("Save SPOCO model", True, "model.spoco.pt", MODEL_FILTER)
        if not path:
            return False
        if Path(path).exists() and not self._confirm(f"{path} exists. Replace it?"):
            return False
        try:
            saved = save_model(self.model, path)
        except Exception as exc:  # noqa: BLE001
            show_error(_message(exc, "Saving the model"))
            return False
        self.model_source = saved.name
        self._unsaved_training = False
        show_info(f"Model saved to {saved}")
        self._update_buttons()
        return True

    # ------------------------------------------------------------------ 3 · train
    def train_config(self) -> TrainConfig:
        minutes = self.minutes_spin.value()
        return TrainConfig(
            steps=int(self.steps_spin.value()),
            minutes=float(minutes) if minutes > 0 else None,
            background_label=int(self.bg_spin.value()),
        )

    def start_training(self) -> None:
        """Train (or fine-tune) on the painted objects of the chosen image(s)."""
        if self._busy("starting another run"):
            return
        if self.image_box.layer() is None or self.labels_box.layer() is None:
            show_warning("Choose an image and its sparse-labels layer first.")
            return
        try:
            config = self.train_config()
            data = training_set(self._pairs(), self.series, config.background_label)
        except Exception as exc:  # noqa: BLE001
            show_error(_message(exc, "Preparing the training data"))
            return
        message = f"Starting on {len(data.images)} image(s), {data.n_objects} painted objects…"
        # Large objects: the network sees the images at a smaller size (napari_spoco.scaling).
        model_scale = self.model.pixel_scale if self.model else 1.0
        scale = training_scale(data.labels, config.background_label, model_scale)
        note = scale_note(scale, data.labels, config.background_label, model_scale)
        if note:
            message += " " + note
        config = replace(config, scale=scale)
        self._launch_training(data.images, data.labels, data.names, config, data.ndim, False, message)

    def start_adaptation(self) -> None:
        """Self-supervised pretraining on the chosen image, before (or while) painting."""
        image = self.image_box.layer()
        if self._busy("starting another run") or image is None:
            return
        data = image_data(image)
        if self.series:  # at most 16 frames, spread over the stack
            frames = np.unique(np.linspace(0, data.shape[0] - 1, min(16, data.shape[0])).astype(int))
            images = [np.asarray(data[t]) for t in frames]
        else:
            images = [np.asarray(data)]
        ndim = len(spatial_shape(image)) - (1 if self.series else 0)
        if self.model is None and not (self.start_from_default and has_default_model(ndim)):
            show_warning(
                "Adapting works best from a trained model: press Default (2D) or Load… first. "
                "Adapting a new network anyway."
            )
        steps_minutes = self.train_config()
        config = pretrain_config(steps=steps_minutes.steps, minutes=steps_minutes.minutes)
        self._launch_training(images, [None] * len(images), [image.name] * len(images), config, ndim, True,
                              f"Adapting to '{image.name}' without labels…")

    def _launch_training(self, images, labels, names, config, ndim, self_supervised, message) -> None:
        if self.model is None and self.start_from_default and ndim == 2 and has_default_model(2):
            self.model = load_default_model(2)
            self.model_source = "shipped default"
        self._train_job = workers.TrainJob(
            images=images,
            labels=labels,
            names=names,
            config=config,
            model=self.model,
            model_config=ModelConfig(),
            preview_every=float(self.preview_spin.value()),
            preview_target=lambda: self._preview_request,
            self_supervised=self_supervised,
        )
        self._preview_request = self._preview_target()
        if self._preview_request is not None:
            # Creating a layer costs a few hundred ms of GUI time: do it now, not mid-training.
            self._show_preview(workers.PreviewResult(
                np.zeros(tuple(s.stop - s.start for s in self._preview_request.box), np.uint32),
                self._preview_request, 0, 0.0))
        self._training = True
        self._closing.stop = self._train_job.stop
        self.last_progress = None
        self.progress_bar.setValue(0)
        self.train_label.setText(message)
        self._update_buttons()
        self._train_worker = workers.launch(
            workers.training_job,
            self._train_job,
            on_yield=self._on_train_yield,
            on_return=self._on_train_done,
            on_error=self._on_train_error,
            on_finish=self._on_train_finished,
            sync=self.sync,
        )

    def stop_training(self) -> None:
        if self._train_job is not None and self._training:
            self._train_job.stop.set()
            self.train_label.setText(self.train_label.text() + " — stopping after this step…")

    def _on_train_yield(self, item) -> None:
        if self._closing.closed:  # the panel is gone
            return
        if isinstance(item, workers.PreviewResult):
            self._show_preview(item)
            return
        p: TrainProgress = item
        if self.model is None and p.model is not None:
            # The model being trained is the widget's model from the first step on (a failed or
            # stopped run still leaves it usable); Segment stays disabled until training ends.
            self.model = p.model
            self.model_source = "new"
        self.last_progress = p
        self._unsaved_training = True  # from the first step on, even if the run later fails
        self._update_model_label()
        self.progress_bar.setValue(int(1000 * p.fraction))
        total = f"/{p.total_steps}" if p.total_steps else ""
        self.train_label.setText(
            f"step {p.step}{total} · {p.steps_per_second:.1f} steps/s · loss {p.losses['total']:.3f} · "
            f"{int(p.elapsed) // 60}:{int(p.elapsed) % 60:02d}"
        )
        self.loss_plot.add(p.losses["total"])
        self._preview_request = self._preview_target()

    def _on_train_done(self, model: SpocoModel) -> None:
        if self._closing.closed:  # the panel is gone
            return
        if model is not None:
            if self.model is not model:
                self.model_source = "new"
            elif self.model_source not in ("new", "none") and not self.model_source.endswith("fine-tuned"):
                self.model_source += ", fine-tuned"
            self.model = model
        p = self.last_progress
        msg = f"Trained {p.step} steps in {p.elapsed:.0f} s." if p else "Training ended before the first step."
        self.train_label.setText(msg + " Segment to see all instances, or paint more and Train again.")
        self.progress_bar.setValue(1000 if p else 0)

    def _on_train_error(self, exc: BaseException) -> None:
        if self._closing.closed:  # the panel is gone
            return
        show_error(_message(exc, "Training"))
        self.train_label.setText(f"Training stopped: {exc}")

    def _on_train_finished(self) -> None:
        if self._closing.closed:  # the panel is gone
            return
        self._training = False
        self._train_worker = None
        self._closing.stop = None
        self._update_buttons()

    def _layer(self, layer_id, name: str = ""):
        """The viewer's layer with this ``unique_id`` (kept when the layer is renamed; napari
        hands plugins a new proxy object at every access, so identity says nothing), or, without
        an id, the layer of that name; None when it is no longer in the viewer."""
        if layer_id is None:
            return self.viewer.layers[name] if name in self.viewer.layers else None
        return next((layer for layer in self.viewer.layers if layer.unique_id == layer_id), None)

    def _preview_target(self) -> workers.PreviewTarget | None:
        """Where the user is looking, in the selected image's data coordinates (GUI thread)."""
        image = self.image_box.layer()
        if image is None or self.preview_spin.value() == 0:
            return None
        try:
            point = list(self.viewer.dims.point)
            displayed = list(self.viewer.dims.displayed)
            scene = getattr(self.viewer, "scene", None)  # napari >= 0.9 moved the camera there
            camera = scene.camera if scene is not None else self.viewer.camera
            center = list(camera.center)[-len(displayed):]
            for axis, c in zip(displayed, center):
                point[axis] = c
            data_point = np.asarray(image.world_to_data(point))[-len(spatial_shape(image)):]
        except Exception:  # noqa: BLE001 - a preview is a convenience, never an error
            return None
        shape = spatial_shape(image)
        data = image_data(image)
        div = (self.model.config if self.model else ModelConfig()).size_divisor
        if len(shape) == 3 and self.series:
            t = int(np.clip(round(data_point[0]), 0, shape[0] - 1))
            box = preview_box(shape[1:], data_point[1:], PREVIEW_SIZE_2D, div)
            origin = (t,) + tuple(s.start for s in box)
            return workers.PreviewTarget(f"{image.name}[{t}]", data[t], box, origin, image.name, image.unique_id)
        size = PREVIEW_SIZE_2D if len(shape) == 2 else PREVIEW_SIZE_3D
        box = preview_box(shape, data_point, size, div)
        return workers.PreviewTarget(image.name, data, box, tuple(s.start for s in box), image.name, image.unique_id)

    def _show_preview(self, result: workers.PreviewResult) -> None:
        image = self._layer(result.target.layer_id, result.target.layer)
        if image is None:  # the image was removed while the preview was made: nowhere to show it
            return
        self.last_preview = result
        labels = result.labels
        if labels.ndim < len(result.target.origin):  # one frame of a 2D+t stack
            labels = labels[None]
        scale = np.asarray(image.scale[-labels.ndim:])
        translate = np.asarray(image.translate[-labels.ndim:]) + scale * np.asarray(result.target.origin)
        if PREVIEW_LAYER in self.viewer.layers and isinstance(self.viewer.layers[PREVIEW_LAYER], Labels):
            layer = self.viewer.layers[PREVIEW_LAYER]
            if layer.data.ndim == labels.ndim:
                # Each change makes napari redo the layer, tens of ms of GUI time on a 2-core CPU:
                # change only what changed, and same-shaped labels in place (half the cost again).
                if not np.array_equal(layer.scale, scale):
                    layer.scale = scale
                if not np.array_equal(layer.translate, translate):
                    layer.translate = translate
                if isinstance(layer.data, np.ndarray) and layer.data.shape == labels.shape:
                    layer.data[...] = labels
                    layer.refresh()
                else:
                    layer.data = labels
            else:
                self.viewer.layers.remove(layer)
                layer = None
        else:
            layer = None
        if layer is None:
            layer = self.viewer.add_labels(labels, name=PREVIEW_LAYER, scale=scale, translate=translate, opacity=0.5)
            layer.contour = 1
            # Keep the user on the layer they are painting.
            if self.labels_box.layer() is not None:
                self.viewer.layers.selection.active = self.labels_box.layer()
        n = int(labels.max())  # segment() numbers objects 1…n
        self.train_label.setToolTip(f"Last preview: step {result.step}, {n} objects, {result.seconds:.1f} s")

    # ------------------------------------------------------------------ 4 · segment
    def cluster_config(self) -> ClusterConfig:
        min_size = int(self.min_size_spin.value())
        return ClusterConfig(
            method=self.method_box.currentText(),
            bandwidth=float(self.bandwidth_spin.value()),
            min_size=min_size if min_size > 0 else None,
        )

    def start_segmentation(self) -> None:
        image = self.image_box.layer()
        if self.model is None:
            show_warning("There is no model yet: train one or load a model file.")
            return
        if image is None or self._training or self._segmenting:
            return
        config = self.cluster_config()
        job = workers.SegmentJob(
            model=self.model,
            image=np.asarray(image_data(image)),
            method=config.method,
            config=config,
            series=self.series,
            with_embedding=self.embedding_check.isChecked() and not self.series,
        )
        layer, created = self._result_layer(image)
        # Layers are found again by id: they may be renamed or removed while the job runs.
        self._segment_target = (image.unique_id, image.name, layer.unique_id, created)
        self._segmenting = True
        self.segment_label.setText(f"Segmenting '{image.name}' ({config.method})…")
        self.progress_bar.setRange(0, 0)  # busy indicator
        self._update_buttons()
        workers.launch(
            workers.segment_job,
            job,
            on_return=self._on_segmented,
            on_error=self._on_segment_error,
            on_finish=self._on_segment_finished,
            sync=self.sync,
        )

    def _result_layer(self, image) -> tuple[Labels, bool]:
        """The Labels layer a segmentation of ``image`` goes to: its '… instances' layer if it
        has the image's shape, else a new empty one (and True).

        Adding a layer costs 100–300 ms of GUI time on a 2-core CPU (napari builds its visuals
        and controls): it is done with the click, not while the user works as the job runs.
        """
        shape = spatial_shape(image)  # labels come back at the image's shape (2D+t: T, Y, X)
        name = image.name + RESULT_SUFFIX
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        if isinstance(existing, Labels) and existing.data.shape == shape:
            return existing, False
        active = self.viewer.layers.selection.active
        # (a layer of another kind or shape keeps its name; napari numbers the new one)
        # uint16, as most results are: the result replaces the zeros without a change of type
        layer = self.viewer.add_labels(np.zeros(shape, np.uint16), name=name, scale=image.scale[-len(shape):],
                                       translate=image.translate[-len(shape):])
        if active is not None:  # keep the user on the layer they are painting
            self.viewer.layers.selection.active = active
        return layer, True

    def _drop_empty_result_layer(self) -> None:
        _, _, layer_id, created = self._segment_target
        layer = self._layer(layer_id) if created else None
        if layer is not None and not np.asarray(layer.data).any():
            self.viewer.layers.remove(layer)

    def _on_segmented(self, result: workers.SegmentResult) -> None:
        if self._closing.closed:  # the panel is gone
            return
        image_id, launched_name, layer_id, _ = self._segment_target
        image = self._layer(image_id)
        if image is None:
            self._drop_empty_result_layer()
            show_warning(f"'{launched_name}' was removed while it was being segmented; its segmentation was not added.")
            self.segment_label.setText(f"'{launched_name}' was removed; nothing was added.")
            return
        name = image.name + RESULT_SUFFIX
        ndim = result.labels.ndim
        kwargs = dict(scale=image.scale[-ndim:], translate=image.translate[-ndim:])
        layer = self._layer(layer_id)
        if layer is None or layer.data.shape != result.labels.shape:  # removed meanwhile
            layer = self.viewer.add_labels(result.labels, name=name, **kwargs)
        else:
            if layer.name == launched_name + RESULT_SUFFIX and image.name != launched_name:
                layer.name = name  # the image was renamed: its result follows
            layer.data = result.labels
        name = layer.name
        layer.metadata["spoco_result_of"] = image.name
        if PREVIEW_LAYER in self.viewer.layers:
            self.viewer.layers[PREVIEW_LAYER].visible = False
        if result.embedding_rgb is not None:
            ename = image.name + EMBEDDING_SUFFIX
            if ename in self.viewer.layers:
                self.viewer.layers.remove(ename)
            self.viewer.add_image(result.embedding_rgb, name=ename, rgb=True, visible=False, **kwargs)
        n = result.objects
        self.result_box.select(name)
        self.export_box.select(name)
        self.segment_label.setText(f"{n} instances in {result.seconds:.1f} s → layer '{name}'.")

    def _on_segment_error(self, exc: BaseException) -> None:
        if self._closing.closed:  # the panel is gone
            return
        self._drop_empty_result_layer()
        show_error(_message(exc, "Segmentation"))
        self.segment_label.setText("Segmentation failed; see the notification.")

    def _on_segment_finished(self) -> None:
        if self._closing.closed:  # the panel is gone
            return
        self._segmenting = False
        self.progress_bar.setRange(0, 1000)
        self._update_buttons()

    # ------------------------------------------------------------------ 5 · correct, evaluate
    def promote(self, selected_only: bool) -> int:
        result, sparse = self.result_box.layer(), self.labels_box.layer()
        if result is None or sparse is None:
            show_warning("Choose a segmentation and a sparse-labels layer first.")
            return 0
        if result.name == sparse.name:
            show_warning("The segmentation and the sparse labels are the same layer; choose two different layers.")
            return 0
        ids = [int(result.selected_label)] if selected_only else None
        try:
            new, promoted, skipped = promote_instances(sparse.data, result.data, ids, int(self.bg_spin.value()))
        except Exception as exc:  # noqa: BLE001
            show_error(_message(exc, "Promoting instances"))
            return 0
        if promoted:
            sparse.data = new
        note = f" ({skipped} skipped: they touch painted objects)" if skipped else ""
        if selected_only and not promoted and not skipped:
            show_warning(f"Instance {ids[0]} is not in '{result.name}': pick one with the layer's colour picker.")
        else:
            show_info(f"{promoted} instance(s) added to '{sparse.name}'{note}. Correct them, then Train again.")
        return promoted

    def evaluate(self) -> dict | None:
        pred, gt = self.result_box.layer(), self.gt_box.layer()
        if pred is None or gt is None:
            show_warning("Choose a segmentation and a ground-truth layer to evaluate.")
            return None
        if pred.data.shape != gt.data.shape:
            show_error(f"'{pred.name}' {pred.data.shape} and '{gt.name}' {gt.data.shape} differ in shape.")
            return None
        scores = evaluate(np.asarray(gt.data), np.asarray(pred.data))
        self.eval_label.setText(
            f"AP50 {scores['AP50']:.3f} · mAP {scores['mAP']:.3f} · SBD {scores['SBD']:.3f} · "
            f"|DiC| {scores['DiC']:.0f} ({scores['n_pred']:.0f} predicted / {scores['n_true']:.0f} true)"
        )
        return scores

    # ------------------------------------------------------------------ 6 · export
    def export_labels(self, path: str | None) -> bool:
        layer = self.export_box.layer()
        if layer is None:
            show_warning("Choose a labels layer to export.")
            return False
        path = path or self._ask_path("Export labels", True, f"{layer.name}.tif", "TIFF (*.tif *.tiff)")
        if not path:
            return False
        if Path(path).suffix.lower() not in (".tif", ".tiff"):
            path = str(path) + ".tif"
        if Path(path).exists() and not self._confirm(f"{path} exists. Replace it?"):
            show_info("Export cancelled; nothing was overwritten.")
            return False
        try:
            written = write_labels(path, np.asarray(layer.data), overwrite=True)
        except Exception as exc:  # noqa: BLE001
            show_error(_message(exc, "Export"))
            return False
        show_info(f"Saved '{layer.name}' to {written}")
        return True
