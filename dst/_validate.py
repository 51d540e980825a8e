"""Argument checks shared by every public entry point.

Numpy scalars (`np.int64(3)`, `np.float32(0.5)`) are accepted as the Python
number they hold; bools, strings, NaN and infinities are refused with a
message that names the function, the argument and the value.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["as_int", "as_float", "as_bool"]


def as_int(value, name: str, where: str, *, minimum: int | None = None) -> int:
    """`value` as a Python int, or a ValueError naming `where` and `name`."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or (minimum is not None and int(value) < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(
            f"`{name}` must be an int{bound} for {where}. Received: {name}={value!r}"
            + (f" of type {type(value).__name__}" if not ok else "")
        )
    return int(value)


def as_float(value, name: str, where: str, *, low: float | None = None,
             high: float | None = None, low_open: bool = False,
             high_open: bool = False) -> float:
    """`value` as a finite Python float within the given bounds.

    Raises a ValueError such as "`sparsity` must be in [0, 1) for
    dst.sparsify. Received: sparsity=1.2" for a value out of bounds, NaN, an
    infinity, a bool or a non-number (whose type the message adds).
    """
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    try:
        number = float(value) if real else math.nan
    except OverflowError:  # an int too large for a float
        number = math.inf
    ok = math.isfinite(number)
    if ok and low is not None:
        ok = number > low if low_open else number >= low
    if ok and high is not None:
        ok = number < high if high_open else number <= high
    if ok:
        return number
    raise ValueError(
        f"`{name}` must be {_bounds(low, high, low_open, high_open)} for {where}. "
        f"Received: {name}={value!r}"
        + ("" if real else f" of type {type(value).__name__}")
    )


def as_bool(value, name: str, where: str) -> bool:
    """`value` as a Python bool (numpy bools too), or a ValueError."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(
            f"`{name}` must be True or False for {where}. Received: "
            f"{name}={value!r} of type {type(value).__name__}"
        )
    return bool(value)


def _bounds(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return (f"in {'(' if low_open else '['}{low:g}, "
                f"{high:g}{')' if high_open else ']'}")
    if low is not None:
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"a finite number {'<' if high_open else '<='} {high:g}"
    return "a finite number"


def as_end_step(value: object, begin_step: int, who: str) -> int | float | None:
    """An updater's `end_step`: None, an int step not before `begin_step`, or
    a float in (0, 1] (a fraction of the fit's steps)."""
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        end = as_int(value, "end_step", who, minimum=0)
        if end < begin_step:
            raise ValueError(
                f"`end_step` must not be before `begin_step` for {who}. Received: "
                f"end_step={value!r}, begin_step={begin_step!r}"
            )
        return end
    return as_float(value, "end_step", who + " (a float end_step is a fraction of the "
                    "fit's steps)", low=0.0, high=1.0, low_open=True)
