"""
The systemd units in etc/ and the daemon's side of their contract.

* ``systemd-analyze verify`` finds nothing to say about embweb.service and
  embweb.socket, and ``systemd-analyze security`` rates the service's
  exposure low.
* The directives the rest of the project relies on are there.
* MemoryDenyWriteExecute stays off while TLS cannot work under it.
* The daemon started with the unit's own ExecStart arguments does what
  ``Type=notify`` and ``WatchdogSec=`` expect (READY=1, WATCHDOG=1 in time,
  STOPPING=1), and serves on descriptors passed the way embweb.socket
  passes them with the endpoint strings docs/systemd.md gives.

No systemd (PID 1) is needed: the notify socket and the passed descriptors
are made here as systemd makes them.  Waits are bounded waits on real
events (a datagram, a connection), never sleeps.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "etc" / "embweb.service"
SOCKET = ROOT / "etc" / "embweb.socket"
TWISTD = Path(sys.executable).parent / "twistd"

#: Where systemd keeps its own units; copied into the fake root so that the
#: default dependencies (sysinit.target, sockets.target...) resolve.
SYSTEM_UNIT_DIRS = ("usr/lib/systemd/system", "lib/systemd/system")

#: Highest `systemd-analyze security` exposure accepted (0 best, 10 worst);
#: the unit scores 1.5 with systemd 252.  A rise means hardening was lost.
MAX_EXPOSURE = 2.0


# ------------------------------------------------------------ reading units


def directives(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order, as systemd reads them (repeats kept)."""
    found: list[tuple[str, str, str]] = []
    section = ""
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def values(path: Path, section: str, key: str) -> list[str]:
    return [v for s, k, v in directives(path) if s == section and k == key]


def last(path: Path, section: str, key: str) -> str | None:
    found = values(path, section, key)
    return found[-1] if found else None


def exec_start_argv() -> list[str]:
    (line,) = values(SERVICE, "Service", "ExecStart")
    return shlex.split(line)


# ------------------------------------------------------------ the unit text


def test_service_directives() -> None:
    """
    The service is Type=notify with the main PID allowed to notify, a 10 s
    watchdog, restart on failure, its state in /var/lib/boatwist, no
    capabilities, and the hardening the brief asks for.
    """
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "10",
        "Restart": "on-failure",
        "StateDirectory": "boatwist",
        "WorkingDirectory": "/var/lib/boatwist",
        "User": "boatwist",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
    }
    actual = {key: last(SERVICE, "Service", key) for key in expected}
    assert actual == expected
    assert last(SERVICE, "Install", "WantedBy") == "multi-user.target"


def test_exec_start() -> None:
    """
    ExecStart runs twistd from the /opt/boatwist venv in the foreground,
    without a pidfile, with the embweb plugin and the /etc configuration.
    """
    argv = exec_start_argv()
    assert argv == [
        "/opt/boatwist/venv/bin/twistd",
        "-n",
        "--pidfile=",
        "embweb",
        "--config",
        "/etc/boatwist/embweb.ini",
    ]


def test_socket_unit() -> None:
    """
    The socket unit hands one service its listening sockets (Accept=no),
    in the documented order: HTTP 8080, chat 8023, HTTPS 8443, all IPv4
    (so the endpoint strings say domain=INET).
    """
    assert values(SOCKET, "Socket", "ListenStream") == ["0.0.0.0:8080", "0.0.0.0:8023", "0.0.0.0:8443"]
    assert last(SOCKET, "Socket", "Accept") == "no"
    assert last(SOCKET, "Install", "WantedBy") == "sockets.target"


# ------------------------------------------------------------ systemd-analyze


