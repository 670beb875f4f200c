"""
A control's value as it arrives (JSON from the API, a word on the chat port),
checked against the control's declaration.

    switch   JSON true / false; chat on / off (also 1/0, true/false, yes/no)
    number   a JSON number or a numeric string; within min..max, on the step
             grid from min; NaN and infinities refused
    choice   one of the choices, exactly
    action   no value (JSON null or absent; nothing after /set NAME)
    sensor   read-only: never operated

Every refusal is a L{BadValue} whose message says what was wrong and what
is allowed, which the API answers with 400 and the chat port shows as is.
"""

from __future__ import annotations

import math

from boatwist.controls.spec import ControlSpec, ControlType, Value
from boatwist.inivalues import boolean

__all__ = ["BadValue", "allowed", "from_json", "from_text", "on_grid"]

class BadValue(ValueError):
    """The value cannot be taken; C{str()} says why and what is allowed."""


def on_grid(value: float, low: float, step: float) -> bool:
    """Is C{value} C{low} plus a whole number of C{step}s (within float noise)?"""
    k = (value - low) / step
    return abs(k - round(k)) <= 1e-9 * max(1.0, abs(k))


def allowed(spec: ControlSpec) -> str:
    """What C{spec} takes, in words: C{"on or off"}, C{"a number from 0 to 100 in steps of 0.5 (°C)"}."""
    kind = spec.type
    if kind is ControlType.SWITCH:
        return "on or off (true or false in JSON)"
    if kind is ControlType.CHOICE:
        return "one of " + ", ".join(spec.choices)
    if kind is ControlType.ACTION:
        return "no value (it is a button)"
    if kind is ControlType.SENSOR:
        return "nothing: it is a sensor, read and never operated"
    text = f"a number from {spec.min:g} to {spec.max:g}"
    if spec.step:
        text += f" in steps of {spec.step:g}"
    return text + (f" ({spec.unit})" if spec.unit else "")


def _refuse(spec: ControlSpec, got: str) -> BadValue:
    return BadValue(f"{spec.name}: {got} is not allowed: expected {allowed(spec)}")


def _number(spec: ControlSpec, value: float, shown: str) -> float:
    if not math.isfinite(value):
        raise _refuse(spec, shown)
    assert spec.min is not None and spec.max is not None  # config requires them for a number
    if not spec.min <= value <= spec.max or (spec.step and not on_grid(value, spec.min, spec.step)):
        raise _refuse(spec, shown)
    return float(value)


def from_json(spec: ControlSpec, raw: object) -> Value:
    """The value of C{{"value": raw}} for C{spec}, or L{BadValue}."""
    kind = spec.type
    if kind is ControlType.SENSOR:
        raise BadValue(f"{spec.name} is a sensor: it is read, never operated")
    if kind is ControlType.ACTION:
        if raw is not None:
            raise _refuse(spec, _show(raw))
        return None
    if kind is ControlType.SWITCH:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str):
            return from_text(spec, raw)
        raise _refuse(spec, _show(raw))
    if kind is ControlType.CHOICE:
        if isinstance(raw, str) and raw in spec.choices:
            return raw
        raise _refuse(spec, _show(raw))
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise _refuse(spec, _show(raw))
    if isinstance(raw, str):
        return from_text(spec, raw)
    return _number(spec, float(raw), _show(raw))


def from_text(spec: ControlSpec, text: str) -> Value:
    """The value a chat line (C{/set NAME VALUE}) or a string gives C{spec}, or L{BadValue}."""
    kind = spec.type
    word = text.strip()
    if kind is ControlType.SENSOR:
        raise BadValue(f"{spec.name} is a sensor: it is read, never operated")
    if kind is ControlType.ACTION:
        if word:
            raise _refuse(spec, _show(word))
        return None
    if kind is ControlType.SWITCH:
        try:
            return boolean(word)  # on/off, yes/no, true/false, 1/0: as the INI spells them
        except ValueError:
            raise _refuse(spec, _show(word)) from None
    if kind is ControlType.CHOICE:
        if word in spec.choices:
            return word
        raise _refuse(spec, _show(word))
    try:
        number = float(word)
    except ValueError:
        raise _refuse(spec, _show(word)) from None
    return _number(spec, number, _show(word))


def _show(raw: object) -> str:
    """A refused value as the message quotes it, cut short."""
    text = repr(raw) if not isinstance(raw, bool) else ("true" if raw else "false")
    if raw is None:
        text = "no value"
    return text if len(text) <= 40 else text[:40] + "..."
