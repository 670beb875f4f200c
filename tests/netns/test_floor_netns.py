"""The floor follows presence, end to end: the holder's cable is pulled and the
device falls back to its safe state within the seconds that free the seat.

The real daemon runs in the lab's server namespace (``Boat`` of
``test_presence_netns.py``: keepalive 1/1/2, user timeout 3 s, heartbeat 1 s)
with one ``file`` control whose ``safe_value`` is off, on a temporary file
(the namespaces share the file system).  alice, the holder, is a browser in
the client namespace: an event stream (``peer.py sse``) and curl requests
from there take the floor and switch the control on.  bob, another operator,
watches from the server namespace, so he never loses his link.  Then alice's
cable is pulled (her switch port down: no FIN, no RST).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from .lab import Lab, json_history, wait_json
from .test_presence_netns import IDLE_BOUND, USERS, Boat

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]


def _curl() -> str:
    path = shutil.which("curl")
    if path is None:
        pytest.fail("curl is needed: the holder's browser requests are made with it")
    return path


def curl_from(lab: Lab, ns: str, b: Boat, user: str, method: str, path: str, body: str | None = None) -> int:
    """One request by ``user`` from namespace ``ns``; the HTTP status."""
    argv: list[Any] = [_curl(), "-sS", "--max-time", "5", "-u", f"{user}:{USERS[user]}", "-X", method,
                       "-o", "/dev/null", "-w", "%{http_code}"]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "--data-binary", body]
    argv.append(f"http://{b.host}:{b.http}{path}")
    return int(lab.run(ns, argv, timeout=10).stdout)


class ChatLines:
    """
    What a real ``nc`` on the chat port receives: CR LF lines, each with the
    ``time.monotonic()`` its chunk was read (CLOCK_MONOTONIC: one clock for
    every namespace, comparable with ``lab.pull_cable()``), read with
    bounded waits, in order.
    """

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.partial = b""
        #: (line, arrival) of every complete line, in order.
        self.lines: list[tuple[str, float]] = []
        #: Index of the first line not yet matched by L{wait}.
        self.pos = 0

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def _read(self, left: float) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(0.0, left))
        if not ready:
            return
        chunk, at = os.read(fd, 65536), time.monotonic()
        if not chunk:
            raise AssertionError(f"nc's output ended; last lines: {self.tail()}")
        *complete, self.partial = (self.partial + chunk).split(b"\r\n")
        self.lines += [(line.decode("utf-8", "replace"), at) for line in complete]

    def prompt(self, text: str, timeout: float = 10.0) -> None:
        """Wait for a prompt (it ends no line)."""
        deadline = time.monotonic() + timeout
        while not self.partial.endswith(text.encode()):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no prompt {text!r} within {timeout} s: {self.partial!r}")
            self._read(left)

    def wait(self, pattern: str, timeout: float = 10.0) -> tuple[int, re.Match[str], float]:
        """The next line (from where the last match left off) matching C{pattern} whole: index, match, arrival."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for i in range(self.pos, len(self.lines)):
                m = regex.fullmatch(self.lines[i][0])
                if m:
                    self.pos = i + 1
                    return i, m, self.lines[i][1]
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line {pattern!r} within {timeout} s; lines since: {self.tail()}")
            self._read(left)

    def tail(self) -> list[str]:
        return [line for line, _ in self.lines[self.pos:]][-12:]


def chat_login(lab: Lab, b: Boat, user: str) -> ChatLines:
    """A real ``nc`` in the server namespace (never cut off), logged in as ``user``."""
    nc = shutil.which("nc")
    if nc is None:
        pytest.fail("nc (netcat-openbsd) is needed: the chat-port reader is a real nc")
    term = ChatLines(lab.spawn("server", [nc, b.host, b.chat], stdin=subprocess.PIPE))
    term.prompt("login: ")
    term.send(user)
    term.prompt("password: ")
    term.send(USERS[user])
    term.wait(rf"(?:login: password: )?welcome, {user}\. .*")  # the prompts share its screen line
    return term


def sse(kind: str, **fields: Any) -> Callable[[dict], bool]:
    """A predicate on peer.py's lines: an event of ``kind`` whose data has ``fields``."""
    def match(o: dict) -> bool:
        data = o.get("data")
        return (o.get("event") == "sse" and o.get("kind") == kind and isinstance(data, dict)
                and all(data.get(k) == v for k, v in fields.items()))
    return match


def seen(obs: Any, since: float) -> str:
    """bob's events since ``since``, one line each, for failure messages."""
    rows = []
    for o in json_history(obs):
        if o.get("event") == "sse" and o["t"] >= since - 1 and o.get("kind") != "value":
            d = o["data"]
            rows.append(f"+{o['t'] - since:.2f}s {o['kind']} {d.get('user')} "
                        f"{d.get('state') or d.get('control')} {d.get('reason') or d.get('via')}")
    return "; ".join(rows) or "none"


