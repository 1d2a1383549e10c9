"""Where segmentation puts an object's edge, checked against the painted objects.

After minutes of training the predicted objects can fall short of the true edges: on
phase-contrast cells they held a median 0.84 of their true object's pixels, and thin cells lose
a large share of their IoU to a pixel missing on each side. On nuclei the edge sits right and
growing them costs accuracy. So the trained model is checked against what the user painted:
around painted objects, how far must the object that segmentation returns (the clustered
instance, before any growth) grow (0 to ``MAX_EXPAND`` pixels, at the network's scale) to
overlap the painted object best? ``train`` records the answer in ``history["edge_expand"]`` and
``segment`` grows objects by it (docs/method.md, "Calibrating the object edge on the painted
objects"). Measured on the instances, not on the connected thresholded foreground: that
stand-in asked for a pixel more on nuclei whose instances already reached their edge (one
model in three on BBBC039, mAP 0.69 instead of 0.79; docs/benchmarks.md). Measured in the
windows the layout is measured on (layout.segment_windows), bounded in size, instead of windows
of its own: those embedded the network's full context around each sampled object, and on a
packed 3D volume at scale 2 they joined into one window of the whole volume that exhausted 24 GB.
"""

from __future__ import annotations

import numpy as np

#: The largest growth considered, in pixels at the network's scale.
MAX_EXPAND = 3
#: Growth into the uncertain edge (:func:`grow_into_edge`): background pixels next to an object
#: that the foreground head gives at least this probability ...
GROW_PROBABILITY = 0.2
#: ... and no farther from it than this share of the painted objects' radius (whole pixels) join
#: it. Chosen on the saved models of six data sets, three seeds each (docs/benchmarks.md, "Objects
#: grown into their uncertain edge"): 0.35 gained less where the loss is, a reach of 0.2 lost on
#: EM and the packed 3D nuclei, the whole radius on phase contrast too.
GROW_REACH = 0.1
#: Painted objects checked (a seeded sample of those in the layout's windows when there are
#: more): every one on the shared sets, whose scores sit within 0.005 of each other for
#: neighbouring growths on some models, so that a sample of 48 chose by chance; the distance
#: transform runs on each object's own box, so this costs little even in 3D.
MAX_OBJECTS = 200
#: Fewer painted objects than this in the layout's windows (a few large objects painted in a
#: volume: one cells3d nucleus in its 1 M voxels) and the edge looks at crops of its own too ...
MIN_OBJECTS = 8
#: ... of at most this many pixels (voxels) in all: an image's crops once joined into one window
#: of a whole packed volume at scale 2 (160 x 320 x 320) and exhausted 24 GB.
MAX_CROP_PIXELS = {2: 1_500_000, 3: 3_000_000}


def expand_scores(piece: np.ndarray, painted: np.ndarray, max_expand: int = MAX_EXPAND) -> np.ndarray:
    """IoU of ``piece`` grown by 0..``max_expand`` pixels (Euclidean) with ``painted``."""
    from scipy import ndimage as ndi

    if not piece.any():
        return np.zeros(max_expand + 1)
    distance = ndi.distance_transform_edt(~piece)
    scores = []
    for e in range(max_expand + 1):
        grown = distance <= e
        union = np.logical_or(grown, painted).sum()
        scores.append(np.logical_and(grown, painted).sum() / max(union, 1))
    return np.asarray(scores)


def edge_expand(model, data: list, seed: int = 0, windows: list | None = None) -> tuple[int, list[float]]:
    """The growth (pixels at the network's scale) that best matches the predicted objects to the
    painted objects of ``data`` (``TrainingImage`` list, at the network's scale), and the mean
    IoU for each growth 0..``MAX_EXPAND``. The predicted object of a painted object is the
    instance overlapping it most in the windows that the layout is measured on
    (:func:`napari_spoco.layout.segment_windows`, computed here unless given), under the layout
    ``segment`` will use (the model's recorded one, else the foreground-fraction rule): no
    network pass of its own. Where those windows hold fewer than ``MIN_OBJECTS`` painted objects
    (a few large objects painted in a volume), crops of its own around further painted objects
    are segmented too, ``MAX_CROP_PIXELS`` in all."""
    from .layout import segment_windows

    if not model.config.foreground_head:  # the edge is where the foreground head puts it
        return 0, []
    windows = segment_windows(model, data, seed) if windows is None else windows
    objects = [(w, i) for w in windows for i in w.ids]
    rng = np.random.default_rng(seed)
    if len(objects) > MAX_OBJECTS:
        objects = [objects[j] for j in sorted(rng.choice(len(objects), MAX_OBJECTS, replace=False))]
    context = int(model.config.receptive_radius) + MAX_EXPAND + 1
    layout = model.history.get("layout")
    total = np.zeros(MAX_EXPAND + 1)
    for w in windows:
        members = [(i, _crop(w.image.boxes[i - 1], w.region, context)) for v, i in objects if v is w]
        if members:
            # each object's own crop of the window: the instance is cut where its crop ends
            total += score_members(w.segmented(layout).__getitem__, w.image, w.region, members)
    count = len(objects)
    if count < MIN_OBJECTS:
        seen = {(id(w.image), i) for w, i in objects}
        more, n = _own_crops(model, data, seed, context, seen)
        total, count = total + more, count + n
    return best_growth(total, count) if count else (0, [])


