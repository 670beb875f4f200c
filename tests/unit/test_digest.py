"""
Tests for boatwist.auth.digest: challenges, responses, replay and staleness,
and the whole guard (HTTPAuthSessionWrapper + Portal) with DummyRequest.

Client responses are computed here with hashlib from RFC 7616's formulas,
independently of the code under test, and once by the standard library's
urllib client.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from twisted.cred import error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameDigestHash
from twisted.cred.portal import IRealm, Portal
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.web.guard import BasicCredentialFactory, HTTPAuthSessionWrapper
from twisted.web.iweb import ICredentialFactory
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from boatwist.auth.digest import (
    DigestAuthority,
    DigestChallengeFactory,
    DigestChecker,
    DigestCredentials,
    StaleNonce,
    parse_params,
)
from boatwist.auth.passwords import UserDatabase, delete_user, set_password
from apache_tools import run_htdigest

REALM = "boatwist"
LIFETIME = 300.0
URI = b"/api/presence?x=1"


# ------------------------------------------------------------------ helpers


def make_request(uri: bytes = URI, method: bytes = b"GET", authorization: bytes | None = None) -> DummyRequest:
    request = DummyRequest(uri.split(b"?")[0].lstrip(b"/").split(b"/"))
    request.uri = uri
    request.method = method
    request.client = IPv4Address("TCP", "127.0.0.1", 50000)
    if authorization is not None:
        request.requestHeaders.addRawHeader(b"authorization", authorization)
    return request


def h(algorithm: str, data: str) -> str:
    return hashlib.new({"MD5": "md5", "SHA-256": "sha256"}[algorithm], data.encode()).hexdigest()


def client_response(
    challenge: dict[str, bytes],
    user: str,
    password: str,
    *,
    algorithm: str = "MD5",
    method: str = "GET",
    uri: str = URI.decode(),
    nc: int = 1,
    cnonce: str = "0a4f113b",
    realm: str | None = None,
    send_algorithm: bool = True,
    params: dict[str, str | None] | None = None,
) -> bytes:
    """
    An Authorization header value (without 'Digest ') computed from RFC 7616 section 3.4.1 with hashlib;
    C{params} then replaces (or, with None, removes) header parameters as sent.
    """
    realm = realm if realm is not None else challenge["realm"].decode()
    nonce = challenge["nonce"].decode()
    ha1 = h(algorithm, f"{user}:{realm}:{password}")
    ha2 = h(algorithm, f"{method}:{uri}")
    ncvalue = f"{nc:08x}"
    response = h(algorithm, f"{ha1}:{nonce}:{ncvalue}:{cnonce}:auth:{ha2}")
    sent: dict[str, str | None] = {
        "username": f'"{user}"',
        "realm": f'"{realm}"',
        "nonce": f'"{nonce}"',
        "uri": f'"{uri}"',
        "algorithm": algorithm if send_algorithm else None,
        "response": f'"{response}"',
        "opaque": f'"{challenge["opaque"].decode()}"',
        "qop": "auth",
        "nc": ncvalue,
        "cnonce": f'"{cnonce}"',
    }
    sent.update(params or {})
    return ", ".join(f"{k}={v}" for k, v in sent.items() if v is not None).encode()


class FakeDatabase:
    """An HA1 source holding the password 'secret' for alice (both algorithms); counts lookups."""

    def __init__(self) -> None:
        self.lookups: list[tuple[str, str, str]] = []

    def ha1(self, user: str, realm: str, algorithm: str) -> str | None:
        self.lookups.append((user, realm, algorithm))
        if user == "alice" and realm == REALM:
            return h(algorithm, f"alice:{REALM}:secret")
        return None


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_700_000_000)  # a plausible wall-clock time
    return clock


@pytest.fixture
def authority(clock: Clock) -> DigestAuthority:
    return DigestAuthority(REALM, clock, LIFETIME)


@pytest.fixture
def md5(authority: DigestAuthority) -> DigestChallengeFactory:
    return DigestChallengeFactory(authority, "MD5")


@pytest.fixture
def sha256(authority: DigestAuthority) -> DigestChallengeFactory:
    return DigestChallengeFactory(authority, "SHA-256")


def login(checker: ICredentialsChecker, credentials: Any) -> Any:
    """The avatar id (the user name, decoded), or the Failure, of a synchronous requestAvatarId."""
    results: list[Any] = []
    checker.requestAvatarId(credentials).addBoth(results.append)
    assert len(results) == 1
    if isinstance(results[0], bytes):
        return results[0].decode("utf-8")
    return results[0]


# --------------------------------------------------------------- round trips


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_round_trip(authority: DigestAuthority, algorithm: str) -> None:
    """A response computed independently from the challenge of either factory decodes to credentials naming the
    user, realm and algorithm, and checks against the right HA1 only."""
    factory = DigestChallengeFactory(authority, algorithm)
    challenge = factory.getChallenge(make_request())
    assert challenge["algorithm"] == algorithm.encode()
    assert challenge["qop"] == b"auth" and challenge["realm"] == REALM.encode()
    assert "stale" not in challenge
    credentials = factory.decode(client_response(challenge, "alice", "secret", algorithm=algorithm), make_request())
    assert IUsernameDigestHash.providedBy(credentials)
    assert (credentials.username, credentials.realm, credentials.algorithm) == ("alice", REALM, algorithm)
    assert not credentials.checkHash(h(algorithm, f"alice:{REALM}:wrong"))
    assert credentials.checkHash(h(algorithm, f"alice:{REALM}:secret"))


def test_factories_provide_icredentialfactory(md5: DigestChallengeFactory, sha256: DigestChallengeFactory) -> None:
    """Both factories are ICredentialFactory with scheme b'digest' (what the guard matches on)."""
    for factory in (md5, sha256):
        verifyObject(ICredentialFactory, factory)
        assert factory.scheme == b"digest"
    verifyObject(ICredentialsChecker, DigestChecker(FakeDatabase(), REALM))


def test_either_factory_decodes_either_algorithm(md5: DigestChallengeFactory, sha256: DigestChallengeFactory) -> None:
    """The guard decodes with the first Digest factory (SHA-256): a response to the MD5 challenge must pass it."""
    challenge = md5.getChallenge(make_request())
    credentials = sha256.decode(client_response(challenge, "alice", "secret", algorithm="MD5"), make_request())
    assert credentials.algorithm == "MD5"
    assert credentials.checkHash(h("MD5", f"alice:{REALM}:secret"))


def test_missing_algorithm_means_md5(md5: DigestChallengeFactory) -> None:
    """RFC 7616: no algorithm parameter means MD5."""
    challenge = md5.getChallenge(make_request())
    credentials = md5.decode(client_response(challenge, "alice", "secret", send_algorithm=False), make_request())
    assert credentials.algorithm == "MD5"


def test_checker_accepts_and_refuses(md5: DigestChallengeFactory) -> None:
    """The checker returns the user name for the right password and UnauthorizedLogin otherwise."""
    checker = DigestChecker(FakeDatabase(), REALM)
    good = md5.decode(client_response(md5.getChallenge(make_request()), "alice", "secret"), make_request())
    assert login(checker, good) == "alice"
    bad = md5.decode(client_response(md5.getChallenge(make_request()), "alice", "nope"), make_request())
    failure = login(checker, bad)
    assert failure.check(error.UnauthorizedLogin) and not failure.check(StaleNonce)


def test_unknown_user_costs_a_hash_check_too(md5: DigestChallengeFactory) -> None:
    """For an unknown user the response is still checked (against a dummy HA1), so timing does not reveal which
    names exist; the result is UnauthorizedLogin."""
    database = FakeDatabase()
    checker = DigestChecker(database, REALM)
    credentials = md5.decode(client_response(md5.getChallenge(make_request()), "mallory", "x"), make_request())
    checked: list[str] = []
    original = credentials.checkHash
    credentials.checkHash = lambda ha1: checked.append(ha1) or original(ha1)  # type: ignore[method-assign]
    failure = login(checker, credentials)
    assert failure.check(error.UnauthorizedLogin)
    assert database.lookups == [("mallory", REALM, "MD5")]
    assert len(checked) == 1 and re.fullmatch("[0-9a-f]{32}", checked[0])


def test_user_with_no_sha256_ha1_cannot_use_sha256(sha256: DigestChallengeFactory, tmp_path: Path) -> None:
    """A user whose file has only an MD5 HA1 (written by htdigest) is refused for a SHA-256 response, not checked
    against the MD5 HA1."""
    digest = tmp_path / "d"
    digest.write_text(f"alice:{REALM}:{h('MD5', f'alice:{REALM}:secret')}\n")
    checker = DigestChecker(UserDatabase(tmp_path / "u", digest, realm=REALM), REALM)
    credentials = sha256.decode(
        client_response(sha256.getChallenge(make_request()), "alice", "secret", algorithm="SHA-256"), make_request()
    )
    assert login(checker, credentials).check(error.UnauthorizedLogin)


# ------------------------------------------------------------ replay, nc


def test_replayed_header_refused(md5: DigestChallengeFactory, authority: DigestAuthority) -> None:
    """The same Authorization header works once: the second time it is refused (StaleNonce, a 401) and that
    request's next challenge says stale=true so a real browser retries without re-prompting."""
    checker = DigestChecker(FakeDatabase(), REALM)
    header = client_response(md5.getChallenge(make_request()), "alice", "secret")
    assert login(checker, md5.decode(header, make_request())) == "alice"
    replay = make_request()
    failure = login(checker, md5.decode(header, replay))
    assert failure.check(StaleNonce) and failure.check(error.UnauthorizedLogin)
    assert md5.getChallenge(replay)["stale"] == b"true"
    assert "stale" not in md5.getChallenge(make_request())


