"""Acks, exactly-once delivery and batch results behave the same on every transport.

(Named ``test_delivery_acks``: ``tests/unit/core/test_acks.py`` exists and test basenames must be
unique in the rootless test tree.)
"""

from __future__ import annotations

import asyncio

import pytest

from asap import errors
from asap.v1 import payload_pb2
from tests.conformance._service import Harness, as_dict, envelope
from tests.conftest import STORES


pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.parametrize("store_kind", STORES, indirect=True),  # in memory and in Redis
]


async def test_requires_ack_send_returns_processed(harness: Harness) -> None:
    """Send of an envelope with requires_ack returns the answer and a PROCESSED ack for it."""
    request = envelope("echo", {"a": 1}, requires_ack=True)
    response = await harness.client.send(request)
    assert response.ack.original_envelope_id == request.id
    assert response.ack.status == payload_pb2.ACK_STATUS_PROCESSED
    assert as_dict(response.envelope.task_response.result) == {"a": 1}


async def test_requires_ack_failure_carries_rejected_among_details(harness: Harness) -> None:
    """A failed Send with requires_ack raises the error with a REJECTED MessageAck among its details."""
    request = envelope("raise", {"class": "InvalidArgument"}, requires_ack=True)
    with pytest.raises(errors.InvalidArgument) as caught:
        await harness.client.send(request)
    (ack,) = errors.details_of(caught.value, payload_pb2.MessageAck)
    assert ack.original_envelope_id == request.id
    assert ack.status == payload_pb2.ACK_STATUS_REJECTED
    assert ack.reason.startswith("INVALID_ARGUMENT: ")


async def test_unknown_skill_with_requires_ack_is_rejected(harness: Harness) -> None:
    """A refusal before the handler (no such skill) is REJECTED too."""
    request = envelope("missing", requires_ack=True)
    with pytest.raises(errors.SkillNotFound) as caught:
        await harness.client.send(request)
    (ack,) = errors.details_of(caught.value, payload_pb2.MessageAck)
    assert ack.status == payload_pb2.ACK_STATUS_REJECTED


async def test_retransmission_runs_the_handler_once(harness: Harness) -> None:
    """Re-sending an envelope with the same id returns the same answer; the handler ran once."""
    request = envelope("count", requires_ack=True)
    first = await harness.client.send(request)
    second = await harness.client.send(request)
    assert second == first
    assert as_dict(first.envelope.task_response.result) == {"runs": 1}
    assert harness.probe.runs[f"count:{request.id}"] == 1


async def test_retransmission_from_another_connection_runs_the_handler_once(
    harness: Harness,
) -> None:
    """Dedupe is per (sender, id), not per connection: a second client gets the stored answer."""
    request = envelope("count")
    first = await harness.client.send(request)
    second = await harness.connect().send(request)
    assert second == first
    assert harness.probe.runs[f"count:{request.id}"] == 1


async def test_concurrent_retransmission_waits_for_the_first(harness: Harness) -> None:
    """A duplicate arriving while the first is processed waits for it and gets the same answer."""
    request = harness.client.prepare(envelope("count", {"gate": "concurrent"}))
    first = asyncio.create_task(harness.client.send(request))
    await harness.probe.entered("concurrent")
    second = asyncio.create_task(harness.connect().send(request))
    harness.probe.release("concurrent")
    answers = await asyncio.gather(first, second)
    assert answers[0] == answers[1]
    assert harness.probe.runs[f"count:{request.id}"] == 1


async def test_same_id_from_another_sender_is_another_envelope(harness: Harness) -> None:
    """The same envelope id from a different sender is processed separately."""
    request = harness.client.prepare(envelope("count"))
    other = harness.connect(sender="urn:asap:agent:someone-else")
    copy = envelope("count")
    copy.id = request.id
    await harness.client.send(request)
    response = await other.send(copy)
    assert as_dict(response.envelope.task_response.result) == {"runs": 2}


async def test_retransmission_over_every_rpc_runs_the_handler_once(harness: Harness) -> None:
    """Send, SendBatch, Publish, Subscribe and Stream share one dedupe: the handler runs once."""
    request = harness.client.prepare(envelope("count"))
    sent = await harness.client.send(request)
    (batched,) = await harness.client.send_batch([request])
    (published,) = await harness.client.publish([request])
    async with await harness.client.subscribe(request) as updates:
        subscribed = [item async for item in updates]
    async with await harness.client.stream() as stream:
        await stream.send(request)
        await stream.done_sending()
        streamed = [item.envelope async for item in stream]
    assert batched.envelope == sent.envelope
    assert published.envelope == sent.envelope
    assert subscribed == [sent.envelope]
    assert streamed == [sent.envelope]
    assert harness.probe.runs[f"count:{request.id}"] == 1


async def test_send_batch_mixed_results(harness: Harness) -> None:
    """SendBatch reports each envelope's own outcome: answers, errors and acks, in order."""
    invalid = envelope("echo")
    invalid.recipient = "not-a-urn"
    batch = [
        envelope("echo", {"i": 0}),
        envelope("raise", {"class": "NotFound"}, requires_ack=True),
        invalid,
        envelope("missing-skill"),
        envelope("echo", {"i": 4}, requires_ack=True),
    ]
    results = await harness.client.send_batch(batch)
    assert [result.WhichOneof("outcome") for result in results] == [
        "envelope",
        "error",
        "error",
        "error",
        "envelope",
    ]
    assert as_dict(results[0].envelope.task_response.result) == {"i": 0}
    assert not results[0].HasField("ack")
    assert isinstance(errors.from_status(results[1].error), errors.NotFound)
    assert results[1].ack.status == payload_pb2.ACK_STATUS_REJECTED
    invalid_error = errors.from_status(results[2].error)
    assert isinstance(invalid_error, errors.InvalidEnvelope)
    assert invalid_error.reason == "INVALID_URN"
    assert isinstance(errors.from_status(results[3].error), errors.SkillNotFound)
    assert results[4].ack.status == payload_pb2.ACK_STATUS_PROCESSED
    assert results[4].ack.original_envelope_id == batch[4].id


async def test_empty_batch_has_no_results(harness: Harness) -> None:
    """SendBatch of nothing returns no results."""
    assert await harness.client.send_batch([]) == []
