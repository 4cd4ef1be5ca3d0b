"""Unit tests for the core's bounds and liveness: the Stream window and outbox, an oversized Stream
answer, and deadlines and cancellation reaching handlers that never await.

Tests that show something does *not* happen wait on the event that would be set if it did, with
:data:`HOLD` as the bound of "never"; in-process, every task that can run does so well within it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
from google.protobuf.message import Message

from asap import errors
from asap.core.agent import Incoming
from asap.core.context import CallContext
from asap.core.method import method
from asap.core.service import STREAM_OUTBOX, STREAM_WINDOW, _Outbox, _Slot
from asap.v1 import agent_service_pb2, payload_pb2


if TYPE_CHECKING:
    from tests.unit.core.conftest import FakeCall, Kit


HOLD = 0.2
"""How long a test waits for something that must not happen."""
REQUESTS = 3 * STREAM_WINDOW
"""Requests fed to a Stream whose answers are not written: far past the window."""


class _Stalled:
    """A ServerCall over a FakeCall whose writes wait until :attr:`flowing` is set; counts reads."""

    def __init__(self, call: FakeCall) -> None:
        self.call = call
        self.flowing = asyncio.Event()
        self.reads = 0
        self.read_past_window = asyncio.Event()

    async def read(self) -> Message | None:
        message = await self.call.read()
        if message is not None:
            self.reads += 1
            if self.reads > STREAM_WINDOW:
                self.read_past_window.set()
        return message

    async def write(self, message: Message) -> None:
        await self.flowing.wait()
        await self.call.write(message)


async def _never(event: asyncio.Event) -> bool:
    """True if ``event`` stays unset for :data:`HOLD` seconds."""
    try:
        async with asyncio.timeout(HOLD):
            await event.wait()
    except TimeoutError:
        return True
    return False


@pytest.mark.asyncio
async def test_stream_stops_reading_while_answers_are_not_written(kit: Kit) -> None:
    """With no answer written, a Stream reads exactly STREAM_WINDOW requests, then the rest later."""
    harness = kit.Harness(kit.agent())
    call = kit.Call(
        [
            agent_service_pb2.StreamRequest(envelope=kit.envelope(envelope_id=f"e{i}"))
            for i in range(REQUESTS)
        ]
    )
    stalled = _Stalled(call)
    running = asyncio.create_task(harness.dispatcher.handle(kit.ctx("Stream"), stalled))
    assert await _never(stalled.read_past_window)
    assert stalled.reads == STREAM_WINDOW
    stalled.flowing.set()
    assert await running is None
    assert stalled.reads == REQUESTS
    assert len(call.written) == REQUESTS


@pytest.mark.asyncio
async def test_stream_outbox_is_bounded(kit: Kit) -> None:
    """A handler producing answers faster than they are written waits after STREAM_OUTBOX of them."""
    agent = kit.agent()
    produced = 0
    overflow = asyncio.Event()

    @agent.skill("flood")
    async def flood(
        request: Incoming[payload_pb2.TaskRequest],
    ) -> AsyncIterator[payload_pb2.TaskUpdate]:
        nonlocal produced
        while True:
            produced += 1
            if produced > STREAM_OUTBOX + 2:
                overflow.set()
            yield payload_pb2.TaskUpdate(task_id="t", message=str(produced))

    harness = kit.Harness(agent)
    call = kit.Call(
        [agent_service_pb2.StreamRequest(envelope=kit.envelope(kit.task("flood")))],
        half_close=False,
    )
    stalled = _Stalled(call)
    ctx = kit.ctx("Stream")
    running = asyncio.create_task(harness.dispatcher.handle(ctx, stalled))
    # One answer in the blocked write, STREAM_OUTBOX queued, one waiting to be queued.
    assert await _never(overflow)
    assert produced == STREAM_OUTBOX + 2
    ctx.cancel_requested()  # an explicit cancel: the deliveries stop too
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


class _SizeLimited:
    """A ServerCall over a FakeCall that refuses messages over ``limit`` bytes, as transports do."""

    def __init__(self, call: FakeCall, limit: int) -> None:
        self.call = call
        self.limit = limit

    async def read(self) -> Message | None:
        return await self.call.read()

    async def write(self, message: Message) -> None:
        if message.ByteSize() > self.limit:
            text = f"message larger than max ({message.ByteSize()} vs. {self.limit})"
            raise errors.MessageTooLarge(text)
        await self.call.write(message)


@pytest.mark.asyncio
async def test_oversized_stream_answer_fails_only_its_envelope(kit: Kit) -> None:
    """An answer the transport refuses as too large: an EnvelopeError; later answers dropped."""
    agent = kit.agent()
    gate = asyncio.Event()
    ended: list[str] = []

    @agent.skill("big")
    async def big(
        request: Incoming[payload_pb2.TaskRequest],
    ) -> AsyncIterator[payload_pb2.TaskUpdate]:
        yield payload_pb2.TaskUpdate(task_id="t", message="x" * 4096)
        await gate.wait()
        yield payload_pb2.TaskUpdate(task_id="t", message="small")
        ended.append("completed")  # exactly-once: the delivery runs to its end

    harness = kit.Harness(agent)
    call = kit.Call(
        [
            agent_service_pb2.StreamRequest(
                envelope=kit.envelope(kit.task("big"), envelope_id="big", requires_ack=True)
            ),
            agent_service_pb2.StreamRequest(envelope=kit.envelope(envelope_id="echo")),
        ]
    )
    running = asyncio.create_task(
        harness.dispatcher.handle(kit.ctx("Stream"), _SizeLimited(call, 1024))
    )
    await call.wait_written(2)  # the EnvelopeError and the echo's answer
    gate.set()
    assert await running is None
    items = [item for item in call.written if isinstance(item, agent_service_pb2.StreamResponse)]
    failures = [item.error for item in items if item.HasField("error")]
    assert [failure.envelope_id for failure in failures] == ["big"]
    assert isinstance(errors.from_status(failures[0].status), errors.MessageTooLarge)
    pushed = [item.envelope for item in items if item.HasField("envelope")]
    assert [(item.correlation_id, item.WhichOneof("payload")) for item in pushed] == [
        ("big", "message_ack"),
        ("echo", "task_response"),
    ]
    assert ended == ["completed"]


@pytest.mark.asyncio
async def test_deadline_stops_a_streaming_handler_that_never_awaits(kit: Kit) -> None:
    """A Subscribe handler that yields forever without awaiting ends DEADLINE_EXCEEDED."""
    agent = kit.agent()
    closed = asyncio.Event()

    @agent.skill("spin")
    async def spin(
        request: Incoming[payload_pb2.TaskRequest],
    ) -> AsyncIterator[payload_pb2.TaskUpdate]:
        try:
            while True:
                yield payload_pb2.TaskUpdate(task_id="t")
        finally:
            closed.set()

    harness = kit.Harness(agent)
    request = agent_service_pb2.SubscribeRequest(envelope=kit.envelope(kit.task("spin")))
    result = await harness.call("Subscribe", request, timeout=0.05)
    assert isinstance(result.error, errors.DeadlineExceeded)
    assert result.ctx.cancelled()
    assert closed.is_set()


@pytest.mark.asyncio
async def test_cancel_reaches_a_streaming_handler_that_never_awaits(kit: Kit) -> None:
    """An explicit cancel of the call stops a handler that never awaits, at its next write."""
    agent = kit.agent()
    closed_in: list[asyncio.Task[object] | None] = []

    @agent.skill("spin")
    async def spin(
        request: Incoming[payload_pb2.TaskRequest],
    ) -> AsyncIterator[payload_pb2.TaskUpdate]:
        try:
            while True:
                yield payload_pb2.TaskUpdate(task_id="t")
        finally:
            closed_in.append(asyncio.current_task())

    harness = kit.Harness(agent)
    call = kit.Call([agent_service_pb2.SubscribeRequest(envelope=kit.envelope(kit.task("spin")))])
    ctx = kit.ctx("Subscribe")
    running = asyncio.create_task(harness.dispatcher.handle(ctx, call))
    await call.wait_written(1)
    ctx.cancel_requested()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert len(closed_in) == 1  # closed in its delivery's own task
    assert ctx.cancelled()


@pytest.mark.asyncio
async def test_handler_returning_past_its_deadline_is_deadline_exceeded(kit: Kit) -> None:
    """A call whose handler returns after the deadline is DEADLINE_EXCEEDED, also without a timer."""
    harness = kit.Harness(kit.agent())
    ctx = CallContext(
        method=method("Send"),
        metadata=(),
        peer=kit.PEER,
        transport="fake",
        timeout=0.0,
        deadline_enforced_by_transport=True,
    )
    call = kit.Call([agent_service_pb2.SendRequest(envelope=kit.envelope())])
    error = await harness.dispatcher.handle(ctx, call)
    assert isinstance(error, errors.DeadlineExceeded)
    assert ctx.cancelled()


def _answer(slot: _Slot, text: str) -> tuple[_Slot, agent_service_pb2.StreamResponse]:
    error = agent_service_pb2.EnvelopeError(envelope_id=text)
    return slot, agent_service_pb2.StreamResponse(error=error)


@pytest.mark.asyncio
async def test_outbox_holds_its_bound_and_keeps_waiting_puts_in_order() -> None:
    """Puts past the bound wait; each get makes room for the first waiting put, in order."""
    outbox = _Outbox(2, asyncio.get_running_loop())
    slot = _Slot("e")
    for text in ("a", "b"):
        await outbox.put(_answer(slot, text))
    waiting = [asyncio.create_task(outbox.put(_answer(slot, text))) for text in ("c", "d", "e")]
    done, _ = await asyncio.wait(waiting, timeout=HOLD)
    assert not done
    assert len(outbox) == 2
    cancelled = waiting[1]  # "d": its answer is never queued, and "e" is not stuck behind it
    cancelled.cancel()
    taken: list[str] = []
    while len(taken) < 4:
        item = await outbox.get()
        assert item is not None
        taken.append(item[1].error.envelope_id)
        assert len(outbox) <= 2
    assert taken == ["a", "b", "c", "e"]
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await asyncio.gather(waiting[0], waiting[2])
    assert len(outbox) == 0


@pytest.mark.asyncio
async def test_outbox_get_waits_for_a_put() -> None:
    """The writer's get waits while nothing is queued and wakes at the next put."""
    outbox = _Outbox(2, asyncio.get_running_loop())
    getting = asyncio.create_task(outbox.get())
    done, _ = await asyncio.wait({getting}, timeout=HOLD)
    assert not done
    await outbox.put(None)
    assert await getting is None
