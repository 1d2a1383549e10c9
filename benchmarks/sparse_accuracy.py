"""Sparse-label accuracy: SPOCO after a fixed CPU budget vs. two classical pipelines, per data set.

For each data set in ../shared/data: keep 10 % of the objects of each training image (seeded),
train for ``--minutes`` of wall-clock time, segment held-out images, and print AP50 / mAP / SBD
next to the better of two classical pipelines computed in the same run:

* blobs:     Gaussian smoothing + Otsu threshold + distance-transform watershed;
* membranes: Gaussian smoothing + threshold of the dark membranes + connected components of
             the cell interiors, grown back over the membranes by a watershed.

Usage:  python benchmarks/sparse_accuracy.py [--minutes 5] [--datasets bbbc039-nuclei ...]
                                            [--init default|none] [--scale auto|F]
                                            [--save-dir DIR]
Writes the markdown table to stdout (and to --out if given).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_spoco import TrainConfig, evaluate, segment, train  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


@dataclass
class Split:
    name: str
    train: list[str]
    test: list[str]
    note: str = ""


def splits() -> list[Split]:
    def stems(ds):
        return sorted(p.stem for p in (SHARED / ds / "images").glob("*.tif"))

    bbbc = stems("bbbc039-nuclei")
    phc = stems("usiigaci-phc")
    em = stems("isbi2012-em")
    return [
        Split("bbbc039-nuclei", bbbc[:10], bbbc[-6:]),
        Split("usiigaci-phc", phc[:6], phc[-3:]),
        Split("isbi2012-em", em[:10], em[-4:]),
        Split("cells3d-nuclei", ["cells3d_nuclei"], ["cells3d_nuclei"],
              "one volume: trained on 10 % of its nuclei, scored on all of them"),
    ]


def read(ds: str, stem: str, kind: str) -> np.ndarray:
    return tifffile.imread(SHARED / ds / kind / f"{stem}.tif")


def sparsify(mask: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = np.unique(mask[mask > 0])
    keep = rng.choice(ids, size=max(2, int(round(fraction * len(ids)))), replace=False)
    return np.where(np.isin(mask, keep), mask, 0)


def _norm(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [1, 99.8])
    return (img.astype(np.float32) - lo) / max(hi - lo, 1e-6)


def blobs_pipeline(img: np.ndarray) -> np.ndarray:
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    x = ndi.gaussian_filter(_norm(img), 1.5)
    fg = x > threshold_otsu(x)
    fg = ndi.binary_opening(fg, iterations=1)
    dist = ndi.distance_transform_edt(fg)
    dist = ndi.gaussian_filter(dist, 1.0)
    min_distance = 5 if img.ndim == 2 else 4
    peaks = peak_local_max(dist, min_distance=min_distance, labels=ndi.label(fg)[0], exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=fg)


def membranes_pipeline(img: np.ndarray) -> np.ndarray:
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    x = ndi.gaussian_filter(_norm(img), 1.0)
    interior = x > threshold_otsu(x)  # membranes are dark
    interior = ndi.binary_opening(interior, iterations=1)
    seeds, _ = ndi.label(interior)
    small = np.bincount(seeds.ravel()) < 30
    small[0] = False
    seeds[small[seeds]] = 0  # interiors under 30 px are noise, not cells
    return watershed(x.max() - x, seeds)


def classical(img: np.ndarray) -> dict[str, np.ndarray]:
    return {"blobs": blobs_pipeline(img), "membranes": membranes_pipeline(img)}


def mean_scores(scores: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([s[k] for s in scores])) for k in ("AP50", "mAP", "SBD")}


def start_model(init: str, ndim: int):
    """``default``: the shipped starting model where one exists for ``ndim`` (what
    ``napari-spoco train`` does), else a new network; ``none``: always a new network."""
    from napari_spoco.pretrained import has_default_model, load_default_model

    return load_default_model(ndim) if init == "default" and has_default_model(ndim) else None


def run(split: Split, minutes: float, fraction: float, seed: int, save_dir: Path | None = None,
        init: str = "default", scale: float | None = None) -> dict:
    ds = split.name
    images = [read(ds, s, "images") for s in split.train]
    sparse = [sparsify(read(ds, s, "masks"), fraction, seed + i) for i, s in enumerate(split.train)]
    n_painted = sum(len(np.unique(s)) - 1 for s in sparse)
    t0 = time.perf_counter()
    start = start_model(init, images[0].ndim)
    steps_before = start.history.get("steps", 0) if start is not None else 0
    model = train(images, sparse, TrainConfig(steps=0, minutes=minutes, seed=seed, device="cpu", scale=scale), model=start)
    train_s = time.perf_counter() - t0
    ours, classic = [], {"blobs": [], "membranes": []}
    seg_s = []
    for stem in split.test:
        img, gt = read(ds, stem, "images"), read(ds, stem, "masks")
        t = time.perf_counter()
        pred = segment(model, img, device="cpu")
        seg_s.append(time.perf_counter() - t)
        ours.append(evaluate(gt, pred))
        classic_labels = classical(img)
        for name, lab in classic_labels.items():
            classic[name].append(evaluate(gt, lab))
        if save_dir is not None and stem == split.test[0]:
            from napari_spoco.io import save_model
            from napari_spoco.overlay import save_overlay

            save_dir.mkdir(parents=True, exist_ok=True)
            save_model(model, save_dir / f"{ds}.spoco.pt")
            save_overlay(save_dir / f"{ds}_spoco.png", img, pred)
            save_overlay(save_dir / f"{ds}_truth.png", img, gt)
            for name, lab in classic_labels.items():
                save_overlay(save_dir / f"{ds}_{name}.png", img, lab)
    classic_mean = {k: mean_scores(v) for k, v in classic.items()}
    best = max(classic_mean, key=lambda k: classic_mean[k]["AP50"])
    return {
        "dataset": ds, "n_train": len(split.train), "n_test": len(split.test), "painted": n_painted,
        "steps": model.history["steps"] - steps_before, "start": "shipped 2D model" if start is not None else "new",
        "scale": model.pixel_scale, "train_s": train_s, "segment_s": float(np.mean(seg_s)),
        "ours": mean_scores(ours), "best_classical": best, "classical": classic_mean[best],
        "note": split.note,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| data set | train / test images | painted objects | start | scale | steps (time) | SPOCO AP50 | mAP | SBD | "
        "best classical | its AP50 | mAP | SBD | AP50 ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        o, c = r["ours"], r["classical"]
        ratio = o["AP50"] / c["AP50"] if c["AP50"] > 0 else float("inf")
        lines.append(
            f"| {r['dataset']} | {r['n_train']} / {r['n_test']} | {r['painted']} | {r['start']} | {r.get('scale', 1.0):g} | {r['steps']} "
            f"({r['train_s'] / 60:.1f} min) | {o['AP50']:.3f} | {o['mAP']:.3f} | {o['SBD']:.3f} | "
            f"{r['best_classical']} | {c['AP50']:.3f} | {c['mAP']:.3f} | {c['SBD']:.3f} | {ratio:.2f}× |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datasets", nargs="*")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--save-dir", type=Path, help="save each data set's model and PNG overlays here")
    parser.add_argument("--init", choices=["default", "none"], default="default",
                        help="start from the shipped model where there is one (as `napari-spoco train` does; "
                        "default) or from a new network")
    parser.add_argument("--scale", default="auto",
                        help="object scale for training and prediction: 'auto' (as `napari-spoco train`) or a factor")
    args = parser.parse_args()
    scale = None if args.scale == "auto" else float(args.scale)
    if not SHARED.is_dir():
        print(f"{SHARED} not found: the benchmarks need the shared data beside the repository.")
        return 1
    import torch

    results = []
    for split in splits():
        if args.datasets and split.name not in args.datasets:
            continue
        print(f"== {split.name}: training {args.minutes} min ...", file=sys.stderr, flush=True)
        r = run(split, args.minutes, args.fraction, args.seed, args.save_dir, args.init, scale)
        print(f"   {r}", file=sys.stderr, flush=True)
        results.append(r)
    header = (f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
              f"torch {torch.__version__}, CPU only. {time.strftime('%Y-%m-%d')}. "
              f"Sparse fraction {args.fraction:.0%}, seed {args.seed}, {args.minutes} min of training per data set.")
    text = header + "\n\n" + table(results) + "\n"
    notes = [f"* {r['dataset']}: {r['note']}" for r in results if r["note"]]
    if notes:
        text += "\n" + "\n".join(notes) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
