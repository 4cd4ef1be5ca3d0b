"""Fixtures for the gRPC transport tests: the test agent of ``tests/transports/conftest.py`` served
by a real Server on a gRPC listener on 127.0.0.1, and GrpcChannels to it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from asap.protocol.limits import Limits
from asap.server import Server
from asap.transports.grpc.client import GrpcChannel


if TYPE_CHECKING:
    from tests.transports.conftest import Closing, Kit, Launch


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
def start_server(launch: Launch) -> ServerFactory:
    """Start a Server for the test agent on a gRPC listener on 127.0.0.1 (port 0)."""

    async def start(*, limits: Limits | None = None) -> Server:
        return await launch(lambda server: server.add_grpc("127.0.0.1:0"), limits=limits)

    return start


@pytest_asyncio.fixture
async def server(start_server: ServerFactory) -> Server:
    """A plaintext server on 127.0.0.1 with default limits (rate limiting off)."""
    return await start_server()


ChannelFactory = Callable[..., GrpcChannel]


@pytest.fixture
def open_channel(closing: Closing) -> ChannelFactory:
    """Open GrpcChannels; every channel opened is closed at teardown."""

    def open_(
        port: int,
        *,
        host: str = "127.0.0.1",
        max_message_bytes: int | None = None,
        keepalive_interval: float = 30.0,
    ) -> GrpcChannel:
        return closing(
            GrpcChannel(
                host,
                port,
                keepalive_interval=keepalive_interval,
                max_message_bytes=max_message_bytes or Limits().max_message_bytes,
            )
        )

    return open_


@pytest_asyncio.fixture
async def channel(server: Server, open_channel: ChannelFactory, kit: Kit) -> GrpcChannel:
    """A plaintext GrpcChannel to the default server."""
    return open_channel(kit.port(server))
