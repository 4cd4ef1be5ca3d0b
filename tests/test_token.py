"""RefreshingToken fetches a token once, reuses it, and refreshes it before it expires."""

from __future__ import annotations

import asyncio

import pytest

from asap.client import RefreshingToken


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.asyncio
async def test_token_is_reused_until_the_refresh_margin_then_refetched() -> None:
    """A 100 s token with a 30 s margin is reused for 70 s, then fetched again."""
    clock = Clock()
    fetched: list[str] = []

    async def fetch() -> tuple[str, float]:
        fetched.append(f"t{len(fetched)}")
        return fetched[-1], 100.0

    token = RefreshingToken(fetch, margin=30.0, clock=clock)
    assert await token() == "t0"
    clock.now = 69.9
    assert await token() == "t0"
    clock.now = 70.0
    assert await token() == "t1"
    assert fetched == ["t0", "t1"]


@pytest.mark.asyncio
async def test_concurrent_callers_share_one_refresh() -> None:
    """Callers arriving while a fetch is in progress wait for it instead of fetching again."""
    gate, started = asyncio.Event(), asyncio.Event()
    calls = 0

    async def fetch() -> tuple[str, float]:
        nonlocal calls
        calls += 1
        started.set()
        await gate.wait()
        return "shared", 60.0

    token = RefreshingToken(fetch, margin=10.0, clock=Clock())
    first = asyncio.create_task(token())
    await started.wait()  # the first caller holds the lock, inside fetch
    others = [asyncio.create_task(token()) for _ in range(4)]  # scheduled before the fetch resumes
    gate.set()
    assert await asyncio.gather(first, *others) == ["shared"] * 5
    assert calls == 1
