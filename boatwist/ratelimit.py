"""
One allowance per user for everything they send: chat messages and operations.

C{[chat] rate_messages} per C{rate_period} seconds, as a token bucket per
user, shared by all their connections and front ends (the chat port, the
browser, the API, MQTT): opening a second connection does not double the
allowance, and a script hammering a relay is held to the same pace as one
flooding the room.  Time comes from the injected clock; a wall clock
stepped back never drains a bucket.  At most C{MAX_USERS} buckets are kept
(the oldest full ones go first), so memory is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

__all__ = ["OverRate", "TokenBuckets"]

#: Buckets kept at most.
MAX_USERS = 10000


class OverRate(Exception):
    """Over the rate: C{retry_after} seconds until one more is allowed."""

    def __init__(self, retry_after: float, count: int, period: float) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after
        self.count = count
        self.period = period

    def __str__(self) -> str:
        return f"slow down: at most {self.count} per {self.period:g} s; try again in {self.retry_after:.1f} s"


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class TokenBuckets:
    def __init__(self, clock: IReactorTime, count: int, period: float) -> None:
        self._clock = clock
        self.count = count
        self.period = period
        self._buckets: dict[str, _Bucket] = {}

    def spend(self, user: str) -> None:
        """Take one from C{user}'s bucket, or raise L{OverRate} (nothing taken)."""
        capacity = float(self.count)
        rate = capacity / self.period
        now = self._clock.seconds()
        bucket = self._buckets.get(user)
        if bucket is None:
            if len(self._buckets) >= MAX_USERS:
                self._forget_full(now, rate)
            bucket = self._buckets[user] = _Bucket(capacity, now)
        # A wall clock stepped back (reactor time, twisted #2424) must not
        # drain the bucket: elapsed time is never negative.
        bucket.tokens = min(capacity, bucket.tokens + max(0.0, now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens < 1.0 - 1e-9:
            raise OverRate((1.0 - bucket.tokens) / rate, self.count, self.period)
        bucket.tokens = max(0.0, bucket.tokens - 1.0)

    def _forget_full(self, now: float, rate: float) -> None:
        """Drop the buckets that have refilled (they hold nothing worth remembering)."""
        for user, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.stamp) * rate >= self.count:
                del self._buckets[user]
        while len(self._buckets) >= MAX_USERS:
            del self._buckets[next(iter(self._buckets))]
