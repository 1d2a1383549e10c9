"""``napari-spoco train | pretrain | predict | evaluate | export | demo``: argument parsing,
output checks and messages; the work is done by the library.

Guarantees (README, "What napari-spoco never does"): bad input ends in one line on stderr
(exit 2) unless ``--debug`` asks for the traceback; every output location is checked before
work starts; an output never replaces an input, nor an existing file without ``--overwrite``;
a model file is written atomically and only by a model that trained at least one step; batch
commands skip files they cannot read, go on, list them at the end and exit 1; Ctrl-C and
SIGTERM stop training after the current step and save the model (exit 130 / 143).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .checks import SEED_MAX
from .clustering import LAYOUTS, METHODS, ClusterConfig
from .errors import SpocoError, is_out_of_memory
from .model import DEVICES, NETWORK_CHOICES, SpocoModel
from .precision import INFERENCE_PRECISION, PRECISIONS
from .training import FEW_PAINTED, TrainConfig, scale_jitter_note

#: Exit codes: 0 done, 1 a bug or files that failed in a batch, 2 bad input, 130 Ctrl-C, 141 stdout
#: closed by its reader, 143 SIGTERM.
EXIT_FAILED, EXIT_USAGE, EXIT_SIGINT, EXIT_SIGTERM = 1, 2, 130, 143
#: stdout closed by its reader (``| head``): 128 + SIGPIPE, what shell tools exit with.
EXIT_SIGPIPE = 141


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster job's time limit, ``kill``): handled like Ctrl-C, so that clean-up runs."""


def _add_common(p: argparse.ArgumentParser, top: bool = False) -> None:
    # Given before or after the command: the subcommand's flag must not reset the top one.
    p.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                   help="show full tracebacks on errors")


