"""
The bridge service with a Clock and an in-memory broker connection: what it
publishes at connect, per event, while the broker is away and when it stops;
commands and their results; the counters.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from mqtt_fakes import FakeDeviceState, FakeOperator
from mqtt_memory import CONNACK, Connection, MemoryEndpoint, Packet, puback, publish
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from boatwist.events import EventHub
from boatwist.mqtt.bridge import MqttBridgeService
from boatwist.mqtt.outbox import Backoff
from boatwist.mqtt.settings import MqttSettings

P = "boatwist/press-7"


class Rig:
    def __init__(self, tmp_path: Path, ready: Deferred[None] | None = None, **settings: object) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.endpoint = MemoryEndpoint()
        self.hub = EventHub()
        self.state = FakeDeviceState()
        self.operator = FakeOperator()
        fields: dict[str, object] = {"broker": "tcp:127.0.0.1:1883", **settings}
        self.settings = MqttSettings(**fields)  # type: ignore[arg-type]
        self.bridge = MqttBridgeService(self.settings, self.hub, self.state, self.operator, self.clock, tmp_path,
                                        endpoint=self.endpoint, backoff=Backoff(1.0, 4.0, chance=lambda: 0.999),
                                        wall_clock=self.clock.seconds, window=3, ready=ready)

    def turn(self) -> None:
        for _ in range(4):
            self.clock.advance(0)

    def connect(self) -> Connection:
        if not self.bridge.running:
            self.bridge.startService()
        self.turn()
        conn = self.endpoint.last
        conn.read()
        conn.send(CONNACK)
        self.turn()
        return conn

    def published(self, conn: Connection) -> list[tuple[str, bytes, int, bool, int | None]]:
        return [p.publish for p in conn.read() if p.kind == 3]

    def drain(self, conn: Connection) -> list[tuple[str, bytes, int, bool, int | None]]:
        """Everything published until nothing more comes, acknowledging as the broker would."""
        everything = []
        sent = self.published(conn)
        while sent:
            everything += sent
            self.ack_all(conn, sent)
            sent = self.published(conn)
        return everything

    def ack_all(self, conn: Connection, sent: list[tuple[str, bytes, int, bool, int | None]]) -> None:
        for *_, mid in sent:
            if mid is not None:
                conn.send(puback(mid))
        self.turn()


def subscribed(packet: Packet) -> list[str]:
    """The topic filters of a SUBSCRIBE packet."""
    body, filters = packet.body[2:], []
    while body:
        (length,) = struct.unpack("!H", body[:2])
        filters.append(body[2:2 + length].decode())
        body = body[2 + length + 1:]
    return filters


def status(session: int, state: str = "offline", **extra: object) -> bytes:
    return json.dumps({"state": state, "session": session, **extra}).encode()


def test_connect_publishes_status_then_the_whole_state(tmp_path: Path) -> None:
    """online with this session, presence, floor and every control, retained; the will is the same session."""
    rig = Rig(tmp_path)
    conn = rig.connect()
    connect_packet = conn.packets[0]
    session = rig.bridge.stats.session
    assert f'{{"state":"offline","session":{session}}}'.encode() in connect_packet.body
    sent = rig.published(conn)
    topics = [t for t, *_ in sent]
    assert topics[0] == f"{P}/status"
    status = json.loads(sent[0][1])
    assert (status["state"], status["session"], sent[0][3]) == ("online", session, True)
    assert set(topics) == {f"{P}/status", f"{P}/presence", f"{P}/floor"} | {f"{P}/controls/{c['name']}" for c in rig.state.controls}
    assert all(retain for _, _, _, retain, _ in sent)
    assert rig.bridge.stats.connected


def test_sessions_grow_and_survive_a_restart(tmp_path: Path) -> None:
    """Each connection has a larger session, also after the service is built again (persisted)."""
    rig = Rig(tmp_path)
    rig.connect()
    first = rig.bridge.stats.session
    rig.endpoint.last.drop()
    rig.clock.advance(1.0)
    rig.turn()
    assert rig.bridge.stats.session == first + 1
    again = Rig(tmp_path)
    again.clock = rig.clock
    assert again.bridge.will().retain and again.bridge.stats.session == first + 2


def test_events_go_out_in_order_within_the_window(tmp_path: Path) -> None:
    """At most `window` events unacknowledged; the rest follow, in order, as PUBACKs come."""
    rig = Rig(tmp_path)
    conn = rig.connect()
    rig.published(conn)
    for n in range(7):
        rig.hub.publish("chat", {"user": "alice", "text": str(n)})
    rig.turn()
    sent = rig.published(conn)
    assert [json.loads(p)["text"] for t, p, *_ in sent if t.endswith("/events/chat")] == ["0", "1", "2"]
    texts: list[str] = []
    while sent:
        texts += [json.loads(p)["text"] for t, p, *_ in sent if t.endswith("/events/chat")]
        rig.ack_all(conn, sent)
        sent = rig.published(conn)
    assert texts == [str(n) for n in range(7)]
    assert rig.bridge.stats.queued == 0


def test_an_event_refreshes_the_retained_state_of_its_kind(tmp_path: Path) -> None:
    """control -> that control's state and last_operation; presence -> presence; floor -> floor."""
    rig = Rig(tmp_path)
    conn = rig.connect()
    rig.published(conn)
    rig.state.set_value("pump", True, "alice", 5.0)
    rig.hub.publish("control", {"id": 4, "user": "alice", "control": "pump", "old": False, "value": True,
                                "result": "ok", "error": None, "via": "web", "at": 5.0})
    rig.state.floor = {"mode": "required", "holder": "alice", "since": 5.0, "requested_by": None}
    rig.hub.publish("floor", {"state": "taken", "holder": "alice", "user": "alice", "reason": "taken", "at": 5.0})
    rig.turn()
    sent = {t: (json.loads(p), retain) for t, p, _, retain, _ in rig.published(conn)}
    assert sent[f"{P}/controls/pump"] == ({"value": True, "quality": "good", "changed_by": "alice",
                                           "changed_at": 5.0}, True)
    assert sent[f"{P}/last_operation"][0]["id"] == 4
    assert sent[f"{P}/floor"][0]["holder"] == "alice"
    assert sent[f"{P}/events/control"][0]["event_id"] == 1 and sent[f"{P}/events/control"][1] is False
    assert f"{P}/controls/temp" not in sent


