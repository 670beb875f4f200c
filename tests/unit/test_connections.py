"""
boatwist.net.tracking: the accept-time checks, tracking, and why a connection ended.

Connections are built as the reactor builds them (C{factory.buildProtocol},
then C{makeConnection} on a L{StringTransport}); time is a L{Clock}; the
socket layer (L{boatwist.net.tcpinfo}, L{boatwist.net.recorder}) is replaced by fakes where a test needs
C{TCP_INFO} or a socket, because test transports have none.
"""

from __future__ import annotations

import errno
import ipaddress
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from boatwist.net import tracking as connections
from boatwist.config import AdmissionSettings, KeepaliveSettings
from boatwist.net.tracking import (
    EOF_PROBE_DELAY,
    ConnectionTracker,
    TrackedConnection,
    TrackingProtocol,
    peer_allowed,
)
from boatwist.events import EventHub
from boatwist.presence import Kind, Presence, Refusal
from boatwist.net.classify import classify
from boatwist.net.recorder import RecordingSocket, SocketRecord
from boatwist.net.tcpinfo import TcpInfo

ESTABLISHED, CLOSE, CLOSE_WAIT = 1, 7, 8


# ------------------------------------------------------------------ helpers


class Recorder(Protocol):
    """The application protocol under the wrapper: notes what it is told."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def makeConnection(self, transport: Any) -> None:
        self.events.append("makeConnection")
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("data", data))

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.events.append(("lost", reason.type))


class RecorderFactory(Factory):
    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        proto = Recorder()
        proto.factory = self
        self.built.append(proto)
        return proto


class World:
    """A tracker on a real Presence and EventHub, driven by a Clock."""

    def __init__(self, networks: tuple[str, ...] = ("10.0.0.0/8", "::1/128"), max_connections: int = 512,
                 per_address: int = 64, max_users: int = 10, keepalive: KeepaliveSettings | None = None,
                 max_unauthenticated: int = 128) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.hub = EventHub()
        self.events: list[Any] = []
        self.hub.subscribe(self.events.append)
        self.admission = AdmissionSettings(
            max_users=max_users,
            networks=tuple(ipaddress.ip_network(n) for n in networks),
            max_connections=max_connections,
            max_connections_per_address=per_address,
            max_unauthenticated=max_unauthenticated,
        )
        self.presence = Presence(self.hub, self.admission, self.clock.seconds, lambda: 1_700_000_000.0)
        self.tracker = ConnectionTracker(self.presence, self.admission, keepalive or KeepaliveSettings(),
                                         self.clock, self.clock.seconds)
        self.inner = RecorderFactory()
        self.wrapping = self.tracker.wrap(self.inner, Kind.HTTP)
        #: What presence was told of ended connections: (conn, reason, detected_after).
        self.ended: list[tuple[Any, str, float | None]] = []
        real_detach = self.presence.detach

        def detach(conn: Any, reason: Any, detected_after: float | None = None) -> None:
            self.ended.append((conn, reason, detected_after))
            real_detach(conn, reason, detected_after)

        self.presence.detach = detach  # type: ignore[method-assign]

    def bind(self, conn: Any, user: str, kind: Kind) -> Refusal | None:
        """Admit conn to presence as user's event stream or chat connection."""
        return self.presence.admit(conn, user, kind)

    def touch_http(self, conn: Any, user: str) -> Refusal | None:
        """A plain request by user on conn."""
        return self.presence.admit(conn, user, Kind.HTTP)

    def occupy(self, user: str, host: str = "10.0.0.9") -> None:
        """user online through a plain request from another connection."""
        _, _ = self.connect(host, 41000)
        self.touch_http(self.tracker.connections()[-1], user)

    def connect(self, host: str = "10.1.2.3", port: int = 40000,
                transport: StringTransport | None = None) -> tuple[Any, StringTransport]:
        addr: Any = IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)
        proto = self.wrapping.buildProtocol(addr)
        if transport is None:
            transport = StringTransport(peerAddress=addr)
        else:
            transport.peerAddr = addr
        proto.makeConnection(transport)
        return proto, transport

    def turns(self) -> None:
        """
        Let the reactor turn twice (the tracker counts turns while a budget
        is under pressure): what was accepted has been read once and may give way.
        """
        self.clock.advance(0)
        self.clock.advance(0)

    def connect_read(self, host: str = "10.1.2.3", port: int = 40000) -> tuple[Any, StringTransport]:
        """connect(), then the turns that read it."""
        result = self.connect(host, port)
        self.turns()
        return result

    def presence_events(self) -> list[tuple[str, str, str]]:
        return [(e.data["user"], e.data["state"], e.data["reason"]) for e in self.events if e.kind == "presence"]


@pytest.fixture
def logged() -> Any:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def tracker_warnings(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_namespace", "").startswith("boatwist.net.tracking")
            and e.get("log_level") is not None and e["log_level"].name == "warn"]


class FakeSocket:
    """Enough of a socket for find_tcp_transport, install_recorder and apply_keepalive."""

    def __init__(self, refuse: tuple[int, ...] = ()) -> None:
        self.options: list[tuple[int, int, int]] = []
        self.refuse = refuse

    def fileno(self) -> int:
        return 99

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return b""

    def send(self, data: bytes, flags: int = 0) -> int:
        return len(data)

    def getsockopt(self, *args: Any) -> Any:
        raise OSError(errno.ENOPROTOOPT, "not here")

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if option in self.refuse:
            raise OSError(errno.ENOPROTOOPT, "not here")
        self.options.append((level, option, value))


