"""Embedding a large image once into a scratch store (embedding_store.py): the stored
embeddings must be those of the whole image, whatever the cores, so that block-wise
segmentation clusters exact embeddings."""

import numpy as np
import pytest

from napari_spoco import embedding_store
from napari_spoco.data import intensity_range
from napari_spoco.embedding_store import EmbeddingStore, core_regions, embed_core
from napari_spoco.inference import embed
from napari_spoco.pretrained import load_default_model
from napari_spoco.sample import load_sample


def _store_embeddings(tmp_path, model, image, core_shape, value_range):
    store = EmbeddingStore(str(tmp_path / "e.zarr"), model.config.embedding_dim, True)
    store.create(image.shape, core_shape)
    cores = core_regions(image.shape, core_shape, embedding_store.context(model))
    written = [embed_core(model, lambda r: image[r], store, c, r, image.shape, value_range, None, "cpu", "float32",
                          None) for c, r in cores]
    return store, cores, written


@pytest.mark.parametrize("core_shape", [(64, 64), (96, 256), (256, 128)])
def test_stored_embeddings_are_the_whole_image_embedding_2d(tmp_path, core_shape):
    s = load_sample()
    model = load_default_model(2)
    value_range = intensity_range(s.test_image)
    whole = embed(model, s.test_image, device="cpu", value_range=value_range, precision="float32")
    store, cores, written = _store_embeddings(tmp_path, model, s.test_image, core_shape, value_range)
    assert len(cores) > 1 and all(written)
    emb, fg = store.read(tuple(slice(0, n) for n in s.test_image.shape))
    scale = np.abs(whole.embeddings).max()
    # float16 storage rounds to about 1e-3 of the scale; a core embedded without the whole
    # image's context would be off by up to whole embedding units near its borders
    assert np.abs(emb - whole.embeddings).max() < 2e-3 * scale
    assert np.abs(fg - whole.foreground).max() < 2e-3
    # a region read across core borders is the same as the whole image's there
    region = (slice(40, 200), slice(17, 150))
    emb_r, _ = store.read(region)
    assert np.abs(emb_r - whole.embeddings[(slice(None),) + region]).max() < 2e-3 * scale


def test_stored_embeddings_are_the_whole_volume_embedding_3d(tmp_path):
    rng = np.random.default_rng(0)
    from scipy import ndimage

    volume = ndimage.gaussian_filter(rng.random((40, 72, 80)).astype(np.float32), 2.0)
    model = load_default_model(3)
    value_range = intensity_range(volume)
    whole = embed(model, volume, device="cpu", value_range=value_range, precision="float32")
    div = model.config.size_divisor
    store, cores, written = _store_embeddings(tmp_path, model, volume, (4 * div, 8 * div, 8 * div), value_range)
    assert len(cores) >= 8 and all(written)
    emb, fg = store.read(tuple(slice(0, n) for n in volume.shape))
    assert np.abs(emb - whole.embeddings).max() < 2e-3 * np.abs(whole.embeddings).max()
    assert np.abs(fg - whole.foreground).max() < 2e-3


def test_a_constant_core_is_left_as_background(tmp_path):
    model = load_default_model(2)
    image = np.zeros((256, 128), np.float32)
    image[:64] = np.random.default_rng(1).random((64, 128))
    store, cores, written = _store_embeddings(tmp_path, model, image, (64, 128), (0.0, 1.0))
    # the last two cores and their context are one value: nothing to embed
    assert written == [True, True, False, False]
    _, fg = store.read((slice(128, 256), slice(0, 128)))
    assert not fg.any()


def test_cores_lie_on_the_network_grid_and_regions_hold_its_reach():
    model = load_default_model(3)
    div, ctx = model.config.size_divisor, embedding_store.context(model)
    assert ctx % div == 0 and ctx >= model.config.tile_reach
    shape = (60, 1000, 700)
    core = embedding_store.plan_cores(shape, model, 4_500_000)
    assert all(c % div == 0 or c == n for c, n in zip(core, shape))
    regions = core_regions(shape, core, ctx)
    assert max(np.prod([s.stop - s.start for s in r]) for _, r in regions) <= 4_500_000 * 1.3
    covered = np.zeros(shape[1:], int)
    for c, r in regions:
        assert all(cs.start % div == 0 for cs in c)
        assert all(rs.start == max(0, cs.start - ctx) and rs.stop == min(n, cs.stop + ctx)
                   for cs, rs, n in zip(c, r, shape))
        if c[0].start == 0:
            covered[c[1:]] += 1
    assert (covered == 1).all()  # the cores tile the image once


def test_chunks_divide_the_cores_and_reads_across_them_are_exact(tmp_path, monkeypatch):
    """The store is chunked below the core (a block decompresses only what its region touches);
    chunks must tile each core exactly, so that parallel writers of two cores never share one."""
    assert embedding_store.chunks_within((60, 256, 172)) == (60, 64, 43)
    assert embedding_store.chunks_within((64, 268, 268)) == (64, 268, 268)  # 268 = 4 x 67: kept whole
    assert embedding_store.chunks_within((2048, 2048)) == (256, 256)
    monkeypatch.setattr(embedding_store, "CHUNK_SIDE", {2: 32, 3: 64})
    s = load_sample()
    model = load_default_model(2)
    value_range = intensity_range(s.test_image)
    whole = embed(model, s.test_image, device="cpu", value_range=value_range, precision="float32")
    store, cores, written = _store_embeddings(tmp_path, model, s.test_image, (96, 256), value_range)
    import zarr

    assert zarr.open_array(store.path, mode="r").chunks == (17, 32, 32) and len(cores) > 1 and all(written)
    region = (slice(40, 200), slice(17, 150))
    emb_r, fg_r = store.read(region)
    assert np.abs(emb_r - whole.embeddings[(slice(None),) + region]).max() < 2e-3 * np.abs(whole.embeddings).max()
    assert np.abs(fg_r - whole.foreground[region]).max() < 2e-3


def test_write_rounds_once_and_zeroes_background_vectors(tmp_path):
    """A core written from a window of a larger array (a strided view, as embed_core hands it)
    stores each value rounded once to float16, and the embedding as zeros where the foreground
    is below the bar or not a number (the clustering never reads those vectors)."""
    rng = np.random.default_rng(3)
    emb = (rng.standard_normal((4, 10, 30, 40)) * 5).astype(np.float32)
    fg = rng.random((10, 30, 40)).astype(np.float32)
    fg[2, 8, :7] = np.nan  # row 3 of the window
    fg.flags.writeable = False  # a read-only array is copied, not refused
    store = EmbeddingStore(str(tmp_path / "w.zarr"), 4, True)
    store.create((10, 20, 40), (10, 20, 40))
    window = (slice(None), slice(5, 25), slice(None))
    store.write((slice(0, 10), slice(0, 20), slice(0, 40)), emb[(slice(None),) + window], fg[window], 0.5)
    got, got_fg = store.read((slice(0, 10), slice(0, 20), slice(0, 40)))
    keep = fg[window] >= 0.5
    want = np.where(keep[None], emb[(slice(None),) + window], 0).astype(np.float16).astype(np.float32)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert np.array_equal(got_fg, fg[window].astype(np.float16).astype(np.float32), equal_nan=True)
    assert np.isnan(got_fg[2, 3, :7]).all() and (got[:, 2, 3, :7] == 0).all()
    assert (got[:, ~keep] == 0).all() and (got[:, keep] != 0).mean() > 0.99