def _number(kind, low=None, low_open=False, high=None, high_open=False, what="a number"):
    """An argparse type: a finite int/float within bounds, with a message saying what is expected."""
    def parse(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        if high is not None and (value > high or (high_open and value == high)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    parse.__name__ = what
    return parse


POSITIVE_INT = _number(int, 1, what="a whole number >= 1")
NONNEG_INT = _number(int, 0, what="a whole number >= 0")
MINUTES = _number(float, 0, low_open=True, what="a positive, finite number of minutes")
POSITIVE_FLOAT = _number(float, 0, low_open=True, what="a positive, finite number")
PROBABILITY = _number(float, 0, True, 1, True, what="a number between 0 and 1 (exclusive)")
SEED = _number(int, 0, high=SEED_MAX, what="a whole number from 0 to 2**62")
_ZOOM = _number(float, 1, high=4, what="'auto' or a number from 1 (off) to 4")


def ZOOM(text: str) -> float | None:
    """``--scale-jitter``: 'auto' (None: the library decides from the painted objects) or a number."""
    return None if text.strip().lower() == "auto" else _ZOOM(text)


ZOOM.__name__ = "'auto' or a number from 1 (off) to 4"
#: The CLI's clustering defaults are the library's (one source of truth).
CLUSTER = ClusterConfig()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-spoco",
        description="Sparse instance segmentation with pixel embeddings (SPOCO): label a few "
        "objects, segment all of them.",
    )
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="{train,pretrain,predict,evaluate,export,demo}")

    t = sub.add_parser("train", help="train a model on images with sparse labels")
    t.add_argument("--images", required=True, help="folder (or file) of TIFF/PNG images")
    t.add_argument("--labels", required=True, help="folder (or file) of label images, same file name stems; 0 = unlabelled")
    t.add_argument("--out", required=True, help="model file to write")
    t.add_argument("--init", default="default",
                   help="start from: 'default' (the shipped 2D or 3D starting model), "
                   "'none' (a new network), or a model file (fine-tuning). Default: default")
    _add_network(t)
    t.add_argument("--steps", type=POSITIVE_INT, help="training steps (default 1000, or unlimited with --minutes)")
    t.add_argument("--minutes", type=MINUTES, help="stop after this many minutes")
    t.add_argument("--device", default="auto", choices=DEVICES)
    _add_precision(t)
    t.add_argument("--seed", type=SEED, default=0, help="random seed of a new network's first weights, the patches and the augmentations (default 0)")
    t.add_argument("--background-label", type=POSITIVE_INT,
                   help="label value that marks painted background (not 0: 0 means unlabelled)")
    t.add_argument("--batch-size", type=POSITIVE_INT, help="patches per step (default 8 in 2D, 2 in 3D)")
    t.add_argument("--patch-size", type=POSITIVE_INT, nargs="+",
                   help="patch shape, one value per image axis (default 96 96 in 2D, 32 64 64 in 3D)")
    t.add_argument("--scale", default="auto",
                   help="resize images by this factor before the network, e.g. 0.5 for objects ~60 px across; "
                   "'auto' (default) brings 2D objects wider than 45 px to ~30 px and doubles those narrower than 20 px. "
                   "The model file keeps it; training a model you trained before (--init FILE) keeps its factor "
                   "with 'auto' (give a number to change it).")
    t.add_argument("--voxel-size", type=POSITIVE_FLOAT, nargs="+", metavar="SIZE",
                   help="pixel spacing per spatial axis, Z Y X (or Y X), any unit, e.g. 2 0.5 0.5; coarse axes "
                   "are interpolated to cubic voxels. Default: the TIFF's ImageJ/OME metadata, else cubic")
    t.add_argument("--channel-axis", type=int, metavar="AXIS",
                   help="axis of the image files that holds channels (e.g. 0 for (C, Y, X) stacks); colour "
                   "(Y, X, 3) needs none. The model reads every channel (docs/method.md, Colour and channels)")
    t.add_argument("--scale-jitter", type=ZOOM, default=None, metavar="auto|F",
                   help="train on patches zoomed in Y and X by up to F times either way, so that the model also "
                   "meets objects of sizes you did not paint; 1 turns it off. Default auto: 1.5 when fewer than "
                   f"{FEW_PAINTED} objects are painted in all (+0.07 AP50 on single EM images over three seeds, 0.005 lower "
                   "on single nuclei fields, level on single phase-contrast images), off otherwise (with many "
                   "painted objects it cost up to 0.06 AP50 on phase-contrast cells; docs/benchmarks.md)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _add_common(t)

    pt = sub.add_parser("pretrain", help="adapt a model to unlabelled images (self-supervised consistency)")
    pt.add_argument("--images", required=True, help="folder (or file) of TIFF/PNG images; no labels needed")
    pt.add_argument("--out", required=True, help="model file to write")
    pt.add_argument("--init", default="default",
                    help="'default' (the shipped 2D or 3D model), 'none' (a new network; not recommended) or a model file")
    _add_network(pt)
    pt.add_argument("--steps", type=POSITIVE_INT, help="steps (default 300, or unlimited with --minutes)")
    pt.add_argument("--minutes", type=MINUTES, help="stop after this many minutes")
    pt.add_argument("--device", default="auto", choices=DEVICES)
    _add_precision(pt)
    pt.add_argument("--seed", type=SEED, default=0, help="random seed of a new network's first weights, the patches and the augmentations (default 0)")
    pt.add_argument("--channel-axis", type=int, metavar="AXIS",
                    help="axis of the image files that holds channels (e.g. 0 for (C, Y, X) stacks); colour "
                    "(Y, X, 3) needs none. The model reads every channel (docs/method.md, Colour and channels)")
    pt.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _add_common(pt)

    pr = sub.add_parser("predict", help="segment images into instance label TIFFs")
    pr.add_argument("--model", required=True, help="model file from `napari-spoco train`")
    pr.add_argument("--images", required=True,
                    help="folder (or file) of TIFF/PNG images and .zarr stores (OME-Zarr or zarr arrays)")
    pr.add_argument("--out", required=True, help="folder for the label files (one per image, same stem)")
    pr.add_argument("--method", default=CLUSTER.method, choices=METHODS, help="consistency = mean-shift that drops clusters the EMA teacher disagrees on (same result as meanshift on our benchmarks, ~2x slower)")
    pr.add_argument("--bandwidth", type=POSITIVE_FLOAT, default=CLUSTER.bandwidth,
                    help=f"mean-shift bandwidth (δ_v, default {CLUSTER.bandwidth})")
    pr.add_argument("--min-size", type=NONNEG_INT, help="drop objects smaller than this (pixels/voxels)")
    pr.add_argument("--foreground-threshold", type=PROBABILITY, default=CLUSTER.foreground_threshold,
                    help="foreground probability above which a pixel can belong to an object "
                    f"(default {CLUSTER.foreground_threshold})")
    pr.add_argument("--expand", type=NONNEG_INT, default=CLUSTER.expand, help="grow objects by this many pixels, on top of the growth the model fitted on its painted "
                    "objects (see --no-calibrated-edge)")
    pr.add_argument("--no-shape-split", dest="shape_split", action="store_false",
                    help="keep pieces whole that are far less convex than the painted objects (by default they are "
                    "split at their necks, or between two notches for convex objects, where objects stand on "
                    "background; docs/method.md)")
    pr.add_argument("--no-boundary-merge", dest="boundary_merge", action="store_false",
                    help="keep touching pieces apart even where the foreground head sees no boundary between them "
                    "(by default they are one object where objects fill the image, and where they stand on "
                    "background when their union is as convex as the median painted object; docs/method.md)")
    pr.add_argument("--layout", default=CLUSTER.layout, choices=LAYOUTS,
                    help="how the objects lie: 'separate' (on background: merged pieces are split at their necks), "
                    "'tiled' (filling the image: pieces with no boundary between them are joined), or 'auto' "
                    "(default): what training measured on the painted objects, else by how much of the image is "
                    "foreground (docs/method.md)")
    pr.add_argument("--no-calibrated-edge", dest="calibrated_edge", action="store_false",
                    help="do not grow objects by the edge growth fitted on the painted objects at the end of "
                    "training (model history edge_expand; docs/method.md)")
    pr.add_argument("--no-fill-holes", dest="fill_holes", action="store_false",
                    help="leave background enclosed by one object (a nucleolus, a dark organelle) as background "
                    "(by default it is part of the object; docs/method.md)")
    pr.add_argument("--no-edge-growth", dest="edge_growth", action="store_false",
                    help="do not grow objects into the background next to them that the foreground map still "
                    "gives 0.2 or more, up to a tenth of the painted objects' radius (a model applies it only if its "
                    "painted objects fit clearly better grown at the end of training; docs/method.md)")
    pr.add_argument("--device", default="auto", choices=DEVICES)
    pr.add_argument("--precision", default=INFERENCE_PRECISION, choices=PRECISIONS,
                    help="number format of the network: 'auto' runs its convolutions in bfloat16 where "
                    "the CPU or GPU has them natively (about half the time, the same objects, larger tiles at "
                    "less memory) and in float32 elsewhere; 'bfloat16' and 'float32' always (docs/method.md, "
                    "Number format). Default: auto")
    pr.add_argument("--no-tta", dest="tta", action="store_false",
                    help="run the network once per tile instead of averaging its output over the tile and its "
                    "mirror images (test-time augmentation: in 2D four forward passes, about 2x the time; in 3D "
                    "two, mirrored in Y and X together, about 1.5x; more objects right on most data sets we "
                    "measured; docs/method.md)")
    pr.add_argument("--channel-axis", type=int, metavar="AXIS",
                    help="axis of the image files that holds channels (e.g. 0 for (C, Y, X) stacks); colour "
                    "(Y, X, 3) needs none. The model reads every channel (docs/method.md, Colour and channels)")
    pr.add_argument("--voxel-size", type=POSITIVE_FLOAT, nargs="+", metavar="SIZE",
                   help="pixel spacing per spatial axis, Z Y X (or Y X), any unit, e.g. 2 0.5 0.5; coarse axes "
                   "are interpolated to cubic voxels. Default: the TIFF's ImageJ/OME metadata, else the model's training voxel size")
    pr.add_argument("--suggest", type=POSITIVE_INT, default=0, metavar="K",
                    help="also write suggestions.csv in --out: per image the K predicted objects the model is "
                    "least sure of, the most doubtful of each of K size classes (image, rank, id, centroid, score, the "
                    "signals behind it, size in pixels), the ones worth checking and painting next. Leave out for none")
    pr.add_argument("--workers", type=POSITIVE_INT, default=1,
                    help="processes to segment with: files of a batch, or blocks of a large image, in parallel "
                    "(torch threads are shared out among them). Default 1")
    pr.add_argument("--scheduler", metavar="ADDRESS",
                    help="run on a dask.distributed cluster at this address (e.g. tcp://10.0.0.5:8786) instead of "
                    "local processes; --out (and the model file) must be on storage every worker can reach")
    pr.add_argument("--block-shape", type=POSITIVE_INT, nargs="+", metavar="SIZE",
                    help="segment TIFFs block by block, each block writing at most this many pixels per axis "
                    "(Z Y X or Y X; also the zarr chunk shape). Zarr stores and TIFFs over 256 MB always go block "
                    "by block; default: blocks planned for the least work within about 2 GB of memory each")
    pr.add_argument("--out-format", choices=("auto", "tif", "zarr"), default="auto",
                    help="label files as TIFF or zarr; auto (default): zarr for zarr inputs and for block-wise "
                    "results over 2^27 pixels, TIFF otherwise (OME-Zarr inputs give OME-Zarr label images)")
    existing = pr.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace existing label files")
    existing.add_argument("--skip-existing", action="store_true",
                          help="segment only the images that have no label file in --out yet (resume a batch)")
    _add_common(pr)

    ex = sub.add_parser("export", help="write a model as a bioimage.io package (.zip) for other tools")
    ex.add_argument("--model", required=True, help="model file, or 'default' for the shipped 2D model")
    ex.add_argument("--out", required=True, help="package to write (.zip)")
    ex.add_argument("--name", default="napari-spoco embedding model")
    ex.add_argument("--author", action="append", help="author name (repeat for several)")
    ex.add_argument("--license", default="CC-BY-4.0", help="SPDX licence of the weights (default CC-BY-4.0)")
    ex.add_argument("--test-image", help="image to store as the package's test input (default: a sample crop)")
    ex.add_argument("--channel-axis", type=int, metavar="AXIS",
                    help="axis of --test-image that holds channels (e.g. 0 for (C, Y, X) stacks), for a model "
                    "trained on channels; colour (Y, X, 3) needs none")
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
    d.add_argument("--steps", type=POSITIVE_INT, help="training steps (default: train for --minutes)")
    d.add_argument("--minutes", type=MINUTES, default=1.0, help="training time budget (default 1)")
    d.add_argument("--init", default="default",
                   help="'default' (fine-tune the shipped starting model), 'none' (from scratch) or a model file")
    d.add_argument("--device", default="auto", choices=DEVICES)
    _add_precision(d)
    d.add_argument("--overwrite", action="store_true", help="write into --out even if it holds files already")
    _add_common(d)
    return parser


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="number format of the network while training: 'bfloat16' convolutions are faster where "
                   "the CPU or GPU has them natively (weights stay float32); 'auto' (the default) uses them "
                   "there and float32 elsewhere (docs/method.md, Number format)")


def _say_precision(precision: str, device: str, ndim: int) -> None:
    """Name the number format when training will not run in float32 (``auto`` picks bfloat16
    where the hardware has it natively; docs/method.md, "Number format")."""
    from .model import select_device
    from .precision import resolve_precision

    try:
        used = resolve_precision(precision, select_device(device), ndim, training=True)
    except SpocoError:
        return  # the device itself is refused later, with its own message
    if used == "bfloat16":
        how = "the hardware has it natively" if precision == "auto" else "as asked"
        print(f"The network trains in bfloat16 ({how}; weights stay float32); --precision float32 "
              "trains in float32.", file=sys.stderr)


