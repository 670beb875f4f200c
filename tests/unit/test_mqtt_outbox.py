"""The bounded event queue, the counters and the reconnection backoff."""

from __future__ import annotations

from boatwist.mqtt.outbox import Backoff, BridgeStats, Message, Outbox


def m(n: int) -> Message:
    return Message("t", str(n).encode())


def test_queue_keeps_order_and_drops_the_oldest_when_full() -> None:
    """Beyond the bound the oldest go, counted; what stays comes out in order."""
    stats = BridgeStats()
    box = Outbox(3, stats)
    for n in range(5):
        box.put(m(n))
    assert stats.dropped == 2 and stats.queued == 3
    assert [box.take(), box.take(), box.take(), box.take()] == [m(2), m(3), m(4), None]
    assert stats.queued == 0


def test_put_back_returns_a_message_to_the_front() -> None:
    """A message paho could not take goes back first in line (and is the first dropped if full)."""
    stats = BridgeStats()
    box = Outbox(2, stats)
    box.put(m(1))
    box.put(m(2))
    first = box.take()
    assert first == m(1)
    box.put(m(3))
    box.put_back(first)
    assert stats.dropped == 1
    assert [box.take(), box.take()] == [m(2), m(3)]


def test_a_zero_queue_keeps_nothing() -> None:
    """queue = 0: events while disconnected are dropped and counted at once."""
    stats = BridgeStats()
    box = Outbox(0, stats)
    box.put(m(1))
    assert len(box) == 0 and stats.dropped == 1


def test_backoff_doubles_up_to_its_bound_with_jitter() -> None:
    """Delays double, never exceed the maximum, and jitter scales them into [0.5, 1) of the base."""
    low = Backoff(initial=0.5, maximum=4.0, chance=lambda: 0.0)
    assert [low.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    high = Backoff(initial=0.5, maximum=4.0, chance=lambda: 0.999)
    delays = [high.next() for _ in range(40)]
    assert max(delays) < 4.0 and delays[0] >= 0.49
    high.reset()
    assert high.next() < 0.5
