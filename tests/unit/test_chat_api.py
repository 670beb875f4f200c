"""
boatwist.web.chat_api: ``/api/chat``, GET history and POST a message.

Requests are L{DummyRequest}s; POST goes through the real L{ChatRoom} (its
cleaning, limits and rate limit) over a fake store whose answers the test
holds back or fails; GET is answered by a fake store that records the page
it was asked for.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from boatwist.chat.room import ChatRoom
from boatwist.config import ChatSettings
from boatwist.events import EventHub
from boatwist.store.service import Message, StoreError, StoreFull
from boatwist.web.chat_api import ChatResource

AT = 1_700_000_000.0


class FakeStore:
    def __init__(self) -> None:
        self.history_calls: list[dict[str, Any]] = []
        self.messages = [Message(1, "bob", "hi", "chat", False, AT), Message(2, "alice", "waves", "web", True, AT + 1)]
        self.history_failure: Exception | None = None
        self.added: list[tuple[str, str, str, bool]] = []
        self.hold = False
        self.pending: list[Deferred[Message]] = []
        self.add_failure: Exception | None = None

    def history(self, before: int | None = None, after: int | None = None, limit: int = 50) -> Deferred[list[Message]]:
        self.history_calls.append({"before": before, "after": after, "limit": limit})
        if self.history_failure is not None:
            return fail(self.history_failure)
        return succeed(list(self.messages))

    def add_message(self, user: str, text: str, via: str, action: bool) -> Deferred[Message]:
        self.added.append((user, text, via, action))
        message = Message(100 + len(self.added), user, text, via, action, AT)
        if self.add_failure is not None and not self.hold:
            return fail(self.add_failure)
        if self.hold:
            d: Deferred[Message] = Deferred()
            self.pending.append(d)
            return d
        return succeed(message)


class FakePresence:
    def snapshot(self) -> dict[str, Any]:
        return {"seats": {"used": 0, "limit": 10}, "users": []}


class Rig:
    def __init__(self, rate_messages: int = 10, rate_period: float = 10.0, max_line: int = 4096) -> None:
        self.clock = Clock()
        self.hub = EventHub()
        self.published: list[Any] = []
        self.hub.subscribe(self.published.append)
        self.store = FakeStore()
        settings = ChatSettings(rate_messages=rate_messages, rate_period=rate_period, max_line=max_line)
        self.room = ChatRoom(self.hub, self.store, FakePresence(), self.clock, settings)
        self.resource = ChatResource("alice", self.room)

    def get(self, **args: str) -> DummyRequest:
        request = DummyRequest([])
        request.method = b"GET"
        for name, value in args.items():
            request.addArg(name.encode(), value.encode())
        render(self.resource, request)
        return request

    def post(self, body: bytes | Any, content_type: bytes | None = b"application/json") -> DummyRequest:
        request = DummyRequest([])
        request.method = b"POST"
        if content_type is not None:
            request.requestHeaders.setRawHeaders(b"content-type", [content_type])
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        request.content = BytesIO(body)
        render(self.resource, request)
        return request


def render(resource: Any, request: DummyRequest) -> None:
    result = resource.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()


def answer(request: DummyRequest) -> tuple[int | None, Any]:
    assert request.finished == 1
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]
    return request.responseCode, json.loads(b"".join(request.written))


# ------------------------------------------------------------------- GET


def test_get_history_default_page() -> None:
    """GET without arguments asks for the latest 50 and answers them as event data, oldest first."""
    rig = Rig()
    code, body = answer(rig.get())
    assert code == 200
    assert rig.store.history_calls == [{"before": None, "after": None, "limit": 50}]
    assert body == {"messages": [m.as_event_data() for m in rig.store.messages]}


def test_get_history_with_before_and_limit() -> None:
    """before and limit are passed to the store as integers."""
    rig = Rig()
    code, _ = answer(rig.get(before="40", limit="5"))
    assert code == 200
    assert rig.store.history_calls == [{"before": 40, "after": None, "limit": 5}]


def test_get_history_with_after() -> None:
    """after is passed to the store."""
    rig = Rig()
    answer(rig.get(after="7"))
    assert rig.store.history_calls == [{"before": None, "after": 7, "limit": 50}]


@pytest.mark.parametrize("given, asked", [("0", 1), ("1", 1), ("500", 500), ("100000", 500)])
def test_get_history_limit_is_clamped(given: str, asked: int) -> None:
    """limit is kept between 1 and 500."""
    rig = Rig()
    answer(rig.get(limit=given))
    assert rig.store.history_calls[0]["limit"] == asked


@pytest.mark.parametrize("args", [
    {"before": "abc"},
    {"after": "1.5"},
    {"limit": "ten"},
    {"before": "-1"},
    {"after": ""},
    {"before": "99999999999999999999"},
    {"after": "9" * 5000},
    {"before": "3", "after": "1"},
])
def test_get_history_bad_arguments_are_400(args: dict[str, str]) -> None:
    """
    Not a whole number, negative, too large for a message id, or both before
    and after: 400 with a JSON error, and the store is not asked.
    """
    rig = Rig()
    code, body = answer(rig.get(**args))
    assert code == 400
    assert isinstance(body["error"], str) and body["error"]
    assert rig.store.history_calls == []


def test_get_history_store_error_is_500_json() -> None:
    """A store failure is a 500 with a JSON error that gives nothing away."""
    rig = Rig()
    rig.store.history_failure = StoreError("/var/db: disk I/O error")
    code, body = answer(rig.get())
    assert code == 500
    assert body == {"error": "internal error"}


# ------------------------------------------------------------------ POST


def test_post_stores_and_answers_201_with_the_message() -> None:
    """A good POST is said in the room via 'web' and answered 201 with the stored message."""
    rig = Rig()
    code, body = answer(rig.post({"text": "hello  world"}))
    assert code == 201
    assert body == {"id": 101, "user": "alice", "text": "hello  world", "via": "web", "action": False, "at": AT}
    assert rig.store.added == [("alice", "hello  world", "web", False)]
    assert [e.data["text"] for e in rig.published if e.kind == "chat"] == ["hello  world"]


def test_post_action_and_charset_parameter() -> None:
    """action true is a /me; a charset parameter on the content type is fine."""
    rig = Rig()
    code, body = answer(rig.post({"text": "waves", "action": True}, b"Application/JSON; charset=utf-8"))
    assert code == 201 and body["action"] is True


@pytest.mark.parametrize("content_type", [None, b"text/plain", b"application/x-www-form-urlencoded",
                                          b"application/jsonp"])
def test_post_without_json_content_type_is_415(content_type: bytes | None) -> None:
    """A body not declared as JSON is refused with 415 before it is read."""
    rig = Rig()
    code, body = answer(rig.post({"text": "hi"}, content_type))
    assert code == 415
    assert "application/json" in body["error"]
    assert rig.store.added == []


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"", b"[" * 100000])
def test_post_invalid_json_is_400(raw: bytes) -> None:
    """Malformed JSON, bytes that are not UTF-8, or nesting too deep to parse: 400, not 500."""
    rig = Rig()
    code, body = answer(rig.post(raw))
    assert code == 400
    assert "JSON" in body["error"]


@pytest.mark.parametrize("value", [{}, {"text": 5}, {"text": None}, ["text"], "text", {"message": "hi"}])
def test_post_missing_text_is_400(value: Any) -> None:
    """The body must be an object with a string 'text'."""
    rig = Rig()
    code, _ = answer(rig.post(value))
    assert code == 400
    assert rig.store.added == []


@pytest.mark.parametrize("action", ["yes", 1, 0, None, "true"])
def test_post_non_bool_action_is_400(action: Any) -> None:
    """'action' must be a JSON boolean."""
    rig = Rig()
    code, body = answer(rig.post({"text": "hi", "action": action}))
    assert code == 400
    assert "action" in body["error"]


def test_post_refused_message_is_400_with_the_rooms_words() -> None:
    """A message the room refuses (empty once cleaned, too long) is 400 with the room's sentence."""
    rig = Rig(max_line=10)
    code, body = answer(rig.post({"text": "\x00\x01  "}))
    assert code == 400 and "empty" in body["error"]
    code, body = answer(rig.post({"text": "x" * 11}))
    assert code == 400 and "too long" in body["error"]
    assert rig.store.added == []


