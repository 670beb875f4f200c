"""
One operator's session on the chat port, without I/O (the h11 / transit
relay pattern, STYLE practice 4).

The session is driven by inputs -- a line was received (or refused by the
framing), the password check answered, a timer fired, the room published
an event, the connection ended -- and produces its outputs through a
L{Terminal}: write a line, prompt, echo off/on, close with a L{Reason},
pause/resume input.  Time is the injected C{IReactorTime}.  Bytes, telnet
and line framing are L{boatwist.chat.protocol}'s; what may be said is the
room's; who may come in is presence's (the injected C{admit}); how many may
stand at the prompt is the gate's (L{boatwist.chat.gate}).

The login is a state machine (automat's C{TypeMachine}, as the floor; every
transition is in L{_build}):

    greeting --open--> user                       banner, "login: ", login timer
    greeting --busy--> done                       no slot: "server busy ..."
    user --word--> password                       "password: ", echo off
    user --blank / bad_line--> user               ask again
    password --word / blank--> checking           echo on, input paused, authenticate
    password --bad_line--> password               echo on, error, ask again
    checking --authenticated--> admitting         the slot is freed; presence decides
    checking --rejected--> user                   "login incorrect", input resumed
    checking --rejected_finally--> done           ... "too many failed logins; goodbye"
    admitting --admitted--> chatting              welcome, history, events
    admitting --refused--> done                   "server full: 10 of 10 operators online"
    chatting --word--> chatting                   a message or a command
    chatting --blank--> chatting                  nothing
    chatting --bad_line--> chatting               "error: ..."
    chatting --event--> chatting                  the event's line
    chatting --leave--> done                      /quit, a missed PONG
    user, password, checking --expire--> done     "login timed out after 30 s"
    user, password, checking --evict--> done      the gate needed the slot
    any but done --flood--> done                  over a budget of the protocol
    any --lost--> done                            the connection ended
    done --anything--> done                       ignored: late answers, lines after /quit

A line is fed as C{word} or C{blank} by its shape, so the caller never needs
to know the state; the two inputs whose outcome depends on something only
the transition may compute (admission, which has effects) are fed as a
follow-up by the transition itself.  Inputs are queued and run one at a
time, follow-ups first, so an input arriving while another runs (an event
published by our own message, a password check answering at once) waits
for it, and input is resumed only once the queue is empty -- the lines the
user typed ahead are then taken one by one, each seeing the state the
previous one left.

Commands (C{/who}, C{/me}, ..., and those other parts register) are one
table (L{boatwist.chat.commands}); C{/heartbeat} is a small timer loop of
its own: C{PING <n>} every interval, each answered by C{PONG <n>} within
C{[chat] ping_timeout} or the session leaves with C{heartbeat-timeout}.
"""

from __future__ import annotations

import functools
import math
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

from automat import TypeMachineBuilder
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from boatwist.chat.commands import ASK_TIMEOUT, Command, CommandContext, check_commands
from boatwist.chat.gate import Busy, LoginGate, LoginSlot, Outcome
from boatwist.chat.lines import format_chat, format_event
from boatwist.chat.room import ChatRoom, MessageRefused, NotSaved
from boatwist.config import ChatSettings
from boatwist.events import Event
from boatwist.presence import Refusal
from boatwist.reasons import Reason
from boatwist.store.service import Message
from boatwist.textsafe import clean_message

__all__ = ["DEFAULT_BANNER", "Admit", "Authenticate", "Session", "SessionParts", "Terminal"]

DEFAULT_BANNER = "boatwist chat: log in with your operator name and password"
LOGIN_PROMPT = "login: "
PASSWORD_PROMPT = "password: "
#: Bounds of /heartbeat, seconds.
HEARTBEAT_MIN = 1.0
HEARTBEAT_MAX = 3600.0
#: Events held while the history is being read, at most (then the oldest go).
BACKLOG_MAX = 1000

_PONG = re.compile(r"\s*PONG(?:\s+(\S+))?\s*")

_log = Logger(namespace="boatwist.chat.session")


