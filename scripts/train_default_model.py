"""Train the starting model shipped inside the package (reproducible; needs the data sets).

    .venv/bin/python scripts/train_default_model.py [--data DIR] --minutes 25

A 2D network (the CPU default: 16 features, 3 levels) trained with the SPOCO loss on *dense*
labels of redistributable data: BBBC039 fluorescent nuclei (CC0) and Usiigaci phase-contrast
cells (MIT). Unlabelled pixels of the dense masks are real background, so they are given the
background value. Images used by the benchmarks' test splits and by the shipped sample crops
are held out, and the script prints the model's zero-shot scores on the held-out images.
Writes src/napari_spoco/_models/default_2d.spoco.pt (see docs/models.md). The data sets are read from
``--data DIR`` (default: ../shared/data beside the repository; see benchmarks/bench_data.py).
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

from bench_data import add_data_argument, read, stems, use_data_dir  # noqa: E402

from napari_spoco import TrainConfig, evaluate, save_model, segment, train  # noqa: E402
from napari_spoco.model import ModelConfig  # noqa: E402

BG = 65535
SAMPLE_SOURCES = ("IXMtest_B23_s1_", "IXMtest_D02_s8_")  # fields of the crops shipped in _sample/


def split() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held-out) as (data set, stem); the benchmarks train on the first images of each
    set and test on the last ones, so the default model trains on the middle ones."""
    bbbc, phc = stems("bbbc039-nuclei"), stems("usiigaci-phc")
    train_set = [("bbbc039-nuclei", s) for s in bbbc[10:-6] if not s.startswith(SAMPLE_SOURCES)]
    train_set += [("usiigaci-phc", s) for s in phc[6:-3]]
    held = [("bbbc039-nuclei", s) for s in bbbc[-6:]] + [("usiigaci-phc", s) for s in phc[-3:]]
    return train_set, held


def load(ds: str, stem: str) -> tuple[np.ndarray, np.ndarray]:
    return read(ds, stem, "images"), read(ds, stem, "masks")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(ap)
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument("--out", default=str(ROOT / "src" / "napari_spoco" / "_models" / "default_2d.spoco.pt"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    use_data_dir(args.data, needs=("bbbc039-nuclei", "usiigaci-phc"))

    train_set, held = split()
    images, labels = [], []
    for ds, stem in train_set:
        img, mask = load(ds, stem)
        images.append(img)
        labels.append(np.where(mask > 0, mask, BG).astype(np.int64))
    print(f"training on {len(images)} images ({', '.join(sorted({d for d, _ in train_set}))}) "
          f"for {args.minutes} min on {platform.processor() or platform.machine()}")
    config = TrainConfig(steps=0, minutes=args.minutes, patch_shape=(128, 128), batch_size=6,
                         background_label=BG, seed=args.seed)
    t0 = time.perf_counter()
    model = train(images, labels, config, model_config=ModelConfig(ndim=2),
                  names=[f"{d}/{s}" for d, s in train_set])
    print(f"{model.history['steps']} steps in {time.perf_counter() - t0:.0f} s")

    # Zero-shot scores on held-out images (nothing painted on them).
    rows = []
    for ds, stem in held:
        img, mask = load(ds, stem)
        pred = segment(model, img, device="cpu")
        s = evaluate(mask, pred)
        rows.append((ds, stem, s["AP50"], s["mAP"], s["SBD"]))
        print(f"  held-out {ds}/{stem}: AP50 {s['AP50']:.3f}  mAP {s['mAP']:.3f}  SBD {s['SBD']:.3f}")
    for ds in sorted({r[0] for r in rows}):
        sub = [r for r in rows if r[0] == ds]
        print(f"mean {ds}: AP50 {np.mean([r[2] for r in sub]):.3f}  mAP {np.mean([r[3] for r in sub]):.3f}  "
              f"SBD {np.mean([r[4] for r in sub]):.3f}")

    # A small file: keep the training record, not every step's losses.
    model.history.pop("losses", None)
    model.history["trained_on"] = {
        "data": [f"{d}/{s}" for d, s in train_set],
        "licenses": {"bbbc039-nuclei": "CC0 (Caicedo et al. 2019; Ljosa et al. 2012)",
                     "usiigaci-phc": "MIT (Tsai et al. 2019)"},
        "labels": "dense instance masks, unlabelled pixels as background",
        "script": "scripts/train_default_model.py",
        "minutes": args.minutes,
        "held_out": {f"{r[0]}/{r[1]}": {"AP50": round(r[2], 3), "mAP": round(r[3], 3)} for r in rows},
    }
    out = save_model(model, args.out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
