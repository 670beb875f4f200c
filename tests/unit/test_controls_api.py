"""
/api/controls, /api/operations, /api/floor, /api/kick and /api/reasons, served
by a real twisted.web Site behind the real tracker, fed raw HTTP on a
StringTransport; the device is tests/device_rig.py's (a real core on a Clock).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.server import Site

from boatwist.presence import Kind
from boatwist.reasons import WORDS
from boatwist.web.resources import OperatorRoot
from device_rig import Device

PEER = IPv4Address("TCP", "10.0.0.7", 52000)


def call(d: Device, user: str, method: bytes, path: bytes, body: Any = None,
         headers: bytes = b"") -> tuple[int, dict[bytes, bytes], Any]:
    """One request as user: status, headers, the JSON body."""
    factory = d.core.tracker.wrap(Site(OperatorRoot(d.core, user), reactor=d.clock), Kind.HTTP)
    proto = factory.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    proto.makeConnection(transport)
    raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    content = b"Content-Type: application/json\r\n" if body is not None else b""
    proto.dataReceived(method + b" " + path + b" HTTP/1.0\r\nHost: device\r\n" + content + headers
                       + b"Content-Length: %d\r\n\r\n" % len(raw) + raw)
    head, _, rest = transport.value().partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parsed = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    return int(lines[0].split(b" ")[1]), parsed, json.loads(rest) if rest else None


def test_list_names_every_control_with_its_value_quality_and_the_users_rights() -> None:
    """GET /api/controls: DESIGN.md's fields, the floor and the user's role; writable per user."""
    d = Device()
    status, _, body = call(d, "carol", b"GET", b"/api/controls")
    assert status == 200
    assert body["role"] == "viewer"
    assert body["floor"]["mode"] == "optional"
    pump = body["controls"][0]
    for key in ("name", "label", "type", "unit", "min", "max", "step", "choices", "value", "quality",
                "changed_at", "changed_by", "writable"):
        assert key in pump
    assert (pump["name"], pump["value"], pump["quality"], pump["writable"]) == ("pump", False, "good", False)
    _, _, mine = call(d, "alice", b"GET", b"/api/controls")
    assert {c["name"]: c["writable"] for c in mine["controls"]}["valve"] is False  # role = admin
    assert {c["name"]: c["writable"] for c in mine["controls"]}["pump"] is True


def test_the_listing_is_what_each_control_shows_now_and_to_whom() -> None:
    """
    Each control's JSON is kept encoded between requests: a change of value
    (also of type only: 1 after true), of who changed it, of quality, or
    another user's rights is in the very next listing, and a listing
    encodes exactly what describe() says.
    """
    d = Device()

    def listing(user: str) -> dict[str, Any]:
        status, _, body = call(d, user, b"GET", b"/api/controls")
        assert status == 200
        return {c["name"]: c for c in body["controls"]}

    first = listing("alice")
    assert first["pump"] == d.core.controls.describe(d.core.controls.get("pump"), "alice", d.core.roles)
    assert (first["pump"]["value"], first["pump"]["writable"]) == (False, True)
    assert listing("carol")["pump"]["writable"] is False and listing("alice")["pump"]["writable"] is True
    outcome = d.operate("alice", "pump", True)
    assert outcome.ok
    after = listing("alice")["pump"]
    assert (after["value"], after["changed_by"]) == (True, "alice")
    state = d.core.controls.get("pump")
    state.value = 1  # equal to True, but not the same JSON
    assert json.dumps(listing("alice")["pump"]["value"]) == "1"
    state.error, state.quality = "gone", type(state.quality)("error")
    assert (listing("alice")["pump"]["quality"], listing("alice")["pump"]["error"]) == ("error", "gone")


def test_post_operates_and_answers_the_operation() -> None:
    """POST {"value": true}: 200 with the operation, via api (no Sec-Fetch-Mode)."""
    d = Device()
    status, _, body = call(d, "alice", b"POST", b"/api/controls/pump", {"value": True})
    assert status == 200
    assert (body["operation"]["value"], body["operation"]["via"], body["operation"]["old"]) == (True, "api", False)
    status, _, body = call(d, "alice", b"POST", b"/api/controls/pump", {"value": False},
                           headers=b"Sec-Fetch-Mode: cors\r\n")
    assert body["operation"]["via"] == "web"


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid UTF-8 JSON"),
    (b"[1]", 400, "a JSON object"),
    ({"value": "warm"}, 400, "on or off"),
    ({"value": True, "confirm": 7}, 400, "token"),
])
def test_bad_requests_say_what_was_wrong(body: Any, status: int, words: str) -> None:
    """Every bad input is JSON naming what was wrong and what is allowed."""
    d = Device()
    got, _, answer = call(d, "alice", b"POST", b"/api/controls/pump", body)
    assert got == status and words in answer["error"]


def test_unknown_control_is_404_and_a_sensor_is_not_operated() -> None:
    """404 lists the controls."""
    d = Device()
    status, _, body = call(d, "alice", b"POST", b"/api/controls/nope", {"value": 1})
    assert status == 404 and "pump" in body["error"]
    status, _, body = call(d, "alice", b"GET", b"/api/controls/nope")
    assert status == 404


def test_confirmation_flow_over_http() -> None:
    """428 with confirm and question; the same POST with the token is 200."""
    d = Device()
    status, _, asked = call(d, "alice", b"POST", b"/api/controls/heater", {"value": True})
    assert status == 428 and asked["question"] == "Really switch the heater?"
    status, _, done = call(d, "alice", b"POST", b"/api/controls/heater", {"value": True, "confirm": asked["confirm"]})
    assert status == 200 and done["operation"]["value"] is True


def test_an_action_takes_no_body() -> None:
    """POST with no body at all presses the button."""
    d = Device()
    status, _, body = call(d, "alice", b"POST", b"/api/controls/reset")
    assert status == 200 and body["operation"]["type"] == "action"


def test_floor_take_request_release_and_break() -> None:
    """POST takes a free floor, requests a held one (409 for a second request); DELETE releases or breaks."""
    d = Device()
    status, _, floor = call(d, "alice", b"POST", b"/api/floor")
    assert status == 200 and floor["holder"] == "alice"
    status, _, floor = call(d, "bob", b"POST", b"/api/floor", {"message": "may I?"})
    assert status == 200 and floor["requested_by"] == "bob"
    status, _, refused = call(d, "carol", b"POST", b"/api/floor")
    assert status == 403 and refused["code"] == "role"
    status, _, body = call(d, "alice", b"POST", b"/api/controls/pump", {"value": True})
    assert status == 200
    status, _, body = call(d, "bob", b"POST", b"/api/controls/pump", {"value": False})
    assert status == 409 and body["holder"] == "alice"
    status, _, floor = call(d, "root", b"DELETE", b"/api/floor")
    assert status == 200 and floor["holder"] is None
    status, _, body = call(d, "bob", b"DELETE", b"/api/floor")
    assert status == 409


def test_kick_needs_an_admin_and_an_online_user() -> None:
    """403 for an operator, 404 for someone offline, 200 for an admin kicking an online user."""
    d = Device()
    d.online("bob")
    assert call(d, "alice", b"POST", b"/api/kick", {"user": "bob"})[0] == 403
    assert call(d, "root", b"POST", b"/api/kick", {"user": "nobody"})[0] == 404
    status, _, body = call(d, "root", b"POST", b"/api/kick", {"user": "bob"})
    assert status == 200 and body == {"kicked": "bob", "by": "root"}


def test_operations_history_pages_newest_last() -> None:
    """GET /api/operations: what was done, oldest first in the page; limit and before page back."""
    d = Device()
    for value in (True, False, True):
        call(d, "alice", b"POST", b"/api/controls/pump", {"value": value})
    status, _, body = call(d, "alice", b"GET", b"/api/operations?limit=2")
    assert status == 200 and [o["id"] for o in body["operations"]] == [2, 3]
    _, _, body = call(d, "alice", b"GET", b"/api/operations?before=2")
    assert [o["id"] for o in body["operations"]] == [1]
    assert call(d, "alice", b"GET", b"/api/operations?limit=x")[0] == 400


def test_reasons_are_served_for_the_browser() -> None:
    """GET /api/reasons: the same words the chat port uses."""
    status, _, body = call(Device(), "alice", b"GET", b"/api/reasons")
    assert status == 200 and body["reasons"] == dict(WORDS)
