"""
Parsers of INI values that more than one section's module uses: each takes
the value's text and returns the value, or raises C{ValueError} with the
"expected ..." half of the message; the loader that knows file, line and
key (L{boatwist.config.load_config}) says the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

__all__ = ["boolean", "optional_path", "whole_number"]

_TRUE = frozenset({"1", "yes", "true", "on"})
_FALSE = frozenset({"0", "no", "false", "off"})


def boolean(text: str) -> bool:
    """yes/no, true/false, on/off, 1/0, in any case."""
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected yes or no")


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """A parser of a whole number from C{low} to C{high} (decimal digits only)."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise ValueError(f"expected a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value

    return parse


def optional_path(text: str) -> Path | None:
    """A path, or None when the value is empty (the default applies)."""
    return Path(text) if text else None
