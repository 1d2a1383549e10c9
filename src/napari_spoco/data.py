"""Images and sparse labels: validation, normalisation, the label convention, patch sampling.

Label convention (see docs/method.md):
  * ``0``: unlabelled ("unknown"), never background;
  * positive ids: painted objects, each assumed complete;
  * an optional ``background_label`` value: pixels the user declares background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .checks import is_whole
from .errors import SpocoError
from .label_dtypes import label_dtype

#: Images with more pixels than this are refused for training (inference is tiled).
MAX_TRAIN_PIXELS = 2**31


def is_rgb(image: np.ndarray) -> bool:
    """(H, W, 3|4) with H, W > 4 is a colour image (not a thin 3-slice volume's last axis)."""
    return is_rgb_shape(image.shape)


def is_rgb_shape(shape: tuple[int, ...]) -> bool:
    """:func:`is_rgb` from a shape alone (checked before an image is read into a model)."""
    return len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4


def is_constant(image: np.ndarray, channel_axis: int | None = None) -> bool:
    """One value in every pixel of each channel (channels as :func:`channels_first` takes them):
    nothing to learn from. Judged on the image as given, before any resizing, whose rounding
    normalisation would stretch into a full range."""
    image = np.asarray(image)
    if image.size == 0:
        return False
    per_channel = channels_first(image, channel_axis) if channel_axis is not None or is_rgb(image) else image[None]
    return all(c.min() == c.max() for c in per_channel)


def to_grayscale_if_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3|4) colour images become luminance; anything else is returned unchanged."""
    if is_rgb(image):
        rgb = image[..., :3].astype(np.float32)
        return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return image


def channel_count(image: np.ndarray, channel_axis: int | None = None) -> int:
    """How many channels an image holds: ``shape[channel_axis]`` when the axis is given, 3 for
    ``(Y, X, 3|4)`` colour (alpha is no image content), else 1."""
    image = image if hasattr(image, "shape") else np.asarray(image)
    if channel_axis is not None:
        return int(image.shape[_axis(channel_axis, image.shape)])
    return 3 if is_rgb(image) else 1


#: More entries than this on a "channel" axis means it is a spatial axis given by mistake.
MAX_CHANNELS = 16


def _axis(channel_axis: int, shape: tuple[int, ...]) -> int:
    """``channel_axis`` as a non-negative index, refused when it cannot be a channel axis."""
    ndim = len(shape)
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
        raise SpocoError(f"channel_axis must be a whole number (an axis of the image), got {channel_axis!r}.")
    if not -ndim <= channel_axis < ndim:
        raise SpocoError(f"channel_axis {channel_axis} does not exist in an image with {ndim} axes.")
    axis = int(channel_axis) % ndim
    if shape[axis] > MAX_CHANNELS or ndim < 3:
        raise SpocoError(
            f"channel_axis {channel_axis}: axis {axis} of the image (shape {tuple(shape)}) holds {shape[axis]} "
            f"entries and would leave a {ndim - 1}D image; that is a spatial axis, not channels. Give the axis "
            f"that holds the 2-{MAX_CHANNELS} channels, or leave channel_axis out for a one-channel image."
        )
    return axis


def channels_first(image: np.ndarray, channel_axis: int | None = None) -> np.ndarray:
    """The image as ``(C, *spatial)``: the given channel axis moved first, ``(Y, X, 3|4)`` colour
    as ``(3, Y, X)`` (alpha dropped), a single-channel image with a new axis of length 1."""
    image = np.asarray(image)
    if channel_axis is not None:
        return np.moveaxis(image, _axis(channel_axis, image.shape), 0)
    if is_rgb(image):
        return np.moveaxis(image[..., :3], -1, 0)
    return image[None]


def check_pair_shapes(image_shape: tuple[int, ...], labels_shape: tuple[int, ...] | None, name: str = "image",
                      channel_axis: int | None = None) -> None:
    """Refuse an image (and its label image) whose shapes cannot train, before any model is
    chosen or loaded, saying what the shapes suggest: a colour label image, a channel axis that
    was not given, time points in one file (the CLI calls this first; prepare_training_data too)."""
    image_shape = tuple(int(n) for n in image_shape)
    if channel_axis is not None:
        axis = _axis(channel_axis, image_shape)
        spatial = image_shape[:axis] + image_shape[axis + 1:]
    elif is_rgb_shape(image_shape):
        spatial = image_shape[:2]  # colour (Y, X, 3|4)
    else:
        spatial = image_shape
    if labels_shape is not None:
        labels_shape = tuple(int(n) for n in labels_shape)
        if labels_shape == spatial and len(spatial) in (2, 3):
            return
        if channel_axis is None and labels_shape == image_shape and spatial != image_shape:
            raise SpocoError(
                f"{name}: the image (shape {image_shape}) is read as colour (Y, X, 3|4), and its labels have the "
                "same shape. If the labels are a colour export, save them as a one-channel label image (one id "
                "per pixel); if the image is a volume of 3 or 4 slices, store it as (Z, Y, X)."
            )
        if len(labels_shape) == 3 and labels_shape[-1] in (3, 4) and labels_shape[:2] == spatial[-2:]:
            raise SpocoError(
                f"{name} labels: shape {labels_shape} looks like a colour image, not a label image. A label "
                "image holds one whole-number id per pixel (0 = unlabelled, 1, 2, … = objects): save the "
                "napari Labels layer (or your painting tool's label export) as a one-channel TIFF or PNG."
            )
    if len(spatial) not in (2, 3):
        advice = (" If one axis holds channels, give it with --channel-axis (channel_axis=…); split time "
                  "points into separate images." if len(image_shape) > 3 else "")
        raise SpocoError(f"{name}: expected a 2D (Y, X) or 3D (Z, Y, X) image, got shape {image_shape}.{advice}")
    if labels_shape is None or labels_shape == spatial:
        return
    hint = ""
    if channel_axis is None:
        axes = [k for k in range(len(image_shape)) if image_shape[k] <= MAX_CHANNELS
                and image_shape[:k] + image_shape[k + 1:] == labels_shape]
        if axes:
            hint = (f" The labels match the image without its axis {axes[0]} ({image_shape[axes[0]]} entries): "
                    f"if that axis holds channels, pass --channel-axis {axes[0]} (channel_axis={axes[0]}).")
    raise SpocoError(
        f"{name} labels: shape {labels_shape} does not match the image's shape {spatial}; labels must be "
        f"painted on the image they belong to.{hint}"
    )


def _check_values(image: np.ndarray, name: str) -> np.ndarray:
    if image.dtype == bool or not (
        np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    ):
        raise SpocoError(f"{name}: expected a numeric image, got dtype {image.dtype}.")
    return image


def _check_finite(image: np.ndarray, name: str) -> np.ndarray:
    wide = np.issubdtype(image.dtype, np.floating) and image.dtype.itemsize > 4
    with np.errstate(over="ignore"):  # float64 beyond float32's range: said below, not as a warning
        narrow = image.astype(np.float32, copy=False)
    if wide and not np.isfinite(narrow).all() and np.isfinite(image).all():
        peak = float(np.abs(image).max())
        raise SpocoError(
            f"{name}: the image holds values as large as {peak:.3g} in magnitude, beyond what 32-bit "
            "floats hold (about 3.4e38); rescale it (e.g. divide by its maximum) before training or segmenting."
        )
    image = narrow
    if not np.isfinite(image).all():
        raise SpocoError(
            f"{name}: the image contains NaN or infinite values; replace them (e.g. with the "
            "image minimum) before training or segmenting."
        )
    return image


def check_image(
    image: np.ndarray, name: str = "image", channels: int = 1, channel_axis: int | None = None
) -> np.ndarray:
    """Validate an image for a model that reads ``channels`` channels; return it as float32.

    One channel (grey models): ``(Y, X)`` or ``(Z, Y, X)``; colour ``(Y, X, 3|4)`` becomes
    luminance, as grey models have always read it. Several channels: the result is
    ``(C, *spatial)``, channels taken from ``channel_axis`` or from ``(Y, X, 3|4)`` colour
    (docs/method.md, "Colour and channels").
    """
    image = _check_values(np.asarray(image), name)
    have = channel_count(image, channel_axis)
    if channels == 1:
        if channel_axis is not None and have > 1:
            raise SpocoError(
                f"{name}: the image has {have} channels but this model reads one; train a model on "
                f"{have}-channel images (it keeps the channels), or give one channel."
            )
        image = to_grayscale_if_rgb(image) if channel_axis is None else np.take(image, 0, axis=channel_axis)
    else:
        if have != channels:
            raise SpocoError(
                f"{name}: this model reads {channels} channels but the image has {have} "
                f"(shape {image.shape}). Give the image with its {channels} channels "
                "(--channel-axis / channel_axis says which axis holds them), or train a model on "
                "images like this one."
            )
        image = channels_first(image, channel_axis)
    spatial = image.shape[1:] if channels > 1 else image.shape
    if len(spatial) not in (2, 3):
        raise SpocoError(
            f"{name}: expected a 2D (Y, X) or 3D (Z, Y, X) image, got shape {image.shape}. "
            "Give channels with --channel-axis (channel_axis=…), and split time points into "
            "separate images."
        )
    if min(spatial) < 2:
        raise SpocoError(f"{name}: image of shape {image.shape} is too small to segment.")
    return _check_finite(image, name)


def spatial_shape(image: np.ndarray, channels: int = 1) -> tuple[int, ...]:
    """The spatial part of a checked image's shape (without its leading channel axis)."""
    return tuple(image.shape[1:] if channels > 1 else image.shape)


