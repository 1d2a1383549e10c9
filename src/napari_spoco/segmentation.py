"""Image in, instance labels out: embedding followed by clustering, the one call most users need."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from .clustering import FRAGMENT_SHARE, ClusterConfig, cluster_embeddings, smallest_piece
from .data import relabel_sequential
from .errors import SpocoError
from .inference import Embedding, PreparedImage, embed, prepare_image
from .label_dtypes import as_label_image
from .model import SpocoModel
from .precision import INFERENCE_PRECISION
from .shapes import object_radius


def auto_min_size(model: SpocoModel, ndim: int) -> int:
    """Pieces smaller than 15 % of the median painted object are fragments, not objects
    (at least 16 pixels in 2D, 64 voxels in 3D); :func:`segment` lets the floor come down to the
    image's own pieces (``ClusterConfig.adaptive_min_size``)."""
    floor = smallest_piece(ndim)
    median = model.history.get("object_size_median")
    return max(floor, int(FRAGMENT_SHARE * median)) if median else floor


def auto_max_size(model: SpocoModel, shape: tuple[int, ...]) -> int | None:
    """Connected pieces above both 10× the median painted object and a quarter of the image
    are background (None when the model does not know its objects' size)."""
    median = model.history.get("object_size_median")
    if not median:
        return None
    return int(max(10 * median, 0.25 * np.prod(shape)))


def segment_tile_shape(ndim: int) -> tuple[int, ...]:
    """Largest block clustered at once (and embedded at once, where the whole image's embedding
    is too large to compute first): 2048² in 2D (the region a block-wise block reads,
    ``blockwise.REGION_PIXELS``), 64×384×384 in 3D (half a GB to a GB of working memory); its
    pixel count is what counts, :func:`segment` shapes it to the image (``tiling.fit_tile``).
    Smaller 2D tiles clustered each image about twice over in their halos: 1024² tiles made a
    2048² Segment take 1.4-2.3x the time with one network pass; 2048² tiles cost up to 0.3 GB
    more where nearly every pixel is foreground (docs/benchmarks.md, "Clustering tiles of
    2048²")."""
    return (2048, 2048) if ndim == 2 else (64, 384, 384)


def object_halo(model: SpocoModel, ndim: int) -> int:
    """Context around each segmentation tile: four object diameters (from the median painted
    object), and at least one diameter plus twice the network's receptive radius, so that an
    object claimed by a tile (centre within half a halo of its core) lies whole inside the tile
    and, where each tile embeds its own region, away from its border effects (the halo of an
    image embedded first is the same: 2048² BBBC039 mosaics took as long with four diameters
    alone, docs/benchmarks.md); at most 256 pixels."""
    median = model.history.get("object_size_median") or (600.0 if ndim == 2 else 4000.0)
    diameter = 2.0 * object_radius(median, ndim)
    return int(min(256, max(4 * diameter, diameter + 2 * model.config.receptive_radius)))


def _with_method(config: ClusterConfig | None, method: str | None) -> ClusterConfig | None:
    """``config`` with ``method`` as its clustering method (a copy; ``config`` itself when
    ``method`` is None): the ``method=`` shortcut of :func:`segment` and its kin."""
    if method is None:
        return config
    from dataclasses import replace

    return replace(config or ClusterConfig(), method=method)


