"""Network shapes side by side, each trained from scratch: does more context help at a CPU budget?

    python benchmarks/network_depth.py [--steps 300] [--seeds 0 1 2] [--threads N] [--json FILE]
                                       [--save-models DIR]

Issue 10, point 1 asks for a network whose receptive field covers the painted objects at a CPU
cost close to the default's, chosen by measurement. The shipped starting models are all the
CPU default's shape, so a different shape can only start from scratch; this script compares the
shapes on equal footing, each a new network trained for the same number of steps:

* ``d3``:   the CPU default (16 base features, 3 levels; receptive radius 28 px);
* ``d4``:   16 base features, 4 levels (radius 60 px): the extra level works at 1/8 resolution,
  where a 3×3 convolution is cheap;
* ``d5b8``: 8 base features, 5 levels (radius 124 px): thinner full-resolution stages, which
  are most of a step's time.

Data: the shipped demo sample (``napari_spoco.sample``: 8 of 36 nuclei painted in the training
crop), scored on the training crop and the held-out crop (AP50 of the default ``segment``).
Each row also gives the training time and the forward + backward time of one batch of 8 × 96²
(the training batch), measured before the seeds run. ``--save-models DIR`` writes each shape as an
untrained model file, for ``sparse_accuracy.py --init FILE`` on the shared data sets.
Results of this script are in docs/benchmarks.md, "Network depth".
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

from napari_spoco import TrainConfig, sample, segment, train  # noqa: E402
from napari_spoco.metrics import evaluate  # noqa: E402
from napari_spoco.model import ModelConfig, SpocoModel  # noqa: E402

SHAPES = {
    "d3": ModelConfig(),
    "d4": ModelConfig(depth=4),
    "d5b8": ModelConfig(depth=5, base_features=8),
}


def batch_seconds(config: ModelConfig, repeats: int = 8) -> float:
    """Forward + backward of one training batch (8 × 96², channels-last) through a new network."""
    import torch

    net = SpocoModel.new(config, seed=0).student.train().to(memory_format=torch.channels_last)
    x = torch.randn(8, config.in_channels, 96, 96).contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        net(x).sum().backward()
    t = time.perf_counter()
    for _ in range(repeats):
        net(x).sum().backward()
    return (time.perf_counter() - t) / repeats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--json", type=Path, help="also write every run here")
    ap.add_argument("--save-models", type=Path, help="write each shape as an untrained model file here")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.save_models:
        from napari_spoco.io import save_model

        args.save_models.mkdir(parents=True, exist_ok=True)
        for name in args.shapes:
            save_model(SpocoModel.new(SHAPES[name], seed=0), args.save_models / f"{name}.spoco.pt")
    data = sample.load_sample()
    shapes = {}
    for name in args.shapes:
        config = SHAPES[name]
        params = sum(p.numel() for p in SpocoModel.new(config, seed=0).student.parameters())
        shapes[name] = {"parameters": params, "receptive_radius": config.receptive_radius,
                        "batch_ms": round(1000 * batch_seconds(config))}
        print(f"{name}: {params} parameters, radius {config.receptive_radius} px, "
              f"forward + backward {shapes[name]['batch_ms']} ms per batch", flush=True)
    runs = []
    for seed in args.seeds:  # shapes alternate within each seed, so drifts of the machine hit all
        for name in args.shapes:
            model = train([data.train_image], [data.train_sparse],
                          TrainConfig(steps=args.steps, device="cpu", seed=seed), model_config=SHAPES[name])
            run = {"shape": name, "seed": seed, "steps": args.steps, "train_s": round(model.history["seconds"], 1)}
            for tag, image, truth in (("train", data.train_image, data.train_truth),
                                      ("heldout", data.test_image, data.test_truth)):
                run[tag] = round(evaluate(truth, segment(model, image, device="cpu"))["AP50"], 3)
            runs.append(run)
            print(json.dumps(run), flush=True)

    print(f"\nMachine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads. "
          f"New networks, {args.steps} steps each, seeds {args.seeds}; AP50 on the demo sample's crops.\n")
    print("| shape | parameters | radius | fwd+bwd per batch | train s | AP50 training crop | AP50 held-out crop |")
    print("|---|---|---|---|---|---|---|")
    for name in args.shapes:
        mine = [r for r in runs if r["shape"] == name]
        cell = {k: f"{np.mean([r[k] for r in mine]):.3f} ({' / '.join(f'{r[k]:.3f}' for r in mine)})"
                for k in ("train", "heldout")}
        print(f"| {name} | {shapes[name]['parameters']:,} | {shapes[name]['receptive_radius']} px | "
              f"{shapes[name]['batch_ms']} ms | {np.mean([r['train_s'] for r in mine]):.0f} | "
              f"{cell['train']} | {cell['heldout']} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": platform.machine(), "torch": torch.__version__,
                                         "steps": args.steps, "shapes": shapes, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
