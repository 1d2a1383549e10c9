"""The dtypes of label images, in one place.

A label image made by napari-spoco (a segmentation, a label TIFF, an empty result) takes the
smallest unsigned type that holds its largest id: uint16, uint32 beyond 65 535 ids, uint64
beyond 2**32 - 1, so that no id is ever truncated. A labels layer that ids are written into in
place (painted sparse labels, promoted instances, the live preview) is uint32 from the start,
so that it does not run out of ids while the user works.
"""

from __future__ import annotations

import numpy as np

#: Labels layers written into in place: new sparse labels, the sample's, the live preview.
EDITABLE_LABELS_DTYPE = np.dtype(np.uint32)


def label_dtype(max_id: int) -> np.dtype:
    """The dtype of a label image whose largest id is ``max_id``: uint16 while ids fit,
    uint32 beyond 65 535, uint64 beyond 2**32 - 1 (never truncated)."""
    max_id = int(max_id)
    return np.dtype(np.uint16 if max_id < 2**16 else np.uint32 if max_id < 2**32 else np.uint64)


def as_label_image(labels: np.ndarray) -> np.ndarray:
    """``labels`` (non-negative ids) in :func:`label_dtype` of its largest id."""
    labels = np.asarray(labels)
    return labels.astype(label_dtype(labels.max(initial=0)), copy=False)
