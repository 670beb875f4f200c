"""
The command backend: argv and environment handed to spawnProcess (a fake
process reactor, checked against IReactorProcess), outcomes parsed, timeouts
that kill -- and a few real short processes on the real reactor (trial
TestCase, bounded waits) to show the same against the kernel.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Generator, Mapping, Sequence
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IProcessProtocol, IReactorProcess
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from boatwist.config import parse_config
from boatwist.controls.backends.base import BackendError
from boatwist.controls.backends.command import MAX_STDOUT, SYSTEM_PATH, CommandBackend
from boatwist.controls.spec import ControlSpec
from boatwist.workers import TimedOut

_Gen = Generator[Any, Any, None]


def spec(body: str, name: str = "valve") -> ControlSpec:
    return parse_config(f"[control:{name}]\nbackend = command\n{body}", "dev.ini").controls[0]


class FakeProcess:
    def __init__(self, protocol: IProcessProtocol, pid: int) -> None:
        self.protocol = protocol
        self.pid = pid
        self.signals: list[str] = []
        self.stdin_closed = False

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def end(self, status: int = 0, signal: int | None = None, out: bytes = b"", err: bytes = b"") -> None:
        if out:
            self.protocol.childDataReceived(1, out)
        if err:
            self.protocol.childDataReceived(2, err)
        reason = ProcessDone(0) if status == 0 and signal is None else ProcessTerminated(status, signal)
        self.protocol.processEnded(Failure(reason))


@implementer(IReactorProcess)
class FakeProcessReactor:
    """Records every spawn; the test plays the process."""

    def __init__(self) -> None:
        self.spawned: list[dict[str, Any]] = []
        self.processes: list[FakeProcess] = []

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: bytes | str,
        args: Sequence[bytes | str],
        env: Mapping[bytes | str, bytes | str] | None = None,
        path: bytes | str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, object] | None = None,
    ) -> Any:
        process = FakeProcess(processProtocol, 4000 + len(self.processes))
        self.spawned.append({"executable": executable, "args": list(args), "env": env, "path": path, "childFDs": childFDs})
        self.processes.append(process)
        processProtocol.makeConnection(process)  # type: ignore[arg-type]
        return process


class CommandSpawnTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.processes = FakeProcessReactor()
        verifyObject(IReactorProcess, self.processes)

    def backend(self, body: str, setsid: str = "") -> CommandBackend:
        # setsid="" : no wrapper, so args are exactly the command's
        return CommandBackend(spec(body), self.processes, self.clock, setsid=setsid)

    def test_value_is_one_argument_and_no_shell_is_involved(self) -> None:
        """{value} is replaced inside its argument only; argv goes to exec as is: metacharacters stay inert."""
        b = self.backend("type = choice\nchoices = a; rm -rf /, b\nwrite = /bin/echo --mode={value} done\n")
        b.write("a; rm -rf /")
        (spawn,) = self.processes.spawned
        self.assertEqual(spawn["executable"], "/bin/echo")
        self.assertEqual(spawn["args"], ["/bin/echo", "--mode=a; rm -rf /", "done"])

    def test_switch_and_number_values_as_text(self) -> None:
        """A switch becomes on/off, a number its compact form."""
        switch = self.backend("type = switch\nwrite = /bin/echo {value}\n")
        switch.write(True)
        switch.write(False)
        number = self.backend("type = number\nmin = 0\nmax = 100\nwrite = /bin/echo {value}\n")
        number.write(42.0)
        number.write(0.25)
        self.assertEqual([s["args"][1] for s in self.processes.spawned], ["on", "off", "42", "0.25"])

    def test_minimal_environment_root_directory_stdin_closed(self) -> None:
        """No inherited secrets: PATH, LC_ALL and the control's name only; cwd /; stdin closed at once."""
        os.environ["BOATWIST_TEST_SECRET"] = "hunter2"
        self.addCleanup(os.environ.pop, "BOATWIST_TEST_SECRET")
        self.backend("type = sensor\nread = /bin/cat /proc/loadavg\n").read()
        (spawn,) = self.processes.spawned
        self.assertEqual(spawn["env"], {"PATH": SYSTEM_PATH, "LC_ALL": "C", "BOATWIST_CONTROL": "valve"})
        self.assertEqual(spawn["path"], "/")
        self.assertEqual(spawn["childFDs"], {0: "w", 1: "r", 2: "r"})
        self.assertTrue(self.processes.processes[0].stdin_closed)

    def test_program_is_looked_up_in_the_system_path(self) -> None:
        """A bare program name is found in the standard directories; a missing one is a clear error, no spawn."""
        self.backend("type = sensor\nread = cat /proc/loadavg\n").read()
        self.assertEqual(self.processes.spawned[0]["executable"], shutil.which("cat", path=SYSTEM_PATH))
        failure = self.failureResultOf(self.backend("type = sensor\nread = no-such-program-x\n").read(), BackendError)
        self.assertEqual(str(failure.value), "no-such-program-x: command not found")
        failure = self.failureResultOf(self.backend("type = sensor\nread = /nonexistent/prog\n").read(), BackendError)
        self.assertEqual(str(failure.value), "/nonexistent/prog: command not found")
        self.assertEqual(len(self.processes.spawned), 1)

    def test_started_through_setsid_when_available(self) -> None:
        """With setsid, argv is prefixed by it (same pid: it execs), so the command leads its own process group."""
        self.backend("type = sensor\nread = /bin/true\n", setsid="/usr/bin/setsid").read()
        self.assertEqual(self.processes.spawned[0]["args"], ["/usr/bin/setsid", "/bin/true"])

    def test_read_parses_the_first_line_per_type(self) -> None:
        """A switch accepts on/off/1/0/true/false; a number its float; other lines are ignored."""
        switch = self.backend("type = switch\nread = /bin/true\nwrite = /bin/true {value}\n")
        for out, value in ((b"ON\n", True), (b"0\nmore\n", False), (b"true", True), (b" off \n", False)):
            d = switch.read()
            self.processes.processes[-1].end(out=out)
            self.assertIs(self.successResultOf(d), value)
        d = switch.read()
        self.processes.processes[-1].end(out=b"half\n")
        self.assertEqual(
            str(self.failureResultOf(d, BackendError).value), "/bin/true: read 'half', expected 'on' or '1' or 'true' or 'off' or '0' or 'false'"
        )
        number = self.backend("type = sensor\nunit = V\nread = /bin/true\n")
        d = number.read()
        self.processes.processes[-1].end(out=b"12.5\n")
        self.assertEqual(self.successResultOf(d), 12.5)

    def test_empty_output_is_an_error(self) -> None:
        """A read command that prints nothing says so."""
        d = self.backend("type = sensor\nread = /bin/true\n").read()
        self.processes.processes[-1].end()
        self.assertEqual(
            str(self.failureResultOf(d, BackendError).value), "/bin/true: printed nothing, expected a value on its first line"
        )

    def test_exit_status_carries_stderr_first_line(self) -> None:
        """Exit status N: 'exit status N: <first line of stderr>'; without stderr just the status."""
        b = self.backend("type = switch\nwrite = /bin/true {value}\n")
        d = b.write(True)
        self.processes.processes[-1].end(status=3, err=b"valve stuck\nat position 4\n")
        self.assertEqual(str(self.failureResultOf(d, BackendError).value), "exit status 3: valve stuck")
        d = b.write(True)
        self.processes.processes[-1].end(status=1)
        self.assertEqual(str(self.failureResultOf(d, BackendError).value), "exit status 1")
        d = b.write(True)
        self.processes.processes[-1].end(status=None, signal=11)  # type: ignore[arg-type]
        self.assertEqual(str(self.failureResultOf(d, BackendError).value), "killed by signal 11 (SIGSEGV)")

    def test_output_is_bounded(self) -> None:
        """A flood on stdout keeps only 64 KiB; the first line still parses."""
        b = self.backend("type = sensor\nread = /bin/true\n")
        d = b.read()
        process = self.processes.processes[-1]
        process.protocol.childDataReceived(1, b"7\n" + b"x" * MAX_STDOUT)
        process.protocol.childDataReceived(1, b"y" * MAX_STDOUT)
        collected = process.protocol._out  # type: ignore[attr-defined]
        self.assertEqual(len(collected), MAX_STDOUT)
        process.end()
        self.assertEqual(self.successResultOf(d), 7.0)

    def test_timeout_kills_and_fails_with_timed_out(self) -> None:
        """Still running at the timeout: SIGKILL, TimedOut; its late end changes nothing."""
        b = self.backend("type = switch\nwrite = /bin/true {value}\ntimeout = 1.5\n")
        d = b.write(True)
        process = self.processes.processes[-1]
        self.clock.advance(1.5)
        self.assertEqual(self.failureResultOf(d, TimedOut).value.seconds, 1.5)
        self.assertEqual(process.signals, ["KILL"])
        process.end(status=None, signal=9)  # type: ignore[arg-type]

    def test_close_kills_what_still_runs(self) -> None:
        """close() kills running commands and fires once they ended."""
        b = self.backend("type = sensor\nread = /bin/true\n")
        reading = b.read()
        process = self.processes.processes[-1]
        closing = b.close()
        self.assertEqual(process.signals, ["KILL"])
        self.assertNoResult(closing)
        process.end(status=None, signal=9)  # type: ignore[arg-type]
        self.successResultOf(closing)
        self.assertEqual(str(self.failureResultOf(reading, BackendError).value), "killed by signal 9 (SIGKILL)")

    def test_readable_only_with_a_read_command(self) -> None:
        """A write-only command is not readable; a read then says so without spawning."""
        b = self.backend("type = switch\nwrite = /bin/true {value}\n")
        self.assertFalse(b.readable)
        self.failureResultOf(b.read(), BackendError)
        self.assertEqual(self.processes.spawned, [])


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


