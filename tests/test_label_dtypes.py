"""One rule for the dtype of label images (label_dtypes.py), followed wherever labels are made."""

import numpy as np
import pytest
import tifffile

from napari_spoco.label_dtypes import EDITABLE_LABELS_DTYPE, as_label_image, label_dtype


@pytest.mark.parametrize("max_id, dtype", [
    (0, np.uint16), (65_535, np.uint16), (65_536, np.uint32), (2**32 - 1, np.uint32), (2**32, np.uint64),
])
def test_the_smallest_unsigned_type_that_holds_the_largest_id(max_id, dtype):
    assert label_dtype(max_id) == dtype and label_dtype(np.int64(max_id)) == dtype
    labels = np.array([[0, max_id]], dtype=np.int64)
    out = as_label_image(labels)
    assert out.dtype == dtype and np.array_equal(out, labels)
    assert as_label_image(np.zeros((0, 3), np.int64)).dtype == np.uint16  # empty: no id at all


def test_layers_written_into_in_place_hold_any_id_a_user_makes():
    assert EDITABLE_LABELS_DTYPE == np.uint32


def test_written_label_files_relabelled_and_empty_results_follow_the_rule(tmp_path):
    from napari_spoco.clustering import ClusterConfig, cluster_embeddings
    from napari_spoco.data import relabel_sequential
    from napari_spoco.io import write_labels

    many = np.arange(70_000, dtype=np.int64).reshape(280, 250)  # ids up to 69 999
    assert tifffile.imread(write_labels(tmp_path / "many.tif", many)).dtype == np.uint32
    assert tifffile.imread(write_labels(tmp_path / "few.tif", many % 100)).dtype == np.uint16
    for labels in (many, many % 100, many * 3):
        out = relabel_sequential(labels)
        assert out.dtype == label_dtype(out.max())
    empty = cluster_embeddings(np.zeros((2, 16, 16), np.float32), np.zeros((16, 16), np.float32), ClusterConfig())
    assert empty.dtype == label_dtype(0) and not empty.any()


def test_segmentations_follow_the_rule(tiny_pair):
    from napari_spoco.model import ModelConfig, SpocoModel
    from napari_spoco.segmentation import segment, segment_series

    image, _, _ = tiny_pair
    model = SpocoModel.new(ModelConfig(ndim=2))
    labels = segment(model, image, device="cpu")
    assert labels.dtype == label_dtype(labels.max())
    model.history["pixel_scale"] = 0.5
    labels = segment(model, image, device="cpu")
    assert labels.dtype == label_dtype(labels.max())
    series = segment_series(model, np.stack([image, image]), device="cpu")
    assert series.dtype == label_dtype(series.max())
