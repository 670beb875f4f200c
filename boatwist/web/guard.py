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
import re
from typing import Callable

from twisted.cred.portal import Portal
from twisted.web.guard import HTTPAuthSessionWrapper
from twisted.web.iweb import ICredentialFactory
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from twisted.web.util import DeferredResource
from zope.interface import implementer

from boatwist import __version__
from boatwist.auth.passwords import LOGOUT_USER
from boatwist.web.errors import unauthorized_page
from boatwist.web.static import StaticFiles, static_dir

__all__ = ["LOGOUT_USER", "Explained", "Healthz", "LoggedOut", "OperatorGuard", "PublicRoot", "claimed_user",
           "guarded_root"]


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
      - everything else: the guard, its 401 explained by a page (L{Explained}).
        A request that claims the user name C{logout} (Firefox sends it on
        the next page after logging out) gets the usual 401 without a login
        attempt: it is not a password guess and is not counted or logged.
    """

    def __init__(self, guard: HTTPAuthSessionWrapper, public: IResource | None = None) -> None:
        super().__init__()
        self.guard = guard
        self.explained = Explained(guard)
        self.healthz = Healthz()
        self.public = public
        self.logged_out = LoggedOut()

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        if path == b"healthz" and not request.postpath:
            return self.healthz
        if path == b"public" and self.public is not None:
            return self.public
        if claimed_user(request.getHeader(b"authorization")) == LOGOUT_USER:
            if path == b"logout" and not request.postpath:
                return self.logged_out
            request.requestHeaders.removeHeader(b"authorization")
        elif path == b"logout" and not request.postpath:
            # Whoever it is, right or wrong: the challenge, so that the XHR sends its credentials.
            request.requestHeaders.removeHeader(b"authorization")
        # Hand the whole path to the guard, which resolves it for the user.
        unconsume(request)
        return self.explained


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


@implementer(IResource)
class Explained:
    """
    The guard, with every 401 it answers explained: the body is
    L{boatwist.web.errors.unauthorized_page} (what to do; when to try again
    if the answer says so with Retry-After) instead of the bare word.  The
    status, the challenges and every other answer are the guard's own.
    """

    isLeaf = False

    def __init__(self, guard: HTTPAuthSessionWrapper) -> None:
        self.guard = guard

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        found = self.guard.getChildWithDefault(path, request)
        if isinstance(found, DeferredResource):
            # The login is being checked: what it resolves to is explained when it is known.
            return DeferredResource(found.d.addCallback(_explain))
        return _explain(found)

    def render(self, request: Request) -> bytes | int:
        return self.guard.render(request)

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError()


def _explain(resource: IResource) -> IResource:
    return resource if isinstance(resource, _LoggedIn) else _Explain401(resource)


@implementer(IResource)
class _Explain401:
    """A refusal leaf of the guard, rendered as it is but with a 401's body replaced by the page."""

    isLeaf = True

    def __init__(self, inner: IResource) -> None:
        self.inner = inner

    def render(self, request: Request) -> bytes | int:
        body = self.inner.render(request)
        if request.code == 401 and isinstance(body, bytes) and request.method != b"HEAD":
            return unauthorized_page(request)
        return body

    def getChildWithDefault(self, path: bytes, request: Request) -> "_Explain401":
        return self

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError()


class OperatorGuard(HTTPAuthSessionWrapper):
    """HTTPAuthSessionWrapper with a wrapper class made once, not per request."""

    # Private Twisted API (HTTPAuthSessionWrapper._loginSucceeded): the one
    # hook between a successful login and the avatar; overriding it is the
    # only way to avoid the per-request class the stock one builds.
    def _loginSucceeded(self, args: tuple[object, IResource, Callable[[], None]]) -> _LoggedIn:
        _interface, avatar, logout = args
        return _LoggedIn(avatar, logout)


def guarded_root(portal: Portal, credential_factories: list[ICredentialFactory]) -> IResource:
    return PublicRoot(OperatorGuard(portal, credential_factories), StaticFiles(str(static_dir() / "public")))