def segment(
    model: SpocoModel,
    image: np.ndarray,
    method: str | None = None,
    config: ClusterConfig | None = None,
    tile_shape: tuple[int, ...] | None = None,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    value_range=None,
    return_embedding: bool = False,
    _timing: dict | None = None,
    channel_axis: int | None = None,
    voxel_size: tuple[float, ...] | None = None,
    precision: str = INFERENCE_PRECISION,
    tta: bool = True,
    name: str = "image",
) -> np.ndarray | tuple[np.ndarray, Embedding]:
    """Segment a 2D/3D image into instances (uint16/uint32 label image of the image's spatial
    shape).

    A model trained on colour or channels reads the image's channels: ``(Y, X, 3|4)`` colour
    as it is, other stacks with ``channel_axis``; ``value_range`` then holds one range per
    channel. A one-channel model reads colour as grey (docs/method.md, "Colour and channels").

    ``config`` holds the clustering method (``meanshift`` by default, ``hdbscan`` or
    ``consistency``) and its parameters; ``method``, when given, is a shortcut that sets
    ``config.method`` (``segment(model, image, method="hdbscan")``). Without an explicit
    ``min_size``, pieces under 15 % of the median painted object's size (or of the image's
    median piece, where that is smaller, down to half of it: ``ClusterConfig.adaptive_min_size``)
    are merged into their neighbour or dropped; connected pieces above :func:`auto_max_size`
    count as background.

    A model trained at a ``pixel_scale`` other than 1 (large or small objects, :mod:`napari_spoco.scaling`)
    sees the image resized by that factor; labels (and the embedding) come back at the image's
    shape, and ``min_size``, ``max_size`` and ``expand`` stay in the image's pixels.
    ``voxel_size`` (one spacing per spatial axis; default: the model's training voxel size, or
    isotropic) interpolates coarsely sampled axes up to cubic voxels first (docs/method.md,
    "Anisotropic volumes").

    Images larger than ``tile_shape`` (default: :func:`segment_tile_shape`'s pixel count shaped
    to the image, :func:`napari_spoco.tiling.fit_tile`; in the network's pixels) are clustered
    tile by tile with a halo of context (:mod:`napari_spoco.tiling`); the embedding is computed
    once for the whole image when it fits :data:`EMBED_FIRST_MAX_BYTES` (:func:`embeds_first`),
    else tile by tile with the same halo, so that memory stays bounded
    by the tile. ``progress(done, total)`` counts the network's tiles, then the clustering's.
    ``return_embedding=True`` also returns the whole image's :class:`Embedding` (which does
    take memory in proportion to the image). ``precision``: the network's number format:
    ``auto`` (bfloat16 where the CPU or GPU has it natively, else float32), ``float32`` or
    ``bfloat16`` (:func:`napari_spoco.inference.embed`; docs/method.md, "Number format").
    ``tta`` (test-time augmentation): the network's output is averaged over the image and its
    mirror images in Y and X (four forward passes: 2-3x the time of a Segment, for AP50 gained
    on four of our five benchmark sets; docs/method.md); ``False`` runs it once. ``name`` is what
    messages about a bad image call it (the napari panel gives the layer's name).
    """
    from .precision import check_precision
    from .training import as_model

    config = _with_method(config, method)
    check_precision(precision)
    model = as_model(model)
    if model is None:
        raise SpocoError("No model was given; train one, load one (napari_spoco.load_model) or pass a model file's path.")
    if image is None or isinstance(image, (str, bytes)):
        raise SpocoError("image must be an array; read a file first, e.g. with napari_spoco.io.read_image.")
    # Checked and its range taken once, of the whole image: every tile normalises alike.
    prepared = prepare_image(model, image, value_range, channel_axis, name)
    return _segment_prepared(model, prepared, config, tile_shape, device, progress, return_embedding, _timing,
                             voxel_size, precision=precision, tta=tta)


