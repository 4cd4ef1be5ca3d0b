"""Runtime fallback: with gRPC blocked, a discovered client's sends go over the WebSocket bridge,
each envelope processed exactly once, including one in flight when gRPC went away; one deadline
across every endpoint; answers (a handler's UNAVAILABLE, a 1009 close) never cause a fallback."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator

import pytest
import pytest_asyncio
from google.protobuf.message import Message

from asap import Agent, Client, Incoming, Limits, RetryPolicy, Server, task_envelope
from asap.connect import discover, open_channel
from asap.core.method import MethodSpec
from asap.core.tasks import TaskOwner
from asap.errors import (
    AsapError,
    ConnectionLost,
    DeadlineExceeded,
    ShuttingDown,
    Unavailable,
    from_status,
    to_status,
)
from asap.fallback import FallbackChannel, is_transport_failure
from asap.protocol.frames import SUBPROTOCOL_JSON, CloseCode
from asap.transports.base import CallOptions, Channel, Reply, ResponseStream
from asap.transports.ws.client import WebSocketChannel
from asap.v1 import manifest_pb2, payload_pb2, status_pb2, task_pb2


class BlockableProxy:
    """A loopback TCP proxy in front of the gRPC listener that can be cut off (like a firewall)."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._owner = TaskOwner("proxy")
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self._target_port
        )
        self._writers += [writer, upstream_writer]
        self._owner.spawn(self._pipe(reader, upstream_writer))
        self._owner.spawn(self._pipe(upstream_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def block(self) -> None:
        """Refuse new connections and cut every open one."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._owner.close()
        if self._server is not None:
            await self._server.wait_closed()


class Ledger:
    """The agent's record of which envelope ids it processed, and over which transport."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.transports: list[str] = []
        self.parked = asyncio.Event()
        self.release = asyncio.Event()


@pytest_asyncio.fixture
async def setup() -> AsyncIterator[tuple[Server, BlockableProxy, Ledger, str]]:
    ledger = Ledger()
    agent = Agent("urn:asap:agent:ledger")

    @agent.skill("record")
    async def record(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        if request.payload.input.fields.get("park") is not None:
            ledger.parked.set()
            await ledger.release.wait()
        # Counted on completion: a run cancelled because its caller vanished did not process it.
        ledger.runs[request.envelope.id] += 1
        ledger.transports.append(request.call.transport)
        return payload_pb2.TaskResponse(status=task_pb2.TASK_STATUS_COMPLETED)

    server = Server(agent)
    grpc_listener = server.add_grpc("127.0.0.1:0")
    ws_listener = server.add_websocket("127.0.0.1:0")
    await server.start()
    grpc_port = int(grpc_listener.endpoint.url.rsplit(":", 1)[1])
    proxy = BlockableProxy(grpc_port)
    await proxy.start()
    ws_url = ws_listener.endpoint.url
    server.advertise(
        [
            manifest_pb2.Endpoint(
                transport=manifest_pb2.TRANSPORT_GRPC, url=f"grpc://127.0.0.1:{proxy.port}"
            ),
            manifest_pb2.Endpoint(transport=manifest_pb2.TRANSPORT_WEBSOCKET, url=ws_url),
        ]
    )
    yield server, proxy, ledger, ws_url
    await proxy.block()
    await server.stop(1.0)


@pytest.mark.asyncio
async def test_sends_fall_back_to_websocket_when_grpc_is_blocked(
    setup: tuple[Server, BlockableProxy, Ledger, str],
) -> None:
    """Sends go over gRPC, then over the bridge once gRPC is blocked; none is processed twice."""
    server, proxy, ledger, ws_url = setup
    client = await discover(ws_url, sender="urn:asap:agent:caller", prefer=("grpc", "ws"))
    async with client:
        for number in range(3):
            await client.send(task_envelope(server.agent.id, "record", {"n": number}))
        await proxy.block()
        for number in range(3, 6):
            await client.send(task_envelope(server.agent.id, "record", {"n": number}))
    assert ledger.transports == ["grpc"] * 3 + ["ws"] * 3
    assert len(ledger.runs) == 6
    assert set(ledger.runs.values()) == {1}


@pytest.mark.asyncio
async def test_in_flight_send_is_resent_over_websocket_and_processed_once(
    setup: tuple[Server, BlockableProxy, Ledger, str],
) -> None:
    """A send cut off mid-call is retried over the bridge with the same id; the handler runs once."""
    server, proxy, ledger, ws_url = setup
    client = await discover(ws_url, sender="urn:asap:agent:caller", prefer=("grpc", "ws"))
    async with client:
        envelope = task_envelope(server.agent.id, "record", {"park": True})
        sending = asyncio.create_task(client.send(envelope))
        await ledger.parked.wait()
        await proxy.block()
        ledger.release.set()
        response = await sending
    assert response.envelope.correlation_id == envelope.id
    assert ledger.runs == Counter({envelope.id: 1})


class TimeoutRecorder(Channel):
    """A real channel that records the timeout each unary attempt was given."""

    def __init__(self, inner: Channel, timeouts: list[float | None]) -> None:
        self.transport = inner.transport
        self._inner = inner
        self._timeouts = timeouts

    async def unary(self, method: MethodSpec, request: Message, options: CallOptions) -> Reply:
        self._timeouts.append(options.timeout)
        return await self._inner.unary(method, request, options)

    def open_stream(
        self,
        method: MethodSpec,
        requests: Message | AsyncIterable[Message],
        options: CallOptions,
    ) -> ResponseStream:
        return self._inner.open_stream(method, requests, options)

    async def close(self) -> None:
        await self._inner.close()


@pytest_asyncio.fixture
async def black_holes() -> AsyncIterator[list[str]]:
    """Three loopback listeners that accept TCP connections and never answer the handshake."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    servers = [await asyncio.start_server(hold, "127.0.0.1", 0) for _ in range(3)]
    yield [f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/asap/v1/ws" for server in servers]
    for writer in held:
        writer.transport.abort()
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_one_deadline_spans_every_endpoint(black_holes: list[str]) -> None:
    """Each attempt gets only what is left of the caller's timeout; none starts past it.

    Every endpoint fails its handshake after 0.5 s (UNAVAILABLE, a transport failure), so the
    second attempt gets at most the 0.3 s left of 0.8 s and ends the call at the deadline; the
    third is never tried (before: three attempts of 0.8 s each and UNAVAILABLE after 1.5 s).
    """
    timeouts: list[float | None] = []

    def factory(url: str) -> Channel:
        return TimeoutRecorder(
            WebSocketChannel(url, limits=Limits(handshake_timeout=0.5)), timeouts
        )

    client = Client(
        FallbackChannel(black_holes, factory),
        sender="urn:asap:agent:caller",
        timeout=0.8,
        retry=RetryPolicy(max_attempts=1),
    )
    async with client:
        with pytest.raises(DeadlineExceeded):
            await client.send(task_envelope("urn:asap:agent:ledger", "record"))
    assert len(timeouts) == 2
    first, second = timeouts
    assert first is not None
    assert second is not None
    assert first <= 0.8
    assert second <= first - 0.5


class Pair:
    """Two real servers of one agent: ``answering`` is listed first, ``spare`` second."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def server(self, name: str) -> Server:
        agent = Agent("urn:asap:agent:pair")

        @agent.skill("busy")
        async def busy(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
            self.calls[name] += 1
            if name == "answering":
                message = "the handler says: busy, try later"
                raise Unavailable(message)
            return payload_pb2.TaskResponse(status=task_pb2.TASK_STATUS_COMPLETED)

        return Server(agent)


@pytest.mark.asyncio
@pytest.mark.parametrize("listener", ["add_grpc", "add_websocket"])
async def test_a_handler_unavailable_is_returned_and_keeps_the_endpoint(listener: str) -> None:
    """UNAVAILABLE raised by a handler is the server's answer: no fallback, no cooldown."""
    pair = Pair()
    answering, spare = pair.server("answering"), pair.server("spare")
    first = getattr(answering, listener)("127.0.0.1:0")
    second = getattr(spare, listener)("127.0.0.1:0")
    async with answering, spare:
        channel = FallbackChannel([first.endpoint.url, second.endpoint.url], open_channel)
        client = Client(channel, sender="urn:asap:agent:caller", retry=RetryPolicy(max_attempts=1))
        async with client:
            for _ in range(2):
                with pytest.raises(Unavailable, match="busy, try later"):
                    await client.send(task_envelope(answering.agent.id, "busy"))
            assert channel.current_url == first.endpoint.url
    assert pair.calls == Counter({"answering": 2})


@pytest.mark.asyncio
async def test_a_message_too_big_close_is_returned_and_keeps_the_endpoint() -> None:
    """A 1009 close for a frame over the server's JSON cap is an answer: the spare never sees it."""
    pair = Pair()
    answering, spare = pair.server("answering"), pair.server("spare")
    first = answering.add_websocket("127.0.0.1:0")
    second = spare.add_grpc("127.0.0.1:0")  # would take the message

    def factory(url: str) -> Channel:
        return open_channel(url, subprotocol=SUBPROTOCOL_JSON)

    async with answering, spare:
        channel = FallbackChannel([first.endpoint.url, second.endpoint.url], factory)
        client = Client(channel, sender="urn:asap:agent:caller", retry=RetryPolicy(max_attempts=1))
        big = task_envelope(answering.agent.id, "busy", {"blob": "x" * (300 * 1024)})
        async with client:
            with pytest.raises(ConnectionLost) as caught:
                await client.send(big)
            assert caught.value.close_code == CloseCode.MESSAGE_TOO_BIG
            assert channel.current_url == first.endpoint.url
    assert pair.calls == Counter()


def _answered(error: AsapError) -> AsapError:
    """``error`` as a client decodes it when an ASAP server sent it."""
    return from_status(to_status(error))


@pytest.mark.parametrize(
    ("error", "transport_failure"),
    [
        (Unavailable("cannot connect to ws://127.0.0.1:1/asap/v1/ws: refused"), True),
        (ConnectionLost("the connection closed"), True),
        (ConnectionLost("closed", close_code=CloseCode.GOING_AWAY), True),
        (ConnectionLost("closed", close_code=CloseCode.INTERNAL_ERROR), True),
        (ConnectionLost("closed", close_code=CloseCode.TRY_AGAIN_LATER), True),
        (from_status(status_pb2.Status(code=14, message="503 from a proxy")), True),
        (_answered(Unavailable("a handler raised it")), False),
        (_answered(ConnectionLost("a handler raised it")), False),
        (ConnectionLost("closed", close_code=CloseCode.POLICY_VIOLATION), False),
        (ConnectionLost("closed", close_code=CloseCode.MESSAGE_TOO_BIG), False),
        (ConnectionLost("closed", close_code=CloseCode.PROTOCOL_ERROR), False),
        (ConnectionLost("closed", close_code=CloseCode.INVALID_PAYLOAD), False),
        (ShuttingDown(), False),
        (DeadlineExceeded(), False),
    ],
)
def test_is_transport_failure(error: AsapError, *, transport_failure: bool) -> None:
    """Only an unreachable endpoint is a transport failure; anything a server answered is not."""
    assert is_transport_failure(error) is transport_failure
