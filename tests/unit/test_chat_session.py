"""
The chat session without I/O: driven by inputs, checked by what it asks of
a fake Terminal (typed as the real Protocol, so mypy checks the fake; this
file is in mypy's `files`).  Clock for time, a real EventHub and ChatRoom,
fakes for the store, presence's snapshot, authenticate and admit.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from boatwist.chat.commands import ASK_TIMEOUT, Command, CommandContext
from boatwist.chat.gate import LoginGate
from boatwist.chat.room import ChatRoom
from boatwist.chat.session import Session, SessionParts, Terminal
from boatwist.config import ChatSettings
from boatwist.controls.floor import FloorEvent, FloorReason, FloorState
from boatwist.events import EventHub
from boatwist.presence import Refusal
from boatwist.reasons import Reason, RefusalReason
from boatwist.store.service import Message

Out = tuple[str, object]


class FakeTerminal:
    """Records every output; resume() hands over lines typed meanwhile, as the protocol does."""

    def __init__(self) -> None:
        self.out: list[Out] = []
        self.paused = False
        self.typed_ahead: list[str] = []
        self.session: Session | None = None

    def write_line(self, text: str) -> None:
        self.out.append(("line", text))

    def prompt(self, text: str) -> None:
        self.out.append(("prompt", text))

    def echo(self, on: bool) -> None:
        self.out.append(("echo", on))

    def close(self, reason: Reason | None = None) -> None:
        self.out.append(("close", reason))

    def pause(self) -> None:
        self.paused = True
        self.out.append(("pause", None))

    def resume(self) -> None:
        self.paused = False
        self.out.append(("resume", None))
        while self.typed_ahead and not self.paused and self.session is not None:
            self.session.line(self.typed_ahead.pop(0))

    def take(self) -> list[Out]:
        out, self.out = self.out, []
        return out

    def lines(self) -> list[str]:
        return [str(text) for kind, text in self.take() if kind == "line"]


class FakeStore:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def add_message(self, user: str, text: str, via: str, action: bool) -> Deferred[Message]:
        message = Message(len(self.messages) + 1, user, text, via, action, 1.0)
        self.messages.append(message)
        return succeed(message)

    def history(self, before: int | None = None, after: int | None = None, limit: int = 50) -> Deferred[list[Message]]:
        return succeed([])


class FakePresence:
    def snapshot(self) -> dict[str, Any]:
        return {"users": [{"user": "alice", "state": "online", "connections": []}]}


class World:
    """One room, one gate, and sessions on fake terminals."""

    def __init__(self, commands: dict[str, Command] | None = None, **chat: Any) -> None:
        self.clock = Clock()
        self.hub = EventHub()
        self.settings = ChatSettings(**chat)
        self.store = FakeStore()
        self.room = ChatRoom(self.hub, self.store, FakePresence(), self.clock, self.settings)
        self.gate = LoginGate(self.settings, self.clock)
        self.auth_calls: list[tuple[str, str, str]] = []
        self.auth_manual: list[Deferred[str]] | None = None
        self.refusal: Refusal | None = None
        self.admitted: list[str] = []
        self.parts = SessionParts(self.room, self.authenticate, self.clock, self.settings, self.gate,
                                  commands or {})

    def authenticate(self, user: str, password: str, host: str) -> Deferred[str]:
        self.auth_calls.append((user, password, host))
        if self.auth_manual is not None:
            d: Deferred[str] = Deferred()
            self.auth_manual.append(d)
            return d
        return succeed(user) if password == "secret" else fail(UnauthorizedLogin())

    def admit(self, user: str) -> Refusal | None:
        if self.refusal is None:
            self.admitted.append(user)
        return self.refusal

    def session(self, host: str = "192.0.2.1") -> tuple[Session, FakeTerminal]:
        fake = FakeTerminal()
        terminal: Terminal = fake  # mypy: the fake is a Terminal
        session = Session(self.parts, terminal, host, self.admit)
        fake.session = session
        session.start()
        return session, fake

    def logged_in(self, user: str = "alice") -> tuple[Session, FakeTerminal]:
        session, fake = self.session()
        session.line(user)
        session.line("secret")
        assert session.user == user
        fake.take()
        return session, fake


# ------------------------------------------------------------------ login


def test_login_outputs_in_order() -> None:
    """Banner, login prompt; a name: password prompt and echo off; the password: echo on, pause, welcome, resume."""
    w = World()
    session, t = w.session()
    assert t.take() == [("line", "boatwist chat: log in with your operator name and password"),
                        ("prompt", "login: ")]
    session.line("  alice ")
    assert t.take() == [("prompt", "password: "), ("echo", False)]
    session.line("secret")
    assert t.take() == [("echo", True), ("pause", None),
                        ("line", "welcome, alice. online: alice. /help lists the commands."), ("resume", None)]
    assert w.auth_calls == [("alice", "secret", "192.0.2.1")]
    assert w.admitted == ["alice"] and session.logged_in and w.gate.pending == 0


def test_blank_name_asks_again_but_a_blank_password_is_a_password() -> None:
    """A line of spaces at login: asks again; at password: it is checked like any password."""
    w = World()
    session, t = w.session()
    t.take()
    session.line("   ")
    assert t.take() == [("prompt", "login: ")]
    session.line("alice")
    session.line("")
    assert w.auth_calls == [("alice", "", "192.0.2.1")]
    assert ("line", "login incorrect") in t.take()


def test_lines_while_checking_are_ignored_and_typed_ahead_lines_follow_the_answer() -> None:
    """
    A line that reaches the session while the password is checked is not a
    second password; lines the terminal held back are handed over only once
    the answer is in, and each sees the state the previous one left.
    """
    w = World()
    w.auth_manual = []
    session, t = w.session()
    session.line("alice")
    session.line("secret")
    session.line("stray")  # framing had split it off before the pause took effect
    t.typed_ahead = ["hello", "/me waves"]
    w.auth_manual[0].callback("alice")
    assert [m.text for m in w.store.messages] == ["hello", "waves"]
    assert len(w.auth_calls) == 1


def test_synchronous_wrong_answers_keep_order_and_the_last_one_closes() -> None:
    """max_login_attempts wrong passwords: 'login incorrect' each time, then the goodbye and close(None)."""
    w = World(max_login_attempts=2)
    session, t = w.session()
    t.take()
    for _ in range(2):
        session.line("alice")
        session.line("wrong")
    assert t.lines() == ["login incorrect", "login incorrect", "too many failed logins; goodbye"]
    assert session.finished and w.gate.pending == 0


def test_refused_admission_is_a_line_and_a_close() -> None:
    """Presence's refusal is shown with its message; nobody is subscribed."""
    w = World()
    w.refusal = Refusal(RefusalReason.FULL, 10, 10, 30)
    session, t = w.session()
    session.line("alice")
    session.line("secret")
    out = t.take()
    assert ("line", "server full: 10 of 10 operators online") in out and out[-1] == ("close", None)
    assert session.user is None and w.hub.subscriber_count == 0


