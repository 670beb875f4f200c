"""
Polling on the reactor's clock (boatwist.controls.registry), on the real core
of tests/core_rig.py and a C{Clock}: no threads, no sleeps.

Pinned here: a polled control whose reading becomes overdue is *told* to
everyone as C{stale} -- a C{value} event, the moment the poll loop finds it
overdue, once -- and C{good} again with its next good reading (a poll, or
an operation's read back); the MQTT bridge passes that on, the metrics do
not count it as an operation or a poll error, and the chat port's
C{/controls} shows it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mqtt_memory import CONNACK, MemoryEndpoint
from twisted.internet import defer
from twisted.internet.defer import Deferred

from boatwist.chat.device import device_commands
from boatwist.chat.lines import format_event
from boatwist.config import parse_config
from boatwist.controls.registry import ControlState
from boatwist.controls.spec import ControlSpec, Value
from boatwist.mqtt.bridge import MqttBridgeService
from boatwist.mqtt.device import CoreDevice
from boatwist.mqtt.outbox import Backoff
from boatwist.mqtt.settings import MqttSettings
from core_rig import Rig

DEVICE = """
[floor]
mode = off
[control:valve]
type = switch
backend = file
path = /nonexistent/valve
poll = 0.5
timeout = 3
[control:temp]
type = sensor
backend = file
path = {temp}
unit = °C
poll = 1
"""


class SlowBackend:
    """A device whose reads and writes answer when the test says (while C{hold} is set)."""

    readable = True

    def __init__(self) -> None:
        self.value: Value = False
        self.hold = False
        self.pending: list[Deferred[Any]] = []

    def _answer(self, result: Any) -> Deferred[Any]:
        if not self.hold:
            return defer.succeed(result)
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d

    def read(self) -> Deferred[Value]:
        return self._answer(self.value)

    def write(self, value: Value) -> Deferred[None]:
        d = self._answer(None)
        d.addCallback(lambda _: setattr(self, "value", value))
        return d

    def close(self) -> Deferred[None]:
        return defer.succeed(None)


class Device(Rig):
    def __init__(self, tmp_path: Path) -> None:
        self.temp = tmp_path / "temp"
        self.temp.write_text("21.5\n")
        super().__init__(parse_config(DEVICE.format(temp=self.temp)))
        self.valve = SlowBackend()
        real_build = self.backends.build

        def build(control: ControlSpec, restored: Value = None) -> Any:
            return self.valve if control.name == "valve" else real_build(control, restored)

        self.backends.build = build  # type: ignore[method-assign]
        self.core.controls.start()
        self.t0 = self.clock.seconds()

    def state(self, name: str) -> ControlState:
        state = self.core.controls.get(name)
        assert state is not None
        return state

    def values(self, name: str, since: int = 0) -> list[dict[str, Any]]:
        return [e.data for e in self.events[since:] if e.kind == "value" and e.data["control"] == name]

    def until(self, t: float) -> None:
        """Advance the Clock to C{t0 + t}, stopping at every timer due on the way, as the reactor would."""
        end = self.t0 + t
        while self.clock.seconds() < end:
            due = [c.getTime() for c in self.clock.getDelayedCalls() if c.active()]
            self.clock.advance(min([end, *due]) - self.clock.seconds())

    def quality(self, name: str) -> str:
        return str(self.core.controls.describe(self.state(name), "alice", self.core.roles)["quality"])


def test_an_overdue_reading_is_published_stale_once_then_good_when_the_operation_ends(tmp_path: Path) -> None:
    """
    The valve (poll 0.5 s, timeout 3 s: overdue after 2 × 0.5 + 3 = 4 s)
    is being operated and the device is slow: the write takes 2.9 s and the
    read back 2.9 s, and its polls wait for the operation.  At the first
    poll past 4 s (4.5 s) everyone gets a C{value} event, quality C{stale},
    with the value as it was -- once, not at every later poll.  When the
    read back answers, a C{value} event says C{good} (with the new value and
    who set it) before the operation's C{control} event.
    """
    d = Device(tmp_path)
    assert d.quality("valve") == "good"
    mark = len(d.events)
    d.valve.hold = True
    done: list[Any] = []
    d.core.operations.operate("alice", "valve", True, "api").addCallback(done.append)
    d.until(2.9)
    d.valve.pending.pop(0).callback(None)  # the write answers; the read back starts
    d.until(4.25)
    assert d.values("valve", mark) == [], "not overdue yet: nothing to tell"
    d.until(4.5)
    [stale] = d.values("valve", mark)
    assert (stale["value"], stale["quality"], stale["error"]) == (False, "stale", None), stale
    assert d.quality("valve") == "stale"
    d.until(5.75)
    assert len(d.values("valve", mark)) == 1, "published once, not at every poll"
    assert done == []
    d.clock.advance(0.05)
    d.valve.pending.pop(0).callback(True)  # the read back answers at 5.8 s
    assert [o.status for o in done] == [200]
    after = [(e.kind, e.data.get("quality") or e.data.get("result")) for e in d.events[mark:]
             if e.data.get("control") == "valve"]
    assert after == [("value", "stale"), ("value", "good"), ("control", "ok")], after
    good = d.values("valve", mark)[-1]
    assert (good["value"], good["changed_by"]) == (True, "alice"), good
    assert d.quality("valve") == "good"


def hold(state: ControlState) -> None:
    """Whatever holds the control (an operation, a read) holds its lock; the poll skips it."""
    state.lock.acquire()


def test_a_stale_sensor_turns_good_with_its_next_poll(tmp_path: Path) -> None:
    """
    The temperature (a file, poll 1 s, timeout 2 s: overdue 4 s after its
    last reading) is polled at 1, 2 and 3 s, unchanged: nothing is
    published.  Then something holds it: the poll at 8 s finds the reading
    of 3 s overdue and publishes C{stale}; once it is free, the next poll
    (9 s) reads it and publishes C{good} with the same value.
    """
    d = Device(tmp_path)
    temp = d.state("temp")
    assert (temp.value, d.quality("temp")) == (21.5, "good")
    mark = len(d.events)
    d.until(3)
    assert d.values("temp", mark) == [], "an unchanged reading is not news"
    assert temp.seen_at == d.t0 + 3
    hold(temp)
    d.until(7)
    assert d.values("temp", mark) == [] and d.quality("temp") == "good"
    d.until(8)
    [stale] = d.values("temp", mark)
    assert (stale["value"], stale["quality"]) == (21.5, "stale")
    d.until(8.5)
    assert len(d.values("temp", mark)) == 1
    temp.lock.release()
    d.until(9)
    assert [(e["value"], e["quality"]) for e in d.values("temp", mark)] == [(21.5, "stale"), (21.5, "good")]
    d.until(12)
    assert len(d.values("temp", mark)) == 2


def test_stale_reaches_mqtt_and_the_chat_port_and_counts_as_nothing(tmp_path: Path) -> None:
    """
    The MQTT bridge publishes the C{value} event on C{P/events/value} and
    re-publishes the control's retained state with quality C{stale}, then
    C{good}; the chat port shows no line for it but C{/controls} says
    C{stale}; C{/metrics} counts no operation and no poll error.
    """
    d = Device(tmp_path)
    endpoint = MemoryEndpoint()
    bridge = MqttBridgeService(MqttSettings(broker="tcp:127.0.0.1:1883", topic="dev"), d.core.hub,
                               CoreDevice(d.core, "mqtt"), None, d.clock, tmp_path, endpoint=endpoint,
                               backoff=Backoff(1.0, 4.0, chance=lambda: 0.999), wall_clock=d.clock.seconds)
    bridge.startService()
    d.clock.advance(0)
    conn = endpoint.last
    conn.read()
    conn.send(CONNACK)
    d.clock.advance(0)
    conn.read()
    temp = d.state("temp")
    hold(temp)
    d.until(5)
    temp.lock.release()
    d.until(6)
    sent = [p.publish for p in conn.read() if p.kind == 3]
    events = [json.loads(payload) for topic, payload, *_ in sent if topic == "dev/events/value"]
    assert [(e["control"], e["quality"]) for e in events] == [("temp", "stale"), ("temp", "good")]
    retained = [json.loads(payload)["quality"] for topic, payload, _, retain, _ in sent
                if topic == "dev/controls/temp" and retain]
    assert retained[:1] == ["stale"] and retained[-1] == "good", retained
    bridge.stopService()

    hold(temp)
    d.until(12)
    [event] = [e for e in d.events if e.kind == "value" and e.data["quality"] == "stale"][-1:]
    assert format_event(event) is None, "a value event is no chat line"
    lines: list[str] = []

    class Typist:
        user = "alice"

        def reply(self, line: str) -> None:
            lines.append(line)

    device_commands(d.core)["controls"].handler(Typist(), "")  # type: ignore[arg-type]
    [line] = [line for line in lines if line.strip().startswith("temp")]
    assert "stale" in line, line
    metrics = d.core.metrics.render().decode()
    assert "boatwist_operations_total{" not in metrics
    assert "boatwist_poll_errors_total{" not in metrics
