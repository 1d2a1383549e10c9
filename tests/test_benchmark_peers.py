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


def test_excess_green_finds_green_discs_on_brown_soil_of_the_same_brightness():
    rng = np.random.default_rng(1)
    shape = (80, 120)
    truth = np.zeros(shape, np.uint16)
    truth[disc(shape, (40, 30), 14)] = 1
    truth[disc(shape, (40, 88), 14)] = 2
    soil, leaf = np.array([120, 90, 60]), np.array([80, 125, 55])  # about one luminance
    rgb = np.where(truth[..., None] > 0, leaf, soil) + rng.normal(0, 6, shape + (3,))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    found = peers.classical(rgb, rgb=True)
    assert set(found) == {"blobs", "membranes", "excess-green"}
    labels = found["excess-green"]
    assert len(np.unique(labels)) - 1 == 2
    for i in (1, 2):
        hit = labels[truth == i]
        assert np.mean(hit == np.bincount(hit).argmax()) > 0.9 and np.bincount(hit).argmax() > 0


def test_generated_rosettes_are_colour_images_of_visible_numbered_leaves():
    leaves = _load("synthetic_leaves")
    image, mask = leaves.rosette(5, shape=(160, 160))
    again, _ = leaves.rosette(5, shape=(160, 160))
    assert image.shape == (160, 160, 3) and image.dtype == np.uint8 and np.array_equal(image, again)
    ids = np.unique(mask[mask > 0])
    assert np.array_equal(ids, np.arange(1, len(ids) + 1)) and len(ids) >= 6
    # leaves are greener than the soil around them
    green = image[..., 1].astype(float) - image[..., [0, 2]].mean(-1)
    assert green[mask > 0].mean() > green[mask == 0].mean() + 10
    # the benchmark's split: thirty plants to train on, ten others to score
    stems = leaves.stems()
    assert len(stems) == 40 and len(set(stems)) == 40


def _load(name: str):
    path = _PATH.parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_peers_on_cubic_voxels_read_back_every_voxel_and_split_flat_touching_balls():
    # labels taken to cubic voxels and back are unchanged, at integer and fractional z-steps
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 6, (7, 9, 8))
    for step in (4.0, 3.0, 2.24, 1.0):
        cubic = peers.to_cubic(labels, (step, 1, 1), labels=True)
        assert cubic.shape == (int(round(7 * step)), 9, 8)
        assert np.array_equal(peers.from_cubic(cubic, labels.shape, (step, 1, 1)), labels)
    # two touching balls of radius 8, sampled every 4 px along z (4 planes deep): split into two
    # on cubic voxels
    zz, yy, xx = np.meshgrid((np.arange(6) + 0.5) * 4, np.arange(40), np.arange(60), indexing="ij")
    ball = lambda cx: (zz - 12) ** 2 + (yy - 20) ** 2 + (xx - cx) ** 2 <= 64  # noqa: E731
    interior = ball(21) | ball(36)
    cubic = peers.to_cubic(interior.astype(np.uint8), (4, 1, 1), labels=True) > 0
    split = peers.from_cubic(peers.instances_from_interior(cubic, radius=8), interior.shape, (4, 1, 1))
    assert split.shape == interior.shape
    assert split[3, 20, 21] and split[3, 20, 36] and split[3, 20, 21] != split[3, 20, 36]


def test_generated_nuclei_variants_differ_from_the_set_in_sampling_and_size():
    nuclei = _load("synthetic_nuclei")
    base = nuclei.read("train", "masks")
    z4 = nuclei.Variant(nuclei.NAME + "-z4")
    image, mask = z4.read("train", "images"), z4.read("train", "masks")
    assert image.shape == mask.shape == (20, 160, 160) and image.dtype == np.uint16
    assert z4.stems() == nuclei.stems() == ["train", "test"]
    # the same physical nuclei at half the planes: about as many objects, half as deep in planes
    assert abs(int(mask.max()) - int(base.max())) <= 0.1 * base.max()
    large = nuclei.Variant(nuclei.NAME + "-large").read("test", "masks")
    sizes = np.bincount(large.ravel())[1:]
    assert np.median(sizes[sizes > 0]) > 3 * np.median(np.bincount(base.ravel())[1:])


