"""What the transport tests share: a small test agent, its probe, envelope and TLS builders, and
the fixtures that start servers (``launch``) and close channels (``closing``) at teardown.

``grpc/conftest.py`` and ``ws/conftest.py`` build their own ``start_server`` and ``open_channel``
factories on those (and, for the bridge, raw-frame helpers). Test modules reach the helpers through
the ``kit`` fixture and import the types for annotations only, under TYPE_CHECKING, as the core
unit tests do.

The tests directly in this folder run on every transport: ``serve``, ``dial`` and ``channel`` follow
the ``transport`` fixture of ``tests/conftest.py`` (grpc, ws-proto, ws-json), for what each one must
do the same way below the Client (TLS, the plaintext rule, the Channel contract).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
import trustme
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2

from asap import validation
from asap.connect import open_channel
from asap.core.agent import Agent, Incoming
from asap.core.dedupe import DedupeStore
from asap.core.middleware import BearerAuth
from asap.errors import FailedPrecondition
from asap.protocol.limits import Limits
from asap.server import Server
from asap.tls import ClientTLS, ServerTLS
from asap.transports.base import Channel
from asap.transports.grpc.client import GrpcChannel
from asap.transports.ws.client import WebSocketChannel
from asap.v1 import agent_service_pb2, envelope_pb2, payload_pb2, task_pb2


if TYPE_CHECKING:
    from tests.conftest import Transport


AGENT_ID = "urn:asap:agent:transport-test"
CALLER_ID = "urn:asap:agent:tester"
UPDATES = 3
"""How many TaskUpdates the "progress" skill yields before its answer."""
TOKEN = "s3cret-token"
"""The one token a server started with authentication accepts (for CALLER_ID)."""


@dataclass
class Probe:
    """Events the "block" and "gate" skills use to let a test observe and steer a call in flight."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a "block" handler was released and returned."""
    processed: Counter[str] = field(default_factory=Counter)
    """Completed runs of the "count" and "gate" skills, by envelope id."""
    produced: int = 0
    """Updates the "flood" skill has produced."""
    flood_done: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a "flood" handler has ended (returned, failed or been closed)."""


def make_agent(probe: Probe) -> Agent:
    """The test agent: echo, progress, fail, block, meta, big, count, flood, gate."""
    agent = Agent(AGENT_ID, name="transport-test")

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

    @agent.skill("block")
    async def block(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        probe.entered.set()
        try:
            await probe.release.wait()
        except asyncio.CancelledError:
            probe.cancelled.set()
            raise
        probe.finished.set()
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

    @agent.skill("flood")
    async def flood(
        request: Incoming[payload_pb2.TaskRequest],
    ) -> AsyncIterator[payload_pb2.TaskUpdate | payload_pb2.TaskResponse]:
        fields = request.payload.input.fields
        padding = "p" * int(fields["size"].number_value)
        try:
            for step in range(int(fields["count"].number_value)):
                probe.produced += 1
                yield payload_pb2.TaskUpdate(
                    task_id="t-flood", progress_percent=step, message=padding
                )
            yield payload_pb2.TaskResponse(task_id="t-flood", status=task_pb2.TASK_STATUS_COMPLETED)
        finally:
            probe.flood_done.set()

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
    """The URL of the server's (only) listener."""
    return server.endpoints()[0].url


def port_of(server: Server) -> int:
    """The port of the server's (only) listener."""
    port = urlsplit(url_of(server)).port
    assert port is not None
    return port


def server_tls(ca: trustme.CA, *, mutual: bool = False) -> ServerTLS:
    """A certificate for 127.0.0.1 issued by ``ca``; with ``mutual``, client certificates from ``ca``
    are required."""
    cert = ca.issue_cert("localhost", "127.0.0.1")
    return ServerTLS(
        cert_chain=b"".join(pem.bytes() for pem in cert.cert_chain_pems),
        private_key=cert.private_key_pem.bytes(),
        client_ca=ca.cert_pem.bytes() if mutual else None,
    )


