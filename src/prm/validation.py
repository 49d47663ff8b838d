"""One-line checks of numeric settings, shared by the configurations and the CLI."""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_number"]


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    integer: bool = False,
    exclusive: bool = False,
    exclusive_max: bool = False,
) -> None:
    """Raise a one-line ``ValueError`` unless ``value`` is a finite number in range.

    Args:
        name: the setting's name, for the message.
        value: the value to check (bools and strings are not numbers).
        minimum / maximum: bounds (inclusive unless ``exclusive`` / ``exclusive_max``).
        integer: the value must be an integer.
    """
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, numbers.Integral if integer else numbers.Real)
    if isinstance(value, bool) or not ok_type:
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        raise ValueError(f"{name} must be {'>' if exclusive else '>='} {minimum}, got {value!r}")
    if maximum is not None and (value >= maximum if exclusive_max else value > maximum):
        raise ValueError(
            f"{name} must be {'<' if exclusive_max else '<='} {maximum}, got {value!r}"
        )