def test_generated_2d_nuclei_touch_in_clumps_and_the_hard_variant_hides_the_line_between_them():
    from scipy import ndimage as ndi

    nuclei = _load("synthetic_nuclei_2d")
    image, mask = nuclei.packed_nuclei_2d(3, shape=(200, 200), count=(40, 41))
    again, _ = nuclei.packed_nuclei_2d(3, shape=(200, 200), count=(40, 41))
    assert image.shape == mask.shape == (200, 200) and image.dtype == np.uint16 and np.array_equal(image, again)
    ids = np.unique(mask[mask > 0])
    assert np.array_equal(ids, np.arange(1, len(ids) + 1)) and 30 <= len(ids) <= 40
    # many nuclei touch another one (a neighbour's id, higher or lower, within one pixel)
    highest = ndi.grey_dilation(mask, size=3)
    lowest = ndi.grey_erosion(np.where(mask > 0, mask, mask.max() + 1), size=3)
    touching = np.unique(mask[(mask > 0) & (((highest != mask) & (highest > 0)) | (lowest != mask) & (lowest <= mask.max()))])
    assert len(touching) >= 0.4 * len(ids)

    def contrast(image, mask):
        """Mean brightness where two nuclei meet, over the mean inside: the dark line's depth."""
        seam = (mask > 0) & (ndi.grey_dilation(mask, size=3) != mask)
        return image[seam].mean() / image[(mask > 0) & ~seam].mean()

    hard_image, hard_mask = nuclei.packed_nuclei_2d(3, shape=(200, 200), count=(40, 41),
                                                    **nuclei.VARIANTS[nuclei.NAME + "-hard"])
    assert contrast(hard_image, hard_mask) > contrast(image, mask) + 0.05
    assert nuclei.stems()[:1] == ["train00"] and len(set(nuclei.stems())) == 8


def test_generated_micrographs_tile_the_image_with_profiles_behind_dark_walls_that_fade():
    from scipy import ndimage as ndi

    em = _load("synthetic_em")
    image, mask = em.em_profiles(7, shape=(256, 256), median_diameter=100.0)
    again, _ = em.em_profiles(7, shape=(256, 256), median_diameter=100.0)
    assert image.shape == mask.shape == (256, 256) and image.dtype == np.uint8 and np.array_equal(image, again)
    ids = np.unique(mask[mask > 0])
    assert np.array_equal(ids, np.arange(1, len(ids) + 1)) and len(ids) >= 5
    walls = mask == 0
    assert 0.01 < walls.mean() < 0.2  # profiles fill the image; only thin walls lie between them
    inside = image[~walls].astype(float)
    assert image[walls].mean() < inside.mean() - 0.05 * 255  # walls are darker on the whole ...
    # ... but not everywhere: the faintest tenth of the wall pixels is as bright as much of the
    # inside, which walls of full darkness everywhere are not
    assert np.percentile(image[walls], 90) > np.percentile(inside, 25)
    dark_walls, dark_mask = em.em_profiles(7, shape=(256, 256), median_diameter=100.0, faintest=1.0)
    assert np.percentile(dark_walls[dark_mask == 0], 90) < np.percentile(dark_walls[dark_mask > 0], 25)
    # mitochondria are dark bodies well inside the profiles, and the truth keeps them in their profile
    core = ndi.binary_erosion(~walls, iterations=3)
    bodies, n = ndi.label(core & (ndi.gaussian_filter(image.astype(float), 1) < np.percentile(inside, 50) - 0.2 * 255))
    assert n and np.bincount(bodies.ravel())[1:].max() >= 50
    # the large variant draws larger profiles than the set at the same image size
    large = em.VARIANTS[em.NAME + "-large"]
    _, big = em.em_profiles(7, shape=(512, 512), median_diameter=large["median_diameter"],
                            membrane_width=large["membrane_width"])
    _, usual = em.em_profiles(7, shape=(512, 512))
    assert np.median(np.bincount(big.ravel())[1:]) > 2 * np.median(np.bincount(usual.ravel())[1:])
    assert em.Variant(em.NAME + "-large").stems() == em.stems() and len(em.stems()) == 10
