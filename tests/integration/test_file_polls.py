"""
File controls polled in batches, through the real daemon, with a file whose
read really hangs in the kernel: a FIFO nobody writes to (``open(2)`` blocks
until a writer comes, as a read on a dead NFS mount or a wedged sysfs driver
does).

Pinned here: the polls of file controls due at the same tick share one
thread (``boatwist.controls.backends.file.FileReads``), yet a hung file
still times out and marks only its own control -- the others keep being
read and their changes keep reaching everyone -- the reactor keeps serving,
and the daemon still stops.  Waits are bounded waits on real events.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest
from control_clients import Watch, curl, metric, require_curl

from daemon import Daemon

pytestmark = pytest.mark.integration

USERS = {"alice": "alice-pw", "bob": "bob-pw"}
POLL = 0.2
TIMEOUT = 1.0


def config(files: Path) -> str:
    sensors = "".join(f"""
[control:{name}]
type = sensor
backend = file
path = {files / name}
unit = V
poll = {POLL}
timeout = {TIMEOUT:g}
""" for name in ("a", "stuck", "c"))
    return "[floor]\nmode = off\n" + sensors


@pytest.fixture
def files(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "device"
    where.mkdir()
    (where / "a").write_text("1\n")
    (where / "c").write_text("3\n")
    os.mkfifo(where / "stuck")
    yield where
    release(where / "stuck")


def release(fifo: Path) -> None:
    """Let every open(2) blocked on the FIFO through (they then read end-of-file)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # no reader waiting
    os.close(fd)


def test_a_hung_file_marks_only_its_control_and_the_others_keep_polling(make_daemon, files: Path) -> None:
    """
    Three file sensors polled every 0.2 s, the middle one a FIFO whose open
    never returns.  It turns quality error "timed out after 1 s"; the log
    says it is polled on a thread of its own from then on; ``a`` stays good;
    ``c`` -- read after the hung one in the first batch -- keeps being
    polled: a change of its file reaches bob's stream.  The poll errors
    count only the hung control.  The daemon stops within its bound.
    """
    require_curl()
    d: Daemon = make_daemon(config(files), users=USERS).start()
    bob = Watch(d, "bob")
    try:
        bound = 10 * POLL + 3 * TIMEOUT
        event = bob.wait(lambda k, e: k == "value" and e["control"] == "stuck" and e["quality"] == "error", bound)
        assert event["error"] == f"timed out after {TIMEOUT:g} s", event
        d.wait_for_log(f"stuck did not answer within {TIMEOUT:g} s; it is polled on a thread of its own", bound)
        mark = bob.mark()
        (files / "c").write_text("3.5\n")
        event = bob.wait(lambda k, e: k == "value" and e["control"] == "c", bound, since=mark)
        assert (event["value"], event["quality"]) == (3.5, "good"), event
        status, body = curl(d, "GET", "/api/controls", "alice")
        assert status == 200, body
        shown = {c["name"]: (c["value"], c["quality"], c["error"]) for c in body["controls"]}
        assert shown["a"] == (1.0, "good", None) and shown["c"] == (3.5, "good", None), shown
        assert shown["stuck"][1:] == ("error", f"timed out after {TIMEOUT:g} s"), shown
        assert (metric(d, "alice", "boatwist_poll_errors_total", control="stuck") or 0) >= 1
        for name in ("a", "c"):
            assert metric(d, "alice", "boatwist_poll_errors_total", control=name) is None, name
    finally:
        bob.close()
    # twistd ends by its signal once it has shut down; a thread stuck in the kernel must not keep it alive.
    started = time.monotonic()
    assert d.stop(timeout=15) in (0, -signal.SIGTERM), d.log_text()
    assert time.monotonic() - started < 10, "stopping waited for a thread stuck in the kernel"
    assert "Server Shut Down." in d.log_text()
