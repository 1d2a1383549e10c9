"""Which object to paint next: a per-instance doubt score from what segmentation already produced.

Each predicted instance gets signals in [0, 1] from the network's own outputs (docs/method.md,
"Suggestions"):

* ``spread``: how far its pixels stray from their mean embedding, in units of δ_d. The loss
  pulls an object's pixels towards its mean and pushes the means of two objects 2·δ_d apart, so
  the pixels of two objects merged under one id lie about δ_d or more from their common mean,
  while one object's stay well inside (measured: 0.19-0.54 δ_d on the sample's nuclei).
* ``crowding``: how close the nearest other instance's mean embedding is, against the push
  margin 2·δ_d that separates trained objects. Reported, but not part of the score: measured,
  it ranks right instances above wrong ones (benchmarks/suggestion_signals.py).
* ``foreground``: how undecided the foreground head is over the instance (probability near 0.5).
* ``size``: how far its size is from the painted (or else the typical predicted) object size, on
  a log scale: a 4x larger or smaller object scores 1.
* ``disagreement`` (only when the embedding holds the partner network's output, e.g. from
  ``segment(..., return_embedding=True)`` with consistency clustering): how far student and
  teacher embeddings differ over the instance, in units of δ_v.

The score is the mean of the available signals of :data:`SCORED` (docs/method.md, "Suggestions":
which signals, measured as detectors of wrong instances); the k suggestions are the most doubtful
instance of each of k size strata (:func:`spread_order`). Nothing here needs Qt; the napari
panel and ``predict --suggest K`` show them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .inference import Embedding

SIGNALS = ("spread", "crowding", "foreground", "size", "disagreement")
#: The signals the score averages. Crowding is left out: as a detector of wrong instances on
#: the held-out images of three data sets its AUROC was 0.33-0.42 (below chance), and without it
#: the mean of the rest detects them as well or better (docs/benchmarks.md, "Which signals").
SCORED = ("spread", "foreground", "size", "disagreement")


@dataclass
class Suggestion:
    """One predicted instance worth checking: its id in the label image, centroid (pixel
    coordinates, spatial axes in order), score in [0, 1], the signals behind it and its size
    in pixels."""

    label: int
    centroid: tuple[float, ...]
    score: float
    signals: dict[str, float] = field(default_factory=dict)
    pixels: int = 0


def _per_label_means(values: np.ndarray, flat: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
    """(C, n) means over each label of (C, P) values; labels are 0..n-1 in ``flat``."""
    return np.stack([np.bincount(flat, weights=v, minlength=n) for v in values]) / np.maximum(counts, 1)


#: Instance pixels read for the signals: above this, a regular grid of them (docs/method.md,
#: "Suggestions"); an instance keeps at least MIN_SAMPLES of its pixels, or all it has.
MAX_SAMPLES = 2**16
MIN_SAMPLES = 64


def _instance_index(values: np.ndarray, size: int):
    """The ids among ``values`` (positive labels), their counts, and a function that maps label
    values to 0..n-1. Label ids are usually small: counted with ``bincount`` and mapped by a
    table, a few times faster than sorting them (``unique``), which remains for sparse huge ids."""
    if values.size and values.dtype.kind in "ui" and int(values.max()) <= 4 * size:
        every = np.bincount(values.astype(np.intp, copy=False))
        ids = np.nonzero(every)[0]
        table = np.zeros(len(every), np.intp)
        table[ids] = np.arange(len(ids))
        return ids, every[ids], lambda v: table[v]
    ids, counts = np.unique(values, return_counts=True)
    return ids, counts, lambda v: np.searchsorted(ids, v)


def _sample_step(pixels: int, ndim: int) -> int:
    """Every how many pixels along each axis the embedding statistics read, so that about
    :data:`MAX_SAMPLES` of ``pixels`` instance pixels are read (1: all of them)."""
    return max(1, int(np.ceil((pixels / MAX_SAMPLES) ** (1.0 / ndim) - 1e-9)))


def instance_signals(
    labels: np.ndarray,
    embedding: Embedding,
    painted_sizes: Sequence[int] | None = None,
    delta_v: float = 0.5,
    delta_d: float = 2.0,
    with_pixels: bool = False,
) -> dict[int, dict[str, float]]:
    """The signals (module docstring) of every instance of ``labels`` (0 = background), keyed
    by label id. ``embedding`` must cover the same pixels (``segment(..., return_embedding=True)``).
    ``with_pixels``: also each instance's pixel count, under ``"_pixels"`` (not a signal)."""
    labels = np.asarray(labels)
    emb = np.asarray(embedding.embeddings)
    if emb.shape[1:] != labels.shape:
        raise ValueError(f"embeddings of shape {emb.shape[1:]} do not cover labels of shape {labels.shape}")
    mask = labels > 0
    ids, full_counts, index = _instance_index(labels[mask], labels.size)
    n = len(ids)
    if n == 0:
        return {}
    # The signals are means over each instance: on large images a regular grid of its pixels
    # estimates them closely at a fraction of the time (the size signal keeps the full counts;
    # an instance that would keep fewer than MIN_SAMPLES pixels on the grid keeps all of them).
    step = _sample_step(int(full_counts.sum()), labels.ndim)
    sel = mask
    if step > 1:
        sel = np.zeros(labels.shape, bool)
        sel[tuple(slice(None, None, step) for _ in labels.shape)] = True
        sel &= mask
        small = ids[full_counts < MIN_SAMPLES * step**labels.ndim]
        if len(small):
            sel |= np.isin(labels, small)
    flat = index(labels[sel])
    counts = np.bincount(flat, minlength=n).astype(np.float64)
    e = emb[:, sel].astype(np.float32, copy=False)  # (E, P); sums and means in float64
    means = _per_label_means(e, flat, counts, n)  # (E, n)
    dist = np.linalg.norm(e - means.astype(np.float32)[:, flat], axis=0)
    spread = np.bincount(flat, weights=dist, minlength=n) / counts / delta_d

    if n > 1:  # nearest other mean, by a k-d tree: no n x n table on crowded images
        from scipy.spatial import cKDTree

        gaps, _ = cKDTree(means.T).query(means.T, k=2)
        crowding = 1.0 - gaps[:, 1] / (2 * delta_d)
    else:
        crowding = np.zeros(n)

    out: dict[str, np.ndarray] = {"spread": spread, "crowding": crowding}
    if embedding.foreground is not None:
        p = np.asarray(embedding.foreground, dtype=np.float64)[sel]
        out["foreground"] = np.bincount(flat, weights=1.0 - np.abs(2 * p - 1), minlength=n) / counts
    sizes = full_counts.astype(np.float64)
    reference = float(np.median(painted_sizes)) if painted_sizes is not None and len(painted_sizes) else float(np.median(sizes))
    out["size"] = np.abs(np.log(sizes / max(reference, 1.0))) / np.log(4.0)
    if embedding.teacher_embeddings is not None:
        t = np.asarray(embedding.teacher_embeddings)[:, sel].astype(np.float32, copy=False)
        gap = np.linalg.norm(e - t, axis=0)
        out["disagreement"] = np.bincount(flat, weights=gap, minlength=n) / counts / delta_v
    result = {int(i): {k: float(np.clip(v[j], 0.0, 1.0)) for k, v in out.items()} for j, i in enumerate(ids)}
    if with_pixels:
        for j, i in enumerate(ids):
            result[int(i)]["_pixels"] = float(full_counts[j])
    return result


