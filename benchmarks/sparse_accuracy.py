"""Sparse-label accuracy: SPOCO after a fixed CPU budget vs. a classical pipeline and a pixel classifier, per data set.

For each data set under ``--data``, and for each seed of ``--seeds`` (default 0 1 2): keep 10 %
of the objects of each training image (which ones depends on the seed), train SPOCO for
``--minutes`` of wall-clock time (seeded too), segment held-out images, and score AP50 / mAP /
SBD. Beside it, on the same images (benchmarks/peers.py):

* the better of two classical pipelines (no labels, so the same on every seed): *blobs*
  (smoothing + Otsu + distance-transform watershed) and *membranes* (threshold of the dark
  membranes, interiors grown back by a watershed);
* the *forest*: an ilastik-like pixel classifier (multi-scale filters + a 100-tree random forest)
  trained on the same painted labels as SPOCO, followed by a distance-transform watershed.

The table gives per data set the mean (min–max) over seeds, the ratios ours / classical and
ours / forest per seed, and a verdict against the targets of the accuracy issue (AP50 ≥ target,
≥ 1.5× classical where asked — on every seed for EM — and ahead of the forest); ``--json``
keeps the per-seed rows. ``--peers-only`` skips SPOCO (minutes instead of an hour).

``--datasets synthetic-nuclei-3d`` adds a generated set (benchmarks/synthetic_nuclei.py: small,
packed nuclei in anisotropic volumes, a case none of the shared sets has); it runs only when
named. So does ``synthetic-leaves-rgb`` (benchmarks/synthetic_leaves.py: colour photographs of
plant rosettes, the paper's headline case). ``--voxel-size known`` (default) trains with the voxel size its metadata would give;
``none`` gives none, as for files that record none (training then estimates it from the painted objects' shape);
``cubic`` gives 1 × 1 × 1. ``--zoom F`` resizes the 2D sets' images and masks by F in Y and X (rows
``DATASET@F``): the same objects at another lab's magnification. ``--one-image N`` replaces each split by its first N held-out images,
each on its own: trained on its painted objects and scored on all of its objects (one row per
image), the user who paints a few objects of one image and segments that image. ``--train-images N``
trains on each split's first N training images only (rows ``DATASET-trainN``): a lab with a handful of images.
``--other-split`` arranges each set's images another way (rows ``DATASET~other``): held-out images
taken from the usual split's training side, trained on the usual held-out images and the rest of
that side (none seen by the shipped start) — the defaults checked on a split nobody compared them on.

Usage:  python benchmarks/sparse_accuracy.py [--data DIR] [--minutes 5] [--seeds 0 1 2]
                                            [--datasets bbbc039-nuclei ...] [--peers-only]
                                            [--init default|none|without|FILE] [--threads N] [--scale auto|F]
                                            [--voxel-size known|none|cubic] [--one-image N] [--zoom F]
                                            [--train-images N] [--other-split] [--json FILE] [--out FILE] [--save-dir DIR]
        python benchmarks/sparse_accuracy.py --from-json FILE    # the table again, no computing
Writes the markdown table to stdout (and to --out if given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_data import DEFAULT_DATA, add_data_argument, read, stems, use_data_dir  # noqa: E402, F401
from peers import ForestPeer, classical, forest_features  # noqa: E402
from synthetic_leaves import NAME as SYNTHETIC_LEAVES  # noqa: E402
from synthetic_nuclei import NAME as SYNTHETIC_3D  # noqa: E402
from synthetic_nuclei import VOXEL_SIZE as SYNTHETIC_VOXEL_SIZE  # noqa: E402

N_LEAVES_TRAIN = 30  # of the generated plants: the first 30 trained on, the other 10 scored
CELLS3D_SPLIT = 128  # the shipped 3D model trained on x < 128 (scripts/train_default_model.py)

from napari_spoco import TrainConfig, evaluate, segment, train  # noqa: E402
from napari_spoco.precision import INFERENCE_PRECISION, PRECISIONS, resolve_precision  # noqa: E402

SHARED = DEFAULT_DATA  # the default data folder (other benchmarks import this name)
CPUS = os.cpu_count()  # before --threads narrows what training sees
METRICS = ("AP50", "mAP", "SBD")

# The accuracy issue's targets (10 % painted, 5 CPU-minutes, mean of 3 seeds). Every row must
# also be ahead of the forest. "x_classical": AP50 ratio to the best classical pipeline;
# "every_seed": that ratio must hold on each seed, not only on the mean.
TARGETS: dict[str, dict] = {
    "bbbc039-nuclei": {"AP50": 0.88, "mAP": 0.78},
    "usiigaci-phc": {"AP50": 0.45},
    "isbi2012-em": {"AP50": 0.65, "x_classical": 1.5, "every_seed": True},
    "cells3d-nuclei": {"AP50": 0.65, "x_classical": 1.5},
    # not an issue target: the generated stand-in for small packed anisotropic nuclei holds
    # us to cells3d's bar against the classical pipeline (and, like every row, the forest)
    SYNTHETIC_3D: {"x_classical": 1.5},
    # not an issue target either: the generated stand-in for the held-out leaves (colour,
    # large touching leaves, occlusion), where the forest on colour features beat us
    SYNTHETIC_LEAVES: {"x_classical": 1.5},
}
#: The leave-one-dataset-out row (--init without): each 2D set, from a starting model that never saw it.
WITHOUT_TARGET = {"x_classical": 1.25}


def targets(r: dict) -> dict:
    return WITHOUT_TARGET if r.get("init") == "without" else TARGETS.get(r["dataset"].removesuffix("~other"), {})


@dataclass
class Split:
    name: str
    train: list[str]
    test: list[str]
    note: str = ""
    crop: tuple = (Ellipsis,)  # the part of each image (and mask) that is used
    voxel_size: tuple | None = None  # what the files' metadata would say (Z, Y, X); --voxel-size known passes it
    optional: bool = False  # run only when named in --datasets
    rgb: bool = False  # colour images (Y, X, 3): the forest reads the channels, classical adds excess green
    source: str = ""  # the data set the images come from, where the name is not one (--one-image rows)
    zoom: float = 1.0  # Y and X resized by this factor (--zoom): the same objects at another magnification
    ndim: int = 2  # spatial axes of the images (--zoom resizes only the 2D sets)

    @property
    def dataset(self) -> str:
        return self.source or self.name


def one_image_splits(split: Split, n: int) -> list[Split]:
    """The first ``n`` held-out images of ``split``, each on its own: painted, trained on and
    scored (every object, painted or not) — a user who paints a few objects of one image and
    segments that image."""
    return [replace(split, name=f"{split.name}-one{i}", train=[stem], test=[stem], source=split.dataset,
                    note=f"image {stem} alone: trained on its painted objects, scored on all of its objects")
            for i, stem in enumerate(split.test[:n])]


def fewer_train_split(split: Split, n: int) -> Split:
    """``split`` trained on its first ``n`` training images only, named ``<data set>-train<n>``:
    fewer painted objects and less variety, as a lab with a handful of images has (the held-out
    images and the painting of each kept image are the same as the whole split's)."""
    if n <= 0 or n >= len(split.train):
        return split
    return replace(split, name=f"{split.name}-train{n}", train=split.train[:n], source=split.dataset,
                   note=(split.note + "; " if split.note else "") + f"the first {n} training images only")


#: Rows ``DATASET~other`` (--other-split): (training slices, held-out slice) of ``stems(dataset)``.
#: Held out: images from the usual split's training side; trained on: the usual held-out images
#: and the rest of the usual training side; each split's sizes kept, and none of these images
#: seen by the shipped start (scripts/train_default_model.py trains it on BBBC039's fields
#: [10:-6] and Usiigaci's [6:-3], and on no EM image or generated plant).
OTHER_SPLITS: dict[str, tuple[tuple[slice, ...], slice]] = {
    "bbbc039-nuclei": ((slice(-6, None), slice(0, 4)), slice(4, 10)),
    "usiigaci-phc": ((slice(-3, None), slice(0, 3)), slice(3, 6)),
    "isbi2012-em": ((slice(10, 20),), slice(0, 4)),
    SYNTHETIC_LEAVES: ((slice(10, 40),), slice(0, 10)),
}


def other_split(split: Split) -> Split | None:
    """``split`` with training and held-out images arranged another way (``OTHER_SPLITS``), named
    ``<data set>~other``: the defaults measured on a split they were never compared on (the
    project's rule: tune nothing to one split). None where a set has no other arrangement
    (cells3d: one volume, half of it the 3D start's)."""
    if split.dataset not in OTHER_SPLITS:
        return None
    names = stems(split.dataset)
    train_parts, test_part = OTHER_SPLITS[split.dataset]
    train = [s for part in train_parts for s in names[part]]
    test = names[test_part]
    assert not set(train) & set(test), "an other split's training and held-out images overlap"
    return replace(split, name=f"{split.name}~other", train=train, test=test, source=split.dataset,
                   note=(split.note + "; " if split.note else "") + "the other split: held out "
                   f"{test[0]} … {test[-1]}")


def zoomed_split(split: Split, zoom: float) -> Split:
    """``split`` with its images (linear, anti-aliased when shrinking) and masks (nearest) resized by
    ``zoom`` in Y and X, named ``<data set>@<zoom>``: the same objects at another magnification, as
    another lab's microscope would record them (2D sets only)."""
    if zoom == 1.0:
        return split
    return replace(split, name=f"{split.name}@{zoom:g}", source=split.dataset, zoom=zoom,
                   note=(split.note + "; " if split.note else "") + f"images and masks resized {zoom:g}× in Y and X")


def resize_yx(array: np.ndarray, zoom: float, mask: bool, rgb: bool = False) -> np.ndarray:
    """One image or mask of a 2D set at ``zoom`` times its size in Y and X."""
    from skimage.transform import rescale

    if zoom == 1.0:
        return array
    if mask:
        return rescale(array, zoom, order=0, preserve_range=True, anti_aliasing=False).astype(array.dtype)
    out = rescale(array.astype(np.float32), zoom, order=1, preserve_range=True, anti_aliasing=zoom < 1,
                  channel_axis=-1 if rgb else None)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(array.dtype)


def splits() -> list[Split]:
    bbbc = stems("bbbc039-nuclei")
    phc = stems("usiigaci-phc")
    em = stems("isbi2012-em")
    return [
        Split("bbbc039-nuclei", bbbc[:10], bbbc[-6:]),
        Split("usiigaci-phc", phc[:6], phc[-3:]),
        Split("isbi2012-em", em[:10], em[-4:]),
        Split("cells3d-nuclei", ["cells3d_nuclei"], ["cells3d_nuclei"],
              "one volume, its half x ≥ 128 (the shipped 3D model trained on the other half): trained on "
              "10 % of that half's nuclei, scored on all of them", crop=np.s_[..., CELLS3D_SPLIT:], ndim=3),
        Split(SYNTHETIC_3D, stems(SYNTHETIC_3D)[:1], stems(SYNTHETIC_3D)[1:],
              "generated (benchmarks/synthetic_nuclei.py): about 800 packed nuclei of 6×14×14 voxels per "
              "40×160×160 volume, z-step 2× the pixel size; one volume trained on, another scored",
              voxel_size=SYNTHETIC_VOXEL_SIZE, optional=True, ndim=3),
        Split(SYNTHETIC_LEAVES, stems(SYNTHETIC_LEAVES)[:N_LEAVES_TRAIN], stems(SYNTHETIC_LEAVES)[N_LEAVES_TRAIN:],
              "generated (benchmarks/synthetic_leaves.py): colour photographs of plant rosettes, 10–20 leaves "
              "each, up to 180 px long (54 px across, median), younger leaves over older ones, soil about as bright as the leaves; "
              "30 plants trained on, 10 others scored", optional=True, rgb=True),
    ]


def sparsify(mask: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = np.unique(mask[mask > 0])
    keep = rng.choice(ids, size=max(2, int(round(fraction * len(ids)))), replace=False)
    return np.where(np.isin(mask, keep), mask, 0)


def paint_seed(seed: int, image_index: int) -> int:
    """Seed of the painted objects of one training image: seed 0 paints what this benchmark
    painted before it had several seeds (seed + index); other seeds draw from separate streams."""
    return seed * 1000 + image_index


def mean_scores(scores: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([s[k] for s in scores])) for k in METRICS}


def without_model(dataset: str) -> Path:
    """The leave-one-dataset-out starting model of a data set (scripts/train_default_model.py
    --without DATASET, kept in benchmarks/models/)."""
    return ROOT / "benchmarks" / "models" / f"without_{dataset}.spoco.pt"


def start_model(init: str, ndim: int, dataset: str = ""):
    """``default``: the shipped starting model where one exists for ``ndim`` (what
    ``napari-spoco train`` does), else a new network; ``none``: always a new network;
    ``without``: the starting model trained without this data set where the shipped one saw it
    (the ISBI EM images never are), so the data set is as new to it as a user's."""
    from napari_spoco.io import load_model
    from napari_spoco.pretrained import has_default_model, load_default_model

    if init not in ("default", "none", "without"):
        model = load_model(init)
        model.history["source"] = f"model file {Path(init).name}"
        return model if model.config.ndim == ndim else None
    if init == "without" and without_model(dataset).is_file():
        model = load_model(without_model(dataset))
        model.history["source"] = f"starting model without {dataset}"
        return model
    return load_default_model(ndim) if init in ("default", "without") and has_default_model(ndim) else None


# ---------------------------------------------------------------- one data set


class Data:
    """A split's images and masks, read once, and the forest's features of each image."""

    def __init__(self, split: Split, features: bool = True):
        ds = split.dataset
        self.split = split
        c, z, rgb = split.crop, split.zoom, split.rgb

        def image(stem: str) -> np.ndarray:
            return resize_yx(read(ds, stem, "images")[c], z, mask=False, rgb=rgb)

        def mask(stem: str) -> np.ndarray:
            return resize_yx(read(ds, stem, "masks")[c], z, mask=True)

        self.train_images = [image(s) for s in split.train]
        self.train_masks = [mask(s) for s in split.train]
        self.tests = [(s, image(s), mask(s)) for s in split.test]
        self.features: dict[str, np.ndarray] = {}
        self.features_s = 0.0
        if features:
            t = time.perf_counter()
            for stem, img in list(zip(split.train, self.train_images)) + [(s, i) for s, i, _ in self.tests]:
                if stem not in self.features:
                    self.features[stem] = forest_features(img, channel_axis=-1 if split.rgb else None)
            self.features_s = time.perf_counter() - t

    def painted(self, fraction: float, seed: int) -> list[np.ndarray]:
        return [sparsify(m, fraction, paint_seed(seed, i)) for i, m in enumerate(self.train_masks)]


def saved_splits(models: Path, datasets: list[str] | None) -> list[Split]:
    """The splits whose models ``--save-dir`` may have left in ``models``: each set under its own name
    and, for each zoom found there (``<set>@<F>_seed<S>.spoco.pt``), count of training images
    (``<set>-train<N>_seed<S>.spoco.pt``), other split (``<set>~other_seed<S>.spoco.pt``) or
    single image (``<set>-one<K>_seed<S>.spoco.pt``), that split. ``datasets`` (names as saved, e.g.
    ``bbbc039-nuclei@0.5``) None or empty: all of them."""
    found = []
    for split in splits():
        parts = [split]
        zooms = {path.name[len(split.name) + 1:].rsplit("_seed", 1)[0]
                 for path in models.glob(f"{split.name}@*_seed*.spoco.pt")}
        for zoom in sorted(zooms):
            try:
                parts.append(zoomed_split(split, float(zoom)))
            except ValueError:  # not a factor: a file of some other naming
                continue
        counts = {path.name[len(split.name) + 6:].rsplit("_seed", 1)[0]
                  for path in models.glob(f"{split.name}-train*_seed*.spoco.pt")}
        parts += [fewer_train_split(split, int(n)) for n in sorted(counts) if n.isdigit()]
        other = other_split(split)
        if other is not None and any(models.glob(f"{other.name}_seed*.spoco.pt")):
            parts.append(other)
        ones = {path.name[len(split.name) + 4:].rsplit("_seed", 1)[0]
                for path in models.glob(f"{split.name}-one*_seed*.spoco.pt")}
        ones = sorted(int(k) for k in ones if k.isdigit())
        if ones:
            parts += [one for k, one in enumerate(one_image_splits(split, max(ones) + 1)) if k in ones]
        found += [part for part in parts if not datasets or part.name in datasets]
    return found


def saved_models(models: Path, datasets: list[str] | None, seeds: list[int]):
    """``(data, seed, model)`` for each model that ``--save-dir`` saved in ``models``
    (``<dataset>_seed<S>.spoco.pt``, zoomed sets ``<dataset>@<F>_seed<S>.spoco.pt``), each data
    set's images read once (no forest features)."""
    from napari_spoco.io import load_model

    for split in saved_splits(models, datasets):
        data = None
        for seed in seeds:
            path = models / f"{split.name}_seed{seed}.spoco.pt"
            if path.is_file():
                data = data or Data(split, features=False)
                yield data, seed, load_model(path)


def run_classical(data: Data, save_dir: Path | None = None) -> dict:
    per: dict[str, list] = {}
    for stem, img, gt in data.tests:
        for name, lab in classical(img, rgb=data.split.rgb).items():
            per.setdefault(name, []).append(evaluate(gt, lab))
            if save_dir is not None and stem == data.tests[0][0]:
                from napari_spoco.overlay import save_overlay

                save_dir.mkdir(parents=True, exist_ok=True)
                save_overlay(save_dir / f"{data.split.name}_{name}.png", img, lab)
                save_overlay(save_dir / f"{data.split.name}_truth.png", img, gt)
    means = {k: mean_scores(v) for k, v in per.items()}
    best = max(means, key=lambda k: means[k]["AP50"])
    return {"best": best, "scores": means[best], "all": means}


def run_forest(data: Data, sparse: list[np.ndarray], seed: int, save_dir: Path | None = None) -> dict:
    t = time.perf_counter()
    peer = ForestPeer(seed=seed).fit([data.features[s] for s in data.split.train], sparse)
    train_s = time.perf_counter() - t
    scores, seg_s = [], []
    for stem, img, gt in data.tests:
        t = time.perf_counter()
        lab = peer.segment(data.features[stem])
        seg_s.append(time.perf_counter() - t)
        scores.append(evaluate(gt, lab))
        if save_dir is not None and stem == data.tests[0][0]:
            from napari_spoco.overlay import save_overlay

            save_dir.mkdir(parents=True, exist_ok=True)
            save_overlay(save_dir / f"{data.split.name}_seed{seed}_forest.png", img, lab)
    return {**mean_scores(scores), "train_s": train_s, "segment_s": float(np.mean(seg_s)),
            "pixels": [peer.info["pixels_class1"], peer.info["pixels_class0"]], "radius": peer.radius}


def run_ours(data: Data, sparse: list[np.ndarray], seed: int, minutes: float, init: str, scale: float | None,
             save_dir: Path | None = None, precision: str = "auto", voxel_size: tuple | None = None,
             loss: dict | None = None, ring_width: int | None = None, paste_share: float | None = None,
             scale_jitter: float | None = None) -> dict:
    import torch

    t0 = time.perf_counter()
    start = start_model(init, data.train_images[0].ndim - data.split.rgb, data.split.dataset)  # colour: 2D
    steps_before = start.history.get("steps", 0) if start is not None else 0
    config = TrainConfig(steps=0, minutes=minutes, seed=seed, device="cpu", scale=scale, precision=precision,
                         voxel_size=voxel_size)
    if loss:
        config = replace(config, loss=replace(config.loss, **loss))
    if ring_width is not None:
        config = replace(config, ring_width=ring_width)
    if paste_share is not None:
        config = replace(config, paste_share=paste_share)
    if scale_jitter is not None:
        config = replace(config, scale_jitter=scale_jitter)
    model = train(data.train_images, sparse, config, model=start)
    train_s = time.perf_counter() - t0
    scores, seg_s = [], []
    for stem, img, gt in data.tests:
        t = time.perf_counter()
        pred = segment(model, img, device="cpu")
        seg_s.append(time.perf_counter() - t)
        scores.append(evaluate(gt, pred))
        if save_dir is not None and stem == data.tests[0][0]:
            from napari_spoco.io import save_model
            from napari_spoco.overlay import save_overlay

            save_dir.mkdir(parents=True, exist_ok=True)
            save_model(model, save_dir / f"{data.split.name}_seed{seed}.spoco.pt")
            save_overlay(save_dir / f"{data.split.name}_seed{seed}_spoco.png", img, pred)
    return {**mean_scores(scores), "steps": model.history["steps"] - steps_before,
            "start": start.history.get("source", "?") if start is not None else "new", "scale": model.pixel_scale,
            "train_s": train_s, "segment_s": float(np.mean(seg_s)),
            "precision": model.history.get("precision", "float32"), "voxel_size": voxel_size,
            "scale_jitter": model.history.get("scale_jitter"), "painted_objects": model.history.get("painted_objects"),
            "voxel_size_used": list(model.voxel_size) if model.voxel_size else None,
            "voxel_size_estimated": bool(model.history.get("voxel_size_estimated")),
            "segment_precision": resolve_precision(INFERENCE_PRECISION, torch.device("cpu"), model.config.ndim)}


def run(split: Split, args: argparse.Namespace, scale: float | None) -> dict:
    """Classical once, then per seed: painted labels, the forest, and (unless --peers-only) SPOCO."""
    data = Data(split)
    result = {"dataset": split.name, "init": args.init, "n_train": len(split.train), "n_test": len(split.test), "note": split.note,
              "features_s": data.features_s, "classical": run_classical(data, args.save_dir), "seeds": []}
    for seed in args.seeds:
        sparse = data.painted(args.fraction, seed)
        row = {"seed": seed, "painted": int(sum(len(np.unique(s)) - 1 for s in sparse))}
        print(f"   seed {seed}: forest ...", file=sys.stderr, flush=True)
        row["forest"] = run_forest(data, sparse, seed, args.save_dir)
        if not args.peers_only:
            print(f"   seed {seed}: SPOCO, {args.minutes} min ...", file=sys.stderr, flush=True)
            ndim = data.train_images[0].ndim - data.split.rgb
            voxel_size = {"known": split.voxel_size, "none": None,
                          "cubic": (1.0,) * ndim if ndim == 3 else None}[args.voxel_size]
            row["ours"] = run_ours(data, sparse, seed, args.minutes, args.init, scale, args.save_dir, args.precision,
                                   voxel_size, args.loss, args.ring_width, args.paste_share,
                                   args.scale_jitter)
        print(f"   {row}", file=sys.stderr, flush=True)
        result["seeds"].append(row)
    return result


# ---------------------------------------------------------------- the table


def spread(values: list[float]) -> str:
    """``mean (min–max)``, or the value alone for one seed."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def needed_ap50(r: dict) -> str:
    """The AP50 SPOCO must reach on this data set: at least the target and 1.5× classical where
    asked, and more than the forest's mean."""
    t = targets(r)
    floor = max(t.get("AP50", 0.0), t.get("x_classical", 0.0) * r["classical"]["scores"]["AP50"])
    forest = float(np.mean([s["forest"]["AP50"] for s in r["seeds"]]))
    return f"> {forest:.3f} (forest)" if forest >= floor else f"≥ {floor:.3f}"


def target_text(r: dict) -> str:
    t = targets(r)
    parts = [f"{k} ≥ {t[k]:.2f}" for k in ("AP50", "mAP") if k in t]
    if "x_classical" in t:
        parts.append(f"≥ {t['x_classical']:g}× classical" + (" every seed" if t.get("every_seed") else ""))
    return ", ".join(parts + ["> forest"])


def verdict(r: dict) -> str:
    """'✓' where SPOCO meets every target of this data set, else '✗' and what it misses."""
    t = targets(r)
    rows = r["seeds"]
    ours = {k: float(np.mean([s["ours"][k] for s in rows])) for k in METRICS}
    misses = [f"{k} {ours[k]:.3f} < {t[k]:.2f}" for k in ("AP50", "mAP") if k in t and ours[k] < t[k]]
    if "x_classical" in t:
        c = r["classical"]["scores"]["AP50"]
        ratios = [ratio(s["ours"]["AP50"], c) for s in rows] if t.get("every_seed") else [ratio(ours["AP50"], c)]
        if min(ratios) < t["x_classical"]:
            misses.append(f"{min(ratios):.2f}× classical < {t['x_classical']:g}×")
    forest = float(np.mean([s["forest"]["AP50"] for s in rows]))
    if ours["AP50"] <= forest:
        misses.append(f"behind forest ({forest:.3f})")
    return "✓" if not misses else "✗ " + "; ".join(misses)


def table(results: list[dict]) -> str:
    with_ours = bool(results) and all("ours" in s for r in results for s in r["seeds"])
    head = ["data set", "train / test images", "painted objects per seed"]
    if with_ours:
        head += ["SPOCO AP50", "mAP", "SBD", "steps"]
    head += ["best classical", "its AP50", "mAP", "SBD", "forest AP50", "mAP", "SBD", "forest fit s"]
    head += ["ours / classical per seed", "ours / forest per seed"] if with_ours else []
    head += ["target", "verdict" if with_ours else "SPOCO needs AP50"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        rows, c = r["seeds"], r["classical"]
        cells = [r["dataset"], f"{r['n_train']} / {r['n_test']}", " / ".join(str(s["painted"]) for s in rows)]
        if with_ours:
            cells += [spread([s["ours"][k] for s in rows]) for k in METRICS]
            cells.append(" / ".join(str(s["ours"]["steps"]) for s in rows))
        cells += [c["best"]] + [f"{c['scores'][k]:.3f}" for k in METRICS]
        cells += [spread([s["forest"][k] for s in rows]) for k in METRICS]
        cells.append(f"{np.mean([s['forest']['train_s'] for s in rows]):.0f}")
        if with_ours:
            cells.append(" / ".join(f"{ratio(s['ours']['AP50'], c['scores']['AP50']):.2f}×" for s in rows))
            cells.append(" / ".join(f"{ratio(s['ours']['AP50'], s['forest']['AP50']):.2f}×" for s in rows))
        cells.append(target_text(r))
        cells.append(verdict(r) if with_ours else needed_ap50(r))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: list[dict], meta: dict) -> str:
    starts = {"default": "from the shipped starting model", "none": "from a new network",
              "without": "from the starting model trained without the data set"}
    init = meta.get("init", "default")
    what = ("classical pipelines and the forest only (--peers-only)" if meta["peers_only"]
            else f"{meta['minutes']} min of SPOCO training per data set and seed, "
            f"{starts.get(init, f'from the model file {init}')}")
    if meta.get("loss"):
        what += ", loss settings changed: " + ", ".join(f"{k}={v}" for k, v in meta["loss"].items())
    header = (f"Machine: {meta['machine']}, {meta['cpus']} CPUs, {meta['threads']} torch threads, torch {meta['torch']}, "
              f"scikit-learn {meta['sklearn']}, CPU only. {meta['date']}. Sparse fraction {meta['fraction']:.0%}, "
              f"seeds {' '.join(map(str, meta['seeds']))}, {what}. Scores: mean (min–max) over seeds.")
    text = header + "\n\n" + table(results) + "\n"
    notes = [f"* {r['dataset']}: {r['note']}" for r in results if r["note"]]
    if notes:
        text += "\n" + "\n".join(notes) + "\n"
    return text


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_loss_settings(parser: argparse.ArgumentParser, items: list[str]) -> dict:
    """``["name=value", ...]`` into LossConfig fields, with the field's own type."""
    from napari_spoco.losses import LossConfig

    defaults = LossConfig()
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if not hasattr(defaults, name) or not value:
            parser.error(f"--loss {item!r}: expected NAME=VALUE with NAME one of {sorted(defaults.to_dict())}")
        kind = type(getattr(defaults, name))
        try:
            out[name] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        except ValueError:
            parser.error(f"--loss {item!r}: {value!r} is not a {kind.__name__}")
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="each seed picks the painted objects, and seeds SPOCO's training and the forest")
    parser.add_argument("--seed", type=int, help="one seed (the same as --seeds N)")
    parser.add_argument("--datasets", nargs="*")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="number format of SPOCO's training steps (TrainConfig.precision; default auto, "
                        "the library's: bfloat16 where native)")
    parser.add_argument("--voxel-size", default="known", choices=("known", "none", "cubic"),
                        help="known: train with the voxel size a data set's metadata would give (the generated "
                        "3D set's z-step; the shared sets are isotropic); none: give none, as for files that "
                        "record none (training estimates it from the painted objects' shape); cubic: 1 1 1")
    parser.add_argument("--peers-only", action="store_true", help="only the classical pipelines and the forest")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--json", type=Path, help="also write every seed's scores here")
    parser.add_argument("--from-json", type=Path, help="print the table of a saved --json run; computes nothing")
    parser.add_argument("--save-dir", type=Path, help="save each data set's models and PNG overlays here")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--init", default="default", metavar="default|none|without|FILE",
                        help="start from the shipped model where there is one (as `napari-spoco train` does; "
                        "default), from a new network, or from the starting model trained without the data set "
                        "(the leave-one-dataset-out row; benchmarks/models/), or from a model file")
    parser.add_argument("--scale", default="auto",
                        help="object scale for training and prediction: 'auto' (as `napari-spoco train`) or a factor")
    parser.add_argument("--loss", action="append", default=[], metavar="NAME=VALUE",
                        help="change one of the loss's settings for SPOCO's training (LossConfig, e.g. "
                        "foreground_unlabelled_weight=0.1), to compare a variant with the defaults; repeatable")
    parser.add_argument("--one-image", type=int, default=0, metavar="N",
                        help="instead of the split: each of the first N held-out images on its own, trained on "
                        "(its painted objects) and scored (all of its objects), one row per image")
    parser.add_argument("--zoom", type=float, default=1.0, metavar="F",
                        help="resize every image and mask of the (2D) data sets by F in Y and X, rows named "
                        "DATASET@F: the same objects at another magnification (the classical pipelines keep "
                        "their fixed sizes; the forest and SPOCO take theirs from the painted objects)")
    parser.add_argument("--train-images", type=int, default=0, metavar="N",
                        help="train on the first N training images of each split only (rows named "
                        "DATASET-trainN; the held-out images are the same): the data-poor case of a lab "
                        "with a handful of images")
    parser.add_argument("--other-split", action="store_true",
                        help="train and score on another arrangement of each set's images (rows DATASET~other): "
                        "held-out images from the usual split's training side, trained on the usual held-out "
                        "images and the rest of that side (none seen by the shipped start); sets without one "
                        "are skipped")
    parser.add_argument("--ring-width", type=int, default=None, metavar="N",
                        help="width of the foreground head's negative ring around painted objects (TrainConfig."
                        "ring_width; default: the library's), to compare a variant with the defaults")
    parser.add_argument("--paste-share", type=float, default=None, metavar="F",
                        help="share of training patches with a painted object pasted beside another (TrainConfig."
                        "paste_share; default: the library's automatic choice), to compare with the defaults")
    parser.add_argument("--scale-jitter", type=float, default=None, metavar="F",
                        help="training patches zoomed in Y and X by a factor in [1/F, F] (TrainConfig.scale_jitter; "
                        "default: the library's), to compare with the defaults")
    args = parser.parse_args()
    args.loss = parse_loss_settings(parser, args.loss)
    if args.seed is not None:
        args.seeds = [args.seed]
    if not 0.1 <= args.zoom <= 4:
        parser.error(f"--zoom {args.zoom:g}: give a factor between 0.1 and 4")
    return args


