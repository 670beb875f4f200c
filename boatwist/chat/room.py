"""
The operators' chat room: the policy, shared by every front end.

Two front ends talk here, the line-based chat port (L{boatwist.chat.protocol}) and
the browser (C{POST /api/chat}); each is a thin "mind" that parses and
formats (STYLE practice 9).  What may be said, by whom, how often, and in
which order things happen is decided once, here:

  - a message is cleaned (L{boatwist.textsafe.clean_message}), must not be
    empty after that and must fit in C{[chat] max_line} bytes of UTF-8;
  - each user has a token bucket of C{rate_messages} per C{rate_period}
    seconds, shared by all their connections and front ends, so opening a
    second connection does not double the allowance;
  - a message is stored first and published on the hub only once the store
    has COMMITted it: nobody sees a line that a power cut would then erase,
    and the event's id is the message id, so history and the live stream
    can be stitched together without duplicates.

How an event reads as a line (presence sentences, messages, operations)
is L{boatwist.chat.lines}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from boatwist.config import ChatSettings
from boatwist.events import Event
from boatwist.ratelimit import OverRate, TokenBuckets
from boatwist.store.service import StoreFull
from boatwist.textsafe import clean_message

if TYPE_CHECKING:
    from boatwist.store.service import Message

__all__ = [
    "ChatRoom",
    "EmptyMessage",
    "MessageRefused",
    "MessageTooLong",
    "NotSaved",
    "RateLimited",
]

# ------------------------------------------------------------- refusals


class MessageRefused(Exception):
    """
    The room will not take this message.  C{str()} of it is the sentence to
    show the sender, in any front end (the web answers 4xx with it).
    """


class EmptyMessage(MessageRefused):
    def __str__(self) -> str:
        return "nothing to send: the message is empty once control characters are removed"


class MessageTooLong(MessageRefused):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit

    def __str__(self) -> str:
        return f"message too long: at most {self.limit} bytes"


class RateLimited(MessageRefused):
    """Over the per-user rate; C{retry_after} seconds until one more message is allowed."""

    def __init__(self, retry_after: float, messages: int, period: float) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after
        self.messages = messages
        self.period = period

    def __str__(self) -> str:
        return (
            f"slow down: at most {self.messages} messages per {self.period:g} s; "
            f"try again in {self.retry_after:.1f} s"
        )


class NotSaved(Exception):
    """
    The store did not commit the message, so it was not sent to anyone
    (the room never shows what it could not keep).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"message not saved: {self.reason}"


# ------------------------------------------------------- what we need


class _Hub(Protocol):
    def publish(self, kind: str, data: dict[str, Any]) -> object: ...

    def subscribe(self, subscriber: Callable[[Event], None]) -> Callable[[], None]: ...


class _Store(Protocol):
    def add_message(self, user: str, text: str, via: str, action: bool) -> Deferred[Message]: ...

    def history(self, before: int | None = None, after: int | None = None,
                limit: int = 50) -> Deferred[list[Message]]: ...


class _Presence(Protocol):
    def snapshot(self) -> dict[str, Any]: ...


# ----------------------------------------------------------------- room


class ChatRoom:
    """
    One room per process.  Front-end neutral: no bytes, no HTTP, no
    prompts; callers pass who is speaking (already authenticated) and
    through which front end (C{via}: ``chat`` or ``web``).
    """

    _log = Logger()

    def __init__(
        self,
        hub: _Hub,
        store: _Store,
        presence: _Presence,
        clock: IReactorTime,
        settings: ChatSettings,
        rate: TokenBuckets | None = None,
    ) -> None:
        """
        @param rate: the per-user allowance, shared with the operations of
            the device; by default one of the room's own from C{settings}.
        """
        self._hub = hub
        self._store = store
        self._presence = presence
        self._clock = clock
        self._settings = settings
        self._rate = rate or TokenBuckets(clock, settings.rate_messages, settings.rate_period)

    @property
    def settings(self) -> ChatSettings:
        return self._settings

    def say(self, user: str, text: str, via: str, action: bool = False) -> Deferred[Message]:
        """
        Send C{text} from C{user} to the room.

        Raises at once (nothing stored, nothing spent) L{EmptyMessage},
        L{MessageTooLong} or L{RateLimited}.  Otherwise returns a Deferred
        that fires with the stored C{Message} after it has been committed
        AND published as a C{chat} event, or fails with L{NotSaved}.
        """
        cleaned = clean_message(text).strip()
        if not cleaned:
            raise EmptyMessage()
        if len(cleaned.encode("utf-8")) > self._settings.max_line:
            raise MessageTooLong(self._settings.max_line)
        self._spend_token(user)
        d = self._store.add_message(user, cleaned, via, action)
        d.addCallbacks(self._committed, self._not_saved, errbackArgs=(user,))
        return d

    def history(self, limit: int | None = None) -> Deferred[list[Message]]:
        """The last C{limit} (default C{[chat] history}) messages, oldest first."""
        if limit is None:
            limit = self._settings.history
        if limit <= 0:
            # The store clamps its page to at least one message; "none" is ours to say.
            return succeed([])
        d = self._store.history(limit=limit)
        d.addCallback(lambda messages: sorted(messages, key=lambda m: m.id))
        return d

    def page(self, before: int | None = None, after: int | None = None, limit: int = 50) -> Deferred[list[Message]]:
        """A page of the stored history, oldest first (see L{boatwist.store.service.Store.history})."""
        return self._store.history(before=before, after=after, limit=limit)

    def who(self) -> list[dict[str, Any]]:
        """
        Who is online, sorted by name: C{{"user", "state", "kinds": [web,
        chat, http ...], "rtt_ms": best known RTT or None}}, taken from the
        presence snapshot (so it agrees with C{/api/presence}).
        """
        entries = []
        for user in self._presence.snapshot().get("users", []):
            conns = user.get("connections", [])
            rtts = [c["rtt_ms"] for c in conns if isinstance(c.get("rtt_ms"), (int, float))]
            entries.append(
                {
                    "user": user.get("user", "?"),
                    "state": user.get("state", "?"),
                    "kinds": sorted({str(c.get("kind", "?")) for c in conns}),
                    "rtt_ms": min(rtts) if rtts else None,
                }
            )
        return sorted(entries, key=lambda e: e["user"])

    def subscribe(self, subscriber: Callable[[Event], None]) -> Callable[[], None]:
        """Hear every later hub event (chat, presence, refusal, control); returns unsubscribe."""
        return self._hub.subscribe(subscriber)

    # -------------------------------------------------------- private

    def _spend_token(self, user: str) -> None:
        """Take one message from C{user}'s allowance or raise L{RateLimited}."""
        try:
            self._rate.spend(user)
        except OverRate as e:
            raise RateLimited(e.retry_after, e.count, e.period) from None

    def _committed(self, message: Message) -> Message:
        self._hub.publish("chat", message.as_event_data())
        return message

    def _not_saved(self, failure: Failure, user: str) -> Failure:
        if failure.check(StoreFull):
            # The store logs a full disk once per episode; one line per message would flood the log.
            return Failure(NotSaved("disk full"))
        self._log.failure("message from {user} not saved", failure, user=user)
        return Failure(NotSaved("storage error"))
