"""A loopback TCP proxy for tests: round-robin over backends, optionally cutting connections.

Each accepted connection goes to the next backend that accepts a connection (a backend that
refuses is skipped, as a load balancer's health check would). With ``cut_between`` every
connection is cut after a random number of bytes in that range has passed through it in either
direction: aborted on both sides (a reset, as a dying network path), or with ``reset=False``
closed (FIN) in the middle of whatever frame was passing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random


class Proxy:
    """Round-robin TCP proxy on 127.0.0.1.

    Args:
        backends: Backend ports on 127.0.0.1.
        cut_between: (min, max) bytes after which each connection is cut; None never cuts.
        seed: Seed of the cut points.
    """

    def __init__(
        self,
        backends: list[int],
        *,
        cut_between: tuple[int, int] | None = None,
        seed: int = 7,
        reset: bool = True,
    ) -> None:
        self._reset = reset
        self.backends = list(backends)
        self._cut_between = cut_between
        self._rng = random.Random(seed)  # noqa: S311 - test traffic shaping
        self._next = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.cuts = 0
        self.connections = 0
        self.port = 0

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.backends)):
            port = self.backends[self._next % len(self.backends)]
            self._next += 1
            try:
                return await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            backend = await self._connect()
            if backend is None:
                writer.transport.abort()
                return
            self.connections += 1
            upstream_reader, upstream_writer = backend
            self._writers.add(upstream_writer)
            budget = [
                self._rng.randint(*self._cut_between) if self._cut_between else -1
            ]  # bytes left before the cut, shared by both directions
            pumps = [
                asyncio.create_task(self._pump(reader, upstream_writer, budget)),
                asyncio.create_task(self._pump(upstream_reader, writer, budget)),
            ]
            _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in pending:
                pump.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for side in (writer, upstream_writer):
                if self._reset:
                    side.transport.abort()  # RST
                else:
                    side.transport.close()  # FIN, in the middle of whatever frame was passing
            self._writers.discard(upstream_writer)
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, budget: list[int]
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await source.read(16384):
                if budget[0] >= 0:
                    budget[0] -= len(data)
                    if budget[0] < 0:
                        self.cuts += 1
                        return  # cut: both sides are aborted by the caller
                sink.write(data)
                await sink.drain()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
