"""
boatwist.auth.checkers: the bcrypt checker and its cache, the login throttle in front
of a checker, the peer-aware credential factory and the realm.

Users are real htpasswd lines written by L{boatwist.auth.passwords.set_password}
with bcrypt cost 4 (fast); bcrypt runs through an injected runner that the
tests count, hold back or make fail; time is a L{Clock}.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Callable

import bcrypt
import pytest
from twisted.cred import error as cerror
from twisted.cred.credentials import IUsernameDigestHash, UsernamePassword
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.guard import BasicCredentialFactory
from twisted.web.resource import IResource, Resource
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from boatwist.auth.checkers import BcryptChecker, ThrottledChecker
from boatwist.auth.portal import OperatorPortal, OperatorRealm, PeerAwareFactory, basic_factory, peer_of
from boatwist.auth.passwords import UserDatabase, set_password
from boatwist.workers import SynchronousRunner
from boatwist.auth.throttle import LoginThrottle, Standing, TooManyAttempts

REALM = "boatwist"
PASSWORD = "correct horse battery"
SECRET_WORDS = ("correct horse battery", "Tr0ub4dor&3", "wrong-guess-123")


class CountingRunner:
    """Runs the work at once (SynchronousRunner) and counts the runs."""

    def __init__(self) -> None:
        self.calls = 0
        self._inner = SynchronousRunner()

    def __call__(self, work: Callable[[], Any]) -> "defer.Deferred[Any]":
        self.calls += 1
        return self._inner.run(work)


class HeldRunner:
    """Runs nothing until the test says so: each run is an unfired Deferred."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[], Any], defer.Deferred[Any]]] = []

    def __call__(self, work: Callable[[], Any]) -> "defer.Deferred[Any]":
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append((work, d))
        return d

    def run_next(self) -> None:
        work, d = self.pending.pop(0)
        d.callback(work())


class Users:
    def __init__(self, tmp_path: Path) -> None:
        self.htpasswd = tmp_path / "users.htpasswd"
        self.htdigest = tmp_path / "users.htdigest"

    def set(self, user: str, password: str, rounds: int = 4) -> None:
        set_password(self.htpasswd, self.htdigest, REALM, user, password, rounds=rounds)

    def database(self) -> UserDatabase:
        return UserDatabase(self.htpasswd, self.htdigest)


def creds(user: str | bytes, password: str | bytes, peer: str | None = None) -> UsernamePassword:
    c = UsernamePassword(user if isinstance(user, bytes) else user.encode(),
                         password if isinstance(password, bytes) else password.encode())
    if peer is not None:
        c.peer_host = peer  # type: ignore[attr-defined]
    return c


@pytest.fixture
def logged() -> Any:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


class BcryptCheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        import tempfile

        self.tmp = Path(tempfile.mkdtemp())
        self.users = Users(self.tmp)
        self.users.set("alice", PASSWORD)
        self.users.set("bob", "bobs password")
        self.clock = Clock()
        self.runner = CountingRunner()

    def tearDown(self) -> None:
        import shutil

        shutil.rmtree(self.tmp)

    def checker(self, runner: Any = None, ttl: float = 300.0) -> BcryptChecker:
        return BcryptChecker(self.users.database(), runner or self.runner, self.clock.seconds, ttl)

    def test_good_password_gives_the_avatar(self) -> None:
        """The right password for a user in the htpasswd file gives the user name as avatar id."""
        self.assertEqual(self.successResultOf(self.checker().requestAvatarId(creds("alice", PASSWORD))), b"alice")
        self.assertEqual(self.runner.calls, 1)

    def test_str_credentials_are_accepted(self) -> None:
        """Credentials given as str (the chat port) work like bytes."""
        c = UsernamePassword("alice", PASSWORD)  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(self.checker().requestAvatarId(c)), b"alice")

    def test_bad_password_is_unauthorized(self) -> None:
        """A wrong password fails with UnauthorizedLogin."""
        self.failureResultOf(self.checker().requestAvatarId(creds("alice", "nope")), cerror.UnauthorizedLogin)

    def test_unknown_user_costs_one_bcrypt_at_the_users_cost(self) -> None:
        """
        An unknown user fails like a wrong password, after the same work: one
        run of the runner doing one bcrypt at the cost the users' hashes have
        (else the time of a failed login tells which names exist).
        """
        costs: list[int] = []
        real_hashpw, real_checkpw = bcrypt.hashpw, bcrypt.checkpw

        def hashpw(password: bytes, salt: bytes) -> bytes:
            costs.append(int(salt.split(b"$")[2]))
            return real_hashpw(password, salt)

        def checkpw(password: bytes, hashed: bytes) -> bool:
            costs.append(int(hashed.split(b"$")[2]))
            return real_checkpw(password, hashed)

        checker = self.checker()
        self.patch(bcrypt, "hashpw", hashpw)
        self.patch(bcrypt, "checkpw", checkpw)
        self.failureResultOf(checker.requestAvatarId(creds("mallory", "x")), cerror.UnauthorizedLogin)
        self.failureResultOf(checker.requestAvatarId(creds(b"\xff\xfe", "x")), cerror.UnauthorizedLogin)
        self.assertEqual(self.runner.calls, 2)
        self.assertEqual(costs, [4, 4])
        self.failureResultOf(checker.requestAvatarId(creds("alice", "wrong")), cerror.UnauthorizedLogin)
        self.assertEqual(costs, [4, 4, 4])

    def test_unknown_user_cost_is_the_most_common_one(self) -> None:
        """With users of different costs the dummy check takes the most common cost; 12 with no users."""
        for name in ("carol", "dave", "erin"):  # three at cost 5, two (alice, bob) at cost 4
            self.users.set(name, name + "s password", rounds=5)
        salts: list[bytes] = []
        self.patch(bcrypt, "hashpw", lambda password, salt: salts.append(salt) or b"$2b$05$" + b"x" * 53)
        self.failureResultOf(self.checker().requestAvatarId(creds("nobody", "x")), cerror.UnauthorizedLogin)
        self.assertEqual(int(salts[-1].split(b"$")[2]), 5)
        empty = BcryptChecker(UserDatabase(self.tmp / "none", self.tmp / "none2"), self.runner,
                              self.clock.seconds, 300)
        self.failureResultOf(empty.requestAvatarId(creds("nobody", "x")), cerror.UnauthorizedLogin)
        self.assertEqual(int(salts[-1].split(b"$")[2]), 12)

    def test_password_over_72_bytes_is_refused_after_the_same_work(self) -> None:
        """
        bcrypt only reads 72 bytes: a longer password is refused (never
        truncated into a match), still through the runner.
        """
        self.users.set("long", "a" * 72)
        checker = self.checker()
        self.assertEqual(self.successResultOf(checker.requestAvatarId(creds("long", "a" * 72))), b"long")
        self.failureResultOf(checker.requestAvatarId(creds("long", "a" * 73)), cerror.UnauthorizedLogin)
        self.failureResultOf(checker.requestAvatarId(creds("long", "a" * 200)), cerror.UnauthorizedLogin)
        self.assertEqual(self.runner.calls, 3)

    def test_cache_hit_skips_bcrypt(self) -> None:
        """A credential verified a moment ago is not checked again."""
        checker = self.checker()
        for _ in range(3):
            self.assertEqual(self.successResultOf(checker.requestAvatarId(creds("alice", PASSWORD))), b"alice")
        self.assertEqual(self.runner.calls, 1)

    def test_failures_are_not_cached(self) -> None:
        """A wrong password is checked every time (and never becomes right by caching)."""
        checker = self.checker()
        for _ in range(2):
            self.failureResultOf(checker.requestAvatarId(creds("alice", "nope")), cerror.UnauthorizedLogin)
        self.assertEqual(self.runner.calls, 2)

    def test_cache_is_per_password(self) -> None:
        """A cached good password does not let another password of the same user in."""
        checker = self.checker()
        self.successResultOf(checker.requestAvatarId(creds("alice", PASSWORD)))
        self.failureResultOf(checker.requestAvatarId(creds("alice", PASSWORD + "x")), cerror.UnauthorizedLogin)

    def test_cache_expires_after_ttl(self) -> None:
        """After cache_ttl seconds the credential is checked with bcrypt again."""
        checker = self.checker(ttl=60)
        self.successResultOf(checker.requestAvatarId(creds("alice", PASSWORD)))
        self.clock.advance(59.9)
        self.successResultOf(checker.requestAvatarId(creds("alice", PASSWORD)))
        self.assertEqual(self.runner.calls, 1)
        self.clock.advance(0.1)
        self.successResultOf(checker.requestAvatarId(creds("alice", PASSWORD)))
        self.assertEqual(self.runner.calls, 2)

    def test_zero_ttl_means_no_cache(self) -> None:
        """cache_ttl = 0 checks every time."""
        checker = self.checker(ttl=0)
        self.successResultOf(checker.requestAvatarId(creds("alice", PASSWORD)))
        self.successResultOf(checker.requestAvatarId(creds("alice", PASSWORD)))
        self.assertEqual(self.runner.calls, 2)

    def test_cache_cleared_when_the_users_file_changes(self) -> None:
        """Any change of the users file drops every cached credential; a changed password stops working."""
        checker = self.checker()
        self.successResultOf(checker.requestAvatarId(creds("alice", PASSWORD)))
        self.users.set("bob", "another password for bob")
        self.successResultOf(checker.requestAvatarId(creds("alice", PASSWORD)))
        self.assertEqual(self.runner.calls, 2)
        self.users.set("alice", "new password")
        self.failureResultOf(checker.requestAvatarId(creds("alice", PASSWORD)), cerror.UnauthorizedLogin)
        self.assertEqual(self.successResultOf(checker.requestAvatarId(creds("alice", "new password"))), b"alice")

    def test_concurrent_identical_checks_share_one_run(self) -> None:
        """Two requests with the same credential while bcrypt runs wait for the same single run."""
        held = HeldRunner()
        checker = self.checker(runner=held)
        first = checker.requestAvatarId(creds("alice", PASSWORD))
        second = checker.requestAvatarId(creds("alice", PASSWORD))
        other = checker.requestAvatarId(creds("alice", "a guess"))
        self.assertEqual(len(held.pending), 2)
        self.assertNoResult(first)
        self.assertNoResult(second)
        held.run_next()
        self.assertEqual(self.successResultOf(first), b"alice")
        self.assertEqual(self.successResultOf(second), b"alice")
        held.run_next()
        self.failureResultOf(other, cerror.UnauthorizedLogin)
        checker.requestAvatarId(creds("alice", PASSWORD))
        self.assertEqual(held.pending, [])  # cached now

    def test_check_begun_before_a_password_change_answers_only_for_the_old_file(self) -> None:
        """
        A check started against the old hashes neither answers a request made
        after the users file changed nor leaves the old password in the cache.
        """
        held = HeldRunner()
        checker = self.checker(runner=held)
        before = checker.requestAvatarId(creds("alice", PASSWORD))
        self.users.set("alice", "revoked the old one")
        after = checker.requestAvatarId(creds("alice", PASSWORD))
        self.assertEqual(len(held.pending), 2)  # not joined to the old check
        held.run_next()
        self.assertEqual(self.successResultOf(before), b"alice")  # it was right when asked
        held.run_next()
        self.failureResultOf(after, cerror.UnauthorizedLogin)
        again = checker.requestAvatarId(creds("alice", PASSWORD))
        self.assertEqual(len(held.pending), 1)  # not served from the cache
        held.run_next()
        self.failureResultOf(again, cerror.UnauthorizedLogin)

    def test_runner_failure_is_a_refusal_and_does_not_stick(self) -> None:
        """If the runner fails (or raises at once) the login fails, and the next attempt runs afresh."""
        calls: list[int] = []

        def failing(work: Callable[[], Any]) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("thread pool gone")
            return defer.fail(RuntimeError("worker died"))

        checker = self.checker(runner=failing)
        self.failureResultOf(checker.requestAvatarId(creds("alice", PASSWORD)), cerror.UnauthorizedLogin)
        self.failureResultOf(checker.requestAvatarId(creds("alice", PASSWORD)), cerror.UnauthorizedLogin)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        checker._run = self.runner
        self.assertEqual(self.successResultOf(checker.requestAvatarId(creds("alice", PASSWORD))), b"alice")


