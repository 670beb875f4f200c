"""
The HTTP front door: a C{twisted.web} L{Site} hardened for a device on a LAN.

Wire behaviour (what a client sees), in the order a request meets it::

    connection accepted
      header deadline armed: header_timeout s from connection start, from the
      first byte of a later request on a keep-alive connection, or from the
      end of the previous response when the next request was pipelined.
      Bytes arriving do NOT extend it (stock twisted.web restarts its idle
      timer on every byte: one byte every 50 s held a connection forever).
      Deadline passes, something received   -> 408, Connection: close
      Deadline passes, nothing received     -> closed silently
      Idle keep-alive connection            -> closed after idle_timeout s
    request line + headers complete
      Host not in secure_hosts (if given)   -> 421, closed, body unread
      unsafe method (not GET/HEAD/OPTIONS) with Origin naming another
      origin, Origin: null, or Sec-Fetch-Site cross-site / same-site
                                            -> 403, closed, body unread
      Content-Length > max_body             -> 413, closed, body unread
      Expect: 100-continue                  -> no "100 Continue", ever: the
                                               body is not invited before
                                               authentication has happened
    body
      must be complete within header_timeout + expected / min_body_rate s
      (expected = Content-Length, or max_body when chunked); else 408, or 417
      when the client sent Expect: 100-continue and no body byte at all
      (it is waiting for a 100 that will not come; 417 tells it to retry
      without the expectation).  A chunked body passing max_body -> 413,
      closed.  Bodies are kept in memory (they are bounded), never spooled
      to a temporary file.
    response (every one: 2xx, 3xx, 400, 401, 403, 404, 408, 413, 417, 5xx)
      Content-Security-Policy, X-Content-Type-Options: nosniff,
      X-Frame-Options: DENY, Referrer-Policy: no-referrer, Server: boatwist;
      Cache-Control: no-store under /api and on 401;
      Strict-Transport-Security over TLS.
    access log
      one combined-log-format line per response, namespace boatwist.access;
      user from request.boatwist_user only; query values replaced by "*".

HTTP/2 is not offered over TLS (ALPN): the deadlines and limits above live
in the HTTP/1.1 channel, and twisted's H2Connection would bypass them.
"""

from __future__ import annotations

import html
import json
import re
from io import BytesIO
from typing import Any, Callable, Iterable, Optional, Union
from urllib.parse import quote, unquote_to_bytes, urlsplit

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server

# Private, but it is what HTTPFactory.buildProtocol has always returned:
# keeping the wrapper keeps every attribute Site/HTTPFactory set on "the
# protocol" (site, requestFactory, timeOut, callLater) working unchanged.
from twisted.web.http import _GenericHTTPChannelProtocol
from twisted.web.http_headers import Headers

from boatwist.config import HttpSettings

__all__ = [
    "BoatwistChannel",
    "BoatwistRequest",
    "BoatwistSite",
    "CONTENT_SECURITY_POLICY",
    "DEFAULT_MIN_BODY_RATE",
    "ErrorResource",
    "HttpsRedirect",
    "access_log_line",
    "cross_site_reason",
    "error_page",
    "host_allowed",
    "is_api_path",
    "security_headers",
]

#: No inline script or style anywhere: the UI's files are all under 'self'.
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; "
    b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
    b"base-uri 'none'; form-action 'self'"
)
#: One year.  No includeSubDomains: a device does not own its parent domain.
STRICT_TRANSPORT_SECURITY = b"max-age=31536000"
SERVER_NAME = b"boatwist"
#: Methods that must not change state, so are not checked for CSRF.  Every
#: other method is (POST, PUT, PATCH, DELETE, and any unknown one).
SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
#: Bytes per second a request body must at least average (32 kbit/s, slower
#: than any link a device is operated over); see BoatwistChannel.
DEFAULT_MIN_BODY_RATE = 4096.0

_REASONS = {421: b"Misdirected Request"}
_HOST_NAME = re.compile(r"^[a-z0-9._:-]+$")
_HTTP_VERSION = re.compile(rb"^HTTP/1\.[01]$")

#: (status code, message) the channel answers with instead of the resource.
Refusal = tuple[int, str]
Screen = Callable[[http.Request], Optional[Refusal]]


# ------------------------------------------------------------- pure helpers