def test_increasing_nc_accepted_lower_refused(md5: DigestChallengeFactory) -> None:
    """One nonce serves many requests with increasing nc (gaps allowed); an nc at or below the highest seen is
    refused."""
    checker = DigestChecker(FakeDatabase(), REALM)
    challenge = md5.getChallenge(make_request())

    def attempt(nc: int) -> Any:
        return login(checker, md5.decode(client_response(challenge, "alice", "secret", nc=nc, cnonce=f"c{nc}"),
                                         make_request()))

    assert attempt(1) == "alice"
    assert attempt(2) == "alice"
    assert attempt(5) == "alice"
    assert attempt(3).check(StaleNonce)
    assert attempt(5).check(StaleNonce)
    assert attempt(6) == "alice"


def test_wrong_password_does_not_use_up_the_nonce(md5: DigestChallengeFactory) -> None:
    """A failed attempt (someone who saw the nonce, without the password) records nothing: the owner's nc=1
    still works."""
    checker = DigestChecker(FakeDatabase(), REALM)
    challenge = md5.getChallenge(make_request())
    assert login(checker, md5.decode(client_response(challenge, "alice", "guess", nc=0xFFFFFFFF),
                                     make_request())).check(error.UnauthorizedLogin)
    assert login(checker, md5.decode(client_response(challenge, "alice", "secret", nc=1), make_request())) == "alice"


