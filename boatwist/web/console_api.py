"""
What the operator console asks for beyond the device API.

    GET /api/whoami            {"user", "role", "device", "host", "version", "started_at",
                                "uptime", "host_uptime", "now"}
    GET /api/operators         {"now", "seats": {"used", "limit"}, "operators": [...],
                                "kinds": {KIND: WORDS}}        (polled every 2 s)
    GET /api/activity          {"items": [...], "before": CURSOR | null, "last_event_id"}
                               ?limit=N (1..500, default 200), ?before=CURSOR

Times: C{at}, C{since}, C{started_at} and C{now} are the device's wall clock,
for display only; C{uptime} and every C{*_in} / C{idle_s} are measured on
the monotonic clock, so a browser counts from them without trusting the
device's wall clock (a device without an RTC may be years off).

/api/operators: one entry per online user with their role, state, since
(their login) and state_since (when the state last changed: an operator
unstable since 12:01:07 who logged in at 9:00), what they hold of the floor,
and each connection as the heartbeat sees it now -- kind (and the words
for it), peer, round-trip time, the keepalive probes and retransmissions
outstanding (read from TCP_INFO on the request, not cached), how long the
peer has been silent.  The words for the kinds are served here, as
/api/reasons serves the reasons', so no browser keeps its own copy.

/api/activity: one timeline of what operators did and what happened to
them, newest C{limit} first-merged by time and returned oldest first, built
from what is committed to the store -- chat messages, operations (done,
failed, refused), and the audit log's logins, logouts, refusals and floor
changes -- so it is the same after a restart as before it.  Each item is
C{{"kind", "key", "at", "user", "data"}}: C{kind} is the event kind the
item matches (C{chat}, C{control}, C{presence}, C{floor}); C{data} has the
fields the live event has where the store keeps them (the audit log keeps
words, not every field: a C{floor} item from it has C{state}, C{user} and
C{text}, a C{presence} item C{state}, C{reason}, C{via}).  C{key} is unique
per item (C{chat:ID}, C{op:ID}, C{audit:ID}).

Paging: C{before} in the answer is the cursor for the page before this one
(None when nothing older is left); it is opaque to the client
(C{c<chat id>.o<operation id>.a<audit id>}: the oldest item of each source
already served).  C{last_event_id} is the hub's newest event id when the
page was read: every event with a higher id came after it (the store's
writer thread runs writes and reads in order, and an event's audit write is
queued while the event is delivered), so a console that opened its event
stream first and kept what arrived meanwhile shows the ones above it and
drops the others.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.python.failure import Failure
from twisted.web.server import Request

from boatwist import __version__
from boatwist.core import Core
from boatwist.store.operations import OperationRecord
from boatwist.store.service import Message
from boatwist.web.chat_api import int_arg
from boatwist.web.jsonapi import JSON, UserResource, answer_later, json_body

if TYPE_CHECKING:
    from boatwist.presence import Connection

    #: A row of one of the activity's sources: a chat message, an operation, an audit entry.
    _Row = Message | OperationRecord | dict[str, Any]

__all__ = ["ActivityResource", "KIND_WORDS", "OperatorsResource", "Uptimes", "WhoAmI", "parse_cursor",
           "process_uptime"]

#: A connection's kind in the words people read (presence's Kind values).
KIND_WORDS = {
    "web": "browser",
    "chat": "terminal (chat port)",
    "http": "plain requests",
}

#: The audit log's kinds the activity shows.
ACTIVITY_AUDIT_KINDS = ("login", "logout", "refused", "floor")

DEFAULT_ACTIVITY = 200
MAX_ACTIVITY = 500

_IMPORTED = time.monotonic()


def _read_first_line(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.readline()


def process_started(read: Callable[[str], bytes] = _read_first_line) -> float | None:
    """
    When this process started, in seconds on the boot clock (the start time
    in /proc/self/stat, field 22, in clock ticks); None where the kernel
    does not say.
    """
    try:
        stat = read("/proc/self/stat")
        # Fields after the command name (which may hold spaces and parentheses); starttime is field 22.
        return int(stat.rsplit(b")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def host_uptime(read: Callable[[str], bytes] = _read_first_line) -> float | None:
    """Seconds since the device booted (/proc/uptime), None where unknown."""
    try:
        return float(read("/proc/uptime").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def process_uptime(read: Callable[[str], bytes] = _read_first_line) -> float:
    """
    Seconds since this process started: from the kernel where it says
    (Linux: start time in /proc/self/stat against /proc/uptime, both on the
    boot clock), else since this module was imported (at the daemon's start).
    """
    started, now = process_started(read), host_uptime(read)
    if started is None or now is None:
        return time.monotonic() - _IMPORTED
    return max(0.0, now - started)


class Uptimes:
    """
    The device's and this process's uptime for every C{/api/whoami}: the
    process's start is read once, and the boot clock (what /proc/uptime
    says) is read from C{CLOCK_BOOTTIME} -- no file opened per request.
    """

    def __init__(self, read: Callable[[str], bytes] = _read_first_line) -> None:
        boot_clock = getattr(time, "CLOCK_BOOTTIME", None)
        started = process_started(read)
        if boot_clock is None or started is None:
            self._boot = None
            self._started_monotonic = time.monotonic() - process_uptime(read)
        else:
            self._boot = boot_clock
            self._started_boot = started

    def process(self) -> float:
        """Seconds since this process started."""
        if self._boot is None:
            return time.monotonic() - self._started_monotonic
        return max(0.0, time.clock_gettime(self._boot) - self._started_boot)

    def host(self) -> float | None:
        """Seconds since the device booted."""
        return None if self._boot is None else time.clock_gettime(self._boot)


class HostName:
    """
    The host name, asked of the kernel at most once a second: every
    C{/api/whoami} shows it (twice, when C{[server] name} is empty), and
    it can change while the daemon runs (C{hostnamectl}).
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic,
                 ask: Callable[[], str] = socket.gethostname) -> None:
        self._monotonic = monotonic
        self._ask = ask
        self._name = ""
        self._until = float("-inf")

    def __call__(self) -> str:
        now = self._monotonic()
        if now >= self._until:
            self._name, self._until = self._ask(), now + 1.0
        return self._name


