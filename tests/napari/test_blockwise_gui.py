"""Images larger than memory in the dock widget: a dask-backed (or very large) image layer is
segmented block by block in the worker into a lazy, zarr-backed Labels layer without ever being
loaded whole; Stop deletes the partial store; Export writes such a layer as zarr; the layer's
scale reaches segmentation and training as the voxel size."""

import sys

import dask.array as da
import numpy as np
import pytest
import zarr
from qtpy.QtCore import QThreadPool
from scipy import ndimage

from napari_spoco import out_of_core
from napari_spoco._napari import workers
from napari_spoco._napari.layers import EDITED_KEY
from napari_spoco._napari.state import ModelSource
from napari_spoco.out_of_core import STORE_KEY
from napari_spoco.pretrained import load_default_model

BLOCKS = (128, 192)  # a (256, 384) image: 2 x 2 blocks


@pytest.fixture
def notes(notes, monkeypatch):
    """conftest's notes, with the block-wise module's notifications too."""
    from napari_spoco._napari import blockwise_run

    for kind in notes:
        monkeypatch.setattr(blockwise_run, f"show_{kind}", lambda msg, kind=kind: notes[kind].append(str(msg)))
    return notes


@pytest.fixture
def big(spoco, choose, tmp_path, monkeypatch):
    """A (256, 384) dask-backed image layer 'big' (the sample's nuclei, widened), chosen in the
    panel, with the shipped 2D model; block-wise results go to tmp_path. It stands for a lazy
    image too large to read whole (smaller ones are: out_of_core.LAZY_IN_MEMORY_PIXELS)."""
    from napari_spoco import out_of_core

    monkeypatch.setattr(out_of_core, "LAZY_IN_MEMORY_PIXELS", 0)
    viewer, widget = spoco
    nuclei = np.asarray(viewer.layers["nuclei"].data)
    image = np.hstack([nuclei, nuclei[:, :128]])
    viewer.add_image(da.from_array(image, chunks=(64, 64)), name="big")
    choose(widget.data_panel.image_box, "big")
    widget.state.model.use(load_default_model(2), ModelSource.DEFAULT)
    widget.state.stores.parent = tmp_path
    widget.segment_panel.blockwise.block_shape = BLOCKS
    return viewer, widget, image


def cheap_segmenter(monkeypatch, gate=None):
    """Blocks segmented by thresholding instead of the network (segment_blockwise's test
    stand-in); with ``gate``, every block after the first waits for it."""
    calls = []
    run = workers.segment_blockwise

    def segmenter(data):
        calls.append(data.shape)
        if gate is not None and len(calls) > 1:
            gate.wait(30)
        return ndimage.label(data > np.percentile(data, 80))[0]

    monkeypatch.setattr(workers, "segment_blockwise", lambda *a, **k: run(*a, _segmenter=segmenter, **k))
    return calls


def wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: widget.state.job.idle, timeout=60_000)
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=10_000)


