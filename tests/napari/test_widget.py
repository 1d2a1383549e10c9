"""The dock widget driven as a user would: sample → paint → Train → Stop → Segment → promote →
Evaluate → Export, plus the failure paths that must become notifications."""

import gc
import time

import numpy as np
import tifffile
import torch
from napari.layers import Image, Labels

from napari_spoco._napari.widget import PREVIEW_LAYER, SpocoWidget
from napari_spoco.model import ModelConfig, SpocoModel
from napari_spoco.training import TrainProgress


def wait_idle(qtbot, widget, timeout=180_000):
    qtbot.waitUntil(lambda: not widget._training and not widget._segmenting, timeout=timeout)


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
    assert widget.image_box.layer().name == "nuclei" and widget.labels_box.layer().name == labels.name
    # Nothing to segment with yet; Stop only while training.
    assert not widget.segment_btn.isEnabled() and not widget.stop_btn.isEnabled()
    assert widget.train_btn.isEnabled()


def test_new_sparse_labels_layer_fits_image_and_is_ready_to_paint(spoco):
    viewer, widget = spoco
    layer = widget.new_sparse_labels()
    assert layer.data.shape == viewer.layers["nuclei"].data.shape and not layer.data.any()
    assert layer.mode == "paint" and layer.selected_label == 1
    assert widget.labels_box.layer().name == layer.name
    widget.background_brush()
    assert layer.selected_label == 65535


def test_threaded_training_reports_progress_previews_and_keeps_gui_responsive(spoco, qtbot):
    viewer, widget = spoco
    viewer.show()  # drawn, as for a user
    widget.sync = False
    widget.steps_spin.setValue(25)
    widget.preview_spin.setValue(2)
    seen_steps = []
    original = widget._on_train_yield
    widget._on_train_yield = lambda item: (
        seen_steps.append(item.step if isinstance(item, TrainProgress) else None), original(item)
    )
    ticks = []
    from qtpy.QtCore import Qt, QTimer

    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append((time.perf_counter(), widget.last_progress)))
    gc.collect()  # not a collection of the garbage earlier tests left (~0.3 s with napari's heap)
    timer.start(50)
    qtbot.mouseClick(widget.train_btn, Qt.MouseButton.LeftButton)
    assert widget._training and not widget.train_btn.isEnabled() and widget.stop_btn.isEnabled()
    assert not widget.segment_btn.isEnabled()
    wait_idle(qtbot, widget)
    timer.stop()

    assert widget.last_progress.step == 25 and widget.progress_bar.value() == 1000
    assert [s for s in seen_steps if s is not None][:3] == [1, 2, 3]
    assert len(widget.loss_plot.values) == 25
    assert "steps/s" not in widget.train_label.text() and "Trained 25 steps" in widget.train_label.text()
    assert widget.model is not None and widget.model_source == "shipped default, fine-tuned"
    assert widget.last_preview is not None and widget.last_preview.step > 0
    preview = viewer.layers[PREVIEW_LAYER]
    assert preview.data.shape == (256, 256)  # the sample is smaller than the preview box
    # The event loop kept turning: from the first step on (the click itself, and torch's one-off
    # imports when the first optimiser is made, come before it), a 50 ms timer never waited more
    # than 150 ms, previews included.
    running = [t for t, p in ticks if p is not None and p.step >= 1]
    gaps = np.diff(running)
    print(f"training: {len(gaps)} gaps, max {gaps.max():.3f} s, 99th percentile {np.percentile(gaps, 99):.3f} s")
    assert len(gaps) > 20 and gaps.max() <= 0.15, f"GUI blocked for {gaps.max():.3f} s"
    assert widget.segment_btn.isEnabled() and widget.train_btn.isEnabled()


def test_stop_ends_training_within_a_step_and_keeps_model_usable(spoco, qtbot):
    viewer, widget = spoco
    widget.sync = False
    widget.steps_spin.setValue(100_000)
    widget.train_btn.click()
    qtbot.waitUntil(lambda: widget.last_progress is not None and widget.last_progress.step >= 3, timeout=60_000)
    clicked = time.perf_counter()
    widget.stop_btn.click()
    qtbot.waitUntil(lambda: not widget._training, timeout=20_000)
    assert time.perf_counter() - clicked < 5
    steps = widget.last_progress.step
    assert 3 <= steps < 100_000 and widget.model is not None
    widget.sync = True
    widget.segment_btn.click()
    labels = viewer.layers["nuclei instances"].data
    assert labels.shape == (256, 256) and labels.dtype in (np.uint16, np.uint32)


