"""
Processes the Modbus tests need -- a pymodbus server, a socat pseudo-terminal
pair -- started with bounded waits and always killed.

Each helper is a context manager (or has start/stop) so a pytest fixture can
kill it however the test ends; nothing here is global.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SERVER = Path(__file__).resolve().parent / "modbus_server.py"
#: The Python that runs the server: this one, unless told otherwise -- to test the
#: client of one pymodbus version against the server of another (3.13's datastore
#: compatibility layer cannot build the test server's device).
SERVER_PYTHON = os.environ.get("BOATWIST_MODBUS_SERVER_PYTHON") or sys.executable

#: How long a helper process may take to say it is ready.
READY_WITHIN = 15.0


def require(what: str, present: bool) -> None:
    """Skip when a tool is missing -- but under CI a missing tool is a failure."""
    if present:
        return
    message = f"{what} is not installed"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI is set, so this is a failure (.ci/run installs it)")
    pytest.skip(message)


def pymodbus_present() -> bool:
    try:
        import pymodbus  # noqa: F401
        import serial  # noqa: F401
    except ImportError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_line(process: subprocess.Popen[bytes], stream: object, pattern: str, within: float) -> str:
    """Read C{stream} until a line matches C{pattern}; fail after C{within} seconds."""
    assert hasattr(stream, "fileno")
    deadline = time.monotonic() + within
    seen = b""
    fd = stream.fileno()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {pattern!r} within {within} s; got {seen[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"exited ({process.poll()}) before {pattern!r}; got {seen[-500:]!r}")
        seen += chunk
        match = re.search(pattern.encode(), seen)
        if match:
            return match.group(0).decode()


class ServerProcess:
    """``tests/modbus_server.py`` in a process of its own; start, kill, start again."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        assert self.process is None
        self.process = subprocess.Popen(
            [SERVER_PYTHON, str(SERVER), *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_for_line(self.process, self.process.stdout, r"ready", READY_WITHIN)
        except BaseException:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL: the device vanishes mid-conversation, no goodbye."""
        process, self.process = self.process, None
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()


class PtyPair:
    """Two connected pseudo-terminals made by socat: a null-modem cable in software."""

    def __init__(self, directory: Path) -> None:
        self.a = directory / "ttyA"
        self.b = directory / "ttyB"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PtyPair:
        socat = shutil.which("socat")
        assert socat is not None
        self.process = subprocess.Popen(
            [socat, "-d", "-d", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _wait_for_line(self.process, self.process.stderr, r"starting data transfer loop", READY_WITHIN)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()


class SilentServer:
    """A TCP port that accepts connections (the kernel does) and never answers a byte."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(8)
        self.port = int(self.socket.getsockname()[1])

    def close(self) -> None:
        self.socket.close()
