"""Warm starts: AP50 versus CPU training time from scratch, from the shipped default model, and
after self-supervised pretraining, on the shared data sets with 10 % of the objects painted.

    python benchmarks/warm_start.py [--data DIR] [--minutes 5] [--datasets bbbc039-nuclei usiigaci-phc isbi2012-em]
                                    [--pretrain-minutes 1] [--plot docs/images/warm_start.png]
                                    [--json docs/warm_start.json]
    python benchmarks/warm_start.py --from-json docs/warm_start.json --plot docs/images/warm_start.png

Each condition is one training run; snapshots of the model are taken at fixed elapsed times
(evaluated after the run, so evaluation costs no training time):

  (a) scratch  — a new network, ``--minutes`` long;
  (b) default  — the shipped 2D model fine-tuned, ``--minutes / 2`` long (0 = zero-shot);
  (c) adapted  — the shipped model adapted to the training images without labels for
                 ``--pretrain-minutes`` (counted on the time axis), then fine-tuned.

Target (issue 5): (b) or (c) reaches the AP50 that (a) has after ``--minutes`` in at most a
third of that time. Splits and sparse labels are those of sparse_accuracy.py; the default
model never saw these test images (scripts/train_default_model.py holds them out).
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

from bench_data import add_data_argument, use_data_dir  # noqa: E402
from sparse_accuracy import read, sparsify, splits  # noqa: E402

from napari_spoco import TrainConfig, evaluate, segment  # noqa: E402
from napari_spoco.pretrained import load_default_model  # noqa: E402
from napari_spoco.training import iter_train, pretrain, pretrain_config  # noqa: E402


def run_with_snapshots(images, labels, minutes, model, checkpoints, seed, offset=0.0):
    """Train for ``minutes``; snapshot at each checkpoint (minutes on the shared time axis)."""
    snaps = []
    if model is not None and checkpoints and checkpoints[0] <= offset:
        snaps.append((offset, model.snapshot(), 0))
    pending = [c for c in checkpoints if c > offset]
    gen = iter_train(images, labels, TrainConfig(steps=0, minutes=minutes, seed=seed, device="cpu"), model)
    while True:
        try:
            p = next(gen)
        except StopIteration as done:
            final = done.value
            break
        t = offset + p.elapsed / 60
        while pending and t >= pending[0]:
            snaps.append((pending.pop(0), p.model.snapshot(), p.step))
    for c in pending:  # the last checkpoint falls at the very end of the run
        snaps.append((c, final.snapshot(), final.history["steps"]))
    return snaps


def score(model, tests) -> float:
    return float(np.mean([evaluate(gt, segment(model, img, device="cpu"))["AP50"] for img, gt in tests]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(ap)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--pretrain-minutes", type=float, default=1.0)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--datasets", nargs="*", default=["bbbc039-nuclei", "usiigaci-phc", "isbi2012-em"])
    ap.add_argument("--plot", type=Path, help="write the AP50-vs-time plot here (PNG)")
    ap.add_argument("--json", type=Path, help="also save the measured curves here")
    ap.add_argument("--from-json", type=Path, help="redraw table and plot from saved curves; no training")
    args = ap.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        report(saved["results"], saved["meta"], args.plot)
        return 0
    use_data_dir(args.data, needs=tuple(args.datasets))
    import torch

    m = args.minutes
    scratch_cp = [m / 10, m / 6, m / 3, m / 2, m]
    warm_cp = [0.0, m / 10, m / 6, m / 3, m / 2]
    results = {}
    for split in splits():
        if split.name not in args.datasets or split.name.startswith("cells3d"):
            continue  # no shipped 3D model: a 3D warm start does not exist yet
        ds = split.name
        images = [read(ds, s, "images") for s in split.train]
        sparse = [sparsify(read(ds, s, "masks"), args.fraction, args.seed + i) for i, s in enumerate(split.train)]
        tests = [(read(ds, s, "images"), read(ds, s, "masks")) for s in split.test]
        curves = {}
        print(f"== {ds}: (a) scratch {m} min", file=sys.stderr, flush=True)
        snaps = run_with_snapshots(images, sparse, m, None, scratch_cp, args.seed)
        curves["scratch"] = [(t, steps, score(s, tests)) for t, s, steps in snaps]
        print(f"   {curves['scratch']}", file=sys.stderr, flush=True)
        print(f"== {ds}: (b) default, {m / 2} min", file=sys.stderr, flush=True)
        snaps = run_with_snapshots(images, sparse, m / 2, load_default_model(2), warm_cp, args.seed)
        curves["default"] = [(t, steps, score(s, tests)) for t, s, steps in snaps]
        print(f"   {curves['default']}", file=sys.stderr, flush=True)
        print(f"== {ds}: (c) adapted {args.pretrain_minutes} min, then {m / 2 - args.pretrain_minutes} min",
              file=sys.stderr, flush=True)
        adapted = pretrain(images, pretrain_config(steps=0, minutes=args.pretrain_minutes, seed=args.seed, device="cpu"),
                           model=load_default_model(2))
        cp = [args.pretrain_minutes] + [c for c in warm_cp if c > args.pretrain_minutes]
        snaps = run_with_snapshots(images, sparse, m / 2 - args.pretrain_minutes, adapted, cp, args.seed,
                                   offset=args.pretrain_minutes)
        curves["adapted"] = [(t, steps, score(s, tests)) for t, s, steps in snaps]
        print(f"   {curves['adapted']}", file=sys.stderr, flush=True)
        results[ds] = curves

    meta = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "fraction": args.fraction,
            "seed": args.seed, "minutes": m}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    report(results, meta, args.plot)
    return 0


def report(results: dict, meta: dict, plot_path: Path | None) -> None:
    """Print the table and the verdicts; draw the AP50-vs-time plot."""
    m = meta["minutes"]
    header = (f"Machine: {meta['machine']}, {meta['threads']} torch threads, torch {meta['torch']}, CPU only. "
              f"{meta['date']}. Sparse fraction {meta['fraction']:.0%}, seed {meta['seed']}. AP50 on the held-out "
              "images of each data set; time = training (and pretraining) minutes.")
    times = sorted({c for cv in results.values() for v in cv.values() for c, _, _ in v})
    lines = [header, "", "| data set | start | " + " | ".join(f"t={t:.2g} min" for t in times) + " |",
             "|---|---|" + "---|" * len(times)]
    verdicts = []
    for ds, curves in results.items():
        for name, pts in curves.items():
            by_t = {round(t, 4): ap for t, _, ap in pts}
            cells = [f"{by_t[round(t, 4)]:.3f}" if round(t, 4) in by_t else "" for t in times]
            lines.append(f"| {ds} | {name} | " + " | ".join(cells) + " |")
        target = curves["scratch"][-1][2]
        third = m / 3
        best = max(ap for name in ("default", "adapted") for t, _, ap in curves[name] if t <= third + 1e-9)
        verdicts.append(f"* {ds}: scratch after {m:g} min AP50 {target:.3f}; best warm start within {third:.2g} min "
                        f"{best:.3f} → {'met' if best >= target else 'not met'}")
    print("\n".join(lines) + "\n\n" + "\n".join(verdicts) + "\n")
    if plot_path is None:
        return
    try:
        import matplotlib
    except ImportError:
        print('matplotlib is not installed (pip install "napari-spoco[benchmark]"): no plot.', file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), squeeze=False)
    for ax, (ds, curves) in zip(axes[0], results.items()):
        for name, pts in curves.items():
            ax.plot([t for t, _, _ in pts], [ap for _, _, ap in pts], marker="o", label=name)
        ax.axvline(m / 3, color="grey", lw=0.8, ls=":")
        ax.set_title(ds)
        ax.set_xlabel("CPU training minutes")
        ax.set_ylabel("AP50 (held-out)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    fig.tight_layout()
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot_path, dpi=110)
    print(f"plot: {plot_path}", file=sys.stderr)

if __name__ == "__main__":
    raise SystemExit(main())