class SocketTransport(StringTransport):
    """A StringTransport that owns a (fake) socket, as tcp.Server does."""

    def __init__(self, sock: FakeSocket) -> None:
        super().__init__()
        self.socket = sock


def fake_tcp_info(monkeypatch: pytest.MonkeyPatch, info: TcpInfo | None) -> list[Any]:
    """Make tcpinfo.read_tcp_info answer C{info}; returns the sockets it was asked about."""
    asked: list[Any] = []

    def read(sock: Any, platform: str | None = None) -> TcpInfo | None:
        asked.append(sock)
        return info

    monkeypatch.setattr(connections, "read_tcp_info", read)
    return asked


# ------------------------------------------------------------- peer_allowed


V4 = (ipaddress.ip_network("10.0.0.0/8"),)
V6 = (ipaddress.ip_network("2001:db8::/32"), ipaddress.ip_network("fe80::/10"))


@pytest.mark.parametrize(
    "host, networks, allowed",
    [
        ("10.0.0.1", V4, True),
        ("10.255.255.255", V4, True),
        ("11.0.0.1", V4, False),
        ("192.168.1.1", V4, False),
        ("2001:db8::5", V6, True),
        ("2001:db9::5", V6, False),
        ("::ffff:10.0.0.1", V4, True),
        ("::ffff:192.168.0.1", V4, False),
        ("fe80::1%eth0", V6, True),
        ("fe80::1%eth0", V4, False),
        ("10.0.0.1", (ipaddress.ip_network("::/0"),), False),
        ("::1", (ipaddress.ip_network("0.0.0.0/0"),), False),
        ("not-an-address", V4 + V6, False),
        ("", V4 + V6, False),
        ("10.0.0.300", V4, False),
        ("%eth0", V6, False),
    ],
)
def test_peer_allowed(host: str, networks: tuple[Any, ...], allowed: bool) -> None:
    """
    An address is allowed only inside a listed network of its own family; an
    IPv4-mapped IPv6 address counts as the IPv4 address, a scope id is
    ignored, and anything that is not an address is refused.
    """
    assert peer_allowed(host, networks) is allowed


# --------------------------------------------------------- accept-time drop


def test_address_outside_networks_is_dropped_before_a_byte_is_read() -> None:
    """
    A peer outside [admission] networks gets no application protocol at all:
    the wrapped factory is never asked, the transport is aborted at once, and
    nothing is tracked.
    """
    w = World()
    proto, transport = w.connect("192.168.1.50")
    assert not isinstance(proto, TrackingProtocol)
    assert w.inner.built == []
    assert transport.disconnected  # abortConnection, not a graceful close
    assert len(w.tracker) == 0
    assert w.tracker.connections() == []


def test_address_inside_networks_reaches_the_application() -> None:
    """An allowed peer's protocol is made, tracked with its address, and hears its bytes."""
    w = World()
    proto, transport = w.connect("10.9.8.7", 5555)
    assert isinstance(proto, TrackingProtocol)
    [app] = w.inner.built
    proto.dataReceived(b"hello")
    assert app.events == ["makeConnection", ("data", b"hello")]
    [conn] = w.tracker.connections()
    assert (conn.peer_host, conn.peer_port, conn.kind, conn.user) == ("10.9.8.7", 5555, "http", None)
    assert not transport.disconnecting


def test_ipv6_peer_is_checked_against_ipv6_networks() -> None:
    """An IPv6 peer inside an IPv6 network is admitted; outside it is dropped."""
    w = World()
    proto, _ = w.connect("::1")
    assert isinstance(proto, TrackingProtocol)
    _, transport = w.connect("2001:db8::1")
    assert transport.disconnected
    assert len(w.tracker) == 1


def test_per_address_cap_makes_way_from_that_address_only() -> None:
    """
    At max_connections_per_address a newcomer from that address is let in and
    the oldest unauthenticated connection *of that address* gives way (reset);
    other addresses are untouched, and the counts stay within the cap.
    """
    w = World(per_address=2)
    first, t1 = w.connect_read("10.0.0.1", 1)
    _, t2 = w.connect_read("10.0.0.1", 2)
    _, other = w.connect_read("10.0.0.2", 4)
    _, t3 = w.connect("10.0.0.1", 3)
    w.turns()  # the first pressure: what was there is given its turn, then the cap is enforced
    assert t1.disconnected and not t2.disconnected and not t3.disconnected and not other.disconnected
    assert len(w.inner.built) == 4
    assert w.tracker.evictions == 1
    first.connectionLost(Failure(ConnectionDone()))
    assert len(w.tracker) == 3
    assert w.tracker._per_address == {"10.0.0.1": 2, "10.0.0.2": 1}