def test_while_the_broker_is_away_events_wait_and_the_oldest_are_dropped(tmp_path: Path) -> None:
    """queue = 4: 6 events while disconnected keep the newest 4 (2 counted); after reconnect they go in order."""
    rig = Rig(tmp_path, queue=4)
    conn = rig.connect()
    rig.ack_all(conn, rig.published(conn))
    rig.endpoint.refuse = True
    conn.drop()
    rig.turn()
    assert not rig.bridge.stats.connected
    for n in range(6):
        rig.hub.publish("chat", {"user": "alice", "text": str(n)})
    assert (rig.bridge.stats.dropped, rig.bridge.stats.queued) == (2, 4)
    rig.clock.advance(1.0)  # one refused attempt
    rig.endpoint.refuse = False
    rig.clock.advance(2.0)
    rig.turn()
    conn = rig.endpoint.last
    conn.read()
    conn.send(CONNACK)
    rig.turn()
    texts: list[str] = []
    sent = rig.published(conn)
    assert sent[0][0] == f"{P}/status"  # state first, then the queue
    while sent:
        texts += [json.loads(p)["text"] for t, p, *_ in sent if t.endswith("/events/chat")]
        rig.ack_all(conn, sent)
        sent = rig.published(conn)
    assert texts == ["2", "3", "4", "5"]
    assert rig.bridge.stats.reconnects == 1


def test_commands_run_as_the_configured_user_and_results_are_published(tmp_path: Path) -> None:
    """set -> operator(user, name, value, "mqtt") -> result; refusals and bad payloads answered too."""
    rig = Rig(tmp_path, commands=True, user="bot")
    conn = rig.connect()
    rig.published(conn)
    assert [subscribed(p) for p in conn.packets if p.kind == 8] == [[f"{P}/status"], [f"{P}/controls/+/set"]]
    conn.send(publish(f"{P}/controls/pump/set", b'{"value": true}'))
    rig.turn()
    assert rig.operator.calls == [("bot", "pump", True, "mqtt")]
    [(topic, payload, qos, retain, _)] = [s for s in rig.published(conn) if s[0].endswith("/result")]
    assert (topic, qos, retain) == (f"{P}/controls/pump/result", 1, False)
    assert json.loads(payload)["status"] == 200
    rig.operator.next_status, rig.operator.next_error = 403, "bot may not operate pump"
    conn.send(publish(f"{P}/controls/pump/set", b"false"))
    conn.send(publish(f"{P}/controls/pump/set", b"[1]"))
    conn.send(publish(f"{P}/controls/Bad Name/set", b"1"))
    conn.send(publish(f"{P}/controls/pump/set", b"true", retain=True))
    rig.turn()
    results = [(t.rsplit("/", 2)[1], json.loads(p)) for t, p, *_ in rig.drain(conn) if t.endswith("/result")]
    assert [(name, r["status"]) for name, r in results] == [("pump", 403), ("pump", 400), ("Bad Name", 404),
                                                            ("pump", 400)]
    assert len(rig.operator.calls) == 2


