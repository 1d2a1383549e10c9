"""Object shape from the painted objects, and splitting pieces whose shape says they are several.

After minutes of CPU training the embeddings of two touching, unpainted objects are often
alike, so mean-shift and the neighbour merge join them (docs/method.md, "Splitting merged
objects by shape"). The painted objects say how convex this user's objects are; a piece far less
convex than nearly all of them is split along the necks of its distance transform, as the
classical and pixel-classifier pipelines split touching nuclei, or, where that finds one peak
and the painted objects are convex, between the two notches where two outlines meet. Objects
that are not convex to begin with set a low reference. In a tissue whose objects tile the image (EM profiles) two
cells meet along a straight membrane, not at a neck, and a neck is no evidence of a merge: there
the split is not applied (``applies``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

#: The reference convexity is this percentile of the painted objects' solidity.
REFERENCE_PERCENTILE = 10


def solidity(mask: np.ndarray) -> float:
    """Pixel (voxel) count of ``mask`` over the volume of the convex hull of its pixels' corners
    (1.0 for a box; about 0.85 for two touching equal discs)."""
    from scipy import ndimage as ndi
    from scipy.spatial import ConvexHull, QhullError

    mask = np.asarray(mask, dtype=bool)
    n = int(mask.sum())
    if n == 0:
        return 1.0
    if mask.ndim == 2:
        # The hull of a 2D mask's pixel corners is the hull of each row's outer corners: four
        # points a row and one hull, where the erosion and two hulls below took 3x the time
        # (docs/benchmarks.md, "Clustering tiles of 2048²").
        rows = np.flatnonzero(mask.any(1))
        first = mask[rows].argmax(1)
        last = mask.shape[1] - 1 - mask[rows, ::-1].argmax(1)
        r = rows.astype(np.float64)
        pts = np.concatenate([np.stack([r + dr, c + dc], 1) for dr in (-0.5, 0.5)
                              for c, dc in ((first, -0.5), (last, 0.5))])
        try:
            return float(min(1.0, n / max(ConvexHull(pts).volume, 1e-9)))
        except (QhullError, ValueError):
            pass  # the general way below
    edge = mask & ~ndi.binary_erosion(mask)
    pts = np.argwhere(edge).astype(np.float64)
    corners = np.array(np.meshgrid(*[(-0.5, 0.5)] * mask.ndim, indexing="ij")).reshape(mask.ndim, -1).T
    try:
        # The hull of the pixels' corners is the hull of the corners of the pixels on the hull of
        # their centres: the corners of those few only (the same volume; the masks of a packed
        # 3D volume 2x faster, docs/benchmarks.md "A hub of specks in the neighbour merge").
        pts = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):
        pass  # flat or tiny: every pixel's corners
    pts = (pts[:, None, :] + corners[None]).reshape(-1, mask.ndim)
    try:
        hull = ConvexHull(pts)
    except (QhullError, ValueError):
        return 1.0
    return float(min(1.0, n / max(hull.volume, 1e-9)))


def solidity_floor(mask: np.ndarray) -> float:
    """A lower bound of :func:`solidity` without a convex hull: the pixel count over the area of
    the octagon that bounds the pixels' corners between their extremes along the axes and the
    two diagonals (2D; the box alone in 3D). Round pieces bound at 0.85-0.9 and are rarely less
    convex than a reference, so most pieces of a segmentation skip the two hulls (the shape
    split of a 2048² image spent a third of its time on them, docs/benchmarks.md)."""
    mask = np.asarray(mask, dtype=bool)
    n = int(mask.sum())
    if n == 0:
        return 1.0
    coords = np.nonzero(mask)
    extent = [float(c.max() - c.min() + 1) for c in coords]  # the box of the pixels' corners
    area = float(np.prod(extent))
    if mask.ndim == 2:
        r, c = coords
        u, v = r + c, r - c
        r0, c0 = float(r.min()) - 0.5, float(c.min()) - 0.5
        r1, c1 = r0 + extent[0], c0 + extent[1]
        # each diagonal extreme, widened by the pixel's corner, cuts a right isosceles triangle
        # of legs a off one corner of the box
        a1 = max(0.0, (float(u.min()) - 1.0) - (r0 + c0))  # corner (r0, c0), x + y >= min
        a2 = max(0.0, (r1 + c1) - (float(u.max()) + 1.0))  # corner (r1, c1), x + y <= max
        a3 = max(0.0, (float(v.min()) - 1.0) - (r0 - c1))  # corner (r0, c1), x - y >= min
        a4 = max(0.0, (r1 - c0) - (float(v.max()) + 1.0))  # corner (r1, c0), x - y <= max
        h, w = extent
        if a1 + a3 <= w and a2 + a4 <= w and a1 + a4 <= h and a2 + a3 <= h:
            area -= 0.5 * (a1 * a1 + a2 * a2 + a3 * a3 + a4 * a4)
    return min(1.0, n / max(area, 1e-9))


def painted_solidities(objects: list[np.ndarray]) -> list[float]:
    """The solidity of every painted object of label images ``objects`` (0 unpainted)."""
    from scipy import ndimage as ndi

    values = []
    for lab in objects:
        lab = np.asarray(lab)
        for i, box in enumerate(ndi.find_objects(lab), start=1):
            if box is not None:
                values.append(solidity(lab[box] == i))
    return values


def painted_solidity(objects: list[np.ndarray], percentile: float = REFERENCE_PERCENTILE,
                     values: list[float] | None = None) -> float | None:
    """Reference convexity of painted label images (0 unpainted): the ``percentile``-th
    percentile of their objects' solidity (``REFERENCE_PERCENTILE`` for the shape split, 50 for
    the typical object that the convex merge asks of a union), None without objects. ``values``
    (:func:`painted_solidities` of ``objects``) saves measuring them again for a second percentile."""
    values = painted_solidities(objects) if values is None else values
    return float(np.percentile(values, percentile)) if values else None


def object_radius(size: float, ndim: int) -> float:
    """Radius of a disc (2D) or ball (3D) of ``size`` pixels."""
    return float((size / np.pi) ** 0.5 if ndim == 2 else (3.0 * size / (4.0 * np.pi)) ** (1.0 / 3.0))


#: The split assumes objects standing on background: above this foreground fraction of the
#: image (measured: ISBI EM 0.63-0.65 predicted, 0.75 true; nuclei and phase-contrast cells
#: 0.09-0.28) the objects tile the image and the split is left out.
MAX_FOREGROUND_FRACTION = 0.5


def applies(reference: float | None, object_size: float | None) -> bool:
    """Whether :func:`split_by_shape` can be used: the model knows its painted objects' convexity
    and size. Whether the objects stand on background (where a neck is evidence of a merge) is
    the clustering's ``layout``."""
    return bool(reference and object_size)


