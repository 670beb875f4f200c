"""
boatwist.startup and the start of boatwist.tap: listening first, importing what is used.

A real socket is bound on the loopback (a free port the kernel picks); no
reactor runs.  The last tests start a separate interpreter, since what a
start imports can only be seen in a fresh ``sys.modules``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from boatwist.startup import StartupError, check_listen, listen_early

ROOT = Path(__file__).resolve().parents[2]
WHERE = "etc/embweb.ini: [server] http"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_listen_early_listens_before_any_reactor_runs() -> None:
    """The socket returned already listens: a client connects (and waits) before anything serves it."""
    port = free_port()
    sock = listen_early(f"tcp:{port}:interface=127.0.0.1", WHERE, 50)
    assert sock is not None
    try:
        assert not sock.getblocking(), "the reactor needs it non-blocking"
        assert sock.getsockname() == ("127.0.0.1", port)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        sock.close()


def test_listen_early_in_use_is_one_line_naming_the_key() -> None:
    """A port another program listens on fails as the check before did: one line, key and reason."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(StartupError) as caught:
            listen_early(f"tcp:{port}:interface=127.0.0.1", WHERE, 50)
    message = str(caught.value)
    assert message.startswith(f"{WHERE} = 'tcp:{port}:interface=127.0.0.1': cannot listen on 127.0.0.1:{port}")
    assert "address already in use" in message and "\n" not in message


def test_listen_early_leaves_other_endpoints_to_their_listener(tmp_path: Path) -> None:
    """A unix: endpoint is not listened on early (None): its listener service listens as before."""
    path = tmp_path / "s"
    assert listen_early(f"unix:{path}", WHERE, 50) is None
    assert not path.exists()


def test_listen_early_on_ipv6_loopback() -> None:
    """tcp6: on ::1 listens early too (bound as Twisted binds IPv6 addresses)."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            port = probe.getsockname()[1]
    except OSError:
        pytest.skip("no ::1 here")
    sock = listen_early(f"tcp6:{port}:interface=\\:\\:1", WHERE, 50)
    assert sock is not None
    try:
        assert sock.family == socket.AF_INET6 and sock.getsockname()[1] == port
    finally:
        sock.close()


def test_check_listen_releases_the_port() -> None:
    """The check alone (ssl: endpoints) binds and lets go: the port is free again afterwards."""
    port = free_port()
    check_listen(f"tcp:{port}:interface=127.0.0.1", WHERE)
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))


#: Run in a fresh interpreter: parse the shipped INI (ports and state made free), build
#: the service as twistd would, and report which modules were imported when.
_START = """
import json, sys
from boatwist.tap import Options, makeService
options = Options()
options.parseOptions(["--config", sys.argv[1]])
parsed = set(sys.modules)
makeService(options)
print(json.dumps({"parsed": sorted(parsed), "made": sorted(sys.modules)}))
"""


def _start_modules(tmp_path: Path) -> dict[str, set[str]]:
    ini = (ROOT / "etc" / "embweb.ini").read_text()
    ini = ini.replace("tcp:8080:", f"tcp:{free_port()}:").replace("tcp:8023:", f"tcp:{free_port()}:")
    (tmp_path / "embweb.ini").write_text(ini)
    done = subprocess.run([sys.executable, "-c", _START, str(tmp_path / "embweb.ini")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return {when: set(names) for when, names in found.items()}


def _imported(modules: set[str], *names: str) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_the_shipped_configuration_imports_only_what_it_uses(tmp_path: Path) -> None:
    """
    Starting with etc/embweb.ini (no Modbus control, no [mqtt], no https)
    imports neither pymodbus nor paho (nor our modules for them, nor our
    TLS module), nor prometheus_client (imported by the first /metrics),
    nor Twisted's test tools (trial and doctest come with them); and parsing
    the INI -- all that happens before the listeners listen -- imports
    neither SQLite nor the core.
    """
    modules = _start_modules(tmp_path)
    assert _imported(modules["made"], "pymodbus", "serial", "paho", "prometheus_client", "twisted.trial",
                     "twisted.internet.testing", "doctest", "gzip", "boatwist.controls.backends.modbus",
                     "boatwist.mqtt.bridge", "boatwist.tls") == []
    assert _imported(modules["parsed"], "sqlite3", "boatwist.core", "boatwist.store", "boatwist.web",
                     "boatwist.chat", "boatwist.auth") == []
    assert "boatwist.core" in modules["made"]