def test_per_address_cap_drops_the_newcomer_when_all_are_logged_in() -> None:
    """When every connection of the address has authenticated, none gives way: the newcomer is dropped."""
    w = World(per_address=2)
    for port in (1, 2):
        w.connect_read("10.0.0.1", port)
        w.touch_http(w.tracker.connections()[-1], f"user{port}")
    _, third = w.connect("10.0.0.1", 3)
    assert third.disconnected
    assert len(w.inner.built) == 2
    assert w.tracker.drops == 1
    assert not any(c.evicted for c in w.tracker.connections())


def test_total_cap_makes_way_or_drops() -> None:
    """At max_connections an unauthenticated connection gives way; with all logged in, the newcomer is dropped."""
    w = World(max_connections=2)
    w.connect_read("10.0.0.1")
    w.touch_http(w.tracker.connections()[-1], "alice")
    _, squatter = w.connect_read("10.0.0.2")
    _, third = w.connect_read("10.0.0.3")
    assert squatter.disconnected and not third.disconnected
    w.touch_http(w.tracker.connections()[-1], "bob")
    _, fourth = w.connect("10.0.0.4")
    assert fourth.disconnected
    assert len(w.inner.built) == 3


def test_unauthenticated_budget_is_smaller_and_logged_in_connections_keep_the_rest() -> None:
    """
    With max_unauthenticated = 3, the fourth connection not logged in
    pushes the oldest one out; logging in takes a connection out of that
    budget, so 3 more fit beside it.
    """
    w = World(max_unauthenticated=3)
    transports = [w.connect_read("10.0.0.1", port)[1] for port in range(4)]
    assert [t.disconnected for t in transports] == [True, False, False, False]
    assert w.tracker.unauthenticated() == 3
    alice = w.tracker.connections()[1]
    w.touch_http(alice, "alice")
    assert w.tracker.unauthenticated() == 2
    more = [w.connect_read("10.0.0.2", port)[1] for port in range(2)]
    assert not any(t.disconnected for t in more)
    # The oldest unauthenticated went; alice's, older still, stays.
    assert [t.disconnected for t in transports] == [True, False, True, False]
    assert not alice.evicted


def test_nobody_gives_way_before_it_was_read_once() -> None:
    """
    A burst accepted in one reactor turn (Twisted accepts hundreds before it
    reads any): none of it is pushed out by the rest of the burst -- it goes
    past the budget -- and a turn later the budget is enforced, oldest first.
    """
    w = World(max_unauthenticated=3)
    transports = [w.connect("10.0.0.1", port)[1] for port in range(6)]
    assert not any(t.disconnected for t in transports)
    assert w.tracker.unauthenticated() == 6
    w.turns()
    assert [t.disconnected for t in transports] == [True, True, True, False, False, False]
    assert w.tracker.unauthenticated() == 3


def test_turns_are_counted_only_under_pressure() -> None:
    """A quiet tracker schedules nothing; after a burst it stops counting turns once the budgets hold again."""
    w = World(max_unauthenticated=3)
    for port in range(3):
        w.connect("10.0.0.1", port)
    assert w.clock.getDelayedCalls() == []
    w.connect("10.0.0.1", 9)
    assert w.clock.getDelayedCalls() != []
    for _ in range(4):
        w.clock.advance(0)
    assert w.clock.getDelayedCalls() == []
    assert w.tracker.unauthenticated() == 3


def test_a_burst_past_the_overflow_is_dropped() -> None:
    """Beyond the budget plus the overflow (the listen backlog) a burst's newcomers are dropped."""
    w = World(max_unauthenticated=2)
    w.tracker.overflow = 3
    transports = [w.connect("10.0.0.1", port)[1] for port in range(8)]
    assert [t.disconnected for t in transports] == [False] * 5 + [True] * 3


def test_who_gives_way_first() -> None:
    """
    The order: closing, or silent for SILENT_AFTER; then one that sent bytes
    with no request being answered; then one too young to have spoken; then
    one whose request is being answered -- each oldest progress first, and a
    finished response moves a connection to the back of the line.
    """
    w = World(max_unauthenticated=4)
    _, busy = w.connect("10.0.0.1", 1)
    _, talker = w.connect("10.0.0.1", 2)
    _, silent = w.connect("10.0.0.1", 3)
    busy_conn, talker_conn, _ = w.tracker.connections()
    busy_conn.bytes_in = 80
    busy_conn.request_started()
    talker_conn.bytes_in = 10
    w.clock.advance(connections.SILENT_AFTER)
    _, young = w.connect_read("10.0.0.1", 4)  # 4 now: full
    w.connect_read("10.0.0.2", 5)
    assert silent.disconnected and not talker.disconnected and not busy.disconnected and not young.disconnected
    w.connect_read("10.0.0.3", 6)
    assert talker.disconnected and not young.disconnected and not busy.disconnected
    w.connect_read("10.0.0.4", 7)
    assert young.disconnected and not busy.disconnected  # the oldest of the young
    busy_conn.request_finished()  # back of the line, and talking
    for c in w.tracker.connections()[-3:]:
        c.bytes_in = 1
    w.connect_read("10.0.0.5", 8)
    assert not busy.disconnected
    assert {c.peer_port for c in w.tracker.connections() if c.evicted} == {3, 2, 4, 5}


