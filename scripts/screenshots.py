"""Take the user-guide screenshots from a real napari window (run under a display or Xvfb):

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb \
        .venv/bin/python scripts/screenshots.py --out docs/images

It goes through the loop as a user would, with the shipped sample: open the sample, train in
the background (screenshot during training, with the live preview and napari's activity dock),
segment, suggest what to paint next, and evaluate on the held-out crop. It prints what it
measured.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication, QScrollArea

from napari_spoco._napari.widgets import select_layer


def pump(seconds: float) -> None:
    app = QApplication.instance()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def wait(pred, timeout: float) -> None:
    app = QApplication.instance()
    end = time.perf_counter() + timeout
    while not pred() and time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/images")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(title="napari-spoco")
    viewer.window._qt_window.resize(1500, 950)  # no public API for the window size
    viewer.open_sample("napari-spoco", "sparse_nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-spoco", "SPOCO")
    viewer.layers["nuclei sparse labels"].opacity = 0.8
    pump(1.0)
    viewer.reset_view()
    pump(0.5)
    viewer.screenshot(str(out / "01-sample-with-sparse-labels.png"), canvas_only=False)

    train, segment, correct = widget.train_panel, widget.segment_panel, widget.correct_panel
    train.steps_spin.setValue(args.steps)
    train.preview_spin.setValue(10)
    train.train_btn.click()
    wait(lambda: train.last_progress is not None and train.last_progress.step >= args.steps // 2, 600)
    wait(lambda: train.last_preview is not None and train.last_preview.step >= args.steps // 3, 60)
    viewer.layers["nuclei sparse labels"].visible = False
    # napari's activity dock (the "activity" button, bottom right) lists the run as well; there
    # is no public API to open it.
    status_bar = viewer.window._qt_window.statusBar()
    status_bar._toggle_activity_dock(True)
    pump(0.5)
    viewer.screenshot(str(out / "02-training-with-live-preview.png"), canvas_only=False)
    status_bar._toggle_activity_dock(False)
    p = train.last_progress
    print(f"mid-training: step {p.step}, {p.steps_per_second:.2f} steps/s, loss {p.losses['total']:.3f}")
    wait(lambda: widget.state.job.idle, 900)
    print(train.train_label.text())

    segment.segment_btn.click()
    wait(lambda: widget.state.job.idle, 300)
    print(segment.segment_label.text())
    # Suggest next: the five most doubtful objects, as rings numbered by rank
    suggest = segment.suggest_row
    suggest.suggest_btn.click()
    wait(lambda: suggest.next_btn.isEnabled(), 60)
    print(suggest.label.text())
    widget.findChild(QScrollArea).ensureWidgetVisible(suggest.label)  # the suggestions, in the panel
    pump(0.5)
    viewer.screenshot(str(out / "03-segmented.png"), canvas_only=False)
    viewer.layers["SPOCO suggestions"].visible = False

    viewer.open_sample("napari-spoco", "heldout_nuclei")
    select_layer(widget.data_panel.image_box, "nuclei (held out)")
    segment.segment_btn.click()
    wait(lambda: widget.state.job.idle, 300)
    select_layer(correct.result_box, "nuclei (held out) instances")
    select_layer(correct.gt_box, "nuclei (held out) ground truth")
    scores = correct.evaluate()
    print("held-out:", {k: round(v, 3) for k, v in scores.items()})
    for layer in viewer.layers:
        layer.visible = layer.name.startswith("nuclei (held out)") and "truth" not in layer.name
    viewer.reset_view()
    widget.findChild(QScrollArea).ensureWidgetVisible(correct.eval_label)  # the scores, in the panel
    pump(0.5)
    viewer.screenshot(str(out / "04-held-out-evaluated.png"), canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    main()
