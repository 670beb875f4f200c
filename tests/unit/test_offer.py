"""
What each 401 offers (boatwist.auth.offer), the guard that renders it
(boatwist.web.guard.Unauthorized), the Digest checker's NoUsableHash, Basic
against an HA1, and the nonce key kept across restarts -- issue 8 items 1
and 2, on deterministic tools: real password files (written by
L{set_password} and by hand, as the Apache tools write them), a L{Clock},
L{DummyRequest}.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from twisted.cred import error
from twisted.cred.credentials import UsernamePassword
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.web.test.requesthelper import DummyRequest

from boatwist.auth.checkers import BcryptChecker, ThrottledChecker
from boatwist.auth.digest import DigestAuthority, DigestChallengeFactory, DigestChecker, persistent_key
from boatwist.auth.offer import ChallengeOffer
from boatwist.auth.passwords import UserDatabase, set_password
from boatwist.auth.portal import digest_order
from boatwist.auth.refusals import NoUsableHash, NotAGuess, StaleNonce
from boatwist.auth.throttle import LoginThrottle, Standing
from boatwist.web.guard import Unauthorized
from boatwist.workers import SynchronousRunner

REALM = "boatwist"


def htdigest_line(user: str, password: str) -> str:
    """The line Apache's htdigest writes: user:realm:MD5(user:realm:password)."""
    return f"{user}:{REALM}:{hashlib.md5(f'{user}:{REALM}:{password}'.encode()).hexdigest()}\n"


def htpasswd_line(user: str, password: str) -> str:
    import bcrypt

    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    users, digest = tmp_path / "users.htpasswd", tmp_path / "users.htdigest"
    set_password(users, digest, REALM, "alice", "alice-pw", rounds=4)
    return users, digest


def offer_for(files: tuple[Path, Path], algorithms: tuple[str, ...] = ("SHA-256", "MD5"), basic: bool = True,
              digest: bool = True, events: list[dict] | None = None) -> ChallengeOffer:
    database = UserDatabase(*files, realm=REALM)
    authority = DigestAuthority(REALM, Clock(), 300, algorithms=algorithms) if digest else None
    offer = ChallengeOffer(database, REALM, algorithms, authority, basic, order=digest_order)
    if events is not None:
        offer._log = Logger(namespace="test", observer=events.append)
    return offer


def summary(challenges: list[tuple[bytes, dict[str, bytes]]]) -> list[str]:
    return [f"Digest {p['algorithm'].decode()}" if s == b"digest" else "Basic" for s, p in challenges]


def test_full_offer_when_every_user_has_every_hash(files: tuple[Path, Path]) -> None:
    """Users made by embweb-passwd: Digest SHA-256, Digest MD5, Basic, in that order; nobody limits it."""
    offer = offer_for(files)
    assert summary(offer.challenges(DummyRequest([b""]))) == ["Digest SHA-256", "Digest MD5", "Basic"]
    assert offer.state().limited_by == () and offer.state().digest_less == ()


def test_an_htdigest_user_turns_sha256_off_for_everyone_and_is_named(files: tuple[Path, Path]) -> None:
    """
    One user with only an MD5 HA1: the offer is the algorithm every Digest
    user has (MD5), so clients that read only the first or only the last
    challenge answer what that user has; the log line names the user and
    the fix.
    """
    users, digest = files
    with digest.open("a") as f:
        f.write(htdigest_line("carol", "pw"))
    events: list[dict] = []
    offer = offer_for(files, events=events)
    assert summary(offer.challenges(DummyRequest([b""]))) == ["Digest MD5", "Basic"]
    [line] = [e["offer"] for e in events]
    assert line.startswith("HTTP authentication offers Digest MD5, Basic; Digest SHA-256 is not offered because "
                           "'carol' has no SHA-256 HA1"), line
    assert "embweb-passwd passwd" in line
    offer.state()
    assert len(events) == 1, "logged again though nothing changed"
    set_password(users, digest, REALM, "carol", "pw", rounds=4)
    offer._db.reload_if_changed()
    assert summary(offer.challenges(DummyRequest([b""]))) == ["Digest SHA-256", "Digest MD5", "Basic"]
    assert events[-1]["offer"] == "HTTP authentication offers Digest SHA-256, Digest MD5, Basic"