def test_holder_cable_pull_loses_the_floor_then_the_safe_value_is_written(lab: Lab, tmp_path: Path,
                                                                          netns_report: Any) -> None:
    """
    alice holds the floor and has switched the pump on (the file says
    ``on``); her cable is pulled.  bob's stream gets, within the presence
    bound (idle + interval × count + 1 s = 4 s) of the pull and in this
    order: the ``floor`` event ``lost`` (user alice, reason
    ``keepalive-timeout``, ``safe`` true), then the ``control`` event of the
    pump set off by ``safe-state`` (user alice, old on, result ok) -- and the
    file says ``off``.  The floor is free for bob at once.

    dave, on the chat port with a real ``nc`` in the server namespace, reads
    the same in words, in this order and within the same bound:
    ``* the floor is free: alice is offline (no answer to keepalive probes,
    detected after X s)`` -- X the floor event's ``detected_after`` as the
    line rounds it -- then ``* pump set to off (safe state: alice is
    offline, no answer to keepalive probes)``; before the pull he read
    ``* alice took the floor`` and ``* alice set pump to on (was off)``.
    """
    pump = tmp_path / "pump"
    pump.write_text("off\n")
    b = Boat(lab, tmp_path / "d", {
        "floor": {"mode": "required", "idle_release": 0},
        "control:pump": {"type": "switch", "backend": "file", "path": pump, "on": "on", "off": "off",
                         "safe_value": "off"},
    }).start()
    try:
        url = f"http://{b.host}:{b.http}/api/events"
        obs = lab.spawn_peer("server", "sse", "--url", url, "--user", "bob", "--password", USERS["bob"])
        assert wait_json(obs, "http")["status"] == 200
        holder = lab.spawn_peer("client", "sse", "--url", url, "--user", "alice", "--password", USERS["alice"])
        assert wait_json(holder, "http")["status"] == 200
        wait_json(obs, sse("presence", user="alice", state="online"))
        dave = chat_login(lab, b, "dave")

        assert curl_from(lab, "client", b, "alice", "POST", "/api/floor") == 200
        wait_json(obs, sse("floor", state="taken", holder="alice"))
        assert curl_from(lab, "client", b, "alice", "POST", "/api/controls/pump", '{"value": true}') == 200
        wait_json(obs, sse("control", control="pump", user="alice", value=True, result="ok"))
        assert pump.read_text() == "on\n"
        dave.wait(r"\* alice took the floor")
        dave.wait(r"\* alice set pump to on \(was off\)")
        assert curl_from(lab, "server", b, "bob", "POST", "/api/controls/pump", '{"value": false}') == 409

        time.sleep(0.5)  # let alice's links go idle before the pull, as in the presence tests
        pulled = lab.pull_cable()
        lost = wait_json(obs, sse("floor", state="lost"), timeout=IDLE_BOUND + 5)
        safe = wait_json(obs, sse("control", control="pump", via="safe-state"), timeout=5)
        order = [o for o in json_history(obs) if sse("floor", state="lost")(o)
                 or sse("control", via="safe-state")(o) or sse("presence", user="alice", state="offline")(o)]
        kinds = [o["kind"] for o in order]
        assert kinds == ["presence", "floor", "control"], seen(obs, pulled)

        data = lost["data"]
        assert (data["user"], data["holder"], data["reason"], data["safe"]) == \
            ("alice", None, "keepalive-timeout", True), data
        op = safe["data"]
        assert (op["user"], op["old"], op["value"], op["result"], op["reason"]) == \
            ("alice", True, False, "ok", "keepalive-timeout"), op
        floor_after, safe_after = lost["t"] - pulled, safe["t"] - pulled
        gone_at, _, _ = dave.wait(r"\* alice is offline \(no answer to keepalive probes, detected after .*\)",
                                  timeout=IDLE_BOUND + 5)
        free_at, free, free_t = dave.wait(r"\* the floor is free: alice is offline \(no answer to keepalive "
                                          r"probes, detected after ([0-9]+\.[0-9]) s\)", timeout=5)
        off_at, _, off_t = dave.wait(r"\* pump set to off \(safe state: alice is offline, no answer to "
                                     r"keepalive probes\)", timeout=5)
        assert gone_at < free_at < off_at, dave.lines[gone_at:]
        assert free.group(1) == f"{data['detected_after']:.1f}", (free.group(0), data)
        nc_free, nc_off = free_t - pulled, off_t - pulled
        assert nc_free <= IDLE_BOUND and nc_off <= IDLE_BOUND, (nc_free, nc_off, dave.lines[gone_at:])
        assert floor_after <= IDLE_BOUND, (floor_after, seen(obs, pulled))
        assert safe_after <= IDLE_BOUND, (safe_after, seen(obs, pulled))
        assert lost["t"] <= safe["t"]
        assert pump.read_text() == "off\n"
        assert curl_from(lab, "server", b, "bob", "POST", "/api/floor") == 200
        netns_report(f"holder's cable pulled: floor lost {floor_after:.2f} s, safe value written "
                     f"{safe_after:.2f} s after the pull (+{(safe['t'] - lost['t']) * 1000:.0f} ms; "
                     f"detected_after {data['detected_after']} s; bound {IDLE_BOUND} s); "
                     f"nc read the floor line {nc_free:.2f} s, the safe-state line {nc_off:.2f} s after the pull")
    finally:
        b.stop()
