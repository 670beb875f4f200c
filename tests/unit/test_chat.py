"""
The chat port, byte for byte: StringTransport for the socket, Clock for time,
a real EventHub, ChatRoom, Presence and ConnectionTracker (each connection is
accepted through the tracker, as in the daemon); fakes for the store (to
hold commits back or fill the disk) and for authenticate.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from boatwist.chat.protocol import ChatFactory, ChatProtocol
from boatwist.chat.telnet import BINARY, Command, TelnetFilter
from boatwist.chat.room import ChatRoom
from boatwist.config import AdmissionSettings, ChatSettings, KeepaliveSettings
from boatwist.events import EventHub
from boatwist.net.tracking import ConnectionTracker, TrackedConnection
from boatwist.presence import Kind, Presence
from boatwist.reasons import Reason
from boatwist.store.service import Message, StoreFull

IAC, DONT, DO, WONT, WILL, SB, SE, ECHO = 255, 254, 253, 252, 251, 250, 240, 1

BANNER = b"boatwist chat: log in with your operator name and password\r\n"


# ------------------------------------------------------------------ fakes


class FakeStore:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.manual = False
        self.pending: list[Deferred[Message]] = []
        self.full = False
        self.history_deferred: Deferred[list[Message]] | None = None

    def add_message(self, user: str, text: str, via: str, action: bool) -> Deferred[Message]:
        if self.full:
            return fail(StoreFull("chat.db: disk full"))
        message = Message(len(self.messages) + 1, user, text, via, action, 1_700_000_000.0)
        self.messages.append(message)
        if not self.manual:
            return succeed(message)
        d: Deferred[Message] = Deferred()
        d.addCallback(lambda _: message)
        self.pending.append(d)
        return d

    def history(self, before: int | None = None, after: int | None = None, limit: int = 50) -> Deferred[list[Message]]:
        if self.history_deferred is not None:
            return self.history_deferred
        return succeed(self.messages[-limit:])


class FakeAuth:
    """authenticate(user, password, peer_host): immediate, or manual when .manual is set."""

    def __init__(self) -> None:
        self.passwords = {"alice": "secret", "bob": "hunter2", "张三": "密码 with spaces "}
        self.calls: list[tuple[str, str, str]] = []
        self.manual = False
        self.pending: list[Deferred[str]] = []

    def __call__(self, user: str, password: str, peer_host: str) -> Deferred[str]:
        self.calls.append((user, password, peer_host))
        if self.manual:
            d: Deferred[str] = Deferred()
            self.pending.append(d)
            return d
        if self.passwords.get(user) == password:
            return succeed(user)
        return fail(UnauthorizedLogin())


class Harness:
    def __init__(self, max_users: int = 10, **chat: Any) -> None:
        self.clock = Clock()
        self.hub = EventHub()
        self.store = FakeStore()
        admission = AdmissionSettings(max_users=max_users, networks=(ipaddress.ip_network("0.0.0.0/0"),))
        self.presence = Presence(self.hub, admission, self.clock.seconds, lambda: 1_700_000_000.0)
        self.tracker = ConnectionTracker(self.presence, admission, KeepaliveSettings(), self.clock, self.clock.seconds)
        self.auth = FakeAuth()
        self.settings = ChatSettings(**chat)
        self.room = ChatRoom(self.hub, self.store, self.presence, self.clock, self.settings)
        self.factory = ChatFactory(self.room, self.presence, self.tracker, self.auth, self.clock, self.settings)
        self.listener = self.tracker.wrap(self.factory, Kind.CHAT)
        self.transports: list[StringTransport] = []
        self._port = 40000

    def connect(self, host: str = "192.0.2.7") -> tuple[ChatProtocol, StringTransport]:
        """A chat connection accepted through the real tracker."""
        self._port += 1
        peer = IPv4Address("TCP", host, self._port)
        wrapper = self.listener.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        wrapper.makeConnection(transport)
        proto = wrapper.wrappedProtocol
        assert isinstance(proto, ChatProtocol)
        self.transports.append(transport)
        return proto, transport

    def conn(self, proto: ChatProtocol) -> TrackedConnection:
        return self.tracker.connection_for(proto)

    def fill_seats(self) -> None:
        """Every seat taken by someone else (plain requests from 192.0.2.200)."""
        for n in range(self.presence.limit):
            wrapper = self.tracker.wrap(Factory.forProtocol(Protocol), Kind.HTTP).buildProtocol(
                IPv4Address("TCP", "192.0.2.200", 50000 + n))
            wrapper.makeConnection(StringTransport())
            assert self.presence.admit(wrapper.conn, f"other{n}", Kind.HTTP) is None

    def events(self) -> list[Any]:
        return list(self.hub.since(0) or [])

    def login(self, user: str = "alice", password: str | None = None) -> tuple[ChatProtocol, StringTransport]:
        proto, transport = self.connect()
        password = self.auth.passwords[user] if password is None else password
        proto.dataReceived(f"{user}\n{password}\n".encode())
        assert proto.user == user, transport.value()
        # The others were told "* user is online (...)": the tests look at what comes after.
        for each in self.transports:
            each.clear()
        return proto, transport


def take(transport: StringTransport) -> bytes:
    data = transport.value()
    transport.clear()
    return data


def lines(transport: StringTransport) -> list[str]:
    data = take(transport)
    assert data == b"" or data.endswith(b"\r\n"), data
    return data.decode("utf-8").split("\r\n")[:-1]


# ------------------------------------------------------------------ login


def test_banner_then_login_prompt_exact_bytes() -> None:
    """On connect: one banner line in CR LF, then 'login: ' with no line end."""
    h = Harness()
    _, transport = h.connect()
    assert transport.value() == BANNER + b"login: "


def test_password_prompt_and_welcome_with_bare_lf() -> None:
    """nc sends bare LF: 'password: ' (no IAC for nc), then the welcome line naming who is online."""
    h = Harness()
    proto, transport = h.connect()
    take(transport)
    proto.dataReceived(b"alice\n")
    assert take(transport) == b"password: "
    proto.dataReceived(b"secret\n")
    assert take(transport) == b"welcome, alice. online: alice. /help lists the commands.\r\n"
    assert h.auth.calls == [("alice", "secret", "192.0.2.7")]


def test_crlf_lines_and_utf8_credentials_reach_authenticate_exactly() -> None:
    """CR LF is stripped to the line; a Chinese name and a password with spaces arrive unaltered."""
    h = Harness()
    proto, transport = h.connect()
    proto.dataReceived("张三\r\n密码 with spaces \r\n".encode())
    assert h.auth.calls == [("张三", "密码 with spaces ", "192.0.2.7")]
    assert proto.user == "张三"
    assert "welcome, 张三." in transport.value().decode("utf-8")


def test_wrong_password_reprompts_and_third_failure_closes() -> None:
    """Each failure: 'login incorrect' and 'login: ' again; the max_login_attempts-th closes the connection."""
    h = Harness()
    proto, transport = h.connect()
    take(transport)
    proto.dataReceived(b"alice\nwrong\n")
    assert take(transport) == b"password: login incorrect\r\nlogin: "
    proto.dataReceived(b"alice\nwrong\n")
    assert take(transport) == b"password: login incorrect\r\nlogin: "
    assert not transport.disconnecting
    proto.dataReceived(b"alice\nwrong\n")
    assert take(transport) == b"password: login incorrect\r\ntoo many failed logins; goodbye\r\n"
    assert transport.disconnecting
    assert not h.presence.is_online("alice")


def test_empty_login_name_just_asks_again() -> None:
    """An empty line at 'login: ' asks again and is not an attempt."""
    h = Harness()
    proto, transport = h.connect()
    take(transport)
    proto.dataReceived(b"\n  \r\n")
    assert take(transport) == b"login: login: "
    assert h.auth.calls == []


def test_login_deadline_closes_and_is_cancelled_by_login() -> None:
    """No login within login_timeout: a line and close; after a login no timer is left behind."""
    h = Harness(login_timeout=30.0)
    proto, transport = h.connect()
    h.clock.advance(29.9)
    assert not transport.disconnecting
    h.clock.advance(0.1)
    assert transport.value().endswith(b"login timed out after 30 s\r\n")
    assert transport.disconnecting

    h2 = Harness(login_timeout=30.0)
    h2.login()
    assert h2.clock.getDelayedCalls() == []


EVICTED = b"login timed out: too many connections are logging in and newer ones need room\r\n"


def test_pending_logins_are_capped_and_slots_come_back() -> None:
    """
    Over max_pending_logins the oldest silent pending connection is evicted
    (told so, closed) and the newcomer gets the prompt -- squatters cannot
    keep anyone from login: (issue 9); logging in or leaving frees a slot.
    """
    h = Harness(max_pending_logins=2)
    first, first_t = h.connect("192.0.2.7")
    second, _ = h.connect("192.0.2.8")
    third, transport = h.connect("192.0.2.9")
    assert transport.value() == BANNER + b"login: "
    assert first_t.value().endswith(b"login: " + EVICTED)
    assert first_t.disconnecting
    first.connectionLost(Failure(ConnectionDone()))
    assert h.factory.pending_logins == 2

    third.dataReceived(b"alice\nsecret\n")  # logged in: no longer pending
    assert h.factory.pending_logins == 1
    _, transport = h.connect("192.0.2.7")
    assert transport.value() == BANNER + b"login: "
    second.connectionLost(Failure(ConnectionDone()))
    assert h.factory.pending_logins == 1
    _, transport = h.connect("192.0.2.8")
    assert transport.value() == BANNER + b"login: "
    assert h.factory.pending_logins == 2


def test_one_address_cannot_take_every_pending_login_slot() -> None:
    """
    Connections from one address hold at most a quarter of the slots: a
    fifth from it evicts that address's own oldest, never another address's.
    """
    h = Harness(max_pending_logins=16)
    squatters = [h.connect("198.51.100.1")[1] for _ in range(4)]
    _, other = h.connect("203.0.113.5")
    _, fifth = h.connect("198.51.100.1")
    assert fifth.value() == BANNER + b"login: "
    assert squatters[0].disconnecting and squatters[0].value().endswith(EVICTED)
    assert not any(t.disconnecting for t in squatters[1:])
    assert not other.disconnecting
    assert h.factory.gate.pending_from("198.51.100.1") == 4


def test_full_house_is_a_clear_line_and_a_close() -> None:
    """The Refusal from presence is shown with its message() and the connection closed, unsubscribed."""
    h = Harness()
    h.fill_seats()
    proto, transport = h.connect()
    take(transport)
    proto.dataReceived(b"alice\nsecret\n")
    assert take(transport) == b"password: server full: 10 of 10 operators online\r\n"
    assert transport.disconnecting
    assert h.hub.subscriber_count == 0
    assert h.factory.pending_logins == 0


def test_login_makes_the_tracked_connection_the_users_chat_presence() -> None:
    """A login admits the tracked connection to presence as a chat connection."""
    h = Harness()
    proto, _ = h.login("bob")
    conn = h.conn(proto)
    assert (conn.user, conn.kind) == ("bob", "chat")
    assert h.presence.snapshot()["users"][0]["connections"][0]["kind"] == "chat"


@pytest.mark.parametrize("reason, word", [(ConnectionDone(), "closed"), (ConnectionLost(), "reset")])
def test_lost_chat_connection_ends_presence_with_the_trackers_reason(reason: Exception, word: str) -> None:
    """When the chat connection ends, the tracker tells presence why: the user is offline with that reason."""
    h = Harness()
    proto, _ = h.login("bob")
    proto.transport.connectionLost(Failure(reason))
    assert not h.presence.is_online("bob")
    last = [e.data for e in h.events() if e.kind == "presence"][-1]
    assert (last["user"], last["state"], last["reason"]) == ("bob", "offline", word)


def test_answer_arriving_after_the_connection_died_admits_nobody() -> None:
    """A slow authenticate firing after connectionLost must not attach a ghost to presence."""
    h = Harness()
    h.auth.manual = True
    proto, _ = h.connect()
    proto.dataReceived(b"alice\nsecret\n")
    proto.connectionLost(Failure(ConnectionLost()))
    h.auth.pending[0].callback("alice")
    assert not h.presence.is_online("alice")
    assert h.factory.pending_logins == 0
    assert h.hub.subscriber_count == 0


def test_lines_typed_during_authentication_wait_for_its_answer() -> None:
    """Input is paused while authenticate runs; a message typed ahead is said after login, not lost."""
    h = Harness()
    h.auth.manual = True
    proto, transport = h.connect()
    proto.dataReceived(b"alice\nsecret\nhello\n")
    assert transport.producerState == "paused"
    assert h.store.messages == []
    h.auth.pending[0].callback("alice")
    assert transport.producerState == "producing"
    assert [m.text for m in h.store.messages] == ["hello"]
    assert transport.value().endswith(b"<alice> hello\r\n")


# --------------------------------------------------------------- telnet


def test_telnet_filter_handles_commands_split_at_every_byte() -> None:
    """IAC WILL/DO, SB...SE (with IAC IAC inside) and IAC IAC survive any cut; only data comes out."""
    stream = (b"al" + bytes((IAC, WILL, 31)) + b"i" + bytes((IAC, SB, 24, 0)) + b"xt" + bytes((IAC, IAC))
              + b"erm" + bytes((IAC, SE)) + b"ce" + bytes((IAC, DO, 3, IAC, IAC, IAC, 241)) + b"\r\n")
    for size in range(1, len(stream) + 1):
        f = TelnetFilter()
        data, negotiations = b"", []
        for i in range(0, len(stream), size):
            for segment in f.feed(stream[i:i + size]):
                if isinstance(segment, Command):
                    if segment.negotiation:
                        negotiations.append((segment.code, segment.option))
                else:
                    data += segment
        assert data == b"alice\xff\r\n", size
        assert negotiations == [(WILL, 31), (DO, 3)], size
        assert f.spoken


def test_telnet_session_hides_the_password_and_never_shows_iac() -> None:
    """
    A client that spoke telnet (even split across reads) is asked for BINARY
    (its side only), gets WILL ECHO with the password prompt, WONT after.
    """
    h = Harness()
    proto, transport = h.connect()
    take(transport)
    for chunk in (b"ali", bytes((IAC,)), bytes((WILL,)), bytes((31,)) + b"ce\r", b"\n"):
        proto.dataReceived(chunk)
    binary = bytes((IAC, DO, BINARY))
    assert take(transport) == binary + bytes((IAC, DONT, 31)) + b"password: " + bytes((IAC, WILL, ECHO))
    proto.dataReceived(bytes((IAC, DO, ECHO)) + b"secret\r\n")  # DO ECHO agrees: no answer to it
    out = take(transport)
    assert out.startswith(bytes((IAC, WONT, ECHO)) + b"\r\n" + b"welcome, alice.")
    assert h.auth.calls == [("alice", "secret", "192.0.2.7")]


def test_netcat_session_contains_no_telnet_bytes() -> None:
    """A client that never sent IAC never receives a 255 byte, whatever it does."""
    h = Harness()
    proto, transport = h.connect()
    proto.dataReceived(b"alice\nwrong\nalice\nsecret\n/help\n/who\nhi\n")
    assert b"\xff" not in transport.value()
    assert b"welcome, alice." in transport.value()


def test_unknown_options_are_refused_once() -> None:
    """WILL x gets DONT x and DO x gets WONT x, once per option (no negotiation loops); WONT/DONT get nothing."""
    h = Harness()
    proto, transport = h.connect()
    take(transport)
    proto.dataReceived(bytes((IAC, WILL, 24, IAC, DO, 3, IAC, WILL, 24, IAC, WONT, 5, IAC, DONT, 6)))
    assert take(transport) == bytes((IAC, DO, BINARY, IAC, DONT, 24, IAC, WONT, 3))


def test_binary_is_asked_of_the_client_and_refused_to_it() -> None:
    """
    Without BINARY a telnet client treats typed bytes as 7-bit and turns the
    0x8F inside 号 into its own command; the server asks for the client's
    BINARY (DO) as soon as the client speaks telnet, and agrees (once) when
    the client offers it.  The server never sends binary itself (WONT, even
    to ``telnet -8`` asking DO): a telnet client receiving binary turns its
    terminal's output processing off, and the echo of every Enter the user
    types becomes a bare LF -- the staircase of issue 8.
    """
    h = Harness()
    proto, transport = h.connect()
    take(transport)
    proto.dataReceived(bytes((IAC, WILL, BINARY)))
    assert take(transport) == bytes((IAC, DO, BINARY))
    proto.dataReceived(bytes((IAC, DO, BINARY, IAC, WILL, BINARY)))
    assert take(transport) == bytes((IAC, WONT, BINARY))
    proto.dataReceived(bytes((IAC, DO, BINARY)))
    assert take(transport) == b""
    h2 = Harness()
    proto2, transport2 = h2.connect()
    take(transport2)
    proto2.dataReceived(bytes((IAC, WONT, 1)))
    proto2.dataReceived(bytes((IAC, WILL, BINARY)))
    assert take(transport2) == bytes((IAC, DO, BINARY))
    assert WILL not in take(transport2)


def test_telnet_cr_nul_ends_a_line() -> None:
    """A telnet client that ends a line with CR NUL (even across reads) is understood."""
    h = Harness()
    proto, transport = h.connect()
    proto.dataReceived(bytes((IAC, WONT, 1)) + b"alice\r")
    proto.dataReceived(b"\x00")
    assert transport.value().endswith(b"password: " + bytes((IAC, WILL, ECHO)))
    proto.dataReceived(b"secret\r\x00")
    assert h.auth.calls == [("alice", "secret", "192.0.2.7")]
    assert proto.user == "alice"


def test_literal_iac_iac_is_data_not_a_command() -> None:
    """IAC IAC is a 255 byte in the line (so it is not UTF-8), not a negotiation."""
    h = Harness()
    proto, transport = h.login()
    proto.dataReceived(b"x" + bytes((IAC, IAC)) + b"y\n")
    assert lines(transport) == [
        "error: that line is not valid UTF-8 and was ignored (set your terminal to UTF-8)"]


# ----------------------------------------------------------------- lines


def test_long_line_is_refused_and_the_next_line_works() -> None:
    """Over max_line: an error line, the rest of that line skipped (even across reads), the connection kept."""
    h = Harness(max_line=64)
    proto, transport = h.login()
    proto.dataReceived(b"x" * 50)
    proto.dataReceived(b"x" * 50)
    proto.dataReceived(b"x" * 100 + b"\nhello\n")
    assert lines(transport) == ["error: line too long (more than 64 bytes): discarded", "<alice> hello"]
    proto.dataReceived(b"y" * 65 + b"\nagain\n")
    assert lines(transport) == ["error: line too long (more than 64 bytes): discarded", "<alice> again"]
    assert not transport.disconnecting


def test_line_of_exactly_max_line_bytes_is_taken_with_crlf_or_lf() -> None:
    """The limit is max_line bytes of text: the CR of CR LF does not count against it."""
    h = Harness(max_line=64)
    proto, transport = h.login()
    proto.dataReceived(b"a" * 64 + b"\r\n" + b"b" * 64 + b"\n")
    assert lines(transport) == ["<alice> " + "a" * 64, "<alice> " + "b" * 64]


def test_long_line_at_the_login_prompt_asks_again() -> None:
    """A paste at 'login: ' is refused and the prompt repeated; the connection is kept."""
    h = Harness(max_line=64)
    proto, transport = h.connect()
    take(transport)
    proto.dataReceived(b"z" * 200 + b"\n")
    assert take(transport) == b"error: line too long (more than 64 bytes): discarded\r\nlogin: "


def test_invalid_utf8_is_an_error_line_not_a_crash() -> None:
    """A byte sequence that is not UTF-8 gets one error line; the next line works."""
    h = Harness()
    proto, transport = h.login()
    proto.dataReceived(b"caf\xe9\n\xc3\x28\nok\n")
    assert lines(transport) == [
        "error: that line is not valid UTF-8 and was ignored (set your terminal to UTF-8)",
        "error: that line is not valid UTF-8 and was ignored (set your terminal to UTF-8)",
        "<alice> ok",
    ]
    assert h.store.messages[-1].text == "ok"


def test_escape_sequences_never_reach_other_terminals() -> None:
    """ESC/CSI/OSC and controls in a message are gone from what others receive."""
    h = Harness()
    alice, _ = h.login("alice")
    bob, bob_t = h.login("bob")
    alice.dataReceived(b"\x1b[2J\x1b[1;1Hhi\x1b]0;owned\x07 there\x08\n")
    assert take(bob_t) == b"<alice> hi there\r\n"


def test_chinese_round_trip_between_operators() -> None:
    """UTF-8 text (Chinese, emoji) arrives byte for byte at every other operator."""
    h = Harness()
    alice, _ = h.login("alice")
    _, bob_t = h.login("bob")
    alice.dataReceived("阀门已打开，请注意 👍\n".encode())
    assert take(bob_t) == "<alice> 阀门已打开，请注意 👍\r\n".encode()


def test_rate_limit_stops_a_flood_with_a_clear_line() -> None:
    """Past rate_messages per rate_period the sender reads why and when to retry; nothing more is stored."""
    h = Harness(rate_messages=2, rate_period=10.0)
    alice, transport = h.login()
    alice.dataReceived(b"one\ntwo\nthree\n")
    assert lines(transport) == ["<alice> one", "<alice> two",
                                "error: slow down: at most 2 messages per 10 s; try again in 5.0 s"]
    assert len(h.store.messages) == 2


def test_store_full_tells_the_sender_message_not_saved() -> None:
    """StoreFull reaches the sender as 'message not saved: disk full'; nobody else sees anything."""
    h = Harness()
    alice, transport = h.login("alice")
    _, bob_t = h.login("bob")
    take(transport)
    h.store.full = True
    alice.dataReceived(b"hello\n")
    assert lines(transport) == ["error: message not saved: disk full"]
    assert take(bob_t) == b""


def test_broadcast_waits_for_the_store() -> None:
    """Until add_message's Deferred fires, nobody (the sender neither) sees the message."""
    h = Harness()
    alice, alice_t = h.login("alice")
    _, bob_t = h.login("bob")
    take(alice_t)
    h.store.manual = True
    alice.dataReceived(b"committed?\n")
    assert take(bob_t) == b"" and take(alice_t) == b""
    h.store.pending[0].callback(None)
    assert take(bob_t) == b"<alice> committed?\r\n"
    assert take(alice_t) == b"<alice> committed?\r\n"


