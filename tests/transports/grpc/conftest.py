"""Fixtures for the gRPC transport tests: a small test agent served by a real Server on 127.0.0.1.

Test modules reach the helpers through the ``kit`` fixture (and import the types for annotations
only, under TYPE_CHECKING), as the core unit tests do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2

from asap import validation
from asap.core.agent import Agent, Incoming
from asap.errors import FailedPrecondition
from asap.protocol.limits import Limits
from asap.server import Server
from asap.tls import ClientTLS, ServerTLS
from asap.transports.grpc.client import GrpcChannel
from asap.v1 import agent_service_pb2, envelope_pb2, payload_pb2, task_pb2


AGENT_ID = "urn:asap:agent:grpc-test"
CALLER_ID = "urn:asap:agent:tester"
UPDATES = 3
"""How many TaskUpdates the "progress" skill yields before its answer."""
SECRET = "db-password=hunter2"
"""Text of the unexpected exception the "crash" skill raises; it must never reach the caller."""


@dataclass
class Probe:
    """Events the "block" skill uses to let a test observe and steer a call in flight."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


def make_agent(probe: Probe) -> Agent:
    """The test agent: echo, progress (streams), fail (AsapError), crash, block, meta, big."""
    agent = Agent(AGENT_ID, name="grpc-test")

    @agent.skill("echo")
    async def echo(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        return payload_pb2.TaskResponse(
            task_id="t-echo",
            status=task_pb2.TASK_STATUS_COMPLETED,
            result=request.payload.input,
        )

    @agent.skill("progress")
    async def progress(
        request: Incoming[payload_pb2.TaskRequest],
    ) -> AsyncIterator[payload_pb2.TaskUpdate | payload_pb2.TaskResponse]:
        for step in range(UPDATES):
            yield payload_pb2.TaskUpdate(
                task_id="t-progress",
                update_type=task_pb2.UPDATE_TYPE_PROGRESS,
                status=task_pb2.TASK_STATUS_WORKING,
                progress_percent=100.0 * step / UPDATES,
            )
        yield payload_pb2.TaskResponse(task_id="t-progress", status=task_pb2.TASK_STATUS_COMPLETED)

    @agent.skill("fail")
    async def fail(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        request.call.set_trailing_metadata(("x-test-trailer", "kept"), ("x-test-bin", b"\x00\x01"))
        violation = error_details_pb2.PreconditionFailure.Violation(
            type="STATE", subject="task", description="not ready"
        )
        message = "the task is not ready"
        raise FailedPrecondition(
            message,
            details=[error_details_pb2.PreconditionFailure(violations=[violation])],
            metadata={"task": "t-1"},
        )

    @agent.skill("crash")
    async def crash(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        raise RuntimeError(SECRET)

    @agent.skill("block")
    async def block(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        probe.entered.set()
        try:
            await probe.release.wait()
        except asyncio.CancelledError:
            probe.cancelled.set()
            raise
        return payload_pb2.TaskResponse(task_id="t-block", status=task_pb2.TASK_STATUS_COMPLETED)

    @agent.skill("meta")
    async def meta(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        call = request.call
        result = struct_pb2.Struct()
        result.update(
            {
                "request_id": str(call.metadata_value("x-request-id")),
                "transport": call.transport,
                "peer": call.peer,
                "remaining": call.time_remaining() or -1.0,
            }
        )
        return payload_pb2.TaskResponse(
            task_id="t-meta", status=task_pb2.TASK_STATUS_COMPLETED, result=result
        )

    @agent.skill("big")
    async def big(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        size = int(request.payload.input.fields["size"].number_value)
        result = struct_pb2.Struct()
        result.update({"blob": "x" * size})
        return payload_pb2.TaskResponse(
            task_id="t-big", status=task_pb2.TASK_STATUS_COMPLETED, result=result
        )

    return agent


def task_envelope(skill: str, **inputs: str | float) -> envelope_pb2.Envelope:
    """A valid TaskRequest envelope from the tester to the test agent."""
    payload = payload_pb2.TaskRequest(conversation_id="c-1", skill_id=skill)
    payload.input.update(inputs)
    envelope = validation.wrap(payload, sender=CALLER_ID, recipient=AGENT_ID)
    validation.fill_defaults(envelope, now=time.time())
    return envelope


def port_of(server: Server) -> int:
    """The port of the server's (only) gRPC listener."""
    port = urlsplit(server.endpoints()[0].url).port
    assert port is not None
    return port


def send_request(skill: str, **inputs: str | float) -> agent_service_pb2.SendRequest:
    """A SendRequest carrying :func:`task_envelope`."""
    return agent_service_pb2.SendRequest(envelope=task_envelope(skill, **inputs))


class Kit:
    """The helpers of this conftest, handed to tests by the ``kit`` fixture."""

    AGENT_ID = AGENT_ID
    CALLER_ID = CALLER_ID
    UPDATES = UPDATES
    SECRET = SECRET
    envelope = staticmethod(task_envelope)
    send_request = staticmethod(send_request)
    port = staticmethod(port_of)
    agent = staticmethod(make_agent)


@pytest.fixture
def kit() -> Kit:
    """The shared helpers (envelope builders, constants)."""
    return Kit()


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
def probe() -> Probe:
    """Events shared between a test and the "block" skill."""
    return Probe()


@pytest_asyncio.fixture
async def start_server(probe: Probe) -> AsyncIterator[ServerFactory]:
    """Start a Server for the test agent; every server started is stopped at teardown."""
    servers: list[Server] = []

    async def start(*, limits: Limits | None = None, tls: ServerTLS | None = None) -> Server:
        server = Server(make_agent(probe), limits=limits or Limits(rate_limit_per_second=0))
        server.add_grpc("127.0.0.1:0", tls=tls)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(0)


@pytest_asyncio.fixture
async def server(start_server: ServerFactory) -> Server:
    """A plaintext server on 127.0.0.1 with default limits (rate limiting off)."""
    return await start_server()


ChannelFactory = Callable[..., GrpcChannel]


@pytest_asyncio.fixture
async def open_channel() -> AsyncIterator[ChannelFactory]:
    """Open GrpcChannels; every channel opened is closed at teardown."""
    channels: list[GrpcChannel] = []

    def open_(
        port: int,
        *,
        host: str = "127.0.0.1",
        tls: ClientTLS | None = None,
        max_message_bytes: int | None = None,
        keepalive_interval: float = 30.0,
    ) -> GrpcChannel:
        channel = GrpcChannel(
            host,
            port,
            tls=tls,
            keepalive_interval=keepalive_interval,
            max_message_bytes=max_message_bytes or Limits().max_message_bytes,
        )
        channels.append(channel)
        return channel

    yield open_
    for channel in channels:
        await channel.close()


@pytest_asyncio.fixture
async def channel(server: Server, open_channel: ChannelFactory) -> GrpcChannel:
    """A plaintext GrpcChannel to the default server."""
    return open_channel(port_of(server))
