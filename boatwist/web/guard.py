"""
The authentication guard in front of everything but C{/healthz}, C{/public}
and C{/logout} (L{PublicRoot}).

twisted.web's C{HTTPAuthSessionWrapper} does the 401 dance (Digest and
Basic) through the process's one cred L{Portal}; the realm hands each
authenticated request the resource tree made for its user
(L{boatwist.web.resources.OperatorRoot}), where admission is decided.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Callable, Optional, Sequence

from twisted.cred import error
from twisted.cred.credentials import Anonymous
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web import util
from twisted.web.guard import HTTPAuthSessionWrapper
from twisted.web.iweb import ICredentialFactory, IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from zope.interface import implementer

from boatwist import __version__
from boatwist.auth.passwords import LOGOUT_USER
from boatwist.auth.portal import no_logout
from boatwist.auth.throttle import TooManyAttempts
from boatwist.web.errors import ErrorResource, unauthorized_page
from boatwist.web.static import StaticFiles, static_dir

__all__ = ["Challenges", "Healthz", "LOGOUT_USER", "LoggedOut", "OperatorGuard", "PublicRoot", "Unauthorized",
           "claimed_user", "guarded_root"]

#: One WWW-Authenticate challenge: (scheme, parameters).
Challenge = tuple[bytes, dict[str, bytes]]
#: What a 401 offers: (request, why the login was refused or None) -> the challenges.
Challenges = Callable[[IRequest, Optional[BaseException]], Sequence[Challenge]]


class Healthz(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return f"ok {__version__}\n".encode()


def claimed_user(header: bytes | None) -> str | None:
    """
    The user name an Authorization header claims -- Basic: the part before
    the first C{:}; Digest: C{username} -- without checking anything else;
    None when there is none or it cannot be read.
    """
    if not header:
        return None
    scheme, _, rest = header.strip().partition(b" ")
    scheme = scheme.lower()
    if scheme == b"basic":
        try:
            decoded = base64.b64decode(rest.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        return decoded.partition(b":")[0].decode("utf-8", "replace")
    if scheme == b"digest":
        for match in _AUTH_PARAM.finditer(rest):
            if match.group(1).lower() == b"username":
                value = match.group(2)
                if value.startswith(b'"'):
                    value = re.sub(rb"\\(.)", rb"\1", value[1:-1])
                return value.decode("utf-8", "replace")
    return None


#: LOGOUT_USER as it appears in a Digest header, and at the start of a Basic token (base64 of
#: "logout" is 8 characters, so "logout:..." always encodes to these first).
_LOGOUT_DIGEST = LOGOUT_USER.encode("ascii")
_LOGOUT_BASIC = base64.b64encode(LOGOUT_USER.encode("ascii"))


def _claims_logout(header: bytes | None) -> bool:
    """Whether the Authorization header claims the user name C{logout} (most never mention it: no parsing)."""
    if not header:
        return False
    if _LOGOUT_DIGEST not in header and _LOGOUT_BASIC not in header and b"\\" not in header:
        return False  # (a backslash: a quoted-pair could spell it, l\ogout)
    return claimed_user(header) == LOGOUT_USER


#: One auth-param of a credentials header (RFC 9110 11.2): name = token or quoted string.
_AUTH_PARAM = re.compile(rb'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*(?:,|$)')


class LoggedOut(Resource):
    """
    C{/logout} answered to the user name C{logout}: 200, and the browser
    keeps C{logout} as this realm's credentials instead of the operator's.
    Not a login: nothing is checked, counted, logged or seated.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"logged out\n"


