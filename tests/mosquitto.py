"""
A real Mosquitto for tests: started on a free loopback port with a config
file written here, stopped (or killed) however the test ends, restartable
on the same port.  Waits are bounded and wait for the port to answer.

Where mosquitto is missing the tests that need it are skipped -- except
under CI=true, where that is a failure: CI installs it (.ci/run).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import pytest


def mosquitto_binary() -> str:
    """The mosquitto executable; skip (fail under CI) when it is not installed."""
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)
    if found is None or shutil.which("mosquitto_sub") is None:
        message = "mosquitto and mosquitto-clients are not installed (apt-get install mosquitto mosquitto-clients)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """One broker process; C{address} is the boatwist C{[mqtt] broker} string."""

    def __init__(self, workdir: Path, port: int | None = None, extra_config: str = "") -> None:
        self.binary = mosquitto_binary()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra_config = extra_config
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "mosquitto.log"

    @property
    def address(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Mosquitto:
        config = self.workdir / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "log_timestamp true\n"
            # As root mosquitto drops to the user "mosquitto", who cannot write a test's
            # private directory (persistence); stay who we are.
            + ("user root\n" if os.geteuid() == 0 else "")
            + self.extra_config
        )
        log = open(self.log, "ab")
        self.process = subprocess.Popen([self.binary, "-c", str(config)], stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s")
                time.sleep(0.05)

    def wait_log(self, text: str, count: int = 1, timeout: float = 10.0) -> None:
        """Until C{text} has appeared C{count} times in the broker's log (bounded)."""
        deadline = time.monotonic() + timeout
        while self.log.read_text(errors="replace").count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not {count} times in the broker's log within {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def restart(self) -> Mosquitto:
        """Stop and start again on the same port (retained messages are gone: persistence is off)."""
        self.stop()
        return self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
