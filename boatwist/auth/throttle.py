"""
Password guessing is bounded per user name, not per address.

Why not per address: an attacker has many addresses (a botnet, a /64 of
IPv6, 127.0.0.0/8 on the device itself), and an operator shares theirs with
others (a NAT, a jump host, the device's own localhost).  Counting failures
per address both lets the many-address attacker through and locks the
operator out because someone else failed from there.

So every *check* of a password for a name -- any name, existing or not --
needs a turn from that name's L{_Gate}: a token bucket that holds
C{burst} turns and refills at C{rate}, sized so that no 60-second window
sees more than C{max_guesses} checks (C{burst + 60 * rate = max_guesses}).
A check that turns out right gives its turn back (an operator's browser
making many requests spends nothing), and so does one that was not a guess
at all (a stale Digest nonce); a wrong one keeps it.

When no turn is free the attempt waits, at most C{max_wait} seconds, in a
queue ordered by the standing of the (source, name) pair:

  - L{Standing.KNOWN}: that source logged in as that name before, and no
    wrong password for it came from there since (within C{failure_window}).
    It may also take the last C{reserve} turns, which nobody else may: an
    operator at an address they used before is checked at once however
    many others are guessing their name;
  - L{Standing.CLEAN}: the source made no failed attempt on that name
    within C{failure_window}, and had at most one refused -- the operator at
    a new address (even one whose first try met a wave of guessers); or it
    logged in as that name before and fewer than C{max_failures} wrong
    passwords came from there since (someone at the operator's NAT guessing
    costs the address its priority, not its standing);
  - L{Standing.SUSPECT}: the rest.  Guessers end up here after their first
    failure or second refusal, a second or so into a flood, so an operator
    at a new address goes ahead of them.

Within a standing, each source's n-th waiting attempt goes behind every
other source's (n-1)-th: one source cannot fill the queue.  KNOWN and
SUSPECT wait in arrival order; CLEAN attempts by how many attempts their
source made on the name lately (fewest first), then newest first, so that
neither a wave of fresh addresses opening a flood, which waits in the
queue for its turns, nor someone guessing from an address the operator
used before stands between the operator arriving after them and the next
turn (the oldest of the wave are refused instead, and become SUSPECT).
An attempt that would wait longer than C{max_wait} is refused without being checked
(L{TooManyAttempts}, with the seconds after which to try again) -- the
only refusal there is, and it never depends on failures of *other* names
or on the address alone.

A source is an IPv4 address, or the /64 an IPv6 address is in (one host
can mint any number of addresses in its /64; an IPv4-mapped address is
its IPv4 address).

What this cannot do: an attacker able to send attempts from more fresh
sources per second than the name's rate stays CLEAN and competes with an
operator at a new address on equal terms (the operator's wait is then
bounded by C{max_wait} and the answer is a refusal with Retry-After); and
someone guessing from the operator's own address (a NAT) costs a fresh
login from there its priority.  A session that logged in before (see
L{boatwist.auth.checkers.ThrottledChecker}), and a login from a known
address nobody guesses from, are never affected.

Names are never looked up here: unknown names get gates like real ones,
so neither the wording nor the timing of an answer says which names exist.
Time comes from an injected clock; every table is bounded.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import count
from typing import Callable

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["LoginThrottle", "Standing", "TooManyAttempts", "Turn", "source_of"]

#: Seconds a successful login keeps its source KNOWN for that name.
TRUST_PERIOD = 30 * 86400.0
#: Failures of one pair within this many seconds count once (urllib's Digest
#: handler resends a wrong password five times by itself, within milliseconds).
REPEAT_WINDOW = 2.0
#: Most user names with a gate of their own; past it, names share one (stricter) gate.
MAX_NAMES = 10000
#: Most (source, name) pairs whose standing is remembered.
MAX_PAIRS = 20000
#: Turns reserved for KNOWN pairs, at most (never more than burst - 1).
RESERVE = 2
#: Attempts of one pair remembered to rank it among CLEAN ones (more rank the same).
TRIES_KEPT = 8


class TooManyAttempts(UnauthorizedLogin):
    """
    Refused without a check: the name's turns are taken.  A subclass of
    UnauthorizedLogin so that every front end refuses it; C{retry_after}
    (whole seconds) is what HTTP sends as Retry-After.
    """

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many login attempts for this user name; try again in {retry_after} s")
        self.retry_after = retry_after


class Standing(enum.IntEnum):
    """How a (source, name) pair ranks for the next turn: lower goes first."""

    KNOWN = 0
    CLEAN = 1
    SUSPECT = 2


def source_of(address: str) -> str:
    """The throttling source of C{address}: IPv4 as is, IPv6 as its /64."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


