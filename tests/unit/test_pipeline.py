"""
The operation pipeline and the control registry, on the real core (tests/core_rig.py):
a Clock, an in-memory store, memory backends, and scripted backends where a
test needs a device that fails, hangs or answers late.
"""

from __future__ import annotations

from typing import Any

import pytest

from boatwist.controls.backends.base import BackendError
from boatwist.reasons import Reason
from device_rig import Device

def test_a_memory_operation_is_recorded_then_broadcast_with_old_and_new() -> None:
    """200 with the operation; the control event carries id, user, old, value, via; history has it."""
    d = Device()
    outcome = d.operate("alice", "pump", True)
    assert outcome.status == 200
    [event] = d.controls_events()
    assert (event["user"], event["control"], event["old"], event["value"], event["result"], event["via"]) == \
        ("alice", "pump", False, True, "ok", "api")
    assert event["id"] == 1 and event["type"] == "switch"
    history: list[Any] = []
    d.store.operations().addCallback(history.extend)
    assert [(o.control, o.value) for o in history] == [("pump", True)]
    state = d.core.controls.get("pump")
    assert state is not None and (state.value, state.changed_by) == (True, "alice")


@pytest.mark.parametrize("name, raw, allowed", [
    ("pump", "maybe", "on or off"),
    ("pump", 1, "on or off"),
    ("setpoint", 91, "from 5 to 90"),
    ("setpoint", 20.25, "in steps of 0.5"),
    ("setpoint", float("nan"), "from 5 to 90"),
    ("setpoint", float("inf"), "from 5 to 90"),
    ("setpoint", True, "a number"),
    ("mode", "turbo", "one of manual, auto"),
    ("reset", 1, "no value"),
])
def test_bad_values_are_400_and_nothing_happens(name: str, raw: object, allowed: str) -> None:
    """A bad value is answered with what is allowed; nothing is recorded or broadcast."""
    d = Device()
    outcome = d.operate("alice", name, raw)
    assert outcome.status == 400
    assert outcome.error is not None and allowed in outcome.error
    assert d.controls_events() == []


def test_unknown_control_and_sensor() -> None:
    """An unknown name is 404 listing the controls; nothing is broadcast."""
    d = Device()
    outcome = d.operate("alice", "nope", True)
    assert outcome.status == 404 and outcome.error is not None and "pump, setpoint" in outcome.error


def test_chat_words_are_values_too() -> None:
    """From the chat port a switch takes on/off, a number its digits."""
    d = Device()
    assert d.operate("alice", "pump", "on", via="chat", text=True).status == 200
    assert d.operate("alice", "setpoint", "21.5", via="chat", text=True).status == 200
    assert [(e["value"], e["via"]) for e in d.controls_events()] == [(True, "chat"), (21.5, "chat")]


def test_viewer_and_role_refusals_are_recorded_and_broadcast() -> None:
    """A viewer gets 403; an operator on an admin control too; everyone sees who tried."""
    d = Device()
    assert d.operate("carol", "pump", True).status == 403
    assert d.operate("alice", "valve", True).status == 403
    assert d.operate("root", "valve", True).status == 200
    refused = [e for e in d.controls_events() if e["result"] == "error"]
    assert [(e["user"], e["control"], e["refused"]) for e in refused] == [("carol", "pump", "role"),
                                                                         ("alice", "valve", "role")]


def test_floor_held_by_another_is_409_naming_the_holder() -> None:
    """optional: once bob holds the floor, alice is refused with his name; bob operates."""
    d = Device()
    assert d.core.floor.take("bob") is None
    outcome = d.operate("alice", "pump", True)
    assert outcome.status == 409
    assert outcome.detail["holder"] == "bob" and "bob" in (outcome.error or "")
    assert d.operate("bob", "pump", True).status == 200


def test_floor_required_means_take_it_first() -> None:
    """required: nobody operates while the floor is free."""
    d = Device(mode="required")
    assert d.operate("alice", "pump", True).status == 409
    d.core.floor.take("alice")
    assert d.operate("alice", "pump", True).status == 200


