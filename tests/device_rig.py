"""
A device for unit tests: the real core (tests/core_rig.py) with a set of
controls, memory backends, and scripted backends where a test needs a
device that fails, hangs or answers late.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from boatwist.config import parse_config
from boatwist.controls.pipeline import Outcome
from boatwist.controls.spec import ControlSpec, Value
from boatwist.presence import Kind
from core_rig import Rig

DEVICE = """
[roles]
viewer = carol
admin = root

[floor]
mode = {mode}

[control:pump]
type = switch
backend = memory
initial = off
safe_value = off

[control:setpoint]
type = number
backend = memory
min = 5
max = 90
step = 0.5
unit = °C
initial = 20

[control:mode]
type = choice
backend = memory
choices = manual, auto
initial = manual

[control:valve]
type = switch
backend = memory
initial = off
role = admin

[control:heater]
type = switch
backend = memory
initial = off
confirm = Really switch the heater?

[control:reset]
type = action
backend = memory
"""


class ScriptedBackend:
    """A device that answers when the test says so, or fails as told."""

    readable = True

    def __init__(self, value: Value = False) -> None:
        self.value = value
        self.writes: list[Deferred[None]] = []
        self.fail_with: Exception | None = None
        self.hold = False

    def read(self) -> Deferred[Value]:
        if self.fail_with is not None:
            return defer.fail(self.fail_with)
        return defer.succeed(self.value)

    def write(self, value: Value) -> Deferred[None]:
        if self.fail_with is not None:
            return defer.fail(self.fail_with)
        d: Deferred[None] = Deferred()
        if self.hold:
            self.writes.append(d)
            d.addCallback(lambda _: setattr(self, "value", value))
            return d
        self.value = value
        d.callback(None)
        return d

    def close(self) -> Deferred[None]:
        return defer.succeed(None)


class Device(Rig):
    def __init__(self, mode: str = "optional", scripted: tuple[str, ...] = (), store: Any = None) -> None:
        self.scripted: dict[str, ScriptedBackend] = {name: ScriptedBackend() for name in scripted}
        settings = parse_config(DEVICE.format(mode=mode))
        super().__init__(settings, store=store)
        real_build = self.backends.build

        def build(control: ControlSpec, restored: Value = None) -> Any:
            return self.scripted.get(control.name) or real_build(control, restored)

        self.backends.build = build  # type: ignore[method-assign]
        self.core.controls.start()

    def operate(self, user: str, name: str, raw: object, via: str = "api", confirm: str | None = None,
                text: bool = False) -> Outcome:
        d = self.core.operations.operate(user, name, raw, via, confirm, text)
        results: list[Outcome] = []
        d.addCallback(results.append)
        assert results, "the operation did not finish"
        return results[0]

    def later(self, user: str, name: str, raw: object) -> list[Outcome]:
        results: list[Outcome] = []
        self.core.operations.operate(user, name, raw, "api").addCallback(results.append)
        return results

    def controls_events(self) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.kind == "control"]

    def online(self, user: str, kind: Kind = Kind.WEB) -> Any:
        _, _, conn = self.connect()
        assert self.core.presence.admit(conn, user, kind) is None
        return conn
