"""
The operators' page in real browsers (headless Chromium over CDP, headless
Firefox ESR over WebDriver BiDi; each test runs in both) against the real
daemon: the 401 handshake as a browser does it, live presence and
chat over the event stream, the CSRF check passed by a same-origin POST,
a clean console under the strict CSP, and a screenshot to look at.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import struct
import time
from pathlib import Path

import pytest

from daemon import Daemon, SSEReader
from pagebase import PageBase as Page

pytestmark = pytest.mark.browser

WAIT = 10.0  # seconds: the bound on every wait for the page or the daemon


# ------------------------------------------------------------------ helpers


def wait_stream_open(daemon: Daemon, user: str = "alice", timeout: float = WAIT) -> None:
    """Until the server counts an open event stream ("web" connection) for C{user}."""
    deadline = time.monotonic() + timeout
    while True:
        snapshot = daemon.get_json("/api/presence", user)
        for u in snapshot["users"]:
            if u["user"] == user and any(c["kind"] == "web" for c in u["connections"]):
                return
        if time.monotonic() >= deadline:
            raise AssertionError(f"no event stream of {user} within {timeout} s: {snapshot}")
        time.sleep(0.05)  # bounded poll of the real daemon


def wait_text(page: Page, selector: str, needle: str, timeout: float = WAIT) -> str:
    """Until an element matching C{selector} contains C{needle}; returns that element's text."""
    try:
        found = page.wait_for(
            f"Array.from(document.querySelectorAll({json.dumps(selector)}), e => e.textContent)"
            f".find(t => t.includes({json.dumps(needle)}))", timeout)
    except AssertionError:
        raise AssertionError(f"no {selector} containing {needle!r} within {timeout} s; "
                             f"have {page.texts(selector)!r}") from None
    return str(found)


class ChatPort:
    """A netcat-like client of the chat side port."""

    def __init__(self, daemon: Daemon, user: str) -> None:
        assert daemon.chat_port is not None
        self.sock = socket.create_connection(("127.0.0.1", daemon.chat_port), timeout=WAIT)
        self.buffer = b""
        self.read_until(b"login: ")
        self.sock.sendall(user.encode() + b"\n")
        self.read_until(b"password: ")
        self.sock.sendall(daemon.users[user].encode() + b"\n")
        self.read_until(b"welcome")

    def read_until(self, needle: bytes) -> bytes:
        deadline = time.monotonic() + WAIT
        while needle not in self.buffer:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError(f"chat port closed waiting for {needle!r}: {self.buffer!r}")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(needle)
        return head

    def say(self, text: str) -> None:
        self.sock.sendall(text.encode("utf-8") + b"\n")

    def close(self) -> None:
        self.sock.close()


def close_like_a_browser(reader: SSEReader) -> None:
    """
    End an event stream as a browser closing its tab does: everything
    received has been read, then close() -- a FIN.  (A close() with unread
    data in the receive buffer sends a RST instead, which the server rightly
    reports as "connection reset".)
    """
    reader.sock.setblocking(False)
    try:
        while reader.sock.recv(65536):
            pass
    except (BlockingIOError, InterruptedError):
        pass
    reader.close()


def type_and_submit(page: Page, text: str) -> None:
    """
    Focus #text, type C{text} as keyboard input, press Enter (implicit form
    submission) -- once the console is live: until then Send is disabled, and
    Enter with a disabled default button submits nothing.
    """
    page.wait_for("!document.getElementById('send').disabled", what="Send enabled (the console live)")
    page.evaluate("document.getElementById('text').focus()")
    page.type_text(text)
    page.press("Enter")


def offered_digest_algorithms(daemon: Daemon) -> list[str]:
    """The Digest algorithms in the server's 401 to an unauthenticated GET /, in the order offered."""
    conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=WAIT)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        assert response.status == 401, response.status
        challenges = response.headers.get_all("WWW-Authenticate") or []
    finally:
        conn.close()
    return [m.group(1) for c in challenges
            for m in [re.match(r'(?i)digest .*algorithm="?([\w-]+)', c)] if m]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack("!II", data[16:24])


def authorization_headers(page: Page) -> list[str]:
    """The Authorization headers the browser actually sent."""
    return page.authorization_headers()


# -------------------------------------------------------------------- tests


