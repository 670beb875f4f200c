"""
Unit tests for boatwist.web.site: the hardened Site, driven byte by byte.

Every connection test builds the real protocol with C{site.buildProtocol},
connects it to a L{StringTransport} and feeds it bytes; time is a L{Clock}
injected as the site's reactor, so deadlines are exact and nothing sleeps.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Iterator

import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.guard import BasicCredentialFactory, HTTPAuthSessionWrapper
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from boatwist.clock import WallClockView
from boatwist.config import HttpSettings
from boatwist.web.channel import BoatwistChannel
from boatwist.web.errors import ErrorResource, error_page
from boatwist.web.headers import CONTENT_SECURITY_POLICY, cross_site_reason, host_allowed, is_api_path
from boatwist.web.redirect import HttpsRedirect
from boatwist.web.site import BoatwistSite

HEADER_TIMEOUT = 9.0
IDLE_TIMEOUT = 60.0
MAX_BODY = 100
PEER = IPv4Address("TCP", "192.0.2.7", 50123)
HOST = IPv4Address("TCP", "192.0.2.1", 8080)


# ------------------------------------------------------------------ fixtures


class Echo(Resource):
    """Answers GET with a fixed body and POST with what it received; counts renders."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.rendered: list[Any] = []
        self.content_types: list[type] = []

    def render_GET(self, request: Any) -> bytes:
        self.rendered.append(request)
        request.setHeader(b"Content-Type", b"text/plain")
        return b"hello"

    def render_POST(self, request: Any) -> bytes:
        self.rendered.append(request)
        self.content_types.append(type(request.content))
        request.setHeader(b"Content-Type", b"text/plain")
        return b"got %d" % (len(request.content.read()),)


class Slow(Resource):
    """Keeps each request open until the test finishes it (NOT_DONE_YET)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Any] = []

    def render_GET(self, request: Any) -> object:
        self.pending.append(request)
        return NOT_DONE_YET


class Broken(Resource):
    """Raises while rendering, to see the 500."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        raise RuntimeError("boom")


class UserPage(Resource):
    """The avatar: records the authenticated name where the access log looks."""

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def render(self, request: Any) -> bytes:
        request.boatwist_user = self.name
        return b"welcome"


@implementer(IRealm)
class Realm:
    def requestAvatar(self, avatarId: bytes, mind: object, *interfaces: object) -> tuple[object, object, Any]:
        return IResource, UserPage(avatarId.decode()), lambda: None


@dataclass
class World:
    site: BoatwistSite
    clock: Clock
    echo: Echo
    slow: Slow


def build_world(settings: HttpSettings | None = None, wall_clock_view: bool = False, **kwargs: Any) -> World:
    """
    A site with /, /api/echo, /slow, /broken, /api/broken, /secret (Basic auth, alice:wonderland).
    C{wall_clock_view}: the site's reactor is a L{WallClockView} of the clock, as the daemon's is.
    """
    clock = Clock()
    echo = Echo()
    slow = Slow()
    root = Resource()
    root.putChild(b"", echo)
    root.putChild(b"echo", echo)
    root.putChild(b"slow", slow)
    root.putChild(b"broken", Broken())
    api = Resource()
    api.putChild(b"echo", echo)
    api.putChild(b"broken", Broken())
    root.putChild(b"api", api)
    portal = Portal(Realm(), [InMemoryUsernamePasswordDatabaseDontUse(alice=b"wonderland")])
    root.putChild(b"secret", HTTPAuthSessionWrapper(portal, [BasicCredentialFactory("boatwist")]))
    settings = settings or HttpSettings(header_timeout=HEADER_TIMEOUT, max_body=MAX_BODY, idle_timeout=IDLE_TIMEOUT)
    site = BoatwistSite(root, settings, reactor=WallClockView(clock) if wall_clock_view else clock, **kwargs)
    return World(site, clock, echo, slow)


@pytest.fixture
def world() -> World:
    return build_world()


@pytest.fixture
def access_log() -> Iterator[list[dict[str, Any]]]:
    """Events of the boatwist.access namespace, seen by a real observer."""
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "boatwist.access":
            events.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


@implementer(ISSLTransport)
class TLSStringTransport(StringTransport):
    """A StringTransport that says it is TLS, as TLSMemoryBIOProtocol does."""

    def getPeerCertificate(self) -> None:
        return None

    def setTcpNoDelay(self, enabled: bool) -> None:
        """HTTPChannel sets it on every ITCPTransport (ISSLTransport is one)."""


def connect(world: World, transport: StringTransport | None = None) -> tuple[Any, StringTransport]:
    protocol = world.site.buildProtocol(PEER)
    transport = transport or StringTransport(hostAddress=HOST, peerAddress=PEER)
    protocol.makeConnection(transport)
    return protocol, transport


@dataclass
class Response:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[-1] if values else None


