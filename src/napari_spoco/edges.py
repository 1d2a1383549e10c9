"""Where the foreground head puts an object's edge, checked against the painted objects.

After minutes of training the thresholded foreground can fall short of the objects' true edges:
on phase-contrast cells the predicted pieces held a median 0.84 of their true object's pixels,
and thin cells lose a large share of their IoU to a pixel missing on each side. On nuclei the
edge sits right and growing them costs accuracy. So the trained model is checked against what
the user painted: around painted objects, how far must the predicted piece grow (0 to
``MAX_EXPAND`` pixels, at the network's scale) to overlap the painted object best? ``train``
records the answer in ``history["edge_expand"]`` and ``segment`` grows objects by it
(docs/method.md, "Calibrating the object edge on the painted objects").
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
    """The growth (pixels at the network's scale) that best matches the predicted pieces to the
    painted objects of ``data`` (``TrainingImage`` list, at the network's scale), and the mean
    IoU for each growth 0..``MAX_EXPAND``. The piece of a painted object is the connected
    foreground overlapping it most, seen in a crop with the network's context around it."""
    from scipy import ndimage as ndi

    objects = [(k, i, box) for k, d in enumerate(data) for i, box in enumerate(d.boxes, start=1) if box is not None]
    if not objects:
        return 0, []
    rng = np.random.default_rng(seed)
    if len(objects) > MAX_OBJECTS:
        objects = [objects[j] for j in sorted(rng.choice(len(objects), MAX_OBJECTS, replace=False))]
    context = int(model.config.receptive_radius) + MAX_EXPAND + 1
    total = np.zeros(MAX_EXPAND + 1)
    by_image: dict[int, list] = {}
    for k, i, box in objects:
        shape = data[k].objects.shape
        region = tuple(slice(max(0, s.start - context), min(n, s.stop + context)) for s, n in zip(box, shape))
        by_image.setdefault(k, []).append((i, region))
    for k, group in by_image.items():
        d = data[k]
        for window, members in _windows(group, d.objects.shape):
            fg = _foreground(model, d, window)
            if fg is None:
                return 0, []
            for i, region in members:
                # the object's own crop of the window: the piece is cut where its crop ends
                inner = tuple(slice(r.start - w.start, r.stop - w.start) for r, w in zip(region, window))
                painted = d.objects[region] == i
                pieces, _ = ndi.label(fg[inner] >= foreground_threshold)
                ids = pieces[painted]
                ids = ids[ids > 0]
                piece = pieces == np.bincount(ids).argmax() if ids.size else np.zeros_like(painted)
                total += expand_scores(piece, painted)
    scores = total / len(objects)
    # the smallest growth within 0.005 of the best: no growth unless it clearly helps
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


def _foreground(model, d, window: tuple[slice, ...]) -> np.ndarray | None:
    """The foreground probability in ``window`` of a training image; the reflected margin only
    where the window meets the image's own edge (elsewhere it holds real context)."""
    from .inference import PreparedImage, embed

    channels = d.image.shape[0]
    image = d.image[(slice(None),) + window] if channels > 1 else d.image[0][window]
    value_range = tuple((0.0, 1.0) for _ in range(channels)) if channels > 1 else (0.0, 1.0)
    edges = tuple((w.start == 0, w.stop == n) for w, n in zip(window, d.objects.shape))
    return embed(model, PreparedImage(image, value_range, channels), device="cpu", edges=edges).foreground
