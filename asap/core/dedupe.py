"""Idempotent delivery: remember the outcome of each envelope id for a bounded time.

The envelope id, scoped by the caller (see :func:`dedupe_key`), is the idempotency key. The first
arrival *claims* the key and processes the envelope; later arrivals of the same key with the same
content (the same :func:`fingerprint`) get the stored outcome, and an arrival while the first is
still processing waits for it instead of running the handler a second time. An arrival of the same
key with *different* content is told so (:class:`Reused`). An outcome that should not be
remembered (a transient failure) is *abandoned*, so a retry processes again.

Claims are *leases*: a shared store (:class:`~asap.stores.redis.RedisDedupeStore`) keeps each claim
only while the process holding it renews it, so when that process dies its claims expire and a
waiting duplicate takes the key over and processes the envelope. In :class:`InMemoryDedupeStore`
the holder and the store are the same process, so a claim lasts until it is completed or abandoned.

Outcomes are opaque bytes (a serialized ``DeliveryResult``) so a shared store can implement
:class:`DedupeStore` for several replicas.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from mypy_extensions import mypyc_attr

from asap.core import probes
from asap.protocol.pbmethods import serialize
from asap.v1 import envelope_pb2


_log = logging.getLogger("asap.dedupe")

FINGERPRINT_BYTES: Final = 32
"""Length of a :func:`fingerprint` (SHA-256)."""


def dedupe_key(principal: str, envelope: envelope_pb2.Envelope) -> str:
    """The idempotency key of an envelope: who sent it (authenticated), its sender and its id.

    ``principal`` is the authenticated identity's subject, or ``peer:<address>`` for an anonymous
    caller (:attr:`~asap.core.context.CallContext.principal`), so one caller can never be answered
    with the stored outcome of another's envelope, whatever ``sender`` either declares.
    """
    return dedupe_key_of(principal, envelope.sender, envelope.id)


def dedupe_key_of(principal: str, sender: str, envelope_id: str) -> str:
    """:func:`dedupe_key` from the envelope's sender and id, already read."""
    return f"{principal}\x00{sender}\x00{envelope_id}"


_VOLATILE_TAGS: Final = frozenset({0x12, 0x1A, 0x3A})
"""Envelope fields a retransmission may change: asap_version (2), timestamp (3), trace_id (7)."""
_LAST_HEADER_FIELD: Final = 7
"""Fields 1-7 of Envelope are all length-delimited; the scan stops at the first field after them."""


def fingerprint(envelope: envelope_pb2.Envelope) -> bytes:
    """A hash of what an envelope asks for: the same for a retransmission, different for new content.

    The volatile fields a retransmission may legitimately change are left out: ``timestamp`` (a
    caller re-sending after a restart stamps it anew), ``trace_id`` (tracing may start a new trace
    per attempt) and ``asap_version`` (a property of the sending library, not of the request).
    Everything else counts: id, sender, recipient, correlation_id, requires_ack, extensions and the
    payload, serialized deterministically.

    The volatile fields are cut out of the serialized bytes rather than cleared on the message
    (clearing and restoring them cost more than hashing): the deterministic serialization writes
    fields in number order, each on its own, so the bytes hashed are exactly those of the envelope
    without them.
    """
    data = serialize(envelope, deterministic=True)
    digest = hashlib.sha256()
    kept = 0  # data[kept:pos] is hashed once a volatile field (or the end) follows it
    pos = 0
    size = len(data)
    while pos < size:
        field_start = pos
        tag = data[pos]
        if tag >> 3 > _LAST_HEADER_FIELD:  # a multi-byte tag (field 16 and up) has bit 7 set
            break
        length = 0
        shift = 0
        pos += 1
        while True:
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        end = pos + length
        if tag in _VOLATILE_TAGS:
            if field_start > kept:
                digest.update(data[kept:field_start])
            kept = end
        pos = end
    digest.update(data[kept:] if kept else data)
    return digest.digest()


@dataclass(slots=True, init=False)
class Owned:
    """The caller now owns processing the key; pass this to complete() or abandon()."""

    token: Final[bytes]
    """Identifies this claim (a shared store refuses a complete with a token that lost the lease)."""

    def __init__(self, token: bytes) -> None:
        self.token = token


