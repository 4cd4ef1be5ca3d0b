"""Fixtures for the security suite: a real Server with both listeners, raw peers, a canary.

The attacks here are sent the way an attacker would: raw WebSocket frames (``raw_ws``), raw gRPC
calls with byte serializers (``raw_grpc``), and plain TCP/HTTP. Attacks that apply to both transports
and can be expressed through the public client live in ``tests/conformance/test_security.py``
(transport-blind, same assertions everywhere); this folder holds the bridge-only and gRPC-only ones
and the measurements (fuzzing, the decode-amplification canary).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect

from asap import Client, Limits, Server
from asap import connect as asap_connect
from asap.client import task_envelope
from asap.core.agent import Agent, Incoming
from asap.core.middleware import BearerAuth
from asap.protocol.frames import FLOW_CONTROLLED, SUBPROTOCOL_PROTO
from asap.v1 import envelope_pb2, payload_pb2, task_pb2


AGENT_ID = "urn:asap:agent:security-test"
CALLER_ID = "urn:asap:agent:tester"
TOKEN = "s3cret-security-token"
"""The token a server started with ``auth=True`` accepts (for CALLER_ID)."""


def make_agent() -> Agent:
    """An agent with one well-behaved skill, ``echo``: every non-typed outcome is the server's fault."""
    agent = Agent(AGENT_ID, name="security-test")

    @agent.skill("echo")
    async def echo(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        return payload_pb2.TaskResponse(
            task_id="t-echo", status=task_pb2.TASK_STATUS_COMPLETED, result=request.payload.input
        )

    return agent


@dataclass
class Served:
    """A running server and the addresses of its listeners."""

    server: Server
    grpc_target: str
    ws_url: str


ServeFactory = Callable[..., Awaitable[Served]]


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[ServeFactory]:
    """Start servers with both listeners on 127.0.0.1 (rate limiting off unless ``limits`` say)."""
    servers: list[Server] = []

    async def start(
        *,
        limits: Limits | None = None,
        auth: bool = False,
        websocket: dict[str, Any] | None = None,
        grpc_listener: bool = True,
    ) -> Served:
        server = Server(
            make_agent(),
            limits=limits or Limits(rate_limit_per_second=0),
            auth=BearerAuth.static({TOKEN: CALLER_ID}) if auth else None,
        )
        if grpc_listener:
            server.add_grpc("127.0.0.1:0")
        server.add_websocket("127.0.0.1:0", **(websocket or {}))
        await server.start()
        servers.append(server)
        urls = [endpoint.url for endpoint in server.endpoints()]
        grpc_url = next((url for url in urls if url.startswith("grpc://")), "")
        ws_url = next(url for url in urls if url.startswith("ws://"))
        return Served(server, grpc_url.removeprefix("grpc://"), ws_url)

    yield start
    for server in servers:
        await server.stop(0)


RawWs = Callable[..., Awaitable[ClientConnection]]


@pytest_asyncio.fixture
async def raw_ws() -> AsyncIterator[RawWs]:
    """Open plain websockets clients; on revision 2 the server's Settings frame is read first."""
    opened: list[ClientConnection] = []

    async def open_(
        url: str, *, subprotocols: Sequence[str] = (SUBPROTOCOL_PROTO,), **kwargs: Any
    ) -> ClientConnection:
        ws = await connect(
            url,
            subprotocols=list(subprotocols) or None,  # type: ignore[arg-type]
            compression=None,
            ping_interval=None,
            max_size=None,
            **kwargs,
        )
        opened.append(ws)
        if ws.subprotocol in FLOW_CONTROLLED:
            await ws.recv()  # Settings
        return ws

    yield open_
    for ws in opened:
        await ws.close()


@pytest_asyncio.fixture
async def raw_grpc() -> AsyncIterator[Callable[[str], grpc.aio.Channel]]:
    """Open plain grpc.aio channels (bytes in, bytes out); closed at teardown."""
    channels: list[grpc.aio.Channel] = []

    def open_(target: str) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(target)
        channels.append(channel)
        return channel

    yield open_
    for channel in channels:
        await channel.close()


@dataclass
class Canary:
    """An honest client calling ``echo`` in a loop on its own connection; errors and latencies."""

    client: Client
    latencies: list[float] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, calls: int | None = None) -> None:
        """Call until ``stop`` is set (or ``calls`` calls are done)."""
        loop = asyncio.get_running_loop()
        done = 0
        while not self.stop.is_set() and (calls is None or done < calls):
            started = loop.time()
            try:
                await self.client.send(echo_envelope())
            except Exception as exc:  # noqa: BLE001 - every failure of the canary is counted
                self.errors.append(exc)
            self.latencies.append(loop.time() - started)
            done += 1

    def p99(self) -> float:
        """The 99th percentile latency in seconds."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def echo_envelope() -> envelope_pb2.Envelope:
    """A TaskRequest envelope for the echo skill (the client fills in sender, id and time)."""
    return task_envelope(AGENT_ID, "echo", {"n": 1})


@pytest_asyncio.fixture
async def canary() -> AsyncIterator[Callable[[str], Canary]]:
    """Make canaries (one Client each) against a URL; their clients are closed at teardown."""
    made: list[Canary] = []

    def make(url: str) -> Canary:
        bird = Canary(asap_connect(url, sender=CALLER_ID, token=None, timeout=30.0))
        made.append(bird)
        return bird

    yield make
    for bird in made:
        bird.stop.set()
        await bird.client.close()
