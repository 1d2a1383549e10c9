"""What computing suggestions adds to a Segment: sampled signals against every pixel, side by side.

    python benchmarks/suggestion_time.py [--data DIR] [--models DIR] [--images 6] [--rounds 2]

Issue 14's time target: suggestions add at most 10 % to the Segment they follow. Per 2D data set,
the first ``--images`` training images of sparse_accuracy.py's split are segmented with their
embedding (``segment(..., return_embedding=True)``) and every instance is ranked
(``suggest(..., k=all)``, as benchmarks/active_labelling.py does), with the signals read on a grid
of at most ``suggestions.MAX_SAMPLES`` instance pixels (``sampled``, the library's behaviour) and
on every pixel (``every pixel``, the behaviour before). Variants alternate per image and round so
that a busy machine hits both alike. The model: ``--models DIR/<data set>_seed0.spoco.pt`` where
it exists (saved by ``sparse_accuracy.py --save-dir``), else the shipped 2D model, zero-shot.
Also reported: the largest difference of any signal between the variants, and how many of the
ten top-ranked instances the two share per image (mean, and the fewest).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_data import add_data_argument, use_data_dir  # noqa: E402
from sparse_accuracy import read, splits  # noqa: E402

import napari_spoco.suggestions as suggestions  # noqa: E402
from napari_spoco import segment  # noqa: E402

DATASETS = ("bbbc039-nuclei", "usiigaci-phc", "isbi2012-em")
VARIANTS = {"sampled": suggestions.MAX_SAMPLES, "every pixel": 10**15}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(ap)
    ap.add_argument("--models", type=Path, help="folder of <data set>_seed0.spoco.pt models")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    use_data_dir(args.data, needs=DATASETS)
    import torch

    from napari_spoco.io import load_model
    from napari_spoco.pretrained import load_default_model

    print(f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. Sums over {args.images} training images × "
          f"{args.rounds} rounds.\n")
    print("| data set | model | instances per image | Segment (s) | suggest, sampled (s) | suggest, every pixel (s) "
          "| sampled / Segment | every pixel / Segment | largest signal difference | top 10 in common, mean (fewest) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in DATASETS:
        split = next(s for s in splits() if s.name == name)
        path = args.models / f"{name}_seed0.spoco.pt" if args.models else None
        model = load_model(path) if path is not None and path.is_file() else load_default_model(2)
        source = path.name if path is not None and path.is_file() else "shipped, zero-shot"
        seg: list[float] = []
        sug: dict[str, list[float]] = {v: [] for v in VARIANTS}
        diff, shared, instances = 0.0, [], []
        for r in range(args.rounds):
            for stem in split.train[: args.images]:
                img = read(name, stem, "images")
                t = time.perf_counter()
                pred, emb = segment(model, img, device="cpu", return_embedding=True)
                seg.append(time.perf_counter() - t)
                instances.append(int(len(np.unique(pred)) - 1))
                found = {}
                for v in (VARIANTS if r % 2 == 0 else reversed(list(VARIANTS))):
                    suggestions.MAX_SAMPLES = VARIANTS[v]
                    t = time.perf_counter()
                    found[v] = suggestions.suggest(pred, emb, k=int(pred.max()) or 1, painted_sizes=None)
                    sug[v].append(time.perf_counter() - t)
                suggestions.MAX_SAMPLES = VARIANTS["sampled"]
                a = {s.label: s.signals for s in found["sampled"]}
                b = {s.label: s.signals for s in found["every pixel"]}
                diff = max([diff] + [abs(a[i][k] - b[i][k]) for i in a if i in b for k in a[i]])
                shared.append(len({s.label for s in found["sampled"][:10]} & {s.label for s in found["every pixel"][:10]}))
        total = sum(seg)
        print(f"| {name} | {source} | {np.median(instances):.0f} | {total:.1f} | {sum(sug['sampled']):.2f} | "
              f"{sum(sug['every pixel']):.2f} | {sum(sug['sampled']) / total:.1%} | "
              f"{sum(sug['every pixel']) / total:.1%} | {diff:.3f} | {np.mean(shared):.1f} ({min(shared)}) |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
