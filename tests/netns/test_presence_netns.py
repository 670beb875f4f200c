"""Presence that tells the truth, end to end: the real daemon in the lab's
server namespace, a victim in the client namespace, and the cable pulled.

Every test starts ``twistd -n embweb`` (``tests/integration/daemon.py``)
bound to the server address, with keepalive 1/1/2, user timeout 3 s and a
1 s heartbeat.  An observer (user ``watch``) holds an event stream from
inside the server namespace, so it never loses its link, and records each
presence event with its arrival time (``time.monotonic()`` in the observer
process; CLOCK_MONOTONIC is one clock for all namespaces, so it is compared
directly with ``lab.pull_cable()``'s return).  The victim runs in the client
namespace; each test pins the offline event everyone receives: its
``reason``, its ``detected_after``, and how soon after the pull it arrives.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from .lab import PYTHON, Lab, json_history, wait_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from daemon import Daemon  # noqa: E402

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

OBSERVER = Path(__file__).resolve().with_name("observer.py")

KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 1, 1, 2
USER_TIMEOUT = 3
HEARTBEAT = 1
#: The kernel's bound for an idle peer, plus 1 s for the heartbeat and delivery.
IDLE_BOUND = KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT + 1.0
#: The kernel's bound with data in flight, plus 1.5 s.
IN_FLIGHT_BOUND = USER_TIMEOUT + 1.5

USERS = {name: f"{name}-pw" for name in ("alice", "bob", "carol", "dave", "watch")}


def _config(lab: Lab, extra: dict[str, dict[str, Any]] | None = None) -> str:
    """The INI overlay for the daemon: the timing under test, ``extra`` on top."""
    sections: dict[str, dict[str, Any]] = {
        "admission": {"networks": lab.subnet},
        "keepalive": {"idle": KEEPALIVE_IDLE, "interval": KEEPALIVE_INTERVAL,
                      "count": KEEPALIVE_COUNT, "user_timeout": USER_TIMEOUT},
        "heartbeat": {"interval": HEARTBEAT},
        # The chatter of the in-flight test posts 20 messages a second.
        "chat": {"rate_messages": 100000, "rate_period": 1},
    }
    for section, values in (extra or {}).items():
        sections.setdefault(section, {}).update(values)
    return "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                   for name, values in sections.items())


class NetnsDaemon(Daemon):
    """``Daemon`` whose readiness in a namespace is the HTTP port's "starting
    on" log line.  (``Daemon.start`` waits for "Site starting on", which the
    wrapped site never logs: it logs "BoatwistSite (TrackingFactory) starting
    on 8080".)"""

    def start(self, timeout: float = 20.0) -> "NetnsDaemon":
        self.proc = subprocess.Popen(self.argv(), cwd=self.workdir, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=self._pump, daemon=True).start()
        self.wait_for_log(f"starting on {self.http_port}", timeout)
        return self


class Boat:
    """The daemon in the lab's server namespace, and the clients around it."""

    def __init__(self, lab: Lab, workdir: Path, extra_config: dict | None = None) -> None:
        self.lab = lab
        self.daemon = NetnsDaemon(workdir, config=_config(lab, extra_config), users=USERS,
                             host=lab.server_ip, netns=lab.server_ns)
        self.host = lab.server_ip
        self.http = self.daemon.http_port
        self.chat = self.daemon.chat_port

    def start(self) -> "Boat":
        self.daemon.start(timeout=20)
        self.lab.wait_tcp("server", self.host, self.http, timeout=10)
        self.lab.wait_tcp("server", self.host, self.chat, timeout=10)
        return self

    def stop(self) -> None:
        self.daemon.stop()

    def helper(self, ns: str, mode: str, user: str, *args: Any, stdin: bool = False,
               port: int | None = None) -> subprocess.Popen:
        argv = [PYTHON, "-u", str(OBSERVER), mode, "--host", self.host,
                "--port", port or self.http, "--user", user, "--password", USERS[user], *args]
        kw = {"stdin": subprocess.PIPE} if stdin else {}
        return self.lab.spawn(ns, argv, **kw)

    def observer(self, user: str = "watch") -> subprocess.Popen:
        """An event stream from the server namespace (``peer.py sse``): never cut off."""
        obs = self.lab.spawn_peer("server", "sse", "--url", f"http://{self.host}:{self.http}/api/events",
                                  "--user", user, "--password", USERS[user])
        head = wait_json(obs, "http", timeout=10)
        assert head["status"] == 200, head
        return obs