def parse(data: bytes) -> list[Response]:
    """Split what the server wrote into responses (Content-Length or chunked bodies)."""
    responses = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(": ")
            headers.setdefault(name.lower(), []).append(value)
        body = b""
        if "content-length" in headers:
            length = int(headers["content-length"][-1])
            body, data = data[:length], data[length:]
        elif headers.get("transfer-encoding") == ["chunked"]:
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line, 16)
                body += data[:size]
                data = data[size + 2 :]
                if size == 0:
                    break
        responses.append(Response(status, headers, body))
    return responses


def only(transport: StringTransport) -> Response:
    responses = parse(transport.value())
    assert len(responses) == 1, responses
    return responses[0]


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


# ------------------------------------------------------------ header deadline


def test_trickled_headers_closed_at_deadline_with_408(world: World) -> None:
    """
    Slowloris: a request dribbled one byte every header_timeout/3 seconds is
    cut off header_timeout after the connection started, with a 408, even
    though each byte arrives well within the idle timeout that stock
    twisted.web restarts on every byte.
    """
    protocol, transport = connect(world)
    request = b"GET / HTTP/1.1\r\nHost: dev\r\nX-Padding: " + b"a" * 50
    step = HEADER_TIMEOUT / 3
    sent = 0
    while world.clock.seconds() + step < HEADER_TIMEOUT:
        protocol.dataReceived(request[sent : sent + 1])
        sent += 1
        world.clock.advance(step)
        assert not transport.disconnecting, f"closed early at {world.clock.seconds()}"
    protocol.dataReceived(request[sent : sent + 1])
    world.clock.advance(HEADER_TIMEOUT - world.clock.seconds() - 0.001)
    assert not transport.disconnecting
    world.clock.advance(0.001)
    assert transport.disconnecting
    response = only(transport)
    assert response.status == 408
    assert response.header("Connection") == "close"
    assert world.echo.rendered == []


def test_bytes_after_408_are_ignored(world: World) -> None:
    """Once the deadline has refused a request, later bytes cannot complete it."""
    protocol, transport = connect(world)
    protocol.dataReceived(b"GET / HTTP/1.1\r\n")
    world.clock.advance(HEADER_TIMEOUT)
    written = transport.value()
    protocol.dataReceived(b"Host: dev\r\n\r\n")
    assert transport.value() == written
    assert world.echo.rendered == []


def test_refused_connection_that_does_not_read_is_aborted(world: World) -> None:
    """
    After a 408 the connection is closed cleanly, and aborted abortTimeout
    later if it is still there: a client that never reads cannot hold it open.
    """
    protocol, transport = connect(world)
    protocol.dataReceived(b"GET / HTTP/1.1\r\n")
    world.clock.advance(HEADER_TIMEOUT)
    assert transport.disconnecting and not transport.disconnected
    world.clock.advance(BoatwistChannel.abortTimeout)
    assert transport.disconnected


def test_silent_connection_closed_without_response(world: World) -> None:
    """A connection that never sends a byte is closed at the deadline, with nothing written."""
    _, transport = connect(world)
    world.clock.advance(HEADER_TIMEOUT - 0.01)
    assert not transport.disconnecting
    world.clock.advance(0.01)
    assert transport.disconnecting
    assert transport.value() == b""


def test_complete_request_within_deadline_is_served(world: World) -> None:
    """
    Headers completed just before the deadline are served, and the deadline
    is then disarmed: the connection stays open past it.
    """
    protocol, transport = connect(world)
    protocol.dataReceived(b"GET / HTTP/1.1\r\n")
    world.clock.advance(HEADER_TIMEOUT - 0.5)
    protocol.dataReceived(b"Host: dev\r\n\r\n")
    assert only(transport).status == 200
    world.clock.advance(HEADER_TIMEOUT * 2)
    assert not transport.disconnecting


def test_idle_keepalive_connection_closed_after_idle_timeout(world: World) -> None:
    """After a response, an idle keep-alive connection lives idle_timeout seconds, not header_timeout."""
    protocol, transport = connect(world)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: dev\r\n\r\n")
    world.clock.advance(IDLE_TIMEOUT - 0.1)
    assert not transport.disconnecting
    world.clock.advance(0.1)
    assert transport.disconnecting
    assert len(parse(transport.value())) == 1  # closed without another response


def test_idle_connections_share_one_timer(world: World) -> None:
    """
    A hundred idle keep-alive connections have their idle timeouts on one
    timer of the site's (not a DelayedCall each: issue 13, memory per idle
    connection); each is still closed at its own time, and once all are
    gone no timer is left behind.
    """
    connections = []
    for _ in range(100):
        protocol, transport = connect(world)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: dev\r\n\r\n")
        connections.append((protocol, transport))
        world.clock.advance(0.01)
    assert len(world.clock.getDelayedCalls()) == 1
    # The i-th was answered at i/100 s: its idle timeout ends IDLE_TIMEOUT later.
    world.clock.advance(IDLE_TIMEOUT - 0.005 - world.clock.seconds())
    assert not any(transport.disconnecting for _, transport in connections)
    world.clock.advance(0.5)  # the first half of them are past their idle timeout
    closed = [transport.disconnecting for _, transport in connections]
    assert closed == [True] * 50 + [False] * 50
    world.clock.advance(0.5)
    assert all(transport.disconnecting for _, transport in connections)
    for protocol, _ in connections:
        protocol.connectionLost(Failure(ConnectionDone()))
    assert world.clock.getDelayedCalls() == []


