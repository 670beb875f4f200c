"""
The resource tree.

    /healthz          no authentication: "ok" and the version
    everything else   behind HTTPAuthSessionWrapper (Digest and Basic):
      /                 the UI (static files shipped in the package)
      /api/whoami       the authenticated user, their role, the device (see console_api.py)
      /api/presence     seats and who is online (JSON)
      /api/events       Server-Sent Events (see stream.py)
      /api/chat         chat history (GET) and new messages (POST)
      /api/controls     the device's controls; operate one (see controls_api.py)
      /api/operations   the recorded operations
      /api/floor        who holds the floor; take, request, release
      /api/kick         an admin removes a user
      /api/reasons      the words for every presence and floor reason
      /api/operators    who is online, with roles and link quality now (the console polls it)
      /api/activity     one timeline of chat, operations, presence and the floor, from the store
      /metrics          Prometheus text format: authenticated, but a scrape takes no
                        seat and shows no one online (any user reading /metrics)

The guard hands each request an L{OperatorRoot} made for the authenticated
user; it is there, with the request in hand, that admission is decided:
presence knows whether the user already holds a seat.
"""

from __future__ import annotations

from typing import Callable

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from boatwist.core import Core
from boatwist.metrics import Metrics
from boatwist.presence import Kind, Presence, Refusal
from boatwist.web.chat_api import ChatResource
from boatwist.web.console_api import ActivityResource, OperatorsResource, WhoAmI
from boatwist.web.controls_api import (
    ControlsResource,
    FloorResource,
    KickResource,
    OperationsResource,
    ReasonsResource,
)
from boatwist.web.errors import ErrorResource, refusal_page
from boatwist.web.guard import unconsume
from boatwist.web.jsonapi import json_body
from boatwist.web.stream import EventsResource

#: An API endpoint: made for one user from the core.
Endpoint = Callable[[str, Core], IResource]


class PresenceResource(Resource):
    isLeaf = True

    def __init__(self, presence: Presence) -> None:
        super().__init__()
        self.presence = presence

    def render_GET(self, request: Request) -> bytes:
        return json_body(request, self.presence.snapshot())


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        from prometheus_client import CONTENT_TYPE_LATEST

        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return self.metrics.render()


def _events(user: str, core: Core) -> IResource:
    return EventsResource(user, core.hub, core.presence, core.tracker, core.streams, core.settings.events)


#: The endpoints under /api.
API: dict[bytes, Endpoint] = {
    b"whoami": WhoAmI,
    b"presence": lambda user, core: PresenceResource(core.presence),
    b"events": _events,
    b"chat": lambda user, core: ChatResource(user, core.room),
    b"controls": ControlsResource,
    b"operations": lambda user, core: OperationsResource(core),
    b"floor": FloorResource,
    b"kick": KickResource,
    b"reasons": lambda user, core: ReasonsResource(),
    b"operators": OperatorsResource,
    b"activity": ActivityResource,
}


class OperatorRoot(Resource):
    """The tree one authenticated user sees; admits each plain request to presence."""

    def __init__(self, core: Core, user: str) -> None:
        super().__init__()
        self.core = core
        self.user = user

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        request.boatwist_user = self.user  # type: ignore[attr-defined]
        core = self.core
        if path == b"metrics" and not request.postpath:
            # A scrape is authenticated but is no operator: no seat, no presence,
            # never a 503 when the seats are full (Prometheus would call the device down).
            return MetricsResource(core.metrics)
        is_stream = path == b"api" and (request.postpath or [])[:1] == [b"events"]
        if not is_stream:
            # An event stream is admitted as persistent presence by its resource.
            conn = core.tracker.connection_for(request.channel)
            refusal = core.presence.admit(conn, self.user, Kind.HTTP)
            if refusal is not None:
                return _Refused(refusal)
        if path == b"api":
            return ApiRoot(core, self.user)
        unconsume(request)
        return core.static


class _Refused(Resource):
    isLeaf = True

    def __init__(self, refusal: Refusal) -> None:
        super().__init__()
        self.refusal = refusal

    def render(self, request: Request) -> bytes:
        return refusal_page(request, self.refusal)


class ApiRoot(Resource):
    def __init__(self, core: Core, user: str) -> None:
        super().__init__()
        self.core = core
        self.user = user

    def getChild(self, path: bytes, request: Request) -> IResource:
        endpoint = API.get(path)
        if endpoint is not None:
            return endpoint(self.user, self.core)
        return ErrorResource(404, "no such API")
