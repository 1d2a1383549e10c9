"""Number format of the training steps: bfloat16 convolutions where the hardware has them.

A CPU with native bfloat16 instructions (AVX-512 BF16 or AMX, as on recent AMD EPYC and Intel
Xeon) or a GPU that supports it runs the network's convolutions in bfloat16 under
``torch.autocast``, at the same memory and a fraction of the time; the weights, the optimiser
and the loss stay in float32, so nothing a model file holds changes. Where the instructions are
missing, bfloat16 is emulated and slower than float32, so ``auto`` keeps float32 there.
Training defaults to float32 until bfloat16 is shown to train as well at the same budget;
docs/method.md, "Number format of training", gives the measurements.
"""

from __future__ import annotations

import contextlib

import torch

from .errors import SpocoError

#: ``auto``: bfloat16 where the device runs it natively, else float32.
PRECISIONS = ("auto", "float32", "bfloat16")


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """``float32`` or ``bfloat16``: what ``precision`` means on ``device``. An explicit
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
