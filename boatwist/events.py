"""
Publish/subscribe of presence, chat and control events.

One L{EventHub} per process.  Every event gets an increasing integer id, so
an event stream that reconnects with ``Last-Event-ID`` can be given what it
missed from a bounded buffer, and so the chat port and the browser agree on
the order of things.  Subscribers are plain callables; one that raises is
logged and the others are still called: a broken subscriber must not silence
the room.

Delivery is in order, for every subscriber.  A subscriber may publish while
it handles an event (presence offline -> the floor released -> the safe
value set is exactly such a chain); that event gets its id at once but is
delivered only after the one being delivered has reached every subscriber.
Without this, subscribers after the publishing one would see event 2 before
event 1.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from twisted.logger import Logger

#: The kinds of event that exist; the SSE ``event:`` field.
KINDS = ("presence", "chat", "control", "value", "floor")


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    data: dict[str, Any]

    def json(self) -> str:
        """The data as one line of JSON (no raw CR or LF can survive json.dumps)."""
        return json.dumps(self.data, ensure_ascii=False, separators=(",", ":"))


Subscriber = Callable[[Event], None]


class EventHub:
    _log = Logger()

    def __init__(self, buffer: int = 1000, first_id: int = 1) -> None:
        self._next_id = max(1, first_id)
        self._buffer: deque[Event] = deque(maxlen=buffer)
        self._subscribers: list[Subscriber] = []
        #: Events published while another was being delivered, oldest first.
        self._pending: deque[Event] = deque()
        self._delivering = False

    def publish(self, kind: str, data: dict[str, Any]) -> Event:
        """
        Give C{data} the next id, remember it, and hand it to every subscriber
        -- at once, or, when called from a subscriber, right after the event
        being delivered has reached them all.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        event = Event(self._next_id, kind, dict(data))
        self._next_id += 1
        self._buffer.append(event)
        self._pending.append(event)
        if not self._delivering:
            self._deliver()
        return event

    def _deliver(self) -> None:
        self._delivering = True
        try:
            while self._pending:
                event = self._pending.popleft()
                for subscriber in list(self._subscribers):
                    try:
                        subscriber(event)
                    except Exception:
                        self._log.failure("event subscriber {subscriber!r} failed", subscriber=subscriber)
        finally:
            self._delivering = False

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call C{subscriber} with every later event; returns the unsubscribe function."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def since(self, last_id: int) -> Iterable[Event] | None:
        """
        The buffered events after C{last_id}, oldest first; C{None} when some
        of them have already left the buffer (the client missed too much and
        should reload its state).
        """
        if last_id > self._next_id - 1:
            return None  # an id from before a restart: the client should reload its state
        if last_id == self._next_id - 1:
            return []
        if not self._buffer or self._buffer[0].id > last_id + 1:
            return None
        return [event for event in self._buffer if event.id > last_id]

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
