"""Confirmation tokens: bound to user, control and value, single use, 15 s, bounded, compared in constant time."""

from __future__ import annotations

import hmac

import pytest
from twisted.internet.task import Clock

from boatwist.controls.confirm import CONFIRM_TTL, ConfirmReason, ConfirmRefusal, Confirmations
from boatwist.controls.spec import ControlSpec, ControlType, MemorySpec

PUMP = ControlSpec(name="pump", type=ControlType.SWITCH, backend=MemorySpec(initial=False),
                   confirm="Really stop the coolant pump?")
VALVE = ControlSpec(name="valve", type=ControlType.NUMBER, backend=MemorySpec(initial=0.0), min=0, max=100,
                    confirm="Open the valve?")


def make(**kw: int) -> tuple[Confirmations, Clock]:
    clock = Clock()
    return Confirmations(clock, **kw), clock


def refused(result: ConfirmRefusal | None) -> ConfirmReason:
    assert result is not None
    return result.reason


def test_ask_then_confirm_with_the_token_succeeds_once() -> None:
    """The two steps: a question with the control's text and a token; the same request with it passes."""
    c, clock = make()
    q = c.ask("alice", PUMP, False)
    assert q.question == "Really stop the coolant pump?" and q.expires_in == CONFIRM_TTL == 15.0
    assert (q.control, q.value) == ("pump", False)
    clock.advance(14.9)
    assert c.confirm("alice", PUMP, False, q.token) is None


def test_a_replayed_token_is_refused_as_used() -> None:
    """Single use: the second identical request with the same token is refused, saying it was used."""
    c, _ = make()
    q = c.ask("alice", PUMP, False)
    assert c.confirm("alice", PUMP, False, q.token) is None
    result = c.confirm("alice", PUMP, False, q.token)
    assert refused(result) is ConfirmReason.USED and "already used" in (result.message if result else "")


def test_an_expired_token_is_refused_as_expired() -> None:
    """At 15 s the question is over; the refusal says it expired (not "unknown") so the user asks again."""
    c, clock = make()
    q = c.ask("alice", PUMP, False)
    clock.advance(15.0)
    assert refused(c.confirm("alice", PUMP, False, q.token)) is ConfirmReason.EXPIRED
    clock.advance(15.0)  # long gone: forgotten
    assert refused(c.confirm("alice", PUMP, False, q.token)) is ConfirmReason.UNKNOWN
    assert len(c) == 0


def test_another_users_token_is_refused() -> None:
    """A token is bound to the user it was given to: bob cannot use alice's."""
    c, _ = make()
    q = c.ask("alice", PUMP, False)
    assert refused(c.confirm("bob", PUMP, False, q.token)) is ConfirmReason.WRONG_USER
    assert c.confirm("alice", PUMP, False, q.token) is None  # the failed attempt did not burn it


def test_a_token_for_another_control_or_value_is_refused() -> None:
    """Bound to the control and the value: confirming "pump off" does not confirm "valve" or "pump on"."""
    c, _ = make()
    q = c.ask("alice", PUMP, False)
    assert refused(c.confirm("alice", VALVE, False, q.token)) is ConfirmReason.WRONG_CONTROL
    assert refused(c.confirm("alice", PUMP, True, q.token)) is ConfirmReason.WRONG_VALUE
    q2 = c.ask("alice", VALVE, 1.0)
    assert refused(c.confirm("alice", VALVE, True, q2.token)) is ConfirmReason.WRONG_VALUE  # True == 1.0 in Python
    assert refused(c.confirm("alice", VALVE, 50.0, q2.token)) is ConfirmReason.WRONG_VALUE


@pytest.mark.parametrize("token", ["", "nonsense", "abc.def", ".", "x" * 5000])
def test_unknown_or_malformed_tokens_are_refused(token: str) -> None:
    """Anything that is not a token we gave is "unknown", however it is shaped."""
    c, _ = make()
    c.ask("alice", PUMP, False)
    assert refused(c.confirm("alice", PUMP, False, token)) is ConfirmReason.UNKNOWN


def test_a_right_selector_with_a_wrong_secret_is_unknown() -> None:
    """Knowing the first part of a token gives nothing: the secret must match too."""
    c, _ = make()
    q = c.ask("alice", PUMP, False)
    selector, _, secret = q.token.partition(".")
    forged = selector + "." + ("A" if secret[0] != "A" else "B") + secret[1:]
    assert refused(c.confirm("alice", PUMP, False, forged)) is ConfirmReason.UNKNOWN
    assert c.confirm("alice", PUMP, False, q.token) is None


