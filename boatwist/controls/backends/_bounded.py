"""
Blocking calls handed to a runner, each bounded in time, none piling up.

L{boatwist.workers.with_timeout} answers the caller on time, but a thread
cannot be interrupted: the work goes on.  Two things keep a hung device from
turning into a growing queue of work nobody waits for:

  - every job carries its deadline; a job that reaches the thread after it
    is dropped at once (L{TimedOut}), so a poll queued behind a hung read
    costs nothing;
  - the job is told how many seconds remain, and passes that on as its own
    socket or serial timeout, so the work itself ends about when its caller
    stops waiting.

The deadline is kept on the thread's side with a monotonic clock: the
reactor's clock follows wall time (Twisted issue 2424).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from boatwist.workers import Runner, TimedOut, with_timeout

__all__ = ["BoundedCalls"]

_T = TypeVar("_T")


class BoundedCalls:
    """Runs C{work(remaining_seconds)} on C{runner}, answered within the timeout."""

    def __init__(
        self,
        runner: Runner,
        clock: IReactorTime,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._runner = runner
        self._clock = clock
        self._monotonic = monotonic
        self._running = 0
        self._idle: list[Deferred[None]] = []

    @property
    def busy(self) -> bool:
        """Whether some work handed over has not come back yet."""
        return self._running > 0

    def call(self, work: Callable[[float], _T], timeout: float) -> Deferred[_T]:
        """
        C{work}'s result, or L{TimedOut} after C{timeout} seconds.

        C{work} runs on the runner's thread with the seconds left before its
        deadline, and never starts once the deadline has passed.
        """
        deadline = self._monotonic() + timeout

        def job() -> _T:
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                raise TimedOut(timeout)  # abandoned in the queue: nobody waits for it
            return work(remaining)

        self._running += 1
        raw = self._runner.run(job)
        raw.addBoth(self._done)
        return with_timeout(raw, timeout, self._clock)

    def _done(self, outcome: _T) -> _T:
        self._running -= 1
        if not self._running:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)
        return outcome

    def idle(self, timeout: float) -> Deferred[bool]:
        """
        Fires with True once no work is outstanding, or with False after
        C{timeout} seconds if some still is (a thread stuck in the kernel).
        """
        if not self._running:
            return defer.succeed(True)
        result: Deferred[bool] = Deferred()

        def settle(done: bool) -> None:
            if not result.called:
                result.callback(done)

        waiter: Deferred[None] = Deferred()
        waiter.addCallback(lambda _: settle(True))
        self._idle.append(waiter)
        timer = self._clock.callLater(timeout, settle, False)

        def stop_timer(done: bool) -> bool:
            if timer.active():
                timer.cancel()
            return done

        result.addCallback(stop_timer)
        return result