# ------------------------------------------------------- ThrottledChecker


class FakeInner:
    """A checker answering from a dict of good passwords, counting calls."""

    credentialInterfaces = (object,)

    def __init__(self, good: dict[bytes, bytes]) -> None:
        self.good = good
        self.calls: list[bytes] = []

    def requestAvatarId(self, credentials: Any) -> "defer.Deferred[bytes]":
        self.calls.append(credentials.username)
        if self.good.get(credentials.username) == credentials.password:
            return defer.succeed(credentials.username)
        return defer.fail(cerror.UnauthorizedLogin())


class Throttled:
    """A ThrottledChecker over FakeInner, with its throttle, on a Clock; the users-file generation is settable."""

    def __init__(self, max_guesses: int = 60, max_failures: int = 3, window: float = 300.0,
                 delay: float = 0.5) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.generation = 1
        self.throttle = LoginThrottle(self.clock, self.clock.seconds, max_guesses=max_guesses, max_wait=5.0,
                                      max_failures=max_failures, window=window)
        self.inner = FakeInner({b"alice": PASSWORD.encode(), b"bob": b"Tr0ub4dor&3"})
        self.audited: list[tuple[str, str, str, str]] = []
        self.checker = ThrottledChecker(self.inner, self.throttle, self.clock,
                                        lambda *a: self.audited.append(a), failure_delay=delay,
                                        generation=lambda: self.generation, remember=window)

    def attempt(self, user: str, password: str, peer: str) -> "defer.Deferred[bytes]":
        return self.checker.requestAvatarId(creds(user, password, peer))


