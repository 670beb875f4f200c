"""
boatwist.web.stream: Server-Sent Events.

The wire format and L{EventStream}'s flow control are tested with a fake
request; L{EventsResource} with real ones: a C{twisted.web} L{Site} behind the
real L{ConnectionTracker}, on a L{StringTransport}, fed raw HTTP, so that
binding, headers, replay and the end of the stream are what a browser gets.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import NoResource, Resource
from twisted.web.server import Site

from boatwist.config import EventSettings, Settings
from boatwist.core import Core
from boatwist.events import Event
from boatwist.presence import Kind
from boatwist.web.stream import STREAMED, EventsResource, EventStream, format_event
from core_rig import Rig

PEER = IPv4Address("TCP", "10.0.0.7", 51000)


# ------------------------------------------------------------- wire format


def test_format_event_has_id_event_and_one_data_line() -> None:
    """An event is 'id:', 'event:', one 'data:' line of JSON, and a blank line."""
    raw = format_event(Event(42, "presence", {"user": "bob", "state": "offline", "reason": "keepalive-timeout"}))
    assert raw == (b'id: 42\nevent: presence\n'
                   b'data: {"user":"bob","state":"offline","reason":"keepalive-timeout"}\n\n')


@pytest.mark.parametrize("text", [
    "a\r\nevent: forged\r\n\r\ndata: {}",
    "line1\nline2\rline3",
    "\r\n\r\n",
    "caf\u00e9 \u2028 \u2029 \x85 \x00",
])
def test_format_event_never_lets_text_break_the_frame(text: str) -> None:
    """
    Whatever an operator types (CR, LF, CRLF, a forged 'event:' line), the
    event is exactly one data line: no raw CR or LF inside it, and the JSON
    gives back the text unchanged.
    """
    raw = format_event(Event(7, "chat", {"user": "eve", "text": text}))
    assert raw.endswith(b"\n\n")
    body = raw[:-2]
    assert b"\r" not in body
    lines = body.split(b"\n")
    assert [line.split(b":", 1)[0] for line in lines] == [b"id", b"event", b"data"]
    data = json.loads(lines[2][len(b"data: "):].decode("utf-8"))
    assert data["text"] == text


# ------------------------------------------------------- EventStream alone


class FakeRequest:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.on_write: Any = None
        self.channel = FakeChannel()

    def write(self, data: bytes) -> None:
        self.written.append(data)
        if self.on_write is not None:
            self.on_write()


class FakeChannel:
    def __init__(self) -> None:
        self.transport = StringTransport()


class FakeConn:
    def __init__(self) -> None:
        self.closed: list[str] = []
        self.user = "alice"
        self.peer_host = "10.0.0.7"

    def close(self, reason: str, note: str | None = None) -> None:
        self.closed.append(reason)


def test_send_writes_at_once_when_not_paused() -> None:
    """An unpaused stream writes each piece straight to the request."""
    request = FakeRequest()
    stream = EventStream(request, FakeConn(), max_queued=1000)
    stream.send(b"a")
    stream.send(b"b")
    assert request.written == [b"a", b"b"]


def test_pause_queues_and_resume_flushes_in_order() -> None:
    """While paused, data queues; resume writes it in order, then writing is direct again."""
    request = FakeRequest()
    stream = EventStream(request, FakeConn(), max_queued=1000)
    stream.pauseProducing()
    for piece in (b"1", b"2", b"3"):
        stream.send(piece)
    assert request.written == []
    stream.resumeProducing()
    assert request.written == [b"1", b"2", b"3"]
    stream.send(b"4")
    assert request.written == [b"1", b"2", b"3", b"4"]


def test_resume_stops_when_paused_again_and_keeps_the_order() -> None:
    """If a write during the flush pauses the stream again, the rest waits, still in order."""
    request = FakeRequest()
    stream = EventStream(request, FakeConn(), max_queued=1000)
    stream.pauseProducing()
    for piece in (b"1", b"2", b"3"):
        stream.send(piece)
    request.on_write = stream.pauseProducing  # the transport fills up on every write
    stream.resumeProducing()
    assert request.written == [b"1"]
    stream.send(b"4")
    request.on_write = None
    stream.resumeProducing()
    assert request.written == [b"1", b"2", b"3", b"4"]


def test_slow_reader_is_dropped_and_its_queue_freed() -> None:
    """
    Past max_queued unread bytes the connection is closed with 'slow-reader',
    the queue is emptied, and nothing more is written or queued.
    """
    request = FakeRequest()
    conn = FakeConn()
    stream = EventStream(request, conn, max_queued=10)
    stream.pauseProducing()
    stream.send(b"12345")
    stream.send(b"67890")
    assert conn.closed == []  # exactly at the limit is still fine
    stream.send(b"x")
    assert conn.closed == ["slow-reader"]
    assert stream.closed
    assert len(stream._queue) == 0
    stream.send(b"more")
    stream.resumeProducing()
    assert request.written == []
    assert len(stream._queue) == 0


def test_comment_is_a_comment_line() -> None:
    """comment() writes an SSE comment, which EventSource ignores but TCP must acknowledge."""
    request = FakeRequest()
    stream = EventStream(request, FakeConn(), max_queued=1000)
    stream.comment("heartbeat")
    stream.comment()
    assert request.written == [b": heartbeat\n\n", b": \n\n"]


def test_only_streamed_kinds_are_sent() -> None:
    """Events of a kind not meant for browsers are not written."""
    request = FakeRequest()
    stream = EventStream(request, FakeConn(), max_queued=1000)
    stream.event(Event(1, "internal", {"secret": 1}))
    assert request.written == []
    for n, kind in enumerate(STREAMED, 2):
        stream.event(Event(n, kind, {}))
    assert len(request.written) == len(STREAMED)
    assert set(STREAMED) == {"presence", "chat", "control", "value", "floor"}


def test_stop_producing_ends_the_stream() -> None:
    """After stopProducing nothing is written and the queue is dropped."""
    request = FakeRequest()
    stream = EventStream(request, FakeConn(), max_queued=1000)
    stream.pauseProducing()
    stream.send(b"queued")
    stream.stopProducing()
    stream.resumeProducing()
    stream.send(b"later")
    assert request.written == []


# ------------------------------------------------- EventsResource, for real


class Root(Resource):
    """/api/events for the user named in the test's X-User header; nothing else."""

    def __init__(self, core: Core) -> None:
        super().__init__()
        self.core = core

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        if path == b"api" and request.postpath[:1] == [b"events"]:
            user = (request.getHeader(b"x-user") or b"alice").decode()
            core = self.core
            return EventsResource(user, core.hub, core.presence, core.tracker, core.streams, core.settings.events)
        return NoResource()


