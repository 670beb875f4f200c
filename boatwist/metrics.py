"""
``/metrics`` in the Prometheus text format.

A registry of our own per process (never prometheus_client's global one, so
tests and two daemons in one interpreter do not collide), made at the first
scrape: prometheus_client (and the wsgiref, http.server and asyncio it
brings) is imported only then -- until someone scrapes, a device does not
pay its ~1 MB and ~30 ms of start-up.  The two histograms are counted by
L{BucketCounts} meanwhile, and exported as prometheus_client's own
histograms would be (buckets, count, sum, created).  Gauges are read
at scrape time from presence, the tracker, the heartbeat and the open event
streams; counters and histograms are fed by the event hub, so data still
flows one way.  The one exception is the device's backend calls, which are
not events: L{BackendCalls} is made before the controls and handed to them
and to the pipeline as their C{observe} hook.

The device:

    boatwist_operations_total{control, result}   every operation (from the
        C{control} events): result ok or error -- refusals by role or floor,
        failed writes and safe-state operations included
    boatwist_backend_call_seconds{control, call}  histogram of backend call
        times: call C{read} (the first read and every poll) or C{write}
    boatwist_poll_errors_total{control}   reads that failed (a poll, or the
        first read at start): the device not answering
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from itertools import accumulate
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence, Sized

from boatwist.events import Event
from boatwist.heartbeat import HeartbeatService
from boatwist.net.tracking import ConnectionTracker
from boatwist.presence import Kind, Presence
from boatwist.reasons import VANISHED, Reason

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric


#: Backend call buckets, seconds: memory answers in microseconds, a file in a fraction of a
#: millisecond, Modbus on a LAN in milliseconds, a command in tens of them, a timeout in seconds.
BACKEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _Series:
    """One label set of a L{BucketCounts}: observations per bucket (not cumulative), their sum, when made."""

    __slots__ = ("counts", "total", "created")

    def __init__(self, buckets: int, created: float) -> None:
        self.counts = [0] * buckets
        self.total = 0.0
        self.created = created


class BucketCounts:
    """
    A histogram, by label values, without prometheus_client: the series
    of each label set.  L{family} exports it as prometheus_client's
    C{Histogram} would (the same buckets, count, sum and created samples).
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], labelnames: Sequence[str] = (),
                 wall: Callable[[], float] = time.time) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(float(b) for b in buckets) + (float("inf"),)
        self._wall = wall
        self.series: dict[tuple[str, ...], _Series] = {}
        if not self.labelnames:
            self._series(())  # as prometheus_client: an unlabelled histogram exists from the start

    def _series(self, labels: tuple[str, ...]) -> _Series:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = _Series(len(self.bounds), self._wall())
        return series

    def observe(self, value: float, labels: tuple[str, ...] = ()) -> None:
        series = self._series(labels)
        series.counts[bisect_left(self.bounds, value)] += 1
        series.total += value

    def family(self) -> Metric:
        """The histogram family, with C{_created} samples as prometheus_client writes them."""
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [floatToGoString(b) for b in self.bounds]
        for labels, series in self.series.items():
            cumulative = list(accumulate(series.counts))
            family.add_metric(list(labels), list(zip(edges, cumulative, strict=True)), sum_value=series.total)
        for labels, series in self.series.items():
            family.add_sample(self.name + "_created", dict(zip(self.labelnames, labels, strict=True)),
                              series.created)
        return family


class BackendCalls:
    """
    Every backend call the controls (reads, polls) and the pipeline (writes)
    make: L{observe} is their C{observe} hook.  Made before them, read by
    L{Metrics} at scrape time.
    """

    def __init__(self) -> None:
        self.latency = BucketCounts("boatwist_backend_call_seconds", "Seconds per backend call, by control and call",
                                    BACKEND_BUCKETS, labelnames=("control", "call"))
        #: control -> reads that failed.
        self.read_errors: Counter[str] = Counter()

    def observe(self, control: str, call: str, seconds: float, ok: bool) -> None:
        self.latency.observe(max(0.0, seconds), (control, call))
        if not ok and call == "read":
            self.read_errors[control] += 1


class Metrics:
    def __init__(self, presence: Presence, tracker: ConnectionTracker, heartbeat: HeartbeatService,
                 streams: Sized, backend_calls: BackendCalls) -> None:
        self.presence = presence
        self.tracker = tracker
        self.heartbeat = heartbeat
        self.streams = streams
        self.backend_calls = backend_calls
        #: Made at the first scrape (L{render}).
        self._registry: CollectorRegistry | None = None
        #: More families, read at each scrape (the MQTT bridge's counters when it runs).
        self._sources: list[Callable[[], Iterable[Metric]]] = []
        self.offline_reasons: Counter[str] = Counter()
        self.chat_messages: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        #: (control, result) -> operations.
        self.operations: Counter[tuple[str, str]] = Counter()
        self.detection = BucketCounts(
            "boatwist_detection_seconds",
            "Seconds from a vanished peer's last sign of life to its offline event",
            buckets=(0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 30, 60, 300, 900),
        )

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
        elif event.kind == "control":
            self.operations[(str(data.get("control")), str(data.get("result")))] += 1

    def collect(self) -> Iterator[Metric]:
        """Every family, read now (prometheus_client calls it at each scrape)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

        yield self.detection.family()
        yield self.backend_calls.latency.family()
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
        # The summary above covers recent ticks only (its count stops at the window's size): this one
        # only grows, so rate() says whether the heartbeat is ticking at all.
        yield CounterMetricFamily("boatwist_heartbeat_ticks", "Heartbeat ticks since start",
                                  value=self.heartbeat.ticks)
        yield CounterMetricFamily("boatwist_heartbeat_failed_ticks", "Heartbeat ticks with a failed step",
                                  value=self.heartbeat.failed_ticks)
        last = GaugeMetricFamily("boatwist_heartbeat_last_tick_seconds", "CPU seconds of the last heartbeat tick")
        last.add_metric([], durations[-1] if durations else 0.0)
        yield last
        operations = CounterMetricFamily("boatwist_operations", "Operations of the device, by control and result",
                                         labels=["control", "result"])
        for (control, result), n in sorted(self.operations.items()):
            operations.add_metric([control, result], n)
        yield operations
        polls = CounterMetricFamily("boatwist_poll_errors", "Reads of a control that failed (polls, the first read)",
                                    labels=["control"])
        for control, n in sorted(self.backend_calls.read_errors.items()):
            polls.add_metric([control], n)
        yield polls
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
        from prometheus_client import CollectorRegistry, generate_latest

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=True)
            self._registry.register(self)
        return generate_latest(self._registry)
