"""File ▸ Open Sample ▸ SPOCO sparse instance segmentation: the shipped BBBC039 nuclei crops (CC0), no download."""

from __future__ import annotations

from ..label_dtypes import EDITABLE_LABELS_DTYPE
from ..sample import load_sample
from .layers import LINK_KEY


def sparse_nuclei() -> list[tuple]:
    """Nuclei image with a few nuclei already painted: press Train right away."""
    s = load_sample()
    return [
        (s.train_image, {"name": "nuclei"}, "image"),
        (s.train_sparse.astype(EDITABLE_LABELS_DTYPE), {"name": "nuclei sparse labels", "metadata": {LINK_KEY: "nuclei"}}, "labels"),
    ]


def heldout_nuclei() -> list[tuple]:
    """A second crop with its dense ground truth, for Segment and Evaluate."""
    s = load_sample()
    return [
        (s.test_image, {"name": "nuclei (held out)"}, "image"),
        (s.test_truth, {"name": "nuclei (held out) ground truth", "visible": False}, "labels"),
    ]
