"""
Issue 9, goal 5, against the real daemon: the log cannot be used to fill the
disk.  A client sending unauthenticated requests as fast as it can (17 MB
of log a minute before) makes a few lines a second, the rest counted in
summary lines; every log file -- [log] file, twistd's own --logfile -- is
rotated with a bounded number kept.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from daemon import Daemon

pytestmark = pytest.mark.integration

REQUEST = b"GET /api/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def hammer(port: int, seconds: float, source: str = "127.0.0.1") -> int:
    """Unauthenticated requests, pipelined 50 at a time on one keep-alive connection; returns how many were answered."""
    answered = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
        try:
            while time.monotonic() < deadline:
                sock.sendall(REQUEST * 50)
                seen = b""
                while seen.count(b"HTTP/1.1 401") < 50:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        raise ConnectionError
                    seen += chunk
                answered += 50
        except OSError:
            pass  # closed on us (a limit): open another
        finally:
            sock.close()
    return answered


def test_a_request_flood_writes_a_few_lines_a_second_and_a_summary(tmp_path: Path, make_daemon: Any) -> None:
    """
    Five seconds of unauthenticated requests as fast as one client can send
    them (thousands): per second at most [log] per_source (5) access lines of
    that source plus one summary line that counts the rest by status; the
    log grows by a few kilobytes a second.
    """
    log_file = tmp_path / "embweb.log"
    d: Daemon = make_daemon(config=f"[log]\nfile = {log_file}\n").start()
    before = log_file.stat().st_size
    started = time.monotonic()
    answered = hammer(d.http_port, 5.0)
    took = time.monotonic() - started
    d.wait_for_log("more lines not written one by one", timeout=5)
    time.sleep(1.5)  # integration: the last second's summary is written at the next heartbeat; bounded
    text = log_file.read_text(errors="replace")
    access_file = d.state / "access.log"  # the default: state_dir/access.log
    access = [line for line in access_file.read_text(errors="replace").splitlines() if '"GET /api/whoami' in line]
    summaries = [line for line in text.splitlines() if "more lines not written one by one" in line]
    counted = sum(int(m.group(1)) for m in (re.search(r": (\d+) more lines", line) for line in summaries) if m)
    grew = log_file.stat().st_size - before
    print(f"\n{answered} requests in {took:.1f} s: {len(access)} access lines, {len(summaries)} summaries "
          f"counting {counted}; the log grew {grew / took / 1024:.1f} KiB/s")
    assert answered > 1000
    assert len(access) <= 5 * (took + 2)
    assert counted >= answered - len(access) - 100
    assert grew / took < 20 * 1024


def test_log_files_are_rotated_and_the_oldest_deleted(tmp_path: Path, make_daemon: Any) -> None:
    """
    [log] file with max_size 64K and files 2, and twistd's own --logfile:
    after lines enough for many files (authenticated requests, which are
    always logged one by one), each has at most 2 rotated files, each file
    at most about 64 KiB.
    """
    log_file = tmp_path / "embweb.log"
    twistd_log = tmp_path / "twistd.log"
    # The access lines through the log (they would go to state_dir/access.log by default).
    d: Daemon = make_daemon(config=f"[log]\nfile = {log_file}\nmax_size = 64K\nfiles = 2\n[http]\naccess_log = log\n")
    d.spawn(d.argv()[:-3] + [f"--logfile={twistd_log}"] + d.argv()[-3:])
    d.wait_ready()
    import base64
    import http.client

    token = base64.b64encode(f"alice:{d.users['alice']}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=10)
    for _ in range(3000):  # about 500 KiB of access lines
        conn.request("GET", "/api/whoami", headers={"Authorization": f"Basic {token}"})
        conn.getresponse().read()
    conn.close()
    d.stop()
    for base in (log_file, twistd_log):
        files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(base.name))
        assert files == [base.name, f"{base.name}.1", f"{base.name}.2"], files
        for name in files:
            assert (tmp_path / name).stat().st_size <= 64 * 1024 + 4096, name
