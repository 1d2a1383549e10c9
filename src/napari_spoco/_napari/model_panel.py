"""2 · Model: which model Train fine-tunes and Segment uses (a shipped default, 2D or 3D as the
image, a new network, or a file), and saving it. The model itself lives in the shared
``ModelState``."""

from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from ..io import load_model, save_model
from ..model import network_name
from ..pretrained import DEFAULT_NETWORKS, has_default_model, load_default_model
from .data_panel import DataPanel
from .dialogs import MODEL_FILTER, error_message
from .state import ModelSource, SpocoState


class ModelPanel(QGroupBox):
    def __init__(self, state: SpocoState, data: DataPanel, parent=None) -> None:
        super().__init__("2 · Model", parent)
        self.state, self.data = state, data
        # (file checks, once: the buttons update at every training step)
        self._has_default = {ndim: has_default_model(ndim) for ndim in (2, 3)}
        lay = QVBoxLayout(self)
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        lay.addWidget(self.model_label)
        row = QHBoxLayout()
        self.default_model_btn = QPushButton("Default")
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
        state.model.changed.connect(self.update_buttons)
        state.job.changed.connect(self.update_buttons)
        data.image_box.changed.connect(self.update_buttons)
        data.series_check.toggled.connect(self.update_buttons)
        self.update_buttons()

    def update_buttons(self, *args) -> None:
        if self.state.closing.closed:
            return
        training = self.state.job.training
        model = self.state.model.current
        self.new_model_btn.setEnabled(not training)
        self.default_model_btn.setEnabled(not training and any(self._has_default.values()))
        ndim = self.data.model_ndim
        self.default_model_btn.setToolTip(
            f"Use the shipped {ndim}D starting model (the one for the chosen image): Segment right "
            "away, or Train to fine-tune it on your labels." if self._has_default.get(ndim) else
            f"napari-spoco ships 2D and 3D starting models; the chosen image is {ndim}D."
        )
        self.load_model_btn.setEnabled(not training)
        self.save_model_btn.setEnabled(model is not None and not training)
        self.model_label.setText(self.describe())

    def describe(self) -> str:
        """The model line: what the model is, where it came from, what Train will do."""
        state = self.state.model
        model = state.current
        if model is None:
            ndim = self.data.model_ndim
            if state.starts_from_default(ndim):
                return (f"No model yet: Train fine-tunes the shipped {ndim}D starting model "
                        f"(a {DEFAULT_NETWORKS[ndim]} network).")
            network = "" if state.network == "auto" else f"{state.network} "
            return f"No model yet: Train starts a new {network}network."
        channels = model.config.in_channels
        # a model fine-tuned on colour takes colour from then on: say so, a grey image is refused
        kind = f"{model.config.ndim}D {network_name(model.config)} model" + (
            f" for {channels}-channel images" if channels > 1 else "")
        if state.run_step is not None:
            text = f"{kind} ({state.describe()}): training, step {state.run_step} of this run…"
        else:
            steps = model.history.get("steps", 0)
            text = f"{kind} ({state.describe()}), {steps} steps trained; Train fine-tunes it."
        if model.pixel_scale != 1.0:
            size = "large" if model.pixel_scale < 1.0 else "small"
            text += f" Works at scale {model.pixel_scale:g} ({size} objects)."
        return text

    # ------------------------------------------------------------------ actions
    def _may_replace_model(self) -> bool:
        """True unless the current model holds training that was never saved and the user
        declines to discard it."""
        return not self.state.model.unsaved or self.state.confirm(
            "The current model has training that has not been saved (Save… keeps it). Replace it anyway?"
        )

    def use_default_model(self) -> bool:
        """Load the shipped model that fits the chosen image: 2D (also with no image, and for
        2D+t and RGB images) or 3D."""
        # (a segmentation holds its own reference to the model: replacing it is safe then)
        if self.state.job.refuse("replacing the model", segmenting=False):
            return False
        ndim = self.data.model_ndim
        if not self._has_default.get(ndim):
            name = self.data.image.name if self.data.image is not None else "the image"
            show_warning(f"There is no shipped {ndim}D starting model for '{name}': the shipped models are for "
                         "2D images (also 2D+t and RGB) and 3D (Z, Y, X) volumes. Train starts a new network.")
            return False
        if not self._may_replace_model():
            return False
        try:
            model = load_default_model(ndim)
        except Exception as exc:  # noqa: BLE001
            show_error(error_message(exc, "Loading the shipped model"))
            return False
        self.state.model.use(model, ModelSource.DEFAULT)
        return True

    def new_model(self) -> None:
        if self.state.job.refuse("replacing the model", segmenting=False) or not self._may_replace_model():
            return
        self.state.model.use(None, ModelSource.NONE)

    def load_model_from(self, path: str | None) -> bool:
        if self.state.job.refuse("replacing the model", segmenting=False):
            return False
        path = path or self.state.ask_path("Load SPOCO model", False, "", MODEL_FILTER)
        if not path or not self._may_replace_model():
            return False
        try:
            model = load_model(path)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            show_error(error_message(exc, "Loading the model"))
            return False
        self.state.model.use(model, ModelSource.FILE, Path(path).name)
        show_info(f"Loaded {Path(path).name}: {model.config.ndim}D {network_name(model.config)} network, "
                  f"{model.history.get('steps', 0)} steps.")
        return True

    def save_model_to(self, path: str | None) -> bool:
        if self.state.job.refuse("saving the model (its weights change at every step)", segmenting=False):
            return False
        model = self.state.model.current
        if model is None:
            show_warning("There is no model to save yet: train one first.")
            return False
        path = path or self.state.ask_path("Save SPOCO model", True, "model.spoco.pt", MODEL_FILTER)
        if not path:
            return False
        if Path(path).exists() and not self.state.confirm(f"{path} exists. Replace it?"):
            return False
        try:
            saved = save_model(model, path)
        except Exception as exc:  # noqa: BLE001
            show_error(error_message(exc, "Saving the model"))
            return False
        self.state.model.saved(saved.name)
        show_info(f"Model saved to {saved}")
        return True
