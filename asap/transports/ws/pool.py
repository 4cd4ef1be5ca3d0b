"""WebSocketPool: a bounded pool of :class:`~asap.transports.ws.client.WebSocketChannel`.

One channel already multiplexes any number of calls, so most programs need no pool. A pool helps
when calls are heavy enough that spreading them over several TCP connections pays (large
messages, head-of-line blocking on one connection), or when each user of a channel should hold it
exclusively for a while.

Theory of operation. The pool holds at most ``max_size`` channels, idle or lent out.
:meth:`WebSocketPool.acquire` lends the most recently returned idle channel, creates one while
below ``max_size``, and otherwise waits, first come first served, until one is returned. A channel
returned dead (closed, or its connection lost) is closed and forgotten, which makes room for a new
one. Channels idle for longer than ``idle_timeout`` are closed whenever the pool is used, or by
:meth:`WebSocketPool.evict_idle`; the pool runs no background task. The clock is injectable for
tests.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from asap.errors import InvalidState
from asap.transports.ws.client import WebSocketChannel


_CLOSED_MESSAGE = "the pool is closed"


class WebSocketPool:
    """Lends out up to ``max_size`` WebSocketChannels, created on demand by ``factory``.

    Args:
        factory: Makes a new channel (for example ``lambda: WebSocketChannel(url)``); channels
            connect lazily, so this does no I/O.
        max_size: Most channels at once, idle and lent out together.
        idle_timeout: Seconds a channel may stay idle before the pool closes it.
        clock: Monotonic clock in seconds (injectable for tests).

    Raises:
        ValueError: ``max_size`` below 1 or a ``idle_timeout`` that is not positive.
    """

    def __init__(
        self,
        factory: Callable[[], WebSocketChannel],
        *,
        max_size: int = 4,
        idle_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_size < 1:
            message = "max_size must be at least 1"
            raise ValueError(message)
        if not idle_timeout > 0:
            message = "idle_timeout must be positive"
            raise ValueError(message)
        self._factory = factory
        self.max_size = max_size
        """The most channels the pool holds."""
        self.idle_timeout = idle_timeout
        """Seconds before an idle channel is closed."""
        self._clock = clock
        self._idle: deque[tuple[WebSocketChannel, float]] = deque()
        self._lent: set[WebSocketChannel] = set()
        self._size = 0
        self._waiters: deque[asyncio.Future[WebSocketChannel | None]] = deque()
        self._closed = False

    @property
    def size(self) -> int:
        """Channels the pool holds now, idle and lent out."""
        return self._size

    @property
    def idle(self) -> int:
        """Idle channels."""
        return len(self._idle)

    @asynccontextmanager
    async def acquire(self, timeout: float | None = None) -> AsyncIterator[WebSocketChannel]:
        """Borrow a channel for the ``async with`` block; it returns to the pool afterwards.

        Args:
            timeout: Seconds to wait for a channel when all are lent out; None waits forever.

        Raises:
            TimeoutError: No channel was free within ``timeout``.
            InvalidState: The pool is closed (or was closed while waiting).
        """
        channel = await self._get(timeout)
        try:
            yield channel
        finally:
            await self._put(channel)

    async def _get(self, timeout: float | None) -> WebSocketChannel:
        if self._closed:
            raise InvalidState(_CLOSED_MESSAGE)
        await self.evict_idle()
        while self._idle:
            channel, _ = self._idle.pop()
            if channel.alive:
                self._lent.add(channel)
                return channel
            await self._discard(channel)
        if self._size < self.max_size and not self._waiters:
            return self._create()
        waiter: asyncio.Future[WebSocketChannel | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                handed = await waiter
        except BaseException:
            if not waiter.done():
                waiter.cancel()
                self._waiters.remove(waiter)
            elif not waiter.cancelled() and waiter.exception() is None:
                # Handed over just as the wait ended: pass it on to the next in line.
                handed_late = waiter.result()
                if handed_late is not None:
                    self._lent.add(handed_late)
                    await self._put(handed_late)
                else:
                    self._size -= 1
                    self._wake()
            raise
        if handed is None:  # room was made: create a channel in its place
            self._size -= 1
            return self._create()
        self._lent.add(handed)
        return handed

    def _create(self) -> WebSocketChannel:
        if self._closed:
            raise InvalidState(_CLOSED_MESSAGE)
        channel = self._factory()
        self._size += 1
        self._lent.add(channel)
        return channel

    async def _put(self, channel: WebSocketChannel) -> None:
        self._lent.discard(channel)
        if self._closed:
            await channel.close()
            return
        if not channel.alive:
            await self._discard(channel)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(channel)
                return
        self._idle.append((channel, self._clock()))
        await self.evict_idle()

    async def _discard(self, channel: WebSocketChannel) -> None:
        """Close and forget a channel; a waiter may create one in its place."""
        self._size -= 1
        self._wake()
        await channel.close()

    def _wake(self) -> None:
        """Let the first waiter create a channel (it takes the freed place)."""
        if self._closed:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._size += 1  # reserved for the waiter, which gives it back as it creates
                waiter.set_result(None)
                return

    async def evict_idle(self) -> int:
        """Close channels idle for longer than ``idle_timeout``; returns how many were closed."""
        now = self._clock()
        evicted: list[WebSocketChannel] = []
        while self._idle and now - self._idle[0][1] > self.idle_timeout:
            evicted.append(self._idle.popleft()[0])
        for channel in evicted:
            await self._discard(channel)
        return len(evicted)

    async def close(self) -> None:
        """Close every channel, idle or lent out; waiters and later acquires raise InvalidState."""
        if self._closed:
            return
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(InvalidState(_CLOSED_MESSAGE))
        channels = [channel for channel, _ in self._idle] + list(self._lent)
        self._idle.clear()
        self._lent.clear()
        self._size = 0
        await asyncio.gather(*(channel.close() for channel in channels))

    async def __aenter__(self) -> WebSocketPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
