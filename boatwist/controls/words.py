"""
Operations and floor changes as the one line everyone reads.

The chat port shows every C{control} and C{floor} event as a line, and the
audit log and the server log use the same words:

    alice set pump to on (was off)
    alice set setpoint to 21.5 °C (was 20 °C)
    alice pressed reset
    bob could not set valve to open: timed out after 2 s
    pump set to off (safe state: alice is offline, no answer to keepalive probes)
    pump set to off (safe state: bob is offline, removed by alice)
    pump set to off (safe state: carol left)
    !! pump could not be set to its safe value off: exit status 1: relay stuck (safe state: alice ...)
    alice took the floor
    the floor is free: alice is offline (no answer to keepalive probes, detected after 3.1 s)

Values are shown as operators type them on the chat port: a switch is
C{on}/C{off}, a number compactly with its unit.
"""

from __future__ import annotations

from typing import Any, Mapping

from boatwist.controls.floor import FloorEvent, describe
from boatwist.reasons import Reason, words_for
from boatwist.textsafe import clean_message

__all__ = ["floor_line", "format_value", "operation_line"]


def format_value(value: object, unit: str = "") -> str:
    """A value as typed on the chat port: on/off, 21.5, 'open'; with the unit when there is one."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "-"
    text = f"{value:.6g}" if isinstance(value, float) else clean_message(str(value))
    return f"{text} {unit}" if unit else text


def operation_line(data: Mapping[str, Any]) -> str:
    """A C{control} event (an operation, done or failed; its C{type} is the control's) as one line."""
    user = clean_message(str(data.get("user") or "?"))
    control = clean_message(str(data.get("control") or "?"))
    unit = clean_message(str(data.get("unit") or ""))
    value = format_value(data.get("value"), unit)
    ok = data.get("result") == "ok"
    error = clean_message(str(data.get("error") or "failed"))
    if data.get("via") == "safe-state":
        cause = "safe state: " + _vanished(user, data)
        if ok:
            return f"{control} set to {value} ({cause})"
        return f"!! {control} could not be set to its safe value {value}: {error} ({cause})"
    if data.get("type") == "action":
        return f"{user} pressed {control}" if ok else f"{user} could not press {control}: {error}"
    if not ok:
        return f"{user} could not set {control} to {value}: {error}"
    old = data.get("old")
    was = f" (was {format_value(old, unit)})" if old is not None else ""
    return f"{user} set {control} to {value}{was}"


def _vanished(user: str, data: Mapping[str, Any]) -> str:
    """
    Why the safe state was called for, from a safe-state operation's
    C{reason} and C{by}: C{alice is offline, no answer to keepalive probes},
    C{alice left}, C{bob is offline, removed by alice}.
    """
    reason = str(data.get("reason") or "")
    if not reason:
        return f"{user} vanished"
    if reason == Reason.CLOSED.value:
        return f"{user} left"  # not "alice is offline, left"
    by = data.get("by")
    if reason == Reason.KICKED.value and by:
        return f"{user} is offline, removed by {clean_message(str(by))}"
    return f"{user} is offline, {words_for(reason) or clean_message(reason)}"


def floor_line(data: Mapping[str, Any]) -> str:
    """A C{floor} event as one line (L{boatwist.controls.floor.describe})."""
    return clean_message(describe(FloorEvent.from_data(data)))
