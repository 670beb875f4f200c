"""
Device controls through the real daemon (``twistd -n embweb``), seen by real
clients: curl operates, other users' event streams (raw sockets) watch,
``/api/controls`` and ``/api/operations`` are read back.

What is pinned here is issue 10's promise: every operation, and every failed
attempt, is seen by everyone at once with who, what, the old and the new
value, where it came from and how it ended; the backends that reach real
things (a file changed by someone else, a program that fails, a program that
hangs) behave as DESIGN.md says while the reactor keeps serving; every bad
input gets one clear JSON error; and memory values and the history outlive a
restart.

Most tests share one daemon (module scope, ``[floor] mode = off``); the
restart test starts its own.  Waits are bounded waits on real events.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from control_clients import Watch, curl, metric, ops_of, require_curl

from daemon import Daemon

pytestmark = pytest.mark.integration

USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
#: A distinctive argument, so the hanging command's process can be found in /proc.
HANG = "29.7371"
HANG_TIMEOUT = 1.5
POLL = 0.2


def config(files: Path) -> str:
    return f"""
[floor]
mode = off
[chat]
rate_messages = 1000
rate_period = 1

[control:pump]
type = switch
label = Coolant pump
backend = memory
initial = off

[control:setpoint]
type = number
backend = memory
unit = °C
min = 5
max = 90
step = 0.5
initial = 20

[control:mode]
type = choice
backend = memory
choices = manual, auto, maintenance
initial = manual

[control:reset]
type = action
backend = command
write = /bin/true

[control:lamp]
type = switch
backend = file
path = {files / 'lamp'}
on = on
off = off
poll = {POLL}

[control:level]
type = sensor
backend = file
path = {files / 'level'}
unit = mm
poll = {POLL}

[control:valve]
type = switch
backend = command
write = /bin/sh -c "echo 'valve jammed at 40 %' >&2; echo 'a second line' >&2; exit 3" valve {{value}}

[control:flush]
type = action
backend = command
write = /bin/sleep {HANG}
timeout = {HANG_TIMEOUT}
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("device")
    (where / "lamp").write_text("off\n")
    (where / "level").write_text("12.5\n")
    return where


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, files: Path) -> Iterator[Daemon]:
    require_curl()
    d = Daemon(tmp_path_factory.mktemp("controls"), config=config(files), users=USERS)
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


def control(daemon: Daemon, name: str, user: str = "alice") -> dict:
    return daemon.get_json(f"/api/controls/{name}", user)


def operations(daemon: Daemon, control: str | None = None, limit: int = 500) -> list[dict]:
    query = f"?limit={limit}" + (f"&control={control}" if control else "")
    return daemon.get_json(f"/api/operations{query}", "alice")["operations"]


# ------------------------------------------------------------------ operations


def test_operation_from_curl_reaches_every_other_stream_and_the_history(shared: Daemon, watch: Any) -> None:
    """
    alice sets the pump with curl: bob's and carol's event streams both get
    the same ``control`` event (same id) with user alice, old false, value
    true, via ``api``, result ok; the answer carries that operation; the
    history's newest entry is it; and ``/api/controls/pump`` shows the new
    value, good, changed by alice.
    """
    bob, carol = watch("bob"), watch("carol")
    before = control(shared, "pump")["value"]
    assert before is False, before
    status, body = curl(shared, "POST", "/api/controls/pump", "alice", '{"value": true}')
    assert status == 200, body
    op = body["operation"]
    expected = {"user": "alice", "control": "pump", "old": False, "value": True, "result": "ok",
                "error": None, "via": "api"}
    assert {k: op[k] for k in expected} == expected, op
    seen = [w.wait(ops_of("pump", id=op["id"])) for w in (bob, carol)]
    for event in seen:
        assert {k: event[k] for k in expected} == expected, event
        assert event["_id"] == seen[0]["_id"], "one event, the same for everyone"
        assert event["label"] == "Coolant pump" and event["type"] == "switch", event
    assert operations(shared, "pump")[-1] == {k: op[k] for k in ("id", "at", "user", "control", "old", "value",
                                                                    "result", "error", "via")}
    now = control(shared, "pump")
    assert (now["value"], now["quality"], now["changed_by"], now["changed_at"]) == (True, "good", "alice", op["at"])
    # Put it back for the other tests (and see old/new chain).
    status, body = curl(shared, "POST", "/api/controls/pump", "alice", '{"value": false}')
    assert status == 200 and body["operation"]["old"] is True, body