def test_deadline_rearms_for_next_request_on_keepalive(world: World) -> None:
    """
    On a keep-alive connection the next request's header clock starts at its
    first byte, and trickling that request gets it closed header_timeout later.
    """
    protocol, transport = connect(world)
    world.clock.advance(5)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: dev\r\n\r\n")
    assert only(transport).status == 200
    world.clock.advance(30)  # idle, longer than header_timeout: allowed
    assert not transport.disconnecting
    start = world.clock.seconds()
    second = b"GET / HTTP/1.1\r\nHost: dev\r\nX-Padding: " + b"a" * 50
    for byte in range(int(HEADER_TIMEOUT / 3)):
        protocol.dataReceived(second[byte : byte + 1])
        world.clock.advance(HEADER_TIMEOUT / 3 - 0.01)
    assert not transport.disconnecting
    world.clock.advance(start + HEADER_TIMEOUT - world.clock.seconds())
    assert transport.disconnecting
    assert [r.status for r in parse(transport.value())] == [200, 408]


@pytest.mark.parametrize(("sent", "timeout", "statuses"), [
    # A pipelined request whose bytes arrived while the slow answer was being made: its header clock.
    (b"GET /slow HTTP/1.1\r\nHost: dev\r\n\r\nGET / HTTP/1.1\r\n", HEADER_TIMEOUT, [200, 408]),
    # A pipelined request being answered, behind one answered at once: the idle timeout after it.
    (b"GET / HTTP/1.1\r\nHost: dev\r\n\r\nGET /slow HTTP/1.1\r\nHost: dev\r\n\r\n", IDLE_TIMEOUT, [200, 200]),
], ids=["header-deadline", "idle-timeout"])
def test_the_clock_after_a_slow_answer_starts_when_it_ends(world: World, sent: bytes, timeout: float,
                                                           statuses: list[int]) -> None:
    """
    While a slow answer is being made the connection is not idle, and bytes
    of a pipelined request that arrived meanwhile are not held against it:
    its header clock (or the idle timeout, when the pipelined request is the
    slow one) starts when that answer ends.
    """
    protocol, transport = connect(world)
    protocol.dataReceived(sent)
    world.clock.advance(timeout * 3)  # the slow response takes its time
    assert not transport.disconnecting
    (slow,) = world.slow.pending
    slow.write(b"done")
    slow.finish()
    world.clock.advance(timeout - 0.01)
    assert not transport.disconnecting
    world.clock.advance(0.01)
    assert transport.disconnecting
    assert [r.status for r in parse(transport.value())] == statuses


def test_partial_request_pipelined_behind_an_immediate_response_is_timed(world: World) -> None:
    """
    A partial request that arrived in the same packet as a request answered
    at once gets its header clock when that answer ends, though no further
    byte ever arrives to start it (else only the 60 s idle timer would act).
    """
    protocol, transport = connect(world)
    world.clock.advance(5)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: dev\r\n\r\nGET / HTTP/1.1\r\n")
    world.clock.advance(HEADER_TIMEOUT - 0.01)
    assert not transport.disconnecting
    world.clock.advance(0.01)
    assert transport.disconnecting
    assert [r.status for r in parse(transport.value())] == [200, 408]


# ------------------------------------------------------------------ body


