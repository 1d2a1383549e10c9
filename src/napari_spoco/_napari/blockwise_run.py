"""4 · Segment, block by block: images larger than memory.

A multiscale layer (its full-resolution level), a dask- or zarr-backed layer, or a numpy image
above ``out_of_core.MAX_IN_MEMORY_PIXELS`` is segmented by ``blockwise.segment_blockwise`` in a
napari thread worker, into a new zarr store in the session's folder (``state.stores``). Only
regions of the image are read. The bar counts blocks; Stop (and Cancel in napari's activity
dock) ends the run after the current block and the partial store is deleted. The result is a
lazy Labels layer (dask over the zarr store; one strided view per level for a multiscale
image) with the image's scale and translate; Export writes it as zarr.
"""

from __future__ import annotations

from napari.layers import Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Signal

from ..lazy_io import remove_store
from ..out_of_core import STORE_KEY, Cancelled, lazy_levels, step_count, voxel_note, voxel_size_from_scale
from ..precision import INFERENCE_PRECISION
from . import workers
from .dialogs import error_message
from .layers import (
    EDITED_KEY,
    RESULT_KEY,
    find_layer,
    image_data,
    is_edited,
    is_watched,
    referenced_stores,
    spatial_shape,
    watch_edits,
)
from .state import Job

RESULT_SUFFIX = " instances"
NO_SUGGESTIONS = ("Suggest next ranks objects by their embeddings, which a block-wise segmentation does not keep: "
                  "segment a part of the image that fits in memory (a cropped layer) for suggestions.")