def test_the_secret_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret part goes through hmac.compare_digest, never ==."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    c, _ = make()
    q = c.ask("alice", PUMP, False)
    assert c.confirm("alice", PUMP, False, q.token) is None
    secret = q.token.partition(".")[2].encode()
    assert calls == [(secret, secret)]


def test_tokens_are_unguessable_and_distinct() -> None:
    """Each question gets a fresh token with a 128-bit secret from `secrets`."""
    c, _ = make(per_user=100, total=1000)
    tokens = {c.ask("alice", PUMP, False).token for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t.partition(".")[2]) >= 22 for t in tokens)  # 16 bytes, urlsafe base64


def test_outstanding_questions_are_capped_per_user() -> None:
    """A user clicking again and again keeps only their newest per_user questions."""
    c, _ = make(per_user=2, total=10)
    first, second, third = (c.ask("alice", PUMP, False) for _ in range(3))
    assert refused(c.confirm("alice", PUMP, False, first.token)) is ConfirmReason.UNKNOWN
    assert c.confirm("alice", PUMP, False, second.token) is None
    assert c.confirm("alice", PUMP, False, third.token) is None


def test_memory_is_bounded_in_total() -> None:
    """However many users ask, at most `total` questions are remembered (the oldest go first)."""
    c, _ = make(per_user=1, total=3)
    questions = [c.ask(f"user{i}", PUMP, False) for i in range(10)]
    assert len(c) == 3
    assert refused(c.confirm("user0", PUMP, False, questions[0].token)) is ConfirmReason.UNKNOWN
    assert c.confirm("user9", PUMP, False, questions[9].token) is None


def test_yes_on_the_chat_port_confirms_the_latest_chat_question() -> None:
    """/yes answers the user's newest question asked on the chat port, once; not a dialog open in their browser."""
    c, _ = make()
    c.ask("alice", VALVE, 10.0, via="chat")
    c.ask("alice", PUMP, False, via="chat")
    c.ask("alice", VALVE, 99.0, via="web")
    pending = c.pending_for("alice", via="chat")
    assert pending is not None and (pending.control, pending.value) == ("pump", False)
    assert c.confirm_latest("alice") == (PUMP, False)
    assert c.pending_for("alice", via="chat") is None
    result = c.confirm_latest("alice")
    assert isinstance(result, ConfirmRefusal) and result.reason is ConfirmReason.NOTHING_PENDING
    assert c.pending_for("alice") is not None  # the browser's question is still open


def test_yes_after_the_question_expired_says_so() -> None:
    """A late /yes is told the question expired rather than confirming anything."""
    c, clock = make()
    c.ask("alice", PUMP, False, via="chat")
    clock.advance(16)
    result = c.confirm_latest("alice")
    assert isinstance(result, ConfirmRefusal) and result.reason is ConfirmReason.EXPIRED
    assert c.pending_for("alice", via="chat") is None


def test_yes_with_nothing_asked_and_other_users_questions_are_separate() -> None:
    """/yes by bob never answers alice's question."""
    c, _ = make()
    c.ask("alice", PUMP, False, via="chat")
    result = c.confirm_latest("bob")
    assert isinstance(result, ConfirmRefusal) and result.reason is ConfirmReason.NOTHING_PENDING
    assert c.pending_for("alice") is not None


def test_forget_user_drops_their_questions() -> None:
    """A user who went offline answers nothing: their questions are dropped."""
    c, _ = make()
    q = c.ask("alice", PUMP, False)
    c.ask("bob", PUMP, False)
    c.forget_user("alice")
    assert len(c) == 1
    assert refused(c.confirm("alice", PUMP, False, q.token)) is ConfirmReason.UNKNOWN


def test_pending_for_counts_down() -> None:
    """The question re-shown (chat /floor, a reconnecting browser) carries the seconds left, not 15 again."""
    c, clock = make()
    c.ask("alice", PUMP, False)
    clock.advance(6)
    pending = c.pending_for("alice")
    assert pending is not None and pending.expires_in == 9.0


def test_a_question_without_text_still_asks_something() -> None:
    """The tracker is usable for any control; one with no confirm text gets a plain question."""
    c, _ = make()
    plain = ControlSpec(name="lamp", type=ControlType.SWITCH, backend=MemorySpec(), label="Lamp")
    assert c.ask("alice", plain, True).question == "Set Lamp?"


def test_bad_limits_are_refused() -> None:
    """per_user must be at least one and no more than total."""
    with pytest.raises(ValueError):
        Confirmations(Clock(), per_user=0)
    with pytest.raises(ValueError):
        Confirmations(Clock(), per_user=5, total=4)
