"""Talking to the user outside napari's notifications: a yes/no question, a file dialog, and
the one rule for turning an exception into a message."""

from __future__ import annotations

import logging

from qtpy.QtWidgets import QFileDialog, QMessageBox, QWidget

from ..errors import SpocoError

log = logging.getLogger(__name__)

MODEL_FILTER = "SPOCO model (*.spoco.pt *.pt);;All files (*)"


def error_message(exc: BaseException, what: str) -> str:
    """Our own errors (SpocoError) say what to do; anything else is logged with its traceback
    and named, without one, in the message."""
    if isinstance(exc, SpocoError):
        return str(exc)
    log.error("%s failed", what, exc_info=exc)
    return f"{what} failed: {type(exc).__name__}: {exc}"


def confirm(parent: QWidget | None, question: str) -> bool:
    answer = QMessageBox.question(parent, "napari-spoco", question, QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
    return answer == QMessageBox.Yes


def ask_path(parent: QWidget | None, title: str, save: bool, default: str, filters: str) -> str | None:
    if save:  # the panels ask before replacing a file, with their own words
        path, _ = QFileDialog.getSaveFileName(parent, title, default, filters, options=QFileDialog.DontConfirmOverwrite)
    else:
        path, _ = QFileDialog.getOpenFileName(parent, title, default, filters)
    return path or None