def _from_our_code() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if "napari_spoco" in frame.f_code.co_filename and "tests" not in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def test_a_dask_image_is_segmented_block_by_block_into_a_lazy_layer(big, notes, monkeypatch):
    viewer, widget, image = big
    panel = widget.segment_panel
    computed = []  # pixels of every compute of the image's arrays that our code asked for
    compute = da.Array.compute

    def guarded(self, *args, **kwargs):
        if self.dtype == image.dtype and _from_our_code():
            computed.append(int(np.prod(self.shape)))
            if self.shape == image.shape:
                raise AssertionError("the whole image was computed")
        return compute(self, *args, **kwargs)

    monkeypatch.setattr(da.Array, "compute", guarded)
    seen, formats, blockwise = [], [], workers.segment_blockwise
    monkeypatch.setattr(workers, "segment_blockwise", lambda *a, **k: formats.append(k["precision"]) or blockwise(*a, **k))
    panel.precision_box.setCurrentText("float32")
    panel.blockwise.progressed.connect(lambda done, total: seen.append((done, total)))
    panel.segment_btn.click()

    assert not notes["error"], notes
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)] and formats == ["float32"]  # the panel's number format
    assert computed and max(computed) < image.size  # regions only, never the whole image
    layer = viewer.layers["big instances"]
    assert isinstance(layer.data, da.Array) and layer.data.shape == image.shape  # lazy
    store = layer.metadata[STORE_KEY]
    assert zarr.open_array(store, mode="r").shape == image.shape
    labels = np.asarray(layer.data)
    n = int(labels.max())
    assert n > 10 and f"{n} instances in 4 blocks" in panel.segment_label.text()
    assert tuple(layer.scale) == tuple(viewer.layers["big"].scale)
    assert not panel.busy_bar.isVisible() and not panel.stop_btn.isEnabled() and panel.segment_btn.isEnabled()
    assert "block-wise" in panel.suggest_row.label.text() and not panel.suggest_row.suggest_btn.isEnabled()
    assert widget.export_panel.export_btn.text() == "Export zarr…"  # the result is chosen for export


def test_a_threaded_run_with_the_real_model_finishes_and_adds_the_layer(big, qtbot, notes):
    """In a real napari worker (a Qt thread-pool thread), with the network: the run used to
    leave its copy of the model in the thread's local storage, and freeing it when the thread
    ended aborted the whole process (double free)."""
    viewer, widget, image = big
    widget.sync = False
    widget.segment_panel.segment_btn.click()
    wait_idle(qtbot, widget)
    widget.sync = True
    qtbot.wait(200)  # the pool thread ends after the job: the crash came then
    assert not notes["error"], notes
    assert np.asarray(viewer.layers["big instances"].data).max() > 10


def test_stop_deletes_the_partial_store_and_keeps_the_panel_usable(big, qtbot, notes, monkeypatch):
    import threading

    viewer, widget, _ = big
    panel = widget.segment_panel
    gate = threading.Event()
    cheap_segmenter(monkeypatch, gate)
    widget.sync = False
    panel.segment_btn.click()
    qtbot.waitUntil(lambda: panel.busy_bar.value() >= 1, timeout=30_000)  # one block done, the next waits
    assert panel.stop_btn.isEnabled() and not panel.segment_btn.isEnabled()
    assert len(widget.state.stores.stores()) == 1  # being written
    panel.stop_btn.click()
    gate.set()
    wait_idle(qtbot, widget)
    assert "big instances" not in viewer.layers
    assert list(widget.state.stores.root.iterdir()) == []  # no store, no scratch folder
    assert any("stopped" in m for m in notes["info"]) and not notes["error"], notes
    assert "stopped" in panel.segment_label.text()
    assert panel.segment_btn.isEnabled() and not panel.stop_btn.isEnabled() and not panel.busy_bar.isVisible()
    widget.sync = True  # usable: the next segmentation runs to the end
    panel.segment_btn.click()
    assert "big instances" in viewer.layers and len(widget.state.stores.stores()) == 1