def intensity_range(
    image: np.ndarray, low: float = 1.0, high: float = 99.8, channels: int = 1
) -> tuple[float, float] | tuple[tuple[float, float], ...]:
    """The percentile range that :func:`normalize` maps to [0, 1] (reference: 1 and 99.8); for
    a checked ``(C, *spatial)`` image of several channels, one range per channel.

    Percentiles of large images are taken on a strided subsample: same result, a fraction of
    the time.
    """
    if channels > 1:
        return tuple(_range(c, low, high) for c in np.asarray(image))
    return _range(image, low, high)


def _range(image: np.ndarray, low: float, high: float) -> tuple[float, float]:
    flat = np.asarray(image).ravel()
    if flat.size > 2_000_000:
        flat = flat[:: flat.size // 1_000_000]
    flat = flat.astype(np.float32, copy=False)
    lo, hi = np.percentile(flat, [low, high])
    if hi - lo <= 0:
        lo, hi = float(flat.min()), float(flat.max())
        if hi - lo <= 0:
            hi = lo + 1.0
    return float(lo), float(hi)


def normalize(
    image: np.ndarray, low: float = 1.0, high: float = 99.8, value_range=None, channels: int = 1
) -> np.ndarray:
    """Percentile normalisation to roughly [0, 1], per channel for ``(C, *spatial)`` images of
    several channels (their stains differ in brightness by orders of magnitude).

    ``value_range`` (from :func:`intensity_range` of the whole image) normalises a crop exactly
    as the whole image would be, so previews on a crop match the full segmentation.
    """
    image = np.asarray(image, dtype=np.float32)
    ranges = value_range if value_range is not None else intensity_range(image, low, high, channels)
    if channels > 1:
        ranges = np.asarray(ranges, dtype=np.float32).reshape(-1, 2)
        if len(ranges) != len(image):
            raise SpocoError(f"value_range holds {len(ranges)} ranges for an image of {len(image)} channels.")
        shape = (-1,) + (1,) * (image.ndim - 1)
        lo, hi = ranges[:, 0].reshape(shape), ranges[:, 1].reshape(shape)
        return ((image - lo) / (hi - lo)).astype(np.float32, copy=False)
    lo, hi = np.asarray(ranges, dtype=np.float64).reshape(-1)[:2]
    return ((image - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32, copy=False)


def check_labels(
    labels: np.ndarray, shape: tuple[int, ...], name: str = "labels"
) -> np.ndarray:
    """Validate a sparse label image against its image's shape; return it as int64."""
    labels = np.asarray(labels)
    if labels.shape != tuple(shape):
        raise SpocoError(
            f"{name}: shape {labels.shape} does not match the image's shape {tuple(shape)}; "
            "labels must be painted on the image they belong to."
        )
    labels = check_label_values(labels, name, zero="unlabelled").astype(np.int64)
    if labels.min(initial=0) < 0:  # uint64 ids of 2**63 and above wrap
        raise SpocoError(f"{name}: label ids must be below 2**63; renumber the objects (1, 2, 3, …).")
    same = same_id_fraction(labels)
    if same is not None and same < 0.5 and len(np.unique(labels)) > 20:
        raise SpocoError(
            f"{name} look like an image, not labels: neighbouring pixels share an id only "
            f"{100 * same:.0f} % of the time (painted objects: over 95 %). Check that the labels "
            "are label images (0 = unlabelled, 1, 2, … = objects), not the images themselves."
        )
    return labels


def check_label_values(labels: np.ndarray, name: str = "labels", zero: str = "background") -> np.ndarray:
    """Object ids that are whole numbers >= 0, as training and scoring need them (a negative or
    fractional background would count as an object). Integer images come back as they are, not
    copied (a large volume's ground truth and prediction are scored side by side); whole-valued
    float images as int64. ``zero``: what 0 means, for the message."""
    labels = np.asarray(labels)
    if labels.dtype == bool or np.issubdtype(labels.dtype, np.unsignedinteger):
        return labels
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all() or not np.all(labels == np.round(labels)):
            raise SpocoError(f"{name}: label images must hold whole numbers (object ids), not fractions.")
        if labels.min(initial=0) < 0:
            raise SpocoError(f"{name}: label ids must be >= 0 (0 = {zero}), not negative.")
        return labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.signedinteger):
        raise SpocoError(f"{name}: expected an integer label image, got dtype {labels.dtype}.")
    if labels.min(initial=0) < 0:
        raise SpocoError(f"{name}: label ids must be >= 0 (0 = {zero}), not negative.")
    return labels


def same_id_fraction(labels: np.ndarray, min_pairs: int = 1000) -> float | None:
    """Of the pairs of neighbouring non-zero pixels, the fraction that share an id.

    Painted objects are solid regions, so nearly all such pairs agree (over 99 % in every
    dense ground truth we have); an intensity image read as labels agrees a few % of the time.
    None when there are too few pairs to tell.
    """
    same = total = 0
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)
        p, q = a[1:], a[:-1]
        both = (p != 0) & (q != 0)
        total += int(both.sum())
        same += int((both & (p == q)).sum())
    return same / total if total >= min_pairs else None


