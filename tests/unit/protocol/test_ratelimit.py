"""Unit tests for asap.protocol.ratelimit: token buckets and the per-principal limiter."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asap.protocol.ratelimit import RateLimiter, TokenBucket


def test_first_call_finds_bucket_full() -> None:
    """A new bucket grants ``burst`` calls at once."""
    bucket = TokenBucket(rate=1.0, burst=3)
    assert [bucket.try_acquire(10.0) for _ in range(3)] == [0.0, 0.0, 0.0]


def test_empty_bucket_returns_retry_after() -> None:
    """An empty bucket refuses and returns the time until one token accrues."""
    bucket = TokenBucket(rate=2.0, burst=1)
    assert bucket.try_acquire(0.0) == 0.0
    assert bucket.try_acquire(0.0) == pytest.approx(0.5)


def test_refused_call_takes_nothing() -> None:
    """A refused call leaves the tokens as they were."""
    bucket = TokenBucket(rate=1.0, burst=2)
    bucket.try_acquire(0.0, cost=2.0)
    bucket.try_acquire(0.5)
    assert bucket.try_acquire(1.0) == 0.0


def test_refill_over_time() -> None:
    """Tokens accrue at ``rate`` per second."""
    bucket = TokenBucket(rate=10.0, burst=1)
    bucket.try_acquire(0.0)
    assert bucket.try_acquire(0.05) == pytest.approx(0.05)
    assert bucket.try_acquire(0.1) == 0.0


def test_refill_is_capped_at_burst() -> None:
    """A long idle period refills to ``burst`` and no further."""
    bucket = TokenBucket(rate=1.0, burst=2)
    bucket.try_acquire(0.0, cost=2.0)
    assert [bucket.try_acquire(1000.0) for _ in range(3)][:2] == [0.0, 0.0]
    assert bucket.try_acquire(1000.0) == pytest.approx(1.0)


def test_clock_going_backwards_credits_nothing() -> None:
    """A time earlier than the last one adds no tokens."""
    bucket = TokenBucket(rate=1.0, burst=1)
    bucket.try_acquire(10.0)
    assert bucket.try_acquire(5.0) == pytest.approx(1.0)
    assert bucket.try_acquire(11.0) == 0.0


def test_partial_tokens_shorten_retry_after() -> None:
    """Retry-after counts only the missing fraction of the cost."""
    bucket = TokenBucket(rate=1.0, burst=2)
    bucket.try_acquire(0.0, cost=2.0)
    assert bucket.try_acquire(0.25, cost=1.0) == pytest.approx(0.75)


def test_zero_cost_is_always_granted() -> None:
    """A zero-cost acquire succeeds even on an empty bucket."""
    bucket = TokenBucket(rate=1.0, burst=1)
    bucket.try_acquire(0.0)
    assert bucket.try_acquire(0.0, cost=0.0) == 0.0


@pytest.mark.parametrize("cost", [-1.0, 3.0])
def test_impossible_cost_raises(cost: float) -> None:
    """A negative cost or one above the burst raises ValueError."""
    with pytest.raises(ValueError, match="cost"):
        TokenBucket(rate=1.0, burst=2).try_acquire(0.0, cost)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (math.inf, 1), (1.0, 0)])
def test_bucket_rejects_bad_parameters(rate: float, burst: float) -> None:
    """A non-positive or infinite rate or burst raises ValueError."""
    with pytest.raises(ValueError, match="must be"):
        TokenBucket(rate, burst)


def test_is_full() -> None:
    """A bucket is full when new, and again once idle for burst / rate seconds."""
    bucket = TokenBucket(rate=2.0, burst=4)
    assert bucket.is_full(0.0)
    bucket.try_acquire(0.0, cost=4.0)
    assert not bucket.is_full(1.0)
    assert bucket.is_full(2.0)


@given(
    times=st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=50),
    rate=st.floats(min_value=0.01, max_value=1e4),
    burst=st.integers(min_value=1, max_value=1000),
)
def test_bucket_invariants(times: list[float], rate: float, burst: int) -> None:
    """Tokens stay within [0, burst] and retry-after is never negative, whatever the clock does."""
    bucket = TokenBucket(rate, burst)
    for now in times:
        assert bucket.try_acquire(now) >= 0.0
        assert 0.0 <= bucket.tokens <= burst


def test_limiter_keeps_principals_apart() -> None:
    """Each principal has its own bucket."""
    limiter = RateLimiter(rate=1.0, burst=1)
    assert limiter.try_acquire("alice", 0.0) == 0.0
    assert limiter.try_acquire("alice", 0.0) > 0.0
    assert limiter.try_acquire("bob", 0.0) == 0.0


def test_zero_rate_disables_limiter() -> None:
    """A limiter with rate 0 grants everything and stores nothing."""
    limiter = RateLimiter(rate=0.0, burst=1)
    assert not limiter.enabled
    assert all(limiter.try_acquire("alice", 0.0) == 0.0 for _ in range(10))
    assert len(limiter) == 0


def test_limiter_memory_is_bounded() -> None:
    """No more than ``max_principals`` buckets are kept."""
    limiter = RateLimiter(rate=1.0, burst=5, max_principals=3)
    for index in range(100):
        limiter.try_acquire(f"p{index}", 0.0)
    assert len(limiter) == 3


def test_least_recently_used_is_evicted() -> None:
    """At capacity, the least recently used active bucket is forgotten first."""
    limiter = RateLimiter(rate=1.0, burst=1, max_principals=2)
    limiter.try_acquire("a", 0.0)
    limiter.try_acquire("b", 0.0)
    limiter.try_acquire("a", 0.0)
    limiter.try_acquire("c", 0.0)
    assert set(limiter.buckets) == {"a", "c"}


def test_idle_buckets_are_dropped_before_active_ones() -> None:
    """Buckets that are full again are dropped first; they carry no state."""
    limiter = RateLimiter(rate=1.0, burst=1, max_principals=10)
    limiter.try_acquire("idle", 0.0)
    limiter.try_acquire("busy", 5.0)
    limiter.try_acquire("new", 5.5)
    assert set(limiter.buckets) == {"busy", "new"}
    assert limiter.try_acquire("busy", 5.5) == pytest.approx(0.5)


def test_forgetting_an_idle_bucket_changes_nothing() -> None:
    """A principal whose idle bucket was dropped gets the same answers as if it was kept."""
    limiter = RateLimiter(rate=1.0, burst=2, max_principals=1)
    limiter.try_acquire("a", 0.0)
    limiter.try_acquire("b", 10.0)
    assert [limiter.try_acquire("a", 10.0) for _ in range(3)][:2] == [0.0, 0.0]


def test_prune() -> None:
    """prune() drops every full bucket and reports how many."""
    limiter = RateLimiter(rate=1.0, burst=1)
    limiter.try_acquire("a", 0.0)
    limiter.try_acquire("b", 0.5)
    assert limiter.prune(1.0) == 1
    assert set(limiter.buckets) == {"b"}


@pytest.mark.parametrize(
    ("rate", "burst", "max_principals"),
    [(-1.0, 1, 1), (math.nan, 1, 1), (1.0, 0, 1), (1.0, 1, 0)],
)
def test_limiter_rejects_bad_parameters(rate: float, burst: float, max_principals: int) -> None:
    """Bad limiter parameters raise ValueError."""
    with pytest.raises(ValueError, match="must be"):
        RateLimiter(rate, burst, max_principals=max_principals)


# --- anonymous principals: their own bounded table and one overflow bucket ----------------------


def test_rotating_anonymous_principals_never_evict_authenticated_ones() -> None:
    """However many anonymous peers appear, an authenticated principal keeps its (empty) bucket."""
    limiter = RateLimiter(rate=1.0, burst=1, max_principals=2, max_anonymous=4)
    assert limiter.try_acquire("urn:alice", 0.0) == 0.0
    for index in range(10_000):
        limiter.try_acquire(f"peer:10.0.{index // 256}.{index % 256}", 0.0, anonymous=True)
    assert limiter.try_acquire("urn:alice", 0.0) > 0.0
    assert set(limiter.buckets) == {"urn:alice"}


def test_anonymous_table_is_bounded() -> None:
    """At most ``max_anonymous`` anonymous buckets are kept, whatever the rotation."""
    limiter = RateLimiter(rate=1.0, burst=5, max_anonymous=4)
    for index in range(1000):
        limiter.try_acquire(f"peer:{index}", 0.0, anonymous=True)
        assert len(limiter.anonymous) <= 4
    assert len(limiter.anonymous) == 4


def test_rotating_anonymous_principals_do_not_reset_active_ones() -> None:
    """A full table of active anonymous buckets is kept: an active peer's bucket stays empty."""
    limiter = RateLimiter(rate=1.0, burst=1, max_anonymous=2)
    assert limiter.try_acquire("peer:victim", 0.0, anonymous=True) == 0.0
    assert limiter.try_acquire("peer:other", 0.0, anonymous=True) == 0.0
    for index in range(100):
        limiter.try_acquire(f"peer:rotating-{index}", 0.0, anonymous=True)
    assert set(limiter.anonymous) == {"peer:victim", "peer:other"}
    assert limiter.try_acquire("peer:victim", 0.0, anonymous=True) > 0.0


