"""The dock widget driven as a user would: sample → paint → Train → Stop → Segment → promote →
Evaluate → Export, plus the failure paths that must become notifications."""

import gc
import time

import numpy as np
import tifffile
import torch
from napari.layers import Image, Labels

from napari_spoco._napari.state import ModelSource
from napari_spoco._napari.widget import PREVIEW_LAYER, SpocoWidget
from napari_spoco.model import ModelConfig, SpocoModel
from napari_spoco.training import TrainProgress


def wait_idle(qtbot, widget, timeout=180_000):
    qtbot.waitUntil(lambda: widget.state.job.idle, timeout=timeout)


def test_manifest_validates():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-spoco")
    manifest.validate_imports()
    assert {c.key for c in manifest.contributions.sample_data} == {"sparse_nuclei", "heldout_nuclei"}
    assert manifest.contributions.writers[0].layer_types == ["labels"]


def test_open_sample_gives_image_and_linked_sparse_labels(spoco):
    viewer, widget = spoco
    image, labels = viewer.layers["nuclei"], viewer.layers["nuclei sparse labels"]
    assert isinstance(image, Image) and isinstance(labels, Labels)
    assert labels.data.shape == image.data.shape and len(np.unique(labels.data)) > 3
    # (napari gives plugins proxies of layers: compare names, not identities)
    assert widget.data_panel.image_box.value.name == "nuclei" and widget.data_panel.labels_box.value.name == labels.name
    # Nothing to segment with yet; Stop only while training.
    assert not widget.segment_panel.segment_btn.isEnabled() and not widget.train_panel.stop_btn.isEnabled()
    assert widget.train_panel.train_btn.isEnabled()


def test_new_sparse_labels_layer_fits_image_and_is_ready_to_paint(spoco):
    viewer, widget = spoco
    layer = widget.data_panel.new_sparse_labels()
    assert layer.data.shape == viewer.layers["nuclei"].data.shape and not layer.data.any()
    assert layer.mode == "paint" and layer.selected_label == 1
    assert widget.data_panel.labels_box.value.name == layer.name
    widget.data_panel.background_brush()
    assert layer.selected_label == 65535


def test_threaded_training_reports_progress_previews_and_keeps_gui_responsive(spoco, qtbot):
    viewer, widget = spoco
    viewer.show()  # drawn, as for a user
    widget.sync = False
    widget.train_panel.steps_spin.setValue(25)
    widget.train_panel.preview_spin.setValue(2)
    seen_steps = []
    original = widget.train_panel._on_train_yield
    widget.train_panel._on_train_yield = lambda item: (
        seen_steps.append(item.step if isinstance(item, TrainProgress) else None), original(item)
    )
    ticks = []
    from qtpy.QtCore import Qt, QTimer

    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append((time.perf_counter(), widget.train_panel.last_progress)))
    gc.collect()  # not a collection of the garbage earlier tests left (~0.3 s with napari's heap)
    timer.start(50)
    qtbot.mouseClick(widget.train_panel.train_btn, Qt.MouseButton.LeftButton)
    assert widget.state.job.training and not widget.train_panel.train_btn.isEnabled() and widget.train_panel.stop_btn.isEnabled()
    assert not widget.segment_panel.segment_btn.isEnabled()
    wait_idle(qtbot, widget)
    timer.stop()

    assert widget.train_panel.last_progress.step == 25 and widget.train_panel.progress_bar.value() == 1000
    assert [s for s in seen_steps if s is not None][:3] == [1, 2, 3]
    assert len(widget.train_panel.loss_plot.values) == 25
    assert "steps/s" not in widget.train_panel.train_label.text() and "Trained 25 steps" in widget.train_panel.train_label.text()
    assert widget.state.model.current is not None and widget.state.model.source is ModelSource.DEFAULT and widget.state.model.fine_tuned
    assert widget.state.model.describe() == "shipped default, fine-tuned"
    assert widget.train_panel.last_preview is not None and widget.train_panel.last_preview.step > 0
    preview = viewer.layers[PREVIEW_LAYER]
    assert preview.data.shape == (256, 256)  # the sample is smaller than the preview box
    # The event loop kept turning: from the first step on (the click itself, and torch's one-off
    # imports when the first optimiser is made, come before it), a 50 ms timer never waited more
    # than 150 ms, previews included.
    running = [t for t, p in ticks if p is not None and p.step >= 1]
    gaps = np.diff(running)
    print(f"training: {len(gaps)} gaps, max {gaps.max():.3f} s, 99th percentile {np.percentile(gaps, 99):.3f} s")
    assert len(gaps) > 20 and gaps.max() <= 0.15, f"GUI blocked for {gaps.max():.3f} s"
    assert widget.segment_panel.segment_btn.isEnabled() and widget.train_panel.train_btn.isEnabled()
    # The preview is a segmentation: with the painted layer gone, the sparse-labels picker takes
    # no layer rather than the preview (Train would learn its every object as painted).
    from napari_spoco._napari.layers import is_segmentation

    assert is_segmentation(preview) and widget.data_panel.labels_box.value.name == "nuclei sparse labels"
    viewer.layers.remove(viewer.layers["nuclei sparse labels"])
    assert widget.data_panel.labels is None and preview in widget.data_panel.labels_box.choices