@pytest.fixture
def boat(lab: Lab, tmp_path: Path):
    """``boat(extra_config=None)``: start the daemon in the lab (``extra_config``:
    ``{section: {key: value}}`` over the defaults); stopped at the end."""
    started: list[Boat] = []

    def start(extra_config: dict | None = None) -> Boat:
        b = Boat(lab, tmp_path / f"d{len(started)}", extra_config)
        started.append(b)
        return b.start()

    yield start
    for b in started:
        b.stop()


def command(proc: subprocess.Popen, line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line.encode() + b"\n")
    proc.stdin.flush()


def presence(user: str, state: str | None = None) -> Callable[[dict], bool]:
    """A predicate on the observer's lines: a presence event of ``user``."""
    def match(obj: dict) -> bool:
        if obj.get("event") != "sse" or obj.get("kind") != "presence":
            return False
        data = obj.get("data")
        return (isinstance(data, dict) and data.get("user") == user
                and (state is None or data.get("state") == state))
    return match


def online(user: str) -> Callable[[dict], bool]:
    base = presence(user, "online")
    return lambda o: base(o) and o["data"].get("reason") == "login"


def offline(user: str) -> Callable[[dict], bool]:
    base = presence(user, "offline")
    return lambda o: base(o) and o["data"].get("reason") != "refused"


def timeline(obs: subprocess.Popen, user: str, since: float) -> str:
    """The presence events of ``user`` the observer saw after ``since``, for messages."""
    rows = [f"+{o['t'] - since:.2f}s {o['data']['state']}/{o['data']['reason']}"
            for o in json_history(obs) if presence(user)(o) and o["t"] >= since - 5]
    return ", ".join(rows) or "none"


def wait_offline(obs: subprocess.Popen, user: str, since: float, timeout: float = 15.0) -> dict:
    """The observer's offline event of ``user``; a failure quotes what it saw."""
    try:
        return wait_json(obs, offline(user), timeout=timeout)
    except Exception as exc:
        raise AssertionError(f"no offline event for {user} within {timeout} s; "
                             f"seen: {timeline(obs, user, since)}") from exc


def check_vanished(event: dict, pulled: float, came_online: float, bound: float,
                   obs: subprocess.Popen) -> float:
    """The offline event of alice, who vanished at ``pulled`` having come
    online at ``came_online``: reason ``keepalive-timeout``, a
    ``detected_after`` that counts from her last sign of life (between the
    two), and at most ``bound`` seconds from the pull to the observer."""
    data = event["data"]
    latency = event["t"] - pulled
    assert data["state"] == "offline"
    assert data["reason"] == "keepalive-timeout", (data, timeline(obs, "alice", pulled))
    assert "detected_after" in data, data
    after = data["detected_after"]
    assert isinstance(after, (int, float)), data
    # Her last sign of life lies between coming online and the pull.
    assert latency - 0.3 <= after <= event["t"] - came_online + 0.3, (after, latency, data)
    assert 0.5 <= latency <= bound, (f"alice offline {latency:.2f} s after the pull, "
                                     f"bound {bound} s: {data}; seen: {timeline(obs, 'alice', pulled)}")
    return latency


# ---------------------------------------------------------------------------
# 1. idle event stream


