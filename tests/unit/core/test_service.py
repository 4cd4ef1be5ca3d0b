"""Unit tests for asap.core.service.AgentServiceCore: every RPC of AgentService, in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

import pytest
from google.protobuf.message import Message

from asap import errors
from asap.core import dispatch
from asap.core.agent import Agent, Incoming
from asap.core.method import METHODS
from asap.core.middleware import BearerAuth, SenderBinding
from asap.v1 import agent_service_pb2, manifest_pb2, payload_pb2, task_pb2


if TYPE_CHECKING:
    from tests.unit.core.conftest import FakeCall, Harness, Kit


def _agent(kit: Kit) -> Agent:
    """The echo agent plus a streaming "progress" skill and a failing "fail" skill."""
    agent = kit.agent()

    @agent.skill("progress", description="Reports progress.")
    async def progress(
        request: Incoming[payload_pb2.TaskRequest],
    ) -> AsyncIterator[payload_pb2.TaskUpdate | payload_pb2.TaskResponse]:
        for percent in (25.0, 75.0):
            yield payload_pb2.TaskUpdate(task_id="t", progress_percent=percent)
        yield payload_pb2.TaskResponse(task_id="t", status=task_pb2.TASK_STATUS_COMPLETED)

    @agent.skill("fail", description="Always fails.")
    async def fail(request: Incoming[payload_pb2.TaskRequest]) -> None:
        message = "cannot do that"
        raise errors.FailedPrecondition(message)

    return agent


# -- Send -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_send_answers_with_envelope_and_ack(kit: Kit, harness: Harness) -> None:
    """Send answers with the handler's envelope and, when asked, a PROCESSED ack."""
    envelope = kit.envelope(kit.task("echo", "x"), envelope_id="s1", requires_ack=True)
    result = await harness.call("Send", agent_service_pb2.SendRequest(envelope=envelope))
    assert result.error is None
    response = kit.only(result.written, agent_service_pb2.SendResponse)
    assert response.envelope.correlation_id == "s1"
    assert kit.text_of(response.envelope.task_response.result) == "x"
    assert response.ack.original_envelope_id == "s1"
    assert response.ack.status == payload_pb2.ACK_STATUS_PROCESSED


@pytest.mark.asyncio
async def test_send_without_request_is_invalid_argument(kit: Kit, harness: Harness) -> None:
    """A unary call whose request stream is empty fails with INVALID_ARGUMENT."""
    result = await harness.call("Send")
    assert type(result.error) is errors.InvalidArgument
    assert result.written == []


@pytest.mark.asyncio
async def test_send_with_wrong_request_type_is_invalid_argument(kit: Kit, harness: Harness) -> None:
    """A request of the wrong message type fails with INVALID_ARGUMENT."""
    result = await harness.call("Send", agent_service_pb2.GetManifestRequest())
    assert type(result.error) is errors.InvalidArgument
    assert "SendRequest" in result.error.message


# -- SendBatch --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_send_batch_reports_each_item(kit: Kit) -> None:
    """Each batch item succeeds or fails on its own; results keep the request order."""
    harness = kit.Harness(_agent(kit))
    request = agent_service_pb2.SendBatchRequest(
        envelopes=[
            kit.envelope(kit.task("echo", "first"), envelope_id="1"),
            kit.envelope(kit.task("nope"), envelope_id="2"),
            kit.envelope(envelope_id="3", sender="not-a-urn"),
            kit.envelope(kit.task("fail"), envelope_id="4", requires_ack=True),
            kit.envelope(kit.task("echo", "last"), envelope_id="5", requires_ack=True),
        ]
    )
    result = await harness.call("SendBatch", request)
    assert result.error is None
    response = kit.only(result.written, agent_service_pb2.SendBatchResponse)
    results = list(response.results)
    assert [r.WhichOneof("outcome") for r in results] == [
        "envelope",
        "error",
        "error",
        "error",
        "envelope",
    ]
    assert kit.text_of(results[0].envelope.task_response.result) == "first"
    assert type(errors.from_status(results[1].error)) is errors.SkillNotFound
    invalid = errors.from_status(results[2].error)
    assert type(invalid) is errors.InvalidEnvelope
    assert invalid.reason == "INVALID_URN"
    assert type(errors.from_status(results[3].error)) is errors.FailedPrecondition
    assert results[3].ack.status == payload_pb2.ACK_STATUS_REJECTED
    assert kit.text_of(results[4].envelope.task_response.result) == "last"
    assert results[4].ack.status == payload_pb2.ACK_STATUS_PROCESSED