def test_browser_fetch_is_via_web(shared: Daemon, watch: Any) -> None:
    """
    The same POST with the headers every browser's fetch sends
    (``Sec-Fetch-Mode``, ``Sec-Fetch-Site: same-origin``) is recorded and
    broadcast with via ``web``; numbers and choices arrive as JSON numbers
    and strings.
    """
    bob = watch("bob")
    browser = ("Sec-Fetch-Mode: cors", "Sec-Fetch-Site: same-origin", "Sec-Fetch-Dest: empty")
    status, body = curl(shared, "POST", "/api/controls/setpoint", "carol", '{"value": 42.5}', headers=browser)
    assert status == 200, body
    event = bob.wait(ops_of("setpoint", id=body["operation"]["id"]))
    assert (event["user"], event["value"], event["via"], event["unit"]) == ("carol", 42.5, "web", "°C"), event
    status, body = curl(shared, "POST", "/api/controls/mode", "carol", '{"value": "auto"}', headers=browser)
    assert status == 200, body
    event = bob.wait(ops_of("mode", id=body["operation"]["id"]))
    assert (event["old"], event["value"], event["via"]) == ("manual", "auto", "web"), event
    assert operations(shared, "mode")[-1]["via"] == "web"


def test_an_action_is_an_operation_without_a_value(shared: Daemon, watch: Any) -> None:
    """A button pressed with an empty POST (curl -X POST, no body) runs its command and is broadcast, value null."""
    bob = watch("bob")
    status, body = curl(shared, "POST", "/api/controls/reset", "alice")
    assert status == 200, body
    event = bob.wait(ops_of("reset", id=body["operation"]["id"]))
    assert (event["old"], event["value"], event["result"], event["type"]) == (None, None, "ok", "action"), event


def test_simultaneous_operations_are_serialised_and_chain(shared: Daemon, watch: Any) -> None:
    """
    Eight curls set the set-point at the same instant: every one is answered
    200, and the recorded operations chain -- each one's ``old`` is the
    value of the one before it, with no gap and no repeat -- in the history
    and in the order bob's stream received them.
    """
    bob = watch("bob")
    mark = bob.mark()
    start = operations(shared, "setpoint")
    values = [10 + 5 * i for i in range(8)]
    procs = [subprocess.Popen([require_curl(), "-sS", "--max-time", "15", "-u", "alice:alice-pw",
                               "-H", "Content-Type: application/json", "--data-binary", json.dumps({"value": v}),
                               "-o", "/dev/null", "-w", "%{http_code}", f"{shared.url}/api/controls/setpoint"],
                              stdout=subprocess.PIPE) for v in values]
    statuses = [p.communicate(timeout=20)[0].decode() for p in procs]
    assert statuses == ["200"] * len(values), statuses
    recorded = [op for op in operations(shared, "setpoint") if op not in start]
    assert sorted(op["value"] for op in recorded) == sorted(float(v) for v in values)
    previous = start[-1]["value"] if start else 20.0
    for op in recorded:
        assert op["old"] == previous, recorded
        previous = op["value"]
    for op in recorded:
        bob.wait(ops_of("setpoint", id=op["id"]), since=mark)
    streamed = [(e["old"], e["value"]) for e in bob.of_kind("control", mark) if e["control"] == "setpoint"]
    assert streamed == [(op["old"], op["value"]) for op in recorded]


def test_control_events_are_replayed_after_last_event_id(shared: Daemon, watch: Any) -> None:
    """
    An event stream that reconnects with ``Last-Event-ID`` gets the
    ``control`` events it missed, in order, before anything new.
    """
    bob = watch("bob")
    curl(shared, "POST", "/api/controls/mode", "alice", '{"value": "manual"}')
    last = bob.wait(ops_of("mode", value="manual"))["_id"]
    bob.close()
    ids = []
    for value in ("maintenance", "auto"):
        status, body = curl(shared, "POST", "/api/controls/mode", "alice", json.dumps({"value": value}))
        assert status == 200, body
        ids.append(body["operation"]["id"])
    again = Watch(shared, "bob", last_event_id=str(last))
    try:
        again.wait(ops_of("mode", id=ids[-1]))
        replayed = [e["id"] for e in again.of_kind("control") if e["control"] == "mode"]
        assert replayed[:2] == ids, again.dump()
    finally:
        again.close()


