"""
The chat port: the operators' room as a line protocol for C{telnet} and C{nc}.

This module parses and formats, nothing more (STYLE practice 4): who may
come in is presence's answer (through the connection tracker), what may be
said and how often is the room's (L{boatwist.chat.room.ChatRoom}), and
checking a password is the injected C{authenticate}'s.  The same room
serves C{POST /api/chat}; this is the terminal's "mind" on it.
"""

# ------------------------------------------------------------------ wire spec
#
# Plain TCP.  Text is UTF-8 both ways.
#
# Server to client: every line ends in CR LF (telnet needs it, nc does not
# mind).  The two prompts are not lines: "login: " and "password: " end in a
# space and no line end.
#
#   S: boatwist chat: log in with your operator name and password CR LF
#   S: "login: "
#   C: alice LF                              (LF or CR LF; telnet's CR NUL too)
#   S: "password: "  [+ IAC WILL ECHO, only if the client sent any IAC]
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
#   S: server busy: too many logins in progress, try again later
#                                            over [chat] max_pending_logins (or a
#                                            quarter of them from one address): close
#   S: server full: 10 of 10 operators online       (Refusal.message()): close
#
# Client to server once logged in, one line each (empty lines are ignored):
#
#   text               a message to the room
#   //text             the message "/text"
#   /me <action>       an action: shown as "* alice <action>"
#   /who               who is online, state, front ends, round-trip time
#   /help              the commands
#   /quit              "bye", then the server closes
#   /ping [token]      answered at once with "PONG [token]" (client heartbeat)
#   /heartbeat <s>     opt in to server heartbeats: "PING <token>" every <s>
#                      seconds (1 to 3600); each must be answered with
#                      "PONG <token>" (or "/pong <token>") within
#                      [chat] ping_timeout, else the server closes with
#                      reason heartbeat-timeout.  "/heartbeat 0" opts out,
#                      "/heartbeat" alone shows the setting.  A "PONG" line
#                      is never relayed as a message.
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
#   PING <token>                  server heartbeat (after /heartbeat)
#   PONG [token]                  answer to /ping
#   error: <what>                 a line refused: too long ([chat] max_line
#                                 bytes), not UTF-8, rate limited, not saved
#
# Relayed text is passed through textsafe.clean_message: no control
# characters, escape sequences or bidi overrides reach a terminal.
#
# Telnet: IAC commands (IAC WILL/WONT/DO/DONT opt, IAC SB ... IAC SE, other
# two-byte commands) are removed before lines are split, even when cut across
# reads; IAC IAC is a literal 255 (never valid UTF-8 anyway).  Once the client
# has sent any IAC, the server asks for BINARY both ways (DO BINARY, WILL
# BINARY), so UTF-8 typed in telnet arrives 8-bit clean; every other WILL is
# answered DONT and every other DO WONT, once per option, except DO ECHO after
# our WILL ECHO.  The server never negotiates first, so nc never sees a byte of
# telnet.  Note: telnet to a non-standard port sends no options by itself (so
# its password is echoed like nc's, and it is not 8-bit clean);
# "telnet -8 -- HOST -8023" (a minus before the port) makes it negotiate, and
# then the password is hidden.  Lines longer than [chat] max_line bytes are refused with an error
# line and skipped up to the next LF; the connection stays usable.
# -----------------------------------------------------------------------------

from __future__ import annotations

import math
import re
from collections import deque
from typing import Any, Callable, Mapping

from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from boatwist.chat.room import ChatRoom, MessageRefused, NotSaved, presence_sentence
from boatwist.config import ChatSettings
from boatwist.events import Event
from boatwist.net.tracking import ConnectionTracker, TrackedConnection
from boatwist.presence import Kind, Presence, Refusal
from boatwist.reasons import Reason
from boatwist.textsafe import clean_message

__all__ = ["ChatFactory", "ChatProtocol", "TelnetFilter", "format_event", "format_chat"]

DEFAULT_BANNER = "boatwist chat: log in with your operator name and password"
LOGIN_PROMPT = b"login: "
PASSWORD_PROMPT = b"password: "
#: Bounds of /heartbeat, seconds.
HEARTBEAT_MIN = 1.0
HEARTBEAT_MAX = 3600.0
#: Events held while the history is being read, at most (then the oldest go).
BACKLOG_MAX = 1000