@pytest.mark.asyncio
async def test_empty_batch_has_no_results(kit: Kit, harness: Harness) -> None:
    """An empty batch answers with no results."""
    result = await harness.call("SendBatch", agent_service_pb2.SendBatchRequest())
    assert result.error is None
    response = kit.only(result.written, agent_service_pb2.SendBatchResponse)
    assert list(response.results) == []


# -- Subscribe --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_subscribe_streams_updates_then_answer(kit: Kit) -> None:
    """Subscribe writes each update and then the final answer."""
    harness = kit.Harness(_agent(kit))
    envelope = kit.envelope(kit.task("progress"), envelope_id="sub")
    result = await harness.call("Subscribe", agent_service_pb2.SubscribeRequest(envelope=envelope))
    assert result.error is None
    kinds = []
    for item in result.written:
        assert isinstance(item, agent_service_pb2.SubscribeResponse)
        assert item.envelope.correlation_id == "sub"
        kinds.append(item.envelope.WhichOneof("payload"))
    assert kinds == ["task_update", "task_update", "task_response"]


@pytest.mark.asyncio
async def test_subscribe_to_unknown_skill_fails_the_call(kit: Kit, harness: Harness) -> None:
    """A subscription whose envelope fails ends the call with that error and no items."""
    envelope = kit.envelope(kit.task("nope"))
    result = await harness.call("Subscribe", agent_service_pb2.SubscribeRequest(envelope=envelope))
    assert type(result.error) is errors.SkillNotFound
    assert result.written == []


# -- Publish ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_publish_processes_in_order_and_reports_each(kit: Kit) -> None:
    """Publish delivers the envelopes in order and answers once with every outcome."""
    agent = _agent(kit)
    order: list[str] = []

    @agent.on(payload_pb2.MessageSend)
    async def note(request: Incoming[payload_pb2.MessageSend]) -> None:
        order.append(request.envelope.id)

    harness = kit.Harness(agent)
    envelopes = [
        kit.envelope(payload_pb2.MessageSend(), envelope_id="p1"),
        kit.envelope(kit.task("fail"), envelope_id="p2"),
        kit.envelope(payload_pb2.MessageSend(), envelope_id="p3"),
    ]
    requests = [agent_service_pb2.PublishRequest(envelope=e) for e in envelopes]
    result = await harness.call("Publish", *requests)
    assert result.error is None
    response = kit.only(result.written, agent_service_pb2.PublishResponse)
    assert [r.WhichOneof("outcome") for r in response.results] == [None, "error", None]
    assert type(errors.from_status(response.results[1].error)) is errors.FailedPrecondition
    assert order == ["p1", "p3"]


@pytest.mark.asyncio
async def test_publish_refusal_of_one_envelope_does_not_stop_the_others(kit: Kit) -> None:
    """An envelope refused by middleware fails alone; the rest of the stream is processed."""
    harness = kit.Harness(
        kit.agent(),
        middleware=[BearerAuth.static({"tok": kit.CLIENT}), SenderBinding()],
    )
    requests = [
        agent_service_pb2.PublishRequest(envelope=kit.envelope(envelope_id="1")),
        agent_service_pb2.PublishRequest(
            envelope=kit.envelope(
                envelope_id="2", sender="urn:asap:agent:mallory", requires_ack=True
            )
        ),
        agent_service_pb2.PublishRequest(envelope=kit.envelope(envelope_id="3")),
    ]
    result = await harness.call("Publish", *requests, metadata=(("authorization", "Bearer tok"),))
    assert result.error is None
    response = kit.only(result.written, agent_service_pb2.PublishResponse)
    assert [r.WhichOneof("outcome") for r in response.results] == ["envelope", "error", "envelope"]
    assert type(errors.from_status(response.results[1].error)) is errors.SenderMismatch
    assert response.results[1].ack.status == payload_pb2.ACK_STATUS_REJECTED


@pytest.mark.asyncio
async def test_empty_publish_answers_with_no_results(kit: Kit, harness: Harness) -> None:
    """A publish stream closed at once answers with no results."""
    result = await harness.call("Publish")
    assert result.error is None
    response = kit.only(result.written, agent_service_pb2.PublishResponse)
    assert list(response.results) == []


