"""
The C{file} backend: a device file -- sysfs LEDs and GPIO, thermal zones, any file.

Formats:

  - switch: writes the C{on} / C{off} text (default C{1} / C{0}); reads the
    file, strips it and compares; anything else is an error naming what was
    read (C{"/sys/class/leds/x/brightness: read '255', expected '1' or '0'"});
  - number, sensor: the first line as a float times C{scale}; a number is
    written divided by C{scale}, compactly (C{42}, never C{42.0});
  - choice: writes the choice's name; reads it back, which must be one of
    C{choices};
  - sensor without a unit: a number when the first line is one, else the
    line's text (at most 256 characters);
  - a sensor with C{field = N} reads the N-th white-space separated field of
    the first line (C{/proc/loadavg}'s first field: the 1-minute load);
  - action: writes the C{on} text (a trigger file: C{echo 1 > .../reset}).

A write is one C{write(2)} of the text and a newline, as C{echo} does: sysfs
takes a value in a single write.  The file is opened without C{O_CREAT}: a
misspelt path is an error, not a new file.  A read takes at most 4 KiB, in
one C{read(2)}.  Reading back after a write is the pipeline's step, not this
backend's.

Errors are one line, the path and the reason: C{"PATH: no such file"},
C{"PATH: permission denied"}, C{"PATH: invalid argument (the device refused
the value)"}.

Threads: each file control has its own L{ThreadRunner} (one thread).  A
read on a hung NFS mount or a wedged sysfs driver cannot be interrupted;
with a thread per control it holds only that control, and the calls queued
behind it are dropped at their deadlines (L{BoundedCalls}).  A device has a
handful of file controls, so a handful of idle threads is the price; a
shared pool would let one hung file starve all the others.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from boatwist.workers import Runner
from boatwist.controls.spec import ControlSpec, ControlType, FileSpec, Value
from boatwist.controls.backends._bounded import BoundedCalls
from boatwist.controls.backends._text import format_number, parse_reading
from boatwist.controls.backends.base import BackendError

__all__ = ["MAX_READ", "FileBackend", "describe_os_error"]

#: The most a read takes from the file, bytes.
MAX_READ = 4096

_REASONS = {
    errno.ENOENT: "no such file",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "a parent is not a directory",
    errno.EINVAL: "invalid argument (the device refused the value)",
    errno.EBUSY: "device busy",
    errno.EIO: "input/output error",
    errno.ENODEV: "no such device",
    errno.ENXIO: "no such device",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.ETIMEDOUT: "timed out",
    errno.EAGAIN: "not ready (try again)",
}


def describe_os_error(path: object, error: OSError) -> str:
    """C{"PATH: reason"}: one line a person can act on."""
    code = error.errno
    reason = _REASONS.get(code) if code is not None else None
    if reason is None:
        reason = (os.strerror(code) if code is not None else str(error)).lower()
    return f"{path}: {reason}"


class FileBackend:
    readable = True
    _log = Logger()

    def __init__(
        self,
        control: ControlSpec,
        runner: Runner,
        clock: IReactorTime,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        @param runner: started already; stopped by L{close} (a L{ThreadRunner}
            of this control's own, or a L{SynchronousRunner} in tests).
        """
        spec = control.backend
        if not isinstance(spec, FileSpec):
            raise TypeError(f"{control.name}: not a file control")
        self._control = control
        self._spec = spec
        self._runner = runner
        self._calls = BoundedCalls(runner, clock, monotonic)

    def read(self) -> Deferred[Value]:
        return self._calls.call(lambda _remaining: self._read(), self._control.timeout)

    def write(self, value: Value) -> Deferred[None]:
        text = self._text(value)
        return self._calls.call(lambda _remaining: self._write(text), self._control.timeout)

    def close(self) -> Deferred[None]:
        def stop(idle: bool) -> None:
            if idle:
                self._runner.stop()
            else:
                # Joining would block the reactor on a thread stuck in the kernel.
                self._log.warn(
                    "{control}: {path} still busy at stop; its thread is left behind",
                    control=self._control.name,
                    path=str(self._spec.path),
                )

        return self._calls.idle(self._control.timeout).addCallback(stop)

    def _text(self, value: Value) -> str:
        """What is written for C{value}."""
        kind = self._control.type
        if kind is ControlType.SWITCH:
            return self._spec.on if value else self._spec.off
        if kind is ControlType.ACTION:
            return self._spec.on
        if kind is ControlType.CHOICE:
            return str(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{self._control.name}: a number, not {value!r}")
        return format_number(value / self._spec.scale)

    # On the runner's thread:

    def _read(self) -> Value:
        path = self._spec.path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)
            try:
                data = os.read(fd, MAX_READ)
            finally:
                os.close(fd)
        except OSError as e:
            raise BackendError(describe_os_error(path, e)) from None
        text = data.decode("utf-8", errors="replace")
        if self._spec.field is not None:
            fields = text.split("\n", 1)[0].split()
            if len(fields) < self._spec.field:
                have = f"only {len(fields)} field{'' if len(fields) == 1 else 's'}" if fields else "no fields"
                raise BackendError(f"{path}: field = {self._spec.field}, but the first line has {have}")
            text = fields[self._spec.field - 1]
        return parse_reading(
            self._control,
            text,
            where=str(path),
            on=(self._spec.on.lower(),),
            off=(self._spec.off.lower(),),
            scale=self._spec.scale,
        )

    def _write(self, text: str) -> None:
        path = self._spec.path
        data = (text + "\n").encode("utf-8")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOCTTY)
            try:
                written = os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            raise BackendError(describe_os_error(path, e)) from None
        if written != len(data):
            raise BackendError(f"{path}: short write ({written} of {len(data)} bytes)")