#: A piece is tried by the shape split when it is less convex than the painted reference or than
#: this, whichever is higher; its seeds, a painted radius apart, decide whether it is cut. Painted
#: leaves partly covered by younger ones are as irregular as phase-contrast cells, so a
#: reference of 0.52-0.59 left two overlapping leaves untried (older rosettes 0.762 -> 0.857 with it,
#: phase contrast 0.465 -> 0.476, nuclei and EM unchanged, packed 3D +0.004; docs/method.md).
TRY_BELOW = 0.9


#: With a foreground probability map, the cut's seeds are the peaks of the distance transform
#: of the piece's confident core (probability at least this): where blur or a generous head
#: fills the gap between touching objects, the core still shows the necks.
CORE_PROBABILITY = 0.8
#: The seeds of a cut are the highest points within this many painted radii of themselves, and
#: at least that far apart, in Euclidean distance (docs/method.md: a cube of that half-width,
#: scikit-image's default, kept one seed for clusters of small packed nuclei).
PEAK_SPACING = 1.0
#: Where the painted objects allow it (:func:`single_peaked`), a local maximum that a higher
#: point within the spacing outranks is still a seed when it is a peak of its own: nothing
#: higher is reachable from it without descending this many painted radii (its dynamic), and
#: no seed lies within the spacing. Packed nuclei whose centres lie 1.3-2 radii apart overlap so
#: far that the ridge from the lower centre rises toward the higher one within a radius
#: (docs/method.md, "Splitting merged objects by shape"; 0 against 0.01 and 0.03 measured).
PEAK_DYNAMIC = 0.0