def test_stop_ends_training_within_a_step_and_keeps_model_usable(spoco, qtbot):
    viewer, widget = spoco
    widget.sync = False
    widget.train_panel.steps_spin.setValue(100_000)
    widget.train_panel.train_btn.click()
    qtbot.waitUntil(lambda: widget.train_panel.last_progress is not None and widget.train_panel.last_progress.step >= 3, timeout=60_000)
    clicked = time.perf_counter()
    widget.train_panel.stop_btn.click()
    qtbot.waitUntil(lambda: not widget.state.job.training, timeout=20_000)
    latency = time.perf_counter() - clicked  # the last step, then the edge and layout measurements
    assert latency < 5, f"{latency:.1f} s from Stop to the end of the run"
    steps = widget.train_panel.last_progress.step
    assert 3 <= steps < 100_000 and widget.state.model.current is not None
    # the bar keeps the part that was done (a full bar would pass for a finished run)
    assert widget.train_panel.progress_bar.value() < 1000
    assert f"Stopped after {steps} steps" in widget.train_panel.train_label.text()
    widget.sync = True
    widget.segment_panel.segment_btn.click()
    labels = viewer.layers["nuclei instances"].data
    assert labels.shape == (256, 256) and labels.dtype in (np.uint16, np.uint32)


def test_train_segment_promote_evaluate_export(spoco, qtbot, tmp_path, notes, choose):
    viewer, widget = spoco
    widget.train_panel.steps_spin.setValue(40)
    widget.train_panel.train_btn.click()
    assert widget.train_panel.last_progress.step == 40 and not notes["error"]

    widget.segment_panel.embedding_check.setChecked(True)
    widget.segment_panel.segment_btn.click()
    result = viewer.layers["nuclei instances"]
    assert result.data.shape == (256, 256) and result.data.max() >= 2
    assert viewer.layers["nuclei embeddings (PCA)"].data.shape == (256, 256, 3)
    assert widget.correct_panel.result_box.value.name == result.name and "instances" in widget.segment_panel.segment_label.text()

    sparse = viewer.layers["nuclei sparse labels"]
    before = sparse.data.copy()
    n_promoted = widget.correct_panel.promote(selected_only=False)
    after = sparse.data
    assert n_promoted >= 1
    assert np.array_equal(after[before > 0], before[before > 0])  # painting is never overwritten
    assert len(np.unique(after)) == len(np.unique(before)) + n_promoted
    assert after.max() < 65535

    viewer.open_sample("napari-spoco", "heldout_nuclei")
    choose(widget.data_panel.image_box, "nuclei (held out)")
    widget.segment_panel.segment_btn.click()
    choose(widget.correct_panel.result_box, "nuclei (held out) instances")
    choose(widget.correct_panel.gt_box, "nuclei (held out) ground truth")
    assert widget.correct_panel.evaluate_btn.isEnabled()
    scores = widget.correct_panel.evaluate()
    assert 0.0 <= scores["AP50"] <= 1.0 and "AP50" in widget.correct_panel.eval_label.text()

    choose(widget.export_panel.export_box, "nuclei instances")
    out = tmp_path / "instances.tif"
    assert widget.export_panel.export_labels(str(out))
    back = tifffile.imread(out)
    assert np.array_equal(back, result.data) and back.dtype == np.uint16
    # An existing file is only replaced after the user confirms.
    out.write_bytes(b"keep me")
    widget.state.confirm = lambda question: False
    assert not widget.export_panel.export_labels(str(out)) and out.read_bytes() == b"keep me"
    widget.state.confirm = lambda question: True
    assert widget.export_panel.export_labels(str(out)) and np.array_equal(tifffile.imread(out), result.data)


