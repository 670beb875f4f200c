"""The memory and file backends, and the bounded calls under the file backend: no threads, no sleeps."""

from __future__ import annotations

import errno
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from boatwist.config import parse_config
from boatwist.controls.backends._bounded import BoundedCalls
from boatwist.controls.backends._text import format_number
from boatwist.controls.backends.base import Backend, BackendError
from boatwist.controls.backends.file import FileBackend, describe_os_error
from boatwist.controls.backends.memory import MemoryBackend
from boatwist.controls.spec import ControlSpec
from boatwist.workers import SynchronousRunner, TimedOut

_T = TypeVar("_T")


def spec(body: str, name: str = "x") -> ControlSpec:
    return parse_config(f"[control:{name}]\n{body}", "dev.ini").controls[0]


class ManualRunner:
    """A runner whose work runs only when the test says: a thread that is busy, or stuck."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[[], object], Deferred[object]]] = []
        self.stopped = False

    def start(self) -> None:
        pass

    def run(self, work: Callable[[], _T]) -> Deferred[_T]:
        d: Deferred[_T] = Deferred()
        self.queue.append((work, d))  # type: ignore[arg-type]
        return d

    def run_next(self) -> None:
        work, d = self.queue.pop(0)
        try:
            result = work()
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)

    def stop(self) -> None:
        self.stopped = True


def test_format_number_is_compact() -> None:
    """42 not 42.0; binary noise rounded away; negatives and fractions as written."""
    assert format_number(42.0) == "42"
    assert format_number(0.1 * 3) == "0.3"
    assert format_number(-1.5) == "-1.5"
    assert format_number(25000.0) == "25000"
    assert format_number(1e-7) == "1e-07"


class MemoryBackendTests(SynchronousTestCase):
    def test_starts_from_initial_and_keeps_what_is_written(self) -> None:
        """A memory control reads its initial value until written, then what was written."""
        backend: Backend = MemoryBackend(spec("type = switch\nbackend = memory\ninitial = on\n"))
        self.assertIs(self.successResultOf(backend.read()), True)
        self.successResultOf(backend.write(False))
        self.assertIs(self.successResultOf(backend.read()), False)
        self.successResultOf(backend.close())

    def test_restored_value_wins_over_initial(self) -> None:
        """The value the pipeline restored from SQLite is the starting value."""
        backend = MemoryBackend(spec("type = number\nbackend = memory\nmin = 0\nmax = 10\ninitial = 1\n"), restored=7.0)
        self.assertEqual(self.successResultOf(backend.read()), 7.0)

    def test_restored_value_the_declaration_no_longer_allows_is_dropped(self) -> None:
        """After an INI edit, an out-of-range, off-grid, removed or mistyped restored value falls back to initial."""
        number = "type = number\nbackend = memory\nmin = 0\nmax = 10\nstep = 2\ninitial = 4\n"
        for stale in (12.0, 3.0, "4", True):
            self.assertEqual(self.successResultOf(MemoryBackend(spec(number), restored=stale).read()), 4.0)
        choice = "type = choice\nbackend = memory\nchoices = a, b\n"
        self.assertEqual(self.successResultOf(MemoryBackend(spec(choice), restored="gone").read()), "a")
        switch = "type = switch\nbackend = memory\n"
        self.assertIs(self.successResultOf(MemoryBackend(spec(switch), restored=1.0).read()), False)


class FileBackendTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="boatwist-file-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = self.dir / "value"
        self.clock = Clock()

    def backend(self, body: str, runner: object | None = None) -> FileBackend:
        control = spec(f"backend = file\npath = {self.path}\n{body}")
        return FileBackend(control, runner or SynchronousRunner(), self.clock, self.clock.seconds)  # type: ignore[arg-type]

    def test_switch_writes_on_off_texts_and_reads_them_back(self) -> None:
        """A switch writes its on/off text with a newline, as echo does, and reads it back stripped."""
        self.path.write_text("0\n")
        led = self.backend("type = switch\non = 255\noff = 0\n")
        self.assertIs(self.successResultOf(led.read()), False)
        self.successResultOf(led.write(True))
        self.assertEqual(self.path.read_text(), "255\n")
        self.assertIs(self.successResultOf(led.read()), True)

    def test_switch_reading_something_else_names_it(self) -> None:
        """Unexpected content is an error that says what was read and what was expected."""
        self.path.write_text("maybe\n")
        failure = self.failureResultOf(self.backend("type = switch\n").read(), BackendError)
        self.assertEqual(str(failure.value), f"{self.path}: read 'maybe', expected '1' or '0'")

    def test_sensor_scale_and_number_written_compactly(self) -> None:
        """Milli-degrees × 0.001 read; a number written ÷ scale with no '.0' when whole."""
        self.path.write_text("45312\n")
        temp = self.backend("type = sensor\nunit = °C\nscale = 0.001\n")
        self.assertEqual(self.successResultOf(temp.read()), 45.312)
        setpoint = self.backend("type = number\nmin = 0\nmax = 100\nscale = 0.001\n")
        self.successResultOf(setpoint.write(25.0))
        self.assertEqual(self.path.read_text(), "25000\n")
        self.successResultOf(setpoint.write(0.25))
        self.assertEqual(self.path.read_text(), "250\n")
        plain = self.backend("type = number\nmin = 0\nmax = 100\n")
        self.successResultOf(plain.write(12.5))
        self.assertEqual(self.path.read_text(), "12.5\n")
        self.assertEqual(self.successResultOf(plain.read()), 12.5)

    def test_number_that_is_not_a_number(self) -> None:
        """A number control reading text fails with what it read."""
        self.path.write_text("n/a\n")
        failure = self.failureResultOf(self.backend("type = sensor\nunit = V\n").read(), BackendError)
        self.assertEqual(str(failure.value), f"{self.path}: read 'n/a', expected a number")

    def test_sensor_without_unit_reads_text_first_line_bounded(self) -> None:
        """No unit: the first line's text, at most 256 characters; a number stays a number."""
        self.path.write_text("x86_pkg_temp\nsecond line\n")
        sensor = self.backend("type = sensor\n")
        self.assertEqual(self.successResultOf(sensor.read()), "x86_pkg_temp")
        self.path.write_text("y" * 5000)
        self.assertEqual(self.successResultOf(sensor.read()), "y" * 256)
        self.path.write_text("0.52 0.58 0.59 1/389 12345\n")
        self.assertEqual(self.successResultOf(sensor.read()), "0.52 0.58 0.59 1/389 12345")
        self.path.write_text("42\n")
        self.assertEqual(self.successResultOf(sensor.read()), 42.0)

    def test_field_reads_one_field_of_the_first_line(self) -> None:
        """
        ``field = N`` reads the N-th white-space separated field of the first
        line (1-based): /proc/loadavg's first is the 1-minute load, a number;
        with ``scale`` the field is scaled; without a unit a field that is
        not a number is its text; a line with too few fields is one line
        naming the file and the field asked for.
        """
        self.path.write_text("0.52 0.58 0.59 1/389 12345\nsecond 7 8 9 10 11\n")
        self.assertEqual(self.successResultOf(self.backend("type = sensor\nfield = 1\n").read()), 0.52)
        self.assertEqual(self.successResultOf(self.backend("type = sensor\nfield = 3\n").read()), 0.59)
        self.assertEqual(self.successResultOf(self.backend("type = sensor\nfield = 4\n").read()), "1/389")
        scaled = self.backend("type = sensor\nfield = 5\nunit = k\nscale = 0.001\n")
        self.assertEqual(self.successResultOf(scaled.read()), 12.345)
        missing = self.failureResultOf(self.backend("type = sensor\nfield = 6\n").read(), BackendError)
        self.assertEqual(str(missing.value), f"{self.path}: field = 6, but the first line has only 5 fields")
        self.path.write_text("\n")
        empty = self.failureResultOf(self.backend("type = sensor\nfield = 1\n").read(), BackendError)
        self.assertEqual(str(empty.value), f"{self.path}: field = 1, but the first line has no fields")
        self.path.write_text("0.52 n/a\n")
        text = self.failureResultOf(self.backend("type = sensor\nfield = 2\nunit = V\n").read(), BackendError)
        self.assertEqual(str(text.value), f"{self.path}: read 'n/a', expected a number")

    def test_reads_at_most_a_few_kib(self) -> None:
        """A huge file costs one 4 KiB read: the number on its first line is still found."""
        self.path.write_text("7\n" + "z" * 1_000_000)
        self.assertEqual(self.successResultOf(self.backend("type = sensor\nunit = x\n").read()), 7.0)

    def test_choice_writes_its_name_and_checks_what_it_reads(self) -> None:
        """A choice writes the name; reading a name not offered is an error listing the choices."""
        self.path.write_text("")
        mode = self.backend("type = choice\nchoices = auto, manual\n")
        self.successResultOf(mode.write("manual"))
        self.assertEqual(self.path.read_text(), "manual\n")
        self.assertEqual(self.successResultOf(mode.read()), "manual")
        self.path.write_text("turbo\n")
        failure = self.failureResultOf(mode.read(), BackendError)
        self.assertEqual(str(failure.value), f"{self.path}: read 'turbo', expected one of auto, manual")

    def test_action_writes_its_on_text(self) -> None:
        """An action on a file writes the on text (a trigger file)."""
        self.path.write_text("")
        self.successResultOf(self.backend("type = action\non = reset\n").write(None))
        self.assertEqual(self.path.read_text(), "reset\n")

    def test_missing_file_is_one_line_and_never_created(self) -> None:
        """A misspelt path: 'PATH: no such file' for read and write; nothing is created."""
        sensor = self.backend("type = switch\n")
        self.assertEqual(str(self.failureResultOf(sensor.read(), BackendError).value), f"{self.path}: no such file")
        self.assertEqual(str(self.failureResultOf(sensor.write(True), BackendError).value), f"{self.path}: no such file")
        self.assertFalse(self.path.exists())

    def test_os_errors_read_as_one_line(self) -> None:
        """Permission denied, a device refusing a value, the rest by strerror: 'PATH: reason'."""
        p = "/sys/class/leds/x/brightness"
        self.assertEqual(describe_os_error(p, PermissionError(errno.EACCES, "x")), f"{p}: permission denied")
        self.assertEqual(describe_os_error(p, OSError(errno.EPERM, "x")), f"{p}: permission denied")
        self.assertEqual(
            describe_os_error(p, OSError(errno.EINVAL, "x")), f"{p}: invalid argument (the device refused the value)"
        )
        self.assertEqual(describe_os_error(p, OSError(errno.ESTALE, "x")), f"{p}: stale file handle")

    def test_directory(self) -> None:
        """A directory where a file was expected says so."""
        self.path.mkdir()
        failure = self.failureResultOf(self.backend("type = switch\n").write(True), BackendError)
        self.assertEqual(str(failure.value), f"{self.path}: is a directory")

    def test_hung_file_times_out_and_calls_queued_behind_it_are_dropped(self) -> None:
        """
        A read stuck in the kernel: the caller gets TimedOut at the timeout; a call
        queued behind it that reaches the thread after its own deadline is dropped
        without touching the file; close leaves the stuck thread instead of joining it.
        """
        self.path.write_text("1\n")
        runner = ManualRunner()
        led = self.backend("type = switch\ntimeout = 1\n", runner)
        first = led.read()
        second = led.read()
        self.clock.advance(1)
        self.failureResultOf(first, TimedOut)
        self.failureResultOf(second, TimedOut)
        runner.run_next()  # the stuck read finally returns: its late result is dropped
        runner.run_next()  # the queued one is past its deadline: dropped (BoundedCallsTests pins that it never ran)
        self.assertEqual(runner.queue, [])
        closing = led.close()
        self.successResultOf(closing)
        self.assertTrue(runner.stopped)

    def test_close_does_not_join_a_thread_that_is_still_stuck(self) -> None:
        """close() waits at most the timeout for a stuck call, then leaves the thread alone."""
        self.path.write_text("1\n")
        runner = ManualRunner()
        led = self.backend("type = switch\ntimeout = 1\n", runner)
        reading = led.read()
        closing = led.close()
        self.assertNoResult(closing)
        self.clock.advance(2)
        self.successResultOf(closing)
        self.failureResultOf(reading, TimedOut)
        self.assertFalse(runner.stopped)


