"""ChatRoom: the policy both front ends share (cleaning, limits, commit before broadcast)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from boatwist.chat.lines import REASON_WORDS, presence_sentence, reason_words, refusal_sentence
from boatwist.chat.room import ChatRoom, EmptyMessage, MessageTooLong, NotSaved, RateLimited
from boatwist.config import ChatSettings
from boatwist.events import Event, EventHub
from boatwist.store.service import Message, StoreError, StoreFull


class FakeStore:
    """add_message hands back a Deferred the test fires (or a preset result)."""

    def __init__(self) -> None:
        self.added: list[tuple[str, str, str, bool]] = []
        self.pending: list[Deferred[Message]] = []
        self.auto = True
        self.failure: Exception | None = None
        self.messages: list[Message] = []
        self.history_calls: list[int] = []

    def add_message(self, user: str, text: str, via: str, action: bool) -> Deferred[Message]:
        self.added.append((user, text, via, action))
        if self.failure is not None:
            return fail(self.failure)
        message = Message(len(self.added), user, text, via, action, 1_700_000_000.0)
        if self.auto:
            return succeed(message)
        d: Deferred[Message] = Deferred()
        d.addCallback(lambda _: message)
        self.pending.append(d)
        return d

    def history(self, before: int | None = None, after: int | None = None, limit: int = 50) -> Deferred[list[Message]]:
        self.history_calls.append(limit)
        return succeed(list(self.messages))


class FakePresence:
    def __init__(self, users: list[dict[str, Any]] | None = None) -> None:
        self.users = users or []

    def snapshot(self) -> dict[str, Any]:
        return {"seats": {"used": len(self.users), "limit": 10}, "users": self.users}


def make(**chat: Any) -> tuple[ChatRoom, FakeStore, list[Event], Clock, FakePresence]:
    hub = EventHub()
    events: list[Event] = []
    hub.subscribe(events.append)
    store, presence, clock = FakeStore(), FakePresence(), Clock()
    return ChatRoom(hub, store, presence, clock, ChatSettings(**chat)), store, events, clock, presence


def result_of(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def test_message_is_published_only_after_the_store_commits() -> None:
    """No chat event exists before add_message's Deferred fires; then exactly one, with the stored id."""
    room, store, events, _, _ = make()
    store.auto = False
    d = room.say("alice", "valve open", "chat")
    assert store.added == [("alice", "valve open", "chat", False)]
    assert events == []
    store.pending[0].callback(None)
    assert [e.kind for e in events] == ["chat"]
    assert events[0].data == {"id": 1, "user": "alice", "text": "valve open", "via": "chat",
                              "action": False, "at": 1_700_000_000.0}
    assert result_of(d).id == 1


def test_text_is_cleaned_and_trimmed_before_it_is_stored() -> None:
    """Escape sequences and bidi overrides never reach the store or the hub; actions keep their flag."""
    room, store, events, _, _ = make()
    room.say("alice", "  \x1b[2J\x1b[31mhot\u202e!\x1b[0m  ", "web", action=True)
    assert store.added == [("alice", "hot!", "web", True)]
    assert events[0].data["text"] == "hot!" and events[0].data["action"] is True


@pytest.mark.parametrize("text", ["", "   ", "\x1b[2J", "\x07\x00\u202e"])
def test_empty_after_cleaning_is_refused_without_storing(text: str) -> None:
    """A message that is nothing once cleaned raises EmptyMessage and is neither stored nor rate-counted."""
    room, store, _, _, _ = make(rate_messages=1)
    with pytest.raises(EmptyMessage):
        room.say("alice", text, "chat")
    assert store.added == []
    room.say("alice", "real", "chat")  # the one allowed message is still there


