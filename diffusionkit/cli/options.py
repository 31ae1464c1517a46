"""Option converters shared by the subcommands: each raises ``ValueError`` with a clear message.

The converters accept both command-line strings and JSON values (from ``--config`` files), so
one table of options validates both.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

__all__ = [
    "choice",
    "int_list",
    "number",
    "optional",
    "positive_int",
    "probability",
]


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise argparse.ArgumentTypeError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be an integer, got {value!r}") from None


def positive_int(minimum: int = 1, maximum: int | None = None) -> Callable[[Any], int]:
    """An integer in ``[minimum, maximum]``."""

    def convert(value: Any) -> int:
        n = _int(value, "value")
        if n < minimum or (maximum is not None and n > maximum):
            bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, got {n}")
        return n

    return convert


def number(
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    open_min: bool = False,
    open_max: bool = False,
) -> Callable[[Any], float]:
    """A finite float in a (half-)open or closed interval."""

    def convert(value: Any) -> float:
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be a number, got {value!r}") from None
        low_ok = minimum is None or (x > minimum if open_min else x >= minimum)
        high_ok = maximum is None or (x < maximum if open_max else x <= maximum)
        if not math.isfinite(x) or not low_ok or not high_ok:
            lo = "-inf" if minimum is None else f"{minimum:g}"
            hi = "inf" if maximum is None else f"{maximum:g}"
            interval = f"{'(' if open_min or minimum is None else '['}{lo}, {hi}{')' if open_max or maximum is None else ']'}"
            raise argparse.ArgumentTypeError(f"must be a number in {interval}, got {value!r}")
        return x

    return convert


def probability(value: Any) -> float:
    """A probability in ``[0, 1)``."""
    return number(0.0, 1.0, open_max=True)(value)


def int_list(minimum: int = 0) -> Callable[[Any], list[int]]:
    """A comma-separated list (or JSON list) of integers >= ``minimum``; ``"none"`` is empty."""

    def convert(value: Any) -> list[int]:
        if isinstance(value, list | tuple):
            items = list(value)
        else:
            text = str(value).strip()
            if text.lower() in ("", "none"):
                return []
            items = [part for part in text.replace(" ", "").split(",") if part]
        out = [_int(item, "each entry") for item in items]
        if any(n < minimum for n in out):
            raise argparse.ArgumentTypeError(f"entries must be integers >= {minimum}, got {out}")
        return out

    return convert


def choice(*names: str) -> Callable[[Any], str]:
    """One of ``names`` (case-insensitive)."""

    def convert(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in names:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(names)}; got {value!r}")
        return text

    return convert


def optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``convert``, or ``None`` for ``None``/``"none"``."""

    def wrapped(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
            return None
        return convert(value)

    return wrapped
