"""What the panels must never do to a user's layers: overwrite corrected labels, pair labels
with the wrong image, or answer an unusual layer with a traceback (found by a read-only review,
2026-12-07; each test fails on the code before)."""

import numpy as np

from napari_spoco._napari.state import ModelSource
from napari_spoco.model import ModelConfig, SpocoModel


def _segment(viewer, widget):
    widget.segment_panel.segment_btn.click()
    return viewer.layers["nuclei instances"]


def test_segment_never_overwrites_a_corrected_result_or_the_chosen_sparse_labels(spoco, notes, choose):
    viewer, widget = spoco
    widget.model_panel.default_model_btn.click()
    result = _segment(viewer, widget)
    n_layers = len(viewer.layers)
    assert _segment(viewer, widget) is result and len(viewer.layers) == n_layers  # unedited: updated in place
    result.data[0:3, 0:3] = 999  # a correction by hand
    widget.segment_panel.segment_btn.click()
    assert (viewer.layers["nuclei instances"].data[0:3, 0:3] == 999).all() and len(viewer.layers) == n_layers + 1
    newer = viewer.layers[-1]
    assert newer.name != "nuclei instances" and newer.data.max() >= 10
    assert "was edited since it was segmented" in notes["info"][-1] and not notes["error"], notes
    assert f"layer '{newer.name}'" in widget.segment_panel.segment_label.text()
    # the next Segment updates that newer, unedited result: layers do not pile up
    widget.segment_panel.segment_btn.click()
    assert len(viewer.layers) == n_layers + 1 and f"layer '{newer.name}'" in widget.segment_panel.segment_label.text()
    # the newest result, unedited but chosen as the sparse labels, is not replaced either
    viewer.layers.remove("nuclei instances")
    newer.name = "nuclei instances"
    choose(widget.data_panel.labels_box, "nuclei instances")
    n_layers = len(viewer.layers)
    widget.segment_panel.segment_btn.click()
    assert len(viewer.layers) == n_layers + 1 and viewer.layers[-1].name != "nuclei instances"
    assert "is the chosen sparse-labels layer" in notes["info"][-1]
    # a layer of that name the user made is not Segment's to overwrite
    viewer.layers.remove("nuclei instances")
    for layer in [layer for layer in viewer.layers if layer.name.startswith("nuclei instances")]:
        viewer.layers.remove(layer)
    own = viewer.add_labels(np.ones(result.data.shape, np.uint16), name="nuclei instances")
    choose(widget.data_panel.labels_box, "nuclei sparse labels")
    widget.segment_panel.segment_btn.click()
    assert (own.data == 1).all() and "was not made by Segment" in notes["info"][-1]


def test_a_result_corrected_while_it_is_being_segmented_is_kept(spoco, notes, monkeypatch):
    """The check is made again when the result comes back: a long (3D) Segment runs in a thread
    while the user goes on correcting the earlier result."""
    from napari_spoco._napari import workers

    viewer, widget = spoco
    widget.model_panel.default_model_btn.click()
    result = _segment(viewer, widget)
    real = workers.segment_job

    def corrected_meanwhile(job):
        out = real(job)
        result.data[0:3, 0:3] = 999  # the user paints while the worker runs
        return out

    monkeypatch.setattr(workers, "segment_job", corrected_meanwhile)
    n_layers = len(viewer.layers)
    widget.segment_panel.segment_btn.click()
    assert (result.data[0:3, 0:3] == 999).all() and len(viewer.layers) == n_layers + 1
    assert "checked as the segmentation finished" in notes["info"][-1] and viewer.layers[-1].data.max() >= 10


def test_the_background_brush_on_an_8_bit_layer_says_what_to_do(spoco, notes, choose):
    viewer, widget = spoco
    layer = viewer.add_labels(np.zeros((256, 256), np.uint8), name="eight bit")  # napari's New labels default
    choose(widget.data_panel.labels_box, "eight bit")
    layer.selected_label = 3
    widget.data_panel.background_brush()  # the value is 65535 by default
    assert layer.selected_label == 3 and "at most 255" in notes["warning"][-1]
    widget.data_panel.bg_spin.setValue(200)
    widget.data_panel.background_brush()
    assert layer.selected_label == 200 and layer.mode == "paint"


def test_an_image_with_size_one_axes_gets_a_message_not_a_traceback(spoco, notes, choose):
    """An OME-Zarr field opened in napari keeps its size-1 T and C axes."""
    viewer, widget = spoco
    field = viewer.layers["nuclei"].data[:64, :64]
    viewer.add_image(field[None, None].astype(np.float32), name="ome", scale=(1, 1, 0.5, 0.5))
    choose(widget.data_panel.image_box, "ome")
    labels = widget.data_panel.new_sparse_labels()
    labels.data[0, 0, 2:10, 2:10] = 1
    labels.data[0, 0, 20:30, 20:30] = 2
    widget.train_panel.steps_spin.setValue(2)
    for button in (widget.train_panel.train_btn, widget.train_panel.adapt_btn):
        before = len(notes["error"])
        button.click()
        assert len(notes["error"]) == before + 1 and "has 4 axes" in notes["error"][-1], notes["error"]
        assert "[0, 0, :, :]" in notes["error"][-1] and not widget.state.job.training
    widget.state.model.use(SpocoModel.new(ModelConfig(ndim=2)), ModelSource.NEW)
    widget.segment_panel.segment_btn.click()
    assert "has 4 axes" in notes["error"][-1] and not widget.state.job.segmenting
    assert labels.data.max() == 2  # the painting is kept


def test_sparse_labels_follow_their_image_when_it_is_renamed_and_not_another_of_its_name(spoco, choose):
    viewer, widget = spoco
    data = widget.data_panel
    other = viewer.add_image(viewer.layers["nuclei"].data[::-1].copy(), name="second")
    choose(data.image_box, "second")
    painted = data.new_sparse_labels()
    painted.data[2:10, 2:10] = 1
    painted.data[20:30, 20:30] = 2
    other.name = "second, renamed"
    choose(data.image_box, "nuclei")
    choose(data.labels_box, "nuclei sparse labels")
    assert [image.name for image, _ in data.pairs()] == ["nuclei", "second, renamed"]
    choose(data.image_box, "second, renamed")
    assert data.labels.name == "second sparse labels"  # chosen with its image, renamed or not
    viewer.layers.remove("second, renamed")  # another image, opened under the same name
    viewer.add_image(viewer.layers["nuclei"].data.copy(), name="second, renamed")
    choose(data.image_box, "nuclei")
    choose(data.labels_box, "nuclei sparse labels")
    assert [image.name for image, _ in data.pairs()] == ["nuclei"]


def test_evaluate_reports_a_failure_instead_of_raising(spoco, notes, choose, monkeypatch):
    from napari_spoco._napari import correct_panel

    viewer, widget = spoco
    truth = viewer.add_labels(np.zeros((256, 256), np.uint16), name="truth")
    viewer.add_labels(np.zeros((256, 256), np.uint16), name="result")
    choose(widget.correct_panel.result_box, "result")
    choose(widget.correct_panel.gt_box, truth.name)

    def short_of_memory(*args):
        raise MemoryError("4.2 GiB")

    monkeypatch.setattr(correct_panel, "evaluate", short_of_memory)
    assert widget.correct_panel.evaluate() is None
    assert "Evaluating failed: MemoryError" in notes["error"][-1]
