"""
The realm, the credential factories and the portal: how the HTTP guard
and the chat port reach the checkers.

One L{twisted.cred.portal.Portal} and one set of credential factories exist
for the process (a Digest factory signs its nonces with a private key; one
per request would break Digest).  ``HTTPAuthSessionWrapper`` logs in on
every request and calls ``logout`` after each, so nothing here counts
sessions: presence does (L{boatwist.presence}).
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, cast

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import LoginFailed
from twisted.cred.credentials import ICredentials, IUsernamePassword, UsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import ICredentialFactory, IRequest
from twisted.web.resource import IResource
from zope.interface import Interface, implementer

from boatwist.auth.checkers import BcryptChecker, ThrottledChecker
from boatwist.auth.digest import AvatarId, DigestAuthority, DigestChecker
from boatwist.auth.offer import ChallengeOffer
from boatwist.auth.passwords import UserDatabase
from boatwist.auth.throttle import LoginThrottle
from boatwist.config import AuthSettings
from boatwist.logs import SourceSummary

if TYPE_CHECKING:
    from boatwist.auth.digest import DigestChallengeFactory, DigestCredentials

__all__ = [
    "Authentication", "BasicFactory", "OperatorRealm", "PeerAwareFactory", "PeerCredentials", "basic_factory",
    "build_authentication", "digest_factories", "digest_order", "no_logout", "peer_of",
]


def peer_of(request: IRequest) -> str:
    """The source address of C{request}, for throttling and logs."""
    peer = request.getClientAddress()
    return getattr(peer, "host", "") or "unknown"


@implementer(ICredentialFactory)
class PeerAwareFactory:
    """
    Wraps a credential factory so that the credentials it decodes carry the
    peer's address: a cred checker never sees the request, yet brute-force
    throttling and the login log need the address.
    """

    def __init__(self, inner: ICredentialFactory) -> None:
        self.inner = inner
        self.scheme = inner.scheme

    def getChallenge(self, request: IRequest) -> dict[str, bytes | str]:
        return self.inner.getChallenge(request)

    def decode(self, response: bytes, request: IRequest) -> ICredentials:
        creds = self.inner.decode(response, request)
        creds.peer_host = peer_of(request)
        return creds


def no_logout() -> None:
    """
    The logout of every avatar L{OperatorRealm} hands out: presence counts
    sessions, not the realm.  The guard recognises it and skips the per-request
    wrapper that would call it.
    """


@implementer(IRealm)
class OperatorRealm:
    """Hands each authenticated user the resource tree made for them."""

    def __init__(self, avatar_factory: Callable[[str], IResource]) -> None:
        self._avatar_factory = avatar_factory

    def requestAvatar(self, avatarId: AvatarId, mind: object,
                      *interfaces: type[Interface]) -> tuple[type[Interface], IResource, Callable[[], None]]:
        if IResource not in interfaces or not isinstance(avatarId, bytes):
            raise NotImplementedError("only IResource avatars of named users exist")
        user = avatarId.decode("utf-8")
        return IResource, self._avatar_factory(user), no_logout


#: What a login gives the guard: the interface, the avatar, and what to call at logout.
Login = tuple[type[Interface], IResource, Callable[[], None]]


class OperatorPortal(Portal):
    """
    A cred L{Portal} that can also answer a login in place (L{login_now}):
    the browser's every request is a login, and most are decided at once.
    """

    realm: OperatorRealm

    def __init__(self, realm: OperatorRealm, checkers: list[ThrottledChecker]) -> None:
        super().__init__(realm, checkers)
        self.realm = realm

    def login_now(self, credentials: ICredentials, mind: object,
                  *interfaces: type[Interface]) -> "Login | Deferred[Login]":
        """
        L{Portal.login}, with a login its checker decided at once
        (L{ThrottledChecker.answer}) answered as the login itself, not a
        fired Deferred.
        """
        for interface, checker in self.checkers.items():
            if interface.providedBy(credentials) and isinstance(checker, ThrottledChecker):
                answer = checker.answer(credentials)
                if isinstance(answer, Deferred):
                    return answer.addCallback(self.realm.requestAvatar, mind, *interfaces)
                return self.realm.requestAvatar(answer, mind, *interfaces)
        # No checker of ours for these credentials: the stock answer (UnhandledCredentials).
        return cast("Deferred[Login]", self.login(credentials, mind, *interfaces))


@implementer(ICredentialFactory)
class BasicFactory:
    """
    HTTP Basic (RFC 7617): what twisted.web.guard's BasicCredentialFactory
    does, decoding straight into L{PeerCredentials} with the peer's address
    (one object per request, where the stock factory and L{PeerAwareFactory}
    make two and go through twisted.cred's deprecation proxy).
    """

    scheme = b"basic"

    def __init__(self, realm: str) -> None:
        self.realm = realm.encode("utf-8")

    def getChallenge(self, request: IRequest) -> dict[str, bytes]:
        return {"realm": self.realm}

    def decode(self, response: bytes, request: IRequest) -> "PeerCredentials":
        try:
            decoded = binascii.a2b_base64(response + b"===")
        except binascii.Error:
            raise LoginFailed("Invalid credentials") from None
        user, colon, password = decoded.partition(b":")
        if not colon:
            raise LoginFailed("Invalid credentials")
        return PeerCredentials(user, password, peer_of(request), "http")


def basic_factory(realm: str) -> BasicFactory:
    return BasicFactory(realm)



#: User agents known to take the first Digest challenge and to know no
#: SHA-256: Python's urllib before 3.14.
_MD5_ONLY_AGENTS = re.compile(rb"^Python-urllib/3\.(?:[0-9]|1[0-3])(?:\D|$)")


def digest_order(request: IRequest, preferred: tuple[str, ...]) -> tuple[str, ...]:
    """
    The Digest algorithms to offer C{request}, best first.

    Browsers and curl take the first challenge they understand, so the
    stronger algorithm goes first -- except for clients known to read only
    the first challenge and to fail on SHA-256 (urllib before Python 3.14),
    which would otherwise be locked out.
    """
    agent = request.getHeader(b"user-agent") or b""
    if isinstance(agent, str):
        agent = agent.encode("latin-1", "replace")
    if "MD5" in preferred and _MD5_ONLY_AGENTS.match(agent):
        return ("MD5",) + tuple(a for a in preferred if a != "MD5")
    return preferred


@implementer(ICredentialFactory)
class OrderedDigestFactory:
    """
    One of the Digest challenge slots of the guard.  The guard sends one
    WWW-Authenticate header per factory, in list order; slot N answers with
    the N-th algorithm L{digest_order} picks for this request, so the order
    can follow the client.  All slots decode alike (the Digest authority
    handles every algorithm it issued).
    """

    scheme = b"digest"

    def __init__(self, by_algorithm: dict[str, DigestChallengeFactory], slot: int, preferred: tuple[str, ...]) -> None:
        self._by_algorithm = by_algorithm
        self._slot = slot
        self._preferred = preferred

    def getChallenge(self, request: IRequest) -> dict[str, bytes]:
        algorithm = digest_order(request, self._preferred)[self._slot]
        return self._by_algorithm[algorithm].getChallenge(request)

    def decode(self, response: bytes, request: IRequest) -> DigestCredentials:
        return next(iter(self._by_algorithm.values())).decode(response, request)


def digest_factories(authority: DigestAuthority, preferred: tuple[str, ...]) -> list[PeerAwareFactory]:
    """The Digest credential factories for the guard, one per offered algorithm."""
    from boatwist.auth.digest import DigestChallengeFactory

    by_algorithm = {algorithm: DigestChallengeFactory(authority, algorithm) for algorithm in preferred}
    return [PeerAwareFactory(OrderedDigestFactory(by_algorithm, slot, preferred)) for slot in range(len(preferred))]




#: Runs a blocking function off the reactor thread (bcrypt), returning a Deferred.
ThreadRun = Callable[..., "Deferred[Any]"]
#: Writes one audit entry: (kind, user, address, detail).
Audit = Callable[[str, str, str, str], None]


@dataclass(frozen=True)
class Authentication:
    """What the front ends use to log people in."""

    #: For the HTTP guard: the schemes of C{[auth] schemes}.
    portal: Portal
    factories: list[ICredentialFactory]
    #: User name and password (the chat port): bcrypt, throttled and logged like HTTP.
    passwords: ThrottledChecker
    #: What each 401 offers (boatwist.auth.offer); the guard asks it.
    offer: ChallengeOffer

    def check_password(self, user: str, password: str, peer: str, via: str) -> Deferred[str]:
        """The user name when C{password} is right; fails with UnauthorizedLogin otherwise."""
        credentials = PeerCredentials(user.encode("utf-8"), password.encode("utf-8"), peer, via)
        d = self.passwords.requestAvatarId(credentials)
        return d.addCallback(lambda avatar: avatar.decode("utf-8") if isinstance(avatar, bytes) else str(avatar))


def _generation(database: UserDatabase) -> int:
    """The users files' version, after re-reading them if they changed."""
    database.reload_if_changed()
    return database.version


@implementer(IUsernamePassword)
class PeerCredentials(UsernamePassword):
    """A user name and password, with where they came from (throttling, the login log)."""

    def __init__(self, username: bytes, password: bytes, peer_host: str, via: str) -> None:
        super().__init__(username, password)
        self.peer_host = peer_host
        self.via = via


def build_authentication(settings: AuthSettings, database: UserDatabase, clock: IReactorTime,
                         monotonic: Callable[[], float], run_in_thread: ThreadRun, audit: Audit,
                         avatar: Callable[[str], IResource], nonce_key: bytes | None = None,
                         summary: SourceSummary | None = None) -> Authentication:
    """
    One throttle, one Digest authority, one bcrypt checker (with its cache)
    for the process; the portal offers the schemes C{settings} names.

    C{nonce_key}: the key Digest nonces are signed with, kept across
    restarts (L{boatwist.auth.digest.persistent_key}); nonces issued before
    now are then answered ``stale=true``, so open browsers re-authenticate
    without asking.  None: a key of this process only.
    """
    throttle = LoginThrottle(clock, monotonic, max_guesses=settings.max_guesses, max_wait=settings.max_wait,
                             max_failures=settings.max_failures, window=settings.failure_window)

    def throttled(inner: ICredentialsChecker) -> ThrottledChecker:
        return ThrottledChecker(inner, throttle, clock, audit, failure_delay=settings.failure_delay,
                                generation=lambda: _generation(database), monotonic=monotonic,
                                remember=settings.failure_window, summary=summary)

    checkers: list[ThrottledChecker] = []
    factories: list[ICredentialFactory] = []
    authority = None
    if "digest" in settings.schemes:
        authority = DigestAuthority(settings.realm, clock, settings.nonce_lifetime, secret=nonce_key,
                                    algorithms=settings.digest_algorithms,
                                    forget_before=clock.seconds() if nonce_key is not None else None)
        factories += digest_factories(authority, settings.digest_algorithms)
        checkers.append(throttled(DigestChecker(database, settings.realm)))
    # The chat port checks the same bcrypt users, through the same throttle.
    passwords = throttled(BcryptChecker(database, run_in_thread, monotonic, settings.cache_ttl))
    if "basic" in settings.schemes:
        factories.append(basic_factory(settings.realm))
        checkers.append(passwords)
    offer = ChallengeOffer(database, settings.realm, settings.digest_algorithms, authority,
                           "basic" in settings.schemes, order=digest_order)
    return Authentication(OperatorPortal(OperatorRealm(avatar), checkers), factories, passwords, offer)
