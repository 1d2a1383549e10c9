"""The shape split's convexity gate: the same saved models segmented with and without the floor
``shapes.TRY_BELOW`` (docs/method.md, "Splitting merged objects by shape").

A piece is tried by the shape split when it is less convex than the painted reference (the
10th percentile of the painted objects' solidity) or than ``TRY_BELOW``, whichever is higher.
This script segments each model's scored images twice in one process, with the floor at 0
(the reference alone, as before 2026-12-07) and at each ``--values`` (default: the shipped
value), and prints AP50 / mAP per seed and their means, and the seconds each floor's Segments
took (after one Segment that warms up and is not timed: the floor adds convex hulls of more
pieces).

Models come from either
* ``--cli DIR``: a ``benchmarks/cli_heldout.py --work DIR`` folder (``DATASET_seedS/model.pt``
  and the scored images in ``DATASET_seedS/test/``), or
* ``--models DIR``: a ``benchmarks/sparse_accuracy.py --save-dir DIR`` folder
  (``DATASET_seedS.spoco.pt``), scored on that benchmark's held-out images.

Usage:
  python benchmarks/shape_gate.py --dataset synthetic-leaves-rgb-hard --cli DIR [--seeds 0 1 2] [--json FILE]
  python benchmarks/shape_gate.py --dataset usiigaci-phc --models DIR [--seeds 0 1 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import bench_data  # noqa: E402


def scored_pairs(args, seed: int) -> tuple[Path, list[tuple[np.ndarray, np.ndarray]]] | None:
    """(model file, [(image, truth)]) of one seed, or None where that seed has no model."""
    import tifffile

    if args.cli:
        run = args.cli / f"{args.dataset}_seed{seed}"
        if not (run / "model.pt").exists():
            return None
        pairs = [(tifffile.imread(f), bench_data.read(args.dataset, f.stem, "masks"))
                 for f in sorted((run / "test").glob("*.tif"))]
        return run / "model.pt", pairs
    from sparse_accuracy import splits

    path = args.models / f"{args.dataset}_seed{seed}.spoco.pt"
    if not path.exists():
        return None
    split = next((s for s in splits() if s.name == args.dataset), None)
    if split is None:
        raise SystemExit(f"--models: {args.dataset} is not one of sparse_accuracy.py's splits; use --cli for other runs")
    pairs = [(bench_data.read(args.dataset, stem, "images")[split.crop], bench_data.read(args.dataset, stem, "masks")[split.crop])
             for stem in split.test]
    return path, pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_data.add_data_argument(parser)
    parser.add_argument("--dataset", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cli", type=Path, help="a cli_heldout.py --work folder")
    source.add_argument("--models", type=Path, help="a sparse_accuracy.py --save-dir folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--values", type=float, nargs="+", help="floors to compare with 0 (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    bench_data.use_data_dir(args.data, needs=(args.dataset,))

    import torch

    from napari_spoco import evaluate, shapes
    from napari_spoco.io import load_model
    from napari_spoco.segmentation import segment

    torch.set_num_threads(args.threads)
    values = [0.0] + [v for v in (args.values or [shapes.TRY_BELOW]) if v != 0.0]
    shipped = shapes.TRY_BELOW
    rows = []
    try:
        for seed in args.seeds:
            found = scored_pairs(args, seed)
            if found is None:
                print(f"seed {seed}: no model", flush=True)
                continue
            path, pairs = found
            model = load_model(path)
            row = {"seed": seed, "model": str(path), "reference": model.history.get("object_solidity")}
            if pairs:
                segment(model, pairs[0][0], device="cpu")  # warm-up, not timed
            for v in values:
                shapes.TRY_BELOW = v
                t0 = time.perf_counter()
                predictions = [segment(model, image, device="cpu") for image, _ in pairs]
                row[f"seconds@{v:g}"] = time.perf_counter() - t0
                scores = [evaluate(truth, pred) for (_, truth), pred in zip(pairs, predictions)]
                row[f"AP50@{v:g}"] = float(np.mean([s["AP50"] for s in scores]))
                row[f"mAP@{v:g}"] = float(np.mean([s["mAP"] for s in scores]))
            rows.append(row)
            print(f"seed {seed} (reference {row['reference'] or 0:.3f}): "
                  + ", ".join(f"floor {v:g}: AP50 {row[f'AP50@{v:g}']:.3f} mAP {row[f'mAP@{v:g}']:.3f} "
                               f"({row[f'seconds@{v:g}']:.1f} s)" for v in values),
                  flush=True)
    finally:
        shapes.TRY_BELOW = shipped
    if rows:
        print("mean: " + ", ".join(f"floor {v:g}: AP50 {np.mean([r[f'AP50@{v:g}'] for r in rows]):.3f} "
                                   f"mAP {np.mean([r[f'mAP@{v:g}'] for r in rows]):.3f} "
                                   f"(total {sum(r[f'seconds@{v:g}'] for r in rows):.1f} s)" for v in values))
    if args.json:
        args.json.write_text(json.dumps({"dataset": args.dataset, "values": values, "seeds": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
