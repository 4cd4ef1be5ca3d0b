"""An agent answers only for itself (issue 11, "Spoofed replies"): ``recipient`` must name it, and
every envelope it sends back (answers, acks, updates) carries its own id as ``sender``."""

from __future__ import annotations

import pytest

from asap import errors
from asap.v1 import agent_service_pb2, envelope_pb2, payload_pb2
from tests.conformance._service import TESTER, Harness, envelope, stamped


pytestmark = pytest.mark.asyncio

IMPOSTOR = "urn:asap:agent:someone-else"
"""A well-formed URN that is not the conformance agent."""


def addressed_elsewhere(skill: str, *, requires_ack: bool = False) -> envelope_pb2.Envelope:
    built = envelope(skill, {"v": 1}, requires_ack=requires_ack)
    built.recipient = IMPOSTOR
    return built


def assert_unknown_recipient(error: errors.AsapError, agent_id: str) -> None:
    assert isinstance(error, errors.UnknownRecipient)
    assert error.code == errors.Code.NOT_FOUND
    assert error.reason == "UNKNOWN_RECIPIENT"
    assert error.metadata["recipient"] == agent_id


async def test_send_to_another_recipient_is_not_found(harness: Harness) -> None:
    """Send of an envelope addressed to another agent fails NOT_FOUND (UNKNOWN_RECIPIENT), unrun."""
    built = addressed_elsewhere("count", requires_ack=True)
    with pytest.raises(errors.UnknownRecipient) as caught:
        await harness.client.send(built)
    assert_unknown_recipient(caught.value, harness.agent_id)
    (ack,) = errors.details_of(caught.value, payload_pb2.MessageAck)
    assert ack.status == payload_pb2.ACK_STATUS_REJECTED
    assert harness.probe.runs[f"count:{built.id}"] == 0


async def test_send_batch_refuses_only_the_envelope_for_another_recipient(
    harness: Harness,
) -> None:
    """In a SendBatch only the envelope addressed elsewhere fails; the others are answered."""
    results = await harness.client.send_batch(
        [envelope("echo", {"i": 1}), addressed_elsewhere("echo"), envelope("echo", {"i": 2})]
    )
    assert [result.WhichOneof("outcome") for result in results] == ["envelope", "error", "envelope"]
    assert_unknown_recipient(errors.from_status(results[1].error), harness.agent_id)


async def test_stream_refuses_the_envelope_for_another_recipient_and_goes_on(
    harness: Harness,
) -> None:
    """On Stream the envelope addressed elsewhere gets an error item; the stream goes on."""
    async with await harness.client.stream() as stream:
        bad = await stream.send(addressed_elsewhere("echo"))
        good = await stream.send(envelope("echo", {"i": 1}))
        await stream.done_sending()
        items = [item async for item in stream]
    failures = [item.error for item in items if item.WhichOneof("item") == "error"]
    assert [failure.envelope_id for failure in failures] == [bad.id]
    assert_unknown_recipient(errors.from_status(failures[0].status), harness.agent_id)
    answers = [item.envelope for item in items if item.WhichOneof("item") == "envelope"]
    assert [answer.correlation_id for answer in answers] == [good.id]


async def test_an_empty_recipient_is_invalid(harness: Harness) -> None:
    """An envelope without a recipient is INVALID_ARGUMENT (INVALID_URN), not delivered."""
    built = stamped(envelope("echo"))
    built.recipient = ""
    with pytest.raises(errors.InvalidEnvelope) as caught:
        await harness.client.invoke("Send", agent_service_pb2.SendRequest(envelope=built))
    assert caught.value.reason == "INVALID_URN"


async def test_send_answers_as_the_agent(harness: Harness) -> None:
    """Send's answer comes from the agent's own URN, back to the sender."""
    response = await harness.client.send(envelope("echo", {"v": 1}))
    assert (response.envelope.sender, response.envelope.recipient) == (harness.agent_id, TESTER)


async def test_send_batch_answers_and_acks_as_the_agent(harness: Harness) -> None:
    """SendBatch answers and refusals' acks come from the agent."""
    results = await harness.client.send_batch(
        [envelope("echo", requires_ack=True), addressed_elsewhere("echo", requires_ack=True)]
    )
    assert results[0].envelope.sender == harness.agent_id
    assert results[1].ack.status == payload_pb2.ACK_STATUS_REJECTED


async def test_stream_updates_answers_and_acks_come_from_the_agent(harness: Harness) -> None:
    """Every envelope a Stream pushes (acks, updates, answers, rejections) is sent as the agent."""
    async with await harness.client.stream() as stream:
        await stream.send(envelope("updates", {"count": 2}, requires_ack=True))
        await stream.send(addressed_elsewhere("echo", requires_ack=True))
        await stream.done_sending()
        pushed = [item.envelope async for item in stream if item.WhichOneof("item") == "envelope"]
    assert len(pushed) == 6  # RECEIVED, 2 updates, answer, PROCESSED; then the REJECTED ack
    assert {item.sender for item in pushed} == {harness.agent_id}
    assert {item.recipient for item in pushed} == {TESTER}
