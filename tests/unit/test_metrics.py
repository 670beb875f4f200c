"""
boatwist.metrics: /metrics in the Prometheus text format.

The whole core is real (tests/core_rig.py, on a L{Clock}); connections are
real tracked ones on StringTransports.  The output is parsed with
prometheus_client's own parser, as a scraper would.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from boatwist.net.tracking import TrackedConnection
from boatwist.presence import Kind
from boatwist.reasons import Reason
from core_rig import Rig as CoreRig


class Rig(CoreRig):
    def __init__(self, max_users: int = 3, ticks: list[float] | None = None, streams: int = 0) -> None:
        super().__init__(max_users=max_users, max_connections_per_user=2)
        self.presence = self.core.presence
        self.hub = self.core.hub
        self.metrics = self.core.metrics
        self.core.heartbeat.tick_durations.extend(ticks or [])
        for _ in range(streams):
            self.core.streams.add(object())  # type: ignore[arg-type]  # only counted

    def conn(self, kind: Kind = Kind.WEB) -> TrackedConnection:
        """A real tracked connection of kind."""
        return self.connect(kind=Kind.CHAT if kind is Kind.CHAT else Kind.HTTP)[2]

    def attach(self, user: str, kind: Kind = Kind.WEB) -> TrackedConnection:
        conn = self.conn(kind)
        assert self.presence.admit(conn, user, kind) is None
        return conn

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
    rig.attach("alice")
    b = rig.attach("bob", Kind.CHAT)
    rig.attach("carol", Kind.HTTP)
    rig.presence.set_unstable(b, True, Reason.PROBES)
    s = rig.samples()
    assert value(s, "boatwist_users_online", state="online") == 2
    assert value(s, "boatwist_users_online", state="unstable") == 1
    assert value(s, "boatwist_seats", kind="used") == 3
    assert value(s, "boatwist_seats", kind="limit") == 3
    assert rig.families()["boatwist_users_online"].type == "gauge"


def test_connections_by_kind() -> None:
    """Open connections are counted by kind, every kind present even at zero."""
    rig = Rig()
    for _ in range(3):
        rig.conn(Kind.HTTP)
    rig.attach("alice", Kind.WEB)
    s = rig.samples()
    assert value(s, "boatwist_connections", kind="http") == 3
    assert value(s, "boatwist_connections", kind="web") == 1
    assert value(s, "boatwist_connections", kind="chat") == 0


def test_offline_events_by_reason() -> None:
    """Every offline event is counted by its reason."""
    rig = Rig()
    for n, reason in enumerate(["closed", "keepalive-timeout", "closed"], 1):
        conn = rig.attach(f"user{n}")
        rig.presence.detach(conn, Reason(reason), 0.0 if reason == "closed" else 3.0)
    rig.attach("dave", Kind.HTTP)
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
    rig.attach("alice")
    assert rig.presence.admit(rig.conn(), "bob", Kind.WEB) is not None
    rig.attach("alice")
    assert rig.presence.admit(rig.conn(), "alice", Kind.WEB) is not None
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
    ghost, leaver, stale = rig.attach("ghost"), rig.attach("leaver"), rig.attach("stale")
    rig.presence.detach(ghost, Reason.KEEPALIVE_TIMEOUT, 2.5)
    rig.presence.detach(leaver, Reason.CLOSED, 0.0)
    rig.presence.detach(stale, Reason.TCP_STATE, 12.0)
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
    conn = rig.attach("ghost")
    rig.presence.detach(conn, Reason.HEARTBEAT_TIMEOUT, None)
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
    rig = Rig(ticks=[0.001, 0.002, 0.0005])
    s = rig.samples()
    assert value(s, "boatwist_heartbeat_tick_seconds_count") == 3
    assert value(s, "boatwist_heartbeat_tick_seconds_sum") == pytest.approx(0.0035)
    assert value(s, "boatwist_heartbeat_last_tick_seconds") == 0.0005
    assert rig.families()["boatwist_heartbeat_tick_seconds"].type == "summary"


def test_heartbeat_before_its_first_tick() -> None:
    """Before any tick the summary is empty and the last tick is 0."""
    s = Rig().samples()
    assert value(s, "boatwist_heartbeat_tick_seconds_count") == 0
    assert value(s, "boatwist_heartbeat_last_tick_seconds") == 0.0


def test_event_streams_gauge() -> None:
    """The number of open event streams is exported."""
    assert value(Rig(streams=4).samples(), "boatwist_event_streams") == 4


def test_each_instance_has_its_own_registry() -> None:
    """Two Metrics in one process do not collide (no global registry) and count separately."""
    one, two = Rig(), Rig()
    conn = one.attach("alice")
    one.presence.detach(conn, Reason.CLOSED, 0.0)
    assert value(one.samples(), "boatwist_offline_events_total", reason="closed") == 1
    assert value(two.samples(), "boatwist_offline_events_total", reason="closed") is None