def test_save_and_load_model_round_trip(spoco, tmp_path, notes):
    viewer, widget = spoco
    widget.train_panel.steps_spin.setValue(3)
    widget.train_panel.train_btn.click()
    steps = widget.state.model.current.history["steps"]
    path = tmp_path / "m.spoco.pt"
    assert widget.model_panel.save_model_to(str(path)) and path.exists()
    widget.model_panel.new_model()
    assert widget.state.model.current is None and not widget.segment_panel.segment_btn.isEnabled()
    assert widget.model_panel.load_model_from(str(path))
    assert widget.state.model.current.history["steps"] == steps and widget.segment_panel.segment_btn.isEnabled()
    assert widget.state.model.source is ModelSource.FILE and widget.state.model.describe() == "m.spoco.pt"


def test_bad_inputs_become_notifications_and_keep_labels_and_model(spoco, tmp_path, notes, choose):
    viewer, widget = spoco
    sparse = viewer.layers["nuclei sparse labels"]
    # One painted object only.
    one = np.where(sparse.data == sparse.data.max(), sparse.data, 0)
    sparse.data = one
    widget.train_panel.train_btn.click()
    assert notes["error"] and "at least two objects" in notes["error"][-1]
    assert np.array_equal(sparse.data, one) and widget.state.model.current is None and not widget.state.job.training
    assert widget.train_panel.train_label.text().startswith("Not trained: the painted labels could not be used")
    # Labels of the wrong shape.
    viewer.add_labels(np.zeros((10, 10), np.uint32), name="wrong")
    choose(widget.data_panel.labels_box, "wrong")
    widget.train_panel.train_btn.click()
    assert "does not match" in notes["error"][-1] or "has shape" in notes["error"][-1]
    # A file that is not a SPOCO model; the current model survives.
    kept = SpocoModel.new(ModelConfig(ndim=2))
    widget.state.model.use(kept, ModelSource.NEW)
    bad = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, bad)
    errors_before = len(notes["error"])
    assert not widget.model_panel.load_model_from(str(bad))
    assert widget.state.model.current is kept and len(notes["error"]) == errors_before + 1
    assert "not a napari-spoco model" in notes["error"][-1] and "Traceback" not in notes["error"][-1]
    # A 3D model cannot segment a 2D image: message, no crash.
    widget.state.model.use(SpocoModel.new(ModelConfig(ndim=3)), ModelSource.NEW)
    assert widget.segment_panel.segment_btn.isEnabled()  # the panel follows the model state
    widget.segment_panel.segment_btn.click()
    assert "3D model" in notes["error"][-1] and not widget.state.job.segmenting


def test_3d_volume_trains_and_segments_in_3d(spoco, notes, choose, balls):
    viewer, widget = spoco
    volume, truth = balls
    viewer.add_image(volume, name="vol")
    choose(widget.data_panel.image_box, "vol")
    assert widget.data_panel.series_check.isEnabled() and not widget.data_panel.series_check.isChecked()
    layer = widget.data_panel.new_sparse_labels()
    layer.data = np.where(truth <= 2, truth, 0).astype(np.uint32)
    widget.data_panel.all_pairs_check.setChecked(False)
    widget.train_panel.steps_spin.setValue(3)
    widget.train_panel.train_btn.click()
    assert not notes["error"], notes["error"]
    assert widget.state.model.current.config.ndim == 3
    widget.segment_panel.segment_btn.click()
    assert viewer.layers["vol instances"].data.shape == (16, 40, 40)