class RealProcessTests(TestCase):
    """Short real processes on the real reactor; every wait is bounded by the control's timeout."""

    timeout = 30

    def backend(self, body: str) -> CommandBackend:
        backend = CommandBackend(spec(body), reactor, reactor)  # type: ignore[arg-type]
        self.addCleanup(backend.close)
        return backend

    @defer.inlineCallbacks
    def test_echo_reads_and_false_fails(self) -> None:
        """/bin/echo prints the value read; /bin/false is 'exit status 1'; ls on a missing path carries its stderr."""
        value = yield self.backend("type = sensor\nunit = x\nread = /bin/echo 21.5\n").read()
        self.assertEqual(value, 21.5)
        error = yield self.assertFailure(self.backend("type = action\nwrite = /bin/false\n").write(None), BackendError)
        self.assertEqual(str(error), "exit status 1")
        error = yield self.assertFailure(
            self.backend("type = action\nwrite = ls /nonexistent-boatwist\n").write(None), BackendError
        )
        self.assertRegex(str(error), r"^exit status 2: \S*ls: .*/nonexistent-boatwist.*No such file or directory$")

    @defer.inlineCallbacks
    def test_value_reaches_the_program_as_one_argument(self) -> None:
        """A value with spaces and shell metacharacters arrives as one argv entry, unexpanded."""
        b = self.backend("type = choice\nchoices = $(id) *, b\nread = /bin/echo x\nwrite = /usr/bin/test {value} = '$(id) *'\n")
        yield b.write("$(id) *")  # test(1) exits 0 only if argv[1] is exactly that string

    @defer.inlineCallbacks
    def test_hung_command_and_its_children_are_killed_at_the_timeout(self) -> None:
        """
        sleep under find (a child of the command): TimedOut after the timeout, and
        nothing of the command's process group survives -- the reactor never blocked.
        """
        if not shutil.which("setsid", path=SYSTEM_PATH):
            self.skipTest("setsid (util-linux) missing: only the process itself would be killed")
        b = self.backend("type = action\nwrite = find / -maxdepth 0 -exec /bin/sleep 30 \\;\ntimeout = 2\n")
        started = time.monotonic()
        d = b.write(None)
        (transport,) = list(b._running)
        pgid = transport.pid
        while len(_group_members(pgid)) < 2 and time.monotonic() - started < 1.5:
            yield defer.Deferred.fromCoroutine(_sleep(0.02))
        self.assertEqual(len(_group_members(pgid)), 2, "find and its sleep, in the command's own group")
        yield self.assertFailure(d, TimedOut)
        self.assertLess(time.monotonic() - started, 3.0)
        deadline = time.monotonic() + 5
        while _group_members(pgid) and time.monotonic() < deadline:
            yield defer.Deferred.fromCoroutine(_sleep(0.05))
        self.assertEqual(_group_members(pgid), [])


async def _sleep(seconds: float) -> None:
    from twisted.internet import task

    await task.deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]
