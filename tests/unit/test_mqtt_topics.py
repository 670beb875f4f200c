"""Topic names and payloads: one layout, built in one place."""

from __future__ import annotations

import json

from mqtt_fakes import control

from boatwist.events import Event
from boatwist.mqtt.topics import (
    Topics,
    control_payload,
    dumps,
    event_payload,
    presence_payload,
    status_payload,
)


def test_topic_layout() -> None:
    """Every topic of a device hangs under its prefix."""
    t = Topics("boatwist/press-7")
    assert t.status == "boatwist/press-7/status"
    assert t.control("pump") == "boatwist/press-7/controls/pump"
    assert t.control_set("pump") == "boatwist/press-7/controls/pump/set"
    assert t.control_result("pump") == "boatwist/press-7/controls/pump/result"
    assert t.event("floor") == "boatwist/press-7/events/floor"
    assert t.command_filter == "boatwist/press-7/controls/+/set"


def test_command_topics_name_their_control() -> None:
    """Only PREFIX/controls/NAME/set is a command topic."""
    t = Topics("p/d")
    assert t.command_control("p/d/controls/pump/set") == "pump"
    assert t.command_control("p/d/controls/pump") is None
    assert t.command_control("p/d/controls/a/b/set") is None
    assert t.command_control("q/d/controls/pump/set") is None


def test_event_payload_keeps_the_datas_own_id() -> None:
    """The hub's id is event_id; a chat message's or an operation's own id stays id."""
    payload = json.loads(event_payload(Event(42, "chat", {"id": 7, "user": "alice", "text": "hé"})))
    assert payload == {"id": 7, "user": "alice", "text": "hé", "event_id": 42}


def test_status_and_control_payloads() -> None:
    """Status carries state and session; a control's state its value, quality, who and when."""
    assert json.loads(status_payload("offline", 5)) == {"state": "offline", "session": 5}
    c = control("temp", "sensor", value=21.5, changed_by="poll", changed_at=3.0)
    assert json.loads(control_payload(c)) == {"value": 21.5, "quality": "good", "changed_by": "poll", "changed_at": 3.0}


def test_presence_does_not_publish_addresses() -> None:
    """Connections are counted, not listed: the broker does not learn operators' addresses."""
    snap = {"seats": {"used": 1, "limit": 10}, "users": [
        {"user": "alice", "state": "online", "since": 1.0, "connections": [{"peer": "192.0.2.7"}, {"peer": "x"}]}]}
    payload = presence_payload(snap, 2.0)  # type: ignore[arg-type]
    assert b"192.0.2.7" not in payload
    assert json.loads(payload)["users"] == [{"user": "alice", "state": "online", "since": 1.0, "connections": 2}]


def test_non_finite_numbers_become_null() -> None:
    """A broken sensor's NaN must not make a payload no JSON parser accepts."""
    assert json.loads(dumps({"value": float("nan"), "x": [float("inf")]})) == {"value": None, "x": [None]}
