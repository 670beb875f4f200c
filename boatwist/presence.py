"""
Who is online, in what state, and whether one more may come in.

A user is online while they have at least one persistent connection (an
event stream or a chat connection) or made an authenticated plain HTTP
request within ``http_grace`` seconds.  Persistent connections *are* the
presence: when the last one ends the user is offline at once, whatever
plain requests they made before -- a browser whose cable was pulled must not
be kept online by the chat message it posted a moment earlier.

Admission is decided here and nowhere else, through one entry point,
L{Presence.admit}: front ends (the HTTP resources, the event stream, the
chat session) hand it the connection, the user and what the connection is
for, and show the L{Refusal} they get back.  Every change becomes an event
on the L{EventHub}; nothing here writes to a socket.

Deadlines use the injected monotonic clock, so a wall-clock step (an
RTC-less device setting its time by NTP at boot) cannot expire anyone.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from twisted.logger import Logger

from boatwist.config import AdmissionSettings
from boatwist.events import EventHub
from boatwist.reasons import Reason, RefusalReason, words_for

ONLINE = "online"
UNSTABLE = "unstable"
OFFLINE = "offline"

#: Retry-After for a refused user when no seat is known to free sooner, seconds.
RETRY_AFTER = 5
#: How long a repeated refusal of the same user is not announced again, seconds.
REFUSAL_QUIET = 5.0


class Kind(str, enum.Enum):
    """What a connection is for, as presence counts it."""

    #: Plain requests: online for http_grace after the last one.
    HTTP = "http"
    #: A browser's event stream: persistent presence.
    WEB = "web"
    #: A chat-port connection: persistent presence.
    CHAT = "chat"

    def __str__(self) -> str:
        return self.value

    @property
    def persistent(self) -> bool:
        return self is not Kind.HTTP


class Connection(Protocol):
    """What presence needs of a connection (L{boatwist.net.tracking.TrackedConnection})."""

    id: int
    kind: Kind
    user: str | None
    peer_host: str
    peer_port: int
    rtt_ms: float | None
    unstable: bool

    def close(self, reason: Reason, note: str | None = None) -> None:
        """End the connection; C{reason} is what everyone will be told (C{note}: who decided it)."""


@dataclass(frozen=True)
class Refusal:
    """Why someone was not let in; front ends show L{message}."""

    reason: RefusalReason
    used: int
    limit: int
    retry_after: int

    def message(self) -> str:
        if self.reason is RefusalReason.FULL:
            return f"server full: {self.used} of {self.limit} operators online"
        return f"too many connections: {self.used} of {self.limit} allowed per operator"


@dataclass
class UserState:
    name: str
    state: str
    since: float  # wall clock, for display
    via: Kind
    connections: list[Connection] = field(default_factory=list)
    #: Monotonic deadline of plain-HTTP presence; None when not HTTP-only.
    http_until: float | None = None
    http_peer: str = ""
    #: Wall clock, for display: when C{state} last changed (online at login, unstable, online again).
    state_since: float = 0.0

    @property
    def persistent(self) -> bool:
        return bool(self.connections)


class Presence:
    _log = Logger()

    def __init__(
        self,
        hub: EventHub,
        settings: AdmissionSettings,
        monotonic: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self._hub = hub
        self._settings = settings
        self._monotonic = monotonic
        self._wall = wall
        self._users: dict[str, UserState] = {}
        self._refused_at: dict[str, float] = {}
        #: Who kicked a user whose connections are closing (named in their offline event).
        self._kicked_by: dict[str, str] = {}

    # ------------------------------------------------------------ queries

    @property
    def limit(self) -> int:
        return self._settings.max_users

    @property
    def seats_used(self) -> int:
        return len(self._users)

    def is_online(self, user: str) -> bool:
        return user in self._users

    def users(self) -> list[UserState]:
        return sorted(self._users.values(), key=lambda u: u.name)

    def snapshot(self) -> dict[str, Any]:
        """The C{/api/presence} document."""
        return {
            "seats": {"used": self.seats_used, "limit": self.limit},
            "users": [
                {
                    "user": u.name,
                    "state": u.state,
                    "since": u.since,
                    "connections": [
                        {
                            "kind": c.kind,
                            "peer": c.peer_host,
                            "port": c.peer_port,
                            "rtt_ms": c.rtt_ms,
                            "unstable": c.unstable,
                        }
                        for c in u.connections
                    ]
                    + ([{"kind": "http", "peer": u.http_peer}] if u.http_until is not None else []),
                }
                for u in self.users()
            ],
        }

    # ---------------------------------------------------------- admission

    def admit(self, conn: Connection, user: str, kind: Kind) -> Refusal | None:
        """
        The one entry point of admission: may C{user}, authenticated on
        C{conn}, use it as C{kind}?  None when admitted, else the refusal to
        show.  Admitted, C{conn} is C{user}'s from then on:

          - C{Kind.HTTP} (a plain request): the user is online for
            C{http_grace} seconds unless they have a persistent connection;
          - C{Kind.WEB}, C{Kind.CHAT}: C{conn} becomes part of the user's
            presence until it ends (L{detach}).

        An online user always gets a plain request; a new user needs a seat;
        a persistent connection also needs to be within
        C{max_connections_per_user}.  A refused connection is left as it was.
        """
        state = self._users.get(user)
        if state is not None and kind.persistent and conn not in state.connections:
            limit = self._settings.max_connections_per_user
            if len(state.connections) >= limit:
                return self._refuse(user, RefusalReason.TOO_MANY_CONNECTIONS, len(state.connections), limit, kind)
        arriving = state is None
        if state is None:
            if self.seats_used >= self.limit:
                return self._refuse(user, RefusalReason.FULL, self.seats_used, self.limit, kind)
            state = self._seat(user, kind)
        # The user's one string, not the copy each request decoded: 50 bytes a connection.
        conn.user = state.name
        if not kind.persistent:
            if not state.persistent:
                state.http_until = self._monotonic() + self._settings.http_grace
                state.http_peer = conn.peer_host
        else:
            conn.kind = kind
            if conn not in state.connections:
                state.connections.append(conn)
            # Persistent presence replaces the plain-HTTP grace period.
            state.http_until = None
        if arriving:
            # Told once the connection is the user's: whoever reads presence on the login event
            # (a snapshot, the MQTT bridge's retained state) sees it.
            self._announce(state)
        return None

    # ------------------------------------------------------------ changes

    def detach(self, conn: Connection, reason: Reason, detected_after: float | None = None) -> None:
        """C{conn} ended for C{reason}; the user goes offline if it was their last."""
        for state in list(self._users.values()):
            if conn in state.connections:
                state.connections.remove(conn)
                if not state.connections:
                    self._go_offline(state, reason, detected_after, conn.kind)
                elif conn.unstable:
                    self._update_stability(state, Reason.RECOVERED)
                return

    def set_unstable(self, conn: Connection, unstable: bool, reason: Reason) -> None:
        """The heartbeat saw C{conn}'s link troubled (or well again)."""
        if conn.unstable == unstable:
            return
        conn.unstable = unstable
        for state in self._users.values():
            if conn in state.connections:
                self._update_stability(state, reason)
                return

    def expire(self) -> None:
        """Users present only through plain requests go offline after http_grace."""
        now = self._monotonic()
        for state in list(self._users.values()):
            if not state.persistent and state.http_until is not None and state.http_until <= now:
                self._go_offline(state, Reason.IDLE, None, Kind.HTTP)

    def kick(self, user: str, reason: Reason = Reason.KICKED, by: str | None = None) -> bool:
        """
        Remove C{user}: their connections are closed with C{reason} (C{kicked},
        C{revoked}); the offline event names C{by}, the admin who did it.
        """
        state = self._users.get(user)
        if state is None:
            return False
        if by is not None:
            self._kicked_by[user] = by
        conns = list(state.connections)
        if not conns:
            self._go_offline(state, reason, None, state.via)
        for conn in conns:
            conn.close(reason, f"by {by}" if by is not None else None)
        return True

    # ------------------------------------------------------------ private

    def _seat(self, user: str, via: Kind) -> UserState:
        now = self._wall()
        state = UserState(name=user, state=ONLINE, since=now, via=via, state_since=now)
        self._users[user] = state
        self._refused_at.pop(user, None)
        return state

    def _announce(self, state: UserState) -> None:
        self._publish(state.name, ONLINE, Reason.LOGIN, state.via)
        self._log.info("{user} is online via {via} ({used} of {limit} seats)",
                       user=state.name, via=state.via, used=self.seats_used, limit=self.limit)

    def _go_offline(self, state: UserState, reason: Reason, detected_after: float | None, via: Kind) -> None:
        del self._users[state.name]
        extra: dict[str, Any] = {"detected_after": None if detected_after is None else round(detected_after, 3)}
        by = self._kicked_by.pop(state.name, None)
        if by is not None:
            extra["by"] = by
        self._publish(state.name, OFFLINE, reason, via, **extra)
        after = "" if detected_after is None else f", detected after {detected_after:.1f} s"
        words = words_for(str(reason)) or str(reason)
        self._log.info("{user} is offline ({reason}{after})", user=state.name, reason=words, after=after)

    def _update_stability(self, state: UserState, reason: Reason) -> None:
        new = UNSTABLE if any(c.unstable for c in state.connections) else ONLINE
        if new != state.state:
            state.state = new
            state.state_since = self._wall()
            self._publish(state.name, new, reason, state.via)

    def _retry_after(self, now: float) -> int:
        """
        When a seat may be free: the soonest end of a plain-HTTP user's grace,
        else a few seconds -- a vanished operator's seat frees within seconds,
        and a client told to wait http_grace would wait far longer than needed.
        """
        waits = [u.http_until - now for u in self._users.values() if not u.persistent and u.http_until is not None]
        soonest = min(waits) if waits else RETRY_AFTER
        return max(1, min(math.ceil(soonest), RETRY_AFTER))

    def _refuse(self, user: str, reason: RefusalReason, used: int, limit: int, via: Kind) -> Refusal:
        now = self._monotonic()
        refusal = Refusal(reason, used, limit, retry_after=self._retry_after(now))
        last = self._refused_at.get(user)
        if last is None or now - last >= REFUSAL_QUIET:
            self._refused_at[user] = now
            # A refusal is a presence event too: the user stays offline, and everyone sees why.
            current = self._users[user].state if user in self._users else OFFLINE
            self._publish(user, current, Reason.REFUSED, via, refusal=reason.value, used=used, limit=limit)
            self._log.warn("refused {user} via {via}: {message}", user=user, via=via,
                           message=refusal.message())
        if len(self._refused_at) > 1000:
            self._refused_at = {u: t for u, t in self._refused_at.items() if now - t < REFUSAL_QUIET}
        return refusal

    def _publish(self, user: str, state: str, reason: Reason, via: Kind, **extra: Any) -> None:
        # Reason() and Kind() also check a plain string a caller passed.
        data: dict[str, Any] = {"user": user, "state": state, "reason": Reason(reason).value, "at": self._wall(),
                                "via": Kind(via).value}
        data.update(extra)
        self._hub.publish("presence", data)

