"""
Clients for the device-control tests against the real daemon: curl, a
recording event-stream watcher, an ``/metrics`` reader.

* L{curl}: one request with the real ``curl`` (a subprocess), Basic auth,
  the status and the JSON body it got.  Missing curl skips -- and fails
  under CI (``modbus_tools.require``).
* L{Watch}: an event stream (``GET /api/events`` on a raw socket, the
  ``SSEReader`` of ``daemon.py``) read by a thread of its own into a list,
  so a test can wait for one event (bounded) and afterwards look at the
  order of everything that arrived; it also notices when the server closes
  the stream.
* L{metric}: one sample of ``/metrics``, parsed with prometheus_client's own
  parser.

Every wait is bounded and waits for a real event; nothing sleeps.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from typing import Any, Callable

from daemon import Daemon, SSEReader
from modbus_tools import require

__all__ = ["Watch", "curl", "metric", "ops_of", "require_curl"]


def require_curl() -> str:
    path = shutil.which("curl")
    require("curl", path is not None)
    assert path is not None
    return path


def curl(daemon: Daemon, method: str, path: str, user: str, body: str | None = None,
         headers: tuple[str, ...] = (), timeout: float = 15.0) -> tuple[int, Any]:
    """
    ``curl -X METHOD`` as C{user} (Basic): the status and the body (JSON
    decoded when it is JSON).  C{body} is sent byte for byte
    (``--data-binary``), so a test can send what Python would never write
    (``NaN``, a cut-off object).
    """
    argv = [require_curl(), "-sS", "--max-time", str(timeout), "-u", f"{user}:{daemon.users[user]}",
            "-X", method, "-o", "-", "-w", "\n%{http_code}"]
    for header in headers:
        argv += ["-H", header]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "--data-binary", body]
    argv.append(f"{daemon.url}{path}")
    done = subprocess.run(argv, capture_output=True, timeout=timeout + 5)
    assert done.returncode == 0, (argv, done.returncode, done.stderr)
    text, _, status = done.stdout.decode("utf-8").rpartition("\n")
    try:
        return int(status), json.loads(text)
    except ValueError:
        return int(status), text


class Watch:
    """
    One user's event stream, recorded: C{events} holds (kind, data, arrival
    time) in the order they arrived.
    """

    def __init__(self, daemon: Daemon, user: str, last_event_id: str | None = None) -> None:
        self.user = user
        self.reader = SSEReader(daemon.host, daemon.http_port, user, daemon.users[user], last_event_id)
        assert self.reader.status == 200, self.reader.head
        self.events: list[tuple[str, dict, float]] = []
        #: Set when the server ended the stream (not when we closed it).
        self.ended_at: float | None = None
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{user}")
        self._thread.start()

    def _run(self) -> None:
        try:
            for kind, data, at in self.reader.events(timeout=3600):
                with self._cond:
                    self.events.append((kind, data, at))
                    self._cond.notify_all()
        except OSError:
            pass
        with self._cond:
            if not self._closing:
                self.ended_at = time.monotonic()
            self._cond.notify_all()

    def wait(self, predicate: Callable[[str, dict], bool], timeout: float = 10.0, since: int = 0) -> dict:
        """The first event at index C{since} or later that matches; fails after C{timeout} s."""
        index = self.wait_index(predicate, timeout, since)
        return self.events[index][1]

    def wait_index(self, predicate: Callable[[str, dict], bool], timeout: float = 10.0, since: int = 0) -> int:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(since, len(self.events)):
                    kind, data, _ = self.events[i]
                    if predicate(kind, data):
                        return i
                left = deadline - time.monotonic()
                if left <= 0 or self.ended_at is not None:
                    raise AssertionError(f"{self.user}'s stream: no matching event within {timeout} s "
                                         f"(ended: {self.ended_at is not None}); got:\n" + self.dump(since))
                self._cond.wait(left)

    def wait_ended(self, timeout: float = 10.0) -> float:
        """When the server closed the stream; fails if it is still open after C{timeout} s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.ended_at is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.user}'s stream still open after {timeout} s")
                self._cond.wait(left)
            return self.ended_at

    def mark(self) -> int:
        """The index the next event will have: C{wait(..., since=watch.mark())} ignores what came before."""
        with self._cond:
            return len(self.events)

    def of_kind(self, kind: str, since: int = 0) -> list[dict]:
        with self._cond:
            return [data for k, data, _ in self.events[since:] if k == kind]

    def dump(self, since: int = 0) -> str:
        return "\n".join(f"  {k} {json.dumps(d)}" for k, d, _ in self.events[since:]) or "  (nothing)"

    def close(self) -> None:
        with self._cond:
            self._closing = True
        try:
            self.reader.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.reader.close()
        self._thread.join(5)


def ops_of(control: str, **fields: Any) -> Callable[[str, dict], bool]:
    """A predicate: a C{control} event about C{control} whose data has C{fields}."""
    def match(kind: str, data: dict) -> bool:
        return kind == "control" and data.get("control") == control and all(
            data.get(k) == v for k, v in fields.items())
    return match


def metric(daemon: Daemon, user: str, name: str, **labels: str) -> float | None:
    """One sample of C{/metrics} (None when absent), as a scraper parses it."""
    from prometheus_client.parser import text_string_to_metric_families

    status, _, body = daemon.get("/metrics", user)
    assert status == 200, (status, body[:200])
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None
