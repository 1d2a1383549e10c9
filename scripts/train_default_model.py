"""Train the starting models shipped inside the package (reproducible; needs the data sets).

    .venv/bin/python scripts/train_default_model.py --ndim 2 --minutes 25           # 2D
    .venv/bin/python scripts/train_default_model.py --ndim 3 --minutes 25           # 3D
    .venv/bin/python scripts/train_default_model.py --ndim 2 --without usiigaci-phc --out m.spoco.pt
    .venv/bin/python scripts/train_default_model.py --evaluate m.spoco.pt           # zero-shot only
    .venv/bin/python scripts/train_default_model.py --depth 4 --out d4.spoco.pt     # a deeper candidate

The CPU-default network (16 features, 3 levels) trained with the SPOCO loss on *dense* labels of
the redistributable data (docs/models.md): BBBC039 fluorescent nuclei (CC0), Usiigaci
phase-contrast cells (MIT) and the cells3d nuclei volume (BSD-3), as 2D slices for the 2D
model and as a volume for the 3D model. Unlabelled pixels of dense masks are real background.

Held out, never trained on: the benchmarks' training and test images of each set, the fields
of the shipped sample crops, the right half (x >= 128) of the cells3d volume, and the ISBI 2012
EM images (not redistributable). Objects wider than 45 px are brought to about 30 px as
``train`` does for a user's painted objects (docs/method.md, "Object scale"); each set is also
shown at 0.6x (2D) or at several sizes and an anisotropic z (3D), so that the starting model has
seen objects smaller than its training sets'. Sets are weighted by object count so that a set
with few large images is not drowned by one with many small ones.

The shipped 2D model is older than this recipe: it was made by this script as of commit f8f3c81
(BBBC039 and Usiigaci only, 20 CPU-min); a 2D model of this recipe was tried and not shipped
(docs/models.md says why). The shipped 3D model is this recipe's.

``--without SET`` leaves a data set out (the benchmarks' leave-one-dataset-out starting models).
``--evaluate MODEL`` prints the zero-shot scores of a model file on the held-out images.
``--depth 4`` trains the four-level network (receptive radius 60 px instead of 28), the candidate
that docs/benchmarks.md ("Network depth") found better from scratch and that needs a start of
its own before it can be compared with the shipped model.
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

from napari_spoco import TrainConfig, evaluate, load_model, save_model, segment, train  # noqa: E402
from napari_spoco.model import ModelConfig  # noqa: E402
from napari_spoco.scaling import AUTO_ABOVE, TARGET_DIAMETER, median_diameter, resize_image, resize_labels  # noqa: E402

BG = 65535
SAMPLE_SOURCES = ("IXMtest_B23_s1_", "IXMtest_D02_s8_")  # fields of the crops shipped in _sample/
SETS_2D = ("bbbc039-nuclei", "usiigaci-phc", "cells3d-nuclei")
LICENSES = {"bbbc039-nuclei": "CC0 (Caicedo et al. 2019; Ljosa et al. 2012)",
            "usiigaci-phc": "MIT (Tsai et al. 2019)",
            "cells3d-nuclei": "BSD-3 (scikit-image cells3d, Allen Institute for Cell Science)"}
CELLS3D_SPLIT = 128  # x < 128 may be trained on; x >= 128 is held out (the benchmark scores it)
MAX_REPEAT = 8


def cells3d(part: str) -> tuple[np.ndarray, np.ndarray]:
    img, mask = read("cells3d-nuclei", "cells3d_nuclei", "images"), read("cells3d-nuclei", "cells3d_nuclei", "masks")
    cut = np.s_[..., :CELLS3D_SPLIT] if part == "train" else np.s_[..., CELLS3D_SPLIT:]
    return img[cut], mask[cut]


def slices(img: np.ndarray, mask: np.ndarray, step: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every ``step``-th z-slice that shows at least two nuclei."""
    return [(img[z], mask[z]) for z in range(0, len(img), step) if len(np.unique(mask[z])) > 2]


