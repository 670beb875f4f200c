"""
Values to and from text: what the file and command backends exchange with the device.

One place for the formats, so a sysfs file and a command agree:

  - a number is written compactly: C{42}, not C{42.0}; C{0.25}; at most 12
    significant digits, so C{0.1 * 3} is C{0.3};
  - a number read is the first line's text as a float (C{inf} and C{nan}
    refused: a device never means them);
  - a sensor with a unit reads a number; without one, a number when the line
    is one, else the line's text (bounded, so a runaway file cannot fill the
    events every operator receives).
"""

from __future__ import annotations

import math
from collections.abc import Collection

from boatwist.controls.spec import ControlSpec, ControlType, Value
from boatwist.controls.backends.base import BackendError

__all__ = ["MAX_TEXT", "first_line", "format_number", "one_line", "parse_number", "parse_reading", "shown"]

#: The longest text a sensor reports, characters.
MAX_TEXT = 256


def format_number(value: float) -> str:
    """C{42} for 42.0, C{0.3} for 0.1 * 3, C{-1.5} for -1.5."""
    nearest = round(value)
    if abs(value - nearest) <= 1e-9 * max(1.0, abs(value)):
        return str(int(nearest))
    return f"{value:.12g}"


def tidy(value: float) -> float:
    """A float without binary noise: 23.5 for 235 * 0.1, 0.3 for 3 * 0.1."""
    return float(f"{value:.12g}")


def first_line(text: str) -> str:
    """The first line, stripped of surrounding white space."""
    return text.strip().split("\n", 1)[0].strip()


def one_line(text: str, limit: int = 200) -> str:
    """The first line of C{text}, control characters replaced, cut at C{limit}."""
    line = "".join(c if c.isprintable() else "?" for c in first_line(text))
    return line if len(line) <= limit else line[:limit] + "..."


def shown(text: str, limit: int = 40) -> str:
    """C{text} quoted for an error line, cut at C{limit} characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_number(text: str) -> float | None:
    """The finite float C{text} spells, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_reading(
    control: ControlSpec,
    text: str,
    *,
    where: str,
    on: Collection[str],
    off: Collection[str],
    scale: float = 1.0,
) -> Value:
    """
    The value C{text} (a file's content, a command's stdout) holds for C{control}.

    @param where: names the source in errors (a path, a program).
    @param on: the words that mean on for a switch, compared after stripping.
    @param off: likewise for off.
    @param scale: a number read is multiplied by it.
    @raise BackendError: the text is not a value of the control's type.
    """
    line = first_line(text)
    kind = control.type
    if kind is ControlType.SWITCH:
        word = line.lower()
        if word in on:
            return True
        if word in off:
            return False
        expected = " or ".join(repr(w) for w in (*on, *off))
        raise BackendError(f"{where}: read {shown(line)}, expected {expected}")
    if kind is ControlType.CHOICE:
        if line in control.choices:
            return line
        raise BackendError(f"{where}: read {shown(line)}, expected one of {', '.join(control.choices)}")
    if kind is ControlType.ACTION:
        return None
    number = parse_number(line)
    if number is not None:
        return tidy(number * scale)
    if kind is ControlType.SENSOR and not control.unit:
        return line[:MAX_TEXT]
    raise BackendError(f"{where}: read {shown(line)}, expected a number")