def test_a_bcrypt_only_user_limits_nothing_but_gets_basic_on_a_second_round(files: tuple[Path, Path]) -> None:
    """
    A user with only a bcrypt line (htpasswd -B) leaves the others their
    Digest offer; the 401 to that user's Digest answer (NoUsableHash)
    offers Basic alone.  The log names them.
    """
    users, _digest = files
    with users.open("a") as f:
        f.write(htpasswd_line("dave", "pw"))
    events: list[dict] = []
    offer = offer_for(files, events=events)
    assert summary(offer.challenges(DummyRequest([b""]))) == ["Digest SHA-256", "Digest MD5", "Basic"]
    refusal = NoUsableHash("dave", "SHA-256", ("basic",))
    assert summary(offer.challenges(DummyRequest([b""]), refusal)) == ["Basic"]
    assert "'dave' has no HA1 at all" in events[0]["offer"]


def test_second_round_for_a_user_without_the_chosen_algorithm(files: tuple[Path, Path]) -> None:
    """A user who has MD5 but answered SHA-256 (the offer changed in between) is offered MD5 and Basic."""
    offer = offer_for(files)
    refusal = NoUsableHash("carol", "SHA-256", ("MD5", "basic"))
    assert summary(offer.challenges(DummyRequest([b""]), refusal)) == ["Digest MD5", "Basic"]
    # Nothing this server speaks: the whole offer again rather than an empty 401.
    none = NoUsableHash("erin", "SHA-256", ("basic",))
    assert summary(offer_for(files, basic=False).challenges(DummyRequest([b""]), none)) == [
        "Digest SHA-256", "Digest MD5"]


def test_no_digest_at_all_when_no_user_has_an_ha1(tmp_path: Path) -> None:
    """Only htpasswd -B users: Digest is not offered (it would cost every browser a second dialog)."""
    users = tmp_path / "users.htpasswd"
    users.write_text(htpasswd_line("dave", "pw"))
    offer = offer_for((users, tmp_path / "users.htdigest"))
    assert summary(offer.challenges(DummyRequest([b""]))) == ["Basic"]
    assert "Digest SHA-256 is not offered because no user has an HA1" in offer.state().describe()


def test_old_urllib_still_gets_md5_first(files: tuple[Path, Path]) -> None:
    """The per-client order (urllib before 3.14) still applies to the offer."""
    request = DummyRequest([b""])
    request.requestHeaders.setRawHeaders(b"user-agent", [b"Python-urllib/3.11"])
    assert summary(offer_for(files).challenges(request)) == ["Digest MD5", "Digest SHA-256", "Basic"]


def test_digest_off(files: tuple[Path, Path]) -> None:
    """[auth] schemes = basic: Basic alone, whatever the files hold."""
    assert summary(offer_for(files, digest=False).challenges(DummyRequest([b""]))) == ["Basic"]


# ----------------------------------------------------------------- the 401


def test_unauthorized_renders_the_offer_for_this_refusal() -> None:
    """The guard's 401 asks the offer with the refusal, quotes every value, and sends no Retry-After by default."""
    seen: list[Any] = []

    def challenges(request: Any, refusal: BaseException | None) -> list[tuple[bytes, dict[str, bytes]]]:
        seen.append(refusal)
        return [(b"digest", {"realm": b'r"q', "algorithm": b"MD5"}), (b"basic", {"realm": b"r"})]

    refusal = NoUsableHash("dave", "MD5", ("basic",))
    request = DummyRequest([b""])
    assert b"Login needed" in Unauthorized(challenges, refusal).render(request)  # the page saying what to do
    assert request.responseCode == 401 and seen == [refusal]
    assert request.responseHeaders.getRawHeaders(b"www-authenticate") == [
        b'digest realm="r\\"q", algorithm="MD5"', b'basic realm="r"']
    assert request.responseHeaders.getRawHeaders(b"retry-after") is None