# -------------------------------------------------------------- commands


def test_who_lists_users_state_front_end_and_rtt() -> None:
    """/who: a count line then one line per user with state, front ends and RTT."""
    h = Harness()
    alice, transport = h.login("alice")
    bob, _ = h.login("bob")
    h.conn(alice).rtt_ms = 0.4
    h.presence.set_unstable(h.conn(bob), True, Reason.PROBES)
    assert lines(transport) == ["* bob is unstable (keepalive probes unanswered)"]
    alice.dataReceived(b"/who\n")
    assert lines(transport) == [
        "2 online:",
        "  alice  online    chat        rtt 0.4 ms",
        "  bob    unstable  chat        rtt unknown",
    ]


def test_me_is_an_action_for_everyone() -> None:
    """/me waves is stored as an action and shown as '* alice waves'; bare /me gets its usage."""
    h = Harness()
    alice, transport = h.login("alice")
    _, bob_t = h.login("bob")
    alice.dataReceived(b"/me waves\n/me\n")
    assert take(bob_t) == b"* alice waves\r\n"
    assert h.store.messages[-1].action is True
    assert lines(transport)[-1] == "usage: /me <action>"


def test_help_ping_unknown_and_empty_lines() -> None:
    """/help lists commands, /ping answers PONG at once, unknown commands get a hint, empty lines nothing."""
    h = Harness()
    alice, transport = h.login()
    alice.dataReceived(b"\n   \r\n")
    assert take(transport) == b""
    alice.dataReceived(b"/help\n")
    help_lines = lines(transport)
    assert help_lines[0] == "commands:"
    assert all(any(c in line for line in help_lines) for c in ("/me", "/who", "/ping", "/heartbeat", "/quit"))
    alice.dataReceived(b"/ping\n/PING abc\n/frobnicate now\n")
    assert lines(transport) == ["PONG", "PONG abc", "unknown command /frobnicate: /help lists the commands"]
    assert h.store.messages == []


