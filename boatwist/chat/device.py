"""
The device on the chat port: ``/controls``, ``/set``, ``/floor``, ``/kick``.

    /controls                 every control: value, quality, who changed it last
    /set NAME VALUE           operate a control (on/off, a number, a choice)
    /set NAME                 press an action
    /floor                    who holds the floor, who asked for it
    /floor take               take it (when free)
    /floor request [message]  ask the holder for it
    /floor give | refuse      the holder answers a request
    /floor withdraw           take back one's request
    /floor release            give it up
    /floor break              an admin frees it
    /kick USER                an admin removes a user

An operation goes through the one pipeline (C{via} C{chat}); everyone sees it
as the line of its C{control} event (``* alice set pump to on (was off)``),
the one who typed it too -- so a success says nothing more.  What only the
typist needs to know (a bad value, an unknown control, over the rate) is an
C{error:} line to them alone.  A control with C{confirm} asks its question;
``/yes`` within 15 s operates it.
"""

from __future__ import annotations

import time
from typing import Callable

from boatwist.chat.commands import Command, CommandContext
from boatwist.controls.floor import FloorRefusal, RefusalCode
from boatwist.controls.pipeline import Outcome
from boatwist.controls.words import format_value
from boatwist.core import Core
from boatwist.reasons import Reason

__all__ = ["device_commands"]

#: Statuses whose refusal everyone already reads as the operation's line.
_BROADCAST = frozenset({200, 403, 409, 502, 504})


def _clock_time(at: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) if at is not None else "-"


def device_commands(core: Core) -> dict[str, Command]:
    """The device's chat commands, for L{boatwist.chat.protocol.ChatFactory}."""

    def controls(ctx: CommandContext, arg: str) -> None:
        states = list(core.controls)
        if not states:
            ctx.reply("this device has no controls")
            return
        width = max(len(state.name) for state in states)
        for state in states:
            spec = state.spec
            quality = core.controls.quality_of(state).value
            value = format_value(state.value, spec.unit) if spec.type.has_value else "(button)"
            line = f"  {state.name:<{width}}  {value:<12}  {quality:<5}"
            if state.error:
                line += f"  {state.error}"
            elif state.changed_by:
                line += f"  set by {state.changed_by} at {_clock_time(state.changed_at)}"
            if spec.type.writable and not core.roles.may_operate(ctx.user, spec):
                line += "  (read-only for you)"
            ctx.reply(line)

    def operate(ctx: CommandContext, name: str, value: str, confirm: str | None = None) -> None:
        raw: object = value if value or confirm is not None else None
        d = core.operations.operate(ctx.user, name, raw, "chat", confirm, text=True)
        d.addCallback(lambda outcome: answered(ctx, name, value, outcome))

    def answered(ctx: CommandContext, name: str, value: str, outcome: Outcome) -> None:
        if outcome.status == 428:
            token = str(outcome.detail.get("confirm", ""))
            question = str(outcome.detail.get("question", "confirm?"))
            # The session adds "type /yes within 15 s to confirm" on a line of its own.
            ctx.ask(question, lambda: operate(ctx, name, value, token))
        elif outcome.status not in _BROADCAST:
            ctx.error(outcome.error or f"could not set {name}")

    def set_(ctx: CommandContext, arg: str) -> None:
        name, _, value = arg.partition(" ")
        if not name:
            ctx.error("usage: /set NAME VALUE (an action: /set NAME); /controls lists them")
            return
        operate(ctx, name, value.strip())

    def floor(ctx: CommandContext, arg: str) -> None:
        word, _, message = arg.partition(" ")
        user, floor_ = ctx.user, core.floor
        actions: dict[str, Callable[[], FloorRefusal | None]] = {
            "take": lambda: floor_.take(user),
            "request": lambda: floor_.request(user, message.strip()),
            "give": lambda: floor_.hand_over(user),
            "refuse": lambda: floor_.refuse(user),
            "withdraw": lambda: floor_.withdraw(user),
            "release": lambda: floor_.release(user),
            "break": lambda: floor_.break_(user) if core.roles.may_admin(user) else FloorRefusal(
                RefusalCode.ROLE, f"{user} is not an admin: only admins break the floor"),
        }
        if not word:
            snapshot = floor_.snapshot()
            if snapshot["mode"] == "off":
                ctx.reply("there is no floor here: anyone whose role allows it operates")
                return
            if snapshot["holder"] is None:
                ctx.reply(f"the floor is free (mode {snapshot['mode']}): /floor take")
            else:
                ctx.reply(f"{snapshot['holder']} holds the floor since {_clock_time(snapshot['since'])}")
            if snapshot["requested_by"]:
                note = f": {snapshot['request_message']!r}" if snapshot["request_message"] else ""
                left = snapshot["handover_in"]
                when = f"; granted in {left:.0f} s unless answered" if left is not None else ""
                ctx.reply(f"{snapshot['requested_by']} asked for it{note}{when}")
            return
        act = actions.get(word.lower())
        if act is None:
            ctx.error("usage: /floor [take | request MESSAGE | give | refuse | withdraw | release | break]")
            return
        before = (floor_.holder, floor_.requested_by)
        refusal = act()
        if refusal is not None:
            ctx.error(refusal.message)
        elif (floor_.holder, floor_.requested_by) == before:
            # Taking the floor one holds, asking again while one's request waits:
            # nothing changed, so no line reached anyone -- say where things stand.
            if floor_.holder == user:
                ctx.reply("you hold the floor already")
            else:
                ctx.reply(f"your request is pending: {floor_.holder} has not answered yet")

    def kick(ctx: CommandContext, arg: str) -> None:
        target = arg.strip()
        if not target:
            ctx.error("usage: /kick USER")
        elif not core.roles.may_admin(ctx.user):
            ctx.error(f"{ctx.user} is not an admin: only admins kick")
        elif not core.presence.kick(target, Reason.KICKED, by=ctx.user):
            ctx.error(f"{target} is not online")
        else:
            core.store.audit("kick", ctx.user, None, f"kicked {target}").addErrback(lambda _: None)

    return {
        "controls": Command(controls, "/controls", ("the device's controls: value, quality, who set them",)),
        "set": Command(set_, "/set NAME VALUE", ("operate a control (on/off, a number, a choice);",
                                                 "  an action: /set NAME")),
        "floor": Command(floor, "/floor [take|request MSG|give|refuse|withdraw|release|break]",
                         ("who holds the floor; take, ask for, answer, release it",)),
        "kick": Command(kick, "/kick USER", ("remove a user (admins)",)),
    }