HELP = (
    "commands:",
    "  <text>          say <text> to everyone (//text says /text)",
    "  /me <action>    * you <action>",
    "  /who            who is online, their link state and round-trip time",
    "  /ping [token]   the server answers PONG [token] at once",
    "  /heartbeat <s>  the server sends PING <token> every <s> s (1-3600, 0 = off);",
    "                  answer PONG <token> in time or be disconnected",
    "  /help           this list",
    "  /quit           leave",
)

# Telnet (RFC 854, 857).
IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
ECHO = 1
#: RFC 856: without it, a telnet client treats typed bytes as 7-bit and
#: turns parts of UTF-8 characters (0x8F of 号) into its own commands.
BINARY = 0

_PONG = re.compile(r"\s*PONG(?:\s+(\S+))?\s*")


class TelnetFilter:
    """
    Separates telnet commands from the data stream; no I/O.

    Works byte-exactly across reads: a command cut between two TCP segments
    is held in the state, never passed on as text.  L{spoken} turns true at
    the first IAC, which is how we know the peer is a telnet client (and may
    be sent IAC WILL ECHO) rather than netcat (which would print it).
    """

    _DATA, _IAC, _OPTION, _SUB, _SUB_IAC = range(5)

    def __init__(self) -> None:
        self.spoken = False
        self._state = self._DATA
        self._verb = 0
        self._cr_last = False

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, int]]]:
        """The data bytes of C{data}, and the (verb, option) negotiations in it."""
        out = bytearray()
        negotiations: list[tuple[int, int]] = []
        i, n = 0, len(data)
        while i < n:
            state = self._state
            if state == self._DATA:
                j = data.find(b"\xff", i)
                if j < 0:
                    out += data[i:]
                    break
                out += data[i:j]
                self.spoken = True
                self._state = self._IAC
                i = j + 1
                continue
            if state == self._SUB:
                j = data.find(b"\xff", i)
                if j < 0:
                    break  # subnegotiation payload: nothing of it is text
                self._state = self._SUB_IAC
                i = j + 1
                continue
            byte = data[i]
            i += 1
            if state == self._IAC:
                if byte == IAC:
                    out.append(IAC)
                    self._state = self._DATA
                elif byte in (WILL, WONT, DO, DONT):
                    self._verb = byte
                    self._state = self._OPTION
                elif byte == SB:
                    self._state = self._SUB
                else:  # NOP, GA, AYT, IP, BRK, ...: nothing to show
                    self._state = self._DATA
            elif state == self._OPTION:
                negotiations.append((self._verb, byte))
                self._state = self._DATA
            else:  # _SUB_IAC: IAC SE ends it; IAC IAC is a 255 inside it
                self._state = self._DATA if byte == SE else self._SUB
        text = bytes(out)
        if self.spoken and text:
            # A telnet client may end a line with CR NUL (RFC 854's bare CR).
            if self._cr_last and text[0] == 0:
                text = b"\n" + text[1:]
            text = text.replace(b"\r\x00", b"\r\n")
            self._cr_last = text.endswith(b"\r")
        return text, negotiations


def format_chat(data: Mapping[str, Any]) -> str:
    """A chat event's data (or C{Message.as_event_data()}) as the line operators read."""
    user = clean_message(str(data.get("user", "?")))
    text = clean_message(str(data.get("text", "")))
    if data.get("action"):
        return f"* {user} {text}"
    return f"<{user}> {text}"


def format_event(event: Event) -> str | None:
    """The line for a hub event, or None for kinds the chat port does not show."""
    if event.kind == "chat":
        return format_chat(event.data)
    if event.kind == "presence":
        return "* " + presence_sentence(event.data)
    return None


#: authenticate(user, password, peer_host) -> Deferred firing with the user
#: name, or failing with UnauthorizedLogin / LoginFailed.
Authenticate = Callable[[str, str, str], "Deferred[str]"]


