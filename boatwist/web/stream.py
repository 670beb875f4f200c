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

from typing import Iterator

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from boatwist.config import EventSettings
from boatwist.events import Event, EventHub
from boatwist.net.backlog import Backlog
from boatwist.net.tracking import ConnectionTracker, TrackedConnection
from boatwist.presence import Kind, Presence
from boatwist.reasons import Reason
from boatwist.web.errors import refusal_page

#: Kinds of event sent to browsers: all of them.
STREAMED = ("presence", "chat", "control", "value", "floor")


def format_event(event: Event) -> bytes:
    """One SSE event; the JSON data never contains a raw CR or LF."""
    return f"id: {event.id}\nevent: {event.kind}\ndata: {event.json()}\n\n".encode("utf-8")


@implementer(IPushProducer)
class EventStream:
    """One open event stream: a subscriber to the hub, a producer for the transport."""

    _log = Logger()

    def __init__(self, request: Request, conn: TrackedConnection, max_queued: int) -> None:
        self.request = request
        self.conn = conn
        self.paused = False
        self.closed = False
        self._queue = Backlog(max_queued)

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.paused:
            self.request.write(data)
            return
        if not self._queue.push(data):
            self._log.warn("event stream of {user} to {peer} dropped: more than {n} bytes unread",
                           user=self.conn.user, peer=self.conn.peer_host, n=self._queue.limit)
            self.closed = True
            self.conn.close(Reason.SLOW_READER)

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
            self.request.write(self._queue.pop())

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

    def __iter__(self) -> Iterator[EventStream]:
        return iter(list(self._streams))

    def __len__(self) -> int:
        return len(self._streams)


class EventsResource(Resource):
    """``GET /api/events`` for one authenticated user."""

    isLeaf = True

    def __init__(self, user: str, hub: EventHub, presence: Presence, tracker: ConnectionTracker,
                 streams: StreamRegistry, settings: EventSettings) -> None:
        super().__init__()
        self.user = user
        self.hub = hub
        self.presence = presence
        self.tracker = tracker
        self.streams = streams
        self.settings = settings

    def render_GET(self, request: Request) -> bytes | int:
        conn = self.tracker.connection_for(request.channel)
        refusal = self.presence.admit(conn, self.user, Kind.WEB)
        if refusal is not None:
            return refusal_page(request, refusal)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        stream = EventStream(request, conn, self.settings.max_queued)
        request.registerProducer(stream, True)
        stream.send(b"retry: 2000\n\n")
        self._replay(request, stream)
        unsubscribe = self.hub.subscribe(stream.event)
        self.streams.add(stream)
        conn.on_peer_eof = lambda: stream.comment("eof-probe")

        def finished(_: object) -> None:
            stream.closed = True
            unsubscribe()
            self.streams.discard(stream)

        request.notifyFinish().addBoth(finished)
        return NOT_DONE_YET

    def _replay(self, request: Request, stream: EventStream) -> None:
        header = request.getHeader(b"last-event-id")
        if not header:
            return
        try:
            last = int(header)
        except ValueError:
            return
        missed = self.hub.since(last)
        if missed is None:
            # Too much was missed: tell the page to reload its state from /api/presence.
            stream.comment("missed-events")
            return
        for event in missed:
            stream.event(event)
