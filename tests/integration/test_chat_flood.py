"""
Issue 9 on the chat port, against the real daemon: floods cannot stall the
reactor (goal 3), squatters cannot keep an operator from ``login:`` (goal 1).

Every flood is a separate process (tests/integration/flood.py) that stops by
itself after a few seconds, from several loopback addresses (127.0.0.2-9).
Waits are bounded; figures are printed (bench/chatflood.py prints them next
to an unflooded baseline).
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from chatload import PingWatch, flood_result, healthz_latencies, heartbeat_ticks, percentile, start_flood
from daemon import Daemon
from test_chat_port import BANNER, LOGIN, PASSWORD, Terminal, clients  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration


def test_telnet_nop_and_junk_floods_do_not_stall_the_reactor(daemon: Daemon) -> None:
    """
    16 connections flooding IAC NOP (half as telnet clients, half raw junk
    with NOPs), reconnecting as soon as they are closed: /healthz p99 stays
    within 50 ms, the heartbeat ticks on time (the daemon's tick count, and
    the gaps between chat PINGs of a logged-in operator stay about 1 s), and
    the log summarises per address instead of a line per connection.
    """
    watch = PingWatch(daemon.host, daemon.chat_port, "alice", "alice-pw")
    try:
        baseline = healthz_latencies(daemon.host, daemon.http_port, 2.0)
        ticks_before = heartbeat_ticks(daemon)
        flood = start_flood("nop", daemon.host, daemon.chat_port, 8.0, 16)
        time.sleep(0.5)  # let the flood start; then measure while it runs (bounded: the flood stops itself)
        started = time.monotonic()
        flooded = healthz_latencies(daemon.host, daemon.http_port, 6.0)
        ended = time.monotonic()
        ticks_after = heartbeat_ticks(daemon)
        stats = flood_result(flood, timeout=30)
        gaps = watch.gaps(started, ended)
    finally:
        watch.close()
    p99, base99 = percentile(flooded, 99), percentile(baseline, 99)
    print(f"\n/healthz p99 {p99:.1f} ms flooded ({len(flooded)} requests), {base99:.1f} ms baseline; "
          f"PING gaps max {max(gaps):.3f} s; ticks {ticks_after - ticks_before} in {ended - started:.1f} s; "
          f"flood {stats}")
    assert stats["connects"] > 16 and stats["bytes_sent"] > 100_000, stats
    assert p99 <= 50.0, sorted(flooded)[-10:]
    assert len(gaps) >= 4 and max(gaps) <= 1.25, gaps
    assert ticks_after - ticks_before >= int(ended - started) - 1
    chat_lines = [line for line in daemon.log_text().splitlines() if "chat port:" in line]
    assert 0 < len(chat_lines) <= 8 * 3, chat_lines  # per address: the first, a summary per 10 s, refusals


def test_squatters_cannot_keep_an_operator_from_the_prompt(daemon: Daemon, clients: Any) -> None:
    """
    32 silent connections from 8 addresses, each renewed as soon as it is
    evicted or refused, hold every pending-login slot; an operator with nc
    from another address still gets ``login:`` and logs in, at least 19 of
    20 times within 1 s.
    """
    squat = start_flood("squat", daemon.host, daemon.chat_port, 14.0, 32)
    times: list[float] = []
    try:
        time.sleep(1.0)  # the squatters are in
        for _ in range(20):
            started = time.monotonic()
            term = clients(Terminal, ["nc", daemon.host, str(daemon.chat_port)])
            term.expect(BANNER + LOGIN, timeout=5)
            term.send("alice\n")
            term.expect(PASSWORD, timeout=5)
            term.send("alice-pw\n")
            _, at = term.expect(re.compile(rb"welcome, alice\. online: [^\r\n]*\r\n"), timeout=5)
            times.append(at - started)
            term.close()
    finally:
        stats = flood_result(squat, timeout=30)
    within = sum(1 for t in times if t <= 1.0)
    print(f"\noperator logins under squatters: {within}/20 within 1 s, p50 {percentile(times, 50) * 1000:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms; squatters {stats}")
    assert stats["closed_by_server"] > 20, stats  # they were there, and were evicted or refused
    assert within >= 19, times
