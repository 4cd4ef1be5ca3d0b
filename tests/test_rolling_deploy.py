"""Rolling deploy: replica A drains while replica B serves the same address (a round-robin proxy).

A client calling continuously sees no error and no envelope runs twice: the drain tells clients at
once (gRPC GOAWAY at the start of the grace, the bridge's GoAway) and the client retries a
ShuttingDown refusal on a fresh connection without spending its retry budget.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from asap import AsapError, RetryPolicy, Server, connect
from asap.core.agent import Agent, Incoming
from asap.core.dedupe import InMemoryDedupeStore
from asap.v1 import payload_pb2, task_pb2
from tests.conformance._service import envelope
from tests.proxy import Proxy


AGENT = "urn:asap:agent:conformance"
SENDER = "urn:asap:agent:tester"
SENDERS = 4
BEFORE = 40
"""Calls answered before A starts draining, and again after it stopped."""


def _replica(entries: Counter[str], served: Counter[str], name: str) -> Agent:
    agent = Agent(AGENT, name=name)

    @agent.skill("count")
    async def count(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        entries[request.envelope.id] += 1
        served[name] += 1
        await asyncio.sleep(0.002)  # the handler's own work: keeps calls in flight during the drain
        return payload_pb2.TaskResponse(task_id="t", status=task_pb2.TASK_STATUS_COMPLETED)

    return agent


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.parametrize("scheme", ["grpc", "ws"])
async def test_a_replica_drains_without_caller_visible_errors(scheme: str) -> None:
    """Calls keep succeeding through a drain of one of two replicas: 0 errors, 0 duplicates."""
    store = InMemoryDedupeStore()  # shared, as replicas share Redis
    entries: Counter[str] = Counter()
    served: Counter[str] = Counter()
    replicas = []
    for name in ("a", "b"):
        server = Server(_replica(entries, served, name), dedupe=store)
        if scheme == "grpc":
            server.add_grpc("127.0.0.1:0")
        else:
            server.add_websocket("127.0.0.1:0")
        await server.start()
        replicas.append(server)
    ports = [int(server.endpoints()[0].url.split(":")[2].split("/")[0]) for server in replicas]
    proxy = await Proxy(ports).start()
    url = (
        f"grpc://127.0.0.1:{proxy.port}"
        if scheme == "grpc"
        else f"ws://127.0.0.1:{proxy.port}/asap/v1/ws"
    )
    # No retry budget at all: every retry below is a drain retry, which must not need one.
    client = connect(url, sender=SENDER, timeout=10.0, retry=RetryPolicy(max_attempts=1))
    answered: list[str] = []
    failures: list[AsapError] = []
    enough = asyncio.Event()
    drained = asyncio.Event()

    async def sender() -> None:
        while not (drained.is_set() and enough.is_set()):
            request = client.prepare(envelope("count"))
            try:
                await client.send(request)
            except AsapError as error:
                failures.append(error)
                return
            answered.append(request.id)
            if len(answered) >= BEFORE:
                enough.set()

    async def drain() -> None:
        await enough.wait()
        enough.clear()
        answered.clear()
        await replicas[0].stop(2.0)
        drained.set()

    try:
        await asyncio.wait_for(
            asyncio.gather(drain(), *(sender() for _ in range(SENDERS))), timeout=40
        )
    finally:
        await client.close()
        await proxy.close()
        for server in replicas:
            await server.stop(0)
    assert failures == []
    assert served["a"] > 0
    assert served["b"] > 0
    assert max(entries.values()) == 1