class PublicRoot(Resource):
    """
    What is answered before authentication, and the guard for the rest:

      - C{/healthz}: "ok" and the version;
      - C{/public/...}: the style, script and icon of the pages outside the
        console (401, 503) -- a person who is not logged in, or was refused
        a seat, gets them without a login and without a seat;
      - C{/logout}: the console's way out of HTTP authentication, which
        works in Chromium and Firefox alike (tests/browser/README.md b.): an
        XHR with the user name C{logout} gets 200 (L{LoggedOut}), anything
        else the usual 401 with every challenge -- never a login attempt;
      - everything else: the guard (its 401 explained by a page: L{Unauthorized}).
        A request that claims the user name C{logout} (Firefox sends it on
        the next page after logging out) gets the usual 401 without a login
        attempt: it is not a password guess and is not counted or logged.
    """

    def __init__(self, guard: HTTPAuthSessionWrapper, public: IResource | None = None) -> None:
        super().__init__()
        self.guard = guard
        self.healthz = Healthz()
        self.public = public
        self.logged_out = LoggedOut()

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        if path == b"healthz" and not request.postpath:
            return self.healthz
        if path == b"public" and self.public is not None:
            return self.public
        if _claims_logout(request.getHeader(b"authorization")):
            if path == b"logout" and not request.postpath:
                return self.logged_out
            request.requestHeaders.removeHeader(b"authorization")
        elif path == b"logout" and not request.postpath:
            # Whoever it is, right or wrong: the challenge, so that the XHR sends its credentials.
            request.requestHeaders.removeHeader(b"authorization")
        # Hand the whole path to the guard, which resolves it for the user.
        unconsume(request)
        return self.guard


def unconsume(request: Request) -> None:
    """Put the segment traversal just consumed back in front of postpath (it is resolved again below)."""
    assert request.prepath is not None and request.postpath is not None  # set by Request.process
    request.postpath.insert(0, request.prepath.pop())


@implementer(IResource)
class _LoggedIn:
    """
    The avatar of one request, calling the realm's C{logout} when that
    request finishes: what the stock guard does by building a new
    C{proxyForInterface} class on every request (about 170 us each time,
    half the cost of a whole request on a small device).
    """

    __slots__ = ("resource", "_logout")

    def __init__(self, resource: IResource, logout: Callable[[], None]) -> None:
        self.resource = resource
        self._logout = logout

    @property
    def isLeaf(self) -> bool:
        return bool(self.resource.isLeaf)

    def getChildWithDefault(self, name: bytes, request: Request) -> "_LoggedIn":
        return _LoggedIn(self.resource.getChildWithDefault(name, request), self._logout)

    def putChild(self, path: bytes, child: IResource) -> None:
        self.resource.putChild(path, child)

    def render(self, request: Request) -> bytes | int:
        logout = self._logout
        request.notifyFinish().addBoth(lambda _: logout())
        return self.resource.render(request)


def _format(scheme: bytes, params: dict[str, bytes]) -> bytes:
    """A WWW-Authenticate value, every parameter quoted (as twisted.web.guard does)."""
    def quote(value: bytes) -> bytes:
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'

    return scheme + b" " + b", ".join(name.encode("ascii") + b"=" + quote(value) for name, value in params.items())


@implementer(IResource)
class Unauthorized:
    """
    The 401: one WWW-Authenticate per challenge C{challenges} gives for this
    request and this refusal (so a user who cannot use what their client
    chose is offered what they can), and C{Retry-After} when the refusal
    says when to come back -- any exception with a numeric C{retry_after}
    attribute (a throttled login), in seconds.
    """

    isLeaf = True

    def __init__(self, challenges: Challenges, refusal: BaseException | None) -> None:
        self._challenges = challenges
        self._refusal = refusal

    def render(self, request: Request) -> bytes:
        request.setResponseCode(401)
        for scheme, params in self._challenges(request, self._refusal):
            request.responseHeaders.addRawHeader(b"www-authenticate", _format(scheme, params))
        retry_after = getattr(self._refusal, "retry_after", None)
        if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool) and retry_after >= 0:
            request.setHeader(b"retry-after", b"%d" % (max(1, math.ceil(retry_after)),))
        if request.method == b"HEAD":
            return b""
        # What to do, in words (the same for every user name); JSON under /api.
        return unauthorized_page(request)

    def getChildWithDefault(self, path: bytes, request: Request) -> "Unauthorized":
        return self

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError()


def _from_factories(factories: Sequence[ICredentialFactory]) -> Challenges:
    """What twisted.web.guard offers: each factory's challenge, whatever the refusal."""
    def challenges(request: IRequest, refusal: BaseException | None) -> list[Challenge]:
        out = []
        for factory in factories:
            params = factory.getChallenge(request)
            out.append((factory.scheme, {k: v.encode("ascii") if isinstance(v, str) else v
                                         for k, v in params.items()}))
        return out

    return challenges