def test_page_loads_after_the_digest_handshake(make_daemon, open_page) -> None:
    """
    Pins: a browser that answers the 401 like an operator's (credentials to
    the auth prompt) gets the page; it authenticates with Digest (one of the
    algorithms the server offers, SHA-256 among them), once, not once per
    request; #whoami shows the user, #status says the event stream is live,
    #seats shows the configured limit (not a hard-coded 10), and the user
    list contains her, marked "(you)".  Nothing is fetched from anywhere
    but 127.0.0.1.
    """
    daemon = make_daemon("[admission]\nmax_users = 4\n").start()
    page = open_page(daemon, "alice")

    assert wait_text(page, "#whoami", "logged in as alice") == "logged in as alice"
    wait_text(page, "#seats", "1 of 4 seats taken")
    wait_text(page, "#users li", "alice (you)")
    assert wait_text(page, "#status", "live") == "live"

    challenges = page.auth_challenges
    assert 1 <= len(challenges) <= 2, challenges  # cached after the first: no prompt per request
    assert challenges[0]["scheme"].lower() == "digest" and challenges[0]["realm"] == "boatwist", challenges
    offered = offered_digest_algorithms(daemon)
    assert "SHA-256" in offered and set(offered) <= {"MD5", "SHA-256"}, offered
    sent = authorization_headers(page)
    assert sent and all(h.startswith("Digest ") for h in sent), sent
    used = re.search(r"algorithm=([\w-]+)", sent[0])
    assert 'username="alice"' in sent[0] and used and used.group(1) in offered, sent[0]
    print(f"server offered Digest {offered}; {page.browser} answered with {used.group(1)}")
    assert page.blocked == []


def test_chat_reaches_the_page_and_the_page_posts(daemon, open_page) -> None:
    """
    Pins: chat from another client appears in the activity live -- a POST
    to /api/chat by bob (its text shown literally: markup in a message stays
    text) and a line on the chat port (marked "via chat port", never
    "telnet": nc is no telnet); and a message typed into #text and
    submitted with Enter is accepted (the browser's POST, with its Origin
    and Sec-Fetch-Site: same-origin, passes the CSRF check), stored with
    via=web, shown in the activity, and the input is cleared.
    """
    page = open_page(daemon, "alice")
    wait_stream_open(daemon, "alice")

    hostile = "<b id=x>bold?</b> & <img src=x> ünïcode"
    status, body = daemon.post_json("/api/chat", "bob", {"text": hostile})
    assert status == 201, body
    wait_text(page, "#events li.chat", "bob: " + hostile)
    assert page.evaluate("document.querySelectorAll('#events b, #events img, #x').length") == 0

    chat = ChatPort(daemon, "bob")
    try:
        chat.say("hello from netcat")
        line = wait_text(page, "#events li.chat", "bob: hello from netcat")
        assert line.endswith("via chat port") and "telnet" not in line, line
    finally:
        chat.close()

    typed = "sent from the browser ✓"
    type_and_submit(page, typed)
    deadline = time.monotonic() + WAIT
    while True:
        messages = daemon.get_json("/api/chat", "alice")["messages"]
        mine = [m for m in messages if m["user"] == "alice" and m["text"] == typed]
        if mine or time.monotonic() >= deadline:
            break
        time.sleep(0.05)  # bounded poll of the real daemon
    assert mine, f"the browser's message is not in GET /api/chat: {messages}; page problems {page.problems()}"
    assert mine[0]["via"] == "web" and mine[0]["action"] is False, mine
    wait_text(page, "#events li.chat", "alice: " + typed)
    assert page.wait_for("document.getElementById('text').value === ''", what="#text cleared after sending")
    posts = [r for r in page.requests if r.startswith("POST ")]
    assert posts == [f"POST {daemon.url}/api/chat"], posts
    # What the CSRF check judged: the browser's own Origin and Sec-Fetch-Site.
    sent = [headers for _url, headers in page.sent if "content-type" in headers]
    assert sent and sent[-1].get("origin") == daemon.url and sent[-1].get("sec-fetch-site") == "same-origin", sent


def test_presence_is_live(daemon, open_page) -> None:
    """
    Pins: when bob opens an event stream, #events says he is online, the
    user list shows him and #seats counts him; when his stream closes,
    #events says "bob is offline (left)" at once and the list and seat count
    drop him again -- without reloading the page.
    """
    page = open_page(daemon, "alice")
    wait_stream_open(daemon, "alice")
    wait_text(page, "#seats", "1 of 10 seats taken")

    bob = SSEReader("127.0.0.1", daemon.http_port, "bob", "bob-pw")
    try:
        assert bob.status == 200, bob.head
        wait_text(page, "#events li", "bob is online (logged in)")
        wait_text(page, "#users li", "bob")
        wait_text(page, "#seats", "2 of 10 seats taken")
    finally:
        close_like_a_browser(bob)
    offline = wait_text(page, "#events li", "bob is offline (left)")
    assert "detected after" not in offline, offline  # a clean close is not a detection
    page.wait_for("!Array.from(document.querySelectorAll('#users li'), e => e.textContent)"
                  ".some(t => t.startsWith('bob'))", what="bob gone from #users")
    wait_text(page, "#seats", "1 of 10 seats taken")
    assert [t for t in page.texts("#events li") if "bob is offline" in t] == [offline]


