"""Block-wise segmentation of images larger than memory: the block plan, the stitching (one id
per object across every block border and corner, touching objects kept apart), failures, the
dask engines, and agreement with in-memory segmentation."""

import numpy as np
import pytest
from scipy import ndimage

from napari_spoco import evaluate, segment
from napari_spoco.blockwise import (
    REGION_PIXELS,
    balanced_cores,
    global_ids,
    neighbours,
    plan_blocks,
    plan_core_shape,
    segment_blockwise,
)
from napari_spoco.data import intensity_range
from napari_spoco.pretrained import load_default_model
from napari_spoco.sample import load_sample


def identity(region):
    """A perfect segmenter: the test images hold their true ids as intensities."""
    return np.rint(region).astype(np.int64)


def components(region):
    return ndimage.label(region > 0.5)[0]


def objects_on_every_border(shape, block, radius):
    """True labels: a disk/ball centred on every block border crossing and corner, plus pairs
    of touching objects split by a border; ids 1..n."""
    ndim = len(shape)
    grid = np.indices(shape)
    truth = np.zeros(shape, np.int32)
    k = 0
    centres = [list(range(b, n - radius, b)) for n, b in zip(shape, block)]
    # every crossing of borders (corners in 2D, edges and corners in 3D), and face centres
    points = list(np.stack(np.meshgrid(*centres, indexing="ij"), -1).reshape(-1, ndim))
    for axis in range(ndim):
        for c in centres[axis]:
            p = [n // 2 for n in shape]
            p[axis] = c
            points.append(np.array(p))
    for p in points:
        d2 = sum((g - c) ** 2 for g, c in zip(grid, p))
        k += 1
        truth[(d2 < radius**2) & (truth == 0)] = k
    # a long bar across all blocks of axis -1, touching a second bar: two objects, not one
    bar = [slice(None)] * ndim
    for axis in range(ndim - 1):
        bar[axis] = slice(2, 5)
    k += 1
    truth[tuple(bar)] = k
    for axis in range(ndim - 1):
        bar[axis] = slice(5, 8)
    k += 1
    truth[tuple(bar)] = k
    return truth


def assert_same_objects(truth, labels):
    """``labels`` is ``truth`` with other ids: one id per object, one object per id, ids 1..N."""
    pairs = np.unique(np.stack([truth.ravel(), labels.ravel()]), axis=1)
    assert ((pairs[0] == 0) == (pairs[1] == 0)).all(), "background and objects must coincide"
    pairs = pairs[:, pairs[0] > 0]
    assert len(np.unique(pairs[0])) == pairs.shape[1], "an object got several ids"
    assert len(np.unique(pairs[1])) == pairs.shape[1], "an id covers several objects"
    assert set(np.unique(labels)) == set(range(pairs.shape[1] + 1))


def test_block_plan_partitions_the_image_on_a_regular_grid():
    shape, core, halo = (100, 250), (32, 64), (8, 16)
    blocks = plan_blocks(shape, core, halo)
    cover = np.zeros(shape, int)
    for b in blocks:
        cover[b.core] += 1
        assert all(c.start % n == 0 for c, n in zip(b.core, core))  # zarr chunks, one per block
        assert all(r.start == max(0, c.start - h) and r.stop == min(s, c.stop + h)
                   for c, r, h, s in zip(b.core, b.region, halo, shape))
    assert (cover == 1).all() and len(blocks) == 4 * 4
    middle = blocks[5]  # row 1, column 1: eight neighbours (faces and corners)
    assert len(neighbours(blocks, middle)) == 8


def test_planned_cores_read_the_fewest_pixels_within_the_memory_budget():
    import itertools

    def reads(shape, core, halo):  # pixels read by all blocks, and by the largest
        sizes = [int(np.prod([s.stop - s.start for s in b.region])) for b in plan_blocks(shape, core, halo)]
        return sum(sizes), max(sizes)

    for shape in [(60, 512, 512), (30, 512, 512), (60, 1024, 1024)]:  # against every plan of up to 8 cores per axis
        halo = (48, 48, 48)
        best = min(r for parts in itertools.product(range(1, 9), repeat=3)
                   for r in [reads(shape, [-(-n // p) for n, p in zip(shape, parts)], halo)]
                   if r[1] <= REGION_PIXELS[3])
        assert reads(shape, plan_core_shape(shape, halo), halo)[0] == best[0], shape
    for shape in [(60, 2048, 2048), (1000, 2048, 2048), (300, 700, 900), (4096, 4096), (520, 696)]:
        halo = (48,) * len(shape)
        core = plan_core_shape(shape, halo)
        blocks = plan_blocks(shape, core, halo)
        largest = max(int(np.prod([s.stop - s.start for s in b.region])) for b in blocks)
        assert largest <= REGION_PIXELS[len(shape)], (shape, core)
        # one more core along any axis would read more in all
        work = sum(int(np.prod([s.stop - s.start for s in b.region])) for b in blocks)
        for axis in range(len(shape)):
            finer = list(core)
            finer[axis] = -(-shape[axis] // (-(-shape[axis] // core[axis]) + 1))
            more = plan_blocks(shape, finer, halo)
            assert sum(int(np.prod([s.stop - s.start for s in b.region])) for b in more) >= work
    assert plan_core_shape((520, 696), (56, 56)) == (520, 696)  # fits: one block
    assert balanced_cores((2048,), (224,)) == (205,)  # a cap: ten equal cores, not nine and a sliver


def test_global_ids_join_linked_pieces_and_number_objects_from_one():
    table = global_ids(6, np.array([[1, 4], [4, 6], [2, 5]]))
    assert table[0] == 0
    assert table[1] == table[4] == table[6] and table[2] == table[5]
    assert sorted(set(table[1:])) == [1, 2, 3]


@pytest.mark.parametrize("shape,block", [((150, 170), (48, 40)), ((40, 70, 66), (16, 24, 20))])
def test_objects_across_every_border_and_corner_get_one_id(tmp_path, shape, block):
    truth = objects_on_every_border(shape, balanced_cores(shape, block), radius=6 if len(shape) == 2 else 4)
    model = load_default_model(len(shape))
    result = segment_blockwise(model, truth.astype(np.float32), tmp_path / "labels.zarr", block_shape=block,
                               halo=10, _segmenter=identity)
    labels = np.asarray(result.labels[...])
    assert result.blocks == int(np.prod([-(-n // b) for n, b in zip(shape, block)])) and not result.failed
    assert result.objects == truth.max()
    assert_same_objects(truth, labels)
    # a segmenter that merges touching objects still gets one id per merged object, not one per block
    result = segment_blockwise(model, (truth > 0).astype(np.float32), tmp_path / "merged.zarr",
                               block_shape=block, halo=10, _segmenter=components)
    assert_same_objects(ndimage.label(truth > 0)[0], np.asarray(result.labels[...]))


def test_a_failing_block_is_retried_then_reported_and_left_empty(tmp_path):
    truth = objects_on_every_border((100, 120), balanced_cores((100, 120), (48, 48)), radius=5)
    calls = []

    def flaky(region):  # the first block fails on its first try only
        calls.append(region.shape)
        if len(calls) == 1:
            raise RuntimeError("disk hiccup")
        return identity(region)

    model = load_default_model(2)
    result = segment_blockwise(model, truth.astype(np.float32), tmp_path / "a.zarr", block_shape=(48, 48),
                               halo=8, _segmenter=flaky)
    assert not result.failed and calls[0] == calls[1]  # the same region, tried again
    assert_same_objects(truth, np.asarray(result.labels[...]))

    assert balanced_cores((100, 120), (48, 48)) == (34, 40)  # three equal cores per axis, not 48 + 48 + 4

    def broken(region):  # the block holding the marked pixel (0, 0) always fails
        if region[0, 0] < 0:
            raise RuntimeError("bad block")
        return identity(np.maximum(region, 0))

    marked = truth.astype(np.float32)
    marked[0, 0] = -1
    result = segment_blockwise(model, marked, tmp_path / "b.zarr", block_shape=(48, 48), halo=8, _segmenter=broken)
    assert list(result.failed) == ["[0:34, 0:40]"] and "bad block" in result.failed["[0:34, 0:40]"]
    labels = np.asarray(result.labels[...])
    assert not labels[:34, :40].any() and labels[34:, 40:].any()


def test_an_interrupted_run_leaves_no_store_behind(tmp_path):
    def interrupt(region):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_blockwise(load_default_model(2), np.random.rand(64, 64).astype(np.float32), tmp_path / "x.zarr",
                          block_shape=(32, 32), halo=4, _segmenter=interrupt)
    assert not (tmp_path / "x.zarr").exists() and list(tmp_path.iterdir()) == []


def _sample_blockwise(tmp_path, name, tta=False, **kwargs):
    """The demo's held-out crop in memory and in four blocks. One network pass by default: what
    is compared is the blocking (test-time augmentation is tile-exact, tests/test_tta.py, and
    moved one of 22 objects across the blocks' seams here)."""
    s = load_sample()
    model = load_default_model(2)
    value_range = intensity_range(s.test_image)
    whole = segment(model, s.test_image, device="cpu", value_range=value_range, tta=tta)
    result = segment_blockwise(model, s.test_image, tmp_path / name, block_shape=(128, 128),
                               value_range=value_range, tta=tta, **kwargs)
    return s, whole, result


@pytest.mark.parametrize("embed_first,tta", [(True, False), (False, False), (True, True)])
def test_blockwise_segmentation_matches_in_memory_segmentation(tmp_path, embed_first, tta):
    done = []
    s, whole, result = _sample_blockwise(tmp_path, "sample.zarr", progress=lambda i, n: done.append((i, n)),
                                         embed_first=embed_first, tta=tta)
    labels = np.asarray(result.labels[...])
    # progress counts the embedding cores (one here: the image fits one), then the blocks
    assert done[-1] == ((5, 5) if embed_first else (4, 4)) and result.blocks == 4
    assert [i for i, _ in done] == list(range(1, done[-1][0] + 1))
    agreement = evaluate(whole, labels)
    assert agreement["AP50"] >= 0.85, agreement
    assert abs(result.objects - int(whole.max())) <= max(1, 0.1 * whole.max())
    # one object of 22-28 is 0.03-0.05 AP50; with test-time augmentation one more moved (0.09)
    tolerance = 0.1 if tta else 0.07
    assert abs(evaluate(s.test_truth, labels)["AP50"] - evaluate(s.test_truth, whole)["AP50"]) <= tolerance


def test_worker_processes_give_the_same_labels_as_one_process(tmp_path):
    from napari_spoco.lazy_io import open_lazy

    one = _sample_blockwise(tmp_path, "one.zarr", tta=True)[2]  # the default: the setting must reach the workers
    # a zarr input: read by path in the worker processes, not pickled with each task
    import zarr

    zarr.create_array(store=str(tmp_path / "in.zarr"), data=load_sample().test_image, chunks=(64, 64))
    from napari_spoco.data import intensity_range as ir

    two = segment_blockwise(load_default_model(2), open_lazy(tmp_path / "in.zarr"), tmp_path / "two.zarr",
                            block_shape=(128, 128), value_range=ir(load_sample().test_image), workers=2)
    assert np.array_equal(np.asarray(one.labels[...]), np.asarray(two.labels[...]))
    # an array in memory: two threads, each with its own copy of the network
    threads = segment_blockwise(load_default_model(2), load_sample().test_image, tmp_path / "threads.zarr",
                                block_shape=(128, 128), value_range=ir(load_sample().test_image), workers=2)
    assert np.array_equal(np.asarray(one.labels[...]), np.asarray(threads.labels[...]))


def test_a_dask_distributed_cluster_runs_the_same_blocks(tmp_path):
    distributed = pytest.importorskip("distributed")
    one = _sample_blockwise(tmp_path, "one.zarr", tta=True)[2]  # the default, as the cluster's run below
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        s = load_sample()
        many = segment_blockwise(load_default_model(2), s.test_image, tmp_path / "cluster.zarr",
                                 block_shape=(128, 128), value_range=intensity_range(s.test_image),
                                 scheduler=cl.scheduler_address)
    assert np.array_equal(np.asarray(one.labels[...]), np.asarray(many.labels[...]))


def test_bad_block_shapes_and_models_are_refused(tmp_path):
    from napari_spoco.errors import SpocoError

    scaled = load_default_model(2)
    scaled.history["pixel_scale"] = 0.5  # resized blocks would not line up with stored embeddings
    with pytest.raises(SpocoError, match="Embedding first"):
        segment_blockwise(scaled, np.zeros((64, 64), np.float32), tmp_path / "s.zarr", embed_first=True)

    with pytest.raises(SpocoError, match="block shape"):
        segment_blockwise(load_default_model(2), np.zeros((32, 32), np.float32), tmp_path / "a.zarr",
                          block_shape=(16, 16, 16))
    with pytest.raises(SpocoError, match="3D model"):
        segment_blockwise(load_default_model(3), np.zeros((32, 32), np.float32), tmp_path / "b.zarr")
    assert list(tmp_path.iterdir()) == []


def test_a_block_without_reflected_margin_on_its_inner_sides_embeds_like_the_whole_image():
    from napari_spoco.inference import embed

    s = load_sample()
    model = load_default_model(2)
    value_range = intensity_range(s.test_image)
    whole = embed(model, s.test_image, device="cpu", value_range=value_range)
    # the left 160 columns as a block: image edges top, bottom and left; real pixels beyond its right side
    block = embed(model, s.test_image[:, :160], device="cpu", value_range=value_range,
                  edges=((True, True), (True, False)))
    keep = 160 - 2 * model.config.receptive_radius  # beyond the reach of the block's right side
    assert np.abs(block.embeddings[:, :, :keep] - whole.embeddings[:, :, :keep]).max() < 1e-3
    # near its right side the block lacks context the whole image has: that is what the halo is for
    assert np.abs(block.embeddings[:, :, keep:] - whole.embeddings[:, :, keep:160]).max() > 1e-3


def test_a_core_that_fails_to_embed_is_retried_then_reported(tmp_path, monkeypatch):
    from napari_spoco import embedding_store

    real, calls = embedding_store.embed_core, []

    def flaky(model, read, store, core, region, *args):
        calls.append(core)
        if core[0].start == 0 and core[1].start == 0:
            raise RuntimeError("disk full")
        return real(model, read, store, core, region, *args)

    monkeypatch.setattr(embedding_store, "embed_core", flaky)
    monkeypatch.setattr(embedding_store, "plan_cores", lambda shape, model, budget: (128, 128))
    s, _, result = _sample_blockwise(tmp_path, "f.zarr", embed_first=True)
    assert len(calls) == 5  # four cores, the first tried twice
    assert list(result.failed) == ["[0:128, 0:128]"] and "disk full" in result.failed["[0:128, 0:128]"]
    labels = np.asarray(result.labels[...])
    assert labels[:128, :128].max() == 0  # no embedding there: left empty, as a failed block is
    assert labels[128:, 128:].max() > 0  # the rest is segmented


def test_without_scratch_space_blocks_embed_their_own_regions(tmp_path, monkeypatch):
    from napari_spoco import blockwise, embedding_store
    from napari_spoco.errors import SpocoError

    monkeypatch.setattr(blockwise, "_free_bytes", lambda folder: 1_000_000)  # 256² x 17 float16 need 2.2 MB
    monkeypatch.setattr(embedding_store, "DEFAULT_NDIMS", (2, 3))  # the default in 2D too, for a quick test
    with pytest.raises(SpocoError, match="scratch space"):
        _sample_blockwise(tmp_path, "asked.zarr", embed_first=True)
    assert not (tmp_path / "asked.zarr").exists()
    done = []
    _, _, result = _sample_blockwise(tmp_path, "auto.zarr", progress=lambda i, n: done.append((i, n)))
    assert done[-1] == (4, 4) and result.objects > 10  # four blocks, no embedding cores


def test_a_volume_is_embedded_first_by_default_and_matches_in_memory(tmp_path):
    rng = np.random.default_rng(3)
    grid = np.indices((32, 96, 96)).astype(np.float32)
    volume = np.zeros((32, 96, 96), np.float32)
    for z, y, x in [(16, 20, 20), (16, 20, 48), (16, 20, 76), (16, 50, 30), (16, 50, 62), (16, 78, 20), (14, 76, 76),
                    (18, 78, 48)]:
        volume += np.exp(-((grid[0] - z) ** 2 + (grid[1] - y) ** 2 + (grid[2] - x) ** 2) / 40.0)
    volume += 0.05 * rng.standard_normal(volume.shape).astype(np.float32)
    model = load_default_model(3)
    value_range = intensity_range(volume)
    whole = segment(model, volume, device="cpu", value_range=value_range)
    done = []
    result = segment_blockwise(model, volume, tmp_path / "v.zarr", block_shape=(32, 48, 48), value_range=value_range,
                               progress=lambda i, n: done.append((i, n)))
    assert result.blocks == 4 and done[-1] == (5, 5)  # one embedding core, then four blocks
    labels = np.asarray(result.labels[...])
    assert whole.max() >= 6 and evaluate(whole, labels)["AP50"] >= 0.8
