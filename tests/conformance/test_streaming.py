"""Streaming RPCs (Subscribe, Publish, Stream) behave the same on every transport."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator

import pytest

from asap import errors
from asap.v1 import agent_service_pb2, envelope_pb2, payload_pb2, task_pb2
from tests.conformance._service import Harness, as_dict, envelope, kinds


pytestmark = pytest.mark.asyncio

ACK = payload_pb2.AckStatus.Name


async def test_subscribe_streams_updates_in_order_then_the_answer(harness: Harness) -> None:
    """Subscribe yields every TaskUpdate in the order produced, then the TaskResponse."""
    request = envelope("updates", {"count": 5})
    async with await harness.client.subscribe(request) as updates:
        received = [item async for item in updates]
    assert kinds(received) == ["task_update"] * 5 + ["task_response"]
    assert [item.task_update.progress_percent for item in received[:5]] == [1, 2, 3, 4, 5]
    assert [item.task_update.message for item in received[:5]] == [f"step {n}" for n in range(1, 6)]
    assert all(item.correlation_id == request.id for item in received)
    assert received[-1].task_response.status == task_pb2.TASK_STATUS_COMPLETED
    assert as_dict(received[-1].task_response.result) == {"steps": 5}


async def test_subscribe_to_a_unary_handler_yields_its_answer(harness: Harness) -> None:
    """Subscribing to a coroutine handler yields exactly its one answer."""
    async with await harness.client.subscribe(envelope("echo", {"x": 1})) as updates:
        received = [item async for item in updates]
    assert kinds(received) == ["task_response"]
    assert as_dict(received[0].task_response.result) == {"x": 1}


async def test_subscribe_with_zero_updates(harness: Harness) -> None:
    """A streaming handler that yields only its answer streams just the answer."""
    async with await harness.client.subscribe(envelope("updates", {"count": 0})) as updates:
        received = [item async for item in updates]
    assert kinds(received) == ["task_response"]


async def test_subscribe_error_is_raised_by_iteration(harness: Harness) -> None:
    """A handler error ends a subscription by raising the same AsapError class from iteration."""
    async with await harness.client.subscribe(envelope("raise", {"class": "NotFound"})) as updates:
        with pytest.raises(errors.NotFound) as caught:
            async for _ in updates:
                pass
    assert caught.value.metadata["class"] == "NotFound"


async def test_publish_delivers_each_envelope_in_order(harness: Harness) -> None:
    """Publish delivers every envelope and returns one result per envelope, in order."""
    results = await harness.client.publish([envelope("echo", {"i": i}) for i in range(4)])
    assert [as_dict(result.envelope.task_response.result) for result in results] == [
        {"i": i} for i in range(4)
    ]


async def test_publish_from_an_async_iterable(harness: Harness) -> None:
    """Publish accepts an async iterable of envelopes."""

    async def produce() -> AsyncIterator[envelope_pb2.Envelope]:
        for i in range(3):
            yield envelope("echo", {"i": i})

    results = await harness.client.publish(produce())
    assert [as_dict(result.envelope.task_response.result) for result in results] == [
        {"i": i} for i in range(3)
    ]


async def test_publish_reports_failures_per_envelope(harness: Harness) -> None:
    """A failing envelope in a Publish gets an error result; the others are answered."""
    results = await harness.client.publish(
        [
            envelope("echo", {"i": 0}),
            envelope("raise", {"class": "FailedPrecondition"}, requires_ack=True),
            envelope("echo", {"i": 2}),
        ]
    )
    assert [result.WhichOneof("outcome") for result in results] == ["envelope", "error", "envelope"]
    error = errors.from_status(results[1].error)
    assert isinstance(error, errors.FailedPrecondition)
    assert results[1].ack.status == payload_pb2.ACK_STATUS_REJECTED


async def test_publish_of_nothing_returns_no_results(harness: Harness) -> None:
    """Publishing an empty stream succeeds with no results."""
    assert await harness.client.publish([]) == []


async def test_stream_acks_each_envelope_received_then_processed(harness: Harness) -> None:
    """On Stream each envelope with requires_ack gets RECEIVED, its updates and answer, PROCESSED."""
    by_request: dict[str, list[str]] = defaultdict(list)
    async with await harness.client.stream() as stream:
        sent = [
            await stream.send(envelope("updates", {"count": 2}, requires_ack=True))
            for _ in range(3)
        ]
        await stream.done_sending()
        async for item in stream:
            assert item.WhichOneof("item") == "envelope"
            pushed = item.envelope
            if pushed.WhichOneof("payload") == "message_ack":
                key = pushed.message_ack.original_envelope_id
                by_request[key].append(ACK(pushed.message_ack.status))
            else:
                by_request[pushed.correlation_id].append(str(pushed.WhichOneof("payload")))
        assert stream.unsettled() == []
    assert set(by_request) == {request.id for request in sent}
    for request in sent:
        assert by_request[request.id] == [
            "ACK_STATUS_RECEIVED",
            "task_update",
            "task_update",
            "task_response",
            "ACK_STATUS_PROCESSED",
        ]


async def test_stream_without_acks_pushes_only_updates_and_answers(harness: Harness) -> None:
    """Without requires_ack, Stream pushes the updates and answer and no acks."""
    async with await harness.client.stream() as stream:
        request = await stream.send(envelope("updates", {"count": 1}))
        await stream.done_sending()
        items = [item.envelope async for item in stream]
    assert kinds(items) == ["task_update", "task_response"]
    assert all(item.correlation_id == request.id for item in items)


async def test_stream_reports_one_failing_envelope_and_goes_on(harness: Harness) -> None:
    """One failing envelope yields an EnvelopeError (and REJECTED ack); the others succeed."""
    async with await harness.client.stream() as stream:
        good_1 = await stream.send(envelope("echo", {"i": 1}, requires_ack=True))
        bad = await stream.send(envelope("raise", {"class": "PermissionDenied"}, requires_ack=True))
        good_2 = await stream.send(envelope("echo", {"i": 2}, requires_ack=True))
        await stream.done_sending()
        items = [item async for item in stream]
        assert stream.unsettled() == []
    failures = [item.error for item in items if item.WhichOneof("item") == "error"]
    assert [failure.envelope_id for failure in failures] == [bad.id]
    error = errors.from_status(failures[0].status)
    assert isinstance(error, errors.PermissionDenied)
    assert error.metadata["class"] == "PermissionDenied"
    final_acks = {
        item.envelope.message_ack.original_envelope_id: item.envelope.message_ack.status
        for item in items
        if item.WhichOneof("item") == "envelope"
        and item.envelope.WhichOneof("payload") == "message_ack"
        and item.envelope.message_ack.status != payload_pb2.ACK_STATUS_RECEIVED
    }
    assert final_acks == {
        good_1.id: payload_pb2.ACK_STATUS_PROCESSED,
        bad.id: payload_pb2.ACK_STATUS_REJECTED,
        good_2.id: payload_pb2.ACK_STATUS_PROCESSED,
    }
    answers = {
        item.envelope.correlation_id: as_dict(item.envelope.task_response.result)
        for item in items
        if item.WhichOneof("item") == "envelope"
        and item.envelope.WhichOneof("payload") == "task_response"
    }
    assert answers == {good_1.id: {"i": 1}, good_2.id: {"i": 2}}


async def test_stream_is_interactive(harness: Harness) -> None:
    """A Stream answers an envelope before the caller half-closes, then takes another."""
    async with await harness.client.stream() as stream:
        first = await stream.send(envelope("echo", {"n": 1}))
        reply = await anext(stream)
        assert reply.envelope.correlation_id == first.id
        second = await stream.send(envelope("echo", {"n": 2}))
        reply = await anext(stream)
        assert reply.envelope.correlation_id == second.id
        await stream.done_sending()
        assert [item async for item in stream] == []


async def test_stream_refuses_sending_after_done_sending(harness: Harness) -> None:
    """send() after done_sending() raises InvalidState locally."""
    async with await harness.client.stream() as stream:
        await stream.done_sending()
        with pytest.raises(errors.InvalidState):
            await stream.send(envelope("echo"))
        assert [item async for item in stream] == []


async def test_subscribe_trailing_metadata(harness: Harness) -> None:
    """A subscription's trailing metadata is available once it ended."""
    async with await harness.client.subscribe(
        envelope("echo"), metadata=(("x-echo", "sub"),)
    ) as updates:
        received = [item async for item in updates]
        assert len(received) == 1
        assert ("x-echo-trailer", "sub") in updates.trailing_metadata


async def test_stream_response_types(harness: Harness) -> None:
    """Every item a Stream yields is a StreamResponse."""
    async with await harness.client.stream() as stream:
        await stream.send(envelope("echo"))
        await stream.done_sending()
        items = [item async for item in stream]
    assert all(isinstance(item, agent_service_pb2.StreamResponse) for item in items)
    assert len(items) == 1