def is_api_path(path: bytes | None) -> bool:
    """
    Whether C{path} (the request path, without query) is C{/api} or below.

    Judged on the first path segment percent-decoded, exactly as resource
    traversal (L{server.Request.process}) sees it: C{/%61pi/presence} reaches
    the same resource as C{/api/presence}, so it must get the same
    C{Cache-Control} and the same JSON errors.
    """
    if not path or not path.startswith(b"/"):
        return False
    first = path[1:].split(b"/", 1)[0].split(b"?", 1)[0]
    return unquote_to_bytes(first) == b"api"


def _split_host(value: bytes | str | None) -> tuple[str, int | None] | None:
    """
    A Host header (or C{host[:port]}) as (lower-case name or IP literal
    without brackets, port or None); None when it is malformed.

    Anything but letters, digits, C{.-_:} in the name is refused: the result
    ends up in a Location header and in origin comparisons.
    """
    if not value:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if any(c in value for c in "/\\?#@ \t\r\n"):
        return None
    if value.count(":") > 1 and not value.startswith("["):
        value = f"[{value}]"  # a bare IPv6 literal, as written in secure_hosts
    try:
        parts = urlsplit("//" + value)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if not host or not _HOST_NAME.match(host):
        return None
    return host, port


def _parse_origin(value: bytes) -> tuple[str, str, int] | None:
    """
    An C{Origin} header as (scheme, host, port with the default filled in);
    None for C{null}, for opaque or malformed origins: all count as foreign.
    """
    try:
        text = value.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or parts.path or parts.query or parts.fragment:
        return None
    if parts.username is not None or not parts.hostname:
        return None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname, port


def _own_origin(host_values: list[bytes] | None, secure: bool) -> tuple[str, str, int] | None:
    """The request's own origin, from its one Host header and whether it came over TLS."""
    if not host_values or len(host_values) != 1:
        return None
    split = _split_host(host_values[0])
    if split is None:
        return None
    scheme = "https" if secure else "http"
    host, port = split
    return scheme, host, port if port is not None else (443 if secure else 80)


def cross_site_reason(method: bytes, headers: Headers, secure: bool) -> str | None:
    """
    Why a request must be refused as cross-site, or None to let it through.

    Only unsafe methods are judged (GET/HEAD/OPTIONS must not change state).
    A browser always sends C{Origin} on such a request and, in current
    browsers, C{Sec-Fetch-Site}; curl and scripts send neither and pass.
    C{same-site} is refused too: a device's neighbours on the same site
    (another device's web UI, a printer) are not trusted with its controls.
    """
    if method.upper() in SAFE_METHODS:
        return None
    for value in headers.getRawHeaders(b"sec-fetch-site") or []:
        site = value.strip().lower()
        if site in (b"cross-site", b"same-site"):
            return "Sec-Fetch-Site: " + site.decode("ascii")
    origins = headers.getRawHeaders(b"origin")
    if origins is None:
        return None
    if len(origins) != 1:
        return "more than one Origin header"
    theirs = _parse_origin(origins[0])
    if theirs is None:
        return "Origin: " + origins[0].decode("ascii", "replace")[:100]
    own = _own_origin(headers.getRawHeaders(b"host"), secure)
    if own is None or theirs != own:
        return "Origin " + "%s://%s:%d" % theirs + " is not this server's"
    return None


def _parse_host_rule(rule: str) -> tuple[str, int | None]:
    """One C{secure_hosts} entry: C{name}, C{name:port}, C{.suffix}, IP literal."""
    text = rule.strip().lower()
    if text.startswith("."):
        split = _split_host(text[1:])
        if split is None or split[1] is not None:
            raise ValueError(f"secure_hosts: expected .domain, got {rule!r}")
        return "." + split[0], None
    split = _split_host(text)
    if split is None:
        raise ValueError(f"secure_hosts: expected host or host:port, got {rule!r}")
    return split


def host_allowed(host: bytes | None, rules: Iterable[tuple[str, int | None]]) -> bool:
    """
    Whether a Host header names one of C{rules} (from L{_parse_host_rule}).

    A request without a Host header (HTTP/1.0 tools) is let through: the
    check is against DNS rebinding, and browsers always send Host.
    """
    if host is None:
        return True
    split = _split_host(host)
    if split is None:
        return False
    name, port = split
    for rule_name, rule_port in rules:
        if rule_name.startswith("."):
            if name == rule_name[1:] or name.endswith(rule_name):
                return True
        elif name == rule_name and (rule_port is None or rule_port == port):
            return True
    return False


