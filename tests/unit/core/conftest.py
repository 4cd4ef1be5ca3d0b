"""Shared helpers for the core unit tests: a fake ServerCall, envelope builders and a harness.

Everything runs in-process: a transport is replaced by :class:`FakeCall` (a queue of requests and a
list of written responses) and calls go through the real :class:`~asap.core.dispatch.Dispatcher`.
Test modules reach these helpers through fixtures (and import the types for annotations only).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from asap import validation
from asap._typing import Metadata
from asap.core.agent import Agent, Incoming, Payload
from asap.core.context import CallContext
from asap.core.dedupe import DedupeStore, InMemoryDedupeStore
from asap.core.delivery import Deliverer
from asap.core.dispatch import Dispatcher
from asap.core.method import method
from asap.core.middleware import Middleware
from asap.core.service import AgentServiceCore
from asap.errors import AsapError
from asap.v1 import envelope_pb2, manifest_pb2, payload_pb2, task_pb2


NOW = 1_700_000_000.0
"""The wall-clock time every harness's deliverer sees (envelopes are stamped with it)."""
CLIENT = "urn:asap:agent:client"
"""The sender of test envelopes."""
AGENT_ID = "urn:asap:agent:worker"
"""The agent under test."""
PEER = "ipv4:10.0.0.1:4242"
"""The default peer address of test calls."""

M = TypeVar("M", bound=Message)


class FakeCall:
    """A ServerCall driven by the test: requests come from a queue, responses go to ``written``.

    With ``half_close`` the request stream ends (read returns None) after the given requests;
    without it, read waits for :meth:`feed` or :meth:`close`.
    """

    def __init__(self, requests: Iterable[Message] = (), *, half_close: bool = True) -> None:
        self._requests: asyncio.Queue[Message | None] = asyncio.Queue()
        for request in requests:
            self._requests.put_nowait(request)
        if half_close:
            self._requests.put_nowait(None)
        self._closed = False
        self.written: list[Message] = []
        self._changed = asyncio.Condition()

    async def read(self) -> Message | None:
        """Return the next request, or None once the request stream has ended."""
        if self._closed:
            return None
        message = await self._requests.get()
        if message is None:
            self._closed = True
        return message

    async def write(self, message: Message) -> None:
        """Record a response as the peer would receive it (a serialized copy)."""
        received = type(message).FromString(message.SerializeToString())
        async with self._changed:
            self.written.append(received)
            self._changed.notify_all()

    def feed(self, message: Message) -> None:
        """Queue one more request."""
        self._requests.put_nowait(message)

    def close(self) -> None:
        """End the request stream (the caller half-closes)."""
        self._requests.put_nowait(None)

    async def wait_written(self, count: int) -> None:
        """Wait until at least ``count`` responses have been written."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.written) >= count)


@dataclass(slots=True)
class CallResult:
    """What one call through the dispatcher produced."""

    error: AsapError | None
    call: FakeCall
    ctx: CallContext

    @property
    def written(self) -> list[Message]:
        """The response messages, in order."""
        return self.call.written


class FakeClock:
    """A manually advanced monotonic clock."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


def make_ctx(
    name: str = "Send",
    *,
    metadata: Metadata = (),
    peer: str = PEER,
    timeout: float | None = None,
) -> CallContext:
    """Build the context a transport would build for a call of method ``name``."""
    return CallContext(
        method=method(name), metadata=metadata, peer=peer, transport="fake", timeout=timeout
    )


def task(skill: str = "echo", text: str = "hello") -> payload_pb2.TaskRequest:
    """A TaskRequest for ``skill`` whose input is ``{"text": text}``."""
    request = payload_pb2.TaskRequest(conversation_id="conv-1", skill_id=skill)
    request.input.update({"text": text})
    return request


