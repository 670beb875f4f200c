"""
An MQTT command refused for its user's role, on the real core (tests/device_rig.py: a Clock, an
in-memory store, memory backends): L{boatwist.mqtt.device.PipelineOperator} takes it through the one
pipeline, and the result topic's payload (L{boatwist.mqtt.commands.result_payload}) says 403 with the
words the HTTP API answers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from boatwist.mqtt.commands import result_payload
from boatwist.mqtt.device import PipelineOperator
from boatwist.mqtt.interfaces import OperationOutcome
from device_rig import Device


def command(d: Device, user: str, control: str, value: object) -> dict[str, Any]:
    """The result topic's payload for a command run as C{user}."""
    outcomes: list[OperationOutcome] = []
    PipelineOperator(d.core).operate(user, control, value, "mqtt").addCallback(outcomes.append)
    assert outcomes, "the command did not finish"
    return json.loads(result_payload(outcomes[0]))


@pytest.mark.parametrize(("user", "control", "words"), [
    ("carol", "pump", "carol is a viewer: viewers watch and chat, they do not operate"),
    ("alice", "valve", "operating valve needs the admin role; alice is an operator"),
    ("carol", "heater", "carol is a viewer: viewers watch and chat, they do not operate"),
])
def test_a_role_refusal_is_403_in_the_words_of_the_http_api(user: str, control: str, words: str) -> None:
    """
    A viewer's command, and an operator's on an admin control: status 403, refused role, and the error the
    same pipeline gives a request from the HTTP API; the attempt is recorded and broadcast with via mqtt;
    the control does not move.  Role comes before confirmation: the heater (confirm) is 403, not 428.
    """
    d = Device()
    http = d.operate(user, control, True, via="api")
    result = command(d, user, control, True)
    assert (http.status, http.error, http.detail["refused"]) == (403, words, "role")
    assert (result["status"], result["error"], result["refused"]) == (403, words, "role")
    assert "confirm" not in result and "question" not in result
    operation = result["operation"]
    assert (operation["user"], operation["control"], operation["via"], operation["result"], operation["error"]) == \
        (user, control, "mqtt", "error", words)
    [event] = [e for e in d.controls_events() if e["id"] == operation["id"]]
    assert (event["via"], event["refused"], event["error"]) == ("mqtt", "role", words)
    state = d.core.controls.get(control)
    assert state is not None and state.value is False