def test_a_connection_closing_after_its_response_is_not_reset() -> None:
    """One we are closing after its response goes last: a reset would destroy the response unread."""
    w = World(max_unauthenticated=2)
    proto, closing = w.connect("10.0.0.1", 1)
    w.tracker.connections()[0].bytes_in = 10
    proto.loseConnection()
    _, talker = w.connect_read("10.0.0.1", 2)
    w.tracker.connections()[1].bytes_in = 10
    w.connect_read("10.0.0.1", 3)
    assert talker.disconnected and not closing.disconnected


def test_a_connection_whose_request_is_unread_waits_its_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """A newcomer whose first bytes are still in its socket goes after one that said nothing."""
    w = World(max_unauthenticated=2)
    _, fresh = w.connect("10.0.0.1", 1)
    _, silent = w.connect_read("10.0.0.1", 2)
    first = w.tracker.connections()[0]
    monkeypatch.setattr(TrackedConnection, "has_unread_bytes", lambda conn: conn is first)
    w.connect_read("10.0.0.1", 3)
    assert silent.disconnected and not fresh.disconnected


def test_chat_connections_never_give_way_and_do_not_count_as_unauthenticated() -> None:
    """The chat port budgets its own logins: its connections are not evicted for HTTP newcomers."""
    w = World(per_address=2, max_unauthenticated=1)
    chat = w.tracker.wrap(RecorderFactory(), Kind.CHAT)
    for port in (1, 2):
        addr = IPv4Address("TCP", "10.0.0.1", port)
        chat.buildProtocol(addr).makeConnection(StringTransport(peerAddress=addr))
    w.turns()
    assert w.tracker.unauthenticated() == 0
    _, http = w.connect("10.0.0.1", 3)
    assert http.disconnected
    assert not any(c.evicted for c in w.tracker.connections())


def test_evicted_connections_stop_counting_at_once() -> None:
    """An evicted connection's slot is free before its connectionLost arrives (next reactor turn)."""
    w = World(max_connections=2)
    w.connect_read("10.0.0.1", 1)
    w.connect_read("10.0.0.1", 2)
    for port in range(3, 10):
        _, t = w.connect_read("10.0.0.1", port)
        assert not t.disconnected
    assert w.tracker._counted == 2
    assert w.tracker.evictions == 7


def test_refusals_are_logged_at_most_once_per_ten_seconds(logged: list[dict[str, Any]]) -> None:
    """A flood of refused connections yields one log line per 10 s, naming the address."""
    w = World()
    for port in range(5):
        w.connect("192.168.0.1", port)
    warnings = tracker_warnings(logged)
    assert len(warnings) == 1
    assert warnings[0]["host"] == "192.168.0.1"
    w.clock.advance(9.9)
    w.connect("192.168.0.2")
    assert len(tracker_warnings(logged)) == 1
    w.clock.advance(0.1)
    w.connect("192.168.0.3")
    assert len(tracker_warnings(logged)) == 2
    assert tracker_warnings(logged)[1]["host"] == "192.168.0.3"


# ------------------------------------------------------- socket plumbing


def test_what_each_connection_keeps_has_no_dict_of_its_own() -> None:
    """
    There are hundreds of connections at a time: the tracked connection, its
    socket record and the recording socket keep their state in slots, and
    the wrapping factory keeps no second index of them (the tracker has one).
    """
    w = World()
    transport = SocketTransport(FakeSocket())
    w.connect(transport=transport)
    [conn] = w.tracker.connections()
    for kept in (conn, conn.record, transport.socket):
        assert type(kept).__dictoffset__ == 0, f"{type(kept).__name__} instances have a __dict__"
    assert w.wrapping.protocols == {}


def test_socket_gets_keepalive_options_and_a_recorder(logged: list[dict[str, Any]]) -> None:
    """
    A connection with a socket gets keepalive tuned as configured and a
    recording socket in front of the real one; an option the platform
    refuses is logged once for the process, not once per connection.
    """
    import socket

    w = World(keepalive=KeepaliveSettings(idle=2, interval=3, count=4, user_timeout=5))
    sock = FakeSocket(refuse=(socket.TCP_USER_TIMEOUT,))
    transport = SocketTransport(sock)
    w.connect(transport=transport)
    [conn] = w.tracker.connections()
    assert isinstance(transport.socket, RecordingSocket)
    assert transport.socket.wrapped is sock
    assert isinstance(conn.record, SocketRecord)
    assert conn.sock is sock  # the heartbeat reads the real socket, not the recorder
    assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in sock.options
    assert (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 2) in sock.options
    assert (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 3) in sock.options
    assert (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4) in sock.options
    missing = [e for e in tracker_warnings(logged) if "names" in e]
    assert [e["names"] for e in missing] == ["TCP_USER_TIMEOUT"]
    w.connect(port=2, transport=SocketTransport(FakeSocket(refuse=(socket.TCP_USER_TIMEOUT,))))
    assert len([e for e in tracker_warnings(logged) if "names" in e]) == 1


def test_transport_without_socket_is_tracked_without_tcp_insight() -> None:
    """A test transport has no socket: tracked all the same, with no record and no TCP_INFO."""
    w = World()
    w.connect()
    [conn] = w.tracker.connections()
    assert conn.record is None and conn.sock is None
    assert conn.tcp_info() is None


