"""
Every accepted connection, of every listener, passes through here.

L{TrackingFactory} wraps a listener's factory (``policies.WrappingFactory``)
and, for each accepted connection:

  - drops it at once if the peer is outside ``[admission] networks`` --
    before a byte is read;
  - makes room for it when a budget is full (see "Budgets" below), or drops
    it when no connection may give way;
  - applies the keepalive and user-timeout socket options;
  - installs a recorder on the socket so that, when the connection ends, we
    know *why*: Twisted reports a keepalive timeout, a reset and a clean close
    all as a bare C{ConnectionLost}, and closes the socket before the
    protocol hears of it, so the errno and the last C{TCP_INFO} must be
    caught on the way (see L{boatwist.net.recorder.install_recorder});
  - registers a L{TrackedConnection}, which presence and the heartbeat use.

Why a connection ended is decided by L{boatwist.net.classify}; admission
by presence (L{boatwist.presence.Presence.admit}), which front ends call
with the connection L{ConnectionTracker.connection_for} finds under their
request or protocol.

Budgets.  A connection is *authenticated* from the moment presence admits
it (presence sets C{conn.user}; the tracker hears of it through that
attribute).  Until then an HTTP connection is one of the unauthenticated,
and those have a budget of their own, C{[admission] max_unauthenticated},
smaller than C{max_connections}: whoever has logged in keeps the rest.
When a new connection would pass that budget, the per-address cap or the
total cap, it is accepted and an unauthenticated HTTP connection gives way
-- from the same address when the per-address cap is the one passed --
closed with a reset at once (OpenSSH's MaxStartups, nginx's limit_conn
with reset_timedout_connection).  Which one, in this order:

  1. one that has sent nothing at all for C{SILENT_AFTER} seconds since it
     opened (and has no unread byte in its socket): a squatter;
  2. one that sent something but has no request being answered: a trickler,
     an idle keep-alive connection, a request whose headers are not all here;
  3. one opened less than C{SILENT_AFTER} ago that has sent nothing yet
     (its client may not have written yet: accept can beat the first send);
  4. one whose request is being answered, or whose first bytes are waiting
     unread in its socket (it has not had its turn yet);

and never one we are closing after its response (a reset now would destroy
the response before its client read it: it is gone in a moment anyway);

each oldest first by its last progress (opening, or the end of its last
response).  An operator's fresh connection, whose request is already in the
socket, is thus the last to go, and is authenticated a moment later; a
flood that keeps reconnecting only pushes out its own older connections.

Nobody gives way before it has been read once: Twisted accepts a whole
burst of connections (hundreds under a flood) before it reads any of them,
and an operator's connection early in a burst would otherwise be pushed out
by the rest of the burst before its request was even looked at.  So a
connection accepted in this reactor turn or the last is not a candidate;
when only such connections stand in the way, the newcomer is let in beyond
the budget (by at most C{overflow}: the listen backlog) and the budgets are
enforced again a turn later (L{ConnectionTracker._tick}).  Turns are counted
only while a budget is under pressure; a quiet daemon schedules nothing.
Only when every connection in the way is authenticated (or belongs to the
chat port, which budgets its logins itself) is the newcomer dropped.
HTTP connections report their progress through L{TrackedConnection.request_started}
and L{TrackedConnection.request_finished} (L{boatwist.web.channel}); an
unauthenticated one also gets a short idle deadline there.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from itertools import count
from typing import Any, Callable, Iterable

from twisted.application.service import MultiService
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocolFactory,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from boatwist.config import AdmissionSettings, KeepaliveSettings
from boatwist.net.acl import peer_allowed
from boatwist.net.backlog import Backlog
from boatwist.net.classify import classify
from boatwist.net.recorder import SocketRecord, find_socket, find_tcp_transport, install_recorder
from boatwist.net.sockdiag import socket_inode
from boatwist.net.sockopts import apply_keepalive
from boatwist.net.tcpinfo import TcpInfo, TcpVitals, read_tcp_calm, read_tcp_info, read_tcp_vitals
from boatwist.presence import Kind, Presence
from boatwist.reasons import ABORTED, Reason

__all__ = ["ClosingService", "ConnectionTracker", "TrackedConnection", "TrackingFactory", "TrackingProtocol",
           "tracked"]

#: Seconds a sighting of a closed receive window explains a later timeout (slow reader, not a dead peer).
WINDOW_MEMORY = 3.0
#: How long after a peer's FIN on an event stream we look for the RST our probe provokes.
EOF_PROBE_DELAY = 0.05
#: Seconds after which a connection that has sent nothing is a squatter, the first to give way.
SILENT_AFTER = 1.0


class TrackedConnection:
    """One accepted connection, as presence and the heartbeat see it."""

    _log = Logger()
    # One per connection, hundreds at a time: slots, not a dict (~100 bytes less each).
    __slots__ = ("id", "_kind", "peer_host", "peer_port", "_user", "_tracker", "bytes_in", "busy", "progress_at",
                 "closing", "evicted", "accepted_turn", "rtt_ms", "unstable", "opened_at", "last_alive",
                 "close_reason", "peer_eof", "on_peer_eof", "farewell", "sock", "inode", "family", "local_port",
                 "record", "held", "_max_held", "window_closed_at", "close_wait_seen_at", "_wrapper")

    def __init__(self, ident: int, kind: Kind, peer_host: str, peer_port: int, wrapper: "TrackingProtocol",
                 now: float, max_held: int, tracker: "ConnectionTracker | None" = None) -> None:
        self.id = ident
        self._kind = kind
        self.peer_host = peer_host
        self.peer_port = peer_port
        self._user: str | None = None
        self._tracker = tracker
        #: Bytes received so far (a connection that sent none is the first to give way).
        self.bytes_in = 0
        #: True while a request of this connection is being answered (HTTP).
        self.busy = False
        #: When it last made progress (opened, or finished a response): monotonic.
        self.progress_at = now
        #: True once we started closing it (a refusal being flushed, a deadline passed).
        self.closing = False
        #: True once it was told to give way to a newer connection.
        self.evicted = False
        #: The tracker's reactor turn when it was accepted (it is read the turn after).
        self.accepted_turn = 0
        self.rtt_ms: float | None = None
        self.unstable = False
        self.opened_at = now
        self.last_alive = now
        self.close_reason: Reason | None = None
        self.peer_eof = False
        #: Called when the peer half-closes; an event stream sets it to send a probe.
        self.on_peer_eof: Callable[[], None] | None = None
        #: Called once, before a close for a reason the peer can still hear (kicked, revoked,
        #: shutdown), with the reason and a note (who kicked): the chat port says goodbye.
        self.farewell: Callable[[Reason, str | None], None] | None = None
        #: The real socket (test transports have none), and its inode (how sock_diag names it).
        self.sock: socket.socket | None = None
        self.inode: int | None = None
        #: The socket's address family and local port, once its inode is known (what a sock_diag dump asks for).
        self.family: int | None = None
        self.local_port: int | None = None
        self.record: SocketRecord | None = None
        #: Writes held back while keepalive probes an idle link (see L{hold}); None when not holding.
        self.held: Backlog | None = None
        self._max_held = max_held
        #: When the heartbeat last saw a live peer keep its receive window closed.
        self.window_closed_at: float | None = None
        #: When the heartbeat first found it in CLOSE_WAIT before the reactor had read the peer's FIN.
        self.close_wait_seen_at: float | None = None
        self._wrapper = wrapper

    def __repr__(self) -> str:
        return f"<TrackedConnection {self.id} {self.kind} {self.peer_host}:{self.peer_port} user={self.user}>"

    @property
    def user(self) -> str | None:
        """The user presence admitted this connection for; None while unauthenticated."""
        return self._user

    @user.setter
    def user(self, user: str | None) -> None:
        # Presence sets it when it admits the connection: from then on it is
        # no longer one of the unauthenticated that give way to newcomers.
        was, self._user = self._user, user
        if was is None and user is not None and self._tracker is not None:
            self._tracker._authenticated(self)
            self._tracker._changed_role(self)

    @property
    def kind(self) -> Kind:
        """What the connection is for: the listener's kind until presence admits it as a stream or chat."""
        return self._kind

    @kind.setter
    def kind(self, kind: Kind) -> None:
        self._kind = kind
        if self._tracker is not None:
            self._tracker._changed_role(self)

    @property
    def present(self) -> bool:
        """Is it someone's presence (a logged-in event stream or chat connection)?"""
        return self._user is not None and self._kind.persistent

    def request_started(self) -> None:
        """A whole request has arrived and is being answered (the HTTP channel says so)."""
        self.busy = True

    def request_finished(self) -> None:
        """The response is done: progress, and no longer busy."""
        self.busy = False
        if self._tracker is not None:
            self._tracker._progress(self)

    def evict(self) -> None:
        """Give way to a newer connection: reset at once, no response (nginx's reset_timedout_connection)."""
        self.evicted = True
        transport = self._wrapper.transport
        if transport is not None:
            transport.abortConnection()  # type: ignore[attr-defined]

    def has_unread_bytes(self) -> bool:
        """Are bytes waiting in the socket that we have not read yet?  (False without a real socket.)"""
        if self.sock is None:
            return False
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:  # nothing there (EAGAIN), or the socket is in trouble
            return False

    def close(self, reason: Reason, note: str | None = None) -> None:
        """End the connection; C{reason} is what everyone will be told (C{note}: who decided it)."""
        first = self.close_reason is None
        if first:
            self.close_reason = reason
        transport = self._wrapper.transport
        if transport is None:
            return
        if first and self.farewell is not None and reason not in ABORTED:
            try:
                self.farewell(reason, note)
            except Exception:
                self._log.failure("the last words to {conn} failed", conn=self)
        if reason in ABORTED and hasattr(transport, "abortConnection"):
            transport.abortConnection()
        else:
            self._wrapper.loseConnection()

    def hold(self) -> None:
        """
        Keep writes back for now.  Linux sends no keepalive probe while data
        is unacknowledged, so an event written to a peer whose cable was just
        pulled would stop the probes and restart the clock at
        C{TCP_USER_TIMEOUT}: detection would take seconds longer.  The
        heartbeat holds writes while probes are outstanding on an idle link
        and releases them as soon as the peer answers.
        """
        if self.held is None:
            self.held = Backlog(self._max_held)

    def release(self) -> None:
        """Write what was held, in order."""
        held, self.held = self.held, None
        if held:
            transport = self._wrapper.transport
            if transport is not None:
                transport.write(held.take_all())

    def write(self, data: bytes) -> None:
        """Write C{data}, or hold it while the link is being probed (past the bound: slow reader)."""
        if self.held is None:
            if self._wrapper.transport is not None:
                self._wrapper.transport.write(data)
        elif not self.held.push(data):
            self.held = None
            self.close(Reason.SLOW_READER)

    def window_recently_closed(self, now: float) -> bool:
        """Did a live peer keep its receive window closed within the last few seconds?"""
        return self.window_closed_at is not None and now - self.window_closed_at <= WINDOW_MEMORY

    def tcp_vitals(self) -> TcpVitals | None:
        """What the heartbeat reads every tick (cheaper than L{tcp_info})."""
        return read_tcp_vitals(self.sock) if self.sock is not None else None

    def tcp_info(self) -> TcpInfo | None:
        return read_tcp_info(self.sock) if self.sock is not None else None

    def tcp_calm(self) -> bool:
        """ESTABLISHED with nothing outstanding (L{read_tcp_calm}); False without a socket."""
        return self.sock is not None and read_tcp_calm(self.sock)

    def lose(self) -> None:
        """Close as Twisted would after the peer's FIN (what is held is written first)."""
        self._wrapper.loseConnection()


