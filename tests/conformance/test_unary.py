"""Unary RPCs (Send, SendBatch, GetManifest, invoke) behave the same on every transport."""

from __future__ import annotations

import asyncio

import pytest

from asap import errors
from asap.v1 import agent_service_pb2, task_pb2
from tests.conformance._service import (
    TESTER,
    Harness,
    as_dict,
    envelope,
    tool_call_envelope,
)


pytestmark = pytest.mark.asyncio


async def test_send_returns_the_answer_envelope(harness: Harness) -> None:
    """Send delivers the envelope and returns the handler's answer, addressed back to the caller."""
    request = envelope("echo", {"text": "hello", "n": 3, "nested": {"ok": True}})
    response = await harness.client.send(request)
    answer = response.envelope
    assert answer.WhichOneof("payload") == "task_response"
    assert answer.task_response.status == task_pb2.TASK_STATUS_COMPLETED
    assert as_dict(answer.task_response.result) == {"text": "hello", "n": 3, "nested": {"ok": True}}
    assert answer.correlation_id == request.id
    assert answer.sender == harness.agent_id
    assert answer.recipient == TESTER
    assert answer.id
    assert answer.id != request.id
    assert answer.HasField("timestamp")
    assert not response.HasField("ack")


async def test_send_fills_envelope_defaults(harness: Harness) -> None:
    """The client fills id, timestamp, version and sender of an envelope that leaves them empty."""
    request = envelope("inspect")
    await harness.client.send(request)
    assert request.id
    assert request.HasField("timestamp")
    assert request.asap_version
    assert request.sender == TESTER


async def test_request_task_returns_the_answer(harness: Harness) -> None:
    """request_task is Send of a TaskRequest and returns the answer envelope."""
    answer = await harness.client.request_task(harness.agent_id, "echo", {"text": "hi"})
    assert as_dict(answer.task_response.result) == {"text": "hi"}


async def test_non_task_payload_reaches_its_handler(harness: Harness) -> None:
    """An McpToolCall is routed to the agent.on handler and answered with an McpToolResult."""
    request = tool_call_envelope("search", {"query": "asap"})
    response = await harness.client.send(request)
    result = response.envelope.mcp_tool_result
    assert response.envelope.correlation_id == request.id
    assert result.request_id == "req-search"
    assert result.success
    assert as_dict(result.result) == {"tool": "search", "query": "asap"}


async def test_unknown_skill_is_skill_not_found(harness: Harness) -> None:
    """A TaskRequest for a skill the agent lacks fails with SkillNotFound naming the skill."""
    with pytest.raises(errors.SkillNotFound) as caught:
        await harness.client.send(envelope("no-such-skill"))
    assert caught.value.code == errors.Code.NOT_FOUND
    assert caught.value.reason == "SKILL_NOT_FOUND"
    assert caught.value.metadata == {"skill_id": "no-such-skill"}


async def test_payload_without_handler_is_no_handler(harness: Harness) -> None:
    """A payload kind the agent registered no handler for fails with NoHandler."""
    request = envelope("echo")
    request.state_query.task_id = "t-1"
    with pytest.raises(errors.NoHandler) as caught:
        await harness.client.send(request)
    assert caught.value.code == errors.Code.UNIMPLEMENTED
    assert caught.value.metadata == {"payload": "StateQuery"}


async def test_send_batch_answers_each_envelope_in_order(harness: Harness) -> None:
    """SendBatch returns one answer per envelope, in the order sent."""
    results = await harness.client.send_batch(
        [envelope("echo", {"i": index}) for index in range(5)]
    )
    assert [as_dict(result.envelope.task_response.result) for result in results] == [
        {"i": index} for index in range(5)
    ]


async def test_invoke_returns_reply_with_response_message(harness: Harness) -> None:
    """invoke makes a unary call by method name and returns the typed response."""
    request = agent_service_pb2.SendRequest(
        envelope=harness.client.prepare(envelope("echo", {"k": "v"}))
    )
    reply = await harness.client.invoke("Send", request)
    assert isinstance(reply.message, agent_service_pb2.SendResponse)
    assert as_dict(reply.message.envelope.task_response.result) == {"k": "v"}


async def test_closed_client_refuses_calls(harness: Harness) -> None:
    """A call on a closed client raises InvalidState locally; close is idempotent."""
    client = harness.connect()
    await client.get_manifest()
    await client.close()
    await client.close()
    with pytest.raises(errors.InvalidState):
        await client.send(envelope("echo"))


async def test_many_concurrent_calls_on_one_client(harness: Harness) -> None:
    """Concurrent calls on one client each get their own answer."""
    answers = await asyncio.gather(
        *(harness.client.send(envelope("echo", {"i": index})) for index in range(20))
    )
    assert [as_dict(answer.envelope.task_response.result) for answer in answers] == [
        {"i": index} for index in range(20)
    ]