def test_length_limit_counts_utf8_bytes() -> None:
    """max_line is in bytes of UTF-8: 3-byte Chinese characters reach it three times sooner."""
    room, store, _, _, _ = make(max_line=64)
    room.say("alice", "中" * 21 + "a", "chat")  # 64 bytes
    with pytest.raises(MessageTooLong) as caught:
        room.say("alice", "中" * 22, "chat")  # 66 bytes
    assert str(caught.value) == "message too long: at most 64 bytes"
    assert len(store.added) == 1


def test_rate_limit_is_a_per_user_token_bucket_on_the_clock() -> None:
    """rate_messages per rate_period: the next is refused with retry_after, refilled by clock time, per user."""
    room, store, _, clock, _ = make(rate_messages=3, rate_period=9.0)
    for i in range(3):
        room.say("alice", f"m{i}", "chat")
    with pytest.raises(RateLimited) as caught:
        room.say("alice", "flood", "web")  # the bucket is the user's, whatever the front end
    assert caught.value.retry_after == pytest.approx(3.0)
    assert str(caught.value) == "slow down: at most 3 messages per 9 s; try again in 3.0 s"
    room.say("bob", "not affected", "chat")
    clock.advance(2.9)
    with pytest.raises(RateLimited):
        room.say("alice", "still too soon", "chat")
    clock.advance(0.1)
    room.say("alice", "allowed again", "chat")
    assert [a[1] for a in store.added] == ["m0", "m1", "m2", "not affected", "allowed again"]


def test_store_full_fails_with_not_saved_and_nothing_is_published() -> None:
    """StoreFull becomes NotSaved('disk full'), whose words the sender reads; no chat event goes out."""
    room, store, events, _, _ = make()
    store.failure = StoreFull("chat.db: disk full")
    failure = result_of(room.say("alice", "hello", "chat"))
    assert failure.check(NotSaved)
    assert str(failure.value) == "message not saved: disk full"
    assert events == []


def test_other_store_errors_are_not_saved_too() -> None:
    """Any other store failure is NotSaved('storage error'): front ends handle one exception type."""
    room, store, events, _, _ = make()
    store.failure = StoreError("chat.db: locked")
    failure = result_of(room.say("alice", "hello", "chat"))
    assert failure.check(NotSaved) and failure.value.reason == "storage error"
    assert events == []


def test_history_is_oldest_first_and_limited() -> None:
    """history(limit) asks the store for that many and orders by id; 0 asks nothing (the store clamps to 1)."""
    room, store, _, _, _ = make(history=5)
    store.messages = [Message(9, "b", "later", "web", False, 2.0), Message(3, "a", "earlier", "chat", False, 1.0)]
    assert [m.id for m in result_of(room.history())] == [3, 9]
    assert store.history_calls == [5]
    assert result_of(room.history(0)) == []
    assert store.history_calls == [5]


def test_who_summarises_the_presence_snapshot() -> None:
    """who(): sorted users with state, their front ends and best known RTT (None when unknown)."""
    room, _, _, _, presence = make()
    presence.users = [
        {"user": "bob", "state": "unstable", "connections": [
            {"kind": "web", "rtt_ms": 250.0, "unstable": True},
            {"kind": "chat", "rtt_ms": 12.5, "unstable": False}]},
        {"user": "alice", "state": "online", "connections": [{"kind": "http", "peer": "10.0.0.2"}]},
    ]
    assert room.who() == [
        {"user": "alice", "state": "online", "kinds": ["http"], "rtt_ms": None},
        {"user": "bob", "state": "unstable", "kinds": ["chat", "web"], "rtt_ms": 12.5},
    ]


def test_subscribe_hears_hub_events_until_unsubscribed() -> None:
    """The room is how a front end listens to the hub; unsubscribe stops it."""
    hub = EventHub()
    room = ChatRoom(hub, FakeStore(), FakePresence(), Clock(), ChatSettings())
    heard: list[Event] = []
    unsubscribe = room.subscribe(heard.append)
    hub.publish("control", {"user": "a"})
    unsubscribe()
    hub.publish("control", {"user": "b"})
    assert [e.data["user"] for e in heard] == ["a"]


