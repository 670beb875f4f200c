"""
Who may operate, through the real daemon: roles (403), the floor (409),
confirmation (428) and kicking, with curl operating and other users' event
streams watching.

Issue 11's promise pinned here: the server refuses -- whatever client asks --
a viewer, a non-holder of a held floor, and a dangerous operation without a
fresh token bound to the user, control and value; every refusal by role,
floor or confirmation is recorded and seen by everyone (everyone sees that
carol tried); an admin's kick closes the user's streams with reason
``kicked`` and frees their floor, which sets the safe values.

The expiry of a confirmation (15 s) is pinned with a Clock in
``tests/unit/test_pipeline.py``, not by waiting here.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator

import pytest
from control_clients import Watch, curl, ops_of, require_curl

from daemon import Daemon

pytestmark = pytest.mark.integration

USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw"}

CONTROLS = """
[control:pump]
type = switch
label = Coolant pump
backend = memory
initial = off
safe_value = off

[control:heater]
type = switch
backend = memory
initial = off
confirm = Turn the heater on or off?

[control:setpoint]
type = number
backend = memory
min = 5
max = 90
initial = 20
"""


def config(mode: str) -> str:
    return f"""
[roles]
default = operator
viewer = carol
admin = alice
[floor]
mode = {mode}
idle_release = 0
[chat]
rate_messages = 1000
rate_period = 1
{CONTROLS}"""


@pytest.fixture
def streams() -> Iterator[list[Watch]]:
    opened: list[Watch] = []
    yield opened
    for w in opened:
        w.close()


@pytest.fixture
def device(make_daemon: Callable[..., Daemon], streams: list[Watch]) -> Callable[[str], Daemon]:
    """``device(mode)``: a daemon with ``[floor] mode``; carol a viewer, alice an admin."""
    require_curl()

    def start(mode: str) -> Daemon:
        return make_daemon(config(mode), users=USERS).start()

    return start


def watch(d: Daemon, user: str, streams: list[Watch]) -> Watch:
    # Its 200 came after the server admitted the user: online, and subscribed to every later event.
    w = Watch(d, user)
    streams.append(w)
    return w


def history(d: Daemon) -> list[dict]:
    return d.get_json("/api/operations", "alice")["operations"]


# ------------------------------------------------------------------ roles


def test_viewer_gets_403_and_everyone_sees_the_attempt(device: Any, streams: list[Watch]) -> None:
    """
    carol, a viewer, sets the pump with curl: 403 saying she is a viewer;
    the pump does not move; the refusal is recorded and reaches bob's
    stream as a ``control`` event with result error and ``refused: role``.
    ``/api/controls`` tells her role and that nothing is writable for her,
    and she cannot take the floor (403).
    """
    d = device("optional")
    bob = watch(d, "bob", streams)
    status, body = curl(d, "POST", "/api/controls/pump", "carol", '{"value": true}')
    assert status == 403, body
    assert "viewer" in body["error"], body
    assert body["refused"] == "role", body
    op = body["operation"]
    assert (op["user"], op["result"], op["old"], op["value"], op["error"]) == \
        ("carol", "error", False, True, body["error"]), op
    event = bob.wait(ops_of("pump", id=op["id"]))
    assert (event["user"], event["result"], event["refused"], event["error"]) == \
        ("carol", "error", "role", body["error"]), event
    assert history(d)[-1]["id"] == op["id"] and history(d)[-1]["result"] == "error"
    assert d.get_json("/api/controls/pump", "alice")["value"] is False
    mine = d.get_json("/api/controls", "carol")
    assert mine["role"] == "viewer"
    assert [c["writable"] for c in mine["controls"]] == [False, False, False], mine["controls"]
    status, body = curl(d, "POST", "/api/floor", "carol")
    assert status == 403 and "viewer" in body["error"], body


# ------------------------------------------------------------------ the floor


def test_non_holder_gets_409_naming_the_holder(device: Any, streams: list[Watch]) -> None:
    """
    ``[floor] mode = optional``: bob operates while nobody holds the floor;
    alice takes it (everyone sees ``floor`` ``taken``); bob then gets 409
    naming alice as the holder, recorded and broadcast with ``refused:
    floor``; alice operates (200); she releases it and bob operates again.
    """
    d = device("optional")
    dave = watch(d, "dave", streams)
    alice = watch(d, "alice", streams)  # the holder is online through her stream
    status, body = curl(d, "POST", "/api/controls/setpoint", "bob", '{"value": 30}')
    assert status == 200, body
    status, body = curl(d, "POST", "/api/floor", "alice")
    assert status == 200 and body["holder"] == "alice", body
    taken = dave.wait(lambda k, e: k == "floor" and e["state"] == "taken")
    assert (taken["user"], taken["holder"]) == ("alice", "alice"), taken

    status, body = curl(d, "POST", "/api/controls/setpoint", "bob", '{"value": 40}')
    assert status == 409, body
    assert body["holder"] == "alice" and "alice holds the floor" in body["error"], body
    assert body["refused"] == "floor", body
    event = dave.wait(ops_of("setpoint", id=body["operation"]["id"]))
    assert (event["user"], event["result"], event["refused"], event["holder"]) == ("bob", "error", "floor", "alice")
    assert d.get_json("/api/controls/setpoint", "alice")["value"] == 30.0

    status, body = curl(d, "POST", "/api/controls/setpoint", "alice", '{"value": 50}')
    assert status == 200 and body["operation"]["old"] == 30.0, body
    status, body = curl(d, "DELETE", "/api/floor", "alice")
    assert status == 200 and body["holder"] is None, body
    released = dave.wait(lambda k, e: k == "floor" and e["state"] == "released")
    assert (released["user"], released["reason"], released["safe"]) == ("alice", "released", False), released
    status, body = curl(d, "POST", "/api/controls/setpoint", "bob", '{"value": 60}')
    assert status == 200, body
    alice.close()


def test_required_floor_refuses_everyone_until_they_take_it(device: Any, streams: list[Watch]) -> None:
    """
    ``[floor] mode = required``: with the floor free, bob's operation is a 409
    telling him to take the floor first; once alice holds it, bob's names
    her; bob asking for it (``POST /api/floor``) is shown to everyone as
    ``requested``.
    """
    d = device("required")
    dave = watch(d, "dave", streams)
    watch(d, "alice", streams)
    status, body = curl(d, "POST", "/api/controls/pump", "bob", '{"value": true}')
    assert status == 409, body
    assert "take the floor first" in body["error"] and body["holder"] is None, body
    curl(d, "POST", "/api/floor", "alice")
    status, body = curl(d, "POST", "/api/controls/pump", "bob", '{"value": true}')
    assert status == 409 and body["holder"] == "alice", body
    status, body = curl(d, "POST", "/api/floor", "bob", json.dumps({"message": "may I?"}))
    assert status == 200 and body["requested_by"] == "bob", body
    asked = dave.wait(lambda k, e: k == "floor" and e["state"] == "requested")
    assert (asked["user"], asked["holder"], asked["message"]) == ("bob", "alice", "may I?"), asked


# ------------------------------------------------------------------ confirmation


def test_confirmation_flow_with_curl(device: Any, streams: list[Watch]) -> None:
    """
    The heater asks first: POST → 428 with the question and a token (nothing
    operated, nothing broadcast: a question is not a refusal); a token used
    by another user, or for another value, → 428 asking again, and -- like a
    role or floor refusal -- recorded and broadcast with ``refused:
    confirm`` and its code, never with a token; the same POST with the
    token → 200 and the operation everyone sees; the token replayed → 428
    "already used" with a fresh token, broadcast too.  The heater moves only
    once.
    """
    d = device("off")
    dave = watch(d, "dave", streams)
    mark = dave.mark()
    status, body = curl(d, "POST", "/api/controls/heater", "bob", '{"value": true}')
    assert status == 428, body
    assert body["question"] == "Turn the heater on or off?", body
    assert body["error"] == "confirmation needed" and 0 < body["expires_in"] <= 15, body
    token = body["confirm"]
    assert isinstance(token, str) and len(token) >= 20, token
    assert "operation" not in body and "refused" not in body, body
    assert history(d) == []

    # Another user, or another value, with bob's token: refused, seen by everyone; the heater stays off.
    refusals = []
    for user, value, code, words in (("dave", True, "wrong-user", "another user"),
                                     ("bob", False, "wrong-value", "not off")):
        status, other = curl(d, "POST", "/api/controls/heater", user, json.dumps({"value": value, "confirm": token}))
        assert status == 428 and words in other["error"], other
        assert (other["refused"], other["code"]) == ("confirm", code), other
        assert other["confirm"] != token, other
        event = dave.wait(ops_of("heater", id=other["operation"]["id"]), since=mark)
        assert (event["user"], event["value"], event["result"], event["refused"], event["code"], event["error"]) == \
            (user, value, "error", "confirm", code, other["error"]), event
        refusals.append(event["id"])
    assert [(o["id"], o["result"]) for o in history(d)] == [(i, "error") for i in refusals]
    assert d.get_json("/api/controls/heater", "alice")["value"] is False

    status, body = curl(d, "POST", "/api/controls/heater", "bob", json.dumps({"value": True, "confirm": token}))
    assert status == 200, body
    op = body["operation"]
    assert (op["user"], op["old"], op["value"], op["result"]) == ("bob", False, True, "ok"), op
    dave.wait(ops_of("heater", id=op["id"]), since=mark)

    status, again = curl(d, "POST", "/api/controls/heater", "bob", json.dumps({"value": True, "confirm": token}))
    assert status == 428, again
    assert "already used" in again["error"] and again["confirm"] != token, again
    assert (again["refused"], again["code"]) == ("confirm", "used"), again
    dave.wait(ops_of("heater", id=again["operation"]["id"]), since=mark)
    seen = dave.of_kind("control", mark)
    assert [(e["id"], e["result"]) for e in seen] == \
        [(refusals[0], "error"), (refusals[1], "error"), (op["id"], "ok"), (again["operation"]["id"], "error")]
    assert not any(token in json.dumps(e) or "confirm" in e for e in seen), "no token is ever broadcast"
    assert [o["result"] for o in history(d)] == ["error", "error", "ok", "error"]


# ------------------------------------------------------------------ kick


def test_admin_kick_closes_the_stream_frees_the_floor_and_sets_the_safe_value(device: Any,
                                                                              streams: list[Watch]) -> None:
    """
    bob holds the floor and an event stream and has switched the pump on;
    alice (admin) kicks him with ``POST /api/kick``: bob's stream is closed,
    and dave's stream gets, in this order, bob offline (reason ``kicked``, by
    alice), the floor ``lost`` (reason ``kicked``), and the pump set to off
    with via ``safe-state``.  A non-admin's kick is 403 and kicks nobody; a
    kick of someone not online is 404.
    """
    d = device("optional")
    dave = watch(d, "dave", streams)
    bob = watch(d, "bob", streams)
    assert curl(d, "POST", "/api/floor", "bob")[0] == 200
    status, body = curl(d, "POST", "/api/controls/pump", "bob", '{"value": true}')
    assert status == 200, body

    status, body = curl(d, "POST", "/api/kick", "dave", json.dumps({"user": "bob"}))
    assert status == 403 and "not an admin" in body["error"], body
    assert d.get_json("/api/floor", "alice")["holder"] == "bob"

    mark = dave.mark()
    status, body = curl(d, "POST", "/api/kick", "alice", json.dumps({"user": "bob"}))
    assert status == 200 and body == {"kicked": "bob", "by": "alice"}, body
    bob.wait_ended(timeout=5)
    gone = dave.wait_index(lambda k, e: k == "presence" and e["user"] == "bob" and e["state"] == "offline",
                           since=mark)
    lost = dave.wait_index(lambda k, e: k == "floor" and e["state"] == "lost", since=mark)
    safe = dave.wait_index(ops_of("pump", via="safe-state"), since=mark)
    assert gone < lost < safe, dave.dump(mark)
    offline, floor, op = (dave.events[i][1] for i in (gone, lost, safe))
    assert (offline["reason"], offline.get("by")) == ("kicked", "alice"), offline
    assert (floor["user"], floor["holder"], floor["reason"], floor["by"], floor["safe"]) == \
        ("bob", None, "kicked", "alice", True), floor
    assert (op["user"], op["old"], op["value"], op["result"], op["reason"]) == ("bob", True, False, "ok", "kicked"), op
    assert d.get_json("/api/controls/pump", "alice")["value"] is False
    assert history(d)[-1]["via"] == "safe-state"
    status, body = curl(d, "POST", "/api/kick", "alice", json.dumps({"user": "bob"}))
    assert status == 404 and "not online" in body["error"], body


# ------------------------------------------------------------------ mode off


def test_floor_off_the_last_operator_leaving_sets_the_safe_value(device: Any, streams: list[Watch]) -> None:
    """
    ``[floor] mode = off``: bob, whose only persistent connection is his
    event stream, switches the pump on and then closes the stream (his
    curl requests came before, so nothing keeps him online): dave sees bob
    offline (``closed``) and then the pump set off by ``safe-state``; the
    set-point he also changed has no safe value and is left alone.
    """
    d = device("off")
    dave = watch(d, "dave", streams)
    bob = Watch(d, "bob")
    status, body = curl(d, "POST", "/api/controls/pump", "bob", '{"value": true}')
    assert status == 200, body
    status, body = curl(d, "POST", "/api/controls/setpoint", "bob", '{"value": 30}')
    assert status == 200, body
    mark = dave.mark()
    bob.close()
    gone = dave.wait_index(lambda k, e: k == "presence" and e["user"] == "bob" and e["state"] == "offline",
                           since=mark)
    safe = dave.wait_index(ops_of("pump", via="safe-state"), since=mark)
    assert gone < safe, dave.dump(mark)
    assert dave.events[gone][1]["reason"] == "closed"
    op = dave.events[safe][1]
    assert (op["user"], op["old"], op["value"], op["reason"]) == ("bob", True, False, "closed"), op
    assert [e["control"] for e in dave.of_kind("control", mark)] == ["pump"], dave.dump(mark)
    assert d.get_json("/api/controls/setpoint", "alice")["value"] == 30.0
