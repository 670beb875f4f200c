"""
boatwist.heartbeat: the LoopingCall that keeps presence truthful.

Driven by a L{Clock}: connections are fakes that answer C{tcp_info()} with a
L{TcpInfo} the test builds, presence and streams are recorders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from boatwist.config import HeartbeatSettings, KeepaliveSettings
from boatwist.heartbeat import HeartbeatService
from boatwist.net.tcpinfo import TcpInfo
from boatwist.presence import Kind

ESTABLISHED, CLOSE, CLOSE_WAIT, FIN_WAIT1 = 1, 7, 8, 4


@dataclass(eq=False)
class FakeConn:
    id: int = 1
    info: TcpInfo | None = field(default_factory=lambda: TcpInfo(state=ESTABLISHED))
    user: str | None = "alice"
    kind: Kind = Kind.WEB
    peer_eof: bool = False
    unstable: bool = False
    rtt_ms: float | None = None
    last_alive: float = 0.0
    closed: list[str] = field(default_factory=list)
    asked: int = 0
    held: list[bytes] | None = None
    window_closed_at: float | None = None
    close_wait_seen_at: float | None = None
    released: int = 0
    inode: int | None = None
    #: How often the cheap "ESTABLISHED, nothing outstanding" read was made.
    screened: int = 0

    @property
    def present(self) -> bool:
        return self.user is not None and self.kind.persistent

    def tcp_calm(self) -> bool:
        self.screened += 1
        return self.info is not None and self.info.established and not self.info.troubled

    def tcp_info(self) -> TcpInfo | None:
        self.asked += 1
        return self.info

    # TcpInfo has every name and property of TcpVitals.
    tcp_vitals = tcp_info

    def hold(self) -> None:
        if self.held is None:
            self.held = []

    def release(self) -> None:
        self.held = None
        self.released += 1

    def window_recently_closed(self, now: float) -> bool:
        return self.window_closed_at is not None and now - self.window_closed_at <= 3.0

    def close(self, reason: str, note: str | None = None) -> None:
        self.closed.append(reason)


class FakePresence:
    def __init__(self) -> None:
        self.unstable_calls: list[tuple[int, bool, str]] = []
        self.expired = 0
        self.expire_raises = 0

    def set_unstable(self, conn: Any, unstable: bool, reason: str) -> None:
        self.unstable_calls.append((conn.id, unstable, reason))
        conn.unstable = unstable

    def expire(self) -> None:
        self.expired += 1
        if self.expire_raises:
            self.expire_raises -= 1
            raise RuntimeError("expire broke")


class FakeStream:
    def __init__(self, broken: bool = False) -> None:
        self.comments: list[str] = []
        self.broken = broken

    def comment(self, text: str = "") -> None:
        if self.broken:
            raise RuntimeError("stream broke")
        self.comments.append(text)


class FakeDiag:
    """
    sock_diag as the kernel would answer: (inode, state) of the sockets in
    the states asked for.  Its TCP hash has C{buckets} buckets: 1 (the
    default) makes a dump cheaper than reading any connection one by one.
    """

    def __init__(self, ending: list[tuple[int, int]], buckets: int | None = 1) -> None:
        self.ending = ending
        self.buckets = buckets
        self.asked = 0
        self.closed = False
        self.fail = False
        self.families: list[list[int]] = []
        self.ports: list[list[int]] = []

    def inodes_in(self, states: frozenset[int], families: Any = (2, 10), ports: Any = ()) -> list[tuple[int, int]]:
        self.asked += 1
        self.families.append(list(families))
        self.ports.append(list(ports))
        if self.fail:
            raise OSError(1, "netlink went away")
        return [(inode, state) for inode, state in self.ending if state in states]

    def close(self) -> None:
        self.closed = True


class FakeTracker:
    def __init__(self, conns: list[Any], families: tuple[int, ...] = (2,), ports: tuple[int, ...] = (8080,)) -> None:
        self.conns = conns
        self._families = list(families)
        self._ports = list(ports)

    def connections(self) -> list[Any]:
        return list(self.conns)

    def present(self) -> list[Any]:
        return [c for c in self.conns if c.present]

    def families(self) -> list[int]:
        return self._families

    def local_ports(self) -> list[int]:
        return self._ports

    def __len__(self) -> int:
        return len(self.conns)

    def by_inode(self, inode: int) -> Any:
        return next((c for c in self.conns if getattr(c, "inode", None) == inode), None)


class Rig:
    def __init__(self, conns: list[Any] | None = None, streams: list[Any] | None = None,
                 interval: float = 1.0, stream_interval: float = 15.0, diag: FakeDiag | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(500)
        self.conns = conns if conns is not None else []
        self.tracker = FakeTracker(self.conns)
        self.presence = FakePresence()
        self.streams = streams if streams is not None else []
        self.watchdog_calls = 0
        self.cpu = [10.0]
        self.service = HeartbeatService(
            self.tracker, self.presence, self.streams,
            HeartbeatSettings(interval=interval, stream_interval=stream_interval),
            self.clock, self.clock.seconds, keepalive=KeepaliveSettings(), watchdog=self._watchdog,
            cpu_time=self._cpu_time,
            # Most tests pin the per-connection checks: no netlink unless the test brings a kernel.
            open_diag=(lambda: diag) if diag is not None else (lambda: "no netlink in this test"),
        )

    def _watchdog(self) -> None:
        self.watchdog_calls += 1

    def _cpu_time(self) -> float:
        # Every reading advances "CPU time" by 2 ms: each tick measures 2 ms.
        self.cpu[0] += 0.002
        return self.cpu[0]

    def start(self) -> "Rig":
        self.service.startService()
        return self

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.clock.advance(self.service.settings.interval)


@pytest.fixture
def logged() -> Any:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


# ------------------------------------------------------------ TCP state


def test_close_wait_is_closed_with_tcp_state() -> None:
    """
    A connection left in CLOSE_WAIT (the peer closed, nobody noticed) is
    ended with 'tcp-state': at once when the reactor has read the peer's
    FIN (our probe was answered: the peer half-closed and stays); else at
    the next tick -- the FIN may have arrived in this very turn of the
    reactor, before the read that tells a tab closed ('closed') from a
    half-close.
    """
    read = FakeConn(info=TcpInfo(state=CLOSE_WAIT), peer_eof=True)
    Rig([read]).start().tick()
    assert read.closed == ["tcp-state"]
    unread = FakeConn(info=TcpInfo(state=CLOSE_WAIT))
    rig = Rig([unread]).start()
    rig.tick()
    assert unread.closed == [] and unread.close_wait_seen_at is not None
    rig.tick()
    assert unread.closed == ["tcp-state"]


def test_other_non_established_states_are_tcp_state_too() -> None:
    """Any state but ESTABLISHED and CLOSE ends the connection with 'tcp-state', bound or not."""
    conn = FakeConn(info=TcpInfo(state=FIN_WAIT1), user=None, kind=Kind.HTTP)
    Rig([conn]).start().tick()
    assert conn.closed == ["tcp-state"]


def test_close_after_peer_eof_is_closed() -> None:
    """After the peer's FIN, CLOSE means our probe was answered with RST: the user left ('closed')."""
    conn = FakeConn(info=TcpInfo(state=CLOSE), peer_eof=True)
    Rig([conn]).start().tick()
    assert conn.closed == ["closed"]


