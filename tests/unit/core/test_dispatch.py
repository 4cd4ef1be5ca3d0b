"""Unit tests for asap.core.dispatch.Dispatcher: outcomes, deadlines, limits, cancellation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from asap import errors
from asap.core import dispatch
from asap.core.agent import Agent, Incoming
from asap.core.context import CallContext
from asap.core.interceptors import Interceptor
from asap.core.method import SERVICE_NAME, Arity, MethodSpec
from asap.core.service import ServerCall
from asap.core.tasks import YIELD_INTERVAL
from asap.v1 import agent_service_pb2, envelope_pb2, payload_pb2


if TYPE_CHECKING:
    from tests.unit.core.conftest import Gate, Harness, Kit


def _send(envelope: envelope_pb2.Envelope) -> agent_service_pb2.SendRequest:
    return agent_service_pb2.SendRequest(envelope=envelope)


def _parking_agent(kit: Kit, gate: Gate, observed: list[str]) -> Agent:
    """An agent whose "park" skill waits on ``gate`` and records a cancellation."""
    agent = kit.agent()

    @agent.skill("park")
    async def park(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        try:
            await gate.park()
        except asyncio.CancelledError:
            observed.append("cancelled")
            raise
        return payload_pb2.TaskResponse(task_id=request.envelope.id)

    return agent


def _replace_rpc(
    harness: Harness, name: str, rpc: Callable[[CallContext, ServerCall], Awaitable[None]]
) -> None:
    harness.service.rpcs[name] = rpc


@pytest.mark.asyncio
async def test_ok_call_returns_none_and_writes_the_response(kit: Kit, harness: Harness) -> None:
    """A successful call returns None and writes exactly one response."""
    result = await harness.call("Send", _send(kit.envelope(kit.task("echo", "hi"))))
    assert result.error is None
    (response,) = result.written
    assert isinstance(response, agent_service_pb2.SendResponse)
    assert kit.text_of(response.envelope.task_response.result) == "hi"
    assert harness.dispatcher.in_flight == 0
    assert not result.ctx.cancelled()


@pytest.mark.asyncio
async def test_unknown_method(kit: Kit, harness: Harness) -> None:
    """A method the service does not have fails with UNIMPLEMENTED (UNKNOWN_METHOD)."""
    spec = MethodSpec(
        name="Frobnicate",
        path=f"/{SERVICE_NAME}/Frobnicate",
        request_type=agent_service_pb2.SendRequest,
        response_type=agent_service_pb2.SendResponse,
        arity=Arity.UNARY_UNARY,
    )
    ctx = CallContext(method=spec, metadata=(), peer=kit.PEER, transport="fake", timeout=None)
    call = kit.Call([_send(kit.envelope())])
    error = await harness.dispatcher.handle(ctx, call)
    assert isinstance(error, errors.UnknownMethod)
    assert error.code == errors.Code.UNIMPLEMENTED
    assert "Frobnicate" in error.message
    assert call.written == []
    assert harness.dispatcher.in_flight == 0


@pytest.mark.asyncio
async def test_asap_error_from_rpc_is_returned_as_is(kit: Kit, harness: Harness) -> None:
    """An AsapError raised in a call is the outcome itself: same object, class and details."""
    detail = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="x")]
    )
    raised = errors.FailedPrecondition("not ready", details=[detail], metadata={"k": "v"})

    async def failing(ctx: CallContext, call: ServerCall) -> None:
        raise raised

    _replace_rpc(harness, "Send", failing)
    result = await harness.call("Send", _send(kit.envelope()))
    assert result.error is raised


@pytest.mark.asyncio
async def test_asap_error_from_handler_keeps_class_and_details(kit: Kit) -> None:
    """A handler's AsapError reaches the caller with its class, reason, message and details."""
    agent = kit.agent()
    detail = error_details_pb2.PreconditionFailure(
        violations=[error_details_pb2.PreconditionFailure.Violation(type="TOS", subject="x")]
    )

    @agent.skill("refuse")
    async def refuse(request: Incoming[payload_pb2.TaskRequest]) -> None:
        message = "accept the terms first"
        raise errors.FailedPrecondition(message, details=[detail], metadata={"tos": "v2"})

    harness = kit.Harness(agent)
    result = await harness.call("Send", _send(kit.envelope(kit.task("refuse"))))
    assert type(result.error) is errors.FailedPrecondition
    assert result.error.reason == "FAILED_PRECONDITION"
    assert result.error.message == "accept the terms first"
    assert result.error.details == (detail,)
    assert result.error.metadata == {"tos": "v2"}