def test_double_slash_sends_a_line_starting_with_slash() -> None:
    """//etc/passwd is the message '/etc/passwd', not a command."""
    h = Harness()
    alice, transport = h.login()
    alice.dataReceived(b"//etc/hosts is fine\n")
    assert lines(transport) == ["<alice> /etc/hosts is fine"]


def test_quit_says_bye_and_closes() -> None:
    """/quit: 'bye', then the server closes."""
    h = Harness()
    alice, transport = h.login()
    alice.dataReceived(b"/quit\nignored after quit\n")
    assert lines(transport) == ["bye"]
    assert transport.disconnecting
    assert h.store.messages == []


def test_heartbeat_ping_pong_keeps_the_connection() -> None:
    """/heartbeat 5: PING <token> every 5 s; a matching PONG keeps it open and is never relayed."""
    h = Harness(ping_timeout=3.0)
    alice, transport = h.login()
    _, bob_t = h.login("bob")
    alice.dataReceived(b"/heartbeat 5\n")
    assert lines(transport) == ["heartbeat every 5 s: answer each PING <token> with PONG <token> within 3 s"]
    h.clock.advance(5)
    assert lines(transport) == ["PING 1"]
    alice.dataReceived(b"PONG 1\r\n")
    h.clock.advance(5)
    assert lines(transport) == ["PING 2"]
    alice.dataReceived(b"/pong 2\n")
    h.clock.advance(4)
    assert not transport.disconnecting
    assert take(bob_t) == b"" and h.store.messages == []