def test_content_length_over_limit_gets_413_before_the_body(world: World) -> None:
    """
    A Content-Length above max_body is answered 413 as soon as the headers
    are complete, without waiting for (or reading) the body, and closed.
    """
    protocol, transport = connect(world)
    protocol.dataReceived(b"POST /echo HTTP/1.1\r\nHost: dev\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1))
    response = only(transport)
    assert response.status == 413
    assert response.header("Connection") == "close"
    assert transport.disconnecting
    protocol.dataReceived(b"x" * (MAX_BODY + 1))
    assert world.echo.rendered == []


def test_content_length_at_limit_is_accepted(world: World) -> None:
    """max_body itself is allowed: the limit is not off by one."""
    protocol, transport = connect(world)
    protocol.dataReceived(b"POST /echo HTTP/1.1\r\nHost: dev\r\nContent-Length: %d\r\n\r\n" % MAX_BODY)
    protocol.dataReceived(b"x" * MAX_BODY)
    response = only(transport)
    assert (response.status, response.body) == (200, b"got %d" % MAX_BODY)


def test_chunked_body_growing_past_limit_gets_413(world: World) -> None:
    """A chunked body, whose size nobody announced, is refused 413 once it passes max_body."""
    protocol, transport = connect(world)
    protocol.dataReceived(b"POST /echo HTTP/1.1\r\nHost: dev\r\nTransfer-Encoding: chunked\r\n\r\n")
    protocol.dataReceived(b"3c\r\n" + b"a" * 60 + b"\r\n")
    assert transport.value() == b""
    protocol.dataReceived(b"3c\r\n" + b"b" * 60 + b"\r\n0\r\n\r\n")
    assert only(transport).status == 413
    assert transport.disconnecting
    assert world.echo.rendered == []


def test_chunked_body_within_limit_is_served(world: World) -> None:
    """Chunked bodies under the limit are delivered whole."""
    protocol, transport = connect(world)
    protocol.dataReceived(b"POST /echo HTTP/1.1\r\nHost: dev\r\nTransfer-Encoding: chunked\r\n\r\n")
    protocol.dataReceived(b"32\r\n" + b"a" * 50 + b"\r\n32\r\n" + b"b" * 50 + b"\r\n0\r\n\r\n")
    assert only(transport).body == b"got 100"


def test_limit_is_per_request(world: World) -> None:
    """Two bodies on one connection that together pass max_body are both accepted."""
    protocol, transport = connect(world)
    post = b"POST /echo HTTP/1.1\r\nHost: dev\r\nContent-Length: 80\r\n\r\n" + b"z" * 80
    protocol.dataReceived(post + post)
    assert [r.body for r in parse(transport.value())] == [b"got 80", b"got 80"]


def test_large_body_stays_in_memory() -> None:
    """A body above Twisted's 100 kB temp-file threshold is kept in a BytesIO, not written to flash."""
    world = build_world(HttpSettings(header_timeout=HEADER_TIMEOUT, max_body=300_000))
    protocol, transport = connect(world)
    protocol.dataReceived(b"POST /echo HTTP/1.1\r\nHost: dev\r\nContent-Length: 200000\r\n\r\n")
    protocol.dataReceived(b"q" * 200_000)
    assert only(transport).body == b"got 200000"
    assert world.echo.content_types == [BytesIO]


def test_slow_body_gets_408(world: World) -> None:
    """
    A body trickled a byte at a time is cut off: it must arrive within
    header_timeout + length / min_body_rate of the end of the headers.
    """
    protocol, transport = connect(world)
    protocol.dataReceived(b"POST /echo HTTP/1.1\r\nHost: dev\r\nContent-Length: 50\r\n\r\n")
    for _ in range(5):
        protocol.dataReceived(b"x")
        world.clock.advance(HEADER_TIMEOUT / 3)
    assert transport.disconnecting
    assert only(transport).status == 408
    assert world.echo.rendered == []


# ------------------------------------------------------------------ 100-continue


def test_no_100_continue_is_sent(world: World) -> None:
    """
    Expect: 100-continue gets no interim 100: nothing at all is written until
    the client sends its body anyway, then the final response alone.
    """
    protocol, transport = connect(world)
    protocol.dataReceived(
        b"POST /echo HTTP/1.1\r\nHost: dev\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    assert transport.value() == b""
    world.clock.advance(1)  # curl's wait before sending regardless
    protocol.dataReceived(b"12345")
    assert b"100 Continue" not in transport.value()
    assert only(transport).body == b"got 5"


def test_unauthenticated_expect_request_gets_its_401(world: World) -> None:
    """
    An unauthenticated request with Expect: 100-continue is not invited to
    send its body, and still gets its final 401 once it does.
    """
    protocol, transport = connect(world)
    protocol.dataReceived(
        b"POST /secret HTTP/1.1\r\nHost: dev\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    assert transport.value() == b""
    protocol.dataReceived(b"12345")
    response = only(transport)
    assert response.status == 401
    assert response.header("WWW-Authenticate") is not None


def test_expect_client_that_never_sends_body_gets_417(world: World) -> None:
    """
    A client that waits forever for the 100 we never send does not hang: at
    the body deadline it gets a final 417 (retry without Expect) and is closed.
    """
    protocol, transport = connect(world)
    protocol.dataReceived(
        b"POST /secret HTTP/1.1\r\nHost: dev\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    world.clock.advance(HEADER_TIMEOUT + 1)
    assert transport.disconnecting
    assert only(transport).status == 417


# ------------------------------------------------------------------ headers


def _assert_security_headers(response: Response) -> None:
    assert response.header("Content-Security-Policy") == CONTENT_SECURITY_POLICY.decode()
    assert response.header("X-Content-Type-Options") == "nosniff"
    assert response.header("X-Frame-Options") == "DENY"
    assert response.header("Referrer-Policy") == "no-referrer"
    assert response.headers.get("server") == ["boatwist"]


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET / HTTP/1.1\r\nHost: dev\r\n\r\n", 200),
        (b"GET /nowhere HTTP/1.1\r\nHost: dev\r\n\r\n", 404),
        (b"GET /secret HTTP/1.1\r\nHost: dev\r\n\r\n", 401),
        (b"GET /broken HTTP/1.1\r\nHost: dev\r\n\r\n", 500),
        (b"POST /echo HTTP/1.1\r\nHost: dev\r\nContent-Length: 999\r\n\r\n", 413),
        (b"POST /echo HTTP/1.1\r\nHost: dev\r\nOrigin: http://evil\r\n\r\n", 403),
        (b"GET / HTTP/1.1\r\nHost: dev\r\nBad Header\r\n\r\n", 400),
    ],
)
def test_security_headers_on_every_response(world: World, request_bytes: bytes, status: int) -> None:
    """CSP, nosniff, frame and referrer policy and Server: boatwist on successes, errors and refusals alike."""
    protocol, transport = connect(world)
    protocol.dataReceived(request_bytes)
    response = only(transport)
    assert response.status == status
    _assert_security_headers(response)
    assert b"TwistedWeb" not in transport.value()


def test_408_has_security_headers(world: World) -> None:
    """The channel's own timeout answer carries the same headers."""
    protocol, transport = connect(world)
    protocol.dataReceived(b"GET / HTTP/1.1\r\n")
    world.clock.advance(HEADER_TIMEOUT)
    _assert_security_headers(only(transport))


@pytest.mark.parametrize(
    "path, cached",
    [(b"/", True), (b"/nowhere", True), (b"/api/echo", False), (b"/api/nowhere", False), (b"/%61pi/echo", False),
     (b"/secret", False)],
)
def test_cache_control_no_store_under_api_and_on_401(world: World, path: bytes, cached: bool) -> None:
    """
    Cache-Control: no-store on everything under /api (however the path is
    percent-encoded) and on 401s; other pages keep their own caching.
    """
    protocol, transport = connect(world)
    protocol.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: dev\r\n\r\n")
    response = only(transport)
    assert (response.header("Cache-Control") != "no-store") is cached


def test_hsts_only_over_tls(world: World) -> None:
    """Strict-Transport-Security is sent over TLS and never over plain HTTP."""
    protocol, plain = connect(world)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: dev\r\n\r\n")
    assert only(plain).header("Strict-Transport-Security") is None
    protocol, secure = connect(world, TLSStringTransport(hostAddress=HOST, peerAddress=PEER))
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: dev\r\n\r\n")
    assert only(secure).header("Strict-Transport-Security") == "max-age=31536000"


def test_500_under_api_is_json_without_traceback(world: World) -> None:
    """A resource that raises gives a JSON 500 under /api, and no traceback reaches the client."""
    protocol, transport = connect(world)
    protocol.dataReceived(b"GET /api/broken HTTP/1.1\r\nHost: dev\r\n\r\n")
    response = only(transport)
    assert response.status == 500
    assert json.loads(response.body) == {"error": "internal server error"}
    assert b"boom" not in transport.value()


def test_http2_is_not_offered(world: World) -> None:
    """ALPN offers only http/1.1: H2Connection would skip every limit of the HTTP/1.1 channel."""
    assert world.site.acceptableProtocols() == [b"http/1.1"]


def test_starting_the_site_schedules_no_timer(world: World) -> None:
    """Starting the factory does not add HTTPFactory's once-a-second log-date timer."""
    world.site.doStart()
    try:
        assert world.clock.getDelayedCalls() == []
    finally:
        world.site.doStop()


# ------------------------------------------------------------------ CSRF


def _post(world: World, *headers: bytes, path: bytes = b"/echo", secure: bool = False) -> tuple[Response, Any]:
    transport = TLSStringTransport(hostAddress=HOST, peerAddress=PEER) if secure else None
    protocol, transport = connect(world, transport)
    protocol.dataReceived(
        b"POST " + path + b" HTTP/1.1\r\nHost: dev:8080\r\nContent-Length: 2\r\n"
        + b"".join(h + b"\r\n" for h in headers) + b"\r\nok"
    )
    return only(transport), transport


@pytest.mark.parametrize(
    "header",
    [
        b"Origin: http://evil.example",
        b"Origin: http://dev:8081",
        b"Origin: https://dev:8080",
        b"Origin: null",
        b"Sec-Fetch-Site: cross-site",
        b"Sec-Fetch-Site: same-site",
    ],
)
def test_cross_site_post_refused_403_before_rendering(world: World, header: bytes) -> None:
    """A POST naming another origin (or null, or a cross/same-site fetch) gets 403 and the resource never runs."""
    response, transport = _post(world, header)
    assert response.status == 403
    assert transport.disconnecting
    assert world.echo.rendered == []


def test_cross_site_refused_before_authentication(world: World) -> None:
    """The CSRF check comes before authentication: a cross-site POST to a guarded page gets 403, not 401."""
    response, _ = _post(world, b"Origin: http://evil.example", path=b"/secret")
    assert response.status == 403


def test_cross_site_refused_before_the_body_arrives(world: World) -> None:
    """The 403 is decided from the headers: a body the client has not sent is not waited for."""
    protocol, transport = connect(world)
    protocol.dataReceived(
        b"DELETE /echo HTTP/1.1\r\nHost: dev\r\nOrigin: http://evil\r\nContent-Length: 50\r\n\r\n"
    )
    assert only(transport).status == 403


@pytest.mark.parametrize(
    "headers, secure",
    [
        ((b"Origin: http://dev:8080",), False),
        ((b"Origin: http://DEV:8080", b"Sec-Fetch-Site: same-origin"), False),
        ((b"Origin: https://dev:8080",), True),
        ((b"Sec-Fetch-Site: none",), False),
        ((), False),
    ],
)
def test_same_origin_and_headerless_posts_pass(world: World, headers: tuple[bytes, ...], secure: bool) -> None:
    """Same-origin browser POSTs and POSTs with neither Origin nor Sec-Fetch-Site (curl, scripts) are served."""
    response, _ = _post(world, *headers, secure=secure)
    assert (response.status, response.body) == (200, b"got 2")


def test_get_with_cross_origin_is_not_checked(world: World) -> None:
    """GET is safe by definition and is not refused for a foreign Origin."""
    protocol, transport = connect(world)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: dev\r\nOrigin: http://evil\r\nSec-Fetch-Site: cross-site\r\n\r\n")
    assert only(transport).status == 200


def test_cross_site_reason_default_ports_and_ipv6() -> None:
    """Origins compare by scheme, host and port with defaults filled in; IPv6 literals work."""
    def check(origin: bytes, host: bytes, secure: bool = False) -> str | None:
        return cross_site_reason(b"POST", Headers({b"Origin": [origin], b"Host": [host]}), secure)

    assert check(b"http://dev", b"dev:80") is None
    assert check(b"https://dev:443", b"dev", secure=True) is None
    assert check(b"http://[::1]:8080", b"[::1]:8080") is None
    assert check(b"http://[::1]:8080", b"[::2]:8080") is not None
    assert check(b"http://dev/path", b"dev") is not None
    assert cross_site_reason(b"POST", Headers({b"Origin": [b"http://dev"]}), False) is not None  # no Host


def test_secure_hosts_refuses_foreign_host_421() -> None:
    """With secure_hosts set, a request for another Host name (DNS rebinding) gets 421 before anything else."""
    world = build_world(secure_hosts=["dev.local", "192.0.2.1:8080"])
    protocol, transport = connect(world)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: rebind.evil.example\r\n\r\n")
    assert only(transport).status == 421
    assert world.echo.rendered == []
    for host in (b"dev.local:8080", b"192.0.2.1:8080"):
        protocol, transport = connect(world)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        assert only(transport).status == 200


def test_host_allowed_rules() -> None:
    """Host rules: plain name (any port), name:port, .domain suffix; malformed Host never matches."""
    rules = [("dev", None), ("box", 8080), (".lab.example", None)]
    assert host_allowed(b"dev:1234", rules)
    assert host_allowed(b"box:8080", rules)
    assert not host_allowed(b"box:8081", rules)
    assert host_allowed(b"a.lab.example", rules)
    assert not host_allowed(b"evil-lab.example", rules)
    assert not host_allowed(b"dev@evil", rules)
    assert host_allowed(None, rules)


# ------------------------------------------------------------------ access log


def test_access_log_line_has_user_and_no_secrets(world: World, access_log: list[dict[str, Any]]) -> None:
    """
    One combined-format line per request in namespace boatwist.access, with
    the authenticated user name; the Authorization value, the password and
    query values never appear.
    """
    protocol, transport = connect(world)
    auth = basic("alice", "wonderland")
    protocol.dataReceived(
        b"GET /secret?token=hunter2 HTTP/1.1\r\nHost: dev\r\nAuthorization: " + auth
        + b"\r\nUser-Agent: curl/8\r\n\r\n"
    )
    assert only(transport).status == 200
    (event,) = access_log
    line = event["log_line"]
    assert line.startswith('192.0.2.7 - alice [')
    assert '"GET /secret?token=* HTTP/1.1" 200 7 "-" "curl/8"' in line
    for secret in (auth.decode(), auth.split(b" ")[1].decode(), "wonderland", "hunter2"):
        assert secret not in line
        assert all(secret not in str(value) for value in event.values())


def test_access_log_does_not_trust_claimed_user(world: World, access_log: list[dict[str, Any]]) -> None:
    """A wrong password's user name is not logged: only a name recorded after authentication is."""
    protocol, transport = connect(world)
    protocol.dataReceived(b"GET /secret HTTP/1.1\r\nHost: dev\r\nAuthorization: " + basic("mallory", "x") + b"\r\n\r\n")
    assert only(transport).status == 401
    (event,) = access_log
    assert " - - [" in event["log_line"]
    assert "mallory" not in event["log_line"]


def test_access_log_records_refusals(world: World, access_log: list[dict[str, Any]]) -> None:
    """The channel's refusals (here a 413) are logged like any response."""
    protocol, _ = connect(world)
    protocol.dataReceived(b"POST /api/echo HTTP/1.1\r\nHost: dev\r\nContent-Length: 9999\r\n\r\n")
    (event,) = access_log
    assert '"POST /api/echo HTTP/1.1" 413' in event["log_line"]


def test_access_log_escapes_control_characters(world: World, access_log: list[dict[str, Any]]) -> None:
    """A quote or control byte in a header cannot forge fields or lines in the log."""
    protocol, _ = connect(world)
    protocol.dataReceived(b'GET / HTTP/1.1\r\nHost: dev\r\nUser-Agent: a" 200 "\x1b[31m\r\n\r\n')
    (event,) = access_log
    assert '"a\\" 200 \\"\\x1b[31m"' in event["log_line"]


# ------------------------------------------------------------------ redirect


def test_https_redirect_through_the_site() -> None:
    """Every request on the redirect listener gets 301 to the same path on https, with the security headers."""
    clock = Clock()
    site = BoatwistSite(HttpsRedirect(8443), HttpSettings(), reactor=clock)
    protocol = site.buildProtocol(PEER)
    transport = StringTransport(hostAddress=HOST, peerAddress=PEER)
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET /a/b?c=d HTTP/1.1\r\nHost: dev.local:8080\r\n\r\n")
    response = only(transport)
    assert response.status == 301
    assert response.header("Location") == "https://dev.local:8443/a/b?c=d"
    _assert_security_headers(response)


def test_https_redirect_default_port_and_bad_host() -> None:
    """Port 443 is left out; a missing or malformed Host falls back to the address the client reached."""
    redirect = HttpsRedirect()
    request = DummyRequest([b"x"])
    request.uri = b"/x"
    request.requestHeaders.setRawHeaders(b"Host", [b"dev"])
    assert redirect.location(request) == b"https://dev/x"
    request.requestHeaders.setRawHeaders(b"Host", [b"evil.example/\r\nSet-Cookie: a"])
    request.getHost = lambda: HOST  # type: ignore[method-assign]
    assert redirect.location(request) == b"https://192.0.2.1/x"
    request.requestHeaders.removeHeader(b"Host")
    assert redirect.location(request) == b"https://192.0.2.1/x"


# ------------------------------------------------------------------ error pages


def test_error_page_json_under_api() -> None:
    """Under /api the error body is JSON with the message and the extra fields."""
    request = DummyRequest([b"api", b"chat"])
    request.path = b"/api/chat"
    body = error_page(request, 503, "server full", retry_after=30)
    assert request.responseCode == 503
    assert request.responseHeaders.getRawHeaders(b"Content-Type") == [b"application/json"]
    assert json.loads(body) == {"error": "server full", "retry_after": 30}


def test_error_page_html_elsewhere_is_escaped_and_script_free() -> None:
    """Elsewhere the body is minimal HTML: the message is escaped and there is no script."""
    request = DummyRequest([b"page"])
    request.path = b"/page"
    body = error_page(request, 404, "<script>alert(1)</script>", where="<b>")
    assert request.responseCode == 404
    assert b"<script" not in body
    assert b"&lt;script&gt;" in body and b"&lt;b&gt;" in body


def test_error_resource_renders_error_page(world: World) -> None:
    """ErrorResource answers every method and child path with its error page."""
    world.site.resource.putChild(b"gone", ErrorResource(410, "gone for good"))
    protocol, transport = connect(world)
    protocol.dataReceived(b"GET /gone/deeper HTTP/1.1\r\nHost: dev\r\n\r\n")
    response = only(transport)
    assert response.status == 410
    assert b"gone for good" in response.body


def test_is_api_path() -> None:
    """/api and below, judged on the decoded first segment; /apix and /x/api are not."""
    assert is_api_path(b"/api") and is_api_path(b"/api/") and is_api_path(b"/%61pi/x")
    assert not is_api_path(b"/apix") and not is_api_path(b"/x/api") and not is_api_path(None)


def test_access_log_file_gets_one_line_per_request_and_nothing_through_the_logger(
    tmp_path: Any, access_log: list[dict[str, Any]]
) -> None:
    """With [http] access_log set, lines go to that file (buffered until flush), not to twisted.logger."""
    from boatwist.web.accesslog import AccessLogFile

    log_file = AccessLogFile(str(tmp_path / "access.log"))
    world = build_world(access_log=log_file)
    protocol, transport = connect(world)
    protocol.dataReceived(b"GET /echo?token=secret HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200" in transport.value().split(b"\r\n", 1)[0]
    log_file.flush()
    lines = (tmp_path / "access.log").read_text().splitlines()
    assert len(lines) == 1
    assert '"GET /echo?token=* HTTP/1.1" 200' in lines[0] and "secret" not in lines[0]
    assert access_log == []
    log_file.close()


def test_access_log_off_writes_nothing(access_log: list[dict[str, Any]]) -> None:
    """[http] access_log = off: the request is answered and no line goes anywhere."""
    world = build_world(log_access=False)
    protocol, transport = connect(world)
    protocol.dataReceived(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200" in transport.value().split(b"\r\n", 1)[0]
    assert access_log == []


def test_access_log_file_errors_are_reported_once(tmp_path: Any) -> None:
    """A full or broken log disk is logged once, and requests keep being served."""
    from boatwist.web.accesslog import AccessLogFile

    class Broken:
        def write(self, data: bytes) -> None:
            raise OSError(28, "No space left on device")

        def flush(self) -> None:
            raise OSError(28, "No space left on device")

    log_file = AccessLogFile(str(tmp_path / "access.log"))
    log_file._file = Broken()
    errors: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(errors.append)
    try:
        for _ in range(3):
            log_file.write("line")
            log_file.flush()
    finally:
        globalLogPublisher.removeObserver(errors.append)
    assert len([e for e in errors if "cannot be written" in e.get("log_format", "")]) == 1


# ------------------------------------------- tracked: who is logged in, idle deadlines


def tracked_world(wall_clock_view: bool = False) -> tuple[World, Any, Any]:
    """
    The site behind a real ConnectionTracker (as the daemon has it), with
    /admit: a resource that admits its connection to presence as alice.
    Returns the world, the tracker and the wrapping factory.
    """
    from boatwist.config import AdmissionSettings, KeepaliveSettings
    from boatwist.events import EventHub
    from boatwist.net.tracking import ConnectionTracker
    from boatwist.presence import Kind, Presence

    import ipaddress

    world = build_world(wall_clock_view=wall_clock_view)
    admission = AdmissionSettings(networks=(ipaddress.ip_network("192.0.2.0/24"),))
    presence = Presence(EventHub(), admission, world.clock.seconds, lambda: 1_700_000_000.0)
    tracker = ConnectionTracker(presence, admission, KeepaliveSettings(), world.clock, world.clock.seconds)

    class Admit(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            presence.admit(tracker.connection_for(request.channel), "alice", Kind.HTTP)
            return b"in"

    world.site.resource.putChild(b"admit", Admit())
    return world, tracker, tracker.wrap(world.site, Kind.HTTP)


def tracked_connect(factory: Any) -> tuple[Any, StringTransport]:
    protocol = factory.buildProtocol(PEER)
    transport = StringTransport(hostAddress=HOST, peerAddress=PEER)
    protocol.makeConnection(transport)
    return protocol, transport


def tracked_request(factory: Any, path: bytes) -> StringTransport:
    """A new tracked connection that has sent one GET of C{path}: its transport."""
    client, transport = tracked_connect(factory)
    client.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: dev\r\n\r\n")
    return transport


def test_unauthenticated_keepalive_connection_is_idle_only_briefly() -> None:
    """
    After a response to a request that did not authenticate, an idle
    keep-alive connection is closed after unauthenticated_idle (5 s), not
    idle_timeout; once a request on it has authenticated, idle_timeout applies.
    """
    world, tracker, factory = tracked_world()
    anonymous = tracked_request(factory, b"/")
    world.clock.advance(4.9)
    assert not anonymous.disconnecting
    world.clock.advance(0.1)
    assert anonymous.disconnecting
    operator = tracked_request(factory, b"/admit")
    assert parse(operator.value())[0].body == b"in"
    world.clock.advance(IDLE_TIMEOUT - 0.1)
    assert not operator.disconnecting
    world.clock.advance(0.1)
    assert operator.disconnecting


@pytest.mark.parametrize("wall_clock_view", [False, True], ids=["clock", "wall-clock-view"])
def test_a_shorter_idle_timeout_set_after_a_longer_one_ends_first(wall_clock_view: bool) -> None:
    """
    An operator's connection waits idle_timeout; an anonymous one opened
    after it is closed unauthenticated_idle (5 s) after its response, not
    when the operator's ends: the site's one timer moves earlier for it.
    The daemon's site reads the Date from a wall-clock view of the reactor;
    the deadlines still run on the reactor's own clock.
    """
    world, tracker, factory = tracked_world(wall_clock_view)
    operator = tracked_request(factory, b"/admit")
    world.clock.advance(1)
    anonymous = tracked_request(factory, b"/")
    world.clock.advance(4.9)
    assert not anonymous.disconnecting
    world.clock.advance(0.1)
    assert anonymous.disconnecting
    assert not operator.disconnecting
    world.clock.advance(IDLE_TIMEOUT - 6 - 0.1)
    assert not operator.disconnecting
    world.clock.advance(0.1)
    assert operator.disconnecting


def test_the_channel_tells_the_tracker_when_a_request_is_answered() -> None:
    """
    A request being answered makes its connection busy (last to give way);
    the finished response clears it and moves the connection to the back of
    the line; a connection admitted to presence leaves the unauthenticated.
    """
    world, tracker, factory = tracked_world()
    first, _ = tracked_connect(factory)
    second, _ = tracked_connect(factory)
    conn = tracker.connections()[0]
    first.dataReceived(b"GET /slow HTTP/1.1\r\nHost: dev\r\n\r\n")
    assert conn.busy
    assert list(tracker._unauthenticated) == [conn.id, conn.id + 1]
    world.clock.advance(1)
    world.slow.pending[0].finish()
    assert not conn.busy and conn.progress_at == world.clock.seconds()
    assert list(tracker._unauthenticated) == [conn.id + 1, conn.id]
    second.dataReceived(b"GET /admit HTTP/1.1\r\nHost: dev\r\n\r\n")
    assert tracker.unauthenticated() == 1
