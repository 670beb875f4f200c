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

Every attempt goes through L{LoginThrottle}; every failure, and the first
success of a user from an address within a window, is logged with the
source address -- never with the password.
"""

from __future__ import annotations

import hmac
import secrets
from collections import Counter, OrderedDict
from typing import Any, Callable, Protocol

import bcrypt
from twisted.cred import credentials as ccred
from twisted.cred import error as cerror
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from boatwist.auth.digest import AvatarId
from boatwist.auth.hashes import digest_hex
from boatwist.auth.refusals import NoUsableHash, NotAGuess
from boatwist.logs import NamespacedLogger, SourceSummary
from boatwist.auth.passwords import UserDatabase
from boatwist.auth.throttle import LoginThrottle, TooManyAttempts, Turn

#: Most verified credentials remembered at once.
CACHE_SIZE = 1024

#: Runs a blocking function off the reactor thread, returning a Deferred.
Runner = Callable[..., "defer.Deferred[Any]"]


class ImmediateChecker(Protocol):
    """
    A checker that can also answer in place (a Digest response is checked
    with two hashes, no thread): L{ThrottledChecker.answer} asks it so for
    sessions it knows right.
    """

    def check_now(self, credentials: ICredentials) -> AvatarId:
        """The avatar id, or raises what C{requestAvatarId} would fail with."""
        ...


def credential_key(secret: bytes, user: bytes, password: bytes) -> bytes:
    """What stands for a (user, password) pair in memory: an HMAC under a key of this process."""
    return hmac.digest(secret, user + b"\0" + password, "sha256")


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

    def requestAvatarId(self, credentials: ccred.IUsernamePassword) -> "defer.Deferred[AvatarId]":
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

        def failed(f: Failure) -> None:
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


#: Most wrong credentials remembered as wrong (see ThrottledChecker).
KNOWN_WRONG_SIZE = 1024


@implementer(ICredentialsChecker)
class ThrottledChecker:
    """
    Puts L{LoginThrottle} and the login log in front of another checker.

    Every check takes a turn of the name's gate (L{LoginThrottle.turn}) and
    settles it: a right password gives it back, a wrong one keeps it, one
    that was not a guess (a stale Digest nonce, an error of ours) gives it
    back.  Three shortcuts spare turns without telling anyone anything new:

      - a session that logged in before is checked at once, without a turn:
        the same Basic user name and password found right within
        C{remember} seconds (a wrong guess can never match it), or a Digest
        response on a nonce that carried a right one for that user (only a
        client that knew the password has used it so; a wrong answer on it
        ends that, and counts as a failure).  A logged-in operator is thus
        served at once whoever is guessing their name, from wherever;
      - the same user name and password already being checked (a browser
        loading a page in parallel) wait for that check's answer;
      - the same user name and password found wrong before, while the users
        file has not changed, are answered wrong at once: a script resending
        one mistyped password (urllib does, by itself) is one failure, not
        one per request.  Only credentials that carry the password (Basic,
        the chat port) can be recognised; Digest responses differ per nonce.

    A failed check is answered C{failure_delay} seconds late (the same for
    every name, known or not), which slows a client guessing one password
    after the other without slowing anyone else.
    """

    _log = NamespacedLogger(namespace="boatwist.login")

    def __init__(self, inner: ICredentialsChecker, throttle: LoginThrottle, clock: IReactorTime,
                 audit: Callable[[str, str, str, str], None] | None = None, *,
                 failure_delay: float = 0.0, generation: Callable[[], int] = lambda: 0,
                 monotonic: Callable[[], float] | None = None, remember: float = 300.0,
                 summary: SourceSummary | None = None) -> None:
        """
        @param generation: the users file's version now (it also re-reads a
            changed file): what is known right or wrong is forgotten when it changes.
        @param remember: seconds a right session or a wrong credential is remembered.
        @param summary: past its rate, failed and refused logins of a source are
            counted into a summary line instead of logged and audited one by one.
        """
        self._inner = inner
        self._throttle = throttle
        self._clock = clock
        self._audit = audit
        self._failure_delay = failure_delay
        self._generation = generation
        self._now = monotonic or clock.seconds
        self._remember_for = remember
        self._summary = summary
        self.credentialInterfaces = inner.credentialInterfaces
        self._key = secrets.token_bytes(32)
        #: Checks under way, by credential key: the Deferreds waiting for each one's answer.
        self._in_flight: dict[bytes, list[defer.Deferred[AvatarId]]] = {}
        #: Credential keys known wrong, and sessions known right: (users-file generation, until when).
        self._wrong: OrderedDict[bytes, tuple[int, float]] = OrderedDict()
        self._right: OrderedDict[bytes, tuple[int, float]] = OrderedDict()
        #: (peer, user) pairs whose login was logged, and when: one line per window, not per request.
        self._logged_in: OrderedDict[tuple[str, str], float] = OrderedDict()

    def requestAvatarId(self, credentials: ICredentials) -> "defer.Deferred[AvatarId]":
        answer = self.answer(credentials)
        return answer if isinstance(answer, defer.Deferred) else defer.succeed(answer)

    def answer(self, credentials: ICredentials) -> "AvatarId | defer.Deferred[AvatarId]":
        """
        L{requestAvatarId}, with a login decided at once answered as the
        avatar id itself: a session known right whose inner checker checks
        in place (L{ImmediateChecker}: a Digest response), which is what a
        browser sends on every request -- no Deferred made and fired for it.
        """
        peer = str(getattr(credentials, "peer_host", "unknown"))
        user = getattr(credentials, "username", b"")
        name = user.decode("utf-8", "replace") if isinstance(user, bytes) else str(user)
        key = self._credential_key(credentials)
        session = self._session_key(credentials, name, key)
        if session is not None and self._known(self._right, session):
            immediate: ImmediateChecker | None = self._inner if hasattr(self._inner, "check_now") else None
            if immediate is None:
                return self._recheck(credentials, name, peer, session)
            try:
                avatar = immediate.check_now(credentials)
            except Exception:
                return self._recheck_failed(Failure(), credentials, name, peer, session)
            return self._rechecked(avatar, credentials, name, peer, session)
        if key is not None:
            if self._known(self._wrong, key):
                return self._answer_wrong(name, peer, credentials, counted=False)
            waiting = self._in_flight.get(key)
            if waiting is not None:
                shared: defer.Deferred[AvatarId] = defer.Deferred()
                waiting.append(shared)
                return shared
            self._in_flight[key] = []
        result: defer.Deferred[AvatarId] = defer.Deferred()

        def got_turn(turn: Turn) -> None:
            self._check(turn, credentials, name, peer, key).chainDeferred(result)

        def no_turn(failure: Failure) -> None:
            self._refused(failure, name, peer)
            result.errback(failure)

        self._throttle.turn(peer, name).addCallbacks(got_turn, no_turn)
        if key is not None:
            result.addBoth(self._share, key)
        return result

    # -- the check

    def _check(self, turn: Turn, credentials: ICredentials, name: str, peer: str,
               key: bytes | None) -> "defer.Deferred[AvatarId]":
        d = defer.maybeDeferred(self._inner.requestAvatarId, credentials)

        def ok(avatar: AvatarId) -> AvatarId:
            turn.succeeded()
            session = self._session_key(credentials, name, key)  # Basic: the HMAC already made
            if session is not None:
                self._remember(self._right, session)
            self._log_login(name, peer, getattr(credentials, "via", "http"))
            return avatar

        def bad(failure: Failure) -> "Failure | defer.Deferred[AvatarId]":
            if _not_a_guess(failure):
                turn.void()
                if isinstance(failure.value, NoUsableHash):
                    self._log_unusable(failure.value, peer)
                return failure
            turn.failed()
            if key is not None:
                self._remember(self._wrong, key)
            return self._answer_wrong(name, peer, credentials, counted=True, failure=failure)

        return d.addCallbacks(ok, bad)

    def _recheck(self, credentials: ICredentials, name: str, peer: str,
                 session: bytes) -> "defer.Deferred[AvatarId]":
        """A session that logged in before: checked at once, no turn; a wrong answer ends it."""
        d = defer.maybeDeferred(self._inner.requestAvatarId, credentials)
        return d.addCallbacks(self._rechecked, self._recheck_refused,
                              callbackArgs=(credentials, name, peer, session),
                              errbackArgs=(credentials, name, peer, session))

    def _rechecked(self, avatar: AvatarId, credentials: ICredentials, name: str, peer: str,
                   session: bytes) -> AvatarId:
        self._remember(self._right, session)
        self._log_login(name, peer, getattr(credentials, "via", "http"))
        return avatar

    def _recheck_refused(self, failure: Failure, credentials: ICredentials, name: str, peer: str,
                         session: bytes) -> "Failure | defer.Deferred[AvatarId]":
        if _not_a_guess(failure):
            return failure
        self._right.pop(session, None)
        self._throttle.charge(peer, name)
        return self._answer_wrong(name, peer, credentials, counted=True, failure=failure)

    def _recheck_failed(self, failure: Failure, credentials: ICredentials, name: str, peer: str,
                        session: bytes) -> "defer.Deferred[AvatarId]":
        """An immediate recheck that raised: answered as L{_recheck} answers a failed one."""
        refused = self._recheck_refused(failure, credentials, name, peer, session)
        return refused if isinstance(refused, defer.Deferred) else defer.fail(refused)

    def _answer_wrong(self, name: str, peer: str, credentials: ICredentials, *, counted: bool,
                      failure: Failure | None = None) -> "defer.Deferred[AvatarId]":
        """A wrong password: logged (the first time), answered after failure_delay."""
        if counted and (self._summary is None or self._summary.admit(peer, "failed login")):
            self._log.warn("failed login {user!r} from {peer}", user=name, peer=peer)
            if self._audit:
                self._audit("login-failed", name, peer, str(getattr(credentials, "via", "http")))
        error = failure if failure is not None else Failure(cerror.UnauthorizedLogin("wrong password"))
        answer: defer.Deferred[AvatarId] = defer.Deferred()
        if self._failure_delay <= 0:
            answer.errback(error)
        else:
            self._clock.callLater(self._failure_delay, answer.errback, error)
        return answer

    def _log_unusable(self, refusal: NoUsableHash, peer: str) -> None:
        """Say why a user could not log in when it was not their password (unless logged in from there already)."""
        last = self._logged_in.get((peer, refusal.user))
        if last is not None and self._now() - last < self._remember_for:
            return  # logged in already: the client tried another scheme first, nothing to fix
        can = ", ".join(map(_scheme_words, refusal.available)) or "nothing"
        self._log.warn(
            "login {user!r} from {peer}: the client chose {scheme} but {user!r} has no {scheme} hash "
            "(can use {can}); not a wrong password, the next 401 offers only that. "
            "Set the password with embweb-passwd passwd {user} to give them every kind",
            user=refusal.user, peer=peer, scheme=_scheme_words(refusal.scheme), can=can)

    def _refused(self, failure: Failure, name: str, peer: str) -> None:
        if failure.check(TooManyAttempts) and (self._summary is None or self._summary.admit(peer, "login refused")):
            self._log.warn("login refused for {user!r} from {peer}: {error}", user=name, peer=peer,
                           error=failure.getErrorMessage())

    def _share(self, result: object, key: bytes) -> object:
        """Hand the answer of a check to the identical credentials that waited for it."""
        for waiter in self._in_flight.pop(key, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)  # type: ignore[arg-type]
        return result

    # -- bookkeeping

    def _log_login(self, name: str, peer: str, via: str) -> None:
        """HTTPAuthSessionWrapper logs in on every request: log (and audit) a login once per window."""
        now = self._now()
        pair = (peer, name)
        last = self._logged_in.get(pair)
        self._logged_in[pair] = now
        self._logged_in.move_to_end(pair)
        while len(self._logged_in) > KNOWN_WRONG_SIZE:
            self._logged_in.popitem(last=False)
        if last is None or now - last >= self._remember_for:
            self._log.info("login {user!r} from {peer}", user=name, peer=peer)
            if self._audit:
                self._audit("login", name, peer, via)

    def _known(self, table: "OrderedDict[bytes, tuple[int, float]]", key: bytes) -> bool:
        entry = table.get(key)
        if entry is None:
            return False
        generation, until = entry
        if generation != self._generation() or until <= self._now():
            del table[key]
            return False
        return True

    def _remember(self, table: "OrderedDict[bytes, tuple[int, float]]", key: bytes) -> None:
        table[key] = (self._generation(), self._now() + self._remember_for)
        table.move_to_end(key)
        while len(table) > KNOWN_WRONG_SIZE:
            table.popitem(last=False)

    def _session_key(self, credentials: ICredentials, name: str, key: bytes | None = None) -> bytes | None:
        """
        What stands for a logged-in session: the Basic credential's HMAC
        (C{key}, when the caller has it already), or the user name and
        Digest nonce; None for anything else.
        """
        if key is None:
            key = self._credential_key(credentials)
        if key is not None:
            return key
        nonce = getattr(credentials, "nonce", None)
        if isinstance(nonce, bytes) and nonce:
            # Name and nonce as they are: both travel in the clear, so an HMAC would hide nothing,
            # and a browser sends one on every request.  The NUL bytes keep it apart from any
            # other (name, nonce) pair (names have no control characters) and from Basic's HMACs.
            return b"\0digest\0" + name.encode("utf-8") + b"\0" + nonce
        return None

    def _credential_key(self, credentials: ICredentials) -> bytes | None:
        """An HMAC of user name and password (never the password), or None when there is no password."""
        password = getattr(credentials, "password", None)
        if password is None:
            return None
        if isinstance(password, str):
            password = password.encode("utf-8")
        user = getattr(credentials, "username", b"")
        if isinstance(user, str):
            user = user.encode("utf-8")
        return credential_key(self._key, user, password)


def _not_a_guess(failure: Failure) -> bool:
    """
    A failed check that says nothing about the password: a right answer on
    a used-up nonce (browsers do this), a user with no hash for what the
    client chose, or our own fault.
    """
    return bool(failure.check(NotAGuess)) or not failure.check(cerror.UnauthorizedLogin, cerror.LoginFailed)


def _scheme_words(scheme: str) -> str:
    """'Digest SHA-256', 'Basic': a scheme or algorithm as the log says it."""
    return "Basic" if scheme == "basic" else f"Digest {scheme}"
