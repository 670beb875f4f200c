"""
The device's chat commands (L{boatwist.chat.device}) on the real core of
``tests/device_rig.py``, through a recording command context: what the
typist alone reads (replies, ``error:`` lines, the question of a
confirmation) next to what everyone reads (the hub's events).
"""

from __future__ import annotations

from typing import Callable

from boatwist.chat.commands import Command
from boatwist.chat.device import device_commands
from device_rig import Device


class Typist:
    """A L{boatwist.chat.commands.CommandContext} that keeps what the user was told."""

    def __init__(self, user: str) -> None:
        self.user = user
        #: Every line to this user alone, in order; errors as the session shows them.
        self.lines: list[str] = []
        self.on_yes: Callable[[], None] | None = None

    def reply(self, line: str) -> None:
        self.lines.append(line)

    def error(self, line: str) -> None:
        self.lines.append(f"error: {line}")

    def ask(self, question: str, on_yes: Callable[[], None]) -> None:
        self.lines.append(question)
        self.on_yes = on_yes


def run(d: Device, commands: dict[str, Command], user: str, line: str) -> Typist:
    """C{line} (``/name arg``) typed by C{user}; the typist's view."""
    typist = Typist(user)
    name, _, arg = line[1:].partition(" ")
    commands[name].handler(typist, arg.strip())
    return typist


def test_a_confirmation_asks_the_question_once_and_yes_operates() -> None:
    """
    ``/set heater on`` asks the control's question as it is declared -- the
    session adds "type /yes within 15 s" on a line of its own, so the
    question does not say it again -- and operates nothing; the answer
    operates it (via ``chat``) and tells the typist nothing more: the
    broadcast line is their answer.
    """
    d = Device(mode="off")
    commands = device_commands(d.core)
    bob = run(d, commands, "bob", "/set heater on")
    assert bob.lines == ["Really switch the heater?"]
    assert d.controls_events() == []
    assert bob.on_yes is not None
    bob.on_yes()
    [op] = d.controls_events()
    assert (op["user"], op["control"], op["value"], op["via"], op["result"]) == ("bob", "heater", True, "chat", "ok")
    assert bob.lines == ["Really switch the heater?"]


def test_refusals_everyone_reads_are_not_repeated_to_the_typist() -> None:
    """
    A viewer's ``/set`` (403) and a non-holder's (409) are recorded and
    broadcast -- the typist reads that line like everyone -- so the typist
    gets no ``error:`` line besides.
    """
    d = Device(mode="optional")
    commands = device_commands(d.core)
    carol = run(d, commands, "carol", "/set pump on")
    assert carol.lines == []
    assert d.core.floor.take("root") is None
    bob = run(d, commands, "bob", "/set pump on")
    assert bob.lines == []
    refused = [(op["user"], op["refused"], op["result"]) for op in d.controls_events()]
    assert refused == [("carol", "role", "error"), ("bob", "floor", "error")]


def test_bad_input_is_one_error_line_and_nothing_is_broadcast() -> None:
    """A value the control does not take, an unknown control, a sensor: one ``error:`` line each, no event."""
    d = Device(mode="off")
    commands = device_commands(d.core)
    assert run(d, commands, "bob", "/set setpoint NaN").lines == [
        "error: setpoint: 'NaN' is not allowed: expected a number from 5 to 90 in steps of 0.5 (°C)"]
    assert run(d, commands, "bob", "/set nope 1").lines == [
        "error: no control named 'nope' (controls: pump, setpoint, mode, valve, heater, reset)"]
    assert run(d, commands, "bob", "/set").lines == [
        "error: usage: /set NAME VALUE (an action: /set NAME); /controls lists them"]
    assert d.controls_events() == []


def test_floor_commands_that_change_nothing_say_where_things_stand() -> None:
    """
    ``/floor take`` by the holder and ``/floor request`` by a user whose
    request already waits change nothing and publish nothing, so no line
    would reach the typist at all: they are told instead.  A change is
    published (everyone's line) and says nothing more to the typist.
    """
    d = Device(mode="optional")
    commands = device_commands(d.core)
    floor_events = lambda: [e.data["state"] for e in d.events if e.kind == "floor"]  # noqa: E731
    assert run(d, commands, "bob", "/floor take").lines == []
    assert floor_events() == ["taken"]
    assert run(d, commands, "bob", "/floor take").lines == ["you hold the floor already"]
    assert run(d, commands, "root", "/floor request please").lines == []
    assert run(d, commands, "root", "/floor request").lines == ["your request is pending: bob has not answered yet"]
    assert floor_events() == ["taken", "requested"]
    assert run(d, commands, "carol", "/floor take").lines == ["error: carol is a viewer: viewers do not take the floor"]
    assert run(d, commands, "bob", "/floor give").lines == []
    assert floor_events() == ["taken", "requested", "taken"]
    assert d.core.floor.holder == "root"
