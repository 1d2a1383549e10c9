"""PNG overlays of instance labels on an image, for the demo and for looking at results without
a viewer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def label_colors(n: int, seed: int = 0) -> np.ndarray:
    """``n + 1`` distinct-ish RGB colours (row 0 black for background)."""
    rng = np.random.default_rng(seed)
    hsv = np.stack([rng.random(n), 0.6 + 0.4 * rng.random(n), 0.8 + 0.2 * rng.random(n)], axis=1)
    from skimage.color import hsv2rgb

    rgb = hsv2rgb(hsv[None])[0] if n else np.zeros((0, 3))
    return np.concatenate([np.zeros((1, 3)), rgb]).astype(np.float32)


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """RGB uint8 picture: the image in grey, instances tinted, their outlines in full colour.

    3D inputs are shown by their middle Z slice.
    """
    from skimage.segmentation import find_boundaries

    from .data import normalize, to_grayscale_if_rgb

    image = to_grayscale_if_rgb(np.asarray(image))
    labels = np.asarray(labels)
    if image.ndim == 3:
        image = image[image.shape[0] // 2]
        labels = labels[labels.shape[0] // 2]
    grey = np.clip(normalize(image), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    colors = label_colors(int(labels.max(initial=0)))[labels]
    inside = labels > 0
    rgb[inside] = (1 - alpha) * rgb[inside] + alpha * colors[inside]
    edges = find_boundaries(labels, mode="inner") & inside
    rgb[edges] = colors[edges]
    return (rgb * 255).round().astype(np.uint8)


def save_overlay(path: str | os.PathLike, image: np.ndarray, labels: np.ndarray) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, labels)).save(path)
    return path


def embedding_rgb(embeddings: np.ndarray, max_points: int = 20000, seed: int = 0) -> np.ndarray:
    """The first three principal components of ``(E, *spatial)`` embeddings as RGB in [0, 1].

    Pixels of one object share a colour and neighbouring objects differ: a quick look at what
    the network has learned. The PCA is fitted on a random sample of pixels.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    flat = emb.reshape(emb.shape[0], -1).T
    rng = np.random.default_rng(seed)
    sample = flat[rng.choice(len(flat), size=min(max_points, len(flat)), replace=False)]
    mean = sample.mean(axis=0)
    _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
    comps = vt[: min(3, vt.shape[0])]
    proj = (flat - mean) @ comps.T
    lo, hi = np.percentile(proj, [1, 99], axis=0)
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
    if rgb.shape[1] < 3:
        rgb = np.concatenate([rgb, np.zeros((len(rgb), 3 - rgb.shape[1]), np.float32)], axis=1)
    return rgb.reshape(emb.shape[1:] + (3,)).astype(np.float32)
