"""
The device on the chat port, against the real daemon: real ``nc`` sessions
read every operation as the one line DESIGN.md promises, and operate the
device with ``/set``, ``/floor``, ``/yes`` and ``/kick``, next to curl and
browsers' event streams on the HTTP side.

Issue 10's half (one shared daemon, ``[floor] mode = off``, the controls of
``test_controls.py``): an operation made with curl, a browser's fetch or an
``nc`` is one line on every ``nc``, and an ``nc``'s ``/set`` reaches the
event streams with via ``chat``; failed and timed-out commands are lines
too; a bad ``/set`` is one ``error:`` line to the typist alone, worded as
the HTTP answer to the same request.

Issue 11's half (a daemon per test, the roles and controls of
``test_controls_access.py``): a viewer's ``/set``, the floor driven from
``nc``, ``/yes`` answering only the chat port's own question, an admin's
``/kick`` followed by the safe value, and with ``[floor] mode = off`` the
safe value after the last operator left.

"Nothing else was said" is shown with a fence, never a sleep: ``/ping TAG``
is answered ``PONG TAG`` by the session in order after everything the
earlier lines caused, so what arrived between a command and its fence's
``PONG`` is all it caused; another user's fence is a chat message, which
reaches everyone through the same store commit and broadcast an operation
would have gone through.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from control_clients import Watch, curl, ops_of, require_curl
from test_chat_port import Terminal, login, nc
from test_controls import HANG_TIMEOUT
from test_controls import config as device_config
from test_controls_access import USERS as ACCESS_USERS
from test_controls_access import config as access_config

from daemon import Daemon

pytestmark = pytest.mark.integration

USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw"}


# ------------------------------------------------------------------ tools


@pytest.fixture
def clients() -> Iterator[Callable[..., Any]]:
    """``clients(Kind, *args)``: start a client (a Terminal); every one is stopped in teardown, even on failure."""
    opened: list[Any] = []

    def start(kind: Any, *args: Any, **kw: Any) -> Any:
        client = kind(*args, **kw)
        opened.append(client)
        return client

    yield start
    for client in reversed(opened):
        try:
            client.close()
        except Exception:  # noqa: BLE001 - teardown must stop the rest
            pass


def chat(clients: Callable[..., Any], d: Daemon, user: str) -> Terminal:
    """
    A real ``nc`` logged in as C{user} (online from the welcome on), past
    the chat history shown after the welcome; stopped in teardown.

    The history is asked for over HTTP first, and that round trip through
    the reactor is also a barrier: clients the previous test closed (their
    FIN came first) have been heard gone, so their offline lines are not
    read by this terminal.
    """
    said = d.get_json("/api/chat?limit=1", "alice")["messages"]
    term = clients(Terminal, nc(d))
    login(term, user, d.users[user])
    if said:
        term.expect_line("-- end of history --")
    return term


_fences = iter(range(1, 1_000_000))


def fence(term: Terminal) -> list[str]:
    """
    The whole lines C{term} receives from where reading stands up to the
    answer of a ``/ping`` sent now -- everything the earlier lines of this
    session have caused, since the session answers in order -- without the
    ``PONG`` line itself.
    """
    tag = f"fence-{next(_fences)}"
    start = term.mark()
    term.send(f"/ping {tag}\n")
    term.expect_line(f"PONG {tag}")
    text = term.transcript[start:term.mark()].decode("utf-8")
    lines = text.split("\r\n")
    assert lines[-2:] == [f"PONG {tag}", ""], text
    return lines[:-2]


def said_fence(term: Terminal, by: Terminal, by_user: str) -> list[str]:
    """
    The lines C{term} receives before a chat message C{by} (logged in as
    C{by_user}) says now: what the room broadcast to C{term} before it.
    C{by} reads its own message too (consumed here).
    """
    tag = f"fence-{next(_fences)}"
    start = term.mark()
    by.send(f"{tag}\n")
    term.expect_line(f"<{by_user}> {tag}")
    by.expect_line(f"<{by_user}> {tag}")
    text = term.transcript[start:term.mark()].decode("utf-8")
    lines = text.split("\r\n")
    assert lines[-2:] == [f"<{by_user}> {tag}", ""], text
    return lines[:-2]


def number(value: float, unit: str) -> str:
    """A number as the chat port shows it (boatwist.controls.words.format_value)."""
    return f"{value:.6g} {unit}"


# ------------------------------------------------- issue 10: one shared daemon


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("device")
    (where / "lamp").write_text("off\n")
    (where / "level").write_text("12.5\n")
    return where


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, files: Path) -> Iterator[Daemon]:
    require_curl()
    # Users seen only through curl stay online for the whole module: no "offline (idle)" line
    # at the end of http_grace can fall into another test's fence on a slow machine.
    config = device_config(files) + "[admission]\nhttp_grace = 3600\n"
    d = Daemon(tmp_path_factory.mktemp("controls-chat"), config=config, users=USERS)
    try:
        d.start()
        yield d
    finally:
        d.stop()


@pytest.fixture
def watch(shared: Daemon) -> Iterator[Callable[[str], Watch]]:
    """``watch(user)``: an event stream of C{user}, closed at the end of the test."""
    opened: list[Watch] = []

    def open_(user: str) -> Watch:
        w = Watch(shared, user)
        opened.append(w)
        return w

    yield open_
    for w in opened:
        w.close()


def value_of(d: Daemon, name: str) -> Any:
    return d.get_json(f"/api/controls/{name}", "alice")["value"]


def operations(d: Daemon) -> list[dict]:
    return d.get_json("/api/operations?limit=500", "alice")["operations"]


BROWSER = ("Sec-Fetch-Mode: cors", "Sec-Fetch-Site: same-origin", "Sec-Fetch-Dest: empty")


def test_curl_and_browser_operations_are_lines_on_nc(shared: Daemon, clients: Any) -> None:
    """
    dave, logged in with nc, reads alice's curl operation as
    ``* alice set pump to on (was off)`` and carol's browser fetch
    (``Sec-Fetch-Mode``) as ``* carol set setpoint to 42.5 °C (was 20 °C)``:
    the unit is shown, the old value too.  The line reaches dave within 1 s
    of the POST.
    """
    dave = chat(clients, shared, "dave")
    assert value_of(shared, "pump") is False
    started = time.monotonic()
    status, body = curl(shared, "POST", "/api/controls/pump", "alice", '{"value": true}')
    assert status == 200, body
    arrived = dave.expect_line("* alice set pump to on (was off)")
    assert arrived - started < 1.0, arrived - started

    old = value_of(shared, "setpoint")
    status, body = curl(shared, "POST", "/api/controls/setpoint", "carol", '{"value": 42.5}', headers=BROWSER)
    assert status == 200 and body["operation"]["via"] == "web", body
    dave.expect_line(f"* carol set setpoint to 42.5 °C (was {number(old, '°C')})")

    status, body = curl(shared, "POST", "/api/controls/pump", "alice", '{"value": false}')
    assert status == 200, body
    assert fence(dave) == ["* alice set pump to off (was on)"]


def test_set_typed_in_nc_reaches_event_streams_and_every_nc(shared: Daemon, clients: Any, watch: Any) -> None:
    """
    alice types ``/set pump on`` in nc: bob's HTTP event stream gets the
    ``control`` event (user alice, old false, value true, via ``chat``,
    result ok); dave's nc and alice's own read
    ``* alice set pump to on (was off)`` -- alice that one line and nothing
    more (a success says nothing else to the typist); ``/api/controls``
    shows it changed by alice, and ``/controls`` in dave's nc lists it.
    """
    bob = watch("bob")
    dave = chat(clients, shared, "dave")
    alice = chat(clients, shared, "alice")
    assert value_of(shared, "pump") is False
    alice.send("/set pump on\n")
    event = bob.wait(ops_of("pump", user="alice", value=True))
    assert (event["old"], event["via"], event["result"], event["error"]) == (False, "chat", "ok", None), event
    line = "* alice set pump to on (was off)"
    dave.expect_line(line)
    assert fence(alice) == [line]
    assert fence(dave) == []
    pump = shared.get_json("/api/controls/pump", "bob")
    assert (pump["value"], pump["changed_by"]) == (True, "alice"), pump
    assert operations(shared)[-1]["via"] == "chat"

    listing = [line for line in _command(dave, "/controls") if line.lstrip().startswith("pump ")]
    assert len(listing) == 1 and re.fullmatch(r"  pump +on +good +set by alice at \d\d:\d\d:\d\d", listing[0]), \
        listing
    alice.send("/set pump off\n")
    dave.expect_line("* alice set pump to off (was on)")


def _command(term: Terminal, line: str) -> list[str]:
    """What C{line} typed in C{term} answers, up to a fence."""
    term.send(line + "\n")
    return fence(term)


def test_actions_from_curl_and_nc(shared: Daemon, clients: Any, watch: Any) -> None:
    """
    A button: alice's empty curl POST is ``* alice pressed reset`` on dave's
    nc; dave's ``/set reset`` runs it too (bob's stream: via ``chat``,
    value null) and everyone reads ``* dave pressed reset``.
    """
    bob = watch("bob")
    dave = chat(clients, shared, "dave")
    status, body = curl(shared, "POST", "/api/controls/reset", "alice")
    assert status == 200, body
    dave.expect_line("* alice pressed reset")
    dave.send("/set reset\n")
    event = bob.wait(ops_of("reset", user="dave"))
    assert (event["via"], event["value"], event["result"]) == ("chat", None, "ok"), event
    assert fence(dave) == ["* dave pressed reset"]


def test_failing_command_is_one_line_for_everyone(shared: Daemon, clients: Any) -> None:
    """
    A write command that exits 3, run by alice's curl: dave's nc reads
    ``* alice could not set valve to on: exit status 3: valve jammed at 40 %``
    (stderr's first line only).  The same from dave's nc: he reads the
    failure once, as everyone does -- no extra ``error:`` line for him.
    """
    dave = chat(clients, shared, "dave")
    status, body = curl(shared, "POST", "/api/controls/valve", "alice", '{"value": true}')
    assert status == 502, body
    dave.expect_line("* alice could not set valve to on: exit status 3: valve jammed at 40 %")
    dave.send("/set valve on\n")
    line = "* dave could not set valve to on: exit status 3: valve jammed at 40 %"
    dave.expect_line(line)
    assert fence(dave) == []
    assert b"a second line" not in dave.transcript


def test_hanging_command_line_comes_at_the_timeout(shared: Daemon, clients: Any) -> None:
    """
    A write command that hangs, pressed with curl by alice: dave's nc reads
    ``* alice could not press flush: timed out after 1.5 s`` once the
    timeout has passed (not before), and meanwhile dave's own ``/ping`` is
    answered at once: the chat port is served while the command hangs.
    """
    dave = chat(clients, shared, "dave")
    started = time.monotonic()
    proc = subprocess.Popen(
        [require_curl(), "-sS", "--max-time", "15", "-u", "alice:alice-pw", "-X", "POST", "-o", "/dev/null",
         "-w", "%{http_code}", f"{shared.url}/api/controls/flush"], stdout=subprocess.PIPE)
    try:
        assert fence(dave) == []  # answered while the command hangs
        answered = time.monotonic() - started
        assert answered < HANG_TIMEOUT, answered
        arrived = dave.expect_line(f"* alice could not press flush: timed out after {HANG_TIMEOUT:g} s", timeout=10)
    finally:
        out, _ = proc.communicate(timeout=15)
    assert out == b"504", out
    elapsed = arrived - started
    assert HANG_TIMEOUT - 0.05 <= elapsed <= HANG_TIMEOUT + 2.0, elapsed
    print(f"\nhanging command: /ping answered after {answered * 1000:.0f} ms, "
          f"the timeout line on nc after {elapsed:.2f} s")


BAD_SET = [
    # (what is typed after /set, the same request over HTTP: control and JSON body, its status)
    ("setpoint NaN", "setpoint", '{"value": "NaN"}', 400),
    ("pump maybe", "pump", '{"value": "maybe"}', 400),
    ("nope 1", "nope", '{"value": "1"}', 404),
    ("level 3", "level", '{"value": "3"}', 405),
]


@pytest.mark.parametrize("typed,name,body,status", BAD_SET, ids=[b[0] for b in BAD_SET])
def test_bad_set_is_one_error_line_to_the_typist_only(shared: Daemon, clients: Any, typed: str, name: str,
                                                      body: str, status: int) -> None:
    """
    ``/set setpoint NaN``, ``/set pump maybe``, ``/set nope 1``, ``/set
    level 3`` (a sensor): alice reads exactly one ``error:`` line, worded
    as the HTTP answer (400, 404, 405) to the same request sent by curl;
    dave's nc receives nothing before alice's next message; nothing is
    recorded.
    """
    dave = chat(clients, shared, "dave")
    alice = chat(clients, shared, "alice")
    before = operations(shared)
    got, answer = curl(shared, "POST", f"/api/controls/{name}", "alice", body)
    assert got == status, answer
    alice.send(f"/set {typed}\n")
    assert fence(alice) == [f"error: {answer['error']}"]
    assert said_fence(dave, alice, "alice") == []
    assert operations(shared) == before


def test_nan_typed_is_worded_as_the_json_nan(shared: Daemon, clients: Any) -> None:
    """
    The word ``NaN`` on the chat port and the JSON number ``NaN`` over HTTP
    are refused alike: what was wrong, what is allowed (the value as each
    client sent it, the rest word for word).
    """
    alice = chat(clients, shared, "alice")
    got, answer = curl(shared, "POST", "/api/controls/setpoint", "alice", '{"value": NaN}')
    assert got == 400, answer
    alice.send("/set setpoint NaN\n")
    [line] = fence(alice)
    assert line == "error: " + answer["error"].replace("nan", "'NaN'", 1), (line, answer)


# ------------------------------------------------- issue 11: a daemon per test


@pytest.fixture
def device(make_daemon: Callable[..., Daemon]) -> Callable[[str], Daemon]:
    """``device(mode)``: a daemon with ``[floor] mode``; carol a viewer, alice an admin, pump safe off."""
    require_curl()

    def start(mode: str) -> Daemon:
        return make_daemon(access_config(mode), users=ACCESS_USERS).start()

    return start


def test_viewer_set_is_refused_and_everyone_reads_it_once(device: Any, clients: Any) -> None:
    """
    carol, a viewer, types ``/set pump on``: the pump stays off; alice's and
    dave's nc read ``* carol could not set pump to on: <the 403's words>``
    (everyone sees that carol tried); carol reads that same line exactly
    once and no ``error:`` line besides.
    """
    d = device("optional")
    alice, dave = chat(clients, d, "alice"), chat(clients, d, "dave")
    carol = chat(clients, d, "carol")
    status, body = curl(d, "POST", "/api/controls/pump", "carol", '{"value": true}')
    assert status == 403, body
    line = f"* carol could not set pump to on: {body['error']}"
    for term in (alice, dave, carol):
        term.expect_line(line)
    carol.send("/set pump on\n")
    for term in (alice, dave):
        term.expect_line(line)
    assert fence(carol) == [line]
    assert d.get_json("/api/controls/pump", "alice")["value"] is False
    assert [op["user"] for op in d.get_json("/api/operations", "alice")["operations"]] == ["carol", "carol"]


def test_the_floor_from_nc(device: Any, clients: Any) -> None:
    """
    With ``[floor] mode = optional``, every floor action typed in an nc is a
    line everyone reads: ``/floor take`` (``* alice took the floor``);
    bob's ``/set`` then fails with a line naming alice; ``/floor`` shows the
    holder and the pending request; ``/floor request MSG``, ``/floor
    refuse``, ``/floor give``, ``/floor release`` each show as one line on
    every nc; the new holder operates.  Taking the floor one holds is
    answered to the typist (nothing changed, nobody else is told).
    """
    d = device("optional")
    dave = chat(clients, d, "dave")
    alice, bob = chat(clients, d, "alice"), chat(clients, d, "bob")
    everyone = (alice, bob, dave)

    def all_read(line: str) -> None:
        for term in everyone:
            term.expect_line(line)

    bob.send("/floor\n")
    assert fence(bob) == ["the floor is free (mode optional): /floor take"]
    alice.send("/floor take\n")
    all_read("* alice took the floor")
    assert _command(alice, "/floor take") == ["you hold the floor already"]
    bob.send("/set pump on\n")
    all_read("* bob could not set pump to on: alice holds the floor: request it")
    assert fence(bob) == []
    assert d.get_json("/api/controls/pump", "alice")["value"] is False
    [held] = _command(bob, "/floor")
    assert re.fullmatch(r"alice holds the floor since \d\d:\d\d:\d\d", held), held

    bob.send("/floor request may I have it?\n")
    all_read("* bob asks alice for the floor ('may I have it?')")
    lines = _command(dave, "/floor")
    assert len(lines) == 2 and re.fullmatch(r"bob asked for it: 'may I have it\?'; granted in \d+ s unless answered",
                                            lines[1]), lines
    alice.send("/floor refuse\n")
    all_read("* alice keeps the floor: bob's request is refused")
    bob.send("/floor request\n")
    all_read("* bob asks alice for the floor")
    alice.send("/floor give\n")
    all_read("* alice handed the floor over to bob")
    bob.send("/set pump on\n")
    all_read("* bob set pump to on (was off)")
    bob.send("/floor release\n")
    all_read("* bob released the floor")
    assert d.get_json("/api/floor", "alice")["holder"] is None
    assert d.get_json("/api/controls/pump", "alice")["value"] is True  # released by hand: no safe state
    for term in everyone:
        assert fence(term) == []


def test_yes_confirms_only_the_chat_ports_own_question(device: Any, clients: Any) -> None:
    """
    ``/set heater on`` asks the control's question; ``/yes`` operates it
    (everyone reads ``* bob set heater to on (was off)``); a second
    ``/yes`` has nothing to confirm.  A question asked to bob's browser
    (curl's 428) is not answered by a ``/yes`` in bob's nc; and when both
    are pending, ``/yes`` operates what the nc asked, not the browser's.
    """
    d = device("off")
    dave, bob = chat(clients, d, "dave"), chat(clients, d, "bob")
    bob.send("/set heater on\n")
    assert fence(bob) == ["Turn the heater on or off?", "type /yes within 15 s to confirm"]
    assert d.get_json("/api/controls/heater", "alice")["value"] is False
    bob.send("/yes\n")
    dave.expect_line("* bob set heater to on (was off)")
    assert fence(bob) == ["* bob set heater to on (was off)"]
    assert _command(bob, "/yes") == ["nothing to confirm"]

    status, body = curl(d, "POST", "/api/controls/heater", "bob", '{"value": false}')
    assert status == 428, body
    assert _command(bob, "/yes") == ["nothing to confirm"]
    assert d.get_json("/api/controls/heater", "alice")["value"] is True

    bob.send("/set heater off\n")
    assert fence(bob) == ["Turn the heater on or off?", "type /yes within 15 s to confirm"]
    status, body = curl(d, "POST", "/api/controls/heater", "bob", '{"value": true}')
    assert status == 428, body
    bob.send("/yes\n")
    dave.expect_line("* bob set heater to off (was on)")
    assert [(op["value"], op["via"]) for op in d.get_json("/api/operations", "alice")["operations"]] == \
        [(True, "chat"), (False, "chat")]
    assert said_fence(dave, bob, "bob") == []


def test_kick_from_nc(device: Any, clients: Any) -> None:
    """
    bob holds the floor (from his nc) and has switched the pump on.  dave's
    ``/kick bob`` is refused with an error line to dave alone; alice's (an
    admin) closes bob's nc, and dave reads, in this order, bob offline, the
    floor freed naming who removed him, and the pump set to its safe value:
    ``* the floor is free: bob was removed by alice`` then ``* pump set to
    off (safe state: bob is offline, removed by alice)``.  Kicking him
    again: not online.
    """
    d = device("optional")
    dave, alice, bob = chat(clients, d, "dave"), chat(clients, d, "alice"), chat(clients, d, "bob")
    bob.send("/floor take\n")
    dave.expect_line("* bob took the floor")
    bob.send("/set pump on\n")
    for term in (dave, alice):
        term.expect_line("* bob set pump to on (was off)")
    assert _command(dave, "/kick bob") == ["error: dave is not an admin: only admins kick"]
    assert said_fence(alice, dave, "dave") == []
    assert d.get_json("/api/floor", "alice")["holder"] == "bob"

    start = dave.mark()
    alice.send("/kick bob\n")
    bob.expect_eof()  # the server closed bob's nc
    dave.expect_line("* pump set to off (safe state: bob is offline, removed by alice)")
    lines = dave.transcript[start:dave.mark()].decode().split("\r\n")[:-1]
    assert lines == [
        "* bob is offline (removed by alice)",
        "* the floor is free: bob was removed by alice",
        "* pump set to off (safe state: bob is offline, removed by alice)",
    ], lines
    assert d.get_json("/api/controls/pump", "alice")["value"] is False
    alice.expect_line("* pump set to off (safe state: bob is offline, removed by alice)")
    assert _command(alice, "/kick bob") == ["error: bob is not online"]


def test_floor_off_safe_value_follows_the_offline_line(device: Any, clients: Any) -> None:
    """
    ``[floor] mode = off``: bob, on nc only, switches the pump on and
    ``/quit``s.  dave reads ``* bob is offline (left)`` and then the pump
    set to its safe value by the safe state, naming bob.
    """
    d = device("off")
    dave, bob = chat(clients, d, "dave"), chat(clients, d, "bob")
    bob.send("/set pump on\n")
    dave.expect_line("* bob set pump to on (was off)")
    start = dave.mark()
    bob.send("/quit\n")
    bob.expect_eof()
    dave.expect_line("* pump set to off (safe state: bob left)")
    lines = dave.transcript[start:dave.mark()].decode().split("\r\n")[:-1]
    assert lines == ["* bob is offline (left)", "* pump set to off (safe state: bob left)"], lines
    assert d.get_json("/api/controls/pump", "alice")["value"] is False
