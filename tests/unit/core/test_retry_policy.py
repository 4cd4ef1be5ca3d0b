"""Unit tests for asap.client.RetryPolicy.delay: full jitter within an exponential, capped bound."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asap.client import RetryPolicy


class _Extreme(random.Random):
    """A Random whose uniform() always returns one end of the range."""

    def __init__(self, *, high: bool) -> None:
        super().__init__(0)
        self._high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self._high else a


def test_upper_bound_grows_exponentially_then_caps() -> None:
    """The bound doubles from initial_backoff on each attempt and stops at max_backoff."""
    policy = RetryPolicy(initial_backoff=0.05, max_backoff=2.0, multiplier=2.0)
    rng = _Extreme(high=True)
    bounds = [policy.delay(attempt, rng) for attempt in range(1, 9)]
    assert bounds == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])


def test_lower_bound_is_zero() -> None:
    """Full jitter: a delay may be zero."""
    assert RetryPolicy().delay(3, _Extreme(high=False)) == 0.0


@given(
    attempt=st.integers(min_value=1, max_value=5000),
    seed=st.integers(min_value=0, max_value=2**32),
    initial=st.floats(min_value=0.001, max_value=1.0),
    cap=st.floats(min_value=0.001, max_value=30.0),
    multiplier=st.floats(min_value=1.0, max_value=4.0),
)
def test_delay_is_within_bounds(
    attempt: int, seed: int, initial: float, cap: float, multiplier: float
) -> None:
    """Every delay lies in [0, min(max_backoff, initial_backoff * multiplier**(attempt-1))]."""
    policy = RetryPolicy(initial_backoff=initial, max_backoff=cap, multiplier=multiplier)
    delay = policy.delay(attempt, random.Random(seed))  # noqa: S311 - jitter, not secrets
    assert 0.0 <= delay <= cap
    if multiplier ** min(attempt - 1, 50) * initial < cap:
        assert delay <= initial * multiplier ** (attempt - 1) * (1 + 1e-12)


def test_huge_attempt_number_is_capped_not_overflowing() -> None:
    """A policy with very many attempts keeps returning capped delays (no OverflowError)."""
    policy = RetryPolicy(max_attempts=10_000)
    assert policy.delay(9_999, _Extreme(high=True)) == policy.max_backoff
