"""
The heartbeat: one C{LoopingCall} that keeps presence truthful.

Each tick (``[heartbeat] interval``):

  - reads C{TCP_INFO} of every connection that is someone's presence (an
    event stream, a logged-in chat connection) -- at most max_users times
    max_connections_per_user, whatever else is open; the tracker keeps that
    list as presence admits connections, so a tick never walks every
    connection to find them.  Every other connection (plain HTTP, a chat
    port before login) is checked by one netlink C{sock_diag} dump per
    address family in use, that the kernel filters to the sockets of our
    ports no longer ESTABLISHED (L{boatwist.net.sockdiag}): nothing comes
    back on a healthy device, so 10,000 open connections cost about what
    10 do.  The kernel walks its whole TCP hash for a dump, though, so
    while they are few (fewer than the hash has buckets, over
    L{BUCKETS_PER_READ}) they are read one by one instead, and with none
    there is no dump at all.  Where netlink is missing, every connection's
    C{TCP_INFO} is read one by one.  Read one by one, a connection that is
    nobody's presence costs 5 bytes while it is ESTABLISHED with nothing
    outstanding (L{boatwist.net.tcpinfo.read_tcp_calm}): only then is there
    nothing to do.  A connection no longer
    ``ESTABLISHED`` (``CLOSE_WAIT``: the peer closed and nobody read) is closed
    with reason ``tcp-state``; one the kernel has already ended (``CLOSE``)
    with the reason it ended for.  Keepalive probes outstanding, retransmissions
    or backoff mark the user ``unstable`` until the link recovers.  The RTT
    and the peer's last sign of life are kept for ``/api/presence`` and for
    ``detected_after``;
  - every ``stream_interval`` seconds, writes a comment line to every event
    stream (NATs keep the flow; a dead browser leaves unacknowledged data,
    which ``TCP_USER_TIMEOUT`` then bounds);
  - expires users present only through plain HTTP after ``http_grace``;
  - pings the systemd watchdog.

A C{LoopingCall} stops at its first exception, so the body catches, logs
and goes on: one bad tick must not end dead-peer detection for good.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Iterable, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from boatwist.config import HeartbeatSettings, KeepaliveSettings
from boatwist.net.sockdiag import ENDING_STATES, SockDiag
from boatwist.net.tcpinfo import TcpVitals
from boatwist.net.tracking import ConnectionTracker, TrackedConnection
from boatwist.presence import Presence
from boatwist.reasons import Reason


class CommentSink(Protocol):
    """An open event stream, as the heartbeat sees it."""

    def comment(self, text: str = "") -> None: ...


#: Least time a keepalive probe is given for its answer, ms.
PROBE_SLACK_MS = 200

#: How many buckets of the kernel's TCP hash a sock_diag dump walks for the CPU
#: that reading one connection costs: with fewer connections to check than the
#: hash's buckets over this, they are read one by one.  bench/deadpeer.py, ticks
#: a second apart: 11-14 ns a bucket, 3.5 us a connection, so ~300; 512 leans to
#: the dump, whose cost does not grow with the connections.
BUCKETS_PER_READ = 512
#: The hash's size where the kernel does not say (before Linux 6.1).
UNKNOWN_BUCKETS = 65536


class HeartbeatService(Service):
    _log = Logger()

    def __init__(
        self,
        tracker: ConnectionTracker,
        presence: Presence,
        streams: Iterable[CommentSink],
        settings: HeartbeatSettings,
        clock: IReactorTime,
        monotonic: Callable[[], float],
        keepalive: KeepaliveSettings,
        watchdog: Callable[[], object] | None = None,
        cpu_time: Callable[[], float] = time.thread_time,
        open_diag: Callable[[], SockDiag | str] = SockDiag.open,
    ) -> None:
        self.tracker = tracker
        self.presence = presence
        self.streams = streams
        self.settings = settings
        self.clock = clock
        self.monotonic = monotonic
        self.watchdog = watchdog
        self._cpu_time = cpu_time
        #: The kernel's bound for a silent peer, in ms: past it the heartbeat ends the
        #: connection itself, in case the kernel was kept from doing so.
        self.vanish_ms = 1000 * max(keepalive.idle + keepalive.interval * keepalive.count, keepalive.user_timeout)
        #: When a keepalive probe is first sent: this long after the peer's last ACK.
        self.probe_after_ms = 1000 * keepalive.idle
        self._last_stream_beat = monotonic()
        self._loop: LoopingCall | None = None
        #: CPU seconds of recent ticks (for /metrics and the benchmark).
        self.tick_durations: deque[float] = deque(maxlen=600)
        self.ticks = 0
        self.failed_ticks = 0
        #: Called after every tick (e.g. flushing a buffered access log).
        self.after_tick: list[Callable[[], object]] = []
        self._open_diag = open_diag
        #: The kernel's list of ending sockets; None: every connection is read one by one.
        self._diag: SockDiag | None = None

    def startService(self) -> None:
        super().startService()
        diag = self._open_diag()
        if isinstance(diag, str):
            self._log.info("{why}: the heartbeat reads every connection's TCP_INFO instead", why=diag)
        else:
            self._diag = diag
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.settings.interval, now=False)

    def stopService(self) -> Deferred[None] | None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._diag is not None:
            self._diag.close()
            self._diag = None
        return super().stopService()

    def tick(self) -> None:
        """One heartbeat; never raises."""
        started = self._cpu_time()
        failed = False
        for step in (self.check_connections, self.beat_streams, self.presence.expire, self._ping_watchdog,
                     *self.after_tick):
            try:
                step()
            except Exception:
                failed = True
                self._log.failure("heartbeat step {step} failed; going on", step=getattr(step, "__name__", step))
        self.ticks += 1
        if failed:
            self.failed_ticks += 1
        self.tick_durations.append(self._cpu_time() - started)

    def check_connections(self) -> None:
        now = self.monotonic()
        for conn in self._to_check():
            # One connection that fails must not leave those after it unchecked, tick after tick.
            try:
                self._check_connection(conn, now)
            except Exception:
                self._log.failure("heartbeat check of {conn} failed; going on", conn=conn)

    def _to_check(self) -> list[TrackedConnection]:
        """
        Every connection, or -- with netlink, when a dump is cheaper than
        reading the others one by one -- the present users' and those the
        kernel says are ending.
        """
        tracker = self.tracker
        diag = self._diag
        if diag is None:
            return tracker.connections()
        chosen = tracker.present()
        others = len(tracker) - len(chosen)
        if others <= 0:
            return chosen  # nothing a dump could find
        families = tracker.families()
        if others * BUCKETS_PER_READ < (diag.buckets or UNKNOWN_BUCKETS) * max(1, len(families)):
            return tracker.connections()
        try:
            ending = list(diag.inodes_in(ENDING_STATES, families, tracker.local_ports()))
        except OSError as e:
            self._log.warn("netlink sock_diag failed ({error}): reading every connection's TCP_INFO from now on",
                           error=e)
            diag.close()
            self._diag = None
            return tracker.connections()
        for inode, _state in ending:
            conn = tracker.by_inode(inode)
            if conn is not None and not conn.present:
                chosen.append(conn)
        return chosen

    def _check_connection(self, conn: TrackedConnection, now: float) -> None:
        if not conn.present and conn.held is None and conn.tcp_calm():
            # Nobody's presence, nothing outstanding: nothing to do, and its RTT and
            # last sign of life are shown nowhere.  Five bytes read, no object made.
            return
        info = conn.tcp_vitals()
        if info is None:
            return
        if not info.established:
            if info.state_name == "CLOSE_WAIT" and not conn.peer_eof and conn.close_wait_seen_at is None:
                # The peer's FIN is in but not yet read: a tick can run between its arrival
                # and the read in the same turn of the reactor, which would tell a browser
                # that closed its tab ("left", once our probe is refused) from a peer that
                # half-closed and went silent.  The next tick decides, if it is still here.
                conn.close_wait_seen_at = now
                return
            conn.close(self._ended_reason(conn, info))
            return
        conn.rtt_ms = info.rtt_us / 1000.0
        conn.last_alive = max(conn.last_alive, now - info.idle_ms / 1000.0)
        idle_link = not info.unacked
        if idle_link and info.backoff and info.last_ack_recv_ms < 1000:
            # Zero-window probes that the peer answers (each answer resets the probe
            # count, the backoff grows): a live peer that stopped reading.
            conn.window_closed_at = now
        # A probe counts once its answer is overdue: on a healthy idle link one is in
        # flight for a round trip every keepalive interval, which is no trouble at all.
        overdue = max(2 * info.rtt_us // 1000, PROBE_SLACK_MS)
        probe_unanswered = info.probes and info.last_ack_recv_ms > self.probe_after_ms + overdue
        if idle_link and probe_unanswered:
            # Keepalive probing a silent link.  Linux sends no probe while data is
            # unacknowledged, so a write now would stop them: writes wait until the
            # peer answers.
            conn.hold()
        elif conn.held is not None:
            conn.release()
        if info.troubled and info.idle_ms >= self.vanish_ms and not conn.window_recently_closed(now):
            # The kernel's own keepalive bound has passed with probes unanswered:
            # the same silence the kernel reports as ETIMEDOUT (see boatwist.reasons).
            conn.close(Reason.KEEPALIVE_TIMEOUT)
            return
        if conn.user is None or not conn.kind.persistent:
            return
        # One retransmission is ordinary loss; a second timeout of the same data is trouble.
        if probe_unanswered or info.retransmits >= 2:
            why = Reason.PROBES if probe_unanswered else Reason.RETRANSMITS
            self.presence.set_unstable(conn, True, why)
        elif conn.unstable:
            self.presence.set_unstable(conn, False, Reason.RECOVERED)

    def _ended_reason(self, conn: TrackedConnection, info: TcpVitals) -> Reason:
        """
        Why a connection the kernel no longer calls ESTABLISHED is ending.
        In CLOSE the kernel has already ended it, and why is known: our
        probe after the peer's FIN was answered (``closed``), keepalive or
        user timeout gave up on a silent peer (probes or retransmissions
        outstanding: ``keepalive-timeout``, as L{sockets.SocketRecord.cause}
        says it), or the peer reset.  Any other state (CLOSE_WAIT: the peer
        closed and nobody noticed) is ``tcp-state``.
        """
        if info.state_name == "CLOSE":
            if conn.peer_eof:
                return Reason.CLOSED
            if conn.window_recently_closed(self.monotonic()):
                return Reason.SLOW_READER
            if info.probes or info.retransmits:
                return Reason.KEEPALIVE_TIMEOUT
            return Reason.RESET
        self._log.info("closing {conn}: TCP state {state}", conn=conn, state=info.state_name)
        return Reason.TCP_STATE

    def beat_streams(self) -> None:
        now = self.monotonic()
        if now - self._last_stream_beat < self.settings.stream_interval:
            return
        self._last_stream_beat = now
        for stream in self.streams:
            try:
                stream.comment("heartbeat")
            except Exception:
                self._log.failure("heartbeat comment to {stream!r} failed; going on", stream=stream)

    def _ping_watchdog(self) -> None:
        if self.watchdog is not None:
            self.watchdog()
