"""Early fine-tuning steps: does fine-tuning the shipped 2D model start by unlearning?

    python benchmarks/early_steps.py [--steps 1 5 20 100 300] [--seeds 0 1 2] [--compare]
                                     [--problem sample|bbbc039] [--data DIR] [--init default|none|FILE]
                                     [--threads N] [--precision auto|float32|bfloat16] [--json FILE]

Fine-tunes the shipped 2D model (``napari_spoco.pretrained.load_default_model(2)``) on sparse
labels and segments (default mean-shift ``segment``) after each step count in ``--steps``, for
each seed (``TrainConfig(seed=s)``). One training run per seed, ``max(--steps)`` steps long (the
learning-rate schedule is that run's), with a snapshot of the model at each step count; the
snapshots are segmented after the run. Step 0 is the shipped model itself (zero-shot).

* ``--problem sample`` (default): the shipped demo sample — trained on ``train_sparse`` (8 of 36
  nuclei painted), scored on the training crop and on the held-out crop.
* ``--problem bbbc039``: a check on whole BBBC039 fields from the data folder (``--data DIR``,
  default ``../shared/data`` beside the repository; not shipped): for seed s, train on the s-th training field of
  ``sparse_accuracy.py``'s split with 10 % of its nuclei painted, score that field and the
  s-th held-out field (both unseen by the shipped model).

Rule (issue 5): at every step count, the lowest AP50 over the seeds must not fall more than
``--margin`` (0.02) below the zero-shot AP50, on the training image and on the held-out one.
``--compare`` runs the behaviour before the fix side by side (``TrainConfig(stable_start=False)``:
the teacher follows the student from the first step and the model predicts with the student).
``--init none`` trains from scratch instead (no zero-shot row, no verdict): both behaviours
must then be identical, since the fix only concerns starting from a trained model. ``--init
FILE`` starts from a model file instead of the shipped model (a candidate start, checked
against the same rule before it is shipped).
Step counts, not minutes, so the numbers do not depend on the machine's load. ``--precision``:
training's number format (``TrainConfig.precision``; segmentation keeps its default).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from napari_spoco import TrainConfig, evaluate, segment  # noqa: E402
from napari_spoco.pretrained import load_default_model  # noqa: E402
from napari_spoco.training import iter_train  # noqa: E402

MODES = {"after": {}, "before": {"stable_start": False}}


def sample_problem(seed: int):
    """(training images, sparse labels, [(name, image, truth)] to score) for the demo sample."""
    from napari_spoco.sample import load_sample

    s = load_sample()
    return [s.train_image], [s.train_sparse], [("train", s.train_image, s.train_truth),
                                                ("held-out", s.test_image, s.test_truth)]


def bbbc039_problem(seed: int):
    from sparse_accuracy import read, sparsify, splits

    split = next(sp for sp in splits() if sp.name == "bbbc039-nuclei")
    train_stem, test_stem = split.train[seed % len(split.train)], split.test[seed % len(split.test)]
    image, mask = read("bbbc039-nuclei", train_stem, "images"), read("bbbc039-nuclei", train_stem, "masks")
    test_image, test_mask = read("bbbc039-nuclei", test_stem, "images"), read("bbbc039-nuclei", test_stem, "masks")
    return [image], [sparsify(mask, 0.1, seed)], [("train", image, mask), ("held-out", test_image, test_mask)]


PROBLEMS = {"sample": sample_problem, "bbbc039": bbbc039_problem}


def run(images, labels, config: TrainConfig, start, checkpoints: list[int]):
    """Train ``max(checkpoints)`` steps; return {step: CPU snapshot of the model}."""
    snaps = {}
    gen = iter_train(images, labels, replace(config, steps=max(checkpoints)), start)
    for p in gen:
        if p.step in checkpoints:
            snaps[p.step] = p.model.snapshot()
    return snaps


def ap50(model, targets) -> list[float]:
    return [float(evaluate(truth, segment(model, image, device="cpu"))["AP50"]) for _, image, truth in targets]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 5, 20, 100, 300])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--problem", choices=sorted(PROBLEMS), default="sample")
    from bench_data import add_data_argument, use_data_dir

    add_data_argument(ap)
    ap.add_argument("--init", default="default", metavar="default|none|FILE",
                    help="the shipped 2D model, a new network, or a model file")
    ap.add_argument("--compare", action="store_true", help="also run the behaviour before the fix")
    ap.add_argument("--margin", type=float, default=0.02)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"),
                    help="training's number format (segmentation keeps its default)")
    ap.add_argument("--json", type=Path, help="also save the scores here")
    args = ap.parse_args()
    import os

    import torch

    if args.threads:
        os.cpu_count = lambda: args.threads  # training sets torch's threads from the core count
        torch.set_num_threads(args.threads)
    if args.problem != "sample":
        use_data_dir(args.data, needs=("bbbc039-nuclei",))
    modes = ["after", "before"] if args.compare else ["after"]
    checkpoints = sorted(set(args.steps))
    # scores[mode][seed][step] = [AP50 per scored image]; step 0 = the starting model
    scores: dict[str, dict[int, dict[int, list[float]]]] = {m: {} for m in modes}
    zooms: dict[str, dict[int, float | None]] = {m: {} for m in modes}  # the patches' zoom each run used
    names = None
    t0 = time.perf_counter()
    for seed in args.seeds:
        images, labels, targets = PROBLEMS[args.problem](seed)
        names = [n for n, _, _ in targets]
        zero = ap50(load_start(args.init), targets) if args.init != "none" else None
        for mode in modes:
            start = load_start(args.init)
            config = TrainConfig(seed=seed, device="cpu", precision=args.precision, **MODES[mode])
            snaps = run(images, labels, config, start, checkpoints)
            zooms[mode][seed] = next(iter(snaps.values())).history.get("scale_jitter") if snaps else None
            scores[mode][seed] = {0: zero} if zero is not None else {}
            for step, snap in snaps.items():
                scores[mode][seed][step] = ap50(snap, targets)
            print(f"seed {seed} {mode}: " + ", ".join(
                f"{k}: " + "/".join(f"{v:.3f}" for v in vals) for k, vals in scores[mode][seed].items()),
                file=sys.stderr, flush=True)
    meta = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "data": args.problem,
            "init": args.init, "seeds": args.seeds, "precision": args.precision, "margin": args.margin,
            "minutes": round((time.perf_counter() - t0) / 60, 1), "scale_jitter": zooms}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "names": names, "scores": scores}, indent=1))
    ok = report(scores, names, meta)
    return 0 if ok or args.init == "none" else 1


def load_start(init: str):
    """The starting model of ``--init``: the shipped one, none (a new network) or a file."""
    if init == "default":
        return load_default_model(2)
    if init == "none":
        return None
    from napari_spoco.io import load_model

    return load_model(Path(init))


def report(scores, names, meta) -> bool:
    """Print the table (mean and min over seeds per scored image) and the verdicts."""
    modes = list(scores)
    seeds = list(next(iter(scores.values())))
    steps = sorted({st for m in modes for s in seeds for st in scores[m][s]})
    start = {"default": "shipped 2D model", "none": "new network"}.get(meta["init"], meta["init"])
    print(f"Data: {meta['data']}, start: {start}, "
          f"seeds {', '.join(map(str, seeds))}. AP50 (mean-shift segment), mean / min over seeds. "
          f"{meta['machine']}, {meta['threads']} torch threads, torch {meta['torch']}, {meta['date']}.")
    head = "| steps |"
    rule = "|---|"
    for m in modes:
        for n in names:
            head += f" {m}: {n} mean / min |"
            rule += "---|"
        if meta["init"] != "none":
            head += f" {m}: verdict |"
            rule += "---|"
    print("\n" + head + "\n" + rule)
    all_ok = True
    for st in steps:
        line = f"| {st} |"
        for m in modes:
            vals = np.array([scores[m][s][st] for s in seeds])  # (seeds, images)
            for j in range(len(names)):
                line += f" {vals[:, j].mean():.3f} / {vals[:, j].min():.3f} |"
            if meta["init"] != "none":
                if st == 0:
                    line += " zero-shot |"
                else:
                    worst = np.array([[scores[m][s][st][j] - scores[m][s][0][j] for j in range(len(names))]
                                      for s in seeds]).min()
                    ok = worst >= -meta["margin"] - 1e-9
                    all_ok &= ok if m == "after" else True
                    line += f" {'ok' if ok else 'DROP'} ({worst:+.3f}) |"
        print(line)
    if meta["init"] != "none":
        print(f"\nverdict: ({'after' if 'after' in modes else modes[0]}) "
              f"{'no' if all_ok else 'a'} drop of more than {meta['margin']} below zero-shot "
              "at any step count, seed and image" + ("" if all_ok else " (see DROP)"))
    return all_ok


if __name__ == "__main__":
    raise SystemExit(main())
