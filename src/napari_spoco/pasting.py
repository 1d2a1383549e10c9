"""Touching pairs made from painted objects: a painted object pasted beside another in a patch.

Two touching nuclei that a model merges have, in its embedding, no edge between them at all
(docs/benchmarks.md, "Painted objects pasted beside each other"): the pull and push terms
learn where one object ends only where two *painted* objects meet, and a user who paints a tenth
of the objects rarely paints both of a touching pair. Here a training patch can get a copy of
another painted object, its pixels and its mask, placed ``gap`` pixels from one of the patch's
painted objects: a touching pair whose seam is the patch's own pixels between them, with both
objects complete and known. Copy-paste augmentation (Ghiasi et al., CVPR 2021) places objects
at random; here they are placed against each other, which is the case the labels lack.
docs/method.md, "Painted objects pasted beside each other".
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Pixels of the patch left between the pasted object and its neighbour: the seam, which the
#: foreground head's ring (data.RING_WIDTH) marks as not inside either object.
GAP = 1
#: Placements tried (directions) before the patch is left as it is.
TRIES = 6
#: At least this share of the pasted object must fall inside the patch.
MIN_INSIDE = 0.6


class Donors:
    """The painted objects that can be pasted: (pixels (C, *box), mask) of each, cut once."""

    def __init__(self, images: list[np.ndarray], objects: list[np.ndarray], boxes: list[list[tuple[slice, ...]]]):
        self.items = []
        for img, obj, bxs in zip(images, objects, boxes):
            for i, box in enumerate(bxs, start=1):
                mask = obj[box] == i
                if mask.sum() >= 4:
                    self.items.append((np.ascontiguousarray(img[(slice(None),) + box]), mask))

    def __len__(self) -> int:
        return len(self.items)


def _window(offset: tuple[int, ...], shape: tuple[int, ...], bounds: tuple[int, ...]):
    """(slices into the patch, slices into the donor's box) for a box placed at ``offset``."""
    dst, src = [], []
    for o, n, b in zip(offset, shape, bounds):
        lo, hi = max(o, 0), min(o + n, b)
        if hi <= lo:
            return None
        dst.append(slice(lo, hi))
        src.append(slice(lo - o, hi - o))
    return tuple(dst), tuple(src)


def paste_beside(rng: np.random.Generator, donors: Donors, img: np.ndarray, obj: np.ndarray, bg: np.ndarray,
                 neg: np.ndarray, ring_width: int = 1, gap: int = GAP) -> bool:
    """Paste one donor ``gap`` pixels from a painted object of the patch, in place.

    ``img`` (C, *patch), ``obj`` (ids, 0 unpainted), ``bg`` and ``neg`` (painted background and
    the foreground head's negatives) must be the caller's own copies. The donor keeps clear of
    every painted object by ``gap`` pixels (none is covered, so each stays complete) and touches
    the chosen one's ``gap``-pixel margin; it covers no painted object, and the pixels it covers
    (unpainted, or painted background) become its own in this patch.
    Its ring of ``ring_width`` pixels joins the negatives. Returns whether a donor was placed.
    """
    ids = np.unique(obj)
    ids = ids[ids > 0]
    if ids.size == 0 or len(donors) == 0:
        return False
    painted = obj > 0
    nd = obj.ndim
    conn = ndi.generate_binary_structure(nd, 1)
    blocked = ndi.binary_dilation(painted, conn, iterations=gap) if gap > 0 else painted
    target = obj == ids[rng.integers(ids.size)]
    touch = ndi.binary_dilation(target, conn, iterations=gap + 1)
    centre = np.array([c.mean() for c in np.nonzero(target)])
    pixels, mask = donors.items[rng.integers(len(donors))]
    for axis in range(nd):  # a mirror image, so that a donor is not always pasted as painted
        if rng.random() < 0.5:
            pixels, mask = np.flip(pixels, axis + 1), np.flip(mask, axis)
    half = np.array(mask.shape) / 2.0
    # where the walk starts: the disc radius of the target's size (in 3D an overestimate, which
    # only starts the walk further out: more window checks, about 10 ms per cells3d patch in all)
    reach = float(np.sqrt(target.sum() / np.pi)) + float(np.max(half)) + gap + 2
    for _ in range(TRIES):
        u = rng.standard_normal(nd)
        u /= np.linalg.norm(u) + 1e-12
        placed = None
        for s in np.arange(reach, 0.0, -1.0):  # from outside towards the target, until blocked
            offset = tuple(int(v) for v in np.round(centre + u * s - half))
            win = _window(offset, mask.shape, obj.shape)
            if win is None:
                continue
            dst, src = win
            if (blocked[dst] & mask[src]).any():
                break
            placed = (dst, src)
        if placed is None:
            continue
        dst, src = placed
        m = mask[src]
        if m.sum() < MIN_INSIDE * mask.sum() or not (touch[dst] & m).any():
            continue
        new = int(obj.max()) + 1
        img[(slice(None),) + dst][:, m] = pixels[(slice(None),) + src][:, m]
        obj[dst][m] = new
        bg[dst][m] = False
        neg[dst][m] = False
        if ring_width > 0:
            pasted = np.zeros(obj.shape, bool)
            pasted[dst] = m
            ring = ndi.binary_dilation(pasted, conn, iterations=ring_width) & (obj == 0)
            neg |= ring
        return True
    return False
