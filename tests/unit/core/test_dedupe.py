"""Unit tests for asap.core.dedupe: keys, fingerprints and InMemoryDedupeStore's bounds and TTL.

The claim/complete/abandon/lookup contract every store keeps (in memory and Redis) is in
``tests/stores/test_store_contract.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING

import pytest

from asap.core.dedupe import (
    ENTRY_OVERHEAD,
    FINGERPRINT_BYTES,
    InMemoryDedupeStore,
    Owned,
    Reused,
    Stored,
    dedupe_key,
    dedupe_key_of,
    fingerprint,
)
from asap.v1 import envelope_pb2


if TYPE_CHECKING:
    from tests.unit.core.conftest import FakeClock


FP = b"f" * FINGERPRINT_BYTES
PINNED_FINGERPRINT = "e2ef4c127ff834244e1a61193aedb0885162515408b4783ce1cfce41d530dd29"
"""fingerprint(_envelope()) since the first release (also before the hash cut fields from bytes)."""


async def _store(store: InMemoryDedupeStore, key: str, outcome: bytes) -> None:
    claim = await store.claim(key, FP)
    assert isinstance(claim, Owned)
    await store.complete(key, claim, outcome)


def _envelope() -> envelope_pb2.Envelope:
    built = envelope_pb2.Envelope(
        id="e-1", sender="urn:asap:agent:a", recipient="urn:asap:agent:b", trace_id="t-1"
    )
    built.task_request.skill_id = "echo"
    built.task_request.input.update({"z": 1, "a": 2})
    built.timestamp.seconds = 1
    built.asap_version = "1.0"
    return built


def test_fingerprint_ignores_volatile_fields_only() -> None:
    """Timestamp, trace_id and asap_version do not change the fingerprint; content does."""
    base = _envelope()
    again = _envelope()
    again.timestamp.seconds = 999
    again.trace_id = "t-2"
    again.asap_version = "1.1"
    assert fingerprint(again) == fingerprint(base)
    assert len(fingerprint(base)) == FINGERPRINT_BYTES
    for change in ("input", "recipient", "requires_ack", "extensions"):
        other = _envelope()
        if change == "input":
            other.task_request.input.update({"z": 2})
        elif change == "recipient":
            other.recipient = "urn:asap:agent:c"
        elif change == "requires_ack":
            other.requires_ack = True
        else:
            other.extensions.update({"x": "y"})
        assert fingerprint(other) != fingerprint(base), change
    assert base.trace_id == "t-1"  # the envelope itself is not modified


def test_fingerprint_leaves_the_envelope_as_it_was() -> None:
    """The volatile fields are cleared only while hashing: the envelope is byte-for-byte unchanged."""
    stamped = _envelope()
    stamped.timestamp.seconds = 0  # present but zero: must stay present
    stamped.asap_version = "1.1"
    unstamped = _envelope()
    unstamped.ClearField("timestamp")
    unstamped.trace_id = ""
    for envelope in (stamped, unstamped):
        before = envelope.SerializeToString()
        had_timestamp = envelope.HasField("timestamp")
        fingerprint(envelope)
        assert envelope.SerializeToString() == before
        assert envelope.HasField("timestamp") is had_timestamp


def _without_volatile_fields(envelope: envelope_pb2.Envelope) -> bytes:
    """The definition the fingerprint keeps: SHA-256 of the cleared copy, serialized deterministically."""
    copy = envelope_pb2.Envelope()
    copy.CopyFrom(envelope)
    copy.ClearField("timestamp")
    copy.ClearField("trace_id")
    copy.ClearField("asap_version")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).digest()


@pytest.mark.parametrize("trace_id", ["", "t", "t" * 200])
@pytest.mark.parametrize("stamped", [False, True])
@pytest.mark.parametrize("version", ["", "1.0"])
@pytest.mark.parametrize("sender_length", [1, 127, 128, 20_000])
def test_fingerprint_is_the_hash_without_the_volatile_fields(
    trace_id: str, stamped: bool, version: str, sender_length: int
) -> None:
    """Cut out of the bytes or cleared on a copy, the hash is the same, whatever the field sizes.

    Long fields take multi-byte length prefixes; an envelope from a newer schema carries unknown
    fields (serialized after the known ones), and they count as content.
    """
    envelope = _envelope()
    envelope.trace_id = trace_id
    envelope.asap_version = version
    envelope.sender = "s" * sender_length
    if not stamped:
        envelope.ClearField("timestamp")
    newer = envelope_pb2.Envelope.FromString(
        envelope.SerializeToString() + b"\x82\x03\x03new" + b"\x50\x01"  # fields 48 and 10
    )
    for each in (envelope, newer):
        assert fingerprint(each) == _without_volatile_fields(each)
    assert fingerprint(newer) != fingerprint(envelope)


def test_fingerprint_is_stable_across_versions() -> None:
    """Pinned: replicas of two releases share a store, so the hash of an envelope never changes."""
    assert fingerprint(_envelope()).hex() == PINNED_FINGERPRINT


def test_key_is_scoped_by_principal_and_sender() -> None:
    """Two principals, or two senders, never share a key for the same id."""
    envelope = _envelope()
    assert dedupe_key("urn:asap:agent:a", envelope) != dedupe_key("urn:asap:agent:b", envelope)
    other = _envelope()
    other.sender = "urn:asap:agent:x"
    assert dedupe_key("p", envelope) != dedupe_key("p", other)
    # The form a delivery uses, from fields it has read already, is the same key.
    assert dedupe_key_of("p", other.sender, other.id) == dedupe_key("p", other)


@pytest.mark.asyncio
async def test_outcome_expires_after_ttl(clock: FakeClock) -> None:
    """An outcome is returned until its TTL passes; then the key is processed again."""
    store = InMemoryDedupeStore(ttl=10.0, clock=clock)
    await _store(store, "k", b"outcome")
    clock.advance(9.999)
    assert await store.claim("k", FP) == Stored(b"outcome")
    clock.advance(0.001)
    assert isinstance(await store.claim("k", FP), Owned)


@pytest.mark.asyncio
async def test_expired_outcomes_are_dropped_when_others_are_stored(clock: FakeClock) -> None:
    """Storing a new outcome drops outcomes whose TTL has passed."""
    store = InMemoryDedupeStore(ttl=10.0, clock=clock)
    for key in ("a", "b"):
        await _store(store, key, key.encode())
    clock.advance(10.0)
    await _store(store, "c", b"c")
    assert len(store) == 1


@pytest.mark.asyncio
async def test_max_entries_evicts_the_oldest_outcome() -> None:
    """Beyond max_entries the least recently stored outcome is forgotten."""
    store = InMemoryDedupeStore(max_entries=2)
    for key in ("a", "b", "c"):
        await _store(store, key, key.encode())
    assert len(store) == 2
    assert await store.claim("c", FP) == Stored(b"c")
    assert await store.claim("b", FP) == Stored(b"b")
    assert isinstance(await store.claim("a", FP), Owned)


@pytest.mark.asyncio
async def test_byte_bound_holds_and_in_window_evictions_are_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever the outcome sizes, the store's bytes stay within max_bytes; early evictions count."""
    outcome = b"x" * 1000
    per_entry = len("k-000") + FINGERPRINT_BYTES + ENTRY_OVERHEAD + len(outcome)
    store = InMemoryDedupeStore(max_bytes=10 * per_entry, replay_window=330.0)
    with caplog.at_level(logging.WARNING, logger="asap.dedupe"):
        for index in range(100):
            await _store(store, f"k-{index:03d}", outcome)
            assert store.size_bytes <= 10 * per_entry
    assert len(store) == 10
    assert store.stats.evicted == 90
    assert store.stats.evicted_in_window == 90
    assert any("replay window" in record.message for record in caplog.records)
    assert sum("replay window" in record.message for record in caplog.records) == 1  # rate-limited
    assert isinstance(await store.claim("k-000", FP), Owned)
    assert await store.claim("k-099", FP) == Stored(outcome)


