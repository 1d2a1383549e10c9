"""Image in, instance labels out: embedding followed by clustering, the one call most users need."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .clustering import ClusterConfig, cluster_embeddings
from .inference import embed
from .model import SpocoModel


def auto_min_size(model: SpocoModel, ndim: int) -> int:
    """Pieces smaller than 15 % of the median painted object are fragments, not objects
    (at least 16 pixels in 2D, 64 voxels in 3D)."""
    floor = 16 if ndim == 2 else 64
    median = model.history.get("object_size_median")
    return max(floor, int(0.15 * median)) if median else floor


def segment(
    model: SpocoModel,
    image: np.ndarray,
    method: str = "meanshift",
    config: ClusterConfig | None = None,
    tile_shape: tuple[int, ...] | None = None,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Segment a 2D/3D image into instances (uint16/uint32 label image of the image's shape).

    ``method`` is ``meanshift`` (default), ``hdbscan`` or ``consistency``; ``config`` holds the
    clustering parameters (its ``method`` is overridden by ``method``). Without an explicit
    ``min_size``, pieces under 15 % of the median painted object's size are merged into their
    neighbour or dropped.
    """
    from dataclasses import replace

    config = replace(config or ClusterConfig(), method=method)
    if config.min_size is None:
        config = replace(config, min_size=auto_min_size(model, model.config.ndim))
    emb = embed(model, image, tile_shape=tile_shape, device=device,
                with_teacher=method == "consistency", progress=progress)
    return cluster_embeddings(emb.embeddings, emb.foreground, config, emb.teacher_embeddings)
