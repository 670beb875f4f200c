"""
Why a connection or a user's presence changed: one list, and the words people read.

Twisted reports every ending of a connection as a bare C{ConnectionLost};
the connection tracker recovers *why* (L{boatwist.net.classify}) and
presence publishes it.  Every reason that can be produced is a member of
L{Reason}; the words for each are in L{WORDS}, used by the chat port and
served to the browser (C{/api/reasons}), so both describe an event alike.

Which reasons end a connection, and who decides them:

  - C{closed}: the peer said goodbye (FIN, or the RST answering our probe
    after its FIN).  Decided by the tracker.
  - C{reset}: the peer reset the connection.  Tracker.
  - C{keepalive-timeout}: the peer stopped answering -- the kernel gave up
    (keepalive probes or C{TCP_USER_TIMEOUT}, errno C{ETIMEDOUT}), or the
    heartbeat saw the probes unanswered past the same keepalive bound in
    C{TCP_INFO} and closed it itself (it is the same silence, found by
    reading the kernel's state rather than its errno).  Tracker, heartbeat.
  - C{heartbeat-timeout}: an application heartbeat went unanswered (a chat
    client that opted into PING/PONG).  Chat session.
  - C{tcp-state}: the kernel no longer calls the connection ESTABLISHED
    (CLOSE_WAIT: the peer half-closed and stays silent).  Heartbeat.
  - C{slow-reader}: a live peer that does not read what it is sent.
    Event stream, tracker.
  - C{kicked}, C{revoked}: an admin removed the user; the password changed
    or the account was deleted.  Presence.
  - C{shutdown}: the daemon is stopping.

Presence-only reasons: C{login}, C{idle} (plain-HTTP presence expired),
C{refused}, and for the C{unstable} state C{probes}, C{retransmits},
C{recovered}.
"""

from __future__ import annotations

import enum
from types import MappingProxyType
from typing import Mapping

__all__ = ["ABORTED", "Reason", "RefusalReason", "VANISHED", "WORDS", "words_for"]


class Reason(str, enum.Enum):
    """A presence reason; its value is what events and the API carry."""

    LOGIN = "login"
    RECOVERED = "recovered"
    PROBES = "probes"
    RETRANSMITS = "retransmits"
    CLOSED = "closed"
    RESET = "reset"
    KEEPALIVE_TIMEOUT = "keepalive-timeout"
    HEARTBEAT_TIMEOUT = "heartbeat-timeout"
    TCP_STATE = "tcp-state"
    SLOW_READER = "slow-reader"
    KICKED = "kicked"
    REVOKED = "revoked"
    IDLE = "idle"
    REFUSED = "refused"
    SHUTDOWN = "shutdown"

    def __str__(self) -> str:
        return self.value


class RefusalReason(str, enum.Enum):
    """Why someone was not let in (the C{refusal} field of a C{refused} event)."""

    FULL = "full"
    TOO_MANY_CONNECTIONS = "too-many-connections"

    def __str__(self) -> str:
        return self.value


#: Reasons for which the peer vanished rather than said goodbye.
VANISHED = frozenset({Reason.KEEPALIVE_TIMEOUT, Reason.HEARTBEAT_TIMEOUT, Reason.TCP_STATE})
#: Reasons for which the peer is presumed gone: abort, don't wait for a flush.  (A kicked
#: user is there: they are told why before the connection closes; a peer that then does not
#: read is ended by the heartbeat once the kernel no longer calls the socket ESTABLISHED.)
ABORTED = frozenset({Reason.HEARTBEAT_TIMEOUT, Reason.TCP_STATE, Reason.SLOW_READER, Reason.KEEPALIVE_TIMEOUT})

#: Every reason in the words users read: one table for the chat port and the browser.
WORDS: Mapping[str, str] = MappingProxyType(
    {
        Reason.LOGIN.value: "logged in",
        Reason.RECOVERED.value: "connection recovered",
        Reason.PROBES.value: "keepalive probes unanswered",
        Reason.RETRANSMITS.value: "packets being retransmitted",
        Reason.CLOSED.value: "left",
        Reason.RESET.value: "connection reset",
        Reason.KEEPALIVE_TIMEOUT.value: "no answer to keepalive probes",
        Reason.HEARTBEAT_TIMEOUT.value: "missed heartbeat",
        Reason.TCP_STATE.value: "connection half-closed",
        Reason.SLOW_READER.value: "too slow to read events",
        Reason.KICKED.value: "removed by an operator",
        Reason.REVOKED.value: "password changed or account removed",
        Reason.IDLE.value: "idle",
        Reason.REFUSED.value: "refused",
        Reason.SHUTDOWN.value: "server shutting down",
        RefusalReason.FULL.value: "server full",
        RefusalReason.TOO_MANY_CONNECTIONS.value: "too many connections",
    }
)


def words_for(reason: str) -> str | None:
    """The words for C{reason}, or None when it is not one of ours."""
    return WORDS.get(reason)
