"""
Where blocking work runs: one dedicated thread per job, results on the reactor.

SQLite commits (fsync on flash), reads of device files, Modbus round trips:
each can take tens or hundreds of milliseconds, or hang, and none of it may
run on the reactor thread, which also runs the heartbeat that detects dead
peers.  A L{ThreadRunner} owns one thread: work given to it runs in the
order it was given (SQLite serialises writers anyway; a Modbus bus is one
conversation at a time), and a resource opened on that thread (a sqlite3
connection, a serial port) never leaves it.

Unit tests use L{SynchronousRunner}: the work runs at once, the Deferred has
already fired, no thread and no reactor are involved.

L{with_timeout} bounds a Deferred in time.  A thread cannot be interrupted,
so a timed-out call is abandoned, not stopped: whoever hands work to a
runner must also bound the work itself (a socket timeout, a read size), or
the thread stays busy and later work queues behind it.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol, TypeVar, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

__all__ = ["Runner", "SynchronousRunner", "ThreadRunner", "TimedOut", "with_timeout"]

_T = TypeVar("_T")


class Runner(Protocol):
    """Runs blocking work in order, somewhere other than the reactor thread."""

    def start(self) -> None:
        """Get ready to run work."""

    def run(self, work: Callable[[], _T]) -> Deferred[_T]:
        """Run C{work} after all work given before; its result or failure."""

    def stop(self) -> None:
        """Release the resources; called once all work has finished."""


class _DaemonThread(threading.Thread):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


class _DaemonThreadPool(ThreadPool):
    threadFactory = _DaemonThread


class ThreadRunner:
    """
    Runs work on a single dedicated thread, results delivered on the reactor.

    A private pool, not the reactor's shared one: DNS lookups or bcrypt in the
    shared pool must not queue behind an fsync or a hung serial port, and one
    thread guarantees the order of operations.

    C{daemon}: the thread does not keep the process alive at exit -- for a
    runner that may be abandoned while stuck in the kernel (a hung device
    file), which nothing could join.
    """

    def __init__(self, reactor: IReactorFromThreads, name: str, daemon: bool = False) -> None:
        self._reactor = reactor
        self._pool = (_DaemonThreadPool if daemon else ThreadPool)(minthreads=1, maxthreads=1, name=name)

    def start(self) -> None:
        self._pool.start()

    def run(self, work: Callable[[], _T]) -> Deferred[_T]:
        return deferToThreadPool(self._reactor, self._pool, work)

    def stop(self) -> None:
        # Joins the thread: callers stop a runner only once its last work has
        # come back, so the thread is idle and the join does not block.
        self._pool.stop()


class SynchronousRunner:
    """
    Runs work at once on the calling thread and returns an already-fired
    Deferred: for unit tests (C{successResultOf} works, no reactor needed).
    """

    def start(self) -> None:
        pass

    def run(self, work: Callable[[], _T]) -> Deferred[_T]:
        try:
            result = work()
        except Exception:
            return defer.fail()
        return defer.succeed(result)

    def stop(self) -> None:
        pass


class TimedOut(Exception):
    """The work did not finish within its time; C{seconds} says how long that was."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds

    def __str__(self) -> str:
        return f"timed out after {self.seconds:g} s"


def with_timeout(d: Deferred[_T], seconds: float, clock: IReactorTime) -> Deferred[_T]:
    """
    A Deferred that fires like C{d}, or fails with L{TimedOut} after
    C{seconds}.  C{d} itself is left alone (not cancelled): the work behind it
    may still be running on a thread, and its late result is dropped.
    """
    result: Deferred[_T] = Deferred()

    def expire() -> None:
        if not result.called:
            result.errback(Failure(TimedOut(seconds)))

    timer = clock.callLater(seconds, expire)

    def settle(outcome: object) -> None:
        if timer.active():
            timer.cancel()
        if not result.called:
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(cast(_T, outcome))

    def late(outcome: object) -> None:
        settle(outcome)
        return None  # a failure after the timeout must not be reported as unhandled

    d.addBoth(late)
    return result