def test_data_received_is_a_sign_of_life() -> None:
    """Every byte from the peer moves last_alive to now."""
    w = World()
    proto, _ = w.connect()
    [conn] = w.tracker.connections()
    opened = conn.last_alive
    w.clock.advance(7)
    proto.dataReceived(b"x")
    assert conn.last_alive == opened + 7 == w.clock.seconds()


def test_connection_for_walks_down_from_the_application_protocol() -> None:
    """The tracked connection is found from the innermost protocol; an untracked one is a LookupError."""
    w = World()
    proto, _ = w.connect()
    [app] = w.inner.built
    assert w.tracker.connection_for(app) is proto.conn
    assert w.tracker.connection_for(proto) is proto.conn
    loose = Recorder()
    loose.makeConnection(StringTransport())
    for untracked in (loose, None):
        with pytest.raises(LookupError):
            w.tracker.connection_for(untracked)


# -------------------------------------------------------------- close()


@pytest.mark.parametrize("reason", ["heartbeat-timeout", "tcp-state", "slow-reader", "keepalive-timeout"])
def test_close_aborts_for_a_peer_presumed_gone(reason: str) -> None:
    """A peer presumed gone is not waited for: the transport is aborted, not flushed."""
    w = World()
    _, transport = w.connect()
    [conn] = w.tracker.connections()
    conn.close(reason)
    assert transport.disconnected
    assert conn.close_reason == reason


def test_a_kicked_peer_hears_why_before_a_graceful_close() -> None:
    """Kicked (the peer is there): the farewell hook speaks first, then the close flushes; once only."""
    w = World()
    _, transport = w.connect()
    [conn] = w.tracker.connections()
    said: list[tuple[str, str | None]] = []
    conn.farewell = lambda reason, note: said.append((reason, note))
    conn.close("kicked", "by root")
    conn.close("kicked", "by root")
    assert said == [("kicked", "by root")]
    assert transport.disconnecting and not transport.disconnected


def test_close_for_other_reasons_flushes_and_first_reason_sticks() -> None:
    """A plain close is graceful (loseConnection); the first reason given is the one kept."""
    w = World()
    _, transport = w.connect()
    [conn] = w.tracker.connections()
    conn.close("closed")
    assert transport.disconnecting and not transport.disconnected
    conn.close("kicked")
    assert conn.close_reason == "closed"


# ------------------------------------------------------------ classify()


def one_connection(w: World) -> TrackedConnection:
    w.connect()
    [conn] = w.tracker.connections()
    return conn


def test_classify_close_reason_wins_over_everything() -> None:
    """The reason we closed for is what users see, whatever the socket saw."""
    w = World()
    conn = one_connection(w)
    conn.record = SocketRecord(errno=errno.ECONNRESET)
    conn.close_reason = "kicked"
    assert classify(conn, Failure(ConnectionLost()), w.clock.seconds()) == ("kicked", None)


def test_classify_keepalive_timeout_from_the_socket_record_with_final_idle() -> None:
    """
    ETIMEDOUT recorded on the socket is a keepalive timeout; detected_after is
    the idle time of the final TCP_INFO (the peer's last sign of life).
    """
    w = World()
    conn = one_connection(w)
    conn.record = SocketRecord(errno=errno.ETIMEDOUT,
                               final_info=TcpInfo(state=CLOSE, probes=2, last_data_recv_ms=4000,
                                                  last_ack_recv_ms=3100))
    conn.last_alive = w.clock.seconds() - 60  # not used when the kernel says better
    assert classify(conn, Failure(ConnectionLost()), w.clock.seconds()) == ("keepalive-timeout", 3.1)


def test_classify_keepalive_timeout_without_final_info_uses_last_alive() -> None:
    """Without a final TCP_INFO, detected_after is the time since last_alive."""
    w = World()
    conn = one_connection(w)
    conn.record = SocketRecord(errno=errno.EHOSTUNREACH)
    conn.last_alive = w.clock.seconds() - 2.5
    assert classify(conn, Failure(ConnectionLost()), w.clock.seconds()) == ("keepalive-timeout", 2.5)


def test_classify_reset_from_the_socket_record() -> None:
    """ECONNRESET recorded on the socket is a reset, even if Twisted said 'done'; no detected_after."""
    w = World()
    conn = one_connection(w)
    conn.record = SocketRecord(errno=errno.ECONNRESET)
    assert classify(conn, Failure(ConnectionDone()), w.clock.seconds()) == ("reset", None)


def test_classify_connection_done_is_closed_with_zero_latency() -> None:
    """A clean close is 'closed', detected after 0 s: a goodbye is heard, not detected."""
    w = World()
    conn = one_connection(w)
    assert classify(conn, Failure(ConnectionDone()), w.clock.seconds()) == ("closed", 0.0)
    conn.record = SocketRecord()  # the socket saw nothing wrong
    assert classify(conn, Failure(ConnectionDone()), w.clock.seconds()) == ("closed", 0.0)


def test_classify_bare_connection_lost_is_reset() -> None:
    """A non-clean loss with no recorded cause is a reset."""
    w = World()
    conn = one_connection(w)
    assert classify(conn, Failure(ConnectionLost()), w.clock.seconds()) == ("reset", None)


