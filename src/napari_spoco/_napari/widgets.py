"""Small Qt building blocks for the dock widget: layer pickers and a live loss curve."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QComboBox, QSizePolicy, QWidget

NONE = "—"


class LayerBox(QComboBox):
    """A combo box listing the viewer's layers of one type, kept current as layers come, go
    and get renamed."""

    def __init__(self, viewer, layer_type, allow_none: bool = False, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.layer_type = layer_type
        self.allow_none = allow_none
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.reordered.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _on_inserted(self, event=None):
        if event is not None and getattr(event, "value", None) is not None:
            event.value.events.name.connect(self.refresh)
        self.refresh()

    def names(self) -> list[str]:
        return [layer.name for layer in self.viewer.layers if isinstance(layer, self.layer_type)]

    def refresh(self, event=None):
        current = self.currentText()
        names = ([NONE] if self.allow_none else []) + self.names()
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentTextChanged.emit(self.currentText())

    def layer(self):
        name = self.currentText()
        if not name or name == NONE or name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[name]
        return layer if isinstance(layer, self.layer_type) else None

    def select(self, name: str) -> None:
        self.refresh()
        self.setCurrentText(name)


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