def systemd_analyze() -> str:
    """The systemd-analyze binary; skip without it, except in CI where its absence is a failure."""
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing in CI: apt-get install -y systemd")
        pytest.skip("systemd-analyze not installed (apt-get install -y systemd)")
    return found


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """
    A filesystem root holding our two units in /etc/systemd/system, the
    system's own units, and an executable where ExecStart expects twistd.

    Why a root: ``systemd-analyze verify`` checks that the ExecStart binary
    exists, and /opt/boatwist/venv/bin/twistd exists on an installed device,
    not on a build machine.  With --root the unit files are verified
    byte for byte as they ship (no rewritten copy), the binary is a stub
    at the very path, and the host's own units or drop-ins cannot leak in.
    """
    root = tmp_path / "root"
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    shutil.copy(SERVICE, units / SERVICE.name)
    shutil.copy(SOCKET, units / SOCKET.name)
    for relative in SYSTEM_UNIT_DIRS:
        source = Path("/") / relative
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, root / relative, symlinks=True, dirs_exist_ok=True)
    binary = root / exec_start_argv()[0].lstrip("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    return root


def run_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_COLORS="0", LC_ALL="C", SYSTEMD_PAGER="")
    return subprocess.run(
        [systemd_analyze(), *args], capture_output=True, text=True, timeout=120, env=env, cwd="/"
    )


def test_systemd_analyze_verify_clean(fake_root: Path) -> None:
    """
    systemd-analyze verify loads both units without a single warning about
    them (unknown keys, unparseable values, missing binary) and exits 0.
    Lines about the host's own units, if any, are not ours to fix.
    """
    result = run_analyze("verify", f"--root={fake_root}", "--man=no", SERVICE.name, SOCKET.name)
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines() if "embweb" in line]
    assert ours == [], output
    assert result.returncode == 0, output


def test_systemd_analyze_verify_catches_mistakes(fake_root: Path) -> None:
    """
    The verify test above can fail: a misspelt key and a bad value in a
    copy of the unit are reported (so silence above means something).
    """
    unit = fake_root / "etc" / "systemd" / "system" / SERVICE.name
    unit.write_text(unit.read_text().replace("LockPersonality=yes", "LockPersonalty=yes\nProtectHome=maybe"))
    result = run_analyze("verify", f"--root={fake_root}", "--man=no", SERVICE.name)
    output = result.stdout + result.stderr
    assert "LockPersonalty" in output, output
    assert "maybe" in output, output


def test_systemd_analyze_security_exposure(fake_root: Path) -> None:
    """The offline security review rates the service's exposure at most MAX_EXPOSURE (of 10)."""
    result = run_analyze("security", "--offline=true", f"--root={fake_root}", "--no-pager", SERVICE.name)
    output = result.stdout + result.stderr
    if "--offline" in output and ("nrecognized" in output or "nknown option" in output):
        pytest.skip("systemd-analyze security --offline needs systemd 250 or later")
    match = re.search(r"Overall exposure level for embweb\.service: ([0-9.]+)", output)
    assert match, output
    assert float(match.group(1)) <= MAX_EXPOSURE, output


# ------------------------------------------------------------ MemoryDenyWriteExecute

#: Runs in a child: takes away writable+executable memory the way
#: MemoryDenyWriteExecute=yes does (the kernel's PR_SET_MDWE, Linux 6.3+),
#: then sets up the daemon's TLS.
_MDWE_PROBE = textwrap.dedent(
    """
    import ctypes, sys, tempfile, pathlib
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        print("unsupported", ctypes.get_errno()); sys.exit(0)
    import mmap
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        print("unsupported not-enforced"); sys.exit(0)
    except OSError:
        pass
    from boatwist.tls import TLSConfigError, ensure_self_signed, server_tls_options
    cert, key = ensure_self_signed(pathlib.Path(tempfile.mkdtemp()))
    try:
        server_tls_options(cert, key)
    except TLSConfigError as e:
        print("tls-fails", e)
    else:
        print("tls-works")
    """
)