def test_new_anonymous_principals_share_the_overflow_bucket_when_full() -> None:
    """Past the table, every new anonymous principal draws on one shared bucket: no fresh bursts."""
    limiter = RateLimiter(rate=1.0, burst=3, max_anonymous=1)
    limiter.try_acquire("peer:first", 0.0, anonymous=True)
    granted = [
        limiter.try_acquire(f"peer:rotating-{index}", 0.0, anonymous=True) == 0.0
        for index in range(100)
    ]
    assert granted.count(True) == 3  # one burst for all of them, not one each
    assert limiter.try_acquire("peer:late", 0.0, anonymous=True) == pytest.approx(1.0)


def test_idle_anonymous_buckets_make_room_again() -> None:
    """Once the anonymous buckets are full again (idle), new peers get buckets of their own."""
    limiter = RateLimiter(rate=1.0, burst=1, max_anonymous=1)
    limiter.try_acquire("peer:a", 0.0, anonymous=True)
    assert limiter.try_acquire("peer:b", 0.0, anonymous=True) == 0.0  # the overflow's burst
    assert limiter.try_acquire("peer:c", 0.0, anonymous=True) > 0.0
    assert limiter.try_acquire("peer:c", 1.0, anonymous=True) == 0.0  # peer:a is idle again
    assert set(limiter.anonymous) == {"peer:c"}


def test_prune_drops_idle_anonymous_and_overflow_buckets() -> None:
    """prune() forgets idle buckets in both tables and an idle overflow bucket."""
    limiter = RateLimiter(rate=1.0, burst=1, max_anonymous=1)
    limiter.try_acquire("urn:a", 0.0)
    limiter.try_acquire("peer:a", 0.0, anonymous=True)
    limiter.try_acquire("peer:b", 0.0, anonymous=True)
    assert limiter.overflow is not None
    assert limiter.prune(10.0) == 2
    assert len(limiter) == 0
    assert limiter.overflow is None