def _add_network(p: argparse.ArgumentParser) -> None:
    p.add_argument("--network", default="auto", choices=NETWORK_CHOICES,
                   help="network of a new model: 'small' (3 levels, the CPU default), 'medium' (4 levels), 'large' "
                   "(the paper's six levels, for a GPU) or 'auto' (large on a GPU, small on a CPU). A starting model "
                   "keeps its own network; the shipped 2D model is medium and the 3D one small, so another preset "
                   "with --init default starts a new network. Default: auto")


def _out_file(path: str, overwrite: bool, inputs=()) -> Path:
    """The --out file, checked before any work: never an input, never an existing file
    without --overwrite, never a folder, and in a folder that can be written."""
    from .io import check_output_file

    return check_output_file(path, overwrite, tuple(inputs))


def _files(path: str, zarr: bool = False) -> dict[str, Path]:
    from .io import IMAGE_SUFFIXES, list_images
    from .lazy_io import is_zarr

    p = Path(path)
    if zarr and is_zarr(p):  # a .zarr folder, or an array inside a zarr group (store.zarr/raw)
        return {p.stem: p}
    if p.is_file():
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise SpocoError(f"{p} is not a .tif/.tiff/.png file.")
        return {p.stem: p}
    if not p.exists():
        raise SpocoError(f"{p} does not exist.")
    if p.is_dir():  # a link to a moved file, or to a disk not mounted: said, not skipped silently
        broken = sorted(q.name for q in p.iterdir() if q.is_symlink() and not q.exists()
                        and q.suffix.lower() in IMAGE_SUFFIXES + (".zarr",))
        if broken:
            _warn(f"{len(broken)} link(s) in {p} point to nothing (moved, or on a disk not mounted) and are "
                  f"skipped: {_names(broken)}")
    return list_images(p, zarr=zarr)


def _names(stems, limit: int = 5) -> str:
    stems = list(stems)
    return ", ".join(stems[:limit]) + ("…" if len(stems) > limit else "")


def _warn(message: str) -> None:
    print(f"napari-spoco: warning: {message}", file=sys.stderr)


class _Progress:
    """Training progress on stderr, counted in steps. On a terminal, a tqdm bar (of the planned
    steps, or open-ended with the time limit shown when only ``--minutes`` is given); in a log
    file, one plain line every ``every`` seconds and one at the end, instead of a carriage
    return per update."""

    def __init__(self, steps: int, minutes: float | None, desc: str, every: float = 10.0, stream=None):
        self.stream = stream or sys.stderr
        self.steps, self.minutes, self.desc, self.every = steps, minutes, desc, every
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=steps or None, unit="step", desc=desc, file=self.stream, dynamic_ncols=True,
                            leave=True)
        self.step, self.last_line, self.text, self.printed = 0, None, "", ""

    def update(self, step: int, elapsed: float, loss: float, rate: float) -> None:
        limit = f" of {self.minutes:g} min" if self.minutes else ""
        if self.bar is not None:
            self.bar.update(step - self.step)
            self.bar.set_postfix({"loss": f"{loss:.3f}", "time": f"{elapsed / 60:.1f}{limit}"}, refresh=False)
        self.step = step
        of = f"/{self.steps}" if self.steps else ""
        self.text = (f"{self.desc}: step {step}{of}, {rate:.1f} steps/s, loss {loss:.3f}, "
                     f"{elapsed / 60:.1f} min{limit}")
        if self.bar is None and (self.last_line is None or elapsed - self.last_line >= self.every):
            self.last_line = elapsed
            self._print()

    def _print(self) -> None:
        print(self.text, file=self.stream, flush=True)
        self.printed = self.text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.text != self.printed:  # the last step, if its line was not printed yet
            self._print()


