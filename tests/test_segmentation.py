"""Segmentation helpers used by the GUI: preview boxes and crops, 2D+t stacks, PCA colours."""

import numpy as np
import pytest

from napari_spoco.model import ModelConfig, SpocoModel
from napari_spoco.overlay import embedding_rgb
from napari_spoco.segmentation import preview_box, segment_preview, segment_series


def test_preview_box_is_inside_the_image_and_divisible():
    box = preview_box((100, 300), (5, 290), (64, 128), divisor=8)
    assert box == (slice(0, 64), slice(172, 300))
    # An image smaller than the box is previewed whole; a larger one gets a divisible side.
    assert preview_box((30, 50), (15, 25), (64, 64), divisor=8) == (slice(0, 30), slice(0, 50))
    assert preview_box((100, 100), (50, 50), (63, 63), divisor=8) == (slice(22, 78), slice(22, 78))


def test_segment_preview_leaves_the_training_model_untouched():
    model = SpocoModel.new(ModelConfig(ndim=2))
    model.student.train()
    before = {k: v.clone() for k, v in model.student.state_dict().items()}
    image = np.random.default_rng(0).random((64, 96)).astype(np.float32)
    labels = segment_preview(model, image, (slice(0, 32), slice(16, 80)), value_range=(0.0, 1.0))
    assert labels.shape == (32, 64)
    assert model.student.training  # still in training mode
    after = model.student.state_dict()
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)


def test_segment_series_gives_unique_ids_per_frame(tiny_pair):
    image, _, _ = tiny_pair
    model = SpocoModel.new(ModelConfig(ndim=2))
    stack = np.stack([image, image[::-1]])
    out = segment_series(model, stack, device="cpu")
    assert out.shape == stack.shape
    a, b = set(np.unique(out[0])) - {0}, set(np.unique(out[1])) - {0}
    assert not (a & b)


