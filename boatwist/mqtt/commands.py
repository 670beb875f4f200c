"""
Commands over MQTT: what a payload on C{…/controls/NAME/set} means, and
what is published on C{…/controls/NAME/result}.  Pure; no I/O.

Accepted payloads (UTF-8):

    {"value": V}            V any JSON value: true, 21.5, "auto", null
    {}                      an action (no value)
    true | 21.5 | "auto"    a bare JSON value
    auto | on               bare text that is not JSON: the text itself
    (empty)                 an action

Everything else gets a result with status 400 and says why -- a command is
never dropped silently.  The value is not checked here: the operation
pipeline validates it (type, range, choices) exactly as for the browser,
and its 400 reaches the result topic the same way.

Results: C{{"status": 200, "operation": {...}}} or C{{"status": S, "error":
TEXT, ...detail}}; 428 (confirmation needed) is reported as refused, since
MQTT has no way to confirm.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from boatwist.mqtt.interfaces import OperationOutcome
from boatwist.mqtt.topics import dumps

__all__ = ["Command", "CommandError", "parse_command", "result_payload", "error_payload", "CONTROL_NAME"]

#: A control's name (DESIGN.md: C{[control:NAME]}, NAME C{[a-z0-9_-]{1,32}}).
CONTROL_NAME = re.compile(r"[a-z0-9_-]{1,32}")

#: Largest command payload looked at; a longer one is refused unread.
MAX_PAYLOAD = 4096


@dataclass(frozen=True)
class Command:
    control: str
    value: object


class CommandError(ValueError):
    """A command payload that means nothing; C{str()} is the text of the 400 result."""


def parse_command(control: str, payload: bytes, retained: bool = False) -> Command:
    """The command C{payload} on C{control}'s set topic carries, or L{CommandError}."""
    if retained:
        # A retained command would run again at every reconnect of the bridge.
        raise CommandError("retained commands are refused: publish commands without the retain flag")
    if len(payload) > MAX_PAYLOAD:
        raise CommandError(f"payload too long ({len(payload)} bytes, at most {MAX_PAYLOAD})")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CommandError('payload is not UTF-8: expected {"value": V} or a bare value') from None
    if not text:
        return Command(control, None)
    try:
        decoded = json.loads(text)
    except RecursionError:  # [[[[... nested past Python's limit: 4 KB is enough
        raise CommandError('payload nested too deeply: expected {"value": V} or a bare value') from None
    except ValueError:
        if text[0] in "{[\"":
            raise CommandError('payload is not valid JSON: expected {"value": V} or a bare value') from None
        return Command(control, text)
    if isinstance(decoded, dict):
        unknown = sorted(set(decoded) - {"value"})
        if unknown:
            raise CommandError(f'unexpected key {unknown[0]!r}: expected {{"value": V}}')
        return Command(control, decoded.get("value"))
    if isinstance(decoded, list):
        raise CommandError('a list is no value: expected {"value": V} or a bare value')
    return Command(control, decoded)


def error_payload(status: int, error: str) -> bytes:
    return dumps({"status": status, "error": error})


def result_payload(outcome: OperationOutcome) -> bytes:
    """What the result topic says about an outcome of the pipeline."""
    if outcome.status == 428:
        return error_payload(428, "this control needs a confirmation, which cannot be given over MQTT")
    body: dict[str, object] = {k: v for k, v in outcome.detail.items() if k not in ("confirm", "token")}
    body["status"] = outcome.status
    if outcome.operation is not None:
        body["operation"] = dict(outcome.operation)
    if outcome.error is not None:
        body["error"] = outcome.error
    return dumps(body)
