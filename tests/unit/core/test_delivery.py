"""Unit tests for asap.core.delivery.Deliverer: validation, dedupe, acks, answers, streaming."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from asap import errors, validation
from asap.core.agent import Agent, Incoming
from asap.core.dedupe import ClaimResult, InMemoryDedupeStore
from asap.v1 import agent_service_pb2, envelope_pb2, payload_pb2, task_pb2


if TYPE_CHECKING:
    from tests.unit.core.conftest import Harness, Kit


class _WatchedStore(InMemoryDedupeStore):
    """An in-memory store that lets a test wait until a number of claims have been made."""

    def __init__(self) -> None:
        super().__init__()
        self.claims = 0
        self._changed = asyncio.Condition()

    async def claim(self, key: str, fingerprint: bytes) -> ClaimResult:
        async with self._changed:
            self.claims += 1
            self._changed.notify_all()
        return await super().claim(key, fingerprint)

    async def wait_claims(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.claims >= count)


def _send(envelope: envelope_pb2.Envelope) -> agent_service_pb2.SendRequest:
    return agent_service_pb2.SendRequest(envelope=envelope)


def _response(written: Sequence[Message]) -> agent_service_pb2.SendResponse:
    (response,) = written
    assert isinstance(response, agent_service_pb2.SendResponse)
    return response


def _counting_agent(kit: Kit, calls: list[str]) -> Agent:
    agent = kit.agent()

    @agent.skill("count")
    async def count(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        calls.append(request.envelope.id)
        return payload_pb2.TaskResponse(task_id=f"task-{len(calls)}")

    return agent


def _streaming_agent(kit: Kit) -> Agent:
    agent = kit.agent()

    @agent.skill("progress")
    async def progress(
        request: Incoming[payload_pb2.TaskRequest],
    ) -> AsyncIterator[payload_pb2.TaskUpdate | payload_pb2.TaskResponse]:
        for percent in (10.0, 50.0, 90.0):
            yield payload_pb2.TaskUpdate(
                task_id="t", update_type=task_pb2.UPDATE_TYPE_PROGRESS, progress_percent=percent
            )
        if request.payload.input.fields["fail"].bool_value:
            message = "ran out of input"
            raise errors.FailedPrecondition(message)
        yield payload_pb2.TaskResponse(task_id="t", status=task_pb2.TASK_STATUS_COMPLETED)

    return agent


# -- dedupe -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_duplicate_runs_the_handler_once_and_returns_the_same_answer(kit: Kit) -> None:
    """The same (sender, id) twice runs the handler once; both calls get the same answer."""
    calls: list[str] = []
    harness = kit.Harness(_counting_agent(kit, calls))
    envelope = kit.envelope(kit.task("count"), envelope_id="dup")
    first = await harness.call("Send", _send(envelope))
    second = await harness.call("Send", _send(envelope))
    assert first.error is None
    assert second.error is None
    assert calls == ["dup"]
    assert _response(first.written) == _response(second.written)
    assert _response(first.written).envelope.task_response.task_id == "task-1"


@pytest.mark.asyncio
async def test_same_id_from_another_sender_is_processed(kit: Kit) -> None:
    """Ids are scoped by sender: another sender's envelope with the same id is new."""
    calls: list[str] = []
    harness = kit.Harness(_counting_agent(kit, calls))
    for sender in ("urn:asap:agent:one", "urn:asap:agent:two"):
        envelope = kit.envelope(kit.task("count"), envelope_id="same", sender=sender)
        assert (await harness.call("Send", _send(envelope))).error is None
    assert calls == ["same", "same"]