class _Interrupts:
    """Ctrl-C and SIGTERM during training: the first one stops after the current step (the
    model so far is kept), a second one aborts. ``received`` names the first signal."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.received: int | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame):
        if self.stop.is_set():
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        self.received = signum
        self.stop.set()
        what = "Terminated" if signum == signal.SIGTERM else "Interrupted"
        print(f"\n{what}: stopping after this step; the model so far will be saved "
              "(Ctrl-C again to abort without saving).", file=sys.stderr)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False

    @property
    def exit_code(self) -> int:
        if self.received is None:
            return 0
        return EXIT_SIGTERM if self.received == signal.SIGTERM else EXIT_SIGINT


def _spacing(v) -> str:
    return " x ".join(f"{x:g}" for x in v)


def _say_capped(voxel_size):
    """A voxel size whose axes differ more than scaling.MAX_ANISOTROPY: say that the coarse axes
    are interpolated only that far (it was applied quietly)."""
    from .scaling import MAX_ANISOTROPY

    ratio = max(voxel_size) / min(voxel_size)
    if ratio > MAX_ANISOTROPY:
        _warn(f"the voxel size {_spacing(voxel_size)} has axes {ratio:g}x apart; coarse axes are interpolated "
              f"at most {MAX_ANISOTROPY:g}x (objects stay flatter than they are along them). Check the value if "
              "that ratio is not what the microscope recorded.")
    return voxel_size


def _training_voxel_size(given, paths, ndim: int, labels=None, background_label=None, init=None):
    """``--voxel-size``, else the one spacing the image files record; else None, and the library
    takes the starting model's, else estimates one from the painted objects' shape (3D), else
    cubic voxels: each said aloud. Files that record different spacings are refused: one model
    learns one grid."""
    from .io import read_voxel_size
    from .scaling import anisotropy, check_voxel_size, explain_voxel_estimate

    if given:
        return _say_capped(check_voxel_size(given, ndim))
    found = {p.name: read_voxel_size(p, ndim) for p in paths}
    known = {v for v in found.values() if v is not None}
    if len(known) > 1:
        listing = "; ".join(f"{n}: {_spacing(v)}" for n, v in found.items() if v is not None)
        raise SpocoError(f"The images record different voxel sizes ({listing}); give one with --voxel-size Z Y X, "
                         "or train on images of one spacing.")
    if not known:
        if init is not None and init.voxel_size is not None:
            print(f"Voxel size {_spacing(init.voxel_size)} (the starting model's; the files record none).",
                  file=sys.stderr)
            return None  # the library takes the starting model's
        if ndim != 3:
            return None
        estimate, note = explain_voxel_estimate(labels or [], background_label)
        if estimate is not None:
            # training makes the same estimate and records it as estimated in the model
            print(f"The files record no voxel size; {note}. Pass --voxel-size Z Y X if that is wrong "
                  "(--voxel-size 1 1 1 for cubic).", file=sys.stderr)
            return None
        print(f"Voxels are taken as cubic: the files record no spacing{f' ({note})' if note else ''}; pass "
              "--voxel-size Z Y X if they are not.", file=sys.stderr)
        return None
    v = known.pop()
    factors = anisotropy(v, ndim)
    note = ("" if all(f == 1 for f in factors)
            else f"; axes interpolated by {_spacing(factors)} to cubic voxels")
    print(f"Voxel size {_spacing(v)} (from the TIFF metadata){note}.", file=sys.stderr)
    return v


def _say_network(init, network: str, device: str):
    """The configuration of a new network (``--network``), said aloud; None when fine-tuning."""
    from .model import network_config, network_name

    if init is not None:
        return None
    config = network_config(network, device)
    print(f"New {network_name(config)} network ({config.depth} levels, {config.base_features} base features"
          + (", chosen for this device" if network == "auto" else "") + ").", file=sys.stderr)
    return config


def _train_with_progress(images, labels, config, model=None, names=None, self_supervised=False, channel_axis=None,
                         model_config=None):
    """Train with a progress bar; returns ``(model, steps trained in this run, exit code)``,
    the exit code saying whether a signal stopped it early."""
    from .training import pretrain, train

    stop = threading.Event()
    bar = _Progress(config.steps, config.minutes, "pretrain" if self_supervised else "train")
    done = {"steps": 0}

    def on_progress(p):
        done["steps"] = p.step
        bar.update(p.step, p.elapsed, p.losses["total"], p.steps_per_second)

    with _Interrupts(stop) as interrupts:
        try:
            if self_supervised:
                model = pretrain(images, config, model=model, model_config=model_config, callback=on_progress,
                                 stop=stop, names=names, channel_axis=channel_axis)
            else:
                model = train(images, labels, config, model=model, model_config=model_config, callback=on_progress,
                              stop=stop, names=names, channel_axis=channel_axis)
        finally:
            bar.close()
    return model, done["steps"], interrupts.exit_code


def _save_trained(model, out: Path, steps: int, exit_code: int) -> int:
    """Save a model that trained at least one step (atomically); a failure at this point does
    not lose the training: the model goes to a rescue file and the message says where."""
    from .io import rescue_path, save_model

    if steps == 0:
        print(f"Stopped before the first training step finished: nothing was saved"
              f"{f' ({out} is unchanged)' if out.exists() else ''}.", file=sys.stderr)
        return exit_code or EXIT_FAILED
    try:
        save_model(model, out)
    except (OSError, RuntimeError) as exc:
        rescue = rescue_path(out)
        save_model(model, rescue)
        raise SpocoError(
            f"Could not write {out} ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); "
            f"the trained model was saved to {rescue} instead."
        ) from exc
    total = model.history.get("steps", 0)
    from .layout import layout_note

    note = layout_note(model.history)
    if note:
        print(note, file=sys.stderr)
    if exit_code:
        print(f"Stopped early after {steps} step(s); saved {out} ({total} steps in total).")
    else:
        print(f"Saved {out} ({total} steps in total).")
    return exit_code


def _initial_model(init: str | None, images, channel_axis: int | None = None, network: str = "auto"):
    """``--init``: 'default' → the shipped model for the images' dimensionality, 'none' → a new
    network, anything else → a model file. ``--network`` other than 'auto' asks for a preset:
    with 'default' another preset than the shipped model's starts a new network (the shipped
    2D model is medium, the 3D one small), and a model file of another preset is refused."""
    from .data import channel_count
    from .io import load_model
    from .model import network_name
    from .pretrained import DEFAULT_NETWORKS, fine_tunes_default, has_default_model, load_default_model

    if init in (None, "", "none"):
        return None
    if init == "default":
        has_channels = bool(images) and (channel_count(images[0], channel_axis) > 1 or channel_axis is not None)
        ndim = images[0].ndim - int(has_channels) if images else 2
        if not has_default_model(ndim):
            print(f"No shipped {ndim}D starting model: training a new network.", file=sys.stderr)
            return None
        if not fine_tunes_default(ndim, network):
            shipped = DEFAULT_NETWORKS[ndim]
            print(f"The shipped {ndim}D starting model is a {shipped} network: training a new {network} "
                  f"network (--network {shipped} or auto to fine-tune the shipped one).", file=sys.stderr)
            return None
        print(f"Starting from the shipped {ndim}D model (--init none to start from scratch).", file=sys.stderr)
        return load_default_model(ndim)
    model = load_model(init)
    if network != "auto" and network_name(model.config) != network:
        raise SpocoError(f"{init} holds a {network_name(model.config)} network, not a {network} one: leave "
                         "--network out to fine-tune it, or pass --init none to train a new network.")
    return model


def _say_channels(images, channel_axis: int | None, init) -> None:
    """Say how many channels the network will read, and that a grey model is widened to them."""
    from .training import input_channels

    channels = input_channels(images, channel_axis, init) if images else 1
    if channels == 1:
        return
    what = "colour channels" if channel_axis is None else f"channels (axis {channel_axis})"
    widened = init is not None and init.config.in_channels == 1
    print(f"The network reads {channels} {what}" + (" (the one-channel starting model is widened to them)."
                                                    if widened else "."), file=sys.stderr)


def _init_path(init: str | None) -> Path | None:
    return None if init in (None, "", "none", "default") else Path(init)


def _scale(arg: str, labels, background_label, init=None) -> float:
    """``--scale``: 'auto' (the starting model's scale where it keeps one, else from the painted
    objects; said aloud when it is not 1 or when the painted objects alone would ask for
    another) or a number."""
    from .scaling import check_scale, kept_scale_of, scale_note, training_scale

    if str(arg).lower() != "auto":
        return check_scale(arg)
    kept = kept_scale_of(init)
    scale = training_scale(labels, background_label, *kept)
    note = scale_note(scale, labels, background_label, *kept)
    if note:
        # a kept factor stays with --scale auto too: only a number changes it
        how = "--scale with a number changes it" if "keeping it" in note else "--scale changes it"
        print(f"{note[:-1]}; {how}.", file=sys.stderr)
    return scale


def _say_hand_set_zoom(config: TrainConfig) -> None:
    """Before training: a zoom the user set. The automatic one is said after training, from the
    model's record (the library counts the painted objects as it trains on them)."""
    if config.scale_jitter is not None and config.scale_jitter > 1:
        print(f"Patches zoomed by up to {config.scale_jitter:g}x either way in Y and X (--scale-jitter).", file=sys.stderr)


def _say_automatic_zoom(model: SpocoModel | None) -> None:
    """After training: the zoom the automatic choice made, if any (training.scale_jitter_note)."""
    note = scale_jitter_note(model.history) if model is not None else ""
    if note:
        print(f"{note[:-1]} (--scale-jitter 1 turns it off).", file=sys.stderr)


def _say_patch_size(patch: list[int] | None, labels, scale: float, voxel_size) -> None:
    """A --patch-size larger than every image (as resized for training) along an axis is padded:
    it costs time and shows the network nothing more (1000² patches on 256² images took minutes
    per step)."""
    from .scaling import axis_factors

    shapes = [np.shape(lab) for lab in labels]
    if not patch or any(len(s) != len(patch) for s in shapes):
        return  # a wrong count is refused by training, with its own message
    factors = axis_factors(scale, voxel_size, len(patch))
    largest = [round(max(s[a] for s in shapes) * f) for a, f in enumerate(factors)]
    if any(p > n for p, n in zip(patch, largest)):
        print(f"Note: the patch ({_spacing(patch)}) is larger than the largest image ({_spacing(largest)}) along some "
              "axis; training pads it, which costs time and shows the network nothing more. A patch no larger "
              "than the images trains faster.", file=sys.stderr)


def _check_background_label(value: int | None, labels, names) -> None:
    """A --background-label that occurs in no label image is a typo, not a choice."""
    if value is None:
        return
    if not any(np.any(np.asarray(lab) == value) for lab in labels):
        raise SpocoError(
            f"--background-label {value} occurs in none of the label images ({_names(names)}); "
            "check the value your painting program used for background, or leave the flag out."
        )


def _say_tagged(tagged: list[tuple[str, str]], first: str, second: str) -> None:
    """Say which files were paired by their names without a tag (io.pair_by_tags)."""
    if tagged:
        shown = ", ".join(f"{a} with {b}" for a, b in tagged[:3]) + (", …" if len(tagged) > 3 else "")
        print(f"Paired {len(tagged)} {first} with {second} named alike but for a tag such as _rgb, _label or "
              f"_masks: {shown}.", file=sys.stderr)