def test_confirmation_asks_then_executes_with_the_token_once() -> None:
    """428 with a question and token; the same request with it executes; the token is single use."""
    d = Device()
    asked = d.operate("alice", "heater", True)
    assert asked.status == 428
    assert asked.detail["question"] == "Really switch the heater?"
    token = str(asked.detail["confirm"])
    assert d.controls_events() == []
    assert d.operate("alice", "heater", True, confirm=token).status == 200
    again = d.operate("alice", "heater", True, confirm=token)
    assert again.status == 428 and "already used" in (again.error or "")


def audit(d: Device) -> list[tuple[str, str, str]]:
    entries: list[Any] = []
    d.store.audit_log().addCallback(entries.append)
    return [(e["kind"], e["user"], e["detail"]) for e in entries[0]]


def test_role_refusals_are_written_to_the_audit_log() -> None:
    """
    A viewer operating, and an operator on an admin control, are each one
    ``refused-operation`` row: who, the control and value, ``role``, the
    message they got and where from; the admin's own operation is not a
    refusal and writes nothing there.
    """
    d = Device()
    assert d.operate("carol", "pump", True, via="web").status == 403
    assert d.operate("alice", "valve", False, via="chat", text=False).status == 403
    assert d.operate("carol", "reset", None).status == 403
    assert d.operate("root", "valve", True).status == 200
    assert audit(d) == [
        ("refused-operation", "carol", "pump = on: refused (role): "
                                       "carol is a viewer: viewers watch and chat, they do not operate via web"),
        ("refused-operation", "alice", "valve = off: refused (role): "
                                       "operating valve needs the admin role; alice is an operator via chat"),
        ("refused-operation", "carol", "reset: refused (role): "
                                       "carol is a viewer: viewers watch and chat, they do not operate via api"),
    ]


def test_floor_refusals_are_written_to_the_audit_log() -> None:
    """
    Operating while someone else holds the floor, and (mode required) while
    nobody does, are ``refused-operation`` rows naming the floor's code
    (``held`` names the holder in its message; ``take-first``).
    """
    held = Device()
    assert held.core.floor.take("bob") is None
    refused = held.operate("alice", "setpoint", 30)
    assert refused.status == 409 and refused.error is not None and "bob" in refused.error
    assert [row for row in audit(held) if row[0] != "floor"] == [
        ("refused-operation", "alice", f"setpoint = 30 °C: refused (floor, held): {refused.error} via api")]
    required = Device(mode="required")
    assert required.operate("alice", "setpoint", 30).status == 409
    assert [row for row in audit(required) if row[0] != "floor"] == [
        ("refused-operation", "alice", "setpoint = 30 °C: refused (floor, take-first): "
                                       "nobody holds the floor: take the floor first via api")]


def test_a_refused_confirmation_is_broadcast_like_a_role_or_floor_refusal() -> None:
    """
    A token that does not answer the question (bob using alice's token) is
    a 428 asking again, and -- like a role or floor refusal -- a ``control``
    event everyone receives: bob's user, the control, old and wanted value,
    result error, ``refused: confirm`` and the reason's ``code``, and no
    token (the fresh one goes to bob alone).  It is recorded in the history
    too; the heater did not move.  Asking the question is not broadcast.
    """
    d = Device(mode="off")
    token = str(d.operate("alice", "heater", True).detail["confirm"])
    assert d.controls_events() == []
    refused = d.operate("bob", "heater", True, confirm=token)
    assert refused.status == 428 and refused.error == "this confirmation was given to another user"
    assert refused.detail["refused"] == "confirm" and refused.detail["code"] == "wrong-user"
    fresh = str(refused.detail["confirm"])
    [event] = d.controls_events()
    assert (event["user"], event["control"], event["old"], event["value"], event["result"], event["error"],
            event["refused"], event["code"], event["via"]) == \
        ("bob", "heater", False, True, "error", "this confirmation was given to another user", "confirm",
         "wrong-user", "api")
    assert refused.operation is not None and refused.operation["id"] == event["id"]
    assert token not in repr(event) and fresh not in repr(event) and "confirm" not in event
    history: list[Any] = []
    d.store.operations().addCallback(history.extend)
    assert [(o.user, o.control, o.result) for o in history] == [("bob", "heater", "error")]
    assert d.core.controls.get("heater").value is False  # type: ignore[union-attr]
    # bob's fresh token operates.
    assert d.operate("bob", "heater", True, confirm=fresh).status == 200


