"""A new user's run, through the command line: paint a share of the objects, train, predict, score.

The held-out cases of issue 10 are measured the way a lab would meet us: the CLI's defaults,
``napari-spoco train --minutes M`` on a few images with a share of their objects painted,
``napari-spoco predict`` on other images, ``napari-spoco evaluate`` against their full masks.
``benchmarks/sparse_accuracy.py`` calls the library; this script runs the installed commands
themselves (as subprocesses), so that what the CLI adds — reading files, its own defaults, the
automatic choices it reports — is inside the measurement. Beside each run, on the same painted
labels and images: the forest peer and the classical pipelines of ``benchmarks/peers.py``.

For each seed, the painting is drawn anew: per training image, ``--share`` of its objects
(rounded, at least one), chosen at random; the training seed is the same number.

Usage:
  python benchmarks/cli_heldout.py --dataset isbi2012-em --train isbi_10 isbi_11 ... \
      --test isbi_15 ... | --score-train  [--seeds 0 1 2] [--share 0.1] [--minutes 5] [--work DIR] [--json FILE] [--data DIR]
  python benchmarks/cli_heldout.py --dataset synthetic-nuclei-3d-z4 --train train --test test \
      --peer-voxel-size 4 1 1 [--work DIR --peers-only]   # the 3D peers also on cubic voxels
  python benchmarks/cli_heldout.py ... --no-peers   # ours only: an arm beside a run of the same painting
  python benchmarks/cli_heldout.py ... --scale 0.5 --no-peers   # such an arm, trained at another scale
The generated sets of benchmarks/bench_data.py (synthetic-nuclei-3d and its variants,
synthetic-nuclei-2d[-hard], synthetic-leaves-rgb[-hard], synthetic-em[-large]) are written out
as TIFFs first.
Prints one row per seed and the mean, and writes the JSON if asked.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_data  # noqa: E402

CLI = [sys.executable, "-m", "napari_spoco.cli"]


def paint(mask: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """The sparse labels of one image: ``share`` of its objects (at least one) whole, 0 elsewhere."""
    ids = np.unique(mask)
    ids = ids[ids > 0]
    keep = rng.choice(ids, max(1, int(round(share * len(ids)))), replace=False)
    return np.where(np.isin(mask, keep), mask, 0).astype(np.uint16)


def _rgb(image: np.ndarray) -> bool:
    """A colour image (Y, X, 3|4), as the CLI reads it."""
    return image.ndim == 3 and image.shape[-1] in (3, 4)


def _run(args: list[str], log: Path) -> float:
    t = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(CLI + args, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(args[:1])} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - t


def one_seed(ds: str, train: list[str], test: list[str], seed: int, share: float, minutes: float,
             work: Path, peer_voxel_size: tuple[float, ...] | None = None, peers_only: bool = False,
             peers: bool = True, scale: str | None = None) -> dict:
    from peers import ForestPeer, classical, forest_features, from_cubic, to_cubic

    from napari_spoco import evaluate

    run = work / f"{ds}_seed{seed}"
    rng = np.random.default_rng(seed)
    painted = 0
    sparse = []
    if peers_only:  # a finished run's painting, model and predictions, read back
        sparse = [tifffile.imread(run / "labels" / f"{stem}.tif") for stem in train]
        painted = sum(len(np.unique(labels)) - 1 for labels in sparse)
        train_s = predict_s = None
    else:
        shutil.rmtree(run, ignore_errors=True)
        for sub in ("images", "labels", "test", "pred"):
            (run / sub).mkdir(parents=True)
        for stem in train:
            tifffile.imwrite(run / "images" / f"{stem}.tif", bench_data.read(ds, stem, "images"))
            labels = paint(bench_data.read(ds, stem, "masks"), share, rng)
            painted += len(np.unique(labels)) - 1
            sparse.append(labels)
            tifffile.imwrite(run / "labels" / f"{stem}.tif", labels)
        for stem in test:
            tifffile.imwrite(run / "test" / f"{stem}.tif", bench_data.read(ds, stem, "images"))
        train_s = _run(["train", "--images", str(run / "images"), "--labels", str(run / "labels"),
                        "--out", str(run / "model.pt"), "--minutes", str(minutes), "--seed", str(seed)]
                       + (["--scale", scale] if scale else []), run / "train.log")
        predict_s = _run(["predict", "--model", str(run / "model.pt"), "--images", str(run / "test"),
                          "--out", str(run / "pred")], run / "predict.log")
    log = (run / "train.log").read_text().splitlines()
    steps = [line for line in log if line.startswith("train: step")]
    ours, forest, best_classical = [], [], {}
    def features(image: np.ndarray) -> np.ndarray:
        return forest_features(image, channel_axis=-1 if _rgb(image) else None)

    if peers:
        peer = ForestPeer(seed=seed).fit([features(bench_data.read(ds, s, "images")) for s in train], sparse)
    for stem in test:
        truth = bench_data.read(ds, stem, "masks")
        ours.append(evaluate(truth, tifffile.imread(run / "pred" / f"{stem}.tif")))
        if not peers:  # --no-peers: an arm beside a run that has them
            continue
        image = bench_data.read(ds, stem, "images")
        forest.append(evaluate(truth, peer.segment(features(image)))["AP50"])
        for name, labels in classical(image, rgb=_rgb(image)).items():
            best_classical.setdefault(name, []).append(evaluate(truth, labels)["AP50"])
    name, scores = max(best_classical.items(), key=lambda kv: np.mean(kv[1])) if peers else (None, None)
    cubic = {}
    if peer_voxel_size:  # the peers again, on the volumes resampled to cubic voxels
        v = peer_voxel_size
        peer = ForestPeer(seed=seed).fit([features(to_cubic(bench_data.read(ds, s, "images"), v)) for s in train],
                                         [to_cubic(s, v, labels=True) for s in sparse])
        forest_c, classical_c = [], {}
        for stem in test:
            truth = bench_data.read(ds, stem, "masks")
            image = to_cubic(bench_data.read(ds, stem, "images"), v)
            forest_c.append(evaluate(truth, from_cubic(peer.segment(features(image)), truth.shape, v))["AP50"])
            for cname, labels in classical(image).items():
                classical_c.setdefault(cname, []).append(evaluate(truth, from_cubic(labels, truth.shape, v))["AP50"])
        cname, cscores = max(classical_c.items(), key=lambda kv: np.mean(kv[1]))
        cubic = {"peer_voxel_size": list(v), "forest_cubic_AP50": float(np.mean(forest_c)),
                 "forest_cubic_per_image": [round(x, 3) for x in forest_c],
                 "classical_cubic": cname, "classical_cubic_AP50": float(np.mean(cscores))}
    return {"seed": seed, "painted": painted, "steps": steps[-1].split(",")[0].split()[-1] if steps else None,
            "notes": [line for line in log if not line.startswith("train: step")],
            "AP50": float(np.mean([s["AP50"] for s in ours])), "mAP": float(np.mean([s["mAP"] for s in ours])),
            "AP50_per_image": [round(s["AP50"], 3) for s in ours],
            "forest_AP50": float(np.mean(forest)) if peers else None, "forest_per_image": [round(v, 3) for v in forest],
            "classical": name, "classical_AP50": float(np.mean(scores)) if peers else None,
            "train_s": train_s, "predict_s": predict_s, **cubic}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_data.add_data_argument(parser)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--train", nargs="+", required=True, help="stems of the images to paint and train on")
    parser.add_argument("--test", nargs="+", help="stems of the images to segment and score")
    parser.add_argument("--score-train", action="store_true",
                        help="segment and score the training images themselves (the commonest use: paint a few "
                        "objects of an image, segment that image) instead of --test")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--work", type=Path, help="folder for the runs (default: a temporary one, removed)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--peer-voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"),
                        help="3D: also run the forest and the classical pipelines on the volumes resampled to "
                        "cubic voxels of this size (they filter and split isotropically); ours still reads "
                        "files without a voxel size")
    parser.add_argument("--peers-only", action="store_true",
                        help="score a finished --work folder's predictions again and rerun only the peers")
    parser.add_argument("--scale", help="passed to `napari-spoco train --scale` (default: its own, auto); an arm "
                        "beside the default run")
    parser.add_argument("--no-peers", action="store_true",
                        help="score ours only (an arm beside a run of the same painting that has the peers)")
    args = parser.parse_args()
    if args.no_peers and (args.peers_only or args.peer_voxel_size):
        raise SystemExit("--no-peers runs ours only: not with --peers-only or --peer-voxel-size")
    if args.peers_only and not args.work:
        raise SystemExit("--peers-only reads a finished run: give its --work folder")
    bench_data.use_data_dir(args.data, needs=(args.dataset,))
    if args.score_train == bool(args.test):
        raise SystemExit("give --test, or --score-train to score the training images")
    if args.score_train:
        args.test = list(args.train)
    elif set(args.train) & set(args.test):
        raise SystemExit("--train and --test share images: the scores would not be held out (--score-train)")
    if args.peer_voxel_size and (min(args.peer_voxel_size) <= 0
                                 or bench_data.read(args.dataset, args.train[0], "masks").ndim != 3):
        raise SystemExit("--peer-voxel-size takes three positive spacings (Z Y X) of a 3D data set")
    if args.peers_only:
        for seed in args.seeds:
            run = args.work / f"{args.dataset}_seed{seed}"
            missing = [str(p) for p in [run / "train.log"] + [run / "labels" / f"{s}.tif" for s in args.train]
                       + [run / "pred" / f"{s}.tif" for s in args.test] if not p.exists()]
            if missing:
                raise SystemExit(f"--peers-only: {run} is not a finished run of these images ({missing[0]} is missing)")
    work = args.work or Path(tempfile.mkdtemp(prefix="cli_heldout_"))
    rows = []
    try:
        for seed in args.seeds:
            row = one_seed(args.dataset, args.train, args.test, seed, args.share, args.minutes, work,
                           args.peer_voxel_size, args.peers_only, peers=not args.no_peers,
                           scale=args.scale)
            rows.append(row)
            cubic = (f" | on cubic voxels: forest {row['forest_cubic_AP50']:.3f}, {row['classical_cubic']} "
                     f"{row['classical_cubic_AP50']:.3f}" if args.peer_voxel_size else "")
            peer_text = (f" | forest {row['forest_AP50']:.3f} | {row['classical']} {row['classical_AP50']:.3f}"
                         if row["forest_AP50"] is not None else "")
            print(f"seed {seed}: {row['painted']} painted, {row['steps']} steps, AP50 {row['AP50']:.3f} "
                  f"{row['AP50_per_image']} (mAP {row['mAP']:.3f}){peer_text}{cubic}", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    ap = [r["AP50"] for r in rows]
    fo = [r["forest_AP50"] for r in rows if r["forest_AP50"] is not None]
    peer_text = (f"; forest {np.mean(fo):.3f} ({min(fo):.3f}–{max(fo):.3f}); {rows[0]['classical']} "
                 f"{np.mean([r['classical_AP50'] for r in rows]):.3f}" if fo else " (no peers)")
    print(f"mean AP50 {np.mean(ap):.3f} ({min(ap):.3f}–{max(ap):.3f}){peer_text}")
    if args.peer_voxel_size:
        fc = [r["forest_cubic_AP50"] for r in rows]
        print(f"on cubic voxels: forest {np.mean(fc):.3f} ({min(fc):.3f}–{max(fc):.3f}); {rows[0]['classical_cubic']} "
              f"{np.mean([r['classical_cubic_AP50'] for r in rows]):.3f}")
    if args.json:
        import torch

        meta = {"dataset": args.dataset, "train": args.train, "test": args.test, "score_train": args.score_train,
                "peer_voxel_size": args.peer_voxel_size, "peers_only": args.peers_only,  # share, minutes: the run's own
                "share": args.share, "no_peers": args.no_peers, "scale": args.scale,
                "minutes": args.minutes, "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
        args.json.write_text(json.dumps({"meta": meta, "seeds": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
