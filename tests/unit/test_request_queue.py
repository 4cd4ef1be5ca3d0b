"""Unit tests for the bounded queue behind DuplexStream.send() (asap.client._RequestQueue)."""

from __future__ import annotations

import asyncio

import pytest

from asap.client import _RequestQueue
from asap.errors import InvalidState
from asap.v1 import agent_service_pb2


HOLD = 0.1
"""How long a test waits for a put that must stay blocked."""


def _request(envelope_id: str) -> agent_service_pb2.StreamRequest:
    request = agent_service_pb2.StreamRequest()
    request.envelope.id = envelope_id
    return request


@pytest.mark.asyncio
async def test_put_waits_while_the_queue_is_full() -> None:
    """Past its capacity put() waits until get() takes one; order is kept."""
    queue = _RequestQueue(2)
    await queue.put(_request("a"))
    await queue.put(_request("b"))
    third = asyncio.create_task(queue.put(_request("c")))
    done, _ = await asyncio.wait({third}, timeout=HOLD)
    assert not done
    taken = [await queue.get()]
    await third
    taken += [await queue.get(), await queue.get()]
    assert [
        item.envelope.id for item in taken if isinstance(item, agent_service_pb2.StreamRequest)
    ] == ["a", "b", "c"]


@pytest.mark.asyncio
async def test_close_drains_then_ends_and_fails_waiting_puts() -> None:
    """After close() queued requests are still taken, then get() is None; a waiting put fails."""
    queue = _RequestQueue(1)
    await queue.put(_request("a"))
    blocked = asyncio.create_task(queue.put(_request("b")))
    done, _ = await asyncio.wait({blocked}, timeout=HOLD)
    assert not done
    queue.close()
    with pytest.raises(InvalidState):
        await blocked
    first = await queue.get()
    assert isinstance(first, agent_service_pb2.StreamRequest)
    assert first.envelope.id == "a"
    assert await queue.get() is None
    with pytest.raises(InvalidState):
        await queue.put(_request("c"))


@pytest.mark.asyncio
async def test_close_wakes_a_waiting_get() -> None:
    """A get() waiting on an empty queue returns None when the queue is closed."""
    queue = _RequestQueue(1)
    getter = asyncio.create_task(queue.get())
    done, _ = await asyncio.wait({getter}, timeout=HOLD)
    assert not done
    queue.close()
    assert await getter is None