def test_nonce_expiring_before_the_check_is_stale(md5: DigestChallengeFactory, clock: Clock) -> None:
    """If the check runs later than the decode (a deferred checker, a throttling delay) and the nonce expired in
    between, the right password is refused as stale rather than accepted on an expired nonce."""
    request = make_request()
    credentials = md5.decode(client_response(md5.getChallenge(make_request()), "alice", "secret"), request)
    clock.advance(LIFETIME + 1)
    assert not credentials.checkHash(h("MD5", f"alice:{REALM}:secret"))
    assert credentials.stale
    assert md5.getChallenge(request)["stale"] == b"true"
    assert md5.authority.tracked() == 0


@pytest.mark.parametrize("nc", ["zzzzzzzz", "1", "000000001", "00000000", "-0000001", '"0000000g"'])
def test_bad_nc_refused(md5: DigestChallengeFactory, nc: str) -> None:
    """nc must be exactly 8 hex digits and not zero."""
    challenge = md5.getChallenge(make_request())
    with pytest.raises(error.LoginFailed):
        md5.decode(client_response(challenge, "alice", "secret", params={"nc": nc}), make_request())


# ------------------------------------------------------------ stale nonces


def test_expired_nonce_is_stale(md5: DigestChallengeFactory, clock: Clock) -> None:
    """A nonce older than the lifetime is refused (StaleNonce) when the response on it is right, and the next
    challenge for that request, from every factory, says stale=true; other requests' do not.  (Issue 8: no
    longer before the password check -- a wrong password on it gets no stale=true, see the next test.)"""
    challenge = md5.getChallenge(make_request())
    header = client_response(challenge, "alice", "secret")
    clock.advance(LIFETIME - 1)
    md5.decode(header, make_request())  # still fine
    clock.advance(2)
    request = make_request()
    assert login(DigestChecker(FakeDatabase(), REALM), md5.decode(header, request)).check(StaleNonce)
    assert md5.getChallenge(request)["stale"] == b"true"
    assert DigestChallengeFactory(md5.authority, "SHA-256").getChallenge(request)["stale"] == b"true"
    assert "stale" not in md5.getChallenge(make_request())


def test_nonce_from_the_future_is_stale(md5: DigestChallengeFactory, clock: Clock) -> None:
    """After the clock steps back, earlier nonces look issued in the future: stale (retry), not accepted forever."""
    challenge = md5.getChallenge(make_request())
    clock.rightNow -= 3600
    request = make_request()
    credentials = md5.decode(client_response(challenge, "alice", "secret"), request)
    assert login(DigestChecker(FakeDatabase(), REALM), credentials).check(StaleNonce)
    assert md5.getChallenge(request)["stale"] == b"true"