def test_classify_reset_after_peer_eof_is_closed() -> None:
    """The RST that answers our probe after the peer's FIN means the peer simply left."""
    w = World()
    conn = one_connection(w)
    conn.peer_eof = True
    conn.record = SocketRecord(errno=errno.ECONNRESET)
    assert classify(conn, Failure(ConnectionLost()), w.clock.seconds()) == ("closed", 0.0)


@pytest.mark.parametrize("reason", ["heartbeat-timeout", "tcp-state"])
def test_classify_vanished_reasons_measure_from_last_alive(reason: str) -> None:
    """A peer that vanished is detected after the time since its last sign of life."""
    w = World()
    conn = one_connection(w)
    conn.last_alive = w.clock.seconds() - 4.25
    conn.close_reason = reason
    assert classify(conn, Failure(ConnectionLost()), w.clock.seconds()) == (reason, 4.25)


# ------------------------------------------------- admission through presence


def test_admitted_stream_becomes_the_users_presence() -> None:
    """Admitted as WEB, the connection is the user's presence, with its kind as 'via'."""
    w = World()
    w.connect()
    [conn] = w.tracker.connections()
    assert w.bind(conn, "alice", Kind.WEB) is None
    assert (conn.user, conn.kind) == ("alice", "web")
    assert w.presence.is_online("alice")
    assert w.events[-1].data["via"] == "web"


def test_refused_stream_leaves_the_connection_plain() -> None:
    """A refused admission returns the Refusal; the connection is not counted as a stream."""
    w = World(max_users=1)
    w.occupy("bob")
    w.connect()
    conn = w.tracker.connections()[-1]
    refusal = w.bind(conn, "alice", Kind.WEB)
    assert isinstance(refusal, Refusal) and refusal.reason == "full"
    assert conn.user is None
    assert conn.kind == "http"
    assert not w.presence.is_online("alice")


def test_plain_request_names_the_user_without_making_a_stream() -> None:
    """A plain request names the connection's user and keeps them online for http_grace."""
    w = World()
    w.connect()
    [conn] = w.tracker.connections()
    assert w.touch_http(conn, "alice") is None
    assert conn.user == "alice" and conn.kind == "http"
    assert w.presence.is_online("alice")
    assert w.presence.users()[0].via == "http"


def test_plain_request_refused_when_full() -> None:
    """A new user on a full server gets the Refusal."""
    w = World(max_users=1)
    w.occupy("bob")
    w.connect()
    conn = w.tracker.connections()[-1]
    refusal = w.touch_http(conn, "alice")
    assert refusal is not None and refusal.reason == "full"


def test_present_connections_are_kept_as_presence_admits_them() -> None:
    """
    The tracker keeps the list of connections that are someone's presence
    (what the heartbeat reads every tick) as presence admits them: an event
    stream or chat connection, not a plain request nor one refused; it
    leaves the list when it ends, and one admitted after it ended never joins.
    """
    w = World(max_users=2)
    stream, _ = w.connect(port=1)
    plain, _ = w.connect(port=2)
    chat, _ = w.connect(port=3)
    refused, _ = w.connect(port=4)
    late, _ = w.connect(port=5)
    assert w.tracker.present() == []
    w.bind(stream.conn, "alice", Kind.WEB)
    w.touch_http(plain.conn, "bob")
    w.bind(chat.conn, "bob", Kind.CHAT)
    assert w.bind(refused.conn, "carol", Kind.WEB) is not None
    assert w.tracker.present() == [stream.conn, chat.conn]
    assert [c.present for c in (stream.conn, plain.conn, chat.conn, refused.conn)] == [True, False, True, False]
    stream.connectionLost(Failure(ConnectionDone()))
    late.connectionLost(Failure(ConnectionDone()))
    w.bind(late.conn, "bob", Kind.WEB)
    assert w.tracker.present() == [chat.conn]


class EndpointSocket(FakeSocket):
    """A fake socket with an address family, a local port and an inode (what sock_diag names it by)."""

    def __init__(self, family: int, port: int, inode: int) -> None:
        super().__init__()
        self.family = family
        self.port = port
        self.inode = inode

    def getsockname(self) -> tuple[str, int]:
        return ("::" if self.family == 10 else "0.0.0.0", self.port)


