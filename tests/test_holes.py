"""Holes inside instances (holes.py): enclosed background joins its object, nothing else does."""

import numpy as np

from napari_spoco.clustering import ClusterConfig, cluster_embeddings, postprocess
from napari_spoco.holes import fill_holes


def _nucleus_with_nucleolus(shape=(40, 40)) -> np.ndarray:
    lab = np.zeros(shape, np.uint16)
    lab[5:25, 5:25] = 1
    lab[12:16, 12:16] = 0  # a dark nucleolus called background
    return lab


def test_a_hole_enclosed_by_one_object_is_filled_and_the_input_kept():
    lab = _nucleus_with_nucleolus()
    out = fill_holes(lab)
    assert (out[12:16, 12:16] == 1).all()
    assert (lab[12:16, 12:16] == 0).all()  # the caller's array is not written into
    assert out.dtype == lab.dtype
    assert (out[30:, 30:] == 0).all()  # the background around the object stays


def test_the_only_background_of_a_tile_filled_by_one_object_is_its_hole():
    lab = np.ones((20, 20), np.uint16)  # a tile inside one large object
    lab[8:11, 8:11] = 0
    assert (fill_holes(lab) == 1).all()


def test_background_open_to_the_edge_or_between_two_objects_is_not_a_hole():
    lab = np.zeros((20, 30), np.uint16)
    lab[0:10, 0:10] = 1
    lab[0:3, 4:6] = 0  # a notch open to the image's top edge
    lab[:, 12:20] = 2
    lab[:, 20:28] = 3
    lab[8:11, 18:22] = 0  # enclosed, but by two objects: the contact between them
    out = fill_holes(lab)
    assert (out[0:3, 4:6] == 0).all()
    assert (out[8:11, 18:22] == 0).all()


def test_a_hole_larger_than_half_its_object_stays_open():
    ring = np.zeros((30, 30), np.uint16)
    ring[2:28, 2:28] = 1
    ring[5:25, 5:25] = 0  # 400 px inside a 276 px ring: not a nucleolus
    assert (fill_holes(ring) == ring).all()


def test_an_object_inside_another_is_kept():
    lab = _nucleus_with_nucleolus()
    lab[13:15, 13:15] = 2  # a small object in the hole: the hole now touches two objects
    out = fill_holes(lab)
    assert (out[13:15, 13:15] == 2).all()
    assert set(np.unique(out)) == {0, 1, 2}
    ring = lab[12:16, 12:16] == 0  # background between the two: touches both, so no one's hole
    assert ring.sum() == 12 and (out[12:16, 12:16][ring] == 0).all()


def test_3d_holes_open_above_are_filled_slice_by_slice():
    vol = np.zeros((6, 30, 30), np.uint16)
    vol[1:5, 5:25, 5:25] = 1
    vol[0:3, 12:16, 12:16] = 0  # reaches the volume's top: open in 3D, enclosed in slices 1-2
    before = vol.copy()
    out = fill_holes(vol)
    assert (out[1:3, 12:16, 12:16] == 1).all()
    assert (out[0] == 0).all()  # slice 0 holds no object
    assert (vol == before).all()  # the caller's volume is not written into


def test_postprocess_and_clustering_fill_holes_only_when_asked():
    lab = _nucleus_with_nucleolus()
    assert (postprocess(lab, min_size=4)[12:16, 12:16] == 0).all()
    assert (postprocess(lab, min_size=4, fill_holes=True)[12:16, 12:16] > 0).all()
    # through cluster_embeddings: one embedding, a foreground map with the nucleolus dark
    emb = np.zeros((2, 40, 40), np.float32)
    fg = (lab > 0).astype(np.float32)
    kept = cluster_embeddings(emb, fg, ClusterConfig(min_size=4, fill_holes=False, shape_split=False))
    filled = cluster_embeddings(emb, fg, ClusterConfig(min_size=4, shape_split=False))
    assert (kept[12:16, 12:16] == 0).all() and (filled[12:16, 12:16] == filled[10, 10]).all()
    assert filled[10, 10] > 0
