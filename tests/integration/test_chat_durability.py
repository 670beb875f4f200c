"""
Durability of the chat history under ``kill -9``, against the real daemon.

The store's contract (boatwist/store/service.py): a message is acknowledged (201 to
the browser, echoed to the chat port) only after COMMIT, and every commit is
fsync'd, so a SIGKILL at any moment loses nothing anyone was told was sent.
Here the daemon is killed at random moments while messages stream in over
HTTP and the chat port, restarted, killed again; afterwards every
acknowledged message is in the history and SQLite finds the file intact.

No fixed sleeps: posters wait on "the daemon is up" (an Event the test
sets after /healthz answers) and on their own sockets, all with deadlines.
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import signal
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from daemon import Daemon

pytestmark = pytest.mark.integration

KILLS = 5
#: Random moment of each kill, seconds after the daemon answered /healthz.
KILL_AFTER = (0.2, 1.2)
#: Each poster's bound on waiting for a restart, seconds.
RESTART_WAIT = 30.0

USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}


@dataclass
class Ledger:
    """What the clients were told (acknowledged) and what else happened, thread-safe."""

    lock: threading.Condition = field(default_factory=threading.Condition)
    acked: dict[str, int] = field(default_factory=dict)  # text -> message id (0 when the id is unknown)
    sent: set[str] = field(default_factory=set)
    odd_answers: list[Any] = field(default_factory=list)

    def send(self, text: str) -> None:
        with self.lock:
            self.sent.add(text)

    def ack(self, text: str, ident: int) -> None:
        with self.lock:
            assert text not in self.acked, f"acknowledged twice: {text}"
            self.acked[text] = ident
            self.lock.notify_all()

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def wait_count(self, n: int, timeout: float) -> bool:
        with self.lock:
            return self.lock.wait_for(lambda: len(self.acked) >= n, timeout)

    def odd(self, what: Any) -> None:
        with self.lock:
            self.odd_answers.append(what)


class Up:
    """Whether the daemon is serving, and a generation number that changes with each restart."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.serving = False
        self.generation = 0
        self.stopping = False

    def set(self, serving: bool) -> None:
        with self._cond:
            self.serving = serving
            if serving:
                self.generation += 1
            self._cond.notify_all()

    def is_stopping(self) -> bool:
        with self._cond:
            return self.stopping

    def stop(self) -> None:
        with self._cond:
            self.stopping = True
            self._cond.notify_all()

    def wait_serving(self, after_generation: int) -> int | None:
        """Wait for a generation newer than C{after_generation}; None when the test is ending."""
        deadline = time.monotonic() + RESTART_WAIT
        with self._cond:
            while not self.stopping and not (self.serving and self.generation > after_generation):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("daemon did not come back")
                self._cond.wait(left)
            return None if self.stopping else self.generation


def http_poster(daemon: Daemon, user: str, ledger: Ledger, up: Up, errors: list[BaseException]) -> None:
    """POST numbered messages on a keep-alive connection; a 201 is an acknowledgement."""
    token = base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    n = 0
    try:
        generation = up.wait_serving(0)
        while generation is not None:
            conn = http.client.HTTPConnection(daemon.host, daemon.http_port, timeout=10)
            try:
                while True:
                    n += 1
                    text = f"{user} web #{n}"
                    ledger.send(text)
                    conn.request("POST", "/api/chat", json.dumps({"text": text}), headers)
                    response = conn.getresponse()
                    body = response.read()
                    if response.status == 201:
                        stored = json.loads(body)
                        assert stored["text"] == text, stored
                        ledger.ack(text, stored["id"])
                    else:
                        ledger.odd((text, response.status, body))
                    if up.is_stopping():
                        return
            except (OSError, http.client.HTTPException):
                pass  # killed under us: this message is not acknowledged
            finally:
                conn.close()
            generation = up.wait_serving(generation)
    except BaseException as e:  # noqa: BLE001 - reported by the test
        errors.append(e)


