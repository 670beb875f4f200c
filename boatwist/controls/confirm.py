"""
Confirmation of dangerous operations, enforced by the server.

A control declared with C{confirm = TEXT} is operated in two steps.  The
first request is answered with the question and a token (HTTP 428; on the
chat port the question, answered with C{/yes}); the same request with that
token within L{CONFIRM_TTL} seconds executes.  The token is bound to the
user, the control and the value: it cannot confirm anything else, for anyone
else, twice, or late -- so no client, however it is written, skips the
question.

Tokens.  A token is C{SELECTOR.SECRET}: the selector (48 random bits) finds
the pending question in a dict; the secret (128 random bits, L{secrets}) is
then compared with L{hmac.compare_digest}, so the time a wrong token takes
tells nothing about the right one.  (Looking the whole token up in a dict
would compare it with C{==} on a hash collision -- harmless in practice, but
the split costs nothing and needs no argument.)

Memory is bounded: at most C{per_user} questions outstanding per user (a new
one pushes out that user's oldest) and C{total} remembered in all (a new one
pushes out the oldest overall).  Answered and expired questions are kept
until one more C{ttl} has passed so that a late or repeated answer is told
"expired" or "already used" rather than "unknown"; they count towards
C{total}, so nothing grows without limit.

Times are the reactor's (monotonic in production, L{boatwist.clock}), so a
wall-clock step neither expires nor revives a question.
"""

from __future__ import annotations

import enum
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from boatwist.controls.spec import ControlSpec, Value
from boatwist.controls.words import format_value

__all__ = [
    "CONFIRM_TTL",
    "ConfirmReason",
    "ConfirmRefusal",
    "Confirmations",
    "Question",
]

#: Seconds a question may be answered (DESIGN.md: "within 15 s").
CONFIRM_TTL = 15.0


@dataclass(frozen=True)
class Question:
    """What the user is asked: the 428 body C{{"confirm": token, "question": question}}, the chat line."""

    token: str
    question: str
    #: Seconds left to answer.
    expires_in: float
    control: str
    value: Value


class ConfirmReason(str, enum.Enum):
    """Why a confirmation was refused (the audit record's and the API's word)."""

    UNKNOWN = "unknown"
    USED = "used"
    EXPIRED = "expired"
    WRONG_USER = "wrong-user"
    WRONG_CONTROL = "wrong-control"
    WRONG_VALUE = "wrong-value"
    #: /yes with no question pending.
    NOTHING_PENDING = "nothing-pending"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ConfirmRefusal:
    reason: ConfirmReason
    #: One line for people.
    message: str


@dataclass
class _Pending:
    selector: str
    secret: str
    user: str
    spec: ControlSpec
    value: Value
    via: str
    expires: float
    used: bool = False


def _same_value(a: Value, b: Value) -> bool:
    """Equal and of the same type: C{True == 1.0} in Python, but a switch is not a number."""
    return type(a) is type(b) and a == b


def _same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("ascii"))