@pytest.mark.parametrize("info", [TcpInfo(state=CLOSE, probes=2), TcpInfo(state=CLOSE, retransmits=3)])
def test_close_with_probes_or_retransmits_is_a_keepalive_timeout(info: TcpInfo) -> None:
    """
    CLOSE with probes or retransmissions outstanding: the kernel gave up on a
    silent peer (keepalive or user timeout), and users are told so, not 'tcp-state'.
    """
    conn = FakeConn(info=info)
    Rig([conn]).start().tick()
    assert conn.closed == ["keepalive-timeout"]


def test_plain_close_without_eof_is_a_reset() -> None:
    """CLOSE with nothing outstanding and no FIN from the peer: the peer reset the connection."""
    conn = FakeConn(info=TcpInfo(state=CLOSE))
    Rig([conn]).start().tick()
    assert conn.closed == ["reset"]


def test_established_is_left_alone_and_unreadable_info_is_skipped() -> None:
    """An ESTABLISHED connection is not closed; one without TCP_INFO is skipped."""
    ok = FakeConn(1)
    blind = FakeConn(2, info=None)
    Rig([ok, blind]).start().tick(3)
    assert ok.closed == [] and blind.closed == []
    assert blind.rtt_ms is None


# ------------------------------------------------------------- stability