@pytest.mark.asyncio
async def test_one_huge_outcome_does_not_break_the_bound() -> None:
    """An outcome bigger than the whole bound is dropped at once rather than kept."""
    store = InMemoryDedupeStore(max_bytes=1000)
    await _store(store, "huge", b"x" * 5000)
    assert store.size_bytes <= 1000
    assert len(store) == 0


@pytest.mark.asyncio
async def test_evictions_after_the_window_are_not_counted_as_early(clock: FakeClock) -> None:
    """An outcome older than the replay window may be evicted without a warning."""
    outcome = b"x" * 100
    per_entry = len("k-0") + FINGERPRINT_BYTES + ENTRY_OVERHEAD + len(outcome)
    store = InMemoryDedupeStore(max_bytes=2 * per_entry, replay_window=5.0, clock=clock)
    await _store(store, "k-0", outcome)
    await _store(store, "k-1", outcome)
    clock.advance(6.0)
    await _store(store, "k-2", outcome)
    assert store.stats.evicted == 1
    assert store.stats.evicted_in_window == 0


@pytest.mark.asyncio
async def test_bound_holds_while_an_older_claim_is_in_flight() -> None:
    """A long-running claim does not stop older outcomes behind it from being evicted."""
    store = InMemoryDedupeStore(max_entries=2)
    slow = await store.claim("slow", FP)
    assert isinstance(slow, Owned)
    for key in ("a", "b", "c", "d"):
        await _store(store, key, key.encode())
    assert len(store) == 2
    assert await store.claim("d", FP) == Stored(b"d")
    assert isinstance(await store.claim("a", FP), Owned)
    await store.complete("slow", slow, b"slow")
    assert await store.claim("slow", FP) == Stored(b"slow")


@pytest.mark.asyncio
async def test_expired_outcomes_behind_an_in_flight_claim_are_dropped(clock: FakeClock) -> None:
    """Storing an outcome drops expired ones even when an older claim is still being processed."""
    store = InMemoryDedupeStore(ttl=5.0, clock=clock)
    assert isinstance(await store.claim("slow", FP), Owned)
    for key in ("a", "b"):
        await _store(store, key, key.encode())
    clock.advance(5.0)
    await _store(store, "c", b"c")  # storing an outcome sweeps the expired ones
    assert len(store) == 2  # "slow" (in flight) and "c"


@pytest.mark.asyncio
async def test_waiting_duplicate_with_other_content_is_told_at_once() -> None:
    """A claim for another fingerprint while the key is processed does not wait: Reused."""
    store = InMemoryDedupeStore()
    assert isinstance(await store.claim("k", FP), Owned)
    assert await asyncio.wait_for(store.claim("k", b"g" * FINGERPRINT_BYTES), 1.0) == Reused()


@pytest.mark.parametrize(
    ("max_bytes", "max_entries", "ttl"), [(0, None, 1.0), (1, 0, 1.0), (1, None, 0.0)]
)
def test_invalid_bounds_are_refused(max_bytes: int, max_entries: int | None, ttl: float) -> None:
    """Bounds below 1 or a non-positive ttl is a ValueError."""
    with pytest.raises(ValueError, match="max_bytes"):
        InMemoryDedupeStore(max_bytes=max_bytes, max_entries=max_entries, ttl=ttl)
