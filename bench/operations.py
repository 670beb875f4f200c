#!/usr/bin/env python3
"""
Device operations: how fast everyone sees one, what a Modbus write costs, what polling costs.

    .venv/bin/python bench/operations.py [--rounds 200] [--gap-ms 20] [--modbus-writes 200]
                                         [--cpu-seconds 20] [--only fanout|modbus|cpu]

Part 1, operation fan-out (issue 10; target p99 <= 20 ms): a real daemon
(``twistd -n embweb``, 127.0.0.1) with a ``memory`` number control; 10
operators (10 users) each hold an event stream (raw sockets, read by one
receiver process).  A sender alternates, round after round: a chat message
(``POST /api/chat``) and an operation (``POST /api/controls/counter``,
value = the round's number); each is timed from just before the POST is
written until the event (``chat`` resp. ``control``) has reached every one
of the 10 streams.  Both include a SQLite COMMIT (the room and the pipeline
publish only what was committed), so the chat figure is the baseline of the
same run, same daemon, same subscribers: the ratio is what an operation
costs above a chat message (the pipeline's lock, the backend, the read back).

Part 2, Modbus TCP on loopback (needs pymodbus): pymodbus's own server
(``tests/modbus_server.py``) in a process of its own.  Timed: an operation
on a ``holding`` register control through the daemon (POST -> 200: write,
read back, commit), next to two baselines -- the same POST on the memory
control (the daemon's own cost) and a bare pymodbus client doing what the
backend does (write_register + read_holding_registers, synchronous, in this
process): what the protocol costs on loopback.

Part 3, polling CPU (target <= 2 % of one core): a daemon with 100 ``file``
sensors on temporary files, ``poll = 1``, next to an idle daemon (no
controls) started at the same time; each one's CPU time (utime + stime of
``/proc/PID/stat``, every thread) over ``--cpu-seconds``, after a warm-up,
as % of one core.  The files do not change, so no events are published: this
is the cost of the reads themselves.

Bounded: every wait has a deadline; daemons, receivers and the Modbus server
are stopped however the run ends.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing
import os
import re
import selectors
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

from daemon import Daemon  # noqa: E402
from fanout import open_sse, percentile  # noqa: E402

SUBSCRIBERS = 10
SENDER = "sender"
TARGET_P99_MS = 20.0
CPU_TARGET_PERCENT = 2.0
SENSORS = 100
SETUP_TIMEOUT = 30.0
DELIVERY_TIMEOUT = 5.0
CHAT_MARK = re.compile(r"opbench-seq=(\d+);")


def users() -> dict[str, str]:
    out = {f"op{i:02d}": f"op{i:02d}-pw" for i in range(SUBSCRIBERS)}
    out[SENDER] = "sender-pw"
    return out


BASE = """
[admission]
max_users = 20
[floor]
mode = off
[chat]
history = 0
rate_messages = 100000
rate_period = 1
[control:counter]
type = number
backend = memory
min = 0
max = 1000000
step = 1
initial = 0
"""


def modbus_control(port: int) -> str:
    return f"""
