#!/usr/bin/env python3
"""
Memory and start-up of boatwist next to plain ``twistd web`` in the same run.

    .venv/bin/python bench/footprint.py [--connections 500] [--starts 5]

Prints, for ``twistd web --path`` (a static file, no auth) and for boatwist
with the shipped ``etc/embweb.ini`` (its demo device, chat port, heartbeat,
default access log):

  idle RSS     resident set size once listening and idle (VmRSS), kB
  per conn     RSS growth per idle keep-alive connection, first fill: N
               connections each make one request and stay open (boatwist:
               authenticated with Basic), RSS after minus RSS before, / N
  start        seconds from spawn to the port accepting a connection
               (median of --starts runs)
  answer       seconds from spawn to the first HTTP answer (any status: boatwist
               answers 401 without credentials), median of the same runs -- a
               server may listen before it can answer (boatwist does: see
               boatwist.startup.listen_early); connections made meanwhile wait

and the ratios against twistd web.  Targets (issue 13): per connection
<= 3 KB; idle RSS <= 1.1x; start <= 1.2x.

boatwist's bytecode is compiled first (into its __pycache__ directories), as
an installed wheel has it and as Twisted's is: with PYTHONDONTWRITEBYTECODE
set and an editable install, every start would otherwise compile ~90
modules from source (~100 ms and ~1 MB more) -- a cost twistd web, whose
bytecode pip wrote at install, does not pay.
"""

from __future__ import annotations

import argparse
import base64
import compileall
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from daemon import free_port, write_users  # noqa: E402


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> float:
    """Seconds until the port accepts a connection."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return time.monotonic() - started
        except OSError:
            time.sleep(0.005)
    raise SystemExit(f"port {port} did not open")


def wait_answer(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> float:
    """Seconds until a GET of C{path} is answered (any status line)."""
    started = time.monotonic()
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(request)
                if s.recv(16).startswith(b"HTTP/1."):
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.005)
    raise SystemExit(f"port {port} did not answer")


def settle(pid: int, seconds: float = 1.5) -> int:
    """RSS once it has stopped moving (after start-up work and the first heartbeat ticks)."""
    time.sleep(seconds)
    return rss_kb(pid)


def fill(port: int, path: str, headers: str, count: int) -> list[socket.socket]:
    """count keep-alive connections, each having made one request and read its answer."""
    conns = []
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode()
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(rest) < length:
            rest += s.recv(65536)
        conns.append(s)
    return conns


class Server:
    def __init__(self, name: str, argv: list[str], cwd: Path, port: int, path: str, headers: str = "") -> None:
        self.name, self.argv, self.cwd, self.port, self.path, self.headers = name, argv, cwd, port, path, headers

    def spawn(self) -> tuple[subprocess.Popen[bytes], float]:
        proc = subprocess.Popen(self.argv, cwd=self.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        return proc, wait_listening(self.port, proc)

    def spawn_and_ask(self) -> float:
        """Seconds from spawn to the first answer (the server is stopped again)."""
        started = time.monotonic()
        proc = subprocess.Popen(self.argv, cwd=self.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            wait_answer(self.port, self.path, proc)
            return time.monotonic() - started
        finally:
            self.stop(proc)

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def measure(self, connections: int, starts: int) -> dict[str, float]:
        times, answers = [], []
        for _ in range(starts):
            proc, took = self.spawn()
            times.append(took)
            self.stop(proc)
            answers.append(self.spawn_and_ask())
        proc, _ = self.spawn()
        try:
            idle = settle(proc.pid)
            conns = fill(self.port, self.path, self.headers, connections)
            full = settle(proc.pid, 1.0)
            for s in conns:
                s.close()
        finally:
            self.stop(proc)
        return {"idle_kb": idle, "per_conn_kb": (full - idle) / connections, "start_s": statistics.median(times),
                "answer_s": statistics.median(answers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    import resource

    compileall.compile_dir(str(ROOT / "boatwist"), quiet=1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.connections * 2 + 100)), hard))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        static = work / "static"
        static.mkdir()
        shutil.copy(ROOT / "boatwist" / "web" / "static" / "index.html", static / "index.html")
        web_port = free_port()
        baseline = Server("twistd web --path", [str(BIN / "twistd"), "-n", "--pidfile=", "web", "--path", str(static),
                                                "--listen", f"tcp:{web_port}:interface=127.0.0.1"],
                          work, web_port, "/index.html")
        # boatwist with the shipped configuration, on free ports, its state in the temporary directory.
        device = work / "device"
        (device / "var").mkdir(parents=True)
        write_users(device / "var", {"alice": "alice-pw"}, rounds=4)
        port, chat = free_port(), free_port()
        ini = (ROOT / "etc" / "embweb.ini").read_text()
        ini = ini.replace("tcp:8080:interface=127.0.0.1", f"tcp:{port}:interface=127.0.0.1")
        ini = ini.replace("tcp:8023:interface=127.0.0.1", f"tcp:{chat}:interface=127.0.0.1")
        ini += f"\n[admission]\nmax_connections_per_address = {args.connections + 64}\n" \
               f"max_connections = {args.connections + 64}\n" if "[admission]" not in ini else ""
        ini = ini.replace("[admission]\n", f"[admission]\nmax_connections_per_address = {args.connections + 64}\n"
                                           f"max_connections = {args.connections + 64}\n", 1)
        (device / "embweb.ini").write_text(ini)
        basic = "Authorization: Basic " + base64.b64encode(b"alice:alice-pw").decode() + "\r\n"
        ours = Server("boatwist (etc/embweb.ini)", [str(BIN / "twistd"), "-n", "--pidfile=", "embweb", "--config",
                                                   str(device / "embweb.ini")], device, port, "/api/whoami", basic)
        results = {server.name: server.measure(args.connections, args.starts) for server in (baseline, ours)}
    base = results[baseline.name]
    print(f"{'server':28} {'idle RSS kB':>12} {'per conn kB':>12} {'start s':>8} {'answer s':>9}")
    for name, r in results.items():
        print(f"{name:28} {r['idle_kb']:12.0f} {r['per_conn_kb']:12.2f} {r['start_s']:8.3f} {r['answer_s']:9.3f}")
    r = results[ours.name]
    print(f"ratios: idle RSS {r['idle_kb'] / base['idle_kb']:.2f}x (target <= 1.1x), "
          f"start {r['start_s'] / base['start_s']:.2f}x (target <= 1.2x), "
          f"answer {r['answer_s'] / base['answer_s']:.2f}x, "
          f"per connection {r['per_conn_kb']:.2f} kB (target <= 3 kB; twistd web {base['per_conn_kb']:.2f} kB)")


if __name__ == "__main__":
    main()