@lru_cache(maxsize=8)
def _ball_offsets(radius: float, ndim: int) -> np.ndarray:
    """Integer offsets (n, ndim) within ``radius`` of the origin (cached: every piece of one
    segmentation uses the same ball; read only)."""
    k = int(np.floor(radius))
    grid = np.indices((2 * k + 1,) * ndim).reshape(ndim, -1).T - k
    ball = grid[(grid**2).sum(1) <= radius * radius]
    ball.flags.writeable = False
    return ball


def _is_peak(img: np.ndarray, point: np.ndarray, depth: float) -> bool:
    """Whether nothing higher than ``img[point]`` is reachable from ``point`` without going
    more than ``depth`` below it (its dynamic is at least ``depth``; a plateau's points count as
    one peak)."""
    from scipy import ndimage as ndi

    level = img[tuple(point)]
    regions, _ = ndi.label(img >= level - depth)
    return bool(img[regions == regions[tuple(point)]].max() <= level)


def spaced_peaks(values: np.ndarray, inside: np.ndarray, spacing: float,
                 min_dynamic: float | None = None) -> np.ndarray:
    """Points of ``inside`` where ``values`` is positive and highest within ``spacing``
    (Euclidean) of the point, no two closer than ``spacing`` (the higher kept): coordinates (n, ndim),
    highest first. With ``min_dynamic`` (in ``values``' units), a local maximum outranked within
    the spacing is kept too where it is a peak of at least that depth (:func:`_is_peak`) and
    no kept seed lies within the spacing.

    As ``peak_local_max`` with a ball footprint, which filters every pixel with the whole ball
    (a minute for one merged pair of large 3D nuclei); here only the local maxima are checked."""
    from scipy import ndimage as ndi

    img = np.where(inside, values, -np.inf)
    local = inside & (img > 0) & (img == ndi.maximum_filter(img, size=3, mode="nearest"))
    cand = np.argwhere(local)
    if len(cand) == 0:
        return cand
    order = np.argsort(-img[tuple(cand.T)], kind="stable")
    cand = cand[order]
    offsets = _ball_offsets(spacing, img.ndim)
    shape = np.array(img.shape)
    kept = np.zeros((0, img.ndim), np.int64)
    regional = None  # at depth 0 a peak is a regional maximum: all of them in one pass
    for p in cand:
        if len(kept) and ((kept - p) ** 2).sum(1).min() <= spacing * spacing:
            continue  # a higher seed lies within the spacing
        q = p + offsets
        q = q[((q >= 0) & (q < shape)).all(1)]
        if img[tuple(q.T)].max() <= img[tuple(p)]:
            kept = np.vstack([kept, p])
        elif min_dynamic is not None and min_dynamic <= 0:
            if regional is None:
                from skimage.morphology import local_maxima

                floor = np.where(inside, values, values[inside].min() - 1.0)
                regional = local_maxima(floor, connectivity=1, allow_borders=True) & inside
            if regional[tuple(p)]:
                kept = np.vstack([kept, p])
        elif min_dynamic is not None and _is_peak(img, p, min_dynamic):
            kept = np.vstack([kept, p])
    return kept


def _seed_scales(object_size: float, ndim: int) -> tuple[float, float, float, int]:
    """(painted radius, smoothing sigma, seed spacing, padding) of the shape split's seeds for
    objects of ``object_size`` pixels: :func:`split_by_shape` and :func:`single_peaked` must
    look at pieces alike."""
    radius = object_radius(object_size, ndim)
    sigma = max(1.0, radius / 4.0)
    return radius, sigma, max(1.0, PEAK_SPACING * radius), int(np.ceil(3 * sigma)) + 1


#: The painted objects allow seeds at outranked peaks where at most this share of those inside
#: their images has two peaks of its own. Measured on each set's paintings (seeds 0-2, 10 %):
#: BBBC039 nuclei 1 of 78-86, the packed 3D nuclei none, phase-contrast cells 5-8 of 33-39, EM
#: profiles 15-16 of 94-98, leaves 19-28 of 60. Asking for none at all made nuclei hang on one
#: odd nucleus per painting (docs/method.md).
MAX_TWO_PEAKED = 0.05


