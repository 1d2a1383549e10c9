"""Merging touching pieces with no boundary between them (boundaries.py)."""

import numpy as np
import pytest

from napari_spoco.boundaries import applies as boundaries_apply
from napari_spoco.boundaries import contact_foreground, merge_unseparated
from napari_spoco.clustering import ClusterConfig, cluster_embeddings
from napari_spoco.errors import SpocoError


def two_halves(shape=(40, 60)):
    """A box cut in two halves (ids 1 and 2), on background."""
    labels = np.zeros(shape, np.int64)
    labels[10:30, 10:30] = 1
    labels[10:30, 30:50] = 2
    return labels


def test_contact_foreground_is_the_mean_of_the_lower_side_along_the_contact():
    labels = two_halves()
    fg = np.full(labels.shape, 0.9)
    fg[:, 29] = 0.3  # the last column of piece 1: a dark seam
    pairs, contact = contact_foreground(labels, fg)
    assert pairs.tolist() == [[1, 2]]
    assert contact[0] == pytest.approx(0.3)
    assert contact_foreground(np.zeros((5, 5), int), np.ones((5, 5)))[0].shape == (0, 2)


@pytest.mark.parametrize("ndim", [2, 3])
def test_halves_without_a_boundary_merge_and_with_one_stay_apart(ndim):
    labels = two_halves()
    if ndim == 3:
        labels = np.stack([labels] * 4)
    fg = np.full(labels.shape, 0.9)
    merged = merge_unseparated(labels, fg, tolerance=0.05)
    assert set(np.unique(merged)) == {0, 1} and (merged > 0).sum() == (labels > 0).sum()
    seam = fg.copy()
    seam[..., 29:31] = 0.7  # a contact 0.2 darker than the insides: a boundary the head has seen
    assert np.array_equal(merge_unseparated(labels, seam, tolerance=0.05), labels)
    assert set(np.unique(merge_unseparated(labels, seam, tolerance=0.25))) == {0, 1}  # within tolerance


def test_chains_of_touching_pieces_take_one_id_and_others_are_untouched():
    labels = np.zeros((20, 80), np.int64)
    for i in range(4):  # 1|2|3 touch in a row; 4 stands apart
        labels[5:15, 5 + 15 * i: 20 + 15 * i] = i + 1
    labels[5:15, 50:65] = 0
    labels[5:15, 66:76] = 4
    out = merge_unseparated(labels, np.ones(labels.shape), 0.05)
    assert set(np.unique(out[labels > 0][labels[labels > 0] < 4])) == {1}
    assert set(np.unique(out[labels == 4])) == {4}


def embedding_split_in_two(shape=(64, 64), box=slice(4, 60)):
    """One square object whose embedding jumps across its middle (farther apart than δ_d): mean-shift
    and the embedding merge leave two pieces. With the default box it fills most of the image."""
    emb = np.zeros((2,) + shape, np.float32)
    emb[0, :, 32:] = 3.0
    fg = np.zeros(shape, np.float32)
    fg[box, box] = 0.95
    return emb, fg


def test_segmentation_merges_an_object_cut_by_its_embedding_where_objects_fill_the_image():
    emb, fg = embedding_split_in_two()
    assert (fg > 0.5).mean() > 0.5
    kw = dict(min_size=4, shape_split=False)
    assert cluster_embeddings(emb, fg, ClusterConfig(**kw)).max() == 1
    assert cluster_embeddings(emb, fg, ClusterConfig(boundary_merge=False, **kw)).max() == 2
    dark = fg.copy()
    dark[4:60, 31:33] = 0.6  # the head marks the contact: two objects
    assert cluster_embeddings(emb, dark, ClusterConfig(**kw)).max() == 2


def test_objects_on_background_are_left_to_the_embedding_and_the_shape():
    emb, fg = embedding_split_in_two(box=slice(16, 48))
    assert (fg > 0.5).mean() < 0.5
    assert not boundaries_apply(0.3) and boundaries_apply(0.7)
    assert cluster_embeddings(emb, fg, ClusterConfig(min_size=4, shape_split=False)).max() == 2


def test_config_refuses_unusable_values():
    with pytest.raises(SpocoError, match="boundary_merge"):
        ClusterConfig(boundary_merge="no")
    with pytest.raises(SpocoError, match="boundary_tolerance"):
        ClusterConfig(boundary_tolerance=-0.1)


def test_convex_merge_joins_halves_of_one_object_but_not_two_touching_discs():
    from napari_spoco.boundaries import merge_convex_unseparated

    yy, xx = np.mgrid[:40, :80]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 < 12**2
    halves = np.where(disc, np.where(xx < 20, 1, 2), 0)  # one disc cut in two by the embedding
    left = (yy - 20) ** 2 + (xx - 48) ** 2 < 10**2
    right = (yy - 20) ** 2 + (xx - 67) ** 2 < 10**2
    pair = np.where(left, 3, np.where(right, 4, 0))  # two discs touching at a waist
    labels = halves + pair
    fg = (labels > 0).astype(float)  # no dark contact anywhere: the head marks no boundary
    out = merge_convex_unseparated(labels, fg, 0.05, reference=0.9)
    assert out[20, 10] == out[20, 30]  # the halves are one convex object
    assert out[20, 48] != out[20, 67]  # the touching discs would make a waisted one
    dark = fg.copy()
    dark[:, 19:21] = 0.1  # a boundary learned between the halves: they stay apart
    kept = merge_convex_unseparated(labels, dark, 0.05, reference=0.9)
    assert kept[20, 10] != kept[20, 30]


def test_clustering_uses_the_convex_merge_only_where_the_model_recorded_the_median():
    from napari_spoco.clustering import ClusterConfig, cluster_embeddings

    yy, xx = np.mgrid[:60, :60]
    disc = (yy - 30) ** 2 + (xx - 30) ** 2 < 14**2
    emb = np.zeros((2, 60, 60), np.float32)
    emb[0][disc & (xx >= 30)] = 5.0  # far apart in the embedding: mean-shift gives two clusters
    fg = disc.astype(np.float32)
    base = dict(min_size=4, object_size=float(disc.sum()), shape_reference=0.8, layout="separate", fill_holes=False)
    two = cluster_embeddings(emb, fg, ClusterConfig(**base))
    one = cluster_embeddings(emb, fg, ClusterConfig(**base, convex_reference=0.9))
    off = cluster_embeddings(emb, fg, ClusterConfig(**base, convex_reference=0.9, boundary_merge=False))
    assert len(np.unique(two)) == 3 and len(np.unique(off)) == 3
    assert len(np.unique(one)) == 2