class BlockwiseRun(QObject):
    """Runs one block-wise segmentation for the Segment panel (its bar, label, Suggest row)."""

    progressed = Signal(int, int)  # emitted from the worker thread; handled on the GUI thread

    def __init__(self, panel) -> None:
        super().__init__()  # no Qt parent: it outlives the panel while a worker may still emit
        self.panel, self.state, self.viewer = panel, panel.state, panel.state.viewer
        self.block_shape: tuple[int, ...] | None = None  # None: planned (blockwise.plan_core_shape)
        self.job: workers.BlockwiseJob | None = None
        self.activity: workers.Activity | None = None
        self._target = None  # (image id, image name, level shapes or None, note)
        self.progressed.connect(self._on_progress)

    @property
    def running(self) -> bool:
        return self.job is not None

    def start(self, image, model, config, precision: str = INFERENCE_PRECISION, tta: bool = True) -> None:
        shape = spatial_shape(image)
        try:
            voxel = voxel_size_from_scale(image.scale, len(shape))
            note = voxel_note(voxel, model)
            total = step_count(shape, self.block_shape)
            out = self.state.stores.new_path(image.name)  # the temporary folder may be unwritable
        except Exception as exc:  # noqa: BLE001
            show_error(error_message(exc, "Segmentation"))
            return
        self.state.stores.hold(out)  # not swept while it is being written
        self.job = workers.BlockwiseJob(model=model, image=image_data(image), out=out, config=config,
                                        block_shape=self.block_shape, voxel_size=voxel, progress=self.progressed.emit,
                                        precision=precision, tta=tta)
        rgb = getattr(image, "rgb", False)  # the levels' colour axis is not spatial
        levels = [tuple(level.shape)[: -1 if rgb else None] for level in image.data] if image.multiscale else None
        self._target = (image.unique_id, image.name, levels, f", {note}" if note else "")
        self.panel.segment_label.setText(f"Segmenting '{image.name}' block by block: 0/{total} steps"
                                         f"{self._target[3]}…")
        bar = self.panel.busy_bar
        bar.setRange(0, total)
        bar.setValue(0)
        bar.setVisible(True)
        self.state.closing.stop = self.job.stop  # closing the panel or the viewer stops it
        self.state.job.start(Job.SEGMENT)
        self.activity = workers.Activity(f"SPOCO segmenting '{image.name}' block by block", total,
                                         on_cancel=self.stop, widget=self.panel)
        workers.launch(workers.blockwise_job, self.job, on_return=self._on_done, on_error=self._on_error,
                       on_finish=self._on_finish, sync=self.state.sync)

    def stop(self) -> None:
        if self.job is not None and not self.job.stop.is_set():
            self.job.stop.set()
            self.panel.segment_label.setText(self.panel.segment_label.text() + " — stopping after this block…")

    def _on_progress(self, done: int, total: int) -> None:
        if self.state.closing.closed or self.job is None:
            return
        self.panel.busy_bar.setRange(0, total)
        self.panel.busy_bar.setValue(done)
        if not self.job.stop.is_set():
            _, name, _, note = self._target
            self.panel.segment_label.setText(f"Segmenting '{name}' block by block: {done}/{total} steps{note}…")
        if self.activity is not None:
            self.activity.to(done)  # last: napari's dock turns the event loop as it redraws

    def _on_done(self, result) -> None:
        image_id, launched_name, levels, note = self._target
        image = None if self.state.closing.closed else find_layer(self.viewer, image_id)
        if image is None:
            remove_store(result.path)  # nothing will read it
            if not self.state.closing.closed:
                show_warning(f"'{launched_name}' was removed while it was being segmented; its segmentation "
                             "was not added.")
                self.panel.segment_label.setText(f"'{launched_name}' was removed; nothing was added.")
            return
        layer = self._result_layer(image, lazy_levels(result.labels, levels), result.shape)
        layer.metadata[STORE_KEY] = str(result.path)
        layer.metadata[RESULT_KEY] = image.name
        layer.metadata[EDITED_KEY] = False  # what it shows now is what this run wrote
        self.state.stores.release(result.path)
        self.state.stores.sweep(referenced_stores(self.viewer))  # results no layer reads any more
        text = (f"{result.objects} instances in {result.blocks} blocks, {result.seconds:.0f} s (block-wise{note}) "
                f"→ layer '{layer.name}', read from {result.path}.")
        if result.failed:
            failed = list(result.failed.items())
            listed = "; ".join(f"{core}: {why}" for core, why in failed[:5]) + (
                f"; and {len(failed) - 5} more" if len(failed) > 5 else "")
            warning = f"{len(failed)} parts failed and are left empty: {listed}"
            text += " " + warning
            show_warning(warning)
        self.panel.segment_label.setText(text)
        self.panel.suggest_row.set_result(layer, None, NO_SUGGESTIONS)
        self.panel.segmented.emit(layer.name)

    def _result_layer(self, image, data, shape) -> Labels:
        """The layer a block-wise result of ``image`` goes to: an earlier block-wise result of it
        that Segment made and watches (its '… instances' layer first, then the topmost numbered
        one) of this shape, neither the chosen sparse labels nor painted on since it was
        segmented, gets the new data; else a new layer. An in-memory result (maybe corrected), a
        duplicate or renamed copy the user keeps, and the store an edited or chosen layer reads are
        never replaced. A multiscale result cannot take new data in place: the one it would reuse
        is removed and the new layer added (so results do not pile up)."""
        name = image.name + RESULT_SUFFIX
        multiscale = isinstance(data, list)
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        earlier = [layer for layer in reversed(list(self.viewer.layers)) if layer.name != name
                   and layer.metadata.get(RESULT_KEY) == image.name]
        chosen = self.panel.data.labels
        kept = ""
        for layer in ([existing] if existing is not None else []) + earlier:
            if not (isinstance(layer, Labels) and layer.metadata.get(STORE_KEY) and is_watched(layer)
                    and spatial_shape(layer) == shape):
                continue
            if chosen is not None and chosen.name == layer.name:  # napari hands out proxies: compare names
                kept = kept or (layer is existing and "is the chosen sparse-labels layer")
            elif is_edited(layer):
                kept = kept or (layer is existing and "was edited since it was segmented")
            elif not multiscale and not layer.multiscale:
                layer.data = data
                watch_edits(layer)
                return layer
            else:
                self.viewer.layers.remove(layer)
                break
        if kept:  # its store stays: the layer reads it
            show_info(f"'{name}' {kept}: it is kept as it is, and this segmentation goes to a new layer.")
        active = self.viewer.layers.selection.active
        nd = len(shape)
        layer = self.viewer.add_labels(data, name=name, multiscale=multiscale, scale=image.scale[-nd:],
                                       translate=image.translate[-nd:], metadata={RESULT_KEY: image.name})
        watch_edits(layer)
        if active is not None:  # keep the user on the layer they are painting
            self.viewer.layers.selection.active = active
        return layer

    def _on_error(self, exc: BaseException) -> None:
        if self.job is not None:
            remove_store(self.job.out)  # the run removes it; a failure before that leaves nothing either
        if self.state.closing.closed:
            return
        if isinstance(exc, Cancelled):
            show_info(f"Segmentation stopped ({exc}); nothing was added and its partial result was deleted.")
            self.panel.segment_label.setText("Segmentation stopped; nothing was added.")
            return
        show_error(error_message(exc, "Segmentation"))
        self.panel.segment_label.setText("Segmentation failed; see the notification.")

    def _on_finish(self) -> None:
        if self.activity is not None:
            self.activity.close()  # also when the panel is gone: napari's dock would keep the bar
        if self.job is not None:
            self.state.stores.release(self.job.out)
        self.job = None
        if self.state.closing.closed:
            return
        self.panel.busy_bar.setVisible(False)
        self.panel.busy_bar.setRange(0, 0)
        self.state.closing.stop = None
        self.state.job.finish()
