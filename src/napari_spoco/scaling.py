"""Object scale: train and segment at a size where objects fit the network's reach.

The default network sees about 28 pixels around each pixel. Objects much wider than that
(phase-contrast cells of 50-100 px) cannot be told apart from the inside, and objects of a few
pixels leave the network little to draw an edge with, so the image is resized before it
reaches the network: by ``scale`` on every spatial axis (0.5 = half the pixels per axis, 2 =
twice). The scale is chosen at training time from the painted objects, stored in the
model file, and undone on the way out, so that labels always come back at the image's shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SpocoError

#: Objects are brought to about this many pixels across (BBBC039's nuclei, on which the
#: shipped model learned, are 28 px).
TARGET_DIAMETER = 30.0
#: Automatic scaling starts above this median diameter; objects up to 45 px across are
#: segmented at their own size.
AUTO_ABOVE = 45.0
#: ...and below this one: smaller objects are enlarged by AUTO_ENLARGE, a whole factor (every
#: pixel becomes 2 x 2: on 14-px nuclei 2 gained and 1.5 lost, docs/method.md, "Object scale").
#: The time of a Segment grows with the square of the factor.
AUTO_BELOW = 20.0
AUTO_ENLARGE = 2.0
MIN_SCALE, MAX_SCALE = 0.125, 4.0


def check_scale(scale: float) -> float:
    """A usable scale factor, or a clear error."""
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise SpocoError(f"Scale {scale!r} is not a number; give e.g. 0.5 (half size) or 'auto'.") from None
    if not math.isfinite(scale) or not MIN_SCALE <= scale <= MAX_SCALE:
        raise SpocoError(
            f"Scale {scale} is outside {MIN_SCALE}-{MAX_SCALE}; 0.5 halves the image, 1 keeps it, "
            "'auto' picks it from the painted objects."
        )
    return scale


def median_diameter(labels: Sequence[np.ndarray], background_label: int | None = None) -> float | None:
    """Median equivalent diameter (of a disk, or a ball in 3D) of the painted objects, in
    pixels; None when nothing is painted."""
    sizes: list[np.ndarray] = []
    ndim = 2
    for lab in labels:
        if lab is None:
            continue
        lab = np.asarray(lab)
        ndim = lab.ndim
        ids, counts = np.unique(lab[lab > 0], return_counts=True)
        if background_label is not None:
            counts = counts[ids != background_label]
        sizes.append(counts)
    if not sizes or sum(len(s) for s in sizes) == 0:
        return None
    area = float(np.median(np.concatenate(sizes)))
    if ndim == 3:
        return (6.0 * area / math.pi) ** (1.0 / 3.0)
    return 2.0 * math.sqrt(area / math.pi)


def auto_scale(labels: Sequence[np.ndarray], background_label: int | None = None) -> float:
    """Scale that brings the median painted object towards 30 px across, for 2D labels: objects
    wider than 45 px are shrunk to 30, objects narrower than 20 px doubled (which takes 4x the
    time to segment); 1.0 in between.

    Only in 2D: 3D volumes are often anisotropic, and enlarging them costs the cube of the factor,
    so their scale is left to the user (and their voxel size to :func:`anisotropy`). Measured on
    packed 13-voxel nuclei, x2 lost AP50 and mAP and took 15-40x as long to segment
    (docs/method.md, "Object scale").
    """
    arrays = [np.asarray(lab) for lab in labels if lab is not None]
    if not arrays or any(a.ndim != 2 for a in arrays):
        return 1.0
    d = median_diameter(arrays, background_label)
    if d is None or AUTO_BELOW <= d <= AUTO_ABOVE:
        return 1.0
    if d < AUTO_BELOW:
        return AUTO_ENLARGE
    return max(MIN_SCALE, round(TARGET_DIAMETER / d, 2))


def training_scale(
    labels: Sequence[np.ndarray], background_label: int | None = None, model_scale: float = 1.0,
    fine_tuned: bool = False,
) -> float:
    """The automatic choice when training: a model that already works at a scale other than 1,
    or that was trained on a user's images before at any scale (``fine_tuned``: its history's
    ``fine_tuned_on``, also set for a network trained from scratch), keeps it (training on must
    not silently change what its weights learned: a few large objects painted in a later round
    would otherwise shrink, or a few small ones enlarge, every image the model had learned at
    full size); otherwise :func:`auto_scale` of the painted objects."""
    return model_scale if model_scale != 1.0 or fine_tuned else auto_scale(labels, background_label)


def kept_scale_of(model) -> tuple[float, bool]:
    """``(model_scale, fine_tuned)`` of :func:`training_scale` for a starting model (None: a
    new network)."""
    if model is None:
        return 1.0, False
    return model.pixel_scale, bool(model.history.get("fine_tuned_on"))


def scale_note(
    scale: float, labels: Sequence[np.ndarray], background_label: int | None = None, model_scale: float = 1.0,
    fine_tuned: bool = False,
) -> str:
    """One sentence for the user on why training runs at ``scale`` ("" at 1.0 when nothing else
    was asked for), shared by the CLI and the GUI."""
    if scale == model_scale and (model_scale != 1.0 or fine_tuned):  # kept (training_scale)
        auto = auto_scale(labels, background_label)
        if scale == auto == 1.0:
            return ""
        other = f" (the painted objects alone would ask for {auto:g})" if auto != scale else ""
        return f"The model works at scale {scale:g}; keeping it{other}."
    if scale == 1.0:
        return ""
    d = median_diameter(labels, background_label)
    if d is None:
        return f"Training at scale {scale:g}."
    return f"Painted objects are about {d:.0f} px across: training at scale {scale:g}, where they are ~{d * scale:.0f} px."


def scaled_shape(shape: Sequence[int], scale: float | Sequence[float]) -> tuple[int, ...]:
    """Spatial shape at ``scale``: one factor for every axis, or one per axis (each axis at
    least 1 pixel)."""
    factors = [float(scale)] * len(shape) if np.isscalar(scale) else [float(f) for f in scale]
    return tuple(max(1, int(round(n * f))) for n, f in zip(shape, factors))


# ---------------------------------------------------------------- anisotropic voxels

#: The coarse axes of anisotropic data are interpolated up to the finest spacing, by at most
#: this factor (a z-step 6x the pixel size is brought to 4x the finest axis's sampling).
MAX_ANISOTROPY = 4.0


def check_voxel_size(voxel_size, ndim: int | None = None) -> tuple[float, ...] | None:
    """A usable voxel size (one positive spacing per spatial axis, any unit), or a clear error;
    None stays None (isotropic)."""
    if voxel_size is None:
        return None
    try:
        values = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError):
        raise SpocoError(f"Voxel size {voxel_size!r}: give one number per spatial axis, e.g. 2 0.5 0.5 (Z Y X).") from None
    if len(values) not in (2, 3) or not all(math.isfinite(v) and v > 0 for v in values):
        raise SpocoError(f"Voxel size {voxel_size!r}: give 2 (Y X) or 3 (Z Y X) positive spacings, e.g. 2 0.5 0.5.")
    if ndim is not None and len(values) != ndim:
        raise SpocoError(f"Voxel size {' x '.join(f'{v:g}' for v in values)} has {len(values)} values but the "
                         f"image has {ndim} spatial axes; give one spacing per axis.")
    return values


def anisotropy(voxel_size: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Per-axis factors that bring coarsely sampled axes to the finest spacing (1 on that axis,
    up to :data:`MAX_ANISOTROPY`): voxels become cubes, so that the network's isotropic
    kernels and the learned object shapes mean the same in every direction (docs/method.md,
    "Anisotropic volumes")."""
    if voxel_size is None:
        return (1.0,) * ndim
    v = check_voxel_size(voxel_size, ndim)
    finest = min(v)
    return tuple(round(min(MAX_ANISOTROPY, x / finest), 3) for x in v)