def test_families_and_local_ports_are_counted_while_connections_last(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The tracker knows the address families and local ports of its sockets
    (the netlink dump is asked for those only), found by inode, until the
    connection ends.
    """
    import socket

    monkeypatch.setattr(connections, "socket_inode", lambda sock: sock.inode)
    w = World()
    v4, _ = w.connect(transport=SocketTransport(EndpointSocket(socket.AF_INET, 8080, 11)))
    w.connect(port=2, transport=SocketTransport(EndpointSocket(socket.AF_INET, 8080, 12)))
    v6, _ = w.connect("::1", transport=SocketTransport(EndpointSocket(socket.AF_INET6, 8023, 13)))
    assert sorted(w.tracker.families()) == [socket.AF_INET, socket.AF_INET6]
    assert sorted(w.tracker.local_ports()) == [8023, 8080]
    assert w.tracker.by_inode(13) is v6.conn
    v6.connectionLost(Failure(ConnectionDone()))
    v4.connectionLost(Failure(ConnectionDone()))
    assert w.tracker.families() == [socket.AF_INET] and w.tracker.local_ports() == [8080]
    assert w.tracker.by_inode(13) is None


def test_connection_for_finds_the_tracked_connection_or_says_it_is_a_bug() -> None:
    """Under a wrapped protocol the tracked connection is found; elsewhere LookupError."""
    w = World()
    proto, _ = w.connect()
    [app] = w.inner.built
    assert w.tracker.connection_for(app) is proto.conn
    with pytest.raises(LookupError):
        w.tracker.connection_for(object())


# ---------------------------------------------------------------- ending


def test_bound_connection_end_detaches_with_the_classified_reason() -> None:
    """When a bound connection ends, presence is told why and how fast; the user is offline."""
    w = World()
    proto, _ = w.connect()
    [conn] = w.tracker.connections()
    w.bind(conn, "alice", Kind.WEB)
    conn.record = SocketRecord(errno=errno.ETIMEDOUT)
    conn.last_alive = w.clock.seconds() - 3.0
    proto.connectionLost(Failure(ConnectionLost()))
    assert w.presence_events()[-1] == ("alice", "offline", "keepalive-timeout")
    assert w.events[-1].data["detected_after"] == 3.0
    assert w.ended == [(conn, "keepalive-timeout", 3.0)]
    assert len(w.tracker) == 0


def test_unbound_connection_end_does_not_touch_presence(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A plain HTTP connection ending says nothing to presence (the user stays
    for http_grace).
    """
    w = World()
    detached: list[Any] = []
    monkeypatch.setattr(w.presence, "detach", lambda *a: detached.append(a))
    proto, _ = w.connect()
    [conn] = w.tracker.connections()
    w.touch_http(conn, "alice")
    proto.connectionLost(Failure(ConnectionDone()))
    assert detached == []
    assert w.presence.is_online("alice")
    assert len(w.tracker) == 0


def test_ended_connection_reaches_the_application_protocol_and_frees_its_address() -> None:
    """The wrapped protocol hears connectionLost; the per-address count is released."""
    w = World(per_address=1)
    proto, _ = w.connect("10.0.0.1")
    [app] = w.inner.built
    proto.connectionLost(Failure(ConnectionDone()))
    assert app.events[-1] == ("lost", ConnectionDone)
    _, transport = w.connect("10.0.0.1")
    assert not transport.disconnected


def test_failing_presence_still_lets_the_application_hear_of_the_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even if presence raises on detach, the connection is forgotten and the wrapped protocol gets connectionLost."""
    w = World()
    told: list[Any] = []

    def broken(*args: Any) -> None:
        told.append(args)
        raise RuntimeError("presence broke")

    proto, _ = w.connect()
    [app] = w.inner.built
    [conn] = w.tracker.connections()
    w.bind(conn, "alice", Kind.WEB)
    monkeypatch.setattr(w.presence, "detach", broken)
    proto.connectionLost(Failure(ConnectionDone()))
    assert told == [(conn, "closed", 0.0)]
    assert len(w.tracker) == 0
    assert app.events[-1] == ("lost", ConnectionDone)


# -------------------------------------------------------------- peer EOF


def test_peer_eof_without_probe_closes_like_twisted_would() -> None:
    """A half-close on a connection that is not an event stream ends it gracefully."""
    w = World()
    proto, transport = w.connect()
    [conn] = w.tracker.connections()
    proto.readConnectionLost()
    assert conn.peer_eof
    assert transport.disconnecting and not transport.disconnected


def test_peer_eof_with_probe_closes_when_the_probe_was_answered_by_rst(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    On an event stream, a FIN makes us send a probe; EOF_PROBE_DELAY later,
    a socket in CLOSE (the peer answered with RST) is closed as 'closed'.
    """
    asked = fake_tcp_info(monkeypatch, TcpInfo(state=CLOSE))
    w = World()
    proto, transport = w.connect()
    [conn] = w.tracker.connections()
    conn.sock = sock = object()
    probes: list[str] = []
    conn.on_peer_eof = lambda: probes.append("probe")
    proto.readConnectionLost()
    assert probes == ["probe"]
    assert not transport.disconnecting
    w.clock.advance(EOF_PROBE_DELAY - 0.001)
    assert asked == [] and conn.close_reason is None
    w.clock.advance(0.001)
    assert asked == [sock]
    assert conn.close_reason == "closed"
    assert transport.disconnecting


def test_peer_eof_with_probe_leaves_a_half_closed_peer_to_the_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that only shut down its sending side stays in CLOSE_WAIT: not closed here."""
    fake_tcp_info(monkeypatch, TcpInfo(state=CLOSE_WAIT))
    w = World()
    proto, transport = w.connect()
    [conn] = w.tracker.connections()
    conn.sock = object()
    conn.on_peer_eof = lambda: None
    proto.readConnectionLost()
    w.clock.advance(EOF_PROBE_DELAY)
    assert conn.close_reason is None
    assert not transport.disconnecting


def test_peer_eof_probe_check_after_the_connection_ended_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the connection ended before the delay, the delayed check leaves it alone."""
    asked = fake_tcp_info(monkeypatch, TcpInfo(state=CLOSE))
    w = World()
    proto, _ = w.connect()
    [conn] = w.tracker.connections()
    w.bind(conn, "alice", Kind.WEB)
    conn.sock = object()
    conn.on_peer_eof = lambda: None
    proto.readConnectionLost()
    proto.connectionLost(Failure(ConnectionLost()))
    w.clock.advance(EOF_PROBE_DELAY)
    assert asked == []
    assert conn.close_reason is None
    assert w.ended == [(conn, "closed", 0.0)]  # reset after our FIN-probe counts as closed


def test_peer_eof_probe_without_tcp_info_closes() -> None:
    """Where TCP_INFO cannot be read, a FIN on an event stream is taken as the peer leaving."""
    w = World()
    proto, transport = w.connect()
    [conn] = w.tracker.connections()
    conn.on_peer_eof = lambda: None
    proto.readConnectionLost()
    w.clock.advance(EOF_PROBE_DELAY)
    assert conn.close_reason == "closed"
    assert transport.disconnecting


def test_tcp_info_reads_the_connections_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """TrackedConnection.tcp_info asks the socket layer about its own socket."""
    info = TcpInfo(state=ESTABLISHED, rtt_us=1500)
    asked = fake_tcp_info(monkeypatch, info)
    w = World()
    conn = one_connection(w)
    conn.sock = sock = object()
    assert conn.tcp_info() is info
    assert asked == [sock]


def test_held_writes_wait_and_are_released_in_order() -> None:
    """While keepalive probes an idle link, writes wait in order; release writes them all."""
    w = World()
    protocol, transport = w.connect()
    [conn] = w.tracker.connections()
    conn.hold()
    protocol.write(b"one ")
    protocol.writeSequence([b"two ", b"three"])
    assert transport.value() == b""
    conn.release()
    assert transport.value() == b"one two three"
    protocol.write(b"!")
    assert transport.value() == b"one two three!"


def test_too_much_held_is_a_slow_reader() -> None:
    """Held writes are bounded: past max_held the connection ends as a slow reader."""
    w = World()
    w.tracker.max_held = 10
    protocol, transport = w.connect()
    [conn] = w.tracker.connections()
    conn.hold()
    protocol.write(b"x" * 11)
    assert conn.close_reason == "slow-reader"
    assert conn.held is None


def test_losing_the_connection_flushes_what_was_held() -> None:
    """A goodbye line written while held still goes out before the close."""
    w = World()
    protocol, transport = w.connect()
    [conn] = w.tracker.connections()
    conn.hold()
    protocol.write(b"bye\r\n")
    protocol.loseConnection()
    assert transport.value() == b"bye\r\n"


def test_timeout_after_a_closed_window_is_a_slow_reader() -> None:
    """A live peer that kept its window closed until TCP_USER_TIMEOUT is a slow reader, not a dead peer."""
    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure

    w = World()
    w.connect()
    [conn] = w.tracker.connections()
    conn.record = SocketRecord(errno=110)
    conn.window_closed_at = w.clock.seconds()
    w.clock.advance(1)
    assert classify(conn, Failure(ConnectionLost()), w.clock.seconds())[0] == "slow-reader"
    w.clock.advance(5)
    assert classify(conn, Failure(ConnectionLost()), w.clock.seconds())[0] == "keepalive-timeout"


def test_shutdown_closes_every_connection_with_reason_shutdown_and_waits() -> None:
    """On stop, operators still online are closed with reason shutdown; the Deferred fires when all are gone."""
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    from boatwist.net.tracking import ClosingService

    w = World()
    protocols = [w.connect(port=p)[0] for p in (1, 2)]
    for conn in w.tracker.connections():
        w.bind(conn, f"user{conn.peer_port}", Kind.CHAT)
    service = ClosingService(w.tracker, timeout=2.0)
    service.startService()
    done = service.stopService()
    fired: list[object] = []
    done.addCallback(fired.append)
    assert not fired
    for protocol in protocols:
        protocol.connectionLost(Failure(ConnectionDone()))
    assert fired == [None]
    offline = [e for e in w.presence_events() if e[1] == "offline"]
    assert sorted(offline) == [("user1", "offline", "shutdown"), ("user2", "offline", "shutdown")]


def test_shutdown_does_not_wait_forever_for_a_dead_peer() -> None:
    """A connection that never finishes closing does not hold the daemon's stop past the timeout."""
    from boatwist.net.tracking import ClosingService

    w = World()
    w.connect()
    done = ClosingService(w.tracker, timeout=2.0).stopService()
    fired: list[object] = []
    done.addCallback(fired.append)
    w.clock.advance(2.0)
    assert fired == [None]


def test_children_stop_only_after_every_connection_is_closed() -> None:
    """The store (a child) is stopped after the connections end, so their logouts can still be written."""
    from twisted.application.service import Service
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    from boatwist.net.tracking import ClosingService

    stopped: list[int] = []

    class Store(Service):
        def stopService(self) -> None:
            stopped.append(len(w.tracker.connections()))
            super().stopService()

    w = World()
    protocol, _ = w.connect()
    service = ClosingService(w.tracker, timeout=2.0)
    Store().setServiceParent(service)
    service.startService()
    service.stopService()
    assert stopped == []
    protocol.connectionLost(Failure(ConnectionDone()))
    assert stopped == [0]
