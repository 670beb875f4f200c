"""
Why a connection ended, and how long after the peer's last sign of life we noticed.

Twisted reports every ending as a bare C{ConnectionLost}.  This is the one
place that turns what is known about an ended connection into the
L{Reason} people read (see L{boatwist.reasons} for what each means):

  1. a reason set by whoever closed it (the heartbeat, an event stream, a
     kick, the chat session) wins;
  2. else the errno the recorder caught (L{SocketRecord.cause}): a timeout
     is C{keepalive-timeout}, any other error C{reset};
  3. else Twisted's failure: C{ConnectionDone} is C{closed}, anything else
     C{reset};
  4. a reset that answered our probe after the peer's FIN is C{closed} (the
     peer left; the RST only says our probe came too late);
  5. a keepalive timeout right after a live peer kept its receive window
     closed is C{slow-reader}: since Linux 5.11 C{TCP_USER_TIMEOUT} also
     ends a connection whose live peer stopped reading.

C{detected_after} is 0 for a clean close, the kernel's idle time for a
keepalive timeout the recorder saw, else the time since the last byte or
C{TCP_INFO} sign of life; None where it means nothing (a reset).
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from boatwist.net.recorder import SocketRecord
from boatwist.reasons import VANISHED, Reason

__all__ = ["Ended", "classify"]


class Ended(Protocol):
    """What the classifier reads of an ended connection (L{TrackedConnection})."""

    close_reason: Reason | None
    record: SocketRecord | None
    peer_eof: bool
    last_alive: float

    def window_recently_closed(self, now: float) -> bool: ...


def classify(conn: Ended, failure: Failure, now: float) -> tuple[Reason, float | None]:
    """C{conn}'s reason and C{detected_after}, at monotonic time C{now}."""
    cause = conn.record.cause() if conn.record is not None else None
    if conn.close_reason is not None:
        reason = conn.close_reason
    elif cause is not None and cause is not Reason.CLOSED:
        reason = cause
    elif failure.check(ConnectionDone):
        reason = Reason.CLOSED
    else:
        reason = Reason.RESET
    if conn.peer_eof and reason is Reason.RESET:
        reason = Reason.CLOSED  # the RST answered our probe after the peer's FIN
    if reason is Reason.KEEPALIVE_TIMEOUT and conn.window_recently_closed(now):
        reason = Reason.SLOW_READER
    if reason not in VANISHED:
        return reason, 0.0 if reason is Reason.CLOSED else None
    final = conn.record.final_info if conn.record is not None else None
    if final is not None and reason is Reason.KEEPALIVE_TIMEOUT:
        return reason, final.idle_ms / 1000.0
    return reason, max(0.0, now - conn.last_alive)