def test_time_series_is_trained_and_segmented_frame_by_frame(spoco, notes, choose):
    viewer, widget = spoco
    stack = np.stack([viewer.layers["nuclei"].data[:64, :64]] * 3)
    viewer.add_image(stack, name="movie", axis_labels=("t", "y", "x"))
    choose(widget.data_panel.image_box, "movie")
    assert widget.data_panel.series_check.isChecked()  # guessed from the axis name
    sparse = widget.data_panel.new_sparse_labels()
    frame = viewer.layers["nuclei sparse labels"].data[:64, :64]
    data = np.zeros(stack.shape, np.uint32)
    data[1] = frame
    if len(np.unique(frame)) < 3:  # make sure two objects are painted in frame 1
        data[1, 5:15, 5:15], data[1, 40:50, 40:50] = 1, 2
    sparse.data = data
    widget.data_panel.all_pairs_check.setChecked(False)
    widget.train_panel.steps_spin.setValue(3)
    widget.train_panel.train_btn.click()
    assert not notes["error"], notes["error"]
    assert widget.state.model.current.config.ndim == 2
    widget.segment_panel.segment_btn.click()
    result = viewer.layers["movie instances"].data
    assert result.shape == stack.shape
    ids = [set(np.unique(result[t])) - {0} for t in range(3)]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])  # ids unique across frames


def test_a_time_series_with_a_3d_model_says_what_to_do(spoco, notes, choose):
    from napari_spoco._napari.state import ModelSource
    from napari_spoco.pretrained import load_default_model

    viewer, widget = spoco
    stack = np.stack([viewer.layers["nuclei"].data[:64, :64]] * 3)
    viewer.add_image(stack, name="movie", axis_labels=("t", "y", "x"))
    choose(widget.data_panel.image_box, "movie")
    widget.state.model.use(load_default_model(3), ModelSource.DEFAULT)
    widget.segment_panel.segment_btn.click()
    assert "'movie' is a 2D+t stack" in notes["error"][-1] and "Default gives the shipped one" in notes["error"][-1]
    assert "movie instances" not in viewer.layers


def test_segment_names_the_layer_whose_pixels_are_not_numbers(spoco, notes, choose):
    from napari_spoco._napari.state import ModelSource
    from napari_spoco.pretrained import load_default_model

    viewer, widget = spoco
    image = np.asarray(viewer.layers["nuclei"].data, np.float32).copy()
    image[10, 10] = np.nan
    viewer.add_image(image, name="with a gap")
    choose(widget.data_panel.image_box, "with a gap")
    widget.state.model.use(load_default_model(2), ModelSource.DEFAULT)
    widget.segment_panel.segment_btn.click()
    assert notes["error"] and notes["error"][-1].startswith("'with a gap': "), notes["error"]
    assert "with a gap instances" not in viewer.layers


def test_rgb_image_is_accepted(spoco, notes, choose):
    viewer, widget = spoco
    grey = viewer.layers["nuclei"].data
    rgb = np.stack([grey, grey, grey], axis=-1).astype(np.uint8)
    viewer.add_image(rgb, name="rgb", rgb=True)
    choose(widget.data_panel.image_box, "rgb")
    sparse = widget.data_panel.new_sparse_labels()
    assert sparse.data.shape == grey.shape
    sparse.data = viewer.layers["nuclei sparse labels"].data.astype(np.uint32)
    widget.train_panel.steps_spin.setValue(3)
    widget.train_panel.train_btn.click()
    widget.segment_panel.segment_btn.click()
    assert not notes["error"], notes["error"]
    assert viewer.layers["rgb instances"].data.shape == grey.shape
    # colour is the network's input (the shipped grey model widened); the grey pair is left out
    assert widget.state.model.current.config.in_channels == 3
    assert any("Not training on 'nuclei'" in w for w in notes["warning"]), notes["warning"]
    assert "model for 3-channel images" in widget.model_panel.model_label.text()  # grey images are refused now