def results(d: defer.Deferred[Any], clock: Clock | None = None) -> list[Any]:
    """What C{d} fired with; with C{clock}, after advancing it past any failure delay."""
    out: list[Any] = []
    d.addBoth(out.append)
    if clock is not None:
        clock.advance(10)
    return out


def login_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_namespace") == "boatwist.login"]


def test_throttled_success_passes_the_inner_avatar() -> None:
    """A good login goes through to the inner checker and returns its avatar id."""
    t = Throttled()
    assert results(t.attempt("alice", PASSWORD, "10.0.0.1")) == [b"alice"]
    assert t.inner.calls == [b"alice"]
    assert t.checker.credentialInterfaces == t.inner.credentialInterfaces


def test_a_wrong_password_is_answered_after_failure_delay() -> None:
    """A failed check is answered failure_delay seconds late, on the injected clock; a right one at once."""
    t = Throttled(delay=0.5)
    outcome = results(t.attempt("alice", "wrong", "10.0.0.1"))
    assert outcome == [] and t.inner.calls == [b"alice"]
    t.clock.advance(0.49)
    assert outcome == []
    t.clock.advance(0.01)
    assert outcome[0].check(cerror.UnauthorizedLogin)
    assert results(t.attempt("alice", PASSWORD, "10.0.0.2")) == [b"alice"]


def test_failures_are_recorded_logged_with_address_and_audited(logged: list[dict[str, Any]]) -> None:
    """A failed login spends the name's turn, is logged with the address, and goes to the audit log."""
    t = Throttled()
    [outcome] = results(t.attempt("alice", "wrong-guess-123", "10.3.3.3"), t.clock)
    assert outcome.check(cerror.UnauthorizedLogin)
    failed = [e for e in login_events(logged) if "failed login" in e["log_format"]]
    assert len(failed) == 1
    assert failed[0]["peer"] == "10.3.3.3" and failed[0]["user"] == "alice"
    assert "10.3.3.3" in formatEvent(failed[0])
    assert t.audited == [("login-failed", "alice", "10.3.3.3", "http")]
    assert t.throttle.standing("10.3.3.3", "alice") is Standing.SUSPECT


def test_success_is_logged_and_audited_once_per_window(logged: list[dict[str, Any]]) -> None:
    """
    The guard logs in on every request: a login is logged and audited once
    per failure_window for an address and user, not on every request.
    """
    t = Throttled(window=300)
    for _ in range(3):
        assert results(t.attempt("alice", PASSWORD, "10.0.0.1")) == [b"alice"]
    logins = [e for e in login_events(logged) if e["log_format"].startswith("login {user")]
    assert len(logins) == 1 and logins[0]["peer"] == "10.0.0.1"
    assert t.audited == [("login", "alice", "10.0.0.1", "http")]
    t.clock.advance(300)
    results(t.attempt("alice", PASSWORD, "10.0.0.1"))
    assert len([e for e in login_events(logged) if e["log_format"].startswith("login {user")]) == 2
    assert len(t.audited) == 2


