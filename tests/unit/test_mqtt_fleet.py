"""
embweb-fleet's model and table (L{boatwist.mqtt.fleet}), without a broker:
messages recorded from a real run are replayed into L{Fleet} -- in the order
they came, and in the orders a broker may deliver them (a late will, the
retained messages a newcomer gets) -- and what the table shows is pinned.

The recording: two daemons (dev-a, dev-b) on one Mosquitto; alice opens an
event stream on dev-a and switches the pump on; bob takes dev-b's floor and
alice's operation there is refused; dev-a is killed with SIGKILL (its will)
and started again (a larger session), bob logs in on it; dev-b is stopped
cleanly.  Only the topics the fleet subscribes to are kept, plus a few it
must ignore.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from boatwist.mqtt.fleet import DeviceView, Fleet, display_width, render_table

A, B = "boatwist/dev-a", "boatwist/dev-b"
#: dev-a's session before the kill, after the restart; dev-b's.
A1, A2, B1 = 1795969368, 1795969369, 1795969369
#: When the recording ended (about); the fleet's clock in these tests.
NOW = 1795969370.0

RECORDED: list[tuple[str, bytes]] = [
    (f"{A}/status", b'{"state":"online","session":1795969368,"at":1795969368.5288854,"device":"dev-a",'
                    b'"version":"0.1.0"}'),
    (f"{A}/presence", b'{"seats":{"used":0,"limit":10},"users":[],"at":1795969368.5290875}'),
    (f"{A}/floor", b'{"mode":"optional","holder":null,"since":null,"requested_by":null,"at":1795969368.5291588}'),
    (f"{A}/controls/pump", b'{"value":false,"quality":"good","changed_by":null,"changed_at":null}'),
    (f"{B}/status", b'{"state":"online","session":1795969369,"at":1795969369.196046,"device":"dev-b",'
                    b'"version":"0.1.0"}'),
    (f"{B}/presence", b'{"seats":{"used":0,"limit":10},"users":[],"at":1795969369.1962745}'),
    (f"{B}/floor", b'{"mode":"optional","holder":null,"since":null,"requested_by":null,"at":1795969369.1963437}'),
    (f"{A}/events/presence", b'{"user":"alice","state":"online","reason":"login","at":1795969369.2045465,'
                             b'"via":"web","event_id":1}'),
    (f"{A}/presence", b'{"seats":{"used":1,"limit":10},"users":[{"user":"alice","state":"online",'
                      b'"since":1795969369.2045465,"connections":0}],"at":1795969369.2048333}'),
    (f"{A}/last_operation", b'{"id":1,"at":1795969369.215317,"user":"alice","control":"pump","old":false,'
                            b'"value":true,"result":"ok","error":null,"via":"web","type":"switch","unit":null,'
                            b'"label":"Coolant pump"}'),
    (f"{B}/presence", b'{"seats":{"used":1,"limit":10},"users":[{"user":"bob","state":"online",'
                      b'"since":1795969369.2235243,"connections":0}],"at":1795969369.2237952}'),
    (f"{B}/floor", b'{"mode":"optional","holder":"bob","since":1795969369.2240796,"requested_by":null,'
                   b'"at":1795969369.224315}'),
    (f"{B}/presence", b'{"seats":{"used":2,"limit":10},"users":[{"user":"alice","state":"online",'
                      b'"since":1795969369.2363832,"connections":0},{"user":"bob","state":"online",'
                      b'"since":1795969369.2235243,"connections":1}],"at":1795969369.2365131}'),
    (f"{B}/last_operation", b'{"id":1,"at":1795969369.2371812,"user":"alice","control":"valve","old":false,'
                            b'"value":true,"result":"error","error":"bob holds the floor: request it",'
                            b'"via":"web","type":"switch","unit":null,"label":"Inlet valve","refused":"floor",'
                            b'"holder":"bob","code":"held"}'),
    (f"{A}/status", b'{"state":"offline","session":1795969368}'),  # the will: kill -9
    (f"{A}/status", b'{"state":"online","session":1795969369,"at":1795969369.88309,"device":"dev-a",'
                    b'"version":"0.1.0"}'),
    (f"{A}/presence", b'{"seats":{"used":0,"limit":10},"users":[],"at":1795969369.8832858}'),
    (f"{A}/floor", b'{"mode":"optional","holder":null,"since":null,"requested_by":null,"at":1795969369.8833554}'),
    (f"{A}/presence", b'{"seats":{"used":1,"limit":10},"users":[{"user":"bob","state":"online",'
                      b'"since":1795969369.8926008,"connections":0}],"at":1795969369.8927443}'),
    (f"{B}/status", b'{"state":"offline","session":1795969369,"at":1795969369.8954911,"reason":"stopped"}'),
]

WILL = RECORDED.index((f"{A}/status", b'{"state":"offline","session":1795969368}'))
RESTARTED = WILL + 1


def replay(messages: list[tuple[str, bytes]], retained: bool = False, now: float = NOW,
           fleet: Fleet | None = None) -> Fleet:
    fleet = fleet or Fleet("boatwist/+")
    for topic, payload in messages:
        fleet.update(topic, payload, retained, now)
    return fleet


def row(table: str, device: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(device))


def cells(line: str) -> list[str]:
    """A table row's cells (columns are two spaces apart at least; no cell is empty)."""
    return re.split(r"\s{2,}", line)


