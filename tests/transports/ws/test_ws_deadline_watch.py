"""A bridge call that ends inside the read that started it costs no deadline watch; one that
suspends is watched (and meets its deadline: tests/conformance/test_deadlines.py)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from asap import Agent, Incoming, Server, connect, task_envelope
from asap.protocol.limits import Limits
from asap.v1 import payload_pb2, task_pb2
from tests.transports.ws.conftest import server_connections


if TYPE_CHECKING:
    from collections.abc import AsyncIterator

AGENT = "urn:asap:agent:watch"
SENDER = "urn:asap:agent:watcher"


def make_agent(release: asyncio.Event) -> Agent:
    """``plain``: a plain function (runs eagerly); ``waits``: suspends until ``release``."""
    agent = Agent(AGENT, name="watch")

    @agent.skill("plain")
    def plain(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        return payload_pb2.TaskResponse(task_id="p", status=task_pb2.TASK_STATUS_COMPLETED)

    @agent.skill("waits")
    async def waits(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        await release.wait()
        return payload_pb2.TaskResponse(task_id="w", status=task_pb2.TASK_STATUS_COMPLETED)

    return agent


@pytest.fixture
def release() -> asyncio.Event:
    return asyncio.Event()


@pytest_asyncio.fixture
async def server(release: asyncio.Event) -> AsyncIterator[Server]:
    server = Server(make_agent(release), limits=Limits(rate_limit_per_second=0))
    server.add_websocket("127.0.0.1:0")
    await server.start()
    yield server
    await server.stop(0)


@pytest.mark.asyncio
async def test_only_a_call_that_suspends_is_watched(server: Server, release: asyncio.Event) -> None:
    client = connect(server.endpoints()[0].url, sender=SENDER)
    try:
        await client.send(task_envelope(AGENT, "plain", {}), timeout=5.0)  # opens the connection
        [conn] = server_connections(server)
        watched: list[float] = []
        watching = asyncio.Event()
        watch = conn.watch_deadline

        def spy(call: object, deadline: float) -> None:
            watched.append(deadline)
            watching.set()
            watch(call, deadline)

        conn.watch_deadline = spy  # type: ignore[method-assign]
        for _ in range(10):
            await client.send(task_envelope(AGENT, "plain", {}), timeout=5.0)
        assert watched == []
        async with asyncio.TaskGroup() as group:
            waiting = group.create_task(client.send(task_envelope(AGENT, "waits", {}), timeout=5.0))
            await watching.wait()  # set once the call has suspended
            assert len(watched) == 1
            release.set()
        assert waiting.result().envelope.task_response.task_id == "w"
        assert len(conn.deadlines) == 0
    finally:
        await client.close()
