"""4 · Segment: the whole image with the current model, in a napari thread worker, into the
image's '<image> instances' labels layer; then Suggest next (``suggest_row``) on its result.
Images larger than memory (multiscale, dask or zarr layers, huge arrays) go block by block
(``blockwise_run``) into a lazy, zarr-backed layer."""

from __future__ import annotations

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
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

from ..clustering import LAYOUTS, METHODS, ClusterConfig
from ..errors import SpocoError
from ..label_dtypes import label_dtype
from ..out_of_core import STORE_KEY, needs_blockwise, too_large_for_memory, voxel_note, voxel_size_from_scale
from ..precision import INFERENCE_PRECISION, PRECISIONS
from . import workers
from .blockwise_run import RESULT_SUFFIX, BlockwiseRun
from .data_panel import DataPanel
from .dialogs import error_message
from .layers import (
    EDITED_KEY,
    RESULT_KEY,
    WRITTEN_KEY,
    check_axes,
    find_layer,
    fingerprint,
    image_data,
    is_edited,
    is_watched,
    spatial_shape,
    watch_edits,
)
from .preview import PREVIEW_LAYER
from .state import Job, SpocoState
from .suggest_row import MAX_KEPT_PIXELS, SuggestRow

EMBEDDING_SUFFIX = " embeddings (PCA)"
__all__ = ["EMBEDDING_SUFFIX", "RESULT_SUFFIX", "SegmentPanel"]


class _ProgressRelay(QObject):
    """Carries a segmentation's (done, total) from the worker thread to the GUI thread. No Qt
    parent: a worker still running when the panel closes emits into an object that exists."""

    progressed = Signal(int, int)