def security_headers(path: bytes | None, code: int, secure: bool) -> list[tuple[bytes, bytes]]:
    """
    The headers every response carries, for a request to C{path} answered
    with C{code}, over TLS or not.

    Pure so the channel's own refusals and rendered responses get the very
    same set.
    """
    headers = [
        (b"Content-Security-Policy", CONTENT_SECURITY_POLICY),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"X-Frame-Options", b"DENY"),
        (b"Referrer-Policy", b"no-referrer"),
        (b"Server", SERVER_NAME),
    ]
    if code == http.UNAUTHORIZED or is_api_path(path):
        # API answers are per user and per moment; a 401 must not be replayed
        # from a cache after the user has logged in.
        headers.append((b"Cache-Control", b"no-store"))
    if secure:
        headers.append((b"Strict-Transport-Security", STRICT_TRANSPORT_SECURITY))
    return headers


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


_PLAIN_LOG = re.compile(rb'[\x20\x21\x23-\x5b\x5d-\x7e]*')


def _escape_log(value: Union[bytes, str], *, space: bool = True) -> str:
    """
    A log field with C{"} and C{\\} escaped and every byte outside printable
    ASCII as C{\\xHH}: a request must not be able to forge a log line.
    """
    raw = value.encode("utf-8") if isinstance(value, str) else value
    # The common case, checked at C speed: printable ASCII with nothing to escape.
    if _PLAIN_LOG.fullmatch(raw) is not None and (space or b" " not in raw):
        return raw.decode("ascii")
    out = []
    for byte in raw:
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x21 <= byte <= 0x7E or (space and byte == 0x20):
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def _redact_query(uri: bytes) -> bytes:
    """
    C{uri} with every query value replaced by C{*}: tokens and passwords
    passed in a query string do not belong in a log file.
    """
    path, sep, query = uri.partition(b"?")
    if not sep:
        return uri
    redacted = []
    for pair in query.split(b"&"):
        name, eq, _ = pair.partition(b"=")
        redacted.append(name + b"=*" if eq else b"*")
    return path + b"?" + b"&".join(redacted)


def access_log_line(request: Any, timestamp: str) -> str:
    """
    One combined-log-format line for a finished C{request}.

    Like L{http.combinedLogFormatter}, but the user field is the name a
    resource recorded in C{request.boatwist_user} after authentication
    succeeded (never C{getUser()}, which is whatever the Authorization header
    claims, password right or wrong), and query values are redacted.
    No request header other than Referer and User-Agent is read.
    """
    address = request.getClientAddress()
    ip = address.host if isinstance(address, (IPv4Address, IPv6Address)) else "-"
    user = getattr(request, "boatwist_user", None)
    user_field = _escape_log(user, space=False) if user else "-"
    referrer = request.getHeader(b"referer")
    agent = request.getHeader(b"user-agent")
    return '%s - %s %s "%s %s %s" %d %s "%s" "%s"' % (
        _escape_log(ip),
        user_field,
        timestamp,
        _escape_log(request.method),
        _escape_log(_redact_query(request.uri)),
        _escape_log(request.clientproto),
        request.code,
        request.sentLength or "-",
        _escape_log(_redact_query(referrer)) if referrer else "-",
        _escape_log(agent) if agent else "-",
    )


class _NamespacedLogger(Logger):
    """
    A class-level L{Logger} that keeps the namespace it was given.

    L{Logger.__get__} renames a class attribute's logger after the class
    (C{boatwist.web.site.BoatwistSite}); the access log must stay in
    C{boatwist.access} so it can be routed to its own file.
    """

    def __get__(self, instance: object, owner: type | None = None) -> Logger:
        return self.__class__(self.namespace, instance if instance is not None else owner, observer=self.observer)


# ------------------------------------------------------------------ request


