"""What the dock widget's panels share: the current model and where it came from, the one job
that may run at a time, and whether the panel has been closed.

Panels change this state only through the methods below and observe its ``changed`` signals
(psygnal) to enable their own buttons; no panel reaches into another panel's widgets for it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from napari.utils.notifications import show_warning
from psygnal import Signal

from ..model import SpocoModel
from ..out_of_core import ScratchStores
from ..pretrained import fine_tunes_default


class ModelSource(Enum):
    """Where the current model came from."""

    NONE = "none"  # no model yet
    DEFAULT = "shipped default"  # a shipped starting model, 2D or 3D (docs/models.md)
    NEW = "new"  # a network trained from scratch in this session
    FILE = "file"  # loaded from, or last saved to, a .spoco.pt file (``ModelState.file_name``)


#: The model of a closed panel, per viewer. napari makes a new panel when SPOCO is opened again;
#: a model trained in the old one (perhaps never saved) must come back with it, not be lost.
_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ModelState:
    """The current model, where it came from, and what was done to it since.

    ``changed`` is emitted after every change, including each training step (the model being
    trained is the current model from its first step on, so that a stopped or failed run still
    leaves a usable model).
    """

    changed = Signal()

    def __init__(self, start_from_default: bool) -> None:
        self.current: SpocoModel | None = None
        self.source = ModelSource.NONE
        self.file_name = ""
        self.fine_tuned = False  # trained on sparse labels since it was loaded
        self.adapted = False  # adapted without labels (Adapt) since it was loaded
        self.unsaved = False  # holds training that was never saved: ask before replacing it
        self.run_step: int | None = None  # the running training's last step, None when idle
        # With no model, a first Train fine-tunes the shipped model for the images' dimensionality
        # (unless New, or another preset than the shipped model's is asked for).
        self.start_from_default = start_from_default
        self.network = "auto"  # the network a new model gets: model.NETWORK_CHOICES (Train panel)

    #: What a panel opened again takes over from the closed one (:meth:`keep_for`).
    KEPT_FIELDS = ("current", "source", "file_name", "fine_tuned", "adapted", "unsaved", "start_from_default",
                   "network")

    def keep_for(self, viewer, self_supervised: bool | None = None) -> None:
        """The panel is closing: hand the model to the next panel of ``viewer`` (it goes with
        the viewer). ``self_supervised``: a run still going, whose steps the model holds (True:
        Adapt, False: Train; its end will not reach this panel)."""
        if self.current is None:
            return
        kept = {name: getattr(self, name) for name in self.KEPT_FIELDS}
        if self_supervised is not None and self.source in (ModelSource.DEFAULT, ModelSource.FILE):
            kept["adapted" if self_supervised else "fine_tuned"] = True
        _KEPT[viewer] = kept

    def take_kept(self, viewer) -> bool:
        """Take over the model of ``viewer``'s closed panel, if there was one; True if so."""
        kept = _KEPT.pop(viewer, None)
        if not kept:
            return False
        for name, value in kept.items():
            setattr(self, name, value)
        self.changed.emit()
        return True

    def starts_from_default(self, ndim: int) -> bool:
        """Whether the next Train or Adapt on ``ndim``-D images starts from a shipped model."""
        return self.current is None and self.start_from_default and fine_tunes_default(ndim, self.network)

    def choose_network(self, name: str) -> None:
        """The preset of the next new network ("auto", "small", "medium", "large")."""
        self.network = name
        self.changed.emit()

    def use(self, model: SpocoModel | None, source: ModelSource, file_name: str = "") -> None:
        """Replace the model (Default, New, Load…, or the shipped model a first Train loads)."""
        self.current, self.source, self.file_name = model, source, file_name
        self.fine_tuned = self.adapted = self.unsaved = False
        if source is ModelSource.DEFAULT:
            self.start_from_default = True
        elif source is ModelSource.NONE:  # New: the next Train starts from scratch
            self.start_from_default = False
        self.changed.emit()

    def saved(self, file_name: str) -> None:
        self.source, self.file_name = ModelSource.FILE, file_name
        self.fine_tuned = self.adapted = self.unsaved = False
        self.changed.emit()

    def stepped(self, model: SpocoModel | None, step: int) -> None:
        """A training step: from the first one on, the model holds unsaved training."""
        if self.current is None and model is not None:
            self.current, self.source, self.file_name = model, ModelSource.NEW, ""
        self.unsaved = True
        self.run_step = step
        self.changed.emit()

    def run_ended(self, model: SpocoModel | None, self_supervised: bool) -> None:
        """A training run returned ``model`` (None: it ended before its first step)."""
        self.run_step = None
        if model is not None:
            if self.current is not model:
                self.source, self.file_name = ModelSource.NEW, ""
                self.fine_tuned = self.adapted = False
            elif self.source in (ModelSource.DEFAULT, ModelSource.FILE):
                if self_supervised:
                    self.adapted = True
                else:
                    self.fine_tuned = True
            self.current = model
        self.changed.emit()

    def describe(self) -> str:
        """Where the model came from, in words: 'shipped default, fine-tuned', 'm.spoco.pt'."""
        text = self.file_name if self.source is ModelSource.FILE else self.source.value
        if self.source in (ModelSource.DEFAULT, ModelSource.FILE):
            text += ", adapted" * self.adapted + ", fine-tuned" * self.fine_tuned
        return text


