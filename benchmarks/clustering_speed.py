"""Clustering speed and accuracy: our torch mean-shift and sampled HDBSCAN versus scikit-learn's
MeanShift(bin_seeding=True) and the `hdbscan` package, on the *same* embeddings, side by side.

    python benchmarks/clustering_speed.py [--data DIR] [--crop 512] [--images 3]

Embeddings come from the shipped default model on held-out 512×512 crops of BBBC039 (the test
fields of sparse_accuracy.py). Every method clusters the same foreground pixels and goes through
the same post-processing (components, neighbour merge, size filter), so the AP50 difference is
the clustering's alone; times include that post-processing for all of them. Reads BBBC039 from
``--data DIR`` (default: ../shared/data beside the repository); `pip install hdbscan` for the last column.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_data import add_data_argument, use_data_dir  # noqa: E402
from sparse_accuracy import read, splits  # noqa: E402

import napari_spoco.clustering as clustering  # noqa: E402
from napari_spoco import ClusterConfig, embed, evaluate  # noqa: E402
from napari_spoco.pretrained import load_default_model  # noqa: E402
from napari_spoco.segmentation import auto_max_size, auto_min_size  # noqa: E402


def sklearn_mean_shift(points, bandwidth=0.5, max_points=None, n_seeds=None, min_cluster_size=1, seed=0, **_):
    from sklearn.cluster import MeanShift

    return MeanShift(bandwidth=bandwidth, bin_seeding=True, n_jobs=1).fit_predict(np.asarray(points))


def hdbscan_package(points, min_cluster_size=50, max_points=None, epsilon=0.5, seed=0):
    import hdbscan

    return hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, cluster_selection_epsilon=epsilon,
                           core_dist_n_jobs=1).fit_predict(np.asarray(points, dtype=np.float64))


def timed_cluster(emb, fg, config, replace=None, repeats=1):
    """cluster_embeddings with its core clustering call optionally swapped for another library's;
    the median of ``repeats`` timed calls (after one untimed warm-up call when repeats > 1)."""
    saved = (clustering.mean_shift, clustering.hdbscan_cluster)
    if replace == "sklearn":
        clustering.mean_shift = sklearn_mean_shift
    elif replace == "hdbscan":
        clustering.hdbscan_cluster = hdbscan_package
    try:
        if repeats > 1:
            clustering.cluster_embeddings(emb.embeddings, fg, config)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            labels = clustering.cluster_embeddings(emb.embeddings, fg, config)
            times.append(time.perf_counter() - t)
        return labels, float(np.median(times))
    finally:
        clustering.mean_shift, clustering.hdbscan_cluster = saved


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(ap)
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--images", type=int, default=3)
    args = ap.parse_args()
    use_data_dir(args.data, needs=("bbbc039-nuclei",))
    import torch

    try:
        import hdbscan  # noqa: F401

        have_hdbscan = True
    except ImportError:
        have_hdbscan = False
    model = load_default_model(2)
    split = next(s for s in splits() if s.name == "bbbc039-nuclei")
    rows = []
    for stem in split.test[: args.images]:
        img = read(split.name, stem, "images")[: args.crop, : args.crop]
        gt = read(split.name, stem, "masks")[: args.crop, : args.crop]
        emb = embed(model, img, device="cpu")
        base = ClusterConfig(min_size=auto_min_size(model, 2), max_size=auto_max_size(model, img.shape))
        n_fg = int((emb.foreground >= base.foreground_threshold).sum())
        row = {"image": stem.split("_w")[0], "fg_pixels": n_fg}
        for name, method, replace in [("ours_meanshift", "meanshift", None), ("sklearn_meanshift", "meanshift", "sklearn"),
                                      ("ours_hdbscan", "hdbscan", None)] + ([("hdbscan_pkg", "hdbscan", "hdbscan")] if have_hdbscan else []):
            cfg = ClusterConfig(**{**base.to_dict(), "method": method})
            # Ours are timed as the median of 5 calls after a warm-up (torch's first call in a
            # process pays one-off costs); the other libraries' single calls take seconds.
            labels, seconds = timed_cluster(emb, emb.foreground, cfg, replace, repeats=1 if replace else 5)
            row[name] = (seconds, evaluate(gt, labels)["AP50"])
            print(f"{row['image']} {name}: {seconds:.2f} s, AP50 {row[name][1]:.3f}", file=sys.stderr, flush=True)
        rows.append(row)

    print(f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, CPU only. {time.strftime('%Y-%m-%d')}. {args.crop}×{args.crop} crops of "
          "held-out BBBC039 fields, embeddings of the shipped default model.\n")
    cols = ["ours_meanshift", "sklearn_meanshift", "ours_hdbscan"] + (["hdbscan_pkg"] if have_hdbscan else [])
    print("| image | foreground px | " + " | ".join(f"{c} s (AP50)" for c in cols) + " | mean-shift speed-up | ΔAP50 |")
    print("|---|---|" + "---|" * len(cols) + "---|---|")
    for r in rows:
        cells = [f"{r[c][0]:.2f} ({r[c][1]:.3f})" for c in cols]
        speed = r["sklearn_meanshift"][0] / r["ours_meanshift"][0]
        dap = r["ours_meanshift"][1] - r["sklearn_meanshift"][1]
        print(f"| {r['image']} | {r['fg_pixels']} | " + " | ".join(cells) + f" | {speed:.0f}× | {dap:+.3f} |")
    speed = np.mean([r["sklearn_meanshift"][0] / r["ours_meanshift"][0] for r in rows])
    dap = np.mean([r["ours_meanshift"][1] - r["sklearn_meanshift"][1] for r in rows])
    print(f"\nmean: torch mean-shift {speed:.0f}× faster than scikit-learn MeanShift(bin_seeding=True), "
          f"AP50 difference {dap:+.3f} (target: ≥ 50×, within 0.01)")
    if have_hdbscan:
        hs = np.mean([r["hdbscan_pkg"][0] / r["ours_hdbscan"][0] for r in rows])
        print(f"sampled HDBSCAN {hs:.1f}× faster than the hdbscan package on all points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
