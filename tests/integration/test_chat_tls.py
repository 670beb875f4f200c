"""
The chat port over TLS (``chat = ssl:...`` with the operator's own key and
certificate), driven by a real ``openssl s_client`` through pipes.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from client_tools import require_program
from daemon import Daemon, free_port
from test_chat_port import BANNER, CHINESE, LOGIN, PASSWORD, Terminal

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None and not os.environ.get("CI"),
                       reason="openssl is not installed"),
]


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed P-256 certificate for CN=localhost."""
    key, cert = directory / "chat-key.pem", directory / "chat-cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-subj", "/CN=localhost", "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )
    return key, cert


def tls_daemon(make_daemon: Any, tmp_path: Path) -> tuple[Daemon, Path]:
    key, cert = make_certificate(tmp_path)
    port = free_port()
    daemon = make_daemon(f"[server]\nchat = ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}\n")
    daemon.chat_port = port
    return daemon.start(), cert


def s_client(daemon: Daemon, cert: Path) -> list[str]:
    """openssl s_client that verifies the server against C{cert} (and the name localhost)."""
    return ["openssl", "s_client", "-quiet", "-connect", f"{daemon.host}:{daemon.chat_port}",
            "-servername", "localhost", "-verify_hostname", "localhost",
            "-CAfile", str(cert), "-verify_return_error"]


def test_tls_chat_login_and_exchange(make_daemon: Any, tmp_path: Path) -> None:
    """
    ``openssl s_client -quiet`` (verifying the configured certificate) gets
    the banner and prompts over TLS, logs in, and a UTF-8 line it sends is a
    message in GET /api/chat (via chat); a message POSTed from the web comes
    back to it as ``<bob> text``.  The TLS connection is tracked like a
    plain one: /who shows its round-trip time once the heartbeat measured it,
    and no "not tracked" warning is logged.
    """
    daemon, cert = tls_daemon(make_daemon, tmp_path)
    term = Terminal(s_client(daemon, cert))
    try:
        term.expect(BANNER, timeout=10)
        term.expect(LOGIN)
        term.send("alice\n")
        term.expect(PASSWORD)
        term.send("alice-pw\n")
        term.expect(re.compile(rb"welcome, alice\. online: alice\. /help lists the commands\.\r\n"))
        term.send(CHINESE + "\n")
        term.expect_line(f"<alice> {CHINESE}")
        stored = daemon.get_json("/api/chat", "bob")["messages"]
        assert [(m["user"], m["text"], m["via"]) for m in stored] == [("alice", CHINESE, "chat")]

        status, body = daemon.post_json("/api/chat", "bob", {"text": "over TLS too"})
        assert status == 201, (status, body)
        term.expect_line("<bob> over TLS too")

        # The RTT comes from TCP_INFO of the socket under the TLS layer, at a heartbeat tick.
        deadline = time.monotonic() + 5
        while True:
            users = daemon.get_json("/api/presence", "bob")["users"]
            chat = [c for u in users if u["user"] == "alice" for c in u["connections"] if c["kind"] == "chat"]
            if chat and chat[0].get("rtt_ms") is not None:
                break
            assert time.monotonic() < deadline, f"no RTT for the TLS chat connection within 5 s: {users}"
            time.sleep(0.1)
        term.send("/who\n")
        term.expect(re.compile(rb"  alice  online +chat +rtt [0-9.]+ ms\r\n"))
        assert "not tracked" not in daemon.log_text()
    finally:
        term.close()


def test_tls_chat_port_speaks_no_plaintext(make_daemon: Any, tmp_path: Path) -> None:
    """
    The TLS chat port never shows the banner or a prompt to a client that
    does not do TLS: a plain line gets no plaintext answer and the
    connection is closed.
    """
    daemon, _ = tls_daemon(make_daemon, tmp_path)
    with socket.create_connection((daemon.host, daemon.chat_port), timeout=5) as sock:
        sock.sendall(b"alice\r\n\r\n")
        received = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        else:
            raise AssertionError(f"the TLS chat port kept a plaintext client open; got {received!r}")
    assert b"boatwist" not in received and b"login" not in received, received


# ------------------------------------------- issue 8 item 8: the automatic certificate


def log_in_over_tls(daemon: Daemon, argv: list[str]) -> None:
    """Through C{argv} (s_client, ncat --ssl): the banner, the prompts, alice logged in."""
    term = Terminal(argv)
    try:
        term.expect(BANNER, timeout=15)
        term.expect(LOGIN)
        term.send("alice\n")
        term.expect(PASSWORD)
        term.send("alice-pw\n")
        term.expect(re.compile(rb"welcome, alice\."))
    finally:
        term.close()


def test_tls_chat_with_the_automatic_certificate_on_first_start(make_daemon: Any) -> None:
    """
    ``chat = tls:PORT`` (a plain endpoint boatwist puts TLS on, as it does
    for https) starts on a first start, when no certificate exists yet: the
    automatic one is made in state_dir/tls before the listeners, and
    ``openssl s_client`` verifying against it, and ``ncat --ssl``, log in.
    """
    require_program("ncat", "ncat")
    port = free_port()
    daemon = make_daemon(f"[server]\nchat = tls:{port}:interface=127.0.0.1\n")
    daemon.chat_port = port
    cert = daemon.state / "tls" / "cert.pem"
    assert not cert.exists()
    daemon.start()
    assert cert.exists()
    daemon.wait_for_log("SHA-256 fingerprint")
    log_in_over_tls(daemon, ["openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{port}", "-CAfile", str(cert),
                             "-verify_return_error"])
    log_in_over_tls(daemon, ["ncat", "--ssl", "127.0.0.1", str(port)])


def test_an_ssl_endpoint_naming_the_automatic_files_starts_on_first_start(make_daemon: Any) -> None:
    """
    ``chat = ssl:PORT:privateKey=STATE/tls/key.pem:certKey=STATE/tls/cert.pem``
    -- the files boatwist makes -- no longer fails on first start with
    "expected a Twisted endpoint string": they are made before anything
    listens, and s_client verifies the chat port against them.
    """
    port = free_port()
    daemon = make_daemon()
    tls = daemon.state / "tls"
    daemon.config_path.write_text(daemon.config_path.read_text().replace(
        f"chat = tcp:{daemon.chat_port}:interface=127.0.0.1",
        f"chat = ssl:{port}:interface=127.0.0.1:privateKey={tls / 'key.pem'}:certKey={tls / 'cert.pem'}"))
    daemon.chat_port = port
    daemon.start()
    log_in_over_tls(daemon, ["openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{port}",
                             "-CAfile", str(tls / "cert.pem"), "-verify_return_error"])


def test_a_missing_ssl_file_is_named(make_daemon: Any, tmp_path: Path) -> None:
    """Any other missing file of an ssl: endpoint stops the daemon with one line naming that file."""
    key, _cert = make_certificate(tmp_path)
    missing = tmp_path / "nowhere" / "cert.pem"
    daemon = make_daemon(f"[server]\nchat = ssl:{free_port()}:privateKey={key}:certKey={missing}\n")
    daemon.spawn()
    assert daemon.proc is not None and daemon.proc.wait(30) == 2
    daemon.wait_for_log(f"[server] chat = ")
    assert f"certKey file '{missing}' does not exist" in daemon.log_text(), daemon.log_text()
