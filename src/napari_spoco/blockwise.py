"""Images and volumes larger than memory: segmentation block by block on dask, stitched so that
an object crossing block borders keeps one id.

The image is cut into *cores* on a regular grid (the zarr output's chunks); each block reads its
core plus a halo of context, is embedded and clustered on its own (:func:`segment` of the
region) and writes the labels of its core, numbered 1..n within the block. A 3D volume is
instead embedded once into a scratch store first (:mod:`napari_spoco.embedding_store`), and its
blocks only cluster their region of it. Then:

1. **Link.** In the strip where block k's region overlaps a neighbour j's core, k's view of
   the objects that cross out of its core is compared with j's own labels: pieces that agree
   there (IoU > 0.5) are one object.
2. **Relabel.** A union-find over all links gives every object one global id, numbered
   1..N over the volume, and each output chunk is rewritten through that table.

Each step is a set of independent tasks run by dask: in this process (``workers=1``), in
worker processes (``workers=N``), or on a dask.distributed cluster (``scheduler=ADDRESS``;
the output and scratch folders must then be on storage all workers see). Memory is that of one
block per worker, whatever the image's size. A block that fails is tried once more, then left
empty and reported. docs/method.md, "Images larger than memory", says why the halo is what it is.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .clustering import ClusterConfig
from .embedding_store import EmbeddingStore
from .errors import SpocoError
from .lazy_io import LazyImage, create_label_store, mark_complete, open_label_store, remove_store
from .model import SpocoModel
from .precision import INFERENCE_PRECISION
from .shapes import object_radius

LINK_IOU = 0.5  # pieces of one object agree this well in the strip two blocks share
CLUSTER_HALO_DIAMETERS = 1.5  # blocks clustering stored embeddings: context in object diameters


@dataclass(frozen=True)
class Block:
    """One block: ``core`` (the output pixels it writes, one zarr chunk) inside ``region``
    (the pixels it reads: the core and its halo, clipped to the image)."""

    index: int
    core: tuple[slice, ...]
    region: tuple[slice, ...]

    @property
    def core_in_region(self) -> tuple[slice, ...]:
        return tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(self.core, self.region))

    def describe(self) -> str:
        return "[" + ", ".join(f"{s.start}:{s.stop}" for s in self.core) + "]"


def plan_blocks(shape: Sequence[int], core_shape: Sequence[int], halo: Sequence[int]) -> list[Block]:
    """Blocks whose cores tile ``shape`` on a regular grid of ``core_shape`` (the last ones
    shorter), each with ``halo`` pixels of context per axis, clipped to the image."""
    per_axis = [[(a, min(a + c, n)) for a in range(0, n, c)] for n, c in zip(shape, core_shape)]
    blocks = []
    for i, combo in enumerate(itertools.product(*per_axis)):
        core = tuple(slice(a, b) for a, b in combo)
        region = tuple(slice(max(0, a - h), min(n, b + h)) for (a, b), h, n in zip(combo, halo, shape))
        blocks.append(Block(i, core, region))
    return blocks


def _overlap(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...] | None:
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return out if all(s.start < s.stop for s in out) else None


def neighbours(blocks: Sequence[Block], block: Block) -> list[Block]:
    """The blocks whose cores ``block``'s halo reaches (faces, edges and corners)."""
    return [b for b in blocks if b.index != block.index and _overlap(block.region, b.core) is not None]


