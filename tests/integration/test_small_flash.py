"""
Issue 9, goal 4, against the real daemon: a small flash partition never
fills for good, and a clock step never deletes history.

  - the state directory is a 2 MiB tmpfs mounted by the test (root; CI runs
    it): with the default store settings, chat and audit entries go on
    indefinitely (the oldest pruned), the database and its WAL stay within
    the budget, and after a disk-full episode -- also one spanning a
    restart -- the store works again by itself;
  - the daemon runs under libfaketime (Debian ``faketime``): the wall clock
    is stepped 100 days forward while it runs (the monotonic clock is not),
    and the next message deletes nothing.

Every mount is unmounted and every daemon stopped, even on failure.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from daemon import Daemon

pytestmark = pytest.mark.integration

#: Only the chat rate limit and the failed-login delay are changed: the store runs with its defaults.
CONFIG = "[chat]\nrate_messages = 100000\n[auth]\nfailure_delay = 0\n"
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def _need_root() -> None:
    if os.geteuid() != 0:
        message = "mounting a tmpfs needs root (run as root, or in CI)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI is set, so this is a failure")
        pytest.skip(message)


@pytest.fixture
def flash(tmp_path: Path) -> Iterator[Path]:
    """A fresh 2 MiB tmpfs as the state directory; unmounted afterwards, even on failure."""
    _need_root()
    state = tmp_path / "var"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(state)],
                   check=True, capture_output=True, text=True)
    try:
        yield state
    finally:
        if subprocess.run(["umount", str(state)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(state)], check=True)


class Client:
    """One keep-alive connection posting as a user (Basic)."""

    def __init__(self, d: Daemon, user: str) -> None:
        self.d = d
        token = base64.b64encode(f"{user}:{d.users[user]}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        self.conn = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=10)

    def post(self, text: str) -> int:
        self.conn.request("POST", "/api/chat", body=json.dumps({"text": text}), headers=self.headers)
        response = self.conn.getresponse()
        response.read()
        return response.status

    def history(self) -> list[dict[str, Any]]:
        self.conn.request("GET", "/api/chat?limit=500", headers=self.headers)
        response = self.conn.getresponse()
        return list(json.loads(response.read())["messages"])

    def close(self) -> None:
        self.conn.close()


def store_bytes(state: Path) -> int:
    return sum(f.stat().st_size for f in state.glob("boatwist.sqlite*"))


def fill(directory: Path) -> Path:
    """A filler file up to the last byte of the file system."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    f.write(b"\1" * size)
                except OSError as e:
                    assert e.errno == 28, e
                    break
    return filler


def test_chat_and_audit_go_on_forever_on_2_mib(flash: Path, tmp_path: Path) -> None:
    """
    On a 2 MiB state directory with the default store settings: 1,500 chat
    messages of 1 KB (three times the store's budget of a quarter of the
    disk) and 600 failed-login audit entries all save; the newest messages
    are there, the oldest pruned; the store's files stay within the budget
    and the disk is never full.  After a restart the same holds.
    """
    d = _with_state(Daemon(tmp_path / "d", config=CONFIG), flash)
    try:
        d.start()
        client = Client(d, "alice")
        budget = 2 * 1024 * 1024 // 4
        largest = 0
        for n in range(1500):
            assert client.post(f"{n:05d} " + "m" * 1000) == 201, n
            if n % 50 == 0:
                largest = max(largest, store_bytes(flash))
                bad = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=10)
                for k in range(20):  # wrong passwords for new names: each one checked and audited
                    token = base64.b64encode(f"nobody{n}-{k}:wrong".encode()).decode()
                    bad.request("GET", "/api/whoami", headers={"Authorization": f"Basic {token}"})
                    assert bad.getresponse().read() is not None
                bad.close()
        largest = max(largest, store_bytes(flash))
        texts = [m["text"][:5] for m in client.history()]
        client.close()
        assert texts[-1] == "01499" and texts[0] != "00000", texts[:3]
        assert largest <= budget + 64 * 1024, largest
        assert shutil.disk_usage(flash).free > 512 * 1024
        d.stop()
        d.start()
        client = Client(d, "alice")
        assert client.post("after the restart") == 201
        assert client.history()[-1]["text"] == "after the restart"
        client.close()
    finally:
        d.stop()
    print(f"\nstore files at most {largest // 1024} KiB of a {budget // 1024} KiB budget on 2 MiB; "
          f"{len(texts)} messages kept")