#: Painted 3D objects flatter than this along z (median over objects of their spread across, in
#: y and x, over their spread along z) are taken as sampled coarsely along z when nothing records
#: the voxel size. Nuclei are flat themselves: those of cells3d, at nearly cubic voxels
#: (0.29 x 0.26 x 0.26 um), are 1.57x flatter in voxels (quartiles 1.46-1.72 of 20), so a ratio up to
#: there says nothing about the sampling (docs/method.md, "Anisotropic volumes").
FLAT_ABOVE = 1.8
#: Fewer painted objects than this give no estimate.
MIN_OBJECTS_FOR_ESTIMATE = 3
#: Label ids above this are renumbered before their objects are listed (find_objects keeps one
#: entry per id up to the largest).
MAX_LISTED_ID = 2**20
#: Objects painted on fewer slices than this do not count (strokes on one slice, as napari paints
#: by default, say nothing about depth).
MIN_SLICES = 3


def painted_flatness(labels: Sequence[np.ndarray], background_label: int | None = None) -> tuple[float, int] | None:
    """(median over the painted 3D objects of their spread across / their spread along z, number
    of objects measured; NaN and 0 when none can be), or None for 2D labels or none at all.

    Objects that tell nothing about their shape are left out: painted on fewer than
    :data:`MIN_SLICES` slices (napari paints slice by slice), cut by the volume's edge (one cut
    by its first or last slice would look flat), or of fewer than 8 voxels. A spread is the
    standard deviation of an object's voxel centres along an axis, each voxel's own extent added
    (variance + 1/12)."""
    from scipy import ndimage as ndi

    ratios = []
    seen = False
    for lab in labels:
        if lab is None:
            continue
        lab = np.asarray(lab)
        if lab.ndim != 3:
            return None
        seen = True
        # only positive ids count (the training data's own validation checks the rest), renumbered
        # as found: ids may be as large as 2**31 and find_objects lists every id up to the largest
        positive = np.where(lab > 0, lab, 0)
        if positive.max(initial=0) > MAX_LISTED_ID:
            ids, compact = np.unique(positive, return_inverse=True)
            compact = compact.reshape(lab.shape) + 1
        else:  # the usual case: no sort of the whole volume
            compact = positive.astype(np.int64, copy=False) + 1
            ids = np.arange(int(compact.max(initial=1)))
        for k, box in enumerate(ndi.find_objects(compact)):
            if box is None or ids[k] == 0 or ids[k] == background_label:
                continue
            if box[0].stop - box[0].start < MIN_SLICES or any(
                    b.start == 0 or b.stop == n for b, n in zip(box, lab.shape)):
                continue
            coords = np.argwhere(compact[box] == k + 1).astype(np.float64)
            if len(coords) < 8:
                continue
            spread = np.sqrt(coords.var(0) + 1.0 / 12.0)
            ratios.append(0.5 * (spread[1] + spread[2]) / spread[0])
    if not seen:
        return None
    return (float(np.median(ratios)), len(ratios)) if ratios else (float("nan"), 0)