def test_no_password_ever_reaches_the_log(logged: list[dict[str, Any]]) -> None:
    """Whatever happens (success, failure, refusal), no log event carries a password."""
    t = Throttled(max_guesses=12)
    results(t.attempt("alice", PASSWORD, "10.0.0.1"))
    results(t.attempt("bob", "wrong-guess-123", "10.0.0.2"), t.clock)
    results(t.attempt("bob", "Tr0ub4dor&3", "10.0.0.2"))
    for n in range(20):
        results(t.attempt("bob", f"wrong-guess-123{n}", f"10.0.1.{n}"))  # some refused: no turns left
    t.clock.advance(100)
    assert login_events(logged)
    for event in logged:
        text = formatEvent(event) + repr(event)
        for word in SECRET_WORDS:
            assert word not in text


def test_throttle_without_audit_callback() -> None:
    """The audit callback is optional."""
    t = Throttled()
    checker = ThrottledChecker(t.inner, t.throttle, t.clock)
    assert results(checker.requestAvatarId(creds("alice", PASSWORD, "10.0.0.1"))) == [b"alice"]
    [outcome] = results(checker.requestAvatarId(creds("alice", "no", "10.0.0.1")), t.clock)
    assert outcome.check(cerror.UnauthorizedLogin)


def test_credentials_without_peer_count_as_unknown() -> None:
    """Credentials that carry no peer address are throttled under 'unknown'."""
    t = Throttled()
    results(t.checker.requestAvatarId(creds("alice", "no")), t.clock)
    assert t.audited == [("login-failed", "alice", "unknown", "http")]


# ------------------------------------------------- factory, realm, peer_of


def test_peer_aware_factory_attaches_the_peer_address() -> None:
    """Decoded credentials carry peer_host, the request's client address; challenge and scheme are the inner's."""
    factory = basic_factory(REALM)
    assert factory.scheme == b"basic"
    request = DummyRequest([b""])
    request.client = IPv4Address("TCP", "10.4.4.4", 1234)  # DummyRequest's client= argument is ignored
    assert factory.getChallenge(request) == {"realm": REALM.encode()}
    c = factory.decode(base64.b64encode(b"alice:" + PASSWORD.encode()), request)
    assert (c.username, c.password, c.peer_host) == (b"alice", PASSWORD.encode(), "10.4.4.4")


def test_peer_aware_factory_keeps_the_inner_errors() -> None:
    """A malformed response still fails as the inner factory says."""
    factory = PeerAwareFactory(BasicCredentialFactory(b"r"))
    with pytest.raises(cerror.LoginFailed):
        factory.decode(b"!!!not base64", DummyRequest([b""], client=IPv4Address("TCP", "10.4.4.4", 1)))


@pytest.mark.parametrize("token", [b"!!!not base64", base64.b64encode(b"no colon here")])
def test_basic_factory_refuses_what_is_not_user_colon_password(token: bytes) -> None:
    """Not base64, or no colon: LoginFailed (a 401), as twisted.web.guard's own factory."""
    with pytest.raises(cerror.LoginFailed):
        basic_factory(REALM).decode(token, DummyRequest([b""], client=IPv4Address("TCP", "10.4.4.4", 1)))


def test_basic_factory_keeps_colons_in_the_password() -> None:
    """Only the first colon separates the user name (RFC 7617)."""
    request = DummyRequest([b""])
    c = basic_factory(REALM).decode(base64.b64encode(b"alice:a:b:c"), request)
    assert (c.username, c.password, c.via) == (b"alice", b"a:b:c", "http")


def test_peer_of_without_an_ip_address() -> None:
    """A request with no IP client address is 'unknown'."""
    assert peer_of(DummyRequest([b""])) == "unknown"


def test_operator_realm_gives_the_users_resource_and_a_no_op_logout() -> None:
    """The realm builds the user's resource tree (user as str) and a logout that does nothing."""
    made: list[str] = []

    def factory(user: str) -> Resource:
        made.append(user)
        return Resource()

    realm = OperatorRealm(factory)
    interface, avatar, logout = realm.requestAvatar(b"alice", None, IResource)
    assert interface is IResource and isinstance(avatar, Resource)
    assert made == ["alice"]
    assert logout() is None
    with pytest.raises(NotImplementedError):
        realm.requestAvatar(b"alice", None, object)