def test_memory_deny_write_execute_left_off_while_tls_needs_it() -> None:
    """
    Under the kernel's equivalent of MemoryDenyWriteExecute=yes, setting up
    TLS fails (pyOpenSSL's cffi callbacks need write+execute memory) with a
    message that points at the setting; so the unit must not set it.  If a
    future cffi/pyOpenSSL makes TLS work there, only the second half holds.
    """
    result = subprocess.run(
        [sys.executable, "-c", _MDWE_PROBE], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    verdict = result.stdout.strip()
    if verdict.startswith("unsupported"):
        pytest.skip(f"this kernel cannot refuse write+execute memory to a process (PR_SET_MDWE): {verdict}")
    if verdict.startswith("tls-fails"):
        assert "MemoryDenyWriteExecute" in verdict, verdict
        assert last(SERVICE, "Service", "MemoryDenyWriteExecute") in (None, "no", "false", "0")
    else:
        assert verdict == "tls-works", verdict


# ------------------------------------------------------------ the daemon's side


class NotifySocket:
    """A stand-in for systemd's notify socket: a bound AF_UNIX datagram socket."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / f"notify-{uuid.uuid4().hex[:8]}")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def expect(
        self,
        message: bytes,
        within: float,
        ignore: tuple[bytes, ...] = (b"WATCHDOG=1",),
        sender: subprocess.Popen[bytes] | None = None,
    ) -> list[bytes]:
        """
        Wait up to C{within} seconds for a datagram whose assignments include
        C{message}; return all seen.  If C{sender} dies meanwhile, fail at
        once instead of waiting out the time.
        """
        seen: list[bytes] = []
        deadline = time.monotonic() + within
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {message!r} within {within} s; received {seen!r}")
            if sender is not None and sender.poll() is not None:
                pytest.fail(f"the daemon exited ({sender.returncode}) before sending {message!r}")
            self.sock.settimeout(min(remaining, 0.5) if sender is not None else remaining)
            try:
                datagram = self.sock.recv(4096)
            except socket.timeout:
                continue
            seen.append(datagram)
            if message in datagram.split(b"\n"):
                return seen
            if not any(part in ignore for part in datagram.split(b"\n")):
                pytest.fail(f"unexpected {datagram!r} while waiting for {message!r}")

    def close(self) -> None:
        self.sock.close()


def write_config(directory: Path, http: str, chat: str, https: str) -> Path:
    state = directory / "state"
    config = directory / "embweb.ini"
    config.write_text(
        f"[server]\nhttp = {http}\nchat = {chat}\nhttps = {https}\nstate_dir = {state}\n"
    )
    return config


def daemon_argv(config: Path) -> list[str]:
    """The unit's ExecStart, with this venv's twistd and the test's configuration."""
    argv = exec_start_argv()
    argv[0] = str(TWISTD)
    argv[argv.index("--config") + 1] = str(config)
    return argv


class Started:
    """A daemon process and its log file (a file, not a pipe: a full pipe would stall it)."""

    def __init__(self, argv: list[str], workdir: Path, env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> None:
        self.log = workdir / "twistd.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                argv, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, pass_fds=pass_fds
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture
def daemons() -> Iterator[list[Started]]:
    """Every daemon a test starts is killed at its end, passed or failed."""
    started: list[Started] = []
    yield started
    for daemon in started:
        daemon.stop()


@pytest.mark.integration
def test_daemon_keeps_the_notify_contract(tmp_path: Path, daemons: list[Started]) -> None:
    """
    Started with the unit's ExecStart arguments, NOTIFY_SOCKET and a 3 s
    WATCHDOG_USEC, the daemon sends READY=1, then WATCHDOG=1 again and
    again, each within the watchdog period; on SIGTERM (systemctl stop) it
    sends STOPPING=1 and ends cleanly, leaving no pidfile behind.
    """
    notify = NotifySocket(tmp_path)
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = write_config(
        workdir, "tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"
    )
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="3000000", PYTHONUNBUFFERED="1")
    env.pop("WATCHDOG_PID", None)
    daemon = Started(daemon_argv(config), workdir, env)
    daemons.append(daemon)
    process = daemon.process
    try:
        # Start-up (bcrypt for the first admin, a key pair) is bounded by
        # TimeoutStartSec=90 under systemd, not by the watchdog.
        notify.expect(b"READY=1", within=90, ignore=(), sender=process)
        for _ in range(3):
            notify.expect(b"WATCHDOG=1", within=3.0, ignore=())
        process.send_signal(signal.SIGTERM)
        notify.expect(b"STOPPING=1", within=30)
        code = process.wait(timeout=30)
    except BaseException:
        print(daemon.output())
        raise
    finally:
        notify.close()
    # twistd re-raises the signal it stopped for; systemd counts death by
    # SIGTERM as a clean stop (SuccessExitStatus), as it does exit code 0.
    assert code in (0, -signal.SIGTERM), daemon.output()
    assert not (workdir / "twistd.pid").exists()


def _pass_as_listen_fds(argv: list[str], fds: list[int]) -> list[str]:
    """
    Wrap C{argv} so that it runs as systemd runs an activated service: the
    listening sockets at descriptors 3, 4, ... and LISTEN_FDS, LISTEN_PID
    (the PID of the process that will exec twistd, i.e. twistd's) set.
    The sockets C{fds} come in through C{pass_fds} at whatever numbers;
    they are moved up out of the way, then down to 3, 4, ... in order.
    """
    launcher = textwrap.dedent(
        """
        import fcntl, os, sys
        count = int(sys.argv[1]); sources = [int(fd) for fd in sys.argv[2:2 + count]]
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in sources]
        for fd in sources:
            os.close(fd)
        for index, fd in enumerate(high):
            os.dup2(fd, 3 + index, inheritable=True)
            os.close(fd)
        os.environ["LISTEN_FDS"] = str(count)
        os.environ["LISTEN_PID"] = str(os.getpid())
        # systemd (since 227) always sets the names too, by default the
        # socket unit's name for each; Twisted ignores LISTEN_FDS without them.
        os.environ["LISTEN_FDNAMES"] = ":".join([UNIT_NAME] * count)
        argv = sys.argv[2 + count:]
        os.execv(argv[0], argv)
        """
    )
    launcher = launcher.replace("UNIT_NAME", repr(SOCKET.name))
    return [sys.executable, "-c", launcher, str(len(fds)), *(str(fd) for fd in fds), *argv]


@pytest.mark.integration
def test_socket_activation_with_documented_endpoints(tmp_path: Path, daemons: list[Started]) -> None:
    """
    Given listening sockets in the order of embweb.socket's ListenStream
    lines (here bound to 127.0.0.1 and free ports) and the endpoint strings
    from its comment (systemd:domain=INET:index=0/1/2), the daemon serves
    HTTP on the first and HTTPS on the third, verifiable against its own
    certificate for 'localhost'.
    """
    listen_lines = values(SOCKET, "Socket", "ListenStream")
    sockets = []
    for line in listen_lines:
        host, _, _ = line.rpartition(":")
        assert host == "0.0.0.0", "the test binds IPv4 sockets as the unit does"
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        sockets.append(listener)
    http_port, _, https_port = (s.getsockname()[1] for s in sockets)

    documented = {
        key: value
        for key, value in re.findall(r"#\s+(http|chat|https)\s*=\s*(systemd:\S+)", SOCKET.read_text())
    }
    assert documented == {
        "http": "systemd:domain=INET:index=0",
        "chat": "systemd:domain=INET:index=1",
        "https": "systemd:domain=INET:index=2",
    }
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = write_config(workdir, documented["http"], documented["chat"], documented["https"])
    notify = NotifySocket(tmp_path)
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, PYTHONUNBUFFERED="1")
    env.pop("WATCHDOG_USEC", None)
    fds = [s.fileno() for s in sockets]
    argv = _pass_as_listen_fds(daemon_argv(config), fds)
    daemon = Started(argv, workdir, env, pass_fds=tuple(fds))
    daemons.append(daemon)
    process = daemon.process
    for listener in sockets:
        listener.close()  # the daemon holds its own copies now, as under systemd
    try:
        notify.expect(b"READY=1", within=90, ignore=(), sender=process)

        with socket.create_connection(("127.0.0.1", http_port), timeout=30) as conn:
            conn.sendall(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            assert conn.recv(64).startswith(b"HTTP/1.")

        context = ssl.create_default_context(cafile=str(workdir / "state" / "tls" / "cert.pem"))
        with socket.create_connection(("127.0.0.1", https_port), timeout=30) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as conn:
                conn.sendall(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
                assert conn.recv(64).startswith(b"HTTP/1.")
    except BaseException:
        print(daemon.output())
        raise
    finally:
        notify.close()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