@pytest.mark.parametrize("retry_after, header", [(12, b"12"), (0.2, b"1"), (299.5, b"300")])
def test_a_refusal_that_says_when_gets_retry_after(retry_after: float, header: bytes) -> None:
    """Any refusal with a numeric retry_after (a throttled login) gets Retry-After, whole seconds rounded up."""
    class Throttled(error.UnauthorizedLogin):
        pass

    refusal = Throttled("too many failed logins")
    refusal.retry_after = retry_after  # type: ignore[attr-defined]
    request = DummyRequest([b""])
    Unauthorized(lambda r, f: [], refusal).render(request)
    assert request.responseHeaders.getRawHeaders(b"retry-after") == [header]


# ---------------------------------------------------------------- checkers


def test_digest_checker_says_what_the_user_has(files: tuple[Path, Path]) -> None:
    """
    A Digest answer naming a user with no HA1 for its algorithm is refused
    with NoUsableHash (not a guess) naming what the user has; an unknown
    user is an ordinary failure.
    """
    from test_digest import client_response, make_request

    users, digest = files
    with users.open("a") as f:
        f.write(htpasswd_line("dave", "pw"))
    with digest.open("a") as f:
        f.write(htdigest_line("carol", "pw"))
    checker = DigestChecker(UserDatabase(users, digest, realm=REALM), REALM)
    factory = DigestChallengeFactory(DigestAuthority(REALM, Clock(), 300), "SHA-256")

    def attempt(user: str) -> Any:
        header = client_response(factory.getChallenge(make_request()), user, "pw", algorithm="SHA-256", realm=REALM)
        result: list[Any] = []
        checker.requestAvatarId(factory.decode(header, make_request())).addBoth(result.append)
        return result[0]

    dave = attempt("dave")
    assert dave.check(NoUsableHash) and dave.check(NotAGuess) and dave.check(error.UnauthorizedLogin)
    assert (dave.value.user, dave.value.scheme, dave.value.available) == ("dave", "SHA-256", ("basic",))
    carol = attempt("carol")
    assert carol.check(NoUsableHash) and carol.value.available == ("MD5", "basic")
    nobody = attempt("nobody")
    assert nobody.check(error.UnauthorizedLogin) and not nobody.check(NotAGuess)


def test_basic_checks_an_htdigest_users_password_against_the_ha1(files: tuple[Path, Path]) -> None:
    """A user with only an MD5 HA1 logs in with Basic (and the chat port): H(user:realm:password) must match."""
    users, digest = files
    with digest.open("a") as f:
        f.write(htdigest_line("carol", "carol-pw"))
    checker = BcryptChecker(UserDatabase(users, digest, realm=REALM), SynchronousRunner().run, Clock().seconds, 0)

    def attempt(password: str) -> Any:
        result: list[Any] = []
        checker.requestAvatarId(UsernamePassword(b"carol", password.encode())).addBoth(result.append)
        return result[0]

    assert attempt("carol-pw") == b"carol"
    assert attempt("wrong").check(error.UnauthorizedLogin)


