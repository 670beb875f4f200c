"""
The lines everyone reads for operations and departures
(L{boatwist.controls.words}, L{boatwist.chat.lines}): byte for byte, since
operators and scripts read them.
"""

from __future__ import annotations

from typing import Any

import pytest

from boatwist.chat.lines import presence_sentence
from boatwist.controls.words import operation_line

SAFE = {"user": "bob", "control": "pump", "value": False, "type": "switch", "via": "safe-state", "result": "ok"}


@pytest.mark.parametrize(
    "extra, line",
    [
        ({"reason": "keepalive-timeout"},
         "pump set to off (safe state: bob is offline, no answer to keepalive probes)"),
        # A kick names the admin, as the floor's line does ("bob was removed by alice").
        ({"reason": "kicked", "by": "alice"}, "pump set to off (safe state: bob is offline, removed by alice)"),
        ({"reason": "kicked"}, "pump set to off (safe state: bob is offline, removed by an operator)"),
        # Closing the last connection is leaving: not "bob is offline, left".
        ({"reason": "closed"}, "pump set to off (safe state: bob left)"),
        ({}, "pump set to off (safe state: bob vanished)"),
        ({"reason": "new\x1b[2J-thing"}, "pump set to off (safe state: bob is offline, new-thing)"),
        ({"reason": "kicked", "by": "ev\x1b[2Jil"}, "pump set to off (safe state: bob is offline, removed by evil)"),
        ({"reason": "reset", "result": "error", "error": "relay stuck"},
         "!! pump could not be set to its safe value off: relay stuck (safe state: bob is offline, connection reset)"),
    ],
)
def test_safe_state_lines(extra: dict[str, Any], line: str) -> None:
    """Why the safe value was set, in the words of the departure; the admin named when known; cleaned."""
    assert operation_line({**SAFE, **extra}) == line


def test_operation_lines() -> None:
    """Done and failed operations and actions, with units and old values, as DESIGN.md's examples."""
    assert operation_line({"user": "alice", "control": "pump", "type": "switch", "old": False, "value": True,
                           "result": "ok", "via": "chat"}) == "alice set pump to on (was off)"
    assert operation_line({"user": "carol", "control": "setpoint", "type": "number", "old": 20.0, "value": 42.5,
                           "unit": "°C", "result": "ok", "via": "web"}) == "carol set setpoint to 42.5 °C (was 20 °C)"
    assert operation_line({"user": "alice", "control": "reset", "type": "action", "result": "ok"}) == \
        "alice pressed reset"
    assert operation_line({"user": "alice", "control": "flush", "type": "action", "result": "error",
                           "error": "timed out after 1.5 s"}) == "alice could not press flush: timed out after 1.5 s"


@pytest.mark.parametrize(
    "data, sentence",
    [
        ({"user": "bob", "state": "offline", "reason": "kicked", "by": "alice", "detected_after": None},
         "bob is offline (removed by alice)"),
        ({"user": "bob", "state": "offline", "reason": "kicked", "detected_after": None},
         "bob is offline (removed by an operator)"),
        ({"user": "bob", "state": "offline", "reason": "kicked", "by": "a\x1b[2Jl"}, "bob is offline (removed by al)"),
    ],
)
def test_a_kick_names_the_admin(data: dict[str, Any], sentence: str) -> None:
    """The offline line of a kicked user names who removed them, as the floor's line does."""
    assert presence_sentence(data) == sentence