# ---------------------------------------------------------- Digest order


def _request_with_agent(agent: bytes | None) -> Any:
    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest([b"api", b"whoami"])
    if agent is not None:
        request.requestHeaders.setRawHeaders(b"user-agent", [agent])
    return request


def test_browsers_and_curl_are_offered_the_stronger_algorithm_first() -> None:
    """Clients that take the first challenge they know get SHA-256 first."""
    from boatwist.auth.portal import digest_order

    for agent in (b"Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0", b"curl/7.88.1", None, b"Python-urllib/3.14"):
        assert digest_order(_request_with_agent(agent), ("SHA-256", "MD5")) == ("SHA-256", "MD5")


def test_old_urllib_is_offered_md5_first() -> None:
    """urllib before 3.14 reads only the first challenge and fails on SHA-256: it gets MD5 first."""
    from boatwist.auth.portal import digest_order

    for agent in (b"Python-urllib/3.11", b"Python-urllib/3.9", b"Python-urllib/3.13"):
        assert digest_order(_request_with_agent(agent), ("SHA-256", "MD5")) == ("MD5", "SHA-256")
    # Not offered at all: nothing is added.
    assert digest_order(_request_with_agent(b"Python-urllib/3.11"), ("SHA-256",)) == ("SHA-256",)


def test_digest_slots_follow_the_order_and_all_decode() -> None:
    """Each guard slot challenges with its algorithm for this client; decoding is shared."""
    from twisted.internet.task import Clock

    from boatwist.auth.portal import digest_factories
    from boatwist.auth.digest import DigestAuthority

    authority = DigestAuthority("boatwist", Clock(), 300)
    slots = digest_factories(authority, ("SHA-256", "MD5"))
    assert [f.scheme for f in slots] == [b"digest", b"digest"]
    browser = _request_with_agent(b"Mozilla/5.0")
    urllib_client = _request_with_agent(b"Python-urllib/3.11")
    algorithms = lambda request: [f.getChallenge(request)["algorithm"] for f in slots]  # noqa: E731
    assert algorithms(browser) == [b"SHA-256", b"MD5"]
    assert algorithms(urllib_client) == [b"MD5", b"SHA-256"]


def test_identical_parallel_basic_logins_count_once() -> None:
    """A browser loading a page sends the same credentials in parallel: one guess, refunded on success."""

    class Slow(FakeInner):
        def requestAvatarId(self, credentials: Any) -> "defer.Deferred[bytes]":
            self.calls.append(credentials.username)
            d: defer.Deferred[bytes] = defer.Deferred()
            self.pending.append(d)
            return d

    t = Throttled(max_failures=2)
    t.inner = Slow({})
    t.inner.pending = []
    t.checker._inner = t.inner
    outcomes = [results(t.attempt("alice", PASSWORD, "10.0.0.1")) for _ in range(5)]
    assert all(not o for o in outcomes)  # none refused while the first check runs
    assert len(t.inner.pending) == 1  # one check for the five
    for d in t.inner.pending:
        d.callback(b"alice")
    assert [o for o in outcomes] == [[b"alice"]] * 5
    assert t.throttle.standing("10.0.0.1", "alice") is Standing.KNOWN


def test_the_same_wrong_password_resent_is_one_failure() -> None:
    """
    A script resending one mistyped password (issue 8): it is checked once,
    spends one turn and is logged and audited once; the repeats are answered
    wrong at once, without a check.  When the users file changes, it is
    checked again (the password may now be right).
    """
    t = Throttled(max_guesses=12)  # 2 turns at once
    for _ in range(10):
        [outcome] = results(t.attempt("bob", "typo", "10.0.0.1"), t.clock)
        assert outcome.check(cerror.UnauthorizedLogin)
    assert t.inner.calls == [b"bob"]
    assert [a[0] for a in t.audited] == ["login-failed"]
    assert results(t.attempt("bob", "Tr0ub4dor&3", "10.0.0.1")) == [b"bob"]
    assert results(t.attempt("carol", "x", "10.0.0.1"), t.clock)[0].check(cerror.UnauthorizedLogin)
    t.inner.good[b"bob"] = b"typo"
    t.generation += 1
    assert results(t.attempt("bob", "typo", "10.0.0.1")) == [b"bob"]


