"""DeadlineQueue: many calls' deadlines in one heap, with no clock or timer of its own."""

from __future__ import annotations

from asap.protocol.deadlines import DeadlineQueue


def test_expired_returns_due_keys_earliest_first() -> None:
    """Keys come back in deadline order once due; later ones stay."""
    queue: DeadlineQueue[str] = DeadlineQueue()
    assert queue.add("b", 2.0) is True
    assert queue.add("a", 1.0) is True
    assert queue.add("c", 3.0) is False
    assert queue.next_deadline() == 1.0
    assert queue.expired(2.5) == ["a", "b"]
    assert queue.next_deadline() == 3.0
    assert len(queue) == 1


def test_discarded_keys_never_expire() -> None:
    """A call that finished is not reported, and the next deadline moves past it."""
    queue: DeadlineQueue[int] = DeadlineQueue()
    queue.add(1, 1.0)
    queue.add(2, 2.0)
    queue.discard(1)
    queue.discard(99)  # unknown: no-op
    assert queue.next_deadline() == 2.0
    assert queue.expired(10.0) == [2]
    assert queue.next_deadline() is None


def test_re_adding_a_key_moves_its_deadline() -> None:
    """Adding a tracked key again replaces its deadline."""
    queue: DeadlineQueue[str] = DeadlineQueue()
    queue.add("a", 1.0)
    queue.add("a", 5.0)
    assert queue.expired(2.0) == []
    assert queue.expired(5.0) == ["a"]


def test_heap_stays_bounded_under_a_long_lived_earliest_deadline() -> None:
    """Stale entries below a live top are compacted: the heap holds at most ~2x the live calls."""
    queue: DeadlineQueue[int] = DeadlineQueue()
    queue.add(-1, 100.0)  # a long call whose deadline stays the earliest
    for key in range(10_000):
        queue.add(key, 200.0 + key)
        queue.discard(key)
    assert len(queue) == 1
    assert len(queue._heap) <= 2 * len(queue) + 65
    assert queue.expired(1e9) == [-1]