@pytest.mark.parametrize("outdated", ["expired", "future", "before this process"])
def test_a_wrong_password_on_an_outdated_nonce_is_not_stale(clock: Clock, outdated: str) -> None:
    """
    Issue 8 item 2 (RFC 7616 section 3.3: stale only for an otherwise valid
    response): a wrong password on an expired, future or previous-process
    nonce is an ordinary failed login -- plain 401, no stale=true, counted
    -- while the right one on the same nonce gets stale=true.
    """
    before = DigestAuthority(REALM, clock, LIFETIME, secret=b"k" * 32)
    challenge = DigestChallengeFactory(before, "MD5").getChallenge(make_request())
    authority = before
    if outdated == "expired":
        clock.advance(LIFETIME + 1)
    elif outdated == "future":
        clock.rightNow -= 3600
    else:
        clock.advance(1)
        authority = DigestAuthority(REALM, clock, LIFETIME, secret=b"k" * 32, forget_before=clock.seconds())
    factory = DigestChallengeFactory(authority, "MD5")
    checker = DigestChecker(FakeDatabase(), REALM)
    wrong = make_request()
    failure = login(checker, factory.decode(client_response(challenge, "alice", "guess"), wrong))
    assert failure.check(error.UnauthorizedLogin) and not failure.check(StaleNonce)
    assert "stale" not in factory.getChallenge(wrong)
    right = make_request()
    assert login(checker, factory.decode(client_response(challenge, "alice", "secret", nc=2), right)).check(StaleNonce)
    assert factory.getChallenge(right)["stale"] == b"true"


def test_stale_flag_dies_with_the_request(md5: DigestChallengeFactory, authority: DigestAuthority) -> None:
    """The stale marker is held weakly: finished requests do not accumulate."""
    request = make_request()
    authority.mark_stale(request)
    assert authority.is_stale(request)
    del request
    import gc

    gc.collect()
    assert len(authority._stale) == 0


def test_tracked_nonces_are_bounded(clock: Clock) -> None:
    """With more used nonces than the cap, memory stays bounded, and a dropped nonce cannot be replayed: it is
    refused as stale."""
    authority = DigestAuthority(REALM, clock, LIFETIME, max_tracked=16)
    factory = DigestChallengeFactory(authority, "MD5")
    checker = DigestChecker(FakeDatabase(), REALM)
    headers = []
    for _ in range(40):
        header = client_response(factory.getChallenge(make_request()), "alice", "secret")
        assert login(checker, factory.decode(header, make_request())) == "alice"
        headers.append(header)
        clock.advance(0.01)
    assert authority.tracked() <= 16
    replay = make_request()
    assert login(checker, factory.decode(headers[0], replay)).check(StaleNonce)
    assert factory.getChallenge(replay)["stale"] == b"true"
    # the newest nonce is still tracked and refuses its replay
    assert login(checker, factory.decode(headers[-1], make_request())).check(StaleNonce)


def test_expired_nonces_are_purged(clock: Clock) -> None:
    """Nonces past their lifetime are forgotten (they would be refused as stale anyway)."""
    authority = DigestAuthority(REALM, clock, LIFETIME)
    factory = DigestChallengeFactory(authority, "MD5")
    checker = DigestChecker(FakeDatabase(), REALM)
    for _ in range(10):
        login(checker, factory.decode(client_response(factory.getChallenge(make_request()), "alice", "secret"),
                                      make_request()))
    assert authority.tracked() == 10
    clock.advance(LIFETIME + 1)
    login(checker, factory.decode(client_response(factory.getChallenge(make_request()), "alice", "secret"),
                                  make_request()))
    assert authority.tracked() == 1


# ------------------------------------------------------------ malformed input


@pytest.mark.parametrize(
    "opaque",
    [None, '""', '"garbage"', '"!!!!"', '"' + "A" * 24 + '"', '"' + "A" * 23 + '="'],
)
def test_bad_opaque_is_login_failed(md5: DigestChallengeFactory, opaque: str | None) -> None:
    """A missing, empty, undecodable or wrong opaque is LoginFailed (a 401), never another exception (a 500)."""
    challenge = md5.getChallenge(make_request())
    with pytest.raises(error.LoginFailed):
        md5.decode(client_response(challenge, "alice", "secret", params={"opaque": opaque}), make_request())