class World(Rig):
    def __init__(self, max_users: int = 10, buffer: int = 1000, max_queued: int = 262144) -> None:
        super().__init__(Settings(events=EventSettings(buffer=buffer, max_queued=max_queued)), max_users=max_users)
        self.hub = self.core.hub
        self.presence = self.core.presence
        self.tracker = self.core.tracker
        self.streams = self.core.streams
        self.factory: Any = self.tracker.wrap(Site(Root(self.core), reactor=self.clock), Kind.HTTP)

    def open(self, user: str = "alice", headers: bytes = b"") -> tuple[Any, StringTransport]:
        proto = self.factory.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        proto.dataReceived(b"GET /api/events HTTP/1.1\r\nHost: device\r\nX-User: " + user.encode()
                           + b"\r\n" + headers + b"\r\n")
        return proto, transport


def response(transport: StringTransport) -> tuple[int, dict[bytes, bytes], bytes]:
    """Status, headers (lower-case names) and the de-chunked body so far."""
    head, _, rest = transport.value().partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") != b"chunked":
        return status, headers, rest
    body = b""
    while rest:
        size_line, sep, after = rest.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if size == 0 or len(after) < size + 2:
            break
        body += after[:size]
        rest = after[size + 2:]
    return status, headers, body


def sse_ids(body: bytes) -> list[int]:
    return [int(line[4:]) for line in body.split(b"\n") if line.startswith(b"id: ")]


def test_events_resource_headers_and_binding() -> None:
    """
    GET /api/events answers 200 text/event-stream, no-store, a retry hint;
    the connection becomes the user's presence ('web').
    """
    w = World()
    _, transport = w.open()
    status, headers, body = response(transport)
    assert status == 200
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-store"
    assert body.startswith(b"retry: 2000\n\n")
    [conn] = w.tracker.connections()
    assert (conn.user, conn.kind) == ("alice", "web")
    assert w.presence.snapshot()["users"][0]["connections"][0]["kind"] == "web"
    assert w.presence_events() == [("alice", "online", "login")]
    assert w.events[-1].data["via"] == "web"
    assert len(w.streams) == 1


def test_live_events_are_streamed() -> None:
    """An event published after the stream opened is written to it as one SSE event."""
    w = World()
    _, transport = w.open()
    event = w.hub.publish("chat", {"user": "bob", "text": "hello\r\nworld", "at": 1.0})
    _, _, body = response(transport)
    assert format_event(event) in body


