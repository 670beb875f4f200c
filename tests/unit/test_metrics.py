"""
boatwist.metrics: /metrics in the Prometheus text format.

The whole core is real (tests/core_rig.py, on a L{Clock}); connections are
real tracked ones on StringTransports.  The output is parsed with
prometheus_client's own parser, as a scraper would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from boatwist.config import parse_config
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


def test_heartbeat_ticks_counter_keeps_counting() -> None:
    """
    Ticks since start are a counter that only grows (the summary above covers
    a window of recent ticks, so its count stops growing once the window is
    full): rate() of it says whether the heartbeat is ticking at all.
    """
    rig = Rig()
    rig.core.heartbeat.startService()
    try:
        for _ in range(3):
            rig.clock.advance(rig.settings.heartbeat.interval)
    finally:
        rig.core.heartbeat.stopService()
    s = rig.samples()
    assert value(s, "boatwist_heartbeat_ticks_total") == 3
    assert value(s, "boatwist_heartbeat_failed_ticks_total") == 0
    assert rig.families()["boatwist_heartbeat_ticks"].type == "counter"


# ------------------------------------------------------------------ the device

DEVICE = """
[roles]
viewer = carol
[floor]
mode = off
[control:pump]
type = switch
backend = memory
initial = off
[control:setpoint]
type = number
backend = memory
min = 0
max = 10
initial = 1
[control:temp]
type = sensor
backend = file
path = {path}
unit = °C
poll = 1
"""


def device(tmp_path: Path) -> tuple[CoreRig, Path]:
    """A started core with two memory controls and a polled file sensor whose file does not exist yet."""
    path = tmp_path / "temp"
    rig = CoreRig(parse_config(DEVICE.format(path=path)))
    rig.core.controls.start()
    return rig, path


def device_samples(rig: CoreRig) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(rig.core.metrics.render().decode("utf-8")):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def test_operations_by_control_and_result(tmp_path: Path) -> None:
    """
    Every operation is counted by control and result, from the ``control``
    events: successes, a viewer's refused attempt (an error everyone saw),
    and nothing for a bad value (no operation happened).
    """
    rig, _ = device(tmp_path)
    ops = rig.core.operations
    ops.operate("alice", "pump", True, "api")
    ops.operate("alice", "pump", False, "web")
    ops.operate("alice", "setpoint", 5, "api")
    ops.operate("carol", "pump", True, "api")
    ops.operate("alice", "setpoint", 50, "api")  # 400: out of range
    s = device_samples(rig)
    assert value(s, "boatwist_operations_total", control="pump", result="ok") == 2
    assert value(s, "boatwist_operations_total", control="pump", result="error") == 1
    assert value(s, "boatwist_operations_total", control="setpoint", result="ok") == 1
    assert value(s, "boatwist_operations_total", control="setpoint", result="error") is None


def test_backend_calls_are_timed_by_control_and_call(tmp_path: Path) -> None:
    """
    The controls' reads (the first one at start) and the pipeline's writes
    reach the histogram through the ``observe`` hooks core.py wires, by
    control and call.
    """
    rig, path = device(tmp_path)
    rig.core.operations.operate("alice", "pump", True, "api")
    s = device_samples(rig)
    assert value(s, "boatwist_backend_call_seconds_count", control="pump", call="read") == 1
    assert value(s, "boatwist_backend_call_seconds_count", control="pump", call="write") == 1
    assert value(s, "boatwist_backend_call_seconds_count", control="temp", call="read") == 1
    assert value(s, "boatwist_backend_call_seconds_count", control="setpoint", call="write") is None
    families = {f.name: f for f in text_string_to_metric_families(rig.core.metrics.render().decode("utf-8"))}
    assert families["boatwist_backend_call_seconds"].type == "histogram"


def test_backend_call_histogram_buckets() -> None:
    """A call's seconds land in the right bucket (Modbus on a LAN: milliseconds; a hung command: its timeout)."""
    rig = Rig()
    calls = rig.core.metrics.backend_calls
    calls.observe("plc", "write", 0.004, True)
    calls.observe("plc", "write", 2.0, False)
    s = rig.samples()
    assert value(s, "boatwist_backend_call_seconds_bucket", control="plc", call="write", le="0.005") == 1
    assert value(s, "boatwist_backend_call_seconds_bucket", control="plc", call="write", le="2.5") == 2
    assert value(s, "boatwist_backend_call_seconds_sum", control="plc", call="write") == pytest.approx(2.004)
    assert value(s, "boatwist_poll_errors_total", control="plc") is None, "a failed write is not a poll error"


def test_poll_errors_by_control(tmp_path: Path) -> None:
    """
    A polled sensor whose file is missing counts one error per failed read
    (the first read at start, then each poll); once the file is there the
    count stops growing.
    """
    rig, path = device(tmp_path)
    assert value(device_samples(rig), "boatwist_poll_errors_total", control="temp") == 1
    rig.clock.advance(1)
    rig.clock.advance(1)
    assert value(device_samples(rig), "boatwist_poll_errors_total", control="temp") == 3
    path.write_text("21.5\n")
    rig.clock.advance(1)
    rig.clock.advance(1)
    s = device_samples(rig)
    assert value(s, "boatwist_poll_errors_total", control="temp") == 3
    assert value(s, "boatwist_backend_call_seconds_count", control="temp", call="read") == 5
    assert rig.core.controls.get("temp").value == 21.5  # type: ignore[union-attr]


def test_histograms_are_exported_as_prometheus_client_would() -> None:
    """
    The histograms are counted without prometheus_client (imported at the
    first scrape only) and exported as its own Histogram would be: a
    created sample per series, buckets ending in +Inf, count and sum.
    """
    rig = Rig()
    rig.core.metrics.backend_calls.observe("plc", "read", 0.2, True)
    text = rig.metrics.render().decode("utf-8")
    s = rig.samples()
    assert value(s, "boatwist_detection_seconds_created") is not None
    assert value(s, "boatwist_backend_call_seconds_created", control="plc", call="read") is not None
    assert value(s, "boatwist_backend_call_seconds_bucket", control="plc", call="read", le="+Inf") == 1
    assert value(s, "boatwist_backend_call_seconds_count", control="plc", call="read") == 1
    assert "# TYPE boatwist_backend_call_seconds histogram" in text
    assert "# TYPE boatwist_backend_call_seconds_created gauge" in text