def test_post_rate_limited_is_429_with_retry_after() -> None:
    """Over the per-user rate: 429, a Retry-After in whole seconds (rounded up), nothing stored."""
    rig = Rig(rate_messages=2, rate_period=10)
    answer(rig.post({"text": "one"}))
    answer(rig.post({"text": "two"}))
    request = rig.post({"text": "three"})
    code, body = answer(request)
    assert code == 429
    assert request.responseHeaders.getRawHeaders(b"retry-after") == [b"5"]
    assert "slow down" in body["error"]
    assert len(rig.store.added) == 2
    rig.clock.advance(4.5)
    request = rig.post({"text": "three"})
    assert answer(request)[0] == 429
    assert request.responseHeaders.getRawHeaders(b"retry-after") == [b"1"]  # 0.5 s rounds up to 1
    rig.clock.advance(0.5)
    assert answer(rig.post({"text": "three"}))[0] == 201


def test_post_store_full_is_507() -> None:
    """When the store is full the message is not sent to anyone and the answer is 507."""
    rig = Rig()
    rig.store.add_failure = StoreFull("disk full")
    code, body = answer(rig.post({"text": "lost"}))
    assert code == 507
    assert body == {"error": "message not saved: disk full"}
    assert [e for e in rig.published if e.kind == "chat"] == []


def test_post_other_store_error_is_507_too() -> None:
    """Any failure to save is 'not saved' (507), never a raw 500 with the store's words."""
    rig = Rig()
    rig.store.add_failure = StoreError("/var/db/boatwist.sqlite: I/O error")
    code, body = answer(rig.post({"text": "lost"}))
    assert code == 507
    assert "sqlite" not in body["error"]


def test_post_answer_waits_for_the_commit() -> None:
    """Nothing is answered before the store has committed the message."""
    rig = Rig()
    rig.store.hold = True
    request = rig.post({"text": "patience"})
    assert request.written == [] and request.finished == 0
    rig.store.pending[0].callback(Message(9, "alice", "patience", "web", False, AT))
    code, body = answer(request)
    assert code == 201 and body["id"] == 9


def test_connection_lost_before_the_store_answers_writes_nothing() -> None:
    """If the client is gone when the commit comes back, nothing is written or finished."""
    rig = Rig()
    rig.store.hold = True
    request = rig.post({"text": "bye"})
    request.processingFailed(Failure(ConnectionDone()))
    rig.store.pending[0].callback(Message(9, "alice", "bye", "web", False, AT))
    assert request.written == []
    assert request.finished == 0
    # The message itself was saved and sent to the room all the same.
    assert [e.data["text"] for e in rig.published if e.kind == "chat"] == ["bye"]


def test_connection_lost_before_a_store_failure_writes_nothing() -> None:
    """Same when the store fails after the client left: no write, no finish, no error."""
    rig = Rig()
    rig.store.hold = True
    request = rig.post({"text": "bye"})
    request.processingFailed(Failure(ConnectionDone()))
    rig.store.pending[0].errback(StoreFull("disk full"))
    assert request.written == [] and request.finished == 0
