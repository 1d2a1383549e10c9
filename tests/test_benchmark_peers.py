"""The benchmark's pixel-classifier peer (benchmarks/peers.py) on tiny synthetic images.

The peer is what SPOCO's accuracy is compared with, so it must do its job: learn from two
painted discs and find the unpainted third, and split touching objects by their distance
transform. A few seconds; skipped without scikit-learn.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"
if not _PATH.is_file():
    pytest.skip("benchmarks/ is not part of this checkout", allow_module_level=True)
_spec = importlib.util.spec_from_file_location("benchmark_peers", _PATH)
peers = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = peers  # dataclasses look their module up there
_spec.loader.exec_module(peers)


def disc(shape, centre, radius):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_training_pixels_are_the_painted_objects_and_a_ring_around_them():
    sparse = np.zeros((40, 40), np.uint16)
    sparse[disc(sparse.shape, (20, 20), 6)] = 1
    inside, outside = peers.training_pixels(sparse)
    assert np.array_equal(inside, sparse > 0)
    assert not (inside & outside).any()
    ring_width = np.hypot(*(np.argwhere(outside) - 20).T).max() - 6
    assert 2 <= ring_width <= peers.RING + 1
    # pixels painted with a background value are class 0 as well, and not objects
    sparse[0:3, 0:3] = 9
    inside, outside = peers.training_pixels(sparse, background=9)
    assert outside[0:3, 0:3].all() and not inside[0:3, 0:3].any()


def test_forest_learns_two_painted_discs_and_finds_the_unpainted_third():
    rng = np.random.default_rng(0)
    shape = (96, 96)
    truth = np.zeros(shape, np.uint16)
    for i, centre in enumerate([(24, 24), (24, 72), (70, 48)], start=1):
        truth[disc(shape, centre, 10)] = i
    img = (100 + 800 * (truth > 0) + rng.normal(0, 60, shape)).astype(np.float32)
    sparse = np.where(truth < 3, truth, 0)  # discs 1 and 2 painted, disc 3 not

    feats = peers.forest_features(img)
    assert feats.shape[:2] == shape and feats.dtype == np.float32
    peer = peers.ForestPeer(seed=0).fit([feats], [sparse])
    assert peer.radius == pytest.approx(10, abs=1)
    labels = peer.segment(feats)

    third = truth == 3
    ids, counts = np.unique(labels[third], return_counts=True)
    best = ids[np.argmax(counts)]
    assert best != 0
    iou = np.logical_and(labels == best, third).sum() / np.logical_or(labels == best, third).sum()
    assert iou > 0.7
    assert len(np.unique(labels)) - 1 == 3


def test_touching_discs_are_split_by_the_distance_transform_watershed():
    shape = (60, 90)
    interior = disc(shape, (30, 30), 14) | disc(shape, (30, 56), 14)
    labels = peers.instances_from_interior(interior, radius=14, min_size=50)
    assert len(np.unique(labels)) - 1 == 2
    assert labels[30, 30] != labels[30, 56] and labels[30, 30] and labels[30, 56]
