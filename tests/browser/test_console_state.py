"""
What the operator console (issue 12) says about the device and about its
own link, in both browsers against the real daemon: the header's facts
(device name, host, version, an uptime that counts), the connection state
``offline`` when the event stream is refused and the way back to ``live``,
and each control card's quality (``error`` with the device's words,
``stale`` before a first reading) and its *sending…* state while an
operation runs.

The hardware is real too: a ``file`` sensor on a path that does not exist
yet, and ``command`` controls whose programs wait for a file the test
creates -- so "while the operation runs" and "before the first reading"
last exactly as long as the test needs, without a sleep.
"""

from __future__ import annotations

import re
import socket
import stat
import time
from pathlib import Path

import pytest

import boatwist
from daemon import SSEReader, write_users
from test_console import USERS, console_daemon, controls_disabled, operations, wait_live, wait_operation
from test_ui import close_like_a_browser, wait_stream_open, wait_text

pytestmark = pytest.mark.browser

WAIT = 10.0

#: "12 s", "3 min 5 s", "2 h 1 min", "1 d 4 h" (util.js duration) -> seconds.
_UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400}


#: The header's uptime in seconds, read in the page.
UPTIME_JS = ("(document.getElementById('uptime').textContent.match(/\\d+\\u00a0(s|min|h|d)\\b/g) || [])"
             ".reduce((sum, part) => { const [n, unit] = part.split('\\u00a0');"
             " return sum + Number(n) * {s: 1, min: 60, h: 3600, d: 86400}[unit]; }, 0)")


def seconds_of(words: str) -> int:
    parts = re.findall(r"(\d+)\u00a0(s|min|h|d)\b", words)
    assert parts, f"no duration in {words!r}"
    return sum(int(n) * _UNITS[unit] for n, unit in parts)


def uptime(page) -> int:
    text = page.text("#uptime")
    assert text.startswith("up "), text
    return seconds_of(text)


# ------------------------------------------------------------------ the header


def test_the_header_names_the_device_and_counts_its_uptime(make_daemon, open_page) -> None:
    """
    Pins item 1 of issue 12 beyond the user and role: the header shows the
    device's name from ``[server] name`` (also in the window title), the host
    it runs on, boatwist's version and its uptime -- each visible -- and the
    uptime counts on by itself, second by second, in step with the daemon's.
    """
    daemon = console_daemon(make_daemon)
    page = open_page(daemon, "alice")
    wait_live(page)
    assert page.text("#device") == "Cooling rig 3"
    assert page.evaluate("document.title") == "Cooling rig 3 \u2014 boatwist"
    assert page.text("#host") == socket.gethostname()
    assert page.text("#version") == f"boatwist {boatwist.__version__}"
    assert (page.text("#whoami"), page.text("#role")) == ("logged in as alice", "operator")
    hidden = page.evaluate("['#device', '#host', '#version', '#uptime', '#whoami', '#role'].filter(s => {"
                           " const r = document.querySelector(s).getBoundingClientRect();"
                           " return !(r.width > 0 && r.height > 0); })")
    assert hidden == [], f"header facts not shown: {hidden}"

    first = uptime(page)
    server = daemon.get_json("/api/whoami", "alice")["uptime"]
    assert abs(first - server) <= 3, (first, server)
    page.wait_for(f"{UPTIME_JS} > {first}", timeout=3, what="the uptime counting on")
    page.wait_for(f"{UPTIME_JS} > {first + 1}", timeout=3, what="the uptime counting on again")
    later, server = uptime(page), daemon.get_json("/api/whoami", "alice")["uptime"]
    assert later >= first + 2 and abs(later - server) <= 3, (first, later, server)
    assert "boatwist started " in page.evaluate("document.getElementById('uptime').title")
    assert page.problems() == []


# ------------------------------------------------------------- offline and back


def status_is(page, state: str, timeout: float = 15.0) -> str:
    page.wait_for(f"document.body.dataset.conn === {state!r}", timeout=timeout, what=f"the page {state}")
    return page.text("#status")


def assert_stale_and_disabled(page) -> None:
    """Every value and the operator list marked stale (visibly), every action disabled."""
    assert page.evaluate("Array.from(document.querySelectorAll('.control')).every(c => c.classList.contains('stale'))")
    assert page.evaluate("document.getElementById('presence').classList.contains('stale')"
                         " && getComputedStyle(document.querySelector('#presence .stale-tag')).display !== 'none'"
                         " && getComputedStyle(document.querySelector('#control-pump .stale-tag')).display !== 'none'")
    assert controls_disabled(page)
    assert page.text("#control-pump .why") == "disconnected: actions wait for the link"


