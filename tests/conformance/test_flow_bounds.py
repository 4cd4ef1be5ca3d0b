"""Bounds and liveness: flow control reaches the producer, caps fail early, deadlines and Cancel
hold for handlers that never await, and streams outlive the client's default unary timeout.

Tests that show something does *not* happen (the server stops reading, ``send()`` stays blocked)
wait on the future that would complete if it did, with :data:`HOLD` as the bound of "never"; they
never sleep for a condition.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from asap import NO_DEADLINE, Limits, errors
from asap.client import SEND_BUFFER
from asap.core.service import STREAM_WINDOW
from asap.v1 import payload_pb2
from tests.conformance._service import Harness, HarnessFactory, as_dict, envelope


pytestmark = pytest.mark.asyncio

NO_RATE_LIMIT = Limits(rate_limit_per_second=0)
"""Rate limiting off, so every envelope reaches its handler."""
HOLD = 1.0
"""How long a test waits for something that must not happen (a bound on "never", not a delay)."""
BLOB = 512 * 1024
"""The size of each answer in the flow-control tests: large, so a transport buffers few of them."""
TRANSPORT_BYTES = 32 * 1024 * 1024
"""What a transport may buffer of a stream's answers beyond the core's window (HTTP/2 windows and
socket buffers, or the bridge's credit); gRPC was measured holding 4-8 MiB of them."""
TRANSPORT_SLACK = TRANSPORT_BYTES // BLOB
"""Answers of :data:`BLOB` bytes the transport may hold."""
PAD = 32 * 1024
"""Bytes of padding per flooding request, so transport buffers fill after a few hundred of them."""
FLOOD_STREAM = 400
"""Requests for big answers a flooding sender tries to send; far past the window and the slack."""
FLOOD_SEND = 1000
"""Requests a flooding sender tries to send to parked handlers; far past what transports buffer."""
SHORT_UNARY = 0.3
"""The default (unary) timeout of the client in the stream-lifetime tests."""
SPIN_STEPS = 100_000
"""Updates the ``spin`` skill would yield; far more than a short deadline allows."""
SMALL = Limits(max_message_bytes=16 * 1024, rate_limit_per_second=0)
"""16 KiB messages."""
BIG = 32 * 1024
"""Twice :data:`SMALL`'s limit."""


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, errors.AsapError):
        await task


async def _outlive_the_unary_default(harness: Harness, client_key: str) -> None:
    """Return once a unary call of a client with timeout SHORT_UNARY has hit that deadline."""
    client = harness.connect(timeout=SHORT_UNARY)
    with pytest.raises(errors.DeadlineExceeded):
        await client.send(envelope("park", {"key": client_key}))


async def test_a_stream_that_is_not_read_stops_the_server_reading(
    make_harness: HarnessFactory,
) -> None:
    """A caller that floods a Stream and never reads makes the server stop running handlers."""
    harness = await make_harness(limits=NO_RATE_LIMIT)
    stream = await harness.client.stream()

    async def flood() -> None:
        for _ in range(FLOOD_STREAM):
            await stream.send(envelope("blob", {"size": BLOB, "pad": "x" * PAD}))

    sender = asyncio.create_task(flood())
    try:
        await harness.probe.wait(f"blob:{STREAM_WINDOW}")
        done, _ = await asyncio.wait({sender}, timeout=HOLD)
        assert not done, "every envelope was taken although no answer was read"
        assert harness.probe.runs["blob"] <= STREAM_WINDOW + TRANSPORT_SLACK
    finally:
        await _stop(sender)
        await stream.cancel()


async def test_send_waits_when_the_server_stops_reading(make_harness: HarnessFactory) -> None:
    """DuplexStream.send() blocks once the server stops taking requests (bounded in flight)."""
    harness = await make_harness(limits=NO_RATE_LIMIT)
    stream = await harness.client.stream()
    sent = 0

    async def flood() -> None:
        nonlocal sent
        for i in range(FLOOD_SEND):
            await stream.send(envelope("park", {"key": f"p{i}", "pad": "x" * PAD}))
            sent += 1

    sender = asyncio.create_task(flood())
    try:
        await harness.probe.entered(f"p{STREAM_WINDOW - 1}")
        done, _ = await asyncio.wait({sender}, timeout=HOLD)
        assert not done, "send() never waited although the server stopped reading"
        assert STREAM_WINDOW + SEND_BUFFER <= sent < FLOOD_SEND
    finally:
        await _stop(sender)
        await stream.cancel()


