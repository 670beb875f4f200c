"""
paho driven by the reactor over a Twisted connection, in memory with a Clock:
CONNECT with the will, PUBLISH and PUBACK, retries with backoff, the
keepalive deadline, a clean DISCONNECT -- and nothing waits on a socket.
"""

from __future__ import annotations

import paho.mqtt.client as paho_client
import pytest
from mqtt_memory import CONNACK, CONNACK_REFUSED, PINGRESP, MemoryEndpoint, puback
from twisted.internet.task import Clock

from boatwist.mqtt.client import BrokerLink, _ReactorClient
from boatwist.mqtt.outbox import Backoff, Message


class Handler:
    def __init__(self) -> None:
        self.log: list[object] = []
        self.session = 0

    def will(self) -> Message:
        self.session += 1
        return Message("dev/status", b'{"state":"offline","session":%d}' % self.session, 1, True)

    def connected(self) -> None:
        self.log.append("connected")

    def disconnected(self) -> None:
        self.log.append("disconnected")

    def acknowledged(self, mid: int) -> None:
        self.log.append(("ack", mid))

    def received(self, topic: str, payload: bytes, retained: bool) -> None:
        self.log.append(("message", topic, payload, retained))


def make(keepalive: int = 30) -> tuple[BrokerLink, MemoryEndpoint, Handler, Clock]:
    clock = Clock()
    endpoint = MemoryEndpoint()
    handler = Handler()
    link = BrokerLink(clock, endpoint, handler, "dev-1", keepalive,
                      backoff=Backoff(initial=1.0, maximum=8.0, chance=lambda: 0.999))
    return link, endpoint, handler, clock


def connect(link: BrokerLink, endpoint: MemoryEndpoint, clock: Clock) -> None:
    link.start()
    clock.advance(0)
    endpoint.last.read()
    endpoint.last.send(CONNACK)
    clock.advance(0)


def test_the_private_hook_paho_needs_still_exists() -> None:
    """Client._create_socket is the one private method overridden; a paho without it must fail here."""
    assert hasattr(paho_client.Client, "_create_socket")
    assert _ReactorClient._create_socket is not paho_client.Client._create_socket


def test_connect_carries_the_will_and_the_client_id() -> None:
    """CONNECT (3.1.1, clean session) names the client and holds the retained will of this session."""
    link, endpoint, handler, clock = make()
    link.start()
    clock.advance(0)
    [connect_packet] = endpoint.last.read()
    assert connect_packet.kind == 1
    body = connect_packet.body
    assert body[:6] == b"\x00\x04MQTT" and body[6] == 4  # MQTT 3.1.1
    flags = body[7]
    assert flags & 0x02 and flags & 0x04 and flags & 0x20 and (flags >> 3) & 3 == 1  # clean, will, retain, QoS 1
    assert b"dev-1" in body and b'{"state":"offline","session":1}' in body
    assert not link.connected
    endpoint.last.send(CONNACK)
    assert handler.log == []  # told on the next reactor turn, never from inside paho
    clock.advance(0)
    assert handler.log == ["connected"] and link.connected


def test_publish_and_acknowledge() -> None:
    """A QoS 1 message goes out on the next turn; its PUBACK reaches the handler with its mid."""
    link, endpoint, handler, clock = make()
    connect(link, endpoint, clock)
    mid = link.publish(Message("dev/events/chat", b'{"x":1}', 1, False))
    assert mid is not None
    clock.advance(0)
    [packet] = endpoint.last.read()
    assert packet.publish == ("dev/events/chat", b'{"x":1}', 1, False, mid)
    endpoint.last.send(puback(mid))
    clock.advance(0)
    assert handler.log[-1] == ("ack", mid)


def test_publish_while_disconnected_is_refused() -> None:
    """Nothing is handed to paho while not connected: the bridge keeps it in its own bounded queue."""
    link, endpoint, handler, clock = make()
    assert link.publish(Message("t", b"x")) is None


def test_unreachable_broker_is_retried_with_backoff() -> None:
    """Each failed attempt waits longer (bounded); a new session's will is set for each attempt."""
    link, endpoint, handler, clock = make()
    endpoint.refuse = True
    link.start()
    assert endpoint.attempts == 1
    clock.advance(0.99)
    assert endpoint.attempts == 1
    clock.advance(0.01)
    assert endpoint.attempts == 2  # ~1 s (jitter factor just under 1)
    clock.advance(1.99)
    assert endpoint.attempts == 2
    clock.advance(0.01)
    assert endpoint.attempts == 3  # ~2 s
    for _ in range(10):
        clock.advance(8.0)
    assert 8 <= endpoint.attempts <= 13  # capped at 8 s
    endpoint.refuse = False
    clock.advance(8.0)
    endpoint.last.read()
    endpoint.last.send(CONNACK)
    clock.advance(0)
    assert link.connected and handler.session == endpoint.attempts


def test_a_lost_connection_is_reported_and_retried() -> None:
    """The broker going away: disconnected on the next turn, then a new attempt after the backoff."""
    link, endpoint, handler, clock = make()
    connect(link, endpoint, clock)
    endpoint.last.drop()
    clock.advance(0)
    assert handler.log[-1] == "disconnected" and not link.connected
    clock.advance(1.0)
    assert len(endpoint.connections) == 2


def test_a_refused_connect_is_retried() -> None:
    """CONNACK "not authorised": the connection is closed and tried again later, never connected."""
    link, endpoint, handler, clock = make()
    link.start()
    clock.advance(0)
    endpoint.last.read()
    endpoint.last.send(CONNACK_REFUSED)
    clock.advance(0)
    assert not link.connected and "connected" not in handler.log
    assert endpoint.last.transport.disconnecting or not endpoint.last.transport.connected
    clock.advance(1.0)
    assert len(endpoint.connections) == 2


def test_a_silent_broker_is_given_up_after_the_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PINGRESP within the keepalive: paho gives up, the transport is aborted, a retry follows."""
    link, endpoint, handler, clock = make(keepalive=2)
    monkeypatch.setattr(paho_client, "time_func", clock.seconds)
    connect(link, endpoint, clock)
    conn = endpoint.last
    pings = 0
    for _ in range(10):
        clock.advance(1.0)
        for packet in conn.read():
            if packet.kind == 12:  # PINGREQ
                pings += 1
                conn.send(PINGRESP)
    assert pings >= 3 and link.connected  # answered pings keep it up
    for _ in range(6):
        clock.advance(1.0)
    assert not link.connected and handler.log[-1] == "disconnected"
    assert len(endpoint.connections) >= 2


def test_stop_sends_disconnect_and_ends_the_connection() -> None:
    """A clean stop: DISCONNECT written (the broker drops the will), the connection closed, no retry."""
    link, endpoint, handler, clock = make()
    connect(link, endpoint, clock)
    stopped = link.stop()
    clock.advance(0)
    assert [p.kind for p in endpoint.last.read()] == [14]
    assert stopped.called
    clock.advance(60)
    assert len(endpoint.connections) == 1


def test_stop_while_the_broker_is_unreachable_is_immediate() -> None:
    """Stopping during a backoff cancels the retry; nothing to wait for."""
    link, endpoint, handler, clock = make()
    endpoint.refuse = True
    link.start()
    d = link.stop()
    assert d.called
    clock.advance(100)
    assert endpoint.attempts == 1
