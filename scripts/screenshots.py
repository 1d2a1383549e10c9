"""Take the user-guide screenshots from a real napari window (run under a display or Xvfb):

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb \
        .venv/bin/python scripts/screenshots.py --out docs/images

It goes through the loop as a user would, with the shipped sample: open the sample, train in
the background (screenshot during training, with the live preview), segment, promote all
instances to sparse labels, and evaluate on the held-out crop. It prints what it measured.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication


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

    widget.steps_spin.setValue(args.steps)
    widget.preview_spin.setValue(10)
    widget.train_btn.click()
    wait(lambda: widget.last_progress is not None and widget.last_progress.step >= args.steps // 2, 600)
    wait(lambda: widget.last_preview is not None and widget.last_preview.step >= args.steps // 3, 60)
    viewer.layers["nuclei sparse labels"].visible = False
    pump(0.5)
    viewer.screenshot(str(out / "02-training-with-live-preview.png"), canvas_only=False)
    p = widget.last_progress
    print(f"mid-training: step {p.step}, {p.steps_per_second:.2f} steps/s, loss {p.losses['total']:.3f}")
    wait(lambda: not widget._training, 900)
    print(widget.train_label.text())

    widget.segment_btn.click()
    wait(lambda: not widget._segmenting, 300)
    print(widget.segment_label.text())
    pump(0.5)
    viewer.screenshot(str(out / "03-segmented.png"), canvas_only=False)

    viewer.open_sample("napari-spoco", "heldout_nuclei")
    widget.image_box.setCurrentText("nuclei (held out)")
    widget.segment_btn.click()
    wait(lambda: not widget._segmenting, 300)
    widget.result_box.setCurrentText("nuclei (held out) instances")
    widget.gt_box.setCurrentText("nuclei (held out) ground truth")
    scores = widget.evaluate()
    print("held-out:", {k: round(v, 3) for k, v in scores.items()})
    for layer in viewer.layers:
        layer.visible = layer.name.startswith("nuclei (held out)") and "truth" not in layer.name
    viewer.reset_view()
    pump(0.5)
    viewer.screenshot(str(out / "04-held-out-evaluated.png"), canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    main()
