"""
The parts of one running boatwist, held together for the resources.

Nothing here is global: L{boatwist.tap.makeService} builds one L{App}
and hands it to whoever needs it; a test builds its own with a C{Clock}.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from boatwist.config import Settings
from boatwist.events import EventHub
from boatwist.presence import Presence, Refusal
from boatwist.web.site import is_api_path
from boatwist.web.stream import StreamRegistry


@dataclass
class App:
    settings: Settings
    hub: EventHub
    presence: Presence
    tracker: Any
    clock: Any
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    streams: StreamRegistry = field(default_factory=StreamRegistry)
    store: Any = None
    room: Any = None
    metrics: Any = None
    heartbeat: Any = None
    #: The UI's static files, made once (a File resource per request costs a path lookup and stats).
    static: Any = None

    def refuse(self, request: Any, refusal: Refusal) -> bytes:
        """The 503 a refused user sees: how many of how many seats are taken."""
        request.setResponseCode(503)
        request.setHeader(b"retry-after", str(refusal.retry_after).encode())
        message = refusal.message()
        # As resource traversal sees the path (/api, /%61pi/...), as the security headers do.
        if is_api_path(request.path):
            request.setHeader(b"content-type", b"application/json")
            body = {"error": message, "reason": refusal.reason, "used": refusal.used,
                    "limit": refusal.limit, "retry_after": refusal.retry_after}
            return json.dumps(body).encode() + b"\n"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return (
            "<!doctype html><html><head><meta charset=utf-8><title>Server full</title></head>"
            f"<body><h1>Server full</h1><p>{message}.</p>"
            f"<p>Try again in {refusal.retry_after} s.</p></body></html>\n"
        ).encode("utf-8")


def audit_presence(store: Any) -> Callable[[Any], None]:
    """An event-hub subscriber writing logouts (with their reasons) and refusals to the audit log."""

    def on_event(event: Any) -> None:
        if event.kind != "presence":
            return
        data = event.data
        if data.get("reason") == "refused":
            kind = "refused"
        elif data.get("state") == "offline":
            kind = "logout"
        else:
            return
        detail = data["reason"] if kind == "logout" else f"{data.get('refusal')} {data.get('used')}/{data.get('limit')}"
        store.audit(kind, data.get("user"), None, f"{detail} via {data.get('via')}").addErrback(lambda _: None)

    return on_event
