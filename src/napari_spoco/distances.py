"""Distances and the Gaussian kernel in embedding space, shared by the loss (losses.py) and the
clustering (clustering.py), so that both measure pixels the same way."""

from __future__ import annotations

import math

import torch


def sq_dist(a: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between rows of ``a`` (K, E) and columns of ``e`` (E, P)."""
    d2 = (a * a).sum(1, keepdim=True) - 2.0 * a @ e + (e * e).sum(0, keepdim=True)
    return d2.clamp_min(0.0)


def kernel_two_sigma_sq(delta_var: float) -> float:
    """2σ² of the Gaussian kernel whose value is 0.5 at distance δ_v: δ_v² / ln 2."""
    return delta_var**2 / math.log(2.0)
