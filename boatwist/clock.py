"""
Monotonic time for the reactor.

Twisted's reactor schedules C{callLater} against C{time.time()} (twisted
issue 2424).  A device without a real-time clock boots in 1970 or at its
build date and then steps its clock by NTP: a step back of an hour would
push every pending timer, the heartbeat included, an hour into the future,
and a step forward would fire them all at once.  The reactor uses
C{self.seconds()} consistently (for scheduling, for the poll timeout and for
running due calls), so giving the reactor instance a monotonic C{seconds}
before anything is scheduled makes every timer immune to wall-clock steps.
Timestamps shown to people (C{at} in events, log lines) still come from the
wall clock.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer


# Any: this rewrites ReactorBase internals (its seconds, each DelayedCall's time) that no Twisted
# interface declares, on whatever it is given (False when that fails).
def use_monotonic_time(reactor: Any) -> bool:
    """
    Make C{reactor} schedule by C{time.monotonic}.  Calls already scheduled
    are moved onto the new clock (the same offset for all, so their order
    holds).  Returns False when the reactor does not allow it.
    """
    if getattr(reactor, "seconds", None) is time.monotonic:
        return True
    try:
        offset = time.monotonic() - reactor.seconds()
        pending = list(reactor.getDelayedCalls())
        reactor.seconds = time.monotonic
    except (AttributeError, TypeError):
        return False
    for call in pending:
        call.time += offset
        call.seconds = time.monotonic
    return True


@implementer(IReactorTime)
class WallClockView:
    """
    The reactor as seen by code that reads C{seconds()} as the time of day
    (twisted.web's C{Date} header and access-log timestamps): everything is
    delegated to the reactor except C{seconds}, which is the wall clock.
    Timers still go through the reactor's own, monotonic, clock.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor

    @property
    def timers(self) -> IReactorTime:
        """
        The reactor itself: the clock its timers run on.  Whoever keeps
        deadlines of its own (L{boatwist.web.deadlines}) must read the time
        from this, not from L{seconds}, or a step of the wall clock moves them.
        """
        return self._reactor

    def seconds(self) -> float:
        return time.time()

    def callLater(self, delay: float, callable: Callable[..., Any], *args: object, **kw: object) -> IDelayedCall:
        return self._reactor.callLater(delay, callable, *args, **kw)

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:
        return self._reactor.getDelayedCalls()