def client_tls(ca: trustme.CA, *, with_cert: bool = False) -> ClientTLS:
    """Trust ``ca``; with ``with_cert``, present a client certificate issued by ``ca``."""
    if not with_cert:
        return ClientTLS(root_certificates=ca.cert_pem.bytes())
    cert = ca.issue_cert("client.example")
    return ClientTLS(
        root_certificates=ca.cert_pem.bytes(),
        cert_chain=b"".join(pem.bytes() for pem in cert.cert_chain_pems),
        private_key=cert.private_key_pem.bytes(),
    )


class Kit:
    """The helpers of this conftest, handed to tests by the ``kit`` fixture."""

    AGENT_ID = AGENT_ID
    CALLER_ID = CALLER_ID
    UPDATES = UPDATES
    TOKEN = TOKEN
    agent = staticmethod(make_agent)
    envelope = staticmethod(task_envelope)
    send_request = staticmethod(send_request)
    url = staticmethod(url_of)
    port = staticmethod(port_of)
    server_tls = staticmethod(server_tls)
    client_tls = staticmethod(client_tls)


@pytest.fixture
def kit() -> Kit:
    """The shared helpers (the agent, envelope and TLS builders, constants)."""
    return Kit()


@pytest.fixture
def probe() -> Probe:
    """Events shared between a test and the "block" and "gate" skills."""
    return Probe()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A throwaway certificate authority."""
    return trustme.CA()


Launch = Callable[..., Awaitable[Server]]


@pytest_asyncio.fixture
async def launch(probe: Probe) -> AsyncIterator[Launch]:
    """Start a Server for the test agent, with the listener ``listen(server)`` adds and the given
    ``limits`` (default: rate limiting off), ``auth`` and ``dedupe``; every server started is
    stopped at teardown. The transport folders' ``start_server`` fixtures are built on it."""
    servers: list[Server] = []

    async def start(
        listen: Callable[[Server], object],
        *,
        limits: Limits | None = None,
        auth: BearerAuth | None = None,
        dedupe: DedupeStore | None = None,
    ) -> Server:
        server = Server(
            make_agent(probe),
            limits=limits or Limits(rate_limit_per_second=0),
            auth=auth,
            dedupe=dedupe,
        )
        listen(server)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(0)


ChannelT = TypeVar("ChannelT", bound=Channel)


class Closing(Protocol):
    """The ``closing`` fixture: ``closing(channel)`` returns the channel and closes it at teardown."""

    def __call__(self, channel: ChannelT) -> ChannelT: ...


@pytest_asyncio.fixture
async def closing() -> AsyncIterator[Closing]:
    """Close at teardown every channel handed to it (the channel factories are built on it)."""
    channels: list[Channel] = []

    def keep(channel: ChannelT) -> ChannelT:
        channels.append(channel)
        return channel

    yield keep
    for channel in channels:
        await channel.close()


# -- every transport (the tests directly in this folder) ------------------------------------

Serve = Callable[..., Awaitable[Server]]
AnyChannel = GrpcChannel | WebSocketChannel
Dial = Callable[..., AnyChannel]


@pytest.fixture
def serve(launch: Launch, transport: Transport) -> Serve:
    """Start a Server for the test agent on the transport under test (rate limiting off)."""

    async def start(*, tls: ServerTLS | None = None) -> Server:
        def listen(server: Server) -> None:
            if transport.websocket:
                server.add_websocket("127.0.0.1:0", tls=tls)
            else:
                server.add_grpc("127.0.0.1:0", tls=tls)

        return await launch(listen)

    return start


@pytest.fixture
def dial(closing: Closing, transport: Transport) -> Dial:
    """Open channels with :func:`asap.connect.open_channel` and the transport's subprotocol."""

    def open_(
        url: str, *, tls: ClientTLS | None = None, allow_insecure: bool = False
    ) -> AnyChannel:
        channel = open_channel(
            url, tls=tls, allow_insecure=allow_insecure, subprotocol=transport.subprotocol
        )
        assert isinstance(channel, AnyChannel)
        return closing(channel)

    return open_


@pytest_asyncio.fixture
async def channel(serve: Serve, dial: Dial, kit: Kit) -> AnyChannel:
    """A plaintext channel to a server on the transport under test (grpc/ and ws/ override this
    with their own transport's channel)."""
    return dial(kit.url(await serve()))
