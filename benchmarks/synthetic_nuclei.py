"""A generated stand-in for small, packed, anisotropic 3D nuclei (none of the shared sets has them).

The shared 3D volume (cells3d) holds 20 large nuclei of about 30×50×50 voxels, sampled almost
isotropically. Light-sheet and confocal stacks of embryos and tissue more often hold hundreds of
nuclei of 7–15 voxels, packed against each other, with a z-step two to three times the pixel
size. This module draws such volumes from a seed, so that benchmarks can measure that case
without any data that could leak into a starting model: ellipsoids of random size, brightness
and texture, packed until they touch, a dim rim where two meet, blurred more along z than in the
plane (a confocal point-spread function), sampled every ``z_step`` pixels along z, with shot and
read noise. Masks are the exact ellipsoid partition at the same sampling.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

#: Name of the generated set in the benchmarks' ``--datasets`` lists.
NAME = "synthetic-nuclei-3d"


def packed_nuclei_3d(seed: int, shape: tuple[int, int, int] = (40, 160, 160), z_step: float = 2.0,
                     radius: tuple[float, float] = (6.0, 8.5), packing: float = 0.85,
                     attempts: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """(image uint16, mask uint16) of shape ``shape`` (Z, Y, X); voxels are ``z_step`` times as
    deep as wide. Nucleus radii are drawn in physical units (pixel widths) from ``radius``; two
    centres are at least ``packing`` times the sum of their radii apart, so neighbours touch."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    extent = np.array([nz * z_step, ny, nx], float)
    centres: list[np.ndarray] = []
    radii: list[np.ndarray] = []
    # placed centres and mean radii kept in growing arrays (the same draws as lists, far faster
    # for the larger volumes of benchmarks/segment_scaling.py)
    placed = np.empty((attempts, 3))
    mean_radius = np.empty(attempts)
    for _ in range(attempts):
        r = rng.uniform(*radius)
        c = rng.uniform(0, 1, 3) * extent
        n = len(centres)
        if n:
            d = np.linalg.norm(placed[:n] - c, axis=1)
            if np.any(d < packing * (mean_radius[:n] + r)):
                continue
        # ellipsoid axes (physical): a little flattened or elongated, random in-plane angle
        axes = r * np.array([rng.uniform(0.75, 1.05), rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15)])
        placed[n], mean_radius[n] = c, axes.mean()
        centres.append(c)
        radii.append(axes)
    zz, yy, xx = np.meshgrid((np.arange(nz) + 0.5) * z_step, np.arange(ny) + 0.5, np.arange(nx) + 0.5,
                             indexing="ij")
    best = np.full(shape, np.inf, np.float32)
    mask = np.zeros(shape, np.uint16)
    for i, (c, a) in enumerate(zip(centres, radii), start=1):
        angle = rng.uniform(0, np.pi)
        lo = np.maximum(0, np.floor((c - a.max()) / [z_step, 1, 1]).astype(int))
        hi = np.minimum(shape, np.ceil((c + a.max()) / [z_step, 1, 1]).astype(int) + 1)
        sl = tuple(slice(int(p), int(q)) for p, q in zip(lo, hi))
        dz, dy, dx = zz[sl] - c[0], yy[sl] - c[1], xx[sl] - c[2]
        u = np.cos(angle) * dy + np.sin(angle) * dx
        v = -np.sin(angle) * dy + np.cos(angle) * dx
        d = np.sqrt((dz / a[0]) ** 2 + (u / a[1]) ** 2 + (v / a[2]) ** 2).astype(np.float32)
        win = (d < 1.0) & (d < best[sl])
        best[sl][win] = d[win]
        mask[sl][win] = i
    # intensity: per-nucleus brightness, a rim that dims toward the surface, smooth texture
    brightness = rng.uniform(0.35, 1.0, len(centres) + 1).astype(np.float32)
    brightness[0] = 0.0
    rim = np.where(mask > 0, 1.0 - 0.45 * np.clip(best, 0, 1) ** 4, 0.0).astype(np.float32)
    texture = ndi.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), (0.7, 1.5, 1.5))
    texture /= texture.std() + 1e-6
    signal = brightness[mask] * rim * (1.0 + 0.15 * texture)
    signal = ndi.gaussian_filter(signal, (1.2 / z_step * 2.0, 1.0, 1.0)) + 0.08
    photons = 300.0
    image = rng.poisson(np.clip(signal, 0, None) * photons).astype(np.float32) + rng.normal(0, 3.0, shape)
    image = np.clip(image + 100.0, 0, 65535).astype(np.uint16)
    return image, mask


def stems() -> list[str]:
    """One training volume and one scored volume, drawn from separate seeds."""
    return ["train", "test"]


@lru_cache(maxsize=4)
def _volume(stem: str, variant: str = NAME) -> tuple[np.ndarray, np.ndarray]:
    return packed_nuclei_3d({"train": 101, "test": 202}[stem], **VARIANTS.get(variant, {}))


def read(stem: str, kind: str) -> np.ndarray:
    """The image or mask of one generated volume (``stem`` from :func:`stems`), drawn once per
    process."""
    return _volume(stem)[0 if kind == "images" else 1]


#: The same kind drawn at other samplings and sizes, to check that what was measured on the set
#: above carries over (nothing is tuned on these): a z-step of 4 (nuclei a median 3 planes deep,
#: 2–5), nuclei of about twice the width at a z-step of 3 (median 24 px across, 7 planes deep),
#: and wide nuclei at a z-step of 8 (2–5 planes deep, as in light-sheet stacks of embryos imaged
#: with a fine pixel and a coarse z-step; beyond the 4x that the voxel-size estimate and the
#: interpolation are capped at).
VARIANTS: dict[str, dict] = {
    NAME + "-z4": {"z_step": 4.0, "shape": (20, 160, 160)},
    NAME + "-large": {"z_step": 3.0, "radius": (11.0, 16.0), "shape": (30, 224, 224)},
    NAME + "-z8": {"z_step": 8.0, "radius": (14.0, 20.0), "shape": (12, 256, 256)},
}


class Variant:
    """One of :data:`VARIANTS`, read as :mod:`bench_data` reads a generated set."""

    def __init__(self, name: str):
        self.NAME = name

    @staticmethod
    def stems() -> list[str]:
        return stems()

    def read(self, stem: str, kind: str) -> np.ndarray:
        return _volume(stem, self.NAME)[0 if kind == "images" else 1]


#: The voxel size (Z, Y, X) the generated volumes are sampled at, as metadata would give it.
VOXEL_SIZE = (2.0, 1.0, 1.0)
