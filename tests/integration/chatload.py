"""
Measuring the daemon while the chat port is attacked (tests/integration and bench/chatflood.py).

  - L{healthz_latencies}: GET /healthz, a new connection each time (as a
    health checker does), for a while; the latencies in ms.
  - L{PingWatch}: a logged-in chat client that opted into ``/heartbeat 1``
    and answers every PING; the gaps between PINGs show how late the
    reactor's timers fire.
  - L{heartbeat_ticks}: C{boatwist_heartbeat_tick_seconds_count} from
    /metrics, the daemon's own heartbeat ticks so far (recent window).
  - L{start_flood}: tests/integration/flood.py in a process of its own.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

FLOOD = str(Path(__file__).with_name("flood.py"))


def healthz_latencies(host: str, port: int, seconds: float, pause: float = 0.01) -> list[float]:
    """Sequential GET /healthz for C{seconds}; the latency of each in ms (a failure counts as 5000)."""
    out: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            conn.close()
            ok = response.status == 200
        except OSError:
            ok = False
        out.append((time.monotonic() - started) * 1000 if ok else 5000.0)
        time.sleep(pause)  # a checker, not a load generator
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def heartbeat_ticks(daemon: Any, user: str = "bob") -> int:
    status, _, body = daemon.get("/metrics", user)
    assert status == 200, (status, body[:200])
    match = re.search(rb"^boatwist_heartbeat_tick_seconds_count ([0-9.e+]+)$", body, re.M)
    assert match is not None, body[:500]
    return int(float(match.group(1)))


class PingWatch:
    """A chat client with /heartbeat 1 that answers every PING; records when each arrived."""

    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.arrivals: list[float] = []
        self.closed = False
        buffer = b""
        for expected, answer in ((b"login: ", user), (b"password: ", password)):
            while expected not in buffer:
                chunk = self.sock.recv(4096)
                assert chunk, buffer
                buffer += chunk
            buffer = buffer.split(expected, 1)[1]
            self.sock.sendall(answer.encode() + b"\n")
        self.sock.sendall(b"/heartbeat 1\n")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        self.sock.settimeout(None)
        while True:
            try:
                chunk = self.sock.recv(4096)
            except OSError:
                break
            if not chunk:
                break
            buffer += chunk
            while b"\r\n" in buffer and not self.closed:
                line, buffer = buffer.split(b"\r\n", 1)
                if line.startswith(b"PING "):
                    self.arrivals.append(time.monotonic())
                    try:
                        self.sock.sendall(b"PONG " + line[5:] + b"\n")
                    except OSError:
                        self.closed = True  # closed by the test meanwhile
        self.closed = True

    def gaps(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        """Seconds between consecutive PINGs that arrived within [since, until]."""
        times = [t for t in self.arrivals if since <= t <= until]
        return [b - a for a, b in zip(times, times[1:])]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        self._thread.join(2)


def start_flood(mode: str, host: str, port: int, seconds: float, connections: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, FLOOD, mode, host, str(port), str(seconds), str(connections)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def flood_result(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, int]:
    """What the flood did; it ends by itself, so waiting for it is bounded."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the flood did not stop by itself") from None
    assert proc.returncode == 0, err.decode(errors="replace")
    result: dict[str, int] = json.loads(out.decode().strip().splitlines()[-1])
    return result
