"""Self-tests of the netns lab: the baseline every boatwist cable-pull test
stands on.  Nothing here imports boatwist: plain sockets in the lab's
namespaces (``peer.py``), measured against the kernel behaviour DESIGN.md
relies on, and the lab's own promise to leave nothing behind.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .lab import (PEER_SCRIPT, Lab, LabError, LabTimeout, json_history, list_namespaces,
                  other_lines, pid_alive, read_json_lines, sweep_stale, wait_json)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

HERE = Path(__file__).resolve().parent
ENDED = ("error", "eof")


def _ended(obj: dict) -> bool:
    return obj["event"] in ENDED


def _connect_pair(lab: Lab, server_args: list[str], client_args: list[str]):
    srv = lab.spawn_peer("server", "server", "--bind", lab.server_ip, "--port", 0,
                         "--tcp-info", 0.1, *server_args)
    port = wait_json(srv, "listening")["port"]
    cli = lab.spawn_peer("client", "client", "--connect", f"{lab.server_ip}:{port}",
                         *client_args)
    wait_json(cli, "connected")
    accepted = wait_json(srv, "accepted")
    return srv, cli, accepted


def _last_ack_at(samples: list[dict], after: float) -> float | None:
    """Monotonic time of the last ACK received, from a TCP_INFO sample taken
    after ``after`` (no ACK arrives once the cable is out)."""
    later = [s for s in samples if s["event"] == "tcp_info" and s["t"] > after]
    if not later:
        return None
    return later[-1]["t"] - later[-1]["last_ack_recv_ms"] / 1000.0


# ---------------------------------------------------------------------------
# detection baselines


@pytest.mark.parametrize("user_timeout", [None, 3000], ids=["keepalive", "keepalive+user-timeout"])
def test_idle_vanished_peer_fails_with_etimedout_in_seconds(lab, netns_report, user_timeout):
    """An idle connection whose client's cable is pulled fails on the server
    with ETIMEDOUT 1.5-4.5 s after the pull when the accepted socket has
    keepalive 1/1/2 (alone, and with TCP_USER_TIMEOUT 3000 ms as boatwist
    sets both); TCP_INFO shows keepalive probes outstanding before it fails."""
    extra = ["--user-timeout", user_timeout] if user_timeout else []
    srv, cli, accepted = _connect_pair(lab, ["--keepalive", "1,1,2", *extra], [])
    opts = accepted["options"]
    assert (opts["keepalive"], opts["keepidle"], opts["keepintvl"], opts["keepcnt"]) == (1, 1, 1, 2)
    assert opts["user_timeout_ms"] == (user_timeout or 0)

    # Idle past TCP_KEEPIDLE: probes are being sent and answered before the pull.
    time.sleep(1.5)
    pulled = lab.pull_cable()
    lines = read_json_lines(srv, _ended, timeout=10)
    end = lines[-1]
    assert (end["event"], end.get("op"), end.get("error")) == ("error", "recv", "ETIMEDOUT"), end

    latency = end["t"] - pulled
    last_ack = _last_ack_at(lines, pulled)
    since_ack = f", {end['t'] - last_ack:.2f} s after the last ACK" if last_ack else ""
    netns_report(f"idle, keepalive 1/1/2{' + user timeout 3000 ms' if user_timeout else ''}: "
                 f"ETIMEDOUT {latency:.2f} s after the pull{since_ack}")
    assert 1.5 <= latency <= 4.5
    after = [s for s in lines if s["event"] == "tcp_info" and s["t"] > pulled]
    assert any(s["probes"] > 0 for s in after), after
    assert all(s["state"] == "ESTABLISHED" for s in after)


def test_sending_to_vanished_peer_fails_by_user_timeout(lab, netns_report):
    """With data in flight keepalive never fires; TCP_USER_TIMEOUT 3000 ms
    makes the server's send() fail with ETIMEDOUT 1-4.5 s after the pull,
    while TCP_INFO shows retransmissions and backoff, not probes."""
    srv, cli, _ = _connect_pair(
        lab, ["--keepalive", "1,1,2", "--user-timeout", 3000, "--send"], ["--read"])
    wait_json(cli, "reading")
    wait_json(cli, lambda o: o["event"] == "progress" and o["bytes"] > 64 * 1024, timeout=10)
    pulled = lab.pull_cable()
    lines = read_json_lines(srv, _ended, timeout=10)
    end = lines[-1]
    assert (end["event"], end.get("op"), end.get("error")) == ("error", "send", "ETIMEDOUT"), end

    latency = end["t"] - pulled
    netns_report(f"sending, user timeout 3000 ms (+ keepalive 1/1/2): ETIMEDOUT {latency:.2f} s "
                 f"after the pull ({end['bytes'] / 1e6:.1f} MB sent)")
    assert 1.0 <= latency <= 4.5
    after = [s for s in lines if s["event"] == "tcp_info" and s["t"] > pulled]
    assert any(s["retransmits"] > 0 and s["backoff"] > 0 for s in after), after
    assert all(s["probes"] == 0 for s in after), after


def test_pull_keeps_server_carrier_and_plug_restores(lab):
    """Pulling the cable drops the client's carrier only: the server's eth0
    stays UP with LOWER_UP, the client cannot reach the server, and plugging
    it back restores reachability."""
    assert lab.has_carrier("server", lab.server_if)
    assert lab.has_carrier("client", lab.client_if)
    lab.pull_cable()
    server = lab.link_state("server", lab.server_if)
    client = lab.link_state("client", lab.client_if)
    assert {"UP", "LOWER_UP"} <= set(server["flags"]) and server["operstate"] == "UP", server
    assert "LOWER_UP" not in client["flags"] and "NO-CARRIER" in client["flags"], client
    assert lab.pulled_at is not None and lab.pulled_at_wall is not None
    assert lab.pull_done_at - lab.pulled_at < 1.0
    assert lab.tcp_probe("client", lab.server_ip, 9, timeout=0.5) in ("timeout", "unreachable")
    with pytest.raises(LabError):
        lab.pull_cable()

    lab.plug_cable()
    assert lab.has_carrier("client", lab.client_if)
    result = lab.tcp_probe("client", lab.server_ip, 9, until=("refused", "connected"), deadline=5)
    assert result == "refused"


# ---------------------------------------------------------------------------
# the lab leaves nothing behind


def test_close_kills_everything_when_body_raises():
    """When the body of ``with Lab()`` raises, the exception propagates and
    the lab still kills its processes - also one that left the tracked
    process group with setsid - and deletes its three namespaces."""
    with pytest.raises(RuntimeError, match="boom"):
        with Lab() as lab:
            names = lab.namespaces
            srv = lab.spawn_peer("server", "server", "--bind", lab.server_ip)
            wait_json(srv, "listening")
            orphan = lab.spawn_peer("client", "orphan", "--seconds", 60)
            child = wait_json(orphan, "orphan")["child"]
            pids = [srv.pid, orphan.pid, child]
            assert all(pid_alive(p) for p in pids)
            raise RuntimeError("boom")
    assert not set(names) & set(list_namespaces())
    assert [p for p in pids if pid_alive(p)] == []
    assert srv.returncode is not None and orphan.returncode is not None


_INNER_TEST = '''
import json, os, time
import pytest
from netns.lab import wait_json

pytestmark = pytest.mark.netns

def test_inner(lab):
    proc = lab.spawn_peer("server", "orphan", "--seconds", 60)
    child = wait_json(proc, "orphan")["child"]
    record = {"namespaces": lab.namespaces, "pids": [proc.pid, child]}
    with open(os.environ["BWT_INNER_RECORD"], "w") as f:
        json.dump(record, f)
    if os.environ["BWT_INNER_MODE"] == "fail":
        raise AssertionError("deliberate failure")
    time.sleep(60)
'''


def _inner_pytest(tmp_path: Path, mode: str, body: str = _INNER_TEST,
                  env_extra: dict | None = None) -> tuple[subprocess.Popen, Path]:
    """Run a throwaway pytest session using this directory's conftest as a plugin."""
    (tmp_path / "test_inner.py").write_text(body)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    netns: netns\n")
    record = tmp_path / "record.json"
    env = dict(os.environ, BWT_INNER_MODE=mode, BWT_INNER_RECORD=str(record),
               PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent),
                                                        os.environ.get("PYTHONPATH")])))
    env.update(env_extra or {})
    argv = [sys.executable, "-m", "pytest", "-p", "netns.conftest", "-p", "no:cacheprovider",
            "-q", "-rA", "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path),
            str(tmp_path / "test_inner.py")]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    return proc, record