@dataclass(slots=True, init=False)
class Stored:
    """The key's stored outcome."""

    outcome: Final[bytes]

    def __init__(self, outcome: bytes) -> None:
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class Reused:
    """The key is claimed or completed for an envelope with another fingerprint."""


ClaimResult = Owned | Stored | Reused


class DedupeStore(Protocol):
    """Storage for delivery outcomes. Implementations must be safe for concurrent use.

    Failures to reach the storage raise :class:`~asap.errors.StoreUnavailable` (UNAVAILABLE).
    """

    async def claim(self, key: str, fingerprint: bytes) -> ClaimResult:
        """Claim ``key`` for an envelope with ``fingerprint``.

        Returns :class:`Owned` when the caller now processes it, :class:`Stored` with the outcome
        when it was processed for the same fingerprint, :class:`Reused` when the key belongs to
        another fingerprint. When another holder is processing ``key`` for the same fingerprint,
        wait until it completes or abandons the key or its lease expires (then take it over).
        """
        ...

    async def lookup(self, key: str, fingerprint: bytes) -> Stored | Reused | None:
        """The stored outcome of ``key`` (or Reused), without claiming or waiting; None if none."""
        ...

    async def complete(self, key: str, claim: Owned, outcome: bytes) -> None:
        """Store the outcome of a claimed key and wake its waiters."""
        ...

    async def abandon(self, key: str, claim: Owned) -> None:
        """Release a claimed key without an outcome; the next claim processes it again."""
        ...


WARNING_INTERVAL: Final = 10.0
"""Seconds between two warnings about evictions inside the replay window (all are counted)."""
ENTRY_OVERHEAD: Final = 160
"""Bytes charged per entry on top of its key, fingerprint and outcome (the Python objects)."""


class _Entry:
    __slots__ = (
        "done",
        "expires_at",
        "fingerprint",
        "outcome",
        "size",
        "stored_at",
        "token",
        "wakeup",
    )

    def __init__(self, fingerprint: bytes, size: int, token: bytes = b"") -> None:
        self.fingerprint = fingerprint
        self.size = size
        self.token = token
        self.outcome: bytes | None = None
        self.stored_at = 0.0
        self.expires_at = float("inf")
        self.done = False
        self.wakeup: asyncio.Event | None = None
        """Created only when a second arrival waits (the rare case), so a claim allocates no Event."""

    def finish(self) -> None:
        self.done = True
        if self.wakeup is not None:
            self.wakeup.set()


@dataclass(slots=True)
class DedupeStats:
    """Counters of an :class:`InMemoryDedupeStore`."""

    evicted: int = 0
    """Outcomes dropped to keep the store within its bound (expired ones not counted)."""
    evicted_in_window: int = 0
    """Of those, outcomes dropped before the replay window passed: a duplicate could run again."""


