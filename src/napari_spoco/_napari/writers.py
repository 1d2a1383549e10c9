"""File ▸ Save Selected Layers… for Labels layers: the same TIFF as the CLI and the Export button
(uint16 or uint32 by id range, the layer's shape), or, with a ``.zarr`` name, a zarr store
written chunk by chunk (for lazy layers larger than memory, such as block-wise results)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpocoError
from ..io import write_labels
from ..lazy_io import is_zarr
from ..out_of_core import STORE_KEY, copy_labels, is_lazy, recover_interrupted_copy, too_large_for_memory


def _level0(data: Any, meta: dict) -> Any:
    return data[0] if meta.get("multiscale") else data


def write_labels_tiff(path: str, data: Any, meta: dict) -> list[str]:
    data = _level0(data, meta)
    if is_lazy(data) and too_large_for_memory(data.shape):
        raise SpocoError(f"This labels layer ({' × '.join(map(str, data.shape))} pixels) is read from disk as needed "
                         "and is too large for one TIFF in memory; save it with a .zarr name instead.")
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        path = str(path) + ".tif"
    return [str(write_labels(path, np.asarray(data), overwrite=True))]


def zarr_target(path: str | Path, sources: set[str]) -> Path:
    """``path`` with a ``.zarr`` suffix; refused when it is, or holds, a store or file that a
    layer reads (``sources``), or a folder that is not a zarr store (it would be deleted)."""
    target = Path(path)
    if target.suffix.lower() != ".zarr":
        target = target.with_name(target.name + ".zarr")
    resolved = target.resolve()
    for source in sources:
        src = Path(source).resolve()
        if src == resolved or src.is_relative_to(resolved) or resolved.is_relative_to(src):
            raise SpocoError(f"{target} is (or holds) {source}, which a layer reads; choose another name.")
    if target.is_dir() and not is_zarr(target):
        raise SpocoError(f"{target} is a folder that is not a zarr store; choose another name.")
    return target


def write_labels_zarr(path: str, data: Any, meta: dict) -> list[str]:
    store = (meta.get("metadata") or {}).get(STORE_KEY)
    target = zarr_target(path, {store} if store else set())
    back = recover_interrupted_copy(target) is not None  # an export that died left the store hidden
    if target.exists():  # a folder: never deleted unasked (the Export button asks)
        raise SpocoError(("An earlier export to this name was interrupted; its previous store was put back. "
                          if back else "") + f"{target} exists already; choose another name, or use the SPOCO "
                         "panel's Export, which asks before replacing it.")
    return [str(copy_labels(_level0(data, meta), target))]
