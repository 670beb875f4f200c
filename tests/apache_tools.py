"""
Apache's password tools, driven as an operator would drive them.

htdigest reads the password from its controlling terminal (getpass) and
flushes typed-ahead input, so it needs a pty and an answer to each prompt.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import time
from pathlib import Path


def run_htdigest(path: Path, realm: str, user: str, password: str, create: bool = False) -> None:
    """
    Run the real htdigest, which reads the password from its controlling
    terminal (getpass) and flushes typed-ahead input: give it a pty and
    answer each prompt when it appears.  Bounded by a deadline, no sleeps.
    """
    argv = ["htdigest", *(["-c"] if create else []), str(path), realm, user]
    pid, fd = pty.fork()
    if pid == 0:  # child
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    output, answered_at = b"", 0
    answers = [password.encode(), password.encode()]
    deadline = time.monotonic() + 20
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"htdigest did not finish: {output!r}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            # Answer a prompt printed since the last answer (glibc's getpass
            # flushes pending input *before* printing it, so this cannot be lost).
            if answers and output[answered_at:].rstrip().lower().endswith(b"password:"):
                os.write(fd, answers.pop(0) + b"\n")
                answered_at = len(output)
    finally:
        os.close(fd)
        if time.monotonic() >= deadline:  # still waiting for a prompt: do not hang the suite
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output


def run_htpasswd(path: Path, user: str, password: str, create: bool = False) -> None:
    """Apache's ``htpasswd -B`` (bcrypt, its default cost 5), the password on standard input (``-i``)."""
    import subprocess

    argv = ["htpasswd", *(["-c"] if create else []), "-B", "-i", str(path), user]
    done = subprocess.run(argv, input=password + "\n", capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