def test_no_console_errors_and_no_csp_violations(daemon, open_page) -> None:
    """
    Pins: under the server's strict CSP (no inline script or style) the page
    loads, receives presence and chat events and sends a message without a
    single console error or warning, log error, uncaught exception or CSP
    issue.  A control at the end -- an inline script and an uncaught error
    injected on purpose -- proves the collector would have seen them.
    """
    page = open_page(daemon, "alice")
    wait_stream_open(daemon, "alice")

    documents = page.document_headers()
    assert documents, "no document response seen"
    policy = documents[0].get("content-security-policy", "")
    assert "script-src 'self'" in policy and "style-src 'self'" in policy, policy

    bob = SSEReader("127.0.0.1", daemon.http_port, "bob", "bob-pw")
    try:
        wait_text(page, "#events li", "bob is online")
        daemon.post_json("/api/chat", "bob", {"text": "console check"})
        wait_text(page, "#events li.chat", "console check")
    finally:
        bob.close()
    wait_text(page, "#events li", "bob is offline")
    type_and_submit(page, "and back")
    wait_text(page, "#events li.chat", "alice: and back")
    assert page.problems() == []
    assert page.handler_errors == []

    # The control: the same collector sees a CSP violation and an exception.
    page.evaluate("(() => { const s = document.createElement('script'); s.textContent = 'window.ran = 1';"
                  " document.body.appendChild(s); setTimeout(() => { throw new Error('control'); }); })()")
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        problems = page.problems()
        if any("Content Security Policy" in p for p in problems) and any("control" in p for p in problems):
            break
        time.sleep(0.05)  # bounded wait for the control's log entries
    assert any("Content Security Policy" in p for p in problems), problems
    assert any(p.startswith("exception:") and "control" in p for p in problems), problems
    assert page.evaluate("window.ran === undefined"), "the injected inline script ran: CSP not enforced"


def test_screenshot(daemon, open_page, tmp_path: Path) -> None:
    """
    Pins: with two operators online, a few messages and events, the page
    lays out inside a 1280x900 window (no horizontal overflow, every panel
    visible with a size) and a screenshot of it is saved as ui.png in the
    test's tmp dir, for a human to look at.
    """
    page = open_page(daemon, "alice")
    wait_stream_open(daemon, "alice")
    chat = ChatPort(daemon, "bob")
    try:
        chat.say("valve 3 is open, pressure nominal")
        daemon.post_json("/api/chat", "bob", {"text": "going to restart the pump", "action": True})
        type_and_submit(page, "ok, watching the gauge")
        wait_text(page, "#events li.chat", "alice: ok, watching the gauge")
        wait_text(page, "#users li", "bob")
        wait_text(page, "#events li.chat", "* bob going to restart the pump")
        boxes = page.evaluate(
            "['header', '#controls', '#floor', '#presence', '#activity', '#text'].map(s => {"
            " const r = document.querySelector(s).getBoundingClientRect();"
            " return [s, r.width, r.height, r.left, r.right]; })")
        for selector, width, height, left, right in boxes:
            assert width > 0 and height > 0 and left >= 0 and right <= 1280, (selector, width, height, left, right)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "horizontal overflow"
        data = page.screenshot(tmp_path / "ui.png")
    finally:
        chat.close()
    assert png_size(data) == (1280, 900)
    print(f"screenshot: {tmp_path / 'ui.png'}")


def test_status_follows_the_event_stream_across_a_restart(daemon, open_page) -> None:
    """
    Pins: #status tells the operator when the live feed is down -- the
    daemon stops, the page says "reconnecting" (not a stale "live"); the
    daemon comes back on the same port, the browser reconnects by itself
    (authenticating to the new process), #status is "live" again and the
    server counts alice's stream; no page reload.
    """
    page = open_page(daemon, "alice")
    wait_stream_open(daemon, "alice")
    assert wait_text(page, "#status", "live") == "live"

    daemon.stop()
    wait_text(page, "#status", "reconnecting")
    daemon.start()
    assert wait_text(page, "#status", "live", timeout=15) == "live"
    wait_stream_open(daemon, "alice")
    wait_text(page, "#seats", "1 of 10 seats taken")
