"""Token-bucket rate limiting per principal, without a clock of its own.

Theory of operation: a :class:`TokenBucket` holds up to ``burst`` tokens and gains ``rate`` tokens
per second; a call costs one token. Tokens are not added by a timer: each :meth:`TokenBucket.try_acquire`
credits the time elapsed since the previous one (``now`` is passed in, from any monotonic clock), so
an idle bucket costs nothing. A bucket left alone for ``burst / rate`` seconds is full again, which is
exactly the state a new bucket starts in, so :class:`RateLimiter` may forget it without changing any
outcome. That is how the limiter keeps one bucket per principal in bounded memory: it forgets idle
buckets first and, only when ``max_principals`` buckets are all active, the least recently used one
(which gives that principal a fresh burst; the price of a memory bound an attacker cannot exhaust by
rotating principals).

A refused call fails with RESOURCE_EXHAUSTED (reason ``RATE_LIMITED``) and carries the returned
delay as ``google.rpc.RetryInfo`` (see :class:`asap.errors.RateLimited`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable


_EPSILON = 1e-9
"""Tolerance for float rounding when comparing tokens with a cost."""


class TokenBucket:
    """A token bucket: ``burst`` tokens at most, refilled at ``rate`` tokens per second.

    The first :meth:`try_acquire` finds the bucket full.

    Args:
        rate: Tokens gained per second; positive.
        burst: Capacity in tokens; positive.

    Raises:
        ValueError: ``rate`` or ``burst`` is not positive and finite.
    """

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        if not (math.isfinite(rate) and rate > 0):
            msg = "rate must be positive and finite"
            raise ValueError(msg)
        if not (math.isfinite(burst) and burst > 0):
            msg = "burst must be positive and finite"
            raise ValueError(msg)
        self.rate = float(rate)
        """Tokens gained per second."""
        self.burst = float(burst)
        """Capacity in tokens."""
        self.tokens = self.burst
        """Tokens available as of :attr:`last`."""
        self.last: float | None = None
        """When tokens were last credited; ``None`` before the first call."""

    def try_acquire(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens if there are enough.

        Args:
            now: The current time in seconds. A time earlier than a previous call's credits nothing.
            cost: Tokens to take; from 0 up to ``burst``.

        Returns:
            0.0 when the tokens were taken; otherwise the seconds until enough tokens will have
            accumulated (the retry-after delay), and nothing was taken.

        Raises:
            ValueError: ``cost`` is negative or more than ``burst`` (it could never be granted).
        """
        if not 0 <= cost <= self.burst:
            msg = f"cost must be between 0 and burst ({self.burst}), got {cost}"
            raise ValueError(msg)
        self._refill(now)
        if self.tokens + _EPSILON >= cost:
            self.tokens = max(0.0, self.tokens - cost)
            return 0.0
        return (cost - self.tokens) / self.rate

    def is_full(self, now: float) -> bool:
        """Whether the bucket would be full at ``now`` (it then carries no state worth keeping)."""
        if self.last is None:
            return True
        return self.tokens + (now - self.last) * self.rate + _EPSILON >= self.burst

    def _refill(self, now: float) -> None:
        if self.last is None:
            self.last = now
            return
        elapsed = now - self.last
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.last = now


class RateLimiter:
    """One :class:`TokenBucket` per principal, in bounded memory.

    Args:
        rate: Calls per second each principal may make on average; 0 disables the limiter (every
            call is granted and nothing is stored).
        burst: Calls a principal may make back to back.
        max_principals: Buckets kept at most. Idle (full) buckets are dropped first, then the least
            recently used.

    Raises:
        ValueError: A negative or non-finite ``rate``, or a ``burst`` or ``max_principals`` below 1.
    """

    __slots__ = ("buckets", "burst", "max_principals", "rate")

    def __init__(self, rate: float, burst: float, *, max_principals: int = 10_000) -> None:
        if not (math.isfinite(rate) and rate >= 0):
            msg = "rate must be 0 or more and finite"
            raise ValueError(msg)
        if not (math.isfinite(burst) and burst >= 1):
            msg = "burst must be at least 1"
            raise ValueError(msg)
        if max_principals < 1:
            msg = "max_principals must be at least 1"
            raise ValueError(msg)
        self.rate = float(rate)
        """Tokens gained per second per principal; 0 when disabled."""
        self.burst = float(burst)
        """Bucket capacity."""
        self.max_principals = max_principals
        """Most buckets kept."""
        self.buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()
        """Buckets by principal, least recently used first."""

    @property
    def enabled(self) -> bool:
        """Whether calls are limited at all."""
        return self.rate > 0

    def __len__(self) -> int:
        return len(self.buckets)

    def try_acquire(self, principal: Hashable, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens from ``principal``'s bucket.

        Args:
            principal: Whom the call is charged to (an authenticated identity, or the peer address
                for anonymous callers).
            now: The current time in seconds.
            cost: Tokens to take.

        Returns:
            0.0 when granted, else the seconds to wait before retrying (see
            :meth:`TokenBucket.try_acquire`).

        Raises:
            ValueError: ``cost`` is negative or more than ``burst``.
        """
        if not self.enabled:
            return 0.0
        bucket = self.buckets.get(principal)
        if bucket is None:
            self._make_room(now)
            bucket = TokenBucket(self.rate, self.burst)
            self.buckets[principal] = bucket
        else:
            self.buckets.move_to_end(principal)
        return bucket.try_acquire(now, cost)

    def prune(self, now: float) -> int:
        """Forget every bucket that is full at ``now``; returns how many were dropped."""
        idle = [key for key, bucket in self.buckets.items() if bucket.is_full(now)]
        for key in idle:
            del self.buckets[key]
        return len(idle)

    def _make_room(self, now: float) -> None:
        # Least recently used first, so the idle (full) buckets sit at the front: dropping them is
        # amortized O(1) per call and never changes an outcome.
        while self.buckets:
            key, bucket = next(iter(self.buckets.items()))
            if not bucket.is_full(now):
                break
            del self.buckets[key]
        while len(self.buckets) >= self.max_principals:
            self.buckets.popitem(last=False)