def test_train_segment_promote_evaluate_export(spoco, qtbot, tmp_path, notes):
    viewer, widget = spoco
    widget.steps_spin.setValue(40)
    widget.train_btn.click()
    assert widget.last_progress.step == 40 and not notes["error"]

    widget.embedding_check.setChecked(True)
    widget.segment_btn.click()
    result = viewer.layers["nuclei instances"]
    assert result.data.shape == (256, 256) and result.data.max() >= 2
    assert viewer.layers["nuclei embeddings (PCA)"].data.shape == (256, 256, 3)
    assert widget.result_box.layer().name == result.name and "instances" in widget.segment_label.text()

    sparse = viewer.layers["nuclei sparse labels"]
    before = sparse.data.copy()
    n_promoted = widget.promote(selected_only=False)
    after = sparse.data
    assert n_promoted >= 1
    assert np.array_equal(after[before > 0], before[before > 0])  # painting is never overwritten
    assert len(np.unique(after)) == len(np.unique(before)) + n_promoted
    assert after.max() < 65535

    viewer.open_sample("napari-spoco", "heldout_nuclei")
    widget.image_box.setCurrentText("nuclei (held out)")
    widget.segment_btn.click()
    widget.result_box.setCurrentText("nuclei (held out) instances")
    widget.gt_box.setCurrentText("nuclei (held out) ground truth")
    assert widget.evaluate_btn.isEnabled()
    scores = widget.evaluate()
    assert 0.0 <= scores["AP50"] <= 1.0 and "AP50" in widget.eval_label.text()

    widget.export_box.setCurrentText("nuclei instances")
    out = tmp_path / "instances.tif"
    assert widget.export_labels(str(out))
    back = tifffile.imread(out)
    assert np.array_equal(back, result.data) and back.dtype == np.uint16
    # An existing file is only replaced after the user confirms.
    out.write_bytes(b"keep me")
    widget._confirm = lambda question: False
    assert not widget.export_labels(str(out)) and out.read_bytes() == b"keep me"
    widget._confirm = lambda question: True
    assert widget.export_labels(str(out)) and np.array_equal(tifffile.imread(out), result.data)


def test_save_and_load_model_round_trip(spoco, tmp_path, notes):
    viewer, widget = spoco
    widget.steps_spin.setValue(3)
    widget.train_btn.click()
    steps = widget.model.history["steps"]
    path = tmp_path / "m.spoco.pt"
    assert widget.save_model_to(str(path)) and path.exists()
    widget.new_model()
    assert widget.model is None and not widget.segment_btn.isEnabled()
    assert widget.load_model_from(str(path))
    assert widget.model.history["steps"] == steps and widget.segment_btn.isEnabled()
    assert widget.model_source == "m.spoco.pt"


def test_bad_inputs_become_notifications_and_keep_labels_and_model(spoco, tmp_path, notes):
    viewer, widget = spoco
    sparse = viewer.layers["nuclei sparse labels"]
    # One painted object only.
    one = np.where(sparse.data == sparse.data.max(), sparse.data, 0)
    sparse.data = one
    widget.train_btn.click()
    assert notes["error"] and "at least two objects" in notes["error"][-1]
    assert np.array_equal(sparse.data, one) and widget.model is None and not widget._training
    # Labels of the wrong shape.
    viewer.add_labels(np.zeros((10, 10), np.uint32), name="wrong")
    widget.labels_box.setCurrentText("wrong")
    widget.train_btn.click()
    assert "does not match" in notes["error"][-1] or "has shape" in notes["error"][-1]
    # A file that is not a SPOCO model; the current model survives.
    widget.model = SpocoModel.new(ModelConfig(ndim=2))
    kept = widget.model
    bad = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, bad)
    assert not widget.load_model_from(str(bad))
    assert widget.model is kept and notes["error"][-1]
    assert "Traceback" not in notes["error"][-1]
    # A 3D model cannot segment a 2D image: message, no crash.
    widget.model = SpocoModel.new(ModelConfig(ndim=3))
    widget._update_buttons()
    assert widget.segment_btn.isEnabled()
    widget.segment_btn.click()
    assert "3D model" in notes["error"][-1] and not widget._segmenting


def test_3d_volume_trains_and_segments_in_3d(spoco, notes):
    viewer, widget = spoco
    zz, yy, xx = np.mgrid[:16, :40, :40]
    truth = np.zeros((16, 40, 40), np.uint32)
    for i, (z, y, x) in enumerate([(8, 10, 10), (8, 28, 12), (8, 20, 30)], start=1):
        truth[(zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 < 25] = i
    volume = (truth > 0) * 100.0 + np.random.default_rng(0).normal(10, 3, truth.shape)
    viewer.add_image(volume.astype(np.float32), name="vol")
    widget.image_box.setCurrentText("vol")
    assert widget.series_check.isEnabled() and not widget.series_check.isChecked()
    layer = widget.new_sparse_labels()
    layer.data = np.where(truth <= 2, truth, 0).astype(np.uint32)
    widget.all_pairs_check.setChecked(False)
    widget.steps_spin.setValue(3)
    widget.train_btn.click()
    assert not notes["error"], notes["error"]
    assert widget.model.config.ndim == 3
    widget.segment_btn.click()
    assert viewer.layers["vol instances"].data.shape == (16, 40, 40)


def test_time_series_is_trained_and_segmented_frame_by_frame(spoco, notes):
    viewer, widget = spoco
    stack = np.stack([viewer.layers["nuclei"].data[:64, :64]] * 3)
    viewer.add_image(stack, name="movie", axis_labels=("t", "y", "x"))
    widget.image_box.setCurrentText("movie")
    assert widget.series_check.isChecked()  # guessed from the axis name
    sparse = widget.new_sparse_labels()
    frame = viewer.layers["nuclei sparse labels"].data[:64, :64]
    data = np.zeros(stack.shape, np.uint32)
    data[1] = frame
    if len(np.unique(frame)) < 3:  # make sure two objects are painted in frame 1
        data[1, 5:15, 5:15], data[1, 40:50, 40:50] = 1, 2
    sparse.data = data
    widget.all_pairs_check.setChecked(False)
    widget.steps_spin.setValue(3)
    widget.train_btn.click()
    assert not notes["error"], notes["error"]
    assert widget.model.config.ndim == 2
    widget.segment_btn.click()
    result = viewer.layers["movie instances"].data
    assert result.shape == stack.shape
    ids = [set(np.unique(result[t])) - {0} for t in range(3)]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])  # ids unique across frames


