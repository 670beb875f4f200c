"""
boatwist.web.resources (the resource tree), the 503 a refused user sees
(boatwist.web.errors.refusal_page) and the audit of presence (boatwist.core).

Trees are served by a real C{twisted.web} L{Site} behind the real
L{ConnectionTracker}, fed raw HTTP on a L{StringTransport}; the core is real
(tests/core_rig.py), on a L{Clock}.  The guard is the real
L{HTTPAuthSessionWrapper} with Basic.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.guard import BasicCredentialFactory
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.test.requesthelper import DummyRequest

from boatwist import __version__
from boatwist.auth.portal import OperatorRealm
from boatwist.core import audit_presence
from boatwist.events import Event, EventHub
from boatwist.presence import Kind, Refusal
from boatwist.reasons import RefusalReason
from boatwist.web import resources
from boatwist.web.errors import refusal_page
from boatwist.web.guard import OperatorGuard, guarded_root
from boatwist.web.resources import ApiRoot, OperatorRoot
from boatwist.web.static import StaticFiles, static_dir
from core_rig import Rig

PEER = IPv4Address("TCP", "10.0.0.7", 52000)


def http(factory: Any, path: bytes, headers: bytes = b"", method: bytes = b"GET") -> tuple[int, dict[bytes, bytes], bytes]:
    """One request on a fresh connection; status, headers (lower-case names) and body."""
    proto = factory.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    proto.makeConnection(transport)
    proto.dataReceived(method + b" " + path + b" HTTP/1.0\r\nHost: device\r\n" + headers + b"\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parsed: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        parsed[name.strip().lower()] = value.strip()
    return int(lines[0].split(b" ")[1]), parsed, body


def render_file(root: Any, path: bytes, channel: Any = None) -> tuple[int, dict[bytes, bytes], bytes]:
    """
    Traverse C{root} for C{path} with a L{DummyRequest} and render: the way
    to see a static file served, whose producer a DummyRequest drives at once
    (a real channel would need a reactor's cooperator).
    """
    request = DummyRequest(path[1:].split(b"/"))
    request.client = PEER
    request.channel = channel
    request.path = path
    resource = getChildForRequest(root, request)
    result = resource.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()
    assert request.finished
    headers = {name.lower(): values[-1] for name, values in request.responseHeaders.getAllRawHeaders()}
    return request.responseCode or 200, headers, b"".join(request.written)


class World(Rig):
    """A real core on a Clock, serving OperatorRoot trees through the real tracker."""

    def __init__(self, max_users: int = 10) -> None:
        super().__init__(max_users=max_users, http_grace=30)
        self.presence = self.core.presence
        self.tracker = self.core.tracker

    def factory(self, user: str = "alice") -> Any:
        return Site(OperatorRoot(self.core, user), reactor=self.clock)

    def channel(self) -> Any:
        """A tracked connection's protocol, standing in for a DummyRequest's channel."""
        proto, _, _ = self.connect()
        return proto

    def http(self, user: str, path: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        """One request through the real tracker from 10.0.0.7."""
        return http(self.core.tracker.wrap(self.factory(user), Kind.HTTP), path)


# --------------------------------------------------------------- PublicRoot


class Echo(Resource):
    """The avatar: shows which path the guard handed it."""

    isLeaf = True

    def __init__(self, user: str) -> None:
        super().__init__()
        self.user = user

    def render_GET(self, request: Any) -> bytes:
        return json.dumps({"user": self.user, "path": [p.decode() for p in request.prepath + request.postpath]}).encode()


@pytest.fixture
def public_site() -> Site:
    checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
    portal = Portal(OperatorRealm(Echo), [checker])
    return Site(guarded_root(portal, [BasicCredentialFactory(b"boatwist")]), reactor=Clock())


AUTH = b"Authorization: Basic " + base64.b64encode(b"alice:secret") + b"\r\n"


def test_healthz_needs_no_authentication(public_site: Site) -> None:
    """/healthz answers 'ok' and the version without credentials, never cached."""
    status, headers, body = http(public_site, b"/healthz")
    assert status == 200
    assert body == f"ok {__version__}\n".encode()
    assert headers[b"content-type"].startswith(b"text/plain")
    assert headers[b"cache-control"] == b"no-store"


@pytest.mark.parametrize("path", [b"/", b"/api/presence", b"/healthz/", b"/healthz/x", b"/healthzz", b"/metrics"])
def test_everything_else_needs_authentication(public_site: Site, path: bytes) -> None:
    """Anything but exactly /healthz goes through the guard: 401 with a challenge."""
    status, headers, _ = http(public_site, path)
    assert status == 401
    assert headers[b"www-authenticate"].startswith(b"basic realm=")


def test_guard_hands_the_whole_path_to_the_users_tree(public_site: Site) -> None:
    """With credentials, the user's tree sees the full path, first segment included."""
    status, _, body = http(public_site, b"/api/whoami", AUTH)
    assert status == 200
    assert json.loads(body) == {"user": "alice", "path": ["api", "whoami"]}


# ------------------------------------------------------------- OperatorRoot


def test_ui_is_served_and_counts_as_a_plain_request() -> None:
    """/ serves the UI's index.html; the user is online through plain HTTP from the client address."""
    w = World()
    status, headers, body = render_file(OperatorRoot(w.core, "alice"), b"/", w.channel())
    assert status == 200
    assert headers[b"content-type"].startswith(b"text/html")
    assert body == (static_dir() / "index.html").read_bytes()
    assert w.presence.snapshot()["users"] == [
        {"user": "alice", "state": "online", "since": 1_700_000_000.0,
         "connections": [{"kind": "http", "peer": "10.0.0.7"}]}]


def test_static_asset_is_served() -> None:
    """A file of the UI is served with its type."""
    w = World()
    status, headers, body = render_file(OperatorRoot(w.core, "alice"), b"/style.css", w.channel())
    assert status == 200
    assert headers[b"content-type"].startswith(b"text/css")
    assert body == (static_dir() / "style.css").read_bytes()


def test_api_children() -> None:
    """/api/whoami, /api/presence and /api/chat are there; an unknown one is 404."""
    w = World()
    factory = w.core.tracker.wrap(w.factory(), Kind.HTTP)
    status, headers, body = http(factory, b"/api/whoami")
    whoami = json.loads(body)
    assert status == 200 and whoami["user"] == "alice" and whoami["role"] == "operator"
    assert headers[b"content-type"] == b"application/json"
    status, _, body = http(factory, b"/api/presence")
    assert status == 200 and json.loads(body)["seats"] == {"used": 1, "limit": 10}
    status, _, body = http(factory, b"/api/chat")
    assert (status, json.loads(body)) == (200, {"messages": []})
    assert http(factory, b"/api/nothing")[0] == 404
    assert http(factory, b"/api/")[0] == 404


def test_tree_names_the_user_on_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The request carries boatwist_user, for the access log."""
    seen: list[str] = []

    class Spy(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            seen.append(request.boatwist_user)
            return b"{}"

    monkeypatch.setitem(resources.API, b"spy", lambda user, core: Spy())
    w = World()
    w.http("alice", b"/api/spy")
    assert seen == ["alice"]


def test_metrics_is_served() -> None:
    """/metrics is the Prometheus text of the core's metrics (bob online: one seat used; the scrape takes none)."""
    w = World()
    assert w.http("bob", b"/api/whoami")[0] == 200
    status, headers, body = w.http("alice", b"/metrics")
    assert status == 200
    assert b'boatwist_seats{kind="used"} 1.0' in body
    assert headers[b"content-type"].startswith(b"text/plain")


def test_a_scrape_takes_no_seat_even_in_a_full_house() -> None:
    """
    Issue 8 item 4: any user reading /metrics is authenticated but not an
    operator -- with every seat taken by bob, alice's scrape is served (no
    503) and alice is not online; bob's seat count is what it says.
    """
    w = full_world()
    status, _headers, body = w.http("alice", b"/metrics")
    assert status == 200, body
    assert b'boatwist_seats{kind="used"} 1.0' in body
    assert [u.name for u in w.presence.users()] == ["bob"]
    assert w.http("alice", b"/api/whoami")[0] == 503  # the same user asking for anything else is refused


def full_world() -> World:
    w = World(max_users=1)
    _, _, conn = w.connect(host="10.0.0.9")
    w.presence.admit(conn, "bob", Kind.HTTP)
    return w


def test_refused_user_gets_503_html_for_pages() -> None:
    """On a full server a new user's page request is a 503 page saying how many seats, with Retry-After."""
    w = full_world()
    status, headers, body = w.http("alice", b"/")
    assert status == 503
    assert headers[b"content-type"] == b"text/html; charset=utf-8"
    assert headers[b"retry-after"] == b"5"
    assert b"<strong>1 of 1</strong> seats are taken" in body
    assert not w.presence.is_online("alice")


@pytest.mark.parametrize("path", [b"/api/presence", b"/api/whoami", b"/api/chat", b"/api"])
def test_refused_user_gets_503_json_for_the_api(path: bytes) -> None:
    """On a full server the API answers 503 JSON (reason, used, limit, retry_after) with Retry-After."""
    w = full_world()
    status, headers, body = w.http("alice", path)
    assert status == 503
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"retry-after"] == b"5"
    assert json.loads(body) == {"error": "server full: 1 of 1 operators online", "reason": "full",
                                "used": 1, "limit": 1, "retry_after": 5}


