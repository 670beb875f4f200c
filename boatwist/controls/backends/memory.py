"""
The C{memory} backend: a value boatwist keeps itself (set-points, demos).

There is no hardware behind it: a write sets the value, a read returns it,
both at once.  Persistence is the operation pipeline's: it records every
operation in SQLite and, at start, hands the last recorded value back as
C{restored}.  A restored value that the control's declaration no longer
allows (a choice removed from C{choices}, a number now outside min..max or
off the step grid, a value of the wrong type) is dropped for the declared
C{initial}, so editing the INI can never leave a control holding a value
the UI cannot show.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.defer import Deferred

from boatwist.controls.spec import ControlSpec, ControlType, MemorySpec, Value
from boatwist.controls.values import on_grid

__all__ = ["MemoryBackend", "allowed"]


def allowed(control: ControlSpec, value: Value) -> bool:
    """Whether C{value} is one C{control} may hold, as its declaration says now."""
    kind = control.type
    if kind is ControlType.ACTION:
        return value is None
    if kind is ControlType.SWITCH:
        return isinstance(value, bool)
    if kind is ControlType.CHOICE:
        return isinstance(value, str) and value in control.choices
    if kind is ControlType.NUMBER:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        low, high, step = control.min, control.max, control.step
        if low is None or high is None or not low <= value <= high:
            return False
        return not step or on_grid(value, low, step)
    return False  # a sensor is never kept in memory


class MemoryBackend:
    """Holds the value; never fails, never waits."""

    readable = True

    def __init__(self, control: ControlSpec, restored: Value = None) -> None:
        spec = control.backend
        if not isinstance(spec, MemorySpec):
            raise TypeError(f"{control.name}: not a memory control")
        self._value: Value = restored if restored is not None and allowed(control, restored) else spec.initial

    def read(self) -> Deferred[Value]:
        return defer.succeed(self._value)

    def write(self, value: Value) -> Deferred[None]:
        self._value = value
        return defer.succeed(None)

    def close(self) -> Deferred[None]:
        return defer.succeed(None)