def count_objects(labels: np.ndarray, background_label: int | None = None) -> int:
    """How many objects a label image holds: its distinct ids other than 0 (unlabelled) and the
    painted-background value. The one count the library, the CLI and the panel report."""
    ids = np.unique(np.asarray(labels))
    return int(np.count_nonzero((ids != 0) & (ids != background_label if background_label is not None else True)))


def split_background(
    labels: np.ndarray, background_label: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Return (object labels with background set to 0, boolean background mask)."""
    if background_label is None:
        return labels, np.zeros(labels.shape, dtype=bool)
    bg = labels == background_label
    objects = np.where(bg, 0, labels)
    return objects, bg


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Ids 1..N in order of first appearance of the sorted ids; 0 stays 0."""
    labels = np.asarray(labels)
    top = int(labels.max(initial=0))
    if top > 4 * labels.size + 2**16:
        # Sparse huge ids (e.g. 2**31): a lookup table as long as the largest id would take
        # gigabytes; sorting the ids costs a little time instead.
        ids, inverse = np.unique(labels, return_inverse=True)
        ranks = np.arange(len(ids)) + (0 if ids[0] == 0 else 1)
        out = ranks[inverse.reshape(labels.shape)]
        n = len(ids) - (1 if ids[0] == 0 else 0)
    else:
        # the ids present, from a count per id: one pass, where sorting every pixel (np.unique)
        # took 0.05 s per 2048² image in the clustering (docs/benchmarks.md)
        flat = labels.ravel()
        safe = flat.dtype.kind == "i" or (flat.dtype.kind == "u" and flat.dtype.itemsize < 8)
        present = np.bincount(flat if safe else flat.astype(np.int64), minlength=top + 1) > 0
        present[0] = False
        n = int(present.sum())
        lut = np.zeros(top + 1, dtype=label_dtype(n))
        lut[present] = np.arange(1, n + 1)
        return lut[labels]
    return out.astype(label_dtype(n))


@dataclass
class TrainingImage:
    """One normalised image with its object labels and background mask, ready to sample."""

    image: np.ndarray  # float32 (C, *spatial), normalised per channel
    objects: np.ndarray  # int64, 0 = not an object
    background: np.ndarray  # bool, painted background
    negatives: np.ndarray  # bool, known not inside any object: background + rings
    boxes: list  # bounding slices of painted objects

    @property
    def n_objects(self) -> int:
        return len(self.boxes)


#: Width in pixels of the foreground head's known negatives around painted objects (1 measured
#: level or better than 3 on every set: docs/method.md, "Background"); TrainConfig's default.
RING_WIDTH = 1


def object_rings(objects: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of a painted object but outside every painted object.

    Painted objects are complete, so these pixels are known not to belong to them: they are
    background or the boundary of a neighbour. They are the foreground head's negatives.
    """
    painted = objects > 0
    if width <= 0 or not painted.any():
        return np.zeros(objects.shape, dtype=bool)
    grown = ndi.binary_dilation(painted, ndi.generate_binary_structure(objects.ndim, 1), iterations=width)
    return grown & ~painted


def prepare_training_data(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    background_label: int | None = None,
    names: list[str] | None = None,
    ring_width: int = RING_WIDTH,
    require_objects: bool = True,
    scale: float = 1.0,
    channels: int = 1,
    channel_axis: int | None = None,
    voxel_size: tuple[float, ...] | None = None,
) -> list[TrainingImage]:
    """Validate and normalise image/label pairs; refuse sets that cannot train SPOCO.

    ``require_objects=False`` (self-supervised pretraining) accepts images with nothing painted.
    ``scale`` resizes each pair first (:mod:`napari_spoco.scaling`; labels by nearest neighbour),
    and ``voxel_size`` (one spacing per spatial axis) interpolates coarse axes up to cubic voxels.
    ``channels``/``channel_axis``: as in :func:`check_image`; the prepared images are always
    ``(C, *spatial)``.
    """
    if len(images) == 0:
        raise SpocoError("No training images were given.")
    if len(images) != len(labels):
        raise SpocoError(
            f"Got {len(images)} images but {len(labels)} label images; give one label image per image."
        )
    names = names or [f"image {i}" for i in range(len(images))]
    out: list[TrainingImage] = []
    ndims = set()
    total_objects = 0
    constant = []
    for img, lab, name in zip(images, labels, names):
        check_pair_shapes(np.shape(img), np.shape(lab), name, channel_axis)
        img = check_image(img, name, channels, channel_axis)
        constant.append(is_constant(img if channels > 1 else img[None], 0))
        spatial = spatial_shape(img, channels)
        if img.size > MAX_TRAIN_PIXELS:
            raise SpocoError(f"{name}: {img.size} pixels is too large to train on; crop it.")
        lab = check_labels(lab, spatial, f"{name} labels")
        img = img if channels > 1 else img[None]
        from .scaling import axis_factors, resize_image, resize_labels, scaled_shape

        factors = axis_factors(scale, voxel_size, len(spatial))
        if any(f != 1.0 for f in factors):
            small = scaled_shape(spatial, factors)
            img, lab = resize_image(img, small), resize_labels(lab, small)
        objects, bg = split_background(lab, background_label)
        # Each id is one object; find_objects is indexed by id, so relabel first.
        objects = relabel_sequential(objects).astype(np.int64)
        boxes = [b for b in ndi.find_objects(objects) if b is not None]
        total_objects += len(boxes)
        ndims.add(objects.ndim)
        negatives = bg | object_rings(objects, ring_width)
        out.append(TrainingImage(normalize(img, channels=len(img)), objects, bg, negatives, boxes))
    if len(ndims) > 1:
        raise SpocoError("Mix of 2D and 3D images: train 2D and 3D models separately.")
    if all(constant):
        raise SpocoError(
            f"{'The training image is' if len(out) == 1 else 'Every training image is'} constant (one value in "
            "every pixel): there is nothing to learn from. Check that the right file or channel was exported."
        )
    if not require_objects:
        return out
    if total_objects == 0:
        raise SpocoError(
            "The label images contain no painted objects. Paint at least two objects "
            "(positive ids; 0 means unlabelled) before training."
        )
    if total_objects < 2:
        raise SpocoError(
            "Only one painted object was found. SPOCO learns by telling objects apart: paint "
            "at least two objects (ideally 5-20, touching ones included)."
        )
    return out


def _crop_with_padding(
    arr: np.ndarray, start: tuple[int, ...], shape: tuple[int, ...], mode: str
) -> np.ndarray:
    """Crop ``shape`` at ``start``; parts outside ``arr`` are padded (reflect or zeros)."""
    src = tuple(slice(max(s, 0), min(s + n, dim)) for s, n, dim in zip(start, shape, arr.shape))
    crop = arr[src]
    pad = [(max(-s, 0), n - c - max(-s, 0)) for s, n, c in zip(start, shape, crop.shape)]
    if any(p != (0, 0) for p in pad):
        if mode == "reflect":
            # numpy reflects repeatedly for pads longer than the axis; a 1-pixel axis cannot.
            return np.pad(crop, pad, mode="reflect" if min(crop.shape) > 1 else "edge")
        return np.pad(crop, pad, mode="constant")
    return crop


def _zoom_patch(img: np.ndarray, obj: np.ndarray, bg: np.ndarray, shape: tuple[int, ...],
                ring_width: int) -> tuple[np.ndarray, ...]:
    """A patch cut at another size brought to ``shape`` in Y and X: the image linearly (averaged
    when shrunk), the painted objects and background by nearest neighbour, and the negatives
    drawn again from them (a ring resized by nearest neighbour would break when shrunk and
    thicken when enlarged)."""
    import torch
    import torch.nn.functional as F

    src = obj.shape[-2:]
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    flat = t.reshape(-1, 1, *src)
    shrink = shape[-2] < src[0] or shape[-1] < src[1]
    zoomed = F.interpolate(flat, size=tuple(shape[-2:]), mode="bilinear", align_corners=False, antialias=shrink)
    img = zoomed.reshape(*img.shape[:-2], *shape[-2:]).numpy()
    iy = np.minimum(((np.arange(shape[-2]) + 0.5) * src[0] / shape[-2]).astype(int), src[0] - 1)
    ix = np.minimum(((np.arange(shape[-1]) + 0.5) * src[1] / shape[-1]).astype(int), src[1] - 1)
    obj = obj[..., iy[:, None], ix[None, :]]
    bg = bg[..., iy[:, None], ix[None, :]]
    neg = bg | object_rings(obj, ring_width)
    return img, obj, bg, neg


#: Share of the patches not centred on a painted object that are centred on painted background,
#: where some is painted. 0 (they fall anywhere): half of them on a correction round's strokes
#: removed more wrong instances but lost right ones, AP50 0.432 against 0.487 (docs/benchmarks.md,
#: "A correction round"). A setting, so that other shares can be measured.
BACKGROUND_FRACTION = 0.0


class PatchSampler:
    """Draws training patches, most of them centred on a painted object.

    Centring on painted objects is what makes CPU training efficient: a random 128² crop of a
    sparsely painted image usually holds no label at all.
    """

    def __init__(
        self,
        data: list[TrainingImage],
        patch_shape: tuple[int, ...],
        object_fraction: float = 0.8,
        seed: int = 0,
        background_fraction: float = BACKGROUND_FRACTION,
    ):
        self.data = data
        self.patch_shape = tuple(int(p) for p in patch_shape)
        self.object_fraction = object_fraction
        self.background_fraction = background_fraction
        self.rng = np.random.default_rng(seed)
        self.paste_share, self.ring_width, self._donors = 0.0, RING_WIDTH, None  # enable_paste
        self.scale_jitter = 1.0  # enable_scale_jitter
        self._objects = [(i, b) for i, d in enumerate(data) for b in d.boxes]
        sizes = np.array([d.objects.size for d in data], dtype=float)
        self._image_p = sizes / sizes.sum()
        # Painted background, as (image index, flat pixel indices), a bounded sample of each
        # image's strokes, only where patches are to visit it; drawn on a stream of its own, so
        # that the patches are those of the sampling without it whenever it is off.
        self._background = []
        if background_fraction > 0:
            pick = np.random.default_rng(seed + 1)
            for i, d in enumerate(data):
                flat = np.flatnonzero(d.background)
                if flat.size:
                    if flat.size > 20_000:
                        flat = np.sort(pick.choice(flat, 20_000, replace=False))
                    self._background.append((i, flat))

    def _center_on_object(self) -> tuple[int, tuple[int, ...]]:
        idx, box = self._objects[self.rng.integers(len(self._objects))]
        center = tuple(int(self.rng.integers(s.start, s.stop)) for s in box)
        # Jitter up to a quarter patch so objects are not always in the middle.
        center = tuple(
            c + int(self.rng.integers(-(p // 4), p // 4 + 1)) for c, p in zip(center, self.patch_shape)
        )
        return idx, center

    def sample(self) -> tuple[np.ndarray, ...]:
        """One (image ``(C, *patch_shape)``, objects, background, negatives) patch tuple."""
        if self._objects and self.rng.random() < self.object_fraction:
            idx, center = self._center_on_object()
        elif self._background and self.rng.random() < self.background_fraction:
            # no draw unless on and background is painted: otherwise the stream is the one before
            idx, flat = self._background[self.rng.integers(len(self._background))]
            center = tuple(int(c) for c in np.unravel_index(int(flat[self.rng.integers(flat.size)]),
                                                            self.data[idx].background.shape))
            center = tuple(
                c + int(self.rng.integers(-(p // 4), p // 4 + 1)) for c, p in zip(center, self.patch_shape)
            )
        else:
            idx = int(self.rng.choice(len(self.data), p=self._image_p))
            center = tuple(int(self.rng.integers(0, n)) for n in self.data[idx].objects.shape)
        d = self.data[idx]
        shape = self.patch_shape
        if self.scale_jitter > 1.0:  # no draw when off
            zoom = float(np.exp(self.rng.uniform(-np.log(self.scale_jitter), np.log(self.scale_jitter))))
            shape = shape[:-2] + tuple(max(2, int(round(p / zoom))) for p in shape[-2:])
        start = []
        for c, p, n in zip(center, shape, d.objects.shape):
            s = c - p // 2
            # Stay inside the image where it is large enough, so padding is rare.
            s = min(max(s, 0), n - p) if n >= p else -((p - n) // 2)
            start.append(s)
        start = tuple(start)
        img = np.stack([_crop_with_padding(c, start, shape, "reflect") for c in d.image])
        obj = _crop_with_padding(d.objects, start, shape, "constant")
        bg = _crop_with_padding(d.background, start, shape, "constant")
        neg = _crop_with_padding(d.negatives, start, shape, "constant")
        if shape != self.patch_shape:
            img, obj, bg, neg = _zoom_patch(img, obj, bg, self.patch_shape, self.ring_width)
        if self.paste_share > 0 and self.rng.random() < self.paste_share:  # no draw when off
            from .pasting import paste_beside

            obj, bg, neg = obj.copy(), bg.copy(), neg.copy()  # crops can be views of the images
            paste_beside(self.rng, self._donors, img, obj, bg, neg, self.ring_width)
        return img, obj, bg, neg

    def enable_paste(self, share: float, ring_width: int = RING_WIDTH) -> None:
        """Paste a painted object beside a painted object in ``share`` of the patches
        (:func:`napari_spoco.pasting.paste_beside`); 0 leaves the patches as drawn."""
        from .pasting import Donors

        self.paste_share, self.ring_width = float(share), int(ring_width)
        if share > 0 and self._donors is None:
            self._donors = Donors([d.image for d in self.data], [d.objects for d in self.data],
                                  [d.boxes for d in self.data])

    def enable_scale_jitter(self, jitter: float, ring_width: int = RING_WIDTH) -> None:
        """Show each patch zoomed in Y and X by a factor drawn log-uniformly in
        [1/``jitter``, ``jitter``] (:func:`_zoom_patch`); 1 leaves the patches as drawn."""
        self.scale_jitter, self.ring_width = float(jitter), int(ring_width)

    def batch(self, n: int) -> tuple[np.ndarray, ...]:
        """``n`` samples stacked: (image, objects, background, negatives) batches."""
        samples = [self.sample() for _ in range(n)]
        return tuple(np.stack(x) for x in zip(*samples))


def _same_shape_pair(sparse, predicted) -> tuple[np.ndarray, np.ndarray]:
    """The sparse labels and a segmentation of their image as arrays, refused if shapes differ."""
    sparse, predicted = np.asarray(sparse), np.asarray(predicted)
    if sparse.shape != predicted.shape:
        raise SpocoError(
            f"The segmentation {predicted.shape} and the sparse labels {sparse.shape} have "
            "different shapes; segment the image these labels belong to."
        )
    return sparse, predicted


def mark_background(
    sparse: np.ndarray,
    predicted: np.ndarray,
    ids: Sequence[int] | None,
    background_label: int,
) -> tuple[np.ndarray, int]:
    """Paint predicted instances into a sparse-label image as background: the correction for an
    instance that is no object (debris, a channel wall, a halo), so that training learns it as
    background (docs/method.md, "Background").

    Only *unlabelled* pixels are painted: painted objects and background are never overwritten.
    ``ids=None`` marks every instance. Returns ``(new sparse labels, number of instances marked)``;
    an instance whose pixels are all painted already is not counted.
    """
    sparse, predicted = _same_shape_pair(sparse, predicted)
    if not is_whole(background_label) or background_label < 1:
        raise SpocoError(f"The background value must be a positive whole number (0 means unlabelled), "
                         f"not {background_label!r}.")
    if np.issubdtype(sparse.dtype, np.integer) and background_label > np.iinfo(sparse.dtype).max:
        raise SpocoError(
            f"The sparse-labels layer ({sparse.dtype}) cannot hold the background value {background_label}; "
            "choose a smaller background value or convert the layer to uint32."
        )
    wanted = np.unique(predicted) if ids is None else np.asarray(list(ids))
    wanted = wanted[wanted > 0]
    out = sparse.copy()
    marked = 0
    if wanted.size == 0:
        return out, 0
    slices = ndi.find_objects(predicted.astype(np.int64, copy=False))
    for i in wanted.tolist():
        if i > len(slices) or slices[i - 1] is None:
            continue
        box = slices[i - 1]
        target = out[box]
        free = (predicted[box] == i) & (target == 0)
        if free.any():
            target[free] = background_label
            marked += 1
    return out, marked


def promote_instances(
    sparse: np.ndarray,
    predicted: np.ndarray,
    ids: Sequence[int] | None = None,
    background_label: int | None = None,
) -> tuple[np.ndarray, int, int]:
    """Copy predicted instances into a sparse-label image, for the correct-and-retrain loop.

    Each promoted instance gets a fresh id (above the painted ones, never the background
    value) and fills only *unlabelled* pixels: what the user painted is never overwritten.
    Instances that touch a painted object are skipped, since adding them would split or grow
    that object. ``ids=None`` promotes all instances.

    Returns ``(new sparse labels, number promoted, number skipped)``.
    """
    sparse, predicted = _same_shape_pair(sparse, predicted)
    objects, _ = split_background(sparse.astype(np.int64), background_label)
    wanted = np.unique(predicted) if ids is None else np.asarray(list(ids))
    wanted = wanted[wanted > 0]
    out = sparse.copy()
    next_id = int(objects.max(initial=0)) + 1
    promoted = skipped = 0
    if wanted.size == 0:
        return out, 0, 0
    slices = ndi.find_objects(predicted.astype(np.int64, copy=False))
    for i in wanted.tolist():
        if i > len(slices) or slices[i - 1] is None:
            continue
        box = slices[i - 1]
        mask = predicted[box] == i
        if (objects[box][mask] > 0).any():
            skipped += 1
            continue
        if background_label is not None and next_id == background_label:
            next_id += 1
        if np.issubdtype(out.dtype, np.integer) and next_id > np.iinfo(out.dtype).max:
            raise SpocoError(
                f"The sparse-labels layer ({out.dtype}) cannot hold more ids; convert it to uint32."
            )
        target = out[box]
        target[mask & (target == 0)] = next_id
        next_id += 1
        promoted += 1
    return out, promoted, skipped
