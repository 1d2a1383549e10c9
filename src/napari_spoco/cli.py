"""``napari-spoco train | predict | evaluate | demo``: argument parsing and messages only.

Every subcommand calls the library; bad input ends in one line on stderr (exit 2) unless
``--debug`` asks for the traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import SpocoError


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-spoco",
        description="Sparse instance segmentation with pixel embeddings (SPOCO): label a few "
        "objects, segment all of them.",
    )
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="{train,pretrain,predict,evaluate,export,demo}")

    t = sub.add_parser("train", help="train a model on images with sparse labels")
    t.add_argument("--images", required=True, help="folder (or file) of TIFF/PNG images")
    t.add_argument("--labels", required=True, help="folder (or file) of label images, same file name stems; 0 = unlabelled")
    t.add_argument("--out", required=True, help="model file to write")
    t.add_argument("--init", default="default",
                   help="start from: 'default' (the shipped 2D starting model; 3D images start new), "
                   "'none' (a new network), or a model file (fine-tuning). Default: default")
    t.add_argument("--steps", type=int, help="training steps (default 1000, or unlimited with --minutes)")
    t.add_argument("--minutes", type=float, help="stop after this many minutes")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--background-label", type=int, help="label value that marks painted background")
    t.add_argument("--batch-size", type=int, help="patches per step (default 8 in 2D, 2 in 3D)")
    t.add_argument("--patch-size", type=int, nargs="+", help="patch shape (default 96 96 in 2D, 32 64 64 in 3D)")
    t.add_argument("--scale", default="auto",
                   help="resize images by this factor before the network, e.g. 0.5 for objects ~60 px across; "
                   "'auto' (default) brings 2D objects wider than 45 px to ~30 px. The model file keeps it.")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _add_common(t)

    pt = sub.add_parser("pretrain", help="adapt a model to unlabelled images (self-supervised consistency)")
    pt.add_argument("--images", required=True, help="folder (or file) of TIFF/PNG images; no labels needed")
    pt.add_argument("--out", required=True, help="model file to write")
    pt.add_argument("--init", default="default",
                    help="'default' (the shipped 2D model), 'none' (a new network; not recommended) or a model file")
    pt.add_argument("--steps", type=int, help="steps (default 300, or unlimited with --minutes)")
    pt.add_argument("--minutes", type=float, help="stop after this many minutes")
    pt.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _add_common(pt)

    pr = sub.add_parser("predict", help="segment images into instance label TIFFs")
    pr.add_argument("--model", required=True, help="model file from `napari-spoco train`")
    pr.add_argument("--images", required=True, help="folder (or file) of TIFF/PNG images")
    pr.add_argument("--out", required=True, help="folder for the label TIFFs (one per image, same stem)")
    pr.add_argument("--method", default="meanshift", choices=["meanshift", "hdbscan", "consistency"], help="consistency = mean-shift that drops clusters the EMA teacher disagrees on (same result as meanshift on our benchmarks, ~2x slower)")
    pr.add_argument("--bandwidth", type=float, default=0.5, help="mean-shift bandwidth (δ_v)")
    pr.add_argument("--min-size", type=int, help="drop objects smaller than this (pixels/voxels)")
    pr.add_argument("--foreground-threshold", type=float, default=0.5)
    pr.add_argument("--expand", type=int, default=0, help="grow objects by this many pixels")
    pr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    pr.add_argument("--overwrite", action="store_true", help="replace existing label files")
    _add_common(pr)

    ex = sub.add_parser("export", help="write a model as a bioimage.io package (.zip) for other tools")
    ex.add_argument("--model", required=True, help="model file, or 'default' for the shipped 2D model")
    ex.add_argument("--out", required=True, help="package to write (.zip)")
    ex.add_argument("--name", default="napari-spoco embedding model")
    ex.add_argument("--author", action="append", help="author name (repeat for several)")
    ex.add_argument("--license", default="CC-BY-4.0", help="SPDX licence of the weights (default CC-BY-4.0)")
    ex.add_argument("--test-image", help="image to store as the package's test input (default: a sample crop)")
    ex.add_argument("--no-validate", action="store_true", help="skip bioimage.io's own test of the package")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _add_common(ex)

    ev = sub.add_parser("evaluate", help="score predicted labels against dense ground truth")
    ev.add_argument("--pred", required=True, help="folder (or file) of predicted label images")
    ev.add_argument("--gt", required=True, help="folder (or file) of ground-truth label images, same stems")
    ev.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    _add_common(ev)

    d = sub.add_parser("demo", help="train, predict and evaluate on the shipped sample image")
    d.add_argument("--out", default="spoco-demo", help="folder for the model, TIFFs and PNG overlays")
    d.add_argument("--steps", type=int, help="training steps (default: train for --minutes)")
    d.add_argument("--minutes", type=float, default=1.0, help="training time budget (default 1)")
    d.add_argument("--init", default="default",
                   help="'default' (fine-tune the shipped starting model), 'none' (from scratch) or a model file")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    _add_common(d)
    return parser


def _new_output(path: str, overwrite: bool) -> Path:
    """The --out file, refused if it exists and --overwrite was not given (a model or package
    the user already has is never replaced silently)."""
    out = Path(path)
    if out.exists() and not overwrite:
        raise SpocoError(f"{out} exists; pass --overwrite to replace it or choose another --out.")
    return out


def _files(path: str) -> dict[str, Path]:
    from .io import IMAGE_SUFFIXES, list_images

    p = Path(path)
    if p.is_file():
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise SpocoError(f"{p} is not a .tif/.tiff/.png file.")
        return {p.stem: p}
    if not p.exists():
        raise SpocoError(f"{p} does not exist.")
    return list_images(p)


class _Bar:
    """A tqdm bar on stderr fed by training callbacks."""

    def __init__(self, total: float, unit: str, desc: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=True)
        self.last = 0.0

    def to(self, value: float, **postfix) -> None:
        self.bar.update(value - self.last)
        self.last = value
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()


def _train_with_progress(images, labels, config, model=None, names=None, self_supervised=False):
    from .training import pretrain, train

    stop = threading.Event()
    by_time = not config.steps
    total = config.minutes * 60 if by_time else config.steps
    bar = _Bar(round(total), "s" if by_time else "step", "train")

    def on_progress(p):
        bar.to(round(p.elapsed) if by_time else p.step, loss=f"{p.losses['total']:.3f}", it_s=f"{p.steps_per_second:.1f}")

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nStopping after this step; the model so far will be saved (Ctrl-C again to abort).", file=sys.stderr)

    old = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        if self_supervised:
            return pretrain(images, config, model=model, callback=on_progress, stop=stop, names=names)
        return train(images, labels, config, model=model, callback=on_progress, stop=stop, names=names)
    finally:
        bar.close()
        if old is not None:
            signal.signal(signal.SIGINT, old)


def _initial_model(init: str | None, images):
    """``--init``: 'default' → the shipped model for 2D images (3D: none shipped, start new),
    'none' → a new network, anything else → a model file."""
    from .data import is_rgb
    from .io import load_model
    from .pretrained import has_default_model, load_default_model

    if init in (None, "", "none"):
        return None
    if init == "default":
        ndim = (2 if is_rgb(images[0]) else images[0].ndim) if images else 2
        if has_default_model(ndim):
            print(f"Starting from the shipped {ndim}D model (--init none to start from scratch).", file=sys.stderr)
            return load_default_model(ndim)
        print(f"No shipped {ndim}D starting model: training a new network.", file=sys.stderr)
        return None
    return load_model(init)


def _scale(arg: str, labels, background_label, init=None) -> float:
    """``--scale``: 'auto' (the starting model's scale, or from the painted objects; said aloud
    when it is not 1) or a number."""
    from .scaling import check_scale, scale_note, training_scale

    if str(arg).lower() != "auto":
        return check_scale(arg)
    model_scale = init.pixel_scale if init is not None else 1.0
    scale = training_scale(labels, background_label, model_scale)
    note = scale_note(scale, labels, background_label, model_scale)
    if note:
        print(f"{note[:-1]}; --scale changes it.", file=sys.stderr)
    return scale


def cmd_train(args) -> int:
    from .io import match_pairs, read_image, save_model
    from .training import TrainConfig

    out = _new_output(args.out, args.overwrite)
    if args.steps is not None and args.steps <= 0:
        raise SpocoError("--steps must be positive.")
    if args.minutes is not None and args.minutes <= 0:
        raise SpocoError("--minutes must be positive.")
    image_files = _files(args.images)
    pairs = match_pairs(image_files, _files(args.labels))
    unmatched = sorted(set(image_files) - {s for s, _, _ in pairs})
    if unmatched:
        print(f"Note: {len(unmatched)} image(s) have no label file of the same name and are not used: "
              f"{', '.join(unmatched[:5])}{'…' if len(unmatched) > 5 else ''}", file=sys.stderr)
    images = [read_image(i) for _, i, _ in pairs]
    labels = [read_image(l) for _, _, l in pairs]
    init = _initial_model(args.init, images)
    steps = args.steps if args.steps is not None else (0 if args.minutes else 1000)
    scale = _scale(args.scale, labels, args.background_label, init)
    config = TrainConfig(
        scale=scale,
        steps=steps,
        minutes=args.minutes,
        device=args.device,
        seed=args.seed,
        background_label=args.background_label,
        batch_size=args.batch_size,
        patch_shape=tuple(args.patch_size) if args.patch_size else None,
    )
    print(f"Training on {len(pairs)} image(s): {', '.join(s for s, _, _ in pairs[:5])}{'…' if len(pairs) > 5 else ''}", file=sys.stderr)
    model = _train_with_progress(images, labels, config, model=init, names=[s for s, _, _ in pairs])
    save_model(model, out)
    print(f"Saved {out} ({model.history.get('steps', 0)} steps in total).")
    return 0


def cmd_pretrain(args) -> int:
    from .io import read_image, save_model
    from .training import pretrain_config

    out = _new_output(args.out, args.overwrite)
    for flag, value in (("--steps", args.steps), ("--minutes", args.minutes)):
        if value is not None and value <= 0:
            raise SpocoError(f"{flag} must be positive.")
    files = _files(args.images)
    if not files:
        raise SpocoError(f"No TIFF/PNG images found in {args.images}.")
    names = sorted(files)
    images = [read_image(files[n]) for n in names]
    init = _initial_model(args.init, images)
    if init is None:
        print("Note: pretraining a new network with the consistency term alone learns little; "
              "start from a trained model (--init default or a model file) where you can.", file=sys.stderr)
    steps = args.steps if args.steps is not None else (0 if args.minutes else 300)
    config = pretrain_config(steps=steps, minutes=args.minutes, device=args.device, seed=args.seed)
    print(f"Self-supervised pretraining on {len(images)} unlabelled image(s).", file=sys.stderr)
    model = _train_with_progress(images, None, config, model=init, names=names, self_supervised=True)
    save_model(model, out)
    print(f"Saved {out}; fine-tune it with `napari-spoco train --init {out} ...`.")
    return 0


def cmd_predict(args) -> int:
    from .clustering import ClusterConfig
    from .io import load_model, read_image, write_labels
    from .segmentation import segment

    model = load_model(args.model)
    files = _files(args.images)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SpocoError(f"--out {out} is a file; give a folder.")
    targets = {stem: out / f"{stem}.tif" for stem in files}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not args.overwrite:
        raise SpocoError(f"{len(existing)} output file(s) exist already (e.g. {existing[0]}); pass --overwrite to replace them.")
    config = ClusterConfig(
        bandwidth=args.bandwidth, min_size=args.min_size,
        foreground_threshold=args.foreground_threshold, expand=args.expand,
    )
    from tqdm import tqdm

    for stem, path in tqdm(files.items(), desc="predict", unit="image", file=sys.stderr):
        image = read_image(path)
        try:
            labels = segment(model, image, method=args.method, config=config, device=args.device)
        except SpocoError as exc:
            raise SpocoError(f"{path.name}: {exc}") from exc
        write_labels(targets[stem], labels)
        tqdm.write(f"{stem}: {int(labels.max())} objects -> {targets[stem]}", file=sys.stderr)
    return 0


METRIC_KEYS = ("AP50", "AP75", "mAP", "SBD", "DiC")


def evaluate_folders(pred: str, gt: str) -> dict:
    from .io import match_pairs, read_image
    from .metrics import evaluate

    pairs = match_pairs(_files(pred), _files(gt), what="ground truth")
    per_image = {}
    for stem, p, g in pairs:
        pl, gl = read_image(p), read_image(g)
        if pl.shape != gl.shape:
            raise SpocoError(f"{stem}: prediction shape {pl.shape} differs from ground truth {gl.shape}.")
        per_image[stem] = evaluate(gl, pl)
    mean = {k: float(np.mean([m[k] for m in per_image.values()])) for k in METRIC_KEYS}
    return {"images": per_image, "mean": mean}


def format_table(result: dict) -> str:
    rows = [("image",) + METRIC_KEYS]
    for stem, m in result["images"].items():
        rows.append((stem[:40],) + tuple(f"{m[k]:.3f}" if k != "DiC" else f"{m[k]:.0f}" for k in METRIC_KEYS))
    rows.append(("mean",) + tuple(f"{result['mean'][k]:.3f}" if k != "DiC" else f"{result['mean'][k]:.1f}" for k in METRIC_KEYS))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(-1, "-" * len(lines[0]))
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    result = evaluate_folders(args.pred, args.gt)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0


def cmd_demo(args) -> int:
    from . import sample
    from .io import save_model, write_labels
    from .metrics import evaluate
    from .overlay import save_overlay
    from .segmentation import segment
    from .training import TrainConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = sample.load_sample()
    print("napari-spoco demo: U2OS nuclei (BBBC039, CC0), 256x256 crops; "
          f"{data.n_painted} of {data.n_train_objects} nuclei painted in the training crop.", file=sys.stderr)
    steps = args.steps or 0
    config = TrainConfig(steps=steps, minutes=None if steps else args.minutes, device=args.device)
    init = _initial_model(args.init, [data.train_image])
    steps_before = init.history.get("steps", 0) if init is not None else 0
    t0 = time.perf_counter()
    model = _train_with_progress([data.train_image], [data.train_sparse], config, model=init)
    train_s = time.perf_counter() - t0
    save_model(model, out / "model.spoco.pt")
    results = {}
    for name, image, truth in (("train", data.train_image, data.train_truth), ("heldout", data.test_image, data.test_truth)):
        labels = segment(model, image, device=args.device)
        write_labels(out / f"nuclei_{name}_pred.tif", labels)
        save_overlay(out / f"nuclei_{name}_overlay.png", image, labels)
        results[f"nuclei_{name}"] = evaluate(truth, labels)
    mean = {k: float(np.mean([m[k] for m in results.values()])) for k in METRIC_KEYS}
    print(format_table({"images": results, "mean": mean}))
    print(f"\nTrained {model.history['steps'] - steps_before} steps in {train_s:.0f} s. Wrote model, label TIFFs and PNG overlays to {out}/")
    return 0


def cmd_export(args) -> int:
    from .bioimageio_export import export_bioimageio, validate_bioimageio
    from .io import load_model, read_image
    from .pretrained import load_default_model

    out = _new_output(args.out, args.overwrite)
    model = load_default_model(2) if args.model == "default" else load_model(args.model)
    test_image = read_image(args.test_image) if args.test_image else None
    path = export_bioimageio(model, out, name=args.name, authors=args.author or ["napari-spoco user"],
                             license=args.license, test_image=test_image)
    print(f"Wrote {path} ({path.stat().st_size / 1e6:.1f} MB).", file=sys.stderr)
    if args.no_validate:
        return 0
    passed, summary = validate_bioimageio(path)
    if not passed:
        print(summary, file=sys.stderr)
        raise SpocoError(f"bioimage.io's test of {path} failed (details above); please report this.")
    print(f"{path}: bioimage.io validation passed (format, and the weights reproduce the test output).")
    return 0


COMMANDS = {"train": cmd_train, "pretrain": cmd_pretrain, "predict": cmd_predict, "evaluate": cmd_evaluate,
            "export": cmd_export, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except SpocoError as exc:
        if args.debug:
            raise
        print(f"napari-spoco {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-spoco: interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line, and how to get the traceback
        if args.debug:
            raise
        print(f"napari-spoco {args.command}: unexpected error: {type(exc).__name__}: {exc} "
              "(rerun with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
