"""
The deadlines of many connections on one timer.

Each HTTP connection has an idle timeout and, while a request's headers are
arriving, a header deadline.  As a C{DelayedCall} each (Twisted's
C{TimeoutMixin}), every idle keep-alive connection kept ~300 bytes of timer
(the call, its two bound methods, its argument tuple and keyword dict), and
every request cancelled one and made another: the cancelled ones stay in
the reactor's heap until it is compacted, ~90 bytes more per connection
(issue 13: memory per idle connection).

Here a connection's deadline is one entry in a dict.  Deadlines of the same
length are set in the order they fall due (on a clock that never goes back:
the reactor's, made monotonic by L{boatwist.clock.use_monotonic_time}), so a
dict per length, kept in insertion order (re-arming moves an entry to the
end), is already sorted:
the earliest deadline of all is the earliest of the dicts' first entries.
One C{DelayedCall}, for that one, serves every connection; it fires at the
exact deadline, as a timer of the connection's own would.

The lengths are few (the site's header timeout, idle timeout and
unauthenticated idle timeout); a dict emptied is dropped, so lengths set once
leave nothing behind.
"""

from __future__ import annotations

from typing import Callable, Generic, Hashable, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["Deadlines"]

_K = TypeVar("_K", bound=Hashable)

#: Seconds of floating-point error forgiven when deciding whether a deadline has come (the
#: timer was scheduled for it, but "now + (deadline - now)" need not equal it to the last bit).
_EPSILON = 1e-9


class Deadlines(Generic[_K]):
    """
    One deadline per owner (a connection), of any length, on one timer.

    @param clock: the clock timers run on: the reactor (a L{Clock} in
        tests), never a L{boatwist.clock.WallClockView} -- deadlines are
        read from its C{seconds()} and must not move when the wall clock steps.
    @param expired: called with each owner whose deadline has come (it is
        disarmed first; the call may arm it again).
    """

    __slots__ = ("_clock", "_expired", "_by_length", "_call", "_call_at")
    _log = Logger()

    def __init__(self, clock: IReactorTime, expired: Callable[[_K], object]) -> None:
        self._clock = clock
        self._expired = expired
        #: Deadline length -> {owner: when}, in the order they fall due.
        self._by_length: dict[float, dict[_K, float]] = {}
        self._call: IDelayedCall | None = None
        #: When C{_call} is due, by C{clock.seconds()} (compared with deadlines on that clock only).
        self._call_at = 0.0

    def __len__(self) -> int:
        return sum(len(due) for due in self._by_length.values())

    def arm(self, owner: _K, after: float) -> None:
        """(Re)start C{owner}'s deadline: C{after} seconds from now, whatever it was."""
        when = self._clock.seconds() + after
        due = self._by_length.get(after)
        if due is None:
            due = self._by_length[after] = {}
        if due.pop(owner, None) is None:
            self._remove(owner)
        due[owner] = when  # at the end: the latest of its length
        if self._call is None or when < self._call_at:
            self._wake_by(when)

    def extend(self, owner: _K, after: float) -> None:
        """Restart C{owner}'s deadline as L{arm} does, if it has one; nothing if it has none."""
        due = self._by_length.get(after)
        if due is not None and due.pop(owner, None) is not None:
            # Later than it was: the timer, set for the earliest deadline, stays.
            due[owner] = self._clock.seconds() + after
        elif self.armed(owner):
            self.arm(owner, after)

    def disarm(self, owner: _K) -> None:
        """C{owner} has no deadline any more (nothing happens if it had none)."""
        self._remove(owner)
        if not self._by_length and self._call is not None:
            # Nothing left to wait for: no timer left behind in the reactor either.
            self._call.cancel()
            self._call = None

    def armed(self, owner: _K) -> bool:
        for due in self._by_length.values():  # noqa: SIM110  # a loop, not any(): asked for every request
            if owner in due:
                return True
        return False

    def _remove(self, owner: _K) -> None:
        """Take C{owner} out of the (one) dict it is in; an emptied dict goes."""
        for length, due in self._by_length.items():
            if due.pop(owner, None) is not None:
                if not due:
                    del self._by_length[length]
                return  # in one dict at most: the iteration ends here

    def _earliest(self) -> float | None:
        earliest: float | None = None
        for due in self._by_length.values():
            first = next(iter(due.values()), None)
            if first is not None and (earliest is None or first < earliest):
                earliest = first
        return earliest

    def _fire(self) -> None:
        self._call = None
        now = self._clock.seconds() + _EPSILON
        # Those due now, in the order they fell due; each is run only if its deadline is still
        # the one seen here (an earlier handler may have armed it again, or disarmed it).
        expired: list[tuple[float, _K, float]] = []
        for length, due in self._by_length.items():
            for owner, when in due.items():
                if when > now:
                    break
                expired.append((when, owner, length))
        expired.sort(key=lambda item: item[0])
        for when, owner, length in expired:
            queue = self._by_length.get(length)
            if queue is None or queue.get(owner) is not when:
                continue
            del queue[owner]
            if not queue:
                del self._by_length[length]
            try:
                self._expired(owner)
            except Exception:
                # One connection's timeout going wrong must not keep the others' from running.
                self._log.failure("a deadline of {owner!r} failed", owner=owner)
        earliest = self._earliest()
        if earliest is not None:
            self._wake_by(earliest)

    def _wake_by(self, when: float) -> None:
        """Have the timer fire at C{when} at the latest."""
        call = self._call
        if call is None:
            self._call = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._fire)
            self._call_at = when
        elif when < self._call_at:
            call.reset(max(0.0, when - self._clock.seconds()))
            self._call_at = when
