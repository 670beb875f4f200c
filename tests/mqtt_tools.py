"""
Test tools around a real broker: a bridge in a process of its own
(L{BridgeProcess}, driving tests/mqtt_harness.py), a subscriber built on
paho (L{Watcher}) whose waits are bounded and end on real messages, a
relay that holds a dead client's connection to the broker half-open
(L{HoldingProxy}), and a program on a terminal of its own (L{OnTerminal}:
embweb-fleet's live view).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import queue
import selectors
import signal
import socket
import struct
import subprocess
import sys
import termios
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


class HoldingProxy:
    """
    A TCP relay in front of the broker that plays the network between a device and it: bytes go both ways
    as they come, but when the device's side ends (kill -9, a power cut) the broker's side is *held* --
    open and silent, as a broker sees a connection whose peer vanished without a FIN reaching it -- until
    L{release}, which closes it: the broker reads EOF and publishes that connection's will at once.  What a
    broker's keepalive would do after 1.5 x keepalive, at a moment the test chooses.

    One thread, blocked in select() on real sockets (a socketpair wakes it to stop); every socket is closed
    by L{close}.
    """

    def __init__(self, broker_port: int) -> None:
        self._broker = ("127.0.0.1", broker_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._peer: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._held: list[socket.socket] = []
        self._holding = threading.Condition(self._lock)
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """The C{[mqtt] broker} string of a device that reaches the broker through this relay."""
        return f"tcp:127.0.0.1:{self.port}"

    def _run(self) -> None:
        while not self._closed:
            for key, _ in self._selector.select():
                sock = key.fileobj
                if sock is self._wake_r:
                    return
                if sock is self._listener:
                    self._accept()
                else:
                    self._relay(sock)  # type: ignore[arg-type]

    def _accept(self) -> None:
        device, _ = self._listener.accept()
        broker = socket.create_connection(self._broker, timeout=5)
        broker.settimeout(None)
        self._peer[device], self._peer[broker] = broker, device
        self._selector.register(device, selectors.EVENT_READ, "device")
        self._selector.register(broker, selectors.EVENT_READ, "broker")

    def _relay(self, sock: socket.socket) -> None:
        side = self._selector.get_key(sock).data
        other = self._peer[sock]
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if data:
            try:
                other.sendall(data)
            except OSError:
                pass  # the other side ends too; its own read says so
            return
        for s in (sock, other):
            self._selector.unregister(s)
            del self._peer[s]
        sock.close()
        if side == "device":
            with self._holding:  # the broker's side stays open: nothing more is read from it or sent
                self._held.append(other)
                self._holding.notify_all()
        else:
            other.close()

    def wait_holding(self, count: int = 1, timeout: float = 10.0) -> None:
        """Until C{count} connections are held (their device side ended); bounded."""
        with self._holding:
            if not self._holding.wait_for(lambda: len(self._held) >= count, timeout):
                raise AssertionError(f"{len(self._held)} of {count} connections held within {timeout} s")

    def release(self) -> None:
        """Close the held connections: the broker reads EOF now, as if its keepalive had just expired."""
        with self._lock:
            held, self._held = self._held, []
        for sock in held:
            sock.close()

    def close(self) -> None:
        self._closed = True
        self._wake_w.send(b"x")
        self._thread.join(10)
        self.release()
        for sock in list(self._peer):
            sock.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()


class OnTerminal:
    """
    A program on a pseudo-terminal that is its controlling terminal, as when a person runs it: it sees a
    tty (isatty), and C{interrupt} is the Ctrl-C they type (the line discipline sends SIGINT to it).  What
    it writes is read by a thread; C{wait_for} is bounded and ends on real output.
    """

    def __init__(self, argv: list[str], rows: int = 40, columns: int = 200) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

        def controlling_terminal() -> None:  # in the child, after setsid(): fd 0 becomes its terminal
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        try:
            self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                            preexec_fn=controlling_terminal)
        finally:
            os.close(slave)
        self._master = master
        self._cond = threading.Condition()
        self.output = b""
        self.ended = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: every holder of the terminal's other side is gone
                chunk = b""
            with self._cond:
                if not chunk:
                    self.ended = True
                    self._cond.notify_all()
                    return
                self.output += chunk
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[bytes], Any], timeout: float = 10.0, what: str = "output") -> Any:
        """The first true value of C{predicate}(everything written so far), waiting up to C{timeout}."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self.output)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0 or self.ended:
                    raise AssertionError(f"{what} not within {timeout} s (ended={self.ended}); "
                                         f"last output: {self.output[-3000:]!r}")
                self._cond.wait(left)

    def interrupt(self) -> None:
        """Ctrl-C typed at the terminal."""
        os.write(self._master, b"\x03")

    def wait(self, timeout: float = 10.0) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(10)
        os.close(self._master)
