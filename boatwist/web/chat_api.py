"""
``/api/chat``: the browser's side of the chat room.

    GET  /api/chat?limit=N[&before=ID | &after=ID]
         -> {"messages": [{"id","user","text","via","action","at"}, ...]}  oldest first
    POST /api/chat   {"text": "...", "action": false}   (Content-Type: application/json)
         -> 201 and the stored message, once it is committed

The same room, limits and rate limit as the chat port (L{ChatRoom.say}).
Errors are JSON: 400 for a malformed or refused message, 415 for a body
that is not JSON, 429 with Retry-After when rate limited, 507 when the
message could not be saved.
"""

from __future__ import annotations

import json
import math
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from boatwist.chat.room import MessageRefused, NotSaved, RateLimited
from boatwist.web.resources import json_body


#: The largest message id (SQLite INTEGER).
MAX_ID = 2**63 - 1


def _int_arg(request: Any, name: bytes) -> int | None:
    values = request.args.get(name)
    if not values:
        return None
    try:
        value = int(values[0])
    except ValueError:
        raise ValueError(f"{name.decode()} must be a whole number")
    if value < 0:
        raise ValueError(f"{name.decode()} must not be negative")
    if value > MAX_ID:
        # SQLite's integers are 64-bit: a larger one would fail in the store, as a 500.
        raise ValueError(f"{name.decode()} is too large")
    return value


class ChatResource(Resource):
    isLeaf = True
    _log = Logger()

    def __init__(self, app: Any, user: str) -> None:
        super().__init__()
        self.app = app
        self.user = user

    def render_GET(self, request: Any) -> Any:
        try:
            limit = _int_arg(request, b"limit")
            before = _int_arg(request, b"before")
            after = _int_arg(request, b"after")
        except ValueError as e:
            return json_body(request, {"error": str(e)}, 400)
        if before is not None and after is not None:
            return json_body(request, {"error": "give before or after, not both"}, 400)
        limit = 50 if limit is None else max(1, min(limit, 500))
        d = self.app.store.history(before=before, after=after, limit=limit)
        d.addCallback(lambda messages: {"messages": [m.as_event_data() for m in messages]})
        return self._answer(request, d, 200)

    def render_POST(self, request: Any) -> Any:
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            return json_body(request, {"error": "expected Content-Type: application/json"}, 415)
        try:
            body = json.loads(request.content.read().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            # RecursionError: nesting deeper than the parser goes ("[[[[..." within max_body).
            return json_body(request, {"error": "the body is not valid UTF-8 JSON"}, 400)
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return json_body(request, {"error": 'expected {"text": "..."}'}, 400)
        action = body.get("action", False)
        if not isinstance(action, bool):
            return json_body(request, {"error": "action must be true or false"}, 400)
        try:
            d = self.app.room.say(self.user, body["text"], "web", action=action)
        except RateLimited as e:
            request.setHeader(b"retry-after", str(max(1, math.ceil(e.retry_after))).encode())
            return json_body(request, {"error": str(e)}, 429)
        except MessageRefused as e:
            return json_body(request, {"error": str(e)}, 400)
        d.addCallback(lambda message: message.as_event_data())
        return self._answer(request, d, 201)

    def _answer(self, request: Any, d: "defer.Deferred[Any]", code: int) -> Any:
        finished = []
        request.notifyFinish().addErrback(lambda _: finished.append(True))

        def ok(value: Any) -> None:
            if not finished:
                request.write(json_body(request, value, code))
                request.finish()

        def failed(failure: Any) -> None:
            if finished:
                return
            if failure.check(NotSaved):
                body, status = {"error": str(failure.value)}, 507
            else:
                self._log.failure("chat request failed", failure)
                body, status = {"error": "internal error"}, 500
            request.write(json_body(request, body, status))
            request.finish()

        d.addCallbacks(ok, failed)
        return NOT_DONE_YET
