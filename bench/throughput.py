#!/usr/bin/env python3
"""
Throughput of authenticated requests, next to plain ``twistd web`` in the same run.

    .venv/bin/python bench/throughput.py [--seconds 5] [--connections 8]

Needs ``wrk`` (Debian package) and, for pinning, ``taskset`` (util-linux).
The server under test runs pinned to CPU 0 and wrk to CPU 1, one server at a
time.  Scenarios:

  baseline   ``twistd web --path DIR`` serving a static file (no auth)
  static     boatwist serving the same static file, Basic auth
  basic      boatwist ``/api/whoami``, Basic auth, bcrypt cost 12 users
  digest     boatwist ``/api/whoami``, Digest (MD5, qop=auth), a fresh nc per request

Digest needs a new response per request: for each wrk thread (one
connection each) the script fetches a nonce and precomputes the
Authorization headers, which a small Lua script hands out in order.

Each boatwist daemon answers one authenticated request before it is
measured: the first Basic login runs bcrypt (cost 12, ~0.25 s, off the
reactor), later ones hit the verified-credential cache.

Each boatwist scenario runs twice: with the default access log (one
twisted.logger event per request, written and flushed by twistd's observer)
and with ``[http] access_log`` set to a file (buffered, flushed each second).
The baseline writes no access log at all.

Prints req/s, p99 latency and the ratio to the baseline.  Targets (issue 2):
authenticated GET >= 0.9x the baseline, with bcrypt users >= 0.85x.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

from daemon import Daemon, free_port  # noqa: E402

BIN = Path(sys.executable).parent


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1 else []


def parse_wrk(output: str) -> tuple[float, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    match = re.search(r"99%\s+([\d.]+)(us|ms|s)", output)
    value, unit = float(match.group(1)), match.group(2)
    p99_ms = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} non-2xx responses:\n{output}")
    return rps, p99_ms


def wrk(url: str, seconds: int, connections: int, headers: dict[str, str] | None = None,
        script: Path | None = None) -> tuple[float, float]:
    argv = pin(1) + ["wrk", "--latency", f"-t{connections}", f"-c{connections}", f"-d{seconds}s"]
    for k, v in (headers or {}).items():
        argv += ["-H", f"{k}: {v}"]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 30)
    if out.returncode != 0:
        raise SystemExit(f"wrk failed: {out.stderr}")
    return parse_wrk(out.stdout)


def wait_http(url: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not answer")


def digest_script(work: Path, daemon: Daemon, user: str, password: str, threads: int, per_thread: int) -> Path:
    """Precompute per-thread Digest headers (one nonce per thread/connection, nc 1..N)."""
    files = []
    for t in range(threads):
        try:
            urllib.request.urlopen(f"{daemon.url}/api/whoami", timeout=5)
            raise SystemExit("expected a 401 challenge")
        except urllib.error.HTTPError as e:
            challenges = e.headers.get_all("WWW-Authenticate")
        md5 = next(c for c in challenges if "MD5" in c and "SHA-256" not in c)
        fields = dict(re.findall(r'(\w+)="?([^",]+)"?', md5))
        realm, nonce, opaque = fields["realm"], fields["nonce"], fields.get("opaque", "")
        ha1 = hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()
        ha2 = hashlib.md5(b"GET:/api/whoami").hexdigest()
        path = work / f"digest-{t}.txt"
        with path.open("w") as f:
            for nc in range(1, per_thread + 1):
                ncs = f"{nc:08x}"
                cnonce = secrets.token_hex(8)
                resp = hashlib.md5(f"{ha1}:{nonce}:{ncs}:{cnonce}:auth:{ha2}".encode()).hexdigest()
                f.write(f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="/api/whoami", '
                        f'algorithm=MD5, response="{resp}", opaque="{opaque}", qop=auth, nc={ncs}, '
                        f'cnonce="{cnonce}"\n')
        files.append(path)
    lua = work / "digest.lua"
    lua.write_text(
        "local counter = 0\n"
        "function setup(thread) thread:set('id', counter); counter = counter + 1 end\n"
        "function init(args)\n"
        "  headers = {}\n"
        f"  for line in io.lines('{work}/digest-' .. id .. '.txt') do headers[#headers + 1] = line end\n"
        "  i = 0\n"
        "end\n"
        "function request()\n"
        "  i = i + 1\n"
        "  return wrk.format('GET', '/api/whoami', {['Authorization'] = headers[i]})\n"
        "end\n"
    )
    return lua


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        static = work / "static"
        static.mkdir()
        body = (Path(__file__).resolve().parents[1] / "boatwist" / "web" / "static" / "index.html").read_bytes()
        (static / "index.html").write_bytes(body)
        results: dict[str, tuple[float, float]] = {}

        # -- baseline: plain twistd web
        port = free_port()
        base = subprocess.Popen(pin(0) + [str(BIN / "twistd"), "-n", "--pidfile=", "web", "--path", str(static),
                                          "--listen", f"tcp:{port}:interface=127.0.0.1"],
                                cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/index.html")
            results["baseline (twistd web, static)"] = wrk(f"http://127.0.0.1:{port}/index.html",
                                                          args.seconds, args.connections)
        finally:
            os.killpg(base.pid, signal.SIGTERM)
            base.wait(10)

        # -- boatwist, users with bcrypt cost 12 (what embweb-passwd writes), both access-log modes
        for mode in ("logger", "file"):
            access = f"access_log = {work / 'access.log'}\n" if mode == "file" else ""
            daemon = Daemon(work / f"boatwist-{mode}", users={}, with_chat=False,
                            config="[admission]\nmax_connections_per_address = 1000\n[auth]\nmax_failures = 1000\n"
                                   f"[http]\n{access}")
            from boatwist.auth.passwords import set_password

            set_password(daemon.state / "users.htpasswd", daemon.state / "users.htdigest", "boatwist", "alice",
                         "alice-pw", rounds=12)
            daemon.users = {"alice": "alice-pw"}
            original = daemon.argv
            daemon.argv = lambda original=original: pin(0) + original()  # type: ignore[method-assign]
            daemon.start()
            label = "access log via twisted.logger" if mode == "logger" else "access log to a file"
            try:
                basic = {"Authorization": "Basic " + base64.b64encode(b"alice:alice-pw").decode()}
                # The first Basic login runs bcrypt once (~0.25 s, off the reactor); a running
                # device has done that long ago.  wrk corrects for coordinated omission, so that one
                # stall would otherwise show up as a p99 of ~200 ms.
                urllib.request.urlopen(urllib.request.Request(f"{daemon.url}/api/whoami", headers=basic),
                                       timeout=10).read()
                results[f"static, Basic [{label}]"] = wrk(f"{daemon.url}/index.html", args.seconds,
                                                          args.connections, basic)
                results[f"/api/whoami, Basic bcrypt-12 [{label}]"] = wrk(f"{daemon.url}/api/whoami", args.seconds,
                                                                        args.connections, basic)
                per_thread = max(20000, 8000 * args.seconds)
                script = digest_script(work, daemon, "alice", "alice-pw", args.connections, per_thread)
                results[f"/api/whoami, Digest MD5 [{label}]"] = wrk(f"{daemon.url}/api/whoami", args.seconds,
                                                                   args.connections, script=script)
            finally:
                daemon.stop()

    baseline = results["baseline (twistd web, static)"][0]
    print(f"{'scenario':62} {'req/s':>8} {'p99 ms':>8} {'ratio':>7}")
    for name, (rps, p99) in results.items():
        print(f"{name:62} {rps:8.0f} {p99:8.2f} {rps / baseline:6.2f}x")
    print("targets: authenticated GET >= 0.90x the baseline; with bcrypt users >= 0.85x")


if __name__ == "__main__":
    main()