#: Pixels a block may read (core and halo), which bounds a worker's memory. In 3D a worker
#: peaks while embedding, at about 0.5 GB of libraries, the network's tile (below) and about
#: 70 bytes per voxel of the block (docs/benchmarks.md: a 60x301x301 block peaked at 1.7 GB
#: in-process with 1.6 M-voxel tiles, and a 25-block run at 2.07 GB), so 4.5 M voxels to stay
#: under 2 GB; in 2D 2048², which segments in about 0.6 GB.
REGION_PIXELS = {2: 2048 * 2048, 3: 4_500_000}
#: Largest network tile in a 3D block (inference.default_tile_voxels is 3.3 M), in float32; a
#: bfloat16 tile is twice as large (precision.tile_voxels). Since the views of test-time
#: augmentation are summed where they are kept, a bfloat16 forward pass with two views takes
#: about 180 bytes per voxel of its tile (it took 250-330), so tiles of 4 M voxels fit where 2.4 M
#: did; larger tiles overlap less, and the 2x2 cells3d mosaic ran 2.0x its voxels through the
#: network instead of 2.3x (docs/benchmarks.md, "Views summed where they are kept").
BLOCK_TILE_VOXELS = {2: None, 3: 2_000_000}


def _axis_options(n: int, halo: int) -> list[tuple[int, int, int]]:
    """(core, longest region, summed region length) for each number of cores along an axis."""
    out = []
    for parts in range(1, min(n, 512) + 1):
        core = math.ceil(n / parts)
        if parts > 1 and core * (parts - 1) >= n:
            continue  # rounding left the last core empty
        longest = n if parts == 1 else min(n, core + halo * (1 if parts == 2 else 2))
        total = n + 2 * halo * (parts - 1)
        out.append((core, longest, total))
    return out


def plan_core_shape(shape: Sequence[int], halo: Sequence[int], block_shape: Sequence[int] | None = None,
                    budget: int | None = None) -> tuple[int, ...]:
    """The core shape (the output's chunks): ``block_shape`` as a cap, cores made equal along
    each axis; by default the cores that read the fewest pixels in all (halos are read twice)
    while no block reads more than ``budget`` (default :data:`REGION_PIXELS`). A 30×512×512
    volume thus gets 2×2 cores of 256 (each block reads 30×304×304), not 3×3 of 171 whose
    halos cost more work."""
    if block_shape is not None:
        return tuple(int(math.ceil(n / math.ceil(n / min(int(c), n)))) for n, c in zip(shape, block_shape))
    budget = budget or REGION_PIXELS[2 if len(shape) == 2 else 3]
    options = [_axis_options(int(n), int(h)) for n, h in zip(shape, halo)]
    best, best_cost = None, None
    for head in itertools.product(*options[:-1]):
        longest = math.prod(o[1] for o in head)
        work = math.prod(o[2] for o in head)
        last = next((o for o in options[-1] if longest * o[1] <= budget), options[-1][-1])
        combo = head + (last,)
        over = longest * last[1] > budget
        cost = (over, longest * last[1] if over else work * last[2])
        if best_cost is None or cost < best_cost:
            best, best_cost = combo, cost
    return tuple(o[0] for o in best)


def balanced_cores(shape: Sequence[int], core_shape: Sequence[int]) -> tuple[int, ...]:
    """Cores of at most ``core_shape``, made equal along each axis (2048 in cores of at most
    224: ten of 205, not nine of 224 and one of 32, whose halo would cost 4x its core)."""
    return plan_core_shape(shape, (0,) * len(shape), core_shape)


def block_halo(model: SpocoModel, factors: Sequence[float]) -> tuple[int, ...]:
    """Context around each core, per axis in image pixels: the network's receptive radius plus
    one object diameter (from the median painted object), so that an object crossing a core's
    border lies whole in both blocks' views, away from their border effects; 16 to 64
    network pixels, converted to image pixels by the axis' factor (model.network_factors)."""
    net = int(min(64, max(16, model.config.receptive_radius + _object_diameter(model))))
    return tuple(int(math.ceil(net / f)) for f in factors)


def cluster_halo(model: SpocoModel) -> tuple[int, ...]:
    """Context around each core when the blocks read stored embeddings (:mod:`embedding_store`):
    the network's reach no longer matters, only the clustering's, so one and a half object
    diameters (16 to 64 pixels): an object crossing a core's border lies whole in both views."""
    net = int(min(64, max(16, math.ceil(CLUSTER_HALO_DIAMETERS * _object_diameter(model)))))
    return (net,) * model.config.ndim