@functools.cache
def _host_name() -> HostName:
    """This process's L{HostName} (a fact of the machine, read again each second: nothing to reset)."""
    return HostName()


@functools.cache
def _uptimes() -> Uptimes:
    """This process's L{Uptimes}, made on the first C{/api/whoami} (a fact of the process, never reset)."""
    return Uptimes()


class WhoAmI(UserResource):
    """C{GET /api/whoami}: the user, their role, and the device the console's header names."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        core = self.core
        now = core.wall()
        uptimes = _uptimes()
        uptime = uptimes.process()
        host = _host_name()()
        return json_body(request, {
            "user": self.user,
            "role": core.roles.role_of(self.user).label,
            "device": core.settings.server.name or host,
            "host": host,
            "version": __version__,
            "started_at": now - uptime,
            "uptime": uptime,
            "host_uptime": uptimes.host(),
            "now": now,
        })


class OperatorsResource(UserResource):
    """C{GET /api/operators}: who is online, with roles and each link's quality now."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return json_body(request, operators(self.core))


def operators(core: Core) -> dict[str, JSON]:
    now, mono = core.wall(), core.monotonic()
    floor = core.floor
    out: list[JSON] = []
    for user in core.presence.users():
        connections: list[JSON] = [_connection(conn, now, mono) for conn in user.connections]
        if user.http_until is not None:
            connections.append({"kind": "http", "words": KIND_WORDS["http"], "peer": user.http_peer,
                                "expires_in": max(0.0, user.http_until - mono)})
        out.append({
            "user": user.name,
            "role": core.roles.role_of(user.name).label,
            "state": user.state,
            "since": user.since,
            "state_since": user.state_since,
            "floor": "holder" if floor.holder == user.name else "requester" if floor.requested_by == user.name
            else None,
            "connections": connections,
        })
    return {
        "now": now,
        "seats": {"used": core.presence.seats_used, "limit": core.presence.limit},
        "operators": out,
        "kinds": dict(KIND_WORDS),
    }


