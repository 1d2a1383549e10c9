"""What a front end needs around block-wise segmentation (:mod:`napari_spoco.blockwise`) of
images larger than memory: when to use it, a per-session folder for the label stores it
writes, stopping it, lazy views of its result, copying a lazy label array to a new zarr store
chunk by chunk, and the voxel size an image's scale says.

Qt-free: the napari plugin uses it (``_napari/blockwise_run.py``, the export), and scripts can.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from .errors import SpocoError
from .lazy_io import HOST

#: Pixels (spatial, per image) above which an image in memory is segmented block by block and
#: a label array is not loaded whole: 8000² in 2D, 400³ in 3D. In-memory segmentation of such
#: an image needs several times its float32 size (the normalised image, the label image and
#: its stitching); a block needs that of one block whatever the image's size.
MAX_IN_MEMORY_PIXELS = 64_000_000

#: ``Labels.metadata`` key: the zarr store a lazy result layer reads (the session folder's).
STORE_KEY = "spoco_store"


class Cancelled(Exception):
    """Raised from a progress callback to stop a block-wise run (which then deletes its store)."""


def is_lazy(data) -> bool:
    """An array not held in memory as numpy (dask, zarr, a reader's array)."""
    return not isinstance(data, np.ndarray)


def pixels(shape: Sequence[int]) -> int:
    return int(np.prod([int(n) for n in shape], dtype=np.int64))


def too_large_for_memory(shape: Sequence[int]) -> bool:
    """More spatial pixels than :data:`MAX_IN_MEMORY_PIXELS`."""
    return pixels(shape) > MAX_IN_MEMORY_PIXELS


#: A lazy (dask, zarr) image of at most this many pixels is read whole and segmented in memory
#: by the napari panel: it fits many times over, and in memory its embedding is kept for
#: Suggest next and the embedding view, which block-wise segmentation keeps neither of (the
#: panel keeps an embedding up to the same size: suggest_row.MAX_KEPT_PIXELS is this value).
LAZY_IN_MEMORY_PIXELS = 16_000_000


def needs_blockwise(data, spatial_shape: Sequence[int], multiscale: bool = False) -> bool:
    """Whether an image (``data``: its full-resolution array) is segmented block by block: it
    is multiscale, too large for in-memory segmentation, or lazy (dask, zarr) and larger than
    :data:`LAZY_IN_MEMORY_PIXELS`."""
    lazy_and_large = is_lazy(data) and pixels(spatial_shape) > LAZY_IN_MEMORY_PIXELS
    return bool(multiscale or lazy_and_large or too_large_for_memory(spatial_shape))


def step_count(shape: Sequence[int], block_shape: Sequence[int] | None = None) -> int:
    """About how many steps :func:`napari_spoco.blockwise.segment_blockwise` reports for
    ``shape`` with a shipped model: in 3D the embedding cores, then the blocks; in 2D the blocks
    (its progress gives the exact total from the first step on)."""
    from .blockwise import REGION_PIXELS, plan_core_shape

    if len(shape) == 2:  # the halo depends on the model (blockwise.block_halo): 56 px for the shipped 2D model
        core = plan_core_shape(shape, (56, 56), block_shape)
        return int(np.prod([math.ceil(n / c) for n, c in zip(shape, core)]))
    # 3D embeds first (embedding_store.py): cores with the network's reach, 28 voxels (embedding_store.context),
    # then blocks with the clustering's halo (blockwise.cluster_halo), 29 voxels for the shipped 3D model
    core = plan_core_shape(shape, (29,) * 3, block_shape)
    embedding = plan_core_shape(shape, (28,) * 3, budget=REGION_PIXELS[3])
    return sum(int(np.prod([math.ceil(n / c) for n, c in zip(shape, cs)])) for cs in (core, embedding))


def stoppable(stop: threading.Event, report: Callable[[int, int], None] | None = None) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that raises :class:`Cancelled` once ``stop`` is
    set (after the block that just finished) and otherwise passes the count on to ``report``."""

    def progress(done: int, total: int) -> None:
        if stop.is_set():
            raise Cancelled(f"stopped after {done} of {total} blocks")
        if report is not None:
            report(done, total)

    return progress


def lazy_levels(labels, level_shapes: Sequence[Sequence[int]] | None = None):
    """A block-wise result (zarr array) as dask: one array, or, with the ``level_shapes`` of a
    multiscale image, one strided view per level (every k-th pixel: ids are never blended), so
    that a viewer reads only what the level it shows needs."""
    import dask.array as da

    full = da.from_zarr(labels)
    if not level_shapes or len(level_shapes) < 2:
        return full
    base = [int(n) for n in level_shapes[0]][-full.ndim:]
    levels = [full]
    for shape in level_shapes[1:]:
        shape = [int(n) for n in shape][-full.ndim:]
        step = tuple(max(1, round(b / max(1, s))) for b, s in zip(base, shape))
        if all(s == 1 for s in step):
            continue
        levels.append(full[tuple(slice(None, None, s) for s in step)])
    return levels if len(levels) > 1 else full


def _chunk_shape(data, shape: Sequence[int]) -> tuple[int, ...]:
    chunks = getattr(data, "chunksize", None) or getattr(data, "chunks", None)
    if chunks is None or len(chunks) != len(shape) or not all(isinstance(c, (int, np.integer)) for c in chunks):
        ndim = len(shape)
        chunks = (512, 512) if ndim == 2 else (64,) * (ndim - 2) + (256, 256)
    return tuple(max(1, min(int(c), int(n))) for c, n in zip(chunks, shape))


def copy_labels(
    data,
    path: str | Path,
    progress: Callable[[int, int], None] | None = None,
    replace: bool = False,
) -> Path:
    """Write a label array (numpy, dask, zarr) to a new zarr store at ``path`` (zarr format 2,
    chunked like the source; it must not exist), one chunk at a time, so that memory is that of
    one chunk. ``progress(done, total)`` counts chunks; if anything fails (or ``progress``
    raises), the store is removed.

    ``replace``: ``path`` may exist (the user agreed to replace it): the copy goes to a hidden
    folder beside it and takes its place only once complete, so that a copy that fails (a full
    disk, a chunk that cannot be read) leaves the old store as it was (the disk must hold both
    stores for the time of the copy)."""
    from .lazy_io import remove_store

    path = Path(path)
    recover_interrupted_copy(path)
    if not (replace and path.exists()):
        return _copy_labels(data, path, progress)
    tag = f"{_HOST}-{os.getpid()}"
    partial = path.with_name(f".{path.name}.partial-{tag}")
    old = path.with_name(f".{path.name}.old-{tag}")
    with _in_flight(path):
        remove_store(partial)  # leftovers of a run of this process id that crashed
        remove_store(old)
        _copy_labels(data, partial, progress)  # removes itself on failure; ``path`` untouched
        try:
            path.rename(old)
        except OSError:
            remove_store(partial)
            raise
        try:
            partial.rename(path)
        except OSError:
            old.rename(path)  # put the old store back
            remove_store(partial)
            raise
        remove_store(old)
    return path


#: This machine in the hidden names of a replacing copy: process ids are per machine, and a
#: shared disk (NFS, SMB) may hold copies that other machines' processes are making.
_HOST = HOST
_COPYING: set[str] = set()  # paths this process is replacing now
_COPYING_LOCK = threading.Lock()


@contextlib.contextmanager
def _in_flight(path: Path):
    key = os.path.abspath(path)
    with _COPYING_LOCK:
        _COPYING.add(key)
    try:
        yield
    finally:
        with _COPYING_LOCK:
            _COPYING.discard(key)


def _running(pid: int) -> bool:
    """Whether a process of this id runs on this machine; unknown counts as running."""
    if os.name == "nt":  # os.kill(pid, 0) sends Ctrl+C there: ask psutil, or leave the files alone
        try:
            import psutil
        except ImportError:
            return True
        return bool(psutil.pid_exists(pid))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process, or a platform that cannot tell: leave its files alone
    return True


def _stale(path: Path, host: str, pid: int) -> bool:
    """Whether a hidden copy of ``path`` tagged ``host``/``pid`` is a dead run's leftover: of this
    machine, and of a process that no longer runs — or of this process, when it is not replacing
    ``path`` now (a restarted program often gets the same id in a container)."""
    if host != _HOST:
        return False
    if pid == os.getpid():
        with _COPYING_LOCK:
            return os.path.abspath(path) not in _COPYING
    return not _running(pid)


def _mtime(entry: Path) -> float:
    try:
        return entry.stat().st_mtime
    except OSError:
        return 0.0


def recover_interrupted_copy(path: str | Path, clean: bool = True) -> Path | None:
    """Undo what a replacing :func:`copy_labels` left when its process died between its steps
    (a crash, a kill, a power cut): the hidden ``.<name>.old-<host>-<pid>`` store goes back to
    ``path`` if nothing is at ``path`` (the user's last complete store, not a copy that may be
    half-written), and with ``clean`` the other leftovers of dead runs (``.partial-…`` copies,
    older ``.old-…`` stores) are removed — slow for a large store, so a GUI restores at once and
    leaves the removal to the copy it starts in the background. Returns ``path`` when a store
    was put back, else None. Files of a process that still runs, or of another machine, are left
    alone (it may be copying now)."""
    from .lazy_io import remove_store

    path = Path(path)
    prefix = f".{path.name}."
    if not path.parent.is_dir():
        return None
    stale: dict[str, list[Path]] = {"old": [], "partial": []}
    for entry in path.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        parts = entry.name[len(prefix):].split("-")  # kind-host-pid (kind-pid before hosts were named)
        if len(parts) not in (2, 3) or parts[0] not in stale or not parts[-1].isdigit():
            continue
        host = parts[1] if len(parts) == 3 else _HOST
        if _stale(path, host, int(parts[-1])):
            stale[parts[0]].append(entry)
    restored = None
    # newest first: two crashed replaces in a row leave two old stores; the later one is the newer
    for old in sorted(stale["old"], key=_mtime, reverse=True):
        if restored is None and not os.path.lexists(path):
            old.rename(path)
            restored = path
        elif clean:
            remove_store(old)
    if clean:
        for partial in stale["partial"]:
            remove_store(partial)
    return restored


def store_state(path: str | os.PathLike) -> str:
    """What a label store at ``path`` holds, for ``predict --skip-existing``: 'complete' (marked
    whole), 'unfinished' (marked as being written by a run that no longer runs, or with failed
    parts), 'writing' (by a run that still runs on this machine), or 'unknown' (no mark: an
    earlier version's or another tool's store, or one that cannot be opened)."""
    from .lazy_io import store_marks

    marks = store_marks(path)
    if marks is None or marks[0] is None:
        return "unknown"
    complete, writer = marks
    if complete:
        return "complete"
    host, _, pid = str(writer or "").rpartition("-")
    if host == _HOST and pid.isdigit() and int(pid) != os.getpid() and _running(int(pid)):
        return "writing"
    return "unfinished"


def write_label_store(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """A label image held in memory written as a zarr store (``predict --out-format zarr`` of an
    image read whole), marked whole at the end; an existing store at ``path`` is replaced."""
    from .lazy_io import create_label_store, mark_complete, remove_store

    path = Path(path)
    labels = np.asarray(labels)
    remove_store(path)
    store = create_label_store(path, labels.shape, _chunk_shape(labels, labels.shape), dtype=labels.dtype,
                               unfinished=True)
    store[...] = labels
    mark_complete(path)
    return path


def _copy_labels(data, path: Path, progress: Callable[[int, int], None] | None) -> Path:
    from .lazy_io import create_label_store, remove_store

    shape = tuple(int(n) for n in data.shape)
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "iub":
        raise SpocoError(f"Labels must hold whole numbers, not {dtype}; this layer cannot be saved as labels.")
    chunks = _chunk_shape(data, shape)
    store = create_label_store(path, shape, chunks, dtype=dtype if dtype.kind != "b" else np.uint8)
    grid = [range(0, n, c) for n, c in zip(shape, chunks)]
    total = int(np.prod([len(g) for g in grid]))
    done = 0
    try:
        for starts in np.ndindex(*[len(g) for g in grid]):
            region = tuple(slice(g[i], min(g[i] + c, n)) for g, i, c, n in zip(grid, starts, chunks, shape))
            block = np.asarray(data[region])
            if block.any():  # zeros are the fill value: nothing to write
                store[region] = block
            done += 1
            if progress is not None:
                progress(done, total)
    except BaseException:
        remove_store(path)
        raise
    return path


class ScratchStores:
    """A folder for one session's block-wise results (``napari-spoco-*`` in the temporary
    folder, ``TMPDIR``), made on first use and removed when the process ends. Stores no longer
    read by anything are removed with :meth:`sweep`; :meth:`hold` keeps one during a copy."""

    def __init__(self, parent: str | Path | None = None) -> None:
        self.parent = parent
        self.root: Path | None = None
        self.held: set[str] = set()
        self._count = 0

    def new_path(self, name: str) -> Path:
        """A path for a new store, named after ``name``, that does not exist yet."""
        if self.root is None or not self.root.exists():
            self.root = Path(tempfile.mkdtemp(prefix="napari-spoco-", dir=self.parent))
            atexit.register(shutil.rmtree, str(self.root), True)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "labels"
        while True:
            self._count += 1
            path = self.root / f"{stem}-{self._count}.zarr"
            if not path.exists():
                return path

    def stores(self) -> list[Path]:
        return sorted(self.root.glob("*.zarr")) if self.root is not None and self.root.exists() else []

    def sweep(self, keep: Iterable[str | Path | None]) -> list[Path]:
        """Remove this folder's stores that are neither in ``keep`` nor held; the removed ones."""
        from .lazy_io import remove_store

        kept = {str(Path(p).resolve()) for p in keep if p} | {str(Path(p).resolve()) for p in self.held}
        gone = [p for p in self.stores() if str(p.resolve()) not in kept]
        for p in gone:
            remove_store(p)
        return gone

    def hold(self, path: str | Path | None) -> None:
        if path:
            self.held.add(str(path))

    def release(self, path: str | Path | None) -> None:
        self.held.discard(str(path))