def _object_diameter(model: SpocoModel) -> float:
    """Equivalent diameter of the median painted object (network pixels), or of a typical
    nucleus when the model has no record of its objects."""
    ndim = model.config.ndim
    median = model.history.get("object_size_median") or (600.0 if ndim == 2 else 4000.0)
    return 2.0 * object_radius(median, ndim)


@dataclass
class BlockwiseResult:
    """What :func:`segment_blockwise` wrote: the label store, its object count, and the blocks
    that failed twice (left empty), by core and reason."""

    path: Path
    shape: tuple[int, ...]
    objects: int
    blocks: int
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def labels(self):
        """The label array (zarr), read lazily."""
        return open_label_store(self.path)


# --- work done in the workers ------------------------------------------------------------------

_MODELS: dict[str, SpocoModel] = {}


def _worker_model(path: str) -> SpocoModel:
    """The model of ``path``, loaded once per process."""
    if path not in _MODELS:
        from .io import load_model

        _MODELS.clear()
        _MODELS[path] = load_model(path)
    return _MODELS[path]


_LOCAL = threading.local()


def _thread_model(model: SpocoModel) -> SpocoModel:
    """This thread's own copy of ``model``: embedding switches a network's memory format and
    device while it runs, which threads sharing one network would do to each other."""
    if getattr(_LOCAL, "source", None) is not model:
        import copy

        _LOCAL.source, _LOCAL.copy = model, copy.deepcopy(model)
    return _LOCAL.copy


def _drop_thread_model() -> None:
    """Free the calling thread's copy of the model now. Left in the thread's local storage, it
    would be freed when the thread ends; in a Qt thread-pool thread (a napari worker running
    the run with the synchronous scheduler) that is while sip tears the thread's Python state
    down, and freeing a torch module there aborted the process ("double free or corruption",
    PyQt6 6.11 / sip 13.13; tests/napari/test_blockwise_gui.py)."""
    for name in ("source", "copy"):
        _LOCAL.__dict__.pop(name, None)


@dataclass(frozen=True)
class _Job:
    """Everything a block task needs, picklable: where to read, what to run, where to write."""

    model_path: str
    image: LazyImage
    out: str
    scratch: str
    config: ClusterConfig
    value_range: tuple
    voxel_size: tuple[float, ...] | None
    device: str
    threads: int
    segmenter: Callable | None = None  # tests: a stand-in for the model (region -> labels)
    model: SpocoModel | None = None  # in this process: the caller's model, not a copy from the file
    precision: str = INFERENCE_PRECISION
    embeddings: EmbeddingStore | None = None  # blocks cluster these (embedding_store.py) instead of embedding
    tta: bool = True  # test-time augmentation (inference.embed)


def _job_model(job: _Job) -> SpocoModel:
    """The model in this worker: this thread's copy of the caller's, or loaded from the file."""
    return _thread_model(job.model) if job.model is not None else _worker_model(job.model_path)


def _tile_budget(job: _Job, model: SpocoModel) -> int | None:
    """Largest network tile within a block (:data:`BLOCK_TILE_VOXELS`, in the run's number format)."""
    from .model import select_device
    from .precision import resolve_precision, tile_voxels

    budget = BLOCK_TILE_VOXELS[model.config.ndim]
    if budget is None:
        return None
    return tile_voxels(budget, resolve_precision(job.precision, select_device(job.device), model.config.ndim))


def _region_labels(job: _Job, data: np.ndarray, edges) -> np.ndarray:
    """Instance labels of one block's region (the region's shape); ``edges`` says which of its
    sides are the image's (reflected context there, the image's own pixels elsewhere)."""
    if job.segmenter is not None:
        return np.asarray(job.segmenter(data))
    from .inference import prepare_image
    from .segmentation import _segment_prepared

    model = _job_model(job)
    prepared = prepare_image(model, data, job.value_range, job.image.channel_axis)
    whole = (1 << 30,) * model.config.ndim  # the region is one tile: blocks are the tiles here
    return np.asarray(_segment_prepared(model, prepared, job.config, tile_shape=whole, device=job.device,
                                        voxel_size=job.voxel_size, edges=edges,
                                        tile_voxels=_tile_budget(job, model), precision=job.precision,
                                        tta=job.tta))


