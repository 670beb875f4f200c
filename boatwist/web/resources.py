"""
The resource tree.

    /healthz          no authentication: "ok" and the version
    everything else   behind HTTPAuthSessionWrapper (Digest and Basic):
      /                 the UI (static files shipped in the package)
      /api/whoami       the authenticated user
      /api/presence     seats and who is online (JSON)
      /api/events       Server-Sent Events (see stream.py)
      /api/chat         chat history (GET) and new messages (POST)
      /metrics          Prometheus text format

The guard hands each request an L{OperatorRoot} made for the authenticated
user; it is there, with the request in hand, that admission is decided:
presence knows whether the user already holds a seat.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

from twisted.web.guard import HTTPAuthSessionWrapper
from twisted.web.resource import IResource, Resource
from zope.interface import implementer

from boatwist import __version__
from boatwist.web.site import ErrorResource
from boatwist.web.stream import EventsResource


def json_body(request: Any, value: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value, ensure_ascii=False).encode("utf-8") + b"\n"


def static_dir() -> Path:
    return Path(str(importlib_resources.files("boatwist.web") / "static"))


class StaticFiles(Resource):
    """
    The UI's files, read once into memory and served from there.

    They are a handful of small, immutable files shipped in the package:
    keeping them in memory spares every request an open, a stat, reads and
    Twisted's file producer, which cost more than the request itself.  A
    strong ETag lets the browser revalidate cheaply (``Cache-Control:
    no-cache``), so after a firmware upgrade it never runs an old app.js.
    Names starting with a dot are never loaded, and there are no directory
    listings: a directory serves its index.html or is a 404.
    """

    isLeaf = True
    #: Largest file kept; the UI's files are a few kB.
    MAX_FILE = 1 << 20
    TYPES = {
        ".html": b"text/html; charset=utf-8",
        ".js": b"text/javascript; charset=utf-8",
        ".css": b"text/css; charset=utf-8",
        ".svg": b"image/svg+xml",
        ".png": b"image/png",
        ".ico": b"image/x-icon",
        ".json": b"application/json",
        ".txt": b"text/plain; charset=utf-8",
    }

    def __init__(self, directory: str) -> None:
        super().__init__()
        self._files: dict[tuple[bytes, ...], tuple[bytes, bytes, bytes]] = {}
        root = Path(directory)
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            if path.stat().st_size > self.MAX_FILE:
                continue
            body = path.read_bytes()
            kind = self.TYPES.get(path.suffix.lower(), b"application/octet-stream")
            etag = b'"' + hashlib.sha256(body).hexdigest()[:20].encode() + b'"'
            key = tuple(part.encode("utf-8") for part in relative.parts)
            self._files[key] = (body, kind, etag)
            if relative.name == "index.html":
                self._files[key[:-1] + (b"",)] = (body, kind, etag)

    def render_GET(self, request: Any) -> bytes:
        key = tuple(request.postpath) or (b"",)
        found = self._files.get(key)
        if found is None:
            return ErrorResource(404, "no such page").render(request)
        body, kind, etag = found
        request.setHeader(b"content-type", kind)
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"etag", etag)
        match = request.getHeader(b"if-none-match")
        if match is not None and etag in [tag.strip() for tag in match.split(b",")]:
            request.setResponseCode(304)
            return b""
        return body


class Healthz(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return f"ok {__version__}\n".encode()


class PublicRoot(Resource):
    """Sends /healthz past authentication and everything else through the guard."""

    def __init__(self, guard: HTTPAuthSessionWrapper) -> None:
        super().__init__()
        self.guard = guard
        self.healthz = Healthz()

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        if path == b"healthz" and not request.postpath:
            return self.healthz
        # Hand the whole path to the guard, which resolves it for the user.
        request.postpath.insert(0, request.prepath.pop())
        return self.guard


class WhoAmI(Resource):
    isLeaf = True

    def __init__(self, user: str) -> None:
        super().__init__()
        self.user = user

    def render_GET(self, request: Any) -> bytes:
        return json_body(request, {"user": self.user})


class PresenceResource(Resource):
    isLeaf = True

    def __init__(self, app: Any) -> None:
        super().__init__()
        self.app = app

    def render_GET(self, request: Any) -> bytes:
        return json_body(request, self.app.presence.snapshot())


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, app: Any) -> None:
        super().__init__()
        self.app = app

    def render_GET(self, request: Any) -> bytes:
        from prometheus_client import CONTENT_TYPE_LATEST

        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return self.app.metrics.render()


class OperatorRoot(Resource):
    """The tree one authenticated user sees; decides admission per request."""

    def __init__(self, app: Any, user: str, api_children: dict[bytes, Any] | None = None) -> None:
        super().__init__()
        self.app = app
        self.user = user
        self.api_children = api_children or {}

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        request.boatwist_user = self.user
        app = self.app
        is_stream = path == b"api" and request.postpath[:1] == [b"events"]
        if not is_stream:
            conn = app.tracker.connection_for(request.channel) if app.tracker is not None else None
            peer = getattr(request.getClientAddress(), "host", "unknown")
            refusal = (app.tracker.touch_http(conn, self.user, peer) if app.tracker is not None
                       else app.presence.touch_http(self.user, peer))
            if refusal is not None:
                return _Refused(app, refusal)
        if path == b"api":
            return ApiRoot(app, self.user, self.api_children)
        if path == b"metrics" and not request.postpath and app.metrics is not None:
            return MetricsResource(app)
        request.postpath.insert(0, request.prepath.pop())
        if app.static is None:
            app.static = StaticFiles(str(static_dir()))
        return app.static


class _Refused(Resource):
    isLeaf = True

    def __init__(self, app: Any, refusal: Any) -> None:
        super().__init__()
        self.app = app
        self.refusal = refusal

    def render(self, request: Any) -> bytes:
        return self.app.refuse(request, self.refusal)


class ApiRoot(Resource):
    def __init__(self, app: Any, user: str, extra: dict[bytes, Any]) -> None:
        super().__init__()
        self.app = app
        self.user = user
        self.extra = extra

    def getChild(self, path: bytes, request: Any) -> Any:
        if path == b"whoami":
            return WhoAmI(self.user)
        if path == b"presence":
            return PresenceResource(self.app)
        if path == b"events":
            return EventsResource(self.app, self.user)
        factory = self.extra.get(path)
        if factory is not None:
            return factory(self.app, self.user)
        return ErrorResource(404, "no such API")


@implementer(IResource)
class _LoggedIn:
    """
    The avatar of one request, calling the realm's C{logout} when that
    request finishes: what the stock guard does by building a new
    C{proxyForInterface} class on every request (about 170 us each time,
    half the cost of a whole request on a small device).
    """

    __slots__ = ("resource", "_logout")

    def __init__(self, resource: Any, logout: Any) -> None:
        self.resource = resource
        self._logout = logout

    @property
    def isLeaf(self) -> bool:
        return self.resource.isLeaf

    def getChildWithDefault(self, name: bytes, request: Any) -> "_LoggedIn":
        return _LoggedIn(self.resource.getChildWithDefault(name, request), self._logout)

    def putChild(self, path: bytes, child: Any) -> None:
        self.resource.putChild(path, child)

    def render(self, request: Any) -> Any:
        logout = self._logout
        request.notifyFinish().addBoth(lambda _: logout())
        return self.resource.render(request)


class OperatorGuard(HTTPAuthSessionWrapper):
    """HTTPAuthSessionWrapper with a wrapper class made once, not per request."""

    def _loginSucceeded(self, args: tuple[Any, Any, Any]) -> _LoggedIn:
        _interface, avatar, logout = args
        return _LoggedIn(avatar, logout)


def guarded_root(portal: Any, credential_factories: list[Any]) -> IResource:
    return PublicRoot(OperatorGuard(portal, credential_factories))