def test_a_multiscale_result_exports_as_zarr_and_in_memory_uses_refuse(big, tmp_path, notes, monkeypatch, choose):
    from napari_spoco._napari.writers import write_labels_zarr

    viewer, widget, image = big
    full = viewer.layers["big"].data
    viewer.add_image([full, full[::2, ::2]], name="pyramid", multiscale=True)
    choose(widget.data_panel.image_box, "pyramid")
    cheap_segmenter(monkeypatch)
    widget.segment_panel.segment_btn.click()
    layer = viewer.layers["pyramid instances"]
    assert layer.multiscale and [lvl.shape for lvl in layer.data] == [image.shape, (128, 192)]  # the image's levels
    export = widget.export_panel
    assert export.export_box.value.name == "pyramid instances" and export.export_btn.text() == "Export zarr…"
    assert export.export_labels(str(tmp_path / "out"))
    written = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert np.array_equal(written[...], np.asarray(layer.data[0])) and written[...].max() > 0
    # never over the store the layer reads
    store = layer.metadata[STORE_KEY]
    assert not export.export_labels(store) and "which a layer reads" in notes["error"][-1]
    assert np.array_equal(zarr.open_array(store, mode="r")[...], written[...])
    # File > Save Selected Layers with a .zarr name
    assert write_labels_zarr(str(tmp_path / "saved.zarr"), layer.data, {"metadata": layer.metadata,
                                                                        "multiscale": True})
    assert np.array_equal(zarr.open_array(str(tmp_path / "saved.zarr"), mode="r")[...], written[...])
    # what needs the labels in memory refuses a lazy layer larger than memory, and says what to do
    monkeypatch.setattr(out_of_core, "MAX_IN_MEMORY_PIXELS", 1000)
    choose(widget.correct_panel.result_box, "pyramid instances")
    assert widget.correct_panel.promote(selected_only=False) == 0
    assert "too large to load into memory" in notes["error"][-1] and "cropped copy" in notes["error"][-1]
    assert not export.export_labels(str(tmp_path / "big.tif")) and "export it as .zarr" in notes["error"][-1]
    # a multiscale result takes no new data in place: Segment again replaces the layer, and while
    # it is the chosen sparse labels, the numbered result beside it (results do not pile up)
    n_layers = len(viewer.layers)
    widget.segment_panel.segment_btn.click()
    assert len(viewer.layers) == n_layers and viewer.layers["pyramid instances"] is not layer
    layer = viewer.layers["pyramid instances"]
    choose(widget.data_panel.labels_box, "pyramid instances")
    widget.segment_panel.segment_btn.click()
    widget.segment_panel.segment_btn.click()
    assert len(viewer.layers) == n_layers + 1 and viewer.layers["pyramid instances"] is layer


def test_layer_scale_is_the_voxel_size_of_segment_and_train(spoco, notes, monkeypatch, choose, balls, tmp_path):
    viewer, widget = spoco
    segmented, trained = [], []

    def fake_segment(model, image, config=None, voxel_size=None, return_embedding=False, **kwargs):
        segmented.append(voxel_size)
        labels = np.zeros(image.shape, np.uint16)
        return (labels, None) if return_embedding else labels

    def fake_train(images, labels, config, *args, **kwargs):
        trained.append((config.voxel_size, widget.train_panel.train_label.text()))
        return None
        yield

    monkeypatch.setattr(workers, "segment", fake_segment)
    monkeypatch.setattr(workers, "iter_train", fake_train)
    widget.state.model.use(load_default_model(2), ModelSource.DEFAULT)
    widget.segment_panel.segment_btn.click()  # the sample's scale is all ones: nothing changes
    assert segmented == [None] and "voxel size" not in widget.segment_panel.segment_label.text()

    volume, truth = balls
    viewer.add_image(volume, name="vol", scale=(2.0, 0.5, 0.5))
    choose(widget.data_panel.image_box, "vol")
    sparse = widget.data_panel.new_sparse_labels()
    sparse.data = truth.astype(sparse.data.dtype)
    widget.data_panel.all_pairs_check.setChecked(False)
    widget.state.model.use(load_default_model(3), ModelSource.DEFAULT)
    widget.segment_panel.segment_btn.click()
    assert segmented[-1] == (2.0, 0.5, 0.5)
    assert "voxel size 2 × 0.5 × 0.5 (the layer's scale; resampled z ×4)" in widget.segment_panel.segment_label.text()
    widget.train_panel.train_btn.click()
    (voxel, message), = trained
    assert voxel == (2.0, 0.5, 0.5) and "Training at voxel size 2 × 0.5 × 0.5" in message

    # a numpy image above the in-memory limit goes block by block, with the same voxel size
    seen = []
    cheap_segmenter(monkeypatch)
    run = workers.segment_blockwise
    monkeypatch.setattr(workers, "segment_blockwise", lambda *a, **k: seen.append(k["voxel_size"]) or run(*a, **k))
    monkeypatch.setattr(out_of_core, "MAX_IN_MEMORY_PIXELS", 1000)
    widget.state.stores.parent = tmp_path
    widget.segment_panel.blockwise.block_shape = (8, 20, 20)
    widget.segment_panel.segment_btn.click()
    assert seen == [(2.0, 0.5, 0.5)] and not notes["error"], notes
    layer = next(lay for lay in viewer.layers if lay.metadata.get(STORE_KEY))  # the in-memory result is kept
    assert isinstance(layer.data, da.Array) and tuple(layer.scale) == (2.0, 0.5, 0.5)
    assert "in 8 blocks" in widget.segment_panel.segment_label.text()


