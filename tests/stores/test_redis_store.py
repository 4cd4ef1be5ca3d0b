"""The Redis stores behind a real Server: shared rate limits, and Redis loss as UNAVAILABLE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from asap import Limits, Server, connect, errors
from asap.core.agent import Agent, Incoming
from asap.core.dedupe import Owned, Stored
from asap.stores.redis import RedisDedupeStore, RedisRateLimiter
from asap.stores.redis import connect as redis_connect
from asap.v1 import payload_pb2, task_pb2
from tests.conformance._service import envelope
from tests.redis_server import RedisServer, unique_prefix


AGENT = "urn:asap:agent:conformance"
SENDER = "urn:asap:agent:tester"


def _agent(runs: list[str]) -> Agent:
    agent = Agent(AGENT, name="redis-test")

    @agent.skill("count")
    async def count(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        runs.append(request.envelope.id)
        return payload_pb2.TaskResponse(task_id="t", status=task_pb2.TASK_STATUS_COMPLETED)

    return agent


@pytest_asyncio.fixture
async def servers() -> AsyncIterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        await server.stop(0)


@pytest.mark.asyncio
async def test_rate_limit_is_shared_between_replicas(
    redis_server: RedisServer, servers: list[Server]
) -> None:
    """Two servers sharing Redis buckets: a burst of 3 is 3 calls in all, with the same RetryInfo."""
    client_redis = redis_connect(redis_server.url)
    buckets = RedisRateLimiter(client_redis, prefix=unique_prefix())
    limits = Limits(rate_limit_per_second=0.01, rate_limit_burst=3)
    urls = []
    for _ in range(2):
        server = Server(_agent([]), limits=limits, rate_buckets=buckets)
        server.add_grpc("127.0.0.1:0")
        await server.start()
        servers.append(server)
        urls.append(server.endpoints()[0].url)
    clients = [connect(url, sender=SENDER) for url in urls]
    try:
        await clients[0].send(envelope("count"))
        await clients[1].send(envelope("count"))
        await clients[0].send(envelope("count"))
        with pytest.raises(errors.RateLimited) as caught:
            await clients[1].send(envelope("count"))
        assert 50 < caught.value.retry_after <= 100  # one token at 0.01/s
    finally:
        for client in clients:
            await client.close()
        await client_redis.aclose()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_losing_redis_fails_calls_unavailable_then_recovers(servers: list[Server]) -> None:
    """With Redis down, a Send fails StoreUnavailable (UNAVAILABLE), nothing runs; after it is back,
    calls work again (no silent fallback to memory in between)."""
    runs: list[str] = []
    with RedisServer() as redis:
        store = RedisDedupeStore.from_url(redis.url, prefix=unique_prefix())
        server = Server(_agent(runs), dedupe=store)
        server.add_grpc("127.0.0.1:0")
        await server.start()
        servers.append(server)
        client = connect(server.endpoints()[0].url, sender=SENDER, retry=None)
        try:
            await client.send(envelope("count"))
            redis.stop()
            down = client.prepare(envelope("count"))
            with pytest.raises(errors.StoreUnavailable) as caught:
                await client.send(down)
            assert caught.value.code == errors.Code.UNAVAILABLE
            assert down.id not in runs
            redis.start()
            await client.send(down)
            assert runs.count(down.id) == 1
        finally:
            await client.close()
            await store.aclose()


@pytest.mark.asyncio
async def test_a_unix_socket_url_works(tmp_path: Path) -> None:
    """unix:// URLs reach a Redis listening on a unix socket only."""
    with RedisServer(unix_socket=str(tmp_path / "redis.sock")) as redis:
        store = RedisDedupeStore.from_url(redis.url, prefix=unique_prefix())
        try:
            await store.ping()
            claim = await store.claim("k", b"f" * 32)
            assert isinstance(claim, Owned)
            await store.complete("k", claim, b"over a unix socket")
            assert await store.lookup("k", b"f" * 32) == Stored(b"over a unix socket")
        finally:
            await store.aclose()
