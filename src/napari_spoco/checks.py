"""Field checks shared by the configuration dataclasses: one message format for every bad value
("TrainConfig.batch_size = 0: expected a whole number >= 1, or None")."""

from __future__ import annotations

import math

import numpy as np

from .errors import SpocoError


def is_whole(value) -> bool:
    """An int (numpy ints included), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float (numpy scalars included), not a bool."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


#: The largest training seed: NumPy's and torch's generators take non-negative seeds (torch up
#: to 2**64 - 1), and sub-streams add small offsets to it (the patch sampler's ``seed + 7919``).
SEED_MAX = 2**62


def check_field(
    owner: object,
    name: str,
    expected: str,
    *,
    whole: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> None:
    """Raise a :class:`SpocoError` naming ``owner``'s field ``name`` unless its value is a
    number (``whole``: an integer) within ``low``/``high`` (open where asked); ``optional``
    accepts None."""
    value = getattr(owner, name)
    if optional and value is None:
        return
    ok = is_whole(value) if whole else is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise SpocoError(f"{type(owner).__name__}.{name} = {value!r}: expected {expected}.")