def test_idle_event_stream_cable_pull_is_keepalive_timeout(lab, boat, netns_report):
    """An idle event stream whose cable is pulled ends as ``keepalive-timeout``:
    the observer gets alice's offline event, with ``detected_after``, at most
    idle + interval*count + 1 s (4 s) after the pull."""
    b = boat()
    obs = b.observer()
    victim = lab.spawn_peer("client", "sse", "--url", f"http://{b.host}:{b.http}/api/events",
                            "--user", "alice", "--password", USERS["alice"])
    assert wait_json(victim, "http")["status"] == 200
    came = wait_json(obs, online("alice"))["t"]
    time.sleep(0.5)  # keep the stream idle before the pull
    pulled = lab.pull_cable()
    event = wait_offline(obs, "alice", pulled)
    latency = check_vanished(event, pulled, came, IDLE_BOUND, obs)
    netns_report(f"idle event stream: keepalive-timeout {latency:.2f} s after the pull "
                 f"(detected_after {event['data']['detected_after']} s; bound {IDLE_BOUND} s; "
                 f"seen: {timeline(obs, 'alice', pulled)})")


# ---------------------------------------------------------------------------
# 2. data in flight


@pytest.mark.parametrize("reading", ["reading", "slow"])
def test_stream_with_data_in_flight_is_user_timeout(lab, boat, netns_report, reading):
    """While events are being pushed to alice (bob posts a chat message every
    50 ms from the server namespace) her cable is pulled: keepalive cannot
    fire with unacknowledged data, TCP_USER_TIMEOUT does, and the observer
    gets ``keepalive-timeout`` at most user_timeout + 1.5 s (4.5 s) after the
    pull.  ``reading``: alice reads everything at once; ``slow``: she reads at
    most 256 bytes every 50 ms through an 8 KB receive buffer."""
    b = boat()
    obs = b.observer()
    args = ["--read", "all"] if reading == "reading" else ["--read", "slow", "--rcvbuf", "8192"]
    victim = b.helper("client", "stream", "alice", *args, stdin=True)
    assert wait_json(victim, "http")["status"] == 200
    came = wait_json(obs, online("alice"))["t"]
    chatter = b.helper("server", "chatter", "bob", "--every", 0.05, "--count", 1000)
    wait_json(chatter, "posted")
    wait_json(victim, "chat-flowing", timeout=5)
    time.sleep(0.3)  # events keep flowing to alice until the pull
    pulled = lab.pull_cable()
    event = wait_offline(obs, "alice", pulled)
    latency = check_vanished(event, pulled, came, IN_FLIGHT_BOUND, obs)
    errors = [o for o in json_history(chatter) if o["event"] in ("status", "error")]
    assert errors == [], errors[:5]
    # Data was in flight: the heartbeat saw retransmissions, not keepalive probes.
    seen = [o["data"]["reason"] for o in json_history(obs)
            if presence("alice", "unstable")(o) and o["t"] > pulled]
    assert "retransmits" in seen, timeline(obs, "alice", pulled)
    netns_report(f"event stream, data in flight ({reading}): keepalive-timeout {latency:.2f} s "
                 f"after the pull (detected_after {event['data']['detected_after']} s; "
                 f"bound {IN_FLIGHT_BOUND} s; seen: {timeline(obs, 'alice', pulled)})")


# ---------------------------------------------------------------------------
# 2b. a live client that stops reading (no pull): not a vanished peer


def test_live_client_that_stops_reading_is_a_slow_reader(lab, boat, netns_report):
    """alice's client stays connected and answers every packet but stops
    reading her event stream (a 4 KB receive buffer, full) while bob's chat
    messages keep coming: no cable is pulled, so when the server drops her
    the reason everyone is told is ``slow-reader``, not a vanished peer
    (``keepalive-timeout``: "no answer to keepalive probes")."""
    b = boat()
    obs = b.observer()
    victim = b.helper("client", "stream", "alice", "--read", "none", "--rcvbuf", 4096, stdin=True)
    assert wait_json(victim, "http")["status"] == 200
    wait_json(obs, online("alice"))
    chatter = b.helper("server", "chatter", "bob", "--every", 0.05, "--count", 1000)
    started = wait_json(chatter, "posted")["t"]
    event = wait_offline(obs, "alice", started, timeout=20)
    assert lab.cable_plugged
    netns_report(f"stalled reader (no pull): {event['data']['reason']} "
                 f"{event['t'] - started:.2f} s after the traffic started "
                 f"(seen: {timeline(obs, 'alice', started)})")
    assert event["data"]["reason"] == "slow-reader", (event["data"], timeline(obs, "alice", started))