[control:plc]
type = number
backend = modbus
modbus = tcp:127.0.0.1:{port}
register = holding:10
min = 0
max = 65535
timeout = 1
"""


# ------------------------------------------------------------------ receiver


def receiver(pipe: Any, host: str, port: int, subscribers: list[tuple[str, str]]) -> None:
    """
    Open the event streams, read them in one selector loop; report ("done",
    kind, seq) when all of them have that event, and the receipt times at "stop".
    """
    try:
        deadline = time.monotonic() + SETUP_TIMEOUT
        socks, buffers, kinds = [], [], []
        for user, password in subscribers:
            sock, rest = open_sse(host, port, user, password, deadline)
            sock.setblocking(False)
            socks.append(sock)
            buffers.append(rest)
            kinds.append("")
        selector = selectors.DefaultSelector()
        for i, sock in enumerate(socks):
            selector.register(sock, selectors.EVENT_READ, i)
        selector.register(pipe, selectors.EVENT_READ, -1)
        receipts: dict[tuple[str, int], list[float]] = {}
        n = len(socks)
        pipe.send(("ready", n))
        while True:
            for key, _ in selector.select(timeout=1.0):
                i = key.data
                if i == -1:
                    if pipe.recv() == "stop":
                        for sock in socks:
                            sock.close()
                        pipe.send(("result", receipts))
                        return
                    continue
                try:
                    data = socks[i].recv(65536)
                except BlockingIOError:
                    continue
                at = time.monotonic()
                if not data:
                    raise ConnectionError(f"stream {i} closed")
                lines = (buffers[i] + data).split(b"\n")
                buffers[i] = lines.pop()
                for raw in lines:
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    if line.startswith("event: "):
                        kinds[i] = line[7:]
                        continue
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    mark: tuple[str, int] | None = None
                    if kinds[i] == "chat":
                        match = CHAT_MARK.search(str(event.get("text", "")))
                        mark = ("chat", int(match.group(1))) if match else None
                    elif kinds[i] == "control" and event.get("control") in ("counter", "plc"):
                        mark = (str(event["control"]), int(event["value"]))
                    if mark is None:
                        continue
                    got = receipts.setdefault(mark, [])
                    got.append(at)
                    if len(got) == n:
                        pipe.send(("done", mark))
    except BaseException as e:  # noqa: BLE001 - the parent reports it
        pipe.send(("error", repr(e)))


class Sender:
    """One keep-alive HTTP connection of the sender user."""

    def __init__(self, daemon: Daemon, password: str) -> None:
        token = base64.b64encode(f"{SENDER}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        self.conn = http.client.HTTPConnection(daemon.host, daemon.http_port, timeout=10)

    def post(self, path: str, body: dict) -> tuple[float, float]:
        """(monotonic time just before the request, seconds until the answer) ; fails on a bad status."""
        started = time.monotonic()
        self.conn.request("POST", path, json.dumps(body), self.headers)
        response = self.conn.getresponse()
        text = response.read()
        done = time.monotonic()
        if response.status not in (200, 201):
            raise SystemExit(f"POST {path} answered {response.status}: {text[:200]!r}")
        return started, done - started

    def close(self) -> None:
        self.conn.close()


# ------------------------------------------------------------------ part 1


def part_fanout(base: Path, rounds: int, gap: float) -> None:
    people = users()
    daemon = Daemon(base / "fanout", config=BASE, users=people)
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    proc = None
    sender = None
    try:
        daemon.start()
        subscribers = [(u, p) for u, p in people.items() if u != SENDER]
        proc = context.Process(target=receiver, daemon=True,
                               args=(child, daemon.host, daemon.http_port, subscribers))
        proc.start()
        if not parent.poll(SETUP_TIMEOUT):
            raise SystemExit("receiver not ready")
        message = parent.recv()
        if message[0] != "ready":
            raise SystemExit(f"receiver failed: {message}")
        sender = Sender(daemon, people[SENDER])
        sent: dict[tuple[str, int], float] = {}
        answered: dict[str, list[float]] = {"chat": [], "counter": []}
        missing = 0
        # Round 0 warms up (Basic auth, the sender coming online, first commits) and is not counted.
        for seq in range(rounds + 1):
            for kind in ("chat", "counter"):
                if kind == "chat":
                    at, took = sender.post("/api/chat", {"text": f"opbench-seq={seq}; valve 3 is open"})
                else:
                    at, took = sender.post("/api/controls/counter", {"value": seq})
                sent[(kind, seq)] = at
                if seq:
                    answered[kind].append(took * 1000)
                if not parent.poll(DELIVERY_TIMEOUT):
                    missing += 1
                    continue
                message = parent.recv()
                if message[0] == "error":
                    raise SystemExit(f"receiver failed: {message[1]}")
                if gap:
                    time.sleep(gap)  # the pacing between rounds is a parameter of the run
        parent.send("stop")
        if not parent.poll(10):
            raise SystemExit("receiver did not report")
        while True:
            message = parent.recv()
            if message[0] == "result":
                break
        receipts = message[1]
        latencies: dict[str, list[float]] = {"chat": [], "counter": []}
        for (kind, seq), times in receipts.items():
            if seq and (kind, seq) in sent:
                latencies[kind].extend((t - sent[(kind, seq)]) * 1000 for t in times)
    finally:
        if sender is not None:
            sender.close()
        if proc is not None and proc.is_alive():
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        daemon.stop()

    print(f"\n1. fan-out to {SUBSCRIBERS} event streams ({SUBSCRIBERS} users), {rounds} rounds, "
          f"{gap * 1000:g} ms between sends; latency from the POST to the event at each stream (ms)")
    print(f"   {'':26}{'n':>6} {'p50':>7} {'p99':>7} {'max':>7}   {'POST->answer p50/p99':>21}")
    for kind, label in (("chat", "chat message (baseline)"), ("counter", "memory operation")):
        lat = latencies[kind]
        print(f"   {label:26}{len(lat):6d} {percentile(lat, 50):7.2f} {percentile(lat, 99):7.2f} {max(lat):7.2f}"
              f"   {percentile(answered[kind], 50):9.2f} / {percentile(answered[kind], 99):<8.2f}")
    op99, chat99 = percentile(latencies["counter"], 99), percentile(latencies["chat"], 99)
    verdict = "ok" if op99 <= TARGET_P99_MS else "MISSED"
    print(f"   operation p99 {op99:.2f} ms = {op99 / chat99:.2f}x the chat message's; "
          f"target <= {TARGET_P99_MS:g} ms: {verdict}")
    if missing:
        print(f"   !! {missing} sends not delivered to every stream within {DELIVERY_TIMEOUT:g} s")


# ------------------------------------------------------------------ part 2


def part_modbus(base: Path, writes: int) -> None:
    try:
        import pymodbus  # noqa: F401
        from pymodbus.client import ModbusTcpClient
    except ImportError:
        print("\n2. Modbus: skipped (pymodbus is not installed)")
        return
    from modbus_tools import ServerProcess, free_port

    from boatwist.controls.backends.modbus import device_keyword

    port = free_port()
    server = ServerProcess("tcp", "127.0.0.1", str(port)).start()
    people = users()
    daemon = Daemon(base / "modbus", config=BASE + modbus_control(port), users=people)
    sender = None
    try:
        daemon.start()
        sender = Sender(daemon, people[SENDER])
        sender.post("/api/controls/plc", {"value": 0})  # warm up: auth, the bus connecting
        sender.post("/api/controls/counter", {"value": 0})
        through: list[float] = []
        memory: list[float] = []
        for i in range(1, writes + 1):
            through.append(sender.post("/api/controls/plc", {"value": i})[1] * 1000)
            memory.append(sender.post("/api/controls/counter", {"value": i})[1] * 1000)
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=1)
        if not client.connect():
            raise SystemExit("the bare pymodbus client could not connect")
        kw = {device_keyword(): 1}
        bare: list[float] = []
        try:
            for i in range(writes):
                started = time.perf_counter()
                if client.write_register(11, i, **kw).isError():
                    raise SystemExit("bare write_register failed")
                if client.read_holding_registers(11, count=1, **kw).isError():
                    raise SystemExit("bare read failed")
                bare.append((time.perf_counter() - started) * 1000)
        finally:
            client.close()
        status, _, body = daemon.get("/api/controls/plc", "op00")
        value = json.loads(body)["value"]
        if value != float(writes):
            raise SystemExit(f"the plc control reads {value}, expected {writes}")
    finally:
        if sender is not None:
            sender.close()
        daemon.stop()
        server.kill()
    print(f"\n2. Modbus TCP on loopback, pymodbus {pymodbus_version()}, {writes} writes (ms)")
    print(f"   {'':48}{'p50':>7} {'p99':>7} {'max':>7}")
    rows = (("operation on a holding register (POST -> 200)", through),
            ("baseline: operation on a memory control", memory),
            ("baseline: bare pymodbus write + read back", bare))
    for label, values in rows:
        print(f"   {label:48}{percentile(values, 50):7.2f} {percentile(values, 99):7.2f} {max(values):7.2f}")
    print(f"   the daemon adds {percentile(through, 50) - percentile(bare, 50):.2f} ms at p50 to the bare "
          f"protocol; Modbus adds {percentile(through, 50) - percentile(memory, 50):.2f} ms to a memory operation")


def pymodbus_version() -> str:
    import pymodbus

    return str(pymodbus.__version__)


# ------------------------------------------------------------------ part 3


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def part_cpu(base: Path, seconds: float, warmup: float = 3.0) -> None:
    files = base / "sensors"
    files.mkdir(parents=True, exist_ok=True)
    sensors = []
    for i in range(SENSORS):
        path = files / f"t{i:03d}"
        path.write_text(f"{20000 + i}\n")
        sensors.append(f"[control:t{i:03d}]\ntype = sensor\nbackend = file\npath = {path}\nunit = °C\n"
                       f"scale = 0.001\npoll = 1\n")
    idle = Daemon(base / "idle", config="[floor]\nmode = off\n", users={"op00": "op00-pw"})
    polling = Daemon(base / "polling", config="[floor]\nmode = off\n" + "".join(sensors), users={"op00": "op00-pw"})
    try:
        idle.start()
        polling.start()
        listing = polling.get_json("/api/controls", "op00")["controls"]
        if len(listing) != SENSORS:
            raise SystemExit(f"{len(listing)} controls, expected {SENSORS}")
        time.sleep(warmup)  # let start-up work (imports, first reads) end before measuring
        bad = [c["name"] for c in polling.get_json("/api/controls", "op00")["controls"] if c["quality"] != "good"]
        if bad:
            raise SystemExit(f"sensors not good: {bad[:5]}")
        assert idle.proc is not None and polling.proc is not None
        pids = {"idle": idle.proc.pid, "polling": polling.proc.pid}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.monotonic()
        time.sleep(seconds)  # the measurement window
        wall = time.monotonic() - started
        used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        reads = polling_reads(polling)
    finally:
        idle.stop()
        polling.stop()
    percent = {name: used[name] / wall * 100 for name in used}
    print(f"\n3. polling CPU over {wall:.1f} s (utime + stime of the daemon, every thread; "
          f"clock tick {1 / os.sysconf('SC_CLK_TCK') * 1000:g} ms)")
    print(f"   idle daemon (no controls):          {percent['idle']:6.2f} % of one core")
    print(f"   {SENSORS} file sensors, poll = 1 s:     {percent['polling']:6.2f} % of one core"
          f"   ({reads} reads counted by /metrics)")
    extra = percent["polling"] - percent["idle"]
    verdict = "ok" if percent["polling"] <= CPU_TARGET_PERCENT else "MISSED"
    print(f"   polling costs {extra:.2f} % of a core above idle "
          f"({extra / 100 * 1e6 / SENSORS:.0f} us of CPU per read); "
          f"target <= {CPU_TARGET_PERCENT:g} %: {verdict}")


def polling_reads(daemon: Daemon) -> int:
    from prometheus_client.parser import text_string_to_metric_families

    status, _, body = daemon.get("/metrics", "op00")
    total = 0.0
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "boatwist_backend_call_seconds_count" and sample.labels.get("call") == "read":
                total += sample.value
    return int(total)


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200, help="rounds of (chat message, operation)")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="pause after each delivered send")
    parser.add_argument("--modbus-writes", type=int, default=200)
    parser.add_argument("--cpu-seconds", type=float, default=20.0)
    parser.add_argument("--only", choices=("fanout", "modbus", "cpu"))
    args = parser.parse_args()
    if not 1 <= args.rounds <= 100000 or not 1 <= args.modbus_writes <= 100000:
        parser.error("--rounds and --modbus-writes: 1..100000")
    if not 1 <= args.cpu_seconds <= 600:
        parser.error("--cpu-seconds: 1..600")
    base = Path(tempfile.mkdtemp(prefix="boatwist-operations-"))
    began = time.monotonic()
    print(f"boatwist operations benchmark, loopback, {os.cpu_count()} CPUs")
    try:
        if args.only in (None, "fanout"):
            part_fanout(base, args.rounds, args.gap_ms / 1000)
        if args.only in (None, "modbus"):
            part_modbus(base, args.modbus_writes)
        if args.only in (None, "cpu"):
            part_cpu(base, args.cpu_seconds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\ntotal {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
