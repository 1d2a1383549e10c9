"""Embedding whole images of any size: tiles with overlap, blended without seams.

Tiles start on multiples of the network's size divisor, and the network (BatchNorm in eval
mode) is translation-equivariant, so overlapping tiles agree away from their borders; a linear
ramp over the overlap blends the remaining border differences away.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .data import check_image, normalize
from .errors import SpocoError
from .model import SpocoModel, split_output
from .training import select_device


@dataclass
class Embedding:
    """Per-pixel outputs of a model for one image."""

    embeddings: np.ndarray  # (E, *spatial) float32, student
    foreground: np.ndarray | None  # (*spatial) float32 probability; None without a head
    teacher_embeddings: np.ndarray | None = None  # (E, *spatial), for consistency clustering


def default_tile_shape(ndim: int) -> tuple[int, ...]:
    return (512, 512) if ndim == 2 else (64, 128, 128)


def _axis_starts(n: int, tile: int, overlap: int) -> list[int]:
    if tile >= n:
        return [0]
    step = tile - overlap
    starts = list(range(0, n - tile, step))
    starts.append(n - tile)
    return starts


def _ramp(tile: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    w = np.ones(tile, dtype=np.float32)
    if overlap > 0:
        r = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
        if not at_start:
            w[:overlap] = r
        if not at_end:
            w[-overlap:] = r[::-1]
    return w


def _round_up(x: int, m: int) -> int:
    return int(math.ceil(x / m) * m)


def _available_bytes() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(n_pixels: int, floats_per_pixel: int, shape: tuple[int, ...]) -> None:
    """Refuse, with advice, an image whose embedding would not fit in the memory left."""
    need = n_pixels * floats_per_pixel * 4
    have = _available_bytes()
    if have is not None and need > 0.8 * have:
        raise SpocoError(
            f"An image of shape {shape} needs about {need / 2**30:.1f} GiB to embed, but only "
            f"{have / 2**30:.1f} GiB of memory is free. Crop or downsample it, or split it into parts."
        )


@torch.inference_mode()
def embed(
    model: SpocoModel,
    image: np.ndarray,
    tile_shape: tuple[int, ...] | None = None,
    overlap: int | None = None,
    device: str = "auto",
    with_teacher: bool = False,
    progress: Callable[[int, int], None] | None = None,
    value_range: tuple[float, float] | None = None,
) -> Embedding:
    """Embed a 2D/3D image with the student (and optionally the teacher), tile by tile.

    ``tile_shape`` defaults to 512² (2D) or 64×128×128 (3D); ``overlap`` to a quarter tile,
    rounded to the size divisor. ``progress(done, total)`` is called after each tile.
    ``value_range`` overrides the image's own percentile range (for crops of a larger image).
    """
    image = check_image(image)
    if image.ndim != model.config.ndim:
        raise SpocoError(
            f"This is a {model.config.ndim}D model but the image is {image.ndim}D "
            f"(shape {image.shape}); use a model trained on {image.ndim}D images."
        )
    x = normalize(image, value_range=value_range)
    div = model.config.size_divisor
    # A reflected margin around the image: the network learned on crops from inside images, and
    # zero padding at a real image edge otherwise shows as spurious objects along the border.
    margin = tuple(min(2 * div * 4, n - 1) for n in image.shape)
    x = np.pad(x, [(m, m) for m in margin], mode="reflect")
    inner = tuple(slice(m, m + n) for m, n in zip(margin, image.shape))
    tile_shape = tuple(tile_shape or default_tile_shape(image.ndim))
    padded = tuple(_round_up(n, div) for n in x.shape)
    tiles = tuple(min(_round_up(t, div), p) for t, p in zip(tile_shape, padded))
    ov = overlap if overlap is not None else min(tiles) // 4
    overlaps = tuple(min(_round_up(ov, div) if ov else 0, t // 2) for t in tiles)
    pad = [(0, p - n) for p, n in zip(padded, x.shape)]
    if any(p[1] for p in pad):
        x = np.pad(x, pad, mode="reflect")

    nets = [model.student] + ([model.teacher] if with_teacher else [])
    _check_memory(int(np.prod(padded)), model.config.out_channels * len(nets) + 2, image.shape)
    dev = select_device(device)
    for n in nets:
        n.eval().to(dev)
    c_out = model.config.out_channels
    acc = [np.zeros((c_out,) + padded, dtype=np.float32) for _ in nets]
    wsum = np.zeros(padded, dtype=np.float32)
    starts = [_axis_starts(p, t, o) for p, t, o in zip(padded, tiles, overlaps)]
    combos = list(itertools.product(*starts))
    try:
        for i, start in enumerate(combos):
            sl = tuple(slice(s, s + t) for s, t in zip(start, tiles))
            w = np.ones((), dtype=np.float32)
            for ax, (s, t, o, p) in enumerate(zip(start, tiles, overlaps, padded)):
                r = _ramp(t, o, at_start=s == 0, at_end=s + t >= p)
                w = w[..., None] * r if w.ndim else r
            xt = torch.from_numpy(np.ascontiguousarray(x[sl]))[None, None].to(dev)
            for a, net in zip(acc, nets):
                out = net(xt)[0].float().cpu().numpy()
                a[(slice(None),) + sl] += out * w
            wsum[sl] += w
            if progress is not None:
                progress(i + 1, len(combos))
    finally:
        for n in nets:
            n.to("cpu")
    outs = [a[(slice(None),) + inner] / wsum[inner] for a in acc]
    student_emb, fg = split_output(torch.from_numpy(outs[0])[None], model.config)
    fg_prob = None
    if fg is not None:
        fg_prob = (1.0 / (1.0 + np.exp(-fg[0].numpy()))).astype(np.float32)
    teacher_emb = None
    if with_teacher:
        teacher_emb = np.ascontiguousarray(outs[1][: model.config.embedding_dim])
    return Embedding(np.ascontiguousarray(student_emb[0].numpy()), fg_prob, teacher_emb)