def test_other_names_failing_at_an_address_never_refuse_a_right_password_there() -> None:
    """Fifty wrong passwords for other names from 10.0.0.1: bob's and alice's right ones are admitted at once."""
    t = Throttled()
    for n in range(50):
        results(t.attempt(f"user{n}", "guess", "10.0.0.1"), t.clock)
    assert results(t.attempt("bob", "Tr0ub4dor&3", "10.0.0.1")) == [b"bob"]
    assert results(t.attempt("alice", PASSWORD, "10.0.0.1")) == [b"alice"]


def test_when_the_names_turns_are_taken_the_attempt_is_refused_unchecked_with_retry_after(
        logged: list[dict[str, Any]]) -> None:
    """
    Guesses from many addresses use up alice's turns: a further one waits,
    and past max_wait is refused with TooManyAttempts (retry_after set) and
    logged, without the password being checked.
    """
    t = Throttled(max_guesses=12, delay=0)
    outcomes = [results(t.attempt("alice", f"guess{n}", f"10.1.0.{n}")) for n in range(10)]
    checked = len(t.inner.calls)
    assert checked == int(t.throttle.burst - t.throttle.reserve)
    refused = [o[0] for o in outcomes if o and o[0].check(TooManyAttempts)]
    assert refused and all(f.value.retry_after >= 1 for f in refused)
    waiting = [o for o in outcomes if not o]
    assert waiting
    t.clock.advance(60)
    assert all(outcomes)
    assert any("login refused" in e["log_format"] for e in login_events(logged))


def test_deleted_or_changed_users_lose_their_open_sessions(tmp_path: Any) -> None:
    """A user removed, or whose password changed, is kicked with reason revoked; others stay."""
    from boatwist.auth.watch import CredentialWatch
    from boatwist.auth.passwords import UserDatabase, delete_user, set_password

    users, digest = tmp_path / "u", tmp_path / "d"
    for name in ("alice", "bob", "carol"):
        set_password(users, digest, "boatwist", name, f"{name}-pw", rounds=4)
    db = UserDatabase(users, digest, realm="boatwist")

    class Kicks:
        def __init__(self) -> None:
            self.kicked: list[tuple[str, str]] = []

        def kick(self, user: str, reason: str = "kicked") -> bool:
            self.kicked.append((user, reason))
            return True

    presence = Kicks()
    watch = CredentialWatch(db, "boatwist", presence)
    watch.check()
    assert presence.kicked == []
    delete_user(users, digest, "boatwist", "bob")
    set_password(users, digest, "boatwist", "carol", "new-pw", rounds=4)
    watch.check()
    assert sorted(presence.kicked) == [("bob", "revoked"), ("carol", "revoked")]
    watch.check()
    assert len(presence.kicked) == 2


class DigestLike:
    """Credentials as DigestCredentials look to the throttle: a user name and a nonce, no password."""

    def __init__(self, user: str, nonce: bytes, right: bool, peer: str) -> None:
        self.username = user
        self.nonce = nonce
        self.right = right
        self.peer_host = peer


class DigestInner:
    credentialInterfaces = (object,)

    def __init__(self) -> None:
        self.calls = 0

    def requestAvatarId(self, credentials: Any) -> "defer.Deferred[bytes]":
        self.calls += 1
        if credentials.right:
            return defer.succeed(credentials.username.encode())
        return defer.fail(cerror.UnauthorizedLogin())


def use_up_turns(t: Throttled, user: str) -> None:
    """Guesses from many addresses until the name has no turn left for anyone but a known address."""
    for n in range(40):
        results(t.attempt(user, f"flood-{n}", f"10.66.0.{n}"))


def test_a_session_that_logged_in_before_is_served_at_once_whoever_guesses() -> None:
    """
    alice's Basic credential, found right before, is admitted at once from
    a new address while her name's turns are taken by guessers; a wrong
    password never matches it (it waits or is refused like any guess).
    """
    t = Throttled(max_guesses=12, delay=0)
    assert results(t.attempt("alice", PASSWORD, "10.0.0.1")) == [b"alice"]
    use_up_turns(t, "alice")
    for n in range(20):
        assert results(t.attempt("alice", PASSWORD, f"10.77.0.{n}")) == [b"alice"]
    outcome = results(t.attempt("alice", "another guess", "10.77.0.99"))
    assert not outcome or outcome[0].check(TooManyAttempts)