class _Refused(Protocol):
    """Stands in for a connection we will not serve: dropped before reading a byte."""

    def makeConnection(self, transport: ITransport) -> None:
        transport.abortConnection()  # type: ignore[attr-defined]


def tracked(protocol_or_transport: object) -> TrackedConnection | None:
    """
    The tracked connection under a protocol, found by walking down its
    C{.transport} links (an HTTP channel, under TLS or not; the chat
    protocol); None when there is none (a test transport).
    """
    node: object = protocol_or_transport
    for _ in range(8):
        if isinstance(node, TrackingProtocol):
            return node.conn
        node = getattr(node, "transport", None)
        if node is None:
            break
    return None


@implementer(IHalfCloseableProtocol)
class TrackingProtocol(ProtocolWrapper):
    factory: "TrackingFactory"

    conn: TrackedConnection

    def makeConnection(self, transport: ITransport) -> None:
        self.conn = self.factory.tracker._register(self, transport, self.factory.kind)
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.conn.last_alive = self.factory.tracker.monotonic()
        self.conn.bytes_in += len(data)
        super().dataReceived(data)

    def write(self, data: bytes) -> None:
        self.conn.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.conn.closing = True
        self.conn.release()
        super().loseConnection()

    def readConnectionLost(self) -> None:
        """The peer sent FIN: gone, or only done sending.  See L{ConnectionTracker._peer_eof}."""
        self.factory.tracker._peer_eof(self.conn)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ierror.ConnectionDone())) -> None:
        try:
            self.factory.tracker._unregister(self.conn, reason)
        finally:
            # Whatever the bookkeeping did, the application protocol must hear of it.
            super().connectionLost(reason)


