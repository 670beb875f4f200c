"""
``/api/events``: presence, chat and control events as Server-Sent Events.

Wire format (text/event-stream, one event)::

    id: 42
    event: presence
    data: {"user":"bob","state":"offline","reason":"keepalive-timeout",...}
    <blank line>

``data`` is one line of JSON: ``json.dumps`` escapes CR and LF, so no text
an operator types can end an event early or forge another one.

An event stream is a persistent connection: it is the user's presence in the
browser (see L{boatwist.presence}).  Flow control follows the producer
protocol: when the kernel's send buffer and Twisted's are full the transport
pauses us and events queue here; past ``max_queued`` bytes the reader is too
slow to keep, and the connection is dropped with reason ``slow-reader`` --
memory stays bounded whatever a client does.  The heartbeat sends a comment
line every ``stream_interval`` seconds, so that NATs keep the flow and a
browser whose cable was pulled leaves unacknowledged data behind, which is
what ``TCP_USER_TIMEOUT`` needs to fire.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from boatwist.events import Event, EventHub

#: Kinds of event sent to browsers.
STREAMED = ("presence", "chat", "control")


def format_event(event: Event) -> bytes:
    """One SSE event; the JSON data never contains a raw CR or LF."""
    return f"id: {event.id}\nevent: {event.kind}\ndata: {event.json()}\n\n".encode("utf-8")


@implementer(IPushProducer)
class EventStream:
    """One open event stream: a subscriber to the hub, a producer for the transport."""

    _log = Logger()

    def __init__(self, request: Any, conn: Any, max_queued: int) -> None:
        self.request = request
        self.conn = conn
        self.max_queued = max_queued
        self.paused = False
        self.closed = False
        self._queue: deque[bytes] = deque()
        self._queued = 0

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.paused:
            self.request.write(data)
            return
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > self.max_queued:
            self._log.warn("event stream of {user} to {peer} dropped: {n} bytes unread",
                           user=getattr(self.conn, "user", None), peer=getattr(self.conn, "peer_host", None),
                           n=self._queued)
            self.closed = True
            self._queue.clear()
            if self.conn is not None:
                self.conn.close("slow-reader")
            else:
                self.request.channel.transport.abortConnection()

    def event(self, event: Event) -> None:
        if event.kind in STREAMED:
            self.send(format_event(event))

    def comment(self, text: str = "") -> None:
        """A comment line: ignored by EventSource, but it is traffic that must be acknowledged."""
        self.send(b": " + text.encode("ascii", "replace") + b"\n\n")

    # IPushProducer
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while self._queue and not self.paused and not self.closed:
            data = self._queue.popleft()
            self._queued -= len(data)
            self.request.write(data)

    def stopProducing(self) -> None:
        self.closed = True
        self._queue.clear()


class StreamRegistry:
    """The open event streams, for the heartbeat's comment lines and for metrics."""

    def __init__(self) -> None:
        self._streams: set[EventStream] = set()

    def add(self, stream: EventStream) -> None:
        self._streams.add(stream)

    def discard(self, stream: EventStream) -> None:
        self._streams.discard(stream)

    def __iter__(self) -> Any:
        return iter(list(self._streams))

    def __len__(self) -> int:
        return len(self._streams)


class EventsResource(Resource):
    """``GET /api/events`` for one authenticated user."""

    isLeaf = True

    def __init__(self, app: Any, user: str) -> None:
        super().__init__()
        self.app = app
        self.user = user

    def render_GET(self, request: Any) -> Any:
        app = self.app
        conn = app.tracker.connection_for(request.channel) if app.tracker is not None else None
        if conn is not None:
            refusal = app.tracker.bind(conn, self.user, "web")
            if refusal is not None:
                return app.refuse(request, refusal)
        else:
            peer = getattr(request.getClientAddress(), "host", None) or "unknown"
            refusal = app.presence.touch_http(self.user, peer)
            if refusal is not None:
                return app.refuse(request, refusal)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        stream = EventStream(request, conn, app.settings.events.max_queued)
        request.registerProducer(stream, True)
        stream.send(b"retry: 2000\n\n")
        self._replay(request, stream, app.hub)
        unsubscribe = app.hub.subscribe(stream.event)
        app.streams.add(stream)
        if conn is not None:
            conn.on_peer_eof = lambda: stream.comment("eof-probe")

        def finished(_: Any) -> None:
            stream.closed = True
            unsubscribe()
            app.streams.discard(stream)

        request.notifyFinish().addBoth(finished)
        return NOT_DONE_YET

    def _replay(self, request: Any, stream: EventStream, hub: EventHub) -> None:
        header = request.getHeader(b"last-event-id")
        if not header:
            return
        try:
            last = int(header)
        except ValueError:
            return
        missed = hub.since(last)
        if missed is None:
            # Too much was missed: tell the page to reload its state from /api/presence.
            stream.comment("missed-events")
            return
        for event in missed:
            stream.event(event)
