"""Reading napari layers into the arrays the core expects, with messages a user can act on.

Kept apart from the widget so that the rules (shapes, RGB, 2D+t, linked label layers) live in
one place and are tested on their own.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from ..data import count_objects
from ..errors import SpocoError
from ..out_of_core import STORE_KEY, is_lazy, too_large_for_memory

LINK_KEY = "spoco_image"  # Labels.metadata[LINK_KEY] = name of the image the labels belong to
LINK_ID_KEY = "spoco_image_id"  # and, once known, that image layer's unique_id (survives renaming)
RESULT_KEY = "spoco_result_of"  # Labels.metadata[RESULT_KEY] = name of the image a segmentation (or preview) is of
WRITTEN_KEY = "spoco_written"  # Labels.metadata[WRITTEN_KEY] = fingerprint of what Segment last wrote into it
EDITED_KEY = "spoco_edited"  # Labels.metadata[EDITED_KEY] = True once painted on since Segment wrote it
WATCHED_KEY = "spoco_watched"  # Labels.metadata[WATCHED_KEY] = unique_id of the layer whose edits are watched


def watch_edits(layer) -> None:
    """Mark a result layer edited (``metadata[EDITED_KEY]``) whenever the user paints, fills or
    erases on it: the one sign of an edit on a lazy (block-wise) result, which has no cheap
    fingerprint. Segment clears the mark when it writes the layer again. Connecting twice is
    harmless (napari's emitter keeps one connection per callback). The layer's own id is recorded
    (``WATCHED_KEY``): a duplicate (napari copies the metadata, not the connection) is not watched."""
    layer.events.paint.connect(_mark_edited)
    layer.metadata[WATCHED_KEY] = layer.unique_id


def is_watched(layer) -> bool:
    """Whether Segment watches this very layer's edits (not a duplicate of one it watched)."""
    return layer.metadata.get(WATCHED_KEY) == layer.unique_id


def is_edited(layer) -> bool:
    """Painted on since Segment wrote it, or a stroke in progress: napari reports a drag only when
    the mouse is released, and keeps its pixels staged meanwhile (``_staged_history``, private)."""
    return bool(layer.metadata.get(EDITED_KEY)) or bool(getattr(layer, "_staged_history", None))


def _mark_edited(event) -> None:
    source = getattr(event, "source", None)
    if source is not None:
        source.metadata[EDITED_KEY] = True


def fingerprint(data) -> str | None:
    """Shape, type and a CRC-32 of an in-memory label array (None for lazy data): tells whether
    the user edited a result layer since Segment wrote it (one pass, ~10 ms for 2048² uint32)."""
    if not isinstance(data, np.ndarray):
        return None
    flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return f"{data.shape}:{data.dtype.str}:{zlib.crc32(flat):08x}"


def is_segmentation(layer) -> bool:
    """A Labels layer that Segment or the live preview made (not one the user painted)."""
    return bool(layer.metadata.get(RESULT_KEY))


def spatial_shape(layer) -> tuple[int, ...]:
    """Shape of an image layer without its RGB(A) channel axis."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = tuple(data.shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def image_data(layer) -> np.ndarray:
    """The full-resolution array of an image layer (multiscale: level 0)."""
    if getattr(layer, "multiscale", False):
        return layer.data[0]
    return layer.data


def check_axes(layer) -> None:
    """A SpocoError, with what to do, for an image layer of other than 2 or 3 spatial axes: an
    OME-Zarr opened in napari keeps its size-1 time and channel axes (5 axes for one 2D field)."""
    shape = spatial_shape(layer)
    if len(shape) in (2, 3):
        return
    hint = ""
    kept = [i for i, n in enumerate(shape) if n != 1]
    if len(shape) > 3 and len(kept) in (2, 3):
        data = f"viewer.layers['{layer.name}'].data" + ("[0]" if getattr(layer, "multiscale", False) else "")
        index = ", ".join("0" if n == 1 else ":" for n in shape)
        hint = (" Its size-1 axes (an OME-Zarr's time or channel axis) can be dropped from napari's console: "
                f"viewer.add_image({data}[{index}], scale=[viewer.layers['{layer.name}'].scale[i] for i in {kept}]).")
    raise SpocoError(f"'{layer.name}' has {len(shape)} axes ({' × '.join(map(str, shape))}); SPOCO reads 2D images, "
                     f"3D volumes and 2D+t stacks (2 or 3 axes, and a colour axis for RGB).{hint}")


def is_lazy_layer(layer) -> bool:
    """Its data is read on demand (multiscale, dask, zarr), not held in memory as numpy."""
    return bool(getattr(layer, "multiscale", False) or is_lazy(layer.data))


def refuse_if_too_large(layer, what: str) -> None:
    """A SpocoError when ``what`` would load a lazy layer larger than memory whole."""
    shape = spatial_shape(layer)
    if is_lazy_layer(layer) and too_large_for_memory(shape):
        raise SpocoError(
            f"'{layer.name}' ({' × '.join(map(str, shape))} pixels) is read from disk as needed and is too "
            f"large to load into memory for {what}. Do that on a part of the image that fits in memory "
            "(a cropped copy as a new image layer, e.g. from napari's console: "
            f"viewer.add_image(viewer.layers['{layer.name}'].data[..., :2048, :2048]), and its labels painted "
            "there); "
            "Segment and Export work on the whole image block by block."
        )


def referenced_stores(viewer) -> set[str]:
    """The block-wise result stores the viewer's layers read (``metadata[STORE_KEY]``)."""
    return {str(layer.metadata[STORE_KEY]) for layer in viewer.layers if layer.metadata.get(STORE_KEY)}


def looks_like_time_series(layer) -> bool:
    """A 3D image whose first axis is called t/time/frame is a 2D+t stack, not a volume."""
    labels = getattr(layer, "axis_labels", None) or ()
    if len(spatial_shape(layer)) != 3 or not labels:
        return False
    first = str(labels[0]).lower()
    return first in ("t", "time", "frame", "frames")


@dataclass
class TrainingSet:
    images: list[np.ndarray]
    labels: list[np.ndarray]
    names: list[str]
    background_label: int | None = None

    @property
    def ndim(self) -> int:
        """Spatial dimensionality as the model sees it (RGB counts as 2D)."""
        from ..data import is_rgb

        return 2 if is_rgb(self.images[0]) else self.images[0].ndim

    @property
    def n_objects(self) -> int:
        # the painted-background value is not an object (it used to be counted as one)
        return sum(count_objects(lab, self.background_label) for lab in self.labels)


def training_set(pairs, series: bool, background_label: int | None) -> TrainingSet:
    """Copy (image layer, labels layer) pairs into training arrays.

    Labels are copied so that the user can keep painting while the worker trains. With
    ``series``, 3D stacks become one 2D image per frame that has any painted pixel.
    """
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    names: list[str] = []
    for image_layer, labels_layer in pairs:
        refuse_if_too_large(image_layer, "training")
        shape = spatial_shape(image_layer)
        lab = np.asarray(labels_layer.data)
        if lab.shape != shape:
            raise SpocoError(
                f"'{labels_layer.name}' has shape {lab.shape} but '{image_layer.name}' has "
                f"{shape}; use 'New sparse labels' to make a labels layer that fits the image."
            )
        img = image_data(image_layer)
        if series and len(shape) == 3:
            painted = np.flatnonzero((lab > 0).reshape(lab.shape[0], -1).any(axis=1))
            for t in painted:
                images.append(np.asarray(img[t]))
                labels.append(np.array(lab[t]))
                names.append(f"{image_layer.name}[t={t}]")
        else:
            images.append(np.asarray(img))
            labels.append(np.array(lab))
            names.append(image_layer.name)
    if not images:
        raise SpocoError("Nothing is painted yet: paint a few objects in the sparse-labels layer.")
    objects = sum(count_objects(lab, background_label) for lab in labels)
    if objects < 2:
        raise SpocoError(
            f"{objects} object painted: paint at least two objects (each with its own label "
            "id, each painted completely) so that SPOCO can learn to tell objects apart."
        )
    return TrainingSet(images, labels, names, background_label)


def linked_image(viewer, labels):
    """The image layer a sparse-labels layer was made for (``metadata[LINK_KEY]``), or None: by
    the image's ``unique_id`` once it is known, so that renaming the image keeps the pair and
    another image opened later under the same name is not taken for it; by name before (the
    sample's layers are linked by name), and then the id is pinned."""
    meta = labels.metadata
    if meta.get(LINK_ID_KEY) is not None:
        image = find_layer(viewer, meta[LINK_ID_KEY])
        if image is not None and meta.get(LINK_KEY) != image.name:
            meta[LINK_KEY] = image.name  # renamed: the name follows
        return image
    name = meta.get(LINK_KEY)
    if not name or name not in viewer.layers:
        return None
    image = viewer.layers[name]
    if image.__class__.__name__ != "Image":
        return None
    meta[LINK_ID_KEY] = image.unique_id
    return image


def find_layer(viewer, layer_id, name: str = ""):
    """The viewer's layer with this ``unique_id`` (kept when the layer is renamed; napari hands
    plugins a new proxy object at every access, so identity says nothing), or, without an id,
    the layer of that name; None when it is no longer in the viewer."""
    if layer_id is None:
        return viewer.layers[name] if name in viewer.layers else None
    return next((layer for layer in viewer.layers if layer.unique_id == layer_id), None)
