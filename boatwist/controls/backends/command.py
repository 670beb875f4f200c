"""
The C{command} backend: a program run for each read and each write, never through a shell.

    read  = /usr/local/bin/valve --get
    write = /usr/local/bin/valve --set {value}

The argv was split once, at start (shlex, in L{boatwist.controls.config});
C{{value}} inside an argument of C{write} is replaced by the value and stays
within that one argument whatever it holds (C{--level={value}} works too):
no shell ever sees it.  The value is written as:

    switch  on / off          number  compact (42, 0.25; never 42.0)
    choice  its name          action  (no value)

A read takes the first line of stdout: a switch accepts on/off, 1/0,
true/false (any case); a number a float; a choice one of its names; a
sensor with a unit a number, without one a number or else the text.

Outcomes, each one line:

  - exit status 0: done (read: the value printed);
  - exit status N: C{BackendError("exit status N: <stderr's first line>")};
  - killed by a signal: C{BackendError("killed by signal 9 (SIGKILL)")};
  - still running at the control's C{timeout}: the process and its process
    group get SIGKILL (children it started die with it) and the call fails
    with L{TimedOut}; the late end of the process is ignored;
  - a program that is not there: C{BackendError("PROG: command not found")}.

Bounds: stdout is kept up to 64 KiB and stderr up to 4 KiB, the rest read
and dropped, so a chatty program cannot grow the daemon.  The environment
is minimal and holds no secret: C{PATH} (the standard system directories),
C{LC_ALL=C} (a decimal point is a point) and C{BOATWIST_CONTROL} (the
control's name); the working directory is C{/}; stdin is closed.

A process group of its own: Twisted's spawnProcess does not offer
C{setpgid}, so when C{setsid} (util-linux, busybox) is installed the program
is started through it.  C{setsid PROG ARGS} execs C{PROG} in place (same
pid, no shell, no fork: Twisted's child is never a group leader), so the
pid is also the group id and one C{killpg} ends the command and anything it
spawned.  Without C{setsid} only the process itself is killed.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Mapping

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from boatwist.workers import TimedOut, with_timeout
from boatwist.controls.config import VALUE_PLACEHOLDER
from boatwist.controls.spec import CommandSpec, ControlSpec, ControlType, Value
from boatwist.controls.backends._text import first_line, format_number, one_line, parse_reading
from boatwist.controls.backends.base import BackendError

__all__ = ["MAX_STDERR", "MAX_STDOUT", "SYSTEM_PATH", "CommandBackend", "Outcome"]

#: Bytes of stdout kept; a read only needs the first line.
MAX_STDOUT = 65536
#: Bytes of stderr kept; an error shows only the first line.
MAX_STDERR = 4096
#: The PATH commands run with (and are looked up in).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_ON = ("on", "1", "true")
_OFF = ("off", "0", "false")


class Outcome:
    """How a process ended: exit status or signal, and what it printed (bounded)."""

    def __init__(self, status: int | None, signal_number: int | None, stdout: bytes, stderr: bytes) -> None:
        self.status = status
        self.signal = signal_number
        self.stdout = stdout
        self.stderr = stderr


class _Collector(ProcessProtocol):
    """Gathers a process's output, bounded, and fires C{ended} with its L{Outcome}."""

    def __init__(self) -> None:
        self.ended: Deferred[Outcome] = Deferred()
        self._out = bytearray()
        self._err = bytearray()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        room = MAX_STDOUT - len(self._out)
        if room > 0:
            self._out += data[:room]

    def errReceived(self, data: bytes) -> None:
        room = MAX_STDERR - len(self._err)
        if room > 0:
            self._err += data[:room]

    def processEnded(self, reason: Failure) -> None:
        status: int | None = 0
        signal_number: int | None = None
        value = reason.value
        if isinstance(value, ProcessTerminated):
            status, signal_number = value.exitCode, value.signal
        elif not isinstance(value, ProcessDone):
            status = None
        self.ended.callback(Outcome(status, signal_number, bytes(self._out), bytes(self._err)))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class CommandBackend:
    _log = Logger()

    def __init__(
        self,
        control: ControlSpec,
        processes: IReactorProcess,
        clock: IReactorTime,
        *,
        setsid: str | None = None,
    ) -> None:
        """
        @param setsid: the path of C{setsid}, to give each command a process
            group of its own; None: look it up in L{SYSTEM_PATH} (it may be
            missing: then only the process itself is killed at timeout).
        """
        spec = control.backend
        if not isinstance(spec, CommandSpec):
            raise TypeError(f"{control.name}: not a command control")
        self._control = control
        self._spec = spec
        self._processes = processes
        self._clock = clock
        self._setsid = setsid if setsid is not None else shutil.which("setsid", path=SYSTEM_PATH)
        self._environ: Mapping[str, str] = {"PATH": SYSTEM_PATH, "LC_ALL": "C", "BOATWIST_CONTROL": control.name}
        #: Running processes -> their end.
        self._running: dict[IProcessTransport, Deferred[Outcome]] = {}
        self.readable = bool(spec.read)

    def read(self) -> Deferred[Value]:
        if not self._spec.read:
            return defer.fail(BackendError(f"{self._control.name}: no read command"))
        argv = self._spec.read

        def parse(outcome: Outcome) -> Value:
            text = outcome.stdout.decode("utf-8", errors="replace")
            if not first_line(text):
                raise BackendError(f"{argv[0]}: printed nothing, expected a value on its first line")
            return parse_reading(self._control, text, where=argv[0], on=_ON, off=_OFF)

        return self._run(argv).addCallback(parse)

    def write(self, value: Value) -> Deferred[None]:
        text = self._text(value)
        argv = tuple(arg.replace(VALUE_PLACEHOLDER, text) for arg in self._spec.write)
        return self._run(argv).addCallback(lambda _: None)

    def close(self) -> Deferred[None]:
        """Kill what still runs; fires once it has ended (or after a second)."""
        ended = []
        for transport, done in list(self._running.items()):
            self._kill(transport)
            ended.append(with_timeout(done, 1.0, self._clock))
        return defer.DeferredList(ended, consumeErrors=True).addCallback(lambda _: None)

    def _text(self, value: Value) -> str:
        kind = self._control.type
        if kind is ControlType.SWITCH:
            return "on" if value else "off"
        if kind is ControlType.ACTION:
            return ""
        if kind is ControlType.CHOICE:
            return str(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{self._control.name}: a number, not {value!r}")
        return format_number(value)

    def _run(self, argv: tuple[str, ...]) -> Deferred[Outcome]:
        """Run C{argv}; its L{Outcome} when it exits 0, else a BackendError or TimedOut."""
        program = argv[0]
        executable = shutil.which(program, path=SYSTEM_PATH) if "/" not in program else program
        if executable is None or not os.access(executable, os.X_OK) or os.path.isdir(executable):
            reason = "command not found" if executable is None or not os.path.exists(executable) else "not executable"
            return defer.fail(BackendError(f"{program}: {reason}"))
        args = [executable, *argv[1:]]
        if self._setsid:
            args = [self._setsid, *args]
        collector = _Collector()
        try:
            transport = self._processes.spawnProcess(
                collector,
                args[0],
                args,
                env=dict(self._environ),
                path="/",
                childFDs={0: "w", 1: "r", 2: "r"},
            )
        except OSError as e:
            return defer.fail(BackendError(f"{program}: cannot start ({e.strerror or e})"))
        self._running[transport] = collector.ended
        collector.ended.addBoth(self._forget, transport)

        timeout = self._control.timeout
        result: Deferred[Outcome] = Deferred()

        def expire() -> None:
            if not result.called:
                self._kill(transport)
                result.errback(TimedOut(timeout))

        timer = self._clock.callLater(timeout, expire)

        def ended(outcome: Outcome) -> None:
            if timer.active():
                timer.cancel()
            if result.called:
                return  # timed out already; it was killed
            if outcome.status == 0 and outcome.signal is None:
                result.callback(outcome)
                return
            result.errback(BackendError(self._failure_line(outcome)))

        collector.ended.addCallback(ended)
        return result

    def _forget(self, outcome: Outcome, transport: IProcessTransport) -> Outcome:
        self._running.pop(transport, None)
        return outcome

    def _failure_line(self, outcome: Outcome) -> str:
        if outcome.signal is not None:
            return f"killed by signal {outcome.signal} ({_signal_name(outcome.signal)})"
        line = one_line(outcome.stderr.decode("utf-8", errors="replace"))
        head = f"exit status {outcome.status}" if outcome.status is not None else "ended abnormally"
        return f"{head}: {line}" if line else head

    def _kill(self, transport: IProcessTransport) -> None:
        pid = transport.pid
        if self._setsid and isinstance(pid, int) and pid > 0:
            try:
                os.killpg(pid, signal.SIGKILL)
                return
            except OSError:
                pass  # already gone, or not a group leader yet: kill the process below
        try:
            transport.signalProcess("KILL")
        except (ProcessExitedAlready, OSError):
            pass  # it ended on its own meanwhile
