"""Embedding whole images of any size: tiles with overlap, blended without seams.

Tiles start on multiples of the network's size divisor, and the network (BatchNorm in eval
mode) is translation-equivariant on that grid, so overlapping tiles agree exactly farther than the
network's reach on aligned tiles (``ModelConfig.tile_reach``) from their borders; each tile hands
over to its neighbour in the middle of their overlap.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .data import check_image, intensity_range, normalize, spatial_shape
from .errors import SpocoError
from .model import SpocoModel, folded_for_inference, select_device, split_output
from .precision import INFERENCE_PRECISION


@dataclass
class Embedding:
    """Per-pixel outputs of a model for one image."""

    embeddings: np.ndarray  # (E, *spatial) float32, of model.predictor
    foreground: np.ndarray | None  # (*spatial) float32 probability; None without a head
    # (E, *spatial), of model.partner (the teacher, or the student when the teacher predicts),
    # for consistency clustering
    teacher_embeddings: np.ndarray | None = None


@dataclass(frozen=True)
class PreparedImage:
    """An image made ready for a model once (:func:`prepare_image`): checked, float32,
    ``(C, *spatial)`` for models of several channels, with the intensity range that normalises
    it. Tiles and crops of it (:meth:`crop`) are not checked again and keep its range."""

    data: np.ndarray
    value_range: tuple  # (low, high), or one such pair per channel
    channels: int

    @property
    def shape(self) -> tuple[int, ...]:
        """The spatial shape (without the channel axis)."""
        return spatial_shape(self.data, self.channels)

    def crop(self, region: tuple[slice, ...]) -> PreparedImage:
        """The part of the image inside ``region`` (spatial slices), normalised like the whole."""
        lead = (slice(None),) if self.channels > 1 else ()
        return PreparedImage(self.data[lead + tuple(region)], self.value_range, self.channels)


def prepare_image(
    model: SpocoModel, image: np.ndarray, value_range=None, channel_axis: int | None = None, name: str = "image"
) -> PreparedImage:
    """Check ``image`` for ``model`` (channels, 2D/3D as the model, finite values) and take its
    intensity range (``value_range`` when given: crops of a larger image normalise like it);
    the one preparation step of :func:`embed` and :func:`napari_spoco.segment`. ``name`` is
    what the messages call the image (a file or a layer)."""
    channels = model.config.in_channels
    data = check_image(image, name, channels, channel_axis)
    shape = spatial_shape(data, channels)
    if len(shape) != model.config.ndim:
        raise SpocoError(
            f"This is a {model.config.ndim}D model but {'the image' if name == 'image' else name} is {len(shape)}D "
            f"(shape {data.shape}); use a model trained on {len(shape)}D images."
        )
    if value_range is None:
        value_range = intensity_range(data, channels=channels)
    return PreparedImage(data, value_range, channels)


def default_tile_voxels(ndim: int) -> int:
    """Voxels of the largest float32 tile (twice as many in bfloat16, precision.tile_voxels),
    which bounds the memory of one forward pass: 512² in 2D, 64×160×320 in 3D (about 0.3 GB in
    2D; a 3D segment of the 60×256×256 cells3d volume peaked 1.04 GB above the libraries in
    float32, 1.15 GB in bfloat16). The 3D budget was 64×160×160 until the views of test-time
    augmentation were summed where they are kept (:func:`_forward_into`), which made a tile
    voxel cheaper: the larger tiles overlap less and took 0.74–0.88× the time at 0.2–0.4 GB more
    (docs/benchmarks.md, "Views summed where they are kept")."""
    return 512 * 512 if ndim == 2 else 64 * 160 * 320


def default_margin(model: SpocoModel) -> int:
    """Reflected context around the image: 8 × the network's size divisor in 2D (32 pixels for
    the default network), 2 × in 3D (8 voxels).

    In 3D the margin multiplies the work by (1 + 2m/n)³: 32 voxels around the 60×256×256 cells3d
    volume made it 2.5× larger, and 16 voxels changed its embedding by at most 0.013 with the
    same AP50 (docs/benchmarks.md). 8 voxels, against 16, gave the same AP50 on cells3d and
    +0.009 and ±0 on the packed 3D nuclei (two sets of three saved models), with a sixth less
    work on a 60-slice volume (docs/benchmarks.md, "Views summed where they are kept; a thinner
    margin in 3D").
    """
    div = model.config.size_divisor
    return 8 * div if model.config.ndim == 2 else 2 * div


def _layout_for_count(n: int, count: int, overlap: int, div: int) -> tuple[int, list[int]]:
    """Tile length and starts for ``count`` equal tiles along an axis of length ``n`` (a
    multiple of ``div``), overlapping by at least ``overlap`` and starting on multiples of
    ``div``; the shortest such tile."""
    if count <= 1:
        return n, [0]
    # one divisor of slack: starts are rounded down to multiples of div, which can widen a gap
    tile = min(n, _round_up(math.ceil((n + (count - 1) * (overlap + div)) / count), div))
    starts = [int((i * (n - tile) / (count - 1)) // div * div) for i in range(count)]
    starts[-1] = n - tile
    return tile, starts


def _axis_layout(n: int, max_tile: int, overlap: int, div: int) -> tuple[int, list[int]]:
    """Tile length and starts along an axis of length ``n`` (a multiple of ``div``): the fewest
    equal tiles of at most ``max_tile`` that overlap by at least ``overlap``, starting on
    multiples of ``div``. Fewer, fuller tiles waste less work on overlaps."""
    if n <= max_tile:
        return n, [0]
    count = math.ceil((n - overlap) / max(div, max_tile - overlap - div))
    return _layout_for_count(n, count, overlap, div)


def plan_tiles(padded: tuple[int, ...], max_voxels: int, overlap: int, div: int) -> list[tuple[int, list[int]]]:
    """Per-axis (tile length, starts) for tiles of at most ``max_voxels`` that cover ``padded``
    with the least total work (tiles × tile volume); beyond ``max_voxels`` only where no tile
    keeping as much as its overlaps take fits in it (networks of very wide reach).

    A fixed tile shape wastes most of its work on overlaps when the image is thin along one
    axis (a 60-slice stack in 64×160×160 tiles overlapping by 56 voxels needs four tiles in Z);
    searching over tile counts per axis spends the voxel budget where it saves most.
    """
    options = []
    for n in padded:
        opts: dict[int, tuple[int, list[int]]] = {}
        for count in range(1, 65):
            tile, starts = _layout_for_count(n, count, overlap, div)
            if count > 1 and tile <= overlap + div:
                break  # a tile must keep something beyond its share of the overlaps
            opts.setdefault(tile, (tile, starts))
        options.append(list(opts.values()))
    best = _least_work(options, max_voxels)
    if math.prod(t for t, _ in best) > max_voxels:
        # Nothing fits the budget: the smallest tiles there are would be mostly overlap for a
        # network whose overlaps nearly fill a tile (the large preset, 504 px: 29 × 29 tiles of
        # 544² for a 256² image with its margins, instead of one). Tiles then keep at least as
        # much as their overlaps take (half of them, or the whole axis), beyond the budget.
        useful = [[o for o in opts if o[0] >= min(n, 2 * overlap + div)] for n, opts in zip(padded, options)]
        best = _least_work(useful, max_voxels)
    return best


def _least_work(options: list[list[tuple[int, list[int]]]], max_voxels: int) -> list[tuple[int, list[int]]]:
    """Among per-axis options, the tiles within ``max_voxels`` with the least work, then the
    fewest tiles; when none is within it, the smallest tiles there are."""
    # Options run from one tile to many; along an axis more tiles always mean more work (each
    # adds an overlap), so for each choice on the other axes the last axis takes its fewest
    # tiles that fit the budget.
    best, best_cost = None, None
    last = options[-1]
    for prefix in itertools.product(*options[:-1]):
        pvox = math.prod(t for t, _ in prefix)
        choice = next((o for o in last if pvox * o[0] <= max_voxels), last[-1])
        combo = list(prefix) + [choice]
        vox = pvox * choice[0]
        n_tiles = math.prod(len(st) for _, st in combo)
        # within the budget, least work, then fewest tiles; else the smallest tiles there are
        cost = (vox > max_voxels, vox if vox > max_voxels else n_tiles * vox, n_tiles)
        if best_cost is None or cost < best_cost:
            best, best_cost = combo, cost
    return best


def _kept(tile: int, overlap: int, at_start: bool, at_end: bool) -> tuple[int, int]:
    """The part of a tile it hands on, along one axis: all but the outer half of each overlap
    with a neighbouring tile. With overlaps of at least twice the network's reach on aligned
    tiles (``ModelConfig.tile_reach``), those pixels are out of reach of the tile's zero-padded border, so neighbouring tiles hand
    over exactly and each pixel is simply copied from one tile (a linear ramp over the whole
    overlap, as at first, let border errors of up to 1.9 embedding units leak into the result;
    weighted sums of 0/1 ramps, as then, cost memory-bound passes over every channel)."""
    trim = overlap // 2
    return (0 if at_start else trim), (tile if at_end else tile - trim)


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


#: Test-time augmentation: the views of a tile whose outputs are averaged, as the spatial axes
#: mirrored (counted from the end): as it is, mirrored in X, in Y, and in both.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
#: The views of a 3D tile: as it is and mirrored in Y and X together. Measured against the four
#: above, they kept the accuracy at about half the network's time (docs/method.md,
#: "Test-time augmentation").
TTA_FLIPS_3D: tuple[tuple[int, ...], ...] = ((), (-2, -1))


def tta_flips(ndim: int) -> tuple[tuple[int, ...], ...]:
    """The mirrored views that test-time augmentation averages for an image of ``ndim`` spatial axes."""
    return TTA_FLIPS_3D if ndim == 3 else TTA_FLIPS


def _forward_into(net: torch.nn.Module, x: torch.Tensor, tta: bool, fmt: torch.memory_format,
                  target: torch.Tensor, window: tuple[slice, ...]) -> None:
    """Write into ``target`` (float32, C × the kept part) the network's output for ``x``
    (1, C, *spatial) inside ``window`` (the kept part, in tile coordinates); with ``tta``, the
    mean over the mirror images of :func:`tta_flips`, each output mirrored back first
    (docs/method.md, "Test-time augmentation"). The views are summed in ``target`` itself: a
    float32 sum of the whole tile and a mirrored copy of it, as before, took about a quarter of
    a 3D tile's memory (docs/benchmarks.md, "Views summed where they are kept")."""
    flips = tta_flips(x.ndim - 2) if tta else ((),)
    sizes = x.shape[2:]
    for i, axes in enumerate(flips):
        dims = [x.ndim + a for a in axes]
        y = net(x.flip(dims).contiguous(memory_format=fmt) if dims else x)
        # the kept part of the mirrored output, mirrored back: only that part is copied, in the
        # network's own format (half the bytes in bfloat16), and converted to float32 on the way
        # into the target (torch converts the channels-last tile in half the time of NumPy)
        mirrored = tuple(slice(n - w.stop, n - w.start) if d + 2 in dims else w
                         for d, (w, n) in enumerate(zip(window, sizes)))
        y = y[(0, slice(None)) + mirrored]
        y = y.flip([d - 1 for d in dims]) if dims else y
        if y.device != target.device:  # a GPU's output, to the accumulator in host memory
            y = y.to(target.device)
        if i == 0:
            target.copy_(y)
        else:
            target.add_(y)
        del y
    if len(flips) > 1:
        target.div_(len(flips))


@torch.inference_mode()
def embed(  # noqa: C901 - validation, tiling and accumulation of one call; each part is short and tested (tests/test_inference.py)
    model: SpocoModel,
    image: np.ndarray | PreparedImage,
    tile_shape: tuple[int, ...] | None = None,
    overlap: int | None = None,
    device: str = "auto",
    with_teacher: bool = False,
    progress: Callable[[int, int], None] | None = None,
    value_range=None,
    margin: int | None = None,
    max_tile_voxels: int | None = None,
    channel_axis: int | None = None,
    edges: tuple[tuple[bool, bool], ...] | None = None,
    precision: str = INFERENCE_PRECISION,
    tta: bool = True,
) -> Embedding:
    """Embed a 2D/3D image with the model's predicting network (``model.predictor``: the
    student, or the EMA teacher of a fine-tuned model) and optionally the other one
    (``with_teacher``, for consistency clustering), tile by tile.

    ``tile_shape`` is the largest tile along each axis; by default tiles of at most
    ``max_tile_voxels`` (default :func:`default_tile_voxels`) are shaped by :func:`plan_tiles`
    for the least total work. Either way the tile bounds the memory of one forward pass. ``overlap`` defaults to twice the
    network's reach on tiles aligned to its size grid (``ModelConfig.tile_reach``: 44 px for the
    small network, 92 for the medium one), beyond which tiles agree exactly. ``margin`` is the reflected
    context added around the image (default :func:`default_margin`); ``edges`` (per axis, before
    and after) says which sides are the edges of the whole image and get it: a block of a larger
    image (:mod:`napari_spoco.blockwise`) has real context on its other sides. ``progress(done, total)``
    is called after each tile. ``value_range`` overrides the image's own percentile range (for
    crops of a larger image; one range per channel for models of several channels).
    ``channel_axis``: the image's channel axis, for models that read several channels
    (colour ``(Y, X, 3|4)`` needs none). A :class:`PreparedImage` (of :func:`prepare_image`)
    is used as it is: it carries its checked data and range already. ``precision``: the
    number format of the network's convolutions (:mod:`napari_spoco.precision`; ``auto``:
    bfloat16 where the CPU or GPU has it, about half the time of float32, and
    default tiles twice as large at less memory; docs/method.md, "Number format"). ``tta``:
    average each tile's output over its mirror images in Y and X (:func:`tta_flips`: four
    forward passes instead of one in 2D, two in 3D; docs/method.md, "Test-time augmentation").
    """
    from .precision import autocast, resolve_precision, tile_voxels

    channels = model.config.in_channels
    if isinstance(image, PreparedImage):
        if value_range is not None or channel_axis is not None:
            raise SpocoError("A prepared image carries its range and channels; give neither value_range nor channel_axis.")
        if image.channels != channels or len(image.shape) != model.config.ndim:
            raise SpocoError("This image was prepared for another model; prepare it for this one (prepare_image).")
    else:
        image = prepare_image(model, image, value_range, channel_axis)
    x = normalize(image.data, value_range=image.value_range, channels=channels)
    x = x if channels > 1 else x[None]  # (C, *spatial)
    image_shape = image.shape
    del image
    div = model.config.size_divisor
    # A reflected margin around the image: the network learned on crops from inside images, and
    # zero padding at a real image edge otherwise shows as spurious objects along the border.
    if margin is None:
        margin = default_margin(model)
    if margin < 0 or (overlap is not None and overlap < 0):
        raise SpocoError(f"margin and overlap must be 0 or more pixels (got {margin} and {overlap}).")
    edges = edges or tuple((True, True) for _ in image_shape)
    margins = tuple((min(margin, n - 1) * e0, min(margin, n - 1) * e1) for n, (e0, e1) in zip(image_shape, edges))
    x = np.pad(x, [(0, 0)] + list(margins), mode="reflect")
    padded = tuple(_round_up(n, div) for n in x.shape[1:])
    dev = select_device(device)
    number_format = resolve_precision(precision, dev, len(image_shape))
    ov = overlap if overlap is not None else 2 * model.config.tile_reach
    ov_r = _round_up(ov, div) if ov else 0
    if tile_shape is None:
        budget = max_tile_voxels or tile_voxels(default_tile_voxels(len(image_shape)), number_format)
        layouts = plan_tiles(padded, budget, ov_r, div)
    else:
        layouts = [
            _axis_layout(p, max(div, _round_up(t, div)), min(ov_r, _round_up(t, div) // 2), div)
            for p, t in zip(padded, tile_shape)
        ]
    tiles = tuple(t for t, _ in layouts)
    # each tile hands over in the middle of its overlaps (planned tiles are longer than ov_r)
    overlaps = tuple(min(ov_r, t // 2) for t in tiles) if tile_shape is not None else (ov_r,) * len(tiles)
    pad = [(0, p - n) for p, n in zip(padded, x.shape[1:])]
    if any(p[1] for p in pad):
        x = np.pad(x, [(0, 0)] + pad, mode="reflect")

    # copies with BatchNorm folded into the convolutions (the same function, 0.8x the time);
    # the model's own networks are not touched, so embedding is safe between training steps
    nets = [folded_for_inference(n) for n in [model.predictor] + ([model.partner] if with_teacher else [])]
    # Accumulators cover the image only, not its margin (context, never output); plus the
    # weight sum and the padded input, about one image each.
    _check_memory(int(np.prod(image_shape)), model.config.out_channels * len(nets) + 1 + channels, image_shape)
    # Channels-last convolutions: 1.3x (3D) to 2x (2D) faster on CPU, same results to 1e-6
    # (docs/benchmarks.md, "Throughput")
    fmt = torch.channels_last_3d if len(image_shape) == 3 else torch.channels_last
    for n in nets:
        n.to(dev, memory_format=fmt)
    c_out = model.config.out_channels
    acc = [np.zeros((c_out,) + image_shape, dtype=np.float32) for _ in nets]
    covered = np.zeros(image_shape, dtype=bool)  # checked at the end: every pixel comes from a tile
    starts = [st for _, st in layouts]
    combos = list(itertools.product(*starts))
    for i, start in enumerate(combos):
        # the part of this tile it hands on that lies inside the image, in tile and in image
        # coordinates (a tile whose kept part is all margin is not run)
        in_tile, in_image = [], []
        for s0, t, o, p, (m, _), n in zip(start, tiles, overlaps, padded, margins, image_shape):
            k0, k1 = _kept(t, o, at_start=s0 == 0, at_end=s0 + t >= p)
            lo, hi = max(s0 + k0, m), min(s0 + k1, m + n)
            in_tile.append(slice(lo - s0, hi - s0))
            in_image.append(slice(lo - m, hi - m))
        if all(sl.stop > sl.start for sl in in_tile):
            sl = tuple(slice(s0, s0 + t) for s0, t in zip(start, tiles))
            xt = torch.from_numpy(np.ascontiguousarray(x[(slice(None),) + sl]))[None].to(dev, memory_format=fmt)
            for a, net in zip(acc, nets):
                with autocast(number_format, dev):
                    _forward_into(net, xt, tta, fmt, torch.from_numpy(a)[(slice(None),) + tuple(in_image)], in_tile)
            covered[tuple(in_image)] = True
        if progress is not None:
            progress(i + 1, len(combos))
    if not covered.all():  # a planning error, never the user's: fail loudly rather than return zeros
        raise RuntimeError("embed: the tiles left pixels of the image uncovered")
    student_emb, fg = split_output(torch.from_numpy(acc[0])[None], model.config)
    fg_prob = None
    if fg is not None:
        fg_prob = (1.0 / (1.0 + np.exp(-fg[0].numpy()))).astype(np.float32)
    teacher_emb = None
    if with_teacher:
        teacher_emb = np.ascontiguousarray(acc[1][: model.config.embedding_dim])
    return Embedding(np.ascontiguousarray(student_emb[0].numpy()), fg_prob, teacher_emb)
