"""
What Chromium and Firefox ESR actually do with HTTP authentication -- the
facts the daemon's authentication and the operator console are designed
around (tests/browser/README.md has the tables and the versions).  Each test
runs in both browsers; the person at the login dialog is the page's
``credentials`` (None: they press Cancel), and ``page.auth_challenges``
counts how often the browser asked them.

Most tests talk to L{authprobe.AuthProbe}, a small server that offers
exactly the challenges a test needs and records the raw Authorization
header of every request; the rest to the real daemon.  Should a browser
update change one of these facts, the test that fails says which.
"""

from __future__ import annotations

import time

import pytest

from authprobe import AuthProbe, Seen
from daemon import Daemon

pytestmark = pytest.mark.browser

DEFAULT = ["digest-sha256", "digest-md5", "basic"]  # what the daemon offers by default, in its order
WAIT = 10.0


def answers(probe: AuthProbe, path: str = "/") -> list[Seen]:
    """The requests for exactly C{path} that carried an Authorization header."""
    return [s for s in probe.seen() if s.path == path and s.authorization is not None]


def test_which_digest_challenge_each_browser_takes(browser_name, open_page, auth_probe) -> None:
    """
    Pins: offered several challenges, both browsers prefer Digest to Basic
    whatever the order; Chromium takes the first Digest algorithm it
    supports, Firefox takes SHA-256 wherever it is offered.  One dialog each.
    """
    cases = [
        (DEFAULT, "SHA-256", "SHA-256"),
        (["digest-md5", "digest-sha256", "basic"], "MD5", "SHA-256"),
        (["basic", "digest-md5"], "MD5", "MD5"),
    ]
    for offered, chromium, firefox in cases:
        probe = auth_probe({"alice": "pw"}, offered)
        page = open_page(probe, "alice")
        (sent,) = answers(probe)
        assert sent.scheme == "digest" and sent.verdict == "ok", (offered, sent)
        assert sent.detail["algorithm"] == {"chromium": chromium, "firefox": firefox}[browser_name], (offered, sent)
        assert len(page.auth_challenges) == 1


def test_a_user_without_a_hash_for_the_chosen_challenge(browser_name, open_page, auth_probe) -> None:
    """
    Pins (issue 8, item 1): a user with only an MD5 HA1 (Apache htdigest),
    offered the daemon's default challenges, is never let in: each time the
    person types the right password again, the browser answers the *same*
    SHA-256 challenge -- no retry with MD5, none with Basic.

    And what does work: a 401 that offers only what that user can use
    (known from the user name in the refused answer) -- MD5 after one more
    dialog, or with ``stale=true`` on that MD5 challenge without any; a
    bcrypt-only user, offered Basic alone, after one more dialog (Basic has
    no stale).
    """
    probe = auth_probe({"carol": "pw"}, DEFAULT, accepts={"carol": {"MD5"}})
    page = open_page(probe, "carol", max_auth=3)
    sent = answers(probe)
    assert [s.detail["algorithm"] for s in sent] == ["SHA-256"] * 3, sent
    assert len(page.auth_challenges) == 4  # the fourth time the person gave up
    assert "unauthorized" in page.evaluate("document.body.textContent")

    for accepts, tailor, dialogs, used in [({"MD5"}, "plain", 2, "MD5"), ({"MD5"}, "stale", 1, "MD5"),
                                           ({"basic"}, "plain", 2, "basic"), ({"basic"}, "stale", 2, "basic")]:
        probe = auth_probe({"carol": "pw"}, DEFAULT, accepts={"carol": accepts}, tailor=tailor)
        page = open_page(probe, "carol")
        assert page.text("#user") == "carol", (accepts, tailor, probe.seen())
        assert len(page.auth_challenges) == dialogs, (accepts, tailor, page.auth_challenges)
        last = answers(probe)[-1]
        assert (last.detail.get("algorithm") or last.scheme) == used and last.verdict == "ok", last