def main() -> int:
    args = parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print(report(saved["results"], saved["meta"]))
        return 0
    scale = None if args.scale == "auto" else float(args.scale)
    if args.threads:
        import torch

        os.cpu_count = lambda: args.threads  # training sets torch's threads from the core count
        torch.set_num_threads(args.threads)
    use_data_dir(args.data, needs=tuple(args.datasets or TARGETS))
    import sklearn
    import torch

    results = []
    for split in splits():
        if (args.datasets or split.optional) and split.name not in (args.datasets or ()):
            continue
        if args.zoom != 1.0:
            if split.ndim != 2:
                print(f"== {split.name}: skipped, --zoom is for the 2D sets", file=sys.stderr, flush=True)
                continue
            split = zoomed_split(split, args.zoom)
        if args.other_split:
            other = other_split(split)
            if other is None:
                print(f"== {split.name}: skipped, it has no other split", file=sys.stderr, flush=True)
                continue
            split = other
        split = fewer_train_split(split, args.train_images)
        for part in one_image_splits(split, args.one_image) if args.one_image else [split]:
            print(f"== {part.name}", file=sys.stderr, flush=True)
            results.append(run(part, args, scale))
    meta = {"machine": cpu_name(), "cpus": CPUS,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "sklearn": sklearn.__version__,
            "date": time.strftime("%Y-%m-%d"), "fraction": args.fraction, "seeds": args.seeds,
            "minutes": args.minutes, "peers_only": args.peers_only, "init": args.init, "scale": args.scale,
            "voxel_size": args.voxel_size, "loss": args.loss, "ring_width": args.ring_width,
            "paste_share": args.paste_share, "scale_jitter": args.scale_jitter,
            "one_image": args.one_image, "other_split": args.other_split, "zoom": args.zoom, "train_images": args.train_images}
    text = report(results, meta)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
