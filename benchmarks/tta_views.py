"""Test-time augmentation: the same trained models segmented with the network run once per tile,
or its output averaged over mirrored views of the tile (docs/method.md, "Test-time augmentation").

Takes the models that ``sparse_accuracy.py --save-dir DIR`` saved (``{dataset}_seed{N}.spoco.pt``)
and segments each data set's held-out images with every variant, everything else at its default:

* ``one``: one pass (``segment(tta=False)``);
* ``two``: as it is and mirrored in Y and X together (the 3D default, ``inference.TTA_FLIPS_3D``);
* ``four``: as it is, mirrored in X, in Y and in both (the 2D default, ``inference.TTA_FLIPS``);
* ``eight``: 3D only, the four views and each of them mirrored in Z too;
* ``foreground``: the embeddings of one pass with the four views' foreground;
* ``concat``: the four views' embeddings side by side (64 channels for a 16-dimensional model),
  scaled by 1/2 so that a distance is the root mean square of the four views' distances; the
  foreground averaged. Averaging assumes an object keeps its embedding when mirrored, which
  nothing in training asks for; side by side assumes nothing.

``--on train`` scores the training images instead (every object of them, painted or not).

Prints AP50 and mAP per seed, the error counts of ``postprocess_steps.anatomy`` and the seconds
each variant took for the held-out images.

Usage:  python benchmarks/tta_views.py --models DIR [--datasets ...] [--seeds 0 1 2]
            [--variants one two four eight foreground] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import postprocess_steps as ps  # noqa: E402
import sparse_accuracy as sa  # noqa: E402

from napari_spoco import evaluate, inference, segment, segmentation  # noqa: E402
from napari_spoco.inference import Embedding  # noqa: E402
from napari_spoco.io import load_model  # noqa: E402

FOUR = inference.TTA_FLIPS
DEFAULT_3D = inference.TTA_FLIPS_3D


def _use_views(flips) -> None:
    """Every image, 2D or 3D, averaged over ``flips`` (the library picks per dimensionality)."""
    inference.TTA_FLIPS = inference.TTA_FLIPS_3D = flips


def _restore_views() -> None:
    inference.TTA_FLIPS, inference.TTA_FLIPS_3D = FOUR, DEFAULT_3D


VIEWS = {"two": ((), (-2, -1)), "four": FOUR, "eight": FOUR + tuple((-3,) + f for f in FOUR)}
VARIANTS = ("one", "two", "four", "eight", "foreground", "concat", "concat_pca")


def _with_foreground_of_four(*args, **kwargs) -> Embedding:
    """One pass's embeddings, the four views' foreground."""
    kwargs.pop("tta", None)
    one = inference.embed(*args, tta=False, **kwargs)
    four = inference.embed(*args, tta=True, **kwargs)
    return Embedding(one.embeddings, four.foreground, one.teacher_embeddings)


PCA = {"on": False}


def each_view(*args, **kwargs) -> list[Embedding]:
    """``inference.embed`` of each of the four views on its own (arguments as ``embed``'s; its
    ``tta`` and ``with_teacher`` are ignored)."""
    kwargs.pop("tta", None)
    kwargs.pop("with_teacher", None)
    views = []
    try:
        for axes in FOUR:
            _use_views((axes,))
            views.append(inference.embed(*args, tta=True, **kwargs))
    finally:
        _restore_views()
    return views


def _views_side_by_side(*args, **kwargs) -> Embedding:
    """The four views' embeddings concatenated and scaled by 1/sqrt(4), the foreground averaged."""
    views = each_view(*args, **kwargs)
    emb = np.concatenate([v.embeddings for v in views]) / np.sqrt(len(views))
    if PCA["on"]:  # onto the principal axes of as many dimensions as one view has
        flat = emb.reshape(len(emb), -1)
        sample = flat[:, :: max(1, flat.shape[1] // 2**16)].astype(np.float64)
        sample -= sample.mean(axis=1, keepdims=True)
        _, vecs = np.linalg.eigh(sample @ sample.T)
        basis = vecs[:, ::-1][:, : len(views[0].embeddings)].T.astype(np.float32)
        emb = (basis @ flat).reshape((len(basis),) + emb.shape[1:])
    fg = None if views[0].foreground is None else np.mean([v.foreground for v in views], axis=0)
    return Embedding(np.ascontiguousarray(emb, dtype=np.float32), fg, None)


def score(model, data: sa.Data, variant: str, on: str = "test") -> dict:
    """Mean AP50 / mAP over the held-out images with one variant, the error counts summed."""
    segmentation.embed = {"foreground": _with_foreground_of_four, "concat": _views_side_by_side,
                          "concat_pca": _views_side_by_side}.get(variant, inference.embed)
    PCA["on"] = variant == "concat_pca"
    _use_views(VIEWS.get(variant, FOUR))
    t0 = time.perf_counter()
    scores, errors = [], {}
    try:
        images = data.tests if on == "test" else list(zip(data.split.train, data.train_images, data.train_masks))
        for _, img, gt in images:
            pred = segment(model, img, device="cpu", tta=variant != "one")
            scores.append(evaluate(gt, pred))
            for k, v in ps.anatomy(gt, pred).items():
                errors[k] = errors.get(k, 0) + v
    finally:
        segmentation.embed = inference.embed
        _restore_views()
    return {"AP50": float(np.mean([s["AP50"] for s in scores])), "mAP": float(np.mean([s["mAP"] for s in scores])),
            "seconds": time.perf_counter() - t0, **errors}


def saved_models(folder, datasets, seeds):
    """(split, seed, data, model) for each ``{dataset}_seed{N}.spoco.pt`` (zoomed sets
    ``{dataset}@{F}_seed{N}.spoco.pt``) that ``sparse_accuracy.py --save-dir`` left in ``folder``;
    ``datasets`` None or empty: the non-optional sets. Each data set's images are read once."""
    for split in sa.saved_splits(Path(folder), datasets):
        if not datasets and split.optional:
            continue
        data = None
        for seed in seeds:
            path = Path(folder) / f"{split.name}_seed{seed}.spoco.pt"
            if path.is_file():
                data = data or sa.Data(split, features=False)
                yield split, seed, data, load_model(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, help="--save-dir of sparse_accuracy.py")
    p.add_argument("--datasets", nargs="*")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["one", "two", "four", "foreground"])
    p.add_argument("--on", choices=["test", "train"], default="test",
                   help="score on the held-out images, or on the training images (all their objects: "
                        "the case of a user who paints a few objects of an image and segments that image)")
    p.add_argument("--json")
    a = p.parse_args()
    rows = []
    for split, seed, data, model in saved_models(a.models, a.datasets, a.seeds):
        row = {"dataset": split.name, "seed": seed, "on": a.on}
        for variant in a.variants:
            if variant == "eight" and model.config.ndim == 2:
                continue
            row[variant] = score(model, data, variant, a.on)
            r = row[variant]
            print(f"{split.name:22s} seed {seed}  {variant:10s} AP50 {r['AP50']:.3f}  mAP {r['mAP']:.3f}  "
                  f"{r['seconds']:.1f} s  merged {r['merged']} split {r['split']} false {r['false']}", flush=True)
        rows.append(row)
    print("\n| data set | seeds | " + " | ".join(a.variants) + " |\n|---|---|" + "---|" * len(a.variants))
    for name in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == name]
        cells = [f"{np.mean([r[v]['AP50'] for r in rs]):.3f} (mAP {np.mean([r[v]['mAP'] for r in rs]):.3f}; "
                 f"{np.mean([r[v]['seconds'] for r in rs]):.1f} s)" if v in rs[0] else "—" for v in a.variants]
        print(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