# ------------------------------------------------------------ sentences


def test_offline_sentence_has_reason_words_and_detection_time() -> None:
    """The example of the issue, byte for byte."""
    data = {"user": "bob", "state": "offline", "reason": "keepalive-timeout", "detected_after": 3.104}
    assert presence_sentence(data) == "bob is offline (no answer to keepalive probes, detected after 3.1 s)"


@pytest.mark.parametrize(
    "data, sentence",
    [
        ({"user": "bob", "state": "offline", "reason": "closed", "detected_after": None}, "bob is offline (left)"),
        ({"user": "bob", "state": "offline", "reason": "closed", "detected_after": 0.0}, "bob is offline (left)"),
        ({"user": "bob", "state": "offline", "reason": "reset", "detected_after": 0.0},
         "bob is offline (connection reset, detected after 0.0 s)"),
        ({"user": "bob", "state": "online", "reason": "login", "via": "web"}, "bob is online (logged in via web)"),
        ({"user": "bob", "state": "unstable", "reason": "retransmits"}, "bob is unstable (packets being retransmitted)"),
        ({"user": "bob", "state": "offline", "reason": "heartbeat-timeout", "detected_after": 10.0},
         "bob is offline (missed heartbeat, detected after 10.0 s)"),
        ({"user": "b\x1b[2Jb", "state": "offline", "reason": "new\x1b[1m-thing"}, "bb is offline (new-thing)"),
    ],
)
def test_presence_sentences(data: dict[str, Any], sentence: str) -> None:
    """Each state reads naturally; unknown reasons are shown as they are, cleaned."""
    assert presence_sentence(data) == sentence


def test_refusal_is_a_presence_event_read_as_a_refusal() -> None:
    """reason 'refused' with refusal/used/limit reads as the issue's example, for both kinds of refusal."""
    full = {"user": "carol", "state": "offline", "reason": "refused", "refusal": "full", "used": 10, "limit": 10}
    assert presence_sentence(full) == "carol was refused: server full (10 of 10 operators online)"
    many = {"user": "bob", "state": "online", "reason": "refused", "refusal": "too-many-connections",
            "used": 8, "limit": 8}
    assert refusal_sentence(many) == "bob was refused: too many connections (8 of 8 allowed per operator)"


def test_every_documented_reason_has_words() -> None:
    """Every reason docs/internals.md lists maps to words, so users never read a code."""
    documented = ["login", "recovered", "closed", "reset", "keepalive-timeout", "heartbeat-timeout",
                  "tcp-state", "slow-reader", "kicked", "idle", "retransmits", "probes", "refused"]
    missing = [r for r in documented if r not in REASON_WORDS]
    assert missing == []
    assert reason_words("closed") == "left"
    assert reason_words("tcp-state") == "connection half-closed"
    assert reason_words("slow-reader") == "too slow to read events"
    assert reason_words("kicked") == "removed by an operator"


def test_the_docs_list_every_presence_reason_there_is() -> None:
    """The README's Presence section and docs/internals.md name every Reason the code produces, and no other."""
    import re
    from pathlib import Path

    from boatwist.reasons import Reason

    root = Path(__file__).resolve().parents[2]
    produced = {reason.value for reason in Reason}
    readme = (root / "README.md").read_text(encoding="utf-8")
    presence = readme.split("## Presence", 1)[1].split("How a vanished peer is found", 1)[0]
    in_readme = set(re.findall(r"`([a-z-]+)`", presence)) - {"online", "unstable", "offline", "detected_after",
                                                               "http_grace"}
    assert in_readme == produced, (sorted(produced - in_readme), sorted(in_readme - produced))
    internals = (root / "docs" / "internals.md").read_text(encoding="utf-8")
    listed = re.search(r"`Reason` \(a `str` enum: `([^`]+)`\)", internals)
    assert listed is not None, "docs/internals.md no longer lists the Reason enum"
    assert set(re.split(r",\s*", listed.group(1).strip())) == produced
