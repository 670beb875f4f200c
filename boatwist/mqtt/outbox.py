"""
The bounded queue of events waiting for the broker, the counters ``/metrics``
shows, and the reconnection backoff.  Pure; time and chance are injected.

Why a queue of our own in front of paho's: paho keeps every QoS 1 message
it is handed until the broker acknowledges it, without bound, and when its
own limit is set it refuses the *newest*.  A device must not run out of
memory because the broker is down for a week, and an operator reading the
history wants the most recent events: so the bridge hands paho at most a
window of unacknowledged messages and keeps the rest here, dropping the
oldest (and counting them) when the bound is reached.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Callable

__all__ = ["Backoff", "BridgeStats", "Message", "Outbox"]


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass
class BridgeStats:
    """The bridge's counters, for ``/metrics`` (read at scrape time)."""

    #: Connected to the broker now (CONNACK received, not lost since).
    connected: bool = False
    #: Connections established after the first one.
    reconnects: int = 0
    #: Messages the broker acknowledged (QoS 1) or that were written (QoS 0).
    published: int = 0
    #: Events dropped, oldest first, because the queue was full while the broker was away.
    dropped: int = 0
    #: Events waiting for the broker now.
    queued: int = 0
    #: The session number of the current (or last) connection.
    session: int = 0


class Outbox:
    """A FIFO of at most C{limit} messages; beyond it the oldest is dropped and counted."""

    def __init__(self, limit: int, stats: BridgeStats) -> None:
        self._limit = limit
        self._stats = stats
        self._messages: deque[Message] = deque()

    def put(self, message: Message) -> None:
        self._messages.append(message)
        while len(self._messages) > self._limit:
            self._messages.popleft()
            self._stats.dropped += 1
        self._stats.queued = len(self._messages)

    def put_back(self, message: Message) -> None:
        """Return a message L{take} gave, to the front (it is the oldest: dropped first if full)."""
        self._messages.appendleft(message)
        while len(self._messages) > self._limit:
            self._messages.popleft()
            self._stats.dropped += 1
        self._stats.queued = len(self._messages)

    def take(self) -> Message | None:
        """The oldest message, removed; C{None} when empty."""
        if not self._messages:
            return None
        message = self._messages.popleft()
        self._stats.queued = len(self._messages)
        return message

    def __len__(self) -> int:
        return len(self._messages)


class Backoff:
    """
    Exponential delays with jitter, bounded: C{initial * 2**n} up to C{maximum},
    each multiplied by a random factor in [0.5, 1) so fifty devices that lost
    the same broker do not all come back in the same millisecond.
    """

    def __init__(self, initial: float = 0.5, maximum: float = 30.0,
                 chance: Callable[[], float] = random.random) -> None:
        self.initial = initial
        self.maximum = maximum
        self._chance = chance
        self._attempts = 0

    def next(self) -> float:
        base = min(self.maximum, self.initial * (2 ** min(self._attempts, 32)))
        self._attempts += 1
        return base * (0.5 + self._chance() / 2)

    def reset(self) -> None:
        self._attempts = 0
