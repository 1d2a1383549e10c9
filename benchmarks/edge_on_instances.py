"""The object edge calibrated three ways, side by side on saved models.

``train`` ends by measuring how far the objects must grow to fit the painted ones (edges.py):

* ``foreground`` (until 2026-12-04 noon): the object of a painted object is the connected
  thresholded foreground (probability >= 0.5) overlapping it most, in windows of its own: each
  sampled painted object with the network's context around it, joined where that is no larger;
* ``instances`` (c69bb0c): the instance that ``segment``'s clustering returns, in those windows;
* ``shared`` (now): that instance, in the windows the layout is measured on
  (layout.segment_windows): one network pass per window for both measurements, and at most
  layout.MAX_PIXELS pixels however large the images or the scale.

This script takes the models that ``sparse_accuracy.py --save-dir DIR`` saved, recomputes the
calibrations from the same painted labels (``data.painted(fraction, seed)``, at the model's
scale), times the end of training each way (layout + edge), and where the growths differ
segments the held-out images with each, side by side.

Usage:  python benchmarks/edge_on_instances.py --models DIR [DIR ...] [--datasets ...] [--seeds 0 1 2]
            [--threads 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import sparse_accuracy as sa  # noqa: E402

from napari_spoco import evaluate, segment  # noqa: E402
from napari_spoco.data import prepare_training_data  # noqa: E402
from napari_spoco.edges import MAX_EXPAND, best_growth, edge_expand, score_members  # noqa: E402
from napari_spoco.layout import measure_layout, segment_windows  # noqa: E402

#: Painted objects the calibration sampled until now (edges.MAX_OBJECTS was 48).
OWN_MAX_OBJECTS = 48


def own_windows(model, data: list, seed: int = 0) -> tuple[int, list[tuple]]:
    """The windows the edge was measured in until now: ``OWN_MAX_OBJECTS`` sampled painted objects,
    each with the network's context around it, joined per image into one window where that holds
    no more pixels than their crops together. Returns the number of objects and
    ``(training image, window, [(id, crop), ...])`` triples."""
    objects = [(k, i, box) for k, d in enumerate(data) for i, box in enumerate(d.boxes, start=1) if box is not None]
    rng = np.random.default_rng(seed)
    if len(objects) > OWN_MAX_OBJECTS:
        objects = [objects[j] for j in sorted(rng.choice(len(objects), OWN_MAX_OBJECTS, replace=False))]
    context = int(model.config.receptive_radius) + MAX_EXPAND + 1
    by_image: dict[int, list] = {}
    for k, i, box in objects:
        shape = data[k].objects.shape
        region = tuple(slice(max(0, s.start - context), min(n, s.stop + context)) for s, n in zip(box, shape))
        by_image.setdefault(k, []).append((i, region))
    out = []
    for k, group in by_image.items():
        shape = data[k].objects.shape
        window = tuple(slice(min(r[a].start for _, r in group), max(r[a].stop for _, r in group)) for a in range(len(shape)))
        area = int(np.prod([w.stop - w.start for w in window]))
        if len(group) > 1 and area <= sum(int(np.prod([s.stop - s.start for s in r])) for _, r in group):
            out.append((data[k], window, group))
        else:
            out += [(data[k], region, [(i, region)]) for i, region in group]
    return len(objects), out


def own_window_expand(model, data: list, seed: int, instances: bool) -> tuple[int, list[float]]:
    """The calibration in windows of its own: on the connected thresholded foreground
    (``instances`` False) or on the clustered instances (True), as segment() clusters."""
    from scipy import ndimage as ndi

    from napari_spoco.clustering import cluster_embeddings
    from napari_spoco.edges import window_embedding
    from napari_spoco.layout import unexpanded_config

    count, windows = own_windows(model, data, seed)
    if not count:
        return 0, []
    total = np.zeros(MAX_EXPAND + 1)
    for d, window, members in windows:
        emb = window_embedding(model, d, window)
        if instances:
            config = unexpanded_config(model, tuple(w.stop - w.start for w in window))
            labels = np.asarray(cluster_embeddings(emb.embeddings, emb.foreground, config, emb.teacher_embeddings))
            total += score_members(labels.__getitem__, d, window, members)
        else:
            mask = emb.foreground >= 0.5
            total += score_members(lambda inner, mask=mask: ndi.label(mask[inner])[0], d, window, members)
    return best_growth(total, count)


RULES = ("foreground", "instances", "shared")


def held_out(model, data: sa.Data, grow: int) -> dict:
    model.history["edge_expand"] = grow
    scores = [evaluate(gt, segment(model, img, device="cpu")) for _, img, gt in data.tests]
    return {k: float(np.mean([s[k] for s in scores])) for k in ("AP50", "mAP")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, type=Path, nargs="+", help="--save-dir folders of sparse_accuracy.py")
    parser.add_argument("--datasets", nargs="*")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--json", type=Path)
    sa.add_data_argument(parser)
    args = parser.parse_args()
    sa.use_data_dir(args.data)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for folder in args.models:
        for data, seed, model in sa.saved_models(folder, args.datasets, args.seeds):
            prepared = prepare_training_data(data.train_images, data.painted(args.fraction, seed), scale=model.pixel_scale,
                                             channels=model.config.in_channels, voxel_size=model.voxel_size)
            recorded = model.history.get("layout")
            model.history.pop("edge_expand", None)
            row = {"models": str(folder), "dataset": data.split.name, "seed": seed, "layout_recorded": recorded}
            # the end of training as it was: the layout in its windows, then the edge in its own
            t = time.perf_counter()
            layout, _ = measure_layout(model, prepared, seed)
            t_layout = time.perf_counter() - t
            model.history["layout"] = layout
            for rule in ("foreground", "instances"):
                t = time.perf_counter()
                grow, scores = own_window_expand(model, prepared, seed, instances=rule == "instances")
                row[rule] = {"grow": grow, "scores": scores, "seconds": round(time.perf_counter() - t + t_layout, 2)}
            # now: one set of windows for both
            t = time.perf_counter()
            windows = segment_windows(model, prepared, seed)
            layout_now, _ = measure_layout(model, prepared, seed, windows)
            model.history["layout"] = layout_now
            grow, scores = edge_expand(model, prepared, seed, windows)
            row["shared"] = {"grow": grow, "scores": scores, "seconds": round(time.perf_counter() - t, 2),
                             "windows": len(windows), "objects": sum(len(w.ids) for w in windows)}
            row["layout"] = layout_now
            grows = {row[r]["grow"] for r in RULES}
            if len(grows) > 1:
                held = {g: held_out(model, data, g) for g in sorted(grows)}
                for r in RULES:
                    row[r].update(held[row[r]["grow"]])
            rows.append(row)
            text = "  ".join(f"{r} {row[r]['grow']} px {row[r]['seconds']:.1f} s"
                             + (f" AP50 {row[r]['AP50']:.3f} mAP {row[r]['mAP']:.3f}" if "AP50" in row[r] else "")
                             for r in RULES)
            print(f"{data.split.name:22s} seed {seed}  layout {recorded} -> {layout_now}  {text}", flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
