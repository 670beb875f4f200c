"""Runners and the timeout that bounds work handed to them."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from boatwist.workers import SynchronousRunner, TimedOut, with_timeout


class WithTimeoutTests(SynchronousTestCase):
    def test_result_in_time_passes_through(self) -> None:
        """Work that finishes before its time gives its result and cancels the timer."""
        clock = Clock()
        inner: Deferred[int] = Deferred()
        d = with_timeout(inner, 2.0, clock)
        inner.callback(7)
        self.assertEqual(self.successResultOf(d), 7)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_late_work_fails_with_timed_out_and_its_result_is_dropped(self) -> None:
        """After the time, TimedOut names it; a late result or failure is swallowed."""
        clock = Clock()
        inner: Deferred[int] = Deferred()
        d = with_timeout(inner, 2.5, clock)
        clock.advance(2.5)
        failure = self.failureResultOf(d, TimedOut)
        self.assertEqual(str(failure.value), "timed out after 2.5 s")
        inner.errback(RuntimeError("late"))  # must not be reported as unhandled

    def test_failure_in_time_passes_through(self) -> None:
        """A failure before the time is the caller's failure, unchanged."""
        clock = Clock()
        inner: Deferred[int] = Deferred()
        d = with_timeout(inner, 1.0, clock)
        inner.errback(ValueError("bad"))
        self.failureResultOf(d, ValueError)


class SynchronousRunnerTests(SynchronousTestCase):
    def test_runs_at_once(self) -> None:
        """Result and exception come back as fired Deferreds."""
        runner = SynchronousRunner()
        self.assertEqual(self.successResultOf(runner.run(lambda: 3)), 3)
        self.failureResultOf(runner.run(lambda: 1 / 0), ZeroDivisionError)