def cmd_train(args) -> int:
    from .io import match_pairs, pair_by_tags, read_image, split_by_label_tags, without_files_of
    from .training import TrainConfig

    image_files = _files(args.images)
    label_files = _files(args.labels)
    if Path(args.images).is_file() and Path(args.labels).is_file():  # two files named: a pair, whatever the names
        label_files = {next(iter(image_files)): next(iter(label_files.values()))}
    elif Path(args.images).is_dir() and Path(args.images).resolve() == Path(args.labels).resolve():
        image_files, label_files = split_by_label_tags(image_files)  # CVPPP's and Cellpose's one folder
        if not label_files or not image_files:
            raise SpocoError(
                f"--images and --labels are the same folder, and {'no' if not label_files else 'every'} file name "
                "there ends in a label tag (e.g. x_label.png, x_masks.tif, x_gt.tif): put the labels in a folder of "
                "their own, or name each after its image with such a tag."
            )
        print(f"Images and labels in one folder: {len(label_files)} file(s) whose names end in a label tag "
              f"(_label, _masks, …) are the labels, the {len(image_files)} other(s) the images.", file=sys.stderr)
    elif Path(args.images).is_dir() != Path(args.labels).is_dir():  # a folder and one file: not its own partner
        if Path(args.images).is_dir():
            image_files = without_files_of(image_files, label_files)
        else:
            label_files = without_files_of(label_files, image_files)
    label_files, tagged = pair_by_tags(image_files, label_files)
    _say_tagged(tagged, "image(s)", "label files")
    pairs = match_pairs(image_files, label_files)
    same = [s for s, i, l in pairs if i.resolve() == l.resolve()]
    if same:
        raise SpocoError(
            f"--images and --labels point at the same files ({_names(same)}); --labels must be the "
            "painted label images (0 = unlabelled, 1, 2, … = objects)."
        )
    init_path = _init_path(args.init)
    inputs = [p for _, i, l in pairs for p in (i, l)] + ([init_path] if init_path else [])
    out = _out_file(args.out, args.overwrite, inputs)
    used = {s for s, _, _ in pairs}
    for what, stems, other in (("image", set(image_files) - used, "label file"),
                               ("label file", set(label_files) - used, "image")):
        if stems:
            print(f"Note: {len(stems)} {what}(s) have no {other} of the same name and are not used: "
                  f"{_names(sorted(stems))}", file=sys.stderr)
    images = [read_image(i, keep_channels=args.channel_axis is not None, refuse_time=True) for _, i, _ in pairs]
    labels = [read_image(l, refuse_time=True) for _, _, l in pairs]
    names = [s for s, _, _ in pairs]
    from .data import check_labels, check_pair_shapes

    for image, lab, name in zip(images, labels, names):  # before any model is chosen: shapes, swapped folders, bad ids
        check_pair_shapes(np.shape(image), np.shape(lab), name, args.channel_axis)
        check_labels(lab, np.shape(lab), f"{name} labels")
    from .data import is_constant

    constant = [name for image, name in zip(images, names) if is_constant(image, args.channel_axis)]
    if constant and len(constant) < len(images):  # all of them: the library refuses the set
        print(f"Note: {len(constant)} image(s) hold one value in every pixel and teach nothing (an empty "
              f"channel or a failed export?): {_names(constant)}", file=sys.stderr)
    _check_background_label(args.background_label, labels, names)
    init = _initial_model(args.init, images, args.channel_axis, args.network)
    if init is not None and init.config.ndim != labels[0].ndim:  # before its voxel size is read for these images
        raise SpocoError(f"{args.init} is a {init.config.ndim}D model but the images are {labels[0].ndim}D; pass "
                         f"--init default for the shipped {labels[0].ndim}D start, --init none for a new network, "
                         f"or a model trained on {labels[0].ndim}D images.")
    voxel_size = _training_voxel_size(args.voxel_size, [i for _, i, _ in pairs], labels[0].ndim, labels,
                                      args.background_label, init)
    _say_channels(images, args.channel_axis, init)
    model_config = _say_network(init, args.network, args.device)
    steps = args.steps if args.steps is not None else (0 if args.minutes else 1000)
    scale = _scale(args.scale, labels, args.background_label, init)
    if args.patch_size and len(args.patch_size) != labels[0].ndim:  # before TrainConfig names its own field
        raise SpocoError(f"--patch-size {' '.join(map(str, args.patch_size))} has {len(args.patch_size)} "
                         f"value{'s' if len(args.patch_size) != 1 else ''} but "
                         f"the images are {labels[0].ndim}D; give {labels[0].ndim} values, one per axis.")
    _say_patch_size(args.patch_size, labels, scale, voxel_size)
    config = TrainConfig(
        scale=scale,
        steps=steps,
        minutes=args.minutes,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        background_label=args.background_label,
        batch_size=args.batch_size,
        patch_shape=tuple(args.patch_size) if args.patch_size else None,
        voxel_size=voxel_size,
        scale_jitter=args.scale_jitter,
    )
    print(f"Training on {len(pairs)} image(s): {_names(names)}", file=sys.stderr)
    _say_hand_set_zoom(config)
    _say_precision(args.precision, args.device, labels[0].ndim)
    model, trained, code = _train_with_progress(images, labels, config, model=init, names=names,
                                                channel_axis=args.channel_axis, model_config=model_config)
    if trained:
        _say_automatic_zoom(model)
    return _save_trained(model, out, trained, code)


def cmd_pretrain(args) -> int:
    from .io import read_image
    from .training import pretrain_config

    files = _files(args.images)
    init_path = _init_path(args.init)
    out = _out_file(args.out, args.overwrite, list(files.values()) + ([init_path] if init_path else []))
    names = sorted(files)
    images = [read_image(files[n], keep_channels=args.channel_axis is not None, refuse_time=True) for n in names]
    from .data import check_pair_shapes

    for image, name in zip(images, names):  # before any model is chosen
        check_pair_shapes(np.shape(image), None, name, args.channel_axis)
    init = _initial_model(args.init, images, args.channel_axis, args.network)
    _say_channels(images, args.channel_axis, init)
    model_config = _say_network(init, args.network, args.device)
    if init is None:
        print("Note: pretraining a new network with the consistency term alone learns little; "
              "start from a trained model (--init default or a model file) where you can.", file=sys.stderr)
    steps = args.steps if args.steps is not None else (0 if args.minutes else 300)
    config = pretrain_config(steps=steps, minutes=args.minutes, device=args.device, seed=args.seed,
                             precision=args.precision)
    print(f"Self-supervised pretraining on {len(images)} unlabelled image(s).", file=sys.stderr)
    _say_precision(args.precision, args.device, np.ndim(images[0]) - (args.channel_axis is not None))
    model, trained, code = _train_with_progress(images, None, config, model=init, names=names, self_supervised=True,
                                                channel_axis=args.channel_axis, model_config=model_config)
    code = _save_trained(model, out, trained, code)
    if trained:
        print(f"Fine-tune it with `napari-spoco train --init {out} ...`.")
    return code


def _report_failures(failed: dict[str, str], total: int, what: str) -> int:
    """End of a batch: list the files that failed (they were skipped) and exit 1, or 0."""
    if not failed:
        return 0
    print(f"napari-spoco: {len(failed)} of {total} {what} failed and were skipped:", file=sys.stderr)
    for name, reason in failed.items():
        print(f"  {name}: {reason}", file=sys.stderr)
    return EXIT_FAILED


def _predict_targets(files: dict[str, Path], out: Path, args) -> tuple[dict[str, Path], set[str]]:
    """Where each image's labels go (``out/<stem>.tif`` or ``.zarr``), and which images are
    segmented block by block (zarr stores, big TIFFs, any TIFF with --block-shape)."""
    from .batch import file_needs_blockwise, output_suffix

    large = {stem for stem, p in files.items() if file_needs_blockwise(p, bool(args.block_shape))}
    targets = {stem: out / f"{stem}{output_suffix(p, stem in large, args.out_format)}" for stem, p in files.items()}
    return targets, large


#: Below this, in Y or X, ``--block-shape`` gets a warning (a test uses 64, a user rarely means it).
MIN_BLOCK_SIDE = 64


