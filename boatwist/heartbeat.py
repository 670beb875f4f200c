"""
The heartbeat: one C{LoopingCall} that keeps presence truthful.

Each tick (``[heartbeat] interval``):

  - reads C{TCP_INFO} of every tracked connection.  A connection no longer
    ``ESTABLISHED`` (``CLOSE_WAIT``: the peer closed and nobody read) is closed
    with reason ``tcp-state``.  Keepalive probes outstanding, retransmissions
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
from typing import Any, Callable, Iterable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .config import HeartbeatSettings


class HeartbeatService(Service):
    _log = Logger()

    def __init__(
        self,
        tracker: Any,
        presence: Any,
        streams: Iterable[Any],
        settings: HeartbeatSettings,
        clock: IReactorTime,
        monotonic: Callable[[], float],
        watchdog: Callable[[], Any] | None = None,
        cpu_time: Callable[[], float] = time.thread_time,
    ) -> None:
        self.tracker = tracker
        self.presence = presence
        self.streams = streams
        self.settings = settings
        self.clock = clock
        self.monotonic = monotonic
        self.watchdog = watchdog
        self._cpu_time = cpu_time
        self._last_stream_beat = monotonic()
        self._loop: LoopingCall | None = None
        #: CPU seconds of recent ticks (for /metrics and the benchmark).
        self.tick_durations: deque[float] = deque(maxlen=600)
        self.ticks = 0
        self.failed_ticks = 0

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.settings.interval, now=False)

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return super().stopService()

    def tick(self) -> None:
        """One heartbeat; never raises."""
        started = self._cpu_time()
        for step in (self.check_connections, self.beat_streams, self.presence.expire, self._ping_watchdog):
            try:
                step()
            except Exception:
                self.failed_ticks += 1
                self._log.failure("heartbeat step {step} failed; going on", step=getattr(step, "__name__", step))
        self.ticks += 1
        self.tick_durations.append(self._cpu_time() - started)

    def check_connections(self) -> None:
        now = self.monotonic()
        for conn in self.tracker.connections():
            info = conn.tcp_info()
            if info is None:
                continue
            if not info.established:
                if conn.peer_eof and info.state_name in ("CLOSE", "CLOSED"):
                    conn.close("closed")
                else:
                    self._log.info("closing {conn}: TCP state {state}", conn=conn, state=info.state_name)
                    conn.close("tcp-state")
                continue
            conn.rtt_ms = info.rtt_us / 1000.0
            conn.last_alive = max(conn.last_alive, now - info.idle_ms / 1000.0)
            if conn.user is None or not conn.bound:
                continue
            if info.troubled:
                why = "probes" if info.probes else "retransmits"
                self.presence.set_unstable(conn, True, why)
            elif conn.unstable:
                self.presence.set_unstable(conn, False, "recovered")

    def beat_streams(self) -> None:
        now = self.monotonic()
        if now - self._last_stream_beat < self.settings.stream_interval:
            return
        self._last_stream_beat = now
        for stream in self.streams:
            stream.comment("heartbeat")

    def _ping_watchdog(self) -> None:
        if self.watchdog is not None:
            self.watchdog()
