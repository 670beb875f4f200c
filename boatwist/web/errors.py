"""
Error pages: JSON under C{/api} (the UI's scripts parse it), a minimal HTML
page elsewhere (no script, no style: the CSP would refuse inline ones anyway).

Every refusal a user can meet -- a 404, the 503 of a full house, a 413 from
the channel -- is rendered here, so they all look alike.
"""

from __future__ import annotations

import html
import json
from typing import Any

from twisted.web import http, resource, server

from boatwist.presence import Refusal
from boatwist.web.headers import is_api_path

__all__ = ["ErrorResource", "error_page", "refusal_page"]

_REASONS = {421: b"Misdirected Request"}


def _request_path(request: Any) -> bytes | None:
    """The request's path; for a DummyRequest without one, prepath + postpath."""
    path = getattr(request, "path", None)
    if isinstance(path, bytes):
        return path
    segments = list(getattr(request, "prepath", None) or []) + list(getattr(request, "postpath", None) or [])
    return b"/" + b"/".join(segments)


def error_page(request: Any, code: int, message: str, **extra: Any) -> bytes:
    """
    Set C{code} and Content-Type on C{request} and return the error body.

    Under C{/api}: C{{"error": message, **extra}} as JSON, because the UI's
    scripts parse it.  Elsewhere: a minimal HTML page with no script and no
    style (the CSP would refuse inline ones anyway), C{extra} as a list.
    The caller returns the bytes from C{render} or writes them.
    """
    reason = _REASONS.get(code) or http.RESPONSES.get(code, b"Error")
    request.setResponseCode(code, reason)
    if is_api_path(_request_path(request)):
        request.setHeader(b"Content-Type", b"application/json")
        body: dict[str, Any] = {"error": message}
        body.update((key, value) for key, value in extra.items() if key != "error")
        return json.dumps(body, separators=(",", ":"), default=str).encode("utf-8")
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    title = html.escape(f"{code} {reason.decode('ascii', 'replace')}")
    items = "".join(
        f"<dt>{html.escape(str(key))}</dt><dd>{html.escape(str(value))}</dd>" for key, value in extra.items()
    )
    page = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>'
        f"<body><h1>{title}</h1><p>{html.escape(message)}</p>"
        + (f"<dl>{items}</dl>" if items else "")
        + "</body></html>\n"
    )
    return page.encode("utf-8")



class ErrorResource(resource.Resource):
    """
    A leaf that answers every request with L{error_page}: use it where
    L{resource.NoResource} / L{resource.ErrorPage} would be (JSON under /api,
    no inline script elsewhere).
    """

    isLeaf = True

    def __init__(self, code: int, message: str, **extra: Any) -> None:
        super().__init__()
        self._code = code
        self._message = message
        self._extra = extra

    def render(self, request: server.Request) -> bytes:
        return error_page(request, self._code, self._message, **self._extra)

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        return self




def refusal_page(request: Any, refusal: Refusal) -> bytes:
    """
    The 503 a refused user sees: how many of how many seats are taken, and
    C{Retry-After} set to when a seat may free.
    """
    request.setHeader(b"retry-after", str(refusal.retry_after).encode())
    message = refusal.message()
    if is_api_path(_request_path(request)):
        return error_page(request, http.SERVICE_UNAVAILABLE, message, reason=refusal.reason.value,
                          used=refusal.used, limit=refusal.limit, retry_after=refusal.retry_after)
    request.setResponseCode(http.SERVICE_UNAVAILABLE)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>Server full</title></head>"
        f"<body><h1>Server full</h1><p>{html.escape(message)}.</p>"
        f"<p>Try again in {refusal.retry_after} s.</p></body></html>\n"
    ).encode("utf-8")
