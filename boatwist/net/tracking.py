"""
Every accepted connection, of every listener, passes through here.

L{TrackingFactory} wraps a listener's factory (``policies.WrappingFactory``)
and, for each accepted connection:

  - drops it at once if the peer is outside ``[admission] networks`` or over
    the per-address / total connection caps -- before a byte is read;
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
"""

from __future__ import annotations

import socket
from itertools import count
from typing import Any, Callable

from twisted.application.service import MultiService
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IProtocolFactory, IReactorTime, ITransport
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
from boatwist.net.tcpinfo import TcpInfo, TcpVitals, read_tcp_info, read_tcp_vitals
from boatwist.presence import Kind, Presence
from boatwist.reasons import ABORTED, Reason

#: Seconds a sighting of a closed receive window explains a later timeout (slow reader, not a dead peer).
WINDOW_MEMORY = 3.0
#: How long after a peer's FIN on an event stream we look for the RST our probe provokes.
EOF_PROBE_DELAY = 0.05


class TrackedConnection:
    """One accepted connection, as presence and the heartbeat see it."""

    _log = Logger()

    def __init__(self, ident: int, kind: Kind, peer_host: str, peer_port: int, wrapper: "TrackingProtocol",
                 now: float, max_held: int) -> None:
        self.id = ident
        self.kind = kind
        self.peer_host = peer_host
        self.peer_port = peer_port
        #: Set by presence when it admits the connection.
        self.user: str | None = None
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
        self.record: SocketRecord | None = None
        #: Writes held back while keepalive probes an idle link (see L{hold}); None when not holding.
        self.held: Backlog | None = None
        self._max_held = max_held
        #: When the heartbeat last saw a live peer keep its receive window closed.
        self.window_closed_at: float | None = None
        self._wrapper = wrapper

    def __repr__(self) -> str:
        return f"<TrackedConnection {self.id} {self.kind} {self.peer_host}:{self.peer_port} user={self.user}>"

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

    def lose(self) -> None:
        """Close as Twisted would after the peer's FIN (what is held is written first)."""
        self._wrapper.loseConnection()


class _Refused(Protocol):
    """Stands in for a connection we will not serve: dropped before reading a byte."""

    def makeConnection(self, transport: ITransport) -> None:
        transport.abortConnection()  # type: ignore[attr-defined]


@implementer(IHalfCloseableProtocol)
class TrackingProtocol(ProtocolWrapper):
    factory: "TrackingFactory"

    conn: TrackedConnection

    def makeConnection(self, transport: ITransport) -> None:
        self.conn = self.factory.tracker._register(self, transport, self.factory.kind)
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.conn.last_alive = self.factory.tracker.monotonic()
        super().dataReceived(data)

    def write(self, data: bytes) -> None:
        self.conn.write(data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
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
        if host is not None and not self.tracker.admit_peer(host):
            return _Refused()  # type: ignore[return-value]
        return super().buildProtocol(addr)


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
    ) -> None:
        self.presence = presence
        #: Bytes a connection may have held back before it counts as a slow reader.
        self.max_held = max_held
        self.admission = admission
        self.keepalive = keepalive
        self.clock = clock
        self.monotonic = monotonic
        self._connections: dict[int, TrackedConnection] = {}
        self._per_address: dict[str, int] = {}
        self._ids = count(1)
        self._missing_options_logged: set[str] = set()
        self._refusals_logged_at = -1e9
        self._when_empty: list[Deferred[None]] = []
        self._by_inode: dict[int, TrackedConnection] = {}

    # ------------------------------------------------------------ public

    def wrap(self, factory: IProtocolFactory, kind: Kind) -> TrackingFactory:
        """Wrap a listener's factory; C{kind} is L{Kind.HTTP} or L{Kind.CHAT}."""
        return TrackingFactory(factory, self, kind)

    def connections(self) -> list[TrackedConnection]:
        return list(self._connections.values())

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
        node: object = protocol_or_transport
        for _ in range(8):
            if isinstance(node, TrackingProtocol):
                return node.conn
            node = getattr(node, "transport", None)
            if node is None:
                break
        raise LookupError(f"no tracked connection under {protocol_or_transport!r}")

    def admit_peer(self, host: str) -> bool:
        """The accept-time checks: allowed network, per-address and total caps."""
        if not peer_allowed(host, self.admission.networks):
            self._log_refusal("{host} is outside [admission] networks; dropped", host=host)
            return False
        if len(self._connections) >= self.admission.max_connections:
            self._log_refusal("{host} dropped: {n} connections open, the limit", host=host,
                              n=len(self._connections))
            return False
        if self._per_address.get(host, 0) >= self.admission.max_connections_per_address:
            self._log_refusal("{host} dropped: {n} connections from that address, the limit", host=host,
                              n=self._per_address[host])
            return False
        return True

    # ----------------------------------------------------------- private

    def _log_refusal(self, fmt: str, **kw: Any) -> None:
        # A flood must not flood the log too: at most one line per 10 s.
        now = self.monotonic()
        if now - self._refusals_logged_at >= 10:
            self._refusals_logged_at = now
            self._log.warn(fmt, **kw)

    def _register(self, wrapper: TrackingProtocol, transport: ITransport, kind: Kind) -> TrackedConnection:
        peer = transport.getPeer()
        host = getattr(peer, "host", "") or ""
        port = getattr(peer, "port", 0) or 0
        conn = TrackedConnection(next(self._ids), kind, host, port, wrapper, self.monotonic(), self.max_held)
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
            missing = apply_keepalive(conn.sock, self.keepalive)
            new = [name for name in missing if name not in self._missing_options_logged]
            if new:
                self._missing_options_logged.update(new)
                self._log.warn("socket options not available here, dead peers are found later: {names}",
                               names=", ".join(new))
        self._connections[conn.id] = conn
        self._per_address[host] = self._per_address.get(host, 0) + 1
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
        if self._connections.pop(conn.id, None) is None:
            return
        if conn.inode is not None and self._by_inode.get(conn.inode) is conn:
            del self._by_inode[conn.inode]
        left = self._per_address.get(conn.peer_host, 1) - 1
        if left:
            self._per_address[conn.peer_host] = left
        else:
            self._per_address.pop(conn.peer_host, None)
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