def _stored_region_labels(job: _Job, region: tuple[slice, ...]) -> np.ndarray:
    """Instance labels of one block's region clustered from the stored embeddings, with the
    settings :func:`_region_labels` would use (the model's record, the size cap of the region)."""
    from dataclasses import replace

    from .clustering import cluster_embeddings
    from .segmentation import auto_max_size, model_cluster_config

    model = _job_model(job)
    emb, fg = job.embeddings.read(region)
    config = model_cluster_config(model, job.config)
    if config.max_size is None:
        config = replace(config, max_size=auto_max_size(model, emb.shape[1:]))
    return np.asarray(cluster_embeddings(emb, fg, config))


def embed_task(job: _Job, core: tuple[slice, ...], region: tuple[slice, ...]) -> dict:
    """Embed one embedding core into the store (:func:`embedding_store.embed_core`); a failure
    is tried once more, then the core stays empty (background) and the reason is returned."""
    import torch

    from .embedding_store import embed_core

    torch.set_num_threads(max(1, job.threads))
    reason = None
    for _attempt in range(2):
        try:
            model = _job_model(job)
            embed_core(model, job.image.read, job.embeddings, core, region, job.image.spatial_shape, job.value_range,
                       job.image.channel_axis, job.device, job.precision, _tile_budget(job, model),
                       job.config.foreground_threshold, job.tta)
            reason = None
            break
        except Exception as exc:  # noqa: BLE001 - reported per core, the others carry on
            reason = _failure(exc)
    _release_memory()
    return {"core": "[" + ", ".join(f"{s.start}:{s.stop}" for s in core) + "]", "failed": reason}


def _failure(exc: Exception) -> str:
    """One line for the user on why a block or an embedding core failed."""
    if isinstance(exc, MemoryError):
        return f"out of memory ({exc}); give a smaller --block-shape"
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def _free_bytes(folder: Path) -> int | None:
    """Free space on the file system of ``folder`` (None when it cannot be told)."""
    try:
        return shutil.disk_usage(folder if folder.exists() else folder.parent).free
    except OSError:
        return None


def _constant(data: np.ndarray) -> bool:
    return data.size > 0 and bool(np.all(data == data.flat[0]))


