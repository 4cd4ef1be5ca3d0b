"""Deadlines of many calls kept in one structure, so one timer serves a whole connection.

A per-call timer (``asyncio.timeout_at``) costs a timer handle, a cancellation scope and a heap
push and pop on the event loop for every call, also for the many that finish long before their
deadline. Here a call is added only if it is still running when it would need a timer, and the I/O
layer keeps one loop timer at :meth:`DeadlineQueue.next_deadline`; when it fires,
:meth:`DeadlineQueue.expired` returns the calls whose time is up.

Two lanes. The calls of one connection mostly share one timeout (a client's default), so their
deadlines arrive in order: those go to an insertion-ordered dict, whose first entry is its earliest
deadline, and adding or removing one is a dict operation with no comparison of heap entries (the
heap's push and lazy pop cost a bridge client about 5,000 instructions per call). A deadline
earlier than the last one in that lane goes to a heap instead. Removing a finished call is O(1) in
either lane (in the heap it is skipped lazily when it reaches the top, and the heap is rebuilt from
its live entries whenever stale ones outnumber them, so its size stays within twice the calls it
tracks; the dict compacts itself as it grows).
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Generic, TypeVar


K = TypeVar("K")


class DeadlineQueue(Generic[K]):
    """Calls (any hashable key) by deadline, earliest first; no clocks or timers of its own."""

    __slots__ = ("_heap", "_in_order", "_last", "_live", "_order")

    def __init__(self) -> None:
        self._in_order: dict[K, float] = {}
        """Keys whose deadlines arrived in order: insertion order is deadline order."""
        self._last = -math.inf
        """The latest deadline in ``_in_order`` (any deadline is in order once it is empty)."""
        self._heap: list[tuple[float, int, K]] = []
        self._live: dict[K, float] = {}
        """The heap's keys still tracked, with their deadlines."""
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._in_order) + len(self._live)

    def add(self, key: K, deadline: float) -> bool:
        """Track ``key`` until ``deadline`` (a tracked key's deadline is replaced).

        Returns:
            ``True`` if this is now the earliest deadline (re-arm the timer).
        """
        in_order = self._in_order
        if key in in_order or key in self._live:
            self.discard(key)
        if not in_order:
            self._last = -math.inf
        if deadline >= self._last:
            first = not in_order  # else the lane's first entry is due at or before it
            in_order[key] = deadline
            self._last = deadline
            if not first:
                return False
            self._trim()
            heap = self._heap
            return not heap or deadline < heap[0][0]
        lane_first = self._first_in_order()
        self._live[key] = deadline
        heapq.heappush(self._heap, (deadline, next(self._order), key))
        self._trim()
        top = self._heap[0]
        return (lane_first is None or deadline < lane_first) and top[2] is key

    def discard(self, key: K) -> None:
        """Stop tracking ``key`` (it finished); a no-op if it is not tracked."""
        if self._in_order.pop(key, None) is None:
            self._live.pop(key, None)

    def next_deadline(self) -> float | None:
        """The earliest deadline still tracked, or ``None``."""
        first = self._first_in_order()
        self._trim()
        heap = self._heap
        if not heap:
            return first
        top = heap[0][0]
        return top if first is None or top < first else first

    def expired(self, now: float) -> list[K]:
        """Remove and return every key whose deadline is at or before ``now``, earliest first."""
        due: list[tuple[float, int, K]] = []
        in_order = self._in_order
        while in_order:
            key, deadline = next(iter(in_order.items()))
            if deadline > now:
                break
            del in_order[key]
            due.append((deadline, next(self._order), key))
        heap, live = self._heap, self._live
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if live.get(entry[2]) == entry[0]:
                del live[entry[2]]
                due.append(entry)
        self._trim()
        due.sort(key=_deadline_of)  # stable: keys due at the same time keep the order they came
        return [entry[2] for entry in due]

    def _first_in_order(self) -> float | None:
        for deadline in self._in_order.values():
            return deadline
        return None

    def _trim(self) -> None:
        """Drop finished entries from the heap's top; rebuild when stale ones outnumber live ones."""
        heap, live = self._heap, self._live
        if len(heap) > 2 * len(live) + 64:
            order = self._order
            heap[:] = [(deadline, next(order), key) for key, deadline in live.items()]
            heapq.heapify(heap)
        while heap and live.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)


def _deadline_of(entry: tuple[float, int, object]) -> float:
    return entry[0]
