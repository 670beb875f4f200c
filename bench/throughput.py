#!/usr/bin/env python3
"""
Authenticated requests per second and CPU per request, next to plain
``twistd web`` serving a static file in the same run (issue 13).

    .venv/bin/python bench/throughput.py [--rounds 3] [--seconds 5] [--connections 10]

Needs ``wrk`` (Debian package) and ``taskset`` (util-linux).  Both servers
run pinned to CPU 0, wrk to CPU 1; the servers start once and every round
measures each row in turn, so a machine that gets busier mid-run slows all
rows alike.  Each server's log (and so the access log) goes to a file, the
way it goes to the journal under systemd.  boatwist runs with the shipped
defaults: only the ports, the state directory, the users and the controls
of the /api/controls row are set.

Rows:

  baseline          ``twistd web --path DIR``, a 1 KB static file, no auth
  whoami Basic      ``GET /api/whoami``, Basic, bcrypt cost 12 user (what
                    embweb-passwd writes), the credential cache warm
  whoami Digest     ``GET /api/whoami``, Digest SHA-256, qop=auth, one nonce
                    per connection reused with nc 1, 2, 3 ... (what browsers do)
  UI 304            ``GET /`` with ``If-None-Match`` (Digest SHA-256): the
                    console page a browser already has
  controls          ``GET /api/controls`` with 20 controls (Digest SHA-256)

For each row: req/s (median and min-max over the rounds), the ratio to the
same round's baseline, p99 latency, and the server's CPU time per request
(user + system, from ``/proc/PID/stat``, over the requests wrk counted).

Targets: whoami Basic >= 1.0x; whoami Digest >= 0.9x; UI 304 >= 1.0x;
controls >= 0.8x; CPU per authenticated request <= the static file's.
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
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from daemon import free_port, write_users  # noqa: E402

USER, PASSWORD = "alice", "alice-pw"
TICKS = os.sysconf("SC_CLK_TCK")
TARGETS = {"whoami Basic": 1.0, "whoami Digest SHA-256": 0.9, "UI 304 (Digest)": 1.0, "controls x20 (Digest)": 0.8}


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of C{pid} so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class Sample:
    rps: float
    p99_ms: float
    cpu_us: float


@dataclass
class Row:
    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    #: Digest: (method, path, extra headers) to precompute per connection each round.
    digest: tuple[str, str, dict[str, str]] | None = None
    samples: list[Sample] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)


def run_wrk(url: str, pid: int, seconds: int, connections: int, headers: dict[str, str],
            script: Path | None) -> Sample:
    argv = pin(1) + ["wrk", "--latency", f"-t{connections}", f"-c{connections}", f"-d{seconds}s"]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    if script is not None:
        argv += ["-s", str(script)]
    before = cpu_seconds(pid)
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 60)
    used = cpu_seconds(pid) - before
    if out.returncode != 0:
        raise SystemExit(f"wrk failed: {out.stderr}")
    text = out.stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} non-2xx/3xx responses from {url}:\n{text}")
    socket_errors = re.search(r"Socket errors: (.*)", text)
    if socket_errors:
        raise SystemExit(f"wrk saw socket errors on {url}: {socket_errors.group(1)}")
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", text).groups()
    p99 = float(value) / 1000 if unit == "us" else float(value) * 1000 if unit == "s" else float(value)
    return Sample(rps, p99, used / max(1, requests) * 1e6)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}) before answering {url}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not answer")


# ------------------------------------------------------------------ Digest


def challenge(base: str, path: str) -> dict[str, str]:
    """The Digest SHA-256 challenge a 401 on C{path} offers."""
    try:
        urllib.request.urlopen(base + path, timeout=5)
    except urllib.error.HTTPError as e:
        for value in e.headers.get_all("WWW-Authenticate") or []:
            if value.lower().startswith("digest") and "SHA-256" in value:
                return dict(re.findall(r'(\w+)="([^"]*)"', value))
    raise SystemExit(f"{path}: no Digest SHA-256 challenge")


def digest_value(ch: dict[str, str], method: str, path: str, nc: int) -> str:
    """An Authorization value for one request (RFC 7616, SHA-256, qop=auth)."""
    h = lambda s: hashlib.sha256(s.encode()).hexdigest()  # noqa: E731
    ha1 = h(f"{USER}:{ch['realm']}:{PASSWORD}")
    ha2 = h(f"{method}:{path}")
    ncs, cnonce = f"{nc:08x}", secrets.token_hex(8)
    response = h(f"{ha1}:{ch['nonce']}:{ncs}:{cnonce}:auth:{ha2}")
    return (f'Digest username="{USER}", realm="{ch["realm"]}", nonce="{ch["nonce"]}", uri="{path}", '
            f'algorithm=SHA-256, response="{response}", opaque="{ch.get("opaque", "")}", qop=auth, '
            f'nc={ncs}, cnonce="{cnonce}"')


def digest_script(work: Path, base: str, method: str, path: str, extra: dict[str, str], connections: int,
                  per_connection: int) -> Path:
    """A wrk Lua script handing each connection (one per thread) its own nonce's headers, nc 1..N."""
    for t in range(connections):
        ch = challenge(base, path)
        with (work / f"digest-{t}.txt").open("w") as f:
            for nc in range(1, per_connection + 1):
                f.write(digest_value(ch, method, path, nc) + "\n")
    extra_lua = "".join(f"['{k}'] = '{v}', " for k, v in extra.items())
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
        f"  return wrk.format('{method}', '{path}', {{{extra_lua}['Authorization'] = headers[i]}})\n"
        "end\n"
    )
    return lua