def _segment_prepared(
    model: SpocoModel,
    image: PreparedImage,
    config: ClusterConfig | None,
    tile_shape: tuple[int, ...] | None = None,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    return_embedding: bool = False,
    _timing: dict | None = None,
    voxel_size: tuple[float, ...] | None = None,
    edges: tuple[tuple[bool, bool], ...] | None = None,
    tile_voxels: int | None = None,
    precision: str = INFERENCE_PRECISION,
    tta: bool = True,
) -> np.ndarray | tuple[np.ndarray, Embedding]:
    """:func:`segment` of an image prepared for ``model``: at the model's pixel scale (and
    cubic voxels), in the image's pixels. ``edges`` and ``tile_voxels`` (``max_tile_voxels``):
    :func:`napari_spoco.inference.embed`'s."""
    from dataclasses import replace

    from .scaling import check_voxel_size, enlarge_labels, resize_image, resize_labels, scaled_shape

    factors = model.network_factors(check_voxel_size(voxel_size, model.config.ndim))
    if all(f == 1.0 for f in factors):
        return _segment_at_network_scale(model, image, config, tile_shape, device, progress, return_embedding, _timing,
                                         edges, tile_voxels, precision, tta)
    shape = image.shape
    config = config or ClusterConfig()
    volume = float(np.prod(factors))
    scale = volume ** (1.0 / len(factors))  # the mean linear factor, for distances
    config = replace(
        config,
        min_size=None if config.min_size is None else max(1, int(round(config.min_size * volume))),
        max_size=None if config.max_size is None else max(1, int(round(config.max_size * volume))),
        expand=int(round(config.expand * scale)),
    )
    # resized, the image keeps the original's range: crops normalise like the whole
    small = PreparedImage(resize_image(image.data, scaled_shape(shape, factors)), image.value_range, image.channels)
    result = _segment_at_network_scale(model, small, config, tile_shape, device, progress, return_embedding, _timing,
                                       edges, tile_voxels, precision, tta)
    labels, emb = result if return_embedding else (result, None)
    # enlarged back with smooth edges (not the staircase of nearest neighbour) where the network
    # saw the image shrunk; either way an object of a pixel or two may be lost
    labels = enlarge_labels(labels, shape) if any(f < 1.0 for f in factors) else resize_labels(labels, shape)
    labels = relabel_sequential(labels)
    labels = as_label_image(labels)
    if emb is None:
        return labels
    up = lambda a: None if a is None else resize_image(a, shape)  # noqa: E731
    return labels, Embedding(up(emb.embeddings), up(emb.foreground), up(emb.teacher_embeddings))


def model_cluster_config(model: SpocoModel, config: ClusterConfig | None = None) -> ClusterConfig:
    """``config`` with what it leaves open taken from what training recorded in the model: the
    smallest object, the painted objects' size and shape, the measured layout and the calibrated
    edge (the size cap depends on the block and is set per block)."""
    from dataclasses import replace

    config = config or ClusterConfig()
    if config.min_size is None:
        config = replace(config, min_size=auto_min_size(model, model.config.ndim),
                         adaptive_min_size=bool(model.history.get("object_size_median")))
    if config.object_size is None and config.shape_reference is None:
        config = replace(config, object_size=model.history.get("object_size_median"),
                         shape_reference=model.history.get("object_solidity"),
                         convex_reference=model.history.get("object_solidity_median"))
    if config.layout == "auto" and model.history.get("layout") in ("separate", "tiled"):
        config = replace(config, layout=model.history["layout"])  # measured on the painted objects (layout.py)
    if config.edge_growth and model.history.get("edge_growth") is False:
        # the painted objects did not fit clearly better grown into their uncertain edge (edges.growth_helps)
        config = replace(config, edge_growth=False)
    if config.outranked_seeds and model.history.get("single_peaked") is not True:
        # the painted objects have peaks of their own that the rule would take as seeds, or
        # the model predates the record (shapes.single_peaked)
        config = replace(config, outranked_seeds=False)
    grow = model.history.get("edge_expand") if config.calibrated_edge else None
    if grow:  # the edge fitted on the painted objects at the end of training (edges.py)
        config = replace(config, expand=config.expand + int(grow))
    return config


