"""
HTTP Digest authentication (RFC 7616, and RFC 2617's MD5) hardened for
twisted.web.guard.HTTPAuthSessionWrapper.

Twisted's own DigestCredentialFactory accepts any nonce it made in the last
15 minutes, any number of times, with any ``nc``: a captured Authorization
header can be replayed for a quarter of an hour.  It speaks MD5 only, never
says ``stale=true`` (so browsers re-prompt for the password when a nonce
ages out), and compares the response with ``==``.  This module fixes that.

Wire format (RFC 7616 section 3.3 / 3.4), as this server speaks it::

    WWW-Authenticate: Digest realm="R", qop="auth", algorithm="SHA-256",
                      nonce="N", opaque="O"[, stale="true"]
    WWW-Authenticate: Digest realm="R", qop="auth", algorithm="MD5", ...
    Authorization: Digest username="u", realm="R", nonce="N", uri="/p?q",
                   qop=auth, nc=00000001, cnonce="c", response="hex",
                   opaque="O"[, algorithm=SHA-256]

    HA1      = H(username ":" realm ":" password)      (the htdigest value)
    HA2      = H(method ":" uri)
    response = H(HA1 ":" nonce ":" nc ":" cnonce ":" "auth" ":" HA2)

(The guard quotes every challenge value, ``algorithm`` and ``stale``
included; every client we know accepts that.)  ``qop=auth`` is required:
without it there is no ``nc`` and no replay protection.  ``auth-int``,
``-sess`` algorithms and ``userhash`` are refused.

Nonce: ``urlsafe_b64(issued_ms[8] + random[16] + HMAC-SHA256(key, realm,
issued, random)[:24])``.  Issuing keeps no state, so unauthenticated clients
cannot fill memory.  A nonce is tracked (its highest ``nc``) from its first
*successful* use, until it expires; when the table is full the oldest
entries are dropped and every nonce issued up to then becomes stale, so
forgetting never reopens a replay.  ``opaque`` is an HMAC of the nonce.

The key is kept in ``state_dir`` (L{persistent_key}, mode 0600), so the
nonces a browser holds across a daemon restart are still recognised as
ours -- but the nonce counts seen before are not, so every nonce issued
before the process started is treated as stale (C{forget_before}): the
browser's next request is answered ``stale=true`` and it retries with a
fresh nonce without asking the person, and a header captured before the
restart cannot be replayed after it.

``stale=true`` is sent only when the response was otherwise right (RFC 7616
section 3.3): a correctly signed nonce that expired, was forgotten or was
issued before this process, or a *correct* response reusing an ``nc`` (a
replay, or a browser's parallel requests arriving out of order).  The
client may then retry with a new nonce without asking the user again; a
wrong password on an old nonce gets a plain 401, as any wrong password.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
import secrets
import struct
import weakref
from typing import Any, Callable, Protocol, Sequence, Union

from twisted.cred import error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameDigestHash
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.iweb import ICredentialFactory, IRequest
from zope.interface import implementer

from boatwist.auth.hashes import DIGEST_ALGORITHMS, digest_hex
from boatwist.auth.refusals import NoUsableHash, StaleNonce

__all__ = [
    "DigestAuthority",
    "DigestChallengeFactory",
    "DigestCredentials",
    "DigestChecker",
    "StaleNonce",
    "persistent_key",
    "parse_params",
    "ALGORITHMS",
]

#: Algorithms spoken, strongest first (the order challenges should be offered in).
ALGORITHMS = ("SHA-256", "MD5")

_HASHES = DIGEST_ALGORITHMS

#: What cred's checkers answer (ICredentialsChecker.requestAvatarId): the user
#: name as bytes (an empty tuple would be the anonymous avatar, never used here).
AvatarId = Union[bytes, tuple[()]]
_HEX_LENGTH = {"MD5": 32, "SHA-256": 64}

_TIME = struct.Struct(">Q")
_RANDOM_BYTES = 16
_MAC_BYTES = 24
_NONCE_BYTES = _TIME.size + _RANDOM_BYTES + _MAC_BYTES  # 48: 64 base64 characters, no padding
_OPAQUE_BYTES = 18  # 24 base64 characters

#: Longest Authorization header value decoded at all.
MAX_HEADER = 4096
#: Longest cnonce accepted.
MAX_CNONCE = 256
#: Seconds a nonce may appear to come from the future (a clock step) before it counts as stale.
FUTURE_SLACK = 5.0

# auth-param = token BWS "=" BWS ( token / quoted-string ), RFC 7235 section 2.1
#: A quoted-string's content, written as "unrolled loop" (a run of plain characters, then
#: escaped ones each followed by a run): one character class per run, no alternation per character.
_QUOTED = rb'[^"\\\x00-\x08\x0a-\x1f\x7f]*(?:\\[^\x00-\x08\x0a-\x1f\x7f][^"\\\x00-\x08\x0a-\x1f\x7f]*)*'
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_ITEM = rb"(" + _TOKEN + rb')[ \t]*=[ \t]*(?:"(' + _QUOTED + rb')"|([!#$%&\'*+\-.^_`|~0-9A-Za-z/:]+))[ \t]*(?:,|$)'
_PARAM = re.compile(rb"[ \t]*" + _ITEM)
#: The whole value: auth-params, empty list elements tolerated (RFC 7230 section 7).  No
#: blank can be taken by two parts of it (a separator, then an item starting with a token),
#: so a value that does not match fails in linear time.
_PARAMS = re.compile(rb"[ \t,]*(?:" + _ITEM + rb"[ \t,]*)*")
_ESCAPE = re.compile(rb"\\(.)", re.S)
_HEX_DIGEST = re.compile(rb"[0-9a-f]+")
_NC = re.compile(rb"[0-9a-fA-F]{8}")
_REQUIRED = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce", "opaque")


class IClock(Protocol):
    """What the authority needs of a clock: a reactor, or a task.Clock in tests."""

    def seconds(self) -> float: ...


def _hex(algorithm: str, data: bytes) -> bytes:
    """H(data) in lower-case hex for a Digest algorithm name ('MD5' or 'SHA-256')."""
    return digest_hex(algorithm, data).encode("ascii")


def parse_params(value: bytes) -> dict[str, bytes]:
    """
    The auth-params of a Digest Authorization header (without the scheme),
    names lower-cased, quoted-pairs unescaped.  Raises LoginFailed on
    anything that is not a clean comma-separated list, or on a repeated
    name (which value a proxy or a log would see is then ambiguous).

    The whole value is checked by one regular expression and the items
    read by another (both in C): a browser sends one on every request.
    """
    if len(value) > MAX_HEADER:
        raise error.LoginFailed("Digest header too long")
    value = value.strip()
    if _PARAMS.fullmatch(value) is None:
        raise error.LoginFailed("malformed Digest header")
    params: dict[str, bytes] = {}
    for raw_name, quoted, bare in _PARAM.findall(value):
        name = raw_name.decode("ascii").lower()
        if name in params:
            raise error.LoginFailed(f"Digest parameter {name} given twice")
        # An empty quoted string and a missing bare token both come back empty: the quotes tell them apart
        # only in the text, and an empty value is refused later as missing either way.
        params[name] = bare or (_ESCAPE.sub(rb"\1", quoted) if b"\\" in quoted else quoted)
    return params


def _b64decode(text: bytes, size: int) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text)
    except (binascii.Error, ValueError):
        raise error.LoginFailed("malformed Digest value") from None
    if len(raw) != size or base64.urlsafe_b64encode(raw) != text:
        raise error.LoginFailed("malformed Digest value")
    return raw


#: Bytes of the key that signs nonces.
KEY_BYTES = 32
#: Its file, in state_dir.
NONCE_KEY_FILE = "digest-nonce.key"


def persistent_key(path: str | os.PathLike[str]) -> bytes:
    """
    The key that signs nonces, kept in C{path} so it survives restarts:
    read it, or create it (mode 0600, exclusively, never through a
    symlink) with fresh random bytes.  A file that cannot be read or made,
    or has the wrong size, is logged and replaced by a key of this process
    only -- browsers then ask for the password again after a restart, which
    is what a lost key costs, nothing worse.

    The key only proves a nonce was issued here; it is no password
    equivalent (a Digest response still needs the HA1).
    """
    log = Logger(namespace="boatwist.auth.digest")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warn("{path}: cannot read the Digest nonce key ({error}); using a new one until the next restart",
                 path=str(path), error=e.strerror or str(e))
        return secrets.token_bytes(KEY_BYTES)
    else:
        with os.fdopen(fd, "rb") as f:
            key = f.read(KEY_BYTES + 1)
            mode = os.fstat(f.fileno()).st_mode
        if len(key) == KEY_BYTES:
            if mode & 0o077:
                log.warn("{path}: the Digest nonce key is readable by others (mode {mode:o}); expected 0600",
                         path=str(path), mode=mode & 0o777)
            return key
        log.warn("{path}: the Digest nonce key has {size} bytes, expected {expected}; making a new one",
                 path=str(path), size=len(key), expected=KEY_BYTES)
        try:
            os.unlink(path)
        except OSError:
            pass
    key = secrets.token_bytes(KEY_BYTES)
    create = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, create, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        log.warn("{path}: cannot keep the Digest nonce key ({error}); browsers will ask for the password again "
                 "after a restart", path=str(path), error=e.strerror or str(e))
    return key


class DigestAuthority:
    """
    Issues and verifies the nonces of one realm, for the whole process.

    One instance is shared by the SHA-256 and MD5 challenge factories (the
    guard decodes every Digest header with the first factory, whatever
    algorithm it answers), and it must be the only one: nonces are signed
    with its key.  C{clock} is anything with C{seconds()} (the reactor);
    C{lifetime} is how long a nonce may be used, in seconds
    (``[auth] nonce_lifetime``); C{secret} fixes the key (the daemon's
    L{persistent_key}, or a test's).  Nonce counts are remembered in this
    process only, so an authority using a key that nonces were issued with
    before must be given C{forget_before} (when it started): nonces issued
    up to then are stale, never accepted -- else a header captured before a
    restart could be replayed after it.  C{max_tracked} bounds the nonces
    remembered (about 200 bytes each).
    """

    _log = Logger()

    def __init__(self, realm: str, clock: IClock, lifetime: float, secret: bytes | None = None,
                 max_tracked: int = 4096, algorithms: Sequence[str] = ("SHA-256", "MD5"),
                 forget_before: float | None = None) -> None:
        if lifetime <= 0:
            raise ValueError("nonce lifetime must be positive")
        unknown = [a for a in algorithms if a not in _HASHES]
        if unknown or not algorithms:
            raise ValueError(f"unknown Digest algorithms: {unknown}")
        #: Only what is offered is accepted: configuring SHA-256 alone must turn MD5 off.
        self.algorithms = frozenset(algorithms)
        self.realm = realm
        self._realm_bytes = realm.encode("utf-8")
        self._clock = clock
        self.lifetime = lifetime
        self._key = secret if secret is not None else secrets.token_bytes(32)
        self.max_tracked = max(16, max_tracked)
        #: nonce -> [issued (seconds), highest nc accepted, its opaque]: only nonces a
        #: verified response used get here, so being here proves a nonce is ours.
        self._seen: dict[bytes, list[Any]] = {}
        #: Nonces issued at or before this time and not tracked are stale (dropped when full; an earlier process's).
        #: Nonces carry milliseconds: those of the millisecond we start in are our own.
        self._forgotten_before = float("-inf") if forget_before is None else forget_before - 0.001
        self._last_purge = clock.seconds()
        self._stale: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()

    # -------------------------------------------------------------- nonces

    def _mac(self, label: bytes, *parts: bytes) -> bytes:
        message = b"\x00".join((b"boatwist-digest", label, self._realm_bytes) + parts)
        return hmac.digest(self._key, message, "sha256")

    def new_nonce(self) -> bytes:
        """A fresh nonce for a challenge: issue time, randomness, signature."""
        issued = _TIME.pack(max(0, int(self._clock.seconds() * 1000)))
        random = secrets.token_bytes(_RANDOM_BYTES)
        mac = self._mac(b"nonce", issued, random)[:_MAC_BYTES]
        return base64.urlsafe_b64encode(issued + random + mac)

    def opaque_for(self, nonce: bytes) -> bytes:
        """The opaque that goes with C{nonce}: it must come back unchanged."""
        return base64.urlsafe_b64encode(self._mac(b"opaque", nonce)[:_OPAQUE_BYTES])

    def nonce_issued(self, nonce: bytes) -> float:
        """
        When C{nonce} was issued (seconds), if we signed it; LoginFailed if
        it is malformed or not ours.  Says nothing about its age.
        """
        raw = _b64decode(nonce, _NONCE_BYTES)
        issued, random, mac = raw[: _TIME.size], raw[_TIME.size : -_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(b"nonce", issued, random)[:_MAC_BYTES]):
            raise error.LoginFailed("Digest nonce not issued here")
        return float(_TIME.unpack(issued)[0]) / 1000.0

    def check_nonce(self, nonce: bytes, opaque: bytes) -> bool:
        """
        Refuse (LoginFailed) a nonce that is forged or whose opaque is wrong;
        True if it is genuine but may not be used any more (expired, from
        the future, forgotten, issued before this process): a right response
        on it earns ``stale=true``, a wrong one a plain 401.

        A nonce a verified response has used before (a browser reuses one
        for every request) is known genuine: its signature is not checked
        again, its opaque is compared with the one kept for it.
        """
        tracked = self._seen.get(nonce)
        if tracked is not None:
            issued, expected = tracked[0], tracked[2]
        else:
            issued, expected = self.nonce_issued(nonce), self.opaque_for(nonce)
        if not hmac.compare_digest(opaque, expected):
            raise error.LoginFailed("Digest opaque does not match the nonce")
        now = self._clock.seconds()
        age = now - issued
        return age > self.lifetime or age < -FUTURE_SLACK or (
            tracked is None and issued <= self._forgotten_before
        )

    def accept_count(self, nonce: bytes, nc: int) -> bool:
        """
        Record that a correct response used C{nonce} with count C{nc}; False
        (and nothing recorded) if that count is not above the highest one
        already accepted for it.  Call only after the response was verified:
        recording on unverified input would let anyone who saw a nonce burn it.
        """
        now = self._clock.seconds()
        entry = self._seen.get(nonce)
        if entry is not None:
            if nc <= entry[1]:
                return False
            entry[1] = nc
            return True
        issued = self.nonce_issued(nonce)
        if issued <= self._forgotten_before or now - issued > self.lifetime:
            return False
        self._purge(now)
        self._seen[nonce] = [issued, nc, self.opaque_for(nonce)]
        return True

    def _purge(self, now: float) -> None:
        """Drop expired nonces; if still full, the oldest quarter (and remember how far)."""
        if len(self._seen) < self.max_tracked and now - self._last_purge < self.lifetime / 2:
            return
        self._last_purge = now
        horizon = now - self.lifetime
        for nonce in [n for n, entry in self._seen.items() if entry[0] < horizon]:
            del self._seen[nonce]
        if len(self._seen) >= self.max_tracked:
            ordered = sorted(self._seen.items(), key=lambda item: item[1][0])
            dropped = ordered[: max(1, len(ordered) // 4)]
            for nonce, _entry in dropped:
                del self._seen[nonce]
            self._forgotten_before = max(self._forgotten_before, dropped[-1][1][0])
            self._log.warn("Digest nonce table full: {count} dropped, their users will see stale=true",
                           count=len(dropped))

    def tracked(self) -> int:
        """How many nonces are remembered now (for metrics and tests)."""
        return len(self._seen)

    # --------------------------------------------------------------- stale

    def mark_stale(self, request: object | None) -> None:
        """Make the challenges answering C{request} carry ``stale=true``."""
        if request is not None:
            try:
                self._stale[request] = True
            except TypeError:  # not weak-referenceable: no stale hint, still a 401
                pass

    def is_stale(self, request: object) -> bool:
        """Whether C{request} was refused for a stale nonce (read by every factory, so not consumed)."""
        try:
            return self._stale.get(request, False)
        except TypeError:
            return False

    # ----------------------------------------------------------- protocol

    def challenge(self, request: object, algorithm: str) -> dict[str, bytes]:
        """The parameters of one WWW-Authenticate: Digest challenge (the guard formats and quotes them)."""
        nonce = self.new_nonce()
        challenge = {
            "realm": self._realm_bytes,
            "qop": b"auth",
            "algorithm": algorithm.encode("ascii"),
            "nonce": nonce,
            "opaque": self.opaque_for(nonce),
        }
        if self.is_stale(request):
            challenge["stale"] = b"true"
        return challenge

    def decode(self, response: bytes, request: IRequest) -> "DigestCredentials":
        """
        Credentials from a Digest Authorization header value (scheme
        removed), or LoginFailed: whatever a client sends must end in a 401,
        never in a 500.
        """
        try:
            return self._decode(response, request)
        except error.LoginFailed as e:
            self._log.debug("Digest credentials refused: {reason}", reason=str(e))
            raise
        except Exception as e:  # a parser bug must still be a 401
            self._log.failure("Digest credentials could not be decoded")
            raise error.LoginFailed("malformed Digest header") from e

    def _decode(self, response: bytes, request: IRequest) -> "DigestCredentials":
        params = parse_params(response)
        missing = [name for name in _REQUIRED if not params.get(name)]
        if missing:
            raise error.LoginFailed(f"Digest parameters missing: {', '.join(missing)}")
        if params.get("userhash", b"false").lower() != b"false":
            raise error.LoginFailed("Digest userhash is not supported")
        algorithm = params.get("algorithm", b"MD5").decode("ascii", "replace").upper()
        if algorithm not in _HASHES or algorithm not in self.algorithms:
            raise error.LoginFailed("Digest algorithm not offered")
        if params["qop"].lower() != b"auth":
            raise error.LoginFailed("Digest qop must be auth")
        if not hmac.compare_digest(params["realm"], self._realm_bytes):
            raise error.LoginFailed("Digest realm does not match")
        uri = getattr(request, "uri", None)
        # An absolute-form target (GET http://host/p) is served as /p; the client signed what it sent.
        sent = getattr(request, "boatwist_target", None)
        if not isinstance(uri, bytes) or params["uri"] not in (uri, sent):
            raise error.LoginFailed("Digest uri does not match the request")
        uri = params["uri"]
        if not _NC.fullmatch(params["nc"]):
            raise error.LoginFailed("Digest nc is not 8 hex digits")
        nc = int(params["nc"], 16)
        if nc == 0:
            raise error.LoginFailed("Digest nc is zero")
        if len(params["cnonce"]) > MAX_CNONCE:
            raise error.LoginFailed("Digest cnonce too long")
        digest = params["response"].lower()
        if len(digest) != _HEX_LENGTH[algorithm] or _HEX_DIGEST.fullmatch(digest) is None:
            raise error.LoginFailed("Digest response is not a hex digest")
        try:
            username = params["username"].decode("utf-8")
        except UnicodeDecodeError:
            raise error.LoginFailed("Digest username is not UTF-8") from None
        stale = self.check_nonce(params["nonce"], params["opaque"])
        return DigestCredentials(
            authority=self,
            request=request,
            username=username,
            realm=self.realm,
            algorithm=algorithm,
            method=request.method,
            uri=uri,
            nonce=params["nonce"],
            nc=params["nc"],
            cnonce=params["cnonce"],
            response=digest,
            nonce_stale=stale,
        )


@implementer(IUsernameDigestHash)
class DigestCredentials:
    """
    A decoded Digest response, checked against a stored HA1.

    C{username} (str), C{realm} (str) and C{algorithm} ('MD5' or 'SHA-256',
    the one the client used) tell the checker which HA1 to look up.  After a
    C{checkHash} that found the response right but the nonce count used up,
    C{stale} is True (see L{StaleNonce}).
    """

    def __init__(self, *, authority: DigestAuthority, request: object, username: str, realm: str,
                 algorithm: str, method: bytes, uri: bytes, nonce: bytes, nc: bytes, cnonce: bytes,
                 response: bytes, nonce_stale: bool = False) -> None:
        self._authority = authority
        try:
            self._request: Callable[[], object | None] = weakref.ref(request)
        except TypeError:
            self._request = lambda: None
        self.username = username
        self.realm = realm
        self.algorithm = algorithm
        self.method = method
        self.uri = uri
        self.nonce = nonce
        self.nc = nc
        self.cnonce = cnonce
        self._response = response
        #: The nonce is genuine but may not be used: a right response is refused as stale.
        self._nonce_stale = nonce_stale
        self.stale = False

    def expected_response(self, ha1: str | bytes) -> bytes:
        """The response a client knowing C{ha1} would have sent (lower-case hex)."""
        if isinstance(ha1, str):
            ha1 = ha1.encode("ascii")
        ha2 = _hex(self.algorithm, self.method + b":" + self.uri)
        return _hex(self.algorithm, b":".join((ha1.lower(), self.nonce, self.nc, self.cnonce, b"auth", ha2)))

    def checkHash(self, digestHash: str | bytes) -> bool:
        """
        True if the response was computed from C{digestHash} (the HA1 for
        C{algorithm}) on a nonce that may still be used and its nonce count
        was not used before; the count is then used up.  A right response
        on a used-up or outdated nonce sets C{stale} (and the request's next
        challenge says ``stale=true``); a wrong one never does.
        Constant-time comparison.
        """
        if not hmac.compare_digest(self.expected_response(digestHash), self._response):
            return False
        if self._nonce_stale or not self._authority.accept_count(self.nonce, int(self.nc, 16)):
            self.stale = True
            self._authority.mark_stale(self._request())
            return False
        return True

    def __repr__(self) -> str:
        return f"<DigestCredentials {self.username!r} {self.algorithm}>"


@implementer(ICredentialFactory)
class DigestChallengeFactory:
    """
    One WWW-Authenticate: Digest challenge (one algorithm) for the guard.

    Register one per algorithm, SHA-256 first, all on the same authority::

        [DigestChallengeFactory(authority, "SHA-256"),
         DigestChallengeFactory(authority, "MD5"), basic_factory]

    The guard sends every factory's challenge and decodes with the first
    whose scheme matches, so C{decode} accepts either algorithm.
    """

    scheme = b"digest"

    def __init__(self, authority: DigestAuthority, algorithm: str) -> None:
        if algorithm not in _HASHES:
            raise ValueError(f"unsupported Digest algorithm {algorithm!r} (expected one of {ALGORITHMS})")
        self.authority = authority
        self.algorithm = algorithm

    def getChallenge(self, request: IRequest) -> dict[str, bytes]:
        return self.authority.challenge(request, self.algorithm)

    def decode(self, response: bytes, request: IRequest) -> DigestCredentials:
        return self.authority.decode(response, request)


class _HA1Source(Protocol):
    def ha1(self, user: str, realm: str, algorithm: str) -> str | None: ...


#: What a user can log in with, when the database can say (UserDatabase.available).
_Available = Callable[[str], tuple[str, ...]]


@implementer(ICredentialsChecker)
class DigestChecker:
    """
    Checks Digest credentials against the HA1 values of a
    L{boatwist.auth.passwords.UserDatabase}; the avatar id is the user name (str).

    An unknown user is checked against a random HA1 so that the work, and
    the time, are the same as for a known one: response timing does not say
    which names exist.  A known user with no HA1 for the algorithm the
    client chose (an ``htdigest`` user answering SHA-256, an ``htpasswd -B``
    user answering Digest at all) is refused with L{NoUsableHash}, naming
    what the user does have: nothing was checked, so it is no guess, and
    the guard's next 401 offers only that.  The database is asked to
    re-read its files first (a stat of each), so a deleted user cannot log
    in with Digest a moment later.
    """

    credentialInterfaces = (IUsernameDigestHash,)
    _log = Logger()

    def __init__(self, database: _HA1Source, realm: str) -> None:
        self._database = database
        self.realm = realm
        self._dummy = {name: secrets.token_hex(size // 2) for name, size in _HEX_LENGTH.items()}

    def requestAvatarId(self, credentials: IUsernameDigestHash) -> defer.Deferred[AvatarId]:
        try:
            return defer.succeed(self.check_now(credentials))
        except error.UnauthorizedLogin:
            return defer.fail()

    def check_now(self, credentials: IUsernameDigestHash) -> bytes:
        """The user's avatar id when the response is right, checked in place; else raises UnauthorizedLogin."""
        reload = getattr(self._database, "reload_if_changed", None)
        if reload is not None:
            reload()
        username = getattr(credentials, "username", None)
        algorithm = getattr(credentials, "algorithm", "MD5")
        realm = getattr(credentials, "realm", None)
        if isinstance(username, bytes):  # Twisted's own DigestedCredentials
            username = username.decode("utf-8", "replace")
        if isinstance(realm, bytes):
            realm = realm.decode("utf-8", "replace")
        if isinstance(algorithm, bytes):
            algorithm = algorithm.decode("ascii", "replace")
        algorithm = str(algorithm).upper()
        if algorithm not in _HASHES:
            raise error.UnauthorizedLogin("Digest algorithm not supported")
        ha1 = None
        if isinstance(username, str) and realm == self.realm:
            ha1 = self._database.ha1(username, self.realm, algorithm)
            available: _Available | None = getattr(self._database, "available", None)
            usable = available(username) if ha1 is None and available is not None else ()
            if usable:
                raise NoUsableHash(username, algorithm, usable)
        matched = credentials.checkHash(ha1 if ha1 is not None else self._dummy[algorithm])
        if ha1 is not None and matched is True and isinstance(username, str):
            return username.encode("utf-8")
        if getattr(credentials, "stale", False):
            raise StaleNonce("Digest nonce count already used")
        raise error.UnauthorizedLogin("Digest login failed")