class BoatwistRequest(server.Request):
    """
    A request whose every response carries the security headers, whose body
    stays in memory and is counted against the channel's limit.

    @ivar boatwist_user: the authenticated user name, set by whoever
        authenticated the request (the realm's avatar resource); the access
        log shows it.  None: C{-} in the log.
    """

    boatwist_user: Optional[Union[str, bytes]] = None
    _log = Logger()

    def gotLength(self, length: int | None) -> None:
        """
        Always a L{BytesIO}: bodies are bounded by C{max_body}, and Twisted's
        temporary file above 100 kB would write request bodies to the
        device's flash.
        """
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        """Store a piece of the body, unless the channel says it is one too many."""
        channel = getattr(self, "channel", None)
        if self.finished or channel is None or self.content is None:
            return  # already refused (413): the decoder may still be draining
        admit = getattr(channel, "admitBody", None)
        if admit is not None and not admit(len(data)):
            return
        self.content.write(data)

    def write(self, data: bytes) -> None:
        """Add the security headers just before the status line goes out."""
        if not self.startedWriting:
            self._prepareHeaders()
        super().write(data)

    def _prepareHeaders(self) -> None:
        """Security headers, our Server name, and a Date from the site's reactor."""
        for name, value in security_headers(self.path, self.code, self.isSecure()):
            self.responseHeaders.setRawHeaders(name, [value])
        # process() set Date from time.time(); the site's reactor is the
        # clock this server is told to use (a Clock in tests), and refusals
        # never went through process() at all.
        reactor = getattr(getattr(getattr(self, "channel", None), "site", None), "reactor", None)
        if reactor is not None:
            self.responseHeaders.setRawHeaders(b"Date", [http.datetimeToString(reactor.seconds())])

    def processingFailed(self, reason: Failure) -> Failure:
        """
        A 500 in the project's error format (JSON under /api), and no
        traceback to the client.  If the response had already started,
        there is no honest way to say so but dropping the connection.
        """
        self._log.failure("rendering {path!r} failed", failure=reason, path=self.path)
        if self.finished or self._disconnected:
            return reason
        if self.startedWriting:
            self.loseConnection()
            return reason
        body = error_page(self, http.INTERNAL_SERVER_ERROR, "internal server error")
        self.setHeader(b"Content-Length", b"%d" % (len(body),))
        self.write(body)
        self.finish()
        return reason


# ------------------------------------------------------------------ channel


