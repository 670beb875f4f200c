"""Brute-force throttling: delays per user name, refusal per address, no lockout."""

from __future__ import annotations

from twisted.internet.task import Clock

from boatwist.auth.throttle import MAX_DELAY, LoginThrottle


def make() -> tuple[LoginThrottle, Clock]:
    clock = Clock()
    return LoginThrottle(clock.seconds, max_failures=5, window=300, delay=0.5), clock


def test_no_delay_before_any_failure() -> None:
    """An honest first login is not slowed."""
    t, _ = make()
    assert t.delay("10.0.0.1", "alice") == 0
    assert not t.refused("10.0.0.1")


def test_failures_double_the_delay_for_that_user_name_up_to_a_cap() -> None:
    """Each failure against a name doubles the wait for the next attempt, capped at MAX_DELAY."""
    t, _ = make()
    delays = []
    for i in range(8):
        t.failed(f"10.0.0.{i}", "alice")
        delays.append(t.delay("10.0.1.1", "alice"))
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert delays[-1] == MAX_DELAY


def test_an_address_is_refused_after_max_failures_and_forgiven_after_the_window() -> None:
    """The attacker's address is shut out for the window, then let in again."""
    t, clock = make()
    for _ in range(5):
        t.failed("10.0.0.9", "x")
    assert t.refused("10.0.0.9")
    clock.advance(301)
    assert not t.refused("10.0.0.9")


def test_guessing_a_name_never_refuses_the_real_operator() -> None:
    """Failures for alice from a botnet delay but never refuse alice's own address."""
    t, _ = make()
    for i in range(100):
        t.failed(f"10.1.{i // 250}.{i % 250}", "alice")
    assert not t.refused("192.0.2.7")
    assert t.delay("192.0.2.7", "alice") <= MAX_DELAY


def test_an_address_that_logged_in_recently_is_not_delayed() -> None:
    """An operator already at work is not slowed by someone else's guessing."""
    t, _ = make()
    t.succeeded("192.0.2.7", "alice")
    for _ in range(3):
        t.failed("10.9.9.9", "alice")
    assert t.delay("192.0.2.7", "alice") == 0
    assert t.delay("10.9.9.9", "alice") > 0


def test_memory_is_bounded_under_a_scan() -> None:
    """A scan from very many addresses does not grow the tables without limit."""
    from boatwist.auth import throttle as mod

    t, _ = make()
    for i in range(mod.MAX_KEYS + 50):
        t.failed(f"a{i}", f"u{i}")
    assert len(t._by_address) <= mod.MAX_KEYS
    assert len(t._by_user) <= mod.MAX_KEYS