def test_user_already_online_is_served_when_full() -> None:
    """A user who holds a seat is not refused when the server is full."""
    w = full_world()
    assert w.http("bob", b"/api/whoami")[0] == 200


def test_event_stream_path_does_not_touch_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """/api/events is admitted by binding the connection (WEB), not as a plain request (HTTP)."""
    w = World()
    admitted: list[Kind] = []
    real_admit = w.presence.admit
    monkeypatch.setattr(w.presence, "admit", lambda conn, user, kind: admitted.append(kind) or real_admit(conn, user, kind))
    proto = w.core.tracker.wrap(w.factory(), Kind.HTTP).buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    proto.makeConnection(transport)
    proto.dataReceived(b"GET /api/events HTTP/1.1\r\nHost: device\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200")
    assert admitted == [Kind.WEB]
    [conn] = w.tracker.connections()
    assert conn.kind == "web" and conn.user == "alice"
    w.http("alice", b"/api/whoami")
    assert admitted == [Kind.WEB, Kind.HTTP]
    assert w.presence.snapshot()["users"][0]["connections"][0]["kind"] == "web"


# -------------------------------------------------------------- StaticFiles


@pytest.fixture
def files(tmp_path: Path) -> Site:
    (tmp_path / "ok.txt").write_text("fine")
    (tmp_path / ".secret").write_text("key")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "file.txt").write_text("nested")
    (tmp_path / "sub" / ".env").write_text("PASSWORD=x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]")
    return Site(StaticFiles(str(tmp_path)), reactor=Clock())