def etag_of(base: str, path: str) -> str:
    ch = challenge(base, path)
    request = urllib.request.Request(base + path, headers={"Authorization": digest_value(ch, "GET", path, 1)})
    with urllib.request.urlopen(request, timeout=10) as response:
        tag = response.headers.get("ETag")
    if not tag:
        raise SystemExit(f"{path} sends no ETag")
    return tag


# ----------------------------------------------------------------- servers


def controls_ini(count: int) -> str:
    """C{count} controls on the memory backend: switches and numbers, as a small rig declares them."""
    out = []
    for n in range(count):
        if n % 2:
            out.append(f"[control:valve{n}]\ntype = switch\nlabel = Valve {n}\nbackend = memory\ninitial = off\n")
        else:
            out.append(f"[control:set{n}]\ntype = number\nlabel = Set-point {n}\nbackend = memory\nunit = °C\n"
                       "min = 0\nmax = 100\nstep = 0.5\ninitial = 20\n")
    return "\n".join(out)


def start(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(pin(0) + argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=10)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        static = work / "static"
        static.mkdir()
        (static / "one-k.html").write_bytes(b"<!doctype html><title>1 KB</title><pre>" + b"x" * 980 + b"</pre>\n")

        base_port = free_port()
        baseline = start([str(BIN / "twistd"), "-n", "--pidfile=", "web", "--path", str(static),
                          "--listen", f"tcp:{base_port}:interface=127.0.0.1"], work, work / "twistd-web.log")
        state = work / "var"
        state.mkdir()
        write_users(state, {USER: PASSWORD}, rounds=12)
        port = free_port()
        (work / "embweb.ini").write_text(
            f"[server]\nhttp = tcp:{port}:interface=127.0.0.1\nhttps =\nchat =\nstate_dir = {state}\n"
            f"[auth]\nusers = {state / 'users.htpasswd'}\ndigest_users = {state / 'users.htdigest'}\n\n"
            + controls_ini(20))
        boatwist = start([str(BIN / "twistd"), "-n", "--pidfile=", "embweb", "--config", str(work / "embweb.ini")],
                         work, work / "boatwist.log")
        try:
            base_url = f"http://127.0.0.1:{base_port}"
            url = f"http://127.0.0.1:{port}"
            wait_http(base_url + "/one-k.html", baseline)
            wait_http(url + "/healthz", boatwist)
            basic = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
            # The first Basic login runs bcrypt (cost 12, ~0.25 s, off the reactor); a running
            # device did that long ago.
            urllib.request.urlopen(urllib.request.Request(url + "/api/whoami", headers=basic), timeout=10).read()
            rows = [
                Row("whoami Basic", url + "/api/whoami", headers=basic),
                Row("whoami Digest SHA-256", url + "/api/whoami", digest=("GET", "/api/whoami", {})),
                Row("UI 304 (Digest)", url + "/", digest=("GET", "/", {"If-None-Match": etag_of(url, "/")})),
                Row("controls x20 (Digest)", url + "/api/controls", digest=("GET", "/api/controls", {})),
            ]
            reference = Row("baseline: twistd web, 1 KB static", base_url + "/one-k.html")
            per_connection = max(4000, 2000 * args.seconds)
            for _ in range(args.rounds):
                sample = run_wrk(reference.url, baseline.pid, args.seconds, args.connections, {}, None)
                reference.samples.append(sample)
                for row in rows:
                    script = None
                    if row.digest is not None:
                        method, path, extra = row.digest
                        script = digest_script(work, url, method, path, extra, args.connections, per_connection)
                    measured = run_wrk(row.url, boatwist.pid, args.seconds, args.connections, row.headers, script)
                    row.samples.append(measured)
                    row.ratios.append(measured.rps / sample.rps)
        finally:
            stop(boatwist)
            stop(baseline)

    print(f"{args.rounds} rounds x {args.seconds} s, wrk -t{args.connections} -c{args.connections}; "
          "servers on CPU 0, wrk on CPU 1\n")
    print(f"{'row':36} {'req/s median (min-max)':>24} {'ratio median (min-max)':>24} {'p99 ms':>7} "
          f"{'CPU us/req':>10} {'target':>7}")
    for row in [reference] + rows:
        rps = [s.rps for s in row.samples]
        cpu = statistics.median(s.cpu_us for s in row.samples)
        p99 = statistics.median(s.p99_ms for s in row.samples)
        ratio = (f"{statistics.median(row.ratios):.2f}x ({min(row.ratios):.2f}-{max(row.ratios):.2f})"
                 if row.ratios else "1.00x")
        target = f">={TARGETS[row.name]:.1f}x" if row.name in TARGETS else ""
        print(f"{row.name:36} {statistics.median(rps):8.0f} ({min(rps):.0f}-{max(rps):.0f}){'':>3} {ratio:>24} "
              f"{p99:7.2f} {cpu:10.0f} {target:>7}")
    static_cpu = statistics.median(s.cpu_us for s in reference.samples)
    worst = max(statistics.median(s.cpu_us for s in row.samples) for row in rows)
    print(f"\nCPU per authenticated request, worst row: {worst:.0f} us vs the static file's {static_cpu:.0f} us "
          f"({worst / static_cpu:.2f}x; target <= 1.00x)")


if __name__ == "__main__":
    main()