def test_answer_after_the_timeout_admits_nobody() -> None:
    """The login timer fires while the password is checked: the late yes is ignored, admit never called."""
    w = World(login_timeout=5.0)
    w.auth_manual = []
    session, t = w.session()
    session.line("alice")
    session.line("secret")
    w.clock.advance(5)
    assert t.lines()[-1] == "login timed out after 5 s"
    w.auth_manual[0].callback("alice")
    assert w.admitted == [] and t.take() == []


def test_eviction_says_why_restores_echo_and_closes() -> None:
    """Evicted at the password prompt: echo back on (a telnet client hid it), the line, the close."""
    w = World(max_pending_logins=1)
    first, t = w.session("192.0.2.1")
    first.line("alice")
    t.take()
    w.session("192.0.2.2")  # the first spoke, but it is the only candidate
    assert t.take() == [("echo", True),
                        ("line", "login timed out: too many connections are logging in and newer ones need room"),
                        ("close", None)]
    assert first.finished


def test_over_budget_before_login_charges_the_address() -> None:
    """A flood ends the session with an error line and puts its address in debt (its next try is refused)."""
    w = World()
    session, t = w.session("192.0.2.9")
    t.take()
    session.over_budget("too much input before login")
    assert t.take() == [("echo", True), ("line", "error: too much input before login; goodbye"), ("close", None)]
    _, again = w.session("192.0.2.9")
    assert again.lines() == ["server busy: too many unfinished logins from your address; try again in 5 s"]


