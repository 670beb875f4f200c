"""
The L{server.Site} every boatwist HTTP(S) listener serves: our channel and
request (L{boatwist.web.channel}: deadlines, limits, screening), the access
log, and HTTP/1.1 only.

HTTP/2 is not offered over TLS (ALPN): the deadlines and limits live in the
HTTP/1.1 channel, and twisted's H2Connection would bypass them.
"""

from __future__ import annotations

from typing import Iterable

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger
from twisted.web import http, resource, server

from boatwist.clock import WallClockView
from boatwist.config import HttpSettings
from boatwist.logs import NamespacedLogger, SourceSummary
from boatwist.web.accesslog import AccessLogFile, access_log_line, escape_log, redact_query
from boatwist.web.channel import DEFAULT_MIN_BODY_RATE, BoatwistChannel, BoatwistRequest, ChannelPolicy, Rejection
from boatwist.web.headers import SAFE_METHODS, cross_site_reason, host_allowed, parse_host_rule

__all__ = ["BoatwistSite"]

#: Refusals whose access lines are summarised past a rate: 429 and 503.  A
#: tuple bound once (each twisted.web.http attribute goes through a
#: deprecation proxy, a few microseconds on every request).
_REFUSED_CODES = (429, http.SERVICE_UNAVAILABLE)


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
    @param summary: where the access lines of unauthenticated requests and
        of refusals (429, 503) go past a rate: counted into a summary line
        per source and second instead of written one by one.  None: every
        line is written.
    @param access_log: the access log's file; None: the lines go through
        twisted.logger (namespace C{boatwist.access}), unless C{log_access}
        is False (C{[http] access_log = off}): then they go nowhere.
    """

    requestFactory = BoatwistRequest
    _log = Logger()
    _access_log = NamespacedLogger(namespace="boatwist.access")

    def __init__(
        self,
        resource: resource.IResource,
        settings: HttpSettings,
        *,
        reactor: IReactorTime | None = None,
        secure_hosts: Iterable[str] | None = None,
        min_body_rate: float = DEFAULT_MIN_BODY_RATE,
        access_log: AccessLogFile | None = None,
        log_access: bool = True,
        summary: SourceSummary | None = None,
    ) -> None:
        super().__init__(resource, timeout=settings.idle_timeout, reactor=reactor)
        self.settings = settings
        self.summary = summary
        #: When set, access lines go to this file instead of twisted.logger.
        self.access_file = access_log
        self.log_access = log_access
        self._secure_hosts = tuple(parse_host_rule(rule) for rule in secure_hosts or ())
        if min_body_rate <= 0:
            raise ValueError("min_body_rate must be positive")
        self._min_body_rate = min_body_rate
        #: What every channel of this site is told (made at the first connection: a subclass may
        #: still replace screen until then).
        self._policy: ChannelPolicy | None = None

    def buildProtocol(self, addr: IAddress | None) -> BoatwistChannel:  # type: ignore[override]
        """
        Our channel itself.  Twisted's C{HTTPFactory.buildProtocol} wraps each
        channel in a C{_GenericHTTPChannelProtocol}, which is there to switch
        to HTTP/2 after ALPN -- never offered here -- and gives each channel a
        C{callLater} of its own: an object and a bound method more for every
        open connection (issue 13: memory per idle connection).  The
        attributes Site and HTTPFactory set on "the protocol" are set here on
        the channel; its timers run on the site's reactor through the policy.
        """
        policy = self._policy
        if policy is None:
            # The deadlines' clock is the one timers run on: with a WallClockView (the Date header's
            # wall clock) that is the reactor behind it.
            timers = self.reactor.timers if isinstance(self.reactor, WallClockView) else self.reactor
            policy = self._policy = ChannelPolicy(self.settings, self.screen, self._min_body_rate, timers)
        channel = BoatwistChannel(policy)
        channel.factory = self
        channel.site = self
        channel.requestFactory = self.requestFactory
        channel.timeOut = self.timeOut  # type: ignore[assignment]  # TimeoutMixin says int; seconds may be a float
        return channel

    def acceptableProtocols(self) -> list[bytes]:
        """HTTP/1.1 only: H2Connection would bypass every limit in BoatwistChannel."""
        return [b"http/1.1"]

    def startFactory(self) -> None:
        """
        Nothing to open: the access log goes through twisted.logger, so
        HTTPFactory's log file and its once-a-second date timer (a wake-up
        every second on an idle device) are not started.
        """

    def screen(self, request: http.Request) -> Rejection | None:
        """
        Decide from the headers alone whether to refuse C{request} before its
        body is read, before authentication, before any resource: a foreign
        Host (421) or a cross-site state-changing request (403).
        """
        # Debug: the access log has the refusal already (and summarises a flood of them).
        if self._secure_hosts and not host_allowed(request.getHeader(b"host"), self._secure_hosts):
            self._log.debug("{peer}: Host {host!r} is not served here: 421", peer=request.getClientAddress(),
                            host=request.getHeader(b"host"))
            return 421, "this server does not answer to that host name"
        if request.method in SAFE_METHODS:
            return None  # cannot change state: not judged (and TLS-ness need not be asked)
        reason = cross_site_reason(request.method, request.requestHeaders, request.isSecure())
        if reason is not None:
            self._log.debug("{peer}: cross-site {method} refused ({reason})", peer=request.getClientAddress(),
                            method=request.method.decode("ascii", "replace"), reason=reason)
            return http.FORBIDDEN, "cross-site request refused"
        return None

    # The Date header and the access log's timestamp, formatted once per second of the
    # site's reactor (strftime is costly per request).
    _second = -1
    _date = b""
    _log_time_text = ""

    def _this_second(self) -> None:
        now = int(self.reactor.seconds())
        if now != self._second:
            self._second = now
            self._date = http.datetimeToString(now)
            self._log_time_text = http.datetimeToLogString(now)

    def http_date(self) -> bytes:
        """The Date header's value from the site's reactor."""
        self._this_second()
        return self._date

    def _log_time(self) -> str:
        """The access-log timestamp."""
        self._this_second()
        return self._log_time_text

    def log(self, request: http.Request) -> None:
        """
        One access-log line per response: to the access log's file, or to
        twisted.logger namespace C{boatwist.access} (the text in C{log_line},
        the parts in fields).
        """
        if not self.log_access:
            return
        if self.summary is not None and (getattr(request, "boatwist_user", None) is None
                                         or request.code in _REFUSED_CODES):
            address = request.getClientAddress()
            source = getattr(address, "host", None) or "-"
            if not self.summary.admit(source, str(request.code)):
                return
        line = access_log_line(request, self._log_time())
        if self.access_file is not None:
            self.access_file.write(line)
            return
        self._access_log.info(
            "{log_line}",
            log_line=line,
            status=request.code,
            method=escape_log(request.method),
            path=escape_log(redact_query(request.uri).split(b"?", 1)[0]),
            user=getattr(request, "boatwist_user", None),
        )