def spread_order(sizes: Sequence[float], scores: Sequence[float], strata: int) -> list[int]:
    """An order of the candidates (indices into ``sizes``/``scores``) whose first ``strata``
    entries cover every size stratum: the candidates are cut, by size, into ``strata`` groups of
    (nearly) equal count; the order takes the most doubtful of each group, then the second most
    doubtful of each, and so on, each pass most doubtful first (ties: the lower index).

    Why: the top scores alone gather on one kind of object (on EM membranes, the largest cells),
    so the painted objects stop resembling the image and the size statistics and the weights
    learn a skewed set; one pick per size stratum keeps the painted set's size distribution that
    of the predicted objects while still choosing the doubtful ones (docs/method.md, "Suggestions")."""
    n = len(sizes)
    if n == 0:
        return []
    strata = max(1, min(int(strata), n))
    by_size = sorted(range(n), key=lambda j: (sizes[j], j))
    groups = [sorted(g.tolist(), key=lambda j: (-scores[j], j)) for g in np.array_split(np.array(by_size), strata)]
    order: list[int] = []
    for depth in range(max(len(g) for g in groups)):
        layer = [g[depth] for g in groups if depth < len(g)]
        order += sorted(layer, key=lambda j: (-scores[j], j))
    return order


def suggest(
    labels: np.ndarray,
    embedding: Embedding,
    k: int = 5,
    painted_sizes: Sequence[int] | None = None,
    exclude: Sequence[int] = (),
    spread_sizes: bool = True,
    scored: Sequence[str] = SCORED,
) -> list[Suggestion]:
    """``k`` doubtful instances of ``labels``, most doubtful first (ties: lower id first): the
    most doubtful of each of ``k`` size strata (:func:`spread_order`), or with
    ``spread_sizes=False`` the ``k`` top scores overall. ``exclude``: ids to leave out, e.g.
    those already painted. ``scored``: the signals the score averages (:data:`SCORED`); every
    signal is reported in :attr:`Suggestion.signals`."""
    if k < 1:
        return []
    signals = instance_signals(labels, embedding, painted_sizes, with_pixels=True)
    skip = {int(i) for i in exclude}
    labels = np.asarray(labels)
    ranked = []
    for label, sig in signals.items():
        pixels = int(sig.pop("_pixels"))
        if label not in skip:
            used = [v for name, v in sig.items() if name in scored]
            ranked.append((float(np.mean(used)) if used else 0.0, label, sig, pixels))
    ranked.sort(key=lambda r: (-r[0], r[1]))
    if spread_sizes and len(ranked) > k:
        order = spread_order([r[3] for r in ranked], [r[0] for r in ranked], k)
        ranked = [ranked[j] for j in order]
    chosen = ranked[:k]
    if not chosen:
        return []
    centroids = _centroids(labels, [r[1] for r in chosen])
    return [Suggestion(label, centroids[label], round(score, 4), {s: round(v, 4) for s, v in sig.items()}, pixels)
            for score, label, sig, pixels in chosen]


