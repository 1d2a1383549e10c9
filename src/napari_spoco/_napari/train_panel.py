"""3 · Train: what happens when Train (or Adapt, or Stop) is pressed, from the settings copied
out of the panels to the model the run leaves behind.

Train copies the painted pairs into a ``TrainJob`` (the worker never reads a widget), starts
``workers.training_job`` in a napari thread worker, and shows every step it yields in the
panel and in napari's activity dock; every few seconds the job also yields a preview of the
part of the image in view. The model being trained is the current model from its first step on.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
)

from ..layout import layout_note
from ..model import network_config, network_name
from ..out_of_core import voxel_note, voxel_size_from_scale
from ..pretrained import DEFAULT_NETWORKS, load_default_model
from ..scaling import explain_voxel_estimate, kept_scale_of, scale_note, training_scale
from ..training import FEW_PAINTED, TrainConfig, TrainProgress, pretrain_config, scale_jitter_note
from . import workers
from .data_panel import DataPanel
from .dialogs import error_message
from .layers import check_axes, image_data, is_segmentation, refuse_if_too_large, spatial_shape, training_set
from .preview import PREVIEW_LAYER, empty_preview, preview_target, show_preview
from .state import Job, ModelSource, SpocoState
from .widgets import LossPlot, NetworkBox

#: The Train panel's "Zoom patches" choices: TrainConfig.scale_jitter (None: automatic).
ZOOM_CHOICES = (("auto", None), ("off", 1.0), ("1.25x", 1.25), ("1.5x", 1.5), ("2x", 2.0), ("3x", 3.0), ("4x", 4.0))


class TrainPanel(QGroupBox):
    def __init__(self, state: SpocoState, data: DataPanel, parent=None) -> None:
        super().__init__("3 · Train", parent)
        self.state, self.data, self.viewer = state, data, state.viewer
        self.last_progress: TrainProgress | None = None
        self.last_preview: workers.PreviewResult | None = None
        self.job: workers.TrainJob | None = None
        self.worker = None  # the napari thread worker (None when run inline)
        self.activity: workers.Activity | None = None  # the bar in napari's activity dock
        self._preview_request: workers.PreviewTarget | None = None
        form = QFormLayout(self)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.steps_spin.setValue(300)
        self.steps_spin.setToolTip("Training steps: 2D trains at about 1.5-8 steps per second on 2 CPU cores, "
                                    "depending on the CPU (the progress bar shows the rate).")
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
        self.zoom_box = QComboBox()
        for text, value in ZOOM_CHOICES:
            self.zoom_box.addItem(text, value)
        self.zoom_box.setToolTip(
            "Train on patches zoomed in and out by up to this factor, so the model also meets objects "
            f"of sizes you did not paint. auto: 1.5x when fewer than {FEW_PAINTED} objects are painted "
            "(it helped most on single EM images), off otherwise (with many painted objects it cost up "
            "to 0.06 AP50 on phase-contrast cells)."
        )
        form.addRow("Zoom patches", self.zoom_box)
        self.network_box = NetworkBox(state)
        form.addRow("Network", self.network_box)
        row = QHBoxLayout()
        self.train_btn = QPushButton("Train")
        self.train_btn.clicked.connect(self.start_training)
        self.adapt_btn = QPushButton("Adapt")
        self.adapt_btn.setToolTip(
            "Adapt the model to this image without labels (self-supervised consistency between "
            "two augmented views): useful while you are still painting. Train afterwards."
        )
        self.adapt_btn.clicked.connect(self.start_adaptation)
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setToolTip("Stop after the current step; the model keeps what it learned.")
        self.stop_btn.clicked.connect(self.stop_training)
        for b in (self.train_btn, self.adapt_btn, self.stop_btn):
            row.addWidget(b)
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
        data.image_box.changed.connect(self.update_buttons)
        data.labels_box.changed.connect(self.update_buttons)
        state.job.changed.connect(self.update_buttons)
        state.model.changed.connect(self._on_model_changed)
        self.update_buttons()

    def update_buttons(self, *args) -> None:
        if self.state.closing.closed:
            return
        idle, has_image = self.state.job.idle, self.data.image is not None
        self.train_btn.setEnabled(idle and has_image and self.data.labels is not None)
        self.adapt_btn.setEnabled(idle and has_image)
        self.stop_btn.setEnabled(self.state.job.training)

    def _on_model_changed(self) -> None:
        # The loss curve belongs to the current model: New (no model) starts a fresh one.
        if self.state.model.current is None and self.state.job.idle and not self.state.closing.closed:
            self.loss_plot.clear()
            self.train_label.setText("Not trained yet.")

    def train_config(self) -> TrainConfig:
        minutes = self.minutes_spin.value()
        return TrainConfig(
            steps=int(self.steps_spin.value()),
            minutes=float(minutes) if minutes > 0 else None,
            background_label=self.data.background_label,
            scale_jitter=self.zoom_box.currentData(),
        )

    # ------------------------------------------------------------------ Train, Adapt, Stop
    def start_training(self) -> None:
        """Train (or fine-tune) on the painted objects of the chosen image(s)."""
        if self.state.job.refuse("starting another run"):
            return
        if self.data.image is None or self.data.labels is None:
            show_warning("Choose an image and its sparse-labels layer first.")
            return
        try:
            config = self.train_config()
            pairs = self.data.pairs()
            for image, _ in pairs:
                check_axes(image)
            data = training_set(pairs, self.data.series, config.background_label)
        except Exception as exc:  # noqa: BLE001
            show_error(error_message(exc, "Preparing the training data"))
            # the line must not go on showing the previous run as if this one had happened
            self.train_label.setText("Not trained: the painted labels could not be used (see the notification).")
            return
        message = f"Starting on {len(data.images)} image(s), {data.n_objects} painted objects…"
        chosen = self.data.labels
        if is_segmentation(chosen):
            # chosen by the user (the picker never takes one by itself): say what it means
            note = (f"'{chosen.name}' is a segmentation: every object in it counts as painted. To train on a few "
                    "objects, paint them in 'New sparse labels' (Use selected as labels copies corrected ones).")
            show_info(note)
            message += " " + note
        # The voxel size of the chosen image's layer scale (None when it is all ones), else the
        # model's, else estimated from the painted objects' shape (scaling.estimate_voxel_size).
        model = self.state.model.current
        voxel = voxel_size_from_scale(self.data.image.scale, data.ndim)
        mixed = len({voxel_size_from_scale(im.scale, data.ndim) for im, _ in pairs}) > 1
        estimate, note = None, ""
        if voxel is None and data.ndim == 3 and (model is None or model.voxel_size is None):
            # training makes the same estimate and records it as estimated
            estimate, note = explain_voxel_estimate(data.labels, config.background_label)
        if estimate is not None:
            message += (self._voxel_message(estimate, mixed, "estimated") + " " + note.capitalize()
                        + "; set the image layer's scale to the real voxel size to overrule it.")
        else:
            message += self._voxel_message(voxel, mixed)
        # Large objects: the network sees the images at a smaller size (napari_spoco.scaling).
        kept = kept_scale_of(model)
        scale = training_scale(data.labels, config.background_label, *kept)
        note = scale_note(scale, data.labels, config.background_label, *kept)
        if note:
            message += " " + note
        config = replace(config, scale=scale, voxel_size=voxel)
        self._launch(Job.TRAIN, data.images, data.labels, data.names, config, data.ndim, message)

    def start_adaptation(self) -> None:
        """Self-supervised pretraining on the chosen image, before (or while) painting: only the
        consistency term of the loss (docs/method.md), labels ignored."""
        image = self.data.image
        if self.state.job.refuse("starting another run") or image is None:
            return
        try:
            check_axes(image)
            refuse_if_too_large(image, "adapting")
        except Exception as exc:  # noqa: BLE001
            show_error(error_message(exc, "Adapting"))
            self.train_label.setText("Not adapted: the image could not be used (see the notification).")
            return
        data, series = image_data(image), self.data.series
        if series:  # at most 16 frames, spread over the stack
            frames = np.unique(np.linspace(0, data.shape[0] - 1, min(16, data.shape[0])).astype(int))
            images = [np.asarray(data[t]) for t in frames]
        else:
            images = [np.asarray(data)]
        ndim = len(spatial_shape(image)) - (1 if series else 0)
        if self.state.model.current is None and not self.state.model.starts_from_default(ndim):
            show_warning(
                "Adapting works best from a trained model: press Default or Load… first. "
                "Adapting a new network anyway."
            )
        limits = self.train_config()
        voxel = voxel_size_from_scale(image.scale, ndim)
        config = replace(pretrain_config(steps=limits.steps, minutes=limits.minutes), voxel_size=voxel)
        self._launch(Job.ADAPT, images, [None] * len(images), [image.name] * len(images), config, ndim,
                     f"Adapting to '{image.name}' without labels…" + self._voxel_message(voxel))

    def _voxel_message(self, voxel, mixed: bool = False, source: str = "the layer's scale") -> str:
        note = voxel_note(voxel, self.state.model.current, source)
        text = f" Training at {note}." if note else ""
        if mixed:
            text += " The other images' layers have other scales: they are trained at this voxel size too."
        return text

    def _launch(self, kind: Job, images, labels, names, config, ndim: int, message: str) -> None:
        model = self.state.model
        if model.starts_from_default(ndim):  # the shipped model for 2D or 3D images
            model.use(load_default_model(ndim), ModelSource.DEFAULT)
            message += f" From the shipped {ndim}D starting model."
        # A network's preset applies to a new one; a model keeps its own (the Network box says so).
        new_config = network_config(model.network, config.device)
        if model.current is None:
            shipped = DEFAULT_NETWORKS.get(ndim)
            message += f" New {network_name(new_config)} network" + (
                f" (the shipped {ndim}D starting model is {shipped})."
                if model.start_from_default and shipped else ".")
        self.job = workers.TrainJob(
            images=images,
            labels=labels,
            names=names,
            config=config,
            model=model.current,
            model_config=new_config,
            preview_every=float(self.preview_spin.value()),
            preview_target=lambda: self._preview_request,  # read by the worker: no widget access
            self_supervised=kind is Job.ADAPT,
        )
        self._preview_request = self._preview_target()
        if self._preview_request is not None:
            self._show_preview(empty_preview(self._preview_request))
        self.state.closing.stop = self.job.stop
        self.last_progress = None
        self.progress_bar.setValue(0)
        self.train_label.setText(message)
        self.state.job.start(kind)
        self.activity = workers.Activity(f"SPOCO {kind.value.lower()}", config.steps, on_cancel=self.stop_training,
                                         widget=self)
        self.worker = workers.launch(
            workers.training_job,
            self.job,
            on_yield=self._on_train_yield,
            on_return=self._on_train_done,
            on_error=self._on_train_error,
            on_finish=self._on_train_finished,
            sync=self.state.sync,
        )

    def stop_training(self) -> None:
        if self.job is not None and self.state.job.training:
            self.job.stop.set()
            # a supervised run then measures the painted objects' edges and layout (about a second)
            self.train_label.setText(self.train_label.text() + " — stopping after this step, then measuring "
                                     "the painted objects…")

    # ------------------------------------------------------------------ what the run reports
    def _on_train_yield(self, item) -> None:
        if self.state.closing.closed:  # the panel is gone
            return
        if isinstance(item, workers.PreviewResult):
            self._show_preview(item)
            return
        if isinstance(item, workers.PreviewSkipped):
            reason = item.reason.rstrip()
            show_warning(f"No live preview of '{item.layer or item.key}' in this run: {reason}"
                         f"{'' if reason.endswith('.') else '.'} Training goes on.")
            return
        p: TrainProgress = item
        self.last_progress = p
        self.state.model.stepped(p.model, p.step)
        self.progress_bar.setValue(int(1000 * p.fraction))
        total = f"/{p.total_steps}" if p.total_steps else ""
        self.train_label.setText(
            f"step {p.step}{total} · {p.steps_per_second:.1f} steps/s · loss {p.losses['total']:.3f} · "
            f"{int(p.elapsed) // 60}:{int(p.elapsed) % 60:02d}"
        )
        self.loss_plot.add(p.losses["total"])
        self._preview_request = self._preview_target()
        self.activity.to(p.step)  # last: napari's dock turns the event loop as it redraws

    def _on_train_done(self, model) -> None:
        if self.state.closing.closed:  # the panel is gone
            return
        adapted = self.state.job.running is Job.ADAPT
        self.state.model.run_ended(model, self_supervised=adapted)
        p = self.last_progress
        msg = f"Trained {p.step} steps in {p.elapsed:.0f} s." if p else "Training ended before the first step."
        notes = [layout_note(model.history), "" if adapted else scale_jitter_note(model.history)] if model is not None else []
        note = " ".join(n for n in notes if n)
        self.train_label.setText(msg + (f" {note}" if note else "")
                                 + " Segment to see all instances, or paint more and Train again.")
        # A run that used its budget fills the bar; one stopped by the user keeps the part it did,
        # so that a full bar never passes for a finished run.
        stopped = self.job is not None and self.job.stop.is_set()
        self.progress_bar.setValue(0 if not p else int(1000 * p.fraction) if stopped else 1000)
        if stopped and p:
            self.train_label.setText(f"Stopped after {p.step} steps in {p.elapsed:.0f} s." + (f" {note}" if note else "")
                                     + " The model keeps them: Segment to see all instances, or Train again to go on.")

    def _on_train_error(self, exc: BaseException) -> None:
        if self.state.closing.closed:  # the panel is gone
            return
        self.state.model.run_ended(None, self_supervised=self.state.job.running is Job.ADAPT)
        show_error(error_message(exc, "Training"))
        self.train_label.setText(f"Training stopped: {exc}")

    def _on_train_finished(self) -> None:
        self.activity.close()  # also when the panel is gone: napari's dock would keep the bar
        if self.state.closing.closed:
            return
        self.worker = None
        self.state.closing.stop = None
        self.state.job.finish()

    # ------------------------------------------------------------------ live preview
    def _preview_target(self) -> workers.PreviewTarget | None:
        image = self.data.image
        if image is None or self.preview_spin.value() == 0:
            return None
        return preview_target(self.viewer, image, self.data.series, self.state.model.current)

    def _show_preview(self, result: workers.PreviewResult) -> None:
        if not show_preview(self.viewer, result, keep_active=self.data.labels):
            return  # the image was removed while the preview was made
        self.last_preview = result
        n = int(result.labels.max())  # segment() numbers objects 1…n
        self.train_label.setToolTip(f"Last preview: step {result.step}, {n} objects, {result.seconds:.1f} s")