# ---------------------------------------------------------------------------
# 3. clean close and reset


@pytest.mark.parametrize("how,reason", [("close", "closed"), ("rst", "reset")])
def test_stream_close_and_reset_are_told_at_once(lab, boat, netns_report, how, reason):
    """alice closes her event stream (``close``: FIN) or aborts it
    (``rst``: SO_LINGER 0 then close): the observer gets her offline event
    with reason ``closed`` resp. ``reset`` within 0.5 s."""
    b = boat()
    obs = b.observer()
    victim = b.helper("client", "stream", "alice", stdin=True)
    assert wait_json(victim, "http")["status"] == 200
    wait_json(obs, online("alice"))
    command(victim, how)
    done = wait_json(victim, "did")["t"]
    event = wait_offline(obs, "alice", done, timeout=5)
    latency = event["t"] - done
    assert event["data"]["reason"] == reason, event["data"]
    assert "detected_after" in event["data"], event["data"]
    assert latency <= 0.5, latency
    netns_report(f"event stream {how}: {reason} {latency * 1000:.0f} ms after the client's "
                 f"{how} (detected_after {event['data']['detected_after']})")


# ---------------------------------------------------------------------------
# 4. half-close


def test_half_closed_stream_ends_as_tcp_state(lab, boat, netns_report):
    """alice shuts down only her sending side (SHUT_WR) and keeps the socket
    open: the server's probe is acknowledged, its socket stays in CLOSE_WAIT,
    and the heartbeat ends the connection with reason ``tcp-state`` within
    two ticks (2.5 s)."""
    b = boat()
    obs = b.observer()
    victim = b.helper("client", "stream", "alice", stdin=True)
    assert wait_json(victim, "http")["status"] == 200
    wait_json(obs, online("alice"))
    command(victim, "shutdown-wr")
    done = wait_json(victim, "did")["t"]
    event = wait_offline(obs, "alice", done, timeout=10)
    latency = event["t"] - done
    assert event["data"]["reason"] == "tcp-state", (event["data"], timeline(obs, "alice", done))
    assert "detected_after" in event["data"], event["data"]
    assert latency <= 2 * HEARTBEAT + 0.5, latency
    # The server wrote its probe after the FIN, and the half-closed client,
    # still reading, received it: the connection was alive, only half-closed.
    probe = wait_json(victim, lambda o: o["event"] == "comment" and o["text"] == "eof-probe", timeout=2)
    assert done <= probe["t"] <= event["t"], (done, probe, event)
    netns_report(f"half-closed event stream: tcp-state {latency:.2f} s after SHUT_WR "
                 f"(detected_after {event['data']['detected_after']})")


# ---------------------------------------------------------------------------
# 5. a freed seat


def test_pulled_cable_frees_the_seat(lab, boat, netns_report):
    """With max_users = 2, alice (client namespace) and watch (server
    namespace) are online through event streams; carol is refused with 503,
    Retry-After and "2 of 2" in the body.  alice's cable is pulled: carol's
    retry loop (every 0.2 s) is admitted (200) within the idle bound (4 s)
    plus one retry interval of the pull."""
    retry_every = 0.2
    b = boat({"admission": {"max_users": 2}})
    obs = b.observer()
    victim = lab.spawn_peer("client", "sse", "--url", f"http://{b.host}:{b.http}/api/events",
                            "--user", "alice", "--password", USERS["alice"])
    assert wait_json(victim, "http")["status"] == 200
    wait_json(obs, online("alice"))
    carol = b.helper("server", "admit", "carol", "--every", retry_every, "--deadline", 15,
                     "--hold", stdin=True)
    first = wait_json(carol, "attempt")
    assert first["status"] == 503, first
    assert first["retry_after"] is not None and int(first["retry_after"]) >= 1, first
    assert "2 of 2" in first["body"], first
    told = wait_json(obs, lambda o: presence("carol")(o) and o["data"].get("reason") == "refused")
    assert (told["data"].get("refusal"), told["data"].get("used"), told["data"].get("limit")) \
        == ("full", 2, 2), told["data"]
    time.sleep(0.5)  # keep alice's stream idle before the pull
    pulled = lab.pull_cable()
    command(carol, "go")
    admitted = wait_json(carol, lambda o: o["event"] in ("admitted", "gave-up"), timeout=20)
    assert admitted["event"] == "admitted", json_history(carol)[-5:]
    event = wait_offline(obs, "alice", pulled)
    assert event["data"]["reason"] == "keepalive-timeout", event["data"]
    latency = admitted["t"] - pulled
    assert latency <= IDLE_BOUND + retry_every, (latency, timeline(obs, "alice", pulled))
    netns_report(f"seat freed: carol admitted {latency:.2f} s after alice's pull "
                 f"(alice offline {event['t'] - pulled:.2f} s, bound {IDLE_BOUND + retry_every} s)")


