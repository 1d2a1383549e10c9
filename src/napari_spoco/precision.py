"""Number format of the network: bfloat16 convolutions where the hardware has them.

A CPU with native bfloat16 instructions (AVX-512 BF16 or AMX, as on recent AMD EPYC and Intel
Xeon) or a GPU that supports it runs the network's convolutions in bfloat16 under
``torch.autocast``, in a fraction of the time (and, for inference, of the memory); the weights, the optimiser
and the loss stay in float32, so nothing a model file holds changes. Where the instructions are
missing, bfloat16 is emulated and slower than float32, so ``auto`` keeps float32 there.
Segmentation defaults to ``auto`` (:data:`INFERENCE_PRECISION`): a 3D volume takes half the
time with the same objects, and a forward pass needs 0.42x the memory, so its tiles may be
twice as large (:func:`tile_voxels`); a 2D Segment with its four mirrored views takes 0.53-0.63x
the time with the same objects (agreement 0.997-1.000; 2D kept float32 until the views made the
network most of a Segment). Training defaults to ``auto`` too: a 3D network makes 1.8x the steps
in a time budget, a 2D one 1.4x; over three seeds they trained as well or better on the 2D sets and
the packed 3D nuclei, and 0.045 AP50 lower on cells3d (one nucleus in its 15-17).
docs/method.md, "Number format", gives the measurements.
"""

from __future__ import annotations

import contextlib

import torch

from .errors import SpocoError

#: ``auto``: bfloat16 where the device runs it natively, else float32.
PRECISIONS = ("auto", "float32", "bfloat16")
#: What segmentation uses unless told otherwise (training: ``TrainConfig.precision``, also auto).
INFERENCE_PRECISION = "auto"


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions in hardware (not emulated)."""
    try:
        if device.type == "cuda":
            return bool(torch.cuda.is_bf16_supported())
        if device.type == "cpu":
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # an older or trimmed torch build: assume not
        return False
    return False


def check_precision(precision: str) -> str:
    """A known precision name, or a clear error."""
    if precision not in PRECISIONS:
        raise SpocoError(f"Precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    return precision


def resolve_precision(precision: str, device: torch.device, ndim: int | None = None, training: bool = False) -> str:
    """``float32`` or ``bfloat16``: what ``precision`` means on ``device`` for a network of
    ``ndim`` spatial axes (None: any), for training or segmentation (the two agree since
    2026-12-03; until then a 2D network segmented in float32). ``auto`` is bfloat16 where the
    device has it natively. An explicit
    ``bfloat16`` is honoured even where it is emulated (slow, but the user asked for it);
    devices without bfloat16 autocast (MPS) get float32."""
    precision = check_precision(precision)
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    if precision == "bfloat16" and device.type not in ("cpu", "cuda"):
        return "float32"
    return precision


def autocast(precision: str, device: torch.device):
    """A context in which the network runs in ``precision`` (already resolved)."""
    if precision == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def tile_voxels(voxels: int, precision: str) -> int:
    """The largest tile for a float32 budget of ``voxels`` in ``precision`` (already resolved):
    twice as many in bfloat16, whose forward pass takes 0.42x the memory (405 against 964 MB for
    a 1.6 M-voxel tile of the 3D network; docs/benchmarks.md, "Segmenting in bfloat16"). Larger
    tiles overlap less: a 60x256x256 volume took 0.71x the embedding time in 4 tiles, not 12."""
    return voxels * 2 if precision == "bfloat16" else voxels