def _skip_existing(files: dict[str, Path], targets: dict[str, Path], existing: list[str],
                   out: Path) -> tuple[dict[str, Path], set[str]]:
    """``--skip-existing``: the images still to segment, and those among them whose existing output
    is to be replaced — an output a kill cut short (:func:`_output_state`). A store another run is
    writing now, or one without our marks (an earlier version's), is left as it is, and said."""
    states = {stem: _output_state(targets[stem]) for stem in existing}
    redo = {stem for stem, state in states.items() if state == "unfinished"}
    for state, text in (("unfinished", "are incomplete (cut short by an interrupted run, or with parts that "
                                       "failed): segmenting those images again"),
                        ("writing", "are being written by another run on this machine: left to it"),
                        ("unknown", "carry no mark of being whole (written by an earlier version or another "
                                    "tool): taken as whole; --overwrite segments everything again")):
        stems = sorted(stem for stem, s in states.items() if s == state)
        if stems:
            print(f"{len(stems)} existing output(s) {text} ({_names([targets[s].name for s in stems])}).",
                  file=sys.stderr)
    done = set(existing) - redo
    if done:
        print(f"Skipping {len(done)} image(s) whose labels exist in {out}.", file=sys.stderr)
    return {s: p for s, p in files.items() if s not in done}, redo


def _output_state(path: Path) -> str:
    """'complete', 'unfinished', 'writing' or 'unknown' (out_of_core.store_state) for a zarr store;
    a file (TIFF) is 'complete' when every image plane it declares lies within the file, else
    'unfinished' (our own TIFFs are written atomically; one cut short comes from elsewhere)."""
    from .out_of_core import store_state

    if path.is_dir():
        return store_state(path)
    return "complete" if _tiff_whole(path) else "unfinished"


def _tiff_whole(path: Path) -> bool:
    """Whether a TIFF holds every plane its first series declares, each plane's data inside the
    file: read from its directories, not decoded (label files can be gigabytes unpacked)."""
    import logging

    import tifffile

    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)  # a file cut short makes tifffile log what it could not read
    try:
        size = path.stat().st_size
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            plane = int(np.prod(pages[0].shape))
            if plane == 0 or len(pages) * plane < int(np.prod(tif.series[0].shape)):
                return False
            return all(n > 0 and o + n <= size for page in pages
                       for o, n in zip(page.dataoffsets, page.databytecounts))
    except Exception:  # noqa: BLE001 - any reader error: not a whole file
        return False
    finally:
        log.setLevel(level)


def cmd_predict(args) -> int:
    from .batch import PredictOptions
    from .io import check_output_folder, load_model

    model = load_model(args.model)
    files = _files(args.images, zarr=True)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SpocoError(f"--out {out} is a file; give a folder.")
    from .lazy_io import is_zarr

    images_dir = Path(args.images) if Path(args.images).is_dir() and not is_zarr(args.images) else Path(args.images).parent
    if out.exists() and out.resolve() == images_dir.resolve():
        raise SpocoError(
            f"--out {out} is the folder of the input images: label files would replace or mix with "
            "them. Choose another folder, e.g. --out labels/."
        )
    targets, large = _predict_targets(files, out, args)
    inputs = {p.resolve() for p in files.values()} | {Path(args.model).resolve()}
    clash = [str(t) for t in targets.values() if t.resolve() in inputs]
    if clash:
        raise SpocoError(f"{clash[0]} is an input of this command; write the labels to another folder.")
    existing = [stem for stem, p in targets.items() if p.exists()]
    if existing and not (args.overwrite or args.skip_existing):
        raise SpocoError(
            f"{len(existing)} output file(s) exist already (e.g. {targets[existing[0]]}); pass "
            "--skip-existing to segment only the images without one, or --overwrite to replace them."
        )
    redo: set[str] = set()
    if args.skip_existing and existing:
        files, redo = _skip_existing(files, targets, existing, out)
    args.redo = redo  # outputs cut short: replaced when their image is segmented again
    check_output_folder(out, room=16 * 2**20, what=f"the label files in {out}")
    append_suggestions = False
    if args.suggest and (out / "suggestions.csv").exists() and not args.overwrite:
        if not args.skip_existing:
            raise SpocoError(f"{out / 'suggestions.csv'} exists already; pass --overwrite to replace it, "
                             "--skip-existing to add the new images' suggestions to it, or move it away to keep it.")
        append_suggestions = _suggestions_extend(out / "suggestions.csv", model.config.ndim)
    if args.voxel_size:  # a wrong count is the user's error, not one image's: say it before the batch
        from .scaling import check_voxel_size

        _say_capped(check_voxel_size(args.voxel_size, model.config.ndim))
    if args.block_shape and len(args.block_shape) != model.config.ndim:
        raise SpocoError(f"--block-shape needs {model.config.ndim} sizes for this {model.config.ndim}D model, "
                         f"got {len(args.block_shape)}.")
    if args.block_shape and min(args.block_shape[-2:]) < MIN_BLOCK_SIDE:
        _warn(f"blocks of {' x '.join(map(str, args.block_shape))} are small: every block border is a seam where "
              f"objects must be stitched, and the time goes into the halos; blocks of at least {MIN_BLOCK_SIDE} "
              "pixels in Y and X (the default, sized by the memory a block takes, is far larger) segment better and faster.")
    config = ClusterConfig(
        method=args.method, bandwidth=args.bandwidth, min_size=args.min_size,
        foreground_threshold=args.foreground_threshold, expand=args.expand, shape_split=args.shape_split,
        boundary_merge=args.boundary_merge, calibrated_edge=args.calibrated_edge, layout=args.layout,
        fill_holes=args.fill_holes, edge_growth=args.edge_growth,
    )
    options = PredictOptions(config, args.device, args.channel_axis,
                             tuple(args.voxel_size) if args.voxel_size else None, args.suggest,
                             precision=args.precision, tta=args.tta)
    failed: dict[str, str] = {}
    suggestions: list = []
    small = {s: p for s, p in files.items() if s not in large}
    if small:
        _predict_whole(model, small, targets, options, args, failed, suggestions)
    for stem in [s for s in files if s in large]:
        _predict_blockwise(model, stem, files[stem], targets[stem], options, args, failed)
    if args.suggest:
        from .suggestions import write_csv

        write_csv(out / "suggestions.csv", suggestions, ndim=model.config.ndim, append=append_suggestions,
                  replace_images=[p.name for p in small.values()])
        whole = sum(1 for p in small.values() if p.name not in failed)
        _say_suggestions(out / "suggestions.csv", suggestions, args.suggest, whole, len(files) - len(small),
                         append_suggestions)
    return _report_failures(failed, len(files), "images")


def _suggestions_extend(path: Path, ndim: int) -> bool:
    """``--skip-existing`` continues a batch: the new images' suggestions are added to an existing
    suggestions.csv of the same columns (refused otherwise, before any work)."""
    import csv

    from .suggestions import csv_header

    try:
        with open(path, newline="") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SpocoError(f"{path} cannot be read to add to it ({exc}); move it away or pass --overwrite.") from None
    if header != csv_header(ndim):
        raise SpocoError(f"{path} does not have the columns this version writes for a {ndim}D model "
                         f"({', '.join(csv_header(ndim))}); move it away or pass --overwrite.")
    return True


def _say_suggestions(path: Path, suggestions: list, k: int, segmented: int, blockwise: int, appended: bool) -> None:
    """What suggestions.csv now holds, in numbers (an image with fewer objects than K gives them
    all): ``segmented`` images read whole were segmented; ``blockwise`` ones give none."""
    images = {name for name, _ in suggestions}
    verb = "added to" if appended else "in"
    empty = "" if appended else " (it holds the column names only)"
    also = f"; the {blockwise} image(s) segmented block by block give none" if blockwise else ""
    if segmented == 0:
        print(f"Suggestions: no image was segmented whole, so none are {verb} {path}{empty}{also}.", file=sys.stderr)
    elif not suggestions:
        print(f"Suggestions: none {verb} {path}{empty}: no objects were found in the {segmented} image(s) "
              f"segmented{also}.", file=sys.stderr)
    else:
        print(f"Suggestions {verb} {path}: {len(suggestions)} objects in {len(images)} of {segmented} segmented "
              f"image(s), up to {k} per image (all of an image's objects where it has fewer), most doubtful "
              f"first{also}.", file=sys.stderr)


