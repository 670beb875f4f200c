"""
C{[server] redirect_http}: the plain-HTTP listener answers every request
with a redirect to the same path on https, and serves nothing else.
"""

from __future__ import annotations

import html

from urllib.parse import quote

from twisted.web import http, resource, server

from boatwist.web.headers import split_host

__all__ = ["HttpsRedirect"]


class HttpsRedirect(resource.Resource):
    """
    Answers every request with a redirect to the same path on https, for
    C{[server] redirect_http}: the plain-HTTP listener serves nothing else.
    301 for GET and HEAD, 308 for every other method (a 301 lets clients
    resend a POST as a GET, dropping its body).

    The host comes from the Host header (validated, and checked against
    C{[http] hosts} by the site before this is reached: a foreign name gets
    421, never a Location pointing at it; the address the connection came
    in on when it is missing or malformed), the port from C{port} (omitted
    when 443).
    """

    isLeaf = True

    def __init__(self, port: int = 443) -> None:
        super().__init__()
        if not 0 < port < 65536:
            raise ValueError(f"expected a TCP port, got {port}")
        self._port = port

    def location(self, request: server.Request) -> bytes:
        """The https URL C{request} is sent to."""
        split = split_host(request.getHeader(b"host"))
        host = split[0] if split is not None else str(getattr(request.getHost(), "host", "localhost"))
        if ":" in host:
            host = f"[{host}]"
        port = "" if self._port == 443 else f":{self._port}"
        # Absolute-form or "*" targets are not paths on this server: send to /.
        uri = request.uri if request.uri.startswith(b"/") else b"/"
        # Raw non-ASCII bytes are percent-encoded; existing escapes are kept.
        path = quote(uri, safe="/?&=%:@!$'()*+,;~-._")
        return f"https://{host}{port}{path}".encode("ascii")

    def render(self, request: server.Request) -> bytes:
        location = self.location(request)
        # 301 lets a client turn a POST into a GET (RFC 9110 section 15.4.2); 308 keeps the method and body.
        permanent = http.MOVED_PERMANENTLY if request.method in (b"GET", b"HEAD") else http.PERMANENT_REDIRECT
        request.setResponseCode(permanent)
        request.setHeader(b"Location", location)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        href = html.escape(location.decode("ascii"))
        return f'<!DOCTYPE html>\n<html><body><a href="{href}">{href}</a></body></html>\n'.encode("ascii")

