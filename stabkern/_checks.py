"""One argument policy for every public function of stabkern (ops, modules, compressors, meters).

- An integer argument takes a Python int or a numpy integer; never a bool, never a float (even
  2.0), never a 0-d tensor: anything else is a TypeError that names the argument.
- A real argument takes an int, a float, a numpy integer or a numpy float; never a bool.
- A value out of range is a ValueError that names the argument and the range.

Every checker returns the value as a plain Python int or float, so callers never see numpy scalars.
This module knows nothing of torch beyond what a tensor check needs.
"""

from __future__ import annotations

import math
import numbers

MASK32 = 0xFFFFFFFF


def _is_numpy_scalar(value, kind) -> bool:
    """value is a numpy scalar of `kind` (np.integer or np.floating), without importing numpy eagerly."""
    if type(value).__module__ != "numpy":
        return False
    import numpy as np

    return isinstance(value, kind(np))


def as_int(name: str, value) -> int:
    """value as a Python int (int or numpy integer), else a TypeError naming `name`."""
    if isinstance(value, bool) or _is_numpy_scalar(value, lambda np: np.bool_):
        raise TypeError(f"{name} must be an int, got a bool ({value!r})")
    if isinstance(value, int):
        return int(value)
    if _is_numpy_scalar(value, lambda np: np.integer):
        return int(value)
    raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """value as an int in [low, high) (either bound may be None: unbounded), else TypeError / ValueError."""
    value = as_int(name, value)
    if (low is not None and value < low) or (high is not None and value >= high):
        lo = "-inf" if low is None else _readable(low)
        hi = "inf" if high is None else _readable(high)
        raise ValueError(f"{name} must be in [{lo}, {hi}), got {value}")
    return value


def check_positive_int(name: str, value) -> int:
    """value as an int >= 1."""
    return check_int(name, value, 1)


def as_float(name: str, value) -> float:
    """value as a Python float (int, float, numpy integer or floating), else a TypeError naming `name`."""
    if isinstance(value, bool) or _is_numpy_scalar(value, lambda np: np.bool_):
        raise TypeError(f"{name} must be a number, got a bool ({value!r})")
    if isinstance(value, (int, float)) or _is_numpy_scalar(value, lambda np: (np.integer, np.floating)):
        return float(value)
    if isinstance(value, numbers.Real) and not hasattr(value, "shape"):
        return float(value)
    raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")


def check_float(name: str, value, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> float:
    """value as a finite float in the given range (closed bounds unless *_open), else TypeError / ValueError."""
    value = as_float(name, value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        lo = "(-inf" if low is None else f"{'(' if low_open else '['}{low:g}"
        hi = "inf)" if high is None else f"{high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {lo}, {hi}, got {value}")
    return value


def check_positive(name: str, value) -> float:
    """value as a finite float > 0."""
    return check_float(name, value, 0.0, low_open=True)


def check_seed(value, name: str = "seed") -> int:
    """A seed in [0, 2^64)."""
    return check_int(name, value, 0, 1 << 64)


def check_choice(name: str, value, choices) -> str:
    """value, one of `choices` (strings), else a ValueError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def check_names(name: str, value) -> list | None:
    """None, or a list/tuple of names or modules; a bare string is refused (it would be read letter by letter)."""
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError(f"{name} must be a list of layer names, got the string {value!r}; "
                        f"write {name}=[{value!r}]")
    try:
        return list(value)
    except TypeError:
        raise TypeError(f"{name} must be a list of layer names or modules, got {type(value).__name__}") from None


def _readable(bound: int) -> str:
    """2^k for powers of two from 2^16 on, else the number."""
    if bound >= 1 << 16 and bound & (bound - 1) == 0:
        return f"2^{bound.bit_length() - 1}"
    return str(bound)