def test_heartbeat_timeout_closes_with_reason_through_the_tracker() -> None:
    """An unanswered PING ends the connection via TrackedConnection.close('heartbeat-timeout')."""
    h = Harness(ping_timeout=3.0)
    alice, transport = h.login()
    alice.dataReceived(b"/heartbeat 2\n")
    take(transport)
    h.clock.advance(2)
    alice.dataReceived(b"PONG 999\n")  # the wrong token does not count
    h.clock.advance(2.9)
    assert not transport.disconnecting
    h.clock.advance(0.1)
    assert lines(transport) == ["PING 1", "error: no PONG 1 within 3 s; closing"]
    assert h.conn(alice).close_reason == "heartbeat-timeout"
    assert transport.disconnecting


def test_heartbeat_timeout_tells_presence_why() -> None:
    """The connection closed for a missed PONG is offline with reason 'heartbeat-timeout', timers gone."""
    h = Harness(ping_timeout=1.0)
    alice, transport = h.login()
    alice.dataReceived(b"/heartbeat 1\n")
    h.clock.pump([1, 1])
    assert transport.disconnecting
    alice.transport.connectionLost(Failure(ConnectionLost()))
    last = [e.data for e in h.events() if e.kind == "presence"][-1]
    assert (last["state"], last["reason"]) == ("offline", "heartbeat-timeout")
    assert h.clock.getDelayedCalls() == []


