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
