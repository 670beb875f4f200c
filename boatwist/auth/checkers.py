"""
Credential checkers: bcrypt for Basic (and the chat port), and the throttle
with the login log in front of every checker.

Basic credentials are checked against bcrypt hashes.  bcrypt costs a few
hundred milliseconds by design, so checking it on every request would cap
the server at a handful of requests a second.  A verified credential is
therefore remembered for ``cache_ttl`` seconds, keyed by an HMAC (with a key
that lives only in this process) of user and password -- neither the
password nor a hash that could be attacked offline sits in memory -- and the
cache is dropped whenever the users file changes.  bcrypt runs off the
reactor thread, and concurrent checks of the same credential share one run.

Every attempt goes through L{LoginThrottle}; every failure, and every
success that was not served from the cache, is logged with the source
address -- never with the password.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import Counter, OrderedDict
from typing import Any, Callable

import bcrypt
from twisted.cred import credentials as ccred
from twisted.cred import error as cerror
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from boatwist.auth.digest import AvatarId
from boatwist.auth.hashes import digest_hex
from boatwist.auth.refusals import NoUsableHash, NotAGuess
from boatwist.logs import NamespacedLogger
from boatwist.auth.passwords import UserDatabase
from boatwist.auth.throttle import LoginThrottle

#: Most verified credentials remembered at once.
CACHE_SIZE = 1024

#: Runs a blocking function off the reactor thread, returning a Deferred.
Runner = Callable[..., "defer.Deferred[Any]"]


def credential_key(secret: bytes, user: bytes, password: bytes) -> bytes:
    """What stands for a (user, password) pair in memory: an HMAC under a key of this process."""
    return hmac.new(secret, user + b"\0" + password, hashlib.sha256).digest()


class _CredentialCache:
    """Verified (user, password) pairs, keyed by HMAC, with a TTL."""

    def __init__(self, monotonic: Callable[[], float], ttl: float) -> None:
        self._key = secrets.token_bytes(32)
        self._now = monotonic
        self._ttl = ttl
        self._entries: OrderedDict[bytes, float] = OrderedDict()

    def key(self, user: bytes, password: bytes) -> bytes:
        return credential_key(self._key, user, password)

    def __contains__(self, key: bytes) -> bool:
        expires = self._entries.get(key)
        if expires is None:
            return False
        if expires <= self._now():
            del self._entries[key]
            return False
        return True

    def add(self, key: bytes) -> None:
        if self._ttl <= 0:
            return
        self._entries[key] = self._now() + self._ttl
        self._entries.move_to_end(key)
        while len(self._entries) > CACHE_SIZE:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


@implementer(ICredentialsChecker)
class BcryptChecker:
    """
    Basic credentials (and the chat port's) against the htpasswd file's
    bcrypt hashes -- or, for a user who has none (made with Apache's
    ``htdigest``), against their HA1: the password hashed as
    H(user:realm:password) must give the stored value.  Such a check costs
    a bcrypt all the same (a dummy one), so its time does not tell which
    kind of user a name is.
    """

    credentialInterfaces = (ccred.IUsernamePassword,)
    _log = Logger()

    def __init__(self, database: UserDatabase, run: Runner, monotonic: Callable[[], float],
                 cache_ttl: float) -> None:
        self._db = database
        self._run = run
        self._cache = _CredentialCache(monotonic, cache_ttl)
        self._db_version = database.version
        self._in_flight: dict[tuple[int, bytes], list[defer.Deferred[bool]]] = {}
        # An unknown user costs what a known one does: one bcrypt at the users' cost.
        self._dummy_cost = _usual_cost(database)

    def requestAvatarId(self, credentials: Any) -> "defer.Deferred[AvatarId]":
        user = credentials.username
        password = credentials.password
        if isinstance(user, str):
            user = user.encode("utf-8")
        if isinstance(password, str):
            password = password.encode("utf-8")
        self._db.reload_if_changed()
        if self._db.version != self._db_version:
            self._db_version = self._db.version
            self._dummy_cost = _usual_cost(self._db)
            self._cache.clear()
        version = self._db_version
        key = self._cache.key(user, password)
        if key in self._cache:
            return defer.succeed(user)
        try:
            name = user.decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        stored = self._db.bcrypt_hash(name) if name else None
        digest = None
        if stored is None and name:
            found = self._db.basic_hash(name)
            if found is not None and self._db.realm is not None:
                algorithm, ha1 = found
                digest = (algorithm, ha1, f"{name}:{self._db.realm}:".encode("utf-8"))
        d = self._verify((version, key), password, stored, digest)

        def decided(ok: bool) -> bytes:
            if not ok:
                raise cerror.UnauthorizedLogin()
            # Checked against a users file that has changed since: not remembered.
            if version == self._db_version:
                self._cache.add(key)
            return user

        return d.addCallback(decided)

    def _verify(self, flight: tuple[int, bytes], password: bytes, stored: bytes | None,
                digest: tuple[str, str, bytes] | None = None) -> "defer.Deferred[bool]":
        # Keyed by the users file's version too: a check begun against the old
        # hashes must not answer for a request made after the file changed.
        waiters = self._in_flight.get(flight)
        result: defer.Deferred[bool] = defer.Deferred()
        if waiters is not None:
            waiters.append(result)
            return result
        self._in_flight[flight] = [result]
        # The stored hash's own cost for a refused long password, the users' usual one otherwise.
        dummy_cost = (_cost_of(stored) if stored is not None else None) or self._dummy_cost

        def check() -> bool:
            # bcrypt 4+ refuses passwords over 72 bytes rather than truncating them.
            if stored is None or len(password) > 72:
                # Hashing costs exactly what checking does (checkpw is hashpw and a compare).
                bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=dummy_cost))
                if digest is None or len(password) > 72:
                    return False
                algorithm, ha1, prefix = digest
                computed = digest_hex(algorithm, prefix + password)
                return hmac.compare_digest(computed, ha1)
            return bcrypt.checkpw(password, stored)

        def finish(ok: bool) -> None:
            for waiter in self._in_flight.pop(flight, []):
                waiter.callback(ok)

        def failed(f: Any) -> None:
            self._log.failure("bcrypt check failed", f)
            finish(False)

        # maybeDeferred: a runner that raises must not leave the credential in flight forever.
        defer.maybeDeferred(self._run, check).addCallbacks(finish, failed)
        return result


#: The bcrypt cost assumed when the users file has no usable hash.
DEFAULT_COST = 12


def _cost_of(hashed: bytes) -> int | None:
    """The cost (log2 rounds) of a bcrypt hash such as C{$2y$05$...}, or None."""
    parts = hashed.split(b"$")
    if len(parts) < 4 or not parts[2].isdigit():
        return None
    cost = int(parts[2])
    return cost if 4 <= cost <= 31 else None


def _usual_cost(database: UserDatabase) -> int:
    """
    The cost most of the users' hashes have (``htpasswd -B`` uses 5,
    embweb-passwd 12): what a check for an unknown user must cost too, or
    the time of a failed login tells which names exist.
    """
    costs: Counter[int] = Counter()
    for name in database.users():
        hashed = database.bcrypt_hash(name)
        cost = _cost_of(hashed) if hashed is not None else None
        if cost is not None:
            costs[cost] += 1
    return costs.most_common(1)[0][0] if costs else DEFAULT_COST


@implementer(ICredentialsChecker)
class ThrottledChecker:
    """
    Puts L{LoginThrottle} and the login log in front of another checker.
    """

    _log = NamespacedLogger(namespace="boatwist.login")

    def __init__(self, inner: Any, throttle: LoginThrottle, clock: IReactorTime,
                 audit: Callable[[str, str, str, str], None] | None = None) -> None:
        self._inner = inner
        self._throttle = throttle
        self._clock = clock
        self._audit = audit
        self.credentialInterfaces = inner.credentialInterfaces
        self._key = secrets.token_bytes(32)
        #: Guesses being checked right now, by key: how many requests share each.
        self._guesses: dict[Any, int] = {}

    def requestAvatarId(self, credentials: ICredentials) -> "defer.Deferred[AvatarId]":
        peer = getattr(credentials, "peer_host", "unknown")
        user = getattr(credentials, "username", b"")
        name = user.decode("utf-8", "replace") if isinstance(user, bytes) else str(user)
        if self._throttle.refused(peer, name):
            self._log.warn("login refused for {user!r} from {peer}: too many failures", user=name, peer=peer)
            return defer.fail(cerror.UnauthorizedLogin("too many failed logins"))
        # Each distinct guess is counted as a failure before it is checked and
        # refunded if it succeeds: parallel guesses cannot all slip past
        # max_failures.  The same Basic credentials sent in parallel (a browser
        # loading a page) are one guess, checked once by the inner checker.
        guess = self._guess_key(credentials)
        first = self._guesses.get(guess, 0) == 0
        self._guesses[guess] = self._guesses.get(guess, 0) + 1
        # The same credentials already being checked wait for nothing more: the
        # inner checker answers them with the first (bcrypt runs once).
        wait = self._throttle.delay(peer, name) if first else 0.0
        if first:
            self._throttle.failed(peer, name)
        if wait > 0:
            d = deferLater(self._clock, wait, self._inner.requestAvatarId, credentials)
        else:
            d = defer.maybeDeferred(self._inner.requestAvatarId, credentials)

        def done(result: Any) -> Any:
            left = self._guesses.pop(guess, 1) - 1
            if left:
                self._guesses[guess] = left
            return result

        def ok(avatar: bytes) -> bytes:
            if first:
                self._throttle.refund(peer, name)
            new_login = not self._throttle.recently_succeeded(peer, name)
            self._throttle.succeeded(peer, name)
            # HTTPAuthSessionWrapper logs in on every request: log a login once per window.
            if new_login:
                self._log.info("login {user!r} from {peer}", user=name, peer=peer)
                if self._audit:
                    self._audit("login", name, peer, getattr(credentials, "via", "http"))
            return avatar

        def bad(failure: Any) -> Any:
            if failure.check(NotAGuess):
                # A right answer on a used-up nonce (browsers do this in normal use), or
                # a user with no hash for what the client chose: nothing was guessed.
                if first:
                    self._throttle.refund(peer, name)
                    if failure.check(NoUsableHash):
                        self._log_unusable(failure.value, peer)
                return failure
            if not failure.check(cerror.UnauthorizedLogin, cerror.LoginFailed):
                if first:
                    self._throttle.refund(peer, name)  # our fault, not a wrong password
                return failure
            if first:
                self._log.warn("failed login {user!r} from {peer}", user=name, peer=peer)
                if self._audit:
                    self._audit("login-failed", name, peer, getattr(credentials, "via", "http"))
            return failure

        return d.addBoth(done).addCallbacks(ok, bad)

    def _log_unusable(self, refusal: NoUsableHash, peer: str) -> None:
        """Say why a user could not log in when it was not their password (unless logged in from there already)."""
        if self._throttle.recently_succeeded(peer, refusal.user):
            return  # logged in already: the client tried another scheme first, nothing to fix
        can = ", ".join(f"Digest {a}" if a != "basic" else "Basic" for a in refusal.available) or "nothing"
        self._log.warn(
            "login {user!r} from {peer}: the client chose {scheme} but {user!r} has no {scheme} hash "
            "(can use {can}); not a wrong password, the next 401 offers only that. "
            "Set the password with embweb-passwd passwd {user} to give them every kind",
            user=refusal.user, peer=peer, scheme=_scheme_words(refusal.scheme), can=can)

    def _guess_key(self, credentials: Any) -> Any:
        """Identical Basic credentials share a key (an HMAC, never the password); others are unique."""
        password = getattr(credentials, "password", None)
        if password is None:
            return object()
        if isinstance(password, str):
            password = password.encode("utf-8")
        user = getattr(credentials, "username", b"")
        if isinstance(user, str):
            user = user.encode("utf-8")
        return credential_key(self._key, user, password)




def _scheme_words(scheme: str) -> str:
    """'Digest SHA-256', 'Basic': a scheme or algorithm as the log says it."""
    return "Basic" if scheme == "basic" else f"Digest {scheme}"
