"""GrpcChannel against a real Server: message size limits enforced by gRPC itself, and the
channel's own options.

What every Channel does the same way is in ``tests/transports/test_channel_contract.py`` and
``test_transport_security.py``; what a Client sees through it, in ``tests/conformance``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from asap import errors
from asap.core.method import method
from asap.protocol.limits import Limits
from asap.server import Server
from asap.transports.base import CallOptions
from asap.transports.grpc import client as grpc_client
from asap.transports.grpc.client import GrpcChannel
from asap.v1 import agent_service_pb2, manifest_pb2


if TYPE_CHECKING:
    from tests.transports.conftest import Kit
    from tests.transports.grpc.conftest import ChannelFactory, ServerFactory


NO_OPTIONS = CallOptions()
SEND = method("Send")


@pytest.mark.asyncio
async def test_oversized_request_is_message_too_large(
    start_server: ServerFactory, open_channel: ChannelFactory, kit: Kit
) -> None:
    """A request over the server's max_message_bytes fails as MessageTooLarge; the server goes on."""
    server = await start_server(limits=Limits(max_message_bytes=4096, rate_limit_per_second=0))
    channel = open_channel(kit.port(server))
    with pytest.raises(errors.MessageTooLarge):
        await channel.unary(SEND, kit.send_request("echo", blob="x" * 8192), NO_OPTIONS)
    reply = await channel.unary(SEND, kit.send_request("echo", blob="small"), NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.SendResponse)


@pytest.mark.asyncio
async def test_oversized_response_is_message_too_large(
    start_server: ServerFactory, open_channel: ChannelFactory, kit: Kit
) -> None:
    """A response over the server's max_message_bytes fails as MessageTooLarge."""
    server = await start_server(limits=Limits(max_message_bytes=4096, rate_limit_per_second=0))
    channel = open_channel(kit.port(server))
    with pytest.raises(errors.MessageTooLarge):
        await channel.unary(SEND, kit.send_request("big", size=8192), NO_OPTIONS)


@pytest.mark.asyncio
async def test_request_over_the_channel_limit_is_refused_locally(
    server: Server, open_channel: ChannelFactory, kit: Kit
) -> None:
    """A request over the channel's own max_message_bytes fails as MessageTooLarge."""
    channel = open_channel(kit.port(server), max_message_bytes=4096)
    with pytest.raises(errors.MessageTooLarge):
        await channel.unary(SEND, kit.send_request("echo", blob="x" * 8192), NO_OPTIONS)


def test_keepalive_interval_below_the_minimum_is_refused() -> None:
    """A keepalive interval the server would treat as abuse is refused up front."""
    with pytest.raises(ValueError, match="keepalive_interval"):
        GrpcChannel("127.0.0.1", 1, keepalive_interval=grpc_client.MIN_KEEPALIVE_INTERVAL / 2)


def test_channel_transport_is_grpc() -> None:
    """The channel reports the gRPC transport."""
    assert GrpcChannel.transport == manifest_pb2.TRANSPORT_GRPC