def test_heartbeat_opt_out_and_bounds() -> None:
    """/heartbeat 0 stops the PINGs; values outside 1..3600 or not numbers get the usage line."""
    h = Harness()
    alice, transport = h.login()
    alice.dataReceived(b"/heartbeat 1\n/heartbeat 0\n/heartbeat\n")
    assert lines(transport)[1:] == ["heartbeat off", "heartbeat off"]
    h.clock.advance(100)
    assert take(transport) == b""
    usage = "usage: /heartbeat <seconds> (1 to 3600, 0 turns it off)"
    alice.dataReceived(b"/heartbeat 0.5\n/heartbeat 3601\n/heartbeat soon\n/heartbeat nan\n")
    assert lines(transport) == [usage] * 4
    assert h.clock.getDelayedCalls() == []


# ----------------------------------------------------------------- events


def test_presence_events_with_reason_words_and_detection_time() -> None:
    """Hub presence events read as sentences: offline with detected_after, and a refusal."""
    h = Harness()
    _, transport = h.login()
    h.hub.publish("presence", {"user": "bob", "state": "offline", "reason": "keepalive-timeout",
                               "at": 1.0, "detected_after": 3.104, "via": "web"})
    h.hub.publish("presence", {"user": "carol", "state": "offline", "reason": "refused", "refusal": "full",
                               "used": 10, "limit": 10, "at": 1.0, "via": "chat"})
    h.hub.publish("presence", {"user": "dave", "state": "unstable", "reason": "probes", "at": 1.0, "via": "web"})
    assert lines(transport) == [
        "* bob is offline (no answer to keepalive probes, detected after 3.1 s)",
        "* carol was refused: server full (10 of 10 operators online)",
        "* dave is unstable (keepalive probes unanswered)",
    ]


