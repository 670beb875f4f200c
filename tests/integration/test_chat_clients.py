"""
Issue 8 item 5: the chat port looks right in every terminal client.

Each client runs on a pty, as a person at a terminal would use it, and what
the person would *see* is rendered from the bytes the pty delivers
(tests/screen.py: CR to column 0, LF down one row, wide characters two
columns).  A staircase -- a line starting where the typed text ended,
``password:`` indented -- shows as a row that does not start at column 0;
stray telnet or control bytes show as strays.
"""

from __future__ import annotations

import os
import re
import shutil
import termios
from typing import Any, Callable

import pytest

from daemon import Daemon
from screen import render
from test_chat_port import LOGIN, PASSWORD, Terminal, clients  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration

BANNER = "boatwist chat: log in with your operator name and password"
WELCOME = "welcome, alice. online: alice. /help lists the commands."
GARBLED = ("error: that line was garbled by your telnet client (it took a UTF-8 byte for a control key before "
           "8-bit mode was on; it is on now) and was ignored: type it again")


def _argv(name: str) -> Callable[[Daemon], list[str]]:
    return {
        "telnet": lambda d: ["telnet", d.host, str(d.chat_port)],
        "telnet -8 -- HOST -PORT": lambda d: ["telnet", "-8", "--", d.host, f"-{d.chat_port}"],
        "nc": lambda d: ["nc", d.host, str(d.chat_port)],
        "socat": lambda d: ["socat", "-", f"TCP:{d.host}:{d.chat_port}"],
        "ncat": lambda d: ["ncat", d.host, str(d.chat_port)],
        "plink -raw": lambda d: ["plink", "-batch", "-raw", "-P", str(d.chat_port), d.host],
    }[name]


CLIENTS = [
    # (name, the program, negotiates at once (password hidden), masks 8-bit until asked)
    ("telnet", "telnet", False, True),
    ("telnet -8 -- HOST -PORT", "telnet", True, False),
    ("nc", "nc", False, False),
    ("socat", "socat", False, False),
    ("ncat", "ncat", False, False),
    ("plink -raw", "plink", False, False),
]


@pytest.mark.parametrize("name, program, hides_password, masks_8bit", CLIENTS, ids=[c[0] for c in CLIENTS])
def test_the_screen_is_right_in_every_client(daemon: Daemon, clients: Any, name: str, program: str,
                                             hides_password: bool, masks_8bit: bool) -> None:
    """
    Log in, say an ASCII+Chinese line and a line with 号 (whose 0x8F a
    7-bit telnet takes for ^O): every row of the screen starts at column 0,
    the password is hidden where the client can hide it, nothing stray is
    shown, and the UTF-8 comes back intact (plain telnet: after one line it
    garbled, which the server names, has switched it to 8-bit).
    """
    if shutil.which(program) is None and not os.environ.get("CI"):
        pytest.skip(f"{program} is not installed")
    term = clients(Terminal, _argv(name)(daemon), tty=True)
    term.expect(LOGIN, timeout=10)
    term.send("alice\r")
    term.expect(PASSWORD)
    if hides_password:
        term.wait_tty(lambda attrs: not attrs[3] & termios.ECHO, "echo off for the password")
    term.send("alice-pw\r")
    term.expect(re.compile(rb"welcome, alice\. online: [^\r\n]*\r\n"))
    term.send("hello 你好\r")
    term.expect("<alice> hello 你好\r\n")
    term.send("号 again\r")
    expected_tail = ["号 again"]
    if masks_8bit:
        term.expect(GARBLED + "\r\n")
        term.send("号 again\r")
        expected_tail += [GARBLED, "号 again"]
    term.expect("<alice> 号 again\r\n")
    screen = render(term.transcript)
    rows = screen.after(BANNER)
    while rows and not rows[-1]:
        rows.pop()
    print(f"\n{name}:\n" + "\n".join(f"  |{row}" for row in rows))
    assert rows == [
        BANNER,
        "login: alice",
        "password:" if hides_password else "password: alice-pw",
        WELCOME,
        "hello 你好",
        "<alice> hello 你好",
        *expected_tail,
        "<alice> 号 again",
    ]
    assert screen.stray == []


def test_nc_sending_ff_fe_in_a_message_is_not_taken_for_telnet(daemon: Daemon) -> None:
    """
    Issue 8 item 5, with the real nc (stdin a pipe, as a script uses it): a
    line holding the bytes FF FE (a UTF-16 byte-order mark pasted from a
    file) gets one clear error line; no telnet negotiation (IAC ...) comes
    back, and the next line works.
    """
    import subprocess
    import threading
    import time

    if shutil.which("nc") is None and not os.environ.get("CI"):
        pytest.skip("nc is not installed")
    proc = subprocess.Popen(["nc", daemon.host, str(daemon.chat_port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    received = bytearray()

    def pump() -> None:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(4096):
            received.extend(chunk)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    def wait_for(needle: bytes, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in received:
            assert time.monotonic() < deadline, f"{needle!r} not seen; got {bytes(received)!r}"
            time.sleep(0.02)  # integration: waiting for a real process's output; bounded

    try:
        assert proc.stdin is not None
        proc.stdin.write(b"alice\nalice-pw\n")
        proc.stdin.flush()
        wait_for(b"welcome, alice")
        proc.stdin.write(b"price \xff\xfe 12\nplain again\n")
        proc.stdin.flush()
        wait_for(b"<alice> plain again\r\n")
        assert b"error: that line is not valid UTF-8 and was ignored (set your terminal to UTF-8)\r\n" in received
        assert b"\xff" not in received, bytes(received)
    finally:
        proc.kill()
        proc.wait(5)