async def test_oversized_answer_on_a_stream_fails_only_its_envelope(
    make_harness: HarnessFactory,
) -> None:
    """An answer over max_message_bytes on a Stream is a MessageTooLarge EnvelopeError; the stream goes on."""
    harness = await make_harness(limits=SMALL)
    async with await harness.client.stream() as stream:
        big = await stream.send(envelope("blob", {"size": BIG}, requires_ack=True))
        small = await stream.send(envelope("echo", {"after": "big"}))
        await stream.done_sending()
        items = [item async for item in stream]
        assert stream.unsettled() == []
    failures = [item.error for item in items if item.HasField("error")]
    assert [failure.envelope_id for failure in failures] == [big.id]
    error = errors.from_status(failures[0].status)
    assert isinstance(error, errors.MessageTooLarge)
    assert error.reason == "MESSAGE_TOO_LARGE"
    answers = [item.envelope for item in items if item.HasField("envelope")]
    big_items = [
        item
        for item in answers
        if big.id in (item.correlation_id, item.message_ack.original_envelope_id)
    ]
    assert [item.message_ack.status for item in big_items] == [payload_pb2.ACK_STATUS_RECEIVED]
    (answer,) = [item for item in answers if item.correlation_id == small.id]
    assert as_dict(answer.task_response.result) == {"after": "big"}


async def test_send_batch_over_the_cap_is_too_many_envelopes(make_harness: HarnessFactory) -> None:
    """A SendBatch over max_batch_envelopes fails with TooManyEnvelopes before any envelope runs."""
    harness = await make_harness(limits=Limits(max_batch_envelopes=3, rate_limit_per_second=0))
    batch = [envelope("count") for _ in range(4)]
    with pytest.raises(errors.TooManyEnvelopes) as caught:
        await harness.client.send_batch(batch)
    assert caught.value.code == errors.Code.RESOURCE_EXHAUSTED
    assert caught.value.reason == "TOO_MANY_ENVELOPES"
    assert sum(harness.probe.runs.values()) == 0
    results = await harness.client.send_batch(batch[:3])
    assert [as_dict(result.envelope.task_response.result) for result in results] == [
        {"runs": 1}
    ] * 3


async def test_publish_over_the_cap_fails_and_keeps_what_ran(make_harness: HarnessFactory) -> None:
    """Publish fails with TooManyEnvelopes at envelope cap+1; those before it ran once and re-publish."""
    harness = await make_harness(limits=Limits(max_batch_envelopes=3, rate_limit_per_second=0))
    published = [envelope("count") for _ in range(5)]
    with pytest.raises(errors.TooManyEnvelopes) as caught:
        await harness.client.publish(published)
    assert caught.value.reason == "TOO_MANY_ENVELOPES"
    assert {key: runs for key, runs in harness.probe.runs.items()} == {
        f"count:{item.id}": 1 for item in published[:3]
    }
    results = await harness.client.publish(published[:3])
    assert [as_dict(result.envelope.task_response.result) for result in results] == [
        {"runs": 1}
    ] * 3
    assert sum(harness.probe.runs.values()) == 3


async def test_publish_results_over_max_message_bytes_fail_early(
    make_harness: HarnessFactory,
) -> None:
    """Publish fails with MessageTooLarge once its results would not fit; nothing after runs."""
    harness = await make_harness(limits=SMALL)
    published = [envelope("blob", {"size": 6 * 1024}) for _ in range(6)]
    with pytest.raises(errors.MessageTooLarge):
        await harness.client.publish(published)
    assert harness.probe.runs["blob"] == 3


async def test_send_batch_results_over_max_message_bytes_fail_early(
    make_harness: HarnessFactory,
) -> None:
    """SendBatch fails with MessageTooLarge once its results would not fit; nothing after runs."""
    harness = await make_harness(limits=SMALL)
    with pytest.raises(errors.MessageTooLarge):
        await harness.client.send_batch([envelope("blob", {"size": 6 * 1024}) for _ in range(6)])
    assert harness.probe.runs["blob"] == 3