def _release_memory() -> None:
    """Hand freed heap back to the OS after a block (glibc keeps it otherwise, and a worker's
    memory crept up by about 0.2 GB over a run of blocks); a no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_block(job: _Job, block: Block) -> dict:
    """Segment one block, write its core's labels (1..n) and keep its view of the halo for
    linking. A failure is tried once more; then the core stays empty and the reason is returned."""
    import torch

    if job.segmenter is None:
        torch.set_num_threads(max(1, job.threads))
    t0 = time.perf_counter()
    reason = None
    for _attempt in range(2):
        try:
            if job.embeddings is not None:
                labels = _stored_region_labels(job, block.region)
            else:
                data = job.image.read(block.region)
                if _constant(data):  # padding or empty space: nothing to find, no network to run
                    return {"index": block.index, "n": 0, "failed": None, "seconds": time.perf_counter() - t0}
                edges = tuple((r.start == 0, r.stop == n) for r, n in zip(block.region, job.image.spatial_shape))
                labels = _region_labels(job, data, edges)
            reason = None
            break
        except Exception as exc:  # noqa: BLE001 - reported per block, the others carry on
            reason = _failure(exc)
    _release_memory()
    if reason is not None:
        return {"index": block.index, "n": 0, "failed": reason, "seconds": time.perf_counter() - t0}
    inner = block.core_in_region
    ids = np.unique(labels[inner])
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.uint32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    local = lut[labels]
    open_label_store(job.out, writable=True)[block.core] = local[inner]
    view = local.copy()
    view[inner] = 0
    if view.any():
        np.savez_compressed(Path(job.scratch) / f"view_{block.index}.npz", view=view)
    return {"index": block.index, "n": len(ids), "failed": None, "seconds": time.perf_counter() - t0}


def link_block(out: str, scratch: str, block: Block, others: Sequence[Block], offsets: dict[int, int]) -> np.ndarray:
    """(P, 2) pairs of global ids that are one object: ``block``'s view of its halo against each
    neighbour's own labels where the halo covers that neighbour's core (IoU > LINK_IOU)."""
    path = Path(scratch) / f"view_{block.index}.npz"
    if not path.exists():
        return np.zeros((0, 2), np.int64)
    with np.load(path) as f:
        view = f["view"]
    store = open_label_store(out)
    pairs = []
    for other in others:
        strip = _overlap(block.region, other.core)
        mine = view[tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(strip, block.region))]
        if not mine.any():
            continue
        theirs = np.asarray(store[strip])
        both = (mine > 0) & (theirs > 0)
        if not both.any():
            continue
        a, b = mine[both].astype(np.int64), theirs[both].astype(np.int64)
        key = a * (int(b.max()) + 1) + b
        uniq, counts = np.unique(key, return_counts=True)
        ua, ub = uniq // (int(b.max()) + 1), uniq % (int(b.max()) + 1)
        size_a = np.bincount(mine[mine > 0].astype(np.int64))
        size_b = np.bincount(theirs[theirs > 0].astype(np.int64))
        iou = counts / (size_a[ua] + size_b[ub] - counts)
        keep = iou > LINK_IOU
        if keep.any():
            pairs.append(np.stack([ua[keep] + offsets[block.index], ub[keep] + offsets[other.index]], 1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


def relabel_block(out: str, block: Block, lut: np.ndarray) -> None:
    """Rewrite one core's labels (1..n) through its slice of the global table."""
    store = open_label_store(out, writable=True)
    store[block.core] = lut[np.asarray(store[block.core])]