@pytest.mark.asyncio
async def test_publish_with_wrong_message_type_fails(kit: Kit, harness: Harness) -> None:
    """A message of the wrong type in a request stream fails the call with INVALID_ARGUMENT."""
    result = await harness.call("Publish", agent_service_pb2.SendRequest())
    assert type(result.error) is errors.InvalidArgument
    assert result.written == []


# -- Stream -----------------------------------------------------------------------------------


def _by_envelope(written: Sequence[Message]) -> dict[str, list[str]]:
    """Group stream items by the request envelope they belong to, as short labels."""
    groups: dict[str, list[str]] = {}
    for item in written:
        assert isinstance(item, agent_service_pb2.StreamResponse)
        if item.HasField("error"):
            code = errors.from_status(item.error.status).reason
            groups.setdefault(item.error.envelope_id, []).append(f"error:{code}")
            continue
        envelope = item.envelope
        kind = envelope.WhichOneof("payload")
        if kind == "message_ack":
            status = payload_pb2.AckStatus.Name(envelope.message_ack.status)
            label = status.removeprefix("ACK_STATUS_")
            owner = envelope.message_ack.original_envelope_id
            assert envelope.correlation_id == owner
        else:
            label = str(kind)
            owner = envelope.correlation_id
        groups.setdefault(owner, []).append(label)
    return groups


@pytest.mark.asyncio
async def test_stream_orders_acks_updates_and_answers_per_envelope(kit: Kit) -> None:
    """Per envelope: RECEIVED, updates, answer, PROCESSED; a failure is an EnvelopeError."""
    harness = kit.Harness(_agent(kit))
    requests = [
        agent_service_pb2.StreamRequest(
            envelope=kit.envelope(kit.task("progress"), envelope_id="a", requires_ack=True)
        ),
        agent_service_pb2.StreamRequest(
            envelope=kit.envelope(kit.task("fail"), envelope_id="b", requires_ack=True)
        ),
        agent_service_pb2.StreamRequest(envelope=kit.envelope(kit.task("echo"), envelope_id="c")),
        agent_service_pb2.StreamRequest(
            envelope=kit.envelope(envelope_id="d", recipient="nobody", requires_ack=True)
        ),
    ]
    result = await harness.call("Stream", *requests)
    assert result.error is None
    assert _by_envelope(result.written) == {
        "a": ["RECEIVED", "task_update", "task_update", "task_response", "PROCESSED"],
        "b": ["RECEIVED", "error:FAILED_PRECONDITION", "REJECTED"],
        "c": ["task_response"],
        "d": ["error:INVALID_URN", "REJECTED"],
    }


def _answered(item: Message) -> tuple[str, bytes]:
    """The envelope a Stream answer answers, and its task response (ids and times differ)."""
    assert isinstance(item, agent_service_pb2.StreamResponse)
    envelope = item.envelope
    return envelope.correlation_id, envelope.task_response.SerializeToString(deterministic=True)


class _NowaitCall:
    """A test call that also takes writes at once (``try_write``), as the bridge does, except
    every ``refuse_every``-th one and any answer to an envelope whose id is in ``failing``."""

    def __init__(self, inner: FakeCall, *, refuse_every: int, failing: frozenset[str]) -> None:
        self.inner = inner
        self.refuse_every = refuse_every
        self.failing = failing
        self.attempts = 0
        self.taken = 0

    async def read(self) -> Message | None:
        return await self.inner.read()

    async def write(self, message: Message) -> None:
        await self.inner.write(message)

    def try_write(self, message: Message) -> bool:
        self.attempts += 1
        assert isinstance(message, agent_service_pb2.StreamResponse)
        if message.envelope.correlation_id in self.failing:
            text = "refused here: the writer must report it"
            raise errors.MessageTooLarge(text)
        if self.attempts % self.refuse_every == 0:
            return False
        self.taken += 1
        self.inner.written.append(type(message).FromString(message.SerializeToString()))
        return True


