"""
The daemon's side of systemd's ``Type=notify``, watchdog and socket
activation, against stand-ins made here exactly as systemd makes them: a
bound AF_UNIX datagram socket named by NOTIFY_SOCKET, and a listening
socket passed as file descriptor 3 with LISTEN_FDS / LISTEN_PID (set by a
small launcher that then execs twistd, so LISTEN_PID is twistd's own PID).

Pinned: READY=1 is only sent once the listeners answer (a client that
connects the moment READY=1 arrives is served); WATCHDOG=1 keeps coming,
in time, when WATCHDOG_USEC is set, and never without it; SIGTERM sends
STOPPING=1; an activated socket is served; a ``systemd:`` listener with no
socket passed stops the start with one line, not a traceback.

Waits are bounded waits on real events (a datagram, a connection).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest


pytestmark = pytest.mark.integration


class NotifySocket:
    """systemd's notify socket, played here: a bound AF_UNIX SOCK_DGRAM socket."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify")
        if len(self.path) > 100:  # AF_UNIX paths end at 107 bytes; pytest's tmp paths can be longer
            self.path = f"/tmp/boatwist-notify-{os.getpid()}-{id(self):x}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        #: (monotonic arrival time, assignment) for every assignment received, in order.
        self.received: list[tuple[float, str]] = []

    def next(self, timeout: float) -> list[tuple[float, str]]:
        """The assignments of the next datagram, or [] if none comes within C{timeout}."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            datagram = self.sock.recv(4096)
        except (socket.timeout, TimeoutError):
            return []
        at = time.monotonic()
        parts = [(at, part) for part in datagram.decode().split("\n") if part]
        self.received.extend(parts)
        return parts

    def expect(self, assignment: str, within: float, process: subprocess.Popen[bytes] | None = None) -> float:
        """Wait up to C{within} s for C{assignment}; return when it arrived.  Fails early if C{process} dies."""
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {assignment} within {within}s; received {self.received!r}")
            if process is not None and process.poll() is not None:
                raise AssertionError(f"the daemon exited ({process.returncode}) before {assignment}")
            for at, part in self.next(min(left, 0.25)):
                if part == assignment:
                    return at

    def drain(self, seconds: float) -> list[str]:
        """Everything that arrives during the next C{seconds}."""
        got: list[str] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            got.extend(part for _, part in self.next(left))
        return got

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


@pytest.fixture
def notify(tmp_path: Path) -> Any:
    sock = NotifySocket(tmp_path)
    yield sock
    sock.close()


def scrubbed_env(**extra: str) -> dict[str, str]:
    """The test's environment without any systemd variables it may itself have been given, plus C{extra}."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                        "LISTEN_FDNAMES")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def healthz(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data


# ------------------------------------------------------------------ notify


def test_ready_only_once_listening_then_stopping_on_sigterm(make_daemon: Any, notify: NotifySocket) -> None:
    """
    READY=1 is the first message, and when it arrives the HTTP and chat
    ports already accept and answer; without WATCHDOG_USEC no WATCHDOG=1 is
    ever sent; SIGTERM sends STOPPING=1 and the daemon exits cleanly.
    """
    d = make_daemon()
    d.env = scrubbed_env(NOTIFY_SOCKET=notify.path)
    d.spawn()
    first = []
    deadline = time.monotonic() + 30
    while not first:
        assert time.monotonic() < deadline, f"no datagram within 30s; log:\n{d.log_text()}"
        assert d.proc is not None and d.proc.poll() is None, f"twistd exited; log:\n{d.log_text()}"
        first = notify.next(0.25)
    # At once, before anything else: the listeners must already be up.
    response = healthz(d.http_port)
    with socket.create_connection(("127.0.0.1", d.chat_port), timeout=5) as chat:
        chat.settimeout(5)
        assert b"login:" in chat.recv(1024)
    assert [part for _, part in first][0] == "READY=1", first
    assert response.startswith(b"HTTP/1.0 200") or response.startswith(b"HTTP/1.1 200"), response
    assert b"ok " in response

    # Heartbeat ticks every second: over 2.5 s, none may ping an absent watchdog.
    assert "WATCHDOG=1" not in notify.drain(2.5), notify.received

    os.killpg(d.proc.pid, signal.SIGTERM)
    notify.expect("STOPPING=1", within=10)
    code = d.proc.wait(15)
    assert code in (0, -signal.SIGTERM), (code, d.log_text())
    assert "Traceback" not in d.log_text()


