"""Background jobs for the dock widget.

The jobs are plain generators and functions over core calls (no Qt), so tests can run them
directly; :func:`launch` runs one in a napari thread worker, or inline when ``sync`` is set
(``NAPARI_SPOCO_SYNC=1``), which makes GUI tests deterministic.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
from collections.abc import Callable, Generator, Sequence
from collections.abc import Generator as _GeneratorType
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..blockwise import BlockwiseResult, segment_blockwise
from ..clustering import ClusterConfig
from ..data import check_image, count_objects, intensity_range
from ..inference import Embedding
from ..model import ModelConfig, SpocoModel
from ..out_of_core import stoppable
from ..precision import INFERENCE_PRECISION
from ..segmentation import segment, segment_preview, segment_series
from ..suggestions import Suggestion, suggest
from ..training import TrainConfig, TrainProgress, drain, iter_train
from .layers import fingerprint


@dataclass
class PreviewTarget:
    """Where the user is looking: an image (as the model sees it) and a box inside it.

    ``key`` names the image (and frame) so that value ranges are computed once; ``origin`` is
    the box's corner in the layer's data coordinates (with the frame index for 2D+t stacks).
    ``layer_id`` is the image layer's ``unique_id``, which survives renaming; the worker never
    uses it.
    """

    key: str
    image: np.ndarray
    box: tuple[slice, ...]
    origin: tuple[int, ...]
    layer: str = ""  # the image layer's name
    layer_id: Any = None


@dataclass
class PreviewResult:
    labels: np.ndarray
    target: PreviewTarget
    step: int
    seconds: float


@dataclass
class PreviewSkipped:
    """No preview could be made of the image ``key`` (layer ``layer``); the run goes on without."""

    key: str
    layer: str
    reason: str


@dataclass
class TrainJob:
    """Everything a training run needs, copied out of the widgets before the worker starts."""

    images: Sequence[np.ndarray]
    labels: Sequence[np.ndarray]
    config: TrainConfig
    model: SpocoModel | None = None
    model_config: ModelConfig | None = None
    names: Sequence[str] | None = None
    preview_every: float = 0.0  # seconds between previews; 0 switches them off
    preview_target: Callable[[], PreviewTarget | None] = lambda: None
    stop: threading.Event = field(default_factory=threading.Event)
    self_supervised: bool = False  # consistency alone, labels ignored ("Adapt")


def training_job(job: TrainJob) -> Generator[TrainProgress | PreviewResult | PreviewSkipped, None, SpocoModel]:
    """Train, yielding progress after every step and, every ``preview_every`` seconds, a
    segmentation of the current preview target made with a snapshot of the model (or, once per
    image, why none could be made)."""
    steps = iter_train(job.images, job.labels, job.config, job.model, job.model_config, job.stop, job.names,
                       self_supervised=job.self_supervised)
    ranges: dict[str, tuple] = {}
    skipped: set = set()  # image layers a preview failed on (all frames): not tried again in this run
    last = time.perf_counter()
    while True:
        try:
            progress = next(steps)
        except StopIteration as done:
            return done.value
        yield progress
        if job.preview_every <= 0 or time.perf_counter() - last < job.preview_every or job.stop.is_set():
            continue
        target = job.preview_target()
        if target is None:
            continue
        layer = target.layer_id if target.layer_id is not None else target.layer or target.key
        if layer in skipped:
            continue
        t0 = time.perf_counter()
        try:
            value_range = ranges.get(target.key)
            if value_range is None:  # once per image in memory (per box when read from disk)
                value_range = preview_range(target, progress.model.config.in_channels)
                if isinstance(target.image, np.ndarray):
                    ranges[target.key] = value_range
            labels = segment_preview(progress.model, target.image, target.box, value_range)
        except Exception as exc:  # noqa: BLE001 - a preview is a convenience, never the end of a run
            # e.g. the user chose a 3D volume or a grey image in the Image box while a 2D or
            # colour model trains: training goes on, without previews of that image
            skipped.add(layer)
            yield PreviewSkipped(target.key, target.layer, str(exc) or type(exc).__name__)
        else:
            yield PreviewResult(labels, target, progress.step, time.perf_counter() - t0)
        last = time.perf_counter()


def preview_range(target: PreviewTarget, channels: int):
    """The intensity range a preview of ``target`` normalises with: of the whole image when it is
    in memory, of the preview box when it is read from disk (dask, zarr; computed again for each
    box, so that panning away from a first box of background gives a fresh range): a lazy image
    may be far larger than memory, and a preview must not read it whole."""
    image = target.image
    if not isinstance(image, np.ndarray):
        image = np.asarray(image[target.box])
    return intensity_range(check_image(image, "image", channels), channels=channels)


@dataclass
class SegmentJob:
    model: SpocoModel
    image: np.ndarray  # or a small dask/zarr array, read whole in the worker
    config: ClusterConfig | None = None  # the clustering method and its parameters
    series: bool = False  # a (T, Y, X) stack of 2D images
    with_embedding: bool = False  # the embeddings as a PCA colour image
    keep_embedding: bool = False  # the whole Embedding, for suggestions (not for series)
    voxel_size: tuple[float, ...] | None = None  # from the layer's scale (None: the model's)
    precision: str = INFERENCE_PRECISION  # the network's number format (napari_spoco.precision)
    tta: bool = True  # test-time augmentation (napari_spoco.segment)
    progress: Callable[[int, int], None] | None = None  # (done, total) from the worker (not for series)
    name: str = "image"  # what messages call the image: the layer's name, quoted


@dataclass
class SegmentResult:
    labels: np.ndarray
    embedding_rgb: np.ndarray | None
    seconds: float
    objects: int = 0  # counted here, off the GUI thread
    embedding: Embedding | None = None  # with ``keep_embedding``: what Suggest next ranks
    fingerprint: str | None = None  # of ``labels`` (layers.fingerprint), computed off the GUI thread


def segment_job(job: SegmentJob) -> SegmentResult:
    """Full-resolution segmentation (tiled embedding + clustering), optionally with the
    embeddings as a PCA colour image and the embedding itself (one network pass for both)."""
    from ..overlay import embedding_rgb

    t0 = time.perf_counter()
    rgb = emb = None
    if not isinstance(job.image, np.ndarray):  # a small dask or zarr layer: read here, off the GUI thread
        job = replace(job, image=np.asarray(job.image))
    if job.series:
        labels = segment_series(job.model, job.image, config=job.config, precision=job.precision, tta=job.tta,
                                name=job.name)
    elif job.with_embedding or job.keep_embedding:
        labels, emb = segment(job.model, job.image, config=job.config, return_embedding=True,
                              voxel_size=job.voxel_size, precision=job.precision, tta=job.tta, progress=job.progress,
                              name=job.name)
        rgb = embedding_rgb(emb.embeddings) if job.with_embedding else None
    else:
        labels = segment(job.model, job.image, config=job.config, voxel_size=job.voxel_size,
                         precision=job.precision, tta=job.tta, progress=job.progress, name=job.name)
    objects = count_objects(labels)
    return SegmentResult(labels, rgb, time.perf_counter() - t0, objects, emb if job.keep_embedding else None,
                         fingerprint(labels))


@dataclass
class BlockwiseJob:
    """A segmentation block by block (images larger than memory) into a new zarr store ``out``."""

    model: SpocoModel
    image: Any  # the full-resolution array: dask, zarr or numpy; only regions are read
    out: Path
    config: ClusterConfig | None = None
    block_shape: tuple[int, ...] | None = None  # None: planned (blockwise.plan_core_shape)
    voxel_size: tuple[float, ...] | None = None
    progress: Callable[[int, int], None] | None = None  # (blocks done, total), from the worker
    stop: threading.Event = field(default_factory=threading.Event)
    precision: str = INFERENCE_PRECISION
    tta: bool = True


def blockwise_job(job: BlockwiseJob) -> BlockwiseResult:
    """``blockwise.segment_blockwise``; once ``job.stop`` is set, the next finished block raises
    ``Cancelled`` from the progress callback, and the run deletes its partial store."""
    return segment_blockwise(job.model, job.image, job.out, config=job.config, block_shape=job.block_shape,
                             voxel_size=job.voxel_size, device="auto", progress=stoppable(job.stop, job.progress),
                             precision=job.precision, tta=job.tta)


def suggest_job(labels: np.ndarray, embedding: Embedding, k: int, painted_sizes: Sequence[int] | None,
                painted: np.ndarray | None = None,
                background_label: int | None = None) -> tuple[list[Suggestion], list[int]]:
    """The ``k`` most doubtful instances (``suggestions.suggest``) and each one's size in pixels;
    instances already painted in ``painted`` (the sparse labels) are left out."""
    from ..suggestions import painted_instances

    exclude = painted_instances(labels, painted, background_label) if painted is not None else ()
    found = suggest(labels, embedding, k=k, painted_sizes=painted_sizes, exclude=exclude)
    return found, [int(np.count_nonzero(labels == s.label)) for s in found]


def sync_requested() -> bool:
    return os.environ.get("NAPARI_SPOCO_SYNC", "") not in ("", "0")


class JobFailed(Exception):
    """A job's exception on its way out of the worker thread (``args[0]`` is the original).

    superqt's generator worker treats a ``RuntimeError`` from the generator as "the worker was
    deleted": it warns and ends without emitting ``errored`` or ``finished``, so a training run
    that failed with one of torch's many RuntimeErrors would never end in the GUI. Wrapped, every
    failure takes the ``errored`` path.
    """


def _reporting_failures(func: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isgeneratorfunction(func):
        def run_generator(*args):
            try:
                return (yield from func(*args))
            except Exception as exc:
                raise JobFailed(exc) from exc
        return run_generator

    def run(*args):
        try:
            return func(*args)
        except Exception as exc:
            raise JobFailed(exc) from exc
    return run


def launch(
    func: Callable[..., Any],
    *args: Any,
    on_yield: Callable[[Any], None] | None = None,
    on_return: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finish: Callable[[], None] | None = None,
    sync: bool = False,
):
    """Run ``func(*args)`` (a function or a generator function) off the GUI thread.

    Handlers run on the GUI thread; ``on_error`` receives the job's own exception, and an error
    is reported through ``on_error`` alone (napari neither re-raises it nor shows a traceback).
    Returns the napari worker, already started, or None when run inline.
    """
    if sync:
        try:
            result = func(*args)
            if isinstance(result, _GeneratorType):
                result = drain(result, on_yield)
            if on_return is not None:
                on_return(result)
        except Exception as exc:  # noqa: BLE001 - reported to the user by on_error
            if on_error is None:
                raise
            on_error(exc)
        finally:
            if on_finish is not None:
                on_finish()
        return None

    from napari.qt.threading import create_worker

    def errored(exc: BaseException) -> None:
        on_error(exc.args[0] if isinstance(exc, JobFailed) else exc)

    handlers = {
        "yielded": on_yield if inspect.isgeneratorfunction(func) else None,
        "returned": on_return,
        "errored": errored if on_error is not None else None,
        "finished": on_finish,
    }
    # Handlers are connected by create_worker itself, before the thread starts: napari connects
    # a handler that re-raises the error on the GUI thread unless `errored` is among them.
    connect = {signal: handler for signal, handler in handlers.items() if handler is not None}
    return create_worker(_reporting_failures(func), *args, _connect=connect, _start_thread=True)


class Activity:
    """A job's bar in napari's activity dock (``napari.utils.progress``), next to the panel's
    own bar: napari lists every open progress object there, so the job shows even when the
    panel is scrolled away or hidden. ``total=0``: a busy bar (no steps to count). With
    ``on_cancel``, the bar has napari's Cancel button, which calls it (training: Stop).

    Create it after the job is marked as running: napari's dock turns the event loop while it
    adds the bar, and a click on a still-enabled button would be processed then.

    With ``widget`` (a panel docked in napari's window), the animated "in progress" indicator
    in the window's status bar is paused while the bar is open (it keeps its text and frame):
    each of its frames repaints the window on the GUI thread, which under software OpenGL
    (Xvfb, remote desktops) cut training on 2 cores from about 1.6 to 0.3-0.8 steps/s
    (docs/benchmarks.md, "Training in the panel"). It is found through Qt's widget tree (the
    status bar's labels that play a movie), not napari's private attributes; where there is
    none, nothing changes.
    """

    MIN_INTERVAL = 0.5  # seconds

    def __init__(self, description: str, total: int = 0, on_cancel: Callable[[], None] | None = None,
                 widget=None) -> None:
        from napari.utils import cancelable_progress, progress

        # napari's dock shows what follows the last '|' next to the bar: a short "150/300,
        # 02:09 left" rather than tqdm's "150/300 [03:25<02:09, 1.16it/s]", which its narrow
        # dock cuts off.
        kwargs = dict(total=total, desc=description, bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                      "{n_fmt}/{total_fmt}, {remaining} left")
        if on_cancel is None:
            self.progress = progress(**kwargs)
        else:
            class _Stoppable(cancelable_progress):
                # napari's Cancel only flags the progress object (its callback runs when the
                # object is iterated, which ours is not): call back at once.
                def cancel(self) -> None:
                    super().cancel()
                    on_cancel()

            self.progress = _Stoppable(**kwargs)
        self.closed = False
        self._moved = 0.0  # when the bar last moved
        self._indicators = _status_bar_movies(widget)
        for label in self._indicators:
            label.movie().stop()  # napari started it as the bar was added

    def to(self, n: int, total: int | None = None) -> None:
        """Move the bar to ``n`` steps done (of ``total``, where the count is known only as the
        job runs: a Segment learns its tiles as it goes): the first and the last step, and
        otherwise at most every ``MIN_INTERVAL`` seconds. napari's dock turns the event loop as
        it redraws the bar, 15-30 ms of GUI time on a 2-core CPU, too much for every training
        step; call it last in a handler."""
        now = time.perf_counter()
        if total is not None and not self.closed and total != self.progress.total:
            self.progress.total = total
        total = self.progress.total or 0
        if self.closed or n <= self.progress.n or (now - self._moved < self.MIN_INTERVAL and n < total):
            return
        self._moved = now
        self.progress.update(n - self.progress.n)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.progress.close()
            for label in self._indicators:  # napari hides it when no bar is left, else it goes on
                try:
                    if not label.isHidden():
                        label.movie().start()
                except RuntimeError:  # the window is gone
                    pass


def _status_bar_movies(widget) -> list:
    """The labels that play a movie in the status bar of ``widget``'s main window (napari's
    "in progress" indicator); empty when the widget is not in a main window."""
    from qtpy.QtWidgets import QLabel, QMainWindow

    top = widget.window() if widget is not None else None
    if not isinstance(top, QMainWindow):
        return []
    return [label for label in top.statusBar().findChildren(QLabel) if label.movie() is not None]
