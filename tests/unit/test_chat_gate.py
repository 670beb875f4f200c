"""The pending-login slots of the chat port: eviction order, per-address debt, summarised log lines."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger

from boatwist.chat.gate import DEBT_GRACE, DEBT_MAX, EVICTED, Busy, LoginGate, LoginSlot, Outcome, SourceLog
from boatwist.config import ChatSettings


class Gate:
    def __init__(self, **chat: Any) -> None:
        self.clock = Clock()
        self.logged: list[dict[str, Any]] = []
        log = SourceLog(self.clock)
        log._log = Logger(namespace="test", observer=self.logged.append)
        self.gate = LoginGate(ChatSettings(**chat), self.clock, log)
        self.evicted: list[str] = []

    def enter(self, host: str, label: str = "") -> LoginSlot:
        slot = self.gate.enter(host, lambda: self.evicted.append(label or host))
        assert isinstance(slot, LoginSlot), slot
        return slot


def test_a_newcomer_evicts_a_silent_slot_before_one_that_typed_a_name() -> None:
    """The operator who typed a name is kept; the silent squatter goes, even though it is newer."""
    g = Gate(max_pending_logins=2)
    operator = g.enter("192.0.2.1", "operator")
    operator.spoke = True
    g.clock.advance(1)
    g.enter("192.0.2.2", "squatter")
    g.enter("192.0.2.3", "newcomer")
    assert g.evicted == ["squatter"]
    assert g.gate.pending == 2


def test_an_address_in_debt_is_evicted_before_a_fresh_one_even_when_newer() -> None:
    """Squatters that were evicted before go first: a silent operator still typing is evicted last."""
    g = Gate(max_pending_logins=2)
    g.enter("192.0.2.1", "operator")
    g.gate.charge("198.51.100.7", EVICTED)
    g.clock.advance(EVICTED / 2)
    g.enter("198.51.100.7", "squatter")
    g.enter("198.51.100.8", "newcomer")
    assert g.evicted == ["squatter"]


def test_checking_slots_are_never_evicted_and_then_the_newcomer_is_busy() -> None:
    """A password being checked keeps its slot; with every slot checking the newcomer reads 'server busy'."""
    g = Gate(max_pending_logins=1)
    g.enter("192.0.2.1").checking = True
    busy = g.gate.enter("192.0.2.2", lambda: None)
    assert busy == Busy("server busy: too many logins in progress, try again later")
    assert g.evicted == []


def test_an_address_that_keeps_being_evicted_is_refused_until_its_debt_is_paid() -> None:
    """
    Each eviction costs its address EVICTED seconds; past DEBT_GRACE its new
    connections are refused at once with the wait, and get in again once
    the debt has been paid off in real time.
    """
    g = Gate(max_pending_logins=1)
    n = 0
    while g.gate.debt("198.51.100.7") <= DEBT_GRACE:
        n += 1
        assert n < 100
        g.enter("198.51.100.7")  # the squatter is back (evicting the last newcomer)
        g.enter(f"192.0.2.{n}")  # a newcomer evicts it
    refused = g.gate.enter("198.51.100.7", lambda: None)
    assert isinstance(refused, Busy)
    assert refused.message == "server busy: too many unfinished logins from your address; try again in 1 s"
    g.clock.advance(1.0)
    assert isinstance(g.gate.enter("198.51.100.7", lambda: None), LoginSlot)


def test_debt_is_capped() -> None:
    """However much an address floods, it is kept out DEBT_MAX - DEBT_GRACE seconds at most."""
    g = Gate()
    for _ in range(100):
        g.gate.charge("198.51.100.7", 10.0)
    assert g.gate.debt("198.51.100.7") == DEBT_MAX


def test_outcomes_cost_what_they_say() -> None:
    """Logging in, leaving and wrong passwords cost nothing; a timeout 1 s; a flood 10 s."""
    g = Gate()
    for outcome, host in [(Outcome.LOGGED_IN, "a"), (Outcome.LEFT, "b"), (Outcome.FAILED, "c"),
                          (Outcome.TIMED_OUT, "d"), (Outcome.FLOODED, "e")]:
        slot = g.enter(host)
        slot.release(outcome)
        slot.release(outcome)  # idempotent
    assert [g.gate.debt(h) for h in "abcde"] == [0.0, 0.0, 0.0, 1.0, 10.0]
    assert g.gate.pending == 0


def test_the_log_says_it_once_then_summarises_per_address() -> None:
    """A thousand floods from one address: one line at once, one summary per window, none per connection."""
    g = Gate()
    for _ in range(1000):
        g.enter("198.51.100.7").release(Outcome.FLOODED)
        g.gate._debts.clear()  # keep it flooding rather than refused
    assert len(g.logged) == 1
    g.clock.advance(10)
    texts = [e["log_format"].format(**e) for e in g.logged]
    assert texts == ["chat port: {host}: {what}".format(host="198.51.100.7",
                                                        what="connections closed for flooding before login"),
                     "chat port: 198.51.100.7: connections closed for flooding before login, 999 more times "
                     "in the last 10 s"]
    g.clock.advance(10)
    assert len(g.logged) == 2 and g.clock.getDelayedCalls() == []
