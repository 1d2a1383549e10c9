"""The training loop: device choice, optimiser, progress callbacks and cooperative stopping.

``train`` is what the CLI and the GUI worker both call. It never touches a GUI; it reports
through ``callback(TrainProgress)`` after every step and checks ``stop`` between steps, so a
cancelled run still returns a usable, calibrated model.
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from .augment import random_geometry, random_intensity
from .checks import SEED_MAX, check_field, is_whole
from .data import (
    BACKGROUND_FRACTION,
    RING_WIDTH,
    PatchSampler,
    channel_count,
    check_image,
    prepare_training_data,
    spatial_shape,
)
from .errors import SpocoError
from .losses import LossConfig, foreground_consistency_term, spoco_loss
from .model import ModelConfig, SpocoModel, ema_momentum, ema_update, select_device, split_output  # noqa: F401 - select_device: also imported from here
from .precision import PRECISIONS, autocast, resolve_precision
from .scaling import check_scale, check_voxel_size, estimate_voxel_size, kept_scale_of, training_scale
from .shapes import CONCAVE_MIN_REFERENCE, painted_solidities, painted_solidity, single_peaked

#: Steps in a row whose gradients are not finite (skipped) before training counts as diverged.
MAX_BAD_STEPS = 5


def gradients_finite(net: torch.nn.Module) -> bool:
    """Whether every gradient of ``net`` is finite (one reduction, one sync)."""
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())


#: Train in channels-last memory format (faster convolutions on CPU; benchmarks/training_speed.py
#: switches it off to measure by how much).
CHANNELS_LAST = True

#: A starting model is protected by the stable start only when it already fits the painted
#: objects: its instance (Dice) term on them, before any step, below this. Measured over seeds
#: 0-2 (docs/method.md, "Fine-tuning a trained model"): the shipped 2D model 0.27-0.32 on nuclei
#: (the demo sample, BBBC039), 0.50-0.57 on ISBI EM, 0.70-0.74 on Usiigaci phase contrast; a
#: broader 2D model 0.33-0.44 on nuclei and 0.51-0.70 on the others, where a slow teacher and
#: frozen normalisation kept what did not fit (EM AP50 0.03 after 5 minutes). 0.47 lies in both gaps.
FITS_OBJECTS = 0.47


#: Fingerprints of training images kept in a model's history (the newest first).
MAX_FINGERPRINTS = 256


def image_fingerprints(data) -> list[str]:
    """A short hash of each prepared training image (its pixels as the network sees them), so
    that a later ``train`` can tell it continues on the same images: the user's label → train →
    correct → train loop, not a new kind of image."""
    import hashlib

    return [hashlib.blake2b(np.ascontiguousarray(d.image).tobytes(), digest_size=8).hexdigest() for d in data]


def starting_fit(model: SpocoModel, data, patch, batch: int, config, device, fmt, probes: int = 8) -> float:
    """Mean instance (Dice) term of ``model``'s predicting network on a few patches centred on
    painted objects, before training (no augmentation; its own random stream, so the training
    batches are the same whatever this finds)."""
    sampler = PatchSampler(data, patch, object_fraction=1.0, seed=config.seed + 7919)
    gen = torch.Generator().manual_seed(config.seed + 7919)
    net = model.predictor
    was_training = net.training
    net.eval()
    values = []
    try:
        with torch.inference_mode():
            for _ in range(probes):
                img, obj, bg, neg = (torch.from_numpy(x).to(device) for x in sampler.batch(batch))
                emb, fg = split_output(net(img.contiguous(memory_format=fmt)), model.config)
                values.append(float(spoco_loss(emb, obj, bg, config.loss, None, fg, neg, gen)["instance"]))
    finally:
        net.train(was_training)
    return float(np.mean(values))


@dataclass
class TrainConfig:
    """How to train; defaults are tuned for an interactive CPU session (docs/method.md)."""

    steps: int = 1000
    minutes: float | None = None
    patch_shape: tuple[int, ...] | None = None  # default: (96, 96) or (32, 64, 64)
    batch_size: int | None = None  # default: 8 (2D) or 2 (3D)
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    ema_momentum: float = 0.999
    consistency_warmup_steps: int = 100
    object_fraction: float = 0.8
    # Of the other patches, the share centred on painted background where some is painted
    # (data.PatchSampler); the rest fall anywhere. 0: measured better than 0.5 (data.py).
    background_fraction: float = BACKGROUND_FRACTION
    ring_width: int = RING_WIDTH  # foreground-head negatives just outside painted objects (data.py)
    # Share of patches that get a painted object pasted beside one of theirs (napari_spoco.pasting);
    # None: automatic (paste_share_for).
    paste_share: float | None = None
    # Patches zoomed in Y and X by a factor drawn log-uniformly in [1/scale_jitter, scale_jitter]
    # (data.PatchSampler); 1: off; None: automatic (scale_jitter_for: on where few objects are
    # painted; docs/method.md, "Patches at other sizes").
    scale_jitter: float | None = None
    background_label: int | None = None
    # Resize images by this factor before the network (napari_spoco.scaling); None = automatic:
    # a starting model's scale other than 1 is kept, else 2D objects wider than 45 px are
    # brought to about 30 px and those narrower than 20 px doubled; a
    # self-supervised run keeps the starting model's scale.
    scale: float | None = None
    # Spacing of the images' pixels per spatial axis (Z, Y, X or Y, X; any unit): coarse axes
    # are interpolated up to cubic voxels (docs/method.md, "Anisotropic volumes"). None: the
    # starting model's training voxel size, else isotropic.
    voxel_size: tuple[float, ...] | None = None
    seed: int = 0
    device: str = "auto"
    # Number format of the network in training steps (napari_spoco.precision): "auto" (bfloat16
    # convolutions where the device has them natively: 1.8x the steps of float32 in 3D, 1.4x in
    # 2D, as accurate or more over three seeds on the 2D sets and the packed 3D nuclei, 0.045 AP50
    # lower on cells3d; docs/method.md, "Number format"),
    # "float32" or "bfloat16".
    precision: str = "auto"
    # Starting from a trained model (docs/method.md, "Fine-tuning a trained model"): the teacher
    # keeps a fixed momentum of ``ema_momentum`` from the first step and the consistency term its
    # full weight, BatchNorm keeps the starting model's statistics, the learning rate warms up
    # over ``warmup_steps``, and the model predicts with its teacher. False: the behaviour before
    # (the schedule of a random start; predictions by the student), kept for comparison.
    stable_start: bool = True
    warmup_steps: int = 20
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse values training cannot run with, naming the field and what it expects."""
        check_field(self, "steps", "a whole number >= 0 (0 = train for `minutes`)", whole=True, low=0)
        check_field(self, "minutes", "a positive, finite number of minutes, or None", low=0, low_open=True,
                    optional=True)
        if self.steps == 0 and self.minutes is None:
            raise SpocoError("Give a positive number of steps or minutes to train for.")
        check_field(self, "batch_size", "a whole number >= 1, or None for the default", whole=True, low=1,
                    optional=True)
        if self.patch_shape is not None:
            shape = tuple(self.patch_shape)
            if len(shape) not in (2, 3) or not all(is_whole(p) and p >= 1 for p in shape):
                raise SpocoError(f"TrainConfig.patch_shape = {self.patch_shape!r}: expected 2 (2D) or 3 (3D) "
                                 "positive whole numbers, or None for the default.")
            self.patch_shape = tuple(int(p) for p in shape)
        check_field(self, "learning_rate", "a positive, finite number", low=0, low_open=True)
        check_field(self, "weight_decay", "a finite number >= 0", low=0)
        check_field(self, "ema_momentum", "a number in [0, 1)", low=0, high=1, high_open=True)
        check_field(self, "object_fraction", "a number in [0, 1]", low=0, high=1)
        check_field(self, "background_fraction", "a number in [0, 1]", low=0, high=1)
        check_field(self, "paste_share", "a number in [0, 1], or None for automatic", low=0, high=1, optional=True)
        check_field(self, "scale_jitter", "a number from 1 (off) to 4, or None for automatic", low=1, high=4,
                    optional=True)
        check_field(self, "consistency_warmup_steps", "a whole number >= 0", whole=True, low=0)
        check_field(self, "warmup_steps", "a whole number >= 0 (0 = no warm-up)", whole=True, low=0)
        if not isinstance(self.stable_start, bool):
            raise SpocoError(f"TrainConfig.stable_start = {self.stable_start!r}: expected True or False.")
        check_field(self, "ring_width", "a whole number >= 0", whole=True, low=0)
        check_field(self, "background_label", "a positive whole number (0 means unlabelled, so it cannot "
                    "mark background; e.g. 65535), or None", whole=True, low=1, optional=True)
        if self.scale is not None:
            self.scale = check_scale(self.scale)
        self.voxel_size = check_voxel_size(self.voxel_size)
        check_field(self, "seed", "a whole number from 0 to 2**62", whole=True, low=0, high=SEED_MAX)
        if not isinstance(self.device, str):
            raise SpocoError(f"TrainConfig.device = {self.device!r}: expected 'auto', 'cpu', 'cuda' or 'mps'.")
        if self.precision not in PRECISIONS:
            raise SpocoError(f"TrainConfig.precision = {self.precision!r}: expected one of {', '.join(PRECISIONS)}.")

    @classmethod
    def coerce(cls, config) -> TrainConfig:
        """A TrainConfig from a TrainConfig, a dict of its fields, or None (the defaults)."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            unknown = sorted(set(config) - set(cls.__dataclass_fields__))
            if unknown:
                raise SpocoError(
                    f"Unknown training setting(s) {', '.join(map(repr, unknown))}; TrainConfig has "
                    f"{', '.join(cls.__dataclass_fields__)}."
                )
            return cls(**config)
        raise SpocoError(f"config must be a TrainConfig (or a dict of its fields), not {type(config).__name__}.")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch_shape"] = list(self.patch_shape) if self.patch_shape else None
        d["voxel_size"] = list(self.voxel_size) if self.voxel_size else None
        return d


@dataclass
class TrainProgress:
    """What a progress callback receives after each step."""

    step: int
    total_steps: int
    losses: dict[str, float]
    elapsed: float
    steps_per_second: float
    fraction: float  # 0..1, by steps or by time, whichever is further
    # The model being trained (on the training device, in training mode): for previews, which
    # must work on a ``SpocoModel.snapshot()`` rather than on the live networks.
    model: SpocoModel | None = field(default=None, repr=False, compare=False)


#: Share of training patches that get a painted object pasted beside one of theirs where the
#: automatic choice pastes (:func:`paste_share_for`).
PASTE_SHARE = 0.5
#: The painted objects' reference solidity (:func:`shapes.painted_solidity`) from which the
#: automatic choice pastes, per dimensionality: objects as convex as nuclei. A voxel set's hull
#: measures lower than a pixel outline's: nuclei 0.90-0.94 in 2D, 0.78-0.90 in 3D (cells3d and
#: the packed generated set); phase-contrast cells, EM profiles and leaves 0.52-0.76 in 2D.
PASTE_MIN_SOLIDITY = {2: CONCAVE_MIN_REFERENCE, 3: 0.7}


def paste_share_for(config: TrainConfig, ndim: int, solidity: float | None) -> float:
    """The share of patches with a pasted touching pair: ``config.paste_share`` when given; else
    :data:`PASTE_SHARE` for objects as convex as nuclei (painted reference solidity at least
    :data:`PASTE_MIN_SOLIDITY`), so that a copy placed beside one looks like a touching
    neighbour; 0 for irregular objects (phase-contrast cells: no gain over two seeds, swings of
    0.07 either way; docs/method.md, "Painted objects pasted beside each other")."""
    if config.paste_share is not None:
        return float(config.paste_share)
    bar = PASTE_MIN_SOLIDITY.get(ndim)
    return PASTE_SHARE if bar is not None and solidity is not None and solidity >= bar else 0.0


#: The automatic zoom of training patches (:func:`scale_jitter_for`): up to this factor either way ...
SCALE_JITTER = 1.5
#: ... where fewer objects than this are painted in all: a handful of objects samples the sizes of
#: an image's objects too thinly (single images with 7-13 painted objects against splits of
#: 42-124; docs/method.md, "Patches at other sizes").
FEW_PAINTED = 20


def scale_jitter_for(config: TrainConfig, painted: int) -> float:
    """How far training patches are zoomed (1: not at all): ``config.scale_jitter`` when given;
    else :data:`SCALE_JITTER` when fewer than :data:`FEW_PAINTED` objects are painted, 1 otherwise."""
    if config.scale_jitter is not None:
        return float(config.scale_jitter)
    return SCALE_JITTER if 0 < painted < FEW_PAINTED else 1.0


def scale_jitter_note(history: dict) -> str:
    """One sentence for the end of a training run whose patches the automatic choice zoomed
    (nothing otherwise: a zoom set by hand is the user's own)."""
    jitter = history.get("scale_jitter") or 1.0
    if jitter <= 1 or not history.get("scale_jitter_auto"):
        return ""
    return f"Patches were zoomed by up to {jitter:g}x, as only {history.get('painted_objects')} objects are painted."


def default_patch_shape(ndim: int, image_shapes: Sequence[tuple[int, ...]], divisor: int) -> tuple[int, ...]:
    """96² in 2D, 32×64×64 in 3D, shrunk to the largest image, rounded to the divisor."""
    base = (96, 96) if ndim == 2 else (32, 64, 64)
    biggest = np.max(np.array(image_shapes), axis=0)
    return tuple(max(divisor, min(b, int(math.ceil(m / divisor) * divisor))) for b, m in zip(base, biggest))


def _stopped(stop) -> bool:
    if stop is None:
        return False
    if isinstance(stop, threading.Event):
        return stop.is_set()
    return bool(stop())


def train(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: TrainConfig | None = None,
    model: SpocoModel | None = None,
    model_config: ModelConfig | None = None,
    callback: Callable[[TrainProgress], None] | None = None,
    stop: threading.Event | Callable[[], bool] | None = None,
    names: Sequence[str] | None = None,
    channel_axis: int | None = None,
) -> SpocoModel:
    """Train (or fine-tune ``model``) SPOCO on images with sparse labels.

    Parameters
    ----------
    images, labels : lists of arrays
        2D ``(Y, X)`` or 3D ``(Z, Y, X)`` images, colour ``(Y, X, 3|4)``, or channel stacks
        with ``channel_axis``; label images of the spatial shape: 0 = unlabelled, positive ids
        = painted objects, ``config.background_label`` = painted background.
    config : TrainConfig
        Steps and/or minutes, patch size, optimiser, seed, device, loss weights.
    model : SpocoModel, optional
        Start from this model (fine-tuning); otherwise a new ``model_config`` network.
    callback : callable, optional
        Called with a :class:`TrainProgress` after every step.
    stop : threading.Event or callable, optional
        Checked between steps; when set, training ends early and the model is returned.
    channel_axis : int, optional
        The images' channel axis (colour ``(Y, X, 3|4)`` needs none). Colour and channels are
        the network's input: a new model reads as many channels as the images hold, and a
        one-channel ``model`` is widened to them (:meth:`SpocoModel.widen_input`;
        docs/method.md, "Colour and channels").

    Returns
    -------
    SpocoModel
        Student and EMA teacher, moved back to the CPU.
    """
    return drain(iter_train(images, labels, config, model, model_config, stop, names,
                             channel_axis=channel_axis), callback)


def as_image_list(arrays, what: str) -> list:
    """Accept one array or a sequence of arrays (what users pass by habit); refuse the rest."""
    if arrays is None:
        raise SpocoError(f"No {what} were given; pass a list of arrays (one per image).")
    if isinstance(arrays, (str, bytes)) or hasattr(arrays, "__fspath__"):
        raise SpocoError(
            f"{what} must be arrays, not a file name ({arrays!s}); read them first, e.g. with "
            "napari_spoco.io.read_image."
        )
    if isinstance(arrays, np.ndarray) or hasattr(arrays, "__array__") and not isinstance(arrays, (list, tuple)):
        return [arrays]
    try:
        items = list(arrays)
    except TypeError:
        raise SpocoError(f"{what} must be an array or a list of arrays, not {type(arrays).__name__}.") from None
    for i, item in enumerate(items):
        if item is None or isinstance(item, (str, bytes)) or not hasattr(item, "__array__") and not isinstance(item, (list, tuple)):
            raise SpocoError(f"{what}[{i}] is {type(item).__name__}, not an array.")
    return items


def as_model(model) -> SpocoModel | None:
    """A model, a model file's path (loaded), or None; anything else is refused clearly."""
    if model is None or isinstance(model, SpocoModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        from .io import load_model

        return load_model(model)
    raise SpocoError(f"model must be a SpocoModel or a model file's path, not {type(model).__name__}.")


def input_channels(images: Sequence[np.ndarray], channel_axis: int | None, model: SpocoModel | None) -> int:
    """How many channels training reads (docs/method.md, "Colour and channels").

    The images' own count, the same for all. A one-channel model (the shipped ones) given
    colour or channels is widened to them by the caller; a model of several channels must get
    exactly that many.
    """
    counts = {channel_count(im, channel_axis) for im in images}
    if len(counts) > 1:
        raise SpocoError(f"The images hold different numbers of channels ({sorted(counts)}); train on images "
                         "with the same channels.")
    have = counts.pop()
    if model is None or model.config.in_channels in (1, have):
        return have
    raise SpocoError(f"This model reads {model.config.in_channels} channels but the images hold {have}; "
                     "start a new model, or give the images with the channels the model was trained on.")


def drain(steps: Generator, callback: Callable | None = None):
    """Run a generator to its end, feeding each item to ``callback``; return its return value.

    The one loop behind :func:`train`, :func:`pretrain` and the napari panel's synchronous
    path. When ``callback`` raises, the generator is closed first, so that its clean-up runs
    (a training loop then leaves a usable model).
    """
    while True:
        try:
            item = next(steps)
        except StopIteration as done:
            return done.value
        if callback is not None:
            try:
                callback(item)
            except BaseException:
                steps.close()
                raise


def iter_train(  # noqa: C901 - set-up, the step and the clean-up share the model, optimiser and device; the step is one block on purpose (docs/method.md, Training)
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: TrainConfig | None = None,
    model: SpocoModel | None = None,
    model_config: ModelConfig | None = None,
    stop: threading.Event | Callable[[], bool] | None = None,
    names: Sequence[str] | None = None,
    self_supervised: bool = False,
    channel_axis: int | None = None,
) -> Generator[TrainProgress, None, SpocoModel]:
    """:func:`train` as a generator: yields a :class:`TrainProgress` after every step and
    returns the model (``StopIteration.value``). napari's ``thread_worker`` drives it directly;
    closing the generator early also leaves a usable model.

    ``self_supervised``: ignore ``labels`` and train the consistency term alone on random
    patches (see :func:`pretrain`).
    """
    config = pretrain_config() if (config is None and self_supervised) else TrainConfig.coerce(config)
    images = as_image_list(images, "images")
    if not self_supervised:
        labels = as_image_list(labels, "labels")
    model = as_model(model)
    channels = input_channels(images, channel_axis, model)
    if self_supervised:
        labels = [np.zeros(spatial_shape(check_image(im, "image", channels, channel_axis), channels), np.int64)
                  for im in images]
        config = replace(
            config,
            object_fraction=0.0,
            consistency_warmup_steps=0,
            background_label=None,
            loss=replace(config.loss, alpha=0.0, beta=0.0, gamma=0.0, instance_weight=0.0,
                         unlabelled_push_weight=0.0, foreground_weight=0.0,
                         consistency_weight=config.loss.consistency_weight or 1.0),
        )
    voxel_size = config.voxel_size if config.voxel_size is not None else (model.voxel_size if model else None)
    # Nothing records the voxel size: estimated from the painted objects' shape where they are
    # far flatter along z than nuclei are themselves (scaling.estimate_voxel_size)
    estimated = voxel_size is None and not self_supervised
    if estimated:
        voxel_size = estimate_voxel_size(labels, config.background_label)
        estimated = voxel_size is not None
    if config.scale is not None:
        scale = check_scale(config.scale)
    elif self_supervised:
        scale = model.pixel_scale if model is not None else 1.0
    else:
        scale = training_scale(labels, config.background_label, *kept_scale_of(model))
    data = prepare_training_data(
        list(images), list(labels), config.background_label, list(names) if names else None, config.ring_width,
        require_objects=not self_supervised, scale=scale, channels=channels, channel_axis=channel_axis,
        voxel_size=voxel_size,
    )
    ndim = data[0].objects.ndim
    started_from_model = model is not None
    # a trained start knows what an unpainted object looks like: its teacher gives the
    # foreground head's target where nothing is painted (docs/method.md, "Background"); 2D unless
    # asked for, as measured: on the packed 3D nuclei both forms scored lower (soft 0.754, hard
    # 0.756, against 0.774 without; three seeds)
    from_trained = (not self_supervised and model is not None and model.history.get("steps", 0) > 0
                    and (ndim == 2 or config.loss.foreground_teacher_3d))
    # Fine-tuning a trained model (not a new or untrained one handed in): docs/method.md.
    # A model widened to new channels below is not protected: its input is new, so the
    # normalisation statistics and a slow teacher would keep what no longer fits (measured on
    # iso-luminant colour: AP50 0.00 after 200 steps with, 0.48 without; docs/benchmarks.md).
    stable = (config.stable_start and not self_supervised and model is not None
              and model.history.get("steps", 0) > 0 and model.config.in_channels == channels)
    if model is None:
        model = SpocoModel.new(replace(model_config or ModelConfig(), ndim=ndim, in_channels=channels),
                               seed=config.seed)
    elif model.config.ndim != ndim:
        from .pretrained import has_default_model

        shipped = (f", or use the shipped {ndim}D starting model (Default in the napari panel, --init default on "
                   "the command line)") if has_default_model(ndim) else ""
        raise SpocoError(
            f"The model is {model.config.ndim}D but the images are {ndim}D; start a new model, load one made for "
            f"{ndim}D images{shipped}."
        )
    if config.steps <= 0 and not config.minutes:
        raise SpocoError("Give a positive number of steps or minutes to train for.")
    device = select_device(config.device)
    precision = resolve_precision(config.precision, device, model.config.ndim, training=True)
    if device.type == "cpu" and os.cpu_count():
        torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    div = model.config.size_divisor
    patch = tuple(config.patch_shape) if config.patch_shape else default_patch_shape(
        ndim, [d.objects.shape for d in data], div
    )
    if len(patch) != ndim:
        raise SpocoError(
            f"Patch shape {patch} has {len(patch)} values but the images are {ndim}D; give {ndim} values."
        )
    if any(p % div for p in patch):
        raise SpocoError(f"Patch shape {patch} must be divisible by {div} for this network depth.")
    batch = config.batch_size or (8 if ndim == 2 else 2)
    sampler = PatchSampler(data, patch, config.object_fraction, seed=config.seed,
                           background_fraction=config.background_fraction)

    if model.config.in_channels != channels:
        # last of the set-up, so that a refused setting leaves the caller's model as it was;
        # input_channels() allowed only a one-channel model here
        model.widen_input(channels)
    model.to(device)
    student, teacher = model.student, model.teacher
    # Channels-last: forward+backward ~30 % faster on CPU, whole steps ~15 % (docs/benchmarks.md).
    fmt = (torch.channels_last if ndim == 2 else torch.channels_last_3d) if CHANNELS_LAST else torch.contiguous_format
    student.to(memory_format=fmt)
    teacher.to(memory_format=fmt)
    prints = [] if self_supervised else image_fingerprints(data)  # only supervised training records them
    if stable:  # protect only a start that already fits these objects (FITS_OBJECTS) ...
        fit = starting_fit(model, data, patch, batch, config, device, fmt)
        model.history["start_fit"] = round(fit, 3)
        # ... or a model fine-tuned on these very images before: it knows them, and the objects
        # painted since are the ones it gets wrong (docs/method.md, "Fine-tuning a trained model")
        again = bool(set(prints) & set(model.history.get("fine_tuned_on") or ()))
        model.history["stable_reason"] = "fits" if fit < FITS_OBJECTS else "same images" if again else None
        stable = fit < FITS_OBJECTS or again
    model.history["stable_start"] = stable
    if stable and not model.predicts_with_teacher:
        # The protected run predicts with its teacher: start it as the network that predicted
        # until now (the student of a first, unprotected round, whose teacher followed another
        # schedule and segments worse), so that training again continues from what the user saw.
        with torch.no_grad():
            teacher.load_state_dict(student.state_dict())
    model.history["precision"] = precision
    opt = torch.optim.Adam(student.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    total_steps = config.steps if config.steps > 0 else 10**9
    seconds = config.minutes * 60.0 if config.minutes else None
    if (self_supervised and started_from_model) or stable:
        # The teacher starts as a trained model: keep it close to that (the paper's fixed momentum,
        # 0.999).
        # Self-supervised, so that the student cannot drift with it towards the trivial
        # all-alike embedding; fine-tuning, so that it does not follow the student's first steps.
        def momentum(step: int) -> float:
            return config.ema_momentum
    else:
        def momentum(step: int) -> float:
            return ema_momentum(step, config.ema_momentum)
    history: list[dict[str, float]] = model.history.setdefault("losses", [])
    # Set before the first step so that previews during training size their fragment filter.
    sizes = [int((d.objects[box] == i).sum()) for d in data for i, box in enumerate(d.boxes, start=1)]
    if sizes:  # self-supervised runs keep what the model knew about object sizes
        model.history["object_size_median"] = float(np.median(sizes))  # at the network's scale
        # how convex the painted objects are: segment() splits far less convex pieces (shapes.py)
        painted = [d.objects for d in data]
        values = painted_solidities(painted)  # measured once for both percentiles
        model.history["object_solidity"] = painted_solidity(painted, values=values)
        # and how convex the typical one is: touching pieces whose union is as convex are joined
        model.history["object_solidity_median"] = painted_solidity(painted, 50, values=values)
        # whether (nearly) each has one peak where the shape split also takes outranked ones (shapes.py)
        model.history["single_peaked"] = single_peaked(painted, model.history["object_size_median"])
    share = paste_share_for(config, ndim, model.history.get("object_solidity")) if not self_supervised else 0.0
    model.history["paste_share"] = share
    sampler.enable_paste(share, config.ring_width)
    jitter = scale_jitter_for(config, len(sizes)) if not self_supervised else 1.0
    if not self_supervised:  # adaptation keeps the record of the last supervised run, as the sizes above
        model.history["scale_jitter"] = jitter
        model.history["scale_jitter_auto"] = config.scale_jitter is None
        model.history["painted_objects"] = len(sizes)
    sampler.enable_scale_jitter(jitter, config.ring_width)
    model.history["pixel_scale"] = scale
    model.history["voxel_size"] = list(voxel_size) if voxel_size is not None else None
    model.history["voxel_size_estimated"] = estimated
    if not self_supervised:  # set before the first step: previews segment with the predictor
        model.history["predict_with"] = "teacher" if stable else "student"
    warmup = config.consistency_warmup_steps if not stable else 0  # a trained teacher from step 1
    start = time.perf_counter()
    step = 0
    try:
        student.train()
        teacher.train()
        if stable:
            # Keep the starting model's normalisation: batch statistics of a few patches around
            # painted objects are not those of whole fields, and the teacher (an average of the
            # student's weights) would otherwise get the student's shifted statistics.
            for net in (student, teacher):
                for mod in net.modules():
                    if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                        mod.eval()
        bad_steps = 0
        while step < total_steps:
            elapsed = time.perf_counter() - start
            if seconds is not None and elapsed >= seconds:
                break
            if _stopped(stop):
                break
            frac = max(step / total_steps, elapsed / seconds if seconds else 0.0)
            lr = config.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
            if stable and config.warmup_steps > 0:  # Adam's first steps are full-size
                lr *= min(1.0, (step + 1) / config.warmup_steps)
            for g in opt.param_groups:
                g["lr"] = lr

            parts = sampler.batch(batch)
            geo = [random_geometry(rng, *sample) for sample in zip(*parts)]
            img, obj, bg, neg = (torch.from_numpy(np.stack(x)).to(device) for x in zip(*geo))
            x = img.contiguous(memory_format=fmt)
            view1 = random_intensity(x, gen)
            view2 = random_intensity(x, gen)

            with autocast(precision, device):
                out = student(view1)
            emb, fg = split_output(out.float(), model.config)
            teacher_emb = teacher_fg = None
            ramp = min(1.0, (step + 1) / max(1, warmup))
            loss_cfg = replace(config.loss, consistency_weight=config.loss.consistency_weight * ramp)
            if loss_cfg.consistency_weight > 0:
                with torch.inference_mode(), autocast(precision, device):
                    teacher_out = teacher(view2)
                teacher_emb, teacher_fg = split_output(teacher_out.float(), model.config)
                teacher_emb = teacher_emb.clone()
                teacher_fg = teacher_fg.clone() if teacher_fg is not None else None
            losses = spoco_loss(emb, obj, bg, loss_cfg, teacher_emb, fg, neg, gen,
                                teacher_fg if from_trained else None)
            if self_supervised and fg is not None and teacher_fg is not None:
                # Nothing else constrains the foreground head without labels: follow the teacher.
                losses["foreground"] = foreground_consistency_term(fg, teacher_fg)
                losses["total"] = losses["total"] + losses["foreground"]
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            # A finite loss can still give non-finite gradients (a bfloat16 backward that
            # overflows); one Adam step with them turns every weight it touches into NaN and the
            # model is lost. Such a step is skipped; several in a row count as divergence.
            if gradients_finite(student):
                opt.step()
                bad_steps = 0
            else:
                bad_steps += 1
                if bad_steps >= MAX_BAD_STEPS:
                    raise SpocoError(
                        f"Training diverged ({bad_steps} steps in a row gave NaN/inf gradients; the "
                        "weights were kept as they were before). Try --precision float32, a lower "
                        "learning rate, or check the images for extreme values."
                    )
            ema_update(teacher, student, momentum(step))
            step += 1

            record = {k: float(v.detach()) for k, v in losses.items()}
            if not math.isfinite(record["total"]):
                raise SpocoError(
                    "Training diverged (the loss became NaN/inf). Try a lower learning rate, or "
                    "check the images for extreme values."
                )
            history.append(record)
            elapsed = time.perf_counter() - start
            yield TrainProgress(
                step=step,
                total_steps=config.steps if config.steps > 0 else 0,
                losses=record,
                elapsed=elapsed,
                steps_per_second=step / max(elapsed, 1e-9),
                fraction=min(1.0, max(step / total_steps, elapsed / seconds if seconds else 0.0)),
                model=model,
            )
    finally:
        student.eval()
        teacher.eval()
        model.history["steps"] = model.history.get("steps", 0) + step
        model.history["seconds"] = model.history.get("seconds", 0.0) + time.perf_counter() - start
        model.history["train_config"] = config.to_dict()
        model.history["patch_shape"] = list(patch)
        model.to("cpu")
        student.to(memory_format=torch.contiguous_format)
        teacher.to(memory_format=torch.contiguous_format)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not self_supervised and step > 0:  # what the next train() on these images continues from
        model.history["fine_tuned_on"] = list(dict.fromkeys(prints + list(model.history.get("fine_tuned_on") or ())))[:MAX_FINGERPRINTS]
    if sizes and not self_supervised and step > 0:
        # Do the objects stand on background or fill the image? Both post-processings tried on
        # crops around the painted objects (layout.py; docs/method.md). Measured first, without
        # any growth (an earlier training's is dropped), because the edge below is measured on
        # the objects segment() returns, which the layout shapes.
        from .edges import edge_expand, growth_helps
        from .layout import measure_layout, segment_windows

        for key in ("edge_expand", "edge_scores", "edge_growth", "edge_growth_scores"):
            model.history.pop(key, None)
        windows = None  # crops around painted objects, embedded once for both measurements
        try:
            windows = segment_windows(model, data, seed=config.seed)
            model.history["layout"], model.history["layout_scores"] = measure_layout(model, data, config.seed, windows)
        except Exception as exc:  # noqa: BLE001  a failed measurement must not cost the trained model
            also = "" if windows is not None else " and does not grow objects"  # nothing segmented to fit the edge on
            warnings.warn(f"Could not measure how the objects lie ({type(exc).__name__}: {exc}); segmenting "
                          f"decides by the foreground fraction{also}.", stacklevel=2)
            model.history["layout"], model.history["layout_scores"] = None, {}
            windows = [] if windows is None else windows
        # Where do the objects segment() returns put the edge of the painted objects? segment()
        # grows objects by the best fit (edges.py; docs/method.md).
        try:
            model.history["edge_expand"], model.history["edge_scores"] = edge_expand(model, data, config.seed, windows)
        except Exception as exc:  # noqa: BLE001  as above: the trained model comes back either way
            warnings.warn(f"Could not fit the objects' edge to the painted ones ({type(exc).__name__}: {exc}); "
                          "segmenting does not grow objects.", stacklevel=2)
            model.history["edge_expand"], model.history["edge_scores"] = 0, []
        # Does growing objects into their uncertain edge fit the painted objects (edges.py)?
        try:
            model.history["edge_growth"], model.history["edge_growth_scores"] = growth_helps(model, windows)
        except Exception as exc:  # noqa: BLE001  as above
            warnings.warn(f"Could not check the growth into the objects' uncertain edge ({type(exc).__name__}: "
                          f"{exc}); segmenting applies it.", stacklevel=2)
    return model


def pretrain_config(**overrides) -> TrainConfig:
    """Defaults for self-supervised adaptation: 300 steps at the reference's learning rate
    (2e-4), five times below fine-tuning's, because there are no labels to correct a drift."""
    return replace(TrainConfig(steps=300, learning_rate=2e-4), **overrides)


def pretrain(
    images: Sequence[np.ndarray],
    config: TrainConfig | None = None,
    model: SpocoModel | None = None,
    model_config: ModelConfig | None = None,
    callback: Callable[[TrainProgress], None] | None = None,
    stop: threading.Event | Callable[[], bool] | None = None,
    names: Sequence[str] | None = None,
    channel_axis: int | None = None,
) -> SpocoModel:
    """Self-supervised adaptation to unlabelled images: the two-view consistency term alone
    (student vs. EMA teacher; docs/method.md, "Loss") on random patches, before anything is painted.

    Best started from a trained model (the shipped default): from a random network the
    consistency term alone is satisfied by embeddings that are all alike, which teaches
    nothing; from a trained one it adapts the features (and the normalisation statistics) to
    the new images' appearance. Started from a model, the teacher's momentum is fixed at
    ``config.ema_momentum`` and the foreground head follows the teacher's. ``config``
    defaults to :func:`pretrain_config`.
    """
    images = as_image_list(images, "images")
    steps = iter_train(images, [None] * len(images), config, model, model_config, stop, names, self_supervised=True,
                       channel_axis=channel_axis)
    return drain(steps, callback)
