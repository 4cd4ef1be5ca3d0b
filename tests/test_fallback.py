"""Runtime fallback: with gRPC blocked, a discovered client's sends go over the WebSocket bridge,
each envelope processed exactly once, including one in flight when gRPC went away."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from asap import Agent, Incoming, Server, task_envelope
from asap.connect import discover
from asap.core.tasks import TaskOwner
from asap.v1 import manifest_pb2, payload_pb2, task_pb2


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