class ChatProtocol(LineReceiver):
    """One operator's terminal on the room."""

    _log = Logger()
    delimiter = b"\n"  # nc sends bare LF; a CR before it is stripped

    _LOGIN, _PASSWORD, _CHECKING, _CHAT, _DONE = ("login", "password", "checking", "chat", "done")

    def __init__(self, factory: ChatFactory) -> None:
        self.factory = factory
        self.settings = factory.settings
        # One more than max_line so that the CR of a CR LF line of exactly
        # max_line bytes fits; lineReceived checks max_line itself.
        self.MAX_LENGTH = factory.settings.max_line + 1
        self.user: str | None = None
        self._state = self._LOGIN
        self._lost = False
        self._telnet = TelnetFilter()
        self._answered: set[tuple[int, int]] = set()
        self._binary_offered = False
        self._echo_off = False
        self._discarding = False
        self._replay: bytes | None = None
        self._pending = False
        self._pending_host = ""
        self._login_timer: IDelayedCall | None = None
        self._failures = 0
        self._login_name = ""
        self._conn: TrackedConnection | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._backlog: deque[Event] | None = None
        self._heartbeat: LoopingCall | None = None
        self._heartbeat_interval = 0.0
        self._ping_token: str | None = None
        self._ping_deadline: IDelayedCall | None = None
        self._ping_count = 0

    # ------------------------------------------------------ connection

    def connectionMade(self) -> None:
        self._pending_host = self._peer_host()
        if not self.factory.start_login(self._pending_host):
            self._write_line("server busy: too many logins in progress, try again later")
            self._finish()
            return
        self._pending = True
        self._write_line(self.factory.banner)
        self._login_timer = self.factory.clock.callLater(self.settings.login_timeout, self._login_expired)
        self._prompt()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self._lost = True
        self._state = self._DONE
        self._end_login_phase()
        self._stop_heartbeat()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    # ----------------------------------------------------------- bytes

    def dataReceived(self, data: bytes) -> None:
        """Strip telnet, skip the rest of an over-long line, then split lines."""
        data, negotiations = self._telnet.feed(data)
        for verb, option in negotiations:
            self._negotiate(verb, option)
        if self._discarding:
            end = data.find(b"\n")
            if end < 0:
                return
            self._discarding = False
            data = data[end + 1 :]
        super().dataReceived(data)
        # LineReceiver stops at an over-long line; what followed it is ours to feed back.
        while self._replay is not None:
            replay, self._replay = self._replay, None
            super().dataReceived(replay)

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        Refuse the line but keep the connection (LineReceiver would drop it):
        skip to the next LF, and feed back whatever came after it.
        """
        if self._state in (self._LOGIN, self._PASSWORD, self._CHAT):
            self._refuse_line(f"line too long (more than {self.settings.max_line} bytes): discarded")
        end = line.find(b"\n")
        if end < 0:
            self._discarding = True
        else:
            self._replay = line[end + 1 :]

    def lineReceived(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._state not in (self._LOGIN, self._PASSWORD, self._CHAT):
            return
        if len(line) > self.settings.max_line:
            self._refuse_line(f"line too long (more than {self.settings.max_line} bytes): discarded")
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._refuse_line("that line is not valid UTF-8 and was ignored (set your terminal to UTF-8)")
            return
        if self._state == self._LOGIN:
            self._got_name(text)
        elif self._state == self._PASSWORD:
            self._got_password(text)
        else:
            self._got_chat_line(text)

    def _negotiate(self, verb: int, option: int) -> None:
        """
        Agree to BINARY both ways (8-bit clean UTF-8) and to the ECHO we offer;
        refuse every other option.  Each is answered once, so nothing loops.
        """
        if not self._binary_offered:
            # The client speaks telnet: ask for 8-bit clean lines both ways.
            self._binary_offered = True
            self._answered.update({(WILL, BINARY), (DO, BINARY)})
            self._send(bytes((IAC, DO, BINARY, IAC, WILL, BINARY)))
        if verb == DO and option == ECHO and self._echo_off:
            return  # the client agrees to our WILL ECHO
        if verb not in (WILL, DO) or (verb, option) in self._answered:
            return  # WONT / DONT need no answer; each option is answered once
        self._answered.add((verb, option))
        if option == BINARY:
            self._send(bytes((IAC, DO if verb == WILL else WILL, BINARY)))
        else:
            self._send(bytes((IAC, DONT if verb == WILL else WONT, option)))

    # ----------------------------------------------------------- login

    def _prompt(self) -> None:
        if self._state == self._LOGIN:
            self._send(LOGIN_PROMPT)
        elif self._state == self._PASSWORD:
            if self._telnet.spoken:
                # Only a telnet client gets this: nc would print the bytes.
                self._send(PASSWORD_PROMPT + bytes((IAC, WILL, ECHO)))
                self._echo_off = True
            else:
                self._send(PASSWORD_PROMPT)

    def _restore_echo(self) -> None:
        if self._echo_off:
            self._echo_off = False
            # The Enter the user pressed was not echoed either: end the prompt line.
            self._send(bytes((IAC, WONT, ECHO)) + b"\r\n")

    def _got_name(self, text: str) -> None:
        name = text.strip()
        if name:
            self._login_name = name
            self._state = self._PASSWORD
        self._prompt()

    def _got_password(self, password: str) -> None:
        self._restore_echo()
        self._state = self._CHECKING
        # No more lines until the answer: bcrypt and throttling take time,
        # and what the user typed ahead belongs to whatever comes next.
        self.pauseProducing()
        name = self._login_name
        d = maybeDeferred(self.factory.authenticate, name, password, self._peer_host())
        d.addCallbacks(self._authenticated, self._not_authenticated)
        d.addErrback(lambda f: self._log.failure("chat login of {user!r}", f, user=name))

    def _not_authenticated(self, failure: Failure) -> None:
        if self._lost or self._state != self._CHECKING:
            return
        if failure.check(UnauthorizedLogin, LoginFailed):
            self._write_line("login incorrect")
        else:
            self._log.failure("authenticating {user!r} failed", failure, user=self._login_name)
            self._write_line("login failed: server error")
        self._failures += 1
        if self._failures >= self.settings.max_login_attempts:
            self._write_line("too many failed logins; goodbye")
            self._finish()
            return
        self._state = self._LOGIN
        self._prompt()
        self._resume()

    def _authenticated(self, user: str | bytes) -> None:
        if self._lost or self._state != self._CHECKING:
            return  # timed out or gone meanwhile: nobody to admit
        if isinstance(user, bytes):
            user = user.decode("utf-8")
        self._end_login_phase()
        refusal = self._admit(user)
        if refusal is not None:
            self._write_line(refusal.message())
            self._finish()
            return
        self.user = user
        self._state = self._CHAT
        self._backlog = deque(maxlen=BACKLOG_MAX)
        self._unsubscribe = self.factory.room.subscribe(self._on_event)
        self._write_line(self._welcome(user))
        d = self.factory.room.history()
        d.addCallbacks(self._show_history, self._history_failed)
        self._resume()

    def _admit(self, user: str) -> Refusal | None:
        """Make this connection part of C{user}'s presence; a Refusal, or None when admitted."""
        conn = self.factory.tracker.connection_for(self)
        refusal = self.factory.presence.admit(conn, user, Kind.CHAT)
        if refusal is None:
            self._conn = conn
        return refusal

    def _login_expired(self) -> None:
        self._login_timer = None
        self._restore_echo()
        self._write_line(f"login timed out after {self.settings.login_timeout:g} s")
        self._finish()

    def _end_login_phase(self) -> None:
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None
        if self._pending:
            self._pending = False
            self.factory.end_login(self._pending_host)

    # ------------------------------------------------------------ chat

    def _got_chat_line(self, text: str) -> None:
        if not text.strip():
            return
        pong = _PONG.fullmatch(text)
        if pong is not None:
            self._pong(pong.group(1))
        elif text.startswith("//"):
            self._say(text[1:], action=False)
        elif text.startswith("/"):
            name, _, arg = text[1:].partition(" ")
            handler = getattr(self, f"_cmd_{name.lower()}", None) if name.isalpha() else None
            if handler is None:
                shown = clean_message(name)[:32]
                self._write_line(f"unknown command /{shown}: /help lists the commands")
            else:
                handler(arg.strip())
        else:
            self._say(text, action=False)

    def _say(self, text: str, action: bool) -> None:
        assert self.user is not None
        try:
            d = self.factory.room.say(self.user, text, "chat", action)
        except MessageRefused as e:
            self._error(str(e))
            return
        # Success shows itself: the message comes back as a chat event.
        d.addErrback(self._not_saved)

    def _not_saved(self, failure: Failure) -> None:
        if failure.check(NotSaved):
            self._error(str(failure.value))
        else:
            self._log.failure("message from {user} failed", failure, user=self.user)
            self._error("message not saved: server error")

    def _cmd_me(self, arg: str) -> None:
        if not arg:
            self._write_line("usage: /me <action>")
        else:
            self._say(arg, action=True)

    def _cmd_who(self, arg: str) -> None:
        entries = self.factory.room.who()
        self._write_line(f"{len(entries)} online:")
        names = [clean_message(str(e["user"])) for e in entries]
        width = max((len(n) for n in names), default=0)
        for name, entry in zip(names, entries, strict=True):
            rtt = entry.get("rtt_ms")
            link = f"rtt {rtt:.1f} ms" if isinstance(rtt, (int, float)) else "rtt unknown"
            via = ", ".join(entry.get("kinds", ())) or "-"
            self._write_line(f"  {name:<{width}}  {entry['state']:<8}  {via:<10}  {link}")

    def _cmd_help(self, arg: str) -> None:
        for line in HELP:
            self._write_line(line)

    def _cmd_quit(self, arg: str) -> None:
        self._write_line("bye")
        self._finish()

    def _cmd_ping(self, arg: str) -> None:
        token = clean_message(arg).strip()[:64]
        self._write_line(f"PONG {token}" if token else "PONG")

    def _cmd_pong(self, arg: str) -> None:
        self._pong(arg or None)

    def _cmd_heartbeat(self, arg: str) -> None:
        usage = f"usage: /heartbeat <seconds> ({HEARTBEAT_MIN:g} to {HEARTBEAT_MAX:g}, 0 turns it off)"
        if not arg:
            if self._heartbeat is None:
                self._write_line("heartbeat off")
            else:
                self._write_line(f"heartbeat every {self._heartbeat_interval:g} s")
            return
        try:
            seconds = float(arg)
        except ValueError:
            self._write_line(usage)
            return
        if seconds == 0:
            self._stop_heartbeat()
            self._write_line("heartbeat off")
            return
        if not (math.isfinite(seconds) and HEARTBEAT_MIN <= seconds <= HEARTBEAT_MAX):
            self._write_line(usage)
            return
        self._stop_heartbeat()
        self._heartbeat_interval = seconds
        self._heartbeat = LoopingCall(self._send_ping)
        self._heartbeat.clock = self.factory.clock
        self._heartbeat.start(seconds, now=False)
        self._write_line(
            f"heartbeat every {seconds:g} s: answer each PING <token> with PONG <token> "
            f"within {self.settings.ping_timeout:g} s"
        )

    # ------------------------------------------------------- heartbeat

    def _send_ping(self) -> None:
        if self._ping_token is not None:
            return  # one outstanding at a time; its deadline decides
        self._ping_count += 1
        self._ping_token = token = str(self._ping_count)
        self._write_line(f"PING {token}")
        self._ping_deadline = self.factory.clock.callLater(self.settings.ping_timeout, self._ping_expired)

    def _pong(self, token: str | None) -> None:
        if token is not None and token == self._ping_token:
            self._ping_token = None
            if self._ping_deadline is not None and self._ping_deadline.active():
                self._ping_deadline.cancel()
            self._ping_deadline = None
        # A late or unknown PONG is dropped: never relayed as a message.

    def _ping_expired(self) -> None:
        self._ping_deadline = None
        self._write_line(f"error: no PONG {self._ping_token} within {self.settings.ping_timeout:g} s; closing")
        self._close(Reason.HEARTBEAT_TIMEOUT)

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        if self._ping_deadline is not None and self._ping_deadline.active():
            self._ping_deadline.cancel()
        self._ping_deadline = None
        self._ping_token = None

    # ---------------------------------------------------------- events

    def _on_event(self, event: Event) -> None:
        if self._backlog is not None:
            self._backlog.append(event)  # shown after the history, in order
        else:
            self._show_event(event)

    def _show_event(self, event: Event) -> None:
        line = format_event(event)
        if line is not None:
            self._write_line(line)

    def _show_history(self, messages: list[Any]) -> None:
        if self._lost:
            return
        if messages:
            self._write_line(f"-- last {len(messages)} message{'s' if len(messages) > 1 else ''} --")
            for message in messages:
                self._write_line(format_chat(message.as_event_data()))
            self._write_line("-- end of history --")
        self._flush_backlog({message.id for message in messages})

    def _history_failed(self, failure: Failure) -> None:
        self._log.failure("reading chat history for {user}", failure, user=self.user)
        if not self._lost:
            self._error("chat history unavailable")
            self._flush_backlog(set())

    def _flush_backlog(self, shown: set[int]) -> None:
        backlog, self._backlog = self._backlog or (), None
        for event in backlog:
            # Committed while the history was read: already in it, or not.
            if event.kind == "chat" and event.data.get("id") in shown:
                continue
            self._show_event(event)

    # --------------------------------------------------------- helpers

    def _welcome(self, user: str) -> str:
        names = ", ".join(
            clean_message(str(e["user"])) + ("" if e["state"] == "online" else f" ({e['state']})")
            for e in self.factory.room.who()
        )
        return f"welcome, {clean_message(user)}. online: {names or '-'}. /help lists the commands."

    def _send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _write_line(self, text: str) -> None:
        if not self._lost:
            self._send(text.encode("utf-8", "replace") + b"\r\n")

    def _error(self, text: str) -> None:
        self._write_line(f"error: {text}")

    def _refuse_line(self, why: str) -> None:
        """An input line could not be taken: say so and ask again for what was asked."""
        self._restore_echo()
        self._error(why)
        if self._state in (self._LOGIN, self._PASSWORD):
            self._prompt()

    def _peer_host(self) -> str:
        peer: IAddress | None = self.transport.getPeer() if self.transport is not None else None
        return getattr(peer, "host", "") or ""

    def _resume(self) -> None:
        """Undo the pause of L{_got_password}, unless the connection is ending."""
        if not self._lost and not getattr(self.transport, "disconnecting", False):
            self.resumeProducing()

    def _finish(self) -> None:
        self._state = self._DONE
        if self.transport is not None:
            self.transport.loseConnection()

    def _close(self, reason: Reason) -> None:
        """End the connection with C{reason} for everyone to read (a tracked close when we can)."""
        self._state = self._DONE
        if self._conn is not None:
            self._conn.close(reason)
        elif self.transport is not None:
            self.transport.loseConnection()


