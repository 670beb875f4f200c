#!/usr/bin/env python3
"""
Chat fan-out latency: from ``POST /api/chat`` to every subscriber, on loopback.

    .venv/bin/python bench/fanout.py [--sizes 10,100,1000] [--messages 100] [--gap-ms 20]

For each size K, a fresh real daemon (``twistd -n embweb``, 127.0.0.1) gets K
subscribers, half event streams (``GET /api/events``, raw sockets) and half
logged-in chat-port connections, spread over several users (at most 10
users, so "10 subscribers" is 10 operators; above that each user holds
several connections).  Receivers run in worker processes, each one
selector loop over its sockets.  A sender posts numbered messages, one at a
time: it waits until every subscriber has its message, then ``--gap-ms``,
then posts the next.  Latency is from just before the POST is written to
the receipt of the event or line at each subscriber (CLOCK_MONOTONIC is
system-wide, so times from different processes compare).  It includes the
SQLite COMMIT (the room publishes only committed messages).

Also printed: POST -> 201 as the sender sees it, and the COMMIT time of
``boatwist.store.service.Store`` itself, measured in this run on a file in the same
filesystem as the daemon's state directory (the daemon keeps its own
timings in ``Store.commit_timings``, which nothing exposes over HTTP).

Targets: p99 <= 10 ms at 10 operators, p99 <= 100 ms at 1,000 subscribers.
Bounded: every wait has a deadline; the whole run takes well under 2 minutes.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
sys.path.insert(0, str(HERE.parent))

from daemon import Daemon  # noqa: E402

MARK = re.compile(rb"fanout-seq=(\d+);")
SENDER = "sender"
#: Most distinct subscribing users: 10 subscribers are 10 operators.
MAX_USERS = 10
TARGETS_MS = {10: 10.0, 1000: 100.0}
SETUP_TIMEOUT = 60.0
DELIVERY_TIMEOUT = 5.0


# ------------------------------------------------------------------ receivers


def _recv_until(sock: socket.socket, marker: bytes, deadline: float) -> tuple[bytes, bytes]:
    """Blocking read up to C{marker}; (before, rest after it)."""
    buffer = b""
    while marker not in buffer:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{marker!r} not received: {buffer[-200:]!r}")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}: {buffer[-200:]!r}")
        buffer += chunk
    before, rest = buffer.split(marker, 1)
    return before, rest


def open_sse(host: str, port: int, user: str, password: str, deadline: float) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection((host, port), timeout=10)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Basic {token}\r\n"
                 f"Accept: text/event-stream\r\n\r\n".encode())
    head, rest = _recv_until(sock, b"\r\n\r\n", deadline)
    status = head.split(b" ", 2)[1]
    if status != b"200":
        raise RuntimeError(f"event stream for {user}: {head.decode('latin-1')}")
    return sock, rest


def open_chat(host: str, port: int, user: str, password: str, deadline: float) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection((host, port), timeout=10)
    _recv_until(sock, b"login: ", deadline)
    sock.sendall(f"{user}\n".encode())
    _recv_until(sock, b"password: ", deadline)
    sock.sendall(f"{password}\n".encode())
    before, rest = _recv_until(sock, b"/help lists the commands.\r\n", deadline)
    if b"welcome" not in before:
        raise RuntimeError(f"chat login of {user}: {before!r}")
    return sock, rest


def receiver(pipe: Any, host: str, http_port: int, chat_port: int, subscribers: list[tuple[str, str, str]]) -> None:
    """
    One worker: open the subscribers, then read them all in one selector
    loop; report ("done", seq) when every one of them has message seq, and
    the receipt times at "stop".
    """
    try:
        deadline = time.monotonic() + SETUP_TIMEOUT
        socks: list[socket.socket] = []
        buffers: list[bytes] = []
        kinds: list[str] = []
        for kind, user, password in subscribers:
            opener = open_sse if kind == "sse" else open_chat
            sock, rest = opener(host, http_port if kind == "sse" else chat_port, user, password, deadline)
            sock.setblocking(False)
            socks.append(sock)
            buffers.append(rest)
            kinds.append(kind)
        selector = selectors.DefaultSelector()
        for i, sock in enumerate(socks):
            selector.register(sock, selectors.EVENT_READ, i)
        selector.register(pipe, selectors.EVENT_READ, -1)
        receipts: dict[int, list[tuple[int, float]]] = {}
        closed = 0
        pipe.send(("ready", len(socks)))
        n = len(socks)
        while True:
            for key, _ in selector.select(timeout=1.0):
                i = key.data
                if i == -1:
                    message = pipe.recv()
                    if message == "stop":
                        for sock in socks:
                            sock.close()
                        pipe.send(("result", receipts, kinds, closed))
                        return
                    continue
                try:
                    data = socks[i].recv(65536)
                except BlockingIOError:
                    continue
                at = time.monotonic()
                if not data:
                    closed += 1
                    selector.unregister(socks[i])
                    continue
                lines = (buffers[i] + data).split(b"\n")
                buffers[i] = lines.pop()
                for line in lines:
                    match = MARK.search(line)
                    if match is None:
                        continue
                    seq = int(match.group(1))
                    got = receipts.setdefault(seq, [])
                    got.append((i, at))
                    if len(got) == n:
                        pipe.send(("done", seq))
    except BaseException as e:  # noqa: BLE001 - the parent reports it
        pipe.send(("error", repr(e)))


# --------------------------------------------------------------------- sender


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def users_for(size: int) -> dict[str, str]:
    users = {f"op{i:02d}": f"op{i:02d}-pw" for i in range(min(size, MAX_USERS))}
    users[SENDER] = "sender-pw"
    return users


def config_for(size: int) -> str:
    return (
        "[admission]\n"
        f"max_users = {MAX_USERS + 5}\n"
        "max_connections_per_user = 1000\n"
        "max_connections = 5000\n"
        "max_connections_per_address = 5000\n"
        "[chat]\n"
        "history = 0\n"
        "max_pending_logins = 2000\n"
        "rate_messages = 100000\n"
        "rate_period = 1\n"
    )


def run_size(size: int, messages: int, gap: float, workers: int, workdir: Path, burst: int = 1) -> dict[str, Any]:
    users = users_for(size)
    operators = [u for u in users if u != SENDER]
    subscribers = [("sse" if i % 2 == 0 else "chat", operators[i % len(operators)],
                    users[operators[i % len(operators)]]) for i in range(size)]
    daemon = Daemon(workdir / f"k{size}", config=config_for(size), users=users)
    context = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    pipes: list[Any] = []
    try:
        daemon.start()
        workers = max(1, min(workers, size))
        for w in range(workers):
            parent, child = context.Pipe()
            proc = context.Process(target=receiver, daemon=True,
                                   args=(child, daemon.host, daemon.http_port, daemon.chat_port,
                                         subscribers[w::workers]))
            proc.start()
            procs.append(proc)
            pipes.append(parent)
        setup_started = time.monotonic()
        for pipe in pipes:
            if not pipe.poll(SETUP_TIMEOUT):
                raise SystemExit(f"size {size}: receivers not ready within {SETUP_TIMEOUT:g} s")
            message = pipe.recv()
            if message[0] != "ready":
                raise SystemExit(f"size {size}: receiver failed: {message}")
        setup = time.monotonic() - setup_started

        token = base64.b64encode(f"{SENDER}:{users[SENDER]}".encode()).decode()
        headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        conn = http.client.HTTPConnection(daemon.host, daemon.http_port, timeout=10)
        sent: dict[int, float] = {}
        answered: list[float] = []
        missing = 0
        # Message 0 warms up (first POST: Basic auth's bcrypt, the sender coming online) and is not counted.
        # Then rounds of `burst` messages posted back to back, each round delivered before the next.
        rounds = [[0]] + [list(range(1 + r * burst, 1 + (r + 1) * burst)) for r in range(messages // burst)]
        for round_seqs in rounds:
            for seq in round_seqs:
                body = json.dumps({"text": f"fanout-seq={seq}; valve 3 is open, pressure nominal"})
                started = time.monotonic()
                conn.request("POST", "/api/chat", body, headers)
                response = conn.getresponse()
                response.read()
                done = time.monotonic()
                if response.status != 201:
                    raise SystemExit(f"POST answered {response.status}")
                sent[seq] = started
                if seq > 0:
                    answered.append((done - started) * 1000)
            pending = {(i, seq) for i in range(len(pipes)) for seq in round_seqs}
            deadline = time.monotonic() + DELIVERY_TIMEOUT
            while pending:
                left = deadline - time.monotonic()
                waiting = sorted({i for i, _ in pending})
                ready = multiprocessing.connection.wait([pipes[i] for i in waiting], timeout=max(0.0, left))
                if not ready:
                    missing += len({seq for _, seq in pending})
                    break
                for pipe in ready:
                    message = pipe.recv()
                    if message[0] == "error":
                        raise SystemExit(f"receiver failed: {message[1]}")
                    if message[0] == "done":
                        pending.discard((pipes.index(pipe), message[1]))
            if gap > 0:
                time.sleep(gap)  # the pacing between rounds is a parameter of the run, not a wait for an event
        conn.close()

        latencies: dict[str, list[float]] = {"sse": [], "chat": []}
        closed = 0
        for pipe in pipes:
            pipe.send("stop")
            while True:
                if not pipe.poll(10):
                    raise SystemExit("receiver did not report")
                message = pipe.recv()
                if message[0] == "result":
                    break
            _, receipts, kinds, worker_closed = message
            closed += worker_closed
            for seq, got in receipts.items():
                if seq == 0:
                    continue
                for i, at in got:
                    latencies[kinds[i]].append((at - sent[seq]) * 1000)
        return {
            "size": size, "users": len(users) - 1, "messages": messages, "setup": setup,
            "sse": latencies["sse"], "chat": latencies["chat"], "answered": answered,
            "missing": missing, "closed": closed, "expected": (messages // burst) * burst * size,
        }
    finally:
        for pipe in pipes:
            try:
                pipe.send("stop")
            except OSError:
                pass
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        daemon.stop()


# ---------------------------------------------------------------- SQLite commit


def commit_timings(directory: Path, count: int) -> tuple[list[float], list[float]]:
    """COMMIT seconds (Store.commit_timings) and whole add_message seconds, synchronous runner."""
    from boatwist.store.service import Store
    from boatwist.workers import SynchronousRunner

    store = Store(str(directory / "commit-bench.sqlite"), retention_count=10000, retention_days=90,
                  runner=SynchronousRunner())
    store.startService()
    whole = []
    try:
        for i in range(count):
            started = time.perf_counter()
            d = store.add_message("op00", f"fanout-seq={i}; valve 3 is open, pressure nominal", "web")
            whole.append(time.perf_counter() - started)
            failures: list[Any] = []
            d.addErrback(failures.append)
            if failures:
                raise SystemExit(f"commit failed: {failures[0].getErrorMessage()}")
        return list(store.commit_timings), whole
    finally:
        store.stopService()


def filesystem(path: Path) -> str:
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    device = subprocess.run(["df", "--output=source", str(path)], capture_output=True, text=True)
    source = device.stdout.split()[-1] if device.returncode == 0 else "?"
    return f"{out.stdout.strip() or '?'} on {source}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--messages", type=int, default=100, help="messages per size")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="pause after each delivered round")
    parser.add_argument("--burst", type=int, default=1,
                        help="messages posted back to back per round (2+ shows small writes in quick succession)")
    parser.add_argument("--workers", type=int, default=max(1, min(4, (os.cpu_count() or 2) - 1)),
                        help="receiver processes")
    parser.add_argument("--dir", default=None, help="where state directories go (default: a temporary one)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    # The daemon (a child) and the receivers inherit this limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * max(sizes) + 200
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit(f"need {need} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="boatwist-fanout-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        run(args, sizes, base)
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


def run(args: argparse.Namespace, sizes: list[int], base: Path) -> None:
    began = time.monotonic()
    print(f"boatwist fan-out, loopback, {os.cpu_count()} CPUs, {args.workers} receiver process(es), "
          f"{args.messages} messages per size in rounds of {args.burst}, {args.gap_ms:g} ms between rounds")
    print(f"state directories under {base} ({filesystem(base)})\n")
    results = []
    for size in sizes:
        result = run_size(size, args.messages, args.gap_ms / 1000, args.workers, base, max(1, args.burst))
        results.append(result)
        print(f"  {size} subscribers: set up in {result['setup']:.1f} s", flush=True)

    print()
    header = (f"{'subscribers':>11} {'users':>5} {'sse/chat':>9} {'recv':>7} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'max ms':>7} {'target':>8}  {'sse p99':>7} {'chat p99':>8}  {'POST->201 p50/p99 ms':>20}")
    print(header)
    print("-" * len(header))
    for r in results:
        both = r["sse"] + r["chat"]
        target = TARGETS_MS.get(r["size"])
        p99 = percentile(both, 99)
        verdict = "-" if target is None else (f"<={target:g} " + ("ok" if p99 <= target else "MISS"))
        half = r["size"] // 2
        print(f"{r['size']:>11} {r['users']:>5} {r['size'] - half:>4}/{half:<4} {len(both):>7} "
              f"{percentile(both, 50):>7.1f} {p99:>7.1f} {max(both):>7.1f} {verdict:>8}  "
              f"{percentile(r['sse'], 99):>7.1f} {percentile(r['chat'], 99):>8.1f}  "
              f"{percentile(r['answered'], 50):>9.1f} / {percentile(r['answered'], 99):<8.1f}")
        if len(both) != r["expected"] or r["missing"] or r["closed"]:
            print(f"{'':>11} !! received {len(both)} of {r['expected']}; {r['missing']} messages not "
                  f"delivered to all within {DELIVERY_TIMEOUT:g} s; {r['closed']} subscribers closed")

    commits, whole = commit_timings(base, 200)
    ms = [c * 1000 for c in commits]
    whole_ms = [w * 1000 for w in whole]
    print(f"\nSQLite COMMIT per message (boatwist.store.service.Store, synchronous=FULL, WAL, {filesystem(base)}), "
          f"{len(ms)} commits:")
    print(f"  commit      p50 {percentile(ms, 50):.2f} ms  p99 {percentile(ms, 99):.2f} ms  "
          f"mean {statistics.fmean(ms):.2f} ms")
    print(f"  add_message p50 {percentile(whole_ms, 50):.2f} ms  p99 {percentile(whole_ms, 99):.2f} ms  "
          f"mean {statistics.fmean(whole_ms):.2f} ms  (insert + retention + commit)")
    print(f"\ntotal {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
