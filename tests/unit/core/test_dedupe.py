"""Unit tests for asap.core.dedupe.InMemoryDedupeStore: claim/complete/abandon, TTL, bound."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from asap.core.dedupe import InMemoryDedupeStore


if TYPE_CHECKING:
    from tests.unit.core.conftest import FakeClock


@pytest.mark.asyncio
async def test_first_claim_owns_then_outcome_is_returned() -> None:
    """The first claim owns the key; after complete() every claim returns the outcome."""
    store = InMemoryDedupeStore()
    assert await store.claim("k") is None
    await store.complete("k", b"outcome")
    assert await store.claim("k") == b"outcome"
    assert await store.claim("k") == b"outcome"
    assert len(store) == 1


@pytest.mark.asyncio
async def test_keys_are_independent() -> None:
    """Completing one key says nothing about another."""
    store = InMemoryDedupeStore()
    assert await store.claim("a") is None
    await store.complete("a", b"A")
    assert await store.claim("b") is None


@pytest.mark.asyncio
async def test_outcome_expires_after_ttl(clock: FakeClock) -> None:
    """An outcome is returned until its TTL passes; then the key is processed again."""
    store = InMemoryDedupeStore(ttl=10.0, clock=clock)
    assert await store.claim("k") is None
    await store.complete("k", b"outcome")
    clock.advance(9.999)
    assert await store.claim("k") == b"outcome"
    clock.advance(0.001)
    assert await store.claim("k") is None


@pytest.mark.asyncio
async def test_expired_outcomes_are_dropped_when_others_are_stored(clock: FakeClock) -> None:
    """Storing a new outcome drops outcomes whose TTL has passed."""
    store = InMemoryDedupeStore(ttl=10.0, clock=clock)
    for key in ("a", "b"):
        assert await store.claim(key) is None
        await store.complete(key, key.encode())
    clock.advance(10.0)
    assert await store.claim("c") is None
    await store.complete("c", b"c")
    assert len(store) == 1


@pytest.mark.asyncio
async def test_max_entries_evicts_the_oldest_outcome() -> None:
    """Beyond max_entries the least recently stored outcome is forgotten."""
    store = InMemoryDedupeStore(max_entries=2)
    for key in ("a", "b", "c"):
        assert await store.claim(key) is None
        await store.complete(key, key.encode())
    assert len(store) == 2
    assert await store.claim("c") == b"c"
    assert await store.claim("b") == b"b"
    assert await store.claim("a") is None


@pytest.mark.asyncio
async def test_bound_holds_while_an_older_claim_is_in_flight() -> None:
    """A long-running claim does not stop older outcomes behind it from being evicted."""
    store = InMemoryDedupeStore(max_entries=2)
    assert await store.claim("slow") is None
    for key in ("a", "b", "c", "d"):
        assert await store.claim(key) is None
        await store.complete(key, key.encode())
    assert len(store) == 2
    assert await store.claim("d") == b"d"
    assert await store.claim("a") is None
    await store.complete("slow", b"slow")
    assert await store.claim("slow") == b"slow"


@pytest.mark.asyncio
async def test_expired_outcomes_behind_an_in_flight_claim_are_dropped(clock: FakeClock) -> None:
    """Storing an outcome drops expired ones even when an older claim is still being processed."""
    store = InMemoryDedupeStore(ttl=5.0, clock=clock)
    assert await store.claim("slow") is None
    for key in ("a", "b"):
        assert await store.claim(key) is None
        await store.complete(key, key.encode())
    clock.advance(5.0)
    assert await store.claim("c") is None
    await store.complete("c", b"c")  # storing an outcome sweeps the expired ones
    assert len(store) == 2  # "slow" (in flight) and "c"


@pytest.mark.asyncio
async def test_concurrent_claim_waits_for_the_outcome() -> None:
    """A claim while the key is being processed waits and returns the outcome."""
    store = InMemoryDedupeStore()
    assert await store.claim("k") is None
    waiter = asyncio.create_task(store.claim("k"))
    await asyncio.sleep(0)  # one loop turn: the waiters start and block on the key
    assert not waiter.done()
    await store.complete("k", b"outcome")
    assert await waiter == b"outcome"


@pytest.mark.asyncio
async def test_abandon_wakes_waiters_and_one_processes() -> None:
    """After abandon() one waiter owns the key and the others wait for its outcome."""
    store = InMemoryDedupeStore()
    assert await store.claim("k") is None
    first = asyncio.create_task(store.claim("k"))
    second = asyncio.create_task(store.claim("k"))
    await asyncio.sleep(0)  # one loop turn: the waiters start and block on the key
    await store.abandon("k")
    done, pending = await asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1
    assert done.pop().result() is None  # this waiter now owns the key
    (other,) = pending
    assert not other.done()
    await store.complete("k", b"outcome")
    assert await other == b"outcome"


@pytest.mark.asyncio
async def test_abandon_lets_the_next_claim_process() -> None:
    """An abandoned key is claimed afresh; abandoning an unknown key is harmless."""
    store = InMemoryDedupeStore()
    assert await store.claim("k") is None
    await store.abandon("k")
    await store.abandon("never-claimed")
    assert len(store) == 0
    assert await store.claim("k") is None


@pytest.mark.asyncio
async def test_complete_without_claim_stores_the_outcome() -> None:
    """complete() on an unclaimed key stores it (a shared store may see that after eviction)."""
    store = InMemoryDedupeStore()
    await store.complete("k", b"x")
    assert await store.claim("k") == b"x"


@pytest.mark.parametrize(("max_entries", "ttl"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_invalid_bounds_are_refused(max_entries: int, ttl: float) -> None:
    """max_entries below 1 or a non-positive ttl is a ValueError."""
    with pytest.raises(ValueError, match="max_entries"):
        InMemoryDedupeStore(max_entries=max_entries, ttl=ttl)