def test_rgb_image_is_accepted(spoco, notes):
    viewer, widget = spoco
    grey = viewer.layers["nuclei"].data
    rgb = np.stack([grey, grey, grey], axis=-1).astype(np.uint8)
    viewer.add_image(rgb, name="rgb", rgb=True)
    widget.image_box.setCurrentText("rgb")
    sparse = widget.new_sparse_labels()
    assert sparse.data.shape == grey.shape
    sparse.data = viewer.layers["nuclei sparse labels"].data.astype(np.uint32)
    widget.steps_spin.setValue(3)
    widget.train_btn.click()
    widget.segment_btn.click()
    assert not notes["error"], notes["error"]
    assert viewer.layers["rgb instances"].data.shape == grey.shape


def test_large_objects_train_and_segment_at_a_smaller_scale(spoco, notes):
    viewer, widget = spoco
    from napari_spoco.scaling import auto_scale

    big = np.kron(viewer.layers["nuclei"].data, np.ones((3, 3), np.uint8))  # painted nuclei ~48 px
    sparse = np.kron(viewer.layers["nuclei sparse labels"].data, np.ones((3, 3), np.uint8))
    viewer.layers.clear()  # train on the enlarged pair alone
    viewer.add_image(big, name="big")
    viewer.add_labels(sparse.astype(np.uint32), name="big sparse")
    widget.image_box.setCurrentText("big")
    widget.labels_box.setCurrentText("big sparse")
    widget.steps_spin.setValue(3)
    widget.train_btn.click()
    assert not notes["error"], notes["error"]
    assert widget.model.pixel_scale == auto_scale([sparse], widget.train_config().background_label) < 1.0
    assert "scale" in widget.model_label.text()
    widget.segment_btn.click()
    assert not notes["error"], notes["error"]
    assert viewer.layers["big instances"].data.shape == big.shape


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
    assert widget.model is None and not widget.train_btn.isEnabled() and not widget.segment_btn.isEnabled()


def test_first_train_fine_tunes_the_shipped_model_and_new_starts_from_scratch(spoco, notes):
    from napari_spoco.pretrained import load_default_model

    viewer, widget = spoco
    shipped_steps = load_default_model(2).history["steps"]
    assert widget.model is None and "shipped" in widget.model_label.text()
    widget.steps_spin.setValue(2)
    widget.train_btn.click()
    assert widget.model_source == "shipped default, fine-tuned" and widget.model.history["steps"] == shipped_steps + 2
    widget._confirm = lambda question: True  # "discard the unsaved training?" — yes
    widget.new_model()
    assert "new network" in widget.model_label.text()
    widget.train_btn.click()
    assert widget.model.history["steps"] == 2 and not notes["error"]


def test_default_button_segments_without_any_training(spoco):
    viewer, widget = spoco
    widget.default_model_btn.click()
    assert widget.segment_btn.isEnabled()
    widget.segment_btn.click()
    assert viewer.layers["nuclei instances"].data.max() >= 10


def test_adapt_trains_without_labels_and_keeps_the_labels(spoco, notes):
    viewer, widget = spoco
    sparse = viewer.layers["nuclei sparse labels"]
    painted = sparse.data.copy()
    widget.labels_box.setCurrentText(sparse.name)
    widget.steps_spin.setValue(2)
    widget.adapt_btn.click()
    assert not notes["error"], notes["error"]
    assert widget.last_progress.step == 2
    assert set(k for k, v in widget.last_progress.losses.items() if v > 0) == {"consistency", "foreground", "total"}
    assert np.array_equal(sparse.data, painted) and widget.model_source.startswith("shipped default")


def test_unsaved_training_is_not_discarded_without_asking(spoco, tmp_path):
    viewer, widget = spoco
    widget.steps_spin.setValue(2)
    widget.train_btn.click()
    trained = widget.model
    asked = []
    widget._confirm = lambda question: asked.append(question) or False
    widget.default_model_btn.click()
    widget.new_model()
    assert not widget.load_model_from(str(tmp_path / "any.spoco.pt"))
    assert widget.model is trained and len(asked) == 3 and "not been saved" in asked[0]
    assert widget.save_model_to(str(tmp_path / "kept.spoco.pt"))
    widget.new_model()  # saved: no question
    assert widget.model is None and len(asked) == 3