def test_train_estimates_the_voxel_size_of_a_flat_looking_volume_and_says_so(spoco, notes, monkeypatch, choose, balls):
    viewer, widget = spoco
    trained = []

    def fake_train(images, labels, config, *args, **kwargs):
        trained.append((config.voxel_size, widget.train_panel.train_label.text()))
        return None
        yield

    monkeypatch.setattr(workers, "iter_train", fake_train)
    volume, truth = balls
    viewer.add_image(volume[::3], name="flat")  # every third slice, and a scale of ones
    choose(widget.data_panel.image_box, "flat")
    sparse = widget.data_panel.new_sparse_labels()
    sparse.data = truth[::3].astype(sparse.data.dtype)
    widget.data_panel.all_pairs_check.setChecked(False)
    widget.state.model.use(load_default_model(3), ModelSource.DEFAULT)
    widget.train_panel.train_btn.click()
    (voxel, message), = trained
    assert voxel is None  # training makes the estimate itself, and records it as estimated
    assert "(estimated; resampled z ×" in message and "flatter along z than across: z-step taken as" in message
    assert "set the image layer's scale to the real voxel size to overrule it" in message, message


def test_a_small_dask_image_is_read_whole_and_keeps_suggestions(spoco, choose, notes):
    """A lazy layer that fits many times over is segmented in memory, as if it were numpy: the
    result is an ordinary Labels layer and Suggest next works (block-wise keeps no embedding)."""
    viewer, widget = spoco
    nuclei = np.asarray(viewer.layers["nuclei"].data)
    viewer.add_image(da.from_array(nuclei, chunks=(64, 64)), name="small lazy")
    choose(widget.data_panel.image_box, "small lazy")
    widget.state.model.use(load_default_model(2), ModelSource.DEFAULT)
    widget.segment_panel.segment_btn.click()
    result = viewer.layers["small lazy instances"]
    assert isinstance(result.data, np.ndarray) and result.data.shape == nuclei.shape and result.data.max() >= 2
    assert widget.segment_panel.suggest_row.suggest_btn.isEnabled(), widget.segment_panel.suggest_row.suggest_btn.toolTip()
    assert not notes["error"] and not notes["warning"], notes


def test_a_block_wise_result_chosen_as_sparse_labels_is_not_replaced(big, notes, monkeypatch, choose):
    viewer, widget, _ = big
    cheap_segmenter(monkeypatch)
    widget.segment_panel.segment_btn.click()
    first = viewer.layers["big instances"]
    store = first.metadata[STORE_KEY]
    widget.segment_panel.segment_btn.click()  # not chosen: updated in place, as before
    assert viewer.layers["big instances"] is first and first.metadata[STORE_KEY] != store
    store = first.metadata[STORE_KEY]
    choose(widget.data_panel.labels_box, "big instances")
    n_layers = len(viewer.layers)
    widget.segment_panel.segment_btn.click()
    assert len(viewer.layers) == n_layers + 1 and first.metadata[STORE_KEY] == store
    assert zarr.open_array(store, mode="r").shape == first.data.shape  # its store is kept: the layer reads it
    assert "is the chosen sparse-labels layer" in notes["info"][-1] and not notes["error"], notes