def test_probes_mark_unstable_with_reason_probes() -> None:
    """An overdue keepalive probe marks a bound connection unstable, reason 'probes'."""
    conn = FakeConn(info=TcpInfo(state=ESTABLISHED, probes=1, retransmits=1, last_ack_recv_ms=1500))
    rig = Rig([conn]).start()
    rig.tick()
    assert rig.presence.unstable_calls == [(1, True, "probes")]


@pytest.mark.parametrize("info", [TcpInfo(state=ESTABLISHED, retransmits=2, unacked=1),
                                  TcpInfo(state=ESTABLISHED, retransmits=3, backoff=3, unacked=2)])
def test_retransmits_or_backoff_mark_unstable_with_reason_retransmits(info: TcpInfo) -> None:
    """Repeated retransmission timeouts mark a bound connection unstable, reason 'retransmits'."""
    conn = FakeConn(info=info)
    rig = Rig([conn]).start()
    rig.tick()
    assert rig.presence.unstable_calls == [(1, True, "retransmits")]


def test_recovered_when_the_link_is_well_again() -> None:
    """An unstable connection whose link is clean again is marked stable, reason 'recovered'; once."""
    conn = FakeConn(info=TcpInfo(state=ESTABLISHED, probes=1, last_ack_recv_ms=1500))
    rig = Rig([conn]).start()
    rig.tick()
    conn.info = TcpInfo(state=ESTABLISHED)
    rig.tick(3)
    assert rig.presence.unstable_calls == [(1, True, "probes"), (1, False, "recovered")]


@pytest.mark.parametrize("info", [
    TcpInfo(state=ESTABLISHED, probes=1, last_ack_recv_ms=1150, rtt_us=150_000),  # probe in flight, 150 ms RTT
    TcpInfo(state=ESTABLISHED, retransmits=1, backoff=1, unacked=1),  # one lost segment
])
def test_ordinary_traffic_on_a_slow_link_is_not_unstable(info: TcpInfo) -> None:
    """
    A probe waiting one round trip for its answer, or a single retransmission,
    is normal on Wi-Fi or a VPN: no 'unstable' event, and writes are not held.
    """
    conn = FakeConn(info=info)
    rig = Rig([conn]).start()
    rig.tick()
    assert rig.presence.unstable_calls == []
    assert conn.held is None


def test_healthy_stable_connection_is_not_reported() -> None:
    """Nothing is said to presence about a stable connection that stays well."""
    rig = Rig([FakeConn()]).start()
    rig.tick(5)
    assert rig.presence.unstable_calls == []


@pytest.mark.parametrize("user, kind", [(None, Kind.HTTP), ("alice", Kind.HTTP), (None, Kind.CHAT)])
def test_unbound_connections_are_not_marked(user: str | None, kind: Kind) -> None:
    """A plain HTTP connection, or a chat one not logged in, is measured but never marked unstable."""
    conn = FakeConn(info=TcpInfo(state=ESTABLISHED, probes=2, rtt_us=4000), user=user, kind=kind)
    rig = Rig([conn]).start()
    rig.tick()
    assert rig.presence.unstable_calls == []
    assert conn.rtt_ms == 4.0


def test_rtt_and_last_alive_are_updated() -> None:
    """rtt_ms comes from tcpi_rtt; last_alive moves to now minus the idle time, never backwards."""
    conn = FakeConn(info=TcpInfo(state=ESTABLISHED, rtt_us=12500, last_data_recv_ms=800, last_ack_recv_ms=300))
    rig = Rig([conn]).start()
    rig.tick()
    now = rig.clock.seconds()
    assert conn.rtt_ms == 12.5
    assert conn.last_alive == pytest.approx(now - 0.3)
    conn.last_alive = now  # data just arrived (dataReceived)
    conn.info = TcpInfo(state=ESTABLISHED, last_data_recv_ms=5000, last_ack_recv_ms=5000)
    rig.tick()
    assert conn.last_alive == now


# -------------------------------------------------- streams, expiry, watchdog


