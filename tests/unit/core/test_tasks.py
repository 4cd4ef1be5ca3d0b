"""Unit tests for asap.core.tasks.TaskOwner: spawn, close, failure logging."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
import logging
import time
import warnings
from typing import TypeVar

import pytest

from asap.core.tasks import (
    Finished,
    IdleSignal,
    TaskOwner,
    leave_eager,
    loop_clock,
    start_eagerly,
    start_eagerly_for_result,
    start_eagerly_in,
)
from asap.errors import InvalidState


T = TypeVar("T")


@pytest.mark.asyncio
async def test_spawned_task_runs_and_is_forgotten_when_done() -> None:
    """A spawned task runs, is counted while running and dropped once it finishes."""
    owner = TaskOwner("test")
    release = asyncio.Event()
    ran: list[str] = []

    async def work() -> None:
        await release.wait()
        ran.append("done")

    task = owner.spawn(work(), name="worker")
    assert len(owner) == 1
    assert task.get_name() == "worker"
    release.set()
    await asyncio.wait([task])  # returns after the owner's done callback has run
    assert ran == ["done"]
    assert len(owner) == 0


@pytest.mark.asyncio
async def test_task_name_defaults_to_owner_name() -> None:
    """A task spawned without a name is named after its owner."""
    owner = TaskOwner("the-owner")

    async def work() -> None:
        return None

    task = owner.spawn(work())
    assert task.get_name() == "the-owner"
    await owner.close()


@pytest.mark.asyncio
async def test_close_cancels_and_awaits_every_task() -> None:
    """close() cancels every running task and returns only when all have finished."""
    owner = TaskOwner("test")
    started = [asyncio.Event() for _ in range(3)]
    observed: list[int] = []
    finished: list[int] = []

    async def park(index: int) -> None:
        started[index].set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            observed.append(index)
            await asyncio.sleep(0)  # cleanup that itself awaits
            finished.append(index)
            raise

    tasks = [owner.spawn(park(index)) for index in range(3)]
    for event in started:
        await event.wait()
    await owner.close()
    assert owner.closed
    assert sorted(observed) == [0, 1, 2]
    assert sorted(finished) == [0, 1, 2]
    assert all(task.done() and task.cancelled() for task in tasks)
    assert len(owner) == 0


@pytest.mark.asyncio
async def test_close_is_idempotent() -> None:
    """Closing twice is harmless."""
    owner = TaskOwner("test")
    await owner.close()
    await owner.close()
    assert owner.closed


@pytest.mark.asyncio
async def test_spawn_after_close_raises_and_closes_the_coroutine() -> None:
    """spawn() after close() raises InvalidState and closes the coroutine without running it."""
    owner = TaskOwner("test")
    await owner.close()
    ran: list[bool] = []

    async def work() -> None:
        ran.append(True)

    coro = work()
    with pytest.raises(InvalidState, match="after close"):
        owner.spawn(coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del coro
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert ran == []


@pytest.mark.asyncio
async def test_failed_task_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A task that raises is logged at ERROR with its exception."""
    owner = TaskOwner("owner")
    failure = ValueError("boom")

    async def fail() -> None:
        raise failure

    with caplog.at_level(logging.ERROR, logger="asap.core.tasks"):
        task = owner.spawn(fail(), name="doomed")
        await asyncio.wait([task])
    records = [r for r in caplog.records if r.name == "asap.core.tasks"]
    assert len(records) == 1
    assert "doomed" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert records[0].exc_info[1] is failure
    assert len(owner) == 0


@pytest.mark.asyncio
async def test_cancelled_task_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A cancelled task is not an error."""
    owner = TaskOwner("owner")
    started = asyncio.Event()

    async def park() -> None:
        started.set()
        await asyncio.Event().wait()

    task = owner.spawn(park())
    await started.wait()
    task.cancel()
    await asyncio.wait([task])
    assert not [r for r in caplog.records if r.name == "asap.core.tasks"]


@pytest.mark.asyncio
async def test_close_from_an_owned_task_cancels_the_others() -> None:
    """An owned task may close its owner: the others are cancelled, it carries on."""
    owner = TaskOwner("test")
    other_started = asyncio.Event()

    async def other() -> None:
        other_started.set()
        await asyncio.Event().wait()

    async def closer() -> None:
        await other_started.wait()
        await owner.close()

    victim = owner.spawn(other())
    closing = owner.spawn(closer())
    await closing
    assert victim.cancelled()
    assert owner.closed


# -- start_eagerly: a coroutine run at once, continued in a task only if it suspends -------------


_SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="")


class _Flag:
    def __init__(self) -> None:
        self.eager = True


@pytest.mark.asyncio
async def test_a_coroutine_that_never_suspends_finishes_without_a_task() -> None:
    """start_eagerly runs it to the end in the caller and returns None; no task is created."""
    owner = TaskOwner("test")
    done: list[str] = []

    async def work() -> None:
        done.append("ran")

    before = asyncio.all_tasks()
    assert start_eagerly(owner, work(), name="eager") is None
    assert done == ["ran"]
    assert asyncio.all_tasks() == before
    assert len(owner) == 0


@pytest.mark.asyncio
async def test_a_coroutine_that_suspends_continues_in_an_owned_task_in_its_context() -> None:
    """After its first suspension the coroutine goes on in a task, with the contextvars it set."""
    owner = TaskOwner("test")
    gate = asyncio.Event()
    steps: list[str] = []

    async def work() -> None:
        _SEEN.set("eager")
        steps.append("before")
        await gate.wait()
        steps.append(f"after:{_SEEN.get()}:{asyncio.current_task() is not None}")

    task = start_eagerly(owner, work(), name="eager")
    assert task is not None
    assert steps == ["before"]
    assert _SEEN.get() == ""  # the eager step ran in its own context
    gate.set()
    await task
    assert steps == ["before", "after:eager:True"]
    await owner.close()


@pytest.mark.asyncio
async def test_cancelling_the_continuation_reaches_the_coroutine() -> None:
    """Cancelling the task throws CancelledError at the coroutine's await, where it can clean up."""
    owner = TaskOwner("test")
    seen: list[str] = []

    async def work() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    task = start_eagerly(owner, work(), name="eager")
    assert task is not None
    task.cancel()  # before the task's first step: it must still reach the coroutine's await
    await asyncio.wait({task})
    assert task.cancelled()
    assert seen == ["cancelled"]