def test_a_refused_stream_turns_the_page_offline_and_back(make_daemon, open_page) -> None:
    """
    Pins the connection state ``offline`` (not ``reconnecting``): the
    daemon ends alice's stream because an admin changed her password, and
    her browser's reconnection is refused -- first with 401 (at the login
    dialog she presses Cancel), then, with the new password typed, with 503
    (bob took the only seat meanwhile).  Each time the page says
    ``offline — retrying in N s (data as of HH:MM:SS)``, marks every value
    and the operator list stale and disables every action, and offers
    "Reconnect now"; when bob leaves, the page's own retry brings it back
    to ``live`` with the state reloaded and actions enabled.
    """
    daemon = console_daemon(make_daemon, "[admission]\nmax_users = 1\n")
    page = open_page(daemon, "alice")
    wait_live(page)
    wait_stream_open(daemon, "alice")
    assert not controls_disabled(page)

    page.credentials = None  # at the next login dialog, alice presses Cancel
    write_users(daemon.state, {"alice": "alice-new-pw"})  # as embweb-passwd does: her sessions end (revoked)
    daemon.users = dict(daemon.users, alice="alice-new-pw")  # a copy: USERS is every test's
    status = status_is(page, "offline")
    assert re.fullmatch(r"offline \u2014 retrying in \d+ s \(data as of \d\d:\d\d:\d\d\)", status), status
    assert page.evaluate("getComputedStyle(document.getElementById('status')).backgroundColor") != \
        page.evaluate("getComputedStyle(document.getElementById('reconnect')).backgroundColor")
    assert_stale_and_disabled(page)
    assert page.evaluate("!document.getElementById('reconnect').hidden")
    assert page.auth_challenges, "the browser never asked for the new password"

    bob = SSEReader("127.0.0.1", daemon.http_port, "bob", USERS["bob"])  # the only seat
    try:
        assert bob.status == 200
        page.credentials = ("alice", "alice-new-pw")  # she types her new password at the next dialog
        page.click("#reconnect")
        bob.wait_for(lambda kind, d: kind == "presence" and d.get("user") == "alice" and d.get("reason") == "refused",
                     timeout=15)
        status = status_is(page, "offline")
        assert status.startswith("offline \u2014 retrying in "), status
        assert_stale_and_disabled(page)
    finally:
        close_like_a_browser(bob)

    page.wait_for("document.getElementById('status').textContent === 'live'", timeout=40, what="live again")
    assert not controls_disabled(page)
    assert page.evaluate("!document.querySelector('.control.stale') && document.getElementById('reconnect').hidden")
    wait_text(page, "#users > li", "alice (you)")
    wait_stream_open(daemon, "alice")
    page.click("#control-pump .switch")
    assert wait_operation(daemon, "pump", 1)[-1]["user"] == "alice"


def test_a_long_outage_turns_the_page_offline_and_back(make_daemon, open_page) -> None:
    """
    Pins ``offline`` for a daemon that stays away: stopped, the page says
    ``reconnecting…`` within 5 s (the browser retries by itself; a restart
    of a few seconds is not "offline"), and once that has not worked for
    15 s, ``offline — the device does not answer; retrying (data as of
    HH:MM:SS)`` -- stale, actions disabled, "Reconnect now" offered -- and it
    stays offline through the browser's further failed retries.  Started
    again, the daemon has the page live by itself, without a login dialog.
    Nothing the page runs throws meanwhile (a failed poll is no uncaught
    rejection).
    """
    daemon = console_daemon(make_daemon)
    page = open_page(daemon, "alice")
    wait_live(page)
    wait_stream_open(daemon, "alice")
    asked = len(page.auth_challenges)

    daemon.stop()
    stopped = time.monotonic()
    status_is(page, "reconnecting", timeout=5)
    status = status_is(page, "offline", timeout=30)
    assert time.monotonic() - stopped >= 14, "offline before 15 s of reconnecting"
    assert re.fullmatch(r"offline \u2014 the device does not answer; retrying \(data as of \d\d:\d\d:\d\d\)",
                        status), status
    assert_stale_and_disabled(page)
    assert page.evaluate("!document.getElementById('reconnect').hidden")
    tries = sum("/api/events" in r for r in page.requests)
    deadline = time.monotonic() + WAIT
    while sum("/api/events" in r for r in page.requests) <= tries:  # the browser's next try
        assert time.monotonic() < deadline, "the browser stopped retrying"
        time.sleep(0.05)  # bounded poll of what the driver recorded
    page.wait_for("document.body.dataset.conn === 'offline'", what="still offline after another failed try")

    daemon.start()
    page.wait_for("document.getElementById('status').textContent === 'live'", timeout=15, what="live again")
    assert page.auth_challenges[asked:] == []
    assert not controls_disabled(page)
    assert page.evaluate("!document.querySelector('.control.stale') && document.getElementById('reconnect').hidden")
    thrown = [p for p in page.problems() if "HttpError" in p or "connection failed" in p]
    assert thrown == [], thrown


# ------------------------------------------------ qualities and sending…

#: Waits until the file named by its first argument exists (the test creates it), then exits 0.
WAIT_FOR = "#!/bin/sh\nwhile [ ! -e \"$1\" ]; do sleep 0.05; done\n"