def test_stream_comments_only_every_stream_interval() -> None:
    """Event streams get a heartbeat comment every stream_interval seconds, not every tick."""
    streams = [FakeStream(), FakeStream()]
    rig = Rig(streams=streams, interval=1, stream_interval=5).start()
    rig.tick(4)
    assert streams[0].comments == []
    rig.tick()
    assert streams[0].comments == ["heartbeat"] and streams[1].comments == ["heartbeat"]
    rig.tick(4)
    assert len(streams[0].comments) == 1
    rig.tick()
    assert len(streams[0].comments) == 2


def test_expire_and_watchdog_run_every_tick() -> None:
    """Presence expiry and the systemd watchdog are run on each tick, and not before the first."""
    rig = Rig().start()
    assert rig.presence.expired == 0 and rig.watchdog_calls == 0
    rig.tick(3)
    assert rig.presence.expired == 3
    assert rig.watchdog_calls == 3
    assert rig.service.ticks == 3


def test_no_watchdog_is_fine() -> None:
    """Without a watchdog (not under systemd) ticks run all the same."""
    rig = Rig()
    rig.service.watchdog = None
    rig.start().tick(2)
    assert rig.service.ticks == 2 and rig.service.failed_ticks == 0


def test_a_failing_step_is_logged_and_the_loop_goes_on(logged: list[dict[str, Any]]) -> None:
    """
    A LoopingCall stops at its first exception; the heartbeat must not: a
    failing step is logged, the other steps of that tick still run, and the
    next tick runs normally.
    """
    conn = FakeConn(info=TcpInfo(state=CLOSE_WAIT), peer_eof=True)
    rig = Rig([conn]).start()
    rig.presence.expire_raises = 1
    rig.tick()
    assert rig.watchdog_calls == 1  # after the failing step, in the same tick
    assert conn.closed == ["tcp-state"]
    failures = [e for e in logged if e.get("log_failure") is not None]
    assert len(failures) == 1 and failures[0]["log_failure"].check(RuntimeError)
    assert rig.service._loop is not None and rig.service._loop.running
    rig.tick()
    assert rig.presence.expired == 2
    assert rig.watchdog_calls == 2
    assert (rig.service.ticks, rig.service.failed_ticks) == (2, 1)


def test_failed_ticks_counts_ticks_not_steps() -> None:
    """Two steps failing in one tick make one failed tick."""
    rig = Rig(streams=[FakeStream(broken=True)], stream_interval=1)
    rig.presence.expire_raises = 1
    rig.service.watchdog = lambda: 1 / 0
    rig.start().tick()
    assert rig.service.failed_ticks == 1


def test_one_failing_connection_does_not_hide_the_others(logged: list[dict[str, Any]]) -> None:
    """
    A connection whose check raises is logged and skipped; the connections
    after it are still checked in the same tick (else one bad connection
    would switch dead-peer detection off for all the others, tick after tick).
    """

    class Broken(FakeConn):
        def tcp_vitals(self) -> TcpInfo | None:
            raise OSError("bad file descriptor")

    ghost = FakeConn(2, info=TcpInfo(state=CLOSE_WAIT), peer_eof=True)
    rig = Rig([Broken(1), ghost]).start()
    rig.tick()
    assert ghost.closed == ["tcp-state"]
    assert any(e.get("log_failure") is not None and e["log_failure"].check(OSError) for e in logged)


def test_one_failing_stream_does_not_silence_the_others() -> None:
    """A stream whose comment raises does not keep the heartbeat comment from the others."""
    good = FakeStream()
    rig = Rig(streams=[FakeStream(broken=True), good], stream_interval=1).start()
    rig.tick()
    assert good.comments == ["heartbeat"]


def test_tick_durations_are_recorded() -> None:
    """Each tick's CPU time is kept for /metrics (here 2 ms by the fake CPU clock)."""
    rig = Rig().start()
    rig.tick(3)
    assert list(rig.service.tick_durations) == pytest.approx([0.002] * 3)


def test_stop_service_stops_the_loop() -> None:
    """After stopService no more ticks run."""
    rig = Rig().start()
    rig.tick()
    rig.service.stopService()
    rig.tick(5)
    assert rig.service.ticks == 1
    assert rig.clock.getDelayedCalls() == []


def test_interval_is_the_configured_one() -> None:
    """Ticks come every [heartbeat] interval seconds."""
    rig = Rig(interval=0.5).start()
    rig.clock.advance(0.49)
    assert rig.service.ticks == 0
    rig.clock.advance(0.01)
    assert rig.service.ticks == 1
    rig.tick(4)
    assert rig.service.ticks == 5


