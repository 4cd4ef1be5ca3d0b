"""Token-bucket rate limiting per principal, without a clock of its own.

Theory of operation: a :class:`TokenBucket` holds up to ``burst`` tokens and gains ``rate`` tokens
per second; a call costs one token. Tokens are not added by a timer: each :meth:`TokenBucket.try_acquire`
credits the time elapsed since the previous one (``now`` is passed in, from any monotonic clock), so
an idle bucket costs nothing. A bucket left alone for ``burst / rate`` seconds is full again, which is
exactly the state a new bucket starts in, so :class:`RateLimiter` may forget it without changing any
outcome. That is how the limiter keeps one bucket per principal in bounded memory: it forgets idle
buckets first and, only when ``max_principals`` buckets are all active, the least recently used one
(which gives that principal a fresh burst; the price of a memory bound).

Anonymous principals (peer addresses) cost an attacker nothing to rotate, so they live in a table of
their own (``max_anonymous``): rotating addresses can never evict an authenticated principal's
bucket. Nor does it evict other anonymous ones: when that table is full of active buckets, a new
anonymous principal is charged to one shared **overflow** bucket until idle buckets make room, so
an attacker gets at most ``max_anonymous`` fresh bursts, not one per address it can forge.

A refused call fails with RESOURCE_EXHAUSTED (reason ``RATE_LIMITED``) and carries the returned
delay as ``google.rpc.RetryInfo`` (see :class:`asap.errors.RateLimited`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from typing import Final


_EPSILON: Final = 1e-9
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
        max_principals: Buckets of authenticated principals kept at most. Idle (full) buckets are
            dropped first, then the least recently used.
        max_anonymous: Buckets of anonymous principals kept at most, apart from the others; when
            they are all active, new anonymous principals share one overflow bucket.

    Raises:
        ValueError: A negative or non-finite ``rate``, or a ``burst``, ``max_principals`` or
            ``max_anonymous`` below 1.
    """

    __slots__ = (
        "anonymous",
        "buckets",
        "burst",
        "max_anonymous",
        "max_principals",
        "overflow",
        "rate",
    )

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_principals: int = 10_000,
        max_anonymous: int = 10_000,
    ) -> None:
        if not (math.isfinite(rate) and rate >= 0):
            msg = "rate must be 0 or more and finite"
            raise ValueError(msg)
        if not (math.isfinite(burst) and burst >= 1):
            msg = "burst must be at least 1"
            raise ValueError(msg)
        if max_principals < 1 or max_anonymous < 1:
            msg = "max_principals and max_anonymous must be at least 1"
            raise ValueError(msg)
        self.rate = float(rate)
        """Tokens gained per second per principal; 0 when disabled."""
        self.burst = float(burst)
        """Bucket capacity."""
        self.max_principals = max_principals
        """Most buckets kept."""
        self.max_anonymous = max_anonymous
        """Most anonymous buckets kept."""
        self.buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()
        """Buckets by authenticated principal, least recently used first."""
        self.anonymous: OrderedDict[Hashable, TokenBucket] = OrderedDict()
        """Buckets by anonymous principal, least recently used first."""
        self.overflow: TokenBucket | None = None
        """The bucket anonymous principals share while :attr:`anonymous` is full of active ones."""

    @property
    def enabled(self) -> bool:
        """Whether calls are limited at all."""
        return self.rate > 0

    def __len__(self) -> int:
        return len(self.buckets) + len(self.anonymous)

    def try_acquire(
        self, principal: Hashable, now: float, cost: float = 1.0, *, anonymous: bool = False
    ) -> float:
        """Take ``cost`` tokens from ``principal``'s bucket.

        Args:
            principal: Whom the call is charged to (an authenticated identity, or the peer address
                for anonymous callers).
            now: The current time in seconds.
            cost: Tokens to take.
            anonymous: ``principal`` is a peer address, not a verified identity.

        Returns:
            0.0 when granted, else the seconds to wait before retrying (see
            :meth:`TokenBucket.try_acquire`).

        Raises:
            ValueError: ``cost`` is negative or more than ``burst``.
        """
        if not self.enabled:
            return 0.0
        table = self.anonymous if anonymous else self.buckets
        bucket = table.get(principal)
        if bucket is not None:
            table.move_to_end(principal)
        elif anonymous:
            _drop_idle(table, now)
            if len(table) >= self.max_anonymous:
                return self._overflow().try_acquire(now, cost)
            bucket = table[principal] = TokenBucket(self.rate, self.burst)
        else:
            _drop_idle(table, now)
            while len(table) >= self.max_principals:
                table.popitem(last=False)
            bucket = table[principal] = TokenBucket(self.rate, self.burst)
        return bucket.try_acquire(now, cost)

    def prune(self, now: float) -> int:
        """Forget every bucket that is full at ``now``; returns how many were dropped."""
        dropped = 0
        for table in (self.buckets, self.anonymous):
            idle = [key for key, bucket in table.items() if bucket.is_full(now)]
            for key in idle:
                del table[key]
            dropped += len(idle)
        if self.overflow is not None and self.overflow.is_full(now):
            self.overflow = None
        return dropped

    def _overflow(self) -> TokenBucket:
        if self.overflow is None:
            self.overflow = TokenBucket(self.rate, self.burst)
        return self.overflow


def _drop_idle(table: OrderedDict[Hashable, TokenBucket], now: float) -> None:
    # Least recently used first, so the idle (full) buckets sit at the front: dropping them is
    # amortized O(1) per call and never changes an outcome.
    while table:
        key, bucket = next(iter(table.items()))
        if not bucket.is_full(now):
            break
        del table[key]