def painted_instances(labels: np.ndarray, painted: np.ndarray, background_label: int | None = None,
                      fraction: float = 0.5) -> list[int]:
    """Ids of ``labels`` lying at least ``fraction`` on painted objects of ``painted`` (sparse
    labels of the same shape; 0 and ``background_label`` are not objects): objects the user has
    painted already, which suggesting again would waste a look."""
    labels, painted = np.asarray(labels), np.asarray(painted)
    if labels.shape != painted.shape:
        raise ValueError(f"painted labels of shape {painted.shape} do not cover labels of shape {labels.shape}")
    on_object = (painted > 0) & ((painted != background_label) if background_label is not None else True)
    flat = labels.ravel().astype(np.int64)
    n = int(flat.max(initial=0)) + 1
    total = np.bincount(flat, minlength=n)
    covered = np.bincount(flat, weights=on_object.ravel(), minlength=n)
    ids = np.nonzero((covered >= fraction * np.maximum(total, 1)) & (total > 0))[0]
    return [int(i) for i in ids if i > 0]


def _centroids(labels: np.ndarray, ids: Sequence[int]) -> dict[int, tuple[float, ...]]:
    """Centroids of the chosen ids: the mean coordinates of their pixels, found in one pass over
    the image (``ndimage.center_of_mass`` made three, 40 % of the suggestion time of a 2048²
    image)."""
    chosen = np.unique(np.asarray(list(ids), dtype=np.int64))
    if chosen.size == 0:
        return {}
    coords = np.nonzero(np.isin(labels, chosen))
    which = np.searchsorted(chosen, labels[coords])
    counts = np.bincount(which, minlength=chosen.size).astype(np.float64)
    means = [np.where(counts > 0, np.bincount(which, weights=c, minlength=chosen.size) / np.maximum(counts, 1), np.nan)
             for c in coords]
    found = {int(label): tuple(round(float(m[j]), 2) for m in means) for j, label in enumerate(chosen)}
    return {label: found[int(label)] for label in ids}


def csv_header(ndim: int) -> list[str]:
    """The columns of :func:`write_csv` for images of ``ndim`` spatial axes."""
    axes = ("z", "y", "x")[-ndim:] if ndim <= 3 else tuple(f"axis{i}" for i in range(ndim))
    return ["image", "rank", "id", *axes, "score", *SIGNALS, "pixels"]


def write_csv(path, rows: Sequence[tuple[str, Suggestion]], ndim: int | None = None, append: bool = False,
              replace_images: Sequence[str] = ()) -> None:
    """One CSV for a batch: image, rank within the image, id, centroid per axis, score, each
    signal and the size in pixels, from ``(image name, suggestion)`` pairs in ranked order per image.
    ``ndim``: the images' spatial axes (default: the suggestions', else 2); ``append`` keeps the
    rows of an existing file of the same columns (a batch continued with ``predict
    --skip-existing``) except those of the images in ``replace_images`` (and in ``rows``), which
    were segmented again."""
    import csv

    ndim = ndim or max((len(s.centroid) for _, s in rows), default=2)
    kept: list[list[str]] = []
    if append:
        again = set(replace_images) | {image for image, _ in rows}
        with open(path, newline="") as f:
            kept = [r for r in list(csv.reader(f))[1:] if r and r[0] not in again]
    rank: dict[str, int] = {}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")  # written whole, then moved over: the old rows are never half-lost
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(csv_header(ndim))
            w.writerows(kept)
            for image, s in rows:
                rank[image] = rank.get(image, 0) + 1
                w.writerow([image, rank[image], s.label, *s.centroid, s.score,
                            *(s.signals.get(k, "") for k in SIGNALS), s.pixels])
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (disk full, Ctrl-C) leaves no hidden half file behind
        raise