def test_writes_are_held_while_keepalive_probes_an_idle_link() -> None:
    """
    Probes outstanding with nothing unacknowledged: writes are held (a write
    would stop keepalive probing), and released as soon as the peer answers.
    """
    conn = FakeConn(info=TcpInfo(state=ESTABLISHED, probes=1, last_ack_recv_ms=1500, last_data_recv_ms=1500))
    rig = Rig([conn])
    rig.service.check_connections()
    assert conn.held == []
    conn.info = TcpInfo(state=ESTABLISHED)
    rig.service.check_connections()
    assert conn.held is None and conn.released == 1


def test_data_in_flight_is_not_held() -> None:
    """Retransmissions of unacknowledged data are TCP_USER_TIMEOUT's case: nothing to hold."""
    conn = FakeConn(info=TcpInfo(state=ESTABLISHED, retransmits=2, unacked=3, probes=0))
    Rig([conn]).service.check_connections()
    assert conn.held is None


def test_a_live_peer_with_a_closed_window_is_remembered_as_such() -> None:
    """Zero-window probes answered (backoff, recent ACK): a slow reader, not a dead peer."""
    conn = FakeConn(info=TcpInfo(state=ESTABLISHED, probes=0, backoff=2, last_ack_recv_ms=200,
                                 last_data_recv_ms=9000))
    rig = Rig([conn])
    rig.service.check_connections()
    assert conn.window_closed_at is not None
    assert conn.closed == []


def test_backstop_ends_a_silent_peer_at_the_configured_bound() -> None:
    """If the kernel was kept from ending a silent, troubled link, the heartbeat does at the bound."""
    from boatwist.config import KeepaliveSettings

    conn = FakeConn(info=TcpInfo(state=ESTABLISHED, probes=2, last_ack_recv_ms=2900, last_data_recv_ms=2900))
    rig = Rig([conn])
    rig.service.vanish_ms = HeartbeatService(
        rig.tracker, rig.presence, [], rig.service.settings, rig.clock, rig.clock.seconds,
        keepalive=KeepaliveSettings(idle=1, interval=1, count=2, user_timeout=3)).vanish_ms
    assert rig.service.vanish_ms == 3000
    rig.service.check_connections()
    assert conn.closed == []
    conn.info = TcpInfo(state=ESTABLISHED, probes=2, last_ack_recv_ms=3000, last_data_recv_ms=3000)
    rig.service.check_connections()
    assert conn.closed == ["keepalive-timeout"]


# ----------------------------------------------------- netlink sock_diag


def test_with_netlink_only_present_users_and_ending_sockets_are_read() -> None:
    """
    With sock_diag, a plain HTTP connection is not read each tick; one the
    kernel reports ending (CLOSE_WAIT) is, and is closed with tcp-state; a
    present user's stream is read every tick.
    """
    stream = FakeConn(id=1, info=TcpInfo(state=ESTABLISHED, rtt_us=4000))
    quiet = FakeConn(id=2, user=None, kind=Kind.HTTP)
    ending = FakeConn(id=3, user=None, kind=Kind.HTTP, info=TcpInfo(state=CLOSE_WAIT), peer_eof=True)
    quiet.inode, ending.inode = 202, 303
    diag = FakeDiag([(303, CLOSE_WAIT)])
    rig = Rig([stream, quiet, ending], diag=diag)
    rig.service.startService()
    rig.clock.advance(1)
    assert (stream.asked, quiet.asked, ending.asked) == (1, 0, 1)
    assert ending.closed == ["tcp-state"]
    assert stream.rtt_ms == 4.0
    rig.service.stopService()
    assert diag.closed


def test_netlink_failing_falls_back_to_reading_every_connection(logged: list[dict[str, Any]]) -> None:
    """A sock_diag error is logged once and the heartbeat reads every connection from then on."""
    quiet = FakeConn(id=2, user=None, kind=Kind.HTTP)
    diag = FakeDiag([])
    diag.fail = True
    rig = Rig([quiet], diag=diag)
    rig.service.startService()
    rig.clock.advance(1)
    assert quiet.screened == 1 and diag.closed
    rig.clock.advance(1)
    assert quiet.screened == 2 and diag.asked == 1
    rig.service.stopService()


