"""A generated stand-in for colour images of plant rosettes (none of the shared sets has leaves).

The paper's headline benchmark is leaf segmentation in top-down colour photographs of
Arabidopsis rosettes (CVPPP): ten to twenty leaves per plant, 20–180 px long, radiating from
the centre, younger leaves on top of older ones, green on brown soil that is often about as
bright as the leaves, so that a grey image loses most of what separates plant from soil. The
shared sets are all grey microscopy. This module draws such images from a seed, so that
benchmarks can measure colour input, large touching objects and occlusion without any data
that could leak into a starting model:

* leaves are blades (an egg shape, widest a little beyond the middle) on a thin stalk from the
  rosette centre, placed by the golden angle, older leaves longer and further out; each leaf
  hides the older ones under it (the mask is what the camera sees);
* a plant has one green; its leaves differ from each other only a little (younger ones a
  little lighter), each lighter along its midrib and darker at its rim, with a faint shadow it
  casts on the leaves below: what separates two overlapping leaves is mostly their outline;
* soil is brown grain texture of about the leaves' brightness, with green specks of moss;
* mild blur and sensor noise; 8-bit RGB ``(Y, X, 3)``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

#: Name of the generated set in the benchmarks' ``--datasets`` lists.
NAME = "synthetic-leaves-rgb"
GOLDEN_ANGLE = np.deg2rad(137.5)
N_TRAIN, N_TEST = 30, 10


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    from skimage.color import hsv2rgb

    return hsv2rgb(np.stack(np.broadcast_arrays(h, s, v), axis=-1))


def _soil(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Brown grain texture (float RGB in 0–1) with a few green specks of moss."""
    grains = ndi.gaussian_filter(rng.normal(0, 1, shape), 1.2)
    clods = ndi.gaussian_filter(rng.normal(0, 1, shape), 8.0)
    grains /= grains.std() + 1e-6
    clods /= clods.std() + 1e-6
    value = np.clip(rng.uniform(0.32, 0.48) + 0.07 * grains + 0.06 * clods, 0.05, 0.95)
    hue = rng.uniform(0.05, 0.10) + 0.01 * clods
    sat = np.clip(rng.uniform(0.30, 0.50) + 0.05 * grains, 0, 1)
    rgb = _hsv_to_rgb(hue, sat, value)
    moss = ndi.gaussian_filter(rng.normal(0, 1, shape), 2.0)
    moss = moss > np.quantile(moss, 1 - rng.uniform(0.0, 0.03))
    rgb[moss] = _hsv_to_rgb(np.full(moss.sum(), 0.25), np.full(moss.sum(), 0.5), value[moss] * 0.9)
    return rgb


