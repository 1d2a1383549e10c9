"""Small building blocks for the panels: layer pickers (magicgui), the network choice and a live
loss curve (Qt)."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

from magicgui.widgets import ComboBox
from qtpy.QtCore import QPointF, QSignalBlocker, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QComboBox, QSizePolicy, QWidget

from ..model import NETWORK_CHOICES, network_name


def layer_picker(viewer, layer_type, tooltip: str = "", nullable: bool = False,
                 closed: Callable[[], bool] = lambda: False,
                 auto: Callable[[object], bool] | None = None) -> ComboBox:
    """A magicgui combo box of ``viewer``'s layers of ``layer_type`` (its value: the layer, or
    None), kept current as layers are added, removed, reordered and renamed.

    ``auto``: which layers the picker may choose by itself. When nothing is chosen, or the chosen
    layer goes away, it takes the first layer that ``auto`` accepts, or none (the picker is then
    nullable); every layer stays in the list for the user to choose. The sparse-labels picker
    uses it so that a segmentation added by Segment is never taken as the painting unasked.

    napari refreshes the pickers of a magicgui dock widget itself (``reset_choices`` on the
    layer list's events), but only for a widget that has ``reset_choices`` and only once it
    is docked; ours is a panel of several pickers that also works undocked, so each picker
    follows the layer list on its own. A renamed layer stays selected. Once ``closed()`` says
    the panel is gone (or its Qt widget is deleted), the picker lets go of the layer list.
    """

    def choices(_widget) -> list[tuple[str, object]]:
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, layer_type)]

    picker = ComboBox(choices=choices, nullable=nullable or auto is not None, tooltip=tooltip or None)
    picker._spoco_auto = auto
    if auto is not None:
        _choose_automatically(picker)
    picker.native.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    picker.native.setMinimumContentsLength(12)
    ref = weakref.ref(picker)

    events = viewer.layers.events
    emitters = (events.inserted, events.removed, events.reordered, events.renamed)

    def refresh(event=None) -> None:
        picker = ref()
        if picker is None or closed():
            disconnect()
            return
        try:
            _refresh(picker)
        except RuntimeError:  # its Qt widget is gone with the panel
            disconnect()

    def disconnect(*args) -> None:  # the panel is gone; the viewer may live on
        for emitter in emitters:
            emitter.disconnect(refresh)

    for emitter in emitters:
        emitter.connect(refresh)
    picker.native.destroyed.connect(disconnect)
    return picker


def _layer_id(layer):
    return None if layer is None else layer.unique_id


def _refresh(picker: ComboBox) -> None:
    # magicgui keys its items by name: a renamed layer is a new item, and the selection would
    # jump to the first layer. Keep the same layer (napari's unique_id) selected, and say
    # "changed" only when the selected layer did change.
    before = _layer_id(picker.value)
    with picker.changed.blocked():
        picker.reset_choices()
        same = next((layer for layer in picker.choices if layer is not None and _layer_id(layer) == before), None)
        if same is not None:
            picker.value = same
        elif getattr(picker, "_spoco_auto", None) is not None:
            _choose_automatically(picker)
    if _layer_id(picker.value) != before:
        picker.changed.emit(picker.value)


def _choose_automatically(picker: ComboBox) -> None:
    """The first layer the picker's ``auto`` accepts, or none."""
    auto = picker._spoco_auto
    picker.value = next((layer for layer in picker.choices if layer is not None and auto(layer)), None)


def select_layer(picker: ComboBox, name: str) -> None:
    """Select the layer called ``name`` (it may have been added a moment ago)."""
    _refresh(picker)
    if name in [layer.name for layer in picker.choices if layer is not None]:
        picker.value = picker.get_choice(name)


class NetworkBox(QComboBox):
    """The network a new model gets (``model.NETWORK_CHOICES``), kept in the shared
    ``ModelState.network``. While there is a model it shows that model's network and is
    disabled: training goes on with the network it has (New lets one choose again)."""

    def __init__(self, state, parent=None) -> None:
        super().__init__(parent)
        self.state = state  # SpocoState
        self.addItems(list(NETWORK_CHOICES))
        self.setCurrentText(state.model.network)
        self.currentTextChanged.connect(self._chosen)
        state.model.changed.connect(self.follow)
        state.job.changed.connect(self.follow)
        self.follow()

    def _chosen(self, name: str) -> None:
        if self.state.model.current is None:
            self.state.model.choose_network(name)

    def follow(self) -> None:
        if self.state.closing.closed:
            return
        model = self.state.model.current
        shown = self.state.model.network if model is None else network_name(model.config)
        with QSignalBlocker(self):
            if self.findText(shown) >= 0:
                self.setCurrentText(shown)
        self.setEnabled(model is None and self.state.job.idle)
        if model is None:
            self.setToolTip(
                "The size of a new network. small: 3 levels, fast on a CPU. medium: 4 levels, more "
                "context around each pixel at about the same cost per step. large: the paper's 6-level "
                "network; for a GPU. auto: large on a GPU, small on a CPU. auto fine-tunes the shipped "
                "starting model (2D: medium, 3D: small), as does that model's own preset; any other "
                "makes Train start a new network instead."
            )
        else:
            self.setToolTip(f"The current model is a {shown} network; training goes on with it. New "
                            "(2 · Model) forgets it, and the next Train starts the network chosen here.")


class LossPlot(QWidget):
    """The training loss, step by step (log scale, smoothed), drawn with QPainter: no plotting
    library needed."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.values: list[float] = []
        self.setFixedHeight(70)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setToolTip("Training loss (log scale, smoothed over the last steps)")

    def add(self, value: float) -> None:
        if math.isfinite(value) and value > 0:
            self.values.append(value)
            self.update()

    def clear(self) -> None:
        self.values = []
        self.update()

    def smoothed(self) -> list[float]:
        out, acc = [], None
        for v in self.values:
            acc = v if acc is None else 0.9 * acc + 0.1 * v
            out.append(acc)
        return out

    def paintEvent(self, event):  # noqa: N802 - Qt API
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        painter.fillRect(self.rect(), QColor(30, 30, 35))
        values = self.smoothed()
        if len(values) >= 2:
            logs = [math.log10(v) for v in values]
            lo, hi = min(logs), max(logs)
            span = max(hi - lo, 1e-6)
            w, h, pad = self.width(), self.height(), 6
            points = [
                QPointF(pad + (w - 2 * pad) * i / (len(logs) - 1), pad + (h - 2 * pad) * (hi - v) / span)
                for i, v in enumerate(logs)
            ]
            painter.setPen(QPen(QColor(90, 200, 250), 1.5))
            painter.drawPolyline(QPolygonF(points))
            painter.setPen(QColor(200, 200, 200))
            painter.drawText(pad, 12 + pad, f"{values[-1]:.3f}")
        else:
            painter.setPen(QColor(140, 140, 140))
            painter.drawText(self.rect(), Qt.AlignCenter, "loss curve appears when training starts")
        painter.end()
