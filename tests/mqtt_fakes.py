"""
Fakes of what the daemon gives the MQTT bridge, checked against the real
Protocols by mypy (the assignments at the bottom) -- shared by the unit
tests and by the bridge harness the integration tests run.
"""

from __future__ import annotations

from typing import Sequence

from twisted.internet.defer import Deferred, succeed

from boatwist.mqtt.interfaces import (
    ControlSnapshot,
    DeviceState,
    FloorSnapshot,
    OperationOutcome,
    Operator,
    PresenceSnapshot,
)


def control(name: str, type: str = "switch", **fields: object) -> ControlSnapshot:
    """A control as GET /api/controls lists it, with plausible defaults."""
    snapshot: ControlSnapshot = {
        "name": name, "label": name.capitalize(), "type": type, "unit": None, "min": None, "max": None,
        "step": None, "choices": None, "value": None, "quality": "good", "changed_at": None,
        "changed_by": None, "writable": type != "sensor",
    }
    snapshot.update(fields)  # type: ignore[typeddict-item]
    return snapshot


DEMO_CONTROLS: list[ControlSnapshot] = [
    control("pump", "switch", label="Coolant pump", value=False),
    control("setpoint", "number", label="Set-point", unit="°C", min=5.0, max=90.0, step=0.5, value=20.0),
    control("mode", "choice", label="Mode", choices=["auto", "manual", "off"], value="auto"),
    control("reset", "action", label="Reset alarms"),
    control("temp", "sensor", label="Temperature", unit="°C", value=21.5, writable=False),
]


class FakeDeviceState:
    def __init__(self, name: str = "press-7", version: str = "0.1.0",
                 controls: Sequence[ControlSnapshot] = DEMO_CONTROLS) -> None:
        self._name = name
        self._version = version
        self.controls: list[ControlSnapshot] = [dict(c) for c in controls]  # type: ignore[misc]
        self.presence: PresenceSnapshot = {"seats": {"used": 0, "limit": 10}, "users": []}
        self.floor: FloorSnapshot = {"mode": "optional", "holder": None, "since": None, "requested_by": None}

    @property
    def device_name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return self._version

    def presence_snapshot(self) -> PresenceSnapshot:
        return self.presence

    def floor_snapshot(self) -> FloorSnapshot:
        return self.floor

    def controls_snapshot(self) -> Sequence[ControlSnapshot]:
        return self.controls

    def control_snapshot(self, name: str) -> ControlSnapshot | None:
        return next((c for c in self.controls if c["name"] == name), None)

    def set_value(self, name: str, value: object, by: str | None, at: float) -> None:
        for c in self.controls:
            if c["name"] == name:
                c["value"] = value  # type: ignore[typeddict-item]
                c["changed_by"] = by
                c["changed_at"] = at


class FakeOperator:
    """Records calls; answers with C{outcome(call)} (200 by default)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object, str]] = []
        self.next_status = 200
        self.next_error: str | None = None
        self.next_detail: dict[str, object] = {}

    def operate(self, user: str, control: str, raw_value: object, via: str) -> Deferred[OperationOutcome]:
        self.calls.append((user, control, raw_value, via))
        if self.next_status == 200:
            operation = {"id": len(self.calls), "user": user, "control": control, "old": None,
                         "value": raw_value, "result": "ok", "error": None, "via": via, "at": 0.0}
            return succeed(OperationOutcome(200, operation))
        return succeed(OperationOutcome(self.next_status, None, self.next_error, dict(self.next_detail)))


_state: DeviceState = FakeDeviceState()
_operator: Operator = FakeOperator()