def test_throttle_refunds_what_is_not_a_guess() -> None:
    """
    Neither a stale nonce nor a missing hash spends the name's checks or marks
    the address as guessing; a wrong password does.
    """
    clock = Clock()
    clock.advance(1000)
    throttle = LoginThrottle(clock, clock.seconds, max_guesses=6, max_wait=5.0, max_failures=2, window=60.0)

    class Inner:
        credentialInterfaces = ()

        def __init__(self) -> None:
            self.refusal: Exception = NoUsableHash("dave", "SHA-256", ("basic",))

        def requestAvatarId(self, credentials: Any) -> Any:
            raise self.refusal

    inner = Inner()
    checker = ThrottledChecker(inner, throttle, clock)
    credentials = UsernamePassword(b"dave", b"pw")
    credentials.peer_host = "10.0.0.1"  # type: ignore[attr-defined]
    results: list[Any] = []
    for refusal in [NoUsableHash("dave", "SHA-256", ("basic",))] * 5 + [StaleNonce("again")] * 5:
        inner.refusal = refusal
        checker.requestAvatarId(credentials).addErrback(results.append)
    # Ten refusals, each answered at once: no turn was kept (the burst of 6/6 = 1 would be gone).
    assert len(results) == 10 and all(f.check(NotAGuess) for f in results)
    assert throttle.standing("10.0.0.1", "dave") is Standing.CLEAN
    inner.refusal = error.UnauthorizedLogin("wrong")
    wrong = UsernamePassword(b"dave", b"guess")
    wrong.peer_host = "10.0.0.1"  # type: ignore[attr-defined]
    failures: list[Any] = []
    checker.requestAvatarId(wrong).addErrback(failures.append)
    clock.advance(5)
    # A wrong password is a guess: it spends the turn and marks the address.
    assert [f.check(error.UnauthorizedLogin) for f in failures] == [error.UnauthorizedLogin]
    assert throttle.standing("10.0.0.1", "dave") is Standing.SUSPECT


# ----------------------------------------------------------- the nonce key


def test_the_nonce_key_is_made_once_0600_and_kept(tmp_path: Path) -> None:
    """The key is created with mode 0600 and read back unchanged by the next process."""
    path = tmp_path / "digest-nonce.key"
    key = persistent_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert persistent_key(path) == key


def test_a_broken_nonce_key_is_replaced_and_a_symlink_never_followed(tmp_path: Path) -> None:
    """A key of the wrong size is replaced; a symlink in its place is not read through (a key of the process is used)."""
    path = tmp_path / "digest-nonce.key"
    path.write_bytes(b"short")
    key = persistent_key(path)
    assert len(key) == 32 and path.read_bytes() == key
    target = tmp_path / "elsewhere"
    target.write_bytes(b"x" * 32)
    link = tmp_path / "linked.key"
    os.symlink(target, link)
    assert persistent_key(link) != b"x" * 32
    assert target.read_bytes() == b"x" * 32


def test_nonces_of_the_previous_process_are_stale_not_replayable(tmp_path: Path) -> None:
    """
    Issue 8 item 2: with the key kept, a nonce issued before a restart is
    recognised -- the right answer on it gets stale=true (the browser
    retries silently) instead of a plain 401 (the browser asks the person)
    -- and is never accepted: a header captured before the restart cannot
    be replayed after it.
    """
    from test_digest import FakeDatabase, client_response, make_request

    clock = Clock()
    clock.advance(1_700_000_000)
    key = persistent_key(tmp_path / "k")
    before = DigestChallengeFactory(DigestAuthority(REALM, clock, 300, secret=key), "MD5")
    checker = DigestChecker(FakeDatabase(), REALM)
    header = client_response(before.getChallenge(make_request()), "alice", "secret")
    result: list[Any] = []
    checker.requestAvatarId(before.decode(header, make_request())).addBoth(result.append)
    assert result == [b"alice"]
    clock.advance(2)  # the restart
    after = DigestChallengeFactory(DigestAuthority(REALM, clock, 300, secret=persistent_key(tmp_path / "k"),
                                                   forget_before=clock.seconds()), "MD5")
    request = make_request()
    result = []
    checker.requestAvatarId(after.decode(header, request)).addBoth(result.append)
    assert result[0].check(StaleNonce)
    assert after.getChallenge(request)["stale"] == b"true"
    fresh = client_response(after.getChallenge(make_request()), "alice", "secret")
    result = []
    checker.requestAvatarId(after.decode(fresh, make_request())).addBoth(result.append)
    assert result == [b"alice"]
