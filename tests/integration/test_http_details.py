"""
Issue 8 items 4 and 7 against the real daemon, with raw sockets (what a
misbehaving or unusual client sends, byte for byte) and curl: a scrape of
/metrics takes no seat; 405 with Allow instead of "501 Huh?"; the
redirect to https keeps a POST a POST and never points at a foreign host;
one Host header; over-long lines answered 414 / 431 and logged; an
absolute-form request target served; an anonymous idle keep-alive connection
closed after unauthenticated_idle while an operator's waits idle_timeout.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import subprocess
import time
from typing import Any, Callable

import pytest

from client_tools import require_program
from daemon import Daemon, SSEReader

pytestmark = pytest.mark.integration


def raw(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict[str, list[str]], bytes]:
    """Send C{data} on a fresh connection, read until the server closes or a whole response is in."""
    head_only = data.startswith(b"HEAD ")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        received = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
            head, sep, body = received.partition(b"\r\n\r\n")
            if sep:
                headers = _headers(head)
                length = int(headers.get("content-length", ["-1"])[0])
                if head_only or (length >= 0 and len(body) >= length):
                    break
    assert received, "the connection was closed without an answer"
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), _headers(head), body


def _headers(head: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        out.setdefault(name.strip().lower(), []).append(value.strip())
    return out


def auth(user: str = "alice", password: str = "alice-pw") -> bytes:
    return b"Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()) + b"\r\n"


BASIC_ALICE = {"Authorization": "Basic " + base64.b64encode(b"alice:alice-pw").decode()}


# ------------------------------------------------------------ item 4: /metrics


def test_a_scrape_takes_no_seat_in_a_full_house(make_daemon: Callable[..., Daemon]) -> None:
    """
    max_users = 1 and alice online (an event stream): bob's scrape of
    /metrics (curl --digest, as a Prometheus job would be set up with
    credentials) is served, shows one seat used, and bob is not online --
    neither in /api/presence nor in the event stream -- while bob asking
    for anything else gets the 503.  /healthz needs no login at all.
    """
    curl = require_program("curl", "curl")
    d = make_daemon(config="[admission]\nmax_users = 1\n").start()
    stream = SSEReader("127.0.0.1", d.http_port, "alice", "alice-pw")
    try:
        assert stream.status == 200
        d.wait_for_log("alice is online")
        for _ in range(3):
            done = subprocess.run([curl, "-s", "--digest", "-u", "bob:bob-pw", "-w", "\n%{http_code}",
                                   f"{d.url}/metrics"], capture_output=True, text=True, timeout=20)
            body, _, code = done.stdout.rpartition("\n")
            assert code == "200", done.stdout[-500:]
            assert 'boatwist_seats{kind="used"} 1.0' in body
        presence = d.get_json("/api/presence", "alice")
        assert [u["user"] for u in presence["users"]] == ["alice"], presence
        status, _, _ = d.get("/api/whoami", "bob")
        assert status == 503
        assert d.get("/healthz")[0] == 200
        assert "bob is online" not in d.log_text()
    finally:
        stream.close()


# ------------------------------------------------------------- item 7: 405


@pytest.mark.parametrize("path, allowed", [("/api/presence", "GET, HEAD"), ("/api/chat", "GET, HEAD, POST"),
                                           ("/", "GET, HEAD")])
@pytest.mark.parametrize("method", ["DELETE", "PUT", "OPTIONS", "PATCH"])
def test_a_method_a_resource_does_not_implement_is_405_with_allow(daemon: Daemon, path: str, allowed: str,
                                                                  method: str) -> None:
    """What Twisted answered "501 Huh? I don't know how to treat a DELETE request" is 405 with Allow (curl -X)."""
    curl = require_program("curl", "curl")
    done = subprocess.run([curl, "-s", "-i", "-X", method, "-u", "alice:alice-pw", f"{daemon.url}{path}"],
                          capture_output=True, timeout=20)
    head, _, body = done.stdout.decode("utf-8").partition("\r\n\r\n")
    assert head.split(" ", 2)[1] == "405", done.stdout[:500]
    headers = _headers(head.encode("latin-1"))
    assert headers["allow"] == [allowed]
    assert "Huh" not in body
    if path.startswith("/api"):
        assert json.loads(body)["allowed"] == allowed


def test_an_unknown_method_is_501_and_no_login_is_needed_to_be_refused(daemon: Daemon) -> None:
    """A method HTTP does not define is 501 (after login); without credentials any method is 401 first."""
    status, _, body = raw(daemon.http_port, b"FROB /api/presence HTTP/1.1\r\nHost: x\r\n" + auth() + b"\r\n")
    assert status == 501 and b"FROB" in body
    status, headers, _ = raw(daemon.http_port, b"DELETE /api/presence HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 401 and headers["www-authenticate"]


# ----------------------------------------------------- item 7: the redirect


def test_the_redirect_keeps_the_method_and_applies_hosts(make_daemon: Callable[..., Daemon]) -> None:
    """
    redirect_http: GET and HEAD get 301, a POST 308 (a 301 lets clients
    resend it as a GET without its body); the Location names the Host the
    client used, only if [http] hosts serves it -- a foreign Host gets 421,
    never a Location pointing at it.
    """
    d = make_daemon(with_https=True, config="[server]\nredirect_http = yes\n[http]\nhosts = 127.0.0.1, device.local\n")
    d.start()
    for method, code in (("GET", 301), ("HEAD", 301), ("POST", 308), ("DELETE", 308)):
        extra = b"Content-Length: 2\r\n\r\n{}" if method == "POST" else b"\r\n"
        status, headers, _ = raw(d.http_port, f"{method} /api/chat?x=1 HTTP/1.1\r\nHost: device.local\r\n".encode()
                                 + extra)
        assert status == code, method
        assert headers["location"] == [f"https://device.local:{d.https_port}/api/chat?x=1"], headers
    status, headers, _ = raw(d.http_port, b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    assert status == 421 and "location" not in headers


# ---------------------------------------------------- item 7: the framing


def test_two_host_headers_are_400(daemon: Daemon) -> None:
    """RFC 9112 section 3.2: a request with more than one Host is refused, not judged by its last one."""
    status, _, _ = raw(daemon.http_port, b"GET /api/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n"
                       + auth() + b"\r\n")
    assert status == 400
    daemon.wait_for_log("2 Host headers: 400")


def test_an_over_long_request_line_is_414_and_logged(daemon: Daemon) -> None:
    """A request line over 16 KiB is answered 414 and logged, not dropped in silence."""
    status, headers, _ = raw(daemon.http_port, b"GET /" + b"a" * 17000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 414 and headers["connection"] == ["close"]
    daemon.wait_for_log("the request line is longer than 16384 bytes: 414")


def test_an_over_long_header_line_is_431_and_logged(daemon: Daemon) -> None:
    """A header line over 16 KiB (or all of them together) is answered 431 and logged."""
    status, _, _ = raw(daemon.http_port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 17000 + b"\r\n\r\n")
    assert status == 431
    daemon.wait_for_log("a header line is longer than 16384 bytes: 431")
    many = b"".join(b"X-H%d: " % i + b"c" * 4000 + b"\r\n" for i in range(5))
    status, _, _ = raw(daemon.http_port, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert status == 431
    daemon.wait_for_log("all header lines together are longer than 16384 bytes: 431")


def test_an_absolute_form_target_is_served(daemon: Daemon) -> None:
    """
    RFC 9112 section 3.2.2: GET http://host:port/api/whoami is served as
    /api/whoami (it was a 404 after authentication), its authority standing
    for the Host; a Host header naming another host is a 400.  A Digest
    answer signs the target as sent.  curl sends it with --request-target
    (Basic: curl's Digest signs the URL's path instead of the target it
    sends, so no server can accept it).
    """
    from test_daemon_http import Response, digest_authorization, digest_challenge
    curl = require_program("curl", "curl")
    target = f"http://127.0.0.1:{daemon.http_port}/api/whoami"
    status, _, body = raw(daemon.http_port, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{daemon.http_port}\r\n"
                          .encode() + auth() + b"\r\n")
    assert status == 200 and json.loads(body)["user"] == "alice"
    status, _, _ = raw(daemon.http_port, f"GET {target} HTTP/1.1\r\n".encode() + auth() + b"\r\n")
    assert status == 200
    status, _, _ = raw(daemon.http_port, f"GET {target} HTTP/1.1\r\nHost: evil.example\r\n".encode() + auth()
                       + b"\r\n")
    assert status == 400
    import http.client

    first = raw(daemon.http_port, f"GET {target} HTTP/1.1\r\n\r\n".encode())
    assert first[0] == 401
    message = http.client.HTTPMessage()
    for value in first[1]["www-authenticate"]:
        message["WWW-Authenticate"] = value
    challenge = digest_challenge(Response(401, message, b""), "SHA-256")
    header = digest_authorization(challenge, "alice", "alice-pw", "GET", target)
    status, _, body = raw(daemon.http_port, f"GET {target} HTTP/1.1\r\nAuthorization: {header}\r\n\r\n".encode())
    assert status == 200 and json.loads(body)["user"] == "alice"
    done = subprocess.run([curl, "-s", "--basic", "-u", "alice:alice-pw", "--request-target", target,
                           "-w", "\n%{http_code}", daemon.url], capture_output=True, text=True, timeout=20)
    body_text, _, code = done.stdout.rpartition("\n")
    assert code == "200" and json.loads(body_text)["user"] == "alice", done.stdout


# ------------------------------------------------------------ idle keep-alive timeouts


def test_anonymous_keepalive_closed_briefly_while_an_operator_idles(make_daemon: Callable[..., Daemon]) -> None:
    """
    The daemon keeps every connection's idle timeout on one timer: an
    operator's connection, idle after a logged-in request, waits
    [http] idle_timeout; an anonymous one opened after it and answered 401
    is closed unauthenticated_idle after that answer, not when the
    operator's time is up.  (The operator: Python's http.client.)
    """
    d = make_daemon(config="[http]\nidle_timeout = 30\nunauthenticated_idle = 1\n").start()
    operator = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=10)
    try:
        operator.request("GET", "/api/whoami", headers=BASIC_ALICE)
        answer = operator.getresponse()
        assert answer.status == 200, answer.status
        answer.read()
        with socket.create_connection(("127.0.0.1", d.http_port), timeout=10) as anonymous:
            anonymous.sendall(b"GET /api/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            received = b""
            while b"\r\n\r\n" not in received:
                received += anonymous.recv(65536)
            answered = time.monotonic()
            assert received.startswith(b"HTTP/1.1 401"), received[:40]
            head, _, body = received.partition(b"\r\n\r\n")
            length = int(_headers(head)["content-length"][0])
            while len(body) < length:
                body += anonymous.recv(65536)
            # Now idle: the server closes it after unauthenticated_idle (1 s), far before 30 s.
            while anonymous.recv(65536):
                pass
            closed_after = time.monotonic() - answered
        assert 0.8 <= closed_after <= 3.0, f"the anonymous connection was closed after {closed_after:.2f} s"
        # The operator's connection is still open: a second request on it is answered.
        operator.request("GET", "/api/whoami", headers=BASIC_ALICE)
        again = operator.getresponse()
        assert again.status == 200
        again.read()
    finally:
        operator.close()
