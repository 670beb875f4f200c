"""
``/metrics`` in the Prometheus text format.

A registry of our own per process (never prometheus_client's global one, so
tests and two daemons in one interpreter do not collide).  Gauges are read
at scrape time from presence, the tracker, the heartbeat and the open event
streams; counters and histograms are fed by the event hub, so data still
flows one way.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable, Iterator, Sized

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily

from boatwist.events import Event
from boatwist.heartbeat import HeartbeatService
from boatwist.net.tracking import ConnectionTracker
from boatwist.presence import Kind, Presence
from boatwist.reasons import VANISHED, Reason


class Metrics:
    def __init__(self, presence: Presence, tracker: ConnectionTracker, heartbeat: HeartbeatService,
                 streams: Sized) -> None:
        self.presence = presence
        self.tracker = tracker
        self.heartbeat = heartbeat
        self.streams = streams
        self.registry = CollectorRegistry(auto_describe=True)
        #: More families, read at each scrape (the MQTT bridge's counters when it runs).
        self._sources: list[Callable[[], Iterable[Metric]]] = []
        self.offline_reasons: Counter[str] = Counter()
        self.chat_messages: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.detection = Histogram(
            "boatwist_detection_seconds",
            "Seconds from a vanished peer's last sign of life to its offline event",
            buckets=(0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 30, 60, 300, 900),
            registry=self.registry,
        )
        # A custom collector: prometheus_client calls collect() at each scrape.
        self.registry.register(self)

    def on_event(self, event: Event) -> None:
        data = event.data
        if event.kind == "presence" and data.get("reason") == Reason.REFUSED:
            # Someone kept out (or over their connection limit), not someone who left.
            self.refusals[data.get("refusal") or "unknown"] += 1
        elif event.kind == "presence" and data.get("state") == "offline":
            self.offline_reasons[data.get("reason", "unknown")] += 1
            after = data.get("detected_after")
            if after is not None and data.get("reason") in VANISHED:
                self.detection.observe(after)
        elif event.kind == "chat":
            self.chat_messages[data.get("via", "unknown")] += 1

    def collect(self) -> Iterator[Metric]:
        users = GaugeMetricFamily("boatwist_users_online", "Users online, by state", labels=["state"])
        states = Counter(u.state for u in self.presence.users())
        for state in ("online", "unstable"):
            users.add_metric([state], states.get(state, 0))
        yield users
        seats = GaugeMetricFamily("boatwist_seats", "Seats (max_users)", labels=["kind"])
        seats.add_metric(["used"], self.presence.seats_used)
        seats.add_metric(["limit"], self.presence.limit)
        yield seats
        conns = GaugeMetricFamily("boatwist_connections", "Open connections, by kind", labels=["kind"])
        kinds = Counter(c.kind for c in self.tracker.connections())
        for kind in Kind:
            conns.add_metric([kind.value], kinds.get(kind, 0))
        yield conns
        offline = CounterMetricFamily("boatwist_offline_events", "Users gone offline, by reason", labels=["reason"])
        for reason, n in sorted(self.offline_reasons.items()):
            offline.add_metric([reason], n)
        yield offline
        refused = CounterMetricFamily("boatwist_refusals", "Logins and connections refused, by refusal",
                                      labels=["refusal"])
        for refusal, n in sorted(self.refusals.items()):
            refused.add_metric([refusal], n)
        yield refused
        chat = CounterMetricFamily("boatwist_chat_messages", "Chat messages, by front end", labels=["via"])
        for via, n in sorted(self.chat_messages.items()):
            chat.add_metric([via], n)
        yield chat
        durations = list(self.heartbeat.tick_durations)
        tick = SummaryMetricFamily("boatwist_heartbeat_tick_seconds", "CPU seconds per heartbeat tick (recent)",
                                   count_value=len(durations), sum_value=sum(durations))
        yield tick
        last = GaugeMetricFamily("boatwist_heartbeat_last_tick_seconds", "CPU seconds of the last heartbeat tick")
        last.add_metric([], durations[-1] if durations else 0.0)
        yield last
        streams = GaugeMetricFamily("boatwist_event_streams", "Open event streams")
        streams.add_metric([], len(self.streams))
        yield streams
        for source in self._sources:
            yield from source()

    def add_source(self, source: Callable[[], Iterable[Metric]]) -> None:
        """Also export what C{source} yields at each scrape."""
        self._sources.append(source)

    def describe(self) -> list[Metric]:
        return []

    def render(self) -> bytes:
        return generate_latest(self.registry)