# ------------------------------------------------------------------ backends


def test_file_changed_from_outside_is_a_value_event(shared: Daemon, files: Path, watch: Any) -> None:
    """
    Another program writes the lamp's file: within a few polls everyone gets
    a ``value`` event (value, quality good, changed_by null -- nobody in
    boatwist did it) and ``/api/controls`` shows it.  An operation writes
    the file (``off`` text, one line) and is read back.  The file vanishing
    turns the quality to ``error`` with the path and the reason, and the
    next operation fails 502 with that line; the file back, the quality
    returns to good by itself.
    """
    bob = watch("bob")
    lamp = files / "lamp"
    bound = 10 * POLL + 2
    lamp.write_text("on\n")
    event = bob.wait(lambda k, d: k == "value" and d["control"] == "lamp" and d["value"] is True, bound)
    assert (event["quality"], event["changed_by"], event["error"]) == ("good", None, None), event
    now = control(shared, "lamp")
    assert (now["value"], now["quality"], now["changed_by"]) == (True, "good", None), now

    status, body = curl(shared, "POST", "/api/controls/lamp", "alice", '{"value": false}')
    assert status == 200, body
    assert (body["operation"]["old"], body["operation"]["value"]) == (True, False), body
    assert lamp.read_text() == "off\n"

    (files / "level").write_text("17.25\n")
    event = bob.wait(lambda k, d: k == "value" and d["control"] == "level" and d["value"] == 17.25, bound)
    assert event["quality"] == "good", event

    mark = bob.mark()
    lamp.unlink()
    try:
        event = bob.wait(lambda k, d: k == "value" and d["control"] == "lamp" and d["quality"] == "error",
                         bound, since=mark)
        assert event["error"] == f"{lamp}: no such file", event
        now = control(shared, "lamp")
        assert (now["quality"], now["error"]) == ("error", f"{lamp}: no such file"), now
        status, body = curl(shared, "POST", "/api/controls/lamp", "alice", '{"value": true}')
        assert status == 502, body
        assert body["error"] == f"{lamp}: no such file", body
        assert body["operation"]["result"] == "error", body
    finally:
        lamp.write_text("off\n")
    event = bob.wait(lambda k, d: k == "value" and d["control"] == "lamp" and d["quality"] == "good",
                     bound, since=mark)
    assert (event["value"], event["error"]) == (False, None), event


def test_failing_command_is_502_recorded_and_broadcast(shared: Daemon, watch: Any) -> None:
    """
    A write command that exits 3: the answer is 502 with stderr's first line
    (after the exit status), and the failed attempt is recorded and reaches
    bob's stream as ``result: error`` with that line -- everyone sees that
    alice tried.  The control's quality turns ``error``.
    """
    bob = watch("bob")
    line = "exit status 3: valve jammed at 40 %"
    status, body = curl(shared, "POST", "/api/controls/valve", "alice", '{"value": true}')
    assert status == 502, body
    assert body["error"] == line, body
    op = body["operation"]
    assert (op["result"], op["error"], op["value"], op["user"]) == ("error", line, True, "alice"), op
    event = bob.wait(ops_of("valve", id=op["id"]))
    assert (event["result"], event["error"], event["value"], event["via"]) == ("error", line, True, "api"), event
    assert operations(shared, "valve")[-1]["error"] == line
    now = control(shared, "valve")
    assert (now["quality"], now["error"]) == ("error", line), now
    assert metric(shared, "alice", "boatwist_operations_total", control="valve", result="error") == \
        len([op for op in operations(shared, "valve") if op["result"] == "error"])
    assert (metric(shared, "alice", "boatwist_backend_call_seconds_count", control="valve", call="write") or 0) >= 1


