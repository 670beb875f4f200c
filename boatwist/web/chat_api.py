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

import math

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from boatwist.chat.room import ChatRoom, MessageRefused, NotSaved, RateLimited
from boatwist.web.jsonapi import JSON, BadBody, answer_later, json_body, read_json

#: The largest message id (SQLite INTEGER).
MAX_ID = 2**63 - 1


def int_arg(request: Request, name: bytes) -> int | None:
    """A whole-number query argument (0 to 2**63-1), None when absent; ValueError names it."""
    values = request.args.get(name) if request.args is not None else None
    if not values:
        return None
    try:
        value = int(values[0])
    except ValueError:
        raise ValueError(f"{name.decode()} must be a whole number") from None
    if value < 0:
        raise ValueError(f"{name.decode()} must not be negative")
    if value > MAX_ID:
        # SQLite's integers are 64-bit: a larger one would fail in the store, as a 500.
        raise ValueError(f"{name.decode()} is too large")
    return value


class ChatResource(Resource):
    isLeaf = True
    _log = Logger()

    def __init__(self, user: str, room: ChatRoom) -> None:
        super().__init__()
        self.user = user
        self.room = room

    def render_GET(self, request: Request) -> bytes | int:
        try:
            limit = int_arg(request, b"limit")
            before = int_arg(request, b"before")
            after = int_arg(request, b"after")
        except ValueError as e:
            return json_body(request, {"error": str(e)}, 400)
        if before is not None and after is not None:
            return json_body(request, {"error": "give before or after, not both"}, 400)
        limit = 50 if limit is None else max(1, min(limit, 500))
        d = self.room.page(before=before, after=after, limit=limit)
        d.addCallback(lambda messages: {"messages": [m.as_event_data() for m in messages]})
        return answer_later(request, d, 200, self._failed)

    def render_POST(self, request: Request) -> bytes | int:
        try:
            body = read_json(request)
        except BadBody as e:
            return json_body(request, {"error": str(e)}, e.code)
        if not isinstance(body.get("text"), str):
            return json_body(request, {"error": 'expected {"text": "..."}'}, 400)
        action = body.get("action", False)
        if not isinstance(action, bool):
            return json_body(request, {"error": "action must be true or false"}, 400)
        try:
            d = self.room.say(self.user, body["text"], "web", action=action)
        except RateLimited as e:
            request.setHeader(b"retry-after", str(max(1, math.ceil(e.retry_after))).encode())
            return json_body(request, {"error": str(e)}, 429)
        except MessageRefused as e:
            return json_body(request, {"error": str(e)}, 400)
        return answer_later(request, d.addCallback(lambda message: message.as_event_data()), 201, self._failed)

    def _failed(self, failure: Failure) -> tuple[int, JSON]:
        if failure.check(NotSaved):
            return 507, {"error": str(failure.value)}
        self._log.failure("chat request failed", failure)
        return 500, {"error": "internal error"}