def _predict_whole(model, files: dict[str, Path], targets, options, args, failed, suggestions) -> None:
    """The images that fit in memory, one task each: here, or spread over --workers processes
    or a dask cluster (--scheduler)."""
    from dataclasses import replace

    from tqdm import tqdm

    from .batch import predict_file
    from .blockwise import Engine

    # In a log file the per-image lines below are the progress; a bar would add a carriage
    # return per image.
    bar = tqdm(total=len(files), desc="predict", unit="image", file=sys.stderr, disable=not sys.stderr.isatty())

    def report(stem: str, result) -> None:
        bar.update(1)
        if result.error:
            failed[result.name] = result.error
            tqdm.write(f"{result.name}: skipped ({result.error})", file=sys.stderr)
            return
        suggestions.extend(result.suggestions)
        how = "" if all(f == 1 for f in result.grid) else (
            f" (segmented resized by {', '.join(f'{f:g}' for f in result.grid)} along "
            f"{', '.join('ZYX'[-len(result.grid):])})")
        tqdm.write(f"{stem}: {result.objects} objects -> {targets[stem]}{how}", file=sys.stderr)

    try:
        if args.workers == 1 and not args.scheduler:
            for stem, path in files.items():
                report(stem, predict_file(model, path, targets[stem], options))
            return
        with Engine(args.workers, args.scheduler) as engine:
            opts = replace(options, threads=engine.threads)
            model_file = str(Path(args.model).resolve())
            stems = list(files)
            results = engine.map(predict_file, [(model_file, files[s], targets[s], opts) for s in stems])
            for stem, result in zip(stems, results):
                report(stem, result)
    finally:
        bar.close()


def _predict_blockwise(model, stem: str, path: Path, target: Path, options, args, failed) -> None:
    """One zarr store or big TIFF, block by block; the result as zarr, or as TIFF when small
    enough (batch.output_suffix)."""
    from .batch import voxel_size_for, zarr_to_tiff
    from .blockwise import segment_blockwise
    from .lazy_io import describe, large_pieces_note, open_lazy, remove_store

    try:
        image = open_lazy(path)
        voxel_size = voxel_size_for(options.voxel_size, path, model) if not image.voxel_size or options.voxel_size \
            else image.voxel_size
    except SpocoError as exc:
        failed[path.name] = str(exc)
        print(f"{path.name}: skipped ({exc})", file=sys.stderr)
        return
    if options.suggest:
        _warn(f"{path.name}: no suggestions for images segmented block by block (their embedding is not kept).")
    store = target if target.suffix == ".zarr" else target.with_name(f".{target.stem}.blocks.zarr")
    for old in {store, target}:
        if old.exists() and (args.overwrite or old != target or stem in getattr(args, "redo", ())):
            remove_store(old)
    how = ", averaging mirrored views (--no-tta: faster)" if options.tta else ", one network pass per tile"
    print(f"{path.name}: {describe(image)}, block by block{how}", file=sys.stderr)
    note = large_pieces_note(image)
    if note:
        _warn(note)
    progress = _BlockProgress(path.name)
    try:
        result = segment_blockwise(model, image, store, config=options.config,
                                   block_shape=tuple(args.block_shape) if args.block_shape else None,
                                   voxel_size=voxel_size, workers=args.workers, scheduler=args.scheduler,
                                   device=options.device, progress=progress, precision=options.precision,
                                   tta=options.tta)
        if store != target:
            zarr_to_tiff(store, target)
    except Exception as exc:  # noqa: BLE001 - a file whose pixels cannot be decoded (cut short, a corrupt chunk)
        # raises the reader's own error here (tifffile's, a codec's); it fails this image, not the batch
        failed[path.name] = str(exc) if isinstance(exc, SpocoError) else f"{type(exc).__name__}: {exc}"
        print(f"{path.name}: skipped ({failed[path.name]})", file=sys.stderr)
        return
    finally:
        progress.close()
        if store != target:
            remove_store(store)
    rate = result.seconds / max(1e-9, np.prod(result.shape) / 1e6)
    print(f"{stem}: {result.objects} objects -> {target} ({result.blocks} blocks, {result.seconds:.0f} s, "
          f"{rate:.2f} s per million pixels)", file=sys.stderr)
    if result.failed:
        first = next(iter(result.failed.items()))
        failed[path.name] = (f"{len(result.failed)} parts failed twice and are empty in "
                             f"{target} (e.g. {first[0]}: {first[1]})")