def test_opaque_of_another_nonce_refused(md5: DigestChallengeFactory) -> None:
    """The opaque is bound to its nonce: one from another challenge does not fit."""
    first, second = md5.getChallenge(make_request()), md5.getChallenge(make_request())
    with pytest.raises(error.LoginFailed, match="opaque"):
        md5.decode(client_response(first, "alice", "secret", params={"opaque": f'"{second["opaque"].decode()}"'}), make_request())


def test_tampered_nonce_refused_and_not_stale(md5: DigestChallengeFactory, clock: Clock) -> None:
    """Changing any byte of a nonce (its time, its random part, its signature) is refused, and does not earn a
    stale=true; nor does a nonce signed by another process's key."""
    import base64

    challenge = md5.getChallenge(make_request())
    raw = bytearray(base64.urlsafe_b64decode(challenge["nonce"]))
    for index in (0, 7, 10, len(raw) - 1):
        forged = bytearray(raw)
        forged[index] ^= 0x01
        nonce = base64.urlsafe_b64encode(bytes(forged))
        for opaque in (challenge["opaque"], md5.authority.opaque_for(nonce)):  # the nonce's own MAC must hold too
            request = make_request()
            with pytest.raises(error.LoginFailed):
                md5.decode(client_response({**challenge, "nonce": nonce, "opaque": opaque}, "alice", "secret"), request)
            assert "stale" not in md5.getChallenge(request)
    other = DigestAuthority(REALM, clock, LIFETIME)
    foreign = DigestChallengeFactory(other, "MD5").getChallenge(make_request())
    with pytest.raises(error.LoginFailed):
        md5.decode(client_response(foreign, "alice", "secret"), make_request())


def test_same_secret_accepts_the_same_nonces(clock: Clock) -> None:
    """The key is all a nonce depends on: an authority rebuilt with the same secret accepts its nonces."""
    one = DigestAuthority(REALM, clock, LIFETIME, secret=b"k" * 32)
    two = DigestAuthority(REALM, clock, LIFETIME, secret=b"k" * 32)
    challenge = DigestChallengeFactory(one, "MD5").getChallenge(make_request())
    DigestChallengeFactory(two, "MD5").decode(client_response(challenge, "alice", "secret"), make_request())


def test_wrong_realm_refused(md5: DigestChallengeFactory) -> None:
    """A response for another realm is refused, even if correctly computed for it."""
    challenge = md5.getChallenge(make_request())
    with pytest.raises(error.LoginFailed, match="realm"):
        md5.decode(client_response(challenge, "alice", "secret", realm="other"), make_request())


def test_uri_must_match_the_request(md5: DigestChallengeFactory) -> None:
    """A response made for another URI (or without the query string) cannot authorise this request."""
    challenge = md5.getChallenge(make_request())
    for uri in ("/api/controls", "/api/presence"):
        with pytest.raises(error.LoginFailed, match="uri"):
            md5.decode(client_response(challenge, "alice", "secret", uri=uri), make_request(uri=URI))


def test_method_is_part_of_the_response(md5: DigestChallengeFactory) -> None:
    """A GET response replayed as a POST to the same URI does not verify."""
    challenge = md5.getChallenge(make_request())
    credentials = md5.decode(client_response(challenge, "alice", "secret", method="GET"), make_request(method=b"POST"))
    assert not credentials.checkHash(h("MD5", f"alice:{REALM}:secret"))


@pytest.mark.parametrize(
    "name", ["username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce", "opaque"]
)
def test_missing_parameter_refused(md5: DigestChallengeFactory, name: str) -> None:
    """Every parameter qop=auth needs is required: without any one of them, LoginFailed."""
    challenge = md5.getChallenge(make_request())
    with pytest.raises(error.LoginFailed):
        md5.decode(client_response(challenge, "alice", "secret", params={name: None}), make_request())


@pytest.mark.parametrize(
    "overrides",
    [
        {"qop": "auth-int"},
        {"qop": None, "nc": None, "cnonce": None},
        {"algorithm": "MD5-sess"},
        {"algorithm": "SHA-512-256"},
        {"algorithm": "SHA-256-sess"},
        {"userhash": "true"},
        {"response": '"abc"'},
        {"response": '"' + "g" * 32 + '"'},
        {"cnonce": '"' + "c" * 300 + '"'},
    ],
)
def test_unsupported_variants_refused(md5: DigestChallengeFactory, overrides: dict[str, str | None]) -> None:
    """auth-int, no qop (RFC 2069, no replay protection), -sess and other algorithms, userhash, malformed
    responses, huge cnonces are refused with LoginFailed."""
    challenge = md5.getChallenge(make_request())
    with pytest.raises(error.LoginFailed):
        md5.decode(client_response(challenge, "alice", "secret", params=overrides), make_request())


