"""Holes inside instances filled: a background region enclosed by one object is part of it.

A nucleus with dark nucleoli, a cell with a dark organelle: the foreground head calls the dark
inside background, and the instance comes out as a ring. The truth of every data set we score
fills such holes, and so do the usual pipelines (Cellpose fills each mask's holes, in 2D slices
for 3D). Only background that touches one object and not the image's edge is filled; a hole
larger than half its object is left alone (a ring-shaped merge, or an unfound object that one
neighbour happens to surround). docs/method.md, "Holes inside objects".
"""

from __future__ import annotations

import numpy as np

#: A hole is filled only when it is at most this share of the object around it.
MAX_HOLE_SHARE = 0.5


def fill_holes(labels: np.ndarray, max_share: float = MAX_HOLE_SHARE) -> np.ndarray:
    """``labels`` with each enclosed hole given its object's id; in 3D the holes of the whole
    volume first, then those of each Z slice (a hole open to the slice above or below is still
    enclosed in its slice, as a nucleolus at a nucleus's top is)."""
    labels = np.asarray(labels)
    if labels.max(initial=0) == 0 or not (labels == 0).any():
        return labels
    out = _fill(labels, max_share)
    if out.ndim == 3:
        for z in range(out.shape[0]):
            plane = out[z]
            filled = _fill(plane, max_share)
            if filled is not plane:
                if out is labels:  # never write into the caller's array
                    out = labels.copy()
                out[z] = filled
    return out


def _fill(labels: np.ndarray, max_share: float) -> np.ndarray:
    """One pass over an image of any dimension (face connectivity for the background)."""
    from scipy import ndimage

    if labels.max(initial=0) == 0:
        return labels
    holes, n = ndimage.label(labels == 0)
    if n == 0:
        return labels
    # background regions that reach the image's edge are not holes
    open_ = np.zeros(n + 1, dtype=bool)
    for axis in range(labels.ndim):
        for side in (0, -1):
            open_[np.take(holes, side, axis=axis)] = True
    # the objects each background region touches, as (region, object) pairs
    m = int(labels.max()) + 1
    keys = []
    for axis in range(labels.ndim):
        lo = (slice(None),) * axis + (slice(None, -1),)
        hi = (slice(None),) * axis + (slice(1, None),)
        for a, b in ((lo, hi), (hi, lo)):
            h, lab = holes[a], labels[b]
            sel = (h > 0) & (lab > 0)
            keys.append(h[sel].astype(np.int64) * m + lab[sel].astype(np.int64))
    pairs = np.unique(np.concatenate(keys))
    region, obj = pairs // m, pairs % m
    touching = np.bincount(region, minlength=n + 1)
    owner = np.zeros(n + 1, dtype=np.int64)
    owner[region] = obj  # right for the regions that touch exactly one object
    hole_size = np.bincount(holes.ravel(), minlength=n + 1)
    object_size = np.bincount(labels.ravel().astype(np.int64), minlength=m)
    fill = (touching == 1) & ~open_ & (hole_size <= max_share * object_size[owner])
    fill[0] = False
    if not fill.any():
        return labels
    out = labels.copy()
    where = fill[holes]
    out[where] = owner[holes[where]].astype(labels.dtype)
    return out

