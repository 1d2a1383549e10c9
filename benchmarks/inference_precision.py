"""Segmenting in bfloat16 against float32, side by side in one run: time, accuracy, agreement.

    python benchmarks/inference_precision.py [--data DIR] [--models DIR] [--seeds 0 1 2]
                                             [--datasets bbbc039-nuclei ...] [--threads N] [--json FILE]

For each data set of sparse_accuracy.py and each seed, the model ``--models``/<set>_seed<S>.spoco.pt
(what ``sparse_accuracy.py --save-models`` writes; without ``--models`` or where the file is
missing, the shipped 2D or 3D model) segments every held-out test image twice in the same process,
alternating which precision goes first image by image, after one untimed warm-up of each. Reported
per data set, mean (min–max) over seeds: the time of each (``segment``, embedding part and total,
and seconds per million pixels), the ratio, AP50 of each against the truth, the object counts, and
how well the two results agree (AP50 of the bfloat16 labels scored against the float32 ones).

Issue 13 asks for 3D at ≤ 2 s per million voxels on 2 cores; the forward pass is most of a 3D
segmentation's time, and a CPU with native bfloat16 (AVX-512 BF16, AMX) runs it faster. Where the
CPU lacks it, bfloat16 is emulated and slower, and this benchmark says so (``native`` column).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_data import add_data_argument, use_data_dir  # noqa: E402

PRECISIONS = ("float32", "bfloat16")


def model_for(models: Path | None, dataset: str, seed: int, ndim: int):
    """The seed's trained model of ``dataset`` under ``models``, else the shipped one, and its name."""
    from napari_spoco.io import load_model
    from napari_spoco.pretrained import load_default_model

    path = models / f"{dataset}_seed{seed}.spoco.pt" if models else None
    if path is not None and path.is_file():
        return load_model(path), path.name
    return load_default_model(ndim), f"shipped {ndim}D"


def timed_segment(model, image: np.ndarray, precision: str) -> tuple[np.ndarray, float, float]:
    """Labels, total seconds and embedding seconds of one ``segment`` call."""
    from napari_spoco.segmentation import segment

    timing: dict = {}
    t = time.perf_counter()
    labels = segment(model, image, device="cpu", precision=precision, _timing=timing)
    return labels, time.perf_counter() - t, timing.get("embed_s", 0.0)


def run_seed(data, models: Path | None, seed: int) -> dict:
    from napari_spoco import evaluate

    ndim = data.tests[0][1].ndim
    model, name = model_for(models, data.split.name, seed, ndim)
    first = data.tests[0][1]
    for p in PRECISIONS:  # warm-up: first calls pay for allocations and kernel selection
        timed_segment(model, first, p)
    out = {p: {"total_s": 0.0, "embed_s": 0.0, "AP50": [], "objects": 0} for p in PRECISIONS}
    agree, pixels = [], 0
    for k, (_, image, truth) in enumerate(data.tests):
        order = PRECISIONS if k % 2 == 0 else PRECISIONS[::-1]
        labels = {}
        for p in order:
            labels[p], total, emb = timed_segment(model, image, p)
            out[p]["total_s"] += total
            out[p]["embed_s"] += emb
            out[p]["AP50"].append(evaluate(truth, labels[p])["AP50"])
            out[p]["objects"] += int(labels[p].max())
        agree.append(evaluate(labels["float32"], labels["bfloat16"])["AP50"])
        pixels += int(np.prod(truth.shape))
    for p in PRECISIONS:
        out[p]["AP50"] = float(np.mean(out[p]["AP50"]))
        out[p]["s_per_mpx"] = out[p]["total_s"] / (pixels / 1e6)
    return {"seed": seed, "model": name, "pixels": pixels, "agreement_AP50": float(np.mean(agree)), **out}


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(np.mean(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def models_text(names: list[str]) -> str:
    """"trained, one per seed" for the seeds' own model files, else the names."""
    if all(n.endswith(".spoco.pt") for n in names) and len(set(names)) == len(names):
        return "trained, one per seed"
    return ", ".join(sorted(set(names)))


def report(results: list[dict], meta: dict) -> str:
    head = ["data set", "models", "Mpx per seed", "s/Mpx float32", "s/Mpx bfloat16", "time bf16 / fp32",
            "embed bf16 / fp32", "AP50 float32", "AP50 bfloat16", "objects fp32 / bf16", "agreement AP50"]
    lines = [f"Machine: {meta['machine']}, {meta['threads']} torch threads, torch {meta['torch']}, native bfloat16: "
             f"{meta['native']}. {meta['date']}. Mean (min–max) over seeds {' '.join(map(str, meta['seeds']))}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        s = r["seeds"]
        f32 = [x["float32"] for x in s]
        b16 = [x["bfloat16"] for x in s]
        lines.append("| " + " | ".join([
            r["dataset"], models_text([x["model"] for x in s]), f"{s[0]['pixels'] / 1e6:.2f}",
            spread([x["s_per_mpx"] for x in f32], "{:.2f}"), spread([x["s_per_mpx"] for x in b16], "{:.2f}"),
            spread([b["total_s"] / f["total_s"] for f, b in zip(f32, b16)], "{:.2f}"),
            spread([b["embed_s"] / max(f["embed_s"], 1e-9) for f, b in zip(f32, b16)], "{:.2f}"),
            spread([x["AP50"] for x in f32]), spread([x["AP50"] for x in b16]),
            f"{np.mean([x['objects'] for x in f32]):.0f} / {np.mean([x['objects'] for x in b16]):.0f}",
            spread([x["agreement_AP50"] for x in s]),
        ]) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--models", type=Path, help="folder of <set>_seed<S>.spoco.pt (sparse_accuracy.py "
                        "--save-models); default: the shipped models")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="*", help="default: all four")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--json", type=Path, help="also write the per-seed figures here")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import sparse_accuracy as sa

    from napari_spoco.precision import native_bfloat16

    chosen = [s for s in sa.splits() if not args.datasets or s.name in args.datasets]
    use_data_dir(args.data, needs=tuple(s.name for s in chosen))
    results = []
    for split in chosen:
        data = sa.Data(split, features=False)
        print(f"== {split.name}", file=sys.stderr, flush=True)
        seeds = []
        for seed in args.seeds:
            seeds.append(run_seed(data, args.models, seed))
            short = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in seeds[-1].items() if k not in PRECISIONS}
            print(f"   {short} " + " ".join(f"{p}: {seeds[-1][p]['total_s']:.1f} s, AP50 {seeds[-1][p]['AP50']:.3f}"
                                           for p in PRECISIONS), file=sys.stderr, flush=True)
        results.append({"dataset": split.name, "seeds": seeds})
    meta = {"machine": sa.cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "native": native_bfloat16(torch.device("cpu")), "date": time.strftime("%Y-%m-%d"), "seeds": args.seeds,
            "cpus": os.cpu_count()}
    print(report(results, meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
