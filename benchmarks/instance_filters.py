"""Which wrong instances could a rule learned from the painted objects drop? Measured on saved models.

    python benchmarks/sparse_accuracy.py --datasets D --seeds 0 1 2 --save-dir DIR
    python benchmarks/instance_filters.py --models DIR --datasets D [--seeds 0 1 2] [--json FILE]

For each model that ``sparse_accuracy.py --save-dir`` saved (``DIR/<dataset>_seed<S>.spoco.pt``)
the held-out images of that data set are segmented as ``segment`` does by default, and every
predicted instance gets three numbers: its mean foreground probability, its size and its spread
(mean distance of its pixels' embeddings from their mean). Against the dense truth an instance
is *right* (IoU > 0.5 with a true object), *over background* (more than 80 % of its pixels on
unlabelled truth: debris, halos) or *other* (merged, split, partial).

The rules a user's data could support are calibrated on the **painted objects only**: the
training images are segmented too, and the predicted instances matching a painted object
(IoU > 0.5) give the painted objects' foreground, size and spread. Each rule drops the held-out
instances beyond a threshold taken from them (e.g. smaller than half the 5th percentile of
the painted sizes) and the AP50 is scored again, side by side with no rule. The "saved median"
rules use only the painted masks' median size that training stores in the model (what
``segment`` could apply by itself); the "merge-or-drop" rules re-segment with ``min_size``
(small pieces join the neighbour they touch most, isolated ones vanish) at a fraction of that
median instead of the default 15 %. The painted objects are re-drawn exactly as
``sparse_accuracy.py`` drew them for that seed. Results: docs/benchmarks.md, "Dropping
instances by what the painted objects look like".
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

from bench_data import add_data_argument, use_data_dir  # noqa: E402
from sparse_accuracy import Data, splits  # noqa: E402

from napari_spoco import segment  # noqa: E402
from napari_spoco.clustering import ClusterConfig  # noqa: E402
from napari_spoco.io import load_model  # noqa: E402
from napari_spoco.metrics import evaluate  # noqa: E402

#: Sizes (fractions of the saved painted median) at which ``min_size``'s merge-or-drop is also
#: tried: the default is 0.15 (``segmentation.auto_min_size``).
ABSORB_FRACTIONS = (0.25, 0.33)

#: Training images segmented to find the painted objects' predicted instances (time, not need).
CALIBRATION_IMAGES = 3


def instance_numbers(labels: np.ndarray, emb) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label id 0..N: pixel count, mean foreground probability, mean embedding spread."""
    n = int(labels.max())
    flat = labels.ravel()
    count = np.bincount(flat, minlength=n + 1).astype(float)
    denom = np.maximum(count, 1)
    fg = np.bincount(flat, weights=emb.foreground.ravel(), minlength=n + 1) / denom
    e = emb.embeddings.reshape(emb.embeddings.shape[0], -1)
    means = np.stack([np.bincount(flat, weights=c, minlength=n + 1) for c in e]) / denom
    dist = np.sqrt(((e - means[:, flat]) ** 2).sum(0))
    spread = np.bincount(flat, weights=dist, minlength=n + 1) / denom
    return count, fg, spread