async def test_subscription_outlives_the_default_unary_timeout(harness: Harness) -> None:
    """Subscribe has no default deadline: it outlives the client's unary timeout and ends OK."""
    client = harness.connect(timeout=SHORT_UNARY)
    async with await client.subscribe(envelope("park", {"key": "long-sub"})) as updates:
        await harness.probe.entered("long-sub")
        await _outlive_the_unary_default(harness, "unary-sub")
        harness.probe.release("long-sub")
        received = [item async for item in updates]
    assert as_dict(received[-1].task_response.result) == {"key": "long-sub"}


async def test_duplex_stream_outlives_the_default_unary_timeout(harness: Harness) -> None:
    """A duplex Stream has no default deadline: it outlives the client's unary timeout."""
    client = harness.connect(timeout=SHORT_UNARY)
    async with await client.stream() as stream:
        request = await stream.send(envelope("park", {"key": "long-stream"}))
        await harness.probe.entered("long-stream")
        await _outlive_the_unary_default(harness, "unary-stream")
        harness.probe.release("long-stream")
        reply = await anext(stream)
        assert reply.envelope.correlation_id == request.id
        await stream.done_sending()
        assert [item async for item in stream] == []


async def test_publish_outlives_the_default_unary_timeout(harness: Harness) -> None:
    """Publish has no default deadline: it outlives the client's unary timeout."""
    client = harness.connect(timeout=SHORT_UNARY)
    call = asyncio.create_task(client.publish([envelope("park", {"key": "long-pub"})]))
    await harness.probe.entered("long-pub")
    await _outlive_the_unary_default(harness, "unary-pub")
    harness.probe.release("long-pub")
    (result,) = await call
    assert as_dict(result.envelope.task_response.result) == {"key": "long-pub"}


async def test_no_deadline_removes_the_default_of_a_unary_call(harness: Harness) -> None:
    """timeout=NO_DEADLINE sends a unary call without the client's default deadline."""
    client = harness.connect(timeout=5.0)
    response = await client.send(envelope("inspect"), timeout=NO_DEADLINE)
    assert as_dict(response.envelope.task_response.result)["remaining"] == -1.0
    response = await client.send(envelope("inspect"))
    remaining = as_dict(response.envelope.task_response.result)["remaining"]
    assert isinstance(remaining, float)
    assert remaining > 0


async def test_streaming_handler_finishes_when_an_update_cannot_be_sent(
    make_harness: HarnessFactory,
) -> None:
    """An update too large to send fails the call; the handler runs on and is closed in its task."""
    harness = await make_harness(limits=SMALL)
    request = envelope("spin", {"key": "closed", "count": 3, "pad": BIG})
    async with await harness.client.subscribe(request) as updates:
        with pytest.raises(errors.MessageTooLarge):
            await anext(updates)
    await harness.probe.wait("closed:closed")
    assert harness.probe.closed_in_call_task == {"closed": True}
    # Exactly-once: the delivery completes (its outcome is stored); only the updates are dropped.
    assert harness.probe.runs["spin:closed"] == 3


async def test_deadline_stops_a_handler_that_never_awaits(harness: Harness) -> None:
    """A streaming handler that never awaits is stopped at its deadline (DeadlineExceeded)."""
    request = envelope("spin", {"key": "late", "count": SPIN_STEPS})
    async with await harness.client.subscribe(request, timeout=0.05) as updates:
        with pytest.raises(errors.DeadlineExceeded):
            async for _ in updates:
                pass
    await harness.probe.wait("closed:late")
    assert harness.probe.runs["spin:late"] < SPIN_STEPS
    assert harness.probe.closed_in_call_task == {"late": True}


async def test_cancel_ends_the_call_and_the_handler_still_completes(harness: Harness) -> None:
    """Cancelling after the first item ends the call; its non-awaiting handler runs to the end."""
    request = envelope("spin", {"key": "cancel", "count": SPIN_STEPS})
    updates = await harness.client.subscribe(request)
    first = await anext(updates)
    assert first.HasField("task_update")
    await updates.cancel()
    await harness.probe.wait("closed:cancel")
    # Exactly-once: an explicit cancel stops the call, not the delivery (test_cancellation.py).
    assert harness.probe.runs["spin:cancel"] == SPIN_STEPS
    assert harness.probe.closed_in_call_task == {"cancel": True}
