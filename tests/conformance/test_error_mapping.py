"""Every error a handler raises reaches the caller as the same class with the same details.

(Named ``test_error_mapping`` rather than ``test_errors``: test basenames must be unique in the
rootless test tree, and ``tests/unit/core/test_errors.py`` exists.)
"""

from __future__ import annotations

import pytest
from google.rpc import error_details_pb2

from asap import errors
from asap.client import MAX_DRAIN_RETRIES
from asap.v1 import payload_pb2
from tests.conformance._service import (
    ERROR_CLASSES_BY_NAME,
    RATE_LIMIT_RETRY_AFTER,
    SECRET,
    Harness,
    echo_trailer_bytes,
    envelope,
    error_cases,
    error_details,
    error_message,
    error_metadata,
    received_class,
)


pytestmark = pytest.mark.asyncio

CASES = error_cases()


@pytest.mark.parametrize(("name", "reason"), CASES, ids=[f"{n}-{r}" for n, r in CASES])
async def test_handler_error_reaches_the_caller_unchanged(
    harness: Harness, name: str, reason: str
) -> None:
    """A handler raising X (with a reason, details and metadata) makes the caller raise the same."""
    client = harness.connect(retries=1)
    raised = ERROR_CLASSES_BY_NAME[name]
    with pytest.raises(errors.AsapError) as caught:
        await client.send(
            envelope("raise", {"class": name, "reason": reason}),
            metadata=(("x-echo", name),),
        )
    error = caught.value
    assert type(error) is received_class(raised)
    assert error.code == raised.code
    assert error.reason == reason
    assert error.message == error_message(name)
    assert list(error.details) == error_details(name)
    assert error.metadata == error_metadata(name, reason)
    assert error.trailing_metadata == (
        ("x-echo-trailer", name),
        ("x-echo-trailer-bin", echo_trailer_bytes(name)),
    )


async def test_rate_limited_from_a_handler_keeps_retry_after(harness: Harness) -> None:
    """A RateLimited raised by a handler arrives with its retry_after (sent as RetryInfo)."""
    with pytest.raises(errors.RateLimited) as caught:
        await harness.client.send(envelope("raise", {"class": "RateLimited"}))
    assert caught.value.retry_after == RATE_LIMIT_RETRY_AFTER
    assert errors.details_of(caught.value, error_details_pb2.RetryInfo) == []


async def test_error_with_requires_ack_carries_the_rejected_ack(harness: Harness) -> None:
    """With requires_ack, a failed Send's error details end with the REJECTED MessageAck."""
    request = envelope("raise", {"class": "AlreadyExists"}, requires_ack=True)
    with pytest.raises(errors.AlreadyExists) as caught:
        await harness.client.send(request)
    assert list(caught.value.details[:-1]) == error_details("AlreadyExists")
    (ack,) = errors.details_of(caught.value, payload_pb2.MessageAck)
    assert ack.original_envelope_id == request.id
    assert ack.status == payload_pb2.ACK_STATUS_REJECTED
    assert ack.reason == f"ALREADY_EXISTS: {error_message('AlreadyExists')}"


async def test_unexpected_exception_is_internal_with_a_generic_message(harness: Harness) -> None:
    """A handler's unexpected exception becomes Internal; its text never reaches the caller."""
    with pytest.raises(errors.Internal) as caught:
        await harness.client.send(envelope("crash"), metadata=(("x-echo", "crash"),))
    error = caught.value
    assert type(error) is errors.Internal
    assert error.code == errors.Code.INTERNAL
    assert error.reason == "INTERNAL"
    assert error.message == "internal error"
    assert error.details == ()
    assert error.metadata == {}
    assert "hunter2" not in repr(error)
    assert SECRET not in str(error)
    assert ("x-echo-trailer", "crash") in error.trailing_metadata


async def test_unexpected_exception_in_a_subscription_is_internal(harness: Harness) -> None:
    """An unexpected exception ends a subscription with a generic Internal."""
    async with await harness.client.subscribe(envelope("crash")) as updates:
        with pytest.raises(errors.Internal) as caught:
            async for _ in updates:
                pass
    assert caught.value.message == "internal error"
    assert "hunter2" not in str(caught.value)


async def test_unexpected_exception_on_a_stream_is_an_envelope_error(harness: Harness) -> None:
    """On Stream an unexpected exception is an Internal EnvelopeError; the stream goes on."""
    async with await harness.client.stream() as stream:
        bad = await stream.send(envelope("crash"))
        good = await stream.send(envelope("echo"))
        await stream.done_sending()
        items = [item async for item in stream]
    failures = {
        item.error.envelope_id: item.error.status for item in items if item.HasField("error")
    }
    assert set(failures) == {bad.id}
    error = errors.from_status(failures[bad.id])
    assert type(error) is errors.Internal
    assert error.message == "internal error"
    assert "hunter2" not in str(failures[bad.id])
    assert [item.envelope.correlation_id for item in items if item.HasField("envelope")] == [
        good.id
    ]


async def test_unavailable_from_a_handler_is_retried(harness: Harness) -> None:
    """UNAVAILABLE is retried by the client (not remembered by dedupe): the handler runs again."""
    client = harness.connect(retries=3)
    with pytest.raises(errors.Unavailable):
        await client.send(envelope("raise", {"class": "Unavailable", "key": "retried"}))
    assert harness.probe.runs["raise:retried"] == 3


async def test_shutting_down_is_retried_without_spending_the_retry_budget(harness: Harness) -> None:
    """SHUTTING_DOWN is retried elsewhere even with retries off, at most MAX_DRAIN_RETRIES times."""
    client = harness.connect(retries=1)
    with pytest.raises(errors.ShuttingDown):
        await client.send(envelope("raise", {"class": "ShuttingDown", "key": "drained"}))
    assert harness.probe.runs["raise:drained"] == 1 + MAX_DRAIN_RETRIES


async def test_a_remembered_error_is_replayed_for_a_retransmission(harness: Harness) -> None:
    """A permanent error is remembered: re-sending the envelope replays it without the handler."""
    request = envelope("raise", {"class": "NotFound", "key": "replayed"})
    for _ in range(2):
        with pytest.raises(errors.NotFound) as caught:
            await harness.client.send(request)
        assert caught.value.message == error_message("NotFound")
    assert harness.probe.runs["raise:replayed"] == 1
