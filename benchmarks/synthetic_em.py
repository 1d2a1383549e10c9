"""A generated stand-in for electron micrographs of large cell profiles with thin membranes.

Issue 10's held-out EM (another lab's, five images trained on and five scored) is where a
threshold of the dark membranes beat us: "large cells merge across faint membranes, dark
organelles become holes", profiles of 50-150 px. The shared ISBI images hold profiles of about
30 px (median) whose membranes are 3-6 px wide, so they measure neither. This module draws such
images from a seed (nothing here is tuned on any data, and nothing leaks into a starting model):

* profiles are the cells of a multiplicatively weighted Voronoi partition (curved walls) of
  sites 40-320 px across (log-normal, median 140; the profiles come out smaller, their painted
  medians 52-74 px), bent by a smooth displacement field;
* membranes are dark walls (``membrane_width`` 2-3 px, drawn 3 px wide: pixels within half a
  width of a change of profile, on the integer distance grid) whose darkness fades along them
  to 0.15 of its full depth in places, so some walls are faint;
* a grey level per profile, fine texture, small dark vesicles (anywhere) and dark mitochondria
  (elongated, with a darker rim, inside a profile away from its walls) that belong to the
  profile in the truth;
* blur of 1 px and noise; 8-bit ``(Y, X)``; the truth labels the profiles and leaves the
  membranes at 0, as ISBI's does.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

#: Name of the generated set in the benchmarks' ``--datasets`` lists.
NAME = "synthetic-em"
N_TRAIN, N_TEST = 5, 5


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth noise of unit standard deviation."""
    f = ndi.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), sigma)
    return f / (f.std() + 1e-6)


