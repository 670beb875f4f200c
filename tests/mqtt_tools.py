"""
Test tools around a real broker: a bridge in a process of its own
(L{BridgeProcess}, driving tests/mqtt_harness.py) and a subscriber built on
paho (L{Watcher}) whose waits are bounded and end on real messages.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

HARNESS = Path(__file__).parent / "mqtt_harness.py"


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class BridgeProcess:
    """One bridge (with fake daemon parts) in a child process."""

    def __init__(self, workdir: Path, broker: str, *args: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.stderr = open(workdir / "bridge.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, str(HARNESS), "--broker", broker, "--state-dir", str(workdir), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, preexec_fn=_die_with_parent,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.expect(lambda m: "ready" in m)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(json.loads(line))

    def send(self, **order: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(order) + "\n").encode())
        self.process.stdin.flush()

    def expect(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        """The first line (seen before or arriving within C{timeout}) that satisfies C{predicate}."""
        for line in self.seen:
            if predicate(line):
                self.seen.remove(line)
                return line
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"bridge did not say it within {timeout} s; said {self.seen}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if predicate(line):
                return line
            self.seen.append(line)

    def event(self, kind: str, **data: Any) -> None:
        self.send(event=kind, data=data)

    def stats(self) -> dict[str, Any]:
        self.send(stats=True)
        return self.expect(lambda m: "stats" in m)["stats"]

    def stop(self) -> None:
        """A clean stop: offline published, then DISCONNECT."""
        self.send(stop=True)
        self.expect(lambda m: "stopped" in m)
        self.process.wait(10)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def close(self) -> None:
        self.kill()
        self.stderr.close()


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.payload)


class Watcher:
    """A paho subscriber in a thread of its own; records everything it receives."""

    def __init__(self, port: int, *topics: str, persistent: str = "") -> None:
        """C{persistent}: a client id whose session (and QoS 1 queue) the broker keeps while we are away."""
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=persistent or f"watcher-{os.getpid()}-{id(self)}",
                             clean_session=not persistent)
        client.on_message = self._on_message
        client.on_subscribe = lambda *a: self._subscribed.set()
        client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        client.connect("127.0.0.1", port, 30)
        client.loop_start()
        self.client = client
        if not self._subscribed.wait(10):
            raise AssertionError("watcher could not subscribe")

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float = 10.0, after: int = 0) -> Received:
        """The first message from index C{after} on that satisfies C{predicate}, waiting up to C{timeout}."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages[after:]:
                    if predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no such message within {timeout} s; got {[(m.topic, m.payload) for m in self.messages[-20:]]}")
                self._cond.wait(left)

    def on(self, topic: str, timeout: float = 10.0, after: int = 0, where: Callable[[Any], bool] = lambda j: True) -> Received:
        return self.wait_for(lambda m: m.topic == topic and bool(m.payload) and where(m.json), timeout, after)

    def topics(self, prefix: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic.startswith(prefix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
