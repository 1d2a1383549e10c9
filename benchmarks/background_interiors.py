"""Background that looks like the painted interiors, made objects: a post-processing tried on saved models.

One EM image trained on with its 8-10 painted objects misses whole kinds of profile: the
foreground head calls them background (docs/benchmarks.md, "One EM image"). The forest peer
finds them with a rule that carries to any texture: interior against the ring around each
painted object. This script tries that rule after our segmentation, without training anything:
from the painted objects of the model's seed, a histogram of the smoothed, percentile-normalised
intensity (grey; colour averaged) inside the painted objects and one in a 2-px ring around them;
their log ratio scores each pixel. Then either

* ``--variant pixels``: background pixels scoring above 0, opened by a 3-px box, connected
  pieces between 15 % of the median and 1.5x the largest painted object become objects
  (grown 1 px into the background), or
* ``--variant blobs``: the background farther than a tenth of the painted median diameter
  (at least 2 px) from any object, as connected cores grown back by that distance, become
  objects where their cores score above 0 on the mean and their size is as above.

It prints AP50 and mAP of the held-out images without and with it, per data set and seed, for
the models that ``sparse_accuracy.py --save-dir DIR`` saved, or (``--one-image N``) the
one-image EM models of ``sparse_accuracy.py --datasets isbi2012-em --one-image N``.

Usage:  python benchmarks/background_interiors.py --models DIR [--datasets ...] [--variant pixels|blobs] [--json FILE]
        python benchmarks/background_interiors.py --models DIR --one-image 3 [--variant ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import sparse_accuracy as sa  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402
from skimage.segmentation import expand_labels  # noqa: E402

from napari_spoco import evaluate, segment  # noqa: E402
from napari_spoco.io import load_model  # noqa: E402

BINS = 32


def grey(img: np.ndarray, rgb: bool) -> np.ndarray:
    g = img.mean(-1) if rgb else img.astype(np.float32)
    lo, hi = np.percentile(g, [1, 99.8])
    return ndi.gaussian_filter(np.clip((g - lo) / max(hi - lo, 1e-6), 0, 1), 1.0)


def interior_model(images, painted, rgb: bool) -> tuple[np.ndarray, np.ndarray]:
    """Log ratio of the interior and ring histograms per intensity bin, and the painted sizes."""
    inside_h, ring_h, sizes = np.ones(BINS), np.ones(BINS), []
    for img, p in zip(images, painted):
        g, inside = grey(img, rgb), p > 0
        ring = ndi.binary_dilation(inside, iterations=2) & ~inside
        inside_h += np.histogram(g[inside], BINS, (0, 1))[0]
        ring_h += np.histogram(g[ring], BINS, (0, 1))[0]
        counts = np.bincount(p.ravel())[1:]
        sizes += counts[counts > 0].tolist()
    return np.log(inside_h / inside_h.sum()) - np.log(ring_h / ring_h.sum()), np.array(sizes)


def _add(labels: np.ndarray, pieces: np.ndarray, keep: np.ndarray, grow: int) -> np.ndarray:
    out = labels.astype(np.int64)
    ids = np.flatnonzero(keep) + 1
    lut = np.zeros(len(keep) + 1, np.int64)
    lut[ids] = np.arange(out.max() + 1, out.max() + 1 + len(ids))
    new = lut[pieces]
    if grow:
        new = expand_labels(new, grow)
    new = new * (labels == 0)
    return np.where(new > 0, new, out)


def add_pixels(img, labels, llr, sizes, rgb) -> tuple[np.ndarray, int]:
    from skimage.morphology import binary_opening

    b = np.clip((grey(img, rgb) * BINS).astype(int), 0, BINS - 1)
    mask = binary_opening((labels == 0) & (llr[b] > 0), np.ones((3,) * labels.ndim, bool))
    pieces, n = ndi.label(mask)
    if n == 0:
        return labels, 0
    size = np.bincount(pieces.ravel(), minlength=n + 1)[1:]
    keep = (size >= 0.15 * np.median(sizes)) & (size <= 1.5 * sizes.max())
    return _add(labels, pieces, keep, 1), int(keep.sum())


def add_blobs(img, labels, llr, sizes, rgb) -> tuple[np.ndarray, int]:
    med = np.median(sizes)
    diameter = 2 * (med / np.pi) ** 0.5 if labels.ndim == 2 else (6 * med / np.pi) ** (1 / 3)
    reach = max(2.0, diameter / 10)
    bg = labels == 0
    cores, n = ndi.label(ndi.distance_transform_edt(bg) > reach)
    if n == 0:
        return labels, 0
    blobs = expand_labels(cores, int(np.ceil(reach))) * bg
    b = np.clip((grey(img, rgb) * BINS).astype(int), 0, BINS - 1)
    score = ndi.mean(llr[b], cores, np.arange(1, n + 1))
    size = np.bincount(blobs.ravel(), minlength=n + 1)[1:]
    keep = (score > 0) & (size >= 0.15 * med) & (size <= 1.5 * sizes.max())
    return _add(labels, blobs, keep, 0), int(keep.sum())


def run(data: sa.Data, seed: int, model, variant: str, fraction: float) -> dict:
    rgb = data.split.rgb
    llr, sizes = interior_model(data.train_images, data.painted(fraction, seed), rgb)
    add = add_pixels if variant == "pixels" else add_blobs
    without, with_, added = [], [], 0
    for _, img, gt in data.tests:
        labels = segment(model, img, device="cpu")
        more, k = add(img, labels, llr, sizes, rgb)
        without.append(evaluate(gt, labels))
        with_.append(evaluate(gt, more))
        added += k
    mean = lambda s, k: float(np.mean([x[k] for x in s]))  # noqa: E731
    row = {"dataset": data.split.name, "seed": seed, "variant": variant, "added": added,
           "without": {k: mean(without, k) for k in ("AP50", "mAP")},
           "with": {k: mean(with_, k) for k in ("AP50", "mAP")}}
    print(f"{row['dataset']:22s} seed {seed}  AP50 {row['without']['AP50']:.3f} -> {row['with']['AP50']:.3f}  "
          f"mAP {row['without']['mAP']:.3f} -> {row['with']['mAP']:.3f}  objects added {added}", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, type=Path, help="--save-dir of sparse_accuracy.py")
    parser.add_argument("--datasets", nargs="*")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--one-image", type=int, default=0, metavar="N",
                        help="the one-image EM models (isbi2012-em-one<i>_seed0) instead")
    parser.add_argument("--variant", default="pixels", choices=["pixels", "blobs"])
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    if args.one_image:
        split = next(s for s in sa.splits() if s.name == "isbi2012-em")
        for part in sa.one_image_splits(split, args.one_image):
            model = load_model(args.models / f"{part.name}_seed0.spoco.pt")
            rows.append(run(sa.Data(part, features=False), 0, model, args.variant, args.fraction))
    else:
        for data, seed, model in sa.saved_models(args.models, args.datasets, args.seeds):
            rows.append(run(data, seed, model, args.variant, args.fraction))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
