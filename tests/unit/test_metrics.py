"""
boatwist.metrics: /metrics in the Prometheus text format.

Presence and the hub are real (on a L{Clock}); the tracker, heartbeat and
stream registry are stand-ins with the attributes metrics reads.  The output
is parsed with prometheus_client's own parser, as a scraper would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from boatwist.config import AdmissionSettings
from boatwist.events import EventHub
from boatwist.metrics import Metrics
from boatwist.presence import Presence


@dataclass(eq=False)
class Conn:
    id: int
    kind: str = "web"
    peer_host: str = "10.0.0.1"
    peer_port: int = 4000
    rtt_ms: float | None = None
    unstable: bool = False
    closed: list[str] = field(default_factory=list)

    def close(self, reason: str) -> None:
        self.closed.append(reason)


class Tracker:
    def __init__(self, conns: list[Conn]) -> None:
        self.conns = conns

    def connections(self) -> list[Conn]:
        return list(self.conns)


class Heartbeat:
    def __init__(self, durations: list[float]) -> None:
        self.tick_durations = durations


class Streams:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class Rig:
    def __init__(self, max_users: int = 3, heartbeat: Any = None, streams: Any = None) -> None:
        self.clock = Clock()
        self.hub = EventHub()
        self.presence = Presence(self.hub, AdmissionSettings(max_users=max_users, max_connections_per_user=2),
                                 self.clock.seconds, lambda: 1_700_000_000.0)
        self.conns: list[Conn] = []
        self.metrics = Metrics(self.presence, Tracker(self.conns), heartbeat, streams)
        self.hub.subscribe(self.metrics.on_event)

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = self.metrics.render().decode("utf-8")
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return out

    def families(self) -> dict[str, Any]:
        return {f.name: f for f in text_string_to_metric_families(self.metrics.render().decode("utf-8"))}


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_users_online_by_state_and_seats() -> None:
    """Users online and unstable, and seats used of the limit, are gauges read at scrape time."""
    rig = Rig(max_users=3)
    a, b = Conn(1), Conn(2, kind="chat")
    rig.presence.attach("alice", a)
    rig.presence.attach("bob", b)
    rig.presence.touch_http("carol", "10.0.0.3")
    rig.presence.set_unstable(b, True, "probes")
    s = rig.samples()
    assert value(s, "boatwist_users_online", state="online") == 2
    assert value(s, "boatwist_users_online", state="unstable") == 1
    assert value(s, "boatwist_seats", kind="used") == 3
    assert value(s, "boatwist_seats", kind="limit") == 3
    assert rig.families()["boatwist_users_online"].type == "gauge"


def test_connections_by_kind() -> None:
    """Open connections are counted by kind, every kind present even at zero."""
    rig = Rig()
    rig.conns.extend([Conn(1, "http"), Conn(2, "http"), Conn(3, "web"), Conn(4, "http")])
    s = rig.samples()
    assert value(s, "boatwist_connections", kind="http") == 3
    assert value(s, "boatwist_connections", kind="web") == 1
    assert value(s, "boatwist_connections", kind="chat") == 0


def test_offline_events_by_reason() -> None:
    """Every offline event is counted by its reason."""
    rig = Rig()
    for n, reason in enumerate(["closed", "keepalive-timeout", "closed"], 1):
        conn = Conn(n)
        rig.presence.attach(f"user{n}", conn)
        rig.presence.detach(conn, reason, 0.0 if reason == "closed" else 3.0)
    rig.presence.touch_http("dave", "10.0.0.4")
    rig.clock.advance(31)
    rig.presence.expire()
    s = rig.samples()
    assert value(s, "boatwist_offline_events_total", reason="closed") == 2
    assert value(s, "boatwist_offline_events_total", reason="keepalive-timeout") == 1
    assert value(s, "boatwist_offline_events_total", reason="idle") == 1
    assert rig.families()["boatwist_offline_events"].type == "counter"


def test_refusals_are_not_offline_events() -> None:
    """
    A refused user never came online: refusals are counted on their own, by
    kind of refusal, not as users gone offline.
    """
    rig = Rig(max_users=1)
    conn = Conn(1)
    rig.presence.attach("alice", conn)
    assert rig.presence.attach("bob", Conn(2)) is not None
    rig.presence.attach("alice", Conn(3))
    assert rig.presence.attach("alice", Conn(4)) is not None
    s = rig.samples()
    assert value(s, "boatwist_offline_events_total", reason="refused") is None
    assert value(s, "boatwist_refusals_total", refusal="full") == 1
    assert value(s, "boatwist_refusals_total", refusal="too-many-connections") == 1


def test_detection_histogram_observes_vanished_peers_only() -> None:
    """
    How fast a vanished peer was detected goes into the histogram; a clean
    close (nothing to detect) does not.
    """
    rig = Rig()
    ghost, leaver, stale = Conn(1), Conn(2), Conn(3)
    rig.presence.attach("ghost", ghost)
    rig.presence.attach("leaver", leaver)
    rig.presence.attach("stale", stale)
    rig.presence.detach(ghost, "keepalive-timeout", 2.5)
    rig.presence.detach(leaver, "closed", 0.0)
    rig.presence.detach(stale, "tcp-state", 12.0)
    s = rig.samples()
    assert value(s, "boatwist_detection_seconds_count") == 2
    assert value(s, "boatwist_detection_seconds_sum") == 14.5
    assert value(s, "boatwist_detection_seconds_bucket", le="2.0") == 0
    assert value(s, "boatwist_detection_seconds_bucket", le="3.0") == 1
    assert value(s, "boatwist_detection_seconds_bucket", le="15.0") == 2
    assert value(s, "boatwist_detection_seconds_bucket", le="+Inf") == 2
    assert rig.families()["boatwist_detection_seconds"].type == "histogram"


def test_detection_without_a_measure_is_not_observed() -> None:
    """An offline event whose detected_after is unknown (null) adds nothing to the histogram."""
    rig = Rig()
    conn = Conn(1)
    rig.presence.attach("ghost", conn)
    rig.presence.detach(conn, "heartbeat-timeout", None)
    assert value(rig.samples(), "boatwist_detection_seconds_count") == 0


def test_chat_messages_by_front_end() -> None:
    """Chat events are counted by the front end they came through."""
    rig = Rig()
    for via in ("web", "chat", "web"):
        rig.hub.publish("chat", {"id": 1, "user": "a", "text": "x", "via": via, "at": 1.0, "action": False})
    s = rig.samples()
    assert value(s, "boatwist_chat_messages_total", via="web") == 2
    assert value(s, "boatwist_chat_messages_total", via="chat") == 1


def test_heartbeat_tick_summary_and_last_tick() -> None:
    """The heartbeat's recent tick CPU times are a summary (count, sum) and the last one a gauge."""
    rig = Rig(heartbeat=Heartbeat([0.001, 0.002, 0.0005]))
    s = rig.samples()
    assert value(s, "boatwist_heartbeat_tick_seconds_count") == 3
    assert value(s, "boatwist_heartbeat_tick_seconds_sum") == pytest.approx(0.0035)
    assert value(s, "boatwist_heartbeat_last_tick_seconds") == 0.0005
    assert rig.families()["boatwist_heartbeat_tick_seconds"].type == "summary"


def test_heartbeat_before_its_first_tick() -> None:
    """Before any tick the summary is empty and the last tick is 0."""
    s = Rig(heartbeat=Heartbeat([])).samples()
    assert value(s, "boatwist_heartbeat_tick_seconds_count") == 0
    assert value(s, "boatwist_heartbeat_last_tick_seconds") == 0.0


def test_event_streams_gauge() -> None:
    """The number of open event streams is exported."""
    assert value(Rig(streams=Streams(4)).samples(), "boatwist_event_streams") == 4


def test_optional_parts_absent() -> None:
    """Without heartbeat and stream registry their metrics are simply absent."""
    names = set(Rig().families())
    assert "boatwist_heartbeat_tick_seconds" not in names
    assert "boatwist_event_streams" not in names
    assert "boatwist_users_online" in names


def test_each_instance_has_its_own_registry() -> None:
    """Two Metrics in one process do not collide (no global registry) and count separately."""
    one, two = Rig(), Rig()
    conn = Conn(1)
    one.presence.attach("alice", conn)
    one.presence.detach(conn, "closed", 0.0)
    assert value(one.samples(), "boatwist_offline_events_total", reason="closed") == 1
    assert value(two.samples(), "boatwist_offline_events_total", reason="closed") is None
