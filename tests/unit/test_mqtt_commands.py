"""Command payloads on …/set: what each means, and a clear 400 for what means nothing."""

from __future__ import annotations

import json

import pytest

from boatwist.mqtt.commands import Command, CommandError, parse_command, result_payload
from boatwist.mqtt.interfaces import OperationOutcome


@pytest.mark.parametrize("payload, value", [
    (b'{"value": true}', True),
    (b'{"value": 21.5}', 21.5),
    (b'{"value": "auto"}', "auto"),
    (b'{"value": null}', None),
    (b"{}", None),
    (b"", None),
    (b"true", True),
    (b"21.5", 21.5),
    (b'"manual"', "manual"),
    (b"auto", "auto"),
    (b" on \n", "on"),
])
def test_accepted_payloads(payload: bytes, value: object) -> None:
    """{"value": V}, a bare JSON value, bare text, or nothing (an action)."""
    assert parse_command("pump", payload) == Command("pump", value)


@pytest.mark.parametrize("payload, words", [
    (b"\xff\xfe", "not UTF-8"),
    (b'{"value": 1', "not valid JSON"),
    (b'{"valeu": 1}', "unexpected key 'valeu'"),
    (b"[1, 2]", "a list is no value"),
    (b"x" * 5000, "too long"),
    (b"[" * 4096, "nested too deeply"),
    (b'{"value": ' + b"[" * 4000, "nested too deeply"),
])
def test_malformed_payloads_say_why(payload: bytes, words: str) -> None:
    """Nothing is dropped silently: each refusal carries its reason."""
    with pytest.raises(CommandError) as info:
        parse_command("pump", payload)
    assert words in str(info.value)


def test_retained_commands_are_refused() -> None:
    """A retained set message would run again at every reconnect: refused."""
    with pytest.raises(CommandError, match="retained"):
        parse_command("pump", b"true", retained=True)


def test_results() -> None:
    """200 carries the operation; refusals their status, error and detail; 428 says MQTT cannot confirm."""
    ok = json.loads(result_payload(OperationOutcome(200, {"id": 3, "result": "ok"})))
    assert ok == {"status": 200, "operation": {"id": 3, "result": "ok"}}
    held = json.loads(result_payload(OperationOutcome(409, None, "the floor is held by alice", {"holder": "alice"})))
    assert held == {"status": 409, "error": "the floor is held by alice", "holder": "alice"}
    confirm = json.loads(result_payload(OperationOutcome(428, None, "Really?", {"confirm": "tok"})))
    assert confirm["status"] == 428 and "cannot be given over MQTT" in confirm["error"] and "tok" not in str(confirm)
