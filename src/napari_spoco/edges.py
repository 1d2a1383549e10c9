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
model in three on BBBC039, mAP 0.69 instead of 0.79; docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np

#: The largest growth considered, in pixels at the network's scale.
MAX_EXPAND = 3
#: Painted objects checked (a random sample of them when there are more): enough for a stable
#: mean, few enough to take seconds in 3D.
MAX_OBJECTS = 48


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


def edge_expand(model, data: list, foreground_threshold: float = 0.5, seed: int = 0) -> tuple[int, list[float]]:
    """The growth (pixels at the network's scale) that best matches the predicted objects to the
    painted objects of ``data`` (``TrainingImage`` list, at the network's scale), and the mean
    IoU for each growth 0..``MAX_EXPAND``. The predicted object of a painted object is the
    instance overlapping it most, as ``segment`` clusters a crop with the network's context
    around it (the model's own clustering settings, no growth)."""
    count, windows = calibration_windows(model, data, seed)
    if not count:
        return 0, []
    total = np.zeros(MAX_EXPAND + 1)
    for d, window, members in windows:
        labels = _instances(model, d, window, foreground_threshold)
        if labels is None:
            return 0, []
        # each object's own crop of the window: the instance is cut where its crop ends
        total += score_members(labels.__getitem__, d, window, members)
    return best_growth(total, count)


def calibration_windows(model, data: list, seed: int = 0) -> tuple[int, list[tuple]]:
    """The painted objects the calibration looks at (``MAX_OBJECTS`` at most, a seeded sample):
    their number, and ``(training image, window to embed, [(id, its crop with the network's
    context), ...])`` triples."""
    objects = [(k, i, box) for k, d in enumerate(data) for i, box in enumerate(d.boxes, start=1) if box is not None]
    rng = np.random.default_rng(seed)
    if len(objects) > MAX_OBJECTS:
        objects = [objects[j] for j in sorted(rng.choice(len(objects), MAX_OBJECTS, replace=False))]
    context = int(model.config.receptive_radius) + MAX_EXPAND + 1
    by_image: dict[int, list] = {}
    for k, i, box in objects:
        shape = data[k].objects.shape
        region = tuple(slice(max(0, s.start - context), min(n, s.stop + context)) for s, n in zip(box, shape))
        by_image.setdefault(k, []).append((i, region))
    windows = [(data[k], window, members) for k, group in by_image.items()
               for window, members in _windows(group, data[k].objects.shape)]
    return len(objects), windows


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
        total += expand_scores(piece, painted)
    return total


def best_growth(total: np.ndarray, count: int) -> tuple[int, list[float]]:
    """The smallest growth within 0.005 of the best mean IoU (no growth unless it clearly
    helps), and the mean IoUs."""
    scores = total / count
    best = int(np.flatnonzero(scores >= scores.max() - 0.005)[0])
    return best, [round(float(s), 4) for s in scores]


def _windows(group: list, shape: tuple[int, ...]) -> list[tuple[tuple[slice, ...], list]]:
    """The crops to embed for one image's objects (``(id, region)`` pairs): one window around
    all of them when it holds no more pixels than their regions together (one network pass
    instead of many: a fifth to a third of the time on the shared sets, docs/method.md), else
    each region alone."""
    window = tuple(slice(min(r[a].start for _, r in group), max(r[a].stop for _, r in group)) for a in range(len(shape)))
    area = int(np.prod([w.stop - w.start for w in window]))
    if len(group) > 1 and area <= sum(int(np.prod([s.stop - s.start for s in r])) for _, r in group):
        return [(window, group)]
    return [(region, [(i, region)]) for i, region in group]


def window_embedding(model, d, window: tuple[slice, ...]):
    """The model's outputs in ``window`` of a training image, with the reflected margin only where
    the window meets the image's own edge (elsewhere it holds real context)."""
    from .inference import PreparedImage, embed

    channels = d.image.shape[0]
    image = d.image[(slice(None),) + window] if channels > 1 else d.image[0][window]
    value_range = tuple((0.0, 1.0) for _ in range(channels)) if channels > 1 else (0.0, 1.0)
    edges = tuple((w.start == 0, w.stop == n) for w, n in zip(window, d.objects.shape))
    return embed(model, PreparedImage(image, value_range, channels), device="cpu", edges=edges)


def _instances(model, d, window: tuple[slice, ...], foreground_threshold: float) -> np.ndarray | None:
    """The instances ``segment`` would return in ``window`` of a training image, before any
    growth: clustered with the model's own settings; None without a foreground head."""
    from dataclasses import replace

    from .clustering import ClusterConfig, cluster_embeddings
    from .segmentation import auto_max_size, model_cluster_config

    emb = window_embedding(model, d, window)
    if emb.foreground is None:
        return None
    shape = tuple(w.stop - w.start for w in window)
    config = model_cluster_config(model, ClusterConfig(calibrated_edge=False, foreground_threshold=foreground_threshold))
    config = replace(config, expand=0, max_size=auto_max_size(model, shape))
    return np.asarray(cluster_embeddings(emb.embeddings, emb.foreground, config, emb.teacher_embeddings))
