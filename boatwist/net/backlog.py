"""
Bytes held back from a peer, bounded: past the bound the peer is a slow reader.

Two places hold writes back: an event stream paused by its transport (the
kernel's and Twisted's buffers are full), and a connection whose idle link
keepalive is probing (a write would stop the probes; see
L{boatwist.net.tracking.TrackedConnection.hold}).  Both keep what they hold
here, and both give up on the peer the same way once C{limit} bytes wait:
memory stays bounded whatever a client does, and the connection ends with
reason C{slow-reader}.
"""

from __future__ import annotations

from collections import deque

__all__ = ["Backlog"]


class Backlog:
    def __init__(self, limit: int) -> None:
        #: Bytes that may wait before the peer counts as a slow reader.
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self.size = 0

    def __len__(self) -> int:
        return len(self._chunks)

    def push(self, data: bytes) -> bool:
        """Hold C{data}; False (and nothing held any more) when that passes the limit."""
        self._chunks.append(data)
        self.size += len(data)
        if self.size > self.limit:
            self.clear()
            return False
        return True

    def pop(self) -> bytes:
        """The oldest piece held (the caller checks there is one)."""
        data = self._chunks.popleft()
        self.size -= len(data)
        return data

    def take_all(self) -> bytes:
        """Everything held, in order, as one piece; the backlog is empty after."""
        data = b"".join(self._chunks)
        self.clear()
        return data

    def clear(self) -> None:
        self._chunks.clear()
        self.size = 0
