"""Fixtures for the WebSocket bridge tests: a small test agent served by a real Server on 127.0.0.1.

Test modules reach the helpers through the ``kit`` fixture (and import the types for annotations
only, under TYPE_CHECKING), as the gRPC transport tests do. ``raw`` opens plain websockets clients
that speak the bridge frame by frame, for the tests that must send what WebSocketChannel never would.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
import trustme
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from asap import validation
from asap.core.agent import Agent, Incoming
from asap.core.dedupe import DedupeStore
from asap.core.method import method
from asap.core.middleware import BearerAuth
from asap.errors import FailedPrecondition
from asap.protocol.frames import SUBPROTOCOL_PROTO
from asap.protocol.limits import Limits
from asap.server import Server
from asap.tls import ClientTLS, ServerTLS
from asap.transports.ws.client import ReconnectPolicy, WebSocketChannel
from asap.transports.ws.server import WebSocketServerTransport, _ServerConnection
from asap.v1 import agent_service_pb2, bridge_pb2, envelope_pb2, payload_pb2, task_pb2


AGENT_ID = "urn:asap:agent:ws-test"
CALLER_ID = "urn:asap:agent:tester"
UPDATES = 3
"""How many TaskUpdates the "progress" skill yields before its answer."""
SECRET = "db-password=hunter2"
"""Text of the unexpected exception the "crash" skill raises; it must never reach the caller."""
TOKEN = "s3cret-token"
"""The one token the authenticating server accepts (for CALLER_ID)."""


@dataclass
class Probe:
    """Events the "block" and "gate" skills use to let a test observe and steer a call in flight."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    processed: Counter[str] = field(default_factory=Counter)
    """Completed runs of the "count" and "gate" skills, by envelope id."""


