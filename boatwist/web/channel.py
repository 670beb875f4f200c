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
      Idle keep-alive connection            -> closed after idle_timeout s,
                                               unauthenticated_idle s while no
                                               request on it has authenticated
    request line longer than 16 KiB         -> 414, closed, logged
    a header line longer than 16 KiB, or all header lines together
                                            -> 431, closed, logged
    request line + headers complete
      more than one Host header             -> 400, closed (RFC 9112 section 3.2)
      absolute-form target (GET http://host/p) -> served as /p; its authority
                                               is the Host (a different Host
                                               header: 400), RFC 9112 3.2.2
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
    resource
      a method the resource does not implement -> 405 with Allow (JSON under
                                               /api); an unknown method -> 501
    response (every one: 2xx, 3xx, 400, 401, 403, 404, 405, 408, 413, 414,
      417, 431, 5xx)
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

from dataclasses import dataclass, field
import re
from io import BytesIO
from operator import methodcaller
from typing import Callable, Generic, Optional, Sequence, TypeVar, Union, overload
from urllib.parse import unquote_to_bytes as unquote, urlsplit

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import IResource

from boatwist.config import HttpSettings
from boatwist.net.tracking import TrackedConnection, tracked
from boatwist.web.deadlines import Deadlines
from boatwist.web.errors import error_page
from boatwist.web.headers import security_headers, stored_name

__all__ = ["BoatwistChannel", "BoatwistRequest", "ChannelPolicy", "DEFAULT_MIN_BODY_RATE", "Rejection", "Screen"]

#: Bytes per second a request body must at least average (32 kbit/s, slower
#: than any link a device is operated over); see BoatwistChannel.
DEFAULT_MIN_BODY_RATE = 4096.0

_T = TypeVar("_T")

#: The Date header's name as the response's headers store it.
_DATE = stored_name(b"Date")

_HTTP_VERSION = re.compile(rb"^HTTP/1\.[01]$")

#: Methods HTTP defines (RFC 9110 section 9, RFC 5789): a resource that does not
#: implement one answers 405; any other method is not known here at all (501).
KNOWN_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH"})

#: Longest request line, and longest header line, in bytes (Twisted's LineReceiver limit).
MAX_LINE = 16384

#: Local addresses a site's policy keeps to share between connections (see ChannelPolicy.shared_host).
_MAX_HOSTS = 64

#: (status code, message) the channel answers with instead of the resource.
Rejection = tuple[int, str]
Screen = Callable[[http.Request], Optional[Rejection]]


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
        self.content = BytesIO()  # Twisted declares it as starting None

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
        # Private Twisted API (Headers._rawHeaders): see boatwist.web.headers.stored_name.  A new
        # list for each response: Twisted's addRawHeader appends to the one it finds.
        raw = self.responseHeaders._rawHeaders
        for name, value in security_headers(self.path, self.code, self.isSecure()):
            raw[name] = [value]
        # process() set Date from time.time(); the site's reactor is the
        # clock this server is told to use (a Clock in tests), and refusals
        # never went through process() at all.
        site = getattr(getattr(self, "channel", None), "site", None)
        date = getattr(site, "http_date", None)
        raw[_DATE] = [date() if date is not None else http.datetimeToString()]

    def process(self) -> None:
        """
        Twisted's C{server.Request.process} without its first two lines,
        which set C{Server} and C{Date} headers that L{_prepareHeaders}
        sets again on every response (refusals never come through here):
        formatting a date and two header checks per request, for nothing.

        Private Twisted API (C{resource._IEncodingResource}, C{_handleStar}
        through the stock method): the same steps as the stock method.
        """
        if self.path == b"*":
            super().process()  # OPTIONS *: Twisted's own answer
            return
        self.site = site = self.channel.site  # type: ignore[attr-defined]  # the Site sets it, as in the stock method
        self.prepath = []
        self.postpath = list(map(unquote, self.path[1:].split(b"/")))
        try:
            resrc = site.getResourceFor(self)
            if resource._IEncodingResource.providedBy(resrc):
                encoder = resrc.getEncoder(self)
                if encoder is not None:
                    self._encoder = encoder
            self.render(resrc)
        except BaseException:
            self.processingFailed(Failure())

    def render(self, resrc: IResource) -> None:
        """
        Render C{resrc}; a method it does not implement is answered 405 with
        C{Allow} (RFC 9110 section 15.5.6) in the project's error format,
        where Twisted would say "501 Huh?" for any method but GET, HEAD and
        POST.  Resources implement methods as usual (C{render_DELETE} ...),
        so the 405 comes from here, for all of them.  HEAD keeps Twisted's
        own handling (served as GET without the body).
        """
        if self.method == b"HEAD":
            super().render(resrc)
        else:
            super().render(_Allowed(resrc))

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


class _Allowed:
    """A resource's render, with UnsupportedMethod turned into our 405 (or 501 for an unknown method)."""

    def __init__(self, resource: IResource) -> None:
        self._resource = resource

    def render(self, request: server.Request) -> bytes | int:
        try:
            return self._resource.render(request)
        except UnsupportedMethod as e:
            return method_not_allowed(request, e.allowedMethods)


def method_not_allowed(request: server.Request, allowed: Sequence[bytes]) -> bytes:
    """405 with Allow listing C{allowed} (501 for a method HTTP does not define)."""
    method = request.method.decode("ascii", "replace")
    if request.method not in KNOWN_METHODS:
        return error_page(request, http.NOT_IMPLEMENTED, f"the method {method} is not known here")
    allowed = sorted(set(allowed) | ({b"HEAD"} if b"GET" in allowed else set()))
    request.setHeader(b"Allow", b", ".join(allowed))
    names = ", ".join(m.decode("ascii") for m in allowed)
    return error_page(request, http.NOT_ALLOWED, f"{method} is not allowed here (allowed: {names})",
                      allowed=names)


# ------------------------------------------------------------------ channel


class _State:
    """
    What a channel keeps per connection besides Twisted's own attributes, in
    one object with slots (see L{BoatwistChannel._state}): the deadlines,
    the body's progress, the tracked connection, and the local address and
    whether it is TLS, asked of the transport once (neither changes).
    """

    __slots__ = ("abort_call", "body_bytes", "body_call", "closing", "expect_continue", "host", "secure", "tracked")

    def __init__(self) -> None:
        self.tracked: TrackedConnection | None = None
        self.body_call: IDelayedCall | None = None
        self.abort_call: IDelayedCall | None = None
        self.closing = False
        self.body_bytes = 0
        self.expect_continue = False
        self.host: IAddress | None = None
        self.secure: bool | None = None


class _InState(Generic[_T]):
    """A channel attribute kept in its L{_State} (read and set as if it were the channel's own)."""

    def __init__(self, slot: str) -> None:
        self._slot = slot

    @overload
    def __get__(self, channel: None, owner: type) -> "_InState[_T]": ...

    @overload
    def __get__(self, channel: "BoatwistChannel", owner: type) -> _T: ...

    def __get__(self, channel: "BoatwistChannel | None", owner: type) -> "_T | _InState[_T]":
        if channel is None:
            return self
        value: _T = getattr(channel._state, self._slot)
        return value

    def __set__(self, channel: "BoatwistChannel", value: _T) -> None:
        setattr(channel._state, self._slot, value)


@dataclass(frozen=True, slots=True)
class ChannelPolicy:
    """What a site tells each of its channels: one object for all of them."""

    settings: HttpSettings
    screen: Screen | None
    min_body_rate: float
    #: The clock the site's timers run on (the reactor; a Clock in tests): every timer and
    #: deadline of its channels.  Not a WallClockView: a deadline must not move with the wall clock.
    clock: IReactorTime
    #: Local addresses, one object each for all the connections to it (see L{shared_host}).
    _hosts: dict[IAddress, IAddress] = field(default_factory=dict, compare=False, repr=False)
    #: The channels' idle timeouts and header deadlines, each on one timer for all of them
    #: (see L{boatwist.web.deadlines}).
    idle: "Deadlines[BoatwistChannel]" = field(init=False, compare=False, repr=False)
    headers: "Deadlines[BoatwistChannel]" = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # By name, so that a subclass's override is the one called.
        object.__setattr__(self, "idle", Deadlines(self.clock, methodcaller("_idleDeadlinePassed")))
        object.__setattr__(self, "headers", Deadlines(self.clock, methodcaller("_headerDeadlinePassed")))

    def shared_host(self, address: IAddress) -> IAddress:
        """
        C{address}, or an equal one already known: every connection to a
        listener has the same local address, and one address object per
        connection, kept for its life, was ~190 bytes each (issue 13).
        At most C{_MAX_HOSTS} are kept (a host has a few addresses).
        """
        try:
            known = self._hosts.get(address)
        except TypeError:  # an address type that cannot be a key: not shared
            return address
        if known is not None:
            return known
        if len(self._hosts) >= _MAX_HOSTS:
            self._hosts.clear()
        self._hosts[address] = address
        return address


class BoatwistChannel(http.HTTPChannel):
    """
    An L{http.HTTPChannel} with a header deadline, a body deadline, a body
    limit, header-time screening and no C{100 Continue}.

    Everything the channel refuses is answered through a L{BoatwistRequest}
    (so it is logged and carries the security headers) with
    C{Connection: close}, and the connection is then closed: the unread body
    would otherwise have to be read and thrown away.

    Timers use C{self.callLater}: the site's reactor, from the policy (a
    L{Clock} drives them in tests).

    Private Twisted API, because HTTPChannel offers no public hook for any of
    this (checked against Twisted 24.7 to 26.x, the range pyproject pins):
    C{_handlingRequest} and C{_buffer} (is a request being received, is the
    next one pipelined: when the header clock starts), C{_command}, C{_path},
    C{_version} (the request line, for refusing before dispatch and for
    absolute-form targets), C{_respondToBadRequestAndDisconnect} (Twisted's
    bare 400 gets our headers and a log line) and C{_send100Continue} (never
    invite a body before authentication).  A test per behaviour fails if
    Twisted changes one of them.
    """

    _log = Logger()
    #: The site serving this connection (set by L{boatwist.web.site.BoatwistSite.buildProtocol}, as
    #: Twisted's Site does on every channel).
    site: server.Site

    # A channel's instance dict holds Twisted's 23 attributes, and 3 more it
    # sets and deletes for every request.  Once 30 names were ever set on
    # instances of a class, CPython stops sharing the keys between them and
    # each connection's dict grows from ~300 bytes to ~1.6 kB (issue 13:
    # memory per idle connection); and names set in another order by another
    # kind of request unshare them too.  So ours are two, set in __init__:
    # the site's policy and a L{_State} with slots, which the names below
    # read and write.
    _bodyCall: _InState[IDelayedCall | None] = _InState("body_call")
    _abortCall: _InState[IDelayedCall | None] = _InState("abort_call")
    #: True once the channel has decided to end the connection: every
    #: later byte is dropped and no further request is dispatched.
    _closing: _InState[bool] = _InState("closing")
    _bodyBytes: _InState[int] = _InState("body_bytes")
    _expectContinue: _InState[bool] = _InState("expect_continue")
    #: The tracked connection under this channel (None under test transports):
    #: told when a request is being answered and when it is done, so that
    #: the connection tracker knows who should give way to a newcomer.
    _tracked: _InState[TrackedConnection | None] = _InState("tracked")

    def __init__(self, policy: ChannelPolicy) -> None:
        """@param policy: the site's settings, screen and body rate, one object shared by its channels."""
        super().__init__()
        self._policy = policy
        self._state = _State()

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """Timers on the site's reactor (Twisted's HTTPFactory sets a bound method per channel instead)."""
        return self._policy.clock.callLater(period, func)

    # The idle timeout: TimeoutMixin's methods, with the deadline kept in the
    # site's L{Deadlines} instead of a DelayedCall of each channel's own.
    def setTimeout(self, period: float | None) -> float | None:
        """Change the idle timeout (None: none) and restart it; returns the previous one."""
        previous, self.timeOut = self.timeOut, period  # type: ignore[assignment]  # seconds may be a float
        if period is None:
            self._policy.idle.disarm(self)
        else:
            self._policy.idle.arm(self, period)
        return previous

    def resetTimeout(self) -> None:
        """Restart the idle timeout, if one is running (HTTPChannel calls this for every read)."""
        if self.timeOut is not None:
            self._policy.idle.extend(self, self.timeOut)

    def _idleDeadlinePassed(self) -> None:
        self.timeoutConnection()

    @property
    def _settings(self) -> HttpSettings:
        return self._policy.settings

    @property
    def _screen(self) -> Screen | None:
        return self._policy.screen

    @property
    def _minBodyRate(self) -> float:
        return self._policy.min_body_rate

    # Twisted asks the transport (a getsockname system call through the
    # wrappers) for every request; neither end of a connection ever changes.
    # The peer's address is not kept: Twisted makes it from what the
    # transport holds already, in a quarter of a microsecond, and kept it
    # was ~100 bytes for every open connection.
    def getHost(self) -> IAddress:
        state = self._state
        host = state.host
        if host is None:
            host = state.host = self._policy.shared_host(super().getHost())
        return host

    def isSecure(self) -> bool:
        """
        Whether the connection is TLS, found once per connection (an
        interface adaptation each time costs more than the answer is worth;
        a connection does not change its transport).
        """
        state = self._state
        secure = state.secure
        if secure is None:
            secure = state.secure = bool(super().isSecure())
        return secure

    # -- deadlines

    def _armHeaderDeadline(self) -> None:
        """Start the header clock, unless it already runs: bytes never extend it."""
        headers = self._policy.headers
        if not self._closing and not headers.armed(self):
            headers.arm(self, self._settings.header_timeout)

    def _cancel(self, call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()

    def _cancelDeadlines(self) -> None:
        self._policy.headers.disarm(self)
        self._cancel(self._bodyCall)
        self._bodyCall = None

    def _headerDeadlinePassed(self) -> None:
        """The request line and headers did not all arrive in time."""
        if self._closing:
            return
        peer = self.transport.getPeer() if self.transport is not None else None
        if self.requests or self._buffer:
            # Debug: the 408 is in the access log (summarised when there are many).
            self._log.debug("{peer}: request headers incomplete after {timeout} s: 408", peer=peer,
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
            self.transport.abortConnection()  # type: ignore[attr-defined]  # every TCP transport has it

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
        return request

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
            request.args = {}  # Twisted declares it as starting None
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
        self._tracked = tracked(self)
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
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize and self.line_mode:
            self._tooLong("all header lines together are")
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        A request line or header line over C{MAX_LENGTH} (16 KiB): Twisted
        drops the connection with no answer and no log line; this answers
        414 for the request line, 431 for a header line, and logs it.
        """
        if self._closing:
            return
        self._tooLong("a header line is" if self._inHeaders() else "the request line is")

    def _inHeaders(self) -> bool:
        """Whether the request line of the request being received has been read."""
        return hasattr(self, "_command")

    def _tooLong(self, what: str) -> None:
        code = 431 if self._inHeaders() else http.REQUEST_URI_TOO_LONG
        peer = self.transport.getPeer() if self.transport is not None else None
        self._log.info("{peer}: {what} longer than {limit} bytes: {code}", peer=peer, what=what,
                       limit=self.MAX_LENGTH, code=code)
        self._refuse(code, f"{what} longer than {self.MAX_LENGTH} bytes")

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
        self._policy.headers.disarm(self)
        if self._tracked is not None:
            self._tracked.request_started()
        request = self.requests[-1]
        request.parseCookies()
        self.persistent = self.checkPersistence(request, self._version)
        refusal = self._checkTarget(request)
        self._fillRequestLine(request)
        if refusal is None and self._screen is not None:
            refusal = self._screen(request)
        if refusal is None and self.length is not None and self.length > self._settings.max_body:
            refusal = (http.REQUEST_ENTITY_TOO_LARGE, self._too_large())
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

    def _checkTarget(self, request: http.Request) -> Rejection | None:
        """
        One Host header (RFC 9112 section 3.2: more is a 400), and an
        absolute-form request target (C{GET http://host/path}) turned into
        the origin form its resource is found by, its authority standing for
        the Host (section 3.2.2) -- a Host header naming another is a 400.
        The target as sent stays in C{request.boatwist_target} (a Digest
        client signs it).
        """
        hosts = request.requestHeaders.getRawHeaders(b"host") or []
        if len(hosts) > 1:
            self._log.info("{peer}: {n} Host headers: 400", peer=request.getClientAddress(), n=len(hosts))
            return http.BAD_REQUEST, "more than one Host header"
        target = getattr(self, "_path", b"")
        if not target or target.startswith(b"/") or target == b"*":
            return None
        try:
            parts = urlsplit(target.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return http.BAD_REQUEST, "malformed request target"
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
            return http.BAD_REQUEST, "malformed request target"
        authority = parts.netloc.encode("ascii")
        if hosts and hosts[0].strip().lower() != authority.lower():
            self._log.info("{peer}: request target names {authority!r} but Host is {host!r}: 400",
                           peer=request.getClientAddress(), authority=authority, host=hosts[0])
            return http.BAD_REQUEST, "the Host header does not match the request target"
        request.requestHeaders.setRawHeaders(b"host", [authority])
        request.boatwist_target = target  # type: ignore[attr-defined]
        origin = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._path = origin.encode("ascii")
        return None

    def _too_large(self) -> str:
        return f"the request body is larger than {self._settings.max_body} bytes"

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
            self._refuse(http.REQUEST_ENTITY_TOO_LARGE, self._too_large())
            return False
        return True

    def allContentReceived(self) -> None:
        if self._closing:
            return
        if self._bodyCall is not None:
            self._cancel(self._bodyCall)
            self._bodyCall = None
        super().allContentReceived()

    def requestDone(self, request: http.Request) -> None:
        """
        After a response: the tracker hears of the progress, a keep-alive
        connection gets its idle timeout, and if the next request is already
        (partly) here, pipelined, its header clock starts now.
        """
        tracked = self._tracked
        if tracked is not None:
            tracked.request_finished()
        if self.persistent and not self._closing:
            # Until a request on it has authenticated, an idle connection is kept only briefly.
            # Twisted's requestDone restores the idle timeout it saved when the request
            # arrived (private: _savedTimeOut) before it reads a pipelined request: given the
            # one wanted here, it is set once, and not again after a pipelined request began.
            authenticated = tracked is None or tracked.user is not None
            self._savedTimeOut = (self._settings.idle_timeout if authenticated
                                  else self._settings.unauthenticated_idle)
        super().requestDone(request)
        if self.persistent and not self._closing and self.line_mode and not self._handlingRequest and self._buffer:
            self._armHeaderDeadline()

    def _send100Continue(self) -> None:
        """Never: a 100 would invite the body before authentication (belt and braces)."""

    def _respondToBadRequestAndDisconnect(self) -> None:
        """Twisted's bare 400 gets the security headers and a log line like any response."""
        self._refuse(http.BAD_REQUEST, "bad request")

    def timeoutConnection(self) -> None:
        """An idle keep-alive connection is closed (the stock method logs each at info: a flood's worth)."""
        self._log.debug("{peer}: idle, closing", peer=self.transport.getPeer() if self.transport else None)
        self._close()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._closing = True
        self._cancelDeadlines()
        self._cancel(self._abortCall)
        self._abortCall = None
        super().connectionLost(reason)


