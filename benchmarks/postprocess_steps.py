"""One post-processing step (shape split, boundary merge, convex merge, calibrated edge, hole fill,
growth into the uncertain edge): the same trained models segmented with and without it; or one
setting of a step at several values (``--step peak_spacing --values``).

Takes the models that ``sparse_accuracy.py --save-dir DIR`` saved (``{dataset}_seed{N}.spoco.pt``),
segments each data set's held-out images with the step (``--step``, a ClusterConfig switch) on
and off, everything else at its default, and prints AP50 side by side with what went wrong: true
objects merged with another, split, missed, and predicted objects over background. Models
trained before the painted objects' convexity was recorded get it from the same painted labels
(``data.painted(fraction, seed)``), at the model's pixel scale, as ``train`` records it, and likewise the edge growth and
the check of the growth into the uncertain edge (edges.py; ``--step edge_growth`` then compares
without it against what segment() does with that record). The
fraction of the image the foreground head calls foreground is printed too (the shape split
applies at most at ``shapes.MAX_FOREGROUND_FRACTION``).

``--step outranked_seeds`` compares the shape split seeded by the ball rule alone and also at
outranked peaks, which segment() does where ``history["single_peaked"]`` (computed from the same
painted objects for models trained before it was recorded) says the painted objects allow it.
``--step peak_spacing --values 0.6 0.8 1.0`` segments with each value of ``shapes.PEAK_SPACING``
(how far apart, in painted radii, the shape split's seeds must be) instead. ``--step enlarge``
compares how labels found at a reduced scale come back to the image's size: by nearest neighbour
("without") or with smooth edges (``scaling.enlarge_labels``, "with"; models at scale 1 do not
differ). ``--step convex_merge`` compares segmenting without and with the median painted
object's solidity (``history["object_solidity_median"]``, computed from the painted labels for
models trained before it was recorded), which turns on the convex merge where objects stand on
background (boundaries.merge_convex_unseparated).

Usage:  python benchmarks/postprocess_steps.py --models DIR [--step shape_split|boundary_merge|convex_merge|calibrated_edge|fill_holes|edge_growth|outranked_seeds|enlarge]
        [--growth-check-after-expand]
            [--seeds 0 1 2] [--datasets ...] [--json FILE]
        python benchmarks/postprocess_steps.py --models DIR --step peak_spacing --values 0.6 0.8 1.0
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import sparse_accuracy as sa  # noqa: E402

from napari_spoco import evaluate, scaling, segment, shapes  # noqa: E402
from napari_spoco.clustering import ClusterConfig  # noqa: E402
from napari_spoco.metrics import _overlaps  # noqa: E402


def anatomy(gt: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """Unmatched true objects (IoU ≤ 0.5) as merged (mostly inside a prediction that also holds
    another true object), split, or missed (mostly not predicted); unmatched predictions lying
    mostly over background."""
    inter, gs, ps = _overlaps(gt, pred)
    iou = inter / np.maximum(gs[:, None] + ps[None, :] - inter, 1)
    out = {"merged": 0, "split": 0, "missed": 0, "false": 0}
    for i in range(len(gs)):
        if (iou[i] > 0.5).any():
            continue
        if inter[i].sum() < 0.5 * gs[i]:
            out["missed"] += 1
            continue
        j = int(inter[i].argmax())
        others = np.delete(inter[:, j], i)
        if inter[i, j] >= 0.5 * gs[i] and (others >= 0.3 * np.delete(gs, i)).any():
            out["merged"] += 1
        else:
            out["split"] += 1
    out["false"] = int(sum(1 for j in range(len(ps)) if not (iou[:, j] > 0.5).any() and inter[:, j].sum() < 0.5 * ps[j]))
    return out


def convexity(model, data: sa.Data, seed: int, fraction: float, percentile: float = 10) -> float | None:
    """What ``train`` records from these painted objects (at the model's pixel scale): the
    ``percentile``-th percentile of their solidity."""
    from napari_spoco.scaling import resize_labels, scaled_shape
    from napari_spoco.shapes import painted_solidity

    painted = data.painted(fraction, seed)
    scale = model.pixel_scale
    if scale != 1.0:
        painted = [resize_labels(p, scaled_shape(p.shape, (scale,) * p.ndim)) for p in painted]
    return painted_solidity(painted, percentile)


def peaks_of_painted(model, data: sa.Data, seed: int, fraction: float) -> bool | None:
    """What ``train`` records from these painted objects at the network's scale: whether each
    has one seed by the shape split's rule with outranked peaks (shapes.single_peaked)."""
    from napari_spoco.data import prepare_training_data
    from napari_spoco.shapes import single_peaked

    prepared = prepare_training_data(data.train_images, data.painted(fraction, seed), scale=model.pixel_scale,
                                     voxel_size=model.voxel_size, channels=model.config.in_channels,
                                     channel_axis=-1 if model.config.in_channels > 1 else None)
    found = single_peaked([d.objects for d in prepared], model.history.get("object_size_median"))
    print(f"   painted objects single-peaked (seed {seed}): {found}", flush=True)
    return found


def edge_calibration(model, data: sa.Data, seed: int, fraction: float) -> int:
    """What ``train`` records at its end (edges.py), from these painted objects."""
    from napari_spoco.data import prepare_training_data
    from napari_spoco.edges import edge_expand

    prepared = prepare_training_data(data.train_images, data.painted(fraction, seed), scale=model.pixel_scale,
                                     voxel_size=model.voxel_size)
    grow, scores = edge_expand(model, prepared, seed=seed)
    print(f"   edge calibration of seed {seed}: grow {grow} ({scores})", flush=True)
    return grow


def growth_calibration(model, data: sa.Data, seed: int, fraction: float, expand: int = 0) -> bool | None:
    """What ``train`` records at its end about the growth into the uncertain edge
    (edges.growth_helps), from these painted objects; with ``expand``, the instances grown by
    that many pixels first (the check as it would be scored after the calibrated growth)."""
    from napari_spoco.data import prepare_training_data
    from napari_spoco.edges import growth_helps
    from napari_spoco.layout import segment_windows

    prepared = prepare_training_data(data.train_images, data.painted(fraction, seed), scale=model.pixel_scale,
                                     voxel_size=model.voxel_size, channels=model.config.in_channels,
                                     channel_axis=-1 if model.config.in_channels > 1 else None)
    on, scores = growth_helps(model, segment_windows(model, prepared, seed), expand=expand)
    print(f"   growth check of seed {seed}{f' after {expand} px' if expand else ''}: {on} ({scores})", flush=True)
    return on


def fill_records(model, data: sa.Data, seed: int, fraction: float, growth_after_expand: bool = False) -> None:
    """What ``train`` records at its end, computed from the same painted objects for models
    saved before it was recorded; with ``growth_after_expand`` the growth check is also printed
    as scored after the calibrated growth."""
    if model.history.get("object_solidity") is None:
        model.history["object_solidity"] = convexity(model, data, seed, fraction)
    if model.history.get("object_solidity_median") is None:
        model.history["object_solidity_median"] = convexity(model, data, seed, fraction, 50)
    if "single_peaked" not in model.history:
        model.history["single_peaked"] = peaks_of_painted(model, data, seed, fraction)
    if model.history.get("edge_expand") is None:
        model.history["edge_expand"] = edge_calibration(model, data, seed, fraction)
    if "edge_growth" not in model.history:
        model.history["edge_growth"] = growth_calibration(model, data, seed, fraction)
    if growth_after_expand:
        print(f"   as trained: {model.history['edge_growth']} ({model.history.get('edge_growth_scores')})", flush=True)
        growth_calibration(model, data, seed, fraction, int(model.history.get("edge_expand") or 0))


def score_tests(model, data: sa.Data, config: ClusterConfig) -> tuple[dict, float]:
    """Mean AP50 / mAP / SBD over the held-out images, the error counts of :func:`anatomy` summed,
    and the mean fraction the foreground head calls foreground."""
    scores, maps, sbds, errors, fg = [], [], [], {}, []
    for _, img, gt in data.tests:
        pred, emb = segment(model, img, device="cpu", config=config, return_embedding=True)
        score = evaluate(gt, pred)
        scores.append(score["AP50"])
        maps.append(score["mAP"])
        sbds.append(score["SBD"])
        fg.append(float((emb.foreground >= 0.5).mean()))
        for k, v in anatomy(gt, pred).items():
            errors[k] = errors.get(k, 0) + v
    return {"AP50": float(np.mean(scores)), "mAP": float(np.mean(maps)), "SBD": float(np.mean(sbds)), **errors}, \
        float(np.mean(fg))


def values_table(rows: list[dict], names: list[str]) -> None:
    """Mean (min–max) AP50 over seeds per data set, one column per value compared."""
    print("\npeak spacing (painted radii):\n| data set | seeds | " + " | ".join(f"AP50 at {n}" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for name in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == name]
        cells = [f"{np.mean([r[n]['AP50'] for r in rs]):.3f} ({min(r[n]['AP50'] for r in rs):.3f}–"
                 f"{max(r[n]['AP50'] for r in rs):.3f})" for n in names]
        print(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, type=Path, help="--save-dir of sparse_accuracy.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="*")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--step", default="shape_split",
                        choices=["shape_split", "concave_split", "boundary_merge", "convex_merge", "calibrated_edge", "fill_holes", "edge_growth", "peak_spacing",
                                 "outranked_seeds", "enlarge"],
                        help="the ClusterConfig switch turned off for the 'without' column, or peak_spacing: "
                             "shapes.PEAK_SPACING at each of --values, or enlarge: labels of a reduced scale "
                             "enlarged by nearest neighbour (without) or with smooth edges (with)")
    parser.add_argument("--values", type=float, nargs="+", default=[0.6, 0.8, 1.0],
                        help="with --step peak_spacing: the values compared")
    parser.add_argument("--growth-check-after-expand", action="store_true",
                        help="also print each model's growth check scored after its calibrated growth "
                             "(history edge_expand; docs/benchmarks.md, 'The growth check after the calibrated growth')")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    valued = args.step == "peak_spacing"
    variants: list = []
    smooth_enlarge = scaling.enlarge_labels
    for data, seed, model in sa.saved_models(args.models, args.datasets, args.seeds):
        split = data.split
        fill_records(model, data, seed, args.fraction, args.growth_check_after_expand)
        row = {"dataset": split.name, "seed": seed, "step": args.step,
               "reference": model.history["object_solidity"]}
        median = model.history["object_solidity_median"]
        variants = ([(f"{v:g}", v) for v in args.values] if valued
                    else [("without", False), ("with", True)])
        for name, on in variants:
            if args.step == "peak_spacing":
                shapes.PEAK_SPACING, config = on, ClusterConfig()
            elif args.step == "convex_merge":  # the median's record is what turns it on
                model.history["object_solidity_median"] = median if on else None
                config = ClusterConfig()
            elif args.step == "enlarge":  # segmentation looks the function up at each call
                scaling.enlarge_labels, config = (smooth_enlarge if on else scaling.resize_labels), ClusterConfig()
            else:
                config = replace(ClusterConfig(), **{args.step: on})
            row[name], row["foreground"] = score_tests(model, data, config)
        rows.append(row)
        if valued:
            print(f"{split.name:15s} seed {seed}  size {model.history.get('object_size_median', 0):.0f}  "
                  + "  ".join(f"{k}: AP50 {row[k]['AP50']:.3f} mAP {row[k]['mAP']:.3f} merged {row[k]['merged']} "
                              f"split {row[k]['split']}" for k, _ in variants), flush=True)
            continue
        w, s = row["without"], row["with"]
        print(f"{split.name:15s} seed {seed}  ref {row['reference']:.2f}  fg {row['foreground']:.2f}  "
              f"AP50 {w['AP50']:.3f} -> {s['AP50']:.3f}  mAP {w['mAP']:.3f} -> {s['mAP']:.3f}  merged {w['merged']} -> {s['merged']}  "
              f"split {w['split']} -> {s['split']}  false {w['false']} -> {s['false']}", flush=True)
    if valued:
        values_table(rows, [k for k, _ in variants])
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return 0
    print(f"\n{args.step}:\n| data set | painted convexity (p10) | foreground | AP50 without | AP50 with "
          "| with − without | mAP without → with | merged | split |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == name]
        d = [r["with"]["AP50"] - r["without"]["AP50"] for r in rs]
        print(f"| {name} | {min(r['reference'] for r in rs):.2f}–{max(r['reference'] for r in rs):.2f} "
              f"| {np.mean([r['foreground'] for r in rs]):.2f} "
              f"| {np.mean([r['without']['AP50'] for r in rs]):.3f} | {np.mean([r['with']['AP50'] for r in rs]):.3f} "
              f"| {np.mean(d):+.3f} ({min(d):+.3f} … {max(d):+.3f}) "
              f"| {np.mean([r['without']['mAP'] for r in rs]):.3f} → {np.mean([r['with']['mAP'] for r in rs]):.3f} "
              f"| {sum(r['without']['merged'] for r in rs)} → {sum(r['with']['merged'] for r in rs)} "
              f"| {sum(r['without']['split'] for r in rs)} → {sum(r['with']['split'] for r in rs)} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
