"""
boatwist.auth.throttle: turns per user name, standing per (source, name), on a Clock.

The figures of issue 9 goal 2 are pinned here with the defaults
(max_guesses 60, max_wait 5): at most 60 checks a minute on one name from
400 addresses; the operator at a known address is checked at once, at a new
one within 8 s, while the guessing goes on.
"""

from __future__ import annotations

import heapq
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from boatwist.auth import throttle as mod
from boatwist.auth.throttle import LoginThrottle, Standing, TooManyAttempts, Turn, source_of


def make(max_guesses: int = 60, max_wait: float = 5.0, max_failures: int = 5,
         window: float = 300.0) -> tuple[LoginThrottle, Clock]:
    clock = Clock()
    clock.advance(1000)
    return LoginThrottle(clock, clock.seconds, max_guesses=max_guesses, max_wait=max_wait,
                         max_failures=max_failures, window=window), clock


def outcome(d: Deferred[Turn]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def now_turn(t: LoginThrottle, address: str, user: str) -> Turn:
    [result] = outcome(t.turn(address, user))
    assert isinstance(result, Turn), result
    return result


class Guessers:
    """
    Attackers at many addresses, each sending its next guess on one name
    C{pause} seconds after its previous one was answered (a turn spent, or
    a refusal), C{in_flight} attempts per address.  Driven by L{run}.
    """

    def __init__(self, t: LoginThrottle, clock: Clock, addresses: list[str], user: str = "alice",
                 in_flight: int = 1, pause: float = 0.5) -> None:
        self.t, self.clock, self.user, self.pause = t, clock, user, pause
        self.checks: list[float] = []
        self.refusals = 0
        self._due: list[tuple[float, int, str]] = []
        self._n = 0
        for address in addresses:
            for _ in range(in_flight):
                self._later(address, 0.0)

    def _later(self, address: str, delay: float) -> None:
        self._n += 1
        heapq.heappush(self._due, (self.clock.seconds() + delay, self._n, address))

    def tick(self) -> None:
        """Send every guess that is due."""
        while self._due and self._due[0][0] <= self.clock.seconds():
            self._send(heapq.heappop(self._due)[2])

    def _send(self, address: str) -> None:
        d = self.t.turn(address, self.user)

        def checked(turn: Turn) -> None:
            self.checks.append(self.clock.seconds())
            turn.failed()
            self._later(address, self.pause)  # the 401 travels back, the next guess comes

        def refused(failure: Failure) -> None:
            failure.trap(TooManyAttempts)
            self.refusals += 1
            self._later(address, self.pause)

        d.addCallbacks(checked, refused)

    def most_in_a_minute(self) -> int:
        times = self.checks
        return max((sum(1 for u in times if s <= u < s + 60) for s in times), default=0)


def run(clock: Clock, seconds: float, flood: Guessers | None = None, step: float = 0.05) -> None:
    """Advance the clock in steps, letting the flood send what is due at each."""
    for _ in range(round(seconds / step)):
        clock.advance(step)
        if flood is not None:
            flood.tick()


def addresses(n: int, prefix: str = "10.1") -> list[str]:
    return [f"{prefix}.{i // 250}.{i % 250 + 1}" for i in range(n)]


# ------------------------------------------------------------- the budget


def test_turns_are_free_while_the_name_has_them_and_a_right_password_gives_its_back() -> None:
    """An operator's many requests spend nothing: a right password returns its turn at once."""
    t, _ = make()
    for _ in range(500):
        now_turn(t, "10.0.0.1", "alice").succeeded()
    for _ in range(int(t.burst - t.reserve)):  # the last turns are reserved for known addresses
        now_turn(t, "10.0.0.2", "bob").failed()
    assert not outcome(t.turn("10.0.0.2", "bob"))
    assert t.standing("10.0.0.2", "bob") is Standing.SUSPECT


def test_burst_and_rate_add_up_to_max_guesses_a_minute() -> None:
    """burst + 60 * rate = max_guesses: no 60-second window can see more checks."""
    for max_guesses in (6, 12, 60, 600):
        t, _ = make(max_guesses=max_guesses)
        assert t.burst + 60 * t.rate == pytest.approx(max_guesses)
        assert 1 <= t.burst


def test_at_most_max_guesses_checks_a_minute_on_one_name_from_400_addresses() -> None:
    """
    400 addresses, each sending its next guess on alice a second after
    each answer, for 150 s: in no 60-second window are more than 60
    passwords checked, and almost everything else is refused unchecked
    with Retry-After.
    """
    t, clock = make()
    flood = Guessers(t, clock, addresses(400), pause=1.0)
    run(clock, 150, flood)
    assert flood.most_in_a_minute() <= 60
    assert len(flood.checks) >= 120  # the gate is used, not shut
    assert flood.refusals > 10 * len(flood.checks)


def test_a_known_address_is_checked_at_once_during_the_flood() -> None:
    """
    alice logged in from 192.0.2.7 before: while 400 addresses guess her
    name, each of her logins from there gets its turn at once (the reserve).
    """
    t, clock = make()
    now_turn(t, "192.0.2.7", "alice").succeeded()
    flood = Guessers(t, clock, addresses(400))
    for _ in range(20):
        run(clock, 3, flood)
        now_turn(t, "192.0.2.7", "alice").succeeded()


def test_a_new_address_gets_a_turn_within_8_seconds_during_the_flood() -> None:
    """
    alice at an address she never used, while 400 addresses guess her name:
    the guessers are SUSPECT after their first attempt, she is CLEAN and goes
    ahead of them -- checked within 8 s, every time.
    """
    t, clock = make()
    flood = Guessers(t, clock, addresses(400), in_flight=2)
    run(clock, 10, flood)
    waits = []
    for n in range(10):
        address = f"198.51.100.{n + 1}"
        assert t.standing(address, "alice") is Standing.CLEAN
        asked = clock.seconds()
        result = outcome(t.turn(address, "alice"))
        while not result:
            run(clock, 0.05, flood)
        assert isinstance(result[0], Turn), result
        waits.append(clock.seconds() - asked)
        result[0].succeeded()
        run(clock, 2, flood)
    assert max(waits) <= 8.0, waits
    assert max(waits) <= 2.5, waits  # one turn's worth, in fact


def test_guesses_from_the_operators_own_address_do_not_refuse_her() -> None:
    """
    Six wrong guesses on alice from alice's address (a NAT): her right
    password from there is checked at once and admitted.
    """
    t, clock = make()
    now_turn(t, "10.0.0.1", "alice").succeeded()
    clock.advance(60)
    for _ in range(6):
        now_turn(t, "10.0.0.1", "alice").failed()
    turn = now_turn(t, "10.0.0.1", "alice")
    turn.succeeded()
    assert t.standing("10.0.0.1", "alice") is Standing.KNOWN


def test_failures_on_other_names_never_touch_a_name() -> None:
    """
    A hundred failures from one address on other names: bob and carol from
    that address are checked at once (nothing is kept per address alone).
    """
    t, _ = make()
    for n in range(100):
        now_turn(t, "10.0.0.1", f"user{n}").failed()
    now_turn(t, "10.0.0.1", "bob").succeeded()
    now_turn(t, "10.0.0.1", "carol").succeeded()


def test_unknown_names_are_treated_exactly_like_real_ones() -> None:
    """
    The throttle never looks a name up: the same attempts on a real and an
    invented name get the same answers at the same moments.
    """
    traces = []
    for name in ("alice", "no-such-user"):
        t, clock = make()
        trace = []
        for step in range(40):
            result = outcome(t.turn(f"10.0.{step % 3}.1", name))
            clock.advance(0.3)
            trace.append((clock.seconds(), type(result[0]).__name__ if result else "waiting"))
            if result and isinstance(result[0], Turn):
                result[0].failed()
        traces.append(trace)
    assert traces[0] == traces[1]


# ----------------------------------------------------------- the queue


def test_waiting_longer_than_max_wait_is_refused_with_retry_after() -> None:
    """With the turns gone, attempts queue; those that could not be served within max_wait are refused."""
    t, clock = make()
    for n in range(int(t.burst - t.reserve)):
        now_turn(t, f"10.0.1.{n}", "alice").failed()
    pending = [outcome(t.turn(f"10.0.2.{n}", "alice")) for n in range(t.capacity + 3)]
    refused = [p[0] for p in pending if p]
    assert len(refused) == 3
    for failure in refused:
        assert failure.check(TooManyAttempts)
        assert 1 <= failure.value.retry_after <= 10
    run(clock, t.max_wait + 1 / t.rate + 1)
    assert all(p for p in pending)


def test_one_source_cannot_fill_the_queue() -> None:
    """Each source's second waiting attempt goes behind every other source's first."""
    t, clock = make()
    for n in range(int(t.burst - t.reserve)):
        now_turn(t, f"10.0.1.{n}", "alice").failed()
    greedy = [outcome(t.turn("10.6.6.6", "alice")) for _ in range(t.capacity)]
    polite = outcome(t.turn("10.7.7.7", "alice"))
    assert not polite  # waiting, ahead of the greedy source's later attempts
    run(clock, 1 / t.rate * 2 + 0.1)
    assert polite and isinstance(polite[0], Turn)
    assert sum(1 for g in greedy if g and isinstance(g[0], Turn)) <= 1


def test_a_known_address_goes_before_waiting_guessers() -> None:
    """The reserve: with guessers waiting and the bucket low, a KNOWN pair takes a turn they may not."""
    t, clock = make()
    now_turn(t, "192.0.2.7", "alice").succeeded()
    while True:
        result = outcome(t.turn("10.6.6.6", "alice"))
        if not result:
            break
        assert isinstance(result[0], Turn)
        result[0].failed()
    now_turn(t, "192.0.2.7", "alice").succeeded()


def test_ipv6_addresses_count_per_slash_64() -> None:
    """A host minting addresses inside its /64 is one source; IPv4-mapped addresses are IPv4."""
    assert source_of("2001:db8:1:2::1") == source_of("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("::ffff:10.0.0.1") == "10.0.0.1"
    assert source_of("fe80::1%eth0") == "fe80::/64"
    assert source_of("unknown") == "unknown"
    t, _ = make()
    now_turn(t, "2001:db8:1:2::1", "alice").failed()
    assert t.standing("2001:db8:1:2::77", "alice") is Standing.SUSPECT
    assert t.standing("2001:db8:1:3::1", "alice") is Standing.CLEAN


# ---------------------------------------------------------- standing


def test_repeats_within_seconds_count_as_one_failure() -> None:
    """urllib resends a wrong Digest password five times in a moment: one failure for the standing."""
    t, clock = make(max_failures=2)
    now_turn(t, "10.0.0.1", "bob").succeeded()
    assert t.standing("10.0.0.1", "bob") is Standing.KNOWN
    for _ in range(6):
        now_turn(t, "10.0.0.1", "bob").failed()
        clock.advance(0.01)
    assert t.standing("10.0.0.1", "bob") is Standing.CLEAN  # known, with a wrong password since: no priority
    clock.advance(mod.REPEAT_WINDOW)
    now_turn(t, "10.0.0.1", "bob").failed()
    assert t.standing("10.0.0.1", "bob") is Standing.SUSPECT  # max_failures (2) counted


def test_standing_is_forgotten_after_the_window() -> None:
    """A SUSPECT pair is CLEAN again after failure_window; a known one stays known for the trust period."""
    t, clock = make(window=300)
    now_turn(t, "10.0.0.9", "x").failed()
    assert t.standing("10.0.0.9", "x") is Standing.SUSPECT
    clock.advance(301)
    assert t.standing("10.0.0.9", "x") is Standing.CLEAN
    now_turn(t, "10.0.0.1", "alice").succeeded()
    clock.advance(mod.TRUST_PERIOD - 1)
    assert t.standing("10.0.0.1", "alice") is Standing.KNOWN
    clock.advance(2)
    assert t.standing("10.0.0.1", "alice") is Standing.CLEAN


def test_void_gives_the_turn_back_without_changing_standing() -> None:
    """A stale nonce is not a guess: the turn comes back and the pair stays CLEAN."""
    t, _ = make()
    for _ in range(100):
        turn = now_turn(t, "10.0.0.1", "alice")
        turn.void()
        turn.failed()  # ignored: a turn is settled once
    assert t.standing("10.0.0.1", "alice") is Standing.CLEAN


def test_memory_is_bounded_under_a_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A scan of very many names and addresses keeps at most MAX_NAMES gates
    (then names share one stricter gate) and MAX_PAIRS pairs.
    """
    monkeypatch.setattr(mod, "MAX_NAMES", 50)
    monkeypatch.setattr(mod, "MAX_PAIRS", 80)
    t, clock = make()
    for i in range(300):
        result = outcome(t.turn(f"10.9.{i // 250}.{i % 250}", f"name{i}"))
        if result and isinstance(result[0], Turn):
            result[0].failed()
    assert len(t._gates) <= 50
    assert len(t._failures) <= 80
    clock.advance(3600)  # full again: unused gates are forgotten to make room
    now_turn(t, "10.0.0.1", "fresh").failed()
    assert "fresh" in t._gates


def test_a_wave_of_fresh_addresses_does_not_stand_before_the_operator() -> None:
    """
    A flood opens with one guess from each of 400 new addresses at once:
    the queue fills with those CLEAN attempts, which wait for their turns.
    alice, arriving two seconds later from a new address herself, goes
    first (CLEAN waits newest first) and is checked within one turn.
    """
    t, clock = make()
    for address in addresses(400):
        t.turn(address, "alice").addBoth(lambda r: r.failed() if isinstance(r, Turn) else None)
    run(clock, 2)
    asked = clock.seconds()
    result = outcome(t.turn("198.51.100.1", "alice"))
    while not result:
        run(clock, 0.05)
    assert isinstance(result[0], Turn)
    assert clock.seconds() - asked <= 1 / t.rate + 0.1


def test_one_refusal_leaves_a_source_clean_two_make_it_suspect() -> None:
    """
    An operator whose first try met a full queue is still CLEAN when she
    tries again; a guesser sending again is SUSPECT after its second refusal.
    """
    t, clock = make(max_wait=0)
    now_turn(t, "192.0.2.7", "alice").succeeded()
    for n in range(int(t.burst - t.reserve)):
        now_turn(t, f"10.0.1.{n}", "alice").failed()
    checking = [now_turn(t, "192.0.2.7", "alice") for _ in range(int(t.reserve))]  # the reserve, in use
    assert not outcome(t.turn("192.0.2.7", "alice"))  # a known attempt waits: the queue (1) is full
    [refused] = outcome(t.turn("198.51.100.1", "alice"))
    assert refused.check(TooManyAttempts)
    assert t.standing("198.51.100.1", "alice") is Standing.CLEAN
    outcome(t.turn("198.51.100.1", "alice"))
    assert t.standing("198.51.100.1", "alice") is Standing.SUSPECT
    assert len(checking) == 2