def _connection(conn: Connection, now: float, mono: float) -> dict[str, JSON]:
    kind = str(getattr(conn, "kind", "") or "")
    item: dict[str, JSON] = {
        "kind": kind,
        "words": KIND_WORDS.get(kind, kind),
        "peer": getattr(conn, "peer_host", None),
        "port": getattr(conn, "peer_port", None),
        "rtt_ms": getattr(conn, "rtt_ms", None),
        "unstable": bool(getattr(conn, "unstable", False)),
        "probes": None,
        "retransmits": None,
        "unacked": None,
        "idle_s": None,
    }
    opened = getattr(conn, "opened_at", None)
    if isinstance(opened, (int, float)):
        item["since"] = now - max(0.0, mono - opened)
    last_alive = getattr(conn, "last_alive", None)
    if isinstance(last_alive, (int, float)):
        item["idle_s"] = round(max(0.0, mono - last_alive), 3)
    read = getattr(conn, "tcp_vitals", None)
    vitals = read() if callable(read) else None
    if vitals is not None:
        item["rtt_ms"] = vitals.rtt_us / 1000.0
        item["probes"] = vitals.probes
        item["retransmits"] = vitals.retransmits
        item["unacked"] = vitals.unacked
        item["idle_s"] = round(vitals.idle_ms / 1000.0, 3)
    return item


# ------------------------------------------------------------------ activity

_CURSOR = re.compile(r"^c(\d{1,19})\.o(\d{1,19})\.a(\d{1,19})$")


@dataclass(frozen=True)
class Cursor:
    """The oldest id of each source already served; a page holds only older ones."""

    chat: int | None = None
    operation: int | None = None
    audit: int | None = None

    def text(self) -> str:
        return f"c{self.chat or 0}.o{self.operation or 0}.a{self.audit or 0}"


def parse_cursor(text: str) -> Cursor:
    """A C{before} cursor; ValueError when it is not one this endpoint gave."""
    match = _CURSOR.match(text)
    if match is None:
        raise ValueError("before must be the cursor a previous page gave")
    chat, operation, audit = (int(group) for group in match.groups())
    return Cursor(chat, operation, audit)


def _chat_item(message: Message) -> dict[str, JSON]:
    data = message.as_event_data()
    return {"kind": "chat", "key": f"chat:{message.id}", "at": message.at, "user": message.user, "data": data}


def _operation_item(core: Core, record: OperationRecord) -> dict[str, JSON]:
    data: dict[str, JSON] = record.as_dict()
    state = core.controls.get(record.control)
    if state is not None:
        spec = state.spec
        data.update(type=spec.type.value, unit=spec.unit or None, label=spec.title)
    return {"kind": "control", "key": f"op:{record.id}", "at": record.at, "user": record.user, "data": data}


def _via(detail: str) -> tuple[str, str | None]:
    """C{"keepalive-timeout via web"} -> ("keepalive-timeout", "web")."""
    head, sep, via = detail.rpartition(" via ")
    return (head, via) if sep else (detail, None)


def _audit_item(entry: dict[str, Any]) -> dict[str, JSON] | None:
    kind, user, detail, at = entry["kind"], entry["user"], str(entry["detail"] or ""), entry["at"]
    data: dict[str, JSON]
    if kind == "floor":
        state, _, text = detail.partition(": ")
        data = {"state": state, "user": user, "text": text or detail, "at": at}
        return {"kind": "floor", "key": f"audit:{entry['id']}", "at": at, "user": user, "data": data}
    if kind == "login":
        # The login check's own line: once per login, not per request ("http" or "chat").
        via = {"http": "web"}.get(detail, detail) or None
        data = {"user": user, "state": "online", "reason": "login", "via": via, "at": at}
    elif kind == "logout":
        reason, via = _via(detail)
        data = {"user": user, "state": "offline", "reason": reason, "via": via, "at": at}
    elif kind == "refused":
        words, via = _via(detail)
        refusal, _, seats = words.partition(" ")
        used, _, limit = seats.partition("/")
        data = {"user": user, "state": "offline", "reason": "refused", "refusal": refusal, "via": via, "at": at}
        if used.isdigit() and limit.isdigit():
            data.update(used=int(used), limit=int(limit))
    else:
        return None
    return {"kind": "presence", "key": f"audit:{entry['id']}", "at": at, "user": user, "data": data}