def test_commands_off_means_no_subscription_and_nothing_runs(tmp_path: Path) -> None:
    """Without commands = yes no command is subscribed (only the own status), and a stray set message does nothing."""
    rig = Rig(tmp_path)
    conn = rig.connect()
    rig.published(conn)
    assert [subscribed(p) for p in conn.packets if p.kind == 8] == [[f"{P}/status"]]
    conn.send(publish(f"{P}/controls/pump/set", b"true"))
    rig.turn()
    assert rig.operator.calls == []


def test_discovery_is_published_at_connect(tmp_path: Path) -> None:
    """With discovery = homeassistant every control's config is retained under that prefix."""
    rig = Rig(tmp_path, discovery="homeassistant")
    conn = rig.connect()
    configs = {t for t, p, _, retain, _ in rig.published(conn) if t.startswith("homeassistant/") and p}
    assert "homeassistant/binary_sensor/press-7/pump/config" in configs
    assert "homeassistant/sensor/press-7/temp/config" in configs


def test_stop_publishes_offline_and_waits_for_its_puback(tmp_path: Path) -> None:
    """Clean stop: offline (reason stopped) goes out, DISCONNECT only after its PUBACK."""
    rig = Rig(tmp_path)
    conn = rig.connect()
    rig.ack_all(conn, rig.published(conn))
    stopped = rig.bridge.stopService()
    rig.turn()
    [(topic, payload, qos, retain, mid)] = rig.published(conn)
    assert (topic, qos, retain) == (f"{P}/status", 1, True)
    assert json.loads(payload)["reason"] == "stopped"
    assert not [p for p in conn.read() if p.kind == 14] and not stopped.called
    assert mid is not None
    conn.send(puback(mid))
    rig.turn()
    assert [p.kind for p in conn.read()] == [14]
    assert stopped.called


def test_stop_does_not_wait_forever_for_a_silent_broker(tmp_path: Path) -> None:
    """No PUBACK for the offline status: the stop goes on after stop_timeout (3 s)."""
    rig = Rig(tmp_path)
    conn = rig.connect()
    rig.ack_all(conn, rig.published(conn))
    stopped = rig.bridge.stopService()
    rig.turn()
    rig.clock.advance(2.9)
    assert not stopped.called
    rig.clock.advance(0.1)
    rig.turn()
    rig.clock.advance(2.0)  # the link's own grace to end the connection
    assert stopped.called