class Confirmations:
    """The questions asked and not yet answered, for every user of one device."""

    def __init__(self, clock: IReactorTime, ttl: float = CONFIRM_TTL, per_user: int = 4, total: int = 256) -> None:
        if per_user < 1 or total < per_user:
            raise ValueError("need 1 <= per_user <= total")
        self._clock = clock
        self.ttl = ttl
        self.per_user = per_user
        self.total = total
        #: selector -> question, oldest first.
        self._pending: OrderedDict[str, _Pending] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def ask(self, user: str, control: ControlSpec, value: Value, via: str = "web") -> Question:
        """
        A new question for C{user} about setting C{control} to C{value}.
        C{via} (C{web}, C{chat}, C{api}) lets the chat port's C{/yes} answer
        only what the chat port asked.
        """
        now = self._clock.seconds()
        self._purge(now)
        mine = [p for p in self._pending.values() if p.user == user and not p.used and p.expires > now]
        for old in mine[: max(0, len(mine) - self.per_user + 1)]:
            del self._pending[old.selector]
        while len(self._pending) >= self.total:
            self._pending.popitem(last=False)
        selector = secrets.token_urlsafe(6)
        while selector in self._pending:  # 48 bits: a collision is unlikely, never silent
            selector = secrets.token_urlsafe(6)
        pending = _Pending(selector, secrets.token_urlsafe(16), user, control, value, via, now + self.ttl)
        self._pending[selector] = pending
        return self._question(pending, now)

    def confirm(self, user: str, control: ControlSpec, value: Value, token: str) -> ConfirmRefusal | None:
        """
        None when C{token} answers C{user}'s question about C{control} and
        C{value} in time: the question is used up and the operation may run.
        Otherwise why not.  A refused attempt leaves the question as it was,
        so a mistaken retry does not cost the user their question.
        """
        now = self._clock.seconds()
        self._purge(now)
        selector, dot, secret = token.partition(".")
        pending = self._pending.get(selector) if dot else None
        if pending is None or not _same_secret(secret, pending.secret):
            return ConfirmRefusal(ConfirmReason.UNKNOWN, "this confirmation is not known (ask for a new one)")
        if pending.used:
            return ConfirmRefusal(ConfirmReason.USED, "this confirmation was already used (ask for a new one)")
        if now >= pending.expires:
            return ConfirmRefusal(ConfirmReason.EXPIRED,
                                  f"the confirmation expired ({self.ttl:g} s to answer)")
        if pending.user != user:
            return ConfirmRefusal(ConfirmReason.WRONG_USER, "this confirmation was given to another user")
        if pending.spec.name != control.name:
            return ConfirmRefusal(ConfirmReason.WRONG_CONTROL,
                                  f"this confirmation is for {pending.spec.name}, not {control.name}")
        if not _same_value(pending.value, value):
            return ConfirmRefusal(ConfirmReason.WRONG_VALUE,
                                  f"this confirmation is for {control.name} = {format_value(pending.value)}, "
                                  f"not {format_value(value)}")
        pending.used = True
        return None

    def pending_for(self, user: str, via: str | None = None) -> Question | None:
        """C{user}'s latest unanswered question still in time (asked through C{via}, when given)."""
        now = self._clock.seconds()
        pending = self._latest(user, via)
        if pending is None or pending.used or now >= pending.expires:
            return None
        return self._question(pending, now)

    def confirm_latest(self, user: str, via: str | None = "chat") -> tuple[ControlSpec, Value] | ConfirmRefusal:
        """
        C{/yes}: answer C{user}'s latest question asked through C{via} (the
        chat port's own, by default: a C{/yes} typed in telnet must not
        confirm a dialog open in the user's browser).  Returns what to
        operate, or why not -- an expired latest question says so rather
        than confirming an older one.
        """
        now = self._clock.seconds()
        self._purge(now)
        pending = self._latest(user, via)
        if pending is None or pending.used:
            return ConfirmRefusal(ConfirmReason.NOTHING_PENDING, "there is nothing to confirm")
        if now >= pending.expires:
            return ConfirmRefusal(ConfirmReason.EXPIRED,
                                  f"the question about {pending.spec.name} expired ({self.ttl:g} s to answer)")
        pending.used = True
        return pending.spec, pending.value

    def forget_user(self, user: str) -> None:
        """Drop C{user}'s questions (they went offline: nobody will answer them)."""
        for selector in [s for s, p in self._pending.items() if p.user == user]:
            del self._pending[selector]

    # ------------------------------------------------------------ private

    def _latest(self, user: str, via: str | None) -> _Pending | None:
        for pending in reversed(self._pending.values()):
            if pending.user == user and (via is None or pending.via == via):
                return pending
        return None

    def _question(self, pending: _Pending, now: float) -> Question:
        return Question(
            token=f"{pending.selector}.{pending.secret}",
            question=pending.spec.confirm or f"Set {pending.spec.title}?",
            expires_in=max(0.0, pending.expires - now),
            control=pending.spec.name,
            value=pending.value,
        )

    def _purge(self, now: float) -> None:
        """Forget questions answered or expired more than one ttl ago (oldest first: stop at the first kept)."""
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if now < oldest.expires + self.ttl:
                break
            self._pending.popitem(last=False)
