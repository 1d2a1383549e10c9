"""Image in, instance labels out: embedding followed by clustering, the one call most users need."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .clustering import ClusterConfig, cluster_embeddings
from .inference import Embedding, embed
from .model import SpocoModel


def auto_min_size(model: SpocoModel, ndim: int) -> int:
    """Pieces smaller than 15 % of the median painted object are fragments, not objects
    (at least 16 pixels in 2D, 64 voxels in 3D)."""
    floor = 16 if ndim == 2 else 64
    median = model.history.get("object_size_median")
    return max(floor, int(0.15 * median)) if median else floor


def auto_max_size(model: SpocoModel, shape: tuple[int, ...]) -> int | None:
    """Clusters above both 10× the median painted object and a quarter of the image are
    background (None when the model does not know its objects' size)."""
    median = model.history.get("object_size_median")
    if not median:
        return None
    return int(max(10 * median, 0.25 * np.prod(shape)))


def segment(
    model: SpocoModel,
    image: np.ndarray,
    method: str = "meanshift",
    config: ClusterConfig | None = None,
    tile_shape: tuple[int, ...] | None = None,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    value_range: tuple[float, float] | None = None,
    return_embedding: bool = False,
) -> np.ndarray | tuple[np.ndarray, "Embedding"]:
    """Segment a 2D/3D image into instances (uint16/uint32 label image of the image's shape).

    ``method`` is ``meanshift`` (default), ``hdbscan`` or ``consistency``; ``config`` holds the
    clustering parameters (its ``method`` is overridden by ``method``). Without an explicit
    ``min_size``, pieces under 15 % of the median painted object's size are merged into their
    neighbour or dropped; clusters above :func:`auto_max_size` count as background.
    ``return_embedding=True`` also returns the :class:`Embedding`.
    """
    from dataclasses import replace

    config = replace(config or ClusterConfig(), method=method)
    if config.min_size is None:
        config = replace(config, min_size=auto_min_size(model, model.config.ndim))
    if config.max_size is None:
        config = replace(config, max_size=auto_max_size(model, image.shape[: model.config.ndim]))
    emb = embed(model, image, tile_shape=tile_shape, device=device,
                with_teacher=method == "consistency", progress=progress, value_range=value_range)
    labels = cluster_embeddings(emb.embeddings, emb.foreground, config, emb.teacher_embeddings)
    return (labels, emb) if return_embedding else labels


def preview_box(
    shape: tuple[int, ...], center: Sequence[float], size: Sequence[int], divisor: int = 1
) -> tuple[slice, ...]:
    """A box of at most ``size`` around ``center`` (data coordinates), moved inside the image.

    Sides shorter than the image are rounded down to multiples of ``divisor`` (no padding
    needed); an image smaller than the box is previewed whole.
    """
    box = []
    for n, c, s in zip(shape, center, size):
        s = int(min(s, n))
        if s < n and s >= divisor:
            s -= s % divisor
        start = int(round(float(c) - s / 2))
        start = min(max(start, 0), n - s)
        box.append(slice(start, start + s))
    return tuple(box)


def segment_preview(
    model: SpocoModel,
    image: np.ndarray,
    box: tuple[slice, ...],
    value_range: tuple[float, float] | None = None,
    method: str = "meanshift",
    config: ClusterConfig | None = None,
) -> np.ndarray:
    """Segment ``image[box]`` with a CPU snapshot of ``model``, normalised like the whole image.

    Safe to call between training steps: the live networks are neither moved nor switched to
    evaluation mode. Returns the labels of the box only.
    """
    snap = model.snapshot()
    crop = np.asarray(image[box])
    return segment(snap, crop, method=method, config=config, device="cpu", value_range=value_range)


def segment_series(
    model: SpocoModel,
    stack: np.ndarray,
    method: str = "meanshift",
    config: ClusterConfig | None = None,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Segment a 2D+t stack ``(T, Y, X)`` frame by frame with a 2D model.

    Ids are made unique across frames (frame t's ids follow frame t-1's), so that any instance
    can be picked, promoted or exported without ambiguity. ``progress(done, total)`` counts
    frames.
    """
    stack = np.asarray(stack)
    out = np.zeros(stack.shape[:3], dtype=np.uint32)
    offset = 0
    for t in range(stack.shape[0]):
        lab = segment(model, stack[t], method=method, config=config, device=device).astype(np.uint32)
        out[t] = np.where(lab > 0, lab + offset, 0)
        offset = int(out[t].max(initial=offset))
        if progress is not None:
            progress(t + 1, stack.shape[0])
    from .io import label_dtype

    return out.astype(label_dtype(out))
