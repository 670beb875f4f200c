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

Polls are the exception (L{FileReads}): the file controls due at the same
tick are read in one hand-off to one shared thread, which reads them one
after the other and hands all the readings back at once.  A thread hand-off
and the reactor's wake-up for its result cost far more than reading a sysfs
or /proc file, and a hundred of them a second were most of what polling
cost.  The timeout still bounds every read and a hung file still marks only
its own control: a batch not back within the timeout is answered with what
was read; the read under way, if it has run for half the timeout or more,
is the hung one (quality error, "timed out"); what comes after it is simply
not read this time.  The shared thread, presumed stuck, is abandoned (a
daemon thread, stopped if it ever comes back) and a fresh one reads the next
batch; the hung control, and any whose reads took more than L{SLOW_READ}
L{SLOW_TIMES} times in a row, is from then on read alone on its own thread,
as before -- so one slow driver cannot hold up the others, and a hung file
costs at most one abandoned thread.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from boatwist.workers import Runner, TimedOut
from boatwist.controls.spec import ControlSpec, ControlType, FileSpec, Value
from boatwist.controls.backends._bounded import BoundedCalls
from boatwist.controls.backends._text import format_number, parse_reading
from boatwist.controls.backends.base import BackendError

__all__ = ["MAX_READ", "SLOW_READ", "SLOW_TIMES", "FileBackend", "FileReading", "FileReads", "describe_os_error"]

#: The most a read takes from the file, bytes.
MAX_READ = 4096

#: Seconds: a file whose reads took longer L{SLOW_TIMES} times in a row is
#: polled alone, on its own thread, never in a batch (L{FileReads}).  sysfs
#: attributes and /proc files answer in microseconds; a driver that talks to
#: an I2C sensor may take tens of milliseconds, and must not hold up the
#: others.  In a row, because on a busy machine the shared thread may be
#: descheduled in the middle of a fast read now and then.
SLOW_READ = 0.01
SLOW_TIMES = 3

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
        #: Polled on its own thread, never in a batch (L{FileReads}): it hung, or is slow.
        self.alone = False
        #: Batch reads in a row slower than L{SLOW_READ}.
        self.slow_reads = 0

    @property
    def control(self) -> ControlSpec:
        return self._control

    @property
    def path(self) -> os.PathLike[str]:
        return self._spec.path

    def read(self) -> Deferred[Value]:
        return self._calls.call(lambda _remaining: self.read_blocking(), self._control.timeout)

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

    # On a runner's thread (never the reactor's):

    def read_blocking(self) -> Value:
        """Read the file now, blocking: on this control's thread, or a L{FileReads} batch's."""
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


@dataclass(frozen=True)
class FileReading:
    """One control's share of a batch: the value read, or what stopped it; how long the read took."""

    value: Value = None
    error: Exception | None = None
    seconds: float = 0.0


class _Batch:
    """The work a batch hands to the shared thread: read each file in turn, until done or abandoned."""

    def __init__(self, backends: Sequence[FileBackend], deadline: float, monotonic: Callable[[], float]) -> None:
        self.backends = backends
        self.deadline = deadline
        self._monotonic = monotonic
        #: Appended by the thread, in order; the reactor reads it when the batch is late.
        self.readings: list[FileReading] = []
        #: The index of the read under way (set before it starts), and since when.
        self.current = -1
        self.current_since = 0.0
        #: Set by the reactor when it stops waiting: the thread starts no further read.
        self.abandoned = False

    def run(self) -> None:
        """On the shared thread."""
        monotonic = self._monotonic
        for index, backend in enumerate(self.backends):
            started = monotonic()
            if self.abandoned or started >= self.deadline:
                return
            self.current_since = started
            self.current = index
            try:
                reading = FileReading(backend.read_blocking(), None, monotonic() - started)
            except Exception as e:  # a BackendError, or a bug: told to the control either way
                reading = FileReading(None, e, monotonic() - started)
            self.readings.append(reading)


