"""
The small pieces every JSON resource under C{/api} shares.

  - L{json_body}: set the status and Content-Type, and return the body;
  - L{read_json}: the request body as a JSON object, or the error to answer
    (415 for another Content-Type, 400 for bytes that are not UTF-8 JSON or
    not an object) -- one wording for every endpoint;
  - L{answer_later}: answer with a Deferred's result once it fires, unless
    the client went away meanwhile.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

if TYPE_CHECKING:
    from boatwist.core import Core

__all__ = ["BadBody", "UserResource", "answer_later", "json_body", "read_json"]

_log = Logger(namespace="boatwist.web.jsonapi")

#: A JSON value as the standard library produces it.
JSON = Any


def json_body(request: Request, value: JSON, code: int = 200) -> bytes:
    """Set C{code} and Content-Type on C{request}; the body to return or write."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value, ensure_ascii=False).encode("utf-8") + b"\n"


class BadBody(Exception):
    """The request body cannot be taken; C{code} and C{str()} are the answer."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def read_json(request: Request, empty_ok: bool = False) -> dict[str, JSON]:
    """
    The body as a JSON object; raises L{BadBody} (415 or 400) otherwise.
    With C{empty_ok}, no body at all (and then no Content-Type) is C{{}}:
    for requests whose body is optional (taking the floor with curl -X POST).
    """
    raw = request.content.read() if request.content is not None else b""
    if empty_ok and not raw.strip():
        return {}
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type != b"application/json":
        raise BadBody(415, "expected Content-Type: application/json")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        # RecursionError: nesting deeper than the parser goes ("[[[[..." within max_body).
        raise BadBody(400, "the body is not valid UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise BadBody(400, "expected a JSON object")
    return body


def answer_later(request: Request, d: Deferred[JSON], code: int,
                 failed: Callable[[Failure], tuple[int, JSON]]) -> int:
    """
    Answer C{request} with C{d}'s result as JSON and C{code}, or with what
    C{failed} makes of a failure (status, body); returns NOT_DONE_YET for
    C{render}.  Nothing is written to a client that has gone away.
    """
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def ok(value: JSON) -> None:
        if not gone:
            request.write(json_body(request, value, code))
            request.finish()

    def bad(failure: Failure) -> None:
        if gone:
            return
        status, body = failed(failure)
        request.write(json_body(request, body, status))
        request.finish()

    d.addCallbacks(ok, bad)
    d.addErrback(lambda f: _log.failure("answering {path!r} failed", f, path=request.path))
    return NOT_DONE_YET


class UserResource(Resource):
    """A resource of C{/api} made for one logged-in user: what it answers depends on who asks."""

    def __init__(self, user: str, core: Core) -> None:
        super().__init__()
        self.user = user
        self.core = core