def ago(at: float, now: float = NOW) -> str:
    """How the table writes a time: local, and how long ago."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) + f" ({max(0, int(now - at))}s ago)"


def test_the_recorded_run_ends_with_what_happened() -> None:
    """
    Replayed in the order they came: dev-a up again (its new session, since its restart) with bob, the
    floor free and alice's pump operation (retained from before the kill); dev-b down (stopped, since its
    stop) with alice and bob, bob holding the floor and alice's refused operation.
    """
    fleet = replay(RECORDED)
    a, b = fleet.rows()
    assert (a.prefix, a.state, a.session, a.since, a.reason) == (A, "online", A2, 1795969369.88309, None)
    assert [u["user"] for u in a.operators] == ["bob"] and a.seats == {"used": 1, "limit": 10}
    assert a.floor["holder"] is None and a.last_operation["control"] == "pump"
    assert (b.prefix, b.state, b.session, b.since, b.reason) == (B, "offline", B1, 1795969369.8954911, "stopped")
    assert [u["user"] for u in b.operators] == ["alice", "bob"] and b.floor["holder"] == "bob"

    table = render_table(fleet.rows(), NOW)
    assert table.splitlines()[0].split() == ["DEVICE", "STATUS", "SINCE", "OPERATORS", "FLOOR", "LAST",
                                             "OPERATION"]
    assert cells(row(table, A))[:2] == [A, "up"]
    assert ago(1795969369.88309) in row(table, A)
    assert "1/10 bob" in row(table, A) and " free " in row(table, A)
    assert row(table, A).endswith("alice set pump to on (was off) via web, " + ago(1795969369.215317))
    assert "down (stopped)" in row(table, B) and ago(1795969369.8954911) in row(table, B)
    assert "2/10 alice, bob" in row(table, B)
    assert "alice could not set valve to on: bob holds the floor: request it via web" in row(table, B)


def test_a_late_will_is_ignored() -> None:
    """
    The will of dev-a's killed connection delivered after the restarted one's online (the broker noticed
    the old connection's end late): a lower session than the online already seen, so dev-a stays up --
    whether the online came live or as the retained message a newcomer gets first.
    """
    late = RECORDED[:WILL] + RECORDED[RESTARTED:] + [RECORDED[WILL]]
    fleet = replay(late)
    a = fleet.devices[A]
    assert (a.state, a.session, a.since) == ("online", A2, 1795969369.88309)
    assert fleet.update(*RECORDED[WILL], retained=False, now=NOW) is False

    newcomer = replay([RECORDED[RESTARTED]], retained=True)
    assert newcomer.update(*RECORDED[WILL], retained=False, now=NOW) is False
    assert newcomer.devices[A].state == "online"
    assert "up" in row(render_table(newcomer.rows(), NOW), A)


def test_a_will_is_down_since_it_arrived_or_since_unknown_when_it_was_waiting() -> None:
    """
    A will carries no time: live, the device is down since the message arrived; as a retained message (it
    was there before the fleet looked) since when is unknown, shown as ?.
    """
    live = replay(RECORDED[:RESTARTED], now=NOW - 30)
    assert (live.devices[A].state, live.devices[A].since, live.devices[A].reason) == ("offline", NOW - 30, None)
    assert cells(row(render_table(live.rows(), NOW), A))[1:3] == ["down", ago(NOW - 30)]

    waiting = replay([RECORDED[WILL]], retained=True)
    assert (waiting.devices[A].state, waiting.devices[A].since) == ("offline", None)
    assert re.match(rf"{A}\s+down\s+\?\s", row(render_table(waiting.rows(), NOW), A))


def test_a_connection_that_went_offline_does_not_come_back_online() -> None:
    """
    An online of a session already seen offline (a stale message of the same connection, e.g. retained
    and delivered after the live stop) is ignored; a larger session is a new connection, and up.
    """
    stopped = [m for m in RECORDED if m[0] == f"{B}/status"]
    fleet = replay(stopped)
    assert fleet.update(*stopped[0], retained=True, now=NOW) is False
    assert fleet.devices[B].state == "offline"
    back = json.dumps({"state": "online", "session": B1 + 1, "at": NOW}).encode()
    assert fleet.update(f"{B}/status", back, False, NOW) is True
    assert (fleet.devices[B].state, fleet.devices[B].session, fleet.devices[B].reason) == ("online", B1 + 1, None)


def test_the_operators_column() -> None:
    """Seats used/limit, then each user, unstable ones marked; no presence yet is -; a bare 0/10 when nobody is on."""
    view = DeviceView("p", state="online", seats={"used": 2, "limit": 10},
                      operators=[{"user": "alice", "state": "online"}, {"user": "bob", "state": "unstable"}])
    assert "2/10 alice, bob (unstable)" in render_table([view], NOW)
    assert render_table([DeviceView("p", seats={"used": 0, "limit": 10})], NOW).splitlines()[1].split()[3] == "0/10"
    assert render_table([DeviceView("p")], NOW).splitlines()[1].split()[3] == "-"


@pytest.mark.parametrize(("floor", "shown"), [
    ({}, "?"),
    ({"mode": "off", "holder": None}, "off"),
    ({"mode": "optional", "holder": None}, "free"),
    ({"mode": "required", "holder": "alice", "requested_by": None}, "alice"),
    ({"mode": "required", "holder": "alice", "requested_by": "bob"}, "alice (requested by bob)"),
])
def test_the_floor_column(floor: dict[str, object], shown: str) -> None:
    """Unknown (no floor message yet), off, free, its holder, and who asked for it."""
    line = render_table([DeviceView("p", floor=floor)], NOW).splitlines()[1]
    assert cells(line)[4] == shown


@pytest.mark.parametrize(("operation", "shown"), [
    ({}, "-"),
    ({"user": "alice", "control": "setpoint", "type": "number", "unit": "°C", "old": 20.0, "value": 21.5,
      "result": "ok", "via": "mqtt", "at": NOW - 125},
     "alice set setpoint to 21.5 °C (was 20 °C) via mqtt, " + time.strftime(
         "%Y-%m-%d %H:%M:%S", time.localtime(NOW - 125)) + " (2m ago)"),
    ({"user": "bob", "control": "reset", "type": "action", "value": None, "result": "ok", "via": "chat"},
     "bob pressed reset via chat"),
    ({"user": "bob", "control": "valve", "type": "switch", "value": True, "result": "error",
      "error": "timed out after 2 s", "via": "web"},
     "bob could not set valve to on: timed out after 2 s via web"),
    ({"user": "alice", "control": "pump", "type": "switch", "value": False, "result": "ok", "via": "safe-state",
      "reason": "probes"},
     "pump set to off (safe state: alice is offline, keepalive probes unanswered)"),
])
def test_the_last_operation_reads_as_on_the_chat_port(operation: dict[str, object], shown: str) -> None:
    """The words of boatwist.controls.words (the chat port's), then how it came and when."""
    assert render_table([DeviceView("p", last_operation=operation)], NOW).splitlines()[1].endswith(shown)


def test_times_are_relative_in_the_largest_unit_that_fits() -> None:
    """Seconds below 2 min, minutes below 2 h, hours below 2 days, then days; a time ahead of the clock is 0s."""
    for at, rel in ((NOW - 119, "119s"), (NOW - 120, "2m"), (NOW - 7199, "119m"), (NOW - 7200, "2h"),
                    (NOW - 172800, "2d"), (NOW + 50, "0s")):
        assert f"({rel} ago)" in render_table([DeviceView("p", since=at)], NOW)


@pytest.mark.parametrize("at", [1e300, -1e300, float("nan"), float("inf")])
def test_a_time_no_clock_can_show_is_a_question_mark(at: float) -> None:
    """A broken or hostile payload's time shows as ?, never ends the tool."""
    fleet = replay([(f"{A}/status", json.dumps({"state": "online", "session": 1, "at": at}).encode())])
    fleet.update(f"{A}/last_operation", json.dumps({"user": "x", "control": "pump", "value": True,
                                                    "result": "ok", "at": at}).encode(), False, NOW)
    line = row(render_table(fleet.rows(), NOW), A)
    assert cells(line)[1:3] == ["up", "?"] and line.endswith("x set pump to on")


def test_messages_the_fleet_does_not_read_change_nothing() -> None:
    """
    Other topics (events, controls, another prefix, a deeper level), a cleared retained topic (empty), bytes
    that are not a JSON object (or nested too deeply for Python's parser), and a status without a usable state or session (a bool is no session):
    not taken, and no device appears for them.
    """
    fleet = Fleet("boatwist/+")
    ignored = [
        (f"{A}/events/presence", b'{"user":"alice"}'),
        (f"{A}/controls/pump", b'{"value":true}'),
        ("other/dev-a/status", b'{"state":"online","session":5}'),
        ("boatwist/plant/dev-a/status", b'{"state":"online","session":5}'),
        (f"{A}/status", b""),
        (f"{A}/status", b"online"),
        (f"{A}/status", b'["online", 5]'),
        (f"{A}/status", b"[" * 100000),
        (f"{A}/status", b'{"state":"online"}'),
        (f"{A}/status", b'{"state":"online","session":"5"}'),
        (f"{A}/status", b'{"state":"online","session":true}'),
        (f"{A}/status", b'{"state":"starting","session":5}'),
    ]
    for topic, payload in ignored:
        assert fleet.update(topic, payload, False, NOW) is False, (topic, payload)
    assert all(v.state == "?" for v in fleet.devices.values()) and not fleet.devices.get("other/dev-a")
    assert render_table([], NOW).splitlines()[-1] == "(no device seen)"


def test_a_pattern_of_several_levels() -> None:
    """--topic plant/+/boatwist/+: the filters it subscribes to, and only prefixes of that shape are devices."""
    fleet = Fleet("plant/+/boatwist/+")
    assert fleet.filters == ["plant/+/boatwist/+/status", "plant/+/boatwist/+/presence", "plant/+/boatwist/+/floor",
                             "plant/+/boatwist/+/last_operation"]
    online = b'{"state":"online","session":1,"at":1.0}'
    assert fleet.update("plant/hall-3/boatwist/press-7/status", online, True, NOW)
    assert not fleet.update("plant/hall-3/press-7/status", online, True, NOW)
    assert [v.prefix for v in fleet.rows()] == ["plant/hall-3/boatwist/press-7"]


def test_rows_are_sorted_and_columns_aligned() -> None:
    """One row per device sorted by prefix; every column starts where its header does; JSON has every field."""
    fleet = replay(list(reversed(RECORDED)))
    table = render_table(fleet.rows(), NOW).splitlines()
    assert [line.split()[0] for line in table[1:]] == [A, B]
    for header in ("STATUS", "SINCE", "OPERATORS", "FLOOR", "LAST OPERATION"):
        column = table[0].index(header)
        assert all(line[column - 2:column] == "  " and line[column] != " " for line in table[1:]), header
    assert set(fleet.rows()[0].as_json()) == {"device", "state", "session", "since", "reason", "seats", "operators",
                                              "floor", "last_operation"}


def test_text_from_the_broker_cannot_drive_the_terminal() -> None:
    """
    Anyone who may publish on the broker writes what the table shows: escape sequences and control
    characters in a device's topic, a user's name, the floor holder, a reason or an operation never reach
    the terminal (clearing it, retitling it, moving the cursor); the words around them stay.
    """
    evil = "\x1b[2J\x1b]0;owned\x07\x9b1A\r"
    P = f"boatwist/dev{evil}x"
    fleet = replay([
        (f"{P}/status", json.dumps({"state": "offline", "session": 1, "at": NOW, "reason": f"gone{evil}"}).encode()),
        (f"{P}/presence", json.dumps({"seats": {"used": evil, "limit": 10},
                                      "users": [{"user": f"mallory{evil}", "state": "online"}]}).encode()),
        (f"{P}/floor", json.dumps({"mode": "required", "holder": f"eve{evil}", "requested_by": evil}).encode()),
        (f"{P}/last_operation", json.dumps({"user": evil, "control": f"pump{evil}", "value": evil,
                                            "result": "ok", "via": evil}).encode()),
    ])
    table = render_table(fleet.rows(), NOW)
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", table), repr(table)
    assert "boatwist/dev x" in table and "mallory" in table and "eve" in table and "down (gone" in table


def test_columns_line_up_on_a_terminal_with_wide_and_combining_characters() -> None:
    """
    A device named in CJK (two columns a character on a terminal) or with a
    combining accent (none) does not push the columns after it out of line:
    each row's STATUS starts in the header's column, counted as a terminal
    counts.
    """
    names = ["boatwist/press-7", "boatwist/压力机-7", "boatwist/pre\u0301sse-7"]
    table = render_table([DeviceView(name, state="online") for name in names], NOW).splitlines()

    def column_of(line: str, needle: str) -> int:
        return display_width(line[:line.index(needle)])

    start = column_of(table[0], "STATUS")
    assert [column_of(line, " up") + 1 for line in table[1:]] == [start] * 3, table
    assert display_width("压力机") == 6 and display_width("pre\u0301sse") == 6