class Terminal(Protocol):
    """What a session does to the person at the other end (the protocol turns it into bytes)."""

    def write_line(self, text: str) -> None:
        """One line (the terminal ends it)."""

    def prompt(self, text: str) -> None:
        """A prompt: no line end, the cursor stays after it."""

    def echo(self, on: bool) -> None:
        """Ask the client to stop (False) or resume (True) echoing what is typed."""

    def close(self, reason: Reason | None = None) -> None:
        """End the connection after what was written; with C{reason} for everyone to read."""

    def pause(self) -> None:
        """Deliver no more lines until L{resume}."""

    def resume(self) -> None:
        """Deliver lines again, starting with those typed meanwhile."""


#: authenticate(user, password, peer_host) -> Deferred firing with the user
#: name, or failing with UnauthorizedLogin / LoginFailed.
Authenticate = Callable[[str, str, str], "Deferred[str]"]
#: admit(user): make this connection part of the user's presence; the Refusal, or None when admitted.
Admit = Callable[[str], "Refusal | None"]


@dataclass(frozen=True)
class SessionParts:
    """What every session of one chat port shares."""

    room: ChatRoom
    authenticate: Authenticate
    clock: IReactorTime
    settings: ChatSettings
    gate: LoginGate
    #: Commands added to the built-ins, by name (without the slash).
    commands: Mapping[str, Command] = field(default_factory=dict)
    banner: str = DEFAULT_BANNER

    def __post_init__(self) -> None:
        check_commands(self.commands)


# ------------------------------------------------------------ the machine


class _Inputs(Protocol):
    """Everything that can happen to a session (module docstring: the transitions)."""

    def open(self) -> None:
        "A pending-login slot was had: greet."

    def busy(self, message: str) -> None:
        "No slot: say why and close."

    def word(self, text: str) -> None:
        "A line with something in it."

    def blank(self, text: str) -> None:
        "An empty line, or one of spaces."

    def bad_line(self, why: str) -> None:
        "A line that could not be taken (too long, not UTF-8, garbled)."

    def authenticated(self, user: str) -> None:
        "The password check said yes."

    def admitted(self) -> None:
        "Presence took the connection."

    def refused(self, refusal: Refusal) -> None:
        "Presence did not."

    def rejected(self, line: str) -> None:
        "The password check said no; another try is allowed."

    def rejected_finally(self, line: str) -> None:
        "The password check said no, for the last allowed time."

    def event(self, event: Event) -> None:
        "The room published something."

    def leave(self, reason: Reason | None, farewell: str) -> None:
        "The session ends from inside: /quit, a missed PONG."

    def expire(self) -> None:
        "Not logged in within login_timeout."

    def evict(self) -> None:
        "The gate took the slot for a newer connection."

    def flood(self, what: str) -> None:
        "Over a budget of the protocol (bytes before login, telnet commands)."

    def lost(self) -> None:
        "The connection ended."


class _Owner(Protocol):
    """How the core hands what happens outside a transition back to the session, as inputs."""

    def follow(self, step: Callable[[], None]) -> None:
        "Run C{step} right after the current input, before any other queued one."

    def login_expired(self) -> None: ...

    def authenticated(self, user: str | bytes) -> None: ...

    def not_authenticated(self, failure: Failure) -> None: ...

    def event(self, event: Event) -> None: ...

    def leave(self, reason: Reason | None, farewell: str) -> None: ...


@dataclass
class _Question:
    on_yes: Callable[[], None]
    deadline: float


