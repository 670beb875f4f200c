"""
What the bridge needs from the rest of boatwist, as small typed Protocols.

The daemon (``boatwist.tap``) adapts its presence, floor, controls and
operation pipeline to these; tests use fakes that mypy checks against the
same Protocols.  Shapes follow the HTTP API of DESIGN.md, so the MQTT
payloads and ``/api/...`` stay one description.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence, TypedDict, Union

from twisted.internet.defer import Deferred

from boatwist.events import Event

__all__ = [
    "ControlSnapshot",
    "DeviceState",
    "EventSource",
    "FloorSnapshot",
    "OperationOutcome",
    "Operator",
    "PresenceSnapshot",
    "Seats",
    "UserPresence",
    "Value",
]

#: A control's value as the API carries it: switch bool, number float,
#: choice str, sensor float or str, action None.
Value = Union[bool, int, float, str, None]


class Seats(TypedDict):
    used: int
    limit: int


class UserPresence(TypedDict):
    user: str
    state: str  # online | unstable
    since: float
    #: The user's connections as /api/presence lists them; the bridge publishes only their number.
    connections: Sequence[Mapping[str, object]]


class PresenceSnapshot(TypedDict):
    """The JSON of C{/api/presence}."""

    seats: Seats
    users: Sequence[UserPresence]


class FloorSnapshot(TypedDict):
    """The JSON of C{GET /api/floor}."""

    mode: str  # off | optional | required
    holder: str | None
    since: float | None
    requested_by: str | None


class ControlSnapshot(TypedDict):
    """One control as C{GET /api/controls} lists it."""

    name: str
    label: str
    type: str  # switch | number | choice | action | sensor
    unit: str | None
    min: float | None
    max: float | None
    step: float | None
    choices: Sequence[str] | None
    value: Value
    quality: str  # good | stale | error
    changed_at: float | None
    changed_by: str | None
    writable: bool


class EventSource(Protocol):
    """L{boatwist.events.EventHub} as the bridge uses it: ordered delivery, then unsubscribe."""

    def subscribe(self, subscriber: Callable[[Event], None]) -> Callable[[], None]: ...


class DeviceState(Protocol):
    """
    The device's current state, read when the bridge (re)connects and after
    each event of the matching kind: retained topics always carry the state
    as it is now, not as a sum of events that a broker outage may have cut.
    """

    @property
    def device_name(self) -> str:
        """The device's name: the default topic level and client id, Home Assistant's device name."""

    @property
    def version(self) -> str:
        """boatwist's version (Home Assistant's C{sw_version})."""

    def presence_snapshot(self) -> PresenceSnapshot: ...

    def floor_snapshot(self) -> FloorSnapshot: ...

    def controls_snapshot(self) -> Sequence[ControlSnapshot]: ...

    def control_snapshot(self, name: str) -> ControlSnapshot | None:
        """One control as L{controls_snapshot} shows it (None: no such control): one event's worth."""


@dataclass(frozen=True)
class OperationOutcome:
    """
    What the operation pipeline answered, in the HTTP API's terms.

    C{status}: 200 done (C{operation} is the recorded operation, its
    C{result} may still be C{error}), 400 bad value, 403 role, 404 unknown
    control, 409 floor held by another, 428 confirmation needed (refused
    over MQTT: nobody can confirm), 502 backend failed, 504 backend timed
    out.  C{error} is the text people read; C{detail} carries extra fields
    of the HTTP answer (a 409's C{holder}), never a confirmation token.
    """

    status: int
    operation: Mapping[str, object] | None = None
    error: str | None = None
    detail: Mapping[str, object] = field(default_factory=dict)


class Operator(Protocol):
    """The one operation pipeline: validate, role, floor, confirm, write, record, broadcast."""

    def operate(self, user: str, control: str, raw_value: object, via: str) -> Deferred[OperationOutcome]:
        """
        Operate C{control} as C{user}; C{raw_value} is the decoded JSON value
        (or the bare text) of the command, validated by the pipeline itself.
        Never fails: every refusal is an outcome with its status.
        """
