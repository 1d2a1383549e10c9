"""Mean-shift's inner loop before and after 2026-12-04, side by side on the same points.

    python benchmarks/mean_shift_speed.py [--data DIR] [--images 3] [--repeats 3] [--json FILE]

``clustering._mean_shift_modes`` moves 500 seeds over a sample of 10 000 embedded pixels, up to
30 times per round: each step is a (seeds × sample) matrix that is written, compared, converted
and summed: memory-bound passes (mean-shift was a quarter of a 2D Segment's time on this
script's images, 1.97 of 8.6 s).
Since 2026-12-04 the comparison runs in place on the product (0.0/1.0 in its own memory) and the
counts come out of the same matrix product as the sums (a column of ones). This script segments
test images of the shared 2D sets with the shipped 2D start, records every point set that
mean-shift receives, and clusters each with the version before (kept below as the reference) and
the library's, alternating, ``--repeats`` times; it reports the median time and whether the
labels are identical, then the whole Segment of each image with either version.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_data import add_data_argument, use_data_dir  # noqa: E402

import napari_spoco.clustering as clustering  # noqa: E402


def modes_before(sample: torch.Tensor, seeds: torch.Tensor, bandwidth: float, merge_radius: float,
                 max_iter: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """``clustering._mean_shift_modes`` as it was before 2026-12-04."""
    h2 = bandwidth * bandwidth
    st = sample.T.contiguous()
    ss = (sample * sample).sum(1)[None, :]
    active = torch.ones(seeds.shape[0], dtype=torch.bool)
    for _ in range(max_iter):
        if not active.any():
            break
        a = seeds[active]
        within = (torch.addmm(ss, a, st, alpha=-2.0) <= h2 - (a * a).sum(1, keepdim=True)).to(sample.dtype)
        count = within.sum(1, keepdim=True)
        new = torch.where(count > 0, within @ sample / count.clamp_min(1.0), a)
        moved = ((new - a) ** 2).sum(1) > (1e-2 * bandwidth) ** 2
        seeds[active] = new
        idx = torch.nonzero(active).squeeze(1)
        active[idx[~moved]] = False
    return clustering.strongest_modes(seeds, st, h2, merge_radius)


def with_modes(fn, call, *args, **kwargs):
    """``call(*args, **kwargs)`` with ``fn`` as mean-shift's inner loop; (result, seconds)."""
    library = clustering._mean_shift_modes
    clustering._mean_shift_modes = fn
    try:
        t0 = time.perf_counter()
        out = call(*args, **kwargs)
        return out, time.perf_counter() - t0
    finally:
        clustering._mean_shift_modes = library


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--images", type=int, default=3, help="test images per shared 2D set")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from sparse_accuracy import cpu_name, read, splits

    from napari_spoco.pretrained import load_default_model
    from napari_spoco.segmentation import segment

    torch.set_num_threads(args.threads)
    use_data_dir(args.data)
    machine = f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    print(f"Machine: {machine}")
    model = load_default_model(2)
    library = clustering._mean_shift_modes
    images, calls = [], []
    recorded = clustering.mean_shift

    def recording(points, *a, **k):
        calls.append((len(images) - 1, np.array(points), a, k))
        return recorded(points, *a, **k)

    clustering.mean_shift = recording
    try:
        for split in splits():
            if split.ndim != 2 or split.optional:
                continue
            for stem in split.test[: args.images]:
                images.append((f"{split.name} {stem[:14]}", read(split.name, stem, "images")))
                segment(model, images[-1][1])  # records mean-shift's inputs
    finally:
        clustering.mean_shift = recorded
    rows = []
    print("\n| image | points | before s | after s | ratio | identical labels |\n|---|---|---|---|---|---|")
    for k, points, a, kw in calls:
        times = {"before": [], "after": []}
        labels = {}
        for _ in range(args.repeats):
            for name, fn in (("before", modes_before), ("after", library)):
                labels[name], t = with_modes(fn, clustering.mean_shift, points, *a, **kw)
                times[name].append(t)
        before, after = float(np.median(times["before"])), float(np.median(times["after"]))
        same = bool(np.array_equal(labels["before"], labels["after"]))
        rows.append(dict(image=images[k][0], points=int(len(points)), before_s=before, after_s=after, identical=same))
        print(f"| {images[k][0]} | {len(points)} | {before:.3f} | {after:.3f} | {before / after:.2f}× | "
              f"{'yes' if same else '**no**'} |", flush=True)
    print("\n| image | Segment before s | after s | ratio | identical labels |\n|---|---|---|---|---|")
    segments = []
    for name, image in images:
        times = {"before": [], "after": []}
        out = {}
        for _ in range(args.repeats):
            for version, fn in (("before", modes_before), ("after", library)):
                out[version], t = with_modes(fn, segment, model, image)
                times[version].append(t)
        before, after = float(np.median(times["before"])), float(np.median(times["after"]))
        same = bool(np.array_equal(out["before"], out["after"]))
        segments.append(dict(image=name, before_s=before, after_s=after, identical=same))
        print(f"| {name} | {before:.2f} | {after:.2f} | {before / after:.2f}× | {'yes' if same else '**no**'} |",
              flush=True)
    total_b = sum(r["before_s"] for r in rows)
    total_a = sum(r["after_s"] for r in rows)
    print(f"\nMean-shift in all: {total_b:.2f} s before, {total_a:.2f} s after ({total_b / total_a:.2f}×); "
          f"Segment in all: {sum(r['before_s'] for r in segments):.1f} s before, "
          f"{sum(r['after_s'] for r in segments):.1f} s after")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(machine=machine, mean_shift=rows, segments=segments), indent=1))


if __name__ == "__main__":
    main()
