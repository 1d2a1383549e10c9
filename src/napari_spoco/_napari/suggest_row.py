"""Suggest next (in 4 · Segment): which predicted objects to check and paint next.

After a segmentation the panel keeps its embedding (``workers.SegmentResult.embedding``), so
ranking needs no second network pass: ``suggestions.suggest`` scores every instance of the
result layer (the layer as it is now, corrections included) in a thread worker, and the most
doubtful ones become the points of the 'SPOCO suggestions' layer, numbered by rank, ringed
around their object and coloured by score. **Next ▸** centres the view on each in turn (the
slice too, in 3D) and selects its id in the result layer, so that Use selected as labels
(5 · Correct) copies it.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Points
from napari.utils.colormaps import ensure_colormap
from napari.utils.notifications import show_error, show_warning
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget

from ..out_of_core import LAZY_IN_MEMORY_PIXELS
from ..suggestions import SCORED
from . import workers
from .dialogs import error_message
from .layers import find_layer, is_segmentation

SUGGESTIONS_LAYER = "SPOCO suggestions"
#: Pixels up to which a segmentation keeps its embedding for suggestions (16 float32 channels:
#: about 1 GiB at this size); beyond, Suggest next says why it is not offered. The same limit as
#: a lazy layer read whole (out_of_core.LAZY_IN_MEMORY_PIXELS), so that such a layer keeps it.
MAX_KEPT_PIXELS = LAZY_IN_MEMORY_PIXELS
COLORMAP = "plasma"  # score 0 → dark blue, 1 → yellow


class SuggestRow(QWidget):
    def __init__(self, state, data, parent=None) -> None:
        super().__init__(parent)
        self.state, self.data, self.viewer = state, data, state.viewer
        self.embedding = None  # the last segmentation's, for the layer ``self._result_id``
        self._result_id = None
        self._why_not = "Segment first: suggestions rank the objects of a segmentation."
        self.suggestions: list = []
        self._next = 0
        self._running = False
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.suggest_btn = QPushButton("Suggest next")
        self.suggest_btn.setToolTip(
            "Mark the segmented objects the network is least sure of (spread-out "
            f"embeddings, undecided foreground, unusual size) in the '{SUGGESTIONS_LAYER}' layer: "
            "check those first, and paint or correct them before training again."
        )
        self.suggest_btn.clicked.connect(self.suggest_next)
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 100)
        self.k_spin.setValue(5)
        self.k_spin.setToolTip("How many objects to suggest, most doubtful first.")
        self.next_btn = QPushButton("Next ▸")
        self.next_btn.setToolTip("Centre the view on the next suggestion and select its id in the segmentation.")
        self.next_btn.clicked.connect(self.go_to_next)
        row.addWidget(self.suggest_btn)
        row.addWidget(self.k_spin)
        row.addWidget(self.next_btn)
        lay.addLayout(row)
        self.label = QLabel("")
        self.label.setWordWrap(True)
        lay.addWidget(self.label)
        self.update_buttons()

    def update_buttons(self) -> None:
        if self.state.closing.closed:
            return
        self.suggest_btn.setEnabled(self.embedding is not None and not self._running)
        self.next_btn.setEnabled(bool(self.suggestions) and not self._running)

    def set_result(self, layer, embedding, why_not: str = "") -> None:
        """A new segmentation in ``layer``; ``embedding`` None (with the reason): no suggestions."""
        self.embedding, self._result_id = embedding, (layer.unique_id if layer is not None else None)
        self._why_not = why_not
        self.suggestions, self._next = [], 0
        self.label.setText("" if embedding is not None else why_not)
        self.update_buttons()

    # ------------------------------------------------------------------ rank
    def suggest_next(self) -> None:
        if self.embedding is None:
            show_warning(self._why_not)
            return
        result = find_layer(self.viewer, self._result_id)
        if result is None:
            self.set_result(None, None, "The segmentation was removed: Segment again for suggestions.")
            show_warning(self._why_not)
            return
        labels = np.array(result.data)  # a copy: the user may edit the layer meanwhile
        if labels.shape != self.embedding.embeddings.shape[1:]:
            show_warning(f"'{result.name}' no longer has the shape it was segmented at: Segment again.")
            return
        self._running = True
        self.update_buttons()
        self.label.setText("Ranking the objects…")
        ranked = self.embedding  # a Segment that ends meanwhile makes these suggestions stale
        sparse = self._sparse()
        painted = np.array(sparse.data) if sparse is not None and sparse.data.shape == labels.shape else None
        workers.launch(
            workers.suggest_job, labels, self.embedding, int(self.k_spin.value()), self.painted_sizes(labels.shape),
            painted, self.data.background_label, on_return=lambda found: self._show(found, ranked), on_error=self._on_error, on_finish=self._on_finish,
            sync=self.state.sync,
        )

    def _sparse(self):
        """The chosen sparse labels, unless that is a segmentation (this one or another image's,
        chosen by the user: the picker never takes one by itself), whose instances would then count
        as painted and be left out (all of them, for this image's own result)."""
        sparse = self.data.labels
        if sparse is None or sparse.unique_id == self._result_id or is_segmentation(sparse):
            return None
        return sparse

    def painted_sizes(self, shape) -> list[int] | None:
        """Pixel counts of the objects painted in the chosen sparse labels (when they cover the
        segmented image): the size an object should have."""
        sparse = self._sparse()
        if sparse is None or sparse.data.shape != shape:
            return None
        values = np.asarray(sparse.data)
        ids, counts = np.unique(values[values > 0], return_counts=True)
        sizes = [int(c) for i, c in zip(ids, counts) if i != self.data.background_label]
        return sizes or None

    def _show(self, found, ranked) -> None:
        if self.state.closing.closed or ranked is not self.embedding:
            return
        suggestions, sizes = found
        result = find_layer(self.viewer, self._result_id)
        if result is None:
            return
        self.suggestions, self._next = suggestions, 0
        if not suggestions:
            self.label.setText(f"'{result.name}' has no objects to suggest.")
            return
        points = self._points_layer(result, suggestions, sizes)
        self.label.setText(f"{len(suggestions)} objects to check, most doubtful first, in '{points.name}' "
                           f"(scores {suggestions[0].score:.2f}…{suggestions[-1].score:.2f}). Next ▸ goes to each.")

    def _points_layer(self, result, suggestions, sizes) -> Points:
        ndim = len(suggestions[0].centroid)
        coords = np.array([s.centroid for s in suggestions], float)
        scores = np.array([s.score for s in suggestions], float)
        features = {"rank": np.arange(1, len(suggestions) + 1), "id": np.array([s.label for s in suggestions]),
                    "score": scores}
        # a ring a bit wider than the object (in the result's pixels; the layer shares its scale)
        diameters = np.maximum(2 * (np.array(sizes) / (np.pi if ndim == 2 else 4 / 3 * np.pi)) ** (1 / ndim), 4)
        style = dict(size=1.4 * diameters, border_color=ensure_colormap(COLORMAP).map(scores), face_color="transparent")
        text = {"string": "{rank}", "color": "yellow", "size": 12, "anchor": "upper_left"}
        layer = self.viewer.layers[SUGGESTIONS_LAYER] if SUGGESTIONS_LAYER in self.viewer.layers else None
        if isinstance(layer, Points) and layer.ndim == ndim:
            layer.data = coords
            layer.features = features
            layer.size, layer.border_color, layer.face_color = style["size"], style["border_color"], "transparent"
            layer.text = text
            layer.scale, layer.translate = result.scale, result.translate
            layer.visible = True
            return layer
        if layer is not None:  # another kind of layer, or of other dimensions: make a new one
            self.viewer.layers.remove(layer)
        active = self.viewer.layers.selection.active
        layer = self.viewer.add_points(coords, name=SUGGESTIONS_LAYER, features=features, text=text, border_width=0.08,
                                       scale=result.scale, translate=result.translate, **style)
        if active is not None:  # keep the user on the layer they are painting
            self.viewer.layers.selection.active = active
        return layer

    def _on_error(self, exc: BaseException) -> None:
        if not self.state.closing.closed:
            show_error(error_message(exc, "Suggesting objects"))
            self.label.setText("Suggesting failed; see the notification.")

    def _on_finish(self) -> None:
        self._running = False
        self.update_buttons()

    # ------------------------------------------------------------------ visit
    def go_to_next(self) -> int | None:
        """Centre the view on the next suggestion (its slice too, in 3D); its index, or None."""
        layer = self.viewer.layers[SUGGESTIONS_LAYER] if SUGGESTIONS_LAYER in self.viewer.layers else None
        if not isinstance(layer, Points) or len(layer.data) == 0:
            show_warning("There are no suggestions to visit: press Suggest next.")
            return None
        i = self._next % len(layer.data)
        self._next = i + 1
        world = np.asarray(layer.data_to_world(layer.data[i]), float)
        dims = self.viewer.dims
        offset = dims.ndim - len(world)  # the layer's axes are the viewer's last ones
        for axis, value in enumerate(world):
            if offset + axis not in dims.displayed:
                dims.set_point(offset + axis, value)
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9 moved the camera there
        camera = scene.camera if scene is not None else self.viewer.camera
        camera.center = tuple(world[a - offset] for a in dims.displayed if a >= offset)
        label, score = int(layer.features["id"][i]), float(layer.features["score"][i])
        result = find_layer(self.viewer, self._result_id)
        if result is not None:
            result.selected_label = label  # 5 · Use selected as labels copies it
        signals = next((s.signals for s in self.suggestions if s.label == label), {})
        # the signals behind the score (crowding is reported in the CSV but not scored)
        why = ", ".join(f"{k} {v:.2f}" for k, v in sorted(signals.items(), key=lambda kv: -kv[1]) if k in SCORED)
        self.label.setText(f"{i + 1}/{len(layer.data)}: id {label}, score {score:.2f}" + (f" ({why})" if why else ""))
        return i
