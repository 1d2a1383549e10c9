"""3D max pooling in bfloat16 (ours, model._pool: outside autocast) against torch's CPU autocast,
which runs ``max_pool3d`` in float32 (a float32 copy of every bfloat16 map before it is pooled),
side by side in one process.

    python benchmarks/pool_format.py [--reps 12] [--threads 2]

Rows: a training batch of the shipped 3D start (student forward + backward, EMA teacher forward)
and an inference tile of the default size (BatchNorm folded), both in bfloat16 as ``auto`` runs
them on a CPU with native bfloat16. Alternating the two forms rep by rep; median milliseconds,
the ratio ours / autocast's, and whether outputs and gradients are equal (the maximum of
bfloat16 values is the same in either format, and the next convolution casts to bfloat16
anyway). 2D is not a row: autocast keeps ``max_pool2d`` in bfloat16. No data needed: random
input of the training and tile shapes. Needs a CPU with native bfloat16 (else it says so).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

import napari_spoco.model as model_module  # noqa: E402
from napari_spoco.precision import native_bfloat16  # noqa: E402
from napari_spoco.pretrained import load_default_model  # noqa: E402

OURS = model_module._pool


def under_autocast(pool, x):
    """torch's policy, as the network pooled before 2026-12-05."""
    return pool(x)


FORMS = {"autocast": under_autocast, "ours": OURS}


def timed(fn, reps: int) -> tuple[dict[str, float], dict[str, object]]:
    times: dict[str, list[float]] = {name: [] for name in FORMS}
    outputs: dict[str, object] = {}
    for _ in range(reps):
        for name, form in FORMS.items():
            model_module._pool = form
            t0 = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    model_module._pool = OURS
    return {k: 1000 * statistics.median(v[2:]) for k, v in times.items()}, outputs  # first two: warm-up


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not native_bfloat16(torch.device("cpu")):
        print("This CPU has no native bfloat16: the network runs in float32 here and pools in float32 either way.")
        return 0
    fmt = torch.channels_last_3d
    start = load_default_model(3)
    rows = []
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 64, 64).to(memory_format=fmt)
    state = {k: v.clone() for k, v in start.student.state_dict().items()}

    def step():
        student = start.student.train().to(memory_format=fmt)
        student.load_state_dict(state)  # the same weights and BatchNorm statistics every rep
        student.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = student(x)
            with torch.no_grad():
                start.teacher.train().to(memory_format=fmt)(x)
        y.float().square().mean().backward()
        return [p.grad.clone() for p in student.parameters()]

    t, out = timed(step, args.reps)
    same = all(torch.equal(a, b) for a, b in zip(out["autocast"], out["ours"]))
    rows.append((f"3D training batch {tuple(x.shape)}", t, f"gradients {'equal' if same else 'differ'}"))
    tile = torch.randn(1, 1, 64, 192, 192).to(memory_format=fmt)  # 2.4 M voxels (a bfloat16 tile holds up to 3.3 M)
    net = model_module.folded_for_inference(start.teacher).to(memory_format=fmt)

    def infer():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return net(tile)

    t, out = timed(infer, max(4, args.reps // 2))
    rows.append((f"3D inference tile {tuple(tile.shape)}", t,
                 f"outputs {'equal' if torch.equal(out['autocast'], out['ours']) else 'differ'}"))
    print(f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}, bfloat16\n")
    print("| case | autocast's float32 pooling ms (median) | ours ms (median) | ours / autocast's | same result |")
    print("|---|---|---|---|---|")
    for name, t, same in rows:
        print(f"| {name} | {t['autocast']:.0f} | {t['ours']:.0f} | {t['ours'] / t['autocast']:.2f}× | {same} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