def test_chat_from_the_browser_appears_in_the_terminal() -> None:
    """Hub chat events with via 'web' show as '<bob> text' and actions as '* bob waves', cleaned."""
    h = Harness()
    _, transport = h.login()
    h.hub.publish("chat", {"id": 7, "user": "bob", "text": "from the browser", "at": 1.0, "via": "web",
                           "action": False})
    h.hub.publish("chat", {"id": 8, "user": "bob", "text": "waves\x1b[5m", "at": 1.0, "via": "web",
                           "action": True})
    assert lines(transport) == ["<bob> from the browser", "* bob waves"]


def test_history_is_shown_after_the_welcome_and_live_events_are_not_repeated() -> None:
    """The last `history` messages follow the welcome; a message committed meanwhile appears once, after."""
    h = Harness(history=2)
    for i, text in enumerate(["old", "older? no: second", "third"], 1):
        h.store.messages.append(Message(i, "bob", text, "web", False, 1.0))
    h.store.history_deferred = Deferred()
    proto, transport = h.connect()
    take(transport)
    proto.dataReceived(b"alice\nsecret\n")
    new = Message(4, "bob", "live", "web", False, 2.0)
    h.hub.publish("chat", new.as_event_data())  # committed while the history was being read
    h.hub.publish("presence", {"user": "bob", "state": "unstable", "reason": "retransmits", "at": 2.0})
    assert take(transport) == b"password: welcome, alice. online: alice. /help lists the commands.\r\n"
    h.store.history_deferred.callback(h.store.messages[-2:] + [new])
    assert lines(transport) == [
        "-- last 3 messages --",
        "<bob> older? no: second",
        "<bob> third",
        "<bob> live",
        "-- end of history --",
        "* bob is unstable (packets being retransmitted)",
    ]