class _Core:
    """The session's data and the outputs its transitions are made of."""

    def __init__(self, parts: SessionParts, terminal: Terminal, host: str, admit: Admit, owner: _Owner) -> None:
        self.parts = parts
        self.settings = parts.settings
        self.clock = parts.clock
        self.terminal = terminal
        self.host = host
        self.admit = admit
        #: Where timers, answers and events come back in as inputs.
        self.owner = owner
        self.slot: LoginSlot | None = None
        self.login_timer: IDelayedCall | None = None
        self.name = ""
        self.failures = 0
        self.user: str | None = None
        self.finished = False
        self.want_resume = False
        self.unsubscribe: Callable[[], None] | None = None
        self.backlog: deque[Event] | None = None
        self.heartbeat: LoopingCall | None = None
        self.heartbeat_interval = 0.0
        self.ping_token: str | None = None
        self.ping_deadline: IDelayedCall | None = None
        self.ping_count = 0
        self.question: _Question | None = None
        self.commands: dict[str, Command] = {}

    # -------------------------------------------------------- writing

    def write(self, text: str) -> None:
        if not self.finished:
            self.terminal.write_line(text)

    def error(self, text: str) -> None:
        self.write(f"error: {text}")

    def ask_name(self) -> None:
        self.terminal.prompt(LOGIN_PROMPT)

    def ask_password(self) -> None:
        self.terminal.prompt(PASSWORD_PROMPT)
        self.terminal.echo(False)

    # ---------------------------------------------------------- login

    def greet(self) -> None:
        self.terminal.write_line(self.parts.banner)
        self.login_timer = self.clock.callLater(self.settings.login_timeout, self._login_timer_fired)
        self.ask_name()

    def _login_timer_fired(self) -> None:
        self.login_timer = None
        self.owner.login_expired()

    def check(self, password: str) -> None:
        """Echo back on, hold further lines, and ask whether the password is right."""
        self.terminal.echo(True)
        # No more lines until the answer: bcrypt and throttling take time,
        # and what the user typed ahead belongs to whatever comes next.
        self.terminal.pause()
        if self.slot is not None:
            self.slot.checking = True
        name = self.name
        d = maybeDeferred(self.parts.authenticate, name, password, self.host)
        d.addCallbacks(self.owner.authenticated, self.owner.not_authenticated)
        d.addErrback(lambda f: _log.failure("chat login of {user!r}", f, user=name))

    def end_login(self, outcome: Outcome) -> None:
        if self.login_timer is not None and self.login_timer.active():
            self.login_timer.cancel()
        self.login_timer = None
        if self.slot is not None:
            self.slot.release(outcome)

    def finish(self, reason: Reason | None, outcome: Outcome) -> None:
        """Into done: stop every timer, hear no more events, free the slot; close unless already gone."""
        already = self.finished
        self.end_login(outcome)
        self.stop_heartbeat()
        if self.unsubscribe is not None:
            self.unsubscribe()
            self.unsubscribe = None
        self.question = None
        self.finished = True
        if not already:
            self.terminal.close(reason)

    # ----------------------------------------------------------- chat

    def welcome(self) -> None:
        assert self.user is not None
        self.backlog = deque(maxlen=BACKLOG_MAX)
        self.unsubscribe = self.parts.room.subscribe(self.owner.event)
        names = ", ".join(
            clean_message(str(e["user"])) + ("" if e["state"] == "online" else f" ({e['state']})")
            for e in self.parts.room.who()
        )
        self.write(f"welcome, {clean_message(self.user)}. online: {names or '-'}. /help lists the commands.")
        d = self.parts.room.history()
        d.addCallbacks(self.show_history, self.history_failed)

    def show_history(self, messages: list[Message]) -> None:
        if self.finished:
            return
        if messages:
            self.write(f"-- last {len(messages)} message{'s' if len(messages) > 1 else ''} --")
            for message in messages:
                self.write(format_chat(message.as_event_data()))
            self.write("-- end of history --")
        self.flush_backlog({message.id for message in messages})

    def history_failed(self, failure: Failure) -> None:
        _log.failure("reading chat history for {user}", failure, user=self.user)
        if not self.finished:
            self.error("chat history unavailable")
            self.flush_backlog(set())

    def flush_backlog(self, shown: set[int]) -> None:
        backlog, self.backlog = self.backlog or (), None
        for event in backlog:
            # Committed while the history was read: already in it, or not.
            if event.kind == "chat" and event.data.get("id") in shown:
                continue
            self.show_event(event)

    def take_event(self, event: Event) -> None:
        if self.backlog is not None:
            self.backlog.append(event)  # shown after the history, in order
        else:
            self.show_event(event)

    def show_event(self, event: Event) -> None:
        line = format_event(event)
        if line is not None:
            self.write(line)

    def chat_line(self, text: str) -> None:
        pong = _PONG.fullmatch(text)
        if pong is not None:
            self.pong(pong.group(1))
        elif text.startswith("//"):
            self.say(text[1:], action=False)
        elif text.startswith("/"):
            self.run_command(text[1:])
        else:
            self.say(text, action=False)

    def say(self, text: str, action: bool) -> None:
        assert self.user is not None
        try:
            d = self.parts.room.say(self.user, text, "chat", action)
        except MessageRefused as e:
            self.error(str(e))
            return
        # Success shows itself: the message comes back as a chat event.
        d.addErrback(self.not_saved)

    def not_saved(self, failure: Failure) -> None:
        if failure.check(NotSaved):
            self.error(str(failure.value))
        else:
            _log.failure("message from {user} failed", failure, user=self.user)
            self.error("message not saved: server error")

    def run_command(self, text: str) -> None:
        name, _, arg = text.partition(" ")
        command = self.commands.get(name.lower())
        if command is None:
            self.write(f"unknown command /{clean_message(name)[:32]}: /help lists the commands")
            return
        try:
            command.handler(_Context(self), arg.strip())
        except Exception:
            _log.failure("chat command /{name} of {user}", name=name.lower(), user=self.user)
            self.error(f"/{name.lower()} failed: server error")

    # ------------------------------------------------------- built-ins

    def built_ins(self) -> dict[str, Command]:
        """The session's own commands (the Session puts registered ones before /yes, /help, /quit)."""
        return {
            "me": Command(self.cmd_me, "/me <action>", ("* you <action>",)),
            "who": Command(self.cmd_who, "/who", ("who is online, their link state and round-trip time",)),
            "ping": Command(self.cmd_ping, "/ping [token]", ("the server answers PONG [token] at once",)),
            "heartbeat": Command(self.cmd_heartbeat, "/heartbeat <s>", (
                "the server sends PING <token> every <s> s (1-3600, 0 = off);",
                "answer PONG <token> in time or be disconnected")),
            "pong": Command(self.cmd_pong, "/pong <token>"),
            "yes": Command(self.cmd_yes, "/yes", ("confirm what you were just asked",)),
            "help": Command(self.cmd_help, "/help", ("this list",)),
            "quit": Command(self.cmd_quit, "/quit", ("leave",)),
        }

    def cmd_me(self, ctx: CommandContext, arg: str) -> None:
        if not arg:
            self.write("usage: /me <action>")
        else:
            self.say(arg, action=True)

    def cmd_who(self, ctx: CommandContext, arg: str) -> None:
        entries = self.parts.room.who()
        self.write(f"{len(entries)} online:")
        names = [clean_message(str(e["user"])) for e in entries]
        width = max((len(n) for n in names), default=0)
        for name, entry in zip(names, entries, strict=True):
            rtt = entry.get("rtt_ms")
            link = f"rtt {rtt:.1f} ms" if isinstance(rtt, (int, float)) else "rtt unknown"
            via = ", ".join(entry.get("kinds", ())) or "-"
            self.write(f"  {name:<{width}}  {entry['state']:<8}  {via:<10}  {link}")

    def cmd_help(self, ctx: CommandContext, arg: str) -> None:
        self.write("commands:")
        self.write("  <text>          say <text> to everyone (//text says /text)")
        for name, command in self.commands.items():
            if not command.help or (name == "yes" and not self.parts.commands):
                continue  # hidden; /yes answers only what an added command asks
            lines = list(command.help)
            if len(command.usage) < 16:
                self.write(f"  {command.usage:<16}{lines.pop(0)}")
            else:
                self.write(f"  {command.usage}")
            for line in lines:
                self.write(f"  {'':<16}{line}")

    def cmd_quit(self, ctx: CommandContext, arg: str) -> None:
        self.owner.leave(None, "bye")

    def cmd_ping(self, ctx: CommandContext, arg: str) -> None:
        token = clean_message(arg).strip()[:64]
        self.write(f"PONG {token}" if token else "PONG")

    def cmd_pong(self, ctx: CommandContext, arg: str) -> None:
        self.pong(arg or None)

    def cmd_yes(self, ctx: CommandContext, arg: str) -> None:
        question, self.question = self.question, None
        if question is None:
            self.write("nothing to confirm")
        elif self.clock.seconds() > question.deadline:
            self.write(f"nothing to confirm: the question was not answered within {ASK_TIMEOUT:g} s")
        else:
            question.on_yes()

    def ask(self, question: str, on_yes: Callable[[], None]) -> None:
        self.question = _Question(on_yes, self.clock.seconds() + ASK_TIMEOUT)
        self.write(clean_message(question))
        self.write(f"type /yes within {ASK_TIMEOUT:g} s to confirm")

    def cmd_heartbeat(self, ctx: CommandContext, arg: str) -> None:
        usage = f"usage: /heartbeat <seconds> ({HEARTBEAT_MIN:g} to {HEARTBEAT_MAX:g}, 0 turns it off)"
        if not arg:
            if self.heartbeat is None:
                self.write("heartbeat off")
            else:
                self.write(f"heartbeat every {self.heartbeat_interval:g} s")
            return
        try:
            seconds = float(arg)
        except ValueError:
            self.write(usage)
            return
        if seconds == 0:
            self.stop_heartbeat()
            self.write("heartbeat off")
            return
        if not (math.isfinite(seconds) and HEARTBEAT_MIN <= seconds <= HEARTBEAT_MAX):
            self.write(usage)
            return
        self.stop_heartbeat()
        self.heartbeat_interval = seconds
        self.heartbeat = LoopingCall(self.send_ping)
        self.heartbeat.clock = self.clock
        self.heartbeat.start(seconds, now=False)
        self.write(f"heartbeat every {seconds:g} s: answer each PING <token> with PONG <token> "
                   f"within {self.settings.ping_timeout:g} s")

    # ------------------------------------------------------- heartbeat

    def send_ping(self) -> None:
        if self.ping_token is not None:
            return  # one outstanding at a time; its deadline decides
        self.ping_count += 1
        self.ping_token = token = str(self.ping_count)
        self.write(f"PING {token}")
        self.ping_deadline = self.clock.callLater(self.settings.ping_timeout, self.ping_expired)

    def pong(self, token: str | None) -> None:
        if token is not None and token == self.ping_token:
            self.ping_token = None
            if self.ping_deadline is not None and self.ping_deadline.active():
                self.ping_deadline.cancel()
            self.ping_deadline = None
        # A late or unknown PONG is dropped: never relayed as a message.

    def ping_expired(self) -> None:
        self.ping_deadline = None
        self.owner.leave(Reason.HEARTBEAT_TIMEOUT,
                         f"error: no PONG {self.ping_token} within {self.settings.ping_timeout:g} s; closing")

    def stop_heartbeat(self) -> None:
        if self.heartbeat is not None and self.heartbeat.running:
            self.heartbeat.stop()
        self.heartbeat = None
        if self.ping_deadline is not None and self.ping_deadline.active():
            self.ping_deadline.cancel()
        self.ping_deadline = None
        self.ping_token = None