def em_profiles(seed: int, shape: tuple[int, int] = (512, 512), median_diameter: float = 140.0,
                membrane_width: tuple[float, float] = (2.0, 3.0), faintest: float = 0.15,
                mitochondria: float = 1.5, blur: float = 1.0, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8, mask uint16) of one micrograph of ``shape``. ``median_diameter``: of the
    profiles' sites (log-normal, spread 0.45); ``membrane_width``: range of the walls' width in
    px; ``faintest``: the lowest contrast a wall fades to (1 = full darkness everywhere);
    ``mitochondria``: drawn per profile on average, before those too close to a wall are left out."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    # sites: dart throwing with a radius each, kept apart by 0.8 of the sum of their radii
    centres: list[np.ndarray] = []
    radii: list[float] = []
    margin = median_diameter / 2
    bounds = (20.0 * median_diameter / 140.0, 160.0 * median_diameter / 140.0)  # radii 20-160 at the default
    for _ in range(4000):
        r = float(np.clip(median_diameter / 2 * np.exp(rng.normal(0, 0.45)), *bounds))
        c = rng.uniform((-margin, -margin), (ny + margin, nx + margin))  # sites beyond the edge cut profiles there
        if centres:
            d = np.linalg.norm(np.asarray(centres) - c, axis=1)
            if np.any(d < 0.8 * (np.asarray(radii) + r)):
                continue
        centres.append(c)
        radii.append(r)
    centres_a = np.asarray(centres, np.float32)
    radii_a = np.asarray(radii, np.float32)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    # bent walls: the partition is drawn on coordinates moved by a smooth field
    wy = yy + 8.0 * _smooth_field(rng, shape, 24.0)
    wx = xx + 8.0 * _smooth_field(rng, shape, 24.0)
    best = np.full(shape, np.inf, np.float32)
    owner = np.zeros(shape, np.int32)
    for i, (c, r) in enumerate(zip(centres_a, radii_a), start=1):
        d = np.hypot(wy - c[0], wx - c[1]) / r  # multiplicatively weighted: curved walls
        win = d < best
        best[win] = d[win]
        owner[win] = i
    # a weighted partition can leave a site's region in pieces: each piece is its own profile
    pieces = np.zeros(shape, np.int32)
    n = 0
    for i in range(1, len(centres) + 1):
        lab, k = ndi.label(owner == i)
        if k:
            pieces[lab > 0] = lab[lab > 0] + n
            n += k
    # walls: pixels within half a width of a change of profile; the width and the contrast vary
    change = np.zeros(shape, bool)
    change[:-1] |= pieces[:-1] != pieces[1:]
    change[:, :-1] |= pieces[:, :-1] != pieces[:, 1:]
    to_wall = ndi.distance_transform_edt(~change).astype(np.float32)
    width = membrane_width[0] + (membrane_width[1] - membrane_width[0]) * (0.5 + 0.25 * _smooth_field(rng, shape, 30.0))
    wall = to_wall < np.clip(width, 1.0, None) / 2
    contrast = faintest + (1.0 - faintest) / (1.0 + np.exp(-2.0 * _smooth_field(rng, shape, 18.0)))
    # the profiles' interiors
    level = rng.uniform(0.6, 0.75, n + 1).astype(np.float32)
    signal = level[pieces] + 0.05 * _smooth_field(rng, shape, 1.5)
    # vesicles: small dark discs
    dark = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(60, 140))):
        c = rng.uniform(0, 1, 2) * (ny, nx)
        r = rng.uniform(1.5, 3.5)
        disc = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < r * r
        dark[disc] = np.maximum(dark[disc], 0.25)
    # mitochondria: elongated dark bodies with a darker rim, inside a profile, away from its walls
    for _ in range(int(rng.poisson(mitochondria * n))):
        c = rng.uniform(0, 1, 2) * (ny, nx)
        a = rng.uniform(5, 9)
        b = a * rng.uniform(1.5, 3.5)
        if to_wall[int(c[0]), int(c[1])] < b + 4:
            continue
        angle = rng.uniform(0, np.pi)
        u = np.cos(angle) * (yy - c[0]) + np.sin(angle) * (xx - c[1])
        v = -np.sin(angle) * (yy - c[0]) + np.cos(angle) * (xx - c[1])
        e = np.sqrt((u / b) ** 2 + (v / a) ** 2)
        body = e < 1.0
        rim = body & (e > 0.8)
        dark[body] = np.maximum(dark[body], 0.35)
        dark[rim] = np.maximum(dark[rim], 0.5)
    signal = signal - dark
    signal = np.where(wall, signal - contrast * (signal - 0.12), signal)
    signal = ndi.gaussian_filter(signal, blur) + noise * rng.normal(0, 1, shape)
    image = np.clip(signal * 255.0, 0, 255).astype(np.uint8)
    # the truth: profiles without their walls, at least 50 px
    mask = np.where(wall, 0, pieces)
    ids, sizes = np.unique(mask[mask > 0], return_counts=True)
    relabel = np.zeros(n + 1, np.uint16)
    keep = ids[sizes >= 50]
    relabel[keep] = np.arange(1, len(keep) + 1)
    return image, relabel[mask]


def stems() -> list[str]:
    """Five training micrographs and five scored ones, each drawn from its own seed."""
    return [f"train{i:02d}" for i in range(N_TRAIN)] + [f"test{i:02d}" for i in range(N_TEST)]


@lru_cache(maxsize=16)
def _field(stem: str, variant: str = NAME) -> tuple[np.ndarray, np.ndarray]:
    return em_profiles((5000 if stem.startswith("train") else 6000) + int(stem[-2:]), **VARIANTS.get(variant, {}))


def read(stem: str, kind: str) -> np.ndarray:
    """The image or mask of one generated micrograph (``stem`` from :func:`stems`), drawn once per process."""
    return _field(stem)[0 if kind == "images" else 1]


#: Larger profiles with thinner walls: twice the sites' size (painted medians 102-158 px),
#: walls of 1.5-2.5 px (drawn 1 px wide on about half their length, 3 px on the rest), on 1024²
#: micrographs so that each holds about as many profiles; vesicles, mitochondria, blur and noise
#: as in the set. The automatic scale shrinks them 3-5x, to walls under a network pixel.
VARIANTS: dict[str, dict] = {
    NAME + "-large": {"shape": (1024, 1024), "median_diameter": 280.0, "membrane_width": (1.5, 2.5)},
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
