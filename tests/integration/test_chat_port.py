"""
The chat side port against the real daemon, driven by real clients: ``nc``
(netcat-openbsd) through pipes and ``telnet`` (inetutils) through a pty, next
to the browser's side (``/api/chat``, ``/api/events``) of the same room.

Every wait is bounded and waits for real bytes (a line from a client
process, an SSE event), never a fixed sleep; every process started here is
stopped in teardown, even when the test fails.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import termios
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Iterator, Pattern

import pytest

from daemon import Daemon, SSEReader

pytestmark = pytest.mark.integration

CHINESE = "你好，设备 3 号继电器已断开"

#: The wire spec's lines (boatwist/chat/protocol.py), as the client sees them.
BANNER = b"boatwist chat: log in with your operator name and password\r\n"
LOGIN = b"login: "
PASSWORD = b"password: "


class Terminal:
    """
    A real client process (nc, telnet, openssl s_client) whose output is read
    with bounded waits.  Pipes by default; C{tty=True} gives it a pty, as a
    person at a terminal would (telnet negotiates and echoes differently then).

    C{expect} consumes the output up to and including the match, so
    consecutive expects read the conversation in order; C{transcript} keeps
    every byte received, for assertions on what must never appear.
    """

    def __init__(self, argv: list[str], *, tty: bool = False) -> None:
        self.argv = argv
        self._master: int | None = None
        if tty:
            master, slave = pty.openpty()
            try:
                self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
            finally:
                os.close(slave)
            self._master = master
            self._in, self._out = master, master
        else:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self._in, self._out = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self.transcript = b""
        self.eof = False
        self._seen = 0
        #: (end offset in the transcript, monotonic time) of every chunk read.
        self._chunks: list[tuple[int, float]] = []

    # ------------------------------------------------------------ input

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        view = memoryview(data)
        while view:
            written = os.write(self._in, view)
            view = view[written:]

    # ----------------------------------------------------------- output

    def _read(self, timeout: float) -> bool:
        """Read what is there within C{timeout}; False at timeout or end of output."""
        if self.eof:
            return False
        ready, _, _ = select.select([self._out], [], [], max(0.0, timeout))
        if not ready:
            return False
        try:
            chunk = os.read(self._out, 65536)
        except OSError:  # a pty whose other side is gone: EIO
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        if self._master is not None:
            # What a terminal shows: a pty's output processing turns the
            # server's CR LF into CR CR LF; undo it, also across reads.
            tail = max(self._seen, len(self.transcript) - 2)
            chunk = (self.transcript[tail:] + chunk).replace(b"\r\r\n", b"\r\n")
            self.transcript = self.transcript[:tail]
        self.transcript += chunk
        self._chunks.append((len(self.transcript), time.monotonic()))
        return True

    def _arrival(self, end: int) -> float:
        for offset, at in self._chunks:
            if offset >= end:
                return at
        raise AssertionError("offset beyond transcript")

    def expect(self, pattern: bytes | str | Pattern[bytes], timeout: float = 5.0) -> tuple[re.Match[bytes], float]:
        """
        Wait for C{pattern} (literal bytes/str, or a compiled bytes regex) in
        the unread output; returns the match and when its last byte arrived.
        """
        if isinstance(pattern, str):
            pattern = pattern.encode("utf-8")
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, bytes) else pattern
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.transcript, self._seen)
            if match is not None:
                self._seen = match.end()
                return match, self._arrival(match.end())
            left = deadline - time.monotonic()
            if left <= 0 or (self.eof and not self._read(0)):
                raise AssertionError(
                    f"{self.argv[0]}: {regex.pattern!r} not received within {timeout} s "
                    f"(eof={self.eof}); unread output: {self.transcript[self._seen:]!r}"
                )
            self._read(left)

    def expect_line(self, text: str, timeout: float = 5.0) -> float:
        """
        Wait for the whole line C{text}, CR LF ended as the server sends it,
        starting a line or right where reading stands (a line the server
        writes after a prompt shares the prompt's screen line); when it arrived.
        """
        # A regex cannot anchor at "where reading stands": each candidate is checked.
        needle = text.encode("utf-8") + b"\r\n"
        deadline = time.monotonic() + timeout
        start = self._seen
        while True:
            at = self.transcript.find(needle, start)
            if at >= 0 and (at == self._seen or self.transcript[at - 1:at] == b"\n"):
                self._seen = at + len(needle)
                return self._arrival(self._seen)
            if at >= 0:
                start = at + 1
                continue
            left = deadline - time.monotonic()
            if left <= 0 or (self.eof and not self._read(0)):
                raise AssertionError(
                    f"{self.argv[0]}: line {needle!r} not received within {timeout} s "
                    f"(eof={self.eof}); unread output: {self.transcript[self._seen:]!r}"
                )
            self._read(left)

    def expect_eof(self, timeout: float = 5.0) -> bytes:
        """
        Wait for the server to close the connection; the unread rest.

        nc keeps running after the server closed while its stdin is open;
        with stdin closed (and no -N, so nc sends no FIN of its own) it
        exits when, and only when, the server has closed.  So stdin is
        closed first, then the end of the output is awaited.
        """
        if self._master is None and self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.argv[0]}: still open after {timeout} s; "
                                     f"unread output: {self.transcript[self._seen:]!r}")
            self._read(left)
        rest, self._seen = self.transcript[self._seen:], len(self.transcript)
        return rest

    def wait_tty(self, predicate: Callable[[list[Any]], bool], what: str, timeout: float = 3.0) -> None:
        """
        Wait until the pty's settings (tcgetattr: on Linux the master reports
        the slave's, i.e. what the client set) satisfy C{predicate}; the
        output meanwhile is read into the transcript.  A bounded poll of
        local state: a client changes its terminal without telling anyone.
        """
        assert self._master is not None, "not a pty"
        deadline = time.monotonic() + timeout
        while not predicate(termios.tcgetattr(self._master)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.argv[0]}: no {what} within {timeout} s; "
                                     f"unread output: {self.unread()!r}")
            self._read(min(left, 0.02))

    def mark(self) -> int:
        """Where reading is now: C{rewind} to it to look for lines that may come in any order."""
        return self._seen

    def rewind(self, position: int) -> None:
        self._seen = position

    def unread(self) -> bytes:
        return self.transcript[self._seen:]

    # ---------------------------------------------------------- cleanup

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(3)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        if self._master is not None:
            os.close(self._master)
            self._master = None


def nc(daemon: Daemon) -> list[str]:
    return ["nc", daemon.host, str(daemon.chat_port)]


def login(term: Terminal, user: str, password: str, eol: str = "\n") -> float:
    """Log in through the prompts; returns when the welcome line arrived."""
    term.expect(BANNER)
    term.expect(LOGIN)
    term.send(f"{user}{eol}")
    term.expect(PASSWORD)
    term.send(f"{password}{eol}")
    _, at = term.expect(re.compile(rb"welcome, " + re.escape(user.encode()) + rb"\. online: [^\r\n]*\r\n"))
    return at


def history(daemon: Daemon, user: str = "alice") -> list[dict[str, Any]]:
    """The whole chat history, oldest first (paged)."""
    messages: list[dict[str, Any]] = []
    after = 0
    for _ in range(1000):
        page = daemon.get_json(f"/api/chat?after={after}&limit=500", user)["messages"]
        if not page:
            return messages
        messages += page
        after = page[-1]["id"]
    raise AssertionError("history paging did not end")


@pytest.fixture
def clients() -> Iterator[Callable[..., Any]]:
    """Start client processes and SSE readers; all of them are stopped in teardown."""
    opened: list[Any] = []

    def start(kind: Any, *args: Any, **kw: Any) -> Any:
        client = kind(*args, **kw)
        opened.append(client)
        return client

    yield start
    for client in reversed(opened):
        try:
            client.close()
        except Exception:  # noqa: BLE001 - teardown must stop the rest
            pass


def sse(clients: Callable[..., Any], daemon: Daemon, user: str) -> SSEReader:
    reader = clients(SSEReader, daemon.host, daemon.http_port, user, daemon.users[user])
    assert reader.status == 200, reader.head
    return reader


def post_with_headers(daemon: Daemon, user: str, text: str) -> tuple[int, Any, bytes]:
    """POST /api/chat as C{user} (Basic); status, headers and body, whatever the status."""
    token = base64.b64encode(f"{user}:{daemon.users[user]}".encode()).decode()
    request = urllib.request.Request(f"{daemon.url}/api/chat", data=json.dumps({"text": text}).encode(),
                                     method="POST", headers={"Authorization": f"Basic {token}",
                                                             "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def post_in_thread(daemon: Daemon, user: str, text: str) -> tuple[threading.Thread, list[Any]]:
    """
    POST /api/chat from a thread (the caller meanwhile reads a terminal);
    the list gets the (status, body) and then the monotonic time of the answer.
    """
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(daemon.post_json("/api/chat", user, {"text": text}))
        except Exception as e:  # noqa: BLE001 - reported by the caller
            result.append(e)
        result.append(time.monotonic())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


# --------------------------------------------------------------------- tests


def test_nc_message_reaches_web_history_and_event_stream(daemon: Daemon, clients: Any) -> None:
    """
    A UTF-8 (Chinese) line typed in nc is a message of the room: it is
    stored as sent (GET /api/chat, via "chat") and reaches a browser's
    event stream as a ``chat`` event within a short bound.
    """
    stream = sse(clients, daemon, "bob")
    term = clients(Terminal, nc(daemon))
    login(term, "alice", "alice-pw")
    sent = time.monotonic()
    term.send(CHINESE + "\n")
    kind, data, arrived = stream.wait_for(lambda k, d: k == "chat" and d.get("text") == CHINESE, timeout=2.0)
    print(f"\nnc -> event stream: {(arrived - sent) * 1000:.1f} ms")
    assert (data["user"], data["via"], data["action"]) == ("alice", "chat", False)
    assert arrived - sent < 1.0
    term.expect_line(f"<alice> {CHINESE}", timeout=2.0)  # the sender sees it too, once committed
    stored = [m for m in history(daemon, "bob") if m["text"] == CHINESE]
    assert [(m["user"], m["via"], m["id"]) for m in stored] == [("alice", "chat", data["id"])]


def test_web_message_reaches_nc_within_milliseconds(daemon: Daemon, clients: Any) -> None:
    """
    A message POSTed from the browser (201) is shown on a logged-in nc as
    ``<bob> text`` CR LF, promptly: the time from the POST to the line at
    nc is measured and printed.  The line is written to the chat connection
    before the 201 (the room publishes, then the request is answered), so
    it must reach nc within a few ms of the 201, never a delayed-ACK round
    (~40 ms) later: bob's first message follows the line announcing him
    online, the case where Nagle's algorithm holds the second small write.
    """
    term = clients(Terminal, nc(daemon))
    login(term, "alice", "alice-pw")
    latencies, after_201 = [], []
    for i in range(5):
        text = f"web message {i}: {CHINESE}"
        started = time.monotonic()
        thread, result = post_in_thread(daemon, "bob", text)
        arrived = term.expect_line(f"<bob> {text}", timeout=2.0)
        thread.join(10)
        assert len(result) == 2 and result[0][0] == 201, result
        assert result[0][1]["text"] == text
        latencies.append((arrived - started) * 1000)
        after_201.append((arrived - result[1]) * 1000)
    print("\nPOST /api/chat -> nc line (ms): " + ", ".join(f"{ms:.1f}" for ms in latencies))
    print("201 answered -> nc line (ms): " + ", ".join(f"{ms:+.1f}" for ms in after_201))
    assert max(latencies) < 500, latencies
    assert max(after_201) < 20, f"chat line reached nc {max(after_201):.1f} ms after the 201: {after_201}"


def test_bare_lf_and_crlf_lines(daemon: Daemon, clients: Any) -> None:
    """
    Lines may end in LF (nc) or CR LF (telnet, Windows), at the prompts and
    in the room; the CR is not part of the text.  Every server line ends in
    CR LF.
    """
    term = clients(Terminal, nc(daemon))
    login(term, "alice", "alice-pw", eol="\r\n")
    term.send("ends in bare LF\n")
    term.expect_line("<alice> ends in bare LF")
    term.send("ends in CR LF\r\n")
    term.expect_line("<alice> ends in CR LF")
    texts = [m["text"] for m in history(daemon)]
    assert texts == ["ends in bare LF", "ends in CR LF"]
    lines = term.transcript.split(b"\n")
    # Every complete line the server sent ends in CR (the prompts are not lines).
    assert all(line.endswith(b"\r") for line in lines[:-1]), term.transcript


def test_overlong_line_refused_connection_stays(daemon: Daemon, clients: Any) -> None:
    """
    A line over [chat] max_line (4096 bytes) is refused with an error line,
    is not stored or relayed, and the connection stays usable: the next line
    is a message.  A line of exactly 4096 bytes (sent with CR LF) is taken.
    """
    term = clients(Terminal, nc(daemon))
    login(term, "alice", "alice-pw")
    term.send("x" * 5000 + "\n")
    term.expect_line("error: line too long (more than 4096 bytes): discarded")
    term.send("still here\n")
    term.expect_line("<alice> still here")
    exact = "y" * 4096
    term.send(exact + "\r\n")
    term.expect_line(f"<alice> {exact}")
    assert [m["text"] for m in history(daemon)] == ["still here", exact]
    assert b"xxxx" not in term.transcript


def test_invalid_utf8_refused(daemon: Daemon, clients: Any) -> None:
    """
    A line that is not UTF-8 (here Latin-1) gets an error line, is not
    stored or relayed, and the connection stays usable.
    """
    term = clients(Terminal, nc(daemon))
    login(term, "alice", "alice-pw")
    term.send(b"caf\xe9 au lait\n")
    term.expect_line("error: that line is not valid UTF-8 and was ignored (set your terminal to UTF-8)")
    term.send("café au lait\n")
    term.expect_line("<alice> café au lait")
    assert [m["text"] for m in history(daemon)] == ["café au lait"]


def test_escape_sequences_never_reach_others(daemon: Daemon, clients: Any) -> None:
    """
    Terminal escape sequences (clear screen, retitle, colours, cursor up)
    and bidi overrides typed by one operator are removed from what the
    others receive, on the chat port and on the event stream, and from the
    stored text.
    """
    stream = sse(clients, daemon, "bob")
    bob = clients(Terminal, nc(daemon))
    login(bob, "bob", "bob-pw")
    alice = clients(Terminal, nc(daemon))
    login(alice, "alice", "alice-pw")
    hostile = "\x1b[2J\x1b]0;owned\x07alert \x1b[31mRED\x1b[0m done\x1b[1A\u202eevil\x1bc"
    alice.send(hostile + "\n")
    clean = "alert RED doneevil"
    bob.expect_line(f"<alice> {clean}")
    _, data, _ = stream.wait_for(lambda k, d: k == "chat" and d.get("user") == "alice", timeout=2.0)
    assert data["text"] == clean
    assert [m["text"] for m in history(daemon)] == [clean]
    assert b"\x1b" not in bob.transcript and "\u202e".encode() not in bob.transcript


needs_telnet = pytest.mark.skipif(shutil.which("telnet") is None and not os.environ.get("CI"),
                                  reason="telnet is not installed (the Debian package telnet)")


def telnet_login(clients: Any, daemon: Daemon, user: str) -> Terminal:
    """
    A real telnet on a pty, told to negotiate (the minus before the port:
    inetutils needs ``--`` for it, ``telnet HOST -PORT`` is an unknown
    option there) and to ask for 8-bit data (``-8``), logged in as C{user}.
    Its password must not be echoed: the server offers WILL ECHO to a
    client that spoke IAC, so the password showing means the negotiation
    went wrong.
    """
    term = clients(Terminal, ["telnet", "-8", "--", daemon.host, f"-{daemon.chat_port}"], tty=True)
    term.expect(BANNER, timeout=5.0)
    term.expect(LOGIN)
    term.send(f"{user}\r")
    term.expect(PASSWORD)
    # telnet prints the prompt before it acts on the WILL ECHO that came with
    # it: type the password only once it has turned the terminal's echo off,
    # as a person (slower than this test) would.
    term.wait_tty(lambda attrs: not attrs[3] & termios.ECHO, "echo off for the password (IAC WILL ECHO)")
    term.send(f"{daemon.users[user]}\r")
    term.expect(re.compile(rb"welcome, " + user.encode() + rb"\. online: [^\r\n]*\r\n"))
    assert daemon.users[user].encode() not in term.transcript, "telnet echoed the password"
    return term


@needs_telnet
def test_real_telnet_negotiation_never_relayed(daemon: Daemon, clients: Any) -> None:
    """
    A real, negotiating telnet client logs in (password hidden) and speaks;
    its IAC negotiation never reaches anyone: the nc user reads exactly the
    typed text and not one 0xFF byte, and the stored text is exact.
    """
    bob = clients(Terminal, nc(daemon))
    login(bob, "bob", "bob-pw")
    alice = telnet_login(clients, daemon, "alice")
    text = "telnet says 你好 and the valve is open"
    alice.send(text + "\r")
    alice.expect_line(f"<alice> {text}")
    bob.expect_line(f"<alice> {text}")
    assert b"\xff" not in bob.transcript, bob.transcript
    assert [m["text"] for m in history(daemon)] == [text]


@needs_telnet
def test_real_telnet_utf8_line_arrives_intact(daemon: Daemon, clients: Any) -> None:
    """
    Any UTF-8 text typed in a real telnet arrives intact, here the operator
    sentence 你好，设备 3 号继电器已断开.  Its 号 is E5 8F B7: a telnet
    not in BINARY mode masks each typed byte to 7 bits to look for its
    special characters, takes 8F for ^O (flush output) and sends IAC AO,
    IAC DO TIMING-MARK instead of the byte.  ``telnet -8`` asks for
    BINARY both ways; the server must agree for UTF-8 to get through.
    """
    bob = clients(Terminal, nc(daemon))
    login(bob, "bob", "bob-pw")
    alice = telnet_login(clients, daemon, "alice")
    alice.send(CHINESE + "\r")
    answer, _ = alice.expect(re.compile(rb"(?:<alice> |error: )[^\r\n]*\r\n"))
    assert answer.group(0).decode("utf-8", "replace") == f"<alice> {CHINESE}\r\n"
    bob.expect_line(f"<alice> {CHINESE}")
    assert [m["text"] for m in history(daemon)] == [CHINESE]


def test_who_and_ping(daemon: Daemon, clients: Any) -> None:
    """
    ``/who`` lists every operator online with state and front ends
    (alice on chat, bob on the web); ``/ping tok`` is answered ``PONG tok``
    at once and ``/ping`` with ``PONG``.  Commands are not messages.
    """
    stream = sse(clients, daemon, "bob")
    term = clients(Terminal, nc(daemon))
    login(term, "alice", "alice-pw")
    stream.wait_for(lambda k, d: k == "presence" and d.get("user") == "alice", timeout=2.0)
    # The RTT comes from TCP_INFO at the next heartbeat tick ([heartbeat]
    # interval = 1 s): a bounded poll of /api/presence until both have one.
    deadline = time.monotonic() + 5.0
    while True:
        users = daemon.get_json("/api/presence", "bob")["users"]
        rtts = [c.get("rtt_ms") for u in users for c in u["connections"] if c["kind"] != "http"]
        if len(rtts) == 2 and None not in rtts:
            break
        assert time.monotonic() < deadline, f"no RTT measured within 5 s: {users}"
        time.sleep(0.1)
    term.send("/who\n")
    term.expect_line("2 online:")
    term.expect(re.compile(rb"  alice  online +chat +rtt [0-9.]+ ms\r\n"))
    term.expect(re.compile(rb"  bob    online +web +rtt [0-9.]+ ms\r\n"))
    started = time.monotonic()
    term.send("/ping tok-42\n")
    arrived = term.expect_line("PONG tok-42")
    print(f"\n/ping -> PONG: {(arrived - started) * 1000:.1f} ms")
    term.send("/ping\n")
    term.expect_line("PONG")
    assert history(daemon) == []


def test_wrong_password_then_closed_after_three(make_daemon: Any, clients: Any) -> None:
    """
    A wrong password gets ``login incorrect`` and the ``login:`` prompt
    again, where the right one then works; the third failure on one
    connection ([chat] max_login_attempts = 3) ends it with a goodbye line.
    (The per-name delay is lowered so the test is quick, not removed.)
    """
    daemon = make_daemon("[auth]\nfailure_delay = 0.05\n").start()
    term = clients(Terminal, nc(daemon))
    term.expect(BANNER)
    for attempt in range(3):
        term.expect(LOGIN)
        term.send("alice\n")
        term.expect(PASSWORD)
        term.send(f"wrong-{attempt}\n")
        term.expect_line("login incorrect")
    term.expect_line("too many failed logins; goodbye")
    rest = term.expect_eof()
    assert LOGIN not in rest, rest

    again = clients(Terminal, nc(daemon))
    again.expect(BANNER)
    again.expect(LOGIN)
    again.send("alice\n")
    again.expect(PASSWORD)
    again.send("still wrong\n")
    again.expect_line("login incorrect")
    again.expect(LOGIN)
    again.send("alice\n")
    again.expect(PASSWORD)
    again.send("alice-pw\n")
    again.expect(re.compile(rb"welcome, alice\. online: alice\. "))


def test_full_house_refused_on_chat(make_daemon: Any, clients: Any) -> None:
    """
    With max_users = 1 and alice online through an event stream, bob logging
    in on the chat port (right password) reads ``server full: 1 of 1
    operators online`` and is disconnected; alice's stream is told of the
    refusal, and bob is not online.
    """
    daemon = make_daemon("[admission]\nmax_users = 1\n").start()
    stream = sse(clients, daemon, "alice")
    term = clients(Terminal, nc(daemon))
    term.expect(LOGIN)
    term.send("bob\n")
    term.expect(PASSWORD)
    term.send("bob-pw\n")
    term.expect_line("server full: 1 of 1 operators online")
    rest = term.expect_eof()
    assert b"welcome" not in term.transcript and LOGIN not in rest
    _, data, _ = stream.wait_for(lambda k, d: k == "presence" and d.get("reason") == "refused", timeout=2.0)
    assert (data["user"], data["refusal"], data["used"], data["limit"]) == ("bob", "full", 1, 1)
    presence = daemon.get_json("/api/presence", "alice")
    assert [u["user"] for u in presence["users"]] == ["alice"]


def test_presence_lines_reach_chat_users(daemon: Daemon, clients: Any) -> None:
    """
    A chat user reads presence as lines: ``* bob is online (logged in via
    web)`` when bob opens an event stream, and ``* bob is offline (left)``
    promptly when that stream (his only persistent connection) closes.
    """
    term = clients(Terminal, nc(daemon))
    login(term, "alice", "alice-pw")
    stream = SSEReader(daemon.host, daemon.http_port, "bob", "bob-pw")
    try:
        term.expect_line("* bob is online (logged in via web)", timeout=3.0)
    finally:
        closed = time.monotonic()
        stream.close()
    arrived = term.expect_line("* bob is offline (left)", timeout=3.0)
    print(f"\nSSE closed -> offline line on nc: {(arrived - closed) * 1000:.1f} ms")


def test_rate_limit_gives_a_clear_line(make_daemon: Any, clients: Any) -> None:
    """
    With rate_messages = 3 per rate_period = 10 s, the fourth line in a
    burst is refused with a line saying the limit and when to retry; it is
    not stored.  The bucket is the user's across front ends (a POST by
    alice now gets 429 with Retry-After), not the room's (bob may post).
    """
    daemon = make_daemon("[chat]\nrate_messages = 3\nrate_period = 10\n").start()
    term = clients(Terminal, nc(daemon))
    login(term, "alice", "alice-pw")
    term.send("one\ntwo\nthree\nfour\n")
    # The refusal is immediate, the three echoes come after their commits:
    # each is looked for from the same point.
    start = term.mark()
    term.expect(re.compile(rb"error: slow down: at most 3 messages per 10 s; try again in [0-9.]+ s\r\n"))
    for word in ("one", "two", "three"):
        term.rewind(start)
        term.expect_line(f"<alice> {word}")
    status, headers, body = post_with_headers(daemon, "alice", "five")
    assert status == 429, (status, body)
    assert "slow down" in json.loads(body)["error"]
    assert 1 <= int(headers["Retry-After"]) <= 10, headers
    assert daemon.post_json("/api/chat", "bob", {"text": "bob is fine"})[0] == 201
    term.expect_line("<bob> bob is fine")
    assert [m["text"] for m in history(daemon)] == ["one", "two", "three", "bob is fine"]
    assert b"<alice> four" not in term.transcript