def _segment_at_network_scale(
    model: SpocoModel,
    image: PreparedImage,
    config: ClusterConfig | None,
    tile_shape: tuple[int, ...] | None,
    device: str,
    progress: Callable[[int, int], None] | None,
    return_embedding: bool,
    _timing: dict | None,
    edges: tuple[tuple[bool, bool], ...] | None = None,
    tile_voxels: int | None = None,
    precision: str = INFERENCE_PRECISION,
    tta: bool = True,
) -> np.ndarray | tuple[np.ndarray, Embedding]:
    """:func:`segment` of a prepared image already at the model's scale, tile by tile."""
    from dataclasses import replace

    from .tiling import fit_tile, paste_claimed, tiles

    ndim = model.config.ndim
    spatial = image.shape
    config = model_cluster_config(model, config)
    if tile_shape is None:  # the default's voxel count, shaped to the image (tiling.fit_tile)
        tile = fit_tile(spatial, segment_tile_shape(ndim)[-len(spatial):])
    else:
        tile = tuple(tile_shape)[-len(spatial):]
    cut = [t for t, n in zip(tile, spatial) if n > t]  # only the axes that are cut need a halo
    halo = min(object_halo(model, ndim), min(cut or tile) // 4)  # cores at least half the tile
    blocks = list(tiles(spatial, tile, (halo,) * len(spatial), model.config.size_divisor))
    with_teacher = config.method == "consistency"
    # one tile is embedded whole either way
    first = len(blocks) > 1 and embeds_first(model, spatial, with_teacher)
    out = np.zeros(spatial, dtype=np.int64)
    whole = None
    next_id = 1
    done = 0  # progress: the network's tiles count first when the whole image is embedded at once
    if first:
        t0 = time.perf_counter()

        def embedding_progress(i: int, n: int) -> None:
            nonlocal done
            done = i
            if progress is not None:
                progress(i, n + len(blocks))

        whole = embed(model, image, device=device, with_teacher=with_teacher, edges=edges,
                      max_tile_voxels=tile_voxels, precision=precision, tta=tta, progress=embedding_progress)
        if _timing is not None:
            _timing["embed_s"] = _timing.get("embed_s", 0.0) + time.perf_counter() - t0
    for k, (core, region) in enumerate(blocks):
        block = image.crop(region)
        cfg = config if config.max_size is not None else replace(config, max_size=auto_max_size(model, block.shape))
        t0 = time.perf_counter()
        if first:
            emb = _crop_embedding(whole, region)
        else:
            embedding_progress = None
            if progress is not None and len(blocks) == 1:
                # one tile (a 2D image up to 2048²): the network's tiles are the progress, then
                # the clustering, as when a larger image is embedded first
                def embedding_progress(i: int, n: int) -> None:
                    nonlocal done
                    done = i
                    progress(i, n + 1)

            emb = embed(model, block, device=device, with_teacher=with_teacher,
                        edges=_tile_edges(edges, region, spatial), max_tile_voxels=tile_voxels, precision=precision,
                        tta=tta, progress=embedding_progress)
        if _timing is not None:  # benchmarks: time spent embedding, the rest is clustering
            _timing["embed_s"] = _timing.get("embed_s", 0.0) + time.perf_counter() - t0
        labels = cluster_embeddings(emb.embeddings, emb.foreground, cfg, emb.teacher_embeddings)
        if len(blocks) == 1:
            out = labels.astype(np.int64)
        else:
            next_id = paste_claimed(out, labels, core, region, next_id, margin=halo / 2)
        if return_embedding and not first:
            whole = _paste_embedding(whole, emb, core, region, spatial)
        del emb
        if progress is not None:
            progress(done + k + 1, done + len(blocks))
    if len(blocks) > 1:
        out = relabel_sequential(out)
    out = as_label_image(out)
    return (out, whole) if return_embedding else out


#: Largest whole-image embedding (bytes, float32) computed in one pass before a multi-tile
#: Segment clusters tile by tile: 2048² with the medium network's 17 channels takes 285 MB.
#: Beyond it each segmentation tile embeds its own region and halo (memory bounded by the tile).
EMBED_FIRST_MAX_BYTES = 640 * 2**20


def embeds_first(model: SpocoModel, spatial: tuple[int, ...], with_teacher: bool = False) -> bool:
    """Whether :func:`segment` embeds the whole image once and then clusters tile by tile,
    rather than embedding each tile with its halo. Embedding first computes each pixel once
    (tiles of the network overlap by its reach, not by the clustering's halo of object
    diameters: 0.65x the embedding time of a 2048² image, docs/benchmarks.md "Embedding
    once"), at the memory of the whole embedding (:data:`EMBED_FIRST_MAX_BYTES`, and at most
    half the memory free now: on a machine short of memory the tiles embed their own regions,
    as :func:`napari_spoco.inference.embed` would refuse the whole image there)."""
    from . import inference

    channels = model.config.out_channels + (model.config.embedding_dim if with_teacher else 0)
    need = 4 * channels * int(np.prod(spatial))
    if need > EMBED_FIRST_MAX_BYTES:
        return False
    free = inference._available_bytes()
    return free is None or need <= 0.5 * free


def _crop_embedding(emb: Embedding, region: tuple[slice, ...]) -> Embedding:
    """The part of a whole-image :class:`Embedding` inside ``region`` (contiguous copies)."""
    lead = (slice(None),) + tuple(region)
    take = lambda a, sl: None if a is None else np.ascontiguousarray(a[sl])  # noqa: E731
    return Embedding(take(emb.embeddings, lead), take(emb.foreground, tuple(region)),
                     take(emb.teacher_embeddings, lead))


def _tile_edges(edges, region: tuple[slice, ...], spatial: tuple[int, ...]) -> tuple[tuple[bool, bool], ...]:
    """Which sides of a tile are edges of the whole image (of ``edges``, the image's own)."""
    edges = edges or tuple((True, True) for _ in spatial)
    return tuple((e0 and r.start == 0, e1 and r.stop == n) for (e0, e1), r, n in zip(edges, region, spatial))


def _paste_embedding(whole: Embedding | None, emb: Embedding, core, region, spatial) -> Embedding:
    """Assemble the cores of per-tile embeddings into one image-sized :class:`Embedding`."""
    if whole is None:
        whole = Embedding(
            np.zeros((emb.embeddings.shape[0],) + tuple(spatial), np.float32),
            None if emb.foreground is None else np.zeros(spatial, np.float32),
            None if emb.teacher_embeddings is None
            else np.zeros((emb.teacher_embeddings.shape[0],) + tuple(spatial), np.float32),
        )
    inner = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(core, region))
    whole.embeddings[(slice(None),) + core] = emb.embeddings[(slice(None),) + inner]
    if whole.foreground is not None:
        whole.foreground[core] = emb.foreground[inner]
    if whole.teacher_embeddings is not None:
        whole.teacher_embeddings[(slice(None),) + core] = emb.teacher_embeddings[(slice(None),) + inner]
    return whole


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
    method: str | None = None,
    config: ClusterConfig | None = None,
) -> np.ndarray:
    """Segment ``image[box]`` with a CPU snapshot of ``model``, normalised like the whole image.

    Safe to call between training steps: the live networks are neither moved nor switched to
    evaluation mode. Returns the labels of the box only. ``method`` and ``config`` are
    :func:`segment`'s. For models of several channels the image is colour ``(Y, X, 3|4)`` and
    ``value_range`` one range per channel (computed here when missing or given for grey).
    Without test-time augmentation: a preview is for watching training, and runs between its
    steps.
    """
    snap = model.snapshot()
    channels = model.config.in_channels
    if channels > 1 and (value_range is None or np.size(value_range) != 2 * channels):
        # a range per channel, of the whole image (a grey range does not fit a colour model):
        # the whole image is prepared once, and the box cut from it
        prepared = prepare_image(snap, image).crop(box)
        return _segment_prepared(snap, prepared, _with_method(config, method), device="cpu", tta=False)
    crop = np.asarray(image[box])
    return segment(snap, crop, method=method, config=config, device="cpu", value_range=value_range, tta=False)


def segment_series(
    model: SpocoModel,
    stack: np.ndarray,
    method: str | None = None,
    config: ClusterConfig | None = None,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    precision: str = INFERENCE_PRECISION,
    tta: bool = True,
    name: str = "stack",
) -> np.ndarray:
    """Segment a 2D+t stack ``(T, Y, X)`` frame by frame with a 2D model.

    Ids are made unique across frames (frame t's ids follow frame t-1's), so that any instance
    can be picked, promoted or exported without ambiguity. ``method`` and ``config`` are
    :func:`segment`'s, as are ``precision`` and ``tta``; ``progress(done, total)`` counts frames;
    ``name`` is what messages call the stack (a frame's says which).
    """
    stack = np.asarray(stack)
    out = np.zeros(stack.shape[:3], dtype=np.int64)
    offset = 0
    for t in range(stack.shape[0]):
        lab = segment(model, stack[t], method=method, config=config, device=device,
                      precision=precision, tta=tta, name=f"{name}, frame {t}").astype(np.int64)
        out[t] = np.where(lab > 0, lab + offset, 0)
        offset = int(out[t].max(initial=offset))
        if progress is not None:
            progress(t + 1, stack.shape[0])
    return as_label_image(out)