class BoundedCallsTests(SynchronousTestCase):
    def test_work_is_told_the_time_left(self) -> None:
        """The job learns how many seconds remain before its deadline, to use as its own I/O timeout."""
        clock = Clock()
        runner = ManualRunner()
        calls = BoundedCalls(runner, clock, clock.seconds)
        seen: list[float] = []
        d = calls.call(lambda left: seen.append(left), 2.0)
        clock.advance(0.5)
        runner.run_next()
        self.assertEqual(seen, [1.5])
        self.successResultOf(d)
        self.assertFalse(calls.busy)
        self.assertTrue(self.successResultOf(calls.idle(1.0)))

    def test_work_that_reaches_the_thread_after_its_deadline_never_runs(self) -> None:
        """Queued behind a stuck job past its own deadline: dropped unrun, so a hung device never piles up work."""
        clock = Clock()
        runner = ManualRunner()
        calls = BoundedCalls(runner, clock, clock.seconds)
        ran: list[str] = []

        def stuck_work(left: float) -> None:
            ran.append("stuck")
            clock.advance(1.0)  # the device takes the whole timeout, and more

        stuck = calls.call(stuck_work, 1.0)
        queued = calls.call(lambda left: ran.append("queued"), 1.0)
        runner.run_next()
        self.failureResultOf(stuck, TimedOut)
        self.failureResultOf(queued, TimedOut)
        self.assertTrue(calls.busy)
        runner.run_next()
        self.assertEqual(ran, ["stuck"])
        self.assertFalse(calls.busy)
