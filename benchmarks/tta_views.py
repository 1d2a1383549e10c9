"""Test-time augmentation: the same trained models segmented with the network run once per tile,
or its output averaged over mirrored views of the tile (docs/method.md, "Test-time augmentation").

Takes the models that ``sparse_accuracy.py --save-dir DIR`` saved (``{dataset}_seed{N}.spoco.pt``)
and segments each data set's held-out images with every variant, everything else at its default:

* ``one``: one pass (``segment(tta=False)``);
* ``two``: as it is and mirrored in Y and X together;
* ``four``: as it is, mirrored in X, in Y and in both (the default, ``inference.TTA_FLIPS``);
* ``eight``: 3D only, the four views and each of them mirrored in Z too;
* ``foreground``: the embeddings of one pass with the four views' foreground.

Prints AP50 and mAP per seed, the error counts of ``postprocess_steps.anatomy`` and the seconds
each variant took for the held-out images.

Usage:  python benchmarks/tta_views.py --models DIR [--datasets ...] [--seeds 0 1 2]
            [--variants one two four eight foreground] [--json FILE]
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

import postprocess_steps as ps  # noqa: E402
import sparse_accuracy as sa  # noqa: E402

from napari_spoco import evaluate, inference, segment, segmentation  # noqa: E402
from napari_spoco.inference import Embedding  # noqa: E402
from napari_spoco.io import load_model  # noqa: E402

FOUR = inference.TTA_FLIPS
VIEWS = {"two": ((), (-2, -1)), "four": FOUR, "eight": FOUR + tuple((-3,) + f for f in FOUR)}
VARIANTS = ("one", "two", "four", "eight", "foreground")


def _with_foreground_of_four(*args, **kwargs) -> Embedding:
    """One pass's embeddings, the four views' foreground."""
    kwargs.pop("tta", None)
    one = inference.embed(*args, tta=False, **kwargs)
    four = inference.embed(*args, tta=True, **kwargs)
    return Embedding(one.embeddings, four.foreground, one.teacher_embeddings)


def score(model, data: sa.Data, variant: str) -> dict:
    """Mean AP50 / mAP over the held-out images with one variant, the error counts summed."""
    segmentation.embed = _with_foreground_of_four if variant == "foreground" else inference.embed
    inference.TTA_FLIPS = VIEWS.get(variant, FOUR)
    t0 = time.perf_counter()
    scores, errors = [], {}
    try:
        for _, img, gt in data.tests:
            pred = segment(model, img, device="cpu", tta=variant != "one")
            scores.append(evaluate(gt, pred))
            for k, v in ps.anatomy(gt, pred).items():
                errors[k] = errors.get(k, 0) + v
    finally:
        segmentation.embed, inference.TTA_FLIPS = inference.embed, FOUR
    return {"AP50": float(np.mean([s["AP50"] for s in scores])), "mAP": float(np.mean([s["mAP"] for s in scores])),
            "seconds": time.perf_counter() - t0, **errors}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, help="--save-dir of sparse_accuracy.py")
    p.add_argument("--datasets", nargs="*")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["one", "two", "four", "foreground"])
    p.add_argument("--json")
    a = p.parse_args()
    rows = []
    for split in sa.splits():
        if (a.datasets and split.name not in a.datasets) or (not a.datasets and split.optional):
            continue
        data = None
        for seed in a.seeds:
            path = Path(a.models) / f"{split.name}_seed{seed}.spoco.pt"
            if not path.is_file():
                continue
            data = data or sa.Data(split, features=False)
            model = load_model(path)
            row = {"dataset": split.name, "seed": seed}
            for variant in a.variants:
                if variant == "eight" and model.config.ndim == 2:
                    continue
                row[variant] = score(model, data, variant)
                r = row[variant]
                print(f"{split.name:22s} seed {seed}  {variant:10s} AP50 {r['AP50']:.3f}  mAP {r['mAP']:.3f}  "
                      f"{r['seconds']:.1f} s  merged {r['merged']} split {r['split']} false {r['false']}", flush=True)
            rows.append(row)
    print("\n| data set | seeds | " + " | ".join(a.variants) + " |\n|---|---|" + "---|" * len(a.variants))
    for name in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == name]
        cells = [f"{np.mean([r[v]['AP50'] for r in rs]):.3f} (mAP {np.mean([r[v]['mAP'] for r in rs]):.3f}; "
                 f"{np.mean([r[v]['seconds'] for r in rs]):.1f} s)" if v in rs[0] else "—" for v in a.variants]
        print(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