def rosette(seed: int, shape: tuple[int, int] = (384, 384), count: tuple[int, int] = (10, 21),
            youngest: float = 0.30, cues: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (Y, X, 3), mask uint16 (Y, X)) of one plant seen from above: ``count`` leaves
    (drawn), each ``youngest + (1 - youngest) * age ** 0.8`` times the longest (age 1 for the oldest,
    1/n for the youngest), ``cues`` the strength of the
    shading (rim, midrib, shadow) that tells overlapping leaves apart besides their outlines."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    centre = np.array([ny, nx], float) / 2 + rng.uniform(-0.08, 0.08, 2) * [ny, nx]
    reach = rng.uniform(0.30, 0.46) * min(shape)  # longest leaf, stalk included
    n = int(rng.integers(*count))
    start = rng.uniform(0, 2 * np.pi)
    # one green per plant; its leaves differ only a little (younger ones lighter)
    plant_hue, plant_sat, plant_value = rng.uniform(0.22, 0.30), rng.uniform(0.45, 0.65), rng.uniform(0.40, 0.55)
    image = _soil(rng, shape)
    mask = np.zeros(shape, np.uint16)
    for i in range(n):  # the oldest (longest) first; each younger leaf covers the ones below it
        age = 1.0 - i / n
        length = reach * (youngest + (1 - youngest) * age ** 0.8) * rng.uniform(0.85, 1.1)
        angle = start + i * GOLDEN_ANGLE + rng.normal(0, 0.12)
        stalk = length * rng.uniform(0.25, 0.40)
        blade = length - stalk
        half_width = blade * rng.uniform(0.35, 0.50)
        dy, dx = yy - centre[0], xx - centre[1]
        along = dy * np.sin(angle) + dx * np.cos(angle)  # distance along the leaf's axis
        across = -dy * np.cos(angle) + dx * np.sin(angle)
        t = (along - stalk) / blade  # 0 at the blade's base, 1 at its tip
        # egg-shaped blade: widest at t = 0.55, rounded at both ends
        profile = np.sqrt(np.clip(t * (1 - t), 0, None)) * 2 * (1 + 0.25 * (t - 0.55))
        in_blade = (t >= 0) & (t <= 1) & (np.abs(across) <= half_width * profile)
        stalk_width = max(1.5, 0.06 * half_width + 1.0)
        in_stalk = (along >= 0) & (along <= stalk + 0.1 * blade) & (np.abs(across) <= stalk_width)
        leaf = in_blade | in_stalk
        if not leaf.any():
            continue
        # the shadow this leaf casts on what is below it, then the leaf itself
        shadow = ndi.binary_dilation(leaf, iterations=3) & ~leaf
        image[shadow] *= 1 - 0.15 * cues
        hue = plant_hue + rng.normal(0, 0.008)
        sat = np.clip(plant_sat + rng.normal(0, 0.03), 0, 1)
        value = plant_value * (1.0 + 0.10 * (1 - age)) * rng.uniform(0.95, 1.05)
        rim = np.clip(1 - np.abs(across) / np.maximum(half_width * profile, 1), 0, 1)
        midrib = np.exp(-(across / max(1.0, 0.05 * half_width)) ** 2) * (t > 0) * (t < 0.9)
        shade = value * (1 - 0.2 * cues + cues * 0.25 * rim ** 0.5 + cues * 0.15 * midrib)
        leaf_rgb = _hsv_to_rgb(np.full(leaf.sum(), hue), np.full(leaf.sum(), sat), np.clip(shade[leaf], 0, 1))
        image[leaf] = leaf_rgb
        mask[leaf] = i + 1
    image = ndi.gaussian_filter(image, (0.7, 0.7, 0))
    image += rng.normal(0, 0.02, image.shape)
    image = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    # leaves hidden entirely by younger ones are not in the mask: number the visible ones 1..N
    ids = np.unique(mask[mask > 0])
    relabel = np.zeros(int(mask.max()) + 1, np.uint16)
    relabel[ids] = np.arange(1, len(ids) + 1)
    return image, relabel[mask]


def stems() -> list[str]:
    """Thirty training plants and ten scored ones, each drawn from its own seed."""
    return [f"train{i:02d}" for i in range(N_TRAIN)] + [f"test{i:02d}" for i in range(N_TEST)]


@lru_cache(maxsize=64)
def _plant(stem: str, variant: str = NAME) -> tuple[np.ndarray, np.ndarray]:
    index = int(stem[-2:])
    return rosette((1000 if stem.startswith("train") else 2000) + index, **VARIANTS.get(variant, {}))


def read(stem: str, kind: str) -> np.ndarray:
    """The image or mask of one generated plant (``stem`` from :func:`stems`), drawn once per process."""
    return _plant(stem)[0 if kind == "images" else 1]


#: The same kind made harder, to check that what was measured on the set above carries over
#: (nothing is tuned on it): rosettes of 14-26 leaves whose youngest, at the centre, are a fifth to a
#: seventh of the oldest's length (as in photographs of older plants, where leaves span 5-150 px),
#: and less shading to tell overlapping leaves apart.
VARIANTS: dict[str, dict] = {
    NAME + "-hard": {"count": (14, 27), "youngest": 0.08, "cues": 0.4},
}


class Variant:
    """One of :data:`VARIANTS`, read as :mod:`bench_data` reads a generated set."""

    def __init__(self, name: str):
        self.NAME = name

    @staticmethod
    def stems() -> list[str]:
        return stems()

    def read(self, stem: str, kind: str) -> np.ndarray:
        return _plant(stem, self.NAME)[0 if kind == "images" else 1]