class _Context:
    """A command's view of the session that ran it (L{CommandContext})."""

    def __init__(self, core: _Core) -> None:
        self._core = core

    @property
    def user(self) -> str:
        return self._core.user or ""

    def reply(self, line: str) -> None:
        self._core.write(clean_message(line))

    def error(self, line: str) -> None:
        self._core.error(clean_message(line))

    def ask(self, question: str, on_yes: Callable[[], None]) -> None:
        self._core.ask(question, on_yes)


def _ignore(inputs: _Inputs, core: _Core, *args: object, **kwargs: object) -> None:
    """The transition of an input a state has nothing to do with."""


def _build() -> Callable[[_Core], _Inputs]:
    """Every transition of a session, in one place."""
    builder = TypeMachineBuilder(_Inputs, _Core)
    greeting = builder.state("greeting")
    user = builder.state("user")
    password = builder.state("password")
    checking = builder.state("checking")
    admitting = builder.state("admitting")
    chatting = builder.state("chatting")
    done = builder.state("done")

    # -- greeting

    @greeting.upon(_Inputs.open).to(user)
    def open_(inputs: _Inputs, core: _Core) -> None:
        core.greet()

    @greeting.upon(_Inputs.busy).to(done)
    def busy(inputs: _Inputs, core: _Core, message: str) -> None:
        core.write(message)
        core.finish(None, Outcome.LEFT)

    # -- user name and password

    @user.upon(_Inputs.word).to(password)
    def name(inputs: _Inputs, core: _Core, text: str) -> None:
        core.name = text.strip()
        if core.slot is not None:
            core.slot.spoke = True
        core.ask_password()

    @user.upon(_Inputs.blank).loop()
    def no_name(inputs: _Inputs, core: _Core, text: str) -> None:
        core.ask_name()

    @user.upon(_Inputs.bad_line).loop()
    def bad_name(inputs: _Inputs, core: _Core, why: str) -> None:
        core.error(why)
        core.ask_name()

    @password.upon(_Inputs.word).to(checking)
    def secret(inputs: _Inputs, core: _Core, text: str) -> None:
        core.check(text)

    @password.upon(_Inputs.blank).to(checking)
    def blank_secret(inputs: _Inputs, core: _Core, text: str) -> None:
        core.check(text)

    @password.upon(_Inputs.bad_line).loop()
    def bad_secret(inputs: _Inputs, core: _Core, why: str) -> None:
        core.terminal.echo(True)
        core.error(why)
        core.ask_password()

    # -- the answer

    @checking.upon(_Inputs.authenticated).to(admitting)
    def authenticated(inputs: _Inputs, core: _Core, user: str) -> None:
        core.end_login(Outcome.LOGGED_IN)
        refusal = core.admit(user)
        if refusal is None:
            core.user = user
            core.owner.follow(inputs.admitted)
        else:
            core.owner.follow(lambda: inputs.refused(refusal))

    @checking.upon(_Inputs.rejected).to(user)
    def rejected(inputs: _Inputs, core: _Core, line: str) -> None:
        core.write(line)
        if core.slot is not None:
            core.slot.checking = False
        core.ask_name()
        core.want_resume = True

    @checking.upon(_Inputs.rejected_finally).to(done)
    def rejected_finally(inputs: _Inputs, core: _Core, line: str) -> None:
        core.write(line)
        core.write("too many failed logins; goodbye")
        core.finish(None, Outcome.FAILED)

    @admitting.upon(_Inputs.admitted).to(chatting)
    def admitted(inputs: _Inputs, core: _Core) -> None:
        core.welcome()
        core.want_resume = True

    @admitting.upon(_Inputs.refused).to(done)
    def refused(inputs: _Inputs, core: _Core, refusal: Refusal) -> None:
        core.write(refusal.message())
        core.finish(None, Outcome.LOGGED_IN)

    # -- in the room

    @chatting.upon(_Inputs.word).loop()
    def said(inputs: _Inputs, core: _Core, text: str) -> None:
        core.chat_line(text)

    chatting.upon(_Inputs.blank).loop().returns(None)

    @chatting.upon(_Inputs.bad_line).loop()
    def bad_chat_line(inputs: _Inputs, core: _Core, why: str) -> None:
        core.error(why)

    @chatting.upon(_Inputs.event).loop()
    def event(inputs: _Inputs, core: _Core, event: Event) -> None:
        core.take_event(event)

    @chatting.upon(_Inputs.leave).to(done)
    def leave(inputs: _Inputs, core: _Core, reason: Reason | None, farewell: str) -> None:
        core.write(farewell)
        core.finish(reason, Outcome.LEFT)

    # -- endings before the login

    for state in (user, password, checking):

        @state.upon(_Inputs.expire).to(done)
        def expire(inputs: _Inputs, core: _Core) -> None:
            core.terminal.echo(True)
            core.write(f"login timed out after {core.settings.login_timeout:g} s")
            core.finish(None, Outcome.TIMED_OUT)

        @state.upon(_Inputs.evict).to(done)
        def evict(inputs: _Inputs, core: _Core) -> None:
            core.terminal.echo(True)
            core.write("login timed out: too many connections are logging in and newer ones need room")
            core.finish(None, Outcome.LEFT)

    for state in (greeting, user, password, checking, admitting, chatting):

        @state.upon(_Inputs.flood).to(done)
        def flood(inputs: _Inputs, core: _Core, what: str) -> None:
            core.terminal.echo(True)
            core.error(f"{what}; goodbye")
            core.finish(None, Outcome.FLOODED)

        @state.upon(_Inputs.lost).to(done)
        def lost(inputs: _Inputs, core: _Core) -> None:
            core.finished = True  # nothing more can be written
            core.finish(None, Outcome.LEFT)

    # -- ignored: lines while the password is checked (input is paused; a
    # line already split off still arrives), late answers, anything after the end

    for line_input in (_Inputs.word, _Inputs.blank, _Inputs.bad_line):
        checking.upon(line_input).loop()(_ignore)
    no_arguments: tuple[Callable[[_Inputs], None], ...] = (
        _Inputs.open, _Inputs.admitted, _Inputs.expire, _Inputs.evict, _Inputs.lost)
    for each0 in no_arguments:
        done.upon(each0).loop()(_ignore)
    one_string: tuple[Callable[[_Inputs, str], None], ...] = (
        _Inputs.busy, _Inputs.word, _Inputs.blank, _Inputs.bad_line, _Inputs.authenticated, _Inputs.rejected,
        _Inputs.rejected_finally, _Inputs.flood)
    for each1 in one_string:
        done.upon(each1).loop()(_ignore)
    done.upon(_Inputs.refused).loop()(_ignore)
    done.upon(_Inputs.event).loop()(_ignore)
    done.upon(_Inputs.leave).loop()(_ignore)

    return builder.build()


