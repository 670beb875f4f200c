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

import shutil
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

        assert curl_from(lab, "client", b, "alice", "POST", "/api/floor") == 200
        wait_json(obs, sse("floor", state="taken", holder="alice"))
        assert curl_from(lab, "client", b, "alice", "POST", "/api/controls/pump", '{"value": true}') == 200
        wait_json(obs, sse("control", control="pump", user="alice", value=True, result="ok"))
        assert pump.read_text() == "on\n"
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
        assert floor_after <= IDLE_BOUND, (floor_after, seen(obs, pulled))
        assert safe_after <= IDLE_BOUND, (safe_after, seen(obs, pulled))
        assert lost["t"] <= safe["t"]
        assert pump.read_text() == "off\n"
        assert curl_from(lab, "server", b, "bob", "POST", "/api/floor") == 200
        netns_report(f"holder's cable pulled: floor lost {floor_after:.2f} s, safe value written "
                     f"{safe_after:.2f} s after the pull (+{(safe['t'] - lost['t']) * 1000:.0f} ms; "
                     f"detected_after {data['detected_after']} s; bound {IDLE_BOUND} s)")
    finally:
        b.stop()