def test_username_must_be_utf8(md5: DigestChallengeFactory) -> None:
    """A user name that is not UTF-8 cannot name anyone in our files: LoginFailed, not a UnicodeDecodeError."""
    header = client_response(md5.getChallenge(make_request()), "alice", "secret")
    with pytest.raises(error.LoginFailed, match="UTF-8"):
        md5.decode(header.replace(b'username="alice"', b'username="\xff"'), make_request())


@pytest.mark.parametrize(
    "header",
    [
        b"",
        b"garbage",
        b"username",
        b'username="unterminated',
        b"a=b c=d",
        b'username="a", username="b"',
        b"=x",
        b"\x00\xff\xfe",
        b"username=" + b"x" * 5000,
        b",,,,",
        b'username="a\\"b", realm="boatwist"',
    ],
)
def test_garbage_headers_are_login_failed(md5: DigestChallengeFactory, header: bytes) -> None:
    """Whatever bytes a client sends end in LoginFailed (401), never in another exception (500)."""
    with pytest.raises(error.LoginFailed):
        md5.decode(header, make_request())


def test_parse_params_handles_quoting_and_spacing() -> None:
    """Quoted strings with escapes and commas, bare tokens, spaces around '=' and empty list elements parse."""
    params = parse_params(b'username="a\\"b, c" ,  qop = auth,, nc=00000001 , uri="/x?a=1,2"')
    assert params == {"username": b'a"b, c', "qop": b"auth", "nc": b"00000001", "uri": b"/x?a=1,2"}


def test_quoted_username_with_escapes_round_trips(md5: DigestChallengeFactory) -> None:
    """A user name sent with RFC 7230 quoted-pairs is unescaped before use."""
    challenge = md5.getChallenge(make_request())
    credentials = md5.decode(client_response(challenge, "al'ice", "secret", params={"username": '"al\\\'ice"'}), make_request())
    assert credentials.username == "al'ice"