class TooManyAttemptsResource(ErrorResource):
    """
    429 with Retry-After: the user name's checks are taken (boatwist.auth.throttle).
    The password was not checked, and the answer is the same for every name.
    """

    def __init__(self, retry_after: int) -> None:
        super().__init__(429, f"too many login attempts for this user name; try again in {retry_after} s",
                         retry_after=retry_after)
        self.retry_after = retry_after

    def render(self, request: Request) -> bytes:
        request.setHeader(b"retry-after", str(self.retry_after).encode())
        return super().render(request)


class OperatorGuard(HTTPAuthSessionWrapper):
    """
    HTTPAuthSessionWrapper with a wrapper class made once, not per request,
    and 401s that can depend on why the login was refused (C{challenges}:
    by default every factory's challenge, as the stock guard), and a 429
    with Retry-After for an attempt the throttle refused unchecked.
    """

    def __init__(self, portal: Portal, credentialFactories: Sequence[ICredentialFactory],
                 challenges: Challenges | None = None) -> None:
        super().__init__(portal, credentialFactories)
        self._challenges = challenges or _from_factories(credentialFactories)

    # Private Twisted API (HTTPAuthSessionWrapper._authorizedResource and
    # _loginSucceeded): the stock guard renders every 401 alike and drops
    # the refusal; these are the hooks between the header, the login and
    # the avatar.  Same steps as the stock method otherwise.
    def _authorizedResource(self, request: Request) -> IResource:
        header = request.getHeader(b"authorization")
        if not header:
            return util.DeferredResource(self._loginFor(Anonymous(), request))
        factory, response = self._selectParseHeader(header)
        if factory is None:
            return Unauthorized(self._challenges, None)
        try:
            credentials = factory.decode(response, request)
        except error.LoginFailed as e:
            return Unauthorized(self._challenges, e)
        except BaseException:
            self._log.failure("Unexpected failure from credentials factory")
            raise
        login_now = getattr(self._portal, "login_now", None)
        if login_now is None:
            return _resource_now(self._loginFor(credentials, request))
        # A login decided at once (a browser's Digest response on a nonce that logged in
        # before) goes straight on to traversal: no Deferred made and fired for it.
        try:
            login = login_now(credentials, None, IResource)
        except Exception:
            return self._refused(Failure())
        if isinstance(login, Deferred):
            return _resource_now(login.addCallbacks(self._loginSucceeded, self._refused))
        return self._loginSucceeded(login)

    def _loginFor(self, credentials: object, request: Request) -> "Deferred[IResource]":
        d = self._portal.login(credentials, None, IResource)
        return d.addCallbacks(self._loginSucceeded, self._refused)

    def _refused(self, failure: Failure) -> IResource:
        if failure.check(TooManyAttempts):
            assert isinstance(failure.value, TooManyAttempts)
            return TooManyAttemptsResource(failure.value.retry_after)
        if failure.check(error.Unauthorized, error.LoginFailed):
            return Unauthorized(self._challenges, failure.value)
        return self._loginFailed(failure)

    def _loginSucceeded(self, args: tuple[object, IResource, Callable[[], None]]) -> IResource:
        _interface, avatar, logout = args
        if logout is no_logout:
            return avatar  # nothing to call when the request ends: no wrapper around every child
        return _LoggedIn(avatar, logout)


def _resource_now(d: "Deferred[IResource]") -> IResource:
    """
    The resource C{d} has already fired with -- a login answered at once
    (a session known right, a Digest response checked in place) goes straight
    on to traversal -- else a L{util.DeferredResource} that waits for it (a
    bcrypt check in its thread, a throttled turn, a failure delay, an error).
    """
    seen: list[object] = []

    def note(result: object) -> object:
        seen.append(result)
        return result

    d.addBoth(note)
    if seen and not isinstance(seen[0], Failure):
        return seen[0]  # type: ignore[return-value]  # _loginFor's callbacks return resources
    return util.DeferredResource(d)


def guarded_root(portal: Portal, credential_factories: list[ICredentialFactory],
                 challenges: Challenges | None = None) -> IResource:
    return PublicRoot(OperatorGuard(portal, credential_factories, challenges),
                      StaticFiles(str(static_dir() / "public")))
