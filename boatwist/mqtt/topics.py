"""
Topic names and payloads: pure functions, no I/O, one place for the layout.

The layout itself is documented at the top of L{boatwist.mqtt.bridge};
this module is what builds it, so the bridge, the fleet view and the tests
agree by construction.  Payloads are compact UTF-8 JSON; a value JSON cannot
carry (NaN, infinity from a broken sensor) becomes C{null} rather than a
payload no JSON parser accepts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Mapping

from boatwist.events import Event

from boatwist.mqtt.interfaces import ControlSnapshot, FloorSnapshot, PresenceSnapshot

__all__ = ["Topics", "dumps", "status_payload", "presence_payload", "floor_payload", "control_payload",
           "event_payload"]

#: What a retained state topic is called, after the prefix.
STATUS, PRESENCE, FLOOR, LAST_OPERATION = "status", "presence", "floor", "last_operation"


@dataclass(frozen=True)
class Topics:
    """Every topic of one device, from its prefix (C{boatwist/<device name>} by default)."""

    prefix: str

    @property
    def status(self) -> str:
        return f"{self.prefix}/{STATUS}"

    @property
    def presence(self) -> str:
        return f"{self.prefix}/{PRESENCE}"

    @property
    def floor(self) -> str:
        return f"{self.prefix}/{FLOOR}"

    @property
    def last_operation(self) -> str:
        return f"{self.prefix}/{LAST_OPERATION}"

    def control(self, name: str) -> str:
        return f"{self.prefix}/controls/{name}"

    def control_set(self, name: str) -> str:
        return f"{self.prefix}/controls/{name}/set"

    def control_result(self, name: str) -> str:
        return f"{self.prefix}/controls/{name}/result"

    def event(self, kind: str) -> str:
        return f"{self.prefix}/events/{kind}"

    @property
    def command_filter(self) -> str:
        """The subscription that receives every command."""
        return f"{self.prefix}/controls/+/set"

    def command_control(self, topic: str) -> str | None:
        """The control a command topic names, or C{None} for any other topic."""
        head = f"{self.prefix}/controls/"
        if not (topic.startswith(head) and topic.endswith("/set")):
            return None
        name = topic[len(head):-len("/set")]
        return name if name and "/" not in name else None


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(payload: Mapping[str, object]) -> bytes:
    """Compact UTF-8 JSON; NaN and infinities become null (JSON has no words for them)."""
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(dict(payload)), ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8")


def status_payload(state: str, session: int, **extra: object) -> bytes:
    """
    C{{"state": "online"|"offline", "session": N, ...}}: C{session} grows with
    every connection, so a will from an old connection that arrives late
    (C{offline} with a smaller session) can be told from a real one.
    """
    return dumps({"state": state, "session": session, **extra})


def presence_payload(snapshot: PresenceSnapshot, at: float) -> bytes:
    """
    Seats and users, each with its state, since when and how many
    connections -- not the connections themselves: a plant-wide broker has
    no business knowing operators' addresses.
    """
    users = [
        {"user": u["user"], "state": u["state"], "since": u["since"], "connections": len(u["connections"])}
        for u in snapshot["users"]
    ]
    return dumps({"seats": dict(snapshot["seats"]), "users": users, "at": at})


def floor_payload(snapshot: FloorSnapshot, at: float) -> bytes:
    return dumps({**snapshot, "at": at})


def control_payload(control: ControlSnapshot) -> bytes:
    """The retained state of one control (also Home Assistant's state topic)."""
    return dumps({
        "value": control["value"],
        "quality": control["quality"],
        "changed_by": control["changed_by"],
        "changed_at": control["changed_at"],
    })


def event_payload(event: Event) -> bytes:
    """
    The event's data plus C{event_id}, the hub's id (the same as the SSE
    C{id:}).  Not C{id}: chat and control data already have an C{id} of
    their own (the message's, the operation's) that must not be lost.
    """
    return dumps({**event.data, "event_id": event.id})
