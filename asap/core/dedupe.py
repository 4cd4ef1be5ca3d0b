"""Idempotent delivery: remember the outcome of each envelope id for a bounded time.

The envelope id (scoped by sender) is the idempotency key. The first arrival *claims* the key and
processes the envelope; later arrivals of the same key get the stored outcome, and an arrival while
the first is still processing waits for it instead of running the handler a second time. An outcome
that should not be remembered (a transient failure) is *abandoned*, so a retry processes again.

Outcomes are opaque bytes (a serialized ``DeliveryResult``) so a shared store (Redis, a database)
can implement :class:`DedupeStore` for several replicas.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from asap.core import probes


class DedupeStore(Protocol):
    """Storage for delivery outcomes. Implementations must be safe for concurrent use."""

    async def claim(self, key: str) -> bytes | None:
        """Return the stored outcome of ``key``, or None when the caller now owns processing it.

        When another caller is processing ``key``, wait for it to complete or abandon the key.
        """
        ...

    async def complete(self, key: str, outcome: bytes) -> None:
        """Store the outcome of a claimed key and wake its waiters."""
        ...

    async def abandon(self, key: str) -> None:
        """Release a claimed key without an outcome; the next claim processes it again."""
        ...


@dataclass(slots=True)
class _Entry:
    outcome: bytes | None = None
    expires_at: float = float("inf")
    done: bool = False
    wakeup: asyncio.Event | None = None
    """Created only when a second arrival waits (the rare case), so a claim allocates no Event."""

    def finish(self) -> None:
        self.done = True
        if self.wakeup is not None:
            self.wakeup.set()


class InMemoryDedupeStore:
    """A bounded in-process :class:`DedupeStore` (least recently stored evicted first).

    Args:
        max_entries: How many outcomes to keep at most.
        ttl: How long an outcome is kept, in seconds.
        clock: Monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        ttl: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or ttl <= 0:
            message = "max_entries must be >= 1 and ttl > 0"
            raise ValueError(message)
        self._max_entries = max_entries
        self._ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def claim(self, key: str) -> bytes | None:
        """See :meth:`DedupeStore.claim`."""
        while True:
            entry = self._entries.get(key)
            if entry is not None and entry.done and entry.expires_at <= self._clock():
                del self._entries[key]
                entry = None
            if entry is None:
                self._entries[key] = _Entry()
                return None
            if entry.done:
                return entry.outcome
            if entry.wakeup is None:
                entry.wakeup = asyncio.Event()
            await entry.wakeup.wait()
            if entry.outcome is not None:
                return entry.outcome
            # Abandoned: loop and claim it ourselves (unless another waiter got there first).

    async def complete(self, key: str, outcome: bytes) -> None:
        """See :meth:`DedupeStore.complete`."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        else:
            self._entries.move_to_end(key)
        entry.outcome = outcome
        entry.expires_at = now + self._ttl
        entry.finish()
        self._evict(now)

    async def abandon(self, key: str) -> None:
        """See :meth:`DedupeStore.abandon`."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            entry.finish()

    def _evict(self, now: float) -> None:
        """Drop expired outcomes from the old end, then the oldest outcomes beyond the bound.

        Keys still being processed are skipped, not evicted (their waiters need them) and do not
        stop the scan: a long-running claim must not pin every outcome stored after it.
        """
        doomed: list[str] = []
        for key, entry in self._entries.items():
            if not entry.done:
                continue
            if entry.expires_at <= now or len(self._entries) - len(doomed) > self._max_entries:
                doomed.append(key)
                continue
            break
        for key in doomed:
            del self._entries[key]
        probes.dedupe_evicted(len(doomed))