def test_watchdog_pings_keep_coming_in_time(make_daemon: Any, notify: NotifySocket) -> None:
    """
    With WATCHDOG_USEC=2000000 (2 s), WATCHDOG=1 arrives again and again
    after READY=1, each within the 2 s period of the one before (the
    heartbeat sends one per 1 s tick).
    """
    d = make_daemon()
    d.env = scrubbed_env(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="2000000")
    d.spawn()
    ready = notify.expect("READY=1", within=30, process=d.proc)
    pings = []
    for _ in range(4):
        pings.append(notify.expect("WATCHDOG=1", within=2.0, process=d.proc))
    gaps = [b - a for a, b in zip([ready] + pings, pings)]
    assert all(gap < 2.0 for gap in gaps), gaps


def test_watchdog_pid_for_another_process_is_not_pinged(make_daemon: Any, notify: NotifySocket) -> None:
    """WATCHDOG_PID naming another process (an inherited environment) means: send no WATCHDOG=1."""
    d = make_daemon()
    d.env = scrubbed_env(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="2000000", WATCHDOG_PID="1")
    d.spawn()
    notify.expect("READY=1", within=30, process=d.proc)
    assert "WATCHDOG=1" not in notify.drain(2.5), notify.received


# -------------------------------------------------------- socket activation

#: Runs as systemd starts an activated service: the socket at fd 3, then exec.
LAUNCHER = """
import os, sys
source, names = int(sys.argv[1]), sys.argv[2]
if source != 3:
    os.dup2(source, 3)
    os.close(source)
os.set_inheritable(3, True)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())  # exec keeps the PID: it is twistd's
if names:
    os.environ["LISTEN_FDNAMES"] = names
argv = sys.argv[3:]
os.execv(argv[0], argv)
"""


@pytest.mark.parametrize("fdnames", ["embweb.socket", ""], ids=["with-LISTEN_FDNAMES", "without-LISTEN_FDNAMES"])
def test_socket_activation_serves_the_passed_socket(make_daemon: Any, notify: NotifySocket, fdnames: str) -> None:
    """
    With http = systemd:domain=INET:index=0 and a listening socket passed as
    fd 3 (LISTEN_FDS=1, LISTEN_PID=twistd's PID), the daemon binds nothing
    itself and serves requests on that socket, authenticated ones included;
    READY=1 follows.  systemd since 227 also sets LISTEN_FDNAMES (the unit's
    name by default); sd_listen_fds(3) makes it optional, so older systemd
    and other launchers leave it unset: both are served.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    d = make_daemon(config="[server]\nhttp = systemd:domain=INET:index=0\n", with_chat=False)
    d.http_port = port  # d.url and the clients follow
    d.env = scrubbed_env(NOTIFY_SOCKET=notify.path)
    argv = [sys.executable, "-c", LAUNCHER, str(listener.fileno()), fdnames, *d.argv()]
    try:
        d.spawn(argv, pass_fds=(listener.fileno(),))
    finally:
        listener.close()  # the daemon holds its own copy now, as under systemd
    notify.expect("READY=1", within=30, process=d.proc)
    with urllib.request.urlopen(f"{d.url}/healthz", timeout=5) as r:
        assert (r.status, r.read().startswith(b"ok ")) == (200, True)
    status, _, body = d.get("/api/whoami", user="alice")
    assert (status, json.loads(body)["user"]) == (200, "alice")
    assert f"starting on {port}" in d.log_text()  # the adopted socket, nothing bound besides
    d.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_systemd_listener_without_a_passed_socket_stops_with_one_line(make_daemon: Any) -> None:
    """
    http = systemd:domain=INET:index=0 but no socket passed (the service
    started without its socket unit): twistd exits non-zero with one line on
    stderr naming the file and [server] http, and no traceback.
    """
    d = make_daemon(config="[server]\nhttp = systemd:domain=INET:index=0\n", with_chat=False)
    out = subprocess.run(d.argv(), cwd=d.workdir, env=scrubbed_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode != 0, out
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert str(d.config_path) in lines[0] and "[server] http" in lines[0], lines[0]
    assert "Traceback" not in out.stderr + out.stdout, out.stderr + out.stdout