@functools.cache
def _machine() -> Callable[[_Core], _Inputs]:
    """The machine, built by the first session: a daemon whose chat port nobody uses never builds it."""
    return _build()


class Session:
    """
    One chat session: feed it what happened (L{start}, L{line},
    L{bad_line}, L{over_budget}, L{connection_lost}); it answers through
    its L{Terminal}.
    """

    def __init__(self, parts: SessionParts, terminal: Terminal, host: str, admit: Admit) -> None:
        self._queue: deque[Callable[[], None]] = deque()
        self._follow: list[Callable[[], None]] = []
        self._running = False
        self._core = _Core(parts, terminal, host, admit, self)
        self._machine = _machine()(self._core)
        # One table, in the order /help lists it: registered commands after the room's own.
        built_in = self._core.built_ins()
        last = {name: built_in.pop(name) for name in ("yes", "help", "quit")}
        self._core.commands = {**built_in, **parts.commands, **last}

    # ------------------------------------------------------------ inputs

    def start(self) -> None:
        """The connection is open: take a pending-login slot (or say why not) and greet."""
        slot = self._core.parts.gate.enter(self._core.host, lambda: self._feed(self._machine.evict))
        if isinstance(slot, Busy):
            message = slot.message
            self._feed(lambda: self._machine.busy(message))
        else:
            self._core.slot = slot
            self._feed(self._machine.open)

    def line(self, text: str) -> None:
        """One line as typed (decoded, without its line end)."""
        if text.strip():
            self._feed(lambda: self._machine.word(text))
        else:
            self._feed(lambda: self._machine.blank(text))

    def bad_line(self, why: str) -> None:
        """A line the framing could not take; C{why} is what the user reads after "error: "."""
        self._feed(lambda: self._machine.bad_line(why))

    def over_budget(self, what: str) -> None:
        """The client sent more than the protocol allows; C{what} is said before the close."""
        self._feed(lambda: self._machine.flood(what))

    def connection_lost(self) -> None:
        self._feed(self._machine.lost)

    # --------------------------------------------------------- questions

    @property
    def user(self) -> str | None:
        """Who is logged in on this session (None before, and after a refused login)."""
        return self._core.user

    @property
    def logged_in(self) -> bool:
        return self._core.user is not None

    @property
    def finished(self) -> bool:
        return self._core.finished

    # ------------------------------------------------- _Owner: back in as inputs

    def follow(self, step: Callable[[], None]) -> None:
        self._follow.append(step)

    def login_expired(self) -> None:
        self._feed(self._machine.expire)

    def authenticated(self, user: str | bytes) -> None:
        name = user.decode("utf-8") if isinstance(user, bytes) else user
        self._feed(lambda: self._machine.authenticated(name))

    def not_authenticated(self, failure: Failure) -> None:
        core = self._core
        if failure.check(UnauthorizedLogin, LoginFailed):
            line = "login incorrect"
        else:
            _log.failure("authenticating {user!r} failed", failure, user=core.name)
            line = "login failed: server error"
        core.failures += 1
        if core.failures >= core.settings.max_login_attempts:
            self._feed(lambda: self._machine.rejected_finally(line))
        else:
            self._feed(lambda: self._machine.rejected(line))

    def event(self, event: Event) -> None:
        self._feed(lambda: self._machine.event(event))

    def leave(self, reason: Reason | None, farewell: str) -> None:
        self._feed(lambda: self._machine.leave(reason, farewell))

    # ----------------------------------------------------------- private

    def _feed(self, step: Callable[[], None]) -> None:
        """Run C{step} (an input) now, or after the one running; follow-ups first; then resume input."""
        self._queue.append(step)
        if self._running:
            return
        self._running = True
        try:
            while self._queue:
                self._queue.popleft()()
                if self._follow:
                    self._queue.extendleft(reversed(self._follow))
                    self._follow.clear()
        except BaseException:
            self._queue.clear()
            self._follow.clear()
            raise
        finally:
            self._running = False
        core = self._core
        if core.want_resume:
            core.want_resume = False
            if not core.finished:
                core.terminal.resume()
