"""
The running daemon as the MQTT bridge sees it: adapters from the core to the
bridge's Protocols (L{boatwist.mqtt.interfaces}).

The snapshots are the same documents the HTTP API serves (one description
of the device), and an MQTT command is an operation through the one pipeline
with C{via} C{mqtt}.  A confirmation cannot be given over MQTT, so a control
with C{confirm} answers 428 and stays as it was.
"""

from __future__ import annotations

from typing import Sequence, cast

from twisted.internet.defer import Deferred

from boatwist import __version__
from boatwist.controls.pipeline import Outcome
from boatwist.core import Core
from boatwist.mqtt.interfaces import ControlSnapshot, FloorSnapshot, OperationOutcome, PresenceSnapshot

__all__ = ["CoreDevice", "PipelineOperator"]


class CoreDevice:
    """L{boatwist.mqtt.interfaces.DeviceState} of the running daemon; C{user} is whose rights C{writable} shows."""

    def __init__(self, core: Core, user: str) -> None:
        self._core = core
        self._user = user

    @property
    def device_name(self) -> str:
        return self._core.settings.device_name

    @property
    def version(self) -> str:
        return __version__

    def presence_snapshot(self) -> PresenceSnapshot:
        return cast(PresenceSnapshot, self._core.presence.snapshot())

    def floor_snapshot(self) -> FloorSnapshot:
        floor = self._core.floor.snapshot()
        return FloorSnapshot(mode=floor["mode"], holder=floor["holder"], since=floor["since"],
                             requested_by=floor["requested_by"])

    def controls_snapshot(self) -> Sequence[ControlSnapshot]:
        core = self._core
        return [cast(ControlSnapshot, core.controls.describe(state, self._user, core.roles))
                for state in core.controls]

    def control_snapshot(self, name: str) -> ControlSnapshot | None:
        core = self._core
        state = core.controls.get(name)
        return None if state is None else cast(ControlSnapshot, core.controls.describe(state, self._user, core.roles))


class PipelineOperator:
    """L{boatwist.mqtt.interfaces.Operator}: an MQTT command is an operation like any other."""

    def __init__(self, core: Core) -> None:
        self._core = core

    def operate(self, user: str, control: str, raw_value: object, via: str) -> Deferred[OperationOutcome]:
        d = self._core.operations.operate(user, control, raw_value, via)
        return d.addCallback(_outcome)


def _outcome(outcome: Outcome) -> OperationOutcome:
    # Never a confirmation token over MQTT: nobody there can answer the question.
    detail = {key: value for key, value in outcome.detail.items() if key != "confirm"}
    return OperationOutcome(outcome.status, outcome.operation, outcome.error, detail)