def test_large_objects_train_and_segment_at_a_smaller_scale(spoco, notes, choose):
    viewer, widget = spoco
    from napari_spoco.scaling import auto_scale

    big = np.kron(viewer.layers["nuclei"].data, np.ones((3, 3), np.uint8))  # painted nuclei ~48 px
    sparse = np.kron(viewer.layers["nuclei sparse labels"].data, np.ones((3, 3), np.uint8))
    viewer.layers.clear()  # train on the enlarged pair alone
    viewer.add_image(big, name="big")
    viewer.add_labels(sparse.astype(np.uint32), name="big sparse")
    choose(widget.data_panel.image_box, "big")
    choose(widget.data_panel.labels_box, "big sparse")
    widget.train_panel.steps_spin.setValue(3)
    widget.train_panel.train_btn.click()
    assert not notes["error"], notes["error"]
    assert widget.state.model.current.pixel_scale == auto_scale([sparse], widget.train_panel.train_config().background_label) < 1.0
    assert "scale" in widget.model_panel.model_label.text()
    widget.segment_panel.segment_btn.click()
    assert not notes["error"], notes["error"]
    assert viewer.layers["big instances"].data.shape == big.shape


def test_a_model_trained_at_full_size_keeps_it_for_large_objects_painted_later(spoco, notes, choose):
    """The label -> train -> paint more -> train loop: large objects painted in a later round do
    not shrink the images the model learned at full size (scaling.training_scale)."""
    viewer, widget = spoco
    widget.train_panel.steps_spin.setValue(2)
    widget.train_panel.train_btn.click()  # the nuclei pair: full size
    assert not notes["error"], notes["error"]
    assert widget.state.model.current.pixel_scale == 1.0
    big = np.kron(viewer.layers["nuclei"].data, np.ones((3, 3), np.uint8))  # painted nuclei ~48 px
    sparse = np.kron(viewer.layers["nuclei sparse labels"].data, np.ones((3, 3), np.uint8))
    viewer.add_image(big, name="big")
    viewer.add_labels(sparse.astype(np.uint32), name="big sparse")
    choose(widget.data_panel.image_box, "big")
    choose(widget.data_panel.labels_box, "big sparse")
    widget.train_panel.train_btn.click()
    assert not notes["error"], notes["error"]
    assert widget.state.model.current.pixel_scale == 1.0


def test_zoom_patches_setting_reaches_training(spoco, notes):
    """The Train panel's "Zoom patches" is TrainConfig.scale_jitter: auto by default, which zooms
    the sample's few painted nuclei and says so when the run ends; what the user sets instead is
    what the trained model records."""
    from napari_spoco.training import SCALE_JITTER

    viewer, widget = spoco
    panel = widget.train_panel
    assert panel.train_config().scale_jitter is None and panel.zoom_box.currentText() == "auto"
    panel.steps_spin.setValue(2)
    panel.train_btn.click()
    assert not notes["error"], notes["error"]
    assert widget.state.model.current.history["scale_jitter"] == SCALE_JITTER
    assert f"zoomed by up to {SCALE_JITTER:g}x, as only" in panel.train_label.text()
    panel.zoom_box.setCurrentText("off")
    panel.train_btn.click()
    assert not notes["error"], notes["error"]
    assert widget.state.model.current.history["scale_jitter"] == 1.0
    assert "zoomed" not in panel.train_label.text()