def single_peaked(objects: list[np.ndarray], object_size: float | None) -> bool | None:
    """Whether the painted objects of label images ``objects`` (0 unpainted, at the network's
    scale) that lie inside their images have one seed each, all but at most
    :data:`MAX_TWO_PEAKED` of them, by the rule with outranked peaks (:data:`PEAK_DYNAMIC`) in
    their own smoothed distance transform, as :func:`split_by_shape` takes them; None without
    such objects. Where they do, a second peak in a piece is evidence of a second object;
    irregular cells (phase contrast) have two peaks of their own, and splitting there from
    outranked peaks cut single cells (docs/method.md)."""
    from scipy import ndimage as ndi

    if not object_size:
        return None
    seen = two = 0
    for lab in objects:
        lab = np.asarray(lab)
        radius, sigma, spacing, pad = _seed_scales(object_size, lab.ndim)
        for i, box in enumerate(ndi.find_objects(lab), start=1):
            if box is None or any(b.start == 0 or b.stop == n for b, n in zip(box, lab.shape)):
                continue  # cut by the image's edge: its shape is not its own
            piece = np.pad(lab[box] == i, pad)
            seen += 1
            dist = ndi.gaussian_filter(ndi.distance_transform_edt(piece), sigma)
            two += len(spaced_peaks(dist, piece, spacing, PEAK_DYNAMIC * radius)) > 1
    return two <= MAX_TWO_PEAKED * seen if seen else None


def split_by_shape(labels: np.ndarray, reference: float, object_size: float, min_size: int,
                   foreground: np.ndarray | None = None, concave: bool = False,
                   outranked: bool = False) -> np.ndarray:
    """Split each piece less convex than ``reference`` (or :data:`TRY_BELOW`, whichever is
    higher) by a watershed of its own (smoothed)
    distance transform, from peaks at least one painted radius apart (``object_size``: the median
    painted object, in pixels; :func:`spaced_peaks`). With ``foreground`` (probability, the labels' shape) the seeds
    are the peaks of the confident core's distance transform (``CORE_PROBABILITY``) and the
    watershed floods the distance transform weighted by the probability, so cuts follow the dim
    contact between objects (docs/method.md). With ``outranked`` (the painted objects are
    :func:`single_peaked`) a peak that a higher point within the spacing outranks is a seed as
    well where it is a peak of its own (:data:`PEAK_DYNAMIC`). A piece with one peak, or whose cut would not give
    two parts of at least ``min_size``, stays whole; smaller parts of a cut are left for the
    caller to fold into a neighbour. With ``concave`` (2D, painted objects at least
    ``CONCAVE_MIN_REFERENCE`` convex) a piece the watershed leaves whole is cut between its two
    deepest notches where both parts come out as convex as ``reference`` (:func:`cut_at_concavities`):
    where the head fills the gap between two touching objects, the distance transform can rise
    from the narrower into the wider with a single peak, but the notches where
    their outlines meet remain. Returns new labels (ids not sequential)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    labels = np.asarray(labels)
    radius, sigma, spacing, pad = _seed_scales(object_size, labels.ndim)
    out = labels.astype(np.int64, copy=True)
    next_id = int(out.max()) + 1
    concave = concave and labels.ndim == 2 and reference >= CONCAVE_MIN_REFERENCE
    min_depth = CONCAVITY_DEPTH * radius
    min_part = max(float(min_size), 0.25 * float(object_size))
    tried = max(reference, TRY_BELOW)
    for i, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        piece = labels[box] == i
        if piece.sum() < 2 * max(min_size, 1) or solidity_floor(piece) >= tried or solidity(piece) >= tried:
            continue
        whole = piece
        prob = None if foreground is None else np.pad(np.where(piece, foreground[box], 0.0), pad)
        piece = np.pad(piece, pad)
        dist = ndi.distance_transform_edt(piece)
        if prob is None:
            dist = seeds = ndi.gaussian_filter(dist, sigma)
        else:
            seeds = ndi.gaussian_filter(ndi.distance_transform_edt(prob >= CORE_PROBABILITY), sigma)
            dist = ndi.gaussian_filter(dist * prob, sigma)
        peaks = spaced_peaks(seeds, piece, spacing, PEAK_DYNAMIC * radius if outranked else None)
        sizes = None
        if len(peaks) >= 2:
            markers = np.zeros(piece.shape, np.int32)
            markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
            parts = watershed(-dist, markers, mask=piece)
            inner = tuple(slice(pad, -pad) for _ in range(labels.ndim))
            parts, piece = parts[inner], piece[inner]
            sizes = np.bincount(parts[piece], minlength=len(peaks) + 1)
        if sizes is None or (sizes[1:] >= min_size).sum() < 2:
            if concave and whole.sum() >= 2 * min_part:
                two = cut_at_concavities(np.pad(whole, 1), reference, min_depth, min_part)
                if two is not None:
                    out[box][two[1:-1, 1:-1] == 2] = next_id
                    next_id += 1
            continue
        view = out[box]
        ids = np.where(np.arange(len(peaks) + 1) == 1, i, next_id + np.arange(len(peaks) + 1) - 2)
        view[piece] = ids[parts[piece]]
        next_id += len(peaks) - 1
    return out


#: The cut between two concavities is made only where the painted objects are this convex (the
#: 10th percentile of their solidity): nuclei 0.90-0.94, where a concavity is evidence of a
#: contact; phase-contrast cells (0.52-0.65), EM profiles (0.55-0.76) and leaves (0.52-0.59)
#: have concavities of their own (docs/method.md, "Splitting merged objects by shape").
CONCAVE_MIN_REFERENCE = 0.8
#: The shallower of the two concavities must be at least this many painted radii deep: a
#: contact between two convex objects leaves a notch on both sides, the staircase of a pixelated
#: outline and the dent of a bean-shaped nucleus do not (measured: docs/benchmarks.md).
CONCAVITY_DEPTH = 0.35


def _concavities(piece: np.ndarray) -> list[tuple[float, tuple[int, int]]]:
    """(depth, deepest pixel) of each open concavity of a 2D ``piece`` (True inside; padded by at
    least one pixel of False), deepest first. A concavity is a connected part of the convex hull
    outside the piece that reaches the hull's outline; enclosed holes are not concavities."""
    from scipy import ndimage as ndi
    from skimage.morphology import convex_hull_image

    hull = convex_hull_image(piece)
    regions, n = ndi.label(hull & ~piece)
    if n == 0:
        return []
    depth = ndi.distance_transform_edt(hull)  # distance to the hull's outside
    open_ = np.zeros(n + 1, bool)
    open_[np.unique(regions[ndi.binary_dilation(~hull) & (regions > 0)])] = True
    out = []
    for r, box in enumerate(ndi.find_objects(regions), start=1):
        if box is None or not open_[r]:
            continue
        d = np.where(regions[box] == r, depth[box], 0.0)
        k = np.unravel_index(int(np.argmax(d)), d.shape)
        out.append((float(d[k]), (int(k[0] + box[0].start), int(k[1] + box[1].start))))
    return sorted(out, key=lambda t: -t[0])


