"""Small argument checks shared by the public classes, with messages that say what was expected."""

from __future__ import annotations

import math
import numbers


def check_number(name: str, value: object, *, positive: bool = False) -> float:
    """A finite real ``value`` (>= 0, or > 0 if ``positive``), else ``ValueError`` naming ``name``.

    Any real number type is accepted (``float``, ``int``, NumPy scalars); ``bool`` is not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}.")
    return float(value)


def check_count(name: str, value: object) -> int:
    """A positive integer ``value`` (any integer type, not ``bool``), else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)
