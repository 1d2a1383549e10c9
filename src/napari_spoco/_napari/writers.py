"""File ▸ Save Selected Layers… for Labels layers: the same TIFF as the CLI and the Export button
(uint16 or uint32 by id range, the layer's shape)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io import write_labels


def write_labels_tiff(path: str, data: Any, meta: dict) -> list[str]:
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        path = str(path) + ".tif"
    return [str(write_labels(path, np.asarray(data), overwrite=True))]
