"""
The chat port: the operators' room as a line protocol for telnet, nc and friends.

This module turns bytes into lines and lines into bytes, nothing more
(STYLE practice 4): telnet is L{boatwist.chat.telnet}'s, what a line means
and what to answer is the session's (L{boatwist.chat.session}), who stands
at the prompt the gate's (L{boatwist.chat.gate}), what may be said the
room's, who may come in presence's.
"""

# ------------------------------------------------------------------ wire spec
#
# Plain TCP (or TLS).  Text is UTF-8 both ways.
#
# Server to client: every line ends in CR LF.  The two prompts are not
# lines: "login: " and "password: " end in a space and no line end.
#
#   S: boatwist chat: log in with your operator name and password CR LF
#   S: "login: "
#   C: alice LF                              (LF or CR LF; telnet's CR NUL too)
#   S: "password: "  [+ IAC WILL ECHO, only to a telnet client]
#   C: secret LF
#   S:               [+ IAC WONT ECHO CR LF, only if WILL ECHO was sent]
#   then one of:
#   S: welcome, alice. online: alice, bob (unstable). /help lists the commands.
#      -- last 2 messages --                 (only when there is history;
#      <bob> the valve is open                 at most [chat] history lines)
#      * bob waves
#      -- end of history --
#   S: login incorrect                       then "login: " again; after
#      too many failed logins; goodbye       [chat] max_login_attempts: close
#   S: login timed out after 30 s            no login in [chat] login_timeout: close
#   S: login timed out: too many connections are logging in and newer ones need room
#                                            evicted for a newer connection (gate.py): close
#   S: server busy: too many unfinished logins from your address; try again in 7 s
#                                            the address is in debt (gate.py): close at once
#   S: server busy: too many logins in progress, try again later
#                                            every pending login is having its password checked
#   S: server full: 10 of 10 operators online       (Refusal.message()): close
#   S: error: too much input before login; goodbye  over [chat] max_login_bytes: close
#   S: error: too many telnet commands; goodbye     over [chat] max_telnet_commands a second
#
# Client to server once logged in, one line each (empty lines are ignored):
#
#   text               a message to the room
#   //text             the message "/text"
#   /me <action>       an action: shown as "* alice <action>"
#   /who               who is online, state, front ends, round-trip time
#   /help              the commands (the built-ins and those registered, commands.py)
#   /quit              "bye", then the server closes
#   /ping [token]      answered at once with "PONG [token]" (client heartbeat)
#   /heartbeat <s>     opt in to server heartbeats: "PING <token>" every <s>
#                      seconds (1 to 3600); each must be answered with
#                      "PONG <token>" (or "/pong <token>") within
#                      [chat] ping_timeout, else the server closes with
#                      reason heartbeat-timeout.  "/heartbeat 0" opts out,
#                      "/heartbeat" alone shows the setting.  A "PONG" line
#                      is never relayed as a message.
#   /yes               confirm what a registered command asked (within 15 s)
#   /anything-else     a one-line hint
#
# Server to client once logged in:
#
#   <alice> text                  a message (from the chat port or the browser)
#   * alice waves                 an action
#   * bob is offline (no answer to keepalive probes, detected after 3.1 s)
#   * bob is unstable (packets being retransmitted)
#   * carol is online (logged in via web)
#   * carol was refused: server full (10 of 10 operators online)
#   * alice set pump to on (was off)          an operation (control event)
#   * alice took the floor                    a floor event
#   PING <token>                  server heartbeat (after /heartbeat)
#   PONG [token]                  answer to /ping
#   error: <what>                 a line refused: too long ([chat] max_line
#                                 bytes), not UTF-8, garbled by telnet, rate
#                                 limited, not saved
#
# Relayed text is passed through textsafe.clean_message: no control
# characters, escape sequences or bidi overrides reach a terminal.
#
# Telnet (telnet.py says why): the server never negotiates first, so nc
# never sees a byte of telnet.  A connection becomes telnet when its client
# sends a well-formed negotiation (IAC WILL/DO with an option a telnet client
# offers, or WONT/DONT with one whose code is a control byte, after at most
# four two-byte commands); until then an IAC is data (nc sending FF FE in a
# message gets "not valid UTF-8", not telnet).  A telnet client is asked DO BINARY (so UTF-8 it sends is not
# masked to 7 bits); the server never sends binary (WONT BINARY), which keeps
# the client's terminal translating the echo of Enter into CR LF -- no
# staircase; SGA is refused, so the client edits lines and echoes itself;
# ECHO is taken over only for the password.  IAC commands are removed before
# lines are split, even when cut across reads; IAC IAC is a literal 255.  A
# line in which the client sent IP, AO, ... (plain "telnet HOST PORT" sends
# IAC AO for a UTF-8 byte that looks like ^O to it, before BINARY) is refused
# as garbled.  "telnet HOST PORT" and "telnet -8 -- HOST -PORT" both work;
# the first negotiates only once it has to.
#
# Lines longer than [chat] max_line bytes are refused with an error line and
# skipped up to the next LF; the connection stays usable.
# -----------------------------------------------------------------------------