def pairs(ds: str, part: str, ndim: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, dense mask) pairs of one set: ``part`` is "train" (what the starting model may see)
    or "held" (what its zero-shot scores are measured on)."""
    if ds == "cells3d-nuclei":
        img, mask = cells3d(part)
        return [(img, mask)] if ndim == 3 else slices(img, mask)
    names = stems(ds)
    if ds == "bbbc039-nuclei":  # benchmark: first 10 train, last 6 test
        chosen = [s for s in names[10:-6] if not s.startswith(SAMPLE_SOURCES)] if part == "train" else names[-6:]
    elif ds == "usiigaci-phc":  # benchmark: first 6 train, last 3 test
        chosen = names[6:-3] if part == "train" else names[-3:]
    else:  # isbi2012-em: evaluated, never trained on
        chosen = [] if part == "train" else names[-4:]
    return [(read(ds, s, "images"), read(ds, s, "masks")) for s in chosen]


def rescaled(img: np.ndarray, mask: np.ndarray, factors: tuple[float, ...]):
    shape = tuple(max(8, int(round(n * f))) for n, f in zip(mask.shape, factors))
    return resize_image(img.astype(np.float32), shape), resize_labels(mask, shape)


def training_data(ndim: int, without: list[str]) -> tuple[list, list, list[str], dict]:
    """Images, labels (background = BG), names and a per-set record of sizes and repeats."""
    per_set: dict[str, list] = {}
    record: dict[str, dict] = {}
    sets = SETS_2D if ndim == 2 else ("cells3d-nuclei",)
    for ds in sets:
        if ds in without:
            continue
        found = pairs(ds, "train", ndim)
        diameter = median_diameter([m for _, m in found])
        base = TARGET_DIAMETER / diameter if diameter > AUTO_ABOVE else 1.0
        if ndim == 2:
            factors = [(base, base), (0.6 * base, 0.6 * base)]
        else:
            factors = [(f, f, f) for f in (1.0, 0.6, 0.35)] + [(0.5 * f, f, f) for f in (0.6, 0.35)]
        items = []
        for k, (img, mask) in enumerate(found):
            for fac in factors:
                im, m = rescaled(img, mask, fac)
                items.append((im, np.where(m > 0, m, BG).astype(np.int64), f"{ds}/{k}@{'x'.join(f'{f:.2f}' for f in fac)}"))
        objects = sum(len(np.unique(m)) - 1 for _, m, _ in items)  # minus BG
        per_set[ds] = items
        record[ds] = {"images": len(found), "median_diameter": round(float(diameter), 1),
                      "scales": [list(map(float, f)) for f in factors], "objects": int(objects)}
    if not per_set:
        raise SystemExit("--without left no data set to train on.")
    most = max(r["objects"] for r in record.values())
    images, labels, names = [], [], []
    for ds, items in per_set.items():
        repeat = int(min(MAX_REPEAT, max(1, round(most / max(record[ds]["objects"], 1)))))
        record[ds]["repeat"] = repeat
        for _ in range(repeat):
            for im, m, n in items:
                images.append(im)
                labels.append(m)
                names.append(n)
    return images, labels, names, record


def zero_shot(model, ndim: int, device: str) -> dict[str, dict[str, float]]:
    """Mean zero-shot scores per held-out set (nothing painted on them)."""
    sets = ("bbbc039-nuclei", "usiigaci-phc", "isbi2012-em", "cells3d-nuclei") if ndim == 2 else ("cells3d-nuclei",)
    out = {}
    for ds in sets:
        try:
            found = pairs(ds, "held", ndim)
        except FileNotFoundError:
            continue
        scores = [evaluate(m, segment(model, img, device=device)) for img, m in found]
        out[ds] = {k: round(float(np.mean([s[k] for s in scores])), 3) for k in ("AP50", "mAP", "SBD")}
        print(f"  held-out {ds} ({len(found)} {'slices' if ds.startswith('cells3d') and ndim == 2 else 'images'}): "
              + "  ".join(f"{k} {v:.3f}" for k, v in out[ds].items()), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(ap)
    ap.add_argument("--ndim", type=int, choices=(2, 3), default=2)
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: --minutes only)")
    ap.add_argument("--without", action="append", default=[], choices=SETS_2D, metavar="SET",
                    help="leave this data set out (repeatable)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 6 (2D) or 2 (3D)")
    ap.add_argument("--out", default=None, help="default: src/napari_spoco/_models/default_{2,3}d.spoco.pt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--depth", type=int, default=ModelConfig().depth,
                    help="UNet levels (default: the small preset's); ignored with --init")
    ap.add_argument("--init", metavar="MODEL", help="continue training this model file (same data, same recipe)")
    ap.add_argument("--no-eval", action="store_true", help="skip the zero-shot scores")
    ap.add_argument("--evaluate", metavar="MODEL", help="only print MODEL's zero-shot scores")
    args = ap.parse_args()
    use_data_dir(args.data)
    eval_device = "cpu" if args.device == "auto" else args.device

    if args.evaluate:
        model = load_model(args.evaluate)
        zero_shot(model, model.config.ndim, eval_device)
        return

    images, labels, names, record = training_data(args.ndim, args.without)
    print(f"{args.ndim}D model on {len(images)} images: " + "; ".join(f"{d} {r}" for d, r in record.items()), flush=True)
    print(f"training for {args.steps or '-'} steps / {args.minutes} min on {platform.processor() or platform.machine()}, "
          f"device {args.device}", flush=True)
    patch = (128, 128) if args.ndim == 2 else (32, 64, 64)
    batch = args.batch_size or (6 if args.ndim == 2 else 2)
    config = TrainConfig(steps=args.steps, minutes=args.minutes, patch_shape=patch, batch_size=batch,
                         background_label=BG, seed=args.seed, scale=1.0, device=args.device)
    start, before = None, 0.0
    if args.init:  # a continued run: the same objective, not a fine-tuning start
        start = load_model(args.init)
        before = start.history.get("seconds", 0.0)
        config.stable_start = False
    t0 = time.perf_counter()
    model = train(images, labels, config, model=start, model_config=ModelConfig(ndim=args.ndim, depth=args.depth),
                  names=names)
    seconds = time.perf_counter() - t0 + before
    print(f"{model.history['steps']} steps in {seconds:.0f} s", flush=True)
    # Ship one set of weights, the EMA teacher's (an average over the last ~1000 steps): the
    # zero-shot predictor and the start of fine-tuning are then the same network, so a user's
    # first steps start from exactly what they saw before Train (docs/method.md).
    model.student.load_state_dict(model.teacher.state_dict())
    held = {} if args.no_eval else zero_shot(model, args.ndim, eval_device)

    # A small file: keep the training record, not every step's losses. Nor the fingerprints of
    # its training images, or the stable-start record of this run: a user's first Train on one of
    # those images (our benchmarks' training fields) would count as "continuing on the same
    # images" and be protected, which no other image gets (docs/method.md).
    for key in ("losses", "fine_tuned_on", "stable_start", "start_fit", "stable_reason"):
        model.history.pop(key, None)
    model.history["trained_on"] = {
        "data": record,
        "left_out": args.without,
        "licenses": {d: LICENSES[d] for d in record},
        "labels": "dense instance masks, unlabelled pixels as background",
        "held_out": "benchmark train/test images, sample-crop fields, cells3d x >= 128, ISBI 2012 EM",
        "script": "scripts/train_default_model.py " + " ".join(sys.argv[1:]),
        "device": args.device,
        "weights": "the EMA teacher's, in student and teacher",
        "minutes": round(seconds / 60, 2),
        "zero_shot": held,
    }
    out = args.out or str(ROOT / "src" / "napari_spoco" / "_models" / f"default_{args.ndim}d.spoco.pt")
    out = save_model(model, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)", flush=True)


if __name__ == "__main__":
    main()
