"""The DedupeStore contract, kept by every store: in memory and in a real Redis.

claim / lookup / complete / abandon, fingerprints, waiting duplicates and takeover after abandon.
Leases that expire when their holder dies are in ``test_leases.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from asap.core.dedupe import (
    FINGERPRINT_BYTES,
    DedupeStore,
    InMemoryDedupeStore,
    Owned,
    Reused,
    Stored,
)
from asap.stores.redis import RedisDedupeStore
from tests.redis_server import RedisServer, unique_prefix


FP = b"f" * FINGERPRINT_BYTES
OTHER = b"g" * FINGERPRINT_BYTES


@pytest_asyncio.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[DedupeStore]:
    if request.param == "memory":
        yield InMemoryDedupeStore()
        return
    redis: RedisServer = request.getfixturevalue("redis_server")
    shared = RedisDedupeStore.from_url(redis.url, prefix=unique_prefix())
    yield shared
    await shared.aclose()


async def _owned(store: DedupeStore, key: str, fingerprint: bytes = FP) -> Owned:
    claim = await store.claim(key, fingerprint)
    assert isinstance(claim, Owned)
    return claim


@pytest.mark.asyncio
async def test_first_claim_owns_then_outcome_is_returned(store: DedupeStore) -> None:
    """The first claim owns the key; after complete() every claim returns the outcome."""
    claim = await _owned(store, "k")
    await store.complete("k", claim, b"outcome")
    assert await store.claim("k", FP) == Stored(b"outcome")
    assert await store.claim("k", FP) == Stored(b"outcome")
    assert await store.lookup("k", FP) == Stored(b"outcome")


@pytest.mark.asyncio
async def test_keys_are_independent(store: DedupeStore) -> None:
    """Completing one key says nothing about another."""
    await store.complete("a", await _owned(store, "a"), b"A")
    await _owned(store, "b")


@pytest.mark.asyncio
async def test_other_fingerprint_is_reused(store: DedupeStore) -> None:
    """The same key for other content is Reused, while claimed and once completed."""
    claim = await _owned(store, "k")
    assert await store.claim("k", OTHER) == Reused()
    await store.complete("k", claim, b"outcome")
    assert await store.claim("k", OTHER) == Reused()
    assert await store.lookup("k", OTHER) == Reused()


@pytest.mark.asyncio
async def test_lookup_neither_claims_nor_waits(store: DedupeStore) -> None:
    """lookup() of an unknown or in-flight key is None and claims nothing."""
    assert await store.lookup("k", FP) is None
    claim = await _owned(store, "k")
    assert await store.lookup("k", FP) is None
    await store.abandon("k", claim)
    await _owned(store, "k")


@pytest.mark.asyncio
async def test_empty_outcome_is_an_outcome(store: DedupeStore) -> None:
    """An empty outcome (a DeliveryResult with nothing set) is stored like any other."""
    await store.complete("k", await _owned(store, "k"), b"")
    assert await store.claim("k", FP) == Stored(b"")


@pytest.mark.asyncio
async def test_concurrent_claim_waits_for_the_outcome(store: DedupeStore) -> None:
    """A claim while the key is being processed waits and returns the outcome."""
    claim = await _owned(store, "k")
    waiter = asyncio.create_task(store.claim("k", FP))
    await asyncio.sleep(0)  # one loop turn: the waiters start and block on the key
    assert not waiter.done()
    await store.complete("k", claim, b"outcome")
    assert await waiter == Stored(b"outcome")


@pytest.mark.asyncio
async def test_abandon_wakes_waiters_and_one_processes(store: DedupeStore) -> None:
    """After abandon() one waiter owns the key and the others wait for its outcome."""
    claim = await _owned(store, "k")
    first = asyncio.create_task(store.claim("k", FP))
    second = asyncio.create_task(store.claim("k", FP))
    await asyncio.sleep(0)  # one loop turn: the waiters start and block on the key
    await store.abandon("k", claim)
    done, pending = await asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1
    winner = done.pop().result()
    assert isinstance(winner, Owned)  # this waiter now owns the key
    (other,) = pending
    await store.complete("k", winner, b"outcome")
    assert await other == Stored(b"outcome")


@pytest.mark.asyncio
async def test_abandon_lets_the_next_claim_process(store: DedupeStore) -> None:
    """An abandoned key is claimed afresh."""
    claim = await _owned(store, "k")
    await store.abandon("k", claim)
    await _owned(store, "k")


@pytest.mark.asyncio
async def test_a_stale_claim_token_cannot_complete_or_abandon(store: DedupeStore) -> None:
    """Once a claim was abandoned and re-claimed, the first holder's complete/abandon do nothing."""
    first = await _owned(store, "k")
    await store.abandon("k", first)
    second = await _owned(store, "k")
    await store.abandon("k", first)
    await store.complete("k", first, b"stale")
    assert await store.lookup("k", FP) is None
    await store.complete("k", second, b"fresh")
    assert await store.claim("k", FP) == Stored(b"fresh")
