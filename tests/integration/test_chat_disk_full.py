"""
A full disk under the real daemon: the state directory is a 512 KiB tmpfs
mounted for the test (root only), filled to the last byte with a filler file.

A device's disk fills up (logs, uploads); the chat must say "not saved",
keep serving, log the condition once rather than once per message, and
work again as soon as space is freed (boatwist/store/service.py, StoreFull).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from daemon import Daemon
from test_chat_port import Terminal, login, nc

pytestmark = pytest.mark.integration

#: Lines of the daemon's log about the full store (access-log lines excluded).
FULL_LOG = re.compile(r"not saved|store full|disk is full|disk full", re.I)


def _need_root() -> None:
    if os.geteuid() != 0:
        message = "mounting a tmpfs needs root (run as root, or in CI)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI is set, so this is a failure")
        pytest.skip(message)


@pytest.fixture
def small_disk_daemon(tmp_path: Path) -> Iterator[Daemon]:
    """
    A daemon (not started) whose state_dir is a fresh 512 KiB tmpfs.  The
    daemon is stopped and the tmpfs unmounted afterwards, even on failure.
    """
    _need_root()
    workdir = tmp_path / "disk-full"
    state = workdir / "var"
    state.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(state)],
                   check=True, capture_output=True, text=True)
    daemon = None
    try:
        # The rate limit is raised: the store's own WAL room is used up by posting fast.
        daemon = Daemon(workdir, config="[chat]\nrate_messages = 100000\n")
        assert daemon.state == state
        yield daemon
    finally:
        if daemon is not None:
            daemon.stop()
        done = subprocess.run(["umount", str(state)], capture_output=True, text=True)
        if done.returncode != 0:  # something still holds it: detach it rather than leave it mounted
            subprocess.run(["umount", "-l", str(state)], check=True)


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem has not one byte left; returns its path."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            block = b"\x01" * size
            for _ in range(1 << 20):  # bounded: 512 KiB / 1 byte at worst
                try:
                    os.write(fd, block)
                except OSError as e:
                    assert e.errno == 28, e  # ENOSPC
                    break
    finally:
        os.close(fd)
    assert os.statvfs(directory).f_bavail == 0
    return filler


def full_lines(daemon: Daemon) -> list[str]:
    return [line for line in daemon.log_text().splitlines()
            if FULL_LOG.search(line) and "boatwist.access" not in line]


def test_disk_full_not_saved_then_recovers(small_disk_daemon: Daemon) -> None:
    """
    With the state directory's filesystem full: POST /api/chat answers 507
    with "message not saved", a chat-port user reads an ``error: message
    not saved`` line, nobody is shown the unsaved messages, and the daemon
    keeps serving (/healthz ok, history and presence answered).  The
    condition is logged once for the whole episode, not once per message.
    After the filler is deleted, posting works again from both front ends
    and the recovery is logged.
    """
    daemon = small_disk_daemon.start()
    term = Terminal(nc(daemon))
    try:
        login(term, "bob", "bob-pw")
        assert daemon.post_json("/api/chat", "alice", {"text": "before the disk filled"})[0] == 201
        term.expect_line("<alice> before the disk filled")

        filler = fill(daemon.state)
        # The store's WAL keeps the room it had: a few messages may still fit there.
        padding = []
        for i in range(300):
            status, body = daemon.post_json("/api/chat", "alice", {"text": f"pad {i}"})
            if status == 507:
                break
            assert status == 201, (status, body)
            padding.append(f"pad {i}")
        for i in range(3):
            status, body = daemon.post_json("/api/chat", "alice", {"text": f"while full {i}"})
            assert status == 507, (status, body)
            assert "not saved" in body["error"], body
        term.send("bob while full\n")
        term.expect_line("error: message not saved: disk full")

        assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon died"
        status, _, health = daemon.get("/healthz")
        assert status == 200 and health.startswith(b"ok"), (status, health)
        texts = [m["text"] for m in daemon.get_json("/api/chat", "alice")["messages"]]
        assert texts == (["before the disk filled"] + padding)[-50:]
        assert {u["user"] for u in daemon.get_json("/api/presence", "alice")["users"]} >= {"alice", "bob"}

        filler.unlink()
        status, body = daemon.post_json("/api/chat", "alice", {"text": "after the filler went"})
        assert status == 201, (status, body)
        term.expect_line("<alice> after the filler went")
        term.send("bob after\n")
        term.expect_line("<bob> bob after")
        texts = [m["text"] for m in daemon.get_json("/api/chat", "alice")["messages"]]
        assert texts == (["before the disk filled"] + padding + ["after the filler went", "bob after"])[-50:]
        assert b"while full" not in term.transcript

        # Everything logged while full came before this line (one log stream, in order).
        daemon.wait_for_log("writes succeed again", timeout=5)
        episode = full_lines(daemon)
        assert len(episode) == 1, "the full store was logged more than once:\n" + "\n".join(episode)
        assert daemon.log_text().count("writes succeed again") == 1
    finally:
        term.close()