class ActivityResource(UserResource):
    """C{GET /api/activity}: the timeline, from the store, newest page first."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes | int:
        try:
            limit = int_arg(request, b"limit")
            raw = request.args.get(b"before") if request.args else None
            cursor = parse_cursor(raw[0].decode("ascii", "replace")) if raw else Cursor()
        except ValueError as e:
            return json_body(request, {"error": str(e)}, 400)
        limit = DEFAULT_ACTIVITY if limit is None else max(1, min(limit, MAX_ACTIVITY))
        return answer_later(request, activity(self.core, limit, cursor), 200, self._failed)

    def _failed(self, failure: Failure) -> tuple[int, JSON]:
        return 500, {"error": "the activity cannot be read: " + failure.getErrorMessage()}


def activity(core: Core, limit: int, cursor: Cursor) -> Deferred[JSON]:
    """The page of C{limit} items before C{cursor} (see the module docstring)."""
    last_event_id = core.hub.last_id
    store = core.store
    # An id of 0 in a cursor means that source is used up.
    chats: Deferred[Any] = store.history(before=cursor.chat, limit=limit) if cursor.chat != 0 else _none()
    ops: Deferred[Any] = store.operations(before=cursor.operation, limit=limit) if cursor.operation != 0 \
        else _none()
    audit: Deferred[Any] = (store.audit_log(limit, before=cursor.audit, kinds=ACTIVITY_AUDIT_KINDS)
                            if cursor.audit != 0 else _none())

    def merge(results: list[list[Any]]) -> JSON:
        messages, records, entries = results
        candidates: list[tuple[float, int, str, int, dict[str, JSON]]] = []
        for m in messages:
            candidates.append((m.at, m.id, "chat", m.id, _chat_item(m)))
        for r in records:
            candidates.append((r.at, r.id, "op", r.id, _operation_item(core, r)))
        for e in entries:
            item = _audit_item(e)
            if item is not None:
                candidates.append((e["at"], e["id"], "audit", e["id"], item))
        candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
        taken = candidates[:limit]
        oldest: dict[str, int] = {}
        for _at, _id, source, ident, _item in taken:
            oldest[source] = min(ident, oldest.get(source, ident))
        full = {"chat": len(messages) >= limit, "op": len(records) >= limit, "audit": len(entries) >= limit}

        def next_id(source: str, previous: int | None, rows: Sequence[_Row]) -> int:
            # 0: nothing older is left in that source.
            if source in oldest:
                left_out = len(rows) > sum(1 for c in taken if c[2] == source)
                return oldest[source] if (left_out or full[source]) else 0
            if not rows:
                return 0
            return previous if previous is not None else max(_row_id(row) for row in rows) + 1

        after = Cursor(next_id("chat", cursor.chat, messages), next_id("op", cursor.operation, records),
                       next_id("audit", cursor.audit, entries))
        more = any((after.chat, after.operation, after.audit))
        taken.reverse()
        return {"items": [c[4] for c in taken], "before": after.text() if more else None,
                "last_event_id": last_event_id}

    d = gatherResults([chats, ops, audit], consumeErrors=True)
    d.addCallback(merge)
    return d


def _row_id(row: _Row) -> int:
    return int(row["id"] if isinstance(row, dict) else row.id)


def _none() -> Deferred[list[object]]:
    return succeed([])
