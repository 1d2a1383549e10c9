"""Touching pieces and whether the foreground head sees a boundary between them.

The foreground head is trained on the painted objects against a ring just outside them
(``TrainConfig.ring_width``): it learns what lies between objects, a membrane in EM or the
dark rim between touching nuclei. Where two pieces of the clustering touch and the foreground
probability along their contact is as high as inside them, nothing the network has learned
separates them: after minutes of CPU training they are mostly one object whose embedding drifted
across its extent (ISBI EM, seed 0: 62 of 70 such contacts lay inside one true cell). Used only
where objects fill the tile (``applies``). docs/method.md, "Merging pieces with no boundary
between them", has the measurements.
"""

from __future__ import annotations

import numpy as np


def contact_foreground(labels: np.ndarray, foreground: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a < b) of face-touching pieces of ``labels`` (0 is background), and per pair the mean,
    over their contact, of the lower foreground probability of the two pixels that meet."""
    labels = np.asarray(labels)
    foreground = np.asarray(foreground, dtype=np.float64)
    n = int(labels.max(initial=0)) + 1
    keys, values = [], []
    for axis in range(labels.ndim):
        lab = np.moveaxis(labels, axis, 0)
        fg = np.moveaxis(foreground, axis, 0)
        a, b = lab[1:], lab[:-1]
        meet = (a != b) & (a > 0) & (b > 0)
        lo = np.minimum(a[meet], b[meet]).astype(np.int64)
        hi = np.maximum(a[meet], b[meet]).astype(np.int64)
        keys.append(lo * n + hi)
        values.append(np.minimum(fg[1:][meet], fg[:-1][meet]))
    key = np.concatenate(keys)
    if key.size == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    pair_keys, index, counts = np.unique(key, return_inverse=True, return_counts=True)
    mean = np.bincount(index, weights=np.concatenate(values)) / counts
    return np.stack([pair_keys // n, pair_keys % n], 1), mean


def applies(foreground_fraction: float) -> bool:
    """Whether :func:`merge_unseparated` is used when nothing better is known (ClusterConfig.layout
    "auto" with a model that has no measured layout): where objects tile the image (more of it
    foreground than ``shapes.MAX_FOREGROUND_FRACTION``), the complement of the shape split.
    Where objects stand on background the embedding and the shape separate them, and a head
    trained for a minute may not yet mark the contact between two touching nuclei."""
    from .shapes import MAX_FOREGROUND_FRACTION

    return foreground_fraction > MAX_FOREGROUND_FRACTION


def unseparated_pairs(labels: np.ndarray, foreground: np.ndarray, tolerance: float) -> np.ndarray:
    """Pairs (a < b) of touching pieces whose contact is not darker in ``foreground`` than the
    less certain of the two by more than ``tolerance`` (mean probability over the contact
    against the mean inside each piece)."""
    n = int(labels.max(initial=0))
    if n < 2:
        return np.zeros((0, 2), np.int64)
    pairs, contact = contact_foreground(labels, foreground)
    if len(pairs) == 0:
        return pairs
    flat = labels.ravel()
    size = np.bincount(flat, minlength=n + 1)
    inside = np.bincount(flat, weights=np.asarray(foreground, dtype=np.float64).ravel(), minlength=n + 1)
    inside = inside / np.maximum(size, 1)
    return pairs[contact >= np.minimum(inside[pairs[:, 0]], inside[pairs[:, 1]]) - tolerance]


def merge_unseparated(labels: np.ndarray, foreground: np.ndarray, tolerance: float) -> np.ndarray:
    """Join touching pieces whose contact is not darker in ``foreground`` than the less certain
    of the two pieces by more than ``tolerance`` (mean probability over the contact against the
    mean inside each piece). Returns labels with merged pieces sharing the lower id (not
    sequential)."""
    labels = np.asarray(labels)
    n = int(labels.max(initial=0))
    joined = unseparated_pairs(labels, foreground, tolerance)
    if len(joined) == 0:
        return labels
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(joined)), (joined[:, 0], joined[:, 1])), shape=(n + 1, n + 1))
    _, component = connected_components(graph, directed=False)
    # each group takes its smallest member's id; background (0) is a group of its own
    first = np.full(component.max() + 1, n + 1)
    np.minimum.at(first, component, np.arange(n + 1))
    return first[component][labels]


def merge_convex_unseparated(labels: np.ndarray, foreground: np.ndarray, tolerance: float,
                             reference: float) -> np.ndarray:
    """Where objects stand on background: join touching pieces with no boundary between them
    (as :func:`merge_unseparated` finds them) only when their union is at least as convex as
    ``reference`` (the median painted object's solidity, shapes.py). The halves of one nucleus
    that the embedding cut apart make one convex object; two touching nuclei whose contact the
    head has not learned make a waisted one and stay apart (on packed 3D nuclei joining every
    unseparated pair merged four times as many nuclei; docs/benchmarks.md). Pairs are taken in
    order and a joined group is tested whole against its next partner. Returns labels with
    joined pieces sharing the lower id (not sequential)."""
    from scipy import ndimage as ndi

    from .shapes import solidity

    labels = np.asarray(labels)
    n = int(labels.max(initial=0))
    joined = unseparated_pairs(labels, foreground, tolerance)
    if len(joined) == 0:
        return labels
    boxes = ndi.find_objects(labels)
    root = np.arange(n + 1)
    members = {}

    def find(i: int) -> int:
        while root[i] != i:
            i = root[i]
        return i

    for a, b in joined:
        ra, rb = find(int(a)), find(int(b))
        if ra == rb or boxes[ra - 1] is None or boxes[rb - 1] is None:
            continue
        box = tuple(slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(boxes[ra - 1], boxes[rb - 1]))
        group = members.get(ra, [ra]) + members.get(rb, [rb])
        if solidity(np.isin(labels[box], group)) < reference:
            continue
        low, high = min(ra, rb), max(ra, rb)
        root[high] = low
        members[low] = group
        members.pop(high, None)
        boxes[low - 1] = box
    lut = np.array([find(i) for i in range(n + 1)])
    return lut[labels]