def test_connection_lost_unsubscribes_and_stops_timers() -> None:
    """After connectionLost the protocol hears no more events and leaves no delayed call."""
    h = Harness()
    alice, transport = h.login()
    alice.dataReceived(b"/heartbeat 10\n")
    assert h.hub.subscriber_count == 1
    alice.connectionLost(Failure(ConnectionDone()))
    assert h.hub.subscriber_count == 0
    assert h.clock.getDelayedCalls() == []


# ---------------------------------------------------- telnet, as clients do it


def test_plain_telnet_garbling_a_utf8_line_is_told_and_switched_to_8_bit() -> None:
    """
    Plain 'telnet HOST PORT' masks typed bytes to 7 bits until BINARY: the
    0x8F of 号 becomes IAC AO IAC DO TIMING-MARK mid-line.  The server asks
    DO BINARY, answers the timing mark, refuses the line as garbled (not "set
    your terminal to UTF-8": it is), and the next line arrives intact.
    """
    h = Harness()
    proto, transport = h.login()
    proto.dataReceived("你好 ".encode() + b"\xe5" + bytes((IAC, 245, IAC, DO, 6)) + b"\xb7\r\n")
    out = take(transport)
    assert out.startswith(bytes((IAC, DO, BINARY, IAC, WILL, 6)))
    assert out.endswith(b"error: that line was garbled by your telnet client (it took a UTF-8 byte for a control "
                        b"key before 8-bit mode was on; it is on now) and was ignored: type it again\r\n")
    proto.dataReceived(bytes((IAC, WILL, BINARY)) + "号\n".encode())
    assert take(transport) == "<alice> 号\r\n".encode()


