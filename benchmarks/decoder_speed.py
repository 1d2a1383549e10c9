"""The UNet's decoder as the reference writes it (upsample, concatenate, convolve) against ours
(model._decode: the first convolution split by input channel, the upsampled part convolved at
the low resolution with one 2-tap kernel per output parity), side by side in one process.

    python benchmarks/decoder_speed.py [--reps 12] [--threads 2]

Both are the same function of the same weights (tests/test_networks.py); only time differs.
Rows: a training batch of the shipped 2D and 3D starts (student forward + backward, EMA teacher
forward; bfloat16 where the CPU has it natively, as training's ``auto``) and one inference tile
(BatchNorm folded; 3D in bfloat16 where native, 2D in float32, as segmentation's ``auto``).
Alternating the two forms rep by rep; median milliseconds and the ratio ours / reference.
No data needed: random input of the training and tile shapes.
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

OURS = model_module._decode


def concatenating(dec, skip, low):
    """The reference's form of one decoder stage."""
    up = torch.nn.functional.interpolate(low, size=skip.shape[2:], mode="nearest")
    return dec(torch.cat([skip, up], dim=1))


def timed(fn, reps: int) -> dict[str, float]:
    times = {"reference": [], "ours": []}
    for _ in range(reps):
        for name in times:
            model_module._decode = OURS if name == "ours" else concatenating
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    model_module._decode = OURS
    return {k: 1000 * statistics.median(v[2:]) for k, v in times.items()}  # first two: warm-up


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bf16 = native_bfloat16(torch.device("cpu"))
    rows = []
    for ndim, batch, tile in ((2, (8, 1, 96, 96), (1, 1, 1024, 1024)), (3, (2, 1, 32, 64, 64), (1, 1, 64, 160, 160))):
        fmt = torch.channels_last_3d if ndim == 3 else torch.channels_last
        start = load_default_model(ndim)
        student = start.student.train().to(memory_format=fmt)
        teacher = start.teacher.train().to(memory_format=fmt)
        x = torch.randn(batch).to(memory_format=fmt)

        def step(student=student, teacher=teacher, x=x):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = student(x)
                with torch.no_grad():
                    teacher(x)
            y.float().square().mean().backward()

        rows.append((f"{ndim}D training batch {tuple(batch)}, {'bfloat16' if bf16 else 'float32'}", timed(step, args.reps)))
        net = model_module.folded_for_inference(start.teacher).to(memory_format=fmt)
        t = torch.randn(tile).to(memory_format=fmt)
        half = bf16 and ndim == 3

        def infer(net=net, t=t, half=half):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
                net(t)

        rows.append((f"{ndim}D inference tile {tuple(tile)}, {'bfloat16' if half else 'float32'}",
                     timed(infer, max(4, args.reps // 2))))
    print(f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}\n")
    print("| case | reference ms (median) | ours ms (median) | ours / reference |")
    print("|---|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t['reference']:.0f} | {t['ours']:.0f} | {t['ours'] / t['reference']:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