def _estimate(found: tuple[float, int] | None) -> tuple[float, ...] | None:
    if found is None or found[1] < MIN_OBJECTS_FOR_ESTIMATE or found[0] <= FLAT_ABOVE:
        return None
    return (round(min(found[0], MAX_ANISOTROPY), 2), 1.0, 1.0)


def estimate_voxel_size(labels: Sequence[np.ndarray], background_label: int | None = None) -> tuple[float, ...] | None:
    """The voxel size (Z, Y, X) = (r, 1, 1) that makes the painted 3D objects as deep as they
    are wide, r being their median flatness (:func:`painted_flatness`), when it is above
    :data:`FLAT_ABOVE` over at least :data:`MIN_OBJECTS_FOR_ESTIMATE` objects; None otherwise
    (cubic). For volumes whose files record no spacing: anisotropic stacks are the rule in 3D
    microscopy, and the network's isotropic kernels and the shapes it learned need cubic voxels
    (measured on packed nuclei sampled 2x coarser along z: docs/benchmarks.md)."""
    return _estimate(painted_flatness(labels, background_label))


def explain_voxel_estimate(labels: Sequence[np.ndarray],
                           background_label: int | None = None) -> tuple[tuple[float, ...] | None, str]:
    """:func:`estimate_voxel_size` and what it found, in words for the CLI and the napari panel
    ("" for 2D labels), from one pass over the labels."""
    found = painted_flatness(labels, background_label)
    if found is None:
        return None, ""
    flat, n = found
    if n < MIN_OBJECTS_FOR_ESTIMATE:
        return None, (f"too few painted objects to estimate it ({n} of the {MIN_OBJECTS_FOR_ESTIMATE} needed lie "
                      f"on {MIN_SLICES} or more slices and inside the volume)")
    if flat <= FLAT_ABOVE:
        return None, f"the painted objects are {flat:.2g}x flatter along z than across, as nuclei are themselves"
    z = min(flat, MAX_ANISOTROPY)
    capped = f", capped at {MAX_ANISOTROPY:g}" if flat > MAX_ANISOTROPY else ""
    return _estimate(found), (f"the painted objects are {flat:.3g}x flatter along z than across: z-step taken "
                              f"as {z:.3g}x the pixel{capped}")


def axis_factors(scale: float, voxel_size: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Resize factor per spatial axis before the network: the object scale times the
    anisotropy correction."""
    return tuple(round(scale * a, 4) for a in anisotropy(voxel_size, ndim))


def resize_image(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize the trailing ``len(shape)`` axes of a float image (leading axes are channels):
    area averaging to shrink (no aliasing), linear interpolation to enlarge."""
    shape = tuple(int(s) for s in shape)
    nsp = len(shape)
    if tuple(image.shape[-nsp:]) == shape:
        return np.asarray(image, np.float32)
    lead = image.shape[:-nsp]
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).reshape((1, -1) + tuple(image.shape[-nsp:]))
    shrink = all(s <= n for s, n in zip(shape, image.shape[-nsp:]))
    if shrink:
        y = F.interpolate(x, size=shape, mode="area")
    else:
        y = F.interpolate(x, size=shape, mode="bilinear" if nsp == 2 else "trilinear", align_corners=False)
    return y.reshape(lead + shape).numpy()