class BoatwistChannel(http.HTTPChannel):
    """
    An L{http.HTTPChannel} with a header deadline, a body deadline, a body
    limit, header-time screening and no C{100 Continue}.

    Everything the channel refuses is answered through a L{BoatwistRequest}
    (so it is logged and carries the security headers) with
    C{Connection: close}, and the connection is then closed: the unread body
    would otherwise have to be read and thrown away.

    Timers use C{self.callLater}, which L{http.HTTPFactory.buildProtocol}
    sets to the site's reactor: a L{Clock} drives them in tests.
    """

    _log = Logger()

    def __init__(
        self,
        settings: HttpSettings,
        screen: Screen | None = None,
        min_body_rate: float = DEFAULT_MIN_BODY_RATE,
    ) -> None:
        super().__init__()
        self._settings = settings
        self._screen = screen
        self._minBodyRate = min_body_rate
        self._headerCall: IDelayedCall | None = None
        self._bodyCall: IDelayedCall | None = None
        self._abortCall: IDelayedCall | None = None
        #: True once the channel has decided to end the connection: every
        #: later byte is dropped and no further request is dispatched.
        self._closing = False
        self._bodyBytes = 0
        self._expectContinue = False

    # -- deadlines

    def _armHeaderDeadline(self) -> None:
        """Start the header clock, unless it already runs: bytes never extend it."""
        if self._headerCall is None and not self._closing:
            self._headerCall = self.callLater(self._settings.header_timeout, self._headerDeadlinePassed)

    def _cancel(self, call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()

    def _cancelDeadlines(self) -> None:
        self._cancel(self._headerCall)
        self._cancel(self._bodyCall)
        self._headerCall = self._bodyCall = None

    def _headerDeadlinePassed(self) -> None:
        """The request line and headers did not all arrive in time."""
        self._headerCall = None
        if self._closing:
            return
        peer = self.transport.getPeer() if self.transport is not None else None
        if self.requests or self._buffer:
            self._log.info("{peer}: request headers incomplete after {timeout} s: 408", peer=peer,
                           timeout=self._settings.header_timeout)
            self._refuse(http.REQUEST_TIMEOUT, "the request headers took too long")
        else:
            self._log.debug("{peer}: no request within {timeout} s: closing", peer=peer,
                            timeout=self._settings.header_timeout)
            self._close()

    def _bodyDeadlinePassed(self) -> None:
        """The body did not arrive at min_body_rate."""
        self._bodyCall = None
        if self._closing:
            return
        if self._expectContinue and self._bodyBytes == 0:
            # It waits for a 100 Continue we never send (before authentication).
            self._refuse(http.EXPECTATION_FAILED, "100 Continue is not sent; send the request without Expect")
        else:
            self._refuse(http.REQUEST_TIMEOUT, "the request body took too long")

    # -- closing

    def _close(self) -> None:
        """End the connection without a response; abort it if it will not close."""
        self._closing = True
        self._cancelDeadlines()
        self.setTimeout(None)
        self.loseConnection()
        self._scheduleAbort()

    def _scheduleAbort(self) -> None:
        """
        A client that does not read (slowloris does not) can keep a closing
        connection open while our response waits to be sent: abort after
        C{abortTimeout}, as stock L{http.HTTPChannel.timeoutConnection} does.
        """
        if self.abortTimeout is not None and self._abortCall is None and self.transport is not None:
            self._abortCall = self.callLater(self.abortTimeout, self._abort)

    def _abort(self) -> None:
        self._abortCall = None
        if self.transport is not None:
            self.transport.abortConnection()

    def _requestForRefusal(self) -> BoatwistRequest | None:
        """
        The request to answer a refusal with: the one being received, or a
        new one when not even its request line is complete.  None when a
        response is already under way (there is no status line left to send).
        """
        if self.requests:
            request = self.requests[-1]
            if request is not self.requests[0] or request.startedWriting or request.finished:
                return None
        else:
            request = self.requestFactory(self)
            self.requests.append(request)
        if request.content is None:
            request.content = BytesIO()
        self._fillRequestLine(request)
        return request  # type: ignore[no-any-return]

    def _fillRequestLine(self, request: http.Request) -> None:
        """
        Give a request that was not dispatched what L{http.Request.requestReceived}
        would have set, so a refusal is logged and routed (JSON under /api) like
        any response.  An unparsed request line shows as C{-} in the log.
        """
        command = getattr(self, "_command", None)
        uri = getattr(self, "_path", None)
        version = getattr(self, "_version", None)
        request.method = command or b"-"
        request.uri = uri or b"-"
        request.path = request.uri.split(b"?", 1)[0]
        if request.args is None:
            request.args = {}
        request.clientproto = version if version and _HTTP_VERSION.match(version) else b"HTTP/1.1"

    def _refuse(self, code: int, message: str) -> None:
        """
        Answer the request being received with C{code} and close.

        Goes through the request (not raw bytes) so the refusal has the
        security headers, is in the access log, and is JSON under /api.
        """
        if self._closing:
            return
        self._closing = True
        self._cancelDeadlines()
        self.setTimeout(None)
        self.persistent = False
        request = self._requestForRefusal()
        if request is None:
            self.loseConnection()
        else:
            body = error_page(request, code, message)
            request.setHeader(b"Connection", b"close")
            request.setHeader(b"Content-Length", b"%d" % (len(body),))
            request.write(body)
            request.finish()  # logs it; requestDone() closes: not persistent
        self._scheduleAbort()

    # -- HTTPChannel overrides

    def connectionMade(self) -> None:
        """Start the header clock at once: accept-and-say-nothing is a slowloris too."""
        super().connectionMade()
        self._armHeaderDeadline()

    def dataReceived(self, data: bytes) -> None:
        """The first byte of a request starts its header clock; nothing restarts it."""
        if self._closing:
            return
        if data and self.line_mode and not self._handlingRequest:
            self._armHeaderDeadline()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        """
        Replaces the stock method (same steps) without its automatic
        C{100 Continue}, and decides here, before any body byte is read,
        what the site refuses outright.
        """
        if self._closing:
            return
        self._cancel(self._headerCall)
        self._headerCall = None
        request = self.requests[-1]
        request.parseCookies()
        self.persistent = self.checkPersistence(request, self._version)
        self._fillRequestLine(request)
        refusal = self._screen(request) if self._screen is not None else None
        if refusal is None and self.length is not None and self.length > self._settings.max_body:
            refusal = (http.REQUEST_ENTITY_TOO_LARGE, f"the request body is larger than {self._settings.max_body} bytes")
        if refusal is not None:
            self._refuse(*refusal)
            return
        request.gotLength(self.length)
        self._bodyBytes = 0
        expect = request.requestHeaders.getRawHeaders(b"expect")
        self._expectContinue = (
            bool(expect) and expect[0].lower() == b"100-continue" and self._version == b"HTTP/1.1"
        )
        if self.length != 0:
            expected = self.length if self.length is not None else self._settings.max_body
            allowed = self._settings.header_timeout + expected / self._minBodyRate
            self._bodyCall = self.callLater(allowed, self._bodyDeadlinePassed)

    def admitBody(self, size: int) -> bool:
        """
        Count C{size} more body bytes of the request being received; refuse it
        with 413 (and return False) once the total passes C{max_body}.  This
        is what bounds a chunked body, whose length nobody announced.
        """
        if self._closing:
            return False
        self._bodyBytes += size
        if self._bodyBytes > self._settings.max_body:
            self._refuse(http.REQUEST_ENTITY_TOO_LARGE, f"the request body is larger than {self._settings.max_body} bytes")
            return False
        return True

    def allContentReceived(self) -> None:
        if self._closing:
            return
        self._cancel(self._bodyCall)
        self._bodyCall = None
        super().allContentReceived()

    def requestDone(self, request: http.Request) -> None:
        """
        After a response on a keep-alive connection: if the next request is
        already (partly) here, pipelined, its header clock starts now.
        """
        super().requestDone(request)
        if self.persistent and not self._closing and self.line_mode and not self._handlingRequest and self._buffer:
            self._armHeaderDeadline()

    def _send100Continue(self) -> None:
        """Never: a 100 would invite the body before authentication (belt and braces)."""

    def _respondToBadRequestAndDisconnect(self) -> None:
        """Twisted's bare 400 gets the security headers and a log line like any response."""
        self._refuse(http.BAD_REQUEST, "bad request")

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._closing = True
        self._cancelDeadlines()
        self._cancel(self._abortCall)
        self._abortCall = None
        super().connectionLost(reason)


# --------------------------------------------------------------------- site


class AccessLogFile:
    """
    An access log written to a file of its own, the way Boa and thttpd do it:
    lines are buffered and flushed once a second (by L{flush}, called from the
    heartbeat), which costs a small fraction of a log event per request.  The
    default remains twisted.logger (namespace C{boatwist.access}).
    """

    _log = Logger()

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "ab", buffering=65536)
        self._failed = False

    def write(self, line: str) -> None:
        try:
            self._file.write(line.encode("utf-8") + b"\n")
        except OSError as e:
            self._report(e)

    def flush(self) -> None:
        try:
            self._file.flush()
            self._failed = False
        except OSError as e:
            self._report(e)

    def close(self) -> None:
        self.flush()
        self._file.close()

    def _report(self, error: OSError) -> None:
        if not self._failed:
            self._failed = True
            self._log.error("access log {path} cannot be written: {error}", path=self.path, error=error)


