"""The bridge client writes the requests of calls started in one loop turn together (one transport
write when other calls are in flight), and a lone call's request at once."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from asap import Server, connect, task_envelope
from asap.example import agent
from asap.protocol.limits import Limits
from asap.transports.ws.client import WebSocketChannel


if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

    from asap.client import Client

SENDER = "urn:asap:agent:writer"


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    server = Server(agent, limits=Limits(rate_limit_per_second=0))
    server.add_websocket("127.0.0.1:0")
    await server.start()
    yield server
    await server.stop(0)


def count_writes(client: Client) -> list[int]:
    """Wrap the open connection's transport: one entry (the chunks written) per write."""
    channel = client.channel
    assert isinstance(channel, WebSocketChannel)
    connection = channel._current
    assert connection is not None
    transport = connection.transport
    assert transport is not None
    writes: list[int] = []
    writelines = transport.writelines

    def counted(chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        chunks = list(chunks)
        writes.append(len(chunks))
        writelines(chunks)

    transport.writelines = counted  # type: ignore[method-assign,assignment]
    return writes


async def echo(client: Client) -> None:
    answer = await client.send(task_envelope(agent.id, "echo", {"n": 1}))
    assert answer.envelope.task_response.result["n"] == 1


@pytest.mark.asyncio
async def test_requests_of_one_loop_turn_go_out_together(server: Server) -> None:
    client = connect(server.endpoints()[0].url, sender=SENDER)
    try:
        await echo(client)  # opens the connection
        writes = count_writes(client)
        await echo(client)
        assert len(writes) == 1  # a lone call: written at once, in its own write
        writes.clear()
        async with asyncio.TaskGroup() as group:
            for _ in range(8):
                group.create_task(echo(client))
        # The first request goes out at once; the seven started in the same turn, together.
        assert len(writes) <= 2
    finally:
        await client.close()
