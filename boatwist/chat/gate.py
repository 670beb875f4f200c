"""
Who may stand at the chat port's C{login:} prompt: the pending-login slots.

A connection that has not logged in costs us a socket, a timer and bytes
to parse, and proves nothing.  Squatters -- silent connections renewed as
fast as they are dropped -- must not keep an operator from the prompt, and
a flood must not keep the reactor busy.  The ideas are OpenSSH's
C{MaxStartups} and C{PerSourcePenalties}:

  - **Slots.**  At most C{[chat] max_pending_logins} connections are logging
    in at once, and one address holds at most a quarter of them.  A
    newcomer is never refused because the slots are full: the worst pending
    connection is *evicted* (told so, and closed) and the newcomer takes
    its slot.  Only when every slot is busy checking a password is the
    newcomer told "server busy".
  - **Whom to evict** (L{LoginGate._victim}), in this order: one that has
    not sent a user name yet; from the address in the most debt (below);
    from the address holding the most slots; the oldest.  So an operator
    who typed their name is never evicted for a squatter, and one still
    typing it goes after every squatter that has been evicted before.
  - **Debt per address.**  Each connection of an address that is evicted
    (L{EVICTED}), times out at the prompt (L{TIMED_OUT}) or is closed for
    flooding (L{FLOODED}) adds seconds to that address's debt, which pays
    itself off at one second per second (capped at L{DEBT_MAX}).  While an
    address owes more than L{DEBT_GRACE} seconds, its new connections are
    refused at once with "try again in N s" -- so a squatter that is evicted
    again and again, or a flooder, ends up costing one accept a try, and a
    person who was evicted once or timed out is not locked out.

The deadline at the prompt is C{[chat] login_timeout} (30 s); under
pressure eviction makes it as short as the squatters' renewal rate.  An
operator behind the same address as a squatter (one NAT) shares its debt:
that is the price of counting per address, as in OpenSSH.

Log lines are per address and summarised (L{SourceLog}): the first of a kind
is logged at once, the rest counted and logged every L{LOG_WINDOW} seconds --
a flood of connections must not become a flood of log lines.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from boatwist.config import ChatSettings

__all__ = [
    "DEBT", "DEBT_GRACE", "DEBT_MAX", "EVICTED", "LOG_WINDOW", "Busy", "LoginGate", "LoginSlot", "Outcome", "SourceLog",
]

#: Seconds of debt an address may owe and still connect.
DEBT_GRACE = 5.0
#: Most debt an address can run up: the longest it is kept out.
DEBT_MAX = 60.0
#: Seconds between summaries of what one address did.
LOG_WINDOW = 10.0


class Outcome(enum.Enum):
    """How a pending login ended."""

    LOGGED_IN = "logged-in"
    #: Closed by the client, or by the server for a reason that is not the address's fault.
    LEFT = "left"
    #: Too many wrong passwords (the authentication throttle counts those, not us).
    FAILED = "failed"
    TIMED_OUT = "timed-out"
    FLOODED = "flooded"


#: The debt (seconds) each outcome costs its address.
DEBT = {Outcome.LOGGED_IN: 0.0, Outcome.LEFT: 0.0, Outcome.FAILED: 0.0, Outcome.TIMED_OUT: 1.0,
        Outcome.FLOODED: 10.0}
#: The debt of being evicted to make room for a newcomer.
EVICTED = 1.0


@dataclass(frozen=True)
class Busy:
    """No slot: C{message} is the one line the client reads before the close."""

    message: str


@dataclass(eq=False)
class LoginSlot:
    """One connection logging in; its session says how it is getting on and when it is done."""

    host: str
    opened: float
    _gate: LoginGate
    _evict: Callable[[], None]
    #: Sent a user name: someone is there.
    spoke: bool = False
    #: A password is being checked: not evictable (the answer is on its way).
    checking: bool = False
    released: bool = False

    def release(self, outcome: Outcome) -> None:
        """The login phase is over (idempotent; eviction releases the slot itself)."""
        if not self.released:
            self.released = True
            self._gate._release(self, outcome)


class SourceLog:
    """
    Log lines about what an address did, summarised: the first of each kind
    at once, then a count per address and kind every C{window} seconds.
    """

    _log = Logger(namespace="boatwist.chat")

    def __init__(self, clock: IReactorTime, window: float = LOG_WINDOW) -> None:
        self._clock = clock
        self._window = window
        #: (host, what) -> how many more since the last line; present while its window is open.
        self._counts: dict[tuple[str, str], int] = {}
        self._flush_call: IDelayedCall | None = None

    def note(self, host: str, what: str) -> None:
        key = (host, what)
        if key in self._counts:
            self._counts[key] += 1
            return
        self._counts[key] = 0
        self._log.warn("chat port: {host}: {what}", host=host, what=what)
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(self._window, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        counts, self._counts = self._counts, {}
        for (host, what), more in counts.items():
            if more:
                self._log.warn("chat port: {host}: {what}, {n} more times in the last {s:g} s",
                               host=host, what=what, n=more, s=self._window)
                self._counts[(host, what)] = 0  # still busy: keep summarising
        if self._counts:
            self._flush_call = self._clock.callLater(self._window, self._flush)

    def stop(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None


@dataclass
class _Debt:
    until: float = 0.0


class LoginGate:
    """The pending-login slots of one chat port, and the debt of each address (module docstring)."""

    def __init__(self, settings: ChatSettings, clock: IReactorTime, log: SourceLog | None = None) -> None:
        self._settings = settings
        self._clock = clock
        self.log = log if log is not None else SourceLog(clock)
        self._slots: list[LoginSlot] = []
        self._debts: dict[str, _Debt] = {}

    # ------------------------------------------------------------ public

    @property
    def pending(self) -> int:
        """Connections that have not logged in yet."""
        return len(self._slots)

    def pending_from(self, host: str) -> int:
        return sum(1 for s in self._slots if s.host == host)

    def debt(self, host: str) -> float:
        """Seconds of debt C{host} owes now."""
        entry = self._debts.get(host)
        return max(0.0, entry.until - self._clock.seconds()) if entry is not None else 0.0

    def enter(self, host: str, evict: Callable[[], None]) -> LoginSlot | Busy:
        """
        A slot for a new connection from C{host} (making room by evicting,
        whose C{evict} is then called), or why there is none.
        """
        owed = self.debt(host)
        if owed > DEBT_GRACE:
            self.log.note(host, "connections refused: too many unfinished logins from this address")
            wait = math.ceil(owed - DEBT_GRACE)
            return Busy(f"server busy: too many unfinished logins from your address; try again in {wait} s")
        share = max(1, self._settings.max_pending_logins // 4)
        mine = [s for s in self._slots if s.host == host]
        if len(mine) >= share:
            victim = self._victim(mine)  # an address makes room among its own
        elif len(self._slots) >= self._settings.max_pending_logins:
            victim = self._victim(self._slots)
        else:
            return self._take(host, evict)
        if victim is None:
            return Busy("server busy: too many logins in progress, try again later")
        self._evict_slot(victim)
        return self._take(host, evict)

    def charge(self, host: str, seconds: float) -> None:
        """Add C{seconds} to C{host}'s debt (capped at L{DEBT_MAX} owed)."""
        if seconds <= 0:
            return
        now = self._clock.seconds()
        entry = self._debts.setdefault(host, _Debt())
        entry.until = min(max(entry.until, now) + seconds, now + DEBT_MAX)
        self._forget_paid(now)

    # ----------------------------------------------------------- private

    def _take(self, host: str, evict: Callable[[], None]) -> LoginSlot:
        slot = LoginSlot(host, self._clock.seconds(), self, evict)
        self._slots.append(slot)
        return slot

    def _victim(self, candidates: list[LoginSlot]) -> LoginSlot | None:
        """Silent first, then the address most in debt, then the one with most slots, then the oldest."""
        evictable = [s for s in candidates if not s.checking]
        if not evictable:
            return None
        held: dict[str, int] = {}
        for s in self._slots:
            held[s.host] = held.get(s.host, 0) + 1
        return min(evictable, key=lambda s: (s.spoke, -self.debt(s.host), -held[s.host], s.opened))

    def _evict_slot(self, slot: LoginSlot) -> None:
        slot.released = True
        self._slots.remove(slot)
        self.charge(slot.host, EVICTED)
        self.log.note(slot.host, "pending logins evicted to make room for newer connections")
        slot._evict()

    def _release(self, slot: LoginSlot, outcome: Outcome) -> None:
        try:
            self._slots.remove(slot)
        except ValueError:
            return
        self.charge(slot.host, DEBT[outcome])
        if outcome is Outcome.TIMED_OUT:
            self.log.note(slot.host, "logins timed out at the prompt")
        elif outcome is Outcome.FLOODED:
            self.log.note(slot.host, "connections closed for flooding before login")

    def _forget_paid(self, now: float) -> None:
        """Keep the debt table as small as the set of addresses that owe something."""
        if len(self._debts) > 64:
            for host in [h for h, d in self._debts.items() if d.until <= now]:
                del self._debts[host]