def test_stale_true_is_answered_without_asking(browser_name, open_page, auth_probe) -> None:
    """
    Pins (issue 8, item 2): when the server stops knowing a nonce (a
    restart with a new key), a right answer refused with ``stale=true`` is
    redone silently with a fresh nonce -- no dialog -- by a fetch, a
    navigation and an EventSource reconnecting alike; refused with a plain 401, the browser drops the
    cached credentials and asks the person again (one dialog).
    """
    probe = auth_probe({"alice": "pw"}, DEFAULT)
    page = open_page(probe, "alice")
    assert len(page.auth_challenges) == 1

    probe.rotate(stale=True)
    assert page.fetch_status("/api/one") == {"status": 200, "body": '{"user": "alice"}'}
    probe.rotate(stale=True)
    page.navigate(probe.url + "/two")
    assert page.text("#user") == "alice"
    assert len(page.auth_challenges) == 1, "stale=true made the browser ask"
    verdicts = [s.verdict for s in probe.seen()]
    assert verdicts.count("stale") >= 2 and verdicts[-1] == "ok", verdicts  # (a favicon may take the first stale)

    # An EventSource reconnecting (as the console's does after a restart): the same.
    page.evaluate("window.got = 0; window.stream = new EventSource('/events');"
                  " stream.onmessage = () => window.got++; true")
    page.wait_for("window.got >= 2", WAIT)
    before = len(probe.seen("/events"))
    probe.rotate(stale=True)
    got = page.evaluate("window.got")
    page.wait_for(f"window.got >= {got + 3}", WAIT)
    assert "stale" in [s.verdict for s in probe.seen("/events")[before:]]
    assert len(page.auth_challenges) == 1, "stale=true made the browser ask on an EventSource reconnect"
    page.evaluate("window.stream.close(), true")

    probe.rotate(stale=False)
    assert page.fetch_status("/api/three")["status"] == 200
    assert len(page.auth_challenges) == 2, "a plain 401 to a known nonce did not make the browser ask"


def test_a_daemon_restart_asks_for_no_password(browser_name, make_daemon, open_page) -> None:
    """
    The acceptance test of issue 8 item 2: a page open across a daemon
    restart reconnects its event stream without the person typing anything
    (the nonce key survives the restart; an old nonce gets stale=true).
    """
    daemon = make_daemon().start()
    page = open_page(daemon, "alice")
    page.wait_for("document.getElementById('status').textContent === 'live'", WAIT)
    asked = len(page.auth_challenges)
    page.credentials = None  # from now on the person would press Cancel
    daemon.stop()
    page.wait_for("document.getElementById('status').textContent.includes('reconnecting')", WAIT)
    daemon.start()
    deadline = time.monotonic() + 15
    while not page.evaluate("document.getElementById('status').textContent === 'live'"):
        assert page.auth_challenges[asked:] == [], "the restarted daemon made the browser ask for the password"
        assert time.monotonic() < deadline, "not live again within 15 s"
        time.sleep(0.05)  # bounded poll of the live page
    assert page.auth_challenges[asked:] == []


def test_credentials_in_the_url(browser_name, daemon: Daemon, open_page) -> None:
    """
    Pins (issue 12 item 7): the page opened as ``http://alice:pw@host/``
    logs in without a dialog; ``location.href`` and ``location.origin``
    hide the credentials but ``document.baseURI`` keeps them, so every
    ``fetch`` of a relative or root-relative URL throws a TypeError, while
    ``fetch(location.origin + path)``, a relative XMLHttpRequest and a
    relative EventSource work.
    """
    page = open_page(daemon, "alice", path=None, credentials=None)
    bare = daemon.url
    page.navigate(bare.replace("http://", "http://alice:alice-pw@") + "/")
    assert page.evaluate("[location.href, location.origin]") == [bare + "/", bare]
    assert page.evaluate("document.baseURI") == bare.replace("http://", "http://alice:alice-pw@") + "/"
    for url in ("api/presence", "/api/presence"):
        error = page.fetch_status(url).get("error", "")
        assert error.startswith("TypeError") and "credentials" in error, (url, error)
    assert page.evaluate("fetch(location.origin + '/api/presence').then(r => r.status)") == 200
    assert page.evaluate("new Promise(done => { const x = new XMLHttpRequest(); x.open('GET', 'api/presence');"
                         " x.onloadend = () => done(x.status); x.send(); })") == 200
    assert page.evaluate("new Promise(done => { const s = new EventSource('api/events');"
                         " s.onopen = () => { s.close(); done('open'); };"
                         " s.onerror = () => { s.close(); done('error'); }; })", WAIT) == "open"
    assert page.auth_challenges == []