#: Smoothing (in the labels' own pixels) of each object's mask before :func:`enlarge_labels`
#: interpolates it: a staircase one pixel high becomes a slope (docs/method.md, "Object scale").
ENLARGE_SIGMA = 0.75


def _axis_weights(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ``m`` output pixels along an axis of ``n`` input pixels: each one's two nearest input
    pixels and the second one's linear weight (half-pixel centres, edges extended, as
    ``F.interpolate`` without aligned corners)."""
    x = np.clip((np.arange(m) + 0.5) * n / m - 0.5, 0.0, n - 1.0)
    i0 = np.floor(x).astype(np.int64)
    return i0, np.minimum(i0 + 1, n - 1), (x - i0).astype(np.float32)


def _interpolate(values: np.ndarray, axes: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """``values`` linearly interpolated at the points ``axes`` give (per axis, of
    :func:`_axis_weights`), by gathering the 2**ndim corners. Not by a matrix product: BLAS's
    threads went on spinning into the network's next pass (on 2 cores a Segment of a 384²
    image took 0.05 s longer with one here)."""
    shape = tuple(len(a[0]) for a in axes)
    out = np.zeros(shape, np.float32)
    rows = max(1, 2**20 // max(1, int(np.prod(shape[1:]))))  # bounded temporaries
    for r0 in range(0, shape[0], rows):
        r = slice(r0, min(shape[0], r0 + rows))
        for corner in np.ndindex(*(2,) * len(shape)):
            index, weight = [], None
            for axis, (c, (i0, i1, w)) in enumerate(zip(corner, axes)):
                idx, wa = (i1, w) if c else (i0, 1.0 - w)
                idx, wa = (idx[r], wa[r]) if axis == 0 else (idx, wa)
                view = [1] * len(shape)
                view[axis] = -1
                index.append(idx.reshape(view))
                weight = wa.reshape(view) if weight is None else weight * wa.reshape(view)
            out[r] += values[tuple(index)] * weight
    return out


def enlarge_labels(labels: np.ndarray, shape: Sequence[int], sigma: float = ENLARGE_SIGMA) -> np.ndarray:
    """Resize a label image to ``shape`` with smooth object edges: each object's mask (and the
    background's) is smoothed by a Gaussian of ``sigma`` input pixels and linearly interpolated,
    and every output pixel takes the id that scores highest there.

    Segmentation at a reduced scale (objects wider than 45 px) hands its labels back this way
    rather than by nearest neighbour, whose edges are staircases one input pixel high (about two
    output pixels at the scales used), which costs large objects' IoU at the strict thresholds
    (docs/method.md, "Object scale"). Ids are kept, never blended; an id can vanish only where
    it held too few input pixels to win any output pixel. Work and memory: one pass over the
    output for the background, and each object's box."""
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    shape = tuple(int(s) for s in shape)
    if tuple(labels.shape) == shape:
        return labels
    if labels.ndim != len(shape):
        raise ValueError(f"enlarge_labels: {labels.ndim}D labels, {len(shape)}D shape")

    def smooth(mask: np.ndarray) -> np.ndarray:
        mask = mask.astype(np.float32)
        return ndi.gaussian_filter(mask, sigma, mode="nearest") if sigma > 0 else mask

    axes = [_axis_weights(n, m) for n, m in zip(labels.shape, shape)]
    best = _interpolate(smooth(labels == 0), axes)  # the background's score
    out = np.zeros(shape, dtype=labels.dtype)
    pad = int(math.ceil(3 * sigma)) + 1
    for i, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        crop = tuple(slice(max(0, b.start - pad), min(n, b.stop + pad)) for b, n in zip(box, labels.shape))
        # the output pixels whose two nearest input pixels lie in the crop (i0 and i1 ascend);
        # beyond them the object's smoothed mask is about 0 and cannot win
        region, local = [], []
        for c, (i0, i1, w) in zip(crop, axes):
            j0, j1 = int(np.searchsorted(i0, c.start)), int(np.searchsorted(i1, c.stop))
            region.append(slice(j0, j1))
            local.append((i0[j0:j1] - c.start, i1[j0:j1] - c.start, w[j0:j1]))
        if any(sl.stop <= sl.start for sl in region):
            continue
        region = tuple(region)
        score = _interpolate(smooth(labels[crop] == i), local)
        here = best[region]
        wins = score > here
        here[wins] = score[wins]
        out[region][wins] = i
    return out


def resize_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image (ids are kept, never blended)."""
    shape = tuple(int(s) for s in shape)
    if tuple(labels.shape) == shape:
        return labels
    index = np.ix_(*[
        np.minimum(((np.arange(m) + 0.5) * n / m).astype(np.int64), n - 1) for n, m in zip(labels.shape, shape)
    ])
    return labels[index]
