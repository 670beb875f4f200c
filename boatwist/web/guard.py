"""
The authentication guard in front of everything but C{/healthz}.

twisted.web's C{HTTPAuthSessionWrapper} does the 401 dance (Digest and
Basic) through the process's one cred L{Portal}; the realm hands each
authenticated request the resource tree made for its user
(L{boatwist.web.resources.OperatorRoot}), where admission is decided.
"""

from __future__ import annotations

from typing import Callable

from twisted.cred.portal import Portal
from twisted.python.failure import Failure
from twisted.web.guard import HTTPAuthSessionWrapper
from twisted.web.iweb import ICredentialFactory
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from zope.interface import implementer

from boatwist import __version__
from boatwist.auth.throttle import TooManyAttempts
from boatwist.web.errors import ErrorResource

__all__ = ["Healthz", "OperatorGuard", "PublicRoot", "guarded_root"]


class Healthz(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return f"ok {__version__}\n".encode()


class PublicRoot(Resource):
    """Sends /healthz past authentication and everything else through the guard."""

    def __init__(self, guard: HTTPAuthSessionWrapper) -> None:
        super().__init__()
        self.guard = guard
        self.healthz = Healthz()

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        if path == b"healthz" and not request.postpath:
            return self.healthz
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
    and a 429 with Retry-After for an attempt the throttle refused unchecked.
    """

    # Private Twisted API, like _loginSucceeded below: where a failed login becomes a resource.
    def _loginFailed(self, result: Failure) -> IResource:
        if result.check(TooManyAttempts):
            assert isinstance(result.value, TooManyAttempts)
            return TooManyAttemptsResource(result.value.retry_after)
        return super()._loginFailed(result)

    # Private Twisted API (HTTPAuthSessionWrapper._loginSucceeded): the one
    # hook between a successful login and the avatar; overriding it is the
    # only way to avoid the per-request class the stock one builds.
    def _loginSucceeded(self, args: tuple[object, IResource, Callable[[], None]]) -> _LoggedIn:
        _interface, avatar, logout = args
        return _LoggedIn(avatar, logout)


def guarded_root(portal: Portal, credential_factories: list[ICredentialFactory]) -> IResource:
    return PublicRoot(OperatorGuard(portal, credential_factories))