@pytest.mark.asyncio
@pytest.mark.parametrize(("refuse_every", "taken"), [(1_000_000, 5), (3, 2), (1, 0)])
async def test_stream_answers_written_at_once_keep_their_order(
    kit: Kit, monkeypatch: pytest.MonkeyPatch, refuse_every: int, taken: int
) -> None:
    """Answers taken by try_write and answers the writer writes come out in the same order as
    through write alone; an error from try_write leaves the answer to the writer, as before.

    The reader never waits here (every request is there), so the answers go out at once until
    the first one that cannot (refused, or e5's error); every later one queues behind it.
    """
    monkeypatch.setattr(dispatch, "YIELD_INTERVAL", 3600.0)  # no loop turn falls due meanwhile
    requests = [
        agent_service_pb2.StreamRequest(
            envelope=kit.envelope(kit.task("echo", str(index)), envelope_id=f"e{index}")
        )
        for index in range(12)
    ]
    plain = await kit.Harness(_agent(kit)).call("Stream", *requests)
    inner = kit.Call(requests)
    nowait = _NowaitCall(inner, refuse_every=refuse_every, failing=frozenset({"e5"}))
    error = await kit.Harness(_agent(kit)).dispatcher.handle(kit.ctx("Stream"), nowait)
    assert plain.error is None
    assert error is None
    written = [_answered(item) for item in inner.written]
    assert written == [_answered(item) for item in plain.written]
    assert [envelope_id for envelope_id, _ in written] == [f"e{index}" for index in range(12)]
    assert nowait.taken == taken