def test_a_digest_nonce_that_carried_a_right_answer_is_served_at_once_until_it_carries_a_wrong_one() -> None:
    """
    A Digest client keeps its nonce: once a right answer came on it, later
    requests on it are checked at once, without a turn.  A wrong answer on
    it ends that (and counts as a failure): the next one waits its turn.
    """
    t = Throttled(max_guesses=12, delay=0)
    inner = DigestInner()
    checker = ThrottledChecker(inner, t.throttle, t.clock, generation=lambda: t.generation)
    assert results(checker.requestAvatarId(DigestLike("alice", b"n1", True, "10.0.0.1"))) == [b"alice"]
    use_up_turns(t, "alice")
    for _ in range(10):
        assert results(checker.requestAvatarId(DigestLike("alice", b"n1", True, "10.9.0.1"))) == [b"alice"]
    [wrong] = results(checker.requestAvatarId(DigestLike("alice", b"n1", False, "10.9.0.1")))
    assert wrong.check(cerror.UnauthorizedLogin)
    calls = inner.calls
    after = results(checker.requestAvatarId(DigestLike("alice", b"n1", True, "10.9.0.2")))
    assert (not after or after[0].check(TooManyAttempts)) and inner.calls == calls  # waits its turn now
    # Another user's nonce, or the same nonce for another name, is not a session of alice's.
    t.clock.advance(60)
    assert results(checker.requestAvatarId(DigestLike("bob", b"n1", True, "10.0.0.1"))) == [b"bob"]


@implementer(IUsernameDigestHash)
class DigestAnswer(DigestLike):
    """DigestLike, declared as what a portal sends to a Digest checker."""


class ImmediateInner(DigestInner):
    """A DigestInner that also checks in place, as the real DigestChecker does."""

    credentialInterfaces = (IUsernameDigestHash,)

    def check_now(self, credentials: Any) -> bytes:
        self.calls += 1
        if credentials.right:
            return bytes(credentials.username.encode())
        raise cerror.UnauthorizedLogin()


def test_a_known_digest_session_is_answered_in_place_and_a_wrong_answer_on_it_as_before() -> None:
    """
    ThrottledChecker.answer: the first right answer on a nonce takes its
    turn (a Deferred); the next ones on it are answered in place -- the
    avatar id itself, and the portal's login_now gives the login itself,
    not a Deferred; a wrong answer on it is a Deferred failing as
    requestAvatarId's would, the session ends, and the next answer on that
    nonce waits its turn again.
    """
    t = Throttled(max_guesses=12, delay=0)
    inner = ImmediateInner()
    checker = ThrottledChecker(inner, t.throttle, t.clock, generation=lambda: t.generation)
    first = checker.answer(DigestAnswer("alice", b"n1", True, "10.0.0.1"))
    assert isinstance(first, defer.Deferred) and results(first) == [b"alice"]
    assert checker.answer(DigestAnswer("alice", b"n1", True, "10.0.0.2")) == b"alice"
    portal = OperatorPortal(OperatorRealm(lambda user: Resource()), [checker])
    login = portal.login_now(DigestAnswer("alice", b"n1", True, "10.0.0.2"), None, IResource)
    assert isinstance(login, tuple) and login[0] is IResource
    wrong = checker.answer(DigestAnswer("alice", b"n1", False, "10.0.0.2"))
    assert isinstance(wrong, defer.Deferred)
    [failure] = results(wrong)
    assert failure.check(cerror.UnauthorizedLogin)
    again = checker.answer(DigestAnswer("alice", b"n1", True, "10.0.0.2"))
    assert isinstance(again, defer.Deferred), "the session ended: a turn again"
    assert results(again, t.clock) == [b"alice"]
    # requestAvatarId keeps its contract: always a Deferred.
    assert results(checker.requestAvatarId(DigestAnswer("alice", b"n1", True, "10.0.0.2"))) == [b"alice"]