def test_static_files_are_served(files: Site) -> None:
    """Ordinary files, nested ones included, are served."""
    assert render_file(files.resource, b"/ok.txt")[::2] == (200, b"fine")
    assert render_file(files.resource, b"/sub/file.txt")[::2] == (200, b"nested")


def test_static_files_are_read_at_the_first_request(tmp_path: Path) -> None:
    """
    Nothing is read (or compressed) when the resource is made, at start:
    the files are read once, by the first request, and kept from then on.
    """
    static = StaticFiles(str(tmp_path))
    (tmp_path / "late.txt").write_text("written after start")
    assert render_file(static, b"/late.txt")[::2] == (200, b"written after start")
    (tmp_path / "later.txt").write_text("written after the first request")
    assert render_file(static, b"/later.txt")[0] == 404


@pytest.mark.parametrize("path", [b"/.secret", b"/sub/.env", b"/.git/config", b"/%2esecret", b"/sub/%2Eenv"])
def test_dotfiles_are_not_served(files: Site, path: bytes) -> None:
    """A name starting with a dot is never served, at any depth, however it is spelt."""
    status, _, body = http(files, path)
    assert status == 404
    assert b"key" not in body and b"PASSWORD" not in body and b"core" not in body


@pytest.mark.parametrize("path", [b"/sub/", b"/"])
def test_directories_are_not_listed(files: Site, path: bytes) -> None:
    """A directory without index.html is 404, not a listing of its files."""
    status, _, body = http(files, path)
    assert status == 404
    assert b"file.txt" not in body and b"ok.txt" not in body