@pytest.mark.parametrize("where", ["rpc", "handler"])
@pytest.mark.asyncio
async def test_unexpected_exception_becomes_internal_and_is_logged(
    kit: Kit, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    """A ValueError becomes INTERNAL whose message hides the text; the traceback is logged."""
    agent = kit.agent()

    @agent.skill("boom")
    async def boom(request: Incoming[payload_pb2.TaskRequest]) -> None:
        message = "secret"
        raise ValueError(message)

    harness = kit.Harness(agent)
    if where == "rpc":

        async def failing(ctx: CallContext, call: ServerCall) -> None:
            message = "secret"
            raise ValueError(message)

        _replace_rpc(harness, "Send", failing)
    with caplog.at_level(logging.ERROR, logger="asap.server"):
        result = await harness.call("Send", _send(kit.envelope(kit.task("boom"))))
    assert type(result.error) is errors.Internal
    assert "secret" not in result.error.message
    assert "secret" not in str(errors.to_status(result.error))
    records = [r for r in caplog.records if r.name == "asap.server"]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], ValueError)
    assert "secret" in caplog.text  # the log, not the peer, gets the details


@pytest.mark.asyncio
async def test_timeout_error_that_is_not_the_deadline_is_internal(
    kit: Kit, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A TimeoutError of the handler's own (not the call deadline) is INTERNAL, not DEADLINE."""

    async def failing(ctx: CallContext, call: ServerCall) -> None:
        raise TimeoutError

    _replace_rpc(harness, "Send", failing)
    result = await harness.call("Send", _send(kit.envelope()), timeout=60.0)
    assert type(result.error) is errors.Internal
    assert not result.ctx.cancelled()
    assert len([r for r in caplog.records if r.name == "asap.server"]) == 1


@pytest.mark.asyncio
async def test_exception_group_is_unwrapped(kit: Kit, harness: Harness) -> None:
    """An error raised inside a task group in an RPC is reported as the error itself."""
    raised = errors.NotFound("inner")

    async def grouped(ctx: CallContext, call: ServerCall) -> None:
        async def fail() -> None:
            raise raised

        async with asyncio.TaskGroup() as group:
            group.create_task(fail())

    _replace_rpc(harness, "Send", grouped)
    result = await harness.call("Send", _send(kit.envelope()))
    assert result.error is raised


@pytest.mark.asyncio
async def test_deadline_exceeded_cancels_the_handler(kit: Kit) -> None:
    """A handler still running at the deadline is cancelled; the call is DEADLINE_EXCEEDED."""
    gate = kit.Gate()
    observed: list[str] = []
    harness = kit.Harness(_parking_agent(kit, gate, observed))
    result = await harness.call("Send", _send(kit.envelope(kit.task("park"))), timeout=0.05)
    assert isinstance(result.error, errors.DeadlineExceeded)
    assert result.ctx.cancelled()
    assert observed == ["cancelled"]
    assert result.written == []
    assert harness.dispatcher.in_flight == 0


@pytest.mark.asyncio
async def test_call_within_deadline_is_ok(kit: Kit, harness: Harness) -> None:
    """A call that finishes before its deadline succeeds and is not marked cancelled."""
    result = await harness.call("Send", _send(kit.envelope()), timeout=60.0)
    assert result.error is None
    assert not result.ctx.cancelled()


@pytest.mark.asyncio
async def test_max_concurrent_calls(kit: Kit) -> None:
    """Beyond max_concurrent_calls a call fails at once with TOO_MANY_CALLS."""
    gate = kit.Gate()
    harness = kit.Harness(_parking_agent(kit, gate, []), max_concurrent_calls=1)
    parked = asyncio.create_task(
        harness.call("Send", _send(kit.envelope(kit.task("park"), envelope_id="1")))
    )
    await gate.entered.wait()
    assert harness.dispatcher.in_flight == 1
    second = await harness.call("Send", _send(kit.envelope(envelope_id="2")))
    assert isinstance(second.error, errors.TooManyCalls)
    assert second.error.code == errors.Code.RESOURCE_EXHAUSTED
    assert second.written == []
    gate.release.set()
    assert (await parked).error is None
    third = await harness.call("Send", _send(kit.envelope(envelope_id="3")))
    assert third.error is None


@pytest.mark.asyncio
async def test_draining_refuses_new_calls_but_finishes_running_ones(kit: Kit) -> None:
    """While draining new calls fail with SHUTTING_DOWN; a call already running completes."""
    gate = kit.Gate()
    harness = kit.Harness(_parking_agent(kit, gate, []))
    running = asyncio.create_task(
        harness.call("Send", _send(kit.envelope(kit.task("park"), envelope_id="1")))
    )
    await gate.entered.wait()
    harness.dispatcher.draining = True
    refused = await harness.call("Send", _send(kit.envelope(envelope_id="2")))
    assert isinstance(refused.error, errors.ShuttingDown)
    assert refused.error.code == errors.Code.UNAVAILABLE
    gate.release.set()
    assert (await running).error is None


@pytest.mark.asyncio
async def test_caller_cancellation_propagates(kit: Kit) -> None:
    """An explicit cancel of the task running handle() cancels the handler and marks the context."""
    gate = kit.Gate()
    observed: list[str] = []
    harness = kit.Harness(_parking_agent(kit, gate, observed))
    ctx = kit.ctx("Send")
    call = kit.Call([_send(kit.envelope(kit.task("park")))])
    task = asyncio.create_task(harness.dispatcher.handle(ctx, call))
    await gate.entered.wait()
    ctx.cancel_requested()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert observed == ["cancelled"]
    assert ctx.cancelled()
    assert call.written == []
    assert harness.dispatcher.in_flight == 0


@pytest.mark.asyncio
async def test_wait_idle(kit: Kit) -> None:
    """wait_idle returns at once when idle and otherwise when the last call ends."""
    gate = kit.Gate()
    harness = kit.Harness(_parking_agent(kit, gate, []))
    await harness.dispatcher.wait_idle()
    running = asyncio.create_task(harness.call("Send", _send(kit.envelope(kit.task("park")))))
    await gate.entered.wait()
    idle = asyncio.create_task(harness.dispatcher.wait_idle())
    await asyncio.sleep(0)  # one loop turn: wait_idle starts and blocks
    assert not idle.done()
    gate.release.set()
    await running
    await idle
    assert harness.dispatcher.in_flight == 0


@pytest.mark.asyncio
async def test_call_middleware_runs_in_order_and_can_refuse(kit: Kit) -> None:
    """on_call guards run in order before the RPC; a refusal stops the call."""
    order: list[str] = []

    class Guard(Interceptor):
        def __init__(self, name: str, refuse: bool) -> None:
            self.name = name
            self.refuse = refuse

        async def on_call(self, ctx: CallContext) -> None:
            order.append(self.name)
            if self.refuse:
                message = f"{self.name} says no"
                raise errors.PermissionDenied(message)

        async def on_envelopes(
            self, ctx: CallContext, envelopes: Sequence[envelope_pb2.Envelope]
        ) -> None:
            order.append(f"{self.name}-envelopes")

    harness = kit.Harness(
        kit.agent(), middleware=[Guard("a", False), Guard("b", True), Guard("c", False)]
    )
    result = await harness.call("Send", _send(kit.envelope()))
    assert isinstance(result.error, errors.PermissionDenied)
    assert result.error.message == "b says no"
    assert order == ["a", "b"]
    assert result.written == []


class _ProbedCall:
    """A streaming test call that takes every write at once and may say when a read will wait."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[Message] = asyncio.Queue()
        self.waiting = asyncio.Event()
        self.taken = 0

    async def read(self) -> Message | None:
        if self.requests.empty():
            self.waiting.set()
        return await self.requests.get()

    async def write(self, message: Message) -> None:  # pragma: no cover - try_write takes all
        raise AssertionError

    def try_write(self, message: Message) -> bool:
        self.taken += 1
        return True


class _WaitReportingCall(_ProbedCall):
    def read_would_wait(self) -> bool:
        return self.requests.empty()


@pytest.mark.asyncio
@pytest.mark.parametrize("reports_waits", [True, False])
async def test_a_read_that_waits_gives_the_loop_the_turn_a_streaming_call_owes(
    kit: Kit, monkeypatch: pytest.MonkeyPatch, *, reports_waits: bool
) -> None:
    """Once YIELD_INTERVAL has passed, try_write is refused (write pays the loop turn) until a
    read the transport says waits has given the loop that turn; a read that returns at once
    does not count, and without read_would_wait no read does."""
    loop = asyncio.get_running_loop()
    now = [loop.time()]
    monkeypatch.setattr(loop, "time", lambda: now[0])
    call = _WaitReportingCall() if reports_waits else _ProbedCall()
    guarded = dispatch._GuardedCall(kit.ctx("Stream"), call)
    response = agent_service_pb2.StreamResponse()
    request = agent_service_pb2.StreamRequest()
    assert guarded.try_write(response)

    now[0] += 2 * YIELD_INTERVAL
    assert not guarded.try_write(response)
    call.requests.put_nowait(request)
    assert await guarded.read() is request  # there already: no wait, no turn
    assert not guarded.try_write(response)

    async with asyncio.TaskGroup() as group:
        reading = group.create_task(guarded.read())
        await call.waiting.wait()
        call.requests.put_nowait(request)
    assert reading.result() is request
    assert guarded.try_write(response) is reports_waits
    assert call.taken == 1 + reports_waits