def test_nc_sending_ff_fe_in_a_message_is_not_taken_for_telnet() -> None:
    """FF FE inside a line from nc: no telnet is sent back, the bytes stay in the line (refused: not UTF-8)."""
    h = Harness()
    proto, transport = h.login()
    proto.dataReceived(b"price \xff\xfe 12 \xff\xfeA\n")
    assert lines(transport) == [
        "error: that line is not valid UTF-8 and was ignored (set your terminal to UTF-8)"]
    proto.dataReceived(b"/who\n")
    assert b"\xff" not in transport.value()


# ----------------------------------------------------------------- budgets


def test_too_much_input_before_login_closes_and_puts_the_address_in_debt() -> None:
    """Over max_login_bytes before login: an error line, the close, and the address is refused for a while."""
    h = Harness(max_login_bytes=1024)
    proto, transport = h.connect("198.51.100.7")
    take(transport)
    proto.dataReceived(b"x" * 1000)
    assert not transport.disconnecting
    proto.dataReceived(b"x" * 25)
    assert take(transport) == b"error: too much input before login; goodbye\r\n"
    assert transport.disconnecting
    _, again = h.connect("198.51.100.7")
    assert again.value() == b"server busy: too many unfinished logins from your address; try again in 5 s\r\n"
    h.clock.advance(5)
    _, later = h.connect("198.51.100.7")
    assert later.value() == BANNER + b"login: "


def test_a_telnet_command_flood_is_closed_before_and_after_login() -> None:
    """More than max_telnet_commands in a second: closed (IAC NOP floods stalled the reactor, issue 9)."""
    h = Harness(max_telnet_commands=20)
    proto, transport = h.connect("198.51.100.9")
    take(transport)
    proto.dataReceived(bytes((IAC, WILL, 31)) + bytes((IAC, 241)) * 19)
    assert not transport.disconnecting
    proto.dataReceived(bytes((IAC, 241)) * 1000)
    assert take(transport).endswith(b"error: too many telnet commands; goodbye\r\n")
    assert transport.disconnecting

    alice, alice_t = h.login("alice")
    alice.dataReceived(bytes((IAC, WILL, 31)))
    h.clock.advance(1)  # the bucket refills: a slow trickle is fine
    alice.dataReceived(bytes((IAC, 241)) * 20)
    assert not alice_t.disconnecting
    alice.dataReceived(bytes((IAC, 241)) * 5)
    assert alice_t.disconnecting and take(alice_t).endswith(b"error: too many telnet commands; goodbye\r\n")


# ------------------------------------------------------- commands, events


def test_commands_registered_with_the_factory_are_typed_and_listed() -> None:
    """ChatFactory(commands=...) adds to the same table: the command runs, /help lists it."""
    from boatwist.chat.commands import Command as ChatCommand, CommandContext

    def controls(ctx: CommandContext, arg: str) -> None:
        ctx.reply(f"pump on ({ctx.user})")

    h = Harness()
    h.factory = ChatFactory(h.room, h.presence, h.tracker, h.auth, h.clock, h.settings,
                            commands={"controls": ChatCommand(controls, "/controls", ("the device's controls",))})
    h.listener = h.tracker.wrap(h.factory, Kind.CHAT)
    alice, transport = h.login()
    alice.dataReceived(b"/controls\n/help\n")
    out = lines(transport)
    assert out[0] == "pump on (alice)"
    assert "  /controls       the device's controls" in out and "  /yes            confirm what you were just asked" in out


def test_operations_reach_the_terminal_and_sensor_values_do_not() -> None:
    """A control event is a '* ...' line; a value event (a sensor poll) is not shown."""
    h = Harness()
    _, transport = h.login()
    h.hub.publish("value", {"control": "temperature", "value": 20.5, "quality": "good", "at": 1.0})
    h.hub.publish("control", {"id": 3, "user": "bob", "control": "reset", "type": "action", "result": "ok",
                              "via": "web", "at": 1.0})
    assert lines(transport) == ["* bob pressed reset"]


def test_a_kicked_user_reads_why_and_by_whom_before_the_close() -> None:
    """/kick (presence.kick) closes the chat connection gracefully after one line naming the reason and the admin."""
    h = Harness()
    proto, transport = h.login("bob")
    assert h.presence.kick("bob", Reason.KICKED, by="root")
    assert lines(transport)[-1] == "closing: removed by root"
    assert transport.disconnecting