def voxel_size_from_scale(scale: Sequence[float], ndim: int) -> tuple[float, ...] | None:
    """The voxel size of an image from its last ``ndim`` scale factors (a viewer's layer scale);
    None when they are all 1 (no spacing recorded: the model's own voxel size applies)."""
    from .scaling import check_voxel_size

    values = tuple(abs(float(s)) for s in list(scale)[-ndim:])
    if len(values) != ndim or all(v == 1.0 for v in values):
        return None
    return check_voxel_size(values, ndim)


def voxel_note(voxel_size: Sequence[float] | None, model=None, source: str = "the layer's scale") -> str:
    """One phrase on the voxel size segmentation or training uses ("" when none applies):
    the image's (from ``source``), else the model's training voxel size, and what it resamples."""
    from .scaling import anisotropy

    if voxel_size is None and model is not None and model.voxel_size is not None:
        voxel_size, source = model.voxel_size, "the model's training voxel size"
    if voxel_size is None:
        return ""
    text = "voxel size " + " × ".join(f"{v:g}" for v in voxel_size) + f" ({source}"
    factors = anisotropy(voxel_size, len(voxel_size))
    stretched = [f"{'zyx'[-len(factors):][i]} ×{f:g}" for i, f in enumerate(factors) if f != 1.0]
    return text + ("; resampled " + ", ".join(stretched) + ")" if stretched else "; isotropic, not resampled)")
