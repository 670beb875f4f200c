"""
The real ``nc`` program (Debian's netcat-openbsd) as an operator on the chat
port: what a person types goes to its stdin, what the daemon sends comes
out of its stdout.  Not a Python socket pretending to be one: nc sends bare
``\\n`` line ends, writes each line as it is typed, and keeps its own socket
options (no keepalive, no TCP_USER_TIMEOUT of its own).

    carol = Netcat(daemon.chat_port, "carol", "carol-pw")   # logged in
    carol.type("/set setpoint 42.5")
    carol.read_until(b"* carol set ")
    carol.quit()                      # /quit, then the end of its input (Ctrl-D)

C{prefix} runs nc through another program: C{["ip", "netns", "exec", NS]}
puts it in a network namespace.  Every wait is bounded; C{close()} ends the
process (and its group) however the test ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from typing import Sequence

import pytest

WAIT = 10.0


def nc_binary() -> str:
    """The nc program, or skip the test (fail it under CI, which installs netcat-openbsd)."""
    found = shutil.which("nc")
    if found is not None:
        return found
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail("no nc: install the Debian package netcat-openbsd (.ci/run does)", pytrace=False)
    pytest.skip("no nc (netcat-openbsd)")


class Netcat:
    """One ``nc HOST PORT`` process, logged in as C{user} when a user is given."""

    def __init__(self, port: int, user: str | None = None, password: str | None = None,
                 host: str = "127.0.0.1", prefix: Sequence[str] = ()) -> None:
        argv = [*prefix, nc_binary(), host, str(port)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.buffer = b""
        #: Everything nc printed, for failure messages.
        self.seen = b""
        self._cond = threading.Condition()
        self._eof = False
        threading.Thread(target=self._pump, daemon=True).start()
        if user is not None:
            try:
                self.login(user, password or "")
            except BaseException:
                self.close()
                raise

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            with self._cond:
                if not chunk:
                    self._eof = True
                    self._cond.notify_all()
                    return
                self.buffer += chunk
                self.seen += chunk
                self._cond.notify_all()

    def login(self, user: str, password: str) -> None:
        self.read_until(b"login: ")
        self.type(user)
        self.read_until(b"password: ")
        self.type(password)
        self.read_until(b"welcome")

    def read_until(self, needle: bytes, timeout: float = WAIT) -> bytes:
        """What came before C{needle}; the rest stays for the next read."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while needle not in self.buffer:
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise AssertionError(f"nc: {needle!r} not received within {timeout} s "
                                         f"(ended: {self._eof}); it printed: {self.seen[-2000:]!r}")
                self._cond.wait(min(left, 0.2))
            head, _, self.buffer = self.buffer.partition(needle)
            return head

    def type(self, line: str) -> None:
        """A line typed into nc and Enter (nc sends it with a bare \\n)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode("utf-8") + b"\n")
        self.proc.stdin.flush()

    def quit(self, timeout: float = WAIT) -> int:
        """C{/quit}, and once the daemon says bye, the end of nc's input (Ctrl-D): nc's exit status."""
        self.type("/quit")
        self.read_until(b"bye", timeout)
        assert self.proc.stdin is not None
        # nc keeps running after the daemon closed while its input is open; at its end it exits.
        self.proc.stdin.close()
        return self.proc.wait(timeout)

    def close(self) -> None:
        """End nc however the test ended (no-op when it has exited)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
