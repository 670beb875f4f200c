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
from boatwist.reasons import RefusalReason
from boatwist.web.headers import is_api_path

__all__ = ["PUBLIC", "ErrorResource", "error_page", "outside_page", "refusal_page", "unauthorized_page"]

_REASONS = {421: b"Misdirected Request"}


def _request_path(request: server.Request) -> bytes | None:
    """The request's path; for a DummyRequest without one, prepath + postpath."""
    path = getattr(request, "path", None)
    if isinstance(path, bytes):
        return path
    segments = list(getattr(request, "prepath", None) or []) + list(getattr(request, "postpath", None) or [])
    return b"/" + b"/".join(segments)


def error_page(request: server.Request, code: int, message: str, **extra: Any) -> bytes:
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




#: Where the pages outside the console find their style and script: served
#: before authentication (L{boatwist.web.guard.PublicRoot}), because a person
#: who is not logged in, or was refused a seat, must still get a readable page.
PUBLIC = "/public"


def outside_page(title: str, body: str, *, head: str = "") -> bytes:
    """
    A page outside the console (401, 503): C{body} is HTML already escaped by
    the caller; the style and the small script are files under L{PUBLIC}
    (the CSP allows no inline style or script).
    """
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        f'<link rel="stylesheet" href="{PUBLIC}/pages.css">'
        f'<link rel="icon" href="{PUBLIC}/favicon.svg" type="image/svg+xml">'
        f'<script type="module" src="{PUBLIC}/pages.js"></script>{head}</head>'
        f'<body><main class="card">{body}</main></body></html>\n'
    ).encode("utf-8")


def _countdown(seconds: int, reload: bool) -> str:
    """A number of seconds that /public/pages.js counts down (and, with C{reload}, then reloads)."""
    flag = " data-reload" if reload else ""
    return f'<span class="countdown" data-countdown="{seconds}"{flag}>{seconds}\u00a0s</span>'


def unauthorized_page(request: server.Request) -> bytes:
    """
    The body of a 401: what to do, in words.  The same for every user name,
    known or not, and whatever was wrong (the name, the password, a hash the
    client cannot use): the page must not tell an attacker which names
    exist.  When the answer carries C{Retry-After} (the login throttle
    refused to check the password), it says when to try again -- also
    without saying whether the name exists.
    """
    retry_after: int | None = None
    raw = request.responseHeaders.getRawHeaders(b"retry-after") or []
    if raw and raw[0].strip().isdigit():
        retry_after = int(raw[0].strip())
    if is_api_path(_request_path(request)):
        request.setHeader(b"Content-Type", b"application/json")
        body: dict[str, Any] = {"error": "authentication required: check the user name and password"}
        if retry_after is not None:
            body["retry_after"] = retry_after
        return json.dumps(body, separators=(",", ":")).encode("utf-8")
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    throttled = ""
    if retry_after is not None:
        throttled = (
            '<p class="warn" role="alert">Too many wrong passwords were tried for this user name: '
            f"the next try is not checked before {_countdown(retry_after, reload=False)} have passed. "
            "Wait, then log in again.</p>"
        )
    return outside_page("Login needed", (
        "<h1>Login needed</h1>"
        "<p>This device lets in only the people it knows: it asks for a user name and a password, "
        "and none were given, or they were not accepted.</p>"
        + throttled +
        "<ul>"
        "<li>Check the user name and the password: both are case-sensitive (is Caps Lock on?).</li>"
        "<li>Just logged out? Log in again, as yourself or as someone else.</li>"
        "<li>Forgot the password? Whoever administers the device sets a new one "
        "(<code>embweb-passwd passwd NAME</code>).</li>"
        "</ul>"
        '<p><a class="button" href="/">Log in</a></p>'
    ))


def refusal_page(request: server.Request, refusal: Refusal) -> bytes:
    """
    The 503 a refused user sees: how many of how many seats are taken, and
    C{Retry-After} set to when a seat may free.  The HTML page counts that
    down and tries again by itself (/public/pages.js; without script, a
    refresh in C{noscript}).
    """
    request.setHeader(b"retry-after", str(refusal.retry_after).encode())
    if is_api_path(_request_path(request)):
        return error_page(request, http.SERVICE_UNAVAILABLE, refusal.message(), reason=refusal.reason.value,
                          used=refusal.used, limit=refusal.limit, retry_after=refusal.retry_after)
    request.setResponseCode(http.SERVICE_UNAVAILABLE)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    seconds = refusal.retry_after
    used, limit = refusal.used, refusal.limit
    if refusal.reason is RefusalReason.FULL:
        title = "All seats are taken"
        explain = (
            f'<p class="big"><strong>{used} of {limit}</strong> seats are taken: this device lets '
            f"{limit} operator{'' if limit == 1 else 's'} in at once.</p>"
            "<p>A seat frees as soon as someone logs out, closes the console or loses their connection "
            "(found within seconds).</p>"
        )
    else:
        title = "Too many connections"
        explain = (
            f'<p class="big">You have <strong>{used} of {limit}</strong> connections open.</p>'
            "<p>Close a console tab or a chat-port session you no longer use.</p>"
        )
    return outside_page(title, (
        f"<h1>{html.escape(title)}</h1>"
        + explain +
        f'<p class="retry" aria-live="polite">Trying again in {_countdown(seconds, reload=True)}\u2026</p>'
        '<p><a class="button" href="">Try now</a></p>'
    ), head=f'<noscript><meta http-equiv="refresh" content="{seconds}"></noscript>')
