"""Deadlines of many calls kept in one heap, so one timer serves a whole connection.

A per-call timer (``asyncio.timeout_at``) costs a timer handle, a cancellation scope and a heap
push and pop on the event loop for every call, also for the many that finish long before their
deadline. Here a call is added only if it is still running when it would need a timer, and the I/O
layer keeps one loop timer at :meth:`DeadlineQueue.next_deadline`; when it fires,
:meth:`DeadlineQueue.expired` returns the calls whose time is up. Removing a finished call is O(1)
(it is skipped lazily when it reaches the top, and the heap is rebuilt from the live entries
whenever stale ones outnumber them, so its size stays within twice the calls tracked).
"""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, TypeVar


K = TypeVar("K")


class DeadlineQueue(Generic[K]):
    """Calls (any hashable key) by deadline, earliest first; no clocks or timers of its own."""

    __slots__ = ("_heap", "_live", "_order")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._live: dict[K, float] = {}
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def add(self, key: K, deadline: float) -> bool:
        """Track ``key`` until ``deadline``.

        Returns:
            ``True`` if this is now the earliest deadline (re-arm the timer).
        """
        self._live[key] = deadline
        heapq.heappush(self._heap, (deadline, next(self._order), key))
        self._trim()
        return self._heap[0][2] is key and self._heap[0][0] == deadline

    def discard(self, key: K) -> None:
        """Stop tracking ``key`` (it finished); a no-op if it is not tracked."""
        self._live.pop(key, None)

    def next_deadline(self) -> float | None:
        """The earliest deadline still tracked, or ``None``."""
        self._trim()
        return self._heap[0][0] if self._heap else None

    def expired(self, now: float) -> list[K]:
        """Remove and return every key whose deadline is at or before ``now``, earliest first."""
        out: list[K] = []
        heap, live = self._heap, self._live
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            if live.get(key) == deadline:
                del live[key]
                out.append(key)
        self._trim()
        return out

    def _trim(self) -> None:
        """Drop finished entries from the top; rebuild when stale entries outnumber live ones."""
        heap, live = self._heap, self._live
        if len(heap) > 2 * len(live) + 64:
            order = self._order
            heap[:] = [(deadline, next(order), key) for key, deadline in live.items()]
            heapq.heapify(heap)
        while heap and live.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