def test_a_non_ascii_user_name(browser_name, open_page, auth_probe) -> None:
    """
    Pins (issue 8 item 6), for the user ``jürgen``: Chromium puts the raw
    UTF-8 bytes in Digest's ``username="..."`` (no ``username*``, even when
    the challenge says ``charset=UTF-8``).  Firefox sends no Digest answer at
    all -- after the dialog nothing goes out -- and moves on to the next
    challenge offered, asking again: with the daemon's default offer it
    logs in with Basic after the third dialog.  Basic is UTF-8 (user and
    password) in both.
    """
    utf8 = "jürgen".encode("utf-8").hex()
    for offered, charset in ((["digest-sha256"], False), (["digest-md5"], True)):
        probe = auth_probe({"jürgen": "pw"}, offered, charset=charset)
        page = open_page(probe, "jürgen", max_auth=1)
        sent = answers(probe)
        if browser_name == "chromium":
            assert [s.verdict for s in sent] == ["ok"] and sent[0].detail["user_bytes"] == utf8, sent
            assert b"username*" not in sent[0].authorization and b'username="j\xc3\xbcrgen"' in sent[0].authorization
        else:
            assert sent == [], sent
            assert "unauthorized" in page.evaluate("document.body.textContent")

    probe = auth_probe({"jürgen": "pw-ä"}, ["basic"])
    page = open_page(probe, "jürgen")
    (sent,) = answers(probe)
    assert sent.verdict == "ok" and sent.detail["encoding"] == "utf-8", sent
    assert sent.detail["password_bytes"] == "pw-ä".encode("utf-8").hex()

    probe = auth_probe({"jürgen": "pw"}, DEFAULT)
    page = open_page(probe, "jürgen")
    assert page.text("#user") == "jürgen"
    (sent,) = answers(probe)
    assert sent.scheme == {"chromium": "digest", "firefox": "basic"}[browser_name], sent
    assert len(page.auth_challenges) == {"chromium": 1, "firefox": 3}[browser_name]


#: The logout the console should do (issue 12 item 1): an XMLHttpRequest
#: with a made-up user and password to /logout.
LOGOUT = ("new Promise(done => { const x = new XMLHttpRequest();"
          " x.open('GET', {url}, true, 'logout', 'logout'); x.timeout = 5000;"
          " x.onloadend = () => done(x.status); x.send(); })")


def test_log_out_of_http_authentication(browser_name, open_page, auth_probe) -> None:
    """
    Pins the one logout found to work in both browsers, without any dialog
    during the logout (tests/browser/README.md lists what was tried).

    The page sends an XMLHttpRequest with made-up credentials
    (``logout``/``logout``) to ``/logout``, which answers 401 with the usual
    challenges unless the request *claims* the user ``logout`` -- then 200.
    The browser stores ``logout`` as the credentials of the realm in place
    of alice's, so the next navigation gets a 401 and a dialog: Cancel
    leaves the person at the 401 page, bob's name and password log in bob.
    Digest and Basic alike.
    """
    for offered in (DEFAULT, ["basic"]):
        probe = auth_probe({"alice": "alice-pw", "bob": "bob-pw"}, offered)
        page = open_page(probe, "alice")
        assert page.text("#user") == "alice"
        page.navigate(probe.url + "/open/console")  # any page of the origin
        page.credentials = None  # a dialog now would be a failure of the logout
        asked = len(page.auth_challenges)

        assert page.evaluate(LOGOUT.replace("{url}", "'/logout?accept=logout'"), WAIT) == 200
        assert len(page.auth_challenges) == asked, "the logout showed a dialog"
        assert [s.verdict for s in probe.seen("/logout")][-1] == "logout-accepted"

        page.navigate(probe.url + "/")
        assert len(page.auth_challenges) == asked + 1, "the next navigation did not ask"
        assert "unauthorized" in page.evaluate("document.body.textContent")
        assert not [s for s in answers(probe)[1:] if s.user == "alice"], "alice's credentials were sent again"

        page.credentials = ("bob", "bob-pw")
        page.navigate(probe.url + "/")
        assert page.text("#user") == "bob"
