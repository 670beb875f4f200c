"""
What every backend is: read, write, close -- never blocking, always bounded.

A backend turns the hardware's representation into a control's L{Value}
and back (a sysfs file's C{"1\\n"}, a holding register's 16 bits times its
scale, a command's stdout).  The operation pipeline knows nothing of files,
processes or Modbus: it calls these three methods and reads the outcome.

Rules every backend keeps:

  - nothing runs on the reactor thread that can block (file and Modbus I/O
    run on a L{boatwist.workers.ThreadRunner}; commands are child processes);
  - every call fails with L{boatwist.workers.TimedOut} after the control's
    C{timeout}, and the work behind it is bounded too (a socket timeout, a
    killed process), so a hung device never piles up work;
  - every other failure is a L{BackendError} whose message is one line a
    person can act on ("/sys/class/leds/x/brightness: permission denied",
    "exit status 1: valve stuck", "modbus tcp:10.0.0.5:502: connection
    refused"); it is what operators read next to the control.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred

from boatwist.controls.spec import Value

__all__ = ["Backend", "BackendError"]


class BackendError(Exception):
    """The hardware could not be reached or refused; C{str()} is the line people read."""


class Backend(Protocol):
    #: Whether L{read} gives the device's value (False: a write-only command;
    #: the value shown is then the last one written).
    readable: bool

    def read(self) -> Deferred[Value]:
        """The control's current value, from the device."""

    def write(self, value: Value) -> Deferred[None]:
        """Set C{value} (already validated for the control's type; None for an action)."""

    def close(self) -> Deferred[None]:
        """Release what the backend holds (connections, threads); called once, at stop."""