def test_connection_lost_stops_everything_and_writes_nothing() -> None:
    """After the connection is gone: no timers, no subscription, no output, the slot back."""
    w = World()
    session, t = w.logged_in()
    session.line("/heartbeat 5")
    session.connection_lost()
    t.take()
    w.hub.publish("chat", {"id": 1, "user": "bob", "text": "hi", "action": False})
    w.clock.advance(100)
    assert t.take() == [] and w.hub.subscriber_count == 0 and w.clock.getDelayedCalls() == []


def test_missed_pong_leaves_with_heartbeat_timeout() -> None:
    """An unanswered PING: the error line, then close with Reason.HEARTBEAT_TIMEOUT for presence to report."""
    w = World(ping_timeout=2.0)
    session, t = w.logged_in()
    session.line("/heartbeat 1")
    w.clock.pump([1, 1, 1])
    assert t.take()[-2:] == [("line", "error: no PONG 1 within 2 s; closing"), ("close", Reason.HEARTBEAT_TIMEOUT)]


# -------------------------------------------------------------- commands


def test_a_registered_command_runs_with_the_user_and_answers() -> None:
    """The handler gets the user and the rest of the line; reply and error lines are cleaned."""
    seen: list[tuple[str, str]] = []

    def handler(ctx: CommandContext, arg: str) -> None:
        seen.append((ctx.user, arg))
        ctx.reply("pump is \x1b[31mon\x1b[0m")
        ctx.error("valve: no such control")

    w = World(commands={"controls": Command(handler, "/controls", ("the controls and their values",))})
    session, t = w.logged_in()
    session.line("/CONTROLS  all  ")
    assert seen == [("alice", "all")]
    assert t.lines() == ["pump is on", "error: valve: no such control"]


def test_help_lists_built_ins_then_registered_commands_then_yes() -> None:
    """/help: the built-ins' lines as before, registered commands after /heartbeat, /yes only when some exist."""

    def noop(ctx: CommandContext, arg: str) -> None:
        pass

    w = World(commands={
        "set": Command(noop, "/set NAME VALUE", ("set a control",)),
        "floor": Command(noop, "/floor take|release|request [msg]", ("the floor:", "who holds it, take it, ...")),
    })
    session, t = w.logged_in()
    session.line("/help")
    assert t.lines() == [
        "commands:",
        "  <text>          say <text> to everyone (//text says /text)",
        "  /me <action>    * you <action>",
        "  /who            who is online, their link state and round-trip time",
        "  /ping [token]   the server answers PONG [token] at once",
        "  /heartbeat <s>  the server sends PING <token> every <s> s (1-3600, 0 = off);",
        "                  answer PONG <token> in time or be disconnected",
        "  /set NAME VALUE set a control",
        "  /floor take|release|request [msg]",
        "                  the floor:",
        "                  who holds it, take it, ...",
        "  /yes            confirm what you were just asked",
        "  /help           this list",
        "  /quit           leave",
    ]


