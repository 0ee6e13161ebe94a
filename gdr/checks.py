"""Range checks for configuration values: one helper per kind of value, one message format everywhere.

Each returns the value (as ``float``/``int``) or raises `gdr.errors.ConfigError` in one line naming the
option, what it must be and what it got, e.g. ``sampler.eta must be a finite number in [0, 1], got nan``.
Booleans are never numbers here (``True`` is an ``int`` to Python, not to a user).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from gdr.errors import ConfigError


def _bounds(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ""


def number(name: str, value, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> float:
    """A finite real number within ``[low, high]`` (either end open, either end absent)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ConfigError(f"{name} must be a finite number {_bounds(low, high, low_open, high_open)}".rstrip()
                          + f", got {value!r}")
    return float(value)


def positive(name: str, value) -> float:
    """A finite number > 0."""
    return number(name, value, low=0, low_open=True)


def integer(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """An integer within ``[low, high]`` (either end absent)."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        raise ConfigError(f"{name} must be an integer {_bounds(low, high, False, False)}".rstrip() + f", got {value!r}")
    return value


def auto_or_integer(name: str, value, *, low: int | None = None, high: int | None = None) -> int | str:
    """``"auto"`` or an integer within ``[low, high]``; a string of digits (a CLI value) is read as the integer."""
    if value == "auto":
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok:
        try:
            return integer(name, value, low=low, high=high)
        except ConfigError:
            pass
    raise ConfigError(f"{name} must be auto or an integer {_bounds(low, high, False, False)}".rstrip() + f", got {value!r}")


def choice(name: str, value, choices: Iterable):
    """One of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        listed = " or ".join(map(repr, choices)) if len(choices) <= 2 else "one of " + ", ".join(map(repr, choices))
        raise ConfigError(f"{name} must be {listed}, got {value!r}")
    return value