# ------------------------------------------------------------- App.refuse


def refuse(path: bytes, refusal: Refusal) -> tuple[DummyRequest, bytes]:
    request = DummyRequest([])
    request.path = path
    return request, refusal_page(request, refusal)


FULL = Refusal(RefusalReason.FULL, 10, 10, 30)


@pytest.mark.parametrize("path", [b"/api/presence", b"/api", b"/api/", b"/%61pi/chat", b"/api/events?x=1"])
def test_refuse_api_paths_answer_json(path: bytes) -> None:
    """Under /api (as traversal sees it, percent-encoding included) the 503 is JSON."""
    request, body = refuse(path, FULL)
    assert request.responseCode == 503
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]
    assert request.responseHeaders.getRawHeaders(b"retry-after") == [b"30"]
    assert json.loads(body) == {"error": "server full: 10 of 10 operators online", "reason": "full",
                                "used": 10, "limit": 10, "retry_after": 30}


@pytest.mark.parametrize("path", [b"/", b"/index.html", b"/apix", b"/static/api/x"])
def test_refuse_pages_answer_html(path: bytes) -> None:
    """
    Elsewhere the 503 is an HTML page saying how many seats are taken, counting
    Retry-After down and trying again by itself (the public script; a noscript
    refresh without it); its style and script are public files, no inline ones.
    """
    request, body = refuse(path, FULL)
    assert request.responseCode == 503
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
    assert request.responseHeaders.getRawHeaders(b"retry-after") == [b"30"]
    assert b"<strong>10 of 10</strong> seats are taken" in body
    assert b'data-countdown="30" data-reload>30\xc2\xa0s</span>' in body
    assert b'<noscript><meta http-equiv="refresh" content="30"></noscript>' in body
    assert b'<script type="module" src="/public/pages.js">' in body and b'href="/public/pages.css"' in body
    assert b"<style" not in body and b"style=" not in body and b"<script>" not in body


def test_refuse_too_many_connections() -> None:
    """A per-user connection limit is explained as such."""
    _, body = refuse(b"/api/events", Refusal(RefusalReason.TOO_MANY_CONNECTIONS, 8, 8, 5))
    assert json.loads(body)["error"] == "too many connections: 8 of 8 allowed per operator"


# ---------------------------------------------------------- audit_presence


class AuditStore:
    def __init__(self, failing: bool = False) -> None:
        self.entries: list[tuple[str, str | None, str | None, str]] = []
        self.failing = failing
        self.returned: list[Any] = []

    def audit(self, kind: str, user: str | None, address: str | None, detail: str = "") -> Any:
        self.entries.append((kind, user, address, detail))
        d = fail(RuntimeError("disk gone")) if self.failing else succeed(None)
        self.returned.append(d)
        return d