class SegmentPanel(QGroupBox):
    """``segmented`` is emitted with the name of the labels layer a segmentation went to."""

    segmented = Signal(str)

    def __init__(self, state: SpocoState, data: DataPanel, parent=None) -> None:
        super().__init__("4 · Segment", parent)
        self.state, self.data, self.viewer = state, data, state.viewer
        self.activity: workers.Activity | None = None  # the bar in napari's activity dock
        self._target = None  # (image id, image name, result layer id, result layer created)
        self._note = ""  # the voxel size the running segmentation uses, for the status line
        self._relay = _ProgressRelay()  # the network's tiles, then the clustering's, as they finish
        self._relay.progressed.connect(self._on_progress)
        form = QFormLayout(self)
        self.method_box = QComboBox()
        self.method_box.addItems(list(METHODS))
        self.method_box.setToolTip(
            "meanshift: fast default. hdbscan: density-based, for very uneven object sizes. "
            "consistency: keeps only instances the student and teacher agree on."
        )
        form.addRow("Clustering", self.method_box)
        self.precision_box = QComboBox()
        self.precision_box.addItems(list(PRECISIONS))
        self.precision_box.setCurrentText(INFERENCE_PRECISION)
        self.precision_box.setToolTip(
            "auto: the model runs in bfloat16 where the CPU or GPU has it natively (about half the time, "
            "the same objects), else in float32. float32 / bfloat16: always that format."
        )
        form.addRow("Number format", self.precision_box)
        self.tta_check = QCheckBox("average mirrored views")
        self.tta_check.setChecked(True)
        self.tta_check.setToolTip(
            "Test-time augmentation: the network sees each tile as it is and mirrored (2D: in Y, in X and in both; "
            "3D: in Y and X together), and its outputs are averaged. More objects right on most data sets measured, "
            "at about twice the time of a 2D Segment and 1.5 times a 3D one; untick for speed. "
            "Live previews during training never do it."
        )
        form.addRow("Test-time augmentation", self.tta_check)
        defaults = ClusterConfig()
        self.step_checks: dict[str, QCheckBox] = {}
        self.bandwidth_spin = QDoubleSpinBox()
        self.bandwidth_spin.setRange(0.05, 5.0)
        self.bandwidth_spin.setSingleStep(0.05)
        self.bandwidth_spin.setValue(defaults.bandwidth)
        self.bandwidth_spin.setToolTip("Mean-shift kernel / HDBSCAN merge distance in embedding space (δv).")
        form.addRow("Bandwidth", self.bandwidth_spin)
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(0, 10_000_000)
        self.min_size_spin.setSpecialValueText("auto")
        self.min_size_spin.setToolTip(
            "Smaller pieces are merged into a neighbour or dropped (auto: from the painted sizes, "
            "and lower where the image's own objects are smaller)."
        )
        form.addRow("Min size (px)", self.min_size_spin)
        self.layout_box = QComboBox()
        self.layout_box.addItems(list(LAYOUTS))
        self.layout_box.setCurrentText(defaults.layout)
        self.layout_box.setToolTip(
            "How your objects lie. separate: on background, merged pieces are split at their necks. tiled: "
            "filling the image (tissue, EM), pieces with no boundary between them are joined. auto: what "
            "training measured on your painted objects, else by how much of the image is foreground."
        )
        form.addRow("Objects", self.layout_box)
        # post-processing steps, each on by default as in the library (docs/method.md)
        for name, text, tip in (
            ("shape_split", "Split merged objects by shape",
             "Pieces far less convex than the objects you painted are cut at their necks (or, for convex "
             "objects such as nuclei, between the notches on both sides of a contact), where objects "
             "stand on background (the Objects choice: not where they fill the image)."),
            ("boundary_merge", "Merge pieces with no boundary between them",
             "Where cells fill the image (the Objects choice), touching pieces are one object when the foreground map shows no "
             "boundary (membrane) along their contact; where objects stand on background, only when together they are as "
             "convex as a typical painted object."),
            ("calibrated_edge", "Grow objects to the edge fitted on painted objects",
             "At the end of training the model measures how far its objects stop short of the edges "
             "you painted (0-3 pixels) and grows them by that much."),
            ("fill_holes", "Fill holes inside objects",
             "Background enclosed by one object (a dark nucleolus or organelle) becomes part of it; "
             "holes larger than half the object stay open."),
            ("edge_growth", "Grow objects into their uncertain edge",
             "Background right next to an object that the foreground map still gives 0.2 or more joins it, "
             "up to a tenth of the painted objects' radius away; objects never join. A model checks it on its "
             "painted objects at the end of training and keeps it only where they fit clearly better grown."),
        ):
            box = QCheckBox(text)
            box.setChecked(getattr(defaults, name))
            box.setToolTip(tip)
            form.addRow(box)
            self.step_checks[name] = box
        self.shape_check = self.step_checks["shape_split"]
        self.boundary_check = self.step_checks["boundary_merge"]
        self.edge_check = self.step_checks["calibrated_edge"]
        self.embedding_check = QCheckBox("Also show embeddings (PCA → RGB)")
        form.addRow(self.embedding_check)
        row = QHBoxLayout()
        self.segment_btn = QPushButton("Segment")
        self.segment_btn.clicked.connect(self.start_segmentation)
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setToolTip("Stop a block-wise segmentation after the current block; nothing is added.")
        row.addWidget(self.segment_btn)
        row.addWidget(self.stop_btn)
        form.addRow(row)
        self.blockwise = BlockwiseRun(self)  # images larger than memory
        self.stop_btn.clicked.connect(self.blockwise.stop)
        self.busy_bar = QProgressBar()  # shown, as a busy indicator, while a segmentation runs
        self.busy_bar.setRange(0, 0)
        self.busy_bar.setVisible(False)
        form.addRow(self.busy_bar)
        self.segment_label = QLabel("")
        self.segment_label.setWordWrap(True)
        form.addRow(self.segment_label)
        self.suggest_row = SuggestRow(state, data)
        form.addRow(self.suggest_row)
        data.image_box.changed.connect(self.update_buttons)
        state.job.changed.connect(self.update_buttons)
        state.model.changed.connect(self.update_buttons)
        self.update_buttons()

    def update_buttons(self, *args) -> None:
        if self.state.closing.closed:
            return
        ready = self.state.model.current is not None and self.data.image is not None
        self.segment_btn.setEnabled(ready and self.state.job.idle)
        self.stop_btn.setEnabled(self.blockwise.running)

    def cluster_config(self) -> ClusterConfig:
        min_size = int(self.min_size_spin.value())
        return ClusterConfig(
            method=self.method_box.currentText(),
            bandwidth=float(self.bandwidth_spin.value()),
            min_size=min_size if min_size > 0 else None,
            layout=self.layout_box.currentText(),
            **{name: box.isChecked() for name, box in self.step_checks.items()},
        )

    def start_segmentation(self) -> None:
        image, model = self.data.image, self.state.model.current
        if model is None:
            show_warning("There is no model yet: train one or load a model file.")
            return
        if image is None or self.state.job.refuse("segmenting"):
            return
        try:
            check_axes(image)
        except SpocoError as exc:
            show_error(error_message(exc, "Segmentation"))
            return
        config = self.cluster_config()
        series, shape = self.data.series, spatial_shape(image)
        if series and model.config.ndim != 2:
            show_error(f"'{image.name}' is a 2D+t stack: its frames are 2D images, and the model is "
                       f"{model.config.ndim}D. Load a 2D model (Default gives the shipped one), or untick "
                       "'3D stack is 2D+t' to segment it as a volume.")
            return
        if needs_blockwise(image_data(image), shape, image.multiscale):
            if not series:  # never loaded whole: block by block into a zarr-backed layer
                if self.embedding_check.isChecked():
                    show_warning("A block-wise segmentation does not keep the embeddings: they are not shown.")
                self.blockwise.start(image, model, config, self.precision_box.currentText(), self.tta_check.isChecked())
                return
            if image.multiscale or too_large_for_memory(shape):
                show_error(f"'{image.name}' is a 2D+t stack too large to load into memory, and 2D+t stacks are "
                           "not segmented block by block yet: untick '3D stack is 2D+t' to segment it as a volume "
                           "(with a 3D model), or open its frames as separate images.")
                return
        pixels = int(np.prod(shape))
        voxel = None if series else voxel_size_from_scale(image.scale, len(shape))
        note = voxel_note(voxel, model) if not series else ""
        job = workers.SegmentJob(
            model=model,
            image=image_data(image),  # in memory already, or a small dask/zarr array the worker reads
            config=config,
            series=series,
            with_embedding=self.embedding_check.isChecked() and not series,
            keep_embedding=not series and pixels <= MAX_KEPT_PIXELS,  # for Suggest next
            voxel_size=voxel,
            precision=self.precision_box.currentText(),
            tta=self.tta_check.isChecked(),
            progress=None if series else self._relay.progressed.emit,
            name=f"'{image.name}'",
        )
        self._note = f", {note}" if note else ""
        self._why_no_suggestions = (
            "Suggest next works on single 2D images and 3D volumes, not yet on 2D+t stacks." if series else
            f"'{image.name}' is too large ({pixels:,} pixels) to keep its embeddings for Suggest next; "
            "'napari-spoco predict --suggest K' lists suggestions for it." if not job.keep_embedding else "")
        layer, created = self._result_layer(image)
        # Layers are found again by id: they may be renamed or removed while the job runs.
        self._target = (image.unique_id, image.name, layer.unique_id, created)
        self.segment_label.setText(f"Segmenting '{image.name}' ({config.method}{self._note})…")
        self.busy_bar.setRange(0, 0)  # busy until the first tile is done (a 2D+t stack: throughout)
        self.busy_bar.setVisible(True)
        self.state.job.start(Job.SEGMENT)
        self.activity = workers.Activity(f"SPOCO segmenting '{image.name}'", widget=self)
        workers.launch(
            workers.segment_job,
            job,
            on_return=self._on_segmented,
            on_error=self._on_segment_error,
            on_finish=self._on_segment_finished,
            sync=self.state.sync,
        )

    def _on_progress(self, done: int, total: int) -> None:
        if self.state.closing.closed or self.activity is None or self.activity.closed or total <= 0:
            return
        self.busy_bar.setRange(0, total)
        self.busy_bar.setValue(done)
        self.activity.to(done, total)  # last: napari's dock turns the event loop as it redraws

    def _result_layer(self, image) -> tuple[Labels, bool]:
        """The Labels layer a segmentation of ``image`` goes to: an earlier result of it (its
        '… instances' layer first, then the newest numbered one) of the image's shape that still
        holds what Segment wrote there, else a new empty one (and True). A result the user
        corrected, or chose as sparse labels, is never replaced: napari's undo does not cover a
        layer's data being set, so the corrections would be lost.

        Adding a layer costs 100–300 ms of GUI time on a 2-core CPU (napari builds its visuals
        and controls): it is done with the click, not while the user works as the job runs.
        """
        shape = spatial_shape(image)  # labels come back at the image's shape (2D+t: T, Y, X)
        name = image.name + RESULT_SUFFIX
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        earlier = [layer for layer in reversed(list(self.viewer.layers)) if isinstance(layer, Labels)
                   and layer.name not in (name, PREVIEW_LAYER) and layer.metadata.get(RESULT_KEY) == image.name]
        fits = [layer for layer in ([existing] if existing is not None else []) + earlier
                if isinstance(layer, Labels) and not layer.multiscale and layer.data.shape == shape]
        whys = []
        for layer in fits:  # each check reads the layer's pixels once (a CRC): stop at the first that fits
            whys.append(self._why_kept(layer))
            if not whys[-1]:
                return layer, False
        if fits and fits[0] is existing:
            show_info(f"'{name}' {whys[0]}: it is kept as it is, and this segmentation goes to a new layer.")
        active = self.viewer.layers.selection.active
        # (a layer of another kind or shape keeps its name; napari numbers the new one)
        # the type of an empty result, as most results are: the result replaces the zeros
        # marked at once: the sparse-labels picker must not take it as the painting when it appears
        empty = np.zeros(shape, label_dtype(0))
        layer = self.viewer.add_labels(empty, name=name, scale=image.scale[-len(shape):],
                                       translate=image.translate[-len(shape):],
                                       metadata={RESULT_KEY: image.name, WRITTEN_KEY: fingerprint(empty)})
        watch_edits(layer)
        if active is not None:  # keep the user on the layer they are painting
            self.viewer.layers.selection.active = active
        return layer, True

    def _why_kept(self, layer: Labels) -> str:
        """Why Segment must not overwrite ``layer`` ('' when it may): it is the chosen sparse
        labels, it holds a block-wise result, or its pixels are no longer what Segment wrote
        (corrected by hand, or not made by Segment at all)."""
        chosen = self.data.labels
        if chosen is not None and chosen.name == layer.name:  # napari hands out proxies: compare names
            return "is the chosen sparse-labels layer"
        if is_edited(layer):
            return "was edited since it was segmented"
        if layer.metadata.get(STORE_KEY):
            return "holds a block-wise result, read from disk"
        written = layer.metadata.get(WRITTEN_KEY)
        if written is not None and not is_watched(layer):  # napari's Duplicate Layer copies the metadata
            return "is a copy of a segmentation"
        if written is None or written != fingerprint(layer.data):
            return "was edited since it was segmented" if written else "was not made by Segment"
        return ""

    def _drop_empty_result_layer(self) -> None:
        _, _, layer_id, created = self._target
        layer = find_layer(self.viewer, layer_id) if created else None
        if layer is not None and not np.asarray(layer.data).any():
            self.viewer.layers.remove(layer)

    def _on_segmented(self, result: workers.SegmentResult) -> None:
        if self.state.closing.closed:  # the panel is gone
            return
        image_id, launched_name, layer_id, _ = self._target
        image = find_layer(self.viewer, image_id)
        if image is None:
            self._drop_empty_result_layer()
            show_warning(f"'{launched_name}' was removed while it was being segmented; its segmentation was not added.")
            self.segment_label.setText(f"'{launched_name}' was removed; nothing was added.")
            return
        name = image.name + RESULT_SUFFIX
        ndim = result.labels.ndim
        kwargs = dict(scale=image.scale[-ndim:], translate=image.translate[-ndim:])
        layer = find_layer(self.viewer, layer_id)
        why = self._why_kept(layer) if layer is not None else ""
        if why:  # corrected, or chosen as the sparse labels, while the job ran
            show_info(f"'{layer.name}' {why} (checked as the segmentation finished): it is kept as it is, and "
                      "this segmentation goes to a new layer.")
        if layer is None or why or layer.data.shape != result.labels.shape:  # removed meanwhile
            layer = self.viewer.add_labels(result.labels, name=name, metadata={RESULT_KEY: image.name}, **kwargs)
        else:
            if layer.name == launched_name + RESULT_SUFFIX and image.name != launched_name:
                layer.name = name  # the image was renamed: its result follows
            layer.data = result.labels
        name = layer.name
        layer.metadata[RESULT_KEY] = image.name
        layer.metadata[WRITTEN_KEY] = result.fingerprint  # a later Segment replaces it only unedited
        layer.metadata[EDITED_KEY] = False
        watch_edits(layer)
        layer.metadata.pop(STORE_KEY, None)  # it held a block-wise result before: no longer
        if PREVIEW_LAYER in self.viewer.layers:
            self.viewer.layers[PREVIEW_LAYER].visible = False
        if result.embedding_rgb is not None:
            ename = image.name + EMBEDDING_SUFFIX
            if ename in self.viewer.layers:
                self.viewer.layers.remove(ename)
            self.viewer.add_image(result.embedding_rgb, name=ename, rgb=True, visible=False, **kwargs)
        self.segment_label.setText(f"{result.objects} instances in {result.seconds:.1f} s{self._note} → layer '{name}'.")
        self.suggest_row.set_result(layer, result.embedding, self._why_no_suggestions)
        self.segmented.emit(name)

    def _on_segment_error(self, exc: BaseException) -> None:
        if self.state.closing.closed:  # the panel is gone
            return
        self._drop_empty_result_layer()
        show_error(error_message(exc, "Segmentation"))
        self.segment_label.setText("Segmentation failed; see the notification.")

    def _on_segment_finished(self) -> None:
        self.activity.close()  # also when the panel is gone: napari's dock would keep the bar
        if self.state.closing.closed:
            return
        self.busy_bar.setVisible(False)
        self.state.job.finish()
