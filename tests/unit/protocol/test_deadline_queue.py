"""DeadlineQueue: many calls' deadlines in one heap, with no clock or timer of its own."""

from __future__ import annotations

import random
import sys

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


def test_in_order_deadlines_take_no_heap_and_stay_bounded() -> None:
    """One timeout for every call (the usual case): the ordered lane, compacted as calls end."""
    queue: DeadlineQueue[int] = DeadlineQueue()
    for key in range(10_000):
        queue.add(key, 30.0 + key * 0.001)
        if key >= 16:
            queue.discard(key - 16)  # 16 in flight
    assert len(queue) == 16
    assert queue._heap == []
    assert sys.getsizeof(queue._in_order) <= sys.getsizeof({key: 0.0 for key in range(64)})
    assert queue.next_deadline() == 30.0 + 9_984 * 0.001


def test_an_earlier_deadline_after_later_ones_is_still_first() -> None:
    """A call with a shorter timeout than those before it: it is the next deadline, and due first."""
    queue: DeadlineQueue[str] = DeadlineQueue()
    assert queue.add("long", 30.0) is True
    assert queue.add("longer", 31.0) is False
    assert queue.add("short", 5.0) is True
    assert queue.add("tie", 5.0) is False  # the earlier arrival keeps the timer
    assert queue.next_deadline() == 5.0
    assert queue.expired(30.0) == ["short", "tie", "long"]
    assert queue.next_deadline() == 31.0


def test_matches_a_plain_model_under_random_operations() -> None:
    """Any mix of adds, re-adds, discards and expiries: what a dict scanned in full would say."""
    rng = random.Random(12)  # noqa: S311 - a reproducible sequence of operations, not a secret
    queue: DeadlineQueue[int] = DeadlineQueue()
    model: dict[int, float] = {}
    now = 0.0
    for _ in range(20_000):
        action = rng.random()
        if action < 0.5:
            key = rng.randrange(200)
            # Mostly one timeout (in order), sometimes a shorter or longer one.
            deadline = now + (30.0 if rng.random() < 0.8 else rng.choice((0.5, 5.0, 60.0)))
            earliest = all(deadline < other for k, other in model.items() if k != key)
            assert queue.add(key, deadline) is earliest
            model[key] = deadline
        elif action < 0.85:
            key = rng.randrange(200)
            queue.discard(key)
            model.pop(key, None)
        else:
            now += rng.random() * 10.0
            due = queue.expired(now)
            expected = {key for key, deadline in model.items() if deadline <= now}
            assert set(due) == expected
            assert len(due) == len(expected)
            deadlines = [model[key] for key in due]
            assert deadlines == sorted(deadlines)
            for key in due:
                del model[key]
        assert len(queue) == len(model)
        assert queue.next_deadline() == (min(model.values()) if model else None)