class _BlockProgress:
    """Steps done of a block-wise image (embedding cores, then blocks): a bar on a terminal, a
    line every 10 s in a log."""

    def __init__(self, name: str, every: float = 10.0):
        self.name, self.every, self.last = name, every, None
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(desc=name, unit="step", file=sys.stderr, dynamic_ncols=True)
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.n = done
            self.bar.refresh()
            return
        now = time.perf_counter() - self.t0
        if done == total or self.last is None or now - self.last >= self.every:
            self.last = now
            print(f"{self.name}: step {done}/{total}, {now / 60:.1f} min", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


METRIC_KEYS = ("AP50", "AP75", "mAP", "SBD", "DiC")
#: How ``evaluate_folders`` marks a ground-truth file it could not read (skipped, not scored).
GT_SKIPPED = "ground truth not read"


def evaluate_folders(pred: str, gt: str) -> dict:
    """Score every ground-truth image. One without a prediction (or whose prediction cannot be
    read or has another shape) counts as an empty prediction, so that the mean is not taken
    over the easy images only; it is listed under ``missing`` / ``failed``."""
    from .io import LABEL_TAGS, PREDICTION_TAGS, pair_by_tags, read_image, split_by_label_tags, without_files_of
    from .metrics import evaluate

    preds, gts = _files(pred), _files(gt)
    if Path(pred).is_file() and Path(gt).is_file():  # two files named: a pair, whatever the names
        preds = {next(iter(gts)): next(iter(preds.values()))}
    elif Path(pred).is_dir() and Path(pred).resolve() == Path(gt).resolve():  # one folder: every file was its own truth
        split = split_by_label_tags(gts, LABEL_TAGS - PREDICTION_TAGS)
        if split[0] and split[1]:
            preds, gts = split
        else:
            print("Note: --pred and --gt are the same folder and no file name there tells ground truth (x_gt.tif, "
                  "x_masks.tif) from predictions: each file is scored against itself.", file=sys.stderr)
    elif Path(pred).is_dir() != Path(gt).is_dir():  # a folder and one file: not its own partner
        if Path(pred).is_dir():
            preds = without_files_of(preds, gts)
        else:
            gts = without_files_of(gts, preds)

    preds, tagged = pair_by_tags(gts, preds)
    _say_tagged(tagged, "ground-truth file(s)", "predictions")
    if not set(preds) & set(gts):
        raise SpocoError(
            f"No prediction has a ground-truth file with the same name, nor (one to one) a name that differs only "
            f"by a tag such as _rgb or _masks (predictions: {_names(preds, 3)}; "
            f"ground truth: {_names(gts, 3)})."
        )
    from .data import check_label_values

    per_image, missing, failed, empty_truth = {}, [], {}, []
    for stem in sorted(gts):
        try:  # whole, non-negative ids: a negative or fractional background would count as an object
            truth = check_label_values(read_image(gts[stem]), gts[stem].name)
        except SpocoError as exc:
            failed[gts[stem].name] = f"{GT_SKIPPED}: {exc}"
            continue
        if not truth.any():
            empty_truth.append(stem)
        labels = None
        if stem not in preds:
            missing.append(stem)
        else:
            try:
                labels = read_image(preds[stem])
                if labels.shape != truth.shape:
                    raise SpocoError(f"prediction shape {labels.shape} differs from ground truth {truth.shape}")
                labels = check_label_values(labels, preds[stem].name)
            except SpocoError as exc:
                failed[preds[stem].name] = f"prediction not compared: {exc}"
                labels = None
        per_image[stem] = evaluate(truth, np.zeros(truth.shape, np.uint8) if labels is None else labels)
    if not per_image:
        why = next(iter(failed.values()), "").removeprefix(GT_SKIPPED + ": ")
        raise SpocoError(f"No ground-truth image could be read, so nothing was scored; the first: {why}")
    mean = {k: float(np.mean([m[k] for m in per_image.values()])) for k in METRIC_KEYS}
    extra = sorted(set(preds) - set(gts))
    return {"images": per_image, "mean": mean, "missing": missing, "failed": failed, "unmatched_predictions": extra,
            "empty_truth": empty_truth}


def format_table(result: dict) -> str:
    missing = set(result.get("missing", []))
    rows = [("image",) + METRIC_KEYS]
    for stem, m in result["images"].items():
        name = stem[:40] + (" (no prediction)" if stem in missing else "")
        rows.append((name,) + tuple(f"{m[k]:.3f}" if k != "DiC" else f"{m[k]:.0f}" for k in METRIC_KEYS))
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
    if result["missing"]:
        _warn(f"{len(result['missing'])} ground-truth image(s) have no prediction and were scored as "
              f"empty predictions (every object missed): {_names(result['missing'])}")
    if result["empty_truth"]:
        _warn(f"{len(result['empty_truth'])} ground-truth image(s) hold no objects, so their scores say only "
              f"whether the prediction is empty too (1) or not (0): {_names(result['empty_truth'])}. Are these "
              "the right files?")
    if result["unmatched_predictions"]:
        _warn(f"{len(result['unmatched_predictions'])} prediction(s) have no ground truth and were not "
              f"scored: {_names(result['unmatched_predictions'])}")
    # a ground truth that cannot be read is skipped; a prediction that cannot be read or compared
    # is scored as empty (it stays in the table and the mean): one line each, counted over images
    skipped = {n: r for n, r in result["failed"].items() if r.startswith(GT_SKIPPED)}
    empty = {n: r for n, r in result["failed"].items() if n not in skipped}
    total = len(result["images"]) + len(skipped)
    for group, what in ((empty, "were scored as empty predictions (every object missed)"),
                        (skipped, "were skipped (not in the table or the mean)")):
        if group:
            print(f"napari-spoco: {len(group)} of {total} images {what}:", file=sys.stderr)
            for name, reason in group.items():
                print(f"  {name}: {reason}", file=sys.stderr)
    return EXIT_FAILED if result["failed"] else 0


DEMO_FILES = ("model.spoco.pt", "nuclei_train_pred.tif", "nuclei_train_overlay.png",
              "nuclei_heldout_pred.tif", "nuclei_heldout_overlay.png")


def cmd_demo(args) -> int:
    from . import sample
    from .io import check_output_folder, save_model, write_labels
    from .metrics import evaluate
    from .overlay import save_overlay
    from .segmentation import segment
    from .training import TrainConfig

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SpocoError(f"--out {out} is a file; give a folder for the demo's outputs.")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise SpocoError(
            f"{out} exists and is not empty; choose a new --out folder, or pass --overwrite to write "
            f"the demo's files ({', '.join(DEMO_FILES)}) into it."
        )
    data = sample.load_sample()
    init = _initial_model(args.init, [data.train_image])  # a bad --init is refused before the folder is made
    check_output_folder(out, what=f"the demo's outputs in {out}")
    print("napari-spoco demo: U2OS nuclei (BBBC039, CC0), 256x256 crops; "
          f"{data.n_painted} of {data.n_train_objects} nuclei painted in the training crop.", file=sys.stderr)
    _say_precision(args.precision, args.device, data.train_image.ndim)
    steps = args.steps or 0
    config = TrainConfig(steps=steps, minutes=None if steps else args.minutes, device=args.device,
                         precision=args.precision)
    steps_before = init.history.get("steps", 0) if init is not None else 0
    t0 = time.perf_counter()
    model, trained, code = _train_with_progress([data.train_image], [data.train_sparse], config, model=init)
    train_s = time.perf_counter() - t0
    if trained:
        _say_automatic_zoom(model)
    if trained == 0:
        print("Stopped before the first training step finished: nothing was written.", file=sys.stderr)
        return code or EXIT_FAILED
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
    return code


def cmd_export(args) -> int:
    from .bioimageio_export import export_bioimageio, validate_bioimageio
    from .io import load_model, read_image
    from .pretrained import load_default_model

    inputs = ([] if args.model == "default" else [Path(args.model)]) + ([Path(args.test_image)] if args.test_image else [])
    out = _out_file(args.out, args.overwrite, inputs)
    model = load_default_model(2) if args.model == "default" else load_model(args.model)
    test_image = read_image(args.test_image, keep_channels=args.channel_axis is not None) if args.test_image else None
    path = export_bioimageio(model, out, name=args.name, authors=args.author or ["napari-spoco user"],
                             license=args.license, test_image=test_image, channel_axis=args.channel_axis)
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


def _raise_terminated(signum, frame):
    raise Terminated


def _quiet_stdout() -> None:
    """Point stdout at the null device (after its reader closed the pipe)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (captured in tests): nothing to flush
        pass


def _out_of_memory_message(command: str, exc: BaseException) -> str:
    detail = " ".join(str(exc).split())[:200]
    advice = {
        "predict": "give a zarr or OME-Zarr copy of the image, or a big TIFF (segmented block by block, "
                   "in bounded memory: --block-shape), or --device cpu where a GPU ran out",
        "evaluate": "score the images one at a time, or on a machine with more memory",
    }.get(command, "crop the images to the painted region, lower --batch-size or --patch-size, or use "
                   "--device cpu where a GPU ran out (or a machine with more memory)")
    return (f"napari-spoco {command}: error: ran out of memory{f' ({detail})' if detail else ''}. The data are "
            f"too large for this machine's memory: {advice}.")


def _tolerant_zarr_exit() -> None:
    """After an interrupt, zarr's own exit handler may find its I/O thread still busy with a chunk
    the interrupt cut short, and print a traceback ("Cannot close a running event loop") as the
    process ends. Its handler is swapped for one that lets that pass: the process is ending, and
    what was cut short was removed already."""
    import atexit

    sync = sys.modules.get("zarr.core.sync")
    cleanup = getattr(sync, "cleanup_resources", None)
    if cleanup is None:
        return

    def tolerant() -> None:
        import logging

        logging.getLogger(sync.__name__).setLevel(logging.ERROR)  # its "did not finish cleanly" too
        try:
            cleanup()
        except RuntimeError:
            pass

    atexit.unregister(cleanup)
    atexit.register(tolerant)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    # SIGTERM unwinds like Ctrl-C, so unfinished files are removed (training installs its own
    # handler on top: it stops after the step and saves).
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a pipe's buffer is written here, not at exit, so a closed reader is caught below
        return code
    except SpocoError as exc:
        if args.debug:
            raise
        print(f"napari-spoco {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Terminated:
        _tolerant_zarr_exit()
        print("napari-spoco: terminated.", file=sys.stderr)
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        _tolerant_zarr_exit()
        print("napari-spoco: interrupted.", file=sys.stderr)
        return EXIT_SIGINT
    except BrokenPipeError:
        # the reader of stdout has gone (`evaluate | head`): what it wanted was printed, so stop
        # quietly, as shell tools do, with output sent nowhere so that the flush at exit is quiet
        # too (the recipe of Python's signal module documentation; the CLI writes to no other pipe)
        _quiet_stdout()
        return EXIT_SIGPIPE
    except Exception as exc:  # a bug: one line, and how to get the traceback
        if args.debug:
            raise
        if is_out_of_memory(exc):  # an image (or patch) larger than this machine holds: not a bug
            print(_out_of_memory_message(args.command, exc), file=sys.stderr)
            return EXIT_FAILED
        text = " ".join(str(exc).split())
        text = text if len(text) <= 300 else text[:299] + "…"
        print(f"napari-spoco {args.command}: unexpected error: {type(exc).__name__}: {text} "
              "(rerun with --debug for the traceback, and please report it)", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    sys.exit(main())
