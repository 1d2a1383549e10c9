"""Segmentation time and peak memory versus image size, side by side in one run.

    python benchmarks/segment_scaling.py [--data DIR] [--sizes 512 1024 2048] [--3d] [--model default]
    python benchmarks/segment_scaling.py --sizes 2048 4096 --tiles 1024 2048 [--reps 2] [--tta off]
                                         [--dataset isbi2012-em] [--model PATH]

2D: mosaics of held-out BBBC039 fields (the test fields of sparse_accuracy.py, tiled and cropped
to N×N, with their masks tiled the same way so that accuracy is checked at every size), segmented
with the shipped 2D model. 3D: the cells3d volume (60×256×256) and a 2× mosaic of it in Y and X,
segmented with a 3D model trained for ``--steps-3d`` steps on 10 % of its nuclei first (training
is not timed). Each size runs in a fresh subprocess, so its peak RSS is its own; the table reports
peak RSS above the process's baseline after imports and model loading, time split into
embedding and clustering, and AP50 against the tiled truth.

``--tiles A B``: each size segmented with 2D clustering tiles of A² and of B²
(``segment(tile_shape=...)``), alternating which goes first over ``--reps`` rounds, each in a
fresh process; prints the time, peak memory and AP50 of B against A per size. ``--dataset``
takes the mosaic from another 2D set's test fields (cropped to the smallest field);
``--tta off`` segments with one network pass.

Targets (issue "Fast and scalable"): 2048² in ≤ 15 s with ≤ 2 GB peak RAM; time and memory
growing linearly with the number of pixels.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_data import add_data_argument, data_dir, use_data_dir  # noqa: E402


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def mosaic(images: list[np.ndarray], masks: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Tile fields row by row into a size×size mosaic; mask ids made unique across fields."""
    h, w = min(i.shape[0] for i in images), min(i.shape[1] for i in images)
    images = [i[:h, :w] for i in images]
    masks = [m[:h, :w] for m in masks]
    rows, cols = -(-size // h), -(-size // w)
    img = np.zeros((rows * h, cols * w), images[0].dtype)
    lab = np.zeros((rows * h, cols * w), np.int32)
    offset = 0
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        i = k % len(images)
        img[r * h:(r + 1) * h, c * w:(c + 1) * w] = images[i]
        m = masks[i].astype(np.int32)
        lab[r * h:(r + 1) * h, c * w:(c + 1) * w] = np.where(m > 0, m + offset, 0)
        offset += int(m.max())
    return img[:size, :size], lab[:size, :size]


def child(spec: dict) -> dict:
    """Run one segmentation in this (fresh) process and report time, memory and accuracy."""
    import torch
    from sparse_accuracy import read, splits

    from napari_spoco import evaluate
    from napari_spoco.clustering import ClusterConfig, cluster_embeddings
    from napari_spoco.inference import embed
    from napari_spoco.io import load_model
    from napari_spoco.pretrained import load_default_model
    from napari_spoco.segmentation import auto_max_size, auto_min_size, segment

    torch.set_num_threads(spec["threads"])
    use_data_dir(Path(spec["data"]))
    model = load_default_model(2) if spec["model"] == "default" else load_model(spec["model"])
    if spec["kind"] == "2d":
        split = next(s for s in splits() if s.name == spec.get("dataset", "bbbc039-nuclei"))
        image, truth = mosaic([read(split.name, s, "images") for s in split.test],
                              [read(split.name, s, "masks") for s in split.test], spec["size"])
    else:
        vol = read("cells3d-nuclei", "cells3d_nuclei", "images")
        gt = read("cells3d-nuclei", "cells3d_nuclei", "masks").astype(np.int32)
        reps, n = spec["size"], int(gt.max())
        image = np.tile(vol, (1, reps, reps))
        truth = np.concatenate([np.concatenate([np.where(gt > 0, gt + (i * reps + j) * n, 0) for j in range(reps)],
                                               axis=2) for i in range(reps)], axis=1)
    base = _rss_mb()
    t0 = time.perf_counter()
    if spec.get("untiled"):  # the whole image at once: what segment() did before tiling
        emb = embed(model, image, device="cpu")
        t1 = time.perf_counter()
        config = ClusterConfig(min_size=auto_min_size(model, image.ndim), max_size=auto_max_size(model, image.shape))
        labels = cluster_embeddings(emb.embeddings, emb.foreground, config)
    else:
        timing = {}
        tile = spec.get("tile")
        labels = segment(model, image, device="cpu", _timing=timing, tile_shape=(tile, tile) if tile else None,
                         tta=spec.get("tta", True))
        t1 = t0 + timing["embed_s"]
    t2 = time.perf_counter()
    scores = evaluate(truth, labels)
    return {"shape": list(image.shape), "pixels": int(image.size), "embed_s": t1 - t0, "cluster_s": t2 - t1,
            "total_s": t2 - t0, "peak_mb": _rss_mb() - base, "AP50": scores["AP50"],
            "n_true": scores["n_true"], "n_pred": scores["n_pred"]}


def run_child(spec: dict) -> dict:
    spec = {**spec, "data": str(data_dir())}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child failed: {out.stderr[-2000:]}")


def train_3d_model(steps: int, path: Path) -> Path:
    from sparse_accuracy import read, sparsify

    from napari_spoco import TrainConfig, save_model, train

    vol = read("cells3d-nuclei", "cells3d_nuclei", "images")
    sparse = sparsify(read("cells3d-nuclei", "cells3d_nuclei", "masks"), 0.1, 0)
    save_model(train([vol], [sparse], TrainConfig(steps=steps, device="cpu")), path)
    return path


def compare_tiles(args) -> int:
    """Each size with clustering tiles of A² and B², alternating, fresh processes; B against A."""
    import torch

    a, b = args.tiles
    runs: dict[tuple[int, int], list[dict]] = {}
    for rep in range(args.reps):
        for size in args.sizes:
            for tile in ((a, b) if rep % 2 == 0 else (b, a)):
                r = run_child({"kind": "2d", "size": size, "model": args.model, "threads": args.threads,
                               "tile": tile, "tta": args.tta == "on", "dataset": args.dataset})
                runs.setdefault((size, tile), []).append(r)
                print(f"{size}² tiles {tile}²: {r['total_s']:.1f} s (embed {r['embed_s']:.1f}), {r['peak_mb']:.0f} MB, "
                      f"AP50 {r['AP50']:.3f}, {r['n_pred']:.0f} objects", file=sys.stderr, flush=True)
    print(f"Machine: {platform.processor() or platform.machine()}, {args.threads} torch threads, torch "
          f"{torch.__version__}, CPU only. {time.strftime('%Y-%m-%d')}. {args.dataset} test fields, model "
          f"{args.model}, TTA {args.tta}, {args.reps} rounds alternating.\n")
    print(f"| size | tiles | total s (each run) | embed s | peak RSS MB | AP50 | objects | time {b}² / {a}² | "
          f"memory {b}² − {a}² |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        ra, rb = runs[(size, a)], runs[(size, b)]
        for tile, rs in ((a, ra), (b, rb)):
            ratio = memory = ""
            if tile == b:
                ratio = " / ".join(f"{y['total_s'] / x['total_s']:.2f}" for x, y in zip(ra, rb))
                memory = " / ".join(f"{y['peak_mb'] - x['peak_mb']:+.0f}" for x, y in zip(ra, rb))
            total = ", ".join(f"{r['total_s']:.1f}" for r in rs)
            emb = ", ".join(f"{r['embed_s']:.1f}" for r in rs)
            peak = ", ".join(f"{r['peak_mb']:.0f}" for r in rs)
            print(f"| {size}² | {tile}² | {total} | {emb} | {peak} | {rs[0]['AP50']:.3f} | {rs[0]['n_pred']:.0f} | "
                  f"{ratio} | {memory} |")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(ap)
    ap.add_argument("--sizes", type=int, nargs="*", default=[512, 1024, 2048])
    ap.add_argument("--3d", dest="three_d", action="store_true", help="also the 3D volume (trains a 3D model first)")
    ap.add_argument("--steps-3d", type=int, default=300)
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-untiled", action="store_true", help="skip the whole-image comparison row")
    ap.add_argument("--tiles", type=int, nargs=2, metavar=("A", "B"),
                    help="compare 2D clustering tiles of A² and B² side by side at each size")
    ap.add_argument("--reps", type=int, default=2, help="rounds of the --tiles comparison")
    ap.add_argument("--tta", choices=("on", "off"), default="on")
    ap.add_argument("--dataset", default="bbbc039-nuclei", help="2D set whose test fields make the mosaic")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))))
        return 0
    use_data_dir(args.data, needs=(args.dataset,) + (("cells3d-nuclei",) if args.three_d else ()))
    import torch

    if args.tiles:
        return compare_tiles(args)

    rows = []
    for size in args.sizes:
        r = run_child({"kind": "2d", "size": size, "model": args.model, "threads": args.threads})
        rows.append(("2D BBBC039 mosaic", r))
        print(f"{r['shape']}: {r['total_s']:.1f} s, {r['peak_mb']:.0f} MB, AP50 {r['AP50']:.3f}", file=sys.stderr, flush=True)
    if not args.no_untiled:
        r = run_child({"kind": "2d", "size": max(args.sizes), "model": args.model, "threads": args.threads,
                       "untiled": True})
        rows.append(("2D mosaic, whole image at once (no tiles)", r))
    if args.three_d:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            model3d = train_3d_model(args.steps_3d, Path(tmp) / "m3d.spoco.pt")
            for reps in (1, 2):
                r = run_child({"kind": "3d", "size": reps, "model": str(model3d), "threads": args.threads})
                rows.append((f"3D cells3d ({args.steps_3d}-step model)", r))
                print(f"{r['shape']}: {r['total_s']:.1f} s, {r['peak_mb']:.0f} MB", file=sys.stderr, flush=True)

    print(f"Machine: {platform.processor() or platform.machine()}, {args.threads} torch threads, torch "
          f"{torch.__version__}, CPU only. {time.strftime('%Y-%m-%d')}.\n")
    print("| image | shape | Mpx | embed s | cluster s | total s | s / Mpx | peak RSS MB | MB / Mpx | AP50 | objects (true / found) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        mpx = r["pixels"] / 1e6
        print(f"| {name} | {'×'.join(map(str, r['shape']))} | {mpx:.2f} | {r['embed_s']:.1f} | {r['cluster_s']:.1f} | "
              f"{r['total_s']:.1f} | {r['total_s'] / mpx:.1f} | {r['peak_mb']:.0f} | {r['peak_mb'] / mpx:.0f} | "
              f"{r['AP50']:.3f} | {r['n_true']:.0f} / {r['n_pred']:.0f} |")
    two_d = [r for n, r in rows if n == "2D BBBC039 mosaic"]
    if len(two_d) >= 2:
        a, b = two_d[0], two_d[-1]
        px = b["pixels"] / a["pixels"]
        print(f"\n{a['shape'][0]}² → {b['shape'][0]}²: {px:.0f}× the pixels, {b['total_s'] / a['total_s']:.1f}× the time, "
              f"{b['peak_mb'] / max(a['peak_mb'], 1):.1f}× the peak memory (linear: {px:.0f}×).")
        big = max(two_d, key=lambda r: r["pixels"])
        print(f"{big['shape'][0]}²: {big['total_s']:.1f} s (target ≤ 15 s), peak {big['peak_mb'] / 1024:.2f} GB "
              "(target ≤ 2 GB).")
        whole = [r for n, r in rows if n.startswith("2D mosaic, whole")]
        if whole:
            w = whole[0]
            print(f"Whole image at once: {w['total_s']:.1f} s, peak {w['peak_mb'] / 1024:.2f} GB → tiles use "
                  f"{w['peak_mb'] / max(big['peak_mb'], 1):.1f}× less memory, {w['total_s'] / big['total_s']:.2f}× the speed.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
