"""A correction round: does painting wrong instances as background, and training again, fix them?

    python benchmarks/sparse_accuracy.py --datasets D [--other-split] --seeds 0 1 2 --save-dir DIR
    python benchmarks/correction_round.py --models DIR --dataset D [--other-split] --correct STEM [STEM ...] \\
        [--seeds 0 1 2] [--minutes 2] [--marks 20] [--visit F] [--json FILE]

The loop a user runs in napari after a first training: segment another image, see instances where
there is no object (debris, a channel wall, halos), select each and press "Use selected as
background", train again. Here a simulated user does it on the images ``--correct`` names (images
of the set that neither side of the split uses): each model that ``sparse_accuracy.py
--save-dir`` saved is segmented on them; an instance with at least 80 % of its pixels outside
every true object is wrong, and the user marks the ``--marks`` largest of them per image as
background (``data.mark_background``, the button's function). Then, from the saved model, for
``--minutes`` each and side by side:

* **more time**: the same painting, and the correction images with nothing painted (so that
  the arms differ only in the strokes);
* **corrected**: the same painting, and the correction images with their marked instances as
  painted background (the library's default sampling: the patches not centred on a painted
  object fall anywhere);
* **corrected, visited** (``--visit F``): as corrected, with ``TrainConfig.background_fraction``
  F: that share of the patches not centred on an object is centred on the painted background.

Each arm segments the split's held-out images, which no correction touched: AP50, mAP and the
instances over background there, mean over the held-out images, per seed. The painted objects
are re-drawn exactly as ``sparse_accuracy.py`` drew them for that seed. Results:
docs/benchmarks.md, "A correction round".
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_data import add_data_argument, read, use_data_dir  # noqa: E402
from sparse_accuracy import Data, cpu_name, other_split, splits  # noqa: E402

from napari_spoco import TrainConfig, segment, train  # noqa: E402
from napari_spoco.data import mark_background  # noqa: E402
from napari_spoco.io import load_model  # noqa: E402
from napari_spoco.metrics import evaluate  # noqa: E402

BACKGROUND = 65535  # the napari panel's default background value
OVER_BACKGROUND = 0.8  # share of an instance's pixels outside every true object that makes it wrong


def wrong_instances(pred: np.ndarray, truth: np.ndarray) -> list[tuple[int, int]]:
    """(id, size) of the predicted instances lying mostly outside every true object, largest first."""
    size = np.bincount(pred.ravel(), minlength=int(pred.max()) + 1)
    outside = np.bincount(pred.ravel(), weights=(truth.ravel() == 0), minlength=size.size)
    ids = [i for i in range(1, size.size) if size[i] and outside[i] >= OVER_BACKGROUND * size[i]]
    return sorted(((i, int(size[i])) for i in ids), key=lambda t: -t[1])


def score(model, data: Data) -> dict:
    """Mean AP50 / mAP over the held-out images, and the instances over background per image."""
    rows = []
    for _, img, gt in data.tests:
        pred = segment(model, img, device="cpu")
        rows.append({**evaluate(gt, pred), "over_background": len(wrong_instances(pred, gt))})
    return {"AP50": float(np.mean([r["AP50"] for r in rows])), "mAP": float(np.mean([r["mAP"] for r in rows])),
            "over_background": [r["over_background"] for r in rows], "per_image_AP50": [r["AP50"] for r in rows]}


def again(model_path: Path, images: list, labels: list, minutes: float, seed: int, **config) -> tuple:
    """The saved model trained ``minutes`` more on ``images``/``labels``; (model, steps)."""
    model = load_model(model_path)
    before = model.history.get("steps", 0)
    cfg = TrainConfig(steps=0, minutes=minutes, seed=seed + 100, device="cpu", background_label=BACKGROUND, **config)
    model = train(images, labels, cfg, model=model)
    return model, int(model.history["steps"] - before)


def run_seed(data: Data, model_path: Path, seed: int, correct: list[tuple[str, np.ndarray, np.ndarray]],
             args: argparse.Namespace) -> dict:
    model = load_model(model_path)
    painted = [s.astype(np.uint32) for s in data.painted(args.fraction, seed)]
    row: dict = {"seed": seed, "first": score(model, data), "marked": []}
    strokes = []
    for stem, img, gt in correct:
        pred = np.asarray(segment(model, img, device="cpu"))
        wrong = wrong_instances(pred, gt)
        chosen = [i for i, _ in wrong[: args.marks]]
        sparse, marked = mark_background(np.zeros(pred.shape, np.uint32), pred, chosen, BACKGROUND)
        strokes.append(sparse)
        row["marked"].append({"image": stem, "wrong": len(wrong), "marked": marked,
                              "pixels": int((sparse == BACKGROUND).sum()), "of_pixels": int(sparse.size)})
    print(f"   seed {seed}: first {row['first']['AP50']:.3f}, marked {row['marked']}", file=sys.stderr, flush=True)
    images = data.train_images + [img for _, img, _ in correct]
    arms = {"more_time": (painted + [np.zeros_like(s) for s in strokes], {}),
            "corrected": (painted + strokes, {})}
    if args.visit:
        arms["corrected_visited"] = (painted + strokes, {"background_fraction": args.visit})
    for name, (labels, config) in arms.items():
        t = time.perf_counter()
        trained, steps = again(model_path, images, labels, args.minutes, seed, **config)
        row[name] = {**score(trained, data), "steps": steps, "train_s": time.perf_counter() - t}
        print(f"   seed {seed}: {name} {row[name]['AP50']:.3f} ({steps} steps), over background "
              f"{row[name]['over_background']}", file=sys.stderr, flush=True)
    return row


def table(result: dict) -> str:
    arms = [a for a in ("first", "more_time", "corrected", "corrected_visited") if a in result["seeds"][0]]
    lines = ["| arm | AP50 mean (per seed) | mAP mean | instances over background per held-out image (per seed) | steps |",
             "|---|---|---|---|---|"]
    for arm in arms:
        rows = [r[arm] for r in result["seeds"]]
        ap = [r["AP50"] for r in rows]
        lines.append(
            f"| {arm.replace('_', ' ')} | {np.mean(ap):.3f} ({' / '.join(f'{a:.3f}' for a in ap)}) | "
            f"{np.mean([r['mAP'] for r in rows]):.3f} | {' ; '.join('/'.join(map(str, r['over_background'])) for r in rows)} | "
            f"{', '.join(str(r.get('steps', '—')) for r in rows)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--models", type=Path, required=True, help="the --save-dir of sparse_accuracy.py")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--other-split", action="store_true", help="the models of sparse_accuracy.py --other-split")
    parser.add_argument("--correct", nargs="+", required=True,
                        help="stems of the images the simulated user corrects (in neither side of the split)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fraction", type=float, default=0.1, help="as sparse_accuracy.py painted")
    parser.add_argument("--minutes", type=float, default=2.0, help="training after the correction, per arm")
    parser.add_argument("--marks", type=int, default=20, help="wrong instances marked per correction image")
    parser.add_argument("--visit", type=float, default=0.0, metavar="F",
                        help="also the corrected arm with this share of the patches not centred on an object "
                        "centred on painted background (TrainConfig.background_fraction)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    use_data_dir(args.data)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    split = next((s for s in splits() if s.name == args.dataset), None)
    if split is None:
        parser.error(f"unknown data set {args.dataset!r}")
    if args.other_split:
        split = other_split(split)
        if split is None:
            parser.error(f"{args.dataset} has no other split")
    used = set(split.train) | set(split.test)
    if used & set(args.correct):
        parser.error(f"--correct names images of the split: {sorted(used & set(args.correct))}")
    data = Data(split, features=False)
    correct = [(s, read(split.dataset, s, "images")[split.crop], read(split.dataset, s, "masks")[split.crop])
               for s in args.correct]
    result = {"dataset": split.name, "correct": args.correct, "minutes": args.minutes, "marks": args.marks,
              "visit": args.visit,
              "machine": f"{cpu_name()}, {platform.machine()}", "seeds": []}
    for seed in args.seeds:
        path = args.models / f"{split.name}_seed{seed}.spoco.pt"
        if not path.is_file():
            print(f"   no model {path}", file=sys.stderr)
            continue
        result["seeds"].append(run_seed(data, path, seed, correct, args))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    if result["seeds"]:
        print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