class LineSocket:
    """A raw chat-port client: bounded reads up to a marker."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.buffer = b""

    def until(self, marker: bytes, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{marker!r} not received; got {self.buffer[-300:]!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buffer += chunk
        before, self.buffer = self.buffer.split(marker, 1)
        return before

    def close(self) -> None:
        self.sock.close()


def chat_poster(daemon: Daemon, user: str, ledger: Ledger, up: Up, errors: list[BaseException]) -> None:
    """
    Say numbered lines on the chat port, one at a time; the line coming back
    (the room sends it only after COMMIT) is the acknowledgement.
    """
    n = 0
    try:
        generation = up.wait_serving(0)
        while generation is not None:
            client = None
            try:
                client = LineSocket(daemon.host, daemon.chat_port)
                client.until(b"login: ")
                client.sock.sendall(f"{user}\n".encode())
                client.until(b"password: ")
                client.sock.sendall(f"{USERS[user]}\n".encode())
                client.until(b"/help lists the commands.\r\n")
                while True:
                    n += 1
                    text = f"{user} chat #{n}"
                    ledger.send(text)
                    client.sock.sendall(text.encode() + b"\n")
                    while True:
                        line = client.until(b"\r\n").decode()
                        if line == f"<{user}> {text}":
                            ledger.ack(text, 0)
                            break
                        if line.startswith("error:"):
                            ledger.odd((text, line))
                            break
                    if up.is_stopping():
                        return
            except (OSError, ConnectionError):
                pass  # killed under us (or not yet listening): not acknowledged
            finally:
                if client is not None:
                    client.close()
            generation = up.wait_serving(generation)
    except BaseException as e:  # noqa: BLE001 - reported by the test
        errors.append(e)


def full_history(daemon: Daemon) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    after = 0
    for _ in range(10000):
        page = daemon.get_json(f"/api/chat?after={after}&limit=500", "alice")["messages"]
        if not page:
            return messages
        messages += page
        after = page[-1]["id"]
    raise AssertionError("history paging did not end")


def test_acknowledged_messages_survive_kill_9(make_daemon: Any) -> None:
    """
    Messages stream in from two browsers (POST /api/chat) and a chat-port
    user while the daemon is SIGKILLed at random moments and restarted, 5
    times.  Afterwards, every message that was acknowledged (201, or echoed
    to its chat-port sender) is in the history (paged through GET
    /api/chat) exactly once with the id it was acknowledged with; no
    message appears twice; every POST that got an answer got 201; ids grow
    with history order; and ``PRAGMA integrity_check`` on
    state_dir/boatwist.sqlite says ``ok`` once the daemon is stopped.
    """
    daemon = make_daemon(
        "[chat]\nrate_messages = 100000\nrate_period = 1\n[store]\nretention_count = 1000000\n",
        users=USERS,
    )
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    ledger, up, errors = Ledger(), Up(), []
    threads = [
        threading.Thread(target=http_poster, args=(daemon, "alice", ledger, up, errors), daemon=True),
        threading.Thread(target=http_poster, args=(daemon, "carol", ledger, up, errors), daemon=True),
        threading.Thread(target=chat_poster, args=(daemon, "bob", ledger, up, errors), daemon=True),
    ]
    for thread in threads:
        thread.start()
    acked_per_run = []
    started = time.monotonic()
    try:
        for _ in range(KILLS):
            daemon.start()
            up.set(True)
            before = ledger.count()
            # The kill comes at a random moment after the daemon serves: a
            # wait on the clock alone is the point here, not a stand-in for an event.
            threading.Event().wait(rng.uniform(*KILL_AFTER))
            up.set(False)
            daemon.kill9()
            acked_per_run.append(ledger.count() - before)
        daemon.start()
        up.set(True)
        # After the last restart, a few more acknowledgements: the posters recovered.
        assert ledger.wait_count(ledger.count() + 20, timeout=10), "no messages after the last restart"
    finally:
        up.stop()
        for thread in threads:
            thread.join(15)
    elapsed = time.monotonic() - started
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a poster did not stop"

    history = full_history(daemon)
    # twistd ends a SIGTERM'd run by re-raising the signal: -15 is a clean stop.
    assert daemon.stop() in (0, -signal.SIGTERM), "twistd did not stop on SIGTERM"
    assert "Server Shut Down." in daemon.log_text().rsplit("Received SIGTERM", 1)[-1]
    print(f"\nseed {seed}: {KILLS} kills in {elapsed:.1f} s; acknowledged per run: {acked_per_run}; "
          f"{len(ledger.acked)} acknowledged ({sum(' chat #' in t for t in ledger.acked)} on the chat port) "
          f"of {len(ledger.sent)} sent; {len(history)} in history")

    assert all(n > 0 for n in acked_per_run), f"some run acknowledged nothing: {acked_per_run}"
    assert not ledger.odd_answers, f"answers other than 201 / the echo: {ledger.odd_answers[:5]}"
    texts = [m["text"] for m in history]
    assert len(texts) == len(set(texts)), "a message is stored twice"
    assert set(texts) <= ledger.sent, f"never sent: {set(texts) - ledger.sent}"
    ids = [m["id"] for m in history]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "history ids do not grow"
    by_text = {m["text"]: m for m in history}
    lost = sorted(set(ledger.acked) - set(by_text))
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {lost[:5]}"
    wrong_id = [(t, i, by_text[t]["id"]) for t, i in ledger.acked.items() if i and by_text[t]["id"] != i]
    assert not wrong_id, f"stored under another id than acknowledged: {wrong_id[:5]}"
    assert {by_text[t]["via"] for t in ledger.acked if " chat #" in t} == {"chat"}
    assert {by_text[t]["via"] for t in ledger.acked if " web #" in t} == {"web"}

    database = daemon.state / "boatwist.sqlite"
    conn = sqlite3.connect(str(database))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == len(history)
    finally:
        conn.close()
