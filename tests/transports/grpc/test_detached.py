"""Detached: a coroutine driven outside any task, which cancelling its waiter does not reach."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Generator

import pytest

from asap.transports.grpc.detached import Detached


@types.coroutine
def _bare_yield() -> Generator[None, None, None]:
    """A bare yield to the task (what a zero-second asyncio sleep is): "run me next turn"."""
    yield


@pytest.mark.asyncio
async def test_the_first_step_runs_at_once_and_later_steps_follow_the_futures() -> None:
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    steps: list[str] = []

    async def work() -> None:
        steps.append("started")
        await first
        steps.append("first")
        await _bare_yield()
        await second
        steps.append("second")

    detached = Detached(work())
    assert steps == ["started"]  # before the constructor returned: no loop turn
    first.set_result(None)
    second.set_result(None)
    await detached.done
    assert steps == ["started", "first", "second"]


@pytest.mark.asyncio
async def test_cancelling_the_waiter_leaves_the_coroutine_and_its_future_alone() -> None:
    loop = asyncio.get_running_loop()
    batch = loop.create_future()
    finished = asyncio.Event()

    async def write() -> None:
        await batch
        finished.set()

    detached = Detached(write())
    waiting = asyncio.Event()

    async def wait() -> None:
        waiting.set()
        await detached.done

    waiter = loop.create_task(wait())
    await waiting.wait()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert detached.done.cancelled()
    assert not batch.cancelled()
    assert detached.running
    ended = detached.ended()
    assert not ended.done()
    batch.set_result(None)
    await ended
    assert finished.is_set()
    assert not detached.running
    assert detached.ended().done()


@pytest.mark.asyncio
async def test_an_exception_ends_in_done() -> None:
    loop = asyncio.get_running_loop()
    batch: asyncio.Future[None] = loop.create_future()

    async def write() -> None:
        await batch

    detached = Detached(write())
    batch.set_exception(RuntimeError("refused"))
    with pytest.raises(RuntimeError, match="refused"):
        await detached.done


@pytest.mark.asyncio
async def test_a_failure_in_the_first_step_is_already_in_done() -> None:
    async def write() -> None:
        message = "at once"
        raise LookupError(message)

    detached = Detached(write())
    assert detached.done.done()
    assert not detached.running
    assert detached.ended().done()
    with pytest.raises(LookupError):
        await detached.done


@pytest.mark.asyncio
async def test_a_coroutine_cancelled_from_inside_cancels_done() -> None:
    loop = asyncio.get_running_loop()
    batch: asyncio.Future[None] = loop.create_future()

    async def write() -> None:
        await batch

    detached = Detached(write())
    batch.cancel()
    await asyncio.wait({detached.done})
    assert detached.done.cancelled()


@pytest.mark.asyncio
async def test_something_else_than_a_future_is_refused() -> None:
    class Odd:
        def __await__(self):  # type: ignore[no-untyped-def]
            yield "not a future"

    async def write() -> None:
        await Odd()

    detached = Detached(write())
    with pytest.raises(TypeError, match="cannot wait"):
        await detached.done
