"""Embedding whole images of any size: tiles with overlap, blended without seams.

Tiles start on multiples of the network's size divisor, and the network (BatchNorm in eval
mode) is translation-equivariant, so overlapping tiles agree exactly farther than the receptive
radius from their borders; each tile hands over to its neighbour in the middle of their overlap.
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
    return (512, 512) if ndim == 2 else (64, 160, 160)


def _axis_layout(n: int, max_tile: int, overlap: int, div: int) -> tuple[int, list[int]]:
    """Tile length and starts along an axis of length ``n`` (a multiple of ``div``): the fewest
    equal tiles of at most ``max_tile`` that overlap by at least ``overlap``, starting on
    multiples of ``div``. Fewer, fuller tiles waste less work on overlaps."""
    if n <= max_tile:
        return n, [0]
    count = math.ceil((n - overlap) / max(div, max_tile - overlap - div))
    # one divisor of slack: starts are rounded down to multiples of div, which can widen a gap
    tile = min(n, _round_up(math.ceil((n + (count - 1) * (overlap + div)) / count), div))
    starts = [int((i * (n - tile) / (count - 1)) // div * div) for i in range(count)]
    starts[-1] = n - tile
    return tile, starts


def _ramp(tile: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    """Blending weights along one axis of a tile: 0 over the outer half of each overlap with a
    neighbouring tile, 1 elsewhere. With overlaps of at least twice the network's receptive
    radius, the pixels a tile keeps are out of reach of its zero-padded border, so neighbouring
    tiles hand over exactly (a linear ramp over the whole overlap, as before, let border errors
    of up to 1.9 embedding units leak into the result at weights up to 0.4)."""
    w = np.ones(tile, dtype=np.float32)
    trim = overlap // 2
    if trim > 0:
        if not at_start:
            w[:trim] = 0.0
        if not at_end:
            w[-trim:] = 0.0
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

    ``tile_shape`` is the largest tile, which bounds the memory of one forward pass (default
    512² in 2D, 64×160×160 in 3D: about 0.3 and 1 GB for the CPU-default network); ``overlap``
    defaults to twice the network's receptive radius, beyond which tiles agree exactly. ``progress(done, total)`` is called after each tile.
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
    ov = overlap if overlap is not None else 2 * model.config.receptive_radius
    layouts = [
        _axis_layout(p, max(div, _round_up(t, div)), min(_round_up(ov, div) if ov else 0, _round_up(t, div) // 2), div)
        for p, t in zip(padded, tile_shape)
    ]
    tiles = tuple(t for t, _ in layouts)
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
    starts = [st for _, st in layouts]
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