def _finish(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=5)
        pytest.fail(f"inner run did not end in {timeout} s:\n{out.decode(errors='replace')}")
    return out.decode(errors="replace")


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return json.loads(path.read_text())
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    out = _finish(proc, 5)
    pytest.fail(f"inner run wrote no record (exit {proc.returncode}):\n{out}")


def _assert_gone(record: dict) -> None:
    assert not set(record["namespaces"]) & set(list_namespaces()), list_namespaces()
    assert [p for p in record["pids"] if pid_alive(p)] == []


def test_fixture_tears_down_after_failing_test(tmp_path):
    """A test using the ``lab`` fixture that fails leaves no namespace and no
    process behind (the orphan that escaped its process group included)."""
    proc, record_path = _inner_pytest(tmp_path, "fail")
    try:
        out = _finish(proc)
        assert proc.returncode == 1, out
        assert "deliberate failure" in out
        _assert_gone(json.loads(record_path.read_text()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        sweep_stale()


def test_fixture_tears_down_when_run_is_terminated(tmp_path):
    """SIGTERM to a pytest run in the middle of a netns test still tears the
    lab down (the conftest turns SIGTERM into KeyboardInterrupt)."""
    proc, record_path = _inner_pytest(tmp_path, "hang")
    try:
        record = _wait_file(record_path, proc)
        assert set(record["namespaces"]) <= set(list_namespaces())
        os.kill(proc.pid, signal.SIGTERM)
        out = _finish(proc)
        assert proc.returncode != 0, out
        _assert_gone(record)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        sweep_stale()


def test_sweep_removes_labs_of_a_killed_owner():
    """A process killed with SIGKILL cannot clean up: its namespaces and the
    processes in them (and its temp dir) stay until ``sweep_stale()`` (run at
    session start) removes them, because their owner pid is gone."""
    script = textwrap.dedent(f"""
        import json, sys, time
        sys.path.insert(0, {str(HERE)!r})
        import lab as L
        lab = L.Lab().start()
        p = lab.spawn_peer("server", "orphan", "--seconds", 60)
        child = L.wait_json(p, "orphan")["child"]
        print(json.dumps({{"namespaces": lab.namespaces, "pids": [p.pid, child],
                          "tmpdir": lab.tmpdir}}), flush=True)
        time.sleep(60)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    record = None
    try:
        record = wait_json(owner, lambda o: "namespaces" in o, timeout=20)
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(5)
        # Left behind by the crash.  (Another pytest session starting right
        # now may sweep them first: only "gone afterwards" is certain.)
        left = set(record["namespaces"]) & set(list_namespaces())
        assert left and any(pid_alive(p) for p in record["pids"])
        removed = sweep_stale()
        assert left & set(list_namespaces()) <= set(removed)
        _assert_gone(record)
        assert not os.path.exists(record["tmpdir"])
    finally:
        if owner.poll() is None:
            os.killpg(owner.pid, signal.SIGKILL)
            owner.wait(5)
        for stream in (owner.stdout, owner.stderr):
            stream.close()
        sweep_stale()


_GATED_TEST = '''
import pytest

pytestmark = pytest.mark.netns

def test_needs_netns(lab):
    pass
'''
_SIMULATE_NOT_ROOT = '''
import netns.conftest
netns.conftest.requirements_missing = lambda: "simulated: not root"
'''


@pytest.mark.parametrize("ci, outcome, status", [("", "1 skipped", 0), ("true", "1 error", 1)],
                         ids=["local", "ci"])
def test_missing_requirements_skip_locally_and_fail_in_ci(tmp_path, ci, outcome, status):
    """Without root or ``ip`` a netns test is skipped, unless CI is set: then
    it errors in setup (the run fails) with a message saying CI must run the
    netns tests."""
    (tmp_path / "conftest.py").write_text(_SIMULATE_NOT_ROOT)
    proc, _ = _inner_pytest(tmp_path, "none", body=_GATED_TEST, env_extra={"CI": ci})
    out = _finish(proc)
    assert outcome in out and proc.returncode == status, out
    if ci:
        assert "CI must run the netns tests" in out


# ---------------------------------------------------------------------------
# helpers the boatwist netns tests use


def test_read_json_lines_is_bounded_and_explains_itself():
    """``wait_json`` returns the first matching line and keeps later ones;
    a line that never comes raises ``LabTimeout`` on time; output that ends
    first raises ``LabError``; non-JSON lines are kept aside."""
    code = ("import json,sys,time\n"
            "for e in ('a','log','b'):\n"
            "    print(json.dumps({'event': e}) if e != 'log' else 'plain log text', flush=True)\n"
            "time.sleep(float(sys.argv[1]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, "30"], stdout=subprocess.PIPE,
                            start_new_session=True)
    try:
        assert wait_json(proc, "a")["event"] == "a"
        assert wait_json(proc, lambda o: o["event"] == "b")["event"] == "b"
        assert other_lines(proc) == ["plain log text"]
        assert [o["event"] for o in json_history(proc)] == ["a", "b"]
        t0 = time.monotonic()
        with pytest.raises(LabTimeout, match="no awaited line within 0.3 s"):
            wait_json(proc, "never", timeout=0.3)
        assert time.monotonic() - t0 < 2.0
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        proc.stdout.close()
    quick = subprocess.Popen([sys.executable, "-c", code, "0"], stdout=subprocess.PIPE)
    try:
        with pytest.raises(LabError, match="output ended before the awaited line"):
            wait_json(quick, "never", timeout=10)
        assert [o["event"] for o in json_history(quick)] == ["a", "b"]
    finally:
        quick.wait(5)
        quick.stdout.close()


class _SSEHandler(BaseHTTPRequestHandler):
    expected_auth = "Basic " + base64.b64encode(b"alice:secret").decode()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.headers.get("Authorization") != self.expected_auth:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="lab"')
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b": hello\n\n"
                         b"id: 1\nevent: presence\n"
                         b'data: {"user": "bob", "state": "offline", "reason": "keepalive-timeout"}\n\n'
                         b"event: chat\r\ndata: line one\r\ndata: line two\r\n\r\n")
        self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


def test_peer_sse_client_prints_events_as_json_lines():
    """``peer.py sse`` (the client the boatwist tests run on 127.0.0.1 inside
    the server namespace) sends Basic credentials, prints the HTTP status,
    each event with its kind, id and JSON-decoded data, comments, and EOF;
    a refused login prints the status and exits 1.  (Loopback only.)"""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SSEHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api/events"
    procs = []
    try:
        ok = subprocess.Popen([sys.executable, "-u", str(PEER_SCRIPT), "sse", "--url", url,
                               "--user", "alice", "--password", "secret"],
                              stdout=subprocess.PIPE, start_new_session=True)
        procs.append(ok)
        lines = read_json_lines(ok, None, timeout=10)
        assert [o["event"] for o in lines] == ["http", "sse_comment", "sse", "sse", "closed"]
        assert lines[0]["status"] == 200
        assert lines[0]["headers"]["content-type"] == "text/event-stream"
        assert lines[2]["kind"] == "presence" and lines[2]["id"] == "1"
        assert lines[2]["data"]["reason"] == "keepalive-timeout"
        assert lines[3]["kind"] == "chat" and lines[3]["data"] == "line one\nline two"

        denied = subprocess.Popen([sys.executable, "-u", str(PEER_SCRIPT), "sse", "--url", url,
                                   "--user", "alice", "--password", "wrong"],
                                  stdout=subprocess.PIPE, start_new_session=True)
        procs.append(denied)
        assert wait_json(denied, "http")["status"] == 401
        assert denied.wait(10) == 1
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
            p.stdout.close()
        server.shutdown()
        server.server_close()
