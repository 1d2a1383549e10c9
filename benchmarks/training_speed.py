"""Training steps per second of the CPU-default network, variants side by side in one run.

    python benchmarks/training_speed.py [--data DIR] [--ndim 2|3] [--steps 40] [--rounds 3]

Data: the sparse-accuracy benchmark's training images with 10 % of the objects painted: the
BBBC039 fields (2D), or the training half of the cells3d volume (3D).
Variants (each fine-tunes a fresh copy of the shipped 2D or 3D model with the default TrainConfig):

* ``current``            — bfloat16 convolutions where the CPU has them natively
  (napari_spoco.precision.native_bfloat16), float32 elsewhere;
* ``float32``            — ``precision="float32"`` (the library's default is ``auto``: bfloat16
  where native, 2D and 3D);
* ``no channels-last``  — convolutions in the default (contiguous) memory format;
* ``1 thread``           — torch limited to one thread.

The rate is the training loop's own (``TrainProgress.steps_per_second`` after the last step): the
set-up before the first step and the edge calibration after the last are not counted.
Rounds alternate the variants so that drifts of a shared machine hit all of them alike; the
table gives the median steps/s over rounds and the ratio to ``current``. A per-phase breakdown of
one ``current`` step (cProfile, cumulative) follows.
"""

from __future__ import annotations

import argparse
import cProfile
import platform
import pstats
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_data import add_data_argument, use_data_dir  # noqa: E402
from sparse_accuracy import read, sparsify, splits  # noqa: E402

import napari_spoco.training as training  # noqa: E402
from napari_spoco import TrainConfig, train  # noqa: E402
from napari_spoco.pretrained import load_default_model  # noqa: E402

VARIANTS = ["current", "float32", "no channels-last", "1 thread"]


def steps_per_second(images, labels, steps: int, variant: str, ndim: int = 2) -> float:
    import os

    import torch

    saved_threads, cpu_count = torch.get_num_threads(), os.cpu_count
    try:
        training.CHANNELS_LAST = variant != "no channels-last"
        if variant == "1 thread":
            os.cpu_count = lambda: 1  # train() sets torch's thread count from os.cpu_count()
        precision = "float32" if variant == "float32" else fast_precision()  # the other variants: as `current`
        train(images, labels, TrainConfig(steps=3, device="cpu", precision=precision),
              model=load_default_model(ndim))  # warm-up
        last = []  # the loop's own rate: without the set-up and the edge calibration after the last step
        train(images, labels, TrainConfig(steps=steps, device="cpu", precision=precision), model=load_default_model(ndim),
              callback=last.append)
        return last[-1].steps_per_second
    finally:
        training.CHANNELS_LAST = True
        os.cpu_count = cpu_count
        torch.set_num_threads(saved_threads)


def fast_precision() -> str:
    """bfloat16 where this CPU has it natively (``auto`` would keep 2D networks in float32)."""
    import torch

    from napari_spoco.precision import native_bfloat16

    return "bfloat16" if native_bfloat16(torch.device("cpu")) else "float32"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(ap)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ndim", type=int, choices=(2, 3), default=2)
    ap.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    args = ap.parse_args()
    name = "bbbc039-nuclei" if args.ndim == 2 else "cells3d-nuclei"
    use_data_dir(args.data, needs=(name,))
    import torch

    split = next(s for s in splits() if s.name == name)
    crop = split.crop
    images = [read(split.name, s, "images")[crop] for s in split.train]
    labels = [sparsify(read(split.name, s, "masks")[crop], 0.1, i) for i, s in enumerate(split.train)]
    variants = ["current"] + [v for v in args.variants if v != "current"]
    results: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            results[v].append(steps_per_second(images, labels, args.steps, v, args.ndim))
            print(f"round {r + 1} {v}: {results[v][-1]:.2f} steps/s", file=sys.stderr, flush=True)

    shape = "8 × 96²" if args.ndim == 2 else "2 × 32×64²"
    print(f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, CPU only, "
          f"{time.strftime('%Y-%m-%d')}. CPU-default {args.ndim}D network, batch {shape}, {args.steps} timed steps × "
          f"{args.rounds} rounds; `current` trains in {fast_precision()}.\n")
    print("| variant | steps/s (median) | all rounds | vs current |")
    print("|---|---|---|---|")
    base = float(np.median(results["current"]))
    for v in variants:
        med = float(np.median(results[v]))
        print(f"| {v} | {med:.2f} | {', '.join(f'{x:.2f}' for x in results[v])} | {med / base:.2f}× |")

    prof = cProfile.Profile()
    prof.enable()
    train(images, labels, TrainConfig(steps=args.steps, device="cpu", precision=fast_precision()),
          model=load_default_model(args.ndim))
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, function): (cc, nc, tottime, cumtime, callers)}
    phases = [
        ("backward", lambda f, fn: "run_backward" in fn),
        ("network forward (student + teacher)", lambda f, fn: f.endswith("model.py") and fn == "forward"),
        ("SPOCO loss", lambda f, fn: f.endswith("losses.py") and fn == "spoco_loss"),
        ("  of which consistency anchors", lambda f, fn: f.endswith("losses.py") and fn == "pick_consistency_anchors"),
        ("patch sampling", lambda f, fn: f.endswith("data.py") and fn == "batch"),
        ("optimizer step", lambda f, fn: "optim" in f and fn == "step"),
    ]
    print("\nOne run of `current`, cumulative seconds per step by phase (cProfile, which slows Python a little):\n")
    print("| phase | s / step |")
    print("|---|---|")
    for label, match in phases:
        cum = max((v[3] for (f, _, fn), v in stats.items() if match(f, fn)), default=0.0)
        print(f"| {label} | {cum / args.steps:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