def test_hanging_command_is_504_at_timeout_while_the_reactor_keeps_serving(shared: Daemon, watch: Any) -> None:
    """
    A write command that never ends: the POST is answered 504 once
    ``timeout`` (1.5 s) has passed, not before and not much after, and the
    program is killed.  Meanwhile the daemon keeps serving: ``/healthz``
    answers every 50 ms within 1 s (a blocked reactor would take the whole
    1.5 s), bob's stream gets the failure, and the heartbeat goes on ticking
    (``boatwist_heartbeat_ticks_total`` advances).
    """
    bob = watch("bob")
    ticks_before = metric(shared, "alice", "boatwist_heartbeat_ticks_total")
    assert ticks_before is not None
    started = time.monotonic()
    proc = subprocess.Popen([require_curl(), "-sS", "--max-time", "15", "-u", "alice:alice-pw", "-X", "POST",
                             "-o", "-", "-w", "\n%{http_code}", f"{shared.url}/api/controls/flush"],
                            stdout=subprocess.PIPE)
    health: list[float] = []
    saw_process = False
    while proc.poll() is None and time.monotonic() - started < 10:
        t0 = time.monotonic()
        with urllib.request.urlopen(f"{shared.url}/healthz", timeout=5) as r:
            assert r.status == 200
        health.append(time.monotonic() - t0)
        saw_process = saw_process or bool(hanging_processes())
        time.sleep(0.05)  # the pace of the probe, not a wait for an event
    out, _ = proc.communicate(timeout=10)
    elapsed = time.monotonic() - started
    text, _, status = out.decode().rpartition("\n")
    body = json.loads(text)
    assert status == "504", (status, body)
    assert body["error"] == f"timed out after {HANG_TIMEOUT:g} s", body
    assert HANG_TIMEOUT - 0.05 <= elapsed <= HANG_TIMEOUT + 2.0, elapsed
    assert saw_process, "the command was running during the wait"
    assert len(health) >= 5 and max(health) < 1.0, health  # blocked, one would take the whole 1.5 s
    event = bob.wait(ops_of("flush", id=body["operation"]["id"]))
    assert (event["result"], event["error"]) == ("error", f"timed out after {HANG_TIMEOUT:g} s"), event
    ticks_after = metric(shared, "alice", "boatwist_heartbeat_ticks_total")
    assert ticks_after is not None and ticks_after >= ticks_before + 1, (ticks_before, ticks_after)
    deadline = time.monotonic() + 5
    while hanging_processes() and time.monotonic() < deadline:
        time.sleep(0.05)  # a bounded wait for the kernel to reap the killed process
    assert hanging_processes() == [], "the hanging command was killed"


