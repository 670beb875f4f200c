"""A three-namespace network lab for cable-pull tests.

Topology (DESIGN.md, "How dead peers are detected")::

        SERVER ns                 SWITCH ns                 CLIENT ns
    eth0 10.231.N.1/24 ==veth== p-server  br0  p-client ==veth== eth0 10.231.N.2/24

Every interface lives inside the lab's own namespaces: the veth pairs are
created in the switch namespace with their peer end moved straight into the
server / client namespace, so nothing, not even for a moment, appears in the
host's namespace, and the addresses are only ever assigned inside the lab.

``pull_cable()`` sets the switch's port to the client down: the client
vanishes without a FIN while the server's own link keeps its carrier, as on
a real LAN when someone pulls the client's cable.

Namespaces are named ``bwt<pid>-<n>-switch|server|client`` (``PREFIX`` +
the pid of the owning process + a per-process counter).  ``close()`` (also
run by ``__exit__``, the pytest fixture, and ``atexit``) kills the tracked
process groups, then every process still inside the lab's namespaces (what
escaped a group: a daemonizing twistd), then deletes the namespaces, which
destroys their interfaces.  ``sweep_stale()`` removes namespaces left behind
by a run whose owner process no longer exists (SIGKILL, power loss).

Usage::

    with Lab() as lab:                       # or the pytest fixture ``lab``
        srv = lab.spawn_peer("server", "server", "--bind", lab.server_ip)
        port = wait_json(srv, "listening")["port"]
        cli = lab.spawn_peer("client", "client", "--connect", f"{lab.server_ip}:{port}")
        wait_json(cli, "connected")
        pulled = lab.pull_cable()
        end = wait_json(srv, lambda o: o["event"] in ("error", "eof"), timeout=10)
        latency = end["t"] - pulled          # both CLOCK_MONOTONIC

Processes print JSON lines on stdout (``peer.py`` does; so can an SSE client
or a daemon's log observer) and ``read_json_lines`` / ``wait_json`` read them
with a bounded wait.  stderr of spawned processes goes to a file by default
(``proc.lab_stderr_path``) so a chatty process can never block on a full
pipe; its tail is quoted in every error this module raises about it.

This module imports nothing from boatwist and nothing outside the standard
library: it is the baseline the boatwist netns tests stand on.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence, Union

PREFIX = "bwt"
ROLES = ("switch", "server", "client")
NS_NAME_RE = re.compile(rf"^{PREFIX}(\d+)-(\d+)-(switch|server|client)$")
TMPDIR_RE = re.compile(rf"^{PREFIX}(\d+)-(\d+)-[A-Za-z0-9_]+$")
PEER_SCRIPT = Path(__file__).resolve().with_name("peer.py")
PYTHON = sys.executable
IP = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")

#: Host-side (inside each end namespace) interface name, the bridge, and the
#: switch ports.  All are namespace-local, so they never collide between labs.
END_IF = "eth0"
BRIDGE = "br0"

#: How long a tracked process group gets between SIGTERM and SIGKILL.
TERM_GRACE = 2.0

Until = Union[None, str, Callable[[dict], bool]]


class LabError(RuntimeError):
    """The lab could not be built, driven or torn down as asked."""


class LabTimeout(TimeoutError):
    """A bounded wait in the lab ran out."""


# --------------------------------------------------------------------------
# small helpers


def requirements_missing() -> str | None:
    """Why netns tests cannot run here (``None``: they can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append(f"not root (euid {os.geteuid()})")
    if IP is None:
        problems.append("`ip` (iproute2) not found")
    return "; ".join(problems) or None


def _run(argv: Sequence[str], timeout: float = 10.0, check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    try:
        cp = subprocess.run(list(argv), capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise LabTimeout(f"`{shlex.join(argv)}` did not finish in {timeout} s") from exc
    if check and cp.returncode != 0:
        raise LabError(f"`{shlex.join(argv)}` failed (exit {cp.returncode}): "
                       f"{cp.stderr.strip() or cp.stdout.strip()}")
    return cp


def ip(*args: str, timeout: float = 10.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` (bounded)."""
    if IP is None:
        raise LabError("`ip` (iproute2) not found")
    return _run([IP, *args], timeout=timeout, check=check)


def list_namespaces() -> list[str]:
    """Names in ``ip netns list``."""
    out = ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (empty if it is gone)."""
    cp = ip("netns", "pids", name, check=False)
    return [int(x) for x in cp.stdout.split() if x.isdigit()]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # "pid (comm) S ..." - comm may contain spaces and parentheses
    state = stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3]
    return state not in (b"Z", b"X", b"x")


def terminate_pids(pids: Sequence[int], grace: float = TERM_GRACE) -> list[int]:
    """SIGTERM, wait up to ``grace``, SIGKILL, wait up to 2 s; return survivors."""
    def send(sig: int, targets: Sequence[int]) -> None:
        for pid in targets:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    alive = [p for p in pids if pid_alive(p)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        if not alive:
            break
        send(sig, alive)
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.02)
            alive = [p for p in alive if pid_alive(p)]
    return alive


def destroy_namespace(name: str) -> list[str]:
    """Kill every process inside ``name`` and delete it.  Returns problems."""
    problems = []
    survivors = terminate_pids(namespace_pids(name))
    if survivors:
        problems.append(f"{name}: processes survived SIGKILL: {survivors}")
    cp = ip("netns", "del", name, check=False)
    if cp.returncode != 0 and name in list_namespaces():
        problems.append(f"{name}: `ip netns del` failed: {cp.stderr.strip()}")
    return problems


def sweep_stale(*, include_live_owners: bool = False) -> list[str]:
    """Delete lab namespaces (and temp dirs) whose owner process is gone;
    return the namespaces' names.

    A namespace belongs to the process whose pid is in its name.  Labs of a
    live process (another pytest running in parallel, this one) are left
    alone unless ``include_live_owners``.  (A recycled pid that happens to be
    alive keeps a stale lab until that process ends: harmless, it is
    isolated.)
    """
    removed = []
    with _live_lock:
        ours = {n for lab in _live for n in lab.namespaces}
    for name in list_namespaces():
        m = NS_NAME_RE.match(name)
        if not m or name in ours:
            continue
        owner = int(m.group(1))
        if not include_live_owners and owner != os.getpid() and pid_alive(owner):
            continue
        destroy_namespace(name)
        removed.append(name)
    # The temp dirs (stderr files) of those dead owners.
    tmp = Path(tempfile.gettempdir())
    for path in tmp.glob(f"{PREFIX}*-*-*"):
        m = TMPDIR_RE.match(path.name)
        if m and path.is_dir() and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
    return removed


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stderr_tail(proc: subprocess.Popen, limit: int = 2000) -> str:
    path = getattr(proc, "lab_stderr_path", None)
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _describe_proc(proc: subprocess.Popen) -> str:
    argv = getattr(proc, "lab_argv", proc.args)
    ns = getattr(proc, "lab_ns", "?")
    return f"[{ns}] `{shlex.join(str(a) for a in argv)}` (pid {proc.pid})"


# --------------------------------------------------------------------------
# JSON lines


class _LineReader:
    __slots__ = ("buf", "eof", "seen", "other")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.eof = False
        self.seen: list[dict] = []      # every JSON object read so far
        self.other: list[str] = []      # non-JSON lines (log text)


def _reader(proc: subprocess.Popen) -> _LineReader:
    r = getattr(proc, "_lab_reader", None)
    if r is None:
        r = _LineReader()
        proc._lab_reader = r  # type: ignore[attr-defined]
    return r


def _matcher(until: Until) -> Callable[[dict], bool] | None:
    if until is None or callable(until):
        return until
    return lambda obj: obj.get("event") == until


def read_json_lines(proc: subprocess.Popen, until: Until = None,
                    timeout: float = 10.0) -> list[dict]:
    """Read JSON lines from ``proc.stdout`` until one satisfies ``until``.

    ``until``: a predicate on the parsed object, a string (shorthand for
    ``obj["event"] == until``), or ``None`` (read to EOF).  Returns every
    object read by this call, the matching one last.  Lines after the match
    stay buffered for the next call.  Lines that are not JSON objects (log
    text) are skipped and kept for ``other_lines(proc)``.

    Raises ``LabTimeout`` after ``timeout`` seconds, ``LabError`` if the
    output ends first; both quote what was read and the stderr tail.
    """
    if proc.stdout is None:
        raise LabError(f"{_describe_proc(proc)} has no stdout pipe")
    match = _matcher(until)
    state = _reader(proc)
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    got: list[dict] = []

    def context() -> str:
        shown = json.dumps(got[-8:]) if got else "nothing"
        other = state.other[-5:]
        return (f"{_describe_proc(proc)}: read {shown}"
                + (f"; other lines {other}" if other else "")
                + f"; exit status {proc.poll()}; stderr tail: {_stderr_tail(proc)!r}")

    while True:
        while True:
            nl = state.buf.find(b"\n")
            if nl < 0:
                if state.eof and state.buf:      # last line without newline
                    nl = len(state.buf)
                else:
                    break
            raw = bytes(state.buf[:nl])
            del state.buf[:nl + 1]
            text = raw.decode("utf-8", "replace").strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                state.other.append(text)
                continue
            got.append(obj)
            state.seen.append(obj)
            if match is not None and match(obj):
                return got
        if state.eof:
            if match is None:
                return got
            raise LabError(f"output ended before the awaited line: {context()}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LabTimeout(f"no awaited line within {timeout} s: {context()}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if chunk:
                state.buf += chunk
            else:
                state.eof = True


def wait_json(proc: subprocess.Popen, until: Until, timeout: float = 10.0) -> dict:
    """``read_json_lines(...)[-1]``: the first object satisfying ``until``."""
    if until is None:
        raise ValueError("wait_json needs a condition")
    return read_json_lines(proc, until, timeout)[-1]


def json_history(proc: subprocess.Popen) -> list[dict]:
    """Every JSON object read from ``proc`` so far, by any call."""
    return list(_reader(proc).seen)


def other_lines(proc: subprocess.Popen) -> list[str]:
    """Every non-JSON stdout line read from ``proc`` so far."""
    return list(_reader(proc).other)


# --------------------------------------------------------------------------
# the lab

_counter = itertools.count(1)
_live: set["Lab"] = set()
_live_lock = threading.Lock()


class Lab:
    """Three namespaces, a bridge, two veth "cables".  See the module doc.

    Attributes: ``server_ns``, ``client_ns``, ``switch_ns`` (names),
    ``namespaces`` (all three), ``server_ip``, ``client_ip``, ``prefixlen``,
    ``server_if`` / ``client_if`` (the end interfaces, ``eth0``),
    ``server_switch_port`` / ``client_switch_port`` (their bridge ports),
    ``cable_plugged``, ``pulled_at`` / ``pulled_at_wall`` (time.monotonic() /
    time.time() just before the last pull), ``pull_done_at`` (monotonic once
    the link was down), ``plugged_at``.
    """

    def __init__(self, index: int | None = None) -> None:
        self.index = next(_counter) if index is None else index
        self.name = f"{PREFIX}{os.getpid()}-{self.index}"
        self.switch_ns = f"{self.name}-switch"
        self.server_ns = f"{self.name}-server"
        self.client_ns = f"{self.name}-client"
        self.namespaces = (self.switch_ns, self.server_ns, self.client_ns)
        octet = self.index % 250 + 1
        self.subnet = f"10.231.{octet}.0/24"
        self.prefixlen = 24
        self.server_ip = f"10.231.{octet}.1"
        self.client_ip = f"10.231.{octet}.2"
        self.server_if = END_IF
        self.client_if = END_IF
        self.bridge = BRIDGE
        self.server_switch_port = "p-server"
        self.client_switch_port = "p-client"
        self.cable_plugged = True
        self.pulled_at: float | None = None
        self.pulled_at_wall: float | None = None
        self.pull_done_at: float | None = None
        self.plugged_at: float | None = None
        self.setup_seconds: float | None = None
        self._procs: list[subprocess.Popen] = []
        self._files = itertools.count(1)
        self._created: list[str] = []
        self._tmpdir: str | None = None
        self._started = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> "Lab":
        self.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.close()
        except Exception as teardown_error:
            if exc_type is None:
                raise
            # Never hide the body's own failure behind a teardown problem.
            print(f"netns lab {self.name}: teardown problem: {teardown_error}",
                  file=sys.stderr)

    def start(self) -> "Lab":
        """Build the topology and check the client reaches the server."""
        if self._started:
            raise LabError(f"lab {self.name} already started")
        reason = requirements_missing()
        if reason:
            raise LabError(f"cannot build a netns lab: {reason}")
        self._started = True
        with _live_lock:
            _live.add(self)
        t0 = time.monotonic()
        try:
            self._tmpdir = tempfile.mkdtemp(prefix=f"{self.name}-")
            for ns in self.namespaces:
                self._created.append(ns)
                ip("netns", "add", ns)
            sw = ("-n", self.switch_ns)
            ip(*sw, "link", "set", "lo", "up")
            ip(*sw, "link", "add", self.bridge, "type", "bridge", "stp_state", "0")
            ip(*sw, "link", "set", self.bridge, "up")
            for ns, port, addr in ((self.server_ns, self.server_switch_port, self.server_ip),
                                   (self.client_ns, self.client_switch_port, self.client_ip)):
                ip(*sw, "link", "add", port, "type", "veth",
                   "peer", "name", END_IF, "netns", ns)
                ip(*sw, "link", "set", port, "master", self.bridge)
                ip(*sw, "link", "set", port, "up")
                ip("-n", ns, "link", "set", "lo", "up")
                ip("-n", ns, "addr", "add", f"{addr}/{self.prefixlen}", "dev", END_IF)
                ip("-n", ns, "link", "set", END_IF, "up")
            # Port 9 has no listener: "refused" proves SYN and RST crossed the
            # bridge, both directions, without starting a server.
            result = self.tcp_probe("client", self.server_ip, 9,
                                    until=("connected", "refused"), deadline=5.0)
            if result not in ("connected", "refused"):
                raise LabError(f"client cannot reach server ({result}):\n{self.describe()}")
        except BaseException:
            try:
                self.close()
            except Exception as cleanup_error:
                print(f"netns lab {self.name}: cleanup after failed start: {cleanup_error}",
                      file=sys.stderr)
            raise
        self.setup_seconds = time.monotonic() - t0
        return self

    def close(self) -> None:
        """Kill every process of the lab, delete its namespaces.  Idempotent.

        Raises ``LabError`` naming anything that could not be removed.
        """
        if self._closed:
            return
        self._closed = True
        problems: list[str] = []
        procs = list(self._procs)
        for p in procs:
            if p.poll() is None:
                _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + TERM_GRACE
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in procs:
            _signal_group(p, signal.SIGKILL)   # also group members left behind
            try:
                p.wait(2.0)
            except subprocess.TimeoutExpired:
                problems.append(f"{_describe_proc(p)} survived SIGKILL")
        for name in reversed(self._created):
            problems.extend(destroy_namespace(name))
        for p in procs:
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
        try:
            left = set(self._created) & set(list_namespaces())
        except LabError as exc:
            left, problems = set(), problems + [str(exc)]
        if left:
            problems.append(f"namespaces still present: {sorted(left)}")
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        with _live_lock:
            _live.discard(self)
        if problems:
            raise LabError(f"lab {self.name} teardown: " + "; ".join(problems))

    # -- processes ---------------------------------------------------------

    def ns(self, which: str) -> str:
        """Namespace name for a role (``server``/``client``/``switch``) or a name."""
        if which in ROLES:
            return f"{self.name}-{which}"
        if which in self.namespaces:
            return which
        raise ValueError(f"not a namespace of lab {self.name}: {which!r}")

    def _check_running(self) -> None:
        if not self._started or self._closed:
            raise LabError(f"lab {self.name} is not running")

    def spawn(self, ns: str, argv: Sequence[Any], **popen_kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` inside namespace ``ns`` (``ip netns exec``); tracked.

        Defaults: stdin from /dev/null, stdout a pipe (binary; read it with
        ``read_json_lines``), stderr to a file in the lab's temp dir
        (``proc.lab_stderr_path``), env = ours + ``PYTHONUNBUFFERED=1``.
        Any ``subprocess.Popen`` keyword overrides these, except that the
        process always leads a new session: ``close()`` kills its group.
        A process whose stdout pipe you do not read must not write much to
        it: pass ``stdout=lab.log_file("name")`` for a chatty one.
        """
        self._check_running()
        name = self.ns(ns)
        argv = [str(a) for a in argv]
        if popen_kwargs.pop("start_new_session", True) is not True:
            raise ValueError("lab processes always start a new session")
        kw: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE}
        stderr_path = None
        if "stderr" not in popen_kwargs:
            stderr_path = self._tmp_path(f"{os.path.basename(argv[0])}.stderr")
            kw["stderr"] = open(stderr_path, "wb")
        if "env" not in popen_kwargs:
            env = dict(os.environ)
            env.setdefault("PYTHONUNBUFFERED", "1")
            kw["env"] = env
        kw.update(popen_kwargs)
        assert IP is not None
        try:
            proc = subprocess.Popen([IP, "netns", "exec", name, *argv],
                                    start_new_session=True, **kw)
        finally:
            if stderr_path is not None:
                kw["stderr"].close()
        proc.lab_ns = name                    # type: ignore[attr-defined]
        proc.lab_argv = argv                  # type: ignore[attr-defined]
        proc.lab_stderr_path = stderr_path    # type: ignore[attr-defined]
        self._procs.append(proc)
        return proc

    def spawn_peer(self, ns: str, mode: str, *args: Any, **popen_kwargs: Any) -> subprocess.Popen:
        """``spawn`` of ``python -u peer.py MODE ARGS`` (see peer.py)."""
        return self.spawn(ns, [PYTHON, "-u", str(PEER_SCRIPT), mode, *args], **popen_kwargs)

    def run(self, ns: str, argv: Sequence[Any], timeout: float = 10.0,
            check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``ns`` to completion (text output), bounded.

        On timeout the whole process group is killed and ``LabTimeout``
        raised; with ``check`` a non-zero exit raises ``LabError``.
        """
        self._check_running()
        argv = [str(a) for a in argv]
        assert IP is not None
        full = [IP, "netns", "exec", self.ns(ns), *argv]
        proc = subprocess.Popen(full, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except BaseException as exc:
            _signal_group(proc, signal.SIGKILL)
            try:
                proc.communicate(timeout=2.0)
            except subprocess.TimeoutExpired:   # a grandchild holds the pipes
                proc.kill()
                proc.wait(2.0)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise LabTimeout(f"[{self.ns(ns)}] `{shlex.join(argv)}` did not finish "
                                 f"in {timeout} s") from None
            raise
        cp = subprocess.CompletedProcess(full, proc.returncode, out, err)
        if check and cp.returncode != 0:
            raise LabError(f"[{self.ns(ns)}] `{shlex.join(argv)}` failed "
                           f"(exit {cp.returncode}): {err.strip() or out.strip()}")
        return cp

    def tcp_probe(self, ns: str, host: str, port: int, *,
                  until: Sequence[str] = ("connected",), timeout: float = 1.0,
                  deadline: float = 0.0) -> str:
        """Try to connect from ``ns``; return ``connected``, ``refused``,
        ``timeout``, ``unreachable`` or an errno name.  Retries every 50 ms
        until a result in ``until`` or ``deadline`` seconds have passed."""
        cp = self.run(ns, [PYTHON, "-u", str(PEER_SCRIPT), "probe",
                           "--connect", f"{host}:{port}", "--until", ",".join(until),
                           "--timeout", timeout, "--deadline", deadline],
                      timeout=deadline + timeout + 10.0, check=False)
        for line in cp.stdout.splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if obj.get("event") == "probe":
                return str(obj["result"])
        raise LabError(f"probe from {ns} printed no result (exit {cp.returncode}): {cp.stderr.strip()}")

    def wait_tcp(self, ns: str, host: str, port: int, timeout: float = 10.0) -> float:
        """Wait until a TCP connect from ``ns`` to host:port succeeds (a daemon
        listening).  Returns the seconds it took; raises ``LabTimeout``."""
        t0 = time.monotonic()
        result = self.tcp_probe(ns, host, port, until=("connected",), deadline=timeout)
        if result != "connected":
            raise LabTimeout(f"{host}:{port} not accepting from {ns} after {timeout} s: {result}")
        return time.monotonic() - t0

    # -- links -------------------------------------------------------------

    def link_state(self, ns: str, ifname: str) -> dict:
        """``ip -j link show`` of one interface: keys ``flags`` (list, e.g.
        UP, LOWER_UP, NO-CARRIER) and ``operstate`` among others."""
        out = ip("-n", self.ns(ns), "-j", "link", "show", "dev", ifname).stdout
        return json.loads(out)[0]

    def has_carrier(self, ns: str, ifname: str) -> bool:
        """Administratively UP and LOWER_UP (carrier present)."""
        flags = self.link_state(ns, ifname)["flags"]
        return "UP" in flags and "LOWER_UP" in flags

    def pull_cable(self) -> float:
        """Take the client's switch port down; return ``pulled_at``.

        The client's eth0 loses carrier, sends nothing more, no FIN, no RST;
        the server's link is checked to still be UP with LOWER_UP (carrier
        kept), else ``LabError``.
        """
        self._check_running()
        if not self.cable_plugged:
            raise LabError("cable already pulled")
        self.pulled_at_wall = time.time()
        self.pulled_at = time.monotonic()
        ip("-n", self.switch_ns, "link", "set", self.client_switch_port, "down")
        self.pull_done_at = time.monotonic()
        self.cable_plugged = False
        if not self.has_carrier("server", self.server_if):
            raise LabError(f"server lost its carrier on the pull: "
                           f"{self.link_state('server', self.server_if)}")
        return self.pulled_at

    def plug_cable(self, timeout: float = 5.0) -> float:
        """Bring the client's switch port back; wait for both carriers."""
        self._check_running()
        ip("-n", self.switch_ns, "link", "set", self.client_switch_port, "up")
        self.plugged_at = time.monotonic()
        deadline = self.plugged_at + timeout
        while not (self.has_carrier("client", self.client_if)
                   and self.has_carrier("switch", self.client_switch_port)):
            if time.monotonic() > deadline:
                raise LabTimeout(f"no carrier {timeout} s after plugging:\n{self.describe()}")
            time.sleep(0.02)
        self.cable_plugged = True
        return self.plugged_at

    # -- diagnostics -------------------------------------------------------

    def _tmp_path(self, basename: str) -> str:
        assert self._tmpdir is not None
        return os.path.join(self._tmpdir, f"{next(self._files)}-{basename}")

    @property
    def tmpdir(self) -> str | None:
        """The lab's temp dir (stderr files, ``log_file``); removed by close()."""
        return self._tmpdir

    def log_file(self, name: str) -> Any:
        """A binary file in the lab's temp dir to pass as stdout/stderr."""
        self._check_running()
        return open(self._tmp_path(name), "wb")

    def processes(self) -> list[subprocess.Popen]:
        return list(self._procs)

    def describe(self) -> str:
        """Links and addresses of the three namespaces (for failure messages)."""
        parts = []
        for ns in self.namespaces:
            cp = ip("-n", ns, "-br", "addr", check=False)
            parts.append(f"{ns}:\n{cp.stdout.rstrip() or cp.stderr.strip()}")
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"<Lab {self.name} server={self.server_ip} client={self.client_ip}>"


def close_all() -> list[str]:
    """Close every lab of this process still open; return problems."""
    problems = []
    with _live_lock:
        labs = list(_live)
    for lab in labs:
        try:
            lab.close()
        except Exception as exc:
            problems.append(str(exc))
    return problems


atexit.register(close_all)