def test_the_dump_is_asked_for_our_families_and_ports_only() -> None:
    """
    The kernel walks its whole TCP hash per dump: one dump per address
    family we track (no IPv6 dump with no IPv6 connection), filtered to our
    listeners' ports.
    """
    diag = FakeDiag([])
    rig = Rig([FakeConn(id=1), FakeConn(id=2, user=None, kind=Kind.HTTP)], diag=diag)
    rig.tracker._families, rig.tracker._ports = [2], [8080, 8023]
    rig.start().tick()
    assert diag.families == [[2]] and diag.ports == [[8080, 8023]]


def test_an_ending_presence_connection_is_read_once() -> None:
    """A present user's stream that the dump also reports ending is checked once in the tick."""
    stream = FakeConn(id=1, info=TcpInfo(state=CLOSE_WAIT), inode=101, peer_eof=True)
    rig = Rig([stream, FakeConn(id=2, user=None, kind=Kind.HTTP, inode=202)], diag=FakeDiag([(101, CLOSE_WAIT)]))
    rig.start().tick()
    assert stream.asked == 1 and stream.closed == ["tcp-state"]


def test_without_other_connections_there_is_no_dump() -> None:
    """When every connection is someone's presence (read anyway), nothing is left for a dump to find."""
    diag = FakeDiag([])
    stream = FakeConn(id=1, info=TcpInfo(state=CLOSE_WAIT), peer_eof=True)
    rig = Rig([stream], diag=diag).start()
    rig.tick(2)
    assert diag.asked == 0
    assert stream.closed == ["tcp-state", "tcp-state"]


@pytest.mark.parametrize("buckets, families, dumps", [
    (262144, [2], False),  # 10 others * 512 = 5,120 < 262,144 buckets: read one by one
    (4096, [2], True),  # 5,120 >= 4,096: a small hash, the dump is cheaper
    (None, [2], False),  # the kernel does not say: 65,536 buckets assumed
    (4096, [2, 10], False),  # two families, two walks: 5,120 < 8,192
])
def test_a_few_connections_are_read_one_by_one_instead_of_a_dump(buckets: int | None, families: list[int],
                                                                 dumps: bool) -> None:
    """
    A dump walks every bucket of the kernel's TCP hash: with fewer other
    connections than its buckets over BUCKETS_PER_READ (512 here), each is
    read one by one and there is no dump; a half-closed one is found either way.
    """
    conns = [FakeConn(id=i, user=None, kind=Kind.HTTP, inode=100 + i) for i in range(10)]
    conns[3].info, conns[3].peer_eof = TcpInfo(state=CLOSE_WAIT), True
    diag = FakeDiag([(103, CLOSE_WAIT)], buckets=buckets)
    rig = Rig(conns, diag=diag)
    rig.tracker._families = families
    rig.start().tick()
    assert diag.asked == (1 if dumps else 0)
    assert [c.screened for c in conns] == ([0, 0, 0, 1, 0, 0, 0, 0, 0, 0] if dumps else [1] * 10)
    assert conns[3].closed == ["tcp-state"]


def test_a_calm_connection_that_is_nobodys_presence_costs_one_small_read() -> None:
    """
    A plain connection ESTABLISHED with nothing outstanding needs nothing:
    one 5-byte read, no TCP_INFO parsed, its RTT left alone.  A present
    user's is read in full (RTT, recovery); so is a calm one whose writes
    are held, to release them.
    """
    plain = FakeConn(id=1, user=None, kind=Kind.HTTP, info=TcpInfo(state=ESTABLISHED, rtt_us=4000))
    logged_in = FakeConn(id=2, user="bob", kind=Kind.HTTP, info=TcpInfo(state=ESTABLISHED, rtt_us=4000))
    held = FakeConn(id=3, user=None, kind=Kind.HTTP, held=[])
    stream = FakeConn(id=4, info=TcpInfo(state=ESTABLISHED, rtt_us=4000))
    Rig([plain, logged_in, held, stream]).start().tick()
    assert [(c.screened, c.asked) for c in (plain, logged_in, held, stream)] == [(1, 0), (1, 0), (0, 1), (0, 1)]
    assert plain.rtt_ms is None and stream.rtt_ms == 4.0
    assert held.held is None and held.released == 1