@dataclass
class _Shared:
    """The shared thread, how many batches it has not answered, and whether it was given up for stuck."""

    runner: Runner
    outstanding: int = 0
    abandoned: bool = False


class FileReads:
    """
    Reads several file controls in one hand-off to a shared thread (see the
    module's docstring): what one poll tick of many file controls costs.

    @param make_runner: a started runner for a fresh shared thread (a daemon
        L{ThreadRunner}: an abandoned one must not keep the process alive).
    """

    _log = Logger()

    def __init__(self, make_runner: Callable[[], Runner], clock: IReactorTime,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._make_runner = make_runner
        self._clock = clock
        self._monotonic = monotonic
        self._shared: _Shared | None = None

    def read(self, backends: Sequence[FileBackend], timeout: float) -> Deferred[list[FileReading | None]]:
        """
        One reading per backend, in order, within C{timeout} seconds: a value
        or an error (a hung read: L{TimedOut}), or None for a file not read
        this time (the batch ran out of time before it).  Never fails.
        """
        shared = self._shared
        if shared is None:
            shared = self._shared = _Shared(self._make_runner())
        batch = _Batch(backends, self._monotonic() + timeout, self._monotonic)
        result: Deferred[list[FileReading | None]] = Deferred()

        def padded(readings: list[FileReading | None]) -> list[FileReading | None]:
            return readings + [None] * (len(backends) - len(readings))

        def expire() -> None:
            batch.abandoned = True
            current, since = batch.current, batch.current_since
            readings: list[FileReading | None] = list(batch.readings)
            running = self._monotonic() - since
            hung = current == len(readings) and running >= timeout / 2
            if hung:
                # Stuck in the kernel on this one: it alone is marked, and read alone from now on.
                readings.append(FileReading(None, TimedOut(timeout), running))
            if self._shared is shared:
                # The thread is still at this batch: the next one gets a fresh thread.
                self._shared, shared.abandoned = None, True
            result.callback(padded(readings))
            if hung:
                self._set_apart(backends[current], f"did not answer within {timeout:g} s")
            self._set_apart_slow(backends, readings)

        timer = self._clock.callLater(timeout, expire)

        def finished(outcome: object) -> None:
            shared.outstanding -= 1
            if timer.active():
                timer.cancel()
                readings: list[FileReading | None] = list(batch.readings)
                result.callback(padded(readings))
                self._set_apart_slow(backends, readings)
            if isinstance(outcome, Failure):
                self._log.failure("a batch of file reads failed", outcome)
            if shared.abandoned and not shared.outstanding:
                shared.runner.stop()  # it came back after all: idle, so the join is quick

        shared.outstanding += 1
        shared.runner.run(batch.run).addBoth(finished)
        return result

    def _set_apart_slow(self, backends: Sequence[FileBackend], readings: Sequence[FileReading | None]) -> None:
        for backend, reading in zip(backends, readings, strict=False):
            if reading is None:
                continue
            if reading.seconds <= SLOW_READ:
                backend.slow_reads = 0
                continue
            backend.slow_reads += 1
            if backend.slow_reads >= SLOW_TIMES:
                self._set_apart(backend, f"took {reading.seconds * 1000:.0f} ms {SLOW_TIMES} times in a row")

    def _set_apart(self, backend: FileBackend, why: str) -> None:
        if not backend.alone:
            backend.alone = True
            self._log.warn("control {control}: reading {path} {why}; it is polled on a thread of its own from now "
                           "on", control=backend.control.name, path=str(backend.path), why=why)

    def close(self) -> None:
        """
        Stop the shared thread now if it is idle, else when it comes back; a
        stuck one is a daemon thread, left behind.
        """
        shared, self._shared = self._shared, None
        if shared is not None:
            shared.abandoned = True  # a batch still out stops it when it comes back
            if not shared.outstanding:
                shared.runner.stop()
