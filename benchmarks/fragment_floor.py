"""The fragment floor (``segmentation.auto_min_size``) when the painting is skewed towards large
objects: the median's share alone against the median's share limited by the small end.

    python benchmarks/sparse_accuracy.py --datasets D --seeds 0 1 2 --save-dir DIR
    python benchmarks/fragment_floor.py --models DIR [--datasets D ...] [--seeds 0 1 2] [--json FILE]

Pieces under the floor join the neighbour they touch most (or vanish). The floor was 15 % of
the painted objects' median size; a user who paints mostly large objects (the ones the model got
wrong, or the ones the suggestions point to: on EM a small fragment of a large cell leads the
user to paint the whole cell) moves that median, and the floor then removes true small objects.
Now ``segment`` lets it come down to 15 % of the median piece the image itself holds, but not
below half of what the painted median gives (``ClusterConfig.adaptive_min_size``).

For each model ``sparse_accuracy.py --save-dir`` saved (``DIR/<dataset>_seed<S>.spoco.pt``), the
held-out images are embedded once and clustered as if the model had been trained on each of
three paintings of the training images (only the painted median the model records changes),
with the floor as before (15 % of that median) and as now:

* **as trained**: the painted objects of that seed, re-drawn as ``sparse_accuracy.py`` drew them
  (10 %);
* **skewed**: those plus as many again of the unpainted true objects above the median size
  (drawn at random, seeded): a painting like two rounds that followed the suggestions on EM
  (5 % at random, then 2 × 2.5 % of mostly large cells);
* **skewed x3**: three times as many again (like six such rounds).

Only the floor changes; the weights are the model's, so this measures the statistic alone
(``benchmarks/active_labelling.py`` measures the loop). Results: docs/benchmarks.md,
"The fragment floor when the painting is skewed".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_data import add_data_argument, use_data_dir  # noqa: E402
from sparse_accuracy import Data, saved_models  # noqa: E402

from napari_spoco import segmentation  # noqa: E402
from napari_spoco.clustering import ClusterConfig  # noqa: E402
from napari_spoco.metrics import evaluate  # noqa: E402
from napari_spoco.scaling import resize_labels, scaled_shape  # noqa: E402

RULES = ("before", "now")
PAINTINGS = ("as trained", "skewed", "skewed x3")


def painted_sizes(masks: list[np.ndarray], scale: float) -> np.ndarray:
    """Pixel counts of the painted objects at the network's scale (as ``train`` records them)."""
    if scale != 1.0:
        masks = [resize_labels(m, scaled_shape(m.shape, (scale,) * m.ndim)) for m in masks]
    sizes = np.concatenate([np.bincount(m.ravel())[1:] for m in masks])
    return sizes[sizes > 0].astype(float)


def skewed(data: Data, painted: list[np.ndarray], seed: int, times: int = 1) -> list[np.ndarray]:
    """``painted`` plus ``times`` as many again of the unpainted true objects above the median size."""
    rng = np.random.default_rng(1000 + seed)
    all_sizes = np.concatenate([np.bincount(m.ravel())[1:] for m in data.train_masks])
    median = np.median(all_sizes[all_sizes > 0])
    candidates = []
    for i, (mask, p) in enumerate(zip(data.train_masks, painted)):
        sizes = np.bincount(mask.ravel())
        done = set(np.unique(mask[p > 0]).tolist())
        candidates += [(i, k) for k in range(1, len(sizes)) if sizes[k] > median and k not in done]
    n_extra = times * int(sum(len(np.unique(p)) - 1 for p in painted))
    pick = rng.choice(len(candidates), size=min(n_extra, len(candidates)), replace=False)
    out = [p.copy() for p in painted]
    for j in pick:
        i, k = candidates[j]
        out[i][data.train_masks[i] == k] = out[i].max() + 1
    return out


def score(model, data: Data, median: float, rule: str, cache: dict) -> dict:
    """Mean AP50 / mAP over the held-out images with the model's painted median set to ``median``:
    ``before``, the floor is 15 % of it; ``now``, ``segment``'s default (the floor may come down
    to the image's pieces, ``ClusterConfig.adaptive_min_size``)."""
    import copy

    m = copy.copy(model)
    m.history = {**model.history, "object_size_median": median}
    floor = segmentation.auto_min_size(m, model.config.ndim)
    key = (rule, floor)
    if key not in cache:
        if rule == "before":  # segment() takes min_size in image pixels
            cfg = ClusterConfig(min_size=max(1, int(round(floor / model.pixel_scale**model.config.ndim))))
        else:
            cfg = ClusterConfig()
        res = [evaluate(gt, segmentation.segment(m, img, device="cpu", config=cfg)) for _, img, gt in data.tests]
        cache[key] = {"floor": floor, **{k: float(np.mean([r[k] for r in res])) for k in ("AP50", "mAP")}}
    return cache[key]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, type=Path, help="--save-dir of sparse_accuracy.py")
    parser.add_argument("--datasets", nargs="*")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--json", type=Path)
    add_data_argument(parser)
    args = parser.parse_args()
    use_data_dir(args.data)
    real_embed = segmentation.embed
    rows = []
    for data, seed, model in saved_models(args.models, args.datasets, args.seeds):
        split = data.split
        if model.config.ndim != 2:  # the 2D sets (a painting of a cropped volume is another matter)
            continue

        def embed_once(m, image, memo={}, **kw):  # the same image's embedding for every floor  # noqa: B006
            key = (image.shape, hashlib.md5(np.ascontiguousarray(image.data).tobytes()).hexdigest())
            if key not in memo:
                memo[key] = real_embed(m, image, **kw)
            return memo[key]

        segmentation.embed = embed_once  # a new memo per model (a new function, a new default)
        painted = data.painted(args.fraction, seed)
        row = {"dataset": split.name, "seed": seed}
        cache: dict = {}
        for painting, masks in (("as trained", painted), ("skewed", skewed(data, painted, seed)),
                                ("skewed x3", skewed(data, painted, seed, times=3))):
            sizes = painted_sizes(masks, model.pixel_scale)
            median = float(np.median(sizes))
            row[painting] = {"n": int(len(sizes)), "size_median": median,
                             **{rule: score(model, data, median, rule, cache) for rule in RULES}}
        segmentation.embed = real_embed
        rows.append(row)
        print(f"{split.name:15s} seed {seed}  " + "  ".join(
            f"{p}: median {row[p]['size_median']:.0f} -> " + ", ".join(
                f"{r} AP50 {row[p][r]['AP50']:.3f}" for r in RULES)
            for p in PAINTINGS), flush=True)
    print("\n| data set | painting | painted median (px) | floor: 15 % of it (before) | AP50 before | AP50 now "
          "(the floor may come down to the image's pieces) |")
    print("|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == name]
        for p in PAINTINGS:
            med = [r[p]["size_median"] for r in rs]
            floors = [r[p]["before"]["floor"] for r in rs]
            cells = [f"{min(med):.0f}–{max(med):.0f}", f"{min(floors)}–{max(floors)} px"]
            for rule in RULES:
                ap = [r[p][rule]["AP50"] for r in rs]
                cells.append(f"{np.mean(ap):.3f} ({min(ap):.3f}–{max(ap):.3f})")
            print(f"| {name} | {p} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