from __future__ import annotations

from typing import Mapping

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from boatwist.chat.commands import Command
from boatwist.chat.lines import reason_words
from boatwist.chat.gate import LoginGate
from boatwist.chat.room import ChatRoom
from boatwist.chat.session import DEFAULT_BANNER, Authenticate, Session, SessionParts
from boatwist.chat.telnet import INTERRUPTS, Command as TelnetCommand, TelnetFilter, TelnetOptions
from boatwist.config import ChatSettings
from boatwist.net.tracking import ConnectionTracker
from boatwist.presence import Kind, Presence, Refusal
from boatwist.reasons import Reason

__all__ = ["ChatFactory", "ChatProtocol"]

GARBLED = ("that line was garbled by your telnet client (it took a UTF-8 byte for a control key "
           "before 8-bit mode was on; it is on now) and was ignored: type it again")


class ChatProtocol(Protocol):
    """One terminal: bytes -> telnet filter -> lines -> session, and the session's L{Terminal} back to bytes."""

    def __init__(self, factory: ChatFactory) -> None:
        self.factory = factory
        self._max_line = factory.settings.max_line
        self._telnet = TelnetFilter()
        self._options = TelnetOptions()
        self._buffer = bytearray()
        self._partial = 0  # bytes of the line being typed (after the last LF)
        self._lines_in = 0  # LFs received, and lines taken from the buffer: numbers garbled lines
        self._lines_out = 0
        self._garbled: set[int] = set()
        self._discarding = False
        self._paused = False
        self._before_login = 0
        self._tokens = float(factory.settings.max_telnet_commands)
        self._tokens_at = factory.clock.seconds()
        self.session: Session | None = None

    @property
    def user(self) -> str | None:
        """Who is logged in on this terminal (None until then)."""
        return self.session.user if self.session is not None else None

    # ------------------------------------------------------ connection

    def connectionMade(self) -> None:
        self.session = Session(self.factory.parts, self, self._peer_host(), self._admit)
        self.session.start()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        if self.session is not None:
            self.session.connection_lost()

    # ----------------------------------------------------------- bytes

    def dataReceived(self, data: bytes) -> None:
        session = self.session
        if session is None or session.finished:
            return
        if not session.logged_in:
            # Before login a client has proved nothing: what it sends is bounded, unparsed beyond that.
            self._before_login += len(data)
            if self._before_login > self.factory.settings.max_login_bytes:
                session.over_budget("too much input before login")
                return
        spoken = self._telnet.spoken
        segments = self._telnet.feed(data, max_commands=self._telnet_budget())
        if self._telnet.spoken and not spoken:
            self._send(self._options.start())
        for segment in segments:
            if isinstance(segment, TelnetCommand):
                if not self._spend_token():
                    if session.logged_in:
                        self.factory.gate.log.note(self._peer_host(), "logged-in chat connections closed for "
                                                   "sending too many telnet commands")
                    session.over_budget("too many telnet commands")
                    return
                self._send(self._options.answer(segment))
                if segment.code in INTERRUPTS and self._partial:
                    self._garbled.add(self._lines_in)
            else:
                self._buffer += segment
                lfs = segment.count(b"\n")
                self._lines_in += lfs
                self._partial = len(segment) - 1 - segment.rfind(b"\n") if lfs else self._partial + len(segment)
        self._deliver()

    def _deliver(self) -> None:
        """Hand complete lines to the session, one at a time, while it takes them."""
        session = self.session
        while session is not None and not self._paused and not session.finished:
            end = self._buffer.find(b"\n")
            if end < 0:
                if not self._discarding and len(self._buffer) > self._max_line + 1:
                    # No line end in sight: refuse now, skip to the next LF.
                    self._discarding = True
                    session.bad_line(f"line too long (more than {self._max_line} bytes): discarded")
                if self._discarding:
                    self._buffer.clear()
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            number, self._lines_out = self._lines_out, self._lines_out + 1
            garbled = number in self._garbled
            self._garbled.discard(number)
            if self._discarding:
                self._discarding = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self._max_line:
                session.bad_line(f"line too long (more than {self._max_line} bytes): discarded")
            elif garbled:
                session.bad_line(GARBLED)
            else:
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError:
                    session.bad_line("that line is not valid UTF-8 and was ignored (set your terminal to UTF-8)")
                else:
                    session.line(text)

    def _telnet_budget(self) -> int:
        self._refill()
        return int(self._tokens)

    def _spend_token(self) -> bool:
        """One telnet command: a token of [chat] max_telnet_commands per second (as many in a burst)."""
        if self._tokens < 1.0:
            self._refill()
            if self._tokens < 1.0:
                return False
        self._tokens -= 1.0
        return True

    def _refill(self) -> None:
        rate = float(self.factory.settings.max_telnet_commands)
        now = self.factory.clock.seconds()
        self._tokens = min(rate, self._tokens + max(0.0, now - self._tokens_at) * rate)
        self._tokens_at = now

    # -------------------------------------------------------- Terminal

    def write_line(self, text: str) -> None:
        self._send(text.encode("utf-8", "replace") + b"\r\n")

    def prompt(self, text: str) -> None:
        self._send(text.encode("utf-8", "replace"))

    def echo(self, on: bool) -> None:
        if not self._telnet.spoken:
            return  # nc would print the bytes, and echoes nothing anyway
        if not on:
            self._send(self._options.echo_off())
        else:
            withdrawn = self._options.echo_on()
            if withdrawn:
                # The Enter the user pressed was not echoed either: end the prompt line.
                self._send(withdrawn + b"\r\n")

    def close(self, reason: Reason | None = None) -> None:
        if reason is not None:
            self.factory.tracker.connection_for(self).close(reason)
        elif self.transport is not None:
            self.transport.loseConnection()

    def pause(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume(self) -> None:
        if self.transport is None or getattr(self.transport, "disconnecting", False):
            return
        self._paused = False
        self.transport.resumeProducing()  # type: ignore[attr-defined]
        self._deliver()

    # --------------------------------------------------------- helpers

    def _send(self, data: bytes) -> None:
        if data and self.transport is not None:
            self.transport.write(data)

    def _admit(self, user: str) -> Refusal | None:
        """Make this connection part of C{user}'s presence (presence decides)."""
        conn = self.factory.tracker.connection_for(self)
        refusal = self.factory.presence.admit(conn, user, Kind.CHAT)
        if refusal is None:
            conn.farewell = self._farewell
        return refusal

    def _farewell(self, reason: Reason, note: str | None) -> None:
        """The connection is being closed for someone else's reason: say which before it goes."""
        # "removed by root" rather than "removed by an operator": the note names who.
        words = f"removed {note}" if reason is Reason.KICKED and note else reason_words(reason.value)
        self.write_line(f"closing: {words}")

    def _peer_host(self) -> str:
        peer: IAddress | None = self.transport.getPeer() if self.transport is not None else None
        return getattr(peer, "host", "") or ""


class ChatFactory(Factory):
    """
    Builds L{ChatProtocol}s and holds what their sessions share: the room,
    C{authenticate}, the clock, the settings, the commands, and the gate of
    pending logins (per port, so it lives here and not in a module global).
    """

    def __init__(
        self,
        room: ChatRoom,
        presence: Presence,
        tracker: ConnectionTracker,
        authenticate: Authenticate,
        clock: IReactorTime,
        settings: ChatSettings,
        banner: str = DEFAULT_BANNER,
        commands: Mapping[str, Command] | None = None,
    ) -> None:
        self.presence = presence
        self.tracker = tracker
        self.clock = clock
        self.settings = settings
        self.gate = LoginGate(settings, clock)
        self.parts = SessionParts(room, authenticate, clock, settings, self.gate, dict(commands or {}), banner)

    @property
    def pending_logins(self) -> int:
        """Connections that have not logged in yet."""
        return self.gate.pending

    def buildProtocol(self, addr: IAddress | None) -> ChatProtocol:
        return ChatProtocol(self)
