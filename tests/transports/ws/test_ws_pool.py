"""WebSocketPool: bounded lending, blocking acquire with a timeout, idle eviction on an injected
clock, dead channels discarded, and close()."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from asap import errors
from asap.core.method import method
from asap.server import Server
from asap.transports.base import CallOptions
from asap.transports.ws.client import WebSocketChannel
from asap.transports.ws.pool import WebSocketPool
from asap.v1 import agent_service_pb2


if TYPE_CHECKING:
    from tests.transports.conftest import Kit
    from tests.transports.ws.conftest import ServerFactory, Wire


SEND = method("Send")
GET_MANIFEST = method("GetManifest")
MANIFEST_REQUEST = agent_service_pb2.GetManifestRequest()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Factory:
    """Makes channels to one URL and remembers every one it made."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[WebSocketChannel] = []

    def __call__(self) -> WebSocketChannel:
        channel = WebSocketChannel(self.url)
        self.made.append(channel)
        return channel


@pytest_asyncio.fixture
async def factory(server: Server, kit: Kit) -> AsyncIterator[Factory]:
    """A channel factory for the default server; every channel is closed at teardown."""
    made = Factory(kit.url(server))
    yield made
    for channel in made.made:
        await channel.close()


@pytest.mark.asyncio
async def test_fifty_acquirers_share_at_most_four_channels(factory: Factory, kit: Kit) -> None:
    """Fifty concurrent users of a pool of four each get a channel; never more than four exist."""
    in_use = 0
    peak = 0
    async with WebSocketPool(factory, max_size=4) as pool:

        async def user(index: int) -> int:
            nonlocal in_use, peak
            async with pool.acquire(timeout=30) as channel:
                in_use += 1
                peak = max(peak, in_use)
                reply = await channel.unary(SEND, kit.send_request("echo", n=index), CallOptions())
                in_use -= 1
            assert isinstance(reply.message, agent_service_pb2.SendResponse)
            number = reply.message.envelope.task_response.result["n"]
            assert isinstance(number, float)
            return int(number)

        results = await asyncio.gather(*(user(index) for index in range(50)))
        assert results == list(range(50))
        assert peak <= 4
        assert len(factory.made) <= 4
        assert pool.size <= 4
        assert pool.idle == pool.size


@pytest.mark.asyncio
async def test_acquire_times_out_when_every_channel_is_lent(factory: Factory) -> None:
    """With every channel lent out, acquire(timeout) raises TimeoutError and frees its place."""
    async with WebSocketPool(factory, max_size=1) as pool:
        async with pool.acquire() as held:
            with pytest.raises(TimeoutError):
                async with pool.acquire(timeout=0.05):
                    pass
        async with pool.acquire(timeout=1) as again:
            assert again is held
        assert pool.size == 1


@pytest.mark.asyncio
async def test_waiters_are_served_in_order(factory: Factory) -> None:
    """A returned channel goes to the longest waiting acquirer."""
    order: list[int] = []
    async with WebSocketPool(factory, max_size=1) as pool:

        async def waiter(index: int, queued: asyncio.Event) -> None:
            queued.set()
            async with pool.acquire():
                order.append(index)

        async with pool.acquire():
            tasks = []
            for index in range(3):
                queued = asyncio.Event()
                tasks.append(asyncio.create_task(waiter(index, queued)))
                await queued.wait()
        await asyncio.gather(*tasks)
    assert order == [0, 1, 2]


@pytest.mark.asyncio
async def test_cancelled_waiter_gives_its_turn_away(factory: Factory) -> None:
    """A waiter cancelled while waiting leaves no hole: the channel goes back to the pool."""
    async with WebSocketPool(factory, max_size=1) as pool:
        entered = asyncio.Event()

        async def wait() -> None:
            entered.set()
            async with pool.acquire():
                pass

        async with pool.acquire() as held:
            task = asyncio.create_task(wait())
            await entered.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert (pool.size, pool.idle) == (1, 1)
        async with pool.acquire(timeout=1) as again:
            assert again is held


@pytest.mark.asyncio
async def test_idle_channels_are_evicted_on_the_injected_clock(factory: Factory) -> None:
    """A channel idle past idle_timeout is closed and replaced by a new one."""
    clock = Clock()
    async with WebSocketPool(factory, max_size=2, idle_timeout=60.0, clock=clock) as pool:
        async with pool.acquire() as first:
            await first.unary(GET_MANIFEST, MANIFEST_REQUEST, CallOptions())
        clock.now += 30
        assert await pool.evict_idle() == 0
        clock.now += 31
        async with pool.acquire() as second:
            assert second is not first
        assert first.closed
        assert (pool.size, pool.idle) == (1, 1)


@pytest.mark.asyncio
async def test_dead_channels_are_discarded(
    start_server: ServerFactory, kit: Kit, wire: Wire
) -> None:
    """A channel returned closed, or whose connection was lost, is dropped; a new one replaces it."""
    server = await start_server()
    made = Factory(kit.url(server))
    async with WebSocketPool(made, max_size=1) as pool:
        async with pool.acquire() as first:
            await first.close()
        assert pool.size == 0
        async with pool.acquire() as second:
            await second.unary(GET_MANIFEST, MANIFEST_REQUEST, CallOptions())
        assert second is not first
        [conn] = wire.connections(server)
        await server.stop(0)  # the pooled channel's connection is lost
        await conn.wait_closed()
        await second._current.wait_closed()  # type: ignore[union-attr]
        assert not second.alive
        restarted = await start_server()
        made.url = kit.url(restarted)
        async with pool.acquire() as third:
            assert third is not second
            reply = await third.unary(GET_MANIFEST, MANIFEST_REQUEST, CallOptions())
            assert isinstance(reply.message, agent_service_pb2.GetManifestResponse)
        assert second.closed
    for channel in made.made:
        assert channel.closed


@pytest.mark.asyncio
async def test_close_closes_every_channel_and_refuses_acquirers(factory: Factory) -> None:
    """close() closes idle and lent channels; waiters and later acquires raise InvalidState."""
    pool = WebSocketPool(factory, max_size=1)
    entered = asyncio.Event()

    async def wait() -> None:
        entered.set()
        async with pool.acquire():
            pass

    async with pool.acquire() as lent:
        waiter = asyncio.create_task(wait())
        await entered.wait()
        await pool.close()
        assert lent.closed
        with pytest.raises(errors.InvalidState):
            await waiter
    with pytest.raises(errors.InvalidState):
        async with pool.acquire():
            pass
    await pool.close()


def test_pool_arguments_are_checked(factory: Factory) -> None:
    """max_size below 1 and a non-positive idle_timeout are refused."""
    with pytest.raises(ValueError, match="max_size"):
        WebSocketPool(factory, max_size=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        WebSocketPool(factory, idle_timeout=0)
