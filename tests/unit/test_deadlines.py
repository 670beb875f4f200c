"""
L{boatwist.web.deadlines.Deadlines}: many owners' deadlines on one timer,
each firing at its exact time, on a L{Clock}.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger

from boatwist.web.deadlines import Deadlines


class Owner:
    """Something with a deadline (a connection, in the server)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def make(clock: Clock) -> tuple[Deadlines[Owner], list[tuple[float, str]]]:
    fired: list[tuple[float, str]] = []
    deadlines: Deadlines[Owner] = Deadlines(clock, lambda owner: fired.append((clock.seconds(), owner.name)))
    return deadlines, fired


def test_fires_at_the_deadline_not_before() -> None:
    clock = Clock()
    deadlines, fired = make(clock)
    a = Owner("a")
    clock.advance(0.3)  # a start that is not a round number: no floating-point slip either
    deadlines.arm(a, 0.5)
    clock.advance(0.5 - 2**-20)
    assert fired == []
    clock.advance(2**-20)
    assert [name for _, name in fired] == ["a"]
    assert not deadlines.armed(a)
    assert clock.getDelayedCalls() == []


def test_arming_again_restarts_the_deadline() -> None:
    clock = Clock()
    deadlines, fired = make(clock)
    a = Owner("a")
    deadlines.arm(a, 10)
    clock.advance(6)
    deadlines.arm(a, 10)
    clock.advance(9.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == [(16, "a")]


def test_extend_restarts_only_a_running_deadline() -> None:
    clock = Clock()
    deadlines, fired = make(clock)
    a, b = Owner("a"), Owner("b")
    deadlines.arm(a, 10)
    clock.advance(5)
    deadlines.extend(a, 10)  # as a read on the connection does
    deadlines.extend(b, 10)  # b has none: it gets none
    assert not deadlines.armed(b)
    clock.advance(9.99)
    assert fired == []
    clock.advance(0.01)
    assert fired == [(15, "a")]
    clock.advance(100)
    assert fired == [(15, "a")]


def test_extend_with_another_length_moves_the_deadline() -> None:
    clock = Clock()
    deadlines, fired = make(clock)
    a = Owner("a")
    deadlines.arm(a, 10)
    deadlines.extend(a, 3)
    clock.advance(3)
    assert fired == [(3, "a")]


def test_disarmed_never_fires_and_leaves_no_timer() -> None:
    clock = Clock()
    deadlines, fired = make(clock)
    a, b = Owner("a"), Owner("b")
    deadlines.arm(a, 5)
    deadlines.arm(b, 60)
    deadlines.disarm(a)
    assert len(clock.getDelayedCalls()) == 1
    deadlines.disarm(b)
    deadlines.disarm(b)  # twice: nothing happens
    assert clock.getDelayedCalls() == []
    clock.advance(100)
    assert fired == []
    assert len(deadlines) == 0


def test_one_timer_for_many_owners_of_several_lengths() -> None:
    """A thousand deadlines of three lengths: one DelayedCall; each fires at its own time, in order."""
    clock = Clock()
    deadlines, fired = make(clock)
    owners = [Owner(str(i)) for i in range(1000)]
    expected = []
    for i, owner in enumerate(owners):
        length = (60, 5, 10)[i % 3]
        deadlines.arm(owner, length)
        expected.append((clock.seconds() + length, owner.name))
        assert len(clock.getDelayedCalls()) == 1
        clock.advance(0.001)
    assert len(deadlines) == 1000
    clock.pump([0.005] * 20000)
    in_order = sorted(expected, key=lambda item: item[0])
    assert [name for _, name in fired] == [name for _, name in in_order]
    assert all(due - 1e-9 <= at < due + 0.005 + 1e-9 for (at, _), (due, _) in zip(fired, in_order))
    assert clock.getDelayedCalls() == []


def test_shorter_deadline_armed_later_fires_first() -> None:
    clock = Clock()
    deadlines, fired = make(clock)
    late, early = Owner("late"), Owner("early")
    deadlines.arm(late, 60)
    deadlines.arm(early, 5)
    clock.advance(5)
    assert fired == [(5, "early")]
    clock.advance(55)
    assert fired == [(5, "early"), (60, "late")]


def test_due_together_fire_in_deadline_order_in_one_pass() -> None:
    clock = Clock()
    deadlines, fired = make(clock)
    a, b, c = Owner("a"), Owner("b"), Owner("c")
    deadlines.arm(a, 10)  # due at 10
    clock.advance(1)
    deadlines.arm(b, 3)  # due at 4
    deadlines.arm(c, 8)  # due at 9
    clock.advance(50)  # one step past all three
    assert [name for _, name in fired] == ["b", "c", "a"]


def test_an_owner_armed_again_while_expiring_fires_again_later() -> None:
    clock = Clock()
    fired: list[float] = []
    deadlines: Deadlines[Owner] = Deadlines(clock, lambda owner: (fired.append(clock.seconds()),
                                                                  deadlines.arm(owner, 2) if len(fired) < 3 else None))
    deadlines.arm(Owner("a"), 2)
    clock.advance(2)
    clock.advance(2)
    clock.advance(2)
    clock.advance(2)
    assert fired == [2, 4, 6]
    assert clock.getDelayedCalls() == []


def test_one_failing_expiry_does_not_stop_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(Deadlines, "_log", Logger(observer=events.append))
    fired: list[str] = []

    def expired(owner: Owner) -> None:
        if owner.name == "bad":
            raise ZeroDivisionError("boom")
        fired.append(owner.name)

    deadlines: Deadlines[Owner] = Deadlines(clock, expired)
    for name in ("first", "bad", "last"):
        deadlines.arm(Owner(name), 1)
    other = Owner("later")
    deadlines.arm(other, 5)
    clock.advance(1)
    assert fired == ["first", "last"]
    assert len(events) == 1 and events[0]["log_failure"].check(ZeroDivisionError)
    clock.advance(4)
    assert fired == ["first", "last", "later"]


def test_an_expiry_that_rearms_or_disarms_another_due_one_is_respected() -> None:
    """
    Three due in the same pass: the first one's handler arms the second
    again and disarms the third; the second fires at its new time only, the
    third never (as separate DelayedCalls would behave).
    """
    clock = Clock()
    fired: list[tuple[float, str]] = []
    a, b, c = Owner("a"), Owner("b"), Owner("c")

    def expired(owner: Owner) -> None:
        fired.append((clock.seconds(), owner.name))
        if owner is a:
            deadlines.arm(b, 10)
            deadlines.disarm(c)

    deadlines: Deadlines[Owner] = Deadlines(clock, expired)
    for owner in (a, b, c):
        deadlines.arm(owner, 5)
    clock.advance(5)
    assert fired == [(5, "a")]
    clock.advance(10)
    assert fired == [(5, "a"), (15, "b")]
    assert clock.getDelayedCalls() == []