def test_the_access_log_keeps_to_an_eighth_of_2_mib(flash: Path, tmp_path: Path) -> None:
    """
    The access log is in state_dir by default: 1,200 authenticated requests
    with 4 KB User-Agents (about 5 MB of lines, in bursts between two
    flushes) leave at most an eighth of the 2 MiB in access.log and its
    rotated files, and chat still saves afterwards.
    """
    d = _with_state(Daemon(tmp_path / "d", config=CONFIG), flash)
    try:
        d.start()
        client = Client(d, "alice")
        agent = "probe-" + "a" * 4000
        for n in range(1200):
            client.conn.request("GET", "/api/whoami", headers={**client.headers, "User-Agent": agent})
            response = client.conn.getresponse()
            response.read()
            assert response.status == 200, n
        time.sleep(1.5)  # integration: the last lines are written at the next heartbeat tick; bounded
        logs = sorted(flash.glob("access.log*"))
        total = sum(p.stat().st_size for p in logs)
        assert [p.name for p in logs] == ["access.log"] + [f"access.log.{n}" for n in range(1, 6)], logs
        assert total <= 2 * 1024 * 1024 // 8 + 6 * 4200, total
        assert agent in (flash / "access.log.1").read_text()
        assert client.post("after the burst") == 201
        client.close()
    finally:
        d.stop()
    print(f"\naccess log files: {total // 1024} KiB in {len(logs)} files on 2 MiB")


def test_a_disk_full_episode_ends_by_itself_also_across_a_restart(flash: Path, tmp_path: Path) -> None:
    """
    Something else fills the 2 MiB: once the store's own files have no room
    left either, posting answers 507 and deletes no history.  The daemon is restarted while the disk is still full (it
    starts); once the filler is gone, posting works again -- without
    another restart -- and the earlier messages are all there.
    """
    d = _with_state(Daemon(tmp_path / "d", config=CONFIG), flash)
    try:
        d.start()
        client = Client(d, "alice")
        for n in range(20):
            assert client.post(f"before {n}") == 201
        filler = fill(flash)
        answers = []
        for n in range(300):  # the WAL file keeps room it had: a few may still fit
            answers.append(client.post(f"while full {n} " + "f" * 1000))
            if answers[-1] == 507:
                break
        assert answers[-1] == 507, answers
        saved_while_full = answers.count(201)
        client.close()
        d.stop()
        d.start()
        client = Client(d, "alice")
        assert client.post("still full") == 507
        filler.unlink()
        deadline = time.monotonic() + 15
        while client.post("space again") != 201:
            assert time.monotonic() < deadline, "the store did not recover by itself"
            time.sleep(0.5)  # integration: the store retries opening every 5 s; bounded
        texts = [m["text"] for m in client.history()]
        client.close()
        assert texts[:20] == [f"before {n}" for n in range(20)] and texts[-1] == "space again", texts
        assert len(texts) == 20 + saved_while_full + 1
    finally:
        d.stop()


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="libfaketime (Debian package faketime) not installed")
def test_a_wall_clock_step_of_100_days_deletes_nothing(tmp_path: Path) -> None:
    """
    The real daemon under libfaketime, its monotonic clock left alone: the
    wall clock is stepped 100 days forward while it runs (retention_days is
    90).  The next message and the next logins delete none of the earlier
    messages or audit entries, and the step shows in the new message's time.
    Then the daemon is restarted with the clock still 100 days ahead (a
    step while it was stopped, an RTC-less boot): nothing is deleted either.
    """
    stamp = tmp_path / "faketime"
    stamp.write_text("+0d\n")
    env = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(stamp), "FAKETIME_NO_CACHE": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    d = Daemon(tmp_path / "d", config=CONFIG, env=env)
    try:
        d.start()
        client = Client(d, "alice")
        for n in range(5):
            assert client.post(f"before {n}") == 201
        before = client.history()
        stamp.write_text("+100d\n")
        time.sleep(0.2)  # integration: libfaketime rereads the file on its next clock read; bounded
        assert client.post("after the step") == 201
        client.close()
        client = Client(d, "bob")  # a new login: an audit entry written after the step
        after = client.history()
        client.close()
        d.stop()
        d.start()  # the wall clock is still 100 days ahead of when the first messages were written
        client = Client(d, "alice")
        assert client.post("after the restart") == 201
        restarted = client.history()
        client.close()
    finally:
        d.stop()
    assert [m["text"] for m in after] == [m["text"] for m in before] + ["after the step"]
    assert [m["text"] for m in restarted] == [m["text"] for m in after] + ["after the restart"]
    assert after[-1]["at"] - before[-1]["at"] > 99 * 86400
    import sqlite3

    conn = sqlite3.connect(d.state / "boatwist.sqlite")
    try:
        kinds = [row[0] for row in conn.execute("SELECT kind FROM audit ORDER BY id")]
    finally:
        conn.close()
    assert kinds.count("login") >= 2, kinds


def _with_state(d: Daemon, state: Path) -> Daemon:
    """C{d} with its state_dir moved to C{state} (its users written there)."""
    from daemon import write_users

    config = d.config_path.read_text().replace(str(d.state), str(state))
    d.config_path.write_text(config)
    write_users(state, d.users)
    d.state = state
    return d
