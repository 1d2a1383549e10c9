"""A generated stand-in for 2D fluorescence fields of touching nuclei (BBBC039's are mostly apart).

Issue 10's held-out nuclei image (one 512² field, trained on and scored) is the kind where a
fully supervised network scores about 0.84 and a forest on filter features beat us: nuclei of
mixed size that touch in clumps, some dim beside bright ones, with chromatin texture and uneven
illumination. The shared BBBC039 fields hold U2OS nuclei that are mostly apart. This module
draws such fields from a seed, so that benchmarks can measure touching 2D nuclei without any data
that could leak into a starting model (nothing here is tuned on it):

* nuclei are ellipses (radius 7–15 px, aspect up to 1.6, random angle), placed in clumps around
  a few centres and some on their own, two centres at least ``packing`` times the sum of their
  radii apart, so that clump members touch; the mask is the ellipse partition;
* brightness differs per nucleus (0.25–1, so some are dim beside bright neighbours), dims toward
  the rim, with speckled chromatin and now and then a small, bright, round nucleus (mitosis);
* a smooth illumination gradient, a dark gap only where the point-spread function leaves one,
  blur of 1 px, shot and read noise; 16-bit ``(Y, X)``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

#: Name of the generated set in the benchmarks' ``--datasets`` lists.
NAME = "synthetic-nuclei-2d"
N_TRAIN, N_TEST = 4, 4


def packed_nuclei_2d(seed: int, shape: tuple[int, int] = (512, 512), radius: tuple[float, float] = (7.0, 15.0),
                     packing: float = 0.8, clumps: tuple[int, int] = (6, 12), count: tuple[int, int] = (90, 170),
                     attempts: int = 6000, aspect_range: tuple[float, float] = (1.0, 1.6), wobble: float = 0.0,
                     rim_dim: float = 0.5, blur: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(image uint16, mask uint16) of one field of ``shape``, with a number of nuclei drawn from
    ``count`` (fewer where ``attempts`` cannot place them). ``wobble`` bends each outline by up to
    that share of its radius (smooth harmonics 2-4), ``rim_dim`` is how much a nucleus dims toward
    its rim (the dark line between two touching ones), ``blur`` the point-spread function's sigma."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    extent = np.array(shape, float)
    hubs = rng.uniform(0.08, 0.92, (int(rng.integers(*clumps)), 2)) * extent
    spread = rng.uniform(12, 25, len(hubs))
    target = int(rng.integers(*count))
    centres: list[np.ndarray] = []
    axes: list[np.ndarray] = []
    for _ in range(attempts):
        if len(centres) >= target:
            break
        r = rng.uniform(*radius)
        if rng.random() < 0.75:  # in a clump: around one of the hubs
            k = int(rng.integers(len(hubs)))
            c = hubs[k] + rng.normal(0, spread[k], 2)
        else:  # on its own
            c = rng.uniform(0, 1, 2) * extent
        if not (0 <= c[0] < ny and 0 <= c[1] < nx):
            continue
        if centres:
            d = np.linalg.norm(np.asarray(centres) - c, axis=1)
            if np.any(d < packing * (np.asarray([a.mean() for a in axes]) + r)):
                continue
        aspect = rng.uniform(*aspect_range)
        centres.append(c)
        axes.append(r * np.array([aspect ** 0.5, aspect ** -0.5]))
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32) + 0.5
    best = np.full(shape, np.inf, np.float32)
    mask = np.zeros(shape, np.uint16)
    for i, (c, a) in enumerate(zip(centres, axes), start=1):
        angle = rng.uniform(0, np.pi)
        lo = np.maximum(0, np.floor(c - a.max() - 1).astype(int))
        hi = np.minimum(shape, np.ceil(c + a.max() + 1).astype(int))
        sl = (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])))
        dy, dx = yy[sl] - c[0], xx[sl] - c[1]
        u = np.cos(angle) * dy + np.sin(angle) * dx
        v = -np.sin(angle) * dy + np.cos(angle) * dx
        d = np.sqrt((u / a[0]) ** 2 + (v / a[1]) ** 2)
        if wobble > 0:  # an irregular outline: the radius varies smoothly with the angle
            theta = np.arctan2(v, u)
            bend = sum(rng.uniform(-1, 1) * np.sin(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
            d = d / (1.0 + wobble * bend / 3.0)
        win = (d < 1.0) & (d < best[sl])
        best[sl][win] = d[win]
        mask[sl][win] = i
    n = len(centres)
    brightness = rng.uniform(0.25, 1.0, n + 1).astype(np.float32)
    mitotic = rng.random(n + 1) < 0.05
    brightness[mitotic] = 1.6
    brightness[0] = 0.0
    rim = np.where(mask > 0, 1.0 - rim_dim * np.clip(best, 0, 1) ** 3, 0.0).astype(np.float32)
    chromatin = ndi.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), 1.2)
    chromatin /= chromatin.std() + 1e-6
    signal = brightness[mask] * rim * (1.0 + 0.2 * chromatin)
    # illumination falling off toward one side by up to a half
    gy, gx = rng.normal(0, 1, 2)
    ramp = (gy * (yy / ny - 0.5) + gx * (xx / nx - 0.5)) / (abs(gy) + abs(gx) + 1e-6)
    illumination = 1.0 - 0.25 * rng.uniform(0.5, 1.0) * (ramp + 0.5)
    signal = ndi.gaussian_filter(signal * illumination, blur) + 0.05
    photons = 200.0
    image = rng.poisson(np.clip(signal, 0, None) * photons).astype(np.float32) + rng.normal(0, 3.0, shape)
    image = np.clip(image + 100.0, 0, 65535).astype(np.uint16)
    # objects left smaller than 20 px by their neighbours are not in the truth (as in BBBC039's)
    ids, sizes = np.unique(mask[mask > 0], return_counts=True)
    relabel = np.zeros(int(mask.max()) + 1, np.uint16)
    keep = ids[sizes >= 20]
    relabel[keep] = np.arange(1, len(keep) + 1)
    return image, relabel[mask]


def stems() -> list[str]:
    """Four training fields and four scored ones, each drawn from its own seed."""
    return [f"train{i:02d}" for i in range(N_TRAIN)] + [f"test{i:02d}" for i in range(N_TEST)]


@lru_cache(maxsize=16)
def _field(stem: str, variant: str = NAME) -> tuple[np.ndarray, np.ndarray]:
    return packed_nuclei_2d((3000 if stem.startswith("train") else 4000) + int(stem[-2:]), **VARIANTS.get(variant, {}))


def read(stem: str, kind: str) -> np.ndarray:
    """The image or mask of one generated field (``stem`` from :func:`stems`), drawn once per process."""
    return _field(stem)[0 if kind == "images" else 1]


#: The same kind made harder, to check what was measured on the set above carries over (nothing
#: is tuned on it): irregular outlines, longer nuclei that overlap more, no dark line where two
#: touch (only their outlines' notches tell them apart, as in a widefield image of a clump) and
#: twice the blur.
VARIANTS: dict[str, dict] = {
    NAME + "-hard": {"packing": 0.7, "aspect_range": (1.0, 2.0), "wobble": 0.25, "rim_dim": 0.1, "blur": 2.0},
}


class Variant:
    """One of :data:`VARIANTS`, read as :mod:`bench_data` reads a generated set."""

    def __init__(self, name: str):
        self.NAME = name

    @staticmethod
    def stems() -> list[str]:
        return stems()

    def read(self, stem: str, kind: str) -> np.ndarray:
        return _field(stem, self.NAME)[0 if kind == "images" else 1]
