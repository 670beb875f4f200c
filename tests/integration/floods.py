"""
Hostile clients for the flood tests and bench/floods.py: bounded, loopback only.

Each flood runs in a child process of its own (``python floods.py KIND ...``),
so its busy loop does not share a GIL with the operator being measured; it
stops by itself after ``--seconds``, prints ``ready`` once its first wave is
out and a JSON line of counts when it ends.  Every socket is bound to a
127.0.0.0/8 address (many sources on one machine) and connects to 127.0.0.1.

Kinds (issue 9, goal 1 and goal 2):

  idle     keep-alive connections that each send ``GET /healthz`` and then
           one every ``--interval`` seconds; one that is closed is reopened
           ``--reconnect`` seconds later (and sends at once)
  trickle  connections that send request-header bytes one a second and never
           finish; reopened ``--reconnect`` seconds after each close (408 or reset)
  hoard    connections that send nothing; reopened ``--reconnect`` s after a close
  guess    Digest guesses (MD5, qop=auth) on one user name, each connection
           fetching a nonce and then guessing with nc = 1, 2, ...; counts the
           401s (checked guesses) and 429s (refused unchecked) per second

The operator's side (what the tests assert on) is L{operator_requests}.
"""

from __future__ import annotations

import argparse
import base64
import errno
import hashlib
import json
import os
import re
import selectors
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent

#: Bytes a trickler sends, one a second: a request whose headers never end.
TRICKLE = b"GET /api/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4096


def addresses(count: int, third: int = 0, first: int = 2) -> list[str]:
    """C{count} loopback addresses 127.0.THIRD.FIRST, ...: sources that are not the operator's 127.0.0.1."""
    return [f"127.0.{third + (first + i) // 250}.{(first + i) % 250}" for i in range(count)]


# ---------------------------------------------------------------- the floods


@dataclass(eq=False)
class _Slot:
    source: str
    sock: socket.socket | None = None
    connected: bool = False
    due: float = 0.0  # when to (re)connect or send next
    sent: int = 0
    inbox: bytes = b""
    # guess state
    nonce: str = ""
    opaque: str = ""
    nc: int = 0
    waiting: bool = False
    guessed: bool = False  # the request in flight carries a guess


@dataclass
class Counts:
    opened: int = 0
    closed: int = 0
    refused: int = 0  # connect failed or reset before established
    responses: dict[str, int] = field(default_factory=dict)
    checked_per_second: dict[int, int] = field(default_factory=dict)


