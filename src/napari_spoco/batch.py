"""``predict`` over many files and over files larger than memory: which images go block by
block, what each one is written as, and the per-file task that worker processes run.

Images that fit are segmented whole (:func:`napari_spoco.segment`), one file per task, so a
batch spreads over ``--workers`` processes or a dask cluster through the same
:class:`~napari_spoco.blockwise.Engine` as the blocks of one large image. Zarr stores and big
TIFFs are read lazily and segmented block by block (:mod:`napari_spoco.blockwise`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .clustering import ClusterConfig
from .errors import SpocoError
from .precision import INFERENCE_PRECISION

#: TIFFs whose pixels take more than this are read lazily and segmented block by block: whole,
#: the image, its float copy and the int64 labels would need about 7x this in memory.
BLOCKWISE_BYTES = 256 * 2**20
#: Block-wise results of TIFF inputs up to this many pixels are written as TIFF (read back
#: whole to do so: 4 bytes a pixel); larger ones stay zarr.
TIFF_OUT_PIXELS = 2**27


def file_needs_blockwise(path: Path, block_shape_given: bool = False) -> bool:
    """Zarr stores always; TIFFs above :data:`BLOCKWISE_BYTES`, or any TIFF when the user gave
    a block shape."""
    from .lazy_io import is_zarr

    if is_zarr(path):
        return True
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    if block_shape_given:
        return True
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return tif.series[0].nbytes > BLOCKWISE_BYTES
    except Exception:  # noqa: BLE001 - unreadable: the in-memory reader says why, per file
        return False


def output_suffix(path: Path, blockwise: bool, out_format: str = "auto") -> str:
    """``.zarr`` or ``.tif`` for the labels of ``path``: ``out_format`` when given; else TIFF
    for images read whole, zarr for zarr inputs, and for big TIFFs TIFF up to
    :data:`TIFF_OUT_PIXELS`, zarr above."""
    if out_format in ("tif", "zarr"):
        return "." + out_format
    if not blockwise:
        return ".tif"
    from .lazy_io import is_zarr, open_lazy

    if is_zarr(path):
        return ".zarr"
    try:
        return ".tif" if open_lazy(path).voxels <= TIFF_OUT_PIXELS else ".zarr"
    except SpocoError:
        return ".tif"


@dataclass(frozen=True)
class PredictOptions:
    """The per-image settings of a ``predict`` run (picklable, for worker processes)."""

    config: ClusterConfig
    device: str = "auto"
    channel_axis: int | None = None
    voxel_size: tuple[float, ...] | None = None  # --voxel-size; None: the file's, else the model's
    suggest: int = 0
    threads: int = 0  # torch threads in a worker process (0: leave as it is)
    precision: str = INFERENCE_PRECISION  # the network's number format (napari_spoco.precision)
    tta: bool = True  # test-time augmentation (napari_spoco.segment)


@dataclass
class FileResult:
    """One image's outcome: objects found, the grid it was segmented at, its suggestions, or
    why it failed."""

    name: str
    objects: int = 0
    grid: tuple[float, ...] = ()
    suggestions: list = field(default_factory=list)
    error: str | None = None


def voxel_size_for(given, path: Path, model) -> tuple[float, ...] | None:
    """``--voxel-size``, else the file's recorded spacing, else None (the model's own)."""
    from .io import read_voxel_size
    from .scaling import check_voxel_size

    if given:
        return check_voxel_size(given, model.config.ndim)
    return read_voxel_size(path, model.config.ndim)


def predict_file(model, path: Path, target: Path, options: PredictOptions) -> FileResult:
    """Segment one image read whole and write its labels to ``target`` (TIFF). ``model`` is a
    model or a model file's path (loaded once per worker process). Expected failures (bad or
    unreadable image, full disk, too little memory, a GPU out of memory) come back in ``error``;
    the batch goes on."""
    from .io import read_image, write_labels
    from .segmentation import segment

    if isinstance(model, (str, os.PathLike)):
        from .blockwise import _worker_model

        model = _worker_model(str(model))
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    path = Path(path)
    try:
        image = read_image(path, keep_channels=options.channel_axis is not None, refuse_time=True)
        voxel_size = voxel_size_for(options.voxel_size, path, model)
        result = segment(model, image, config=options.config, device=options.device,
                         channel_axis=options.channel_axis, return_embedding=bool(options.suggest),
                         voxel_size=voxel_size, precision=options.precision, tta=options.tta)
        labels = result[0] if options.suggest else result
        if Path(target).suffix == ".zarr":  # --out-format zarr: a zarr store, not a TIFF under that name
            from .io import as_label_image
            from .out_of_core import write_label_store

            write_label_store(target, as_label_image(labels))
        else:
            write_labels(target, labels)
        found = []
        if options.suggest:
            from .suggestions import suggest

            found = [(path.name, s) for s in suggest(labels, result[1], k=options.suggest)]
    except (SpocoError, OSError, MemoryError) as exc:
        reason = str(exc) if isinstance(exc, SpocoError) else f"{type(exc).__name__}: {exc}"
        return FileResult(path.name, error=reason)
    except RuntimeError as exc:  # how torch reports running out of memory (CUDA, MPS, its CPU allocator)
        from .errors import is_out_of_memory

        if not is_out_of_memory(exc):
            raise  # anything else is a bug: reported as one, not as this image's failure
        from .model import select_device

        device = select_device(options.device).type
        advice = ("try --device cpu" if device != "cpu" else
                  "a zarr or OME-Zarr copy of the image is segmented block by block, in bounded memory")
        return FileResult(path.name, error=f"{type(exc).__name__}: out of memory on the {device} "
                          f"({str(exc).splitlines()[0]}); {advice}")
    return FileResult(path.name, int(labels.max(initial=0)), tuple(model.network_factors(voxel_size)), found)


def zarr_to_tiff(source: Path, target: Path) -> None:
    """Write the labels of a zarr store as a TIFF (read whole: only for results up to
    :data:`TIFF_OUT_PIXELS`)."""
    from .io import write_labels
    from .lazy_io import open_label_store

    write_labels(target, np.asarray(open_label_store(source)[...]))