def cut_at_concavities(piece: np.ndarray, reference: float, min_depth: float, min_part: float) -> np.ndarray | None:
    """A 2D ``piece`` (padded by one pixel of False) cut along the straight line between its two
    deepest concavities: an int array (0 outside, 1 and 2 the parts, every pixel of the piece
    in the part nearer to it), or None where the shallower concavity is under ``min_depth``
    pixels deep, the smaller part has fewer than ``min_part`` pixels, or a part is less convex
    than ``reference``."""
    from scipy import ndimage as ndi
    from skimage.draw import line

    notches = _concavities(piece)
    if len(notches) < 2 or notches[1][0] < min_depth:
        return None
    (_, p), (_, q) = notches[0], notches[1]
    barrier = np.zeros(piece.shape, bool)
    barrier[line(p[0], p[1], q[0], q[1])] = True
    parts, n = ndi.label(piece & ~barrier)  # face connectivity: a one-pixel line separates
    if n < 2:
        return None
    sizes = np.bincount(parts.ravel())
    sizes[0] = 0
    first, second = np.argsort(sizes)[::-1][:2]
    if sizes[second] < min_part:
        return None
    seeds = np.where(parts == first, 1, np.where(parts == second, 2, 0))
    nearest = ndi.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True)
    out = np.where(piece, seeds[tuple(nearest)], 0)
    if solidity(out == 1) < reference or solidity(out == 2) < reference:
        return None
    return out