class Job(Enum):
    """The long jobs; one runs at a time (Train and Adapt change the model Segment uses)."""

    TRAIN = "Training"
    ADAPT = "Adapting"
    SEGMENT = "Segmentation"


class JobState:
    """The job that runs, if any; ``changed`` is emitted when one starts or ends."""

    changed = Signal()

    def __init__(self) -> None:
        self.running: Job | None = None

    @property
    def training(self) -> bool:
        return self.running in (Job.TRAIN, Job.ADAPT)

    @property
    def segmenting(self) -> bool:
        return self.running is Job.SEGMENT

    @property
    def idle(self) -> bool:
        return self.running is None

    def start(self, job: Job) -> None:
        self.running = job
        self.changed.emit()

    def finish(self) -> None:
        self.running = None
        self.changed.emit()

    def refuse(self, action: str, segmenting: bool = True) -> bool:
        """True, with a warning, while a job runs that ``action`` must not overlap. The buttons
        are disabled then, but the panels' methods are also called directly (and by tests);
        ``segmenting=False``: the action may overlap a segmentation (which holds its own
        reference to the model)."""
        if self.training:
            show_warning(f"Training is running: press Stop, or wait for it to end, before {action}.")
            return True
        if segmenting and self.segmenting:
            show_warning(f"Segmentation is running: wait for it to end before {action}.")
            return True
        return False


class Closing:
    """Called when the panel goes away (its Qt object destroyed, or the panel taken out of the
    viewer): a running training job is told to stop after its current step, and results that
    arrive later are dropped. Apart from the widgets, so that it still works while their Qt
    objects are being destroyed."""

    def __init__(self) -> None:
        self.closed = False
        self.stop: threading.Event | None = None  # the running training job's

    def __call__(self, *args) -> None:
        self.closed = True
        if self.stop is not None:
            self.stop.set()

    def is_closed(self) -> bool:
        return self.closed


@dataclass
class SpocoState:
    """Everything the panels share. ``confirm`` and ``ask_path`` are the yes/no question and
    the file dialog (replaced in tests); ``sync`` runs jobs inline (tests); ``stores`` is the
    session's folder of block-wise results (the lazy layers read them)."""

    viewer: Any
    model: ModelState
    confirm: Callable[[str], bool]
    ask_path: Callable[[str, bool, str, str], str | None]
    job: JobState = field(default_factory=JobState)
    closing: Closing = field(default_factory=Closing)
    sync: bool = False
    stores: ScratchStores = field(default_factory=ScratchStores)