def test_ask_is_answered_by_yes_once_within_the_timeout() -> None:
    """ask(): the question and how to confirm; /yes runs on_yes once; a second /yes has nothing to confirm."""
    done: list[str] = []

    def dangerous(ctx: CommandContext, arg: str) -> None:
        ctx.ask(f"really set pump to {arg}?", lambda: done.append(arg))

    w = World(commands={"set": Command(dangerous, "/set NAME VALUE", ("set",))})
    session, t = w.logged_in()
    session.line("/set off")
    assert t.lines() == ["really set pump to off?", f"type /yes within {ASK_TIMEOUT:g} s to confirm"]
    w.clock.advance(ASK_TIMEOUT - 0.1)
    session.line("/yes")
    session.line("/yes")
    assert done == ["off"]
    assert t.lines() == ["nothing to confirm"]


def test_ask_expires_and_a_new_question_replaces_the_old() -> None:
    """A /yes after ASK_TIMEOUT confirms nothing; asking again forgets the first question."""
    done: list[str] = []

    def dangerous(ctx: CommandContext, arg: str) -> None:
        ctx.ask("sure?", lambda: done.append(arg))

    w = World(commands={"set": Command(dangerous, "/set NAME VALUE", ("set",))})
    session, t = w.logged_in()
    session.line("/set a")
    w.clock.advance(ASK_TIMEOUT + 0.1)
    session.line("/yes")
    assert t.lines()[-1] == f"nothing to confirm: the question was not answered within {ASK_TIMEOUT:g} s"
    session.line("/set b")
    session.line("/set c")
    session.line("/yes")
    assert done == ["c"]


def test_a_failing_handler_is_an_error_line_not_a_dead_session() -> None:
    """An exception in a handler: 'error: /name failed: server error', logged; the session goes on."""

    def broken(ctx: CommandContext, arg: str) -> None:
        raise RuntimeError("bug")

    w = World(commands={"broken": Command(broken, "/broken", ())})
    session, t = w.logged_in()
    session.line("/broken")
    session.line("still here")
    assert t.lines() == ["error: /broken failed: server error", "<alice> still here"]


def test_a_reply_after_the_session_ended_is_dropped() -> None:
    """A handler answering later (from a Deferred) after the user left writes nothing."""
    later: list[Callable[[], None]] = []

    def slow(ctx: CommandContext, arg: str) -> None:
        later.append(lambda: ctx.reply("done"))

    w = World(commands={"slow": Command(slow, "/slow", ("slow",))})
    session, t = w.logged_in()
    session.line("/slow")
    session.line("/quit")
    t.take()
    later[0]()
    assert t.take() == []


@pytest.mark.parametrize("name", ["help", "yes", "Set", "bad name", "", "x" * 33])
def test_commands_that_cannot_be_registered(name: str) -> None:
    """Built-in names cannot be replaced, and a name must be typable: refused when the parts are made."""

    def noop(ctx: CommandContext, arg: str) -> None:
        pass

    with pytest.raises(ValueError):
        World(commands={name: Command(noop, f"/{name}", ("x",))})


# ----------------------------------------------------------------- events


def test_operations_and_floor_changes_are_lines_values_are_not() -> None:
    """control and floor events read as '* ...' lines; value events (sensor polls) are not shown."""
    w = World()
    _, t = w.logged_in()
    w.hub.publish("control", {"id": 1, "user": "alice", "control": "pump", "old": False, "value": True,
                              "result": "ok", "via": "chat", "type": "switch", "at": 1.0})
    w.hub.publish("value", {"control": "temperature", "value": 21.5, "quality": "good", "at": 1.0})
    w.hub.publish("floor", dict(FloorEvent(FloorState.TAKEN, "bob", "bob", FloorReason.TAKEN.value, 1.0).as_data()))
    w.hub.publish("control", {"id": 2, "user": "bob", "control": "valve", "value": "open", "result": "error",
                              "error": "timed out", "via": "web", "at": 1.0})
    assert t.lines() == ["* alice set pump to on (was off)", "* bob took the floor",
                         "* bob could not set valve to open: timed out"]