@pytest.mark.asyncio
async def test_concurrent_duplicates_run_the_handler_once(kit: Kit) -> None:
    """A duplicate arriving while the first is processed waits for it; both get the answer."""
    agent = kit.agent()
    gate = kit.Gate()

    @agent.skill("slow")
    async def slow(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        await gate.park()
        return payload_pb2.TaskResponse(task_id=f"run-{gate.arrivals}")

    store = _WatchedStore()
    harness = kit.Harness(agent, store=store)
    envelope = kit.envelope(kit.task("slow"), envelope_id="dup")
    first = asyncio.create_task(harness.call("Send", _send(envelope)))
    second = asyncio.create_task(harness.call("Send", _send(envelope)))
    await gate.entered.wait()
    await store.wait_claims(2)
    gate.release.set()
    results = await asyncio.gather(first, second)
    assert gate.arrivals == 1
    assert [r.error for r in results] == [None, None]
    answers = [_response(r.written) for r in results]
    assert answers[0] == answers[1]
    assert answers[0].envelope.task_response.task_id == "run-1"


@pytest.mark.parametrize(
    "failure",
    [
        errors.Unavailable("try later"),
        errors.Aborted("conflict"),
        errors.ResourceExhausted("busy"),
        errors.DeadlineExceeded("slow backend"),
        ValueError("bug"),
    ],
    ids=["unavailable", "aborted", "exhausted", "deadline", "internal"],
)
@pytest.mark.asyncio
async def test_transient_failure_is_not_remembered(kit: Kit, failure: Exception) -> None:
    """A transient failure is forgotten: the retransmission runs the handler again."""
    agent = kit.agent()
    calls: list[str] = []

    @agent.skill("flaky")
    async def flaky(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        calls.append(request.envelope.id)
        if len(calls) == 1:
            raise failure
        return payload_pb2.TaskResponse(task_id="ok")

    harness = kit.Harness(agent)
    envelope = kit.envelope(kit.task("flaky"), envelope_id="retry-me")
    first = await harness.call("Send", _send(envelope))
    second = await harness.call("Send", _send(envelope))
    assert first.error is not None
    assert second.error is None
    assert calls == ["retry-me", "retry-me"]
    assert _response(second.written).envelope.task_response.task_id == "ok"


@pytest.mark.parametrize(
    "failure",
    [
        errors.InvalidArgument("bad input"),
        errors.NotFound("no such task"),
        errors.PermissionDenied("not yours"),
        errors.FailedPrecondition("not now"),
    ],
    ids=["invalid", "not-found", "denied", "precondition"],
)
@pytest.mark.asyncio
async def test_permanent_failure_is_remembered(kit: Kit, failure: errors.AsapError) -> None:
    """A non-transient failure is the remembered outcome: the handler is not run again."""
    agent = kit.agent()
    calls: list[str] = []

    @agent.skill("bad")
    async def bad(request: Incoming[payload_pb2.TaskRequest]) -> None:
        calls.append(request.envelope.id)
        raise failure

    harness = kit.Harness(agent)
    envelope = kit.envelope(kit.task("bad"), envelope_id="once")
    first = await harness.call("Send", _send(envelope))
    second = await harness.call("Send", _send(envelope))
    assert calls == ["once"]
    for result in (first, second):
        assert type(result.error) is type(failure)
        assert result.error.message == failure.message


@pytest.mark.asyncio
async def test_waiting_duplicate_processes_after_a_transient_failure(kit: Kit) -> None:
    """A duplicate waiting on a delivery that fails transiently then runs the handler itself."""
    agent = kit.agent()
    gate = kit.Gate()

    @agent.skill("flaky")
    async def flaky(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        if gate.arrivals == 0:
            await gate.park()
            message = "backend down"
            raise errors.Unavailable(message)
        return payload_pb2.TaskResponse(task_id="second try")

    store = _WatchedStore()
    harness = kit.Harness(agent, store=store)
    envelope = kit.envelope(kit.task("flaky"), envelope_id="dup")
    first = asyncio.create_task(harness.call("Send", _send(envelope)))
    await gate.entered.wait()
    second = asyncio.create_task(harness.call("Send", _send(envelope)))
    await store.wait_claims(2)
    gate.release.set()
    failed, retried = await asyncio.gather(first, second)
    assert isinstance(failed.error, errors.Unavailable)
    assert retried.error is None
    assert _response(retried.written).envelope.task_response.task_id == "second try"


@pytest.mark.asyncio
async def test_cancelled_delivery_is_processed_again(kit: Kit) -> None:
    """A delivery cancelled mid-handler releases its key: the retry runs the handler again."""
    agent = kit.agent()
    gate = kit.Gate()

    @agent.skill("slow")
    async def slow(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        if gate.arrivals == 0:
            await gate.park()
        return payload_pb2.TaskResponse(task_id="second")

    harness = kit.Harness(agent)
    envelope = kit.envelope(kit.task("slow"), envelope_id="k")
    ctx = kit.ctx()
    first = asyncio.create_task(harness.deliverer.deliver(ctx, envelope))
    await gate.entered.wait()
    ctx.cancel_requested()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    result = await harness.deliverer.deliver(kit.ctx(), envelope)
    assert result.envelope.task_response.task_id == "second"


@pytest.mark.asyncio
async def test_transport_failure_does_not_cancel_the_handler(kit: Kit) -> None:
    """A call cancelled without an explicit cancel (the connection was cut) leaves the handler
    running; its outcome is stored and the retransmission, waiting for it, gets that outcome."""
    agent = kit.agent()
    gate = kit.Gate()
    observed: list[str] = []

    @agent.skill("slow")
    async def slow(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        observed.append("entered")
        await gate.park()
        observed.append("finished")
        return payload_pb2.TaskResponse(task_id="only-run")

    harness = kit.Harness(agent)
    envelope = kit.envelope(kit.task("slow"), envelope_id="cut")
    first = asyncio.create_task(harness.deliverer.deliver(kit.ctx(), envelope))
    await gate.entered.wait()
    first.cancel()  # what a transport does when the connection is lost
    with pytest.raises(asyncio.CancelledError):
        await first
    assert harness.deliverer.detached == 1
    retransmission = asyncio.create_task(harness.deliverer.deliver(kit.ctx(), envelope))
    gate.release.set()
    result = await retransmission
    assert result.envelope.task_response.task_id == "only-run"
    assert observed == ["entered", "finished"]
    assert harness.deliverer.detached == 0
    assert harness.deliverer.stats.detached == 1


@pytest.mark.asyncio
async def test_detached_deliveries_are_bounded(kit: Kit) -> None:
    """Beyond max_detached, a delivery whose call is cut is cancelled with it (and counted)."""
    agent = kit.agent()
    gate = kit.Gate()
    observed: list[str] = []

    @agent.skill("slow")
    async def slow(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        try:
            await gate.park()
        except asyncio.CancelledError:
            observed.append(request.envelope.id)
            raise
        return payload_pb2.TaskResponse(task_id="done")

    harness = kit.Harness(agent)
    harness.deliverer.max_detached = 1
    calls = []
    for name in ("a", "b"):
        gate.entered.clear()
        call = asyncio.create_task(
            harness.deliverer.deliver(kit.ctx(), kit.envelope(kit.task("slow"), envelope_id=name))
        )
        await gate.entered.wait()
        call.cancel()
        calls.append(call)
    for call in calls:
        with pytest.raises(asyncio.CancelledError):
            await call
    assert harness.deliverer.detached == 1
    assert harness.deliverer.stats.cancelled_over_bound == 1
    await harness.deliverer.close()
    assert sorted(observed) == ["a", "b"]


@pytest.mark.asyncio
async def test_deadline_cancels_the_handler(kit: Kit) -> None:
    """A call cancelled at its deadline cancels the handler (the claim is released)."""
    agent = kit.agent()
    gate = kit.Gate()
    observed: list[str] = []

    @agent.skill("slow")
    async def slow(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        try:
            await gate.park()
        except asyncio.CancelledError:
            observed.append("cancelled")
            raise
        return payload_pb2.TaskResponse(task_id="done")

    harness = kit.Harness(agent)
    ctx = kit.ctx(timeout=0.01)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout_at(ctx.deadline):
            await harness.deliverer.deliver(ctx, kit.envelope(kit.task("slow"), envelope_id="d"))
    await harness.deliverer.wait_idle()
    assert observed == ["cancelled"]


# -- acks -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_requires_ack_gets_processed(kit: Kit, harness: Harness) -> None:
    """A successful envelope with requires_ack is acknowledged PROCESSED."""
    envelope = kit.envelope(envelope_id="acked", requires_ack=True)
    result = await harness.deliverer.deliver(kit.ctx(), envelope)
    assert result.HasField("envelope")
    assert result.ack == payload_pb2.MessageAck(
        original_envelope_id="acked", status=payload_pb2.ACK_STATUS_PROCESSED
    )
    sent = await harness.call("Send", _send(kit.envelope(envelope_id="b", requires_ack=True)))
    assert _response(sent.written).ack.status == payload_pb2.ACK_STATUS_PROCESSED


@pytest.mark.asyncio
async def test_without_requires_ack_there_is_no_ack(kit: Kit, harness: Harness) -> None:
    """An envelope that does not ask for an ack gets none."""
    result = await harness.deliverer.deliver(kit.ctx(), kit.envelope())
    assert not result.HasField("ack")


@pytest.mark.asyncio
async def test_requires_ack_gets_rejected_with_reason(kit: Kit) -> None:
    """A failed envelope with requires_ack is REJECTED with "REASON: message"."""
    agent = kit.agent()

    @agent.skill("missing-task")
    async def missing(request: Incoming[payload_pb2.TaskRequest]) -> None:
        message = "no task t-9"
        raise errors.NotFound(message)

    harness = kit.Harness(agent)
    envelope = kit.envelope(kit.task("missing-task"), envelope_id="r", requires_ack=True)
    result = await harness.deliverer.deliver(kit.ctx(), envelope)
    assert result.WhichOneof("outcome") == "error"
    assert result.ack == payload_pb2.MessageAck(
        original_envelope_id="r",
        status=payload_pb2.ACK_STATUS_REJECTED,
        reason="NOT_FOUND: no task t-9",
    )
    # Send fails the call instead and carries the REJECTED ack among the error's details.
    sent = await harness.call("Send", _send(envelope))
    assert isinstance(sent.error, errors.NotFound)
    assert errors.details_of(sent.error, payload_pb2.MessageAck) == [result.ack]


@pytest.mark.asyncio
async def test_invalid_envelope_with_requires_ack_is_rejected(kit: Kit, harness: Harness) -> None:
    """A validation failure also produces a REJECTED ack naming the reason."""
    envelope = kit.envelope(envelope_id="v", requires_ack=True, sender="bob")
    result = await harness.deliverer.deliver(kit.ctx(), envelope)
    assert result.ack.status == payload_pb2.ACK_STATUS_REJECTED
    assert result.ack.reason.startswith("INVALID_URN: ")


@pytest.mark.asyncio
async def test_received_ack_is_emitted_first(kit: Kit) -> None:
    """With ack_received, a RECEIVED ack is emitted before anything the handler produces."""
    harness = kit.Harness(_streaming_agent(kit))
    emitted: list[envelope_pb2.Envelope] = []

    async def emit(item: envelope_pb2.Envelope) -> None:
        emitted.append(item)

    envelope = kit.envelope(kit.task("progress"), envelope_id="s", requires_ack=True)
    retransmitted = envelope_pb2.Envelope()
    retransmitted.CopyFrom(envelope)  # the handler reads a map key, which adds it to its envelope
    result = await harness.deliverer.deliver(kit.ctx(), envelope, emit, ack_received=True)
    kinds = [item.WhichOneof("payload") for item in emitted]
    assert kinds == ["message_ack", "task_update", "task_update", "task_update", "task_response"]
    assert emitted[0].message_ack == payload_pb2.MessageAck(
        original_envelope_id="s", status=payload_pb2.ACK_STATUS_RECEIVED
    )
    assert result.ack.status == payload_pb2.ACK_STATUS_PROCESSED
    # A duplicate replays only the stored answer: no RECEIVED ack, no updates.
    replayed: list[envelope_pb2.Envelope] = []

    async def emit_again(item: envelope_pb2.Envelope) -> None:
        replayed.append(item)

    again = await harness.deliverer.deliver(kit.ctx(), retransmitted, emit_again, ack_received=True)
    assert replayed == [emitted[-1]]
    assert again == result


# -- answers ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_answer_is_addressed_back_to_the_sender(kit: Kit, harness: Harness) -> None:
    """The answer goes from the recipient to the sender, correlated and in the same trace."""
    envelope = kit.envelope(kit.task("echo", "hi"), envelope_id="q")
    envelope.trace_id = "trace-7"
    result = await harness.deliverer.deliver(kit.ctx(), envelope)
    answer = result.envelope
    assert answer.sender == kit.AGENT_ID
    assert answer.recipient == kit.CLIENT
    assert answer.correlation_id == "q"
    assert answer.trace_id == "trace-7"
    assert answer.id
    assert answer.id != "q"
    assert answer.asap_version == validation.ASAP_VERSION
    assert answer.timestamp.seconds == int(kit.NOW)
    assert kit.text_of(answer.task_response.result) == "hi"


@pytest.mark.asyncio
async def test_handler_may_return_a_whole_envelope(kit: Kit) -> None:
    """A returned envelope keeps its own fields; an empty correlation_id is filled in."""
    agent = kit.agent()

    @agent.on(payload_pb2.McpToolCall)
    async def tool(request: Incoming[payload_pb2.McpToolCall]) -> envelope_pb2.Envelope:
        answer = envelope_pb2.Envelope(
            id="my-id",
            sender=kit.AGENT_ID,
            recipient="urn:asap:agent:elsewhere",
            correlation_id=request.payload.request_id,
            mcp_tool_result=payload_pb2.McpToolResult(request_id="r", success=True),
        )
        answer.extensions.update({"x": 1})
        return answer

    harness = kit.Harness(agent)
    call = payload_pb2.McpToolCall(request_id="", tool_name="t")
    result = await harness.deliverer.deliver(kit.ctx(), kit.envelope(call, envelope_id="c"))
    assert result.envelope.id == "my-id"
    assert result.envelope.recipient == "urn:asap:agent:elsewhere"
    assert result.envelope.correlation_id == "c"
    assert result.envelope.extensions == struct_pb2.Struct(
        fields={"x": struct_pb2.Value(number_value=1)}
    )
    explicit = payload_pb2.McpToolCall(request_id="kept", tool_name="t")
    result = await harness.deliverer.deliver(kit.ctx(), kit.envelope(explicit, envelope_id="d"))
    assert result.envelope.correlation_id == "kept"


@pytest.mark.asyncio
async def test_a_returned_envelope_is_sent_as_the_agent(kit: Kit) -> None:
    """A handler cannot answer as another agent: the sender of its envelope becomes the agent's."""
    agent = kit.agent()

    @agent.on(payload_pb2.McpToolCall)
    async def tool(request: Incoming[payload_pb2.McpToolCall]) -> envelope_pb2.Envelope:
        return envelope_pb2.Envelope(
            sender="urn:asap:agent:impersonated",
            recipient=request.envelope.sender,
            mcp_tool_result=payload_pb2.McpToolResult(request_id="r", success=True),
        )

    harness = kit.Harness(agent)
    call = payload_pb2.McpToolCall(request_id="r", tool_name="t")
    result = await harness.deliverer.deliver(kit.ctx(), kit.envelope(call, envelope_id="c"))
    assert result.envelope.sender == kit.AGENT_ID


@pytest.mark.asyncio
async def test_an_envelope_for_another_recipient_is_refused_unrun(
    kit: Kit, harness: Harness
) -> None:
    """NOT_FOUND (UNKNOWN_RECIPIENT), and nothing is claimed: the same id may be used again."""
    envelope = kit.envelope(kit.task("echo", "hi"), envelope_id="r", recipient="urn:asap:agent:x")
    result = await harness.deliverer.deliver(kit.ctx(), envelope)
    error = errors.from_status(result.error)
    assert isinstance(error, errors.UnknownRecipient)
    assert error.metadata == {"recipient": kit.AGENT_ID}
    envelope.recipient = kit.AGENT_ID
    result = await harness.deliverer.deliver(kit.ctx(), envelope)
    assert result.HasField("envelope")


@pytest.mark.asyncio
async def test_an_answer_built_in_place_is_the_stored_outcome(kit: Kit, harness: Harness) -> None:
    """With ``answer_into`` the answer is built there (the result has none of its own), and what
    a retransmission gets back from the store is that same answer, with the same ack."""
    envelope = kit.envelope(kit.task("echo", "hi"), envelope_id="placed", requires_ack=True)
    response = agent_service_pb2.SendResponse()
    first = await harness.deliverer.deliver(kit.ctx(), envelope, answer_into=response.envelope)
    assert first.WhichOneof("outcome") is None
    assert response.envelope.correlation_id == "placed"
    assert response.envelope.sender == kit.AGENT_ID
    assert first.ack.status == payload_pb2.ACK_STATUS_PROCESSED
    replayed = await harness.deliverer.deliver(kit.ctx(), envelope)
    assert replayed.envelope == response.envelope
    assert replayed.ack == first.ack


@pytest.mark.asyncio
async def test_a_returned_envelope_is_copied_in_place_and_a_failure_leaves_nothing(
    kit: Kit,
) -> None:
    """A handler's own envelope lands in ``answer_into`` too; a handler that fails leaves it empty."""
    agent = kit.agent()

    @agent.on(payload_pb2.McpToolCall)
    async def tool(request: Incoming[payload_pb2.McpToolCall]) -> envelope_pb2.Envelope:
        if request.payload.tool_name == "fail":
            message = "no such tool"
            raise errors.NotFound(message)
        return envelope_pb2.Envelope(
            id="mine", mcp_tool_result=payload_pb2.McpToolResult(request_id="r", success=True)
        )

    harness = kit.Harness(agent)
    into = envelope_pb2.Envelope()
    call = payload_pb2.McpToolCall(request_id="r", tool_name="t")
    result = await harness.deliverer.deliver(
        kit.ctx(), kit.envelope(call, envelope_id="c"), answer_into=into
    )
    assert not result.HasField("envelope")
    assert (into.id, into.sender, into.correlation_id) == ("mine", kit.AGENT_ID, "c")
    failed = envelope_pb2.Envelope()
    broken = payload_pb2.McpToolCall(request_id="r", tool_name="fail")
    result = await harness.deliverer.deliver(
        kit.ctx(), kit.envelope(broken, envelope_id="f"), answer_into=failed
    )
    assert isinstance(errors.from_status(result.error), errors.NotFound)
    assert failed == envelope_pb2.Envelope()


@pytest.mark.asyncio
async def test_handler_returning_none_sends_no_envelope(kit: Kit) -> None:
    """A handler that returns None produces an empty answer."""
    agent = kit.agent()

    @agent.on(payload_pb2.ArtifactNotify)
    async def noted(request: Incoming[payload_pb2.ArtifactNotify]) -> None:
        return None

    harness = kit.Harness(agent)
    envelope = kit.envelope(payload_pb2.ArtifactNotify(artifact_id="a"))
    result = await harness.deliverer.deliver(kit.ctx(), envelope)
    assert result.WhichOneof("outcome") is None
    sent = await harness.call(
        "Send", _send(kit.envelope(payload_pb2.ArtifactNotify(), envelope_id="2"))
    )
    assert sent.error is None
    assert not _response(sent.written).HasField("envelope")


@pytest.mark.asyncio
async def test_subscribe_streams_every_update_then_the_answer(kit: Kit) -> None:
    """Subscribe writes each item a streaming handler yields, in order, correlated."""
    harness = kit.Harness(_streaming_agent(kit))
    envelope = kit.envelope(kit.task("progress"), envelope_id="sub")
    result = await harness.call("Subscribe", agent_service_pb2.SubscribeRequest(envelope=envelope))
    assert result.error is None
    items = []
    for response in result.written:
        assert isinstance(response, agent_service_pb2.SubscribeResponse)
        items.append(response.envelope)
    assert [item.WhichOneof("payload") for item in items] == [
        "task_update",
        "task_update",
        "task_update",
        "task_response",
    ]
    assert [item.task_update.progress_percent for item in items[:3]] == [10.0, 50.0, 90.0]
    assert all(item.correlation_id == "sub" for item in items)
    assert len({item.id for item in items}) == 4


@pytest.mark.asyncio
async def test_subscribe_streams_updates_then_fails(kit: Kit) -> None:
    """A streaming handler that fails after some updates: the updates arrive, then the error."""
    harness = kit.Harness(_streaming_agent(kit))
    request = kit.task("progress")
    request.input.update({"fail": True})
    envelope = kit.envelope(request, envelope_id="sub-fail")
    result = await harness.call("Subscribe", agent_service_pb2.SubscribeRequest(envelope=envelope))
    assert isinstance(result.error, errors.FailedPrecondition)
    assert result.error.message == "ran out of input"
    assert len(result.written) == 3


@pytest.mark.asyncio
async def test_subscribe_with_unary_handler_streams_one_answer(kit: Kit, harness: Harness) -> None:
    """Subscribe to a unary handler streams its one answer."""
    envelope = kit.envelope(kit.task("echo", "one"), envelope_id="u")
    result = await harness.call("Subscribe", agent_service_pb2.SubscribeRequest(envelope=envelope))
    assert result.error is None
    (response,) = result.written
    assert isinstance(response, agent_service_pb2.SubscribeResponse)
    assert kit.text_of(response.envelope.task_response.result) == "one"


@pytest.mark.asyncio
async def test_send_with_streaming_handler_answers_with_the_last_item(kit: Kit) -> None:
    """Send to a streaming handler answers with the last item it yields."""
    harness = kit.Harness(_streaming_agent(kit))
    result = await harness.call("Send", _send(kit.envelope(kit.task("progress"))))
    assert result.error is None
    answer = _response(result.written).envelope
    assert answer.WhichOneof("payload") == "task_response"
    assert answer.task_response.status == task_pb2.TASK_STATUS_COMPLETED


# -- validation -------------------------------------------------------------------------------


def _without_payload(kit: Kit) -> envelope_pb2.Envelope:
    envelope = kit.envelope()
    envelope.ClearField("task_request")
    return envelope


@pytest.mark.parametrize(
    ("mutate", "reason", "field"),
    [
        (_without_payload, "MISSING_PAYLOAD", "payload"),
        (lambda kit: kit.envelope(sender="bob"), "INVALID_URN", "sender"),
        (lambda kit: kit.envelope(recipient="urn:asap:user:x"), "INVALID_URN", "recipient"),
        (lambda kit: kit.envelope(envelope_id=""), "INVALID_ID", "id"),
        (lambda kit: kit.envelope(timestamp=kit.NOW - 301), "STALE_TIMESTAMP", "timestamp"),
        (lambda kit: kit.envelope(timestamp=kit.NOW + 31), "FUTURE_TIMESTAMP", "timestamp"),
        (
            lambda kit: kit.envelope(payload_pb2.TaskResponse()),
            "MISSING_CORRELATION_ID",
            "correlation_id",
        ),
    ],
    ids=["no-payload", "bad-sender", "bad-recipient", "no-id", "stale", "future", "uncorrelated"],
)
@pytest.mark.asyncio
async def test_validation_failure_is_invalid_envelope(
    kit: Kit,
    mutate: Callable[[Kit], envelope_pb2.Envelope],
    reason: str,
    field: str,
) -> None:
    """An envelope that breaks a rule fails with InvalidEnvelope naming the rule and the field."""
    agent = kit.agent()
    ran: list[str] = []

    @agent.on(payload_pb2.TaskResponse)
    async def spy(request: Incoming[payload_pb2.TaskResponse]) -> None:
        ran.append("spy")

    harness = kit.Harness(agent)
    envelope = mutate(kit)
    result = await harness.call("Send", _send(envelope))
    assert isinstance(result.error, errors.InvalidEnvelope)
    assert result.error.reason == reason
    (bad_request,) = errors.details_of(result.error, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == [field]
    assert ran == []
    assert result.written == []


@pytest.mark.asyncio
async def test_internal_error_hides_the_exception(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected exception becomes INTERNAL without its text; the traceback is logged."""
    agent = kit.agent()

    @agent.skill("leak")
    async def leak(request: Incoming[payload_pb2.TaskRequest]) -> None:
        message = "password=hunter2"
        raise RuntimeError(message)

    harness = kit.Harness(agent)
    with caplog.at_level(logging.ERROR, logger="asap.server"):
        result = await harness.deliverer.deliver(kit.ctx(), kit.envelope(kit.task("leak")))
    assert "hunter2" not in str(result)
    error = errors.from_status(result.error)
    assert type(error) is errors.Internal
    (record,) = [r for r in caplog.records if r.name == "asap.server"]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