def test_a_block_wise_result_painted_on_is_not_replaced(big, notes, monkeypatch):
    """A block-wise result has no cheap fingerprint: a stroke on it is what marks it edited, and
    the next block-wise Segment then leaves it (and the store it reads) alone."""
    viewer, widget, _ = big
    cheap_segmenter(monkeypatch)
    widget.segment_panel.segment_btn.click()
    first = viewer.layers["big instances"]
    first.paint((5, 5), 999)  # a brush stroke, as napari's paint tool makes it
    assert first.metadata[EDITED_KEY] is True
    store = first.metadata[STORE_KEY]
    n_layers = len(viewer.layers)
    widget.segment_panel.segment_btn.click()
    assert len(viewer.layers) == n_layers + 1 and first.metadata[STORE_KEY] == store
    assert zarr.open_array(store, mode="r").shape == first.data.shape  # its store is kept: the layer reads it
    assert "was edited since it was segmented" in notes["info"][-1] and not notes["error"], notes
    newer = viewer.layers[-1]
    assert newer is not first and newer.metadata[EDITED_KEY] is False
    store = newer.metadata[STORE_KEY]
    widget.segment_panel.segment_btn.click()  # the newer result, unedited, is updated in place
    assert len(viewer.layers) == n_layers + 1 and newer.metadata[STORE_KEY] != store


def test_export_puts_back_a_store_an_interrupted_export_left_hidden(big, tmp_path, notes, monkeypatch):
    """An export that replaced a store and died between its renames left the user's store hidden
    beside its path: the next export to that path puts it back first, and asks before replacing it."""
    import subprocess

    viewer, widget, _ = big
    cheap_segmenter(monkeypatch)
    widget.segment_panel.segment_btn.click()
    export = widget.export_panel
    target = tmp_path / "out.zarr"
    assert export.export_labels(str(target)) and target.exists()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a process id that no longer runs
    target.rename(tmp_path / f".out.zarr.old-{child.pid}")
    asked = []
    widget.state.confirm = lambda question: asked.append(question) or False
    assert not export.export_labels(str(target))
    assert target.exists() and not (tmp_path / f".out.zarr.old-{child.pid}").exists()
    assert any("was interrupted; its previous store was put back" in n for n in notes["info"]), notes
    assert asked == [f"{target} exists. Replace it?"] and "nothing was overwritten" in notes["info"][-1]


def test_a_copy_of_a_block_wise_result_or_one_mid_stroke_is_not_replaced(big, notes, monkeypatch):
    """napari's Duplicate Layer copies the metadata (a result's marks) but not the watch on its
    edits: a copy the user corrects must not be taken for Segment's own result. And napari
    reports a drag only when the mouse is released: a result being painted is kept too."""
    viewer, widget, _ = big
    cheap_segmenter(monkeypatch)
    widget.segment_panel.segment_btn.click()
    first = viewer.layers["big instances"]
    copy = viewer.add_labels(first.data, name="big instances copy", metadata=dict(first.metadata))
    copy.paint((5, 5), 999)  # not watched: no mark, but a copy all the same
    store = copy.metadata[STORE_KEY]
    viewer.layers.remove(first)
    widget.segment_panel.segment_btn.click()
    assert copy.metadata[STORE_KEY] == store and viewer.layers["big instances"] is not copy
    assert int(np.asarray(copy.data)[5, 5]) == 999 and not notes["error"], notes
    current = viewer.layers["big instances"]
    current._staged_history.append(((np.array([5]), np.array([5])), np.array([0]), 7))  # a drag under way
    n_layers = len(viewer.layers)
    widget.segment_panel.segment_btn.click()
    assert len(viewer.layers) == n_layers + 1 and "was edited since it was segmented" in notes["info"][-1]
    current._staged_history.clear()