def hardware_ini(tmp: Path) -> str:
    script = tmp / "wait-for"
    script.write_text(WAIT_FOR)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    reader = tmp / "read-gauge"
    reader.write_text(WAIT_FOR + "echo 3.5\n")
    reader.chmod(reader.stat().st_mode | stat.S_IXUSR)
    return f"""
[control:probe]
type = sensor
label = Probe temperature
backend = file
path = {tmp / "probe"}
unit = °C
poll = 1
[control:gauge]
type = sensor
label = Flow gauge
backend = command
read = {reader} {tmp / "gauge-ready"}
unit = l/min
poll = 1
timeout = 60
[control:relay]
type = switch
label = Slow relay
backend = command
write = {script} {tmp / "relay-done"} {{value}}
timeout = 60
[control:flush]
type = action
label = Flush the line
backend = command
write = {script} {tmp / "flush-done"}
timeout = 60
"""


def card(page, name: str) -> dict:
    return page.evaluate(
        f"(() => {{ const c = document.getElementById('control-{name}'); const e = c.querySelector('.error');"
        " return {quality: c.querySelector('.quality').textContent, cls: c.className,"
        " value: c.querySelector('.value .v').textContent, error: e.hidden ? null : e.textContent,"
        " meta: c.querySelector('.meta').textContent, busy: c.getAttribute('aria-busy')}; })()")


def test_card_qualities_and_the_sending_state(make_daemon, open_page, tmp_path: Path) -> None:
    """
    Pins item 2's qualities and pending state on real hardware paths: a
    ``file`` sensor whose file does not exist shows ``error`` and the
    device's own words (the server's error, inline); a ``command`` sensor
    whose first reading has not come shows ``stale reading`` and no value;
    when the file appears and the reading comes, both turn ``good`` with
    their value, by themselves.  A ``command`` switch and an action whose
    programs are still running show *sending…* (busy, the button
    "Running…"), and lose it when the operation is done.
    """
    hardware = tmp_path / "hw"
    hardware.mkdir()
    daemon = console_daemon(make_daemon, hardware_ini(hardware))
    page = open_page(daemon, "alice")
    wait_live(page)

    server = daemon.get_json("/api/controls/probe", "alice")
    assert server["quality"] == "error" and "no such file" in server["error"], server
    probe = card(page, "probe")
    assert (probe["quality"], probe["error"]) == ("error", "device: " + server["error"]), probe
    assert "q-error" in probe["cls"] and probe["value"] == "\u2013", probe
    assert page.evaluate("getComputedStyle(document.querySelector('#control-probe .error')).display") != "none"

    gauge = card(page, "gauge")
    assert daemon.get_json("/api/controls/gauge", "alice")["quality"] == "stale"
    assert (gauge["quality"], gauge["value"], gauge["error"]) == ("stale reading", "\u2013", None), gauge
    assert "q-stale" in gauge["cls"], gauge

    (hardware / "probe").write_text("21.5\n")
    (hardware / "gauge-ready").touch()
    wait_text(page, "#control-probe .value", "21.5 °C")
    wait_text(page, "#control-gauge .value", "3.5 l/min")
    for name in ("probe", "gauge"):
        page.wait_for(f"document.querySelector('#control-{name} .quality').textContent === 'good'",
                      what=f"{name} good")
        now = card(page, name)
        assert now["error"] is None and "q-good" in now["cls"], now

    page.click("#control-relay .switch")
    page.wait_for("document.querySelector('#control-relay .meta').textContent.startsWith('sending\u2026')",
                  what="the relay sending")
    relay = card(page, "relay")
    assert "pending" in relay["cls"] and relay["busy"] == "true", relay
    assert operations(daemon, "relay") == []  # still running: nothing recorded yet
    (hardware / "relay-done").touch()
    op = wait_operation(daemon, "relay", 1)[-1]
    assert (op["user"], op["value"], op["result"]) == ("alice", True, "ok"), op
    wait_text(page, "#control-relay .meta", "changed by alice at ")
    # The control event (on the event stream) may reach the page before the POST's answer (another
    # connection): the card says "sending… · changed by alice" until the answer ends it.
    page.wait_for("!document.querySelector('#control-relay .meta').textContent.startsWith('sending\u2026')",
                  what="the relay no longer sending")
    relay = card(page, "relay")
    assert "sending" not in relay["meta"] and "pending" not in relay["cls"] and relay["busy"] == "false", relay
    assert relay["value"] == "on"

    page.click("#control-flush .action")
    page.wait_for("document.querySelector('#control-flush .action').textContent === 'Running\u2026'",
                  what="the action running")
    assert card(page, "flush")["meta"].startswith("sending\u2026")
    (hardware / "flush-done").touch()
    wait_text(page, "#control-flush .meta", "pressed by alice at ")
    # As for the relay: the event may come before the POST's answer, which ends "Running…".
    page.wait_for("document.querySelector('#control-flush .action').textContent === 'Press'",
                  what="the action done")
    assert "sending" not in card(page, "flush")["meta"]
    assert page.problems() == []