class Flood:
    def __init__(self, kind: str, port: int, sources: list[str], per_source: int, seconds: float,
                 reconnect: float, interval: float, user: str, target: str = "127.0.0.1") -> None:
        self.kind = kind
        self.port = port
        self.target = target
        self.seconds = seconds
        self.reconnect = reconnect
        self.interval = interval
        self.user = user
        self.slots = [_Slot(source) for source in sources for _ in range(per_source)]
        self.selector = selectors.DefaultSelector()
        self.counts = Counts()
        self.started = time.monotonic()

    # -- connections

    def _open(self, slot: _Slot, now: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        try:
            sock.bind((slot.source, 0))
            err = sock.connect_ex((self.target, self.port))
        except OSError:
            sock.close()
            slot.due = now + self.reconnect
            self.counts.refused += 1
            return
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            slot.due = now + self.reconnect
            self.counts.refused += 1
            return
        slot.sock, slot.connected, slot.sent, slot.inbox, slot.waiting = sock, False, 0, b"", False
        slot.guessed = False
        slot.nonce = ""
        self.selector.register(sock, selectors.EVENT_WRITE, slot)

    def _close(self, slot: _Slot, now: float) -> None:
        if slot.sock is not None:
            self.selector.unregister(slot.sock)
            slot.sock.close()
            self.counts.closed += 1
        slot.sock, slot.connected = None, False
        slot.due = now + self.reconnect

    def _send(self, slot: _Slot, data: bytes, now: float) -> bool:
        assert slot.sock is not None
        try:
            slot.sock.send(data)
            return True
        except OSError:
            self._close(slot, now)
            return False

    # -- what each kind says

    def _established(self, slot: _Slot, now: float) -> None:
        slot.connected = True
        self.counts.opened += 1
        assert slot.sock is not None
        self.selector.modify(slot.sock, selectors.EVENT_READ, slot)
        if self.kind == "idle":
            self._send(slot, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", now)
            slot.due = now + self.interval
        elif self.kind == "trickle":
            self._trickle(slot, now)
        elif self.kind == "guess":
            self._send(slot, b"GET /api/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", now)
            slot.waiting = True
            slot.due = float("inf")
        else:
            slot.due = float("inf")

    def _trickle(self, slot: _Slot, now: float) -> None:
        if slot.sent < len(TRICKLE) and self._send(slot, TRICKLE[slot.sent:slot.sent + 1], now):
            slot.sent += 1
        slot.due = now + 1.0

    def _due(self, slot: _Slot, now: float) -> None:
        if slot.sock is None:
            self._open(slot, now)
        elif not slot.connected:
            return
        elif self.kind == "idle":
            self._send(slot, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", now)
            slot.due = now + self.interval
        elif self.kind == "trickle":
            self._trickle(slot, now)
        elif self.kind == "guess" and not slot.waiting:
            self._guess(slot, now)

    def _guess(self, slot: _Slot, now: float) -> None:
        slot.nc += 1
        uri = "/api/whoami"
        password = f"guess-{os.getpid()}-{id(slot)}-{slot.nc}"

        def h(text: str) -> str:
            return hashlib.md5(text.encode()).hexdigest()

        cnonce = os.urandom(8).hex()
        nc = f"{slot.nc:08x}"
        response = h(f"{h(f'{self.user}:boatwist:{password}')}:{slot.nonce}:{nc}:{cnonce}:auth:{h(f'GET:{uri}')}")
        header = (f'Digest username="{self.user}", realm="boatwist", nonce="{slot.nonce}", uri="{uri}", '
                  f'algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}", response="{response}", '
                  f'opaque="{slot.opaque}"')
        request = f"GET {uri} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {header}\r\n\r\n".encode()
        if self._send(slot, request, now):
            slot.waiting = True
            slot.guessed = True
            slot.due = float("inf")

    def _readable(self, slot: _Slot, now: float) -> None:
        assert slot.sock is not None
        try:
            data = slot.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(slot, now)
            return
        slot.inbox += data
        while True:
            head, sep, rest = slot.inbox.partition(b"\r\n\r\n")
            if not sep:
                return
            match = re.search(rb"content-length:\s*(\d+)", head, re.I)
            length = int(match.group(1)) if match else 0
            if len(rest) < length:
                return
            slot.inbox = rest[length:]
            self._response(slot, head, now)
            if slot.sock is None:
                return

    def _response(self, slot: _Slot, head: bytes, now: float) -> None:
        status = head.split(b" ", 2)[1].decode() if b" " in head else "?"
        self.counts.responses[status] = self.counts.responses.get(status, 0) + 1
        if self.kind != "guess":
            if b"connection: close" in head.lower():
                self._close(slot, now)
            return
        slot.waiting = False
        if status == "401" and slot.guessed:
            second = int(now - self.started)
            self.counts.checked_per_second[second] = self.counts.checked_per_second.get(second, 0) + 1
        slot.guessed = False
        if not slot.nonce:
            found = dict(re.findall(rb'(nonce|opaque)="([^"]*)"', head))
            if b"nonce" not in found:
                self._close(slot, now)
                return
            slot.nonce = found[b"nonce"].decode()
            slot.opaque = found.get(b"opaque", b"").decode()
            slot.nc = 0
        if b"connection: close" in head.lower():
            self._close(slot, now)
            return
        slot.due = now + self.interval

    # -- the loop

    def stop_now(self, *args: object) -> None:
        """SIGTERM: end the loop at once (the counts are still printed)."""
        self.seconds = 0.0

    def run(self, ready: IO[str]) -> Counts:
        for slot in self.slots:
            self._open(slot, self.started)
        said_ready = False
        while True:
            now = time.monotonic()
            if now >= self.started + self.seconds:
                break
            if not said_ready and (now - self.started > 2 or all(s.connected for s in self.slots)):
                ready.write("ready\n")
                ready.flush()
                said_ready = True
            for key, events in self.selector.select(timeout=0.02):
                slot = key.data
                if slot.sock is None:
                    continue
                if not slot.connected:
                    error = slot.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        self.counts.refused += 1
                        self._close(slot, now)
                    else:
                        self._established(slot, now)
                else:
                    self._readable(slot, now)
            now = time.monotonic()
            for slot in self.slots:
                if slot.due <= now:
                    self._due(slot, now)
        for slot in self.slots:
            if slot.sock is not None:
                slot.sock.close()
        self.selector.close()
        return self.counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("idle", "trickle", "hoard", "guess"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sources", required=True, help="comma-separated 127.x.y.z addresses")
    parser.add_argument("--per-source", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--reconnect", type=float, default=0.5)
    parser.add_argument("--interval", type=float, default=50.0)
    parser.add_argument("--user", default="alice")
    args = parser.parse_args(argv)
    sources = args.sources.split(",")
    assert all(s.startswith("127.") for s in sources), "floods stay on loopback"
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = len(sources) * args.per_source + 64
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    flood = Flood(args.kind, args.port, sources, args.per_source, args.seconds, args.reconnect, args.interval,
                  args.user)
    import signal

    signal.signal(signal.SIGTERM, flood.stop_now)
    counts = flood.run(sys.stdout)
    print(json.dumps(counts.__dict__, default=str), flush=True)


# ------------------------------------------------------- from the test side


class Running:
    """A flood child process: started, waited for (ready), ended (always), its counts read."""

    def __init__(self, kind: str, port: int, sources: list[str], per_source: int = 1, seconds: float = 15.0,
                 **options: Any) -> None:
        argv = [sys.executable, str(HERE / "floods.py"), kind, "--port", str(port), "--sources", ",".join(sources),
                "--per-source", str(per_source), "--seconds", str(seconds)]
        for name, value in options.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.seconds = seconds
        self.counts: dict[str, Any] = {}

    def wait_ready(self, timeout: float = 10.0) -> None:
        assert self.proc.stdout is not None
        done = threading.Event()
        line: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            line.append(self.proc.stdout.readline())
            done.set()

        threading.Thread(target=read, daemon=True).start()
        if not done.wait(timeout) or line[0].strip() != "ready":
            self.stop()
            raise AssertionError(f"flood not ready within {timeout}s: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}")

    def stop(self) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        for text in reversed((out or "").splitlines()):
            if text.startswith("{"):
                self.counts = json.loads(text)
                break
        return self.counts

    def finish(self) -> dict[str, Any]:
        """Wait for the flood to stop by itself (its --seconds), then read its counts."""
        try:
            self.proc.wait(timeout=self.seconds + 10)
        except subprocess.TimeoutExpired:
            pass
        return self.stop()

    def __enter__(self) -> "Running":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Answer:
    ok: bool
    status: int | None
    seconds: float
    error: str = ""


def operator_request(port: int, user: str, password: str, source: str = "127.0.0.1", timeout: float = 1.0,
                     path: str = "/api/whoami") -> Answer:
    """
    One authenticated request (Basic) on a fresh connection from C{source}:
    ok when answered 200 within C{timeout} seconds, connection included.
    """
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {token}\r\n"
               "Connection: close\r\n\r\n").encode()
    started = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                raise TimeoutError("no answer in time")
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed without an answer")
            data += chunk
        status = int(data.split(b" ", 2)[1])
        took = time.monotonic() - started
        return Answer(status == 200 and took <= timeout, status, took)
    except OSError as e:
        return Answer(False, None, time.monotonic() - started, f"{type(e).__name__}: {e}")
    finally:
        sock.close()


def operator_series(port: int, user: str, password: str, count: int, every: float, source: str = "127.0.0.1",
                    timeout: float = 1.0) -> list[Answer]:
    """C{count} requests, one every C{every} seconds (or right after the last when it took longer)."""
    answers = []
    next_at = time.monotonic()
    for _ in range(count):
        answers.append(operator_request(port, user, password, source, timeout))
        next_at += every
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # integration: paces real requests; bounded by count * every
    return answers


def summary(answers: list[Answer]) -> tuple[float, float]:
    """(share answered 200 within the timeout, p99 latency in seconds)."""
    if not answers:
        return 0.0, 0.0
    ok = sum(1 for a in answers if a.ok) / len(answers)
    times = sorted(a.seconds for a in answers)
    p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
    return ok, p99


if __name__ == "__main__":
    main()
