"""
The bridge's session counter (state_dir/mqtt-session): it grows with every
connection and across restarts, and it is written the project's one way
(L{boatwist.files.atomic_write}), so a failed write never leaves a part of
a file or a stray temporary behind.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from boatwist.mqtt.session import SessionCounter


def test_sessions_grow_by_one_and_survive_a_new_counter(tmp_path: Path) -> None:
    """With a clock stuck in 1970 (no RTC), each number is the last plus one, also read back by a new counter."""
    path = tmp_path / "mqtt-session"
    counter = SessionCounter(path, lambda: 5.0)
    assert [counter.next() for _ in range(3)] == [5, 6, 7]
    assert path.read_text(encoding="ascii") == "7\n"
    assert SessionCounter(path, lambda: 5.0).next() == 8


def test_a_lost_file_does_not_send_the_number_back_once_the_clock_is_right(tmp_path: Path) -> None:
    """Without the file the number is the time in whole seconds: larger than any number before it."""
    path = tmp_path / "state" / "mqtt-session"
    assert SessionCounter(path, lambda: 1_700_000_000.7).next() == 1_700_000_000
    path.unlink()
    assert SessionCounter(path, lambda: 1_700_000_100.2).next() == 1_700_000_100


def test_the_file_is_replaced_whole_with_mode_0644(tmp_path: Path) -> None:
    """Only the file itself in the directory afterwards (no temporary), readable by all (it is no secret)."""
    path = tmp_path / "mqtt-session"
    counter = SessionCounter(path, lambda: 10.0)
    counter.next()
    counter.next()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mqtt-session"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_old_number_and_leaves_no_temporary(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A full flash (fsync fails with ENOSPC): the file still holds the last number written, no temporary is
    left to fill the disk further, and the bridge still gets a larger number (it must not stay off the broker).
    """
    path = tmp_path / "mqtt-session"
    counter = SessionCounter(path, lambda: 10.0)
    assert counter.next() == 10

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert counter.next() == 11
    monkeypatch.undo()
    assert path.read_text(encoding="ascii") == "10\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mqtt-session"]