class ChatFactory(Factory):
    """
    Builds L{ChatProtocol}s and holds what they share: the room, presence,
    the tracker, C{authenticate}, the clock, the settings, and the count of
    connections still logging in (a per-port cap, so it lives here and not
    in a module global).
    """

    _log = Logger()

    def __init__(
        self,
        room: ChatRoom,
        presence: Presence,
        tracker: ConnectionTracker,
        authenticate: Authenticate,
        clock: IReactorTime,
        settings: ChatSettings,
        banner: str = DEFAULT_BANNER,
    ) -> None:
        self.room = room
        self.presence = presence
        self.tracker = tracker
        self.authenticate = authenticate
        self.clock = clock
        self.settings = settings
        self.banner = banner
        self._pending_logins = 0
        self._pending_by_host: dict[str, int] = {}

    @property
    def pending_logins(self) -> int:
        """Connections that have not logged in yet."""
        return self._pending_logins

    def buildProtocol(self, addr: IAddress | None) -> ChatProtocol:
        return ChatProtocol(self)

    def start_login(self, host: str = "") -> bool:
        """
        Take a pending-login slot; False when C{max_pending_logins} are taken,
        or when C{host} already holds its share of them (a quarter, at least
        one): silent connections from one address must not keep everyone
        else from logging in.
        """
        share = max(1, self.settings.max_pending_logins // 4)
        if self._pending_logins >= self.settings.max_pending_logins or self._pending_by_host.get(host, 0) >= share:
            return False
        self._pending_logins += 1
        self._pending_by_host[host] = self._pending_by_host.get(host, 0) + 1
        return True

    def end_login(self, host: str = "") -> None:
        self._pending_logins -= 1
        left = self._pending_by_host.get(host, 1) - 1
        if left > 0:
            self._pending_by_host[host] = left
        else:
            self._pending_by_host.pop(host, None)
