"""5 · Correct and evaluate: turn instances of a segmentation into sparse labels (to correct
them and train again), and score a segmentation against a dense ground truth."""

from __future__ import annotations

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton

from ..data import mark_background, promote_instances
from ..metrics import evaluate
from .data_panel import DataPanel
from .dialogs import error_message
from .layers import image_data, refuse_if_too_large, spatial_shape
from .state import SpocoState
from .widgets import layer_picker


class CorrectPanel(QGroupBox):
    def __init__(self, state: SpocoState, data: DataPanel, parent=None) -> None:
        super().__init__("5 · Correct and evaluate", parent)
        self.state, self.data, self.viewer = state, data, state.viewer
        form = QFormLayout(self)
        self.result_box = layer_picker(self.viewer, Labels, "The segmentation to promote or evaluate.",
                                       closed=state.closing.is_closed)
        form.addRow("Segmentation", self.result_box.native)
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
        self.background_sel_btn = QPushButton("Use selected as background")
        self.background_sel_btn.setToolTip(
            "Paint the segmentation's selected instance into the sparse labels as background (the "
            "background value of step 1): for an instance that is no object, such as debris or a "
            "channel wall. Painted pixels are never overwritten. Train again to learn it."
        )
        self.background_sel_btn.clicked.connect(self.mark_selected_background)
        form.addRow(self.background_sel_btn)
        self.gt_box = layer_picker(self.viewer, Labels, "A dense ground-truth labels layer, if you have one.",
                                   nullable=True, closed=state.closing.is_closed)
        form.addRow("Ground truth", self.gt_box.native)
        self.evaluate_btn = QPushButton("Evaluate")
        self.evaluate_btn.clicked.connect(self.evaluate)
        form.addRow(self.evaluate_btn)
        self.eval_label = QLabel("")
        self.eval_label.setWordWrap(True)
        form.addRow(self.eval_label)
        for picker in (self.result_box, self.gt_box, data.labels_box):
            picker.changed.connect(self.update_buttons)
        data.image_changed.connect(self.update_buttons)
        self.update_buttons()

    def update_buttons(self, *args) -> None:
        if self.state.closing.closed:
            return
        has_result = self.result_box.value is not None
        # with no sparse labels chosen, promoting makes them ('New sparse labels') for the image
        can_promote = has_result and (self.data.labels is not None or self.data.image is not None)
        self.promote_sel_btn.setEnabled(can_promote)
        self.promote_all_btn.setEnabled(can_promote)
        self.background_sel_btn.setEnabled(can_promote)
        self.evaluate_btn.setEnabled(has_result and self.gt_box.value is not None)

    def _result_and_sparse(self):
        """The chosen segmentation and the sparse labels to write into (made for the image when
        none is chosen), or None after a warning."""
        result, sparse = self.result_box.value, self.data.labels
        if result is None:
            show_warning("Choose a segmentation first.")
            return None
        if sparse is None:  # none yet: the accepted objects start them
            if self.data.image is None or spatial_shape(self.data.image) != spatial_shape(result):
                show_warning("Choose a sparse-labels layer of the segmentation's shape first (or choose its image "
                             "and press 'New sparse labels').")
                return None
            sparse = self.data.new_sparse_labels()
            if sparse is None:
                return None
        if result.name == sparse.name:
            show_warning("The segmentation and the sparse labels are the same layer; choose two different layers.")
            return None
        return result, sparse

    def promote(self, selected_only: bool) -> int:
        """Copy the segmentation's selected instance (or all of them) into the sparse labels;
        the number of instances copied."""
        layers = self._result_and_sparse()
        if layers is None:
            return 0
        result, sparse = layers
        ids = [int(result.selected_label)] if selected_only else None
        try:
            refuse_if_too_large(result, "copying instances into sparse labels")
            new, promoted, skipped = promote_instances(sparse.data, np.asarray(image_data(result)), ids,
                                                       self.data.background_label)
        except Exception as exc:  # noqa: BLE001
            show_error(error_message(exc, "Promoting instances"))
            return 0
        if promoted:
            sparse.data = new
        note = f" ({skipped} skipped: they touch painted objects)" if skipped else ""
        if selected_only and not promoted and not skipped:
            show_warning(f"Instance {ids[0]} is not in '{result.name}': pick one with the layer's colour picker.")
        else:
            show_info(f"{promoted} instance(s) added to '{sparse.name}'{note}. Correct them, then Train again.")
        return promoted

    def mark_selected_background(self) -> int:
        """Paint the segmentation's selected instance into the sparse labels as background; 1 if
        it was painted, else 0."""
        layers = self._result_and_sparse()
        if layers is None:
            return 0
        result, sparse = layers
        instance, value = int(result.selected_label), self.data.background_label
        try:
            refuse_if_too_large(result, "painting an instance as background")
            new, marked = mark_background(sparse.data, np.asarray(image_data(result)), [instance], value)
        except Exception as exc:  # noqa: BLE001
            show_error(error_message(exc, "Painting background"))
            return 0
        if not marked:
            if instance > 0 and (np.asarray(image_data(result)) == instance).any():
                show_warning(f"Every pixel of instance {instance} is painted in '{sparse.name}' already; erase "
                             "them first to paint it as background.")
            else:
                show_warning(f"Instance {instance} is not in '{result.name}': pick one with the layer's colour "
                             "picker.")
            return 0
        sparse.data = new
        show_info(f"Instance {instance} painted as background ({value}) in '{sparse.name}'. Train again to learn it.")
        return 1

    def evaluate(self) -> dict | None:
        """AP50, mAP, SBD and |DiC| of the segmentation against the ground truth."""
        pred, gt = self.result_box.value, self.gt_box.value
        if pred is None or gt is None:
            show_warning("Choose a segmentation and a ground-truth layer to evaluate.")
            return None
        if pred.data.shape != gt.data.shape:
            show_error(f"'{pred.name}' {pred.data.shape} and '{gt.name}' {gt.data.shape} differ in shape.")
            return None
        try:
            for layer in (pred, gt):
                refuse_if_too_large(layer, "evaluating")
            scores = evaluate(np.asarray(image_data(gt)), np.asarray(image_data(pred)))
        except Exception as exc:  # noqa: BLE001 - e.g. too little memory, or labels that are no whole numbers
            show_error(error_message(exc, "Evaluating"))
            return None
        self.eval_label.setText(
            f"AP50 {scores['AP50']:.3f} · mAP {scores['mAP']:.3f} · SBD {scores['SBD']:.3f} · "
            f"|DiC| {scores['DiC']:.0f} ({scores['n_pred']:.0f} predicted / {scores['n_true']:.0f} true)"
        )
        return scores