@dataclass
class _Failures:
    """The failed or refused attempts of one (source, name) pair."""

    #: When its last failed or refused attempt was (monotonic).
    last: float
    #: Times of the failures counted, at most one per REPEAT_WINDOW.
    counted: list[float] = field(default_factory=list)
    #: Attempts refused unchecked since C{last} was within the window.
    refusals: int = 0
    #: When it asked for turns lately (at most TRIES_KEPT).
    tries: list[float] = field(default_factory=list)


@dataclass(eq=False)
class _Waiter:
    rank: tuple[int, int, int, int]
    source: str
    user: str
    standing: Standing
    deadline: float
    ticket: Deferred["Turn"]


class _Gate:
    """The turns of one user name (a token bucket) and who waits for them."""

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        self.updated = now
        self.waiting: list[_Waiter] = []
        self.timer: IDelayedCall | None = None
        #: True while turns are being handed out (a check that ends at once gives its turn back then).
        self.pumping = False

    def refill(self, now: float, rate: float, burst: float) -> None:
        if now > self.updated:
            self.tokens = min(burst, self.tokens + (now - self.updated) * rate)
        self.updated = now

    def idle(self, burst: float) -> bool:
        return not self.waiting and self.tokens >= burst


class Turn:
    """
    The right to check one password now.  Exactly one of L{succeeded},
    L{failed} or L{void} is called when the check is over (later calls are
    ignored), so the turn is given back or kept.
    """

    def __init__(self, throttle: "LoginThrottle", gate: _Gate, source: str, user: str) -> None:
        self._throttle = throttle
        self.gate = gate
        self.source = source
        self.user = user
        self._done = False

    def succeeded(self) -> None:
        """The password was right: the turn is given back and the source is KNOWN for this name."""
        if not self._done:
            self._done = True
            self._throttle._settle(self, good=True)

    def failed(self) -> None:
        """The password was wrong: the turn is spent, and the source is SUSPECT for this name."""
        if not self._done:
            self._done = True
            self._throttle._settle(self, good=False)

    def void(self) -> None:
        """It was not a guess (a stale nonce, a failure of ours): the turn is given back."""
        if not self._done:
            self._done = True
            self._throttle._give_back(self.gate)


