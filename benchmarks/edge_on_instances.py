"""The object edge calibrated on the clustered instances against the connected thresholded foreground.

``train`` ends by measuring how far the objects must grow to fit the painted ones (edges.py). Until
2026-12-04 the object of a painted object was the connected foreground (probability >= 0.5)
overlapping it most; now it is the instance that ``segment``'s clustering returns. This script takes
the models that ``sparse_accuracy.py --save-dir DIR`` saved, recomputes both calibrations from the
same painted labels (``data.painted(fraction, seed)``, at the model's scale), times them, and where
they choose differently segments the held-out images with each growth, side by side.

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
from napari_spoco.edges import (  # noqa: E402
    MAX_EXPAND,
    best_growth,
    calibration_windows,
    edge_expand,
    score_members,
    window_embedding,
)


def connected_foreground_expand(model, data: list, seed: int = 0) -> tuple[int, list[float]]:
    """The calibration as it was until 2026-12-04: the piece of a painted object is the connected
    foreground (>= 0.5) in its crop overlapping it most, in the same crops and windows as now."""
    from scipy import ndimage as ndi

    count, windows = calibration_windows(model, data, seed)
    if not count:
        return 0, []
    total = np.zeros(MAX_EXPAND + 1)
    for d, window, members in windows:
        mask = window_embedding(model, d, window).foreground >= 0.5
        total += score_members(lambda inner, mask=mask: ndi.label(mask[inner])[0], d, window, members)
    return best_growth(total, count)


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
            t = time.perf_counter()
            before, before_scores = connected_foreground_expand(model, prepared, seed)
            t_before = time.perf_counter() - t
            t = time.perf_counter()
            now, now_scores = edge_expand(model, prepared, seed=seed)
            t_now = time.perf_counter() - t
            row = {"models": str(folder), "dataset": data.split.name, "seed": seed,
                   "foreground": {"grow": before, "scores": before_scores, "seconds": round(t_before, 2)},
                   "instances": {"grow": now, "scores": now_scores, "seconds": round(t_now, 2)}}
            if before != now:
                row["foreground"].update(held_out(model, data, before))
                row["instances"].update(held_out(model, data, now))
            rows.append(row)
            f, i = row["foreground"], row["instances"]
            change = (f"AP50 {f['AP50']:.3f} -> {i['AP50']:.3f}, mAP {f['mAP']:.3f} -> {i['mAP']:.3f}"
                      if before != now else "same choice")
            print(f"{data.split.name:22s} seed {seed}  grow {before} -> {now}  ({t_before:.1f} s -> {t_now:.1f} s)  {change}",
                  flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