def test_confirmation_is_bound_to_user_and_value() -> None:
    """bob cannot use alice's token; a token for on does not switch off; expired after 15 s."""
    d = Device()
    token = str(d.operate("alice", "heater", True).detail["confirm"])
    assert d.operate("bob", "heater", True, confirm=token).status == 428
    assert d.operate("alice", "heater", False, confirm=token).status == 428
    late = str(d.operate("alice", "heater", True).detail["confirm"])
    d.clock.advance(15)
    assert d.operate("alice", "heater", True, confirm=late).status == 428


def test_backend_failure_is_502_recorded_broadcast_and_quality_error() -> None:
    """A failing device: 502 with its line; result error for everyone; the control's quality is error."""
    d = Device(scripted=("pump",))
    d.scripted["pump"].fail_with = BackendError("/sys/class/gpio/x: permission denied")
    outcome = d.operate("alice", "pump", True)
    assert outcome.status == 502 and outcome.error == "/sys/class/gpio/x: permission denied"
    [event] = d.controls_events()
    assert (event["result"], event["error"]) == ("error", "/sys/class/gpio/x: permission denied")
    state = d.core.controls.get("pump")
    assert state is not None and d.core.controls.quality_of(state).value == "error"


def test_backend_that_hangs_is_504_after_the_timeout() -> None:
    """A write that never answers is a 504 at the control's timeout (2 s by default)."""
    d = Device(scripted=("pump",))
    d.scripted["pump"].hold = True
    results = d.later("alice", "pump", True)
    d.clock.advance(1.9)
    assert results == []
    d.clock.advance(0.1)
    [outcome] = results
    assert outcome.status == 504 and "timed out" in (outcome.error or "")


def test_operations_on_one_control_are_serialised_and_old_values_chain() -> None:
    """Two at once: the second waits for the first; its old is the first's value."""
    d = Device(scripted=("pump",))
    d.scripted["pump"].hold = True
    first = d.later("alice", "pump", True)
    second = d.later("bob", "pump", False)
    assert len(d.scripted["pump"].writes) == 1
    d.scripted["pump"].writes[0].callback(None)
    assert first[0].status == 200
    assert len(d.scripted["pump"].writes) == 2
    d.scripted["pump"].writes[1].callback(None)
    assert second[0].status == 200
    assert [(e["user"], e["old"], e["value"]) for e in d.controls_events()] == [("alice", False, True),
                                                                               ("bob", True, False)]


def test_rate_is_shared_with_the_chat() -> None:
    """Operations spend the same per-user allowance as chat messages: 429 with Retry-After."""
    d = Device()
    for n in range(10):
        assert d.operate("alice", "setpoint", 5 + n).status == 200
    outcome = d.operate("alice", "setpoint", 30)
    assert outcome.status == 429 and outcome.detail["retry_after"] > 0


def test_holder_vanishing_loses_the_floor_then_the_safe_state_runs_in_order() -> None:
    """
    The holder's last connection ends by keepalive timeout: presence offline,
    floor lost, then the safe-state operation (via safe-state) -- in that order.
    """
    d = Device()
    conn = d.online("alice")
    d.core.floor.take("alice")
    assert d.operate("alice", "pump", True).status == 200
    d.core.presence.detach(conn, Reason.KEEPALIVE_TIMEOUT, 3.1)
    kinds = [(e.kind, e.data.get("state") or e.data.get("via")) for e in d.events[-3:]]
    assert kinds == [("presence", "offline"), ("floor", "lost"), ("control", "safe-state")]
    safe = d.controls_events()[-1]
    assert (safe["user"], safe["value"], safe["reason"], safe["result"]) == ("alice", False, "keepalive-timeout", "ok")
    state = d.core.controls.get("pump")
    assert state is not None and state.value is False


