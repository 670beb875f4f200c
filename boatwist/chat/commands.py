"""
Commands of the chat port: the extension point.

A command is a name (``/set``), a handler, a usage and help lines.  The
built-ins (``/who``, ``/me``, ``/help``, ``/quit``, ``/ping``,
``/heartbeat``, ``/pong``, ``/yes``) and the ones other parts add (the
device controls: ``/controls``, ``/set``, ``/floor``, ``/kick``) go through
the same table, so ``/help`` lists them all and an unknown name gets the
same hint.  Register one by passing it to the factory::

    def set_control(ctx: CommandContext, arg: str) -> None:
        name, _, value = arg.partition(" ")
        if not name:
            ctx.reply("usage: /set NAME VALUE")
            return
        ...                                  # may answer later, from a Deferred
        ctx.ask(f"really set {name} to {value}?", lambda: do_it(ctx, name, value))

    ChatFactory(..., commands={
        "set": Command(set_control, "/set NAME VALUE", ("set a control (an action: /set NAME)",)),
    })

A handler runs on the reactor thread and must not block; it answers with
C{ctx.reply} / C{ctx.error}, now or later (after the connection ended both
do nothing).  An exception in a handler is logged and the user reads
"error: /name failed: server error".  C{ctx.ask} asks a yes/no question
answered by ``/yes`` within L{ASK_TIMEOUT} seconds -- the chat side of the
confirmation of dangerous operations (DESIGN.md); one question is pending
per session, a new one replaces it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

from boatwist.controls.confirm import CONFIRM_TTL

__all__ = ["ASK_TIMEOUT", "BUILT_IN", "Command", "CommandContext", "CommandHandler", "check_commands"]

#: Seconds a question asked with CommandContext.ask may be answered with /yes
#: (the same as a confirmation token's life: the two are one question).
ASK_TIMEOUT = CONFIRM_TTL

#: What a command name may be (typed after the slash, any case).
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")

#: Names the session defines itself.
BUILT_IN = ("me", "who", "ping", "heartbeat", "pong", "yes", "help", "quit")


class CommandContext(Protocol):
    """What a command handler may do with the session that ran it."""

    @property
    def user(self) -> str:
        """The logged-in user who typed the command."""
        ...

    def reply(self, line: str) -> None:
        """One line to this user (cleaned of control characters)."""
        ...

    def error(self, line: str) -> None:
        """One line to this user, read as C{error: <line>}."""
        ...

    def ask(self, question: str, on_yes: Callable[[], None]) -> None:
        """
        Show C{question}; C{on_yes} runs if the user types ``/yes`` within
        L{ASK_TIMEOUT} seconds and no other question was asked meanwhile.
        """
        ...


#: handler(context, the rest of the line after the command name, stripped).
CommandHandler = Callable[[CommandContext, str], None]


@dataclass(frozen=True)
class Command:
    """One entry of the command table."""

    handler: CommandHandler
    #: How it is typed, as /help shows it: C{"/set NAME VALUE"}.
    usage: str
    #: What /help says about it, one or more lines; empty: not listed (still works).
    help: tuple[str, ...] = ()


def check_commands(commands: Mapping[str, Command]) -> None:
    """Refuse, at start, a table /help could not list or a command could not be typed."""
    for name in commands:
        if not _NAME.fullmatch(name):
            raise ValueError(f"chat command name {name!r}: expected [a-z][a-z0-9_-]*, at most 32 characters")
        if name in BUILT_IN:
            raise ValueError(f"chat command /{name} is built in and cannot be replaced")