def _own_crops(model, data: list, seed: int, context: int, seen: set) -> tuple[np.ndarray, int]:
    """Summed scores and number of further painted objects (not in ``seen``), each segmented in
    a crop with the network's ``context`` around it (one window around an image's objects where
    that holds no more pixels than their crops), a seeded sample while ``MAX_CROP_PIXELS`` last."""
    budget = MAX_CROP_PIXELS.get(model.config.ndim, MAX_CROP_PIXELS[3])
    candidates = [(d, i, box) for d in data for i, box in enumerate(d.boxes, start=1)
                  if box is not None and (id(d), i) not in seen]
    order = np.random.default_rng(seed).permutation(len(candidates))
    by_image: dict[int, tuple] = {}
    for j in order[:MAX_OBJECTS]:
        d, i, box = candidates[j]
        shape = d.objects.shape
        crop = tuple(slice(max(0, b.start - context), min(n, b.stop + context)) for b, n in zip(box, shape))
        group = by_image.get(id(d), (d, []))[1] + [(i, crop)]
        others = sum(_pixels(_windows(g, e.objects.shape)) for key, (e, g) in by_image.items() if key != id(d))
        if by_image and others + _pixels(_windows(group, shape)) > budget:
            break
        by_image[id(d)] = (d, group)
    total, count = np.zeros(MAX_EXPAND + 1), 0
    for d, group in by_image.values():
        for window, members in _windows(group, d.objects.shape):
            labels = _instances(model, d, window)
            total += score_members(labels.__getitem__, d, window, members)
            count += len(members)
    return total, count


def _windows(group: list, shape: tuple[int, ...]) -> list[tuple[tuple[slice, ...], list]]:
    """The crops to segment for one image's objects (``(id, crop)`` pairs): one window around all
    of them where it holds no more pixels than their crops together, else each crop alone."""
    window = tuple(slice(min(r[a].start for _, r in group), max(r[a].stop for _, r in group)) for a in range(len(shape)))
    if len(group) > 1 and _pixels([(window, group)]) <= _pixels([(crop, None) for _, crop in group]):
        return [(window, group)]
    return [(crop, [(i, crop)]) for i, crop in group]


def _pixels(windows: list) -> int:
    return sum(int(np.prod([s.stop - s.start for s in w])) for w, _ in windows)


def _instances(model, d, window: tuple[slice, ...]) -> np.ndarray:
    """The instances ``segment`` would return in ``window`` of a training image, before any
    growth: embedded with the reflected margin only where the window meets the image's edge
    (elsewhere it holds real context) and clustered with the model's own settings."""
    from .clustering import cluster_embeddings
    from .layout import unexpanded_config

    emb = window_embedding(model, d, window)
    config = unexpanded_config(model, tuple(w.stop - w.start for w in window))
    return np.asarray(cluster_embeddings(emb.embeddings, emb.foreground, config, emb.teacher_embeddings))


def window_embedding(model, d, window: tuple[slice, ...]):
    """The model's outputs in ``window`` of a training image, with the reflected margin only where
    the window meets the image's own edge (elsewhere it holds real context)."""
    from .inference import embed
    from .layout import window_image

    edges = tuple((w.start == 0, w.stop == n) for w, n in zip(window, d.objects.shape))
    return embed(model, window_image(d, window), device="cpu", edges=edges)


def _crop(box: tuple[slice, ...], window: tuple[slice, ...], context: int) -> tuple[slice, ...]:
    """An object's box and ``context`` pixels around it, within ``window``."""
    return tuple(slice(max(w.start, b.start - context), min(w.stop, b.stop + context)) for b, w in zip(box, window))


def score_members(pieces, d, window: tuple[slice, ...], members: list) -> np.ndarray:
    """Summed :func:`expand_scores` of the painted objects ``members`` (``(id, crop)`` pairs) of
    training image ``d`` against the piece overlapping each most; ``pieces(inner)`` gives the
    labelled pieces of an object's crop, ``inner`` being the crop within ``window``."""
    total = np.zeros(MAX_EXPAND + 1)
    for i, region in members:
        inner = tuple(slice(r.start - w.start, r.stop - w.start) for r, w in zip(region, window))
        painted = d.objects[region] == i
        crop = pieces(inner)
        ids = crop[painted]
        ids = ids[ids > 0]
        piece = crop == np.bincount(ids).argmax() if ids.size else np.zeros_like(painted)
        total += expand_scores(*_around(piece, painted))
    return total