class TrackingFactory(WrappingFactory):
    protocol = TrackingProtocol

    def __init__(self, wrapped: IProtocolFactory, tracker: "ConnectionTracker", kind: Kind) -> None:
        super().__init__(wrapped)
        self.tracker = tracker
        self.kind = kind

    def buildProtocol(self, addr: IAddress | None) -> ProtocolWrapper:
        # A refused peer gets a protocol that drops it on connect (Twisted's
        # WrappingFactory declares ProtocolWrapper; _Refused is not one).
        host = getattr(addr, "host", None)
        if host is not None and not self.tracker.admit_peer(host, self.kind):
            return _Refused()  # type: ignore[return-value]
        return super().buildProtocol(addr)

    def registerProtocol(self, p: ProtocolWrapper) -> None:
        """
        Not kept: the tracker holds every connection already, and
        WrappingFactory's own C{protocols} dict would be a second index,
        one entry per connection, that nothing reads.
        """

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        """See L{registerProtocol}."""


class ConnectionTracker:
    """All live connections of the process; bridges them to presence."""

    _log = Logger()

    def __init__(
        self,
        presence: Presence,
        admission: AdmissionSettings,
        keepalive: KeepaliveSettings,
        clock: IReactorTime,
        monotonic: Callable[[], float],
        max_held: int = 262144,
        overflow: int = 1024,
    ) -> None:
        self.presence = presence
        #: Bytes a connection may have held back before it counts as a slow reader.
        self.max_held = max_held
        self.admission = admission
        self.keepalive = keepalive
        self.clock = clock
        self.monotonic = monotonic
        self._connections: dict[int, TrackedConnection] = {}
        #: Connections counted against the caps (not yet evicted), per address and in all.
        self._per_address: dict[str, int] = {}
        self._counted = 0
        #: Unauthenticated HTTP connections, oldest progress first: who gives way.
        self._unauthenticated: OrderedDict[int, TrackedConnection] = OrderedDict()
        #: Connections that may be open beyond a budget until the next turns enforce it.
        self.overflow = overflow
        #: Reactor turns, counted while connections arrive (see the module docstring).
        self._turn = 0
        self._last_accept_turn = -10
        self._ticking: IDelayedCall | None = None
        #: Hosts already checked against [admission] networks (a flood asks about the same few).
        self._allowed: dict[str, bool] = {}
        #: Connections that gave way to newer ones, and newcomers dropped, since start.
        self.evictions = 0
        self.drops = 0
        self._ids = count(1)
        self._missing_options_logged: set[str] = set()
        self._refusals_logged_at = -1e9
        self._when_empty: list[Deferred[None]] = []
        self._by_inode: dict[int, TrackedConnection] = {}
        #: The connections that are someone's presence, by id (see L{present}).
        self._present: dict[int, TrackedConnection] = {}
        #: Tracked sockets per address family and per local port (what a netlink dump is asked for).
        self._families: dict[int, int] = {}
        self._ports: dict[int, int] = {}

    # ------------------------------------------------------------ public

    def wrap(self, factory: IProtocolFactory, kind: Kind) -> TrackingFactory:
        """Wrap a listener's factory; C{kind} is L{Kind.HTTP} or L{Kind.CHAT}."""
        return TrackingFactory(factory, self, kind)

    def connections(self) -> list[TrackedConnection]:
        return list(self._connections.values())

    def present(self) -> list[TrackedConnection]:
        """
        The connections that are someone's presence (L{TrackedConnection.present}):
        at most max_users times max_connections_per_user, however many are
        open.  Kept up to date as presence admits connections, so the
        heartbeat never walks every connection to find them.
        """
        return list(self._present.values())

    def families(self) -> list[int]:
        """The address families (C{AF_INET}, C{AF_INET6}) of the tracked sockets, each once."""
        return [family for family, n in self._families.items() if n]

    def local_ports(self) -> list[int]:
        """The local ports of the tracked sockets (the listeners' ports), each once."""
        return [port for port, n in self._ports.items() if n]

    def by_inode(self, inode: int) -> TrackedConnection | None:
        """The connection whose socket has this inode (what netlink sock_diag reports)."""
        return self._by_inode.get(inode)

    def __len__(self) -> int:
        return len(self._connections)

    def connection_for(self, protocol_or_transport: object) -> TrackedConnection:
        """
        The tracked connection under a protocol (walks down C{.transport}
        links: an HTTP channel, under TLS or not; the chat protocol).  Every
        listener is wrapped by this tracker, so one is always found; a
        LookupError means a listener was not, which is a bug.
        """
        conn = tracked(protocol_or_transport)
        if conn is None:
            raise LookupError(f"no tracked connection under {protocol_or_transport!r}")
        return conn

    def admit_peer(self, host: str, kind: Kind = Kind.HTTP) -> bool:
        """
        The accept-time checks: an allowed network, then the budgets (see the
        module docstring).  Makes room by evicting when it can; False: drop
        the newcomer before it reads a byte.
        """
        allowed = self._allowed.get(host)
        if allowed is None:
            allowed = peer_allowed(host, self.admission.networks)
            if len(self._allowed) >= 4096:
                self._allowed.clear()
            self._allowed[host] = allowed
        if not allowed:
            self._log_refusal("{host} is outside [admission] networks; dropped", host=host)
            self.drops += 1
            return False
        from_host = self._per_address.get(host, 0)
        cap = self.admission.max_connections_per_address
        if from_host >= cap and not self._make_room(host, from_host - cap, "{n} connections from {host}, the limit",
                                                    n=from_host):
            return self._drop(host, "{n} connections from that address, the limit, all logged in", n=from_host)
        waiting = len(self._unauthenticated)
        if kind is Kind.HTTP and waiting >= self.admission.max_unauthenticated and not self._make_room(
                None, waiting - self.admission.max_unauthenticated, "{n} connections not logged in, the limit",
                n=waiting):
            return self._drop(host, "{n} connections not logged in, a burst past the limit", n=waiting)
        if self._counted >= self.admission.max_connections and not self._make_room(
                None, self._counted - self.admission.max_connections, "{n} connections open, the limit",
                n=self._counted):
            return self._drop(host, "{n} connections open, the limit, all logged in", n=self._counted)
        return True

    def unauthenticated(self) -> int:
        """HTTP connections open that have not authenticated."""
        return len(self._unauthenticated)

    # ----------------------------------------------------------- private

    def _log_refusal(self, fmt: str, **kw: Any) -> None:
        # A flood must not flood the log too: at most one line per 10 s.
        now = self.monotonic()
        if now - self._refusals_logged_at >= 10:
            self._refusals_logged_at = now
            self._log.warn(fmt, evictions=self.evictions, drops=self.drops, **kw)

    def _drop(self, host: str, why: str, **kw: Any) -> bool:
        self.drops += 1
        self._log_refusal("{host} dropped: " + why + " ({drops} dropped, {evictions} made way since start)",
                          host=host, **kw)
        return False

    def _make_room(self, host: str | None, over: int, why: str, **kw: Any) -> bool:
        """
        Evict one connection (of C{host} if given) for a newcomer; when only
        connections not yet read stand in the way, let the newcomer in beyond
        the budget (C{over} is by how much it is already) unless that passes
        C{overflow}.  False: no room can be made.
        """
        self._start_ticking()  # under pressure: count reactor turns until it is over
        if self._evict_one(host, why, **kw):
            return True
        return over < self.overflow and any(
            host is None or conn.peer_host == host for conn in self._unauthenticated.values())

    def _evict_one(self, host: str | None, why: str, **kw: Any) -> bool:
        """Evict the unauthenticated HTTP connection that should give way (of C{host} if given)."""
        victim = self._victim(host)
        if victim is None:
            return False
        self._uncount(victim)
        victim.evict()
        self.evictions += 1
        self._log_refusal("made way for a new connection: " + why + "; closed one from {victim} not logged in "
                          "({evictions} so far)", host=host, victim=victim.peer_host, **kw)
        return True

    def _start_ticking(self) -> None:
        """
        Count reactor turns (a call at the start of each) while budgets are
        under pressure; when nothing presses, nothing is scheduled.
        """
        if self._ticking is None:
            self._ticking = self.clock.callLater(0, self._tick)

    def _tick(self) -> None:
        """
        One reactor turn has passed: the connections accepted two turns ago
        have been read once and may give way; enforce the budgets a burst of
        newcomers went past.
        """
        self._ticking = None
        self._turn += 1
        admission = self.admission
        for host, n_open in [(h, n) for h, n in self._per_address.items()
                             if n > admission.max_connections_per_address]:
            while n_open > admission.max_connections_per_address and self._evict_one(
                    host, "{n} connections from {host}, the limit", n=n_open):
                n_open -= 1
        while len(self._unauthenticated) > admission.max_unauthenticated and self._evict_one(
                None, "{n} connections not logged in, the limit", n=len(self._unauthenticated)):
            pass
        while self._counted > admission.max_connections and self._evict_one(
                None, "{n} connections open, the limit", n=self._counted):
            pass
        over = (len(self._unauthenticated) > admission.max_unauthenticated
                or self._counted > admission.max_connections
                or any(n > admission.max_connections_per_address for n in self._per_address.values()))
        if over or self._turn - self._last_accept_turn < 2:
            self._start_ticking()

    def _victim(self, host: str | None) -> TrackedConnection | None:
        """
        The first to give way, by the order of the module docstring.  The
        socket of a connection that has sent nothing is peeked at only when
        that decides (a flood of fresh connections must not cost a system
        call per candidate per accept).
        """
        squatter_since = self.monotonic() - SILENT_AFTER
        unread_since = self._turn - 1  # accepted since: not read yet, not a candidate
        talking: TrackedConnection | None = None
        quiet: list[TrackedConnection] = []  # sent nothing yet: squatters or newcomers, oldest first
        waiting: TrackedConnection | None = None
        for conn in self._unauthenticated.values():
            if host is not None and conn.peer_host != host:
                continue
            if conn.accepted_turn >= unread_since:
                continue
            if conn.closing:
                continue
            if conn.busy:
                waiting = waiting or conn
            elif conn.bytes_in:
                talking = talking or conn
            else:
                # The quiet never make progress, so they stay in the order they came: the
                # first old enough that has said nothing at all goes before anyone else.
                if conn.opened_at <= squatter_since and not conn.has_unread_bytes():
                    return conn
                quiet.append(conn)
        if talking is not None:
            return talking
        for conn in quiet:
            if not conn.has_unread_bytes():
                return conn  # the oldest newcomer that has sent nothing yet
        return next(iter(quiet), None) or waiting

    def _uncount(self, conn: TrackedConnection) -> None:
        """Stop counting C{conn} against the caps (it is gone, or going)."""
        if conn.evicted or conn.id not in self._connections:
            return
        self._unauthenticated.pop(conn.id, None)
        self._counted -= 1
        left = self._per_address.get(conn.peer_host, 1) - 1
        if left:
            self._per_address[conn.peer_host] = left
        else:
            self._per_address.pop(conn.peer_host, None)

    def _authenticated(self, conn: TrackedConnection) -> None:
        """Presence admitted C{conn}: it no longer gives way."""
        self._unauthenticated.pop(conn.id, None)

    def _note_endpoint(self, conn: TrackedConnection) -> None:
        """Count C{conn}'s address family and local port, once, at accept."""
        sock = conn.sock
        if sock is None:
            return
        try:
            family = sock.family
            port = sock.getsockname()[1] if family in (socket.AF_INET, socket.AF_INET6) else None
        except (OSError, AttributeError, IndexError, TypeError):
            return
        if not isinstance(port, int):
            return
        # The port object already counted, if any: one int of the listener's
        # for all its connections, not one each (~30 bytes per connection).
        port = next((known for known in self._ports if known == port), port)
        conn.family, conn.local_port = family, port
        self._families[family] = self._families.get(family, 0) + 1
        self._ports[port] = self._ports.get(port, 0) + 1

    def _changed_role(self, conn: TrackedConnection) -> None:
        """C{conn}'s user or kind changed: it may have become someone's presence."""
        if conn.present and conn.id in self._connections:
            self._present[conn.id] = conn

    def _progress(self, conn: TrackedConnection) -> None:
        """C{conn} finished a response: it goes to the back of the line."""
        conn.progress_at = self.monotonic()
        if conn.id in self._unauthenticated:
            self._unauthenticated.move_to_end(conn.id)

    def _register(self, wrapper: TrackingProtocol, transport: ITransport, kind: Kind) -> TrackedConnection:
        peer = transport.getPeer()
        host = getattr(peer, "host", "") or ""
        port = getattr(peer, "port", 0) or 0
        conn = TrackedConnection(next(self._ids), kind, host, port, wrapper, self.monotonic(), self.max_held,
                                 tracker=self)
        tcp = find_tcp_transport(transport)
        if tcp is not None:
            conn.record = install_recorder(tcp)
            # The real socket, not the recorder: the heartbeat reads it every tick.
            conn.sock = find_socket(tcp) or tcp.socket
            try:
                # Lines and events are small and latency matters: no Nagle delay
                # (a second line written right after one waited ~40 ms for the ACK).
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
            vitals = conn.tcp_vitals()
            if vitals is not None:
                conn.rtt_ms = vitals.rtt_us / 1000.0  # the handshake's, until the first tick
            conn.inode = socket_inode(conn.sock)
            if conn.inode is not None:
                self._by_inode[conn.inode] = conn
                self._note_endpoint(conn)
            missing = apply_keepalive(conn.sock, self.keepalive)
            new = [name for name in missing if name not in self._missing_options_logged]
            if new:
                self._missing_options_logged.update(new)
                self._log.warn("socket options not available here, dead peers are found later: {names}",
                               names=", ".join(new))
        conn.accepted_turn = self._last_accept_turn = self._turn
        self._connections[conn.id] = conn
        self._per_address[host] = self._per_address.get(host, 0) + 1
        self._counted += 1
        if kind is Kind.HTTP:
            self._unauthenticated[conn.id] = conn
        return conn

    def _peer_eof(self, conn: TrackedConnection) -> None:
        """
        The peer half-closed.  A browser that closed its tab and a client that
        only shut down its sending side look the same from here; for an event
        stream we write a probe: a closed peer answers it with RST (then the
        user simply left), a half-closed one keeps the socket in CLOSE_WAIT and
        the heartbeat ends it with ``tcp-state``.  Any other connection is
        closed as Twisted would have done.
        """
        conn.peer_eof = True
        if conn.on_peer_eof is None:
            conn.lose()
            return
        conn.on_peer_eof()
        self.clock.callLater(EOF_PROBE_DELAY, self._check_after_eof, conn)

    def _check_after_eof(self, conn: TrackedConnection) -> None:
        if conn.id not in self._connections:
            return
        info = conn.tcp_info()
        if info is None or info.state_name in ("CLOSE", "CLOSED"):
            conn.close(Reason.CLOSED)

    def close_all(self, reason: Reason, timeout: float) -> Deferred[None]:
        """Close every connection with C{reason}; fires when all are gone or after C{timeout}."""
        done: Deferred[None] = Deferred()
        if not self._connections:
            done.callback(None)
            return done
        self._when_empty.append(done)
        timer = self.clock.callLater(timeout, self._give_up_waiting)

        def stop_timer(result: None) -> None:
            if timer.active():
                timer.cancel()
            return result

        done.addBoth(stop_timer)
        for conn in list(self._connections.values()):
            conn.close(reason)
        return done

    def _give_up_waiting(self) -> None:
        waiting, self._when_empty = self._when_empty, []
        for d in waiting:
            d.callback(None)

    def _unregister(self, conn: TrackedConnection, failure: Failure) -> None:
        self._uncount(conn)
        if self._connections.pop(conn.id, None) is None:
            return
        self._present.pop(conn.id, None)
        if conn.inode is not None and self._by_inode.get(conn.inode) is conn:
            del self._by_inode[conn.inode]
        if conn.family is not None:
            self._families[conn.family] -= 1
        if conn.local_port is not None:
            self._ports[conn.local_port] -= 1
        if conn.user is not None and conn.kind.persistent:
            # A plain HTTP connection ending says nothing: its user stays for http_grace.
            reason, detected_after = classify(conn, failure, self.monotonic())
            try:
                self.presence.detach(conn, reason, detected_after)
            except Exception:
                # The connection is gone whatever presence made of it.
                self._log.failure("presence did not take the end of {conn}", conn=conn)
        if not self._connections and self._when_empty:
            self._give_up_waiting()


class ClosingService(MultiService):
    """
    Closes every connection with reason ``shutdown`` when the daemon stops,
    and only then stops its children (the store).

    MultiService stops its children without waiting for one another, so the
    store is made a child of this service: the operators still online are
    told why they were disconnected, and their logouts are written to the
    audit log before the database is closed.
    """

    def __init__(self, tracker: ConnectionTracker, timeout: float = 2.0) -> None:
        super().__init__()
        self.tracker = tracker
        self.timeout = timeout

    def stopService(self) -> Deferred[None]:
        d = self.tracker.close_all(Reason.SHUTDOWN, self.timeout)
        d.addCallback(lambda _: MultiService.stopService(self))
        d.addCallback(lambda _: None)
        return d
