"""
What the operator console needs from the server (issue 12): the way out of
HTTP authentication (/logout and the user name ``logout``), the public files
of the pages outside the console, the explained 401, /api/whoami,
/api/operators and /api/activity.

The guard is the real one (PublicRoot, OperatorGuard, Basic) fed raw HTTP; a
checker records every password it is asked to check, so "not a login
attempt" is pinned as "the checker was never called".  The API runs on the
real core on a Clock (tests/core_rig.py).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet.task import Clock
from twisted.web.guard import BasicCredentialFactory
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from boatwist import __version__
from boatwist.auth.passwords import PasswordFileError, check_user_name
from boatwist.auth.portal import OperatorRealm
from boatwist.presence import Kind
from boatwist.store.operations import OperationRecord
from boatwist.web.console_api import KIND_WORDS, HostName, parse_cursor, process_uptime
from boatwist.web.errors import unauthorized_page
from boatwist.web.guard import claimed_user, guarded_root
from boatwist.web.static import StaticFiles, accepts_gzip, static_dir
from core_rig import WALL
from test_resources import World, http


def basic(user: str, password: str) -> bytes:
    return b"Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()) + b"\r\n"


class Recording(InMemoryUsernamePasswordDatabaseDontUse):
    """A checker that remembers every user name it was asked about."""

    def __init__(self, **users: bytes) -> None:
        super().__init__(**users)
        self.asked: list[bytes] = []

    def requestAvatarId(self, credentials: Any) -> Any:
        self.asked.append(credentials.username)
        return super().requestAvatarId(credentials)


class Echo(Resource):
    isLeaf = True

    def __init__(self, user: str) -> None:
        super().__init__()
        self.user = user

    def render_GET(self, request: Any) -> bytes:
        return json.dumps({"user": self.user}).encode()


@pytest.fixture
def guarded() -> tuple[Site, Recording]:
    checker = Recording(alice=b"secret")
    assert IUsernamePassword in checker.credentialInterfaces
    portal = Portal(OperatorRealm(Echo), [checker])
    return Site(guarded_root(portal, [BasicCredentialFactory(b"boatwist")]), reactor=Clock()), checker


# ------------------------------------------------------------------ /logout


@pytest.mark.parametrize("header", [
    basic("logout", "logout"),
    basic("logout", "anything at all"),
    b'Authorization: Digest username="logout", realm="boatwist", nonce="x", uri="/logout", response="0"\r\n',
])
def test_logout_answers_the_user_name_logout_with_200(guarded: tuple[Site, Recording], header: bytes) -> None:
    """
    GET /logout claiming the user name ``logout`` (Basic: before the colon;
    Digest: username) is 200 with Cache-Control: no-store, whatever the
    password or response: the browser then keeps ``logout`` as the realm's
    credentials.  Nothing was checked: it is not a login.
    """
    site, checker = guarded
    status, headers, body = http(site, b"/logout", header)
    assert (status, body) == (200, b"logged out\n")
    assert headers[b"cache-control"] == b"no-store"
    assert checker.asked == []


@pytest.mark.parametrize("header", [b"", basic("alice", "secret"), basic("alice", "wrong"), basic("mallory", "x")])
def test_logout_challenges_everyone_else_without_a_login(guarded: tuple[Site, Recording], header: bytes) -> None:
    """
    GET /logout without credentials or with any others -- right ones
    included -- is the usual 401 with the challenge (so the XHR sends its
    explicit ``logout`` credentials), and no password is checked: no failed
    login is counted or logged for it.
    """
    site, checker = guarded
    status, headers, body = http(site, b"/logout", header)
    assert status == 401
    assert headers[b"www-authenticate"] == b'basic realm="boatwist"'
    assert b"stale" not in headers[b"www-authenticate"]
    assert checker.asked == []


@pytest.mark.parametrize("path", [b"/", b"/api/whoami", b"/logout/x"])
def test_the_user_name_logout_elsewhere_is_a_401_not_a_guess(guarded: tuple[Site, Recording], path: bytes) -> None:
    """
    Anywhere else a request claiming ``logout`` (Firefox sends it on the
    next navigation after logging out) gets the usual 401 with its
    challenge, so the login dialog shows -- and it is not a login attempt.
    """
    site, checker = guarded
    status, headers, _ = http(site, path, basic("logout", "logout"))
    assert status == 401 and headers[b"www-authenticate"].startswith(b"basic ")
    assert checker.asked == []
    # The operator's own credentials still work there.
    status, _, body = http(site, b"/api/whoami", basic("alice", "secret"))
    assert (status, json.loads(body)) == (200, {"user": "alice"})


def test_a_user_named_logout_cannot_be_created() -> None:
    """embweb-passwd (and the files' reader) refuse the name ``logout``, saying why."""
    with pytest.raises(PasswordFileError, match="reserved for logging out"):
        check_user_name("logout")
    check_user_name("Logout")  # only the exact name the console sends


@pytest.mark.parametrize(("header", "user"), [
    (b"Basic " + base64.b64encode(b"bob:x:y"), "bob"),
    (b"Basic !!", None),
    (b'Digest realm="r,username=foo", username="b\\"ob", nonce="n"', 'b"ob'),
    (b"Digest username=bare, realm=r", "bare"),
    (b"Bearer xyz", None),
    (None, None),
])
def test_claimed_user(header: bytes | None, user: str | None) -> None:
    """The user name a header claims, read as the scheme says (quoted strings and escapes in Digest)."""
    assert claimed_user(header) == user


# ------------------------------------------------- public files, the 401 page


@pytest.mark.parametrize("name", ["pages.css", "pages.js", "favicon.svg"])
def test_public_files_need_no_login(guarded: tuple[Site, Recording], name: str) -> None:
    """The 401 and 503 pages' style, script and icon are served without credentials (a refused user gets them)."""
    site, checker = guarded
    status, headers, body = http(site, b"/public/" + name.encode())
    assert status == 200
    assert body == (static_dir() / "public" / name).read_bytes()
    assert checker.asked == []


def test_only_the_public_folder_is_public(guarded: tuple[Site, Recording]) -> None:
    """The console's own files stay behind the guard; an unknown public name is a 404."""
    site, _ = guarded
    assert http(site, b"/app.js")[0] == 401
    assert http(site, b"/public/nothing.js")[0] == 404


def test_the_401_page_says_what_to_do(guarded: tuple[Site, Recording]) -> None:
    """
    A 401 keeps its status and challenge, and its page says what to do --
    check the user name and password -- with the public style and script and
    no inline ones; the same words for an unknown name as for a wrong
    password (the page does not tell which names exist).
    """
    site, _ = guarded
    status, headers, body = http(site, b"/", basic("alice", "wrong"))
    assert status == 401 and headers[b"www-authenticate"] == b'basic realm="boatwist"'
    assert headers[b"content-type"] == b"text/html; charset=utf-8"
    assert b"Check the user name and the password" in body
    assert b'href="/public/pages.css"' in body and b"<style" not in body and b"style=" not in body
    assert http(site, b"/", basic("nobody", "wrong"))[2] == body


def test_the_401_says_when_to_try_again_when_the_answer_does() -> None:
    """With Retry-After on the 401 (a throttled login), the page counts down to the next try."""
    request = DummyRequest([b""])
    request.path = b"/"
    request.setHeader(b"retry-after", b"42")
    body = unauthorized_page(request)
    assert b'data-countdown="42">42\xc2\xa0s</span>' in body and b"Too many wrong passwords" in body
    api = DummyRequest([b"api"])
    api.path = b"/api/whoami"
    api.setHeader(b"retry-after", b"42")
    assert json.loads(unauthorized_page(api))["retry_after"] == 42


def test_the_401_to_head_has_no_body(guarded: tuple[Site, Recording]) -> None:
    """HEAD gets the 401 and its headers without a page."""
    site, _ = guarded
    status, _, body = http(site, b"/", method=b"HEAD")
    assert status == 401 and body == b""


# ---------------------------------------------------------------- whoami


def test_whoami_names_the_user_the_device_and_its_uptime() -> None:
    """/api/whoami: user and role, the device's name and host, the version, uptime (monotonic) and the wall clock."""
    w = World()
    status, _, body = w.http("alice", b"/api/whoami")
    who = json.loads(body)
    assert status == 200
    assert who["user"] == "alice" and who["role"] == "operator" and who["version"] == __version__
    assert who["device"] == w.core.settings.device_name and who["host"]
    assert who["now"] == WALL and who["uptime"] >= 0 and who["started_at"] == pytest.approx(WALL - who["uptime"])


def test_process_uptime_from_the_kernel() -> None:
    """The process's start time (field 22 of /proc/self/stat, in clock ticks) against /proc/uptime."""
    import os

    ticks = os.sysconf("SC_CLK_TCK")
    stat = b"4242 (twistd (x) y) S " + b" ".join(b"0" for _ in range(18)) + b" %d 0 0" % (100 * ticks)
    files = {"/proc/self/stat": stat, "/proc/uptime": b"160.5 300.0\n"}
    assert process_uptime(lambda path: files[path]) == pytest.approx(60.5)


# ------------------------------------------------------------- operators


def test_operators_have_roles_kinds_in_words_and_link_details() -> None:
    """
    /api/operators: seats, each online user with role, state, since (and
    state_since: when the state last changed), and each connection with its kind in words (browser, terminal), peer, RTT and the
    probes/retransmissions fields; plain-request presence with when it ends.
    """
    w = World()
    _, _, conn = w.connect(kind=Kind.CHAT)
    assert w.presence.admit(conn, "bob", Kind.CHAT) is None
    conn.rtt_ms = 12.5
    status, _, body = w.http("alice", b"/api/operators")
    doc = json.loads(body)
    assert status == 200 and doc["seats"] == {"used": 2, "limit": 10} and doc["now"] == WALL
    by_user = {o["user"]: o for o in doc["operators"]}
    assert by_user["alice"]["role"] == "operator" and by_user["alice"]["state"] == "online"
    assert by_user["alice"]["connections"][0]["kind"] == "http"
    assert by_user["alice"]["connections"][0]["words"] == KIND_WORDS["http"]
    assert by_user["alice"]["connections"][0]["expires_in"] == 30
    chat = by_user["bob"]["connections"][0]
    assert chat["words"] == "terminal (chat port)" and chat["rtt_ms"] == 12.5 and chat["peer"] == "10.0.0.7"
    assert {"probes", "retransmits", "idle_s", "unstable", "since"} <= set(chat)
    assert by_user["bob"]["state_since"] == by_user["bob"]["since"]  # online since the login
    assert doc["kinds"] == KIND_WORDS


def test_reasons_serve_the_floor_words_and_kinds() -> None:
    """/api/reasons: presence reasons, the floor's reasons and the connection kinds, all in words."""
    w = World()
    doc = json.loads(w.http("alice", b"/api/reasons")[2])
    assert doc["reasons"]["keepalive-timeout"] == "no answer to keepalive probes"
    assert doc["floor"]["handover-timeout"] == "no answer to the request"
    assert doc["kinds"]["web"] == "browser"


# -------------------------------------------------------------- activity


def activity(w: World, query: bytes = b"") -> dict[str, Any]:
    status, _, body = w.http("alice", b"/api/activity" + query)
    assert status == 200, body
    return json.loads(body)


def test_activity_merges_chat_operations_presence_and_floor_by_time() -> None:
    """
    /api/activity: chat, operations (with the control's label), logins,
    logouts with their reasons and floor changes (the audit log's words),
    one timeline oldest first, each with a unique key.
    """
    w = World()
    store = w.core.store
    w.wall[0] = WALL + 1
    store.audit("login", "bob", "10.0.0.8", "chat")
    w.wall[0] = WALL + 2
    w.core.room.say("bob", "hello", "chat")
    w.wall[0] = WALL + 3
    store.record_operation(OperationRecord(WALL + 3, "alice", "pump", False, True, "ok", None, "web"), True)
    w.wall[0] = WALL + 4
    assert w.core.floor.take("alice") is None
    w.wall[0] = WALL + 5
    store.audit("logout", "bob", None, "keepalive-timeout via chat")
    store.audit("refused", "carol", None, "full 10/10 via web")
    store.audit("login-failed", "mallory", "10.0.0.9", "http")
    doc = activity(w)
    kinds = [(i["kind"], i["user"]) for i in doc["items"]]
    assert kinds == [("presence", "bob"), ("chat", "bob"), ("control", "alice"), ("floor", "alice"),
                     ("presence", "bob"), ("presence", "carol")], kinds
    login, chat, op, floor, logout, refused = (i["data"] for i in doc["items"])
    assert login == {"user": "bob", "state": "online", "reason": "login", "via": "chat", "at": WALL + 1}
    assert chat["text"] == "hello" and chat["via"] == "chat"
    assert op["control"] == "pump" and op["value"] is True and op["old"] is False
    assert floor["state"] == "taken" and floor["text"] == "alice took the floor"
    assert logout["reason"] == "keepalive-timeout" and logout["via"] == "chat" and logout["state"] == "offline"
    assert refused["refusal"] == "full" and (refused["used"], refused["limit"]) == (10, 10)
    assert len({i["key"] for i in doc["items"]}) == 6
    assert doc["before"] is None
    assert doc["last_event_id"] == w.core.hub.last_id


def test_activity_pages_back_through_every_source() -> None:
    """
    With more than a page, ``before`` is a cursor: following it returns each
    older item exactly once, across all three sources, until it is None.
    """
    w = World()
    for n in range(23):
        w.wall[0] = WALL + n
        if n % 3 == 0:
            w.core.room.say("bob", f"m{n}", "web")
        elif n % 3 == 1:
            w.core.store.record_operation(OperationRecord(WALL + n, "alice", "pump", None, n, "ok", None, "web"), True)
        else:
            w.core.store.audit("logout", "carol", None, f"closed via web {n}")
    seen: list[float] = []
    query = b"?limit=5"
    pages = 0
    while True:
        doc = activity(w, query)
        pages += 1
        seen = [i["at"] for i in doc["items"]] + seen
        if doc["before"] is None:
            break
        query = b"?limit=5&before=" + doc["before"].encode()
    assert seen == [WALL + n for n in range(23)] and pages == 5


@pytest.mark.parametrize("query", [b"?before=nonsense", b"?before=c1.o2", b"?limit=x"])
def test_activity_refuses_a_bad_query(query: bytes) -> None:
    """A cursor it did not give, or a limit that is not a number, is a 400 saying so."""
    w = World()
    status, _, body = w.http("alice", b"/api/activity" + query)
    assert status == 400 and json.loads(body)["error"]


def test_cursor_round_trip() -> None:
    """A cursor reads back as the ids it names."""
    cursor = parse_cursor("c12.o0.a7")
    assert (cursor.chat, cursor.operation, cursor.audit) == (12, 0, 7)
    assert cursor.text() == "c12.o0.a7"


# ------------------------------------------------------------------ gzip


def test_static_files_are_sent_gzipped_to_who_accepts_it() -> None:
    """
    A text file is sent gzip-compressed (Content-Encoding, its own ETag,
    Vary) to a client that accepts gzip, and as it is to one that does not;
    both are the same file.
    """
    import gzip

    site = Site(StaticFiles(str(static_dir())), reactor=Clock())
    plain = http(site, b"/app.js")
    packed = http(site, b"/app.js", b"Accept-Encoding: gzip, deflate, br\r\n")
    assert plain[0] == packed[0] == 200
    assert b"content-encoding" not in plain[1] and packed[1][b"content-encoding"] == b"gzip"
    assert plain[1][b"vary"] == packed[1][b"vary"] == b"Accept-Encoding"
    assert gzip.decompress(packed[2]) == plain[2] == (static_dir() / "app.js").read_bytes()
    assert plain[1][b"etag"] != packed[1][b"etag"]
    again = http(site, b"/app.js", b"Accept-Encoding: gzip\r\nIf-None-Match: " + packed[1][b"etag"] + b"\r\n")
    assert again[0] == 304


@pytest.mark.parametrize(("header", "ok"), [(b"gzip", True), (b"deflate, gzip;q=0.5", True), (b"gzip;q=0", False),
                                            (b"br", False), (b"*", True), (None, False), (b"gzip;q=x", False)])
def test_accepts_gzip(header: bytes | None, ok: bool) -> None:
    """Accept-Encoding as RFC 9110 reads it, for gzip."""
    assert accepts_gzip(header) is ok


def test_embweb_passwd_refuses_the_user_name_logout(tmp_path: Any) -> None:
    """``embweb-passwd add logout`` fails with the reason, and writes nothing."""
    import io

    from boatwist.auth.passwd_cli import main

    users, digest = tmp_path / "users.htpasswd", tmp_path / "users.htdigest"
    err = io.StringIO()
    status = main(["--users", str(users), "--digest-users", str(digest), "--realm", "lab", "--rounds", "4",
                   "--password-stdin", "add", "logout"], stdin=io.StringIO("pw\n"), stdout=io.StringIO(), stderr=err)
    assert status != 0 and "reserved for logging out" in err.getvalue()
    assert not users.exists() and not digest.exists()


def test_uptimes_read_the_process_start_once_and_the_boot_clock_after() -> None:
    """Uptimes: the start from /proc/self/stat (read once), the rest from CLOCK_BOOTTIME, as /proc/uptime says."""
    import os
    import time

    from boatwist.web.console_api import Uptimes

    reads: list[str] = []
    boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    ticks = os.sysconf("SC_CLK_TCK")
    stat = b"1 (twistd) S " + b" ".join(b"0" for _ in range(18)) + b" %d 0 0" % (int((boot - 30) * ticks))

    def read(path: str) -> bytes:
        reads.append(path)
        return stat if path == "/proc/self/stat" else f"{time.clock_gettime(time.CLOCK_BOOTTIME)} 0\n".encode()

    uptimes = Uptimes(read)
    first = len(reads)
    assert uptimes.process() == pytest.approx(30, abs=1) and uptimes.host() == pytest.approx(boot, abs=1)
    assert uptimes.process() >= 0 and len(reads) == first  # nothing read per request


@pytest.mark.parametrize("header", [
    b"Basic " + base64.b64encode(b"logout:x"),
    b'Digest username="logout", realm="r"',
    b'Digest username="lo\\gout", realm="r"',
    b"Digest username=logout, realm=r",
])
def test_every_way_to_claim_logout_is_seen(header: bytes) -> None:
    """The shortcut that skips parsing never misses a header claiming the user name logout."""
    from boatwist.web.guard import _claims_logout

    assert claimed_user(header) == "logout" and _claims_logout(header)


@pytest.mark.parametrize("header", [b"Basic " + base64.b64encode(b"alice:logout"), b'Digest username="alice"',
                                    b'Digest username="alice", realm="logout"', None])
def test_a_header_not_claiming_logout_is_not_taken_for_it(header: bytes | None) -> None:
    from boatwist.web.guard import _claims_logout

    assert not _claims_logout(header)


def test_the_host_name_is_asked_of_the_kernel_at_most_once_a_second() -> None:
    """/api/whoami shows the host name on every request; it is read again a second later (hostnamectl)."""
    now = [10.0]
    asked: list[str] = []
    names = iter(["rig-1", "rig-2"])

    def ask() -> str:
        asked.append(next(names))
        return asked[-1]

    host = HostName(lambda: now[0], ask)
    assert (host(), host()) == ("rig-1", "rig-1") and len(asked) == 1
    now[0] = 10.9
    assert host() == "rig-1"
    now[0] = 11.0
    assert host() == "rig-2"