def _around(piece: np.ndarray, painted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``piece`` and ``painted`` cut to the box that holds both and ``MAX_EXPAND`` + 1 pixels
    around: the IoUs of every growth are the same, and the distance transform runs on the
    object's size instead of its crop's (a 3D crop with the network's context holds 100x more)."""
    where = np.argwhere(piece | painted)
    if not where.size:
        return piece, painted
    lo = np.maximum(where.min(0) - MAX_EXPAND - 1, 0)
    hi = np.minimum(where.max(0) + MAX_EXPAND + 2, piece.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    return piece[box], painted[box]


def best_growth(total: np.ndarray, count: int) -> tuple[int, list[float]]:
    """The smallest growth within 0.005 of the best mean IoU (no growth unless it clearly
    helps), and the mean IoUs."""
    scores = total / count
    best = int(np.flatnonzero(scores >= scores.max() - 0.005)[0])
    return best, [round(float(s), 4) for s in scores]


def grow_into_edge(labels: np.ndarray, foreground: np.ndarray, object_size: float,
                   probability: float = GROW_PROBABILITY, reach: float = GROW_REACH) -> np.ndarray:
    """``labels`` grown into the background next to them where ``foreground`` is at least
    ``probability``, one pixel (face neighbours) at a time, as many times as ``reach`` times the
    radius of an object of ``object_size`` pixels holds whole pixels; a pixel reached by two
    objects at once goes to one of them. Objects never join, and only pixels connected to an
    object through such pixels are taken.

    Why: the painted objects' edges are learnt exactly, and the edge calibration on them
    (:func:`edge_expand`) finds no growth to make; but the head's 0.5 falls inside the objects
    nobody painted (in 3D the unpainted pixels are its negatives): on cells3d the unpainted nuclei
    lost their blurred top and bottom slices, on BBBC039 a rim (docs/method.md, "Growing
    objects into their uncertain edge"). A few dilations: a watershed or a distance transform
    over the image took 0.4-1.0 s (up to 15 % of a cells3d segmentation)."""
    from scipy import ndimage as ndi

    from .shapes import object_radius

    steps = int(np.floor(object_radius(object_size, labels.ndim) * reach + 1e-9))
    background = labels == 0
    if steps < 1 or background.all() or not background.any():
        return labels
    candidates = background & (foreground >= probability)
    out = labels.copy()
    footprint = ndi.generate_binary_structure(labels.ndim, 1)
    for _ in range(steps):
        grown = ndi.grey_dilation(out, footprint=footprint)
        take = candidates & (out == 0) & (grown > 0)
        if not take.any():
            break
        out[take] = grown[take]
    return out


def growth_helps(model, windows: list, expand: int = 0) -> tuple[bool | None, list[float]]:
    """Does :func:`grow_into_edge` bring the painted objects in the layout's ``windows``
    (:func:`napari_spoco.layout.segment_windows`) closer to what was painted? (True / False, or
    None with fewer than ``MIN_OBJECTS`` of them: too few to decide on, and ``segment`` grows;
    the mean IoU without and with it.) Decided as the calibrated growth is: only a clear gain
    (0.005) turns it on. After a short fine-tuning the edges are still loose and the growth makes
    the painted objects too large (the demo sample after 300 steps: 0.810 -> 0.781, mAP of its
    held-out crop 0.673 -> 0.625); after five minutes on BBBC039, Usiigaci and EM it fits them
    better (+0.009 to +0.039; docs/benchmarks.md, "Objects grown into their uncertain edge").

    Scored on the instances as clustered, before the calibrated growth (``edge_expand``) that
    segment() applies first, on purpose: the question is whether the head's uncertain band
    belongs to the objects. Scored after it, the painted objects (learnt exactly) already fit
    and the check turned the growth off on Usiigaci, EM and the leaves, where the objects nobody
    painted still gained from it (Usiigaci AP50 0.475 -> 0.462 on the table's models; docs/method.md).
    ``expand``: pixels the instances are grown by (Euclidean) before both variants are scored,
    for that comparison (benchmarks/postprocess_steps.py --growth-check-after-expand); 0 in training."""
    from skimage.segmentation import expand_labels

    from .layout import recovered

    size = model.history.get("object_size_median")
    layout = model.history.get("layout")
    without, with_growth = [], []
    for w in windows:
        if w.foreground is None or not size:
            continue
        labels = w.segmented(layout)
        if expand > 0:
            labels = expand_labels(labels, distance=expand)
        painted = w.image.objects[w.region]
        without += recovered(labels, painted, w.ids).tolist()
        with_growth += recovered(grow_into_edge(labels, w.foreground, size), painted, w.ids).tolist()
    if not without:
        return None, []
    scores = [round(float(np.mean(without)), 4), round(float(np.mean(with_growth)), 4)]
    if len(without) < MIN_OBJECTS:
        return None, scores
    return scores[1] >= scores[0] + 0.005, scores