def test_release_by_hand_does_not_touch_the_safe_state() -> None:
    """Releasing the floor is not vanishing: the pump stays on."""
    d = Device()
    d.online("alice")
    d.core.floor.take("alice")
    d.operate("alice", "pump", True)
    d.core.floor.release("alice")
    assert [e["via"] for e in d.controls_events()] == ["api"]


def test_mode_off_last_operator_leaving_sets_the_safe_value() -> None:
    """Without a floor, the last one to change a safe_value control leaving sets it safe."""
    d = Device(mode="off")
    alice = d.online("alice")
    d.operate("alice", "pump", True)
    d.core.presence.detach(alice, Reason.RESET, None)
    assert [(e["via"], e["value"]) for e in d.controls_events()] == [("api", True), ("safe-state", False)]


def test_safe_state_that_fails_is_broadcast_as_an_error() -> None:
    """A safe value that cannot be reached is shown to everyone (result error, via safe-state)."""
    d = Device(scripted=("pump",))
    d.online("alice")
    d.core.floor.take("alice")
    d.scripted["pump"].fail_with = BackendError("relay stuck")
    d.core.presence.kick("alice", Reason.KICKED, by="root")
    # An HTTP-only... alice has a web connection: kicking closes it; the tracker tells presence.
    [conn] = [c for c in d.core.tracker.connections() if c.user == "alice"]
    d.core.presence.detach(conn, Reason.KICKED, None)
    last = d.controls_events()[-1]
    assert (last["via"], last["result"], last["error"]) == ("safe-state", "error", "relay stuck")


def test_a_kick_names_the_admin_on_the_safe_state_operation() -> None:
    """
    The holder kicked by an admin: the safe-state operation carries the
    presence reason and C{by}, the admin, for the line everyone reads; in
    mode off too, from the offline event.
    """
    for mode in ("optional", "off"):
        d = Device(mode=mode)
        d.online("alice")
        if mode != "off":
            d.core.floor.take("alice")
        assert d.operate("alice", "pump", True).status == 200
        d.core.presence.kick("alice", Reason.KICKED, by="root")
        [conn] = [c for c in d.core.tracker.connections() if c.user == "alice"]
        d.core.presence.detach(conn, Reason.KICKED, None)
        safe = d.controls_events()[-1]
        assert (safe["via"], safe["value"], safe["reason"], safe["by"]) == ("safe-state", False, "kicked", "root"), \
            (mode, safe)


def test_a_vanished_holder_has_no_by() -> None:
    """Nobody removed a holder whose link died: the operation has no C{by} at all."""
    d = Device()
    conn = d.online("alice")
    d.core.floor.take("alice")
    d.operate("alice", "pump", True)
    d.core.presence.detach(conn, Reason.KEEPALIVE_TIMEOUT, 3.1)
    assert "by" not in d.controls_events()[-1]


def test_a_reading_changed_outside_is_a_value_event() -> None:
    """A poll that reads a new value publishes a value event, changed_by nobody."""
    d = Device(scripted=("pump",))
    state = d.core.controls.get("pump")
    assert state is not None
    before = len(d.events)
    d.scripted["pump"].value = True
    d.core.controls.refresh(state)
    [event] = [e.data for e in d.events[before:] if e.kind == "value"]
    assert (event["control"], event["value"], event["quality"], event["changed_by"]) == ("pump", True, "good", None)


def test_recorded_values_are_restored_for_memory_controls() -> None:
    """After a restart on the same store, a memory control has its last value, by whom and when."""
    d = Device()
    d.operate("alice", "setpoint", 42.5)
    restarted = Device(store=d.store)
    state = restarted.core.controls.get("setpoint")
    assert state is not None and (state.value, state.changed_by) == (42.5, "alice")
    assert restarted.operate("bob", "setpoint", 43).operation["old"] == 42.5  # type: ignore[index]
