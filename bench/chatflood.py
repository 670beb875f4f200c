"""
The chat port under attack (issue 9, goals 1 and 3): figures next to an
unflooded baseline of the same run.

    .venv/bin/python bench/chatflood.py [--seconds 8] [--connections 16]

Starts the real daemon (twistd) in a temporary directory, then measures:

  1. baseline: GET /healthz latency (a new connection each, sequential)
     and the gaps between chat PINGs of an operator with ``/heartbeat 1``;
  2. the same while 16 connections from 8 loopback addresses flood IAC NOP
     (half as telnet clients, half raw junk), reconnecting when closed;
  3. operator logins with ``nc`` (banner to welcome) unflooded, and while 32
     silent squatters from 8 addresses renew themselves as fast as they are
     evicted or refused.

Targets (issue 9): /healthz p99 <= 50 ms under the flood, the heartbeat on
time (PING gaps ~1 s), >= 95 % of operator logins within 1 s.  The flood and
the squatters run in a process of their own (tests/integration/flood.py)
and stop by themselves.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
sys.path.insert(0, str(HERE.parent / "tests"))

from chatload import PingWatch, flood_result, healthz_latencies, percentile, start_flood  # noqa: E402
from daemon import Daemon  # noqa: E402


def nc_login_seconds(daemon: Daemon) -> float:
    """One operator login with nc: from starting nc to the welcome line."""
    started = time.monotonic()
    proc = subprocess.Popen(["nc", daemon.host, str(daemon.chat_port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    out = b""
    try:
        for expected, answer in ((b"login: ", b"alice\n"), (b"password: ", b"alice-pw\n")):
            while expected not in out:
                chunk = proc.stdout.read1(4096)
                if not chunk:
                    return float("inf")
                out += chunk
            out = out.split(expected, 1)[1]
            proc.stdin.write(answer)
            proc.stdin.flush()
        while not re.search(rb"welcome, alice\.[^\r\n]*\r\n", out):
            chunk = proc.stdout.read1(4096)
            if not chunk:
                return float("inf")
            out += chunk
        return time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()


def logins(daemon: Daemon, n: int) -> list[float]:
    return [nc_login_seconds(daemon) for _ in range(n)]


def row(label: str, values_ms: list[float]) -> str:
    return (f"  {label:<34} n={len(values_ms):>4}  p50 {percentile(values_ms, 50):7.1f} ms  "
            f"p99 {percentile(values_ms, 99):7.1f} ms  max {max(values_ms):7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measurement")
    parser.add_argument("--connections", type=int, default=16, help="flooding connections")
    parser.add_argument("--logins", type=int, default=40, help="operator logins per phase")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(Path(tmp)).start()
        try:
            watch = PingWatch(daemon.host, daemon.chat_port, "bob", "bob-pw")
            t0 = time.monotonic()
            baseline = healthz_latencies(daemon.host, daemon.http_port, args.seconds)
            base_gaps = watch.gaps(t0, time.monotonic())

            flood = start_flood("nop", daemon.host, daemon.chat_port, args.seconds + 1.0, args.connections)
            time.sleep(0.5)
            t1 = time.monotonic()
            flooded = healthz_latencies(daemon.host, daemon.http_port, args.seconds - 0.5)
            flood_gaps = watch.gaps(t1, time.monotonic())
            flood_stats = flood_result(flood, timeout=args.seconds + 30)
            watch.close()

            time.sleep(6.0)  # the flooders' addresses pay off their debt (not the operator's: another address)
            quiet_logins = logins(daemon, args.logins)
            squat = start_flood("squat", daemon.host, daemon.chat_port, args.seconds + 6.0, 32)
            time.sleep(1.0)
            squatted_logins = logins(daemon, args.logins)
            squat_stats = flood_result(squat, timeout=args.seconds + 40)
        finally:
            daemon.stop()

    print(f"chat port under attack ({args.connections} flooding connections from 8 addresses, "
          f"{args.seconds:g} s each phase)\n")
    print("GET /healthz (new connection each):")
    print(row("baseline", baseline))
    print(row("IAC NOP + junk flood", flooded) + "   target p99 <= 50 ms")
    print(f"  flood: {flood_stats['connects']} connections, {flood_stats['closed_by_server']} closed by the server, "
          f"{flood_stats['bytes_sent'] / 1e6:.0f} MB offered")
    print("\nchat heartbeat (/heartbeat 1): gaps between PINGs")
    print(f"  baseline                           max {max(base_gaps):.3f} s  ({len(base_gaps)} gaps)")
    print(f"  flooded                            max {max(flood_gaps):.3f} s  ({len(flood_gaps)} gaps)"
          "   target ~1 s")
    print("\noperator login with nc (start to welcome):")
    quiet_ms = [t * 1000 for t in quiet_logins]
    squat_ms = [t * 1000 for t in squatted_logins]
    print(row("baseline", quiet_ms))
    print(row("32 squatters from 8 addresses", squat_ms)
          + f"   within 1 s: {sum(t <= 1000 for t in squat_ms)}/{len(squat_ms)} (target >= 95 %)")
    print(f"  squatters: {squat_stats['connects']} connections, {squat_stats['closed_by_server']} "
          "evicted or refused")


if __name__ == "__main__":
    main()
