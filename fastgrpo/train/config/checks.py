"""Value checks shared by the config sections: each raises one ``ValueError`` naming the dotted key and the fix."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

__all__ = ["check_bool", "check_choice", "check_int", "check_number", "check_optional_str"]


def check_int(key: str, value: Any, minimum: int, why: str = "") -> None:
    """``value`` is an int (not a bool) ``>= minimum``; ``why`` is appended to the message as the reason."""
    reason = f" ({why})" if why else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer >= {minimum}{reason}: got {value!r}")
    if value < minimum:
        raise ValueError(f"{key} must be >= {minimum}{reason}: got {value!r}")


def check_number(
    key: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    hint: str = "",
) -> None:
    """``value`` is a finite int/float in the interval given by ``low``/``high`` (closed unless ``*_open``)."""
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    interval = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    example = f" ({hint})" if hint else ""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number in {interval}{example}: got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ValueError(f"{key} must lie in {interval}{example}: got {value!r}")


def check_bool(key: str, value: Any) -> None:
    """``value`` is ``true`` or ``false`` (YAML booleans; ``1``/``"yes"`` strings are refused)."""
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false: got {value!r}")


def check_choice(key: str, value: Any, choices: Collection[Any]) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        listed = ", ".join(repr(c) if c is not None else "null" for c in choices)
        raise ValueError(f"{key} must be one of {listed}: got {value!r}")


def check_optional_str(key: str, value: Any, what: str) -> None:
    """``value`` is null or a non-empty string; ``what`` says what the string names."""
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"{key} must be null or a non-empty string ({what}): got {value!r}")
