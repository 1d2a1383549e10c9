"""The live preview during training: where the user is looking (GUI thread), and the preview
labels layer that shows what the network being trained makes of it."""

from __future__ import annotations

import numpy as np
from napari.layers import Labels

from ..label_dtypes import EDITABLE_LABELS_DTYPE
from ..model import ModelConfig, SpocoModel
from ..segmentation import preview_box
from .layers import RESULT_KEY, find_layer, image_data, spatial_shape
from .workers import PreviewResult, PreviewTarget

PREVIEW_LAYER = "SPOCO preview"
PREVIEW_SIZE_2D = (320, 320)
PREVIEW_SIZE_3D = (32, 160, 160)


def preview_target(viewer, image, series: bool, model: SpocoModel | None) -> PreviewTarget | None:
    """The box around the centre of the view, in ``image``'s data coordinates (GUI thread)."""
    try:
        point = list(viewer.dims.point)
        displayed = list(viewer.dims.displayed)
        scene = getattr(viewer, "scene", None)  # napari >= 0.9 moved the camera there
        camera = scene.camera if scene is not None else viewer.camera
        center = list(camera.center)[-len(displayed):]
        for axis, c in zip(displayed, center):
            point[axis] = c
        data_point = np.asarray(image.world_to_data(point))[-len(spatial_shape(image)):]
    except Exception:  # noqa: BLE001 - a preview is a convenience, never an error
        return None
    shape = spatial_shape(image)
    data = image_data(image)
    div = (model.config if model else ModelConfig()).size_divisor
    if len(shape) == 3 and series:
        t = int(np.clip(round(data_point[0]), 0, shape[0] - 1))
        box = preview_box(shape[1:], data_point[1:], PREVIEW_SIZE_2D, div)
        origin = (t,) + tuple(s.start for s in box)
        return PreviewTarget(f"{image.name}[{t}]", data[t], box, origin, image.name, image.unique_id)
    size = PREVIEW_SIZE_2D if len(shape) == 2 else PREVIEW_SIZE_3D
    box = preview_box(shape, data_point, size, div)
    return PreviewTarget(image.name, data, box, tuple(s.start for s in box), image.name, image.unique_id)


def empty_preview(target: PreviewTarget) -> PreviewResult:
    """Zeros of the target's size: the preview layer is made when Train is pressed, since
    creating a layer costs a few hundred ms of GUI time, which mid-training would be a stall."""
    shape = tuple(s.stop - s.start for s in target.box)  # later previews go into it in place
    return PreviewResult(np.zeros(shape, EDITABLE_LABELS_DTYPE), target, 0, 0.0)


def show_preview(viewer, result: PreviewResult, keep_active=None) -> bool:
    """Put ``result`` into the preview layer, over its image; False when the image was removed
    while the preview was made (nowhere to show it). A new layer does not take the selection
    from ``keep_active`` (the layer the user paints)."""
    image = find_layer(viewer, result.target.layer_id, result.target.layer)
    if image is None:
        return False
    labels = result.labels
    if labels.ndim < len(result.target.origin):  # one frame of a 2D+t stack
        labels = labels[None]
    scale = np.asarray(image.scale[-labels.ndim:])
    translate = np.asarray(image.translate[-labels.ndim:]) + scale * np.asarray(result.target.origin)
    layer = viewer.layers[PREVIEW_LAYER] if PREVIEW_LAYER in viewer.layers else None
    if layer is not None and (not isinstance(layer, Labels) or layer.data.ndim != labels.ndim):
        if isinstance(layer, Labels):
            viewer.layers.remove(layer)
        layer = None
    if layer is None:
        layer = viewer.add_labels(labels, name=PREVIEW_LAYER, scale=scale, translate=translate, opacity=0.5,
                                  metadata={RESULT_KEY: image.name})
        layer.contour = 1
        if keep_active is not None:
            viewer.layers.selection.active = keep_active
        return True
    # Each change makes napari redo the layer, tens of ms of GUI time on a 2-core CPU: change
    # only what changed, and same-shaped labels in place (half the cost again).
    if not np.array_equal(layer.scale, scale):
        layer.scale = scale
    if not np.array_equal(layer.translate, translate):
        layer.translate = translate
    if isinstance(layer.data, np.ndarray) and layer.data.shape == labels.shape:
        layer.data[...] = labels
        layer.refresh()
    else:
        layer.data = labels
    return True