def hanging_processes() -> list[int]:
    """Pids of live processes running ``sleep HANG`` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if HANG.encode() in argv and b"sleep" in os.path.basename(argv[0]) and state != "Z":
            found.append(int(entry.name))
    return found


# ------------------------------------------------------------------ bad input

BAD = [
    # (name, method, path, body, status, words the error must contain)
    ("unknown control", "POST", "/api/controls/nope", '{"value": true}', 404,
     ["no control named 'nope'", "pump, setpoint, mode, reset, lamp, level, valve, flush"]),
    ("unknown control, GET", "GET", "/api/controls/nope", None, 404, ["controls: pump, setpoint"]),
    ("sensor", "POST", "/api/controls/level", '{"value": 3}', 405, ["level is a sensor", "never operated"]),
    ("bad JSON", "POST", "/api/controls/pump", '{"value": ', 400, ["not valid UTF-8 JSON"]),
    ("not an object", "POST", "/api/controls/pump", "[true]", 400, ["expected a JSON object"]),
    ("switch given a number", "POST", "/api/controls/pump", '{"value": 3}', 400,
     ["pump: 3 is not allowed", "on or off (true or false in JSON)"]),
    ("number given a word", "POST", "/api/controls/setpoint", '{"value": "hot"}', 400,
     ["setpoint: 'hot' is not allowed", "a number from 5 to 90 in steps of 0.5 (°C)"]),
    ("number given a boolean", "POST", "/api/controls/setpoint", '{"value": true}', 400,
     ["setpoint: true is not allowed", "a number from 5 to 90"]),
    ("number out of range", "POST", "/api/controls/setpoint", '{"value": 90.5}', 400, ["a number from 5 to 90"]),
    ("number off the step", "POST", "/api/controls/setpoint", '{"value": 20.25}', 400, ["in steps of 0.5"]),
    ("NaN", "POST", "/api/controls/setpoint", '{"value": NaN}', 400, ["nan is not allowed", "a number from 5"]),
    ("Infinity", "POST", "/api/controls/setpoint", '{"value": Infinity}', 400, ["inf is not allowed"]),
    ("-Infinity", "POST", "/api/controls/setpoint", '{"value": -Infinity}', 400, ["-inf is not allowed"]),
    ("overflow to infinity", "POST", "/api/controls/setpoint", '{"value": 1e400}', 400, ["inf is not allowed"]),
    ("choice not listed", "POST", "/api/controls/mode", '{"value": "turbo"}', 400,
     ["one of manual, auto, maintenance"]),
    ("action given a value", "POST", "/api/controls/reset", '{"value": 1}', 400, ["no value (it is a button)"]),
    ("missing value", "POST", "/api/controls/pump", "{}", 400, ["on or off"]),
    ("confirm not a string", "POST", "/api/controls/pump", '{"value": true, "confirm": 5}', 400,
     ["confirm must be the token"]),
]


@pytest.mark.parametrize("name,method,path,body,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_clear_json_error(shared: Daemon, name: str, method: str, path: str, body: str | None,
                                           status: int, words: list[str]) -> None:
    """
    Each bad request (sent by curl byte for byte, so ``NaN`` and
    ``Infinity`` -- which Python's json accepts -- reach the server) gets
    its status and a JSON ``error`` saying what was wrong and what is
    allowed; nothing is operated, recorded or broadcast.
    """
    before = operations(shared)
    got, answer = curl(shared, method, path, "alice", body)
    assert got == status, answer
    assert isinstance(answer, dict) and isinstance(answer.get("error"), str), answer
    for word in words:
        assert word in answer["error"], answer
    assert "operation" not in answer, answer
    assert operations(shared) == before


def test_wrong_content_type_is_415(shared: Daemon) -> None:
    """A body that is not declared as JSON is refused with 415 and says what is expected."""
    done = subprocess.run([require_curl(), "-sS", "-u", "alice:alice-pw", "-H", "Content-Type: text/plain",
                           "--data-binary", '{"value": true}', "-o", "-", "-w", "\n%{http_code}",
                           f"{shared.url}/api/controls/pump"], capture_output=True, timeout=15)
    text, _, status = done.stdout.decode().rpartition("\n")
    assert status == "415", done.stdout
    assert json.loads(text) == {"error": "expected Content-Type: application/json"}


# ------------------------------------------------------------------ restart


def test_restart_keeps_memory_values_and_the_history(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """
    Memory controls set before a restart (SIGTERM, start again on the same
    state directory) have their values, who set them and when, and
    ``/api/operations`` is the same list; the next operation's id follows
    the last one's and its ``old`` is the restored value.
    """
    require_curl()
    (tmp_path / "lamp").write_text("off\n")
    (tmp_path / "level").write_text("1\n")
    d = make_daemon(config(tmp_path), users=USERS).start()
    for name, value in (("pump", True), ("setpoint", 42.5), ("mode", "maintenance")):
        status, body = curl(d, "POST", f"/api/controls/{name}", "bob", json.dumps({"value": value}))
        assert status == 200, body
    before = {c["name"]: c for c in d.get_json("/api/controls", "alice")["controls"]}
    history = operations(d)
    assert d.stop() in (0, -signal.SIGTERM)  # twistd ends by its signal once it has shut down
    d.start()
    after = {c["name"]: c for c in d.get_json("/api/controls", "alice")["controls"]}
    for name, value in (("pump", True), ("setpoint", 42.5), ("mode", "maintenance")):
        assert (after[name]["value"], after[name]["changed_by"], after[name]["changed_at"]) == \
            (value, "bob", before[name]["changed_at"]), after[name]
        assert after[name]["quality"] == "good"
    assert operations(d) == history
    status, body = curl(d, "POST", "/api/controls/pump", "alice", '{"value": false}')
    assert status == 200, body
    assert body["operation"]["id"] == history[-1]["id"] + 1
    assert body["operation"]["old"] is True