class LoginThrottle:
    """
    The gates of every user name and the standing of every (source, name)
    pair.  L{turn} is the one entry point; see the module docstring.
    """

    def __init__(
        self,
        clock: IReactorTime,
        monotonic: Callable[[], float],
        *,
        max_guesses: int,
        max_wait: float,
        max_failures: int,
        window: float,
    ) -> None:
        if max_guesses < 1:
            raise ValueError("max_guesses must be at least 1")
        self._clock = clock
        self._now = monotonic
        #: Turns a gate holds when nobody has used it for a while.
        self.burst = float(max(1, max_guesses // 6))
        #: Turns per second a gate gains (so that burst + 60 * rate = max_guesses).
        self.rate = max(max_guesses - self.burst, 1.0) / 60.0
        self.reserve = float(min(RESERVE, int(self.burst) - 1))
        self.max_wait = max_wait
        #: Attempts that may wait for a turn of one name (beyond it: refused).
        self.capacity = max(1, int(max_wait * self.rate))
        self._max_failures = max_failures
        self._window = window
        self._gates: OrderedDict[str, _Gate] = OrderedDict()
        #: Where names go once MAX_NAMES gates are busy: one gate for all of them.
        self._overflow: _Gate | None = None
        #: (source, name) -> when it last logged in: only a right password puts a pair here,
        #: so no amount of guessing can push an operator's known addresses out.
        self._known: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._failures: OrderedDict[tuple[str, str], _Failures] = OrderedDict()
        self._seq = count()

    # ------------------------------------------------------------ public

    def standing(self, address: str, user: str) -> Standing:
        """How an attempt on C{user} from C{address} would rank now."""
        return self._standing(source_of(address), user, self._now())

    def turn(self, address: str, user: str) -> "Deferred[Turn]":
        """
        A turn to check a password for C{user} from C{address}: fires with a
        L{Turn} at once or within C{max_wait} seconds, or fails with
        L{TooManyAttempts}.
        """
        now = self._now()
        source = source_of(address)
        standing = self._standing(source, user, now)
        gate = self._gate(user, now)
        gate.refill(now, self.rate, self.burst)
        ahead = [w for w in gate.waiting if w.standing <= standing]
        if not ahead and gate.tokens >= self._need(standing):
            gate.tokens -= 1
            self._tried(source, user, now)
            return _fired(Turn(self, gate, source, user))
        tries = self._tried(source, user, now)
        nth = sum(1 for w in gate.waiting if w.source == source and w.standing == standing)
        seq = next(self._seq)
        # CLEAN: fewest recent attempts, then newest first (see the module docstring).
        rank = (int(standing), tries, nth, -seq) if standing is Standing.CLEAN else (int(standing), 0, nth, seq)
        waiter = _Waiter(rank, source, user, standing, now + self.max_wait, Deferred())
        gate.waiting.append(waiter)
        gate.waiting.sort(key=lambda w: w.rank)
        if len(gate.waiting) > self.capacity:
            self._refuse(gate, gate.waiting.pop(), now)
        self._schedule(gate)
        return waiter.ticket

    def charge(self, address: str, user: str) -> None:
        """
        A failure found without a turn (a wrong answer on a session that had
        logged in before: see ThrottledChecker): it takes a turn if one is
        free, never waits, and counts against the pair like any failure.
        """
        now = self._now()
        gate = self._gate(user, now)
        gate.refill(now, self.rate, self.burst)
        if gate.tokens >= 1:
            gate.tokens -= 1
        self._mark_bad(source_of(address), user, now, counted=True)

    # ----------------------------------------------------------- private

    def _need(self, standing: Standing) -> float:
        """Turns that must be in the bucket for C{standing} to take one."""
        return 1.0 if standing is Standing.KNOWN else 1.0 + self.reserve

    def _standing(self, source: str, user: str, now: float) -> Standing:
        key = (source, user)
        failures = self._failures.get(key)
        good = self._known.get(key)
        recent = 0 if failures is None else sum(1 for t in failures.counted if now - t < self._window)
        if good is not None and now - good < TRUST_PERIOD:
            if recent == 0:
                return Standing.KNOWN
            if recent < self._max_failures:
                return Standing.CLEAN
            return Standing.SUSPECT
        if recent or (failures is not None and now - failures.last < self._window and failures.refusals >= 2):
            return Standing.SUSPECT
        return Standing.CLEAN

    def _record(self, source: str, user: str, now: float) -> _Failures:
        key = (source, user)
        failures = self._failures.get(key)
        if failures is None:
            failures = self._failures[key] = _Failures(now - self._window)
            while len(self._failures) > MAX_PAIRS:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        return failures

    def _tried(self, source: str, user: str, now: float) -> int:
        """Note an attempt of the pair; how many it made before, lately."""
        record = self._record(source, user, now)
        before = [t for t in record.tries if now - t < self._window]
        record.tries = (before + [now])[-TRIES_KEPT:]
        return len(before)

    def _mark_bad(self, source: str, user: str, now: float, counted: bool) -> None:
        """A failed (C{counted}) or refused attempt of the pair."""
        failures = self._record(source, user, now)
        if now - failures.last >= self._window:
            failures.refusals = 0
        failures.last = now
        if not counted:
            failures.refusals += 1
        else:
            recent = [t for t in failures.counted if now - t < self._window]
            if not recent or now - recent[-1] >= REPEAT_WINDOW:
                recent.append(now)
            failures.counted = recent[-max(1, self._max_failures):]

    def _gate(self, user: str, now: float) -> _Gate:
        gate = self._gates.get(user)
        if gate is not None:
            self._gates.move_to_end(user)
            return gate
        if len(self._gates) >= MAX_NAMES:
            # Forget gates that are full and unused (forgetting them changes nothing) ...
            for name in [n for n, g in self._gates.items() if not g.waiting]:
                g = self._gates[name]
                g.refill(now, self.rate, self.burst)
                if g.idle(self.burst):
                    del self._gates[name]
            # ... and if every one is in use, share one gate rather than forget a deficit.
            if len(self._gates) >= MAX_NAMES:
                if self._overflow is None:
                    self._overflow = _Gate(self.burst, now)
                return self._overflow
        gate = self._gates[user] = _Gate(self.burst, now)
        return gate

    def _refuse(self, gate: _Gate, waiter: _Waiter, now: float) -> None:
        """Refuse C{waiter} unchecked; its pair becomes SUSPECT (guessers get there fast)."""
        self._mark_bad(waiter.source, waiter.user, now, counted=False)
        retry = max(1, math.ceil((len(gate.waiting) + self._need(waiter.standing) - gate.tokens) / self.rate))
        waiter.ticket.errback(TooManyAttempts(retry))

    def _schedule(self, gate: _Gate) -> None:
        """Wake up when the head of the queue can have a turn or a waiter's time is up."""
        if not gate.waiting:
            if gate.timer is not None and gate.timer.active():
                gate.timer.cancel()
            gate.timer = None
            return
        head = gate.waiting[0]
        now = self._now()
        until_token = max(0.0, (self._need(head.standing) - gate.tokens) / self.rate)
        until_deadline = max(0.0, min(w.deadline for w in gate.waiting) - now)
        wake = now + min(until_token, until_deadline)
        if gate.timer is not None and gate.timer.active():
            if gate.timer.getTime() <= wake:
                return  # an earlier wake-up does no harm: _pump looks again
            gate.timer.cancel()
        gate.timer = self._clock.callLater(wake - now, self._pump, gate)

    def _pump(self, gate: _Gate) -> None:
        """Hand out the turns that are due, refuse who waited too long, and wait again."""
        if gate.pumping:
            return  # a check that ended at once, inside the loop below: the loop sees its turn
        gate.pumping = True
        try:
            gate.timer = None
            now = self._now()
            gate.refill(now, self.rate, self.burst)
            while gate.waiting and gate.tokens >= self._need(gate.waiting[0].standing):
                waiter = gate.waiting.pop(0)
                gate.tokens -= 1
                # Its checker may run (and give the turn back) right here.
                waiter.ticket.callback(Turn(self, gate, waiter.source, waiter.user))
            for waiter in [w for w in gate.waiting if w.deadline <= now]:
                gate.waiting.remove(waiter)
                self._refuse(gate, waiter, now)
        finally:
            gate.pumping = False
        self._schedule(gate)

    def _give_back(self, gate: _Gate) -> None:
        gate.refill(self._now(), self.rate, self.burst)
        gate.tokens = min(self.burst, gate.tokens + 1)
        if gate.waiting:
            self._pump(gate)

    def _settle(self, turn: Turn, good: bool) -> None:
        now = self._now()
        key = (turn.source, turn.user)
        if good:
            self._known[key] = now
            self._known.move_to_end(key)
            while len(self._known) > MAX_PAIRS:
                self._known.popitem(last=False)
            self._failures.pop(key, None)
            self._give_back(turn.gate)
        else:
            self._mark_bad(turn.source, turn.user, now, counted=True)


def _fired(turn: Turn) -> "Deferred[Turn]":
    d: Deferred[Turn] = Deferred()
    d.callback(turn)
    return d