class BoatwistSite(server.Site):
    """
    The L{server.Site} every boatwist HTTP(S) listener serves.

    @param resource: the root resource (normally the guard's wrapper).
    @param settings: C{settings.http}: header_timeout, max_body, idle_timeout.
    @param reactor: an L{IReactorTime}; tests pass a L{Clock}.  None: the
        global reactor, imported by L{http.HTTPFactory} when constructed.
    @param secure_hosts: Host header values this site answers to (C{name},
        C{name:port}, C{.domain} for it and its subdomains, IP literals);
        others get 421 before anything else happens.  A defence against DNS
        rebinding.  None or empty: any Host.
    @param min_body_rate: bytes/s a request body must average (see the
        module docstring).
    """

    requestFactory = BoatwistRequest
    _log = Logger()
    _access_log = _NamespacedLogger(namespace="boatwist.access")

    def __init__(
        self,
        resource: resource.IResource,
        settings: HttpSettings,
        *,
        reactor: IReactorTime | None = None,
        secure_hosts: Iterable[str] | None = None,
        min_body_rate: float = DEFAULT_MIN_BODY_RATE,
        access_log: AccessLogFile | None = None,
    ) -> None:
        super().__init__(resource, timeout=settings.idle_timeout, reactor=reactor)
        self.settings = settings
        #: When set, access lines go to this file instead of twisted.logger.
        self.access_file = access_log
        self._secure_hosts = tuple(_parse_host_rule(rule) for rule in secure_hosts or ())
        if min_body_rate <= 0:
            raise ValueError("min_body_rate must be positive")
        self._min_body_rate = min_body_rate

    def protocol(self) -> _GenericHTTPChannelProtocol:  # type: ignore[override]
        """
        What L{Factory.buildProtocol} calls: our channel, in the wrapper
        HTTPFactory always uses (C{HTTPFactory.protocol} is that same kind of
        method, taking the factory as C{self}).
        """
        channel = BoatwistChannel(self.settings, screen=self.screen, min_body_rate=self._min_body_rate)
        return _GenericHTTPChannelProtocol(channel)

    def acceptableProtocols(self) -> list[bytes]:
        """HTTP/1.1 only: H2Connection would bypass every limit in BoatwistChannel."""
        return [b"http/1.1"]

    def startFactory(self) -> None:
        """
        Nothing to open: the access log goes through twisted.logger, so
        HTTPFactory's log file and its once-a-second date timer (a wake-up
        every second on an idle device) are not started.
        """

    def screen(self, request: http.Request) -> Refusal | None:
        """
        Decide from the headers alone whether to refuse C{request} before its
        body is read, before authentication, before any resource: a foreign
        Host (421) or a cross-site state-changing request (403).
        """
        if self._secure_hosts and not host_allowed(request.getHeader(b"host"), self._secure_hosts):
            self._log.info("{peer}: Host {host!r} is not served here: 421", peer=request.getClientAddress(),
                           host=request.getHeader(b"host"))
            return 421, "this server does not answer to that host name"
        reason = cross_site_reason(request.method, request.requestHeaders, request.isSecure())
        if reason is not None:
            self._log.info("{peer}: cross-site {method} refused ({reason})", peer=request.getClientAddress(),
                           method=request.method.decode("ascii", "replace"), reason=reason)
            return http.FORBIDDEN, "cross-site request refused"
        return None

    _cached_second = -1
    _cached_log_time = ""

    def _log_time(self) -> str:
        """The access-log timestamp, formatted once per second (strftime is costly per request)."""
        now = int(self.reactor.seconds())
        if now != self._cached_second:
            self._cached_second = now
            self._cached_log_time = http.datetimeToLogString(now)
        return self._cached_log_time

    def log(self, request: http.Request) -> None:
        """
        One access-log line per response, to twisted.logger namespace
        C{boatwist.access}; the text is in C{log_line}, the parts in fields.
        """
        line = access_log_line(request, self._log_time())
        if self.access_file is not None:
            self.access_file.write(line)
            return
        self._access_log.info(
            "{log_line}",
            log_line=line,
            status=request.code,
            method=_escape_log(request.method),
            path=_escape_log(_redact_query(request.uri).split(b"?", 1)[0]),
            user=getattr(request, "boatwist_user", None),
        )


# ---------------------------------------------------------------- resources


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


class HttpsRedirect(resource.Resource):
    """
    Answers every request with 301 to the same path on https, for
    C{[server] redirect_http}: the plain-HTTP listener serves nothing else.

    The host comes from the Host header (validated; the address the
    connection came in on when it is missing or malformed), the port from
    C{port} (omitted when 443).
    """

    isLeaf = True

    def __init__(self, port: int = 443) -> None:
        super().__init__()
        if not 0 < port < 65536:
            raise ValueError(f"expected a TCP port, got {port}")
        self._port = port

    def location(self, request: server.Request) -> bytes:
        """The https URL C{request} is sent to."""
        split = _split_host(request.getHeader(b"host"))
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
        request.setResponseCode(http.MOVED_PERMANENTLY)
        request.setHeader(b"Location", location)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        href = html.escape(location.decode("ascii"))
        return f'<!DOCTYPE html>\n<html><body><a href="{href}">{href}</a></body></html>\n'.encode("ascii")
