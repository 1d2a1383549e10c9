"""Take the user-guide screenshots from a real napari window (run under a display or Xvfb):

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb \
        .venv/bin/python scripts/screenshots.py --out docs/images

It goes through the loop as a user would, with the shipped sample: open the sample, train in
the background (screenshot during training, with the live preview and napari's activity dock),
segment, suggest what to paint next, and evaluate on the held-out crop. It prints what it
measured.

``--only large`` takes just the screenshot of "Images larger than memory": a BBBC039 field
(from ../shared/data, else a mirrored mosaic of the shipped crop) saved as zarr, opened lazily
as a two-level multiscale dask image, segmented block by block by the shipped model.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
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
    ap.add_argument("--only", choices=["all", "large"], default="all")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only == "large":
        large_image(out)
        return

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
    h = widget.state.model.current.history  # what the user guide's captions say about this run
    print(f"records: edge_expand {h.get('edge_expand')}, edge_growth {h.get('edge_growth')}, layout {h.get('layout')}")

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
    large_image(out)


def _field() -> tuple[np.ndarray, str]:
    """A whole BBBC039 field (520 x 696) when ../shared has them, else the shipped crop mirrored."""
    import tifffile

    from napari_spoco.sample import load_sample

    fields = sorted((Path(__file__).resolve().parents[2] / "shared/data/bbbc039-nuclei/images").glob("*.tif"))
    if fields:
        return tifffile.imread(fields[5]), f"BBBC039 field {fields[5].name[:16]}"
    crop = load_sample().test_image
    return np.block([[crop, crop[:, ::-1]], [crop[::-1], crop[::-1, ::-1]]]), "mirrored sample crop"


def large_image(out: Path) -> None:
    """An image opened lazily (zarr → dask, two levels), segmented block by block into a
    zarr-backed Labels layer; the block cores drawn as rectangles."""
    import dask.array as da
    import zarr

    from napari_spoco._napari.layers import spatial_shape
    from napari_spoco.blockwise import plan_blocks

    image, what = _field()
    path = Path(tempfile.mkdtemp(prefix="spoco-shot-")) / "field.zarr"
    zarr.create_array(store=str(path), data=image, chunks=(128, 128))
    full = da.from_zarr(str(path))
    viewer = napari.Viewer(title="napari-spoco")
    viewer.window._qt_window.resize(1500, 950)
    layer = viewer.add_image([full, full[::2, ::2]], name="field (zarr, lazy)", multiscale=True,
                             contrast_limits=[float(np.percentile(image, 1)), float(np.percentile(image, 99.8))])
    _, widget = viewer.window.add_plugin_dock_widget("napari-spoco", "SPOCO")
    select_layer(widget.data_panel.image_box, layer.name)
    widget.data_panel.new_sparse_labels()  # (to paint on; else the panel offers the result for it)
    widget.model_panel.default_model_btn.click()
    segment = widget.segment_panel
    block = (260, 232)  # the default is 896 x 896; smaller here to show several blocks
    segment.blockwise.block_shape = block
    segment.segment_btn.click()
    wait(lambda: widget.state.job.idle, 600)
    print(f"{what}, {image.shape}:", segment.segment_label.text())
    result = viewer.layers["field (zarr, lazy) instances"]
    result.opacity = 0.55
    cores = [[(b.core[0].start, b.core[1].start), (b.core[0].stop - 1, b.core[1].stop - 1)]
             for b in plan_blocks(spatial_shape(layer), block, (0, 0))]
    viewer.add_shapes(cores, shape_type="rectangle", name="blocks", edge_color="yellow", face_color="transparent",
                      edge_width=2)
    viewer.layers.selection.active = result
    viewer.reset_view()
    widget.findChild(QScrollArea).ensureWidgetVisible(segment.segment_label)
    pump(1.0)
    viewer.screenshot(str(out / "05-blockwise-lazy-image.png"), canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    main()
