"""
Brute-force protection for logins, without handing attackers a lockout.

Two keys, two different answers:

* **per source address** -- after ``max_failures`` failed logins within
  ``failure_window`` seconds, that address is refused outright until the
  window has passed.  The attacker's address is shut out; the operator, at
  another address, is not -- nor is an operator who logged in from that
  same address (a NAT, localhost) within the window: only guessing *that*
  operator's name from there ``max_failures`` times shuts that pair out.
* **per user name** -- failures against one name (from anywhere, e.g. a
  botnet) make every further attempt for that name wait
  ``failure_delay * 2**(n-1)`` seconds (capped), *before* the password is
  checked.  That slows guessing to a crawl but never refuses: an attacker
  who knows the operator's name cannot lock the operator out.  An address
  that logged in as that user successfully within the window is exempt, so
  an operator already at work is not slowed by someone else's guessing.

Time comes from an injected monotonic clock; state is bounded (old entries
are pruned) so a scan from many addresses cannot grow memory without limit.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

#: Longest delay ever imposed on one attempt, seconds.
MAX_DELAY = 8.0
#: Most distinct keys remembered before the oldest are forgotten.
MAX_KEYS = 10000


class LoginThrottle:
    def __init__(
        self,
        monotonic: Callable[[], float],
        max_failures: int,
        window: float,
        delay: float,
    ) -> None:
        self._now = monotonic
        self._max_failures = max_failures
        self._window = window
        self._delay = delay
        self._by_address: dict[str, deque[float]] = {}
        self._by_user: dict[str, deque[float]] = {}
        self._by_pair: dict[str, deque[float]] = {}
        self._good: dict[tuple[str, str], float] = {}

    def _recent(self, table: dict[str, deque[float]], key: str) -> int:
        times = table.get(key)
        if not times:
            return 0
        cutoff = self._now() - self._window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del table[key]
            return 0
        return len(times)

    def refused(self, address: str, user: str | None = None) -> bool:
        """
        Is this attempt shut out for now?  An address with too many failures
        is, except for a user who logged in from it within the window; any
        address is for a user whose name failed too often from it.
        """
        if user is not None and self._recent(self._by_pair, _pair(address, user)) >= self._max_failures:
            return True
        if self._recent(self._by_address, address) < self._max_failures:
            return False
        return user is None or not self.recently_succeeded(address, user)

    def recently_succeeded(self, address: str, user: str) -> bool:
        """Did C{address} log in as C{user} within the window?"""
        last_good = self._good.get((address, user))
        return last_good is not None and self._now() - last_good < self._window

    def delay(self, address: str, user: str) -> float:
        """Seconds to wait before checking this attempt (0 for most)."""
        if self.recently_succeeded(address, user):
            return 0.0
        failures = self._recent(self._by_user, user)
        if failures == 0:
            return 0.0
        return min(MAX_DELAY, self._delay * 2 ** (failures - 1))

    def failed(self, address: str, user: str) -> None:
        """
        Count a failure.  Callers count an attempt *before* checking it (and
        L{refund} it when it succeeds), so guesses sent in parallel cannot all
        pass the check before the first failure is known.
        """
        now = self._now()
        for table, key in ((self._by_address, address), (self._by_user, user), (self._by_pair, _pair(address, user))):
            table.setdefault(key, deque(maxlen=max(64, self._max_failures * 4))).append(now)
            if len(table) > MAX_KEYS:
                self._prune(table)

    def refund(self, address: str, user: str) -> None:
        """Take back one failure counted ahead of a check that then succeeded."""
        for table, key in ((self._by_address, address), (self._by_user, user), (self._by_pair, _pair(address, user))):
            times = table.get(key)
            if times:
                times.pop()
                if not times:
                    del table[key]

    def succeeded(self, address: str, user: str) -> None:
        self._good[(address, user)] = self._now()
        if len(self._good) > MAX_KEYS:
            cutoff = self._now() - self._window
            self._good = {k: t for k, t in self._good.items() if t > cutoff}

    def _prune(self, table: dict[str, deque[float]]) -> None:
        for key in list(table):
            self._recent(table, key)
        while len(table) > MAX_KEYS:
            del table[next(iter(table))]


def _pair(address: str, user: str) -> str:
    return f"{address}\0{user}"