def test_writer_saves_labels_layer_as_tiff(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = np.zeros((2, 8, 8), np.uint32)
    data[0, 2:4, 2:4] = 70000
    viewer.add_labels(data, name="big ids")
    out = tmp_path / "saved.tif"
    written = viewer.layers.save(str(out), plugin="napari-spoco")
    back = tifffile.imread(out)
    assert written and np.array_equal(back, data) and back.dtype == np.uint32


def test_widget_has_no_model_until_trained_or_loaded(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = SpocoWidget(viewer)
    assert widget.state.model.current is None and not widget.train_panel.train_btn.isEnabled() and not widget.segment_panel.segment_btn.isEnabled()


def test_first_train_fine_tunes_the_shipped_model_and_new_starts_from_scratch(spoco, notes):
    from napari_spoco.pretrained import load_default_model

    viewer, widget = spoco
    shipped_steps = load_default_model(2).history["steps"]
    assert widget.state.model.current is None and "shipped" in widget.model_panel.model_label.text()
    widget.train_panel.steps_spin.setValue(2)
    widget.train_panel.train_btn.click()
    assert widget.state.model.source is ModelSource.DEFAULT and widget.state.model.fine_tuned
    assert widget.state.model.describe() == "shipped default, fine-tuned" and widget.state.model.current.history["steps"] == shipped_steps + 2
    widget.state.confirm = lambda question: True  # "discard the unsaved training?" — yes
    widget.model_panel.new_model()
    assert "new network" in widget.model_panel.model_label.text()
    widget.train_panel.train_btn.click()
    assert widget.state.model.current.history["steps"] == 2 and not notes["error"]


def test_default_button_segments_without_any_training(spoco, monkeypatch):
    from napari_spoco._napari import workers

    viewer, widget = spoco
    widget.model_panel.default_model_btn.click()
    assert widget.segment_panel.segment_btn.isEnabled()
    formats, segment = [], workers.segment
    monkeypatch.setattr(workers, "segment",
                        lambda *a, **k: formats.append((k["precision"], k["tta"])) or segment(*a, **k))
    assert widget.segment_panel.precision_box.currentText() == "auto"  # the library's default
    assert widget.segment_panel.tta_check.isChecked()  # so is test-time augmentation
    widget.segment_panel.segment_btn.click()
    assert viewer.layers["nuclei instances"].data.max() >= 10
    widget.segment_panel.precision_box.setCurrentText("float32")
    widget.segment_panel.tta_check.setChecked(False)
    widget.segment_panel.segment_btn.click()
    assert formats == [("auto", True), ("float32", False)] and viewer.layers["nuclei instances"].data.max() >= 10


def test_adapt_trains_without_labels_and_keeps_the_labels(spoco, notes, choose):
    viewer, widget = spoco
    sparse = viewer.layers["nuclei sparse labels"]
    painted = sparse.data.copy()
    choose(widget.data_panel.labels_box, sparse.name)
    widget.train_panel.steps_spin.setValue(2)
    widget.train_panel.adapt_btn.click()
    assert not notes["error"], notes["error"]
    assert widget.train_panel.last_progress.step == 2
    assert set(k for k, v in widget.train_panel.last_progress.losses.items() if v > 0) == {"consistency", "foreground", "total"}
    assert np.array_equal(sparse.data, painted) and widget.state.model.source is ModelSource.DEFAULT
    assert widget.state.model.adapted and not widget.state.model.fine_tuned
    assert widget.state.model.describe() == "shipped default, adapted"


def test_unsaved_training_is_not_discarded_without_asking(spoco, tmp_path):
    viewer, widget = spoco
    widget.train_panel.steps_spin.setValue(2)
    widget.train_panel.train_btn.click()
    trained = widget.state.model.current
    asked = []
    widget.state.confirm = lambda question: asked.append(question) or False
    widget.model_panel.default_model_btn.click()
    widget.model_panel.new_model()
    assert not widget.model_panel.load_model_from(str(tmp_path / "any.spoco.pt"))
    assert widget.state.model.current is trained and len(asked) == 3 and "not been saved" in asked[0]
    assert widget.model_panel.save_model_to(str(tmp_path / "kept.spoco.pt"))
    widget.model_panel.new_model()  # saved: no question
    assert widget.state.model.current is None and len(asked) == 3