def make_envelope(
    payload: Payload | None = None,
    *,
    envelope_id: str = "env-1",
    sender: str = CLIENT,
    recipient: str = AGENT_ID,
    requires_ack: bool = False,
    timestamp: float = NOW,
    correlation_id: str = "",
) -> envelope_pb2.Envelope:
    """A valid envelope (at NOW) carrying ``payload`` (a TaskRequest for "echo" by default)."""
    stamp = timestamp_pb2.Timestamp(seconds=int(timestamp))
    fields: validation.EnvelopeFields = {
        "id": envelope_id,
        "asap_version": validation.ASAP_VERSION,
        "timestamp": stamp,
        "sender": sender,
        "recipient": recipient,
        "requires_ack": requires_ack,
        "correlation_id": correlation_id,
    }
    if payload is None:
        payload = task()
    return validation.wrap(payload, **fields)


def only(messages: Sequence[Message], kind: type[M]) -> M:
    """The one message of ``messages``, checked to be a ``kind``."""
    assert len(messages) == 1, messages
    (message,) = messages
    assert isinstance(message, kind)
    return message


def text_of(struct: struct_pb2.Struct) -> str:
    """The "text" field of a Struct (what the echo handlers put in their results)."""
    return struct.fields["text"].string_value


def make_agent() -> Agent:
    """An agent with one skill, "echo", that answers a TaskResponse carrying its input."""
    agent = Agent(AGENT_ID, name="Worker", version="1.2.3", description="Test agent.")

    @agent.skill("echo", description="Returns its input.")
    async def echo(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        return payload_pb2.TaskResponse(
            task_id="t-1", status=task_pb2.TASK_STATUS_COMPLETED, result=request.payload.input
        )

    return agent


class Gate:
    """Parks handlers until the test releases them; counts and signals arrivals."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.arrivals = 0

    async def park(self) -> None:
        """Record an arrival, then wait for :attr:`release`."""
        self.arrivals += 1
        self.entered.set()
        await self.release.wait()


class Harness:
    """The whole core for one agent: store, deliverer, service and dispatcher, all in-process."""

    def __init__(
        self,
        agent: Agent,
        *,
        middleware: Sequence[Middleware] = (),
        store: DedupeStore | None = None,
        max_concurrent_calls: int = 1000,
        endpoints: Sequence[manifest_pb2.Endpoint] = (),
        clock: Callable[[], float] = lambda: NOW,
    ) -> None:
        self.agent = agent
        self.store: DedupeStore = store if store is not None else InMemoryDedupeStore()
        self.deliverer = Deliverer(
            agent, self.store, middleware, validation.ValidationPolicy(), clock=clock
        )
        endpoint_list = tuple(endpoints)
        self.service = AgentServiceCore(self.deliverer, endpoints=lambda: endpoint_list)
        self.dispatcher = Dispatcher(
            self.service, middleware, max_concurrent_calls=max_concurrent_calls
        )

    async def call(
        self,
        name: str,
        *requests: Message,
        metadata: Metadata = (),
        peer: str = PEER,
        timeout: float | None = None,
        call: FakeCall | None = None,
    ) -> CallResult:
        """Run one call of method ``name`` with ``requests`` through the dispatcher."""
        ctx = make_ctx(name, metadata=metadata, peer=peer, timeout=timeout)
        fake = call if call is not None else FakeCall(requests)
        error = await self.dispatcher.handle(ctx, fake)
        return CallResult(error=error, call=fake, ctx=ctx)


class Kit:
    """The helpers of this conftest, handed to tests by the ``kit`` fixture."""

    NOW = NOW
    CLIENT = CLIENT
    AGENT_ID = AGENT_ID
    PEER = PEER
    Call = FakeCall
    Harness = Harness
    Clock = FakeClock
    Gate = Gate
    ctx = staticmethod(make_ctx)
    envelope = staticmethod(make_envelope)
    task = staticmethod(task)
    text_of = staticmethod(text_of)
    only = staticmethod(only)
    agent = staticmethod(make_agent)


@pytest.fixture
def kit() -> Kit:
    """The shared helpers (fake call, envelope builders, harness)."""
    return Kit()


@pytest.fixture
def agent() -> Agent:
    """An agent with the "echo" skill."""
    return make_agent()


@pytest.fixture
def harness(agent: Agent) -> Harness:
    """The core for ``agent`` with no middleware."""
    return Harness(agent)


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock starting at 1000."""
    return FakeClock()