def global_ids(total: int, pairs: np.ndarray) -> np.ndarray:
    """Table from global piece ids (0..total) to object ids 1..N (0 stays 0): linked pieces get
    one id, numbered in order of their first piece."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = total + 1
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    # number components by their smallest piece id, piece 0 (background) first
    first = np.full(comp.max() + 1, n, np.int64)
    np.minimum.at(first, comp, np.arange(n))
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[comp].astype(np.uint32)  # piece 0 is alone and first: background stays 0


# --- the engine ----------------------------------------------------------------------------------


class Engine:
    """Runs lists of independent tasks with dask: in this process, in ``workers`` processes, or
    on the dask.distributed scheduler at ``scheduler`` (an address or a ``Client``).

    ``threads``: torch threads per task, so that workers × threads fills the CPU cores once.
    """

    def __init__(self, workers: int = 1, scheduler=None, prefer_threads: bool = False):
        if workers < 1:
            raise SpocoError(f"workers must be 1 or more, not {workers}.")
        self.workers, self.scheduler, self.prefer_threads = int(workers), scheduler, prefer_threads
        self.client = None
        self._own_client = False
        self.pool = None

    def __enter__(self) -> Engine:
        if self.scheduler is not None:
            try:
                from distributed import Client
            except ImportError:
                raise SpocoError("A dask cluster needs the distributed package: pip install distributed.") from None
            if isinstance(self.scheduler, Client):
                self.client = self.scheduler
            else:
                try:
                    self.client = Client(self.scheduler, timeout="20s")
                except Exception as exc:  # noqa: BLE001 - the address is the user's
                    raise SpocoError(f"Could not reach the dask scheduler at {self.scheduler} ({exc}); start one "
                                     "(dask scheduler; dask worker ADDRESS) or leave --scheduler out.") from None
                self._own_client = True
        elif self.workers > 1 and not self.prefer_threads:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: forking a process that already runs torch's thread pools can hang
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, *exc) -> bool:
        if self.pool is not None:
            self.pool.shutdown(wait=exc[0] is None, cancel_futures=True)
        if self._own_client and self.client is not None:
            self.client.close()
        return False

    @property
    def threads(self) -> int:
        """Torch threads per task: this machine's cores shared by the local workers (a
        cluster's workers: one each per core they run on, as dask starts them)."""
        if self.client is not None:
            return 1
        if self.workers == 1:
            import torch

            return torch.get_num_threads()  # in this process: as the caller has it
        return max(1, (os.cpu_count() or 1) // self.workers)

    def map(self, fn: Callable, items: Sequence, progress: Callable[[int, int], None] | None = None) -> list:
        """``[fn(*item) for item in items]``, run by the engine; ``progress(done, total)`` after
        each task."""
        import dask

        total = len(items)
        if total == 0:
            return []
        tasks = [dask.delayed(fn, pure=False)(*item) for item in items]
        if self.client is not None:
            from distributed import as_completed

            futures = self.client.compute(tasks, retries=1)
            index = {f.key: i for i, f in enumerate(futures)}
            results: list = [None] * total
            for done, fut in enumerate(as_completed(futures), start=1):
                results[index[fut.key]] = fut.result()
                if progress is not None:
                    progress(done, total)
            return results
        from dask.callbacks import Callback

        keys = {t.key for t in tasks}
        count = [0]

        def posttask(key, result, dsk, state, worker_id):
            if key in keys:
                count[0] += 1
                if progress is not None:
                    progress(count[0], total)

        if self.pool is not None:
            kwargs = {"scheduler": "processes", "pool": self.pool, "chunksize": 1}
        elif self.workers > 1:
            kwargs = {"scheduler": "threads", "num_workers": self.workers}
        else:
            kwargs = {"scheduler": "synchronous"}
        with Callback(posttask=posttask):
            return list(dask.compute(*tasks, optimize_graph=False, **kwargs))


# --- the driver ----------------------------------------------------------------------------------


def sample_value_range(model: SpocoModel, image: LazyImage, boxes: int = 16, side: int | None = None):
    """The intensity range that normalises the image, from up to ``boxes`` boxes spread over it
    (percentiles 1 and 99.8 of their pixels, as :func:`napari_spoco.data.intensity_range` takes
    them of an image in memory), without reading the whole image."""
    from .data import intensity_range
    from .inference import prepare_image

    shape = image.spatial_shape
    side = side or (256 if len(shape) == 2 else 64)
    box = [min(n, side) for n in shape]
    per_axis = max(1, round(boxes ** (1 / len(shape))))
    starts = [sorted({int(round(s)) for s in np.linspace(0, n - b, min(per_axis, n - b + 1))})
              for n, b in zip(shape, box)]
    parts = []
    for combo in itertools.product(*starts):
        region = tuple(slice(a, a + b) for a, b in zip(combo, box))
        data = prepare_image(model, image.read(region), (0.0, 1.0), image.channel_axis).data
        parts.append(data.reshape(data.shape[0], -1) if model.config.in_channels > 1 else data.ravel())
    sample = np.concatenate(parts, axis=-1)
    return intensity_range(sample, channels=model.config.in_channels)


def as_lazy(image, model_ndim: int, channel_axis: int | None = None) -> LazyImage:
    """``image`` as a :class:`LazyImage`: itself, or an array (numpy, dask, zarr) with its axes
    read from the model's dimensionality and ``channel_axis``."""
    if isinstance(image, LazyImage):
        return image
    shape = tuple(image.shape)
    spatial = "yx" if model_ndim == 2 else "zyx"
    if channel_axis is not None:
        ax = channel_axis % len(shape)
        axes = spatial[:ax] + "c" + spatial[ax:]
    elif model_ndim == 2 and len(shape) == 3 and shape[-1] in (3, 4):
        axes = "yxs"
    else:
        axes = spatial
    if len(axes) != len(shape):
        have = len(shape) - (channel_axis is not None)
        raise SpocoError(f"This is a {model_ndim}D model but the image is {have}D (shape {shape}); use a model "
                         f"trained on {have}D images, or give channel_axis if one axis holds channels.")
    return LazyImage(image, axes)


def segment_blockwise(
    model: SpocoModel,
    image,
    out: str | os.PathLike,
    config: ClusterConfig | None = None,
    block_shape: Sequence[int] | None = None,
    halo: Sequence[int] | int | None = None,
    value_range=None,
    voxel_size: Sequence[float] | None = None,
    channel_axis: int | None = None,
    workers: int = 1,
    scheduler=None,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    _segmenter: Callable | None = None,
    precision: str = INFERENCE_PRECISION,
    embed_first: bool | None = None,
    tta: bool = True,
) -> BlockwiseResult:
    """Segment ``image`` block by block into a new zarr label store at ``out``.

    ``image``: a :class:`~napari_spoco.lazy_io.LazyImage` (``lazy_io.open_lazy(path)``) or an
    array (numpy, dask or zarr; ``channel_axis`` as in :func:`napari_spoco.segment`).
    ``block_shape`` caps the core each block writes (the output's chunk shape; default: planned
    by :func:`plan_core_shape` for the least work within :data:`REGION_PIXELS` a block); ``halo``
    the context read around it (default :func:`cluster_halo` when embedding first, else
    :func:`block_halo`).
    ``value_range`` defaults to percentiles of boxes sampled over the image
    (:func:`sample_value_range`); ``voxel_size`` to the image's recorded spacing, else the
    model's. ``workers``/``scheduler``: see :class:`Engine`. ``progress(done, total)`` counts
    embedding cores, then segmented blocks. ``precision`` and ``tta``: the network's number format
    and test-time augmentation (:func:`napari_spoco.segment`). ``embed_first`` (default: in 3D where it applies,
    :func:`napari_spoco.embedding_store.applies`, and where the scratch space is free) embeds
    the image once into a scratch store next to ``out`` and clusters the blocks from it, instead
    of embedding each block with its halo. Returns a :class:`BlockwiseResult`; blocks (and
    embedding cores) that failed twice are empty there and listed in ``failed``.
    """
    from .precision import check_precision
    from .scaling import check_voxel_size
    from .training import as_model

    check_precision(precision)
    t_start = time.perf_counter()
    model = as_model(model)
    if model is None:
        raise SpocoError("No model was given; train one, load one (napari_spoco.load_model) or pass a model file's path.")
    lazy = as_lazy(image, model.config.ndim, channel_axis)
    shape = lazy.spatial_shape
    if len(shape) != model.config.ndim:
        raise SpocoError(f"This is a {model.config.ndim}D model but {lazy.name} is {len(shape)}D "
                         f"(shape {shape}); use a model trained on {len(shape)}D images.")
    config = config or ClusterConfig()
    voxel_size = check_voxel_size(voxel_size if voxel_size is not None else lazy.voxel_size, model.config.ndim)
    factors = model.network_factors(voxel_size)
    if block_shape is not None and (len(block_shape) != len(shape) or min(block_shape) < 1):
        raise SpocoError(f"block shape {tuple(block_shape)} does not fit a {len(shape)}D image; give one size per axis.")
    from . import embedding_store

    applies = _segmenter is None and embedding_store.applies(model, factors, config.method)
    if embed_first is None:  # by default where it was measured to pay
        applies = applies and model.config.ndim in embedding_store.DEFAULT_NDIMS
    elif embed_first and not applies:
        raise SpocoError("Embedding first needs the network to work on the image's own grid (no object scale or "
                         "anisotropy resize) and a clustering other than consistency; leave embed_first unset.")
    out = Path(out)
    need, free = embedding_store.disk_bytes(shape, model), _free_bytes(out.parent)
    if applies and free is not None and need > 0.9 * free:
        if embed_first:
            raise SpocoError(f"Embedding first needs up to {need / 1e9:.1f} GB of scratch space next to {out}, and "
                             f"{free / 1e9:.1f} GB are free; free some space, write elsewhere, or leave embed_first unset.")
        applies = False  # each block embeds its own region instead: slower, needs no scratch space
    embed_first = applies if embed_first is None else bool(embed_first)
    if halo is None:
        halo_t = cluster_halo(model) if embed_first else block_halo(model, factors)
    else:
        halo_t = tuple(halo) if isinstance(halo, Sequence) else (int(halo),) * len(shape)
    core = plan_core_shape(shape, halo_t, block_shape)
    if value_range is None and _segmenter is None:
        value_range = sample_value_range(model, lazy)
    blocks = plan_blocks(shape, core, halo_t)
    create_label_store(out, shape, core, like=lazy, unfinished=True)
    scratch = Path(tempfile.mkdtemp(prefix=".spoco-blocks-", dir=out.parent))
    finished = False
    try:
        model_path = str(scratch / "model.spoco.pt")
        prefer_threads = lazy.kind == "array"  # an array in memory is shared, not pickled per block
        in_process = scheduler is None and (workers == 1 or prefer_threads)
        if _segmenter is None and not in_process:  # worker processes load it from the file
            from .io import save_model

            save_model(model, model_path)
        with Engine(workers, scheduler, prefer_threads=prefer_threads) as engine:
            store = None
            cores: list = []
            if embed_first:
                store = EmbeddingStore(embedding_store.scratch_path(scratch), model.config.embedding_dim,
                                       bool(model.config.foreground_head))
                ecore = embedding_store.plan_cores(shape, model, REGION_PIXELS[2 if len(shape) == 2 else 3])
                store.create(shape, ecore)
                cores = embedding_store.core_regions(shape, ecore, embedding_store.context(model))
            steps = len(cores) + len(blocks)
            job = _Job(model_path, lazy, str(out), str(scratch), config, value_range,
                       tuple(voxel_size) if voxel_size is not None else None, device, engine.threads, _segmenter,
                       model if in_process else None, precision, store, tta)
            embedded = engine.map(embed_task, [(job, c, r) for c, r in cores],
                                  None if progress is None else lambda i, n: progress(i, steps))
            failed = {d["core"]: "embedding: " + d["failed"] for d in embedded if d["failed"]}
            done = engine.map(run_block, [(job, b) for b in blocks],
                              None if progress is None else lambda i, n: progress(len(cores) + i, steps))
            counts = {d["index"]: d["n"] for d in done}
            failed.update({blocks[d["index"]].describe(): d["failed"] for d in done if d["failed"]})
            offsets, total = {}, 0
            for b in blocks:
                offsets[b.index] = total
                total += counts[b.index]
            links = engine.map(link_block, [(str(out), str(scratch), b, neighbours(blocks, b), offsets)
                                            for b in blocks if counts[b.index] > 0])
            table = global_ids(total, np.concatenate(links) if links else np.zeros((0, 2), np.int64))
            jobs = [(str(out), b, np.concatenate([[0], table[offsets[b.index] + 1: offsets[b.index] + counts[b.index] + 1]])
                     .astype(np.uint32)) for b in blocks if counts[b.index] > 0]
            engine.map(relabel_block, jobs)
        if not failed:  # last: a store left unmarked was cut short or has empty parts (predict --skip-existing)
            mark_complete(out)
        finished = True
    finally:
        _drop_thread_model()  # the synchronous scheduler made it in this thread
        shutil.rmtree(scratch, ignore_errors=True)
        if not finished:  # interrupted or failed: a half-written store would pass for a result
            remove_store(out)
    objects = int(table.max(initial=0))
    return BlockwiseResult(out, shape, objects, len(blocks), failed, time.perf_counter() - t_start)