@mypyc_attr(allow_interpreted_subclasses=True)
class InMemoryDedupeStore:
    """A bounded in-process :class:`DedupeStore` (least recently stored evicted first).

    The bound is in bytes (each entry costs its key, fingerprint and outcome plus
    :data:`ENTRY_OVERHEAD`), and optionally in entries. An outcome evicted before ``replay_window``
    seconds have passed since it was stored is logged and counted (:attr:`stats`): a retransmission
    within the validation window could then run the handler again, so size the store for the peak
    rate times the window.

    Args:
        max_bytes: How many bytes the stored entries may take at most.
        max_entries: How many entries to keep at most (None: bounded by bytes only).
        ttl: How long an outcome is kept, in seconds.
        replay_window: How long a retransmission can still pass validation (the timestamp window:
            ``max_age + future_skew``); evictions younger than this are logged and counted.
        clock: Monotonic clock, injectable for tests.
    """

    eager_safe = True
    """Claims, outcomes and releases never suspend except for a duplicate waiting on its first
    arrival, so calls may run eagerly through it (see :func:`asap.core.tasks.start_eagerly`)."""

    def __init__(
        self,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        max_entries: int | None = None,
        ttl: float = 600.0,
        replay_window: float = 330.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 1 or (max_entries is not None and max_entries < 1) or ttl <= 0:
            message = "max_bytes and max_entries must be >= 1 and ttl > 0"
            raise ValueError(message)
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._ttl = ttl
        self._replay_window = replay_window
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._claims = 0
        self._next_warning = float("-inf")
        self.stats = DedupeStats()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """Bytes the entries take, as charged against ``max_bytes``."""
        return self._bytes

    def _fresh(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.done and entry.expires_at <= self._clock():
            self._drop(key, entry)
            return None
        return entry

    async def claim(self, key: str, fingerprint: bytes) -> ClaimResult:
        """See :meth:`DedupeStore.claim`."""
        while True:
            entry = self._fresh(key)
            if entry is None:
                # Tokens only tell this store's claims apart: a counter does, with no system call.
                self._claims += 1
                token = self._claims.to_bytes(8, "little")
                entry = _Entry(fingerprint, len(key) + len(fingerprint) + ENTRY_OVERHEAD, token)
                self._entries[key] = entry
                self._bytes += entry.size
                return Owned(token)
            if entry.fingerprint != fingerprint:
                return Reused()
            if entry.done and entry.outcome is not None:
                return Stored(entry.outcome)
            if entry.wakeup is None:
                entry.wakeup = asyncio.Event()
            await entry.wakeup.wait()
            if entry.outcome is not None:
                return Stored(entry.outcome)
            # Abandoned: loop and claim it ourselves (unless another waiter got there first).

    async def lookup(self, key: str, fingerprint: bytes) -> Stored | Reused | None:
        """See :meth:`DedupeStore.lookup`."""
        entry = self._fresh(key)
        if entry is None or not entry.done or entry.outcome is None:
            return None
        if entry.fingerprint != fingerprint:
            return Reused()
        return Stored(entry.outcome)

    async def complete(self, key: str, claim: Owned, outcome: bytes) -> None:
        """See :meth:`DedupeStore.complete`."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is None or entry.done or entry.token != claim.token:
            return  # not this claim's any more (abandoned, re-claimed): nothing to complete
        self._entries.move_to_end(key)
        entry.outcome = outcome
        entry.stored_at = now
        entry.expires_at = now + self._ttl
        self._bytes += len(outcome)
        entry.size += len(outcome)
        entry.finish()
        self._evict(now)

    async def abandon(self, key: str, claim: Owned) -> None:
        """See :meth:`DedupeStore.abandon`."""
        entry = self._entries.get(key)
        if entry is not None and not entry.done and entry.token == claim.token:
            self._drop(key, entry)
            entry.finish()

    def _drop(self, key: str, entry: _Entry) -> None:
        del self._entries[key]
        self._bytes -= entry.size

    def _over(self, doomed: int) -> bool:
        if self._bytes > self._max_bytes:
            return True
        return self._max_entries is not None and len(self._entries) - doomed > self._max_entries

    def _evict(self, now: float) -> None:
        """Drop expired outcomes from the old end, then the oldest outcomes beyond the bounds.

        Keys still being processed are skipped, not evicted (their waiters need them) and do not
        stop the scan: a long-running claim must not pin every outcome stored after it.
        """
        doomed: list[tuple[str, _Entry]] = []
        for key, entry in self._entries.items():
            if not entry.done:
                continue
            if entry.expires_at <= now:
                doomed.append((key, entry))
                self._bytes -= entry.size
                entry.size = 0
                continue
            if not self._over(len(doomed)):
                break
            doomed.append((key, entry))
            self._bytes -= entry.size  # counted now so _over() sees the bound being restored
            entry.size = 0
            self.stats.evicted += 1
            if now - entry.stored_at < self._replay_window:
                self.stats.evicted_in_window += 1
                if now >= self._next_warning:
                    self._next_warning = now + WARNING_INTERVAL
                    _log.warning(
                        "dedupe store full: evicted an outcome %.1f s old, inside the %.0f s "
                        "replay window (a retransmission of it would run its handler again); "
                        "%d such evictions so far; raise max_bytes",
                        now - entry.stored_at,
                        self._replay_window,
                        self.stats.evicted_in_window,
                    )
        for key, entry in doomed:
            self._drop(key, entry)
        if doomed:
            probes.dedupe_evicted(len(doomed))