def test_refusal_is_a_503_json_and_nothing_is_subscribed() -> None:
    """A new user on a full server gets 503 JSON with Retry-After; no stream, not bound."""
    w = World(max_users=1)
    _, _, bob = w.connect(host="10.0.0.9")
    w.presence.admit(bob, "bob", Kind.HTTP)
    subscribers = w.hub.subscriber_count
    _, transport = w.open("alice")
    status, headers, body = response(transport)
    assert status == 503
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"retry-after"]) >= 1
    assert json.loads(body)["reason"] == "full"
    assert w.hub.subscriber_count == subscribers
    assert len(w.streams) == 0
    [conn] = [c for c in w.tracker.connections() if c is not bob]
    assert (conn.user, conn.kind) == (None, "http")  # left as it was: not an event stream
    assert not w.presence.is_online("alice")


def test_last_event_id_replays_what_was_missed() -> None:
    """A reconnect with Last-Event-ID gets every buffered event after it, oldest first, once."""
    w = World()
    for n in range(3):
        w.hub.publish("chat", {"user": "bob", "text": f"m{n}", "at": 1.0})  # ids 1, 2, 3
    _, transport = w.open(headers=b"Last-Event-ID: 1\r\n")
    _, _, body = response(transport)
    # 2, 3, and 4: alice's own login, published when the stream was bound.
    assert sse_ids(body) == [2, 3, 4]
    w.hub.publish("chat", {"user": "bob", "text": "live", "at": 1.0})
    _, _, body = response(transport)
    assert sse_ids(body) == [2, 3, 4, 5]


def test_too_old_last_event_id_asks_for_a_reload() -> None:
    """When the missed events have left the buffer, a ': missed-events' comment is sent instead."""
    w = World(buffer=2)
    for n in range(5):
        w.hub.publish("chat", {"user": "bob", "text": f"m{n}", "at": 1.0})
    _, transport = w.open(headers=b"Last-Event-ID: 1\r\n")
    _, _, body = response(transport)
    assert b": missed-events\n\n" in body
    assert sse_ids(body) == []


@pytest.mark.parametrize("value", [b"abc", b""])
def test_unusable_last_event_id_is_ignored(value: bytes) -> None:
    """A Last-Event-ID that is not a number replays nothing and the stream works."""
    w = World()
    w.hub.publish("chat", {"user": "bob", "text": "old", "at": 1.0})
    _, transport = w.open(headers=b"Last-Event-ID: " + value + b"\r\n")
    status, _, body = response(transport)
    assert status == 200
    assert sse_ids(body) == []


def test_stream_end_unsubscribes_and_frees_the_seat() -> None:
    """When the connection ends, the stream leaves the hub and the registry, and the user goes offline."""
    w = World()
    subscribers = w.hub.subscriber_count
    proto, transport = w.open()
    assert w.hub.subscriber_count == subscribers + 1
    proto.connectionLost(Failure(ConnectionDone()))
    assert w.hub.subscriber_count == subscribers
    assert len(w.streams) == 0
    assert w.presence_events()[-1] == ("alice", "offline", "closed")
    before = transport.value()
    w.hub.publish("chat", {"user": "bob", "text": "after", "at": 1.0})
    assert transport.value() == before


def test_paused_transport_queues_events_until_resumed() -> None:
    """When the transport pauses the channel, events wait in the stream and come out in order."""
    w = World()
    _, transport = w.open()
    transport.producer.pauseProducing()
    for n in range(3):
        w.hub.publish("chat", {"user": "bob", "text": f"q{n}", "at": 1.0})
    _, _, body = response(transport)
    assert sse_ids(body) == []
    transport.producer.resumeProducing()
    _, _, body = response(transport)
    assert sse_ids(body) == [2, 3, 4]


def test_slow_reader_is_dropped_and_told_as_slow_reader() -> None:
    """A stream that queues more than max_queued is aborted; the user goes offline with 'slow-reader'."""
    w = World(max_queued=300)
    proto, transport = w.open()
    transport.producer.pauseProducing()
    for n in range(10):
        w.hub.publish("chat", {"user": "bob", "text": "x" * 50, "at": 1.0})
    assert transport.disconnected
    proto.connectionLost(Failure(ConnectionLost()))
    assert w.presence_events()[-1] == ("alice", "offline", "slow-reader")


def test_peer_fin_sends_a_probe_on_the_stream() -> None:
    """The peer's FIN on an event stream makes it write a probe comment (to provoke the RST)."""
    w = World()
    proto, transport = w.open()
    proto.readConnectionLost()
    _, _, body = response(transport)
    assert body.endswith(b": eof-probe\n\n")
    assert not transport.disconnecting


def test_registered_stream_takes_heartbeat_comments() -> None:
    """The open stream is in app.streams, where the heartbeat's comment reaches the browser."""
    w = World()
    _, transport = w.open()
    [stream] = list(w.streams)
    stream.comment("heartbeat")
    _, _, body = response(transport)
    assert body.endswith(b": heartbeat\n\n")