def test_decode_bug_is_still_login_failed(md5: DigestChallengeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even an unexpected exception inside decoding becomes LoginFailed, so a client cannot provoke a 500."""
    monkeypatch.setattr("boatwist.auth.digest.parse_params", lambda value: 1 / 0)
    monkeypatch.setattr(DigestAuthority, "_log", Logger(observer=lambda event: None))
    with pytest.raises(error.LoginFailed):
        md5.decode(b'username="a"', make_request())


# ------------------------------------------------------------ real files, real tools


@pytest.mark.skipif(shutil.which("htdigest") is None, reason="htdigest (apache2-utils) not installed")
def test_ha1_from_real_htdigest_verifies(md5: DigestChallengeFactory, tmp_path: Path) -> None:
    """A user created by Apache's htdigest logs in with MD5 Digest through UserDatabase and DigestChecker."""
    digest = tmp_path / "users.htdigest"
    run_htdigest(digest, REALM, "bob", "from-htdigest", create=True)
    checker = DigestChecker(UserDatabase(tmp_path / "users.htpasswd", digest, realm=REALM), REALM)
    challenge = md5.getChallenge(make_request())
    good = md5.decode(client_response(challenge, "bob", "from-htdigest"), make_request())
    assert login(checker, good) == "bob"
    bad = md5.decode(client_response(challenge, "bob", "wrong", nc=2), make_request())
    assert login(checker, bad).check(error.UnauthorizedLogin)


def test_checker_sees_password_changes_and_deletions(sha256: DigestChallengeFactory, tmp_path: Path) -> None:
    """The checker re-reads changed files: a new password works at once, the old one and a deleted user do not."""
    users, digest = tmp_path / "u", tmp_path / "d"
    set_password(users, digest, REALM, "carol", "one", rounds=4)
    checker = DigestChecker(UserDatabase(users, digest, realm=REALM), REALM)

    def attempt(password: str) -> Any:
        challenge = sha256.getChallenge(make_request())
        header = client_response(challenge, "carol", password, algorithm="SHA-256")
        return login(checker, sha256.decode(header, make_request()))

    assert attempt("one") == "carol"
    set_password(users, digest, REALM, "carol", "two", rounds=4)
    assert attempt("one").check(error.UnauthorizedLogin)
    assert attempt("two") == "carol"
    delete_user(users, digest, REALM, "carol")
    assert attempt("two").check(error.UnauthorizedLogin)


class FakeUrllibRequest:
    """What urllib's AbstractDigestAuthHandler.get_authorization reads from a urllib Request."""

    def __init__(self, selector: str) -> None:
        self.full_url = "http://device.local" + selector
        self.selector = selector
        self.data = None

    def get_method(self) -> str:
        return "GET"


def urllib_authorization(www_authenticate: bytes, algorithm_supported: bool = True) -> bytes:
    """The Authorization value urllib's digest client computes for one of our WWW-Authenticate headers."""
    handler = urllib.request.HTTPDigestAuthHandler()
    handler.add_password(REALM, "http://device.local/", "alice", "secret")
    scheme, challenge = www_authenticate.decode().split(" ", 1)
    assert scheme == "digest"
    chal = urllib.request.parse_keqv_list(filter(None, urllib.request.parse_http_list(challenge)))
    value = handler.get_authorization(FakeUrllibRequest(URI.decode()), chal)
    assert value
    return value.encode()


class Hello(Resource):
    """The protected page: says who it was served to."""

    isLeaf = True

    def __init__(self, user: str) -> None:
        super().__init__()
        self.user = user

    def render_GET(self, request: Any) -> bytes:
        return f"hello {self.user}".encode()


def guarded_site(authority: DigestAuthority, database: Any) -> HTTPAuthSessionWrapper:
    """The production wiring: one portal, SHA-256 then MD5 Digest factories on one authority, then Basic."""

    @implementer(IRealm)
    class Realm:
        def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
            assert IResource in interfaces
            return IResource, Hello(avatarId.decode("utf-8")), lambda: None

    portal = Portal(Realm(), [DigestChecker(database, REALM)])
    factories = [
        DigestChallengeFactory(authority, "SHA-256"),
        DigestChallengeFactory(authority, "MD5"),
        BasicCredentialFactory(REALM.encode()),
    ]
    return HTTPAuthSessionWrapper(portal, factories)


def render(wrapper: HTTPAuthSessionWrapper, request: DummyRequest) -> DummyRequest:
    resource = getChildForRequest(wrapper, request)
    request.render(resource)
    return request


def challenges(request: DummyRequest) -> list[bytes]:
    return request.responseHeaders.getRawHeaders(b"www-authenticate") or []


def parse_challenge(header: bytes) -> dict[str, bytes]:
    scheme, rest = header.split(b" ", 1)
    assert scheme == b"digest"
    return parse_params(rest)


def test_http_round_trip_through_the_guard(authority: DigestAuthority) -> None:
    """Through a real HTTPAuthSessionWrapper + Portal: no credentials -> 401 with SHA-256, MD5 and Basic
    challenges in that order; a good SHA-256 or MD5 response -> 200 and the page; a bad one -> 401 again;
    a replay -> 401 with stale=true."""
    wrapper = guarded_site(authority, FakeDatabase())

    first = render(wrapper, make_request())
    assert first.responseCode == 401
    headers = challenges(first)
    assert [h.split(b" ")[0] for h in headers] == [b"digest", b"digest", b"basic"]
    offered = [parse_challenge(header) for header in headers[:2]]
    assert [c["algorithm"] for c in offered] == [b"SHA-256", b"MD5"]
    assert all(c["realm"] == REALM.encode() and c["qop"] == b"auth" for c in offered)

    for algorithm, challenge in zip(("SHA-256", "MD5"), offered):
        header = b"Digest " + client_response(challenge, "alice", "secret", algorithm=algorithm)
        ok = render(wrapper, make_request(authorization=header))
        assert ok.responseCode in (None, 200), algorithm
        assert b"".join(ok.written) == b"hello alice"

        replay = render(wrapper, make_request(authorization=header))
        assert replay.responseCode == 401
        assert all(parse_challenge(c)["stale"] == b"true" for c in challenges(replay)[:2])

    bad = b"Digest " + client_response(offered[0], "alice", "wrong", algorithm="SHA-256", nc=9)
    refused = render(wrapper, make_request(authorization=bad))
    assert refused.responseCode == 401
    assert len(challenges(refused)) == 3
    assert all("stale" not in parse_challenge(c) for c in challenges(refused)[:2])


@pytest.mark.parametrize(
    "authorization",
    [b"Digest", b"Digest ", b"Digest garbage", b"Digest opaque=\"x\"", b"digest username=\"alice\", nc=zz",
     b"Digest " + b"a" * 10000],
)
def test_malformed_headers_through_the_guard_are_401(authority: DigestAuthority, authorization: bytes) -> None:
    """Malformed Digest headers reaching the guard give 401 with challenges, never 500."""
    request = render(guarded_site(authority, FakeDatabase()), make_request(authorization=authorization))
    assert request.responseCode == 401
    assert len(challenges(request)) == 3


def test_stale_nonce_through_the_guard(authority: DigestAuthority, clock: Clock) -> None:
    """An expired nonce answered correctly gets 401 with stale=true on both Digest challenges."""
    wrapper = guarded_site(authority, FakeDatabase())
    challenge = parse_challenge(challenges(render(wrapper, make_request()))[1])
    clock.advance(LIFETIME + 1)
    request = render(wrapper, make_request(authorization=b"Digest " + client_response(challenge, "alice", "secret")))
    assert request.responseCode == 401
    assert [parse_challenge(c).get("stale") for c in challenges(request)[:2]] == [b"true", b"true"]


def test_urllib_digest_client_interoperates_md5(authority: DigestAuthority) -> None:
    """The standard library's Digest client, answering our MD5 challenge as sent by the guard, is let in (twice,
    with its own nc counting)."""
    wrapper = guarded_site(authority, FakeDatabase())
    md5_header = challenges(render(wrapper, make_request()))[1]
    handler_header = urllib_authorization(md5_header)
    ok = render(wrapper, make_request(authorization=b"Digest " + handler_header))
    assert b"".join(ok.written) == b"hello alice"


@pytest.mark.skipif(sys.version_info < (3, 14), reason="urllib speaks SHA-256 Digest from Python 3.14 on")
def test_urllib_digest_client_interoperates_sha256(authority: DigestAuthority) -> None:
    """The standard library's Digest client answering our SHA-256 challenge is let in."""
    wrapper = guarded_site(authority, FakeDatabase())
    sha_header = challenges(render(wrapper, make_request()))[0]
    ok = render(wrapper, make_request(authorization=b"Digest " + urllib_authorization(sha_header)))
    assert b"".join(ok.written) == b"hello alice"


def test_no_secrets_in_logs(authority: DigestAuthority, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing logged while logging in, failing and replaying contains the password, an HA1 or a response."""
    events: list[dict] = []
    monkeypatch.setattr(DigestAuthority, "_log", Logger(observer=events.append))
    monkeypatch.setattr(DigestChecker, "_log", Logger(observer=events.append))
    wrapper = guarded_site(authority, FakeDatabase())
    challenge = parse_challenge(challenges(render(wrapper, make_request()))[1])
    header = client_response(challenge, "alice", "secret")
    for _ in range(2):
        render(wrapper, make_request(authorization=b"Digest " + header))
    render(wrapper, make_request(authorization=b"Digest " + client_response(challenge, "alice", "bad", nc=7)))
    render(wrapper, make_request(authorization=b"Digest garbage"))
    text = repr(events)
    response = re.search(rb'response="([0-9a-f]+)"', header).group(1).decode()  # type: ignore[union-attr]
    for secret in ("secret", h("MD5", f"alice:{REALM}:secret"), response):
        assert secret not in text


def test_credentials_repr_holds_no_response(md5: DigestChallengeFactory) -> None:
    """The credentials' repr (what a traceback or a log shows) names user and algorithm, not the response."""
    challenge = md5.getChallenge(make_request())
    header = client_response(challenge, "alice", "secret")
    credentials = md5.decode(header, make_request())
    assert isinstance(credentials, DigestCredentials)
    response = re.search(rb'response="([0-9a-f]+)"', header).group(1).decode()  # type: ignore[union-attr]
    assert response not in repr(credentials) and "alice" in repr(credentials)


def test_an_algorithm_that_is_not_offered_is_refused() -> None:
    """Configuring SHA-256 alone turns MD5 off: an MD5 answer is a 401, not a login."""
    from twisted.cred.error import LoginFailed
    from twisted.internet.task import Clock
    from twisted.web.test.requesthelper import DummyRequest

    from boatwist.auth.digest import DigestAuthority, parse_params

    authority = DigestAuthority("boatwist", Clock(), 300, algorithms=("SHA-256",))
    request = DummyRequest([b"api"])
    request.uri = b"/api"
    challenge = authority.challenge(request, "SHA-256")
    import hashlib

    ha1 = hashlib.md5(b"alice:boatwist:pw").hexdigest()
    ha2 = hashlib.md5(b"GET:/api").hexdigest()
    nonce = challenge["nonce"].decode()
    response = hashlib.md5(f"{ha1}:{nonce}:00000001:c:auth:{ha2}".encode()).hexdigest()
    header = (f'username="alice", realm="boatwist", nonce="{nonce}", uri="/api", algorithm=MD5, '
              f'response="{response}", opaque="{challenge["opaque"].decode()}", qop=auth, nc=00000001, cnonce="c"')
    assert parse_params(header.encode())[ "algorithm"] == b"MD5"
    try:
        authority.decode(header.encode(), request)
    except LoginFailed:
        return
    raise AssertionError("an MD5 answer was accepted although only SHA-256 is offered")