# ---------------------------------------------------------------------------
# 6. the chat port


def _nc() -> str | None:
    return shutil.which("nc")


class TextReader:
    """Line-oriented, bounded reads of a process that does not print JSON (nc)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.buf = b""
        self.lines: list[str] = []

    def wait(self, pattern: str, timeout: float) -> re.Match:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            for line in self.lines:
                m = regex.search(line)
                if m:
                    return m
            m = regex.search(self.buf.decode("utf-8", "replace"))
            if m:
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not read within {timeout} s: {self.lines[-10:]} "
                                     f"{self.buf[-200:]!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"output ended before {pattern!r}: {self.lines[-10:]}")
                self.buf += chunk
                while b"\n" in self.buf:
                    line, self.buf = self.buf.split(b"\n", 1)
                    self.lines.append(line.decode("utf-8", "replace").rstrip("\r"))


def test_chat_user_cable_pull_is_keepalive_timeout(lab, boat, netns_report):
    """alice is logged in on the chat port from the client namespace and
    idles; her cable is pulled: the event-stream observer gets her offline
    event with ``keepalive-timeout`` within 4 s, and dave, on the chat port
    with a real ``nc`` in the server namespace, reads
    ``* alice is offline (no answer to keepalive probes, detected after X s)``
    with X the event's ``detected_after``."""
    nc = _nc()
    if nc is None:
        pytest.fail("nc (netcat-openbsd) is needed for the chat-port observer")
    b = boat()
    obs = b.observer()
    dave_proc = lab.spawn("server", [nc, b.host, b.chat], stdin=subprocess.PIPE)
    dave = TextReader(dave_proc)
    dave.wait(r"login: $", 10)
    command(dave_proc, "dave")
    dave.wait(r"password: $", 10)
    command(dave_proc, USERS["dave"])
    dave.wait(r"welcome, dave\.", 10)  # after the prompts, which end no line

    victim = b.helper("client", "chat", "alice", port=b.chat)
    wait_json(victim, "logged-in", timeout=10)
    joined = wait_json(obs, online("alice"))
    came = joined["t"]
    assert joined["data"]["via"] == "chat", joined
    dave.wait(r"^\* alice is online", 5)
    time.sleep(0.5)  # keep alice's chat connection idle before the pull
    pulled = lab.pull_cable()
    event = wait_offline(obs, "alice", pulled)
    m = dave.wait(r"^\* alice is offline \(no answer to keepalive probes, detected after "
                  r"([0-9]+\.[0-9]) s\)$", 5)
    assert event["data"]["via"] == "chat", event["data"]
    latency = check_vanished(event, pulled, came, IDLE_BOUND, obs)
    assert float(m.group(1)) == pytest.approx(event["data"]["detected_after"], abs=0.051), \
        (m.group(0), event["data"])
    netns_report(f"chat port idle: keepalive-timeout {latency:.2f} s after the pull "
                 f"(detected_after {event['data']['detected_after']} s; nc read {m.group(0)!r}; "
                 f"seen: {timeline(obs, 'alice', pulled)})")