def test_state_readers_that_fail_do_not_stop_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken state snapshot is logged; the event itself still goes out."""
    rig = Rig(tmp_path)
    conn = rig.connect()
    rig.ack_all(conn, rig.published(conn))

    def broken() -> object:
        raise RuntimeError("no presence")

    monkeypatch.setattr(rig.state, "presence_snapshot", broken)
    rig.hub.publish("presence", {"user": "alice", "state": "online", "reason": "login", "at": 1.0})
    rig.turn()
    assert [t for t, *_ in rig.published(conn)] == [f"{P}/events/presence"]


def test_events_in_flight_when_the_connection_drops_are_sent_again_first(tmp_path: Path) -> None:
    """Unacknowledged events are re-sent (DUP) on the new connection before anything newer, in order."""
    rig = Rig(tmp_path)
    conn = rig.connect()
    rig.ack_all(conn, rig.published(conn))
    for n in range(5):
        rig.hub.publish("chat", {"user": "alice", "text": str(n)})
    rig.turn()
    in_flight = [json.loads(p)["text"] for t, p, *_ in rig.published(conn) if t.endswith("/events/chat")]
    assert in_flight == ["0", "1", "2"]  # the window; none acknowledged
    conn.drop()
    rig.turn()
    rig.hub.publish("chat", {"user": "alice", "text": "5"})
    rig.clock.advance(1.0)
    rig.turn()
    conn = rig.endpoint.last
    conn.read()
    conn.send(CONNACK)
    rig.turn()
    first = conn.read()
    resent = [p for p in first if p.kind == 3 and p.publish[0].endswith("/events/chat")]
    assert [json.loads(p.publish[1])["text"] for p in resent[:3]] == ["0", "1", "2"]
    assert all(p.flags & 0x08 for p in resent[:3])  # DUP
    assert first[0].kind == 3 and first[0].publish[0].endswith("/events/chat")  # before the new status
    conn.packets += first
    texts = [json.loads(p.publish[1])["text"] for p in resent]
    rig.ack_all(conn, [p.publish for p in first if p.kind == 3])
    for t, p, *_ in rig.drain(conn):
        if t.endswith("/events/chat"):
            texts.append(json.loads(p)["text"])
    assert texts == ["0", "1", "2", "3", "4", "5"]
    assert rig.bridge.stats.queued == 0


def test_nothing_is_published_before_the_device_is_ready(tmp_path: Path) -> None:
    """
    With C{ready} (the daemon's controls read for the first time) the bridge does not connect before it
    fires: a snapshot taken earlier would be an empty registry -- no discovery configs, no retained state
    of controls that never send an event (actions) -- and nothing would ever correct it.  Events before it
    wait in the queue and go out, in order, after the whole snapshot.
    """
    ready: Deferred[None] = Deferred()
    rig = Rig(tmp_path, ready=ready, discovery="homeassistant")
    controls, rig.state.controls = rig.state.controls, []  # the registry before the store answered
    rig.bridge.startService()
    rig.turn()
    rig.hub.publish("value", {"control": "temp", "value": 21.5, "quality": "good", "at": 1.0})
    rig.turn()
    assert rig.endpoint.attempts == 0 and rig.bridge.stats.queued == 1

    rig.state.controls = controls
    ready.callback(None)
    conn = rig.connect()
    sent = [t for t, p, *_ in rig.drain(conn) if p]
    assert "homeassistant/binary_sensor/press-7/pump/config" in sent and f"{P}/controls/reset" in sent
    assert sent.index(f"{P}/events/value") > sent.index(f"{P}/controls/temp")


def test_a_stop_before_the_device_is_ready_never_connects(tmp_path: Path) -> None:
    """Stopped while waiting for C{ready}: the stop ends at once and a late C{ready} starts nothing."""
    ready: Deferred[None] = Deferred()
    rig = Rig(tmp_path, ready=ready)
    rig.bridge.startService()
    stopped = rig.bridge.stopService()
    assert stopped.called
    ready.callback(None)
    rig.turn()
    assert rig.endpoint.attempts == 0



def statuses(rig: Rig, conn: Connection) -> list[tuple[bytes, int, bool]]:
    """payload, qos, retain of the status messages published (and acknowledged) since the last look."""
    return [(payload, qos, retain) for topic, payload, qos, retain, _ in rig.drain(conn) if topic == f"{P}/status"]


def test_a_late_will_of_an_older_session_is_answered_with_online_again(tmp_path: Path) -> None:
    """
    The bridge subscribes to its own status topic, after its online.  An offline of an older session
    arriving there -- the will of an old connection the broker noticed dead only after this one said
    online -- would leave the retained status offline while the device is up: the bridge publishes the
    same online again, retained, QoS 1.  Delivered live or as the retained message at subscription, alike.
    """
    rig = Rig(tmp_path)
    conn = rig.connect()
    session = rig.bridge.stats.session
    [online] = statuses(rig, conn)
    assert json.loads(online[0])["state"] == "online" and online[1:] == (1, True)
    assert [subscribed(p) for p in conn.packets if p.kind == 8] == [[f"{P}/status"]]

    conn.send(publish(f"{P}/status", status(session - 1)))
    rig.turn()
    assert statuses(rig, conn) == [online]
    conn.send(publish(f"{P}/status", status(session - 5), retain=True))
    rig.turn()
    assert statuses(rig, conn) == [online]


def test_other_messages_on_the_own_status_topic_are_left_alone(tmp_path: Path) -> None:
    """
    Its own online coming back, an offline of this session or of a newer one (another process on the same
    topic: not ours to fight), an offline without a session, an emptied topic, bytes that are not JSON (or
    nested too deeply to parse):
    nothing is published -- no answer can loop.
    """
    rig = Rig(tmp_path)
    conn = rig.connect()
    session = rig.bridge.stats.session
    statuses(rig, conn)
    for payload in (status(session, "online", at=1000.0), status(session), status(session + 1),
                    b'{"state":"offline"}', b'{"state":"offline","session":true}', b"offline", b"", b"[1]",
                    b"[" * 100000):
        conn.send(publish(f"{P}/status", payload))
    rig.turn()
    assert rig.drain(conn) == []


def test_a_late_will_while_stopping_is_not_answered(tmp_path: Path) -> None:
    """Once the bridge is stopping it says offline itself: a late will then is true, and stays."""
    rig = Rig(tmp_path)
    conn = rig.connect()
    session = rig.bridge.stats.session
    statuses(rig, conn)
    rig.bridge.stopService()
    rig.turn()
    [offline] = [json.loads(payload) for payload, *_ in statuses(rig, conn)]
    assert offline["state"] == "offline" and offline["reason"] == "stopped"
    conn.send(publish(f"{P}/status", status(session - 1)))
    rig.turn()
    assert statuses(rig, conn) == []