@pytest.mark.asyncio
async def test_leave_eager_hands_off_before_code_that_needs_a_task() -> None:
    """After leave_eager, asyncio.timeout (which needs a current task) works."""
    owner = TaskOwner("test")
    flag = _Flag()
    result: list[float] = []

    async def one() -> float:
        return 1.0

    async def work() -> None:
        await leave_eager(flag)
        async with asyncio.timeout(5):
            result.append(await one())

    task = start_eagerly(owner, work(), name="eager")
    assert task is not None
    assert flag.eager is False
    await task
    assert result == [1.0]


@pytest.mark.asyncio
async def test_an_exception_in_the_eager_step_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failure before the first suspension is logged like a failed task's."""
    owner = TaskOwner("test")

    async def work() -> None:
        message = "boom"
        raise ValueError(message)

    with caplog.at_level("ERROR"):
        assert start_eagerly(owner, work(), name="eager-fails") is None
    assert any("eager-fails failed" in record.getMessage() for record in caplog.records)


@pytest.mark.asyncio
async def test_start_eagerly_in_finishes_in_place_or_continues_in_the_group() -> None:
    """A coroutine that never suspends needs no task; one that suspends goes on in the group."""
    release = asyncio.Event()
    ran: list[str] = []

    async def quick() -> None:
        ran.append("quick")

    async def slow() -> None:
        ran.append("slow started")
        await release.wait()
        ran.append("slow done")

    async with asyncio.TaskGroup() as group:
        assert start_eagerly_in(group, quick(), name="quick") is None
        task = start_eagerly_in(group, slow(), name="slow")
        assert task is not None
        assert task.get_name() == "slow"
        assert ran == ["quick", "slow started"]
        release.set()
    assert ran == ["quick", "slow started", "slow done"]


@pytest.mark.asyncio
async def test_start_eagerly_in_raises_an_exception_of_the_eager_step() -> None:
    """What fails before suspending is raised in the caller, as the group's task would fail."""

    async def broken() -> None:
        message = "broken"
        raise ValueError(message)

    async with asyncio.TaskGroup() as group:
        with pytest.raises(ValueError, match="broken"):
            start_eagerly_in(group, broken(), name="broken")


def _suspended(started: Finished[T] | asyncio.Task[T]) -> asyncio.Task[T]:
    assert isinstance(started, asyncio.Task), started
    return started


@pytest.mark.asyncio
async def test_finished_for_result_makes_no_future() -> None:
    """A coroutine that ends in its first step gives its result (or error) with no task or future."""

    async def answer() -> int:
        return 42

    async def broken() -> int:
        message = "broken"
        raise ValueError(message)

    done = start_eagerly_for_result(answer(), name="answer")
    assert isinstance(done, Finished)
    assert done.result() == 42
    failed = start_eagerly_for_result(broken(), name="broken")
    assert isinstance(failed, Finished)
    with pytest.raises(ValueError, match="broken"):
        failed.result()


@pytest.mark.asyncio
async def test_idle_signal_wakes_every_waiter_once_idle() -> None:
    """wait() returns at once when idle, and wakes all its waiters when the work ends."""
    signal = IdleSignal()
    await signal.wait()  # idle from the start
    signal.busy()
    # Run to their first suspension now, so each has registered its future before idle().
    waiters = [_suspended(start_eagerly_for_result(signal.wait(), name="wait")) for _ in range(3)]
    assert not any(waiter.done() for waiter in waiters)
    signal.idle()
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert signal.is_idle()


@pytest.mark.asyncio
async def test_idle_signal_forgets_a_cancelled_waiter() -> None:
    """A cancelled wait leaves no future behind (the list is bounded by the live waiters)."""
    signal = IdleSignal()
    signal.busy()
    waiter = _suspended(start_eagerly_for_result(signal.wait(), name="wait"))
    assert len(signal._waiters) == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert signal._waiters == []
    signal.idle()


@pytest.mark.asyncio
async def test_loop_clock_is_the_loops_time() -> None:
    """On asyncio's loop the clock is time.monotonic itself; on any other, the loop's own time."""
    loop = asyncio.get_running_loop()
    clock = loop_clock(loop)
    assert clock is time.monotonic
    before = loop.time()
    assert before <= clock() <= loop.time()

    class OwnClock(asyncio.SelectorEventLoop):
        def time(self) -> float:
            return 42.0

    other = OwnClock()
    try:
        assert loop_clock(other)() == 42.0
    finally:
        other.close()