@pytest.mark.asyncio
async def test_stream_runs_plain_handlers_without_a_task_each(kit: Kit) -> None:
    """A plain handler's envelopes run in the stream's reader, one after another: no task each."""
    agent = kit.agent()
    seen: list[asyncio.Task[object] | None] = []

    @agent.skill("plain")
    def plain(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        seen.append(asyncio.current_task())
        return payload_pb2.TaskResponse(task_id=request.envelope.id)

    requests = [
        agent_service_pb2.StreamRequest(
            envelope=kit.envelope(kit.task("plain"), envelope_id=str(i))
        )
        for i in range(8)
    ]
    result = await kit.Harness(agent).call("Stream", *requests)
    assert result.error is None
    assert _by_envelope(result.written) == {str(i): ["task_response"] for i in range(8)}
    assert len(seen) == 8
    assert len(set(seen)) == 1


@pytest.mark.asyncio
async def test_stream_async_handlers_get_a_task_each(kit: Kit) -> None:
    """A coroutine handler still runs in a task of its own, so asyncio.timeout works in it."""
    agent = kit.agent()
    seen: list[asyncio.Task[object] | None] = []

    @agent.skill("timed")
    async def timed(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        seen.append(asyncio.current_task())
        loop = asyncio.get_running_loop()
        resumed = loop.create_future()
        loop.call_soon(resumed.set_result, None)
        async with asyncio.timeout(10):
            await resumed  # suspends: the rest runs in the envelope's task
        return payload_pb2.TaskResponse(task_id=request.envelope.id)

    requests = [
        agent_service_pb2.StreamRequest(
            envelope=kit.envelope(kit.task("timed"), envelope_id=str(i))
        )
        for i in range(4)
    ]
    result = await kit.Harness(agent).call("Stream", *requests)
    assert result.error is None
    assert _by_envelope(result.written) == {str(i): ["task_response"] for i in range(4)}
    assert len(set(seen)) == 4


@pytest.mark.asyncio
async def test_stream_processes_envelopes_concurrently(kit: Kit) -> None:
    """A slow envelope does not hold back a later one; the stream ends after both."""
    agent = kit.agent()
    gate = kit.Gate()

    @agent.skill("slow")
    async def slow(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        await gate.park()
        return payload_pb2.TaskResponse(task_id="slow")

    harness = kit.Harness(agent)
    call = kit.Call(half_close=False)
    running = asyncio.create_task(harness.call("Stream", call=call))
    call.feed(
        agent_service_pb2.StreamRequest(envelope=kit.envelope(kit.task("slow"), envelope_id="1"))
    )
    await gate.entered.wait()
    call.feed(
        agent_service_pb2.StreamRequest(envelope=kit.envelope(kit.task("echo"), envelope_id="2"))
    )
    await call.wait_written(1)
    assert _by_envelope(call.written) == {"2": ["task_response"]}
    call.close()
    gate.release.set()
    result = await running
    assert result.error is None
    assert _by_envelope(call.written) == {"2": ["task_response"], "1": ["task_response"]}


@pytest.mark.asyncio
async def test_stream_refusal_by_middleware_is_an_envelope_error(kit: Kit) -> None:
    """Middleware refusing one envelope of a stream reports it; the stream goes on."""
    harness = kit.Harness(
        kit.agent(), middleware=[BearerAuth.static({"tok": kit.CLIENT}), SenderBinding()]
    )
    requests = [
        agent_service_pb2.StreamRequest(
            envelope=kit.envelope(envelope_id="x", sender="urn:asap:agent:mallory")
        ),
        agent_service_pb2.StreamRequest(envelope=kit.envelope(envelope_id="y")),
    ]
    result = await harness.call("Stream", *requests, metadata=(("authorization", "Bearer tok"),))
    assert result.error is None
    assert _by_envelope(result.written) == {
        "x": ["error:SENDER_MISMATCH"],
        "y": ["task_response"],
    }


@pytest.mark.asyncio
async def test_stream_with_wrong_message_type_fails_the_call(kit: Kit, harness: Harness) -> None:
    """A message of the wrong type ends the stream with INVALID_ARGUMENT."""
    result = await harness.call("Stream", agent_service_pb2.PublishRequest())
    assert type(result.error) is errors.InvalidArgument


@pytest.mark.asyncio
async def test_stream_cancelled_by_caller_cancels_handlers(kit: Kit) -> None:
    """Cancelling a Stream call cancels the handlers still running for it."""
    agent = kit.agent()
    gate = kit.Gate()
    observed: list[str] = []

    @agent.skill("slow")
    async def slow(request: Incoming[payload_pb2.TaskRequest]) -> None:
        try:
            await gate.park()
        except asyncio.CancelledError:
            observed.append("cancelled")
            raise

    harness = kit.Harness(agent)
    call = kit.Call(
        [agent_service_pb2.StreamRequest(envelope=kit.envelope(kit.task("slow")))],
        half_close=False,
    )
    ctx = kit.ctx("Stream")
    task = asyncio.create_task(harness.dispatcher.handle(ctx, call))
    await gate.entered.wait()
    ctx.cancel_requested()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert observed == ["cancelled"]
    assert ctx.cancelled()


# -- GetManifest ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_get_manifest_lists_skills_and_endpoints(kit: Kit) -> None:
    """GetManifest returns the agent's manifest with its skills and the server's endpoints."""
    endpoints = [
        manifest_pb2.Endpoint(transport=manifest_pb2.TRANSPORT_GRPC, url="grpc://127.0.0.1:7000"),
        manifest_pb2.Endpoint(
            transport=manifest_pb2.TRANSPORT_WEBSOCKET, url="ws://127.0.0.1:7001"
        ),
    ]
    harness = kit.Harness(_agent(kit), endpoints=endpoints)
    result = await harness.call("GetManifest", agent_service_pb2.GetManifestRequest())
    assert result.error is None
    response = kit.only(result.written, agent_service_pb2.GetManifestResponse)
    manifest = response.manifest
    assert manifest.id == kit.AGENT_ID
    assert [s.id for s in manifest.skills] == ["echo", "progress", "fail"]
    assert manifest.skills[1].description == "Reports progress."
    assert list(manifest.endpoints) == endpoints
    assert manifest.capabilities.streaming


def test_every_rpc_is_served(harness: Harness) -> None:
    """The service implements every method of the schema's AgentService."""
    assert sorted(harness.service.rpcs) == sorted(spec.name for spec in METHODS.values())


@pytest.mark.asyncio
async def test_stream_deadline_cancels_running_handlers(kit: Kit) -> None:
    """A Stream call past its deadline ends with DEADLINE_EXCEEDED and cancels its handlers."""
    agent = kit.agent()
    gate = kit.Gate()
    observed: list[str] = []

    @agent.skill("slow")
    async def slow(request: Incoming[payload_pb2.TaskRequest]) -> None:
        try:
            await gate.park()
        except asyncio.CancelledError:
            observed.append("cancelled")
            raise

    harness = kit.Harness(agent)
    call = kit.Call(
        [agent_service_pb2.StreamRequest(envelope=kit.envelope(kit.task("slow")))],
        half_close=False,
    )
    result = await harness.call("Stream", call=call, timeout=0.05)
    assert isinstance(result.error, errors.DeadlineExceeded)
    assert result.ctx.cancelled()
    assert observed == ["cancelled"]
    assert harness.dispatcher.in_flight == 0