def test_audit_presence_writes_logouts_with_reason_and_refusals() -> None:
    """Offline events are audited as logouts with their reason; refusals with used/limit; nothing else."""
    store = AuditStore()
    hub = EventHub()
    hub.subscribe(audit_presence(store))
    hub.publish("presence", {"user": "alice", "state": "online", "reason": "login", "via": "web"})
    hub.publish("presence", {"user": "alice", "state": "unstable", "reason": "probes", "via": "web"})
    hub.publish("presence", {"user": "alice", "state": "offline", "reason": "keepalive-timeout",
                             "detected_after": 3.1, "via": "web"})
    hub.publish("presence", {"user": "carol", "state": "offline", "reason": "refused", "refusal": "full",
                             "used": 10, "limit": 10, "via": "http"})
    hub.publish("chat", {"user": "bob", "text": "hi", "via": "chat"})
    assert store.entries == [
        ("logout", "alice", None, "keepalive-timeout via web"),
        ("refused", "carol", None, "full 10/10 via http"),
    ]


def test_audit_presence_refusal_of_an_online_user_is_a_refusal() -> None:
    """A refusal of a user who is online (too many connections) is audited as a refusal, not a logout."""
    store = AuditStore()
    audit_presence(store)(Event(1, "presence", {"user": "bob", "state": "online", "reason": "refused",
                                                 "refusal": "too-many-connections", "used": 8, "limit": 8,
                                                 "via": "chat"}))
    assert store.entries == [("refused", "bob", None, "too-many-connections 8/8 via chat")]


def test_audit_presence_survives_a_failing_store() -> None:
    """A store that cannot write does not make the subscriber raise (the failure is consumed)."""
    store = AuditStore(failing=True)
    audit_presence(store)(Event(1, "presence", {"user": "a", "state": "offline", "reason": "closed", "via": "web"}))
    assert store.entries == [("logout", "a", None, "closed via web")]
    outcome: list[Any] = []
    store.returned[0].addBoth(outcome.append)
    assert outcome == [None]  # consumed: no "Unhandled error in Deferred" later



def test_guard_wrapper_calls_logout_once_per_rendered_request() -> None:
    """The shared wrapper keeps the stock guard's contract: logout when the request finishes."""
    from twisted.web.resource import Resource
    from twisted.web.test.requesthelper import DummyRequest

    class Leaf(Resource):
        isLeaf = True

        def render_GET(self, request):
            return b"hi"

    root = Resource()
    root.putChild(b"x", Leaf())
    logouts = []
    wrapped = OperatorGuard(None, [])._loginSucceeded((None, root, lambda: logouts.append(1)))
    request = DummyRequest([b"x"])
    child = wrapped.getChildWithDefault(b"x", request)
    assert child.isLeaf
    assert child.render(request) == b"hi"
    assert logouts == []
    request.finish()
    assert logouts == [1]


def test_unknown_api_path_is_a_json_404() -> None:
    """/api/nope answers JSON like the rest of the API, not Twisted's HTML page."""
    import json

    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest([b"api", b"nope"])
    request.path = b"/api/nope"
    body = ApiRoot(World().core, "alice").getChild(b"nope", request).render(request)
    assert request.responseCode == 404
    assert json.loads(body)["error"]


def test_static_files_revalidate_with_an_etag(files: Site) -> None:
    """A file carries a strong ETag and no-cache; If-None-Match with it gets 304 and no body."""
    from twisted.web.test.requesthelper import DummyRequest

    resource = files.resource
    first = DummyRequest([b"ok.txt"])
    assert resource.render(first) == b"fine"
    etag = first.responseHeaders.getRawHeaders(b"etag")[0]
    assert first.responseHeaders.getRawHeaders(b"cache-control") == [b"no-cache"]
    again = DummyRequest([b"ok.txt"])
    again.requestHeaders.setRawHeaders(b"if-none-match", [etag])
    assert resource.render(again) == b""
    assert again.responseCode == 304