def make_agent(probe: Probe) -> Agent:
    """The test agent: echo, progress, fail, crash, block, meta, big, count, gate."""
    agent = Agent(AGENT_ID, name="ws-test")

    @agent.skill("echo")
    async def echo(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        return payload_pb2.TaskResponse(
            task_id="t-echo", status=task_pb2.TASK_STATUS_COMPLETED, result=request.payload.input
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
                "subject": call.identity.subject if call.identity else "",
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

    @agent.skill("count")
    async def count(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        probe.processed[request.envelope.id] += 1
        return payload_pb2.TaskResponse(task_id="t-count", status=task_pb2.TASK_STATUS_COMPLETED)

    @agent.skill("gate")
    async def gate(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        probe.entered.set()
        await probe.release.wait()
        probe.processed[request.envelope.id] += 1
        return payload_pb2.TaskResponse(task_id="t-gate", status=task_pb2.TASK_STATUS_COMPLETED)

    return agent


def task_envelope(
    skill: str, *, requires_ack: bool = False, **inputs: Any
) -> envelope_pb2.Envelope:
    """A valid TaskRequest envelope from the tester to the test agent."""
    payload = payload_pb2.TaskRequest(conversation_id="c-1", skill_id=skill)
    payload.input.update(inputs)
    envelope = validation.wrap(payload, sender=CALLER_ID, recipient=AGENT_ID)
    envelope.requires_ack = requires_ack
    validation.fill_defaults(envelope, now=time.time())
    return envelope


def send_request(skill: str, **inputs: Any) -> agent_service_pb2.SendRequest:
    """A SendRequest carrying :func:`task_envelope`."""
    return agent_service_pb2.SendRequest(envelope=task_envelope(skill, **inputs))


def url_of(server: Server) -> str:
    """The ws:// (or wss://) URL of the server's (only) WebSocket listener."""
    return server.endpoints()[0].url


def transport_of(server: Server) -> WebSocketServerTransport:
    """The server's WebSocket listener."""
    transport = server._transports[0]
    assert isinstance(transport, WebSocketServerTransport)
    return transport


def server_connections(server: Server) -> list[_ServerConnection]:
    """The server's open bridge connections."""
    return list(transport_of(server)._connections)


def frame_bytes(stream_id: int = 0, **kind: Message) -> bytes:
    """A serialized bridge Frame, e.g. ``frame_bytes(1, half_close=bridge_pb2.HalfClose())``."""
    return bridge_pb2.Frame(stream_id=stream_id, **kind).SerializeToString()  # type: ignore[arg-type]


def start_frames(
    stream_id: int, name: str, request: Message, metadata: Sequence[tuple[str, str]] = ()
) -> list[bytes]:
    """CallStart, the request and HalfClose of a call, as the binary subprotocol carries them."""
    entries = [bridge_pb2.MetadataEntry(key=key, text=value) for key, value in metadata]
    start = bridge_pb2.CallStart(method=method(name).path, metadata=entries)
    body = bridge_pb2.MessageFrame(binary=request.SerializeToString())
    return [
        frame_bytes(stream_id, start=start),
        frame_bytes(stream_id, message=body),
        frame_bytes(stream_id, half_close=bridge_pb2.HalfClose()),
    ]


async def next_frame(ws: ClientConnection) -> bridge_pb2.Frame:
    """Receive one binary frame."""
    data = await ws.recv()
    assert isinstance(data, bytes)
    return bridge_pb2.Frame.FromString(data)


async def close_of(ws: ClientConnection) -> tuple[int | None, str]:
    """Read until the server closes the connection; return the close code and reason it sent."""
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as closed:
        if closed.rcvd is None:
            return None, ""
        return closed.rcvd.code, closed.rcvd.reason


class Kit:
    """The helpers of this conftest, handed to tests by the ``kit`` fixture."""

    AGENT_ID = AGENT_ID
    CALLER_ID = CALLER_ID
    UPDATES = UPDATES
    SECRET = SECRET
    TOKEN = TOKEN
    envelope = staticmethod(task_envelope)
    send_request = staticmethod(send_request)
    url = staticmethod(url_of)
    transport = staticmethod(transport_of)
    connections = staticmethod(server_connections)
    frame = staticmethod(frame_bytes)
    start_frames = staticmethod(start_frames)
    next_frame = staticmethod(next_frame)
    close_of = staticmethod(close_of)


@pytest.fixture
def kit() -> Kit:
    """The shared helpers (envelope builders, frame builders, constants)."""
    return Kit()


@pytest.fixture
def probe() -> Probe:
    """Events shared between a test and the "block" and "gate" skills."""
    return Probe()


ServerFactory = Callable[..., Awaitable[Server]]


@pytest_asyncio.fixture
async def start_server(probe: Probe) -> AsyncIterator[ServerFactory]:
    """Start a Server for the test agent; every server started is stopped at teardown."""
    servers: list[Server] = []

    async def start(
        *,
        limits: Limits | None = None,
        tls: ServerTLS | None = None,
        auth: bool = False,
        allowed_origins: Sequence[str] | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        dedupe: DedupeStore | None = None,
    ) -> Server:
        server = Server(
            make_agent(probe),
            limits=limits or Limits(rate_limit_per_second=0),
            auth=BearerAuth.static({TOKEN: CALLER_ID}) if auth else None,
            dedupe=dedupe,
        )
        server.add_websocket(f"{host}:{port}", tls=tls, allowed_origins=allowed_origins)
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


ChannelFactory = Callable[..., WebSocketChannel]


@pytest_asyncio.fixture
async def open_channel() -> AsyncIterator[ChannelFactory]:
    """Open WebSocketChannels; every channel opened is closed at teardown."""
    channels: list[WebSocketChannel] = []

    def open_(
        url: str,
        *,
        tls: ClientTLS | None = None,
        subprotocol: str = SUBPROTOCOL_PROTO,
        token: str | None = None,
        limits: Limits | None = None,
        reconnect: ReconnectPolicy | None = None,
    ) -> WebSocketChannel:
        channel = WebSocketChannel(
            url,
            tls=tls,
            subprotocol=subprotocol,
            token=token,
            limits=limits,
            reconnect=reconnect,
        )
        channels.append(channel)
        return channel

    yield open_
    for channel in channels:
        await channel.close()


@pytest.fixture(params=["asap.v1.proto", "asap.v1.json"])
def subprotocol(request: pytest.FixtureRequest) -> str:
    """Each subprotocol in turn."""
    value: str = request.param
    return value


@pytest_asyncio.fixture
async def channel(
    server: Server, open_channel: ChannelFactory, subprotocol: str
) -> WebSocketChannel:
    """A plaintext channel to the default server, once per subprotocol."""
    return open_channel(url_of(server), subprotocol=subprotocol)


RawFactory = Callable[..., Awaitable[ClientConnection]]


@pytest_asyncio.fixture
async def raw() -> AsyncIterator[RawFactory]:
    """Open plain websockets clients (no keepalive); every one is closed at teardown."""
    opened: list[ClientConnection] = []

    async def open_(
        url: str, *, subprotocols: Sequence[str] = (SUBPROTOCOL_PROTO,), **kwargs: Any
    ) -> ClientConnection:
        ws = await connect(
            url,
            subprotocols=list(subprotocols) or None,  # type: ignore[arg-type]
            compression=None,
            ping_interval=None,
            **kwargs,
        )
        opened.append(ws)
        return ws

    yield open_
    for ws in opened:
        ws.transport.resume_reading()
        await ws.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A throwaway certificate authority."""
    return trustme.CA()
