"""Augmentations: geometry shared by image and labels, intensity drawn per view.

The two views of the consistency term must keep geometry identical (the paper compares two
augmented views of one patch pixel by pixel; docs/method.md, term 6), so geometry is applied
once, before the views are split, and only intensity changes differ between them.
"""

from __future__ import annotations

import numpy as np
import torch


def random_geometry(
    rng: np.random.Generator, *arrays: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Random flips on every axis and a random multiple of 90° in the last two axes.

    The same transform is applied to all ``arrays`` (one sample's image, objects, background);
    axes are counted from the end, so an image may carry a leading channel axis that the last
    array (a label patch) does not.
    """
    ndim = arrays[-1].ndim
    out = list(arrays)
    for axis in range(-ndim, 0):
        if rng.random() < 0.5:
            out = [np.flip(a, axis) for a in out]
    if out[0].shape[-1] == out[0].shape[-2]:
        k = int(rng.integers(4))
        if k:
            out = [np.rot90(a, k, axes=(-2, -1)) for a in out]
    return tuple(np.ascontiguousarray(a) for a in out)


def random_intensity(x: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Per-sample contrast/brightness jitter, Gaussian noise and signal-dependent noise.

    ``x`` is a normalised batch ``(B, C, *spatial)``. The noise models the reference's
    Gaussian + Poisson noise on normalised intensities.
    """
    b = x.shape[0]
    shape = (b,) + (1,) * (x.ndim - 1)

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=generator, device="cpu").to(x.device)

    contrast = torch.exp(u(-0.25, 0.25) * strength)
    brightness = u(-0.15, 0.15) * strength
    mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    y = (x - mean) * contrast + mean + brightness
    sigma = u(0.0, 0.08) * strength
    y = y + sigma * torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
    poisson = u(0.0, 0.05) * strength
    y = y + poisson * torch.sqrt(x.clamp_min(0) + 1e-3) * torch.randn(
        x.shape, generator=generator, device="cpu"
    ).to(x.device)
    return y
