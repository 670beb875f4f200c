"""
Issue 9, goal 6: every start-up error of the real ``twistd -n embweb`` is one
line on stderr naming the file and the key -- a port in use, a privileged
port, an out-of-range port, an interface that is not this machine's, a
state_dir that is a file, under a file, or on a read-only file system (21 to
35 line tracebacks before).  Exit status 2, no traceback, no usage text.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from daemon import TWISTD, free_port
from test_config_cli import assert_one_line_error, run_twistd

pytestmark = pytest.mark.integration


def config(directory: Path, http: str, state_dir: Path | str) -> Path:
    path = directory / "embweb.ini"
    path.write_text(f"[server]\nhttp = {http}\nchat =\nstate_dir = {state_dir}\n")
    return path


def start(directory: Path, path: Path, *wrapper: str) -> subprocess.CompletedProcess[str]:
    if not wrapper:
        return run_twistd(directory, "-n", "--pidfile=", "embweb", "--config", str(path))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_"))}
    return subprocess.run([*wrapper, TWISTD, "-n", "--pidfile=", "embweb", "--config", str(path)], cwd=directory,
                          env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another program listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_port_in_use(tmp_path: Path, held_port: int) -> None:
    """Another program listens on the port: one line naming [server] http, the address and why."""
    path = config(tmp_path, f"tcp:{held_port}:interface=127.0.0.1", tmp_path / "state")
    assert_one_line_error(start(tmp_path, path), str(path), "[server] http", f"127.0.0.1:{held_port}",
                          "address already in use")


def test_port_out_of_range(tmp_path: Path) -> None:
    """tcp:99999: refused while the INI is read, with its line number."""
    path = config(tmp_path, "tcp:99999", tmp_path / "state")
    assert_one_line_error(start(tmp_path, path), f"{path}:2:", "[server] http", "99999", "0 to 65535")
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("interface, why", [("eth0", "must be an address of this machine"),
                                            ("192.0.2.1", "no interface of this machine has that address")])
def test_interface_that_is_not_an_address_of_this_machine(tmp_path: Path, interface: str, why: str) -> None:
    """interface= a name, or an address no interface has: one line saying so."""
    path = config(tmp_path, f"tcp:{free_port()}:interface={interface}", tmp_path / "state")
    assert_one_line_error(start(tmp_path, path), str(path), "[server] http", interface, why)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to take CAP_NET_BIND_SERVICE away")
def test_privileged_port_without_the_capability(tmp_path: Path) -> None:
    """Port 80 without CAP_NET_BIND_SERVICE: one line saying permission denied, and what would allow it."""
    unprivileged = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if unprivileged.exists() and int(unprivileged.read_text()) <= 80:
        pytest.skip("ports below 1024 are not privileged on this machine")
    path = config(tmp_path, "tcp:80:interface=127.0.0.1", tmp_path / "state")
    out = start(tmp_path, path, "setpriv", "--bounding-set=-net_bind_service", "--inh-caps=-net_bind_service")
    assert_one_line_error(out, str(path), "[server] http", "permission denied", "CAP_NET_BIND_SERVICE")


def test_state_dir_is_a_file(tmp_path: Path) -> None:
    """state_dir names a file: one line."""
    (tmp_path / "state").write_text("not a directory\n")
    path = config(tmp_path, f"tcp:{free_port()}:interface=127.0.0.1", tmp_path / "state")
    assert_one_line_error(start(tmp_path, path), str(path), "[server] state_dir", "is a file")


def test_state_dir_under_a_file(tmp_path: Path) -> None:
    """A parent of state_dir is a file (so it cannot be made): one line."""
    (tmp_path / "plain").write_text("x\n")
    path = config(tmp_path, f"tcp:{free_port()}:interface=127.0.0.1", tmp_path / "plain" / "state")
    assert_one_line_error(start(tmp_path, path), str(path), "[server] state_dir", "is a file")


def test_missing_parents_are_made(tmp_path: Path) -> None:
    """A state_dir whose parents do not exist yet is made, parents and all (as before)."""
    from daemon import Daemon

    d = Daemon(tmp_path / "d", config=f"[server]\nstate_dir = {tmp_path / 'a' / 'b' / 'state'}\n", users={})
    try:
        d.start()
    finally:
        d.stop()
    assert (tmp_path / "a" / "b" / "state" / "boatwist.sqlite").exists()


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs (root); unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    directory = tmp_path / "ro"
    directory.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(directory)], check=True)
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)]).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=True)


@pytest.mark.parametrize("inside", ["", "state"])
def test_state_dir_on_a_read_only_file_system(tmp_path: Path, read_only: Path, inside: str) -> None:
    """state_dir on a read-only file system, existing or to be made: one line naming it and why."""
    path = config(tmp_path, f"tcp:{free_port()}:interface=127.0.0.1", read_only / inside)
    assert_one_line_error(start(tmp_path, path), str(path), "[server] state_dir", "Read-only file system")