def matches(labels: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per label id 0..N: best IoU with a truth object, and the share of its pixels on truth 0."""
    n, m = int(labels.max()), int(truth.max())
    pairs = labels.astype(np.int64) * (m + 1) + truth.astype(np.int64)
    table = np.bincount(pairs.ravel(), minlength=(n + 1) * (m + 1)).reshape(n + 1, m + 1)
    sizes, true_sizes = table.sum(1), table.sum(0)
    inter = table[:, 1:]
    iou = inter / np.maximum(sizes[:, None] + true_sizes[None, 1:] - inter, 1)
    best = iou.max(1) if m else np.zeros(n + 1)
    return best, table[:, 0] / np.maximum(sizes, 1)


def thresholds(painted: np.ndarray, model_median: float | None = None) -> dict[str, tuple[str, str, float]]:
    """Rules from the painted objects' (foreground, size, spread) rows: name -> (number, side, value).
    ``model_median``: the painted masks' median size that training saved in the model, in the
    image's pixels (what the library itself knows at segmentation time)."""
    fg, size, spread = painted.T
    saved = {} if not model_median else {
        f"size < saved median × {f}": ("size", "below", float(model_median * f)) for f in (0.2, 0.25, 0.33)}
    return {**saved,
        "foreground < painted min": ("foreground", "below", float(fg.min())),
        "foreground < painted 5 %": ("foreground", "below", float(np.quantile(fg, 0.05))),
        "size < painted min / 2": ("size", "below", float(size.min() / 2)),
        "size < painted 5 % / 2": ("size", "below", float(np.quantile(size, 0.05) / 2)),
        "size < painted median / 4": ("size", "below", float(np.median(size) / 4)),
        "size < painted min": ("size", "below", float(size.min())),
        "spread > painted max": ("spread", "above", float(spread.max())),
    }


def one_model(data: Data, seed: int, model_path: Path) -> dict:
    model = load_model(model_path)
    painted_rows = []
    for image, sparse in list(zip(data.train_images, data.painted(0.1, seed)))[:CALIBRATION_IMAGES]:
        labels, emb = segment(model, image, device="cpu", return_embedding=True)
        count, fg, spread = instance_numbers(labels, emb)
        best, _ = matches(labels, sparse)
        painted_rows += [(fg[i], count[i], spread[i]) for i in range(1, len(best)) if best[i] > 0.5]
    if not painted_rows:
        return {"seed": seed, "error": "no predicted instance matches a painted object"}
    painted = np.array(painted_rows)
    kinds: dict[str, list] = {"right": [], "over background": [], "other": []}
    held_out = []
    for _, image, truth in data.tests:
        labels, emb = segment(model, image, device="cpu", return_embedding=True)
        numbers = instance_numbers(labels, emb)
        best, on_background = matches(labels, truth)
        for i in range(1, len(best)):
            if numbers[0][i]:
                kind = "right" if best[i] > 0.5 else ("over background" if on_background[i] > 0.8 else "other")
                kinds[kind].append([float(v[i]) for v in numbers])
        held_out.append((labels, truth, numbers))
    columns = {"size": 0, "foreground": 1, "spread": 2}
    median = model.history.get("object_size_median")
    median = median / float(np.prod(model.network_factors())) if median else None  # network -> image pixels
    rules = {"none": None, **thresholds(painted, median)}
    ap50 = {}
    for name, rule in rules.items():
        scores = []
        for labels, truth, numbers in held_out:
            keep = np.ones(len(numbers[0]), bool)
            if rule is not None:
                value = numbers[columns[rule[0]]]
                keep = value >= rule[2] if rule[1] == "below" else value <= rule[2]
            keep[0] = False
            scores.append(evaluate(truth, np.where(keep[labels], labels, 0))["AP50"])
        ap50[name] = float(np.mean(scores))
    if median:  # the existing merge-or-drop of small pieces (segment's min_size) at a larger size
        for f in ABSORB_FRACTIONS:
            config = ClusterConfig(min_size=max(1, int(round(f * median))))
            ap50[f"merge-or-drop < saved median × {f}"] = float(np.mean(
                [evaluate(truth, segment(model, image, config=config, device="cpu"))["AP50"]
                 for _, image, truth in data.tests]))
    summary = {k: {"n": len(v), **({f"{c} median": float(np.median(np.array(v)[:, j])) for c, j in
                                    (("size", 0), ("foreground", 1), ("spread", 2))} if v else {})}
               for k, v in kinds.items()}
    return {"seed": seed, "painted_matched": len(painted), "rules": {k: v for k, v in rules.items() if v},
            "ap50": ap50, "instances": summary}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(ap)
    ap.add_argument("--models", type=Path, required=True, help="the --save-dir of a sparse_accuracy.py run")
    ap.add_argument("--datasets", nargs="+", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    use_data_dir(args.data)
    results = {}
    for split in splits():
        if split.name not in args.datasets:
            continue
        data = Data(split, features=False)
        for seed in args.seeds:
            path = args.models / f"{split.name}_seed{seed}.spoco.pt"
            if not path.is_file():
                print(f"{split.name} seed {seed}: no model at {path}, skipped", flush=True)
                continue
            r = one_model(data, seed, path)
            results.setdefault(split.name, []).append(r)
            print(json.dumps({"dataset": split.name, **r}), flush=True)
    print("\n| data set | rule | AP50 per seed | mean change |\n|---|---|---|---|")
    for ds, runs in results.items():
        runs = [r for r in runs if "ap50" in r]
        for rule in runs[0]["ap50"] if runs else []:
            per = [r["ap50"][rule] for r in runs]
            change = np.mean([r["ap50"][rule] - r["ap50"]["none"] for r in runs])
            print(f"| {ds} | {rule} | {' / '.join(f'{v:.3f}' for v in per)} | {change:+.3f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
