"""Embed an image larger than memory once, exactly, into a scratch zarr store.

Block-wise segmentation (:mod:`napari_spoco.blockwise`) clusters each block with a halo of
context around its core. Embedding every block's region on its own repeats the network's work on
every halo (a block of a 3D mosaic reads about twice its core) and on the network's own context
around it, which made 3D block-wise segmentation cost 2-3x the in-memory path
(docs/benchmarks.md, "Images larger than memory"). Here the image is instead cut into *embedding
cores* on a grid aligned to the network's size divisor; each task embeds its core with the
network's reach on that grid of real context around it (``ModelConfig.tile_reach``, rounded up to
the divisor; reflected only at the image's own edges)
and writes the core's embedding and foreground probability to a float16 zarr array. Aligned
cores with that much context give the embedding the whole image would have (the tiling argument
of :func:`napari_spoco.inference.embed`; tested), so blocks then read and cluster exact
embeddings, and the halo costs only clustering. docs/method.md, "Images larger than memory".
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .model import SpocoModel

#: Where embedding first is the default (docs/benchmarks.md, "Images larger than memory"): in
#: 3D the halos' repeated network work outweighs writing and reading the store (a 2x2 cells3d
#: mosaic took 0.80x the time); in 2D, where a block is one 2048² region and clustering costs
#: more than the network, the store's input and output made it slower (1.2-1.4x).
DEFAULT_NDIMS = (3,)
#: Stored as float16: half the disk of float32, and an embedding's rounding error (about 1e-3
#: of its scale) far below the clustering bandwidth (0.5) and bfloat16 inference's own (1e-2).
STORE_DTYPE = np.float16
#: Chunks of at most this side (by spatial axes: 2D, 3D) within an embedding core (8 MB of a
#: 3D network's 17 channels at 60x64x64, 2 MB at 256²): a block reads and decompresses only the
#: chunks its region touches instead of every core it overlaps whole, and a chunk that is all
#: background is never written (zarr skips chunks equal to the fill value). With LZ4 on
#: shuffled bytes (:func:`_compressor`) the store of a 2x2 cells3d mosaic was written and read
#: in 0.7x the time of whole-core Zstandard chunks, at 1.5x their disk (docs/benchmarks.md,
#: "3D pooling in bfloat16, and the embedding store's chunks").
CHUNK_SIDE = {2: 256, 3: 64}


def applies(model: SpocoModel, factors: Sequence[float], method: str) -> bool:
    """Whether a block-wise run can embed first: the network works on the image's own grid
    (no object scale or anisotropy resize, whose resampled blocks would not line up) and the
    clustering needs only the predicting network (consistency clustering also needs the
    teacher's embeddings)."""
    return all(f == 1.0 for f in factors) and method != "consistency"


def context(model: SpocoModel) -> int:
    """Real context around an embedding core, per side: the network's reach on its size grid
    (``ModelConfig.tile_reach``) rounded up to the size divisor, so that regions start on the
    grid of the whole image's tiles and their cores get the whole image's embedding."""
    div = model.config.size_divisor
    return int(math.ceil(model.config.tile_reach / div) * div)


def plan_cores(shape: Sequence[int], model: SpocoModel, budget: int) -> tuple[int, ...]:
    """Embedding cores: multiples of the size divisor (so every core starts on the grid of the
    whole image's tiles), as few as fit ``budget`` voxels per region (core and context)."""
    from .blockwise import plan_core_shape

    div = model.config.size_divisor
    ctx = context(model)
    core = plan_core_shape(shape, (ctx,) * len(shape), budget=budget)
    return tuple(min(n, int(math.ceil(c / div) * div)) for n, c in zip(shape, core))


def core_regions(shape: Sequence[int], core_shape: Sequence[int], ctx: int) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """(core, region) of every embedding core: the grid of ``core_shape``, each with ``ctx``
    pixels of context per side, clipped to the image (the blocks' own plan, blockwise.plan_blocks)."""
    from .blockwise import plan_blocks

    return [(b.core, b.region) for b in plan_blocks(shape, core_shape, (ctx,) * len(shape))]


@dataclass(frozen=True)
class EmbeddingStore:
    """Where the embeddings are and what they hold: (channels, *spatial) float16, the
    embedding's channels first, then the foreground probability when the model has a head."""

    path: str
    embedding_dim: int
    has_foreground: bool

    def create(self, shape: Sequence[int], cores: Sequence[int]):
        """An empty store for an image of ``shape`` written by embedding cores of ``cores``
        (:func:`chunks_within`: every chunk lies in one core, so parallel writers never share one)."""
        from .lazy_io import _zarr

        channels = self.embedding_dim + int(self.has_foreground)
        return _zarr().create_array(store=self.path, shape=(channels, *shape),
                                    chunks=(channels, *chunks_within(cores)), dtype=STORE_DTYPE, fill_value=0,
                                    zarr_format=2, compressors=_compressor())

    def write(self, core: tuple[slice, ...], embeddings: np.ndarray, foreground: np.ndarray | None,
              zero_below: float | None = None) -> None:
        """Store one core: ``embeddings`` (E, *core) and ``foreground`` (*core); with
        ``zero_below``, embedding vectors where the foreground is below it are stored as zeros."""
        import torch

        from .lazy_io import _zarr

        dtype = _tensor(np.empty(0, STORE_DTYPE)).dtype  # the store's number format, as torch names it
        data = torch.empty((self.embedding_dim + int(self.has_foreground), *embeddings.shape[1:]), dtype=dtype)
        # cast while copied, by torch: NumPy's float32 -> float16 took 6x as long (one thread,
        # no vector instructions), a second of a 2x2 cells3d mosaic's 40 s
        vectors = data[: self.embedding_dim]
        vectors.copy_(_tensor(embeddings))
        if self.has_foreground:
            fg = _tensor(foreground)
            data[self.embedding_dim].copy_(fg)
            if zero_below is not None:
                vectors.masked_fill_(~(fg >= zero_below), 0.0)  # NaN is below any bar, as np.where had it
        arr = _zarr().open_array(store=self.path, mode="r+")
        arr[(slice(None),) + tuple(core)] = data.numpy()

    def read(self, region: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        """(embeddings (E, *region) float32, foreground probability (*region) or None)."""
        from .lazy_io import _zarr

        half = np.asarray(_zarr().open_array(store=self.path, mode="r")[(slice(None),) + tuple(region)])
        data = _tensor(half).float().numpy()  # torch casts in a third of NumPy's time
        if not self.has_foreground:
            return data, None
        return data[: self.embedding_dim], data[self.embedding_dim]


def _tensor(a: np.ndarray):
    """A tensor sharing ``a``'s memory (a strided view, such as a core's window, stays a view;
    an array torch cannot share, reversed or read-only, is copied first)."""
    import torch

    if not a.flags.writeable or any(st < 0 for st in a.strides):
        a = np.array(a)
    return torch.from_numpy(a)


def chunks_within(core: Sequence[int], side: int | None = None) -> tuple[int, ...]:
    """Chunk sides that divide the core's exactly: per axis the largest divisor of the core's
    side that is at most ``side`` (default :data:`CHUNK_SIDE`; the whole side where that divisor
    would be under half of ``side``: thin slabs cost more in per-chunk work than they save)."""
    side = side or CHUNK_SIDE.get(len(core), 64)
    out = []
    for n in core:
        best = max(d for d in range(1, min(n, side) + 1) if n % d == 0)
        out.append(best if n <= side or best * 2 >= side else n)
    return tuple(out)


def _compressor():
    """LZ4 at its fastest level on byte-shuffled float16: scratch data written once and read
    about twice, where speed matters more than disk."""
    import numcodecs

    return numcodecs.Blosc(cname="lz4", clevel=1, shuffle=numcodecs.Blosc.SHUFFLE)


def disk_bytes(shape: Sequence[int], model: SpocoModel) -> int:
    """Bytes the store takes at most (uncompressed; the zeros of the background compress)."""
    channels = model.config.embedding_dim + int(model.config.foreground_head)
    return int(np.prod(shape, dtype=np.float64)) * channels * np.dtype(STORE_DTYPE).itemsize


def embed_core(model: SpocoModel, read, store: EmbeddingStore, core: tuple[slice, ...], region: tuple[slice, ...],
               spatial: Sequence[int], value_range, channel_axis: int | None, device: str, precision: str,
               tile_voxels: int | None, zero_below: float | None = None, tta: bool = True) -> bool:
    """Embed ``region`` (``read(region)`` gives its pixels) and store its ``core``; the sides of
    the region that are the image's own edges get the reflected margin the whole image would.
    Returns False (nothing written: the store's zeros mean background) for a constant region,
    padding or empty space where there is nothing to find. ``zero_below``: the clustering's
    foreground threshold; it never reads the embedding of pixels below it, so they are stored
    as zeros, which take next to no disk. ``tta``: :func:`napari_spoco.inference.embed`'s."""
    from .inference import embed, prepare_image

    data = read(region)
    if data.size > 0 and bool(np.all(data == data.flat[0])):
        return False
    prepared = prepare_image(model, data, value_range, channel_axis)
    edges = tuple((r.start == 0, r.stop == n) for r, n in zip(region, spatial))
    emb = embed(model, prepared, device=device, edges=edges, max_tile_voxels=tile_voxels, precision=precision,
                tta=tta)
    inner = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(core, region))
    fg = None if emb.foreground is None else emb.foreground[inner]
    store.write(core, emb.embeddings[(slice(None),) + inner], fg, zero_below)
    return True


def scratch_path(folder: str | os.PathLike) -> str:
    return str(Path(folder) / "embeddings.zarr")