def test_embedding_rgb_separates_two_clusters():
    emb = np.zeros((16, 8, 8), np.float32)
    emb[0, :, 4:] = 3.0
    rgb = embedding_rgb(emb)
    assert rgb.shape == (8, 8, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert np.abs(rgb[0, 0] - rgb[0, 7]).max() > 0.5
    assert np.allclose(rgb[:, :4], rgb[0, 0])


@pytest.mark.parametrize("with_preview", [False, True])
def test_training_job_yields_progress_previews_and_returns_the_model(tiny_pair, with_preview):
    from napari_spoco._napari import workers
    from napari_spoco.training import TrainConfig, TrainProgress

    image, sparse, _ = tiny_pair
    target = workers.PreviewTarget("tiny", image, (slice(0, 32), slice(0, 32)), (0, 0))
    job = workers.TrainJob(
        [image], [sparse], TrainConfig(steps=4, patch_shape=(32, 32), batch_size=2),
        preview_every=1e-9 if with_preview else 0.0, preview_target=lambda: target,
    )
    gen = workers.training_job(job)
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as done:
            model = done.value
            break
    steps = [i.step for i in items if isinstance(i, TrainProgress)]
    previews = [i for i in items if isinstance(i, workers.PreviewResult)]
    assert steps == [1, 2, 3, 4] and model.history["steps"] == 4
    assert (len(previews) > 0) == with_preview
    if with_preview:
        assert previews[0].labels.shape == (32, 32)


def _record_clustering(monkeypatch):
    """Replace the clustering in segment() by one that records the config and the embedding
    it was given."""
    import napari_spoco.segmentation as seg

    seen = []

    def fake(embeddings, foreground, config, teacher_embeddings=None):
        seen.append((config, teacher_embeddings is not None))
        return np.zeros(embeddings.shape[1:], np.uint16)

    monkeypatch.setattr(seg, "cluster_embeddings", fake)
    return seen


def test_segment_takes_the_clustering_method_from_its_config(monkeypatch):
    """One place for the method: a ClusterConfig's method is not overridden by a default."""
    from napari_spoco.clustering import ClusterConfig
    from napari_spoco.segmentation import segment

    seen = _record_clustering(monkeypatch)
    model = SpocoModel.new(ModelConfig(ndim=2))
    image = np.random.default_rng(0).random((48, 48)).astype(np.float32)
    segment(model, image, config=ClusterConfig(method="consistency", bandwidth=0.7), device="cpu")
    (config, with_teacher), = seen
    assert (config.method, config.bandwidth, with_teacher) == ("consistency", 0.7, True)
    segment(model, image, device="cpu")
    assert seen[-1][0].method == "meanshift" and not seen[-1][1]


def test_segment_method_keyword_fills_the_config(monkeypatch):
    from napari_spoco.clustering import ClusterConfig
    from napari_spoco.errors import SpocoError
    from napari_spoco.segmentation import segment

    seen = _record_clustering(monkeypatch)
    model = SpocoModel.new(ModelConfig(ndim=2))
    image = np.random.default_rng(0).random((48, 48)).astype(np.float32)
    given = ClusterConfig(bandwidth=0.7)
    segment(model, image, method="hdbscan", config=given, device="cpu")
    assert (seen[-1][0].method, seen[-1][0].bandwidth) == ("hdbscan", 0.7)
    assert given.method == "meanshift"  # the caller's config is not changed
    segment_series(model, np.stack([image, image]), method="hdbscan", device="cpu")
    assert [c.method for c, _ in seen[-2:]] == ["hdbscan", "hdbscan"]
    with pytest.raises(SpocoError, match="Unknown clustering method"):
        segment(model, image, method="kmeans", device="cpu")


def _count_calls(monkeypatch, name):
    """Count the calls of ``napari_spoco.data.<name>``, wherever the package imported it."""
    import sys

    import napari_spoco.data as data

    real, calls = getattr(data, name), []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    for mod_name, module in list(sys.modules.items()):
        if mod_name.startswith("napari_spoco") and getattr(module, name, None) is real:
            monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("case", ["tiled", "scaled", "channels", "consistency", "preview"])
def test_one_segment_call_checks_the_image_and_takes_its_range_once(monkeypatch, case):
    """segment() prepares the image once and hands it down: not again per tile, per scale or
    in embed()."""
    from napari_spoco.clustering import ClusterConfig
    from napari_spoco.segmentation import segment

    checks, ranges = _count_calls(monkeypatch, "check_image"), _count_calls(monkeypatch, "intensity_range")
    rng = np.random.default_rng(0)
    model = SpocoModel.new(ModelConfig(ndim=2, in_channels=3 if case in ("channels", "preview") else 1))
    image = rng.random((96, 80, 3) if case in ("channels", "preview") else (96, 80)).astype(np.float32)
    if case == "scaled":
        model.history["pixel_scale"] = 0.5
    blocks = []
    if case == "preview":
        out = segment_preview(model, image, (slice(0, 64), slice(0, 64)))
        assert out.shape == (64, 64)
    else:
        config = ClusterConfig(method="consistency" if case == "consistency" else "meanshift")
        out = segment(model, image, config=config, device="cpu", tile_shape=(64, 64),
                      progress=lambda done, total: blocks.append(total))
        assert out.shape == (96, 80) and blocks[-1] == len(blocks)
        assert len(blocks) > 1 or case == "scaled"  # (at half scale, the image is one tile)
    assert (len(checks), len(ranges)) == (1, 1)
    given = ((0.0, 1.0),) * 3 if model.config.in_channels > 1 else (0.0, 1.0)
    segment(model, image, device="cpu", tile_shape=(64, 64), value_range=given)
    assert (len(checks), len(ranges)) == (2, 1)  # a given range is used as it is


def test_a_multi_tile_segment_embeds_the_whole_image_once_when_it_fits(monkeypatch):
    from napari_spoco import segmentation
    from napari_spoco.inference import embed
    from napari_spoco.segmentation import segment

    calls = []
    real = segmentation.embed
    monkeypatch.setattr(segmentation, "embed", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    model = SpocoModel.new(ModelConfig(ndim=2, base_features=4, depth=3), seed=0)
    image = np.random.default_rng(2).random((150, 130)).astype(np.float32)
    seen = []
    labels, emb = segment(model, image, device="cpu", tile_shape=(64, 64), return_embedding=True,
                          progress=lambda done, total: seen.append((done, total)))
    assert calls == [image.shape]  # one pass of the network over the whole image
    whole = embed(model, image, device="cpu")
    assert np.array_equal(emb.embeddings, whole.embeddings) and np.array_equal(emb.foreground, whole.foreground)
    assert [d for d, _ in seen] == list(range(1, len(seen) + 1)) and {t for _, t in seen} == {len(seen)}
    assert len(seen) > 4  # the network's tiles, then the clustering's
    # Too large to embed first: each segmentation tile embeds its region and halo.
    calls.clear()
    monkeypatch.setattr(segmentation, "EMBED_FIRST_MAX_BYTES", 0)
    tiled, _ = segment(model, image, device="cpu", tile_shape=(64, 64), return_embedding=True)
    assert len(calls) > 1 and all(c != image.shape for c in calls)
    assert labels.shape == tiled.shape == image.shape


def test_a_one_tile_segment_reports_the_networks_tiles_then_the_clustering():
    """A 2D image up to 2048² is one segmentation tile: the progress bar must still move with
    the network's tiles instead of waiting at 0 until the whole Segment is done."""
    from napari_spoco.segmentation import segment

    model = SpocoModel.new(ModelConfig(ndim=2, base_features=4, depth=3), seed=0)
    image = np.random.default_rng(3).random((150, 130)).astype(np.float32)
    seen = []
    segment(model, image, device="cpu", tile_shape=(512, 512), tta=False,
            progress=lambda done, total: seen.append((done, total)))
    network = max(1, len(seen) - 1)
    assert len(seen) >= 2, seen  # at least one network step before the clustering's
    assert [d for d, _ in seen] == list(range(1, len(seen) + 1)) and {t for _, t in seen} == {network + 1}


def test_embedding_first_gives_way_to_tiles_when_memory_is_short(monkeypatch):
    from napari_spoco import inference
    from napari_spoco.segmentation import embeds_first

    model = SpocoModel.new(ModelConfig(ndim=2, base_features=4, depth=3), seed=0)
    need = 4 * model.config.out_channels * 2048 * 2048  # 285 MB
    monkeypatch.setattr(inference, "_available_bytes", lambda: 4 * need)
    assert embeds_first(model, (2048, 2048))
    assert not embeds_first(model, (8192, 8192))  # beyond EMBED_FIRST_MAX_BYTES
    monkeypatch.setattr(inference, "_available_bytes", lambda: need)  # free, but not twice over
    assert not embeds_first(model, (2048, 2048))
    monkeypatch.setattr(inference, "_available_bytes", lambda: None)  # unknown: by size alone
    assert embeds_first(model, (2048, 2048))



def test_the_fragment_floor_comes_down_to_the_images_pieces_when_the_painting_is_skewed():
    """Painting mostly large objects (what a user corrects, or what suggestions point to) moves
    the painted median; the fragment floor must not follow it over the image's true objects
    (docs/method.md, "Inference and clustering")."""
    from napari_spoco.clustering import ClusterConfig, adapted_min_size, postprocess
    from napari_spoco.segmentation import model_cluster_config

    labels = np.zeros((120, 120), np.int64)
    for k in range(16):  # sixteen separate objects of 300 px
        r, c = divmod(k, 4)
        labels[5 + 28 * r : 20 + 28 * r, 5 + 28 * c : 25 + 28 * c] = k + 1
    labels[20:25, 5:25] = 17  # a 100-px fragment under object 1
    model = SpocoModel.new(ModelConfig(ndim=2, base_features=4, depth=2))
    model.history["object_size_median"] = 3000.0  # the painting: mostly large objects
    fixed = model_cluster_config(model, ClusterConfig(min_size=450))
    assert not fixed.adaptive_min_size  # a floor the user sets is kept
    cfg = model_cluster_config(model)
    assert cfg.min_size == 450 and cfg.adaptive_min_size and cfg.object_size == 3000.0
    assert postprocess(labels, cfg.min_size).max() == 0  # the painted median's floor: every object gone
    kept = postprocess(labels, cfg.min_size, adaptive=(cfg.object_size, 16))
    assert kept.max() == 16 and (kept[20:25, 5:25] == kept[10, 10]).all()  # the fragment joined its object
    # 15 % of the median piece, down to 15 % of half the painted median, never above the floor given
    assert adapted_min_size(labels, 450, 3000.0, 16) == 225
    assert adapted_min_size(labels, 450, 500.0, 16) == 45
    assert adapted_min_size(labels, 30, 500.0, 16) == 30
    assert adapted_min_size(np.zeros((8, 8), np.int64), 450, 3000.0, 16) == 450


def test_messages_about_a_bad_image_use_the_name_the_caller_gives():
    from napari_spoco.errors import SpocoError
    from napari_spoco.segmentation import segment, segment_series

    model = SpocoModel.new(ModelConfig(ndim=2, base_features=4, depth=3), seed=0)
    image = np.random.default_rng(4).random((64, 64)).astype(np.float32)
    image[3, 3] = np.nan
    with pytest.raises(SpocoError, match="^'cells.tif': "):
        segment(model, image, device="cpu", name="'cells.tif'")
    with pytest.raises(SpocoError, match="^image: "):  # the library's default
        segment(model, image, device="cpu")
    with pytest.raises(SpocoError, match="^'movie', frame 1: "):
        segment_series(model, np.stack([np.zeros_like(image) + 0.5, image]), device="cpu", name="'movie'")
    with pytest.raises(SpocoError, match="2D model but 'volume' is 3D"):
        segment(model, np.zeros((8, 64, 64), np.float32), device="cpu", name="'volume'")


def _drain(gen):
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as done:
            return items, done.value


def test_a_preview_that_cannot_be_made_does_not_end_the_training_run(tiny_pair):
    """The user chose a 3D volume in the Image box while a 2D model trains: the preview of it
    fails once, is reported, and training goes on to its last step with its model."""
    from napari_spoco._napari import workers
    from napari_spoco.training import TrainConfig, TrainProgress

    image, sparse, _ = tiny_pair
    volume = np.stack([image] * 4)
    targets = [workers.PreviewTarget("volume", volume, (slice(0, 4), slice(0, 32), slice(0, 32)), (0, 0, 0), "volume")]
    job = workers.TrainJob([image], [sparse], TrainConfig(steps=6, patch_shape=(32, 32), batch_size=2),
                           preview_every=1e-9, preview_target=lambda: targets[0])
    gen, items = workers.training_job(job), []
    while len([i for i in items if isinstance(i, TrainProgress)]) < 3:
        items.append(next(gen))
    # the user chooses the 2D image again: its previews come
    targets[0] = workers.PreviewTarget("tiny", image, (slice(0, 32), slice(0, 32)), (0, 0), "tiny")
    rest, model = _drain(gen)
    items += rest
    skipped = [i for i in items if isinstance(i, workers.PreviewSkipped)]
    assert [i.step for i in items if isinstance(i, TrainProgress)] == [1, 2, 3, 4, 5, 6] and model.history["steps"] == 6
    assert len(skipped) == 1 and skipped[0].layer == "volume"  # once, not every step
    assert "2D" in skipped[0].reason and "3D" in skipped[0].reason, skipped[0].reason  # the mismatch, not any error
    assert any(isinstance(i, workers.PreviewResult) and i.target.key == "tiny" for i in rest)


class _LazyImage:
    """An array read on demand that records what is read and refuses to be read whole."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.ndim, self.reads = data, data.shape, data.dtype, data.ndim, []

    def __getitem__(self, index):
        self.reads.append(index)
        return self.data[index]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole lazy image was read")


def test_a_preview_of_a_lazy_image_reads_only_its_box(tiny_pair, monkeypatch):
    from napari_spoco._napari import workers

    image, _, _ = tiny_pair
    lazy = _LazyImage(image)
    box = (slice(0, 32), slice(16, 48))
    low, high = workers.preview_range(workers.PreviewTarget("lazy", lazy, box, (0, 16)), 1)
    crop = image[box]
    assert lazy.reads == [box] and crop.min() <= low < high <= crop.max()
    # during training, each box of a lazy image gets its own range (panning off a box of background)
    from napari_spoco.training import TrainConfig

    boxes = [(slice(0, 16), slice(0, 16)), (slice(32, 64), slice(32, 64))]
    seen = []
    monkeypatch.setattr(workers, "segment_preview", lambda model, im, b, value_range: seen.append(value_range)
                        or np.zeros([s.stop - s.start for s in b], np.uint32))
    job = workers.TrainJob([image], [tiny_pair[1]], TrainConfig(steps=2, patch_shape=(32, 32), batch_size=2),
                           preview_every=1e-9, preview_target=lambda: workers.PreviewTarget("lazy", lazy, boxes[len(seen) % 2], (0, 0)))
    _drain(workers.training_job(job))
    assert len(seen) == 2 and seen[0] != seen[1]
    assert workers.preview_range(workers.PreviewTarget("mem", image, box, (0, 16)), 1) != (low, high)  # whole image
