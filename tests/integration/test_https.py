"""
HTTPS on the real daemon with the automatic certificate.

With ``https = tcp:PORT:interface=127.0.0.1`` and ``certificate = auto``
the first start makes ``state_dir/tls/cert.pem`` and ``key.pem`` (the key
private to the daemon's user), a client that trusts exactly that
certificate reaches the server as ``localhost`` and as ``127.0.0.1``, later
starts present the very same certificate (an operator who compared the
fingerprint once need not again), TLS older than 1.2 is refused, and with
``redirect_http = yes`` the plain port only redirects to https.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import socket
import ssl
import stat
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest

from daemon import Daemon

pytestmark = pytest.mark.integration


def tls_context(cert: Path) -> ssl.SSLContext:
    """A client context that trusts exactly the daemon's certificate, with hostname checking."""
    return ssl.create_default_context(cafile=str(cert))


def https_request(d: Daemon, path: str, context: ssl.SSLContext, host: str = "localhost",
                  headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, bytes, bytes]:
    """(status, headers, body, the server certificate in DER) over a verified connection to C{host}."""
    raw = socket.create_connection(("127.0.0.1", d.https_port), timeout=10)
    with context.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
        conn = http.client.HTTPSConnection(host, d.https_port, context=context, timeout=10)
        conn.sock = tls  # already connected and verified
        conn.request("GET", path, headers={"Host": f"{host}:{d.https_port}", **(headers or {})})
        r = conn.getresponse()
        return r.status, r.msg, r.read(), der


def basic(d: Daemon, user: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{d.users[user]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def colon_hex(der: bytes) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("https"), with_https=True, config="[server]\nredirect_http = yes\n")
    assert not (d.state / "tls").exists()
    try:
        d.start()
        yield d
    finally:
        d.stop()


def test_certificate_and_key_are_made_in_state_dir(tls_daemon: Daemon) -> None:
    """The first start writes state_dir/tls/cert.pem (a certificate) and key.pem (a private key, mode 0600)."""
    tls = tls_daemon.state / "tls"
    cert, key = tls / "cert.pem", tls / "key.pem"
    assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY-----" in key.read_text()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600, oct(key.stat().st_mode)
    assert not stat.S_IMODE(cert.stat().st_mode) & 0o022  # nobody else may replace it


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_verified_client_reaches_healthz_and_api(tls_daemon: Daemon, host: str) -> None:
    """
    A client verifying against cert.pem (and the host name, or the IP
    address) gets /healthz and, with credentials, /api/whoami, with HSTS.
    """
    context = tls_context(tls_daemon.state / "tls" / "cert.pem")
    status, headers, body, _ = https_request(tls_daemon, "/healthz", context, host)
    assert (status, body.startswith(b"ok ")) == (200, True)
    assert headers.get("Strict-Transport-Security", "").startswith("max-age=")
    status, headers, body, _ = https_request(tls_daemon, "/api/whoami", context, host, basic(tls_daemon, "alice"))
    assert (status, json.loads(body)["user"]) == (200, "alice")
    assert headers.get("Cache-Control") == "no-store"
    status, headers, _, _ = https_request(tls_daemon, "/api/whoami", context, host)
    assert status == 401 and headers.get_all("WWW-Authenticate")


def test_certificate_does_not_verify_for_other_names(tls_daemon: Daemon) -> None:
    """The same verifying client refuses the certificate for a name it was not made for (the check is real)."""
    context = tls_context(tls_daemon.state / "tls" / "cert.pem")
    with pytest.raises(ssl.SSLCertVerificationError):
        https_request(tls_daemon, "/healthz", context, "device.example")
    with pytest.raises(ssl.SSLCertVerificationError):
        https_request(tls_daemon, "/healthz", ssl.create_default_context())  # system CAs do not know it


def test_logged_fingerprint_is_the_presented_certificate(tls_daemon: Daemon) -> None:
    """The SHA-256 fingerprint in the log is the one of the certificate the server presents."""
    context = tls_context(tls_daemon.state / "tls" / "cert.pem")
    der = https_request(tls_daemon, "/healthz", context)[3]
    line = tls_daemon.wait_for_log("fingerprint")
    assert colon_hex(der) in line, line


def _handshake(d: Daemon, cert: Path, version: ssl.TLSVersion) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(cert))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let our side offer it at all
    with socket.create_connection(("127.0.0.1", d.https_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return str(tls.version())


def test_tls_1_1_is_refused_1_2_and_1_3_accepted(tls_daemon: Daemon) -> None:
    """
    A client offering only TLS 1.1 is refused by the server (a protocol
    version alert); the same client limited to TLS 1.2, or 1.3, connects.
    """
    cert = tls_daemon.state / "tls" / "cert.pem"
    assert _handshake(tls_daemon, cert, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert _handshake(tls_daemon, cert, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    with pytest.raises(ssl.SSLError) as refused:
        _handshake(tls_daemon, cert, ssl.TLSVersion.TLSv1_1)
    # The alert came from the server: our side did offer TLS 1.1.
    assert "ALERT_PROTOCOL_VERSION" in str(refused.value) or "alert protocol version" in str(refused.value), refused.value


def test_plain_port_redirects_to_https(tls_daemon: Daemon) -> None:
    """
    With redirect_http = yes every plain-HTTP request, credentials or not,
    gets 301 to the same path and query on the https port; nothing is
    served in the clear.
    """
    for path, headers in (("/", {}), ("/api/whoami?x=1", basic(tls_daemon, "alice")), ("/healthz", {})):
        conn = http.client.HTTPConnection("127.0.0.1", tls_daemon.http_port, timeout=10)
        try:
            conn.request("GET", path, headers={"Host": f"localhost:{tls_daemon.http_port}", **headers})
            r = conn.getresponse()
            body = r.read()
        finally:
            conn.close()
        assert r.status == 301, (path, r.status, body)
        assert r.getheader("Location") == f"https://localhost:{tls_daemon.https_port}{path}", r.getheader("Location")
        assert b'"user"' not in body and not body.startswith(b"ok ")
    # The redirect leads somewhere that works, for a client trusting the certificate.
    context = tls_context(tls_daemon.state / "tls" / "cert.pem")
    status, _, body, _ = https_request(tls_daemon, "/api/whoami?x=1", context, headers=basic(tls_daemon, "alice"))
    assert (status, json.loads(body)["user"]) == (200, "alice")


def test_restart_reuses_the_certificate(make_daemon: Any) -> None:
    """
    After a restart the server presents the same certificate (same SHA-256
    fingerprint) and the files are untouched; a client that trusted it
    before still verifies it.
    """
    d = make_daemon(with_https=True)
    d.start()
    cert, key = d.state / "tls" / "cert.pem", d.state / "tls" / "key.pem"
    context = tls_context(cert)
    before = https_request(d, "/healthz", context)[3]
    files = (cert.read_bytes(), key.read_bytes(), cert.stat().st_mtime_ns, key.stat().st_mtime_ns)
    d.stop()
    d.start()
    after = https_request(d, "/healthz", context)[3]
    assert colon_hex(after) == colon_hex(before)
    assert (cert.read_bytes(), key.read_bytes(), cert.stat().st_mtime_ns, key.stat().st_mtime_ns) == files
    fingerprints = re.findall(r"fingerprint ([0-9A-F:]{95})", d.log_text())
    assert fingerprints == [colon_hex(before)] * 2, fingerprints
