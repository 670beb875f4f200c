"""
The operation pipeline at start-up and over time (boatwist.controls.pipeline) in a whole real core on a
Clock (tests/core_rig.py): memory controls, the in-memory store on a
synchronous runner, the real hub, floor, roles and confirmations.

Pinned here what the integration tests cannot pin without waiting or racing:
a confirmation's expiry (15 s, on the Clock), and requests that arrive in the
moment after start when the controls are still being built (they wait; they
are not told that a declared control does not exist).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from boatwist.config import parse_config
from boatwist.controls.pipeline import Outcome
from boatwist.web.controls_api import ControlResource, ControlsResource
from core_rig import Rig

DEVICE = """
[floor]
mode = off
[control:pump]
type = switch
backend = memory
initial = off
safe_value = off
[control:heater]
type = switch
backend = memory
initial = off
confirm = Turn the heater on?
"""


def rig(text: str = DEVICE, start: bool = True) -> Rig:
    r = Rig(parse_config(text))
    if start:
        r.core.controls.start()
    return r


def result(d: Deferred[Outcome]) -> Outcome:
    """The outcome of an operation that has completed (synchronous store, memory backends, a Clock)."""
    got: list[Any] = []
    d.addBoth(got.append)
    assert got, "the operation has not completed"
    assert isinstance(got[0], Outcome), got[0]
    return got[0]


def control_events(r: Rig) -> list[dict]:
    return [e.data for e in r.events if e.kind == "control"]


# ------------------------------------------------------------------ confirmation


def test_confirmation_token_expires_after_15_seconds() -> None:
    """
    A 428's token answered after 15 s (on the Clock) is refused with another
    428 that says it expired and asks again with a fresh token; nothing is
    operated, and the refusal is broadcast like any refused operation (code
    ``expired``).  The fresh token, answered in time, operates.
    """
    r = rig()
    ops = r.core.operations
    asked = result(ops.operate("alice", "heater", True, "api"))
    assert asked.status == 428 and asked.detail["expires_in"] == 15.0, asked
    assert control_events(r) == [], "asking the question is not a refusal"
    r.clock.advance(15.0)
    late = result(ops.operate("alice", "heater", True, "api", confirm=str(asked.detail["confirm"])))
    assert late.status == 428, late
    assert late.error == "the confirmation expired (15 s to answer)", late
    assert late.detail["confirm"] != asked.detail["confirm"]
    assert [(e["control"], e["result"], e["refused"], e["code"]) for e in control_events(r)] == \
        [("heater", "error", "confirm", "expired")]
    assert r.core.controls.get("heater").value is False  # type: ignore[union-attr]

    done = result(ops.operate("alice", "heater", True, "api", confirm=str(late.detail["confirm"])))
    assert done.status == 200, done
    assert [(e["control"], e["old"], e["value"], e["result"]) for e in control_events(r)] == \
        [("heater", False, True, "error"), ("heater", False, True, "ok")]


def test_confirmation_token_just_in_time_operates() -> None:
    """The same token answered 14.9 s after the question (on the Clock) still operates."""
    r = rig()
    ops = r.core.operations
    asked = result(ops.operate("alice", "heater", True, "api"))
    r.clock.advance(14.9)
    done = result(ops.operate("alice", "heater", True, "api", confirm=str(asked.detail["confirm"])))
    assert done.status == 200, done


# ------------------------------------------------------------------ start


def test_operation_in_the_moment_before_the_controls_are_built_waits_for_them() -> None:
    """
    The listeners open while the store is still giving back the recorded
    values: an operation on a declared control in that moment waits and is
    then carried out (200) -- it is not answered 404 "no control named pump"
    -- while an undeclared name is still 404 at once.
    """
    r = rig(start=False)
    ops = r.core.operations
    waiting = ops.operate("alice", "pump", True, "api")
    unknown = result(ops.operate("alice", "nope", True, "api"))
    assert unknown.status == 404 and "controls: pump, heater" in str(unknown.error), unknown
    got: list[Outcome] = []
    waiting.addCallback(got.append)
    assert got == []
    r.core.controls.start()
    assert [o.status for o in got] == [200], got
    assert got[0].operation is not None and got[0].operation["old"] is False


def render(resource: Any) -> DummyRequest:
    request = DummyRequest([b""])
    out = resource.render_GET(request)
    if out is not NOT_DONE_YET:
        request.write(out)
        request.finish()
    return request


def test_controls_api_in_the_moment_before_the_controls_are_built_waits_for_them() -> None:
    """
    ``GET /api/controls`` and ``GET /api/controls/pump`` asked before the
    controls are built are answered once they are: the full list (not an
    empty one) and the control (not a 404).
    """
    r = rig(start=False)
    listing = render(ControlsResource("alice", r.core))
    one = render(ControlResource("alice", r.core, "pump"))
    assert not listing.finished and not one.finished
    r.core.controls.start()
    assert listing.finished and one.finished
    assert [c["name"] for c in json.loads(b"".join(listing.written))["controls"]] == ["pump", "heater"]
    assert one.responseCode in (None, 200)
    assert json.loads(b"".join(one.written))["value"] is False


# ------------------------------------------------------------------ the audit log


def audit(r: Rig) -> list[tuple[str, str, str]]:
    entries: list[Any] = []
    r.store.audit_log().addCallback(entries.append)
    return [(e["kind"], e["user"], e["detail"]) for e in entries[0]]


def test_a_refused_confirmation_is_written_to_the_audit_log() -> None:
    """
    A token that does not answer the question (another value, another user,
    a replay) is refused with a 428 and written to the audit log with who,
    what and why, in the same row as a role or floor refusal
    (``refused-operation``); asking the question is not a refusal and is not
    written.
    """
    r = rig()
    ops = r.core.operations
    token = str(result(ops.operate("alice", "heater", True, "api")).detail["confirm"])
    assert audit(r) == []
    assert result(ops.operate("alice", "heater", False, "api", confirm=token)).status == 428
    assert result(ops.operate("bob", "heater", True, "chat", confirm=token)).status == 428
    assert result(ops.operate("alice", "heater", True, "api", confirm=token)).status == 200
    assert result(ops.operate("alice", "heater", True, "api", confirm=token)).status == 428
    assert audit(r) == [
        ("refused-operation", "alice", "heater = off: refused (confirm, wrong-value): "
                                       "this confirmation is for heater = on, not off via api"),
        ("refused-operation", "bob", "heater = on: refused (confirm, wrong-user): "
                                     "this confirmation was given to another user via chat"),
        ("refused-operation", "alice", "heater = on: refused (confirm, used): "
                                       "this confirmation was already used (ask for a new one) via api"),
    ]


def test_every_floor_change_is_written_to_the_audit_log() -> None:
    """Taking, requesting, handing over and releasing the floor are audit entries, in the chat port's words."""
    r = rig(DEVICE.replace("mode = off", "mode = optional"))
    floor = r.core.floor
    assert floor.take("alice") is None
    assert floor.request("bob", "may I?") is None
    assert floor.hand_over("alice") is None
    assert floor.release("bob") is None
    assert audit(r) == [
        ("floor", "alice", "taken: alice took the floor"),
        ("floor", "bob", "requested: bob asks alice for the floor ('may I?')"),
        ("floor", "bob", "taken: alice handed the floor over to bob"),
        ("floor", "bob", "released: bob released the floor"),
    ]


def test_controls_that_fail_to_start_do_not_leave_requests_waiting() -> None:
    """
    If building the controls fails (a backend that cannot be made), the
    requests waiting for them are answered -- a 502 saying the control was
    not started, and why -- instead of waiting forever.
    """
    r = rig(start=False)
    ops = r.core.operations
    got: list[Outcome] = []
    ops.operate("alice", "pump", True, "api").addCallback(got.append)

    def broken(*args: object, **kw: object) -> object:
        raise TypeError("pump: unknown backend")

    r.backends.build = broken  # type: ignore[method-assign]
    failures: list[object] = []
    r.core.controls.start().addErrback(failures.append)
    assert len(failures) == 1
    assert [o.status for o in got] == [502], got
    assert "not started: pump: unknown backend" in (got[0].error or "")
