"""The event hub: ids, replay, and delivery in order even when subscribers publish."""

from __future__ import annotations

import pytest

from boatwist.events import KINDS, Event, EventHub


def test_a_subscriber_that_publishes_does_not_reorder_delivery() -> None:
    """Event 2, published while event 1 is delivered, reaches every subscriber after event 1."""
    hub = EventHub()
    seen: dict[str, list[int]] = {"first": [], "second": [], "third": []}

    def first(event: Event) -> None:
        seen["first"].append(event.id)
        if event.data.get("chain"):
            hub.publish("floor", {"user": "alice", "chain": event.data["chain"] - 1})

    hub.subscribe(first)
    hub.subscribe(lambda e: seen["second"].append(e.id))
    hub.subscribe(lambda e: seen["third"].append(e.id))
    one = hub.publish("presence", {"user": "alice", "chain": 2})
    assert seen["first"] == seen["second"] == seen["third"] == [one.id, one.id + 1, one.id + 2]


def test_publish_returns_the_event_with_its_id_before_a_nested_delivery() -> None:
    """A nested publish gets its id at once, so the caller can refer to it."""
    hub = EventHub(first_id=10)
    nested: list[Event] = []

    def chain(event: Event) -> None:
        if event.kind == "presence":
            nested.append(hub.publish("control", {"user": "alice"}))

    hub.subscribe(chain)
    got: list[int] = []
    hub.subscribe(lambda e: got.append(e.id))
    hub.publish("presence", {"user": "alice"})
    assert nested[0].id == 11
    assert got == [10, 11]


def test_a_failing_subscriber_does_not_stop_the_others_or_the_queue() -> None:
    """One broken subscriber is logged; later subscribers and queued events are still delivered."""
    hub = EventHub()
    got: list[int] = []

    def broken(event: Event) -> None:
        if event.kind == "presence":
            hub.publish("chat", {"user": "bob"})
        raise RuntimeError("broken")

    hub.subscribe(broken)
    hub.subscribe(lambda e: got.append(e.id))
    hub.publish("presence", {"user": "alice"})
    hub.publish("chat", {"user": "carol"})
    assert got == [1, 2, 3]


def test_unknown_kind_is_refused() -> None:
    """Only the kinds DESIGN.md names exist."""
    assert KINDS == ("presence", "chat", "control", "value", "floor")
    with pytest.raises(ValueError):
        EventHub().publish("nonsense", {})


def test_since_replays_buffered_events_and_says_when_too_much_was_missed() -> None:
    """Last-Event-ID replay: what is buffered after the id; None when some left the buffer."""
    hub = EventHub(buffer=3)
    for n in range(5):
        hub.publish("chat", {"n": n})
    assert [e.id for e in hub.since(3) or []] == [4, 5]
    assert hub.since(5) == []
    assert hub.since(1) is None
    assert hub.since(99) is None
