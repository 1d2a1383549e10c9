"""Colour and channels as input: what a widened grey model learns from colour, side by side.

    python benchmarks/channels.py [--steps 200] [--seeds 0 1 2] [--threads N] [--json FILE]

Built from the shipped demo sample (real BBBC039 nuclei; 8 of 36 painted), four ways to give
the same scene, each fine-tuned from the shipped grey 2D model for ``--steps`` steps and scored
(AP50, mean-shift ``segment``) on the training crop and the held-out crop:

* ``grey``: the image as it is (the reference);
* ``rgb-equal``: the grey image in three equal channels: the widened model must do as well as
  grey (widening costs nothing);
* ``rgb-hue``: an iso-luminant colouring, nuclei reddish and background greenish at one
  luminance: grey conversion sees a flat image, so only a model that reads colour can work;
* ``two-channel``: the nuclear stain plus a second channel of pure noise 1000× brighter (a
  stain that says nothing): per-channel normalisation must keep it from drowning the first.

Steps, not minutes, so the machine's load does not change the numbers.
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

from napari_spoco import TrainConfig, evaluate, segment, train  # noqa: E402
from napari_spoco.pretrained import load_default_model  # noqa: E402
from napari_spoco.sample import load_sample  # noqa: E402

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _unit(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [1, 99.8])
    return np.clip((image - lo) / (hi - lo), 0, 1).astype(np.float32)


def iso_luminant(image: np.ndarray) -> np.ndarray:
    """(Y, X, 3) where the signal moves red up and green down at constant luminance 0.5."""
    s = _unit(image) - 0.5
    r = 0.5 + 0.5 * s
    g = 0.5 - 0.5 * s * LUMA[0] / LUMA[1]
    b = np.full_like(s, 0.5)
    rgb = np.stack([r, g, b], axis=-1)
    assert np.ptp(rgb @ LUMA) < 1e-5  # grey conversion sees nothing
    return rgb


def variants(image: np.ndarray, seed: int) -> dict[str, tuple[np.ndarray, int | None]]:
    noise = np.random.default_rng(100 + seed).normal(50_000, 5_000, image.shape).astype(np.float32)
    return {
        "grey": (image, None),
        "rgb-equal": (np.repeat(image[..., None], 3, axis=-1), None),
        "rgb-hue": (iso_luminant(image), None),
        "two-channel": (np.stack([image.astype(np.float32), noise]), 0),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    if args.threads:
        import os

        os.cpu_count = lambda: args.threads  # training sets torch's threads from the core count
        torch.set_num_threads(args.threads)
    s = load_sample()
    scores: dict[str, list[list[float]]] = {}
    # The grey model as shipped, before any training (colour is read as luminance; the
    # two-channel stack is not something it can read).
    zero = {name: float(evaluate(s.test_truth, segment(load_default_model(2), im, device="cpu"))["AP50"])
            for name, (im, axis) in variants(s.test_image, 0).items() if axis is None}
    t0 = time.perf_counter()
    for seed in args.seeds:
        train_v, test_v = variants(s.train_image, seed), variants(s.test_image, seed)
        for name, (image, axis) in train_v.items():
            model = train([image], [s.train_sparse], TrainConfig(steps=args.steps, seed=seed, device="cpu"),
                          model=load_default_model(2), channel_axis=axis)
            test_image, _ = test_v[name]
            row = [float(evaluate(truth, segment(model, im, device="cpu", channel_axis=axis))["AP50"])
                   for im, truth in ((image, s.train_truth), (test_image, s.test_truth))]
            scores.setdefault(name, []).append(row)
            print(f"seed {seed} {name}: in_channels {model.config.in_channels}, AP50 train/held-out "
                  f"{row[0]:.3f}/{row[1]:.3f}", file=sys.stderr, flush=True)
    meta = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "steps": args.steps,
            "seeds": args.seeds, "minutes": round((time.perf_counter() - t0) / 60, 1)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "zero_shot": zero, "scores": scores}, indent=1))
    print(f"Shipped grey 2D model fine-tuned {args.steps} steps on the demo sample, seeds "
          f"{', '.join(map(str, args.seeds))}; AP50 mean (min–max). {meta['machine']}, {meta['threads']} torch "
          f"threads, torch {meta['torch']}, {meta['date']}.\n")
    print("| input | grey model untrained, held-out | fine-tuned: train crop | fine-tuned: held-out crop |")
    print("|---|---|---|---|")
    for name, rows in scores.items():
        a = np.array(rows)
        z = f"{zero[name]:.3f}" if name in zero else "cannot read it"
        print(f"| {name} | {z} | " + " | ".join(f"{a[:, j].mean():.3f} ({a[:, j].min():.3f}–{a[:, j].max():.3f})"
                                                for j in range(2)) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
