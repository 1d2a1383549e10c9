"""Segmenting images larger than one tile: core regions, a halo of context, and stitching.

Each tile is embedded and clustered on its own, so memory is bounded by the tile, not the image.
The image is cut into *core* regions that partition it; a tile is its core plus a halo on every
side. An object found in a tile is kept only if its centre lies in that tile's core, so each
object is claimed by exactly one tile, and seen whole as long as it is smaller than the halo.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def core_bounds(n: int, tile: int, halo: int, divisor: int = 1) -> list[tuple[int, int]]:
    """Cut an axis of length ``n`` into cores no longer than ``tile - 2*halo`` (whole when
    ``n <= tile``); core boundaries fall on multiples of ``divisor`` where possible."""
    if n <= tile:
        return [(0, n)]
    core = max(divisor, tile - 2 * halo)
    parts = math.ceil(n / core)
    cuts = [0] + [int(round(i * n / parts / divisor)) * divisor for i in range(1, parts)] + [n]
    return list(zip(cuts[:-1], cuts[1:]))


def fit_tile(shape: tuple[int, ...], tile: tuple[int, ...]) -> tuple[int, ...]:
    """A tile of at most ``tile``'s pixel count shaped to an image of ``shape``: the whole image
    where it holds no more, otherwise whole along the axes shorter than ``tile`` and the room
    they leave given to the axes that are cut, by one factor. A fixed 64×384×384 block cut a
    102×224×224 volume into four slabs whose halo (a quarter of the shortest side, 16 planes)
    was less than one nucleus across: objects at the slab borders were merged or cut, and the
    slabs held 198 planes for 102 (docs/benchmarks.md, "Seeds at outranked peaks")."""
    shape = tuple(int(n) for n in shape)
    budget = math.prod(int(t) for t in tile)
    if math.prod(shape) <= budget:
        return shape
    out = [min(n, int(t)) for n, t in zip(shape, tile)]
    for _ in range(len(shape)):  # an axis that reaches its image's length passes the room on
        cut = [i for i, n in enumerate(shape) if out[i] < n]
        room = budget / math.prod(out)
        if not cut or room < 1.01:
            break
        factor = room ** (1.0 / len(cut))
        for i in cut:
            out[i] = min(shape[i], max(out[i], int(out[i] * factor)))
    return tuple(out)


def tiles(shape: tuple[int, ...], tile: tuple[int, ...], halo: tuple[int, ...], divisor: int = 1):
    """Yield (core, region) pairs of slice tuples: the core partitions the image; the region is
    the core grown by the halo and clipped to the image."""
    per_axis = [core_bounds(n, t, h, divisor) for n, t, h in zip(shape, tile, halo)]
    for combo in itertools.product(*per_axis):
        core = tuple(slice(a, b) for a, b in combo)
        region = tuple(slice(max(0, a - h), min(n, b + h)) for (a, b), h, n in zip(combo, halo, shape))
        yield core, region


def centres(labels: np.ndarray) -> np.ndarray:
    """(max_id + 1, ndim) mean coordinates of each label (row 0 and absent ids: NaN)."""
    n = int(labels.max(initial=0))
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1).astype(np.float64)
    out = np.full((n + 1, labels.ndim), np.nan)
    present = counts > 0
    for axis in range(labels.ndim):
        shape = [1] * labels.ndim
        shape[axis] = labels.shape[axis]
        coord = np.broadcast_to(np.arange(labels.shape[axis]).reshape(shape), labels.shape).ravel()
        sums = np.bincount(flat, weights=coord, minlength=n + 1)
        out[present, axis] = sums[present] / counts[present]
    out[0] = np.nan
    return out


def paste_claimed(
    out: np.ndarray,
    tile_labels: np.ndarray,
    core: tuple[slice, ...],
    region: tuple[slice, ...],
    next_id: int,
    margin: float = 0.0,
    max_overlap: float = 0.5,
) -> int:
    """Copy into ``out[region]`` the objects of ``tile_labels`` whose centre lies in ``core``
    grown by ``margin`` pixels, with fresh ids from ``next_id``; only free pixels are filled, and
    an object that mostly lies on pixels already claimed (the same object, found again by a
    neighbouring tile) is skipped. The margin makes an object on a core boundary, whose centre
    two tiles may see on either side of it, claimed twice rather than never. Returns the next
    free id."""
    c = centres(tile_labels)
    lo = np.array([cs.start - rs.start for cs, rs in zip(core, region)], dtype=np.float64) - margin
    hi = np.array([cs.stop - rs.start for cs, rs in zip(core, region)], dtype=np.float64) + margin
    with np.errstate(invalid="ignore"):
        claimed = np.all((c >= lo - 0.5) & (c < hi - 0.5), axis=1)
    claimed[0] = False
    if not claimed.any():
        return next_id
    view = out[region]
    keep = claimed[tile_labels]
    sizes = np.bincount(tile_labels[keep], minlength=len(claimed))
    taken = np.bincount(tile_labels[keep & (view > 0)], minlength=len(claimed))
    with np.errstate(invalid="ignore", divide="ignore"):
        duplicate = taken > max_overlap * sizes
    claimed &= ~duplicate
    new_ids = np.zeros(len(claimed), dtype=np.int64)
    new_ids[claimed] = np.arange(next_id, next_id + int(claimed.sum()))
    fill = claimed[tile_labels] & (view == 0)
    view[fill] = new_ids[tile_labels[fill]]
    return next_id + int(claimed.sum())
