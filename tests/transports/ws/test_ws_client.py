"""WebSocketChannel against a real Server: message limits per call and per connection, the close
code a call in flight sees, URL checks, and the close/connect race.

What every Channel does the same way is in ``tests/transports/test_channel_contract.py`` and
``test_transport_security.py``; what a Client sees through it, in ``tests/conformance``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import pytest

from asap import errors
from asap.core.method import method
from asap.protocol.limits import Limits
from asap.server import Server
from asap.transports.base import CallOptions, Reply
from asap.transports.ws.client import WebSocketChannel
from asap.v1 import agent_service_pb2, manifest_pb2


if TYPE_CHECKING:
    from tests.transports.conftest import Kit, Probe
    from tests.transports.ws.conftest import ChannelFactory, ServerFactory


NO_OPTIONS = CallOptions()
SEND = method("Send")
GET_MANIFEST = method("GetManifest")


@pytest.mark.asyncio
async def test_oversized_request_is_message_too_large_and_the_connection_goes_on(
    start_server: ServerFactory, open_channel: ChannelFactory, kit: Kit, subprotocol: str
) -> None:
    """A request over the server's max_message_bytes (under its frame cap) fails only that call."""
    server = await start_server(limits=Limits(max_message_bytes=4096, rate_limit_per_second=0))
    channel = open_channel(kit.url(server), subprotocol=subprotocol)
    with pytest.raises(errors.MessageTooLarge):
        await channel.unary(SEND, kit.send_request("echo", blob="x" * 8192), NO_OPTIONS)
    connection = channel._current
    reply = await channel.unary(SEND, kit.send_request("echo", n=1), NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.SendResponse)
    assert channel._current is connection


@pytest.mark.asyncio
async def test_response_over_the_channel_limit_fails_that_call(
    server: Server, open_channel: ChannelFactory, kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    """A response over the channel's own max_message_bytes fails that call, logged; others go on."""
    channel = open_channel(kit.url(server), limits=Limits(max_message_bytes=4096))
    with (
        caplog.at_level(logging.WARNING, logger="asap.client"),
        pytest.raises(errors.MessageTooLarge),
    ):
        await channel.unary(SEND, kit.send_request("big", size=8192), NO_OPTIONS)
    assert any("MESSAGE_TOO_LARGE" in record.getMessage() for record in caplog.records)
    reply = await channel.unary(SEND, kit.send_request("echo"), NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.SendResponse)


@pytest.mark.asyncio
async def test_request_over_the_channel_limit_is_refused_locally(
    server: Server, open_channel: ChannelFactory, kit: Kit
) -> None:
    """A request over the channel's own max_message_bytes fails as MessageTooLarge."""
    channel = open_channel(kit.url(server), limits=Limits(max_message_bytes=4096))
    with pytest.raises(errors.MessageTooLarge):
        await channel.unary(SEND, kit.send_request("echo", blob="x" * 8192), NO_OPTIONS)


@pytest.mark.asyncio
async def test_calls_beyond_the_stream_limit_wait_for_a_stream(
    start_server: ServerFactory, open_channel: ChannelFactory, probe: Probe, kit: Kit
) -> None:
    """Calls beyond the server's max_concurrent_streams wait for a free stream (as gRPC queues
    streams beyond HTTP/2's limit); none fails with TooManyCalls."""
    limits = Limits(max_concurrent_streams=1, rate_limit_per_second=0)
    server = await start_server(limits=limits)
    channel = open_channel(kit.url(server))
    first = asyncio.create_task(channel.unary(SEND, kit.send_request("block"), NO_OPTIONS))
    await probe.entered.wait()
    others = [
        asyncio.create_task(channel.unary(SEND, kit.send_request("echo"), NO_OPTIONS))
        for _ in range(5)
    ]
    probe.release.set()
    replies = await asyncio.gather(first, *others)
    assert all(isinstance(reply.message, agent_service_pb2.SendResponse) for reply in replies)


@pytest.mark.asyncio
async def test_close_fails_calls_in_flight_with_connection_lost(
    channel: WebSocketChannel, probe: Probe, kit: Kit
) -> None:
    """Closing the channel fails a call in flight with ConnectionLost carrying close code 1000."""
    call = asyncio.create_task(channel.unary(SEND, kit.send_request("block"), NO_OPTIONS))
    await probe.entered.wait()
    await channel.close()
    with pytest.raises(errors.ConnectionLost) as caught:
        await call
    assert caught.value.close_code == 1000
    probe.release.set()  # the connection loss did not cancel the handler
    await probe.finished.wait()
    assert not probe.cancelled.is_set()


def test_bad_urls_and_subprotocols_are_refused() -> None:
    """Another scheme, a missing host or an unknown subprotocol raise ValueError."""
    with pytest.raises(ValueError, match="ws://"):
        WebSocketChannel("http://127.0.0.1/asap/v1/ws")
    with pytest.raises(ValueError, match="host"):
        WebSocketChannel("ws:///asap/v1/ws")
    with pytest.raises(ValueError, match="subprotocol"):
        WebSocketChannel("ws://127.0.0.1/asap/v1/ws", subprotocol="chat")


def test_channel_transport_is_websocket() -> None:
    """The channel reports the WebSocket transport."""
    assert WebSocketChannel.transport == manifest_pb2.TRANSPORT_WEBSOCKET


@pytest.mark.asyncio
async def test_close_racing_connect_leaves_no_task(start_server: ServerFactory, kit: Kit) -> None:
    """close() during a connection attempt, at every stage, leaves no task; later calls fail."""
    server = await start_server()
    url = kit.url(server)
    before = asyncio.all_tasks()
    outcomes: set[str] = set()
    for stage in range(40):
        channel = WebSocketChannel(url)
        call = asyncio.create_task(
            channel.unary(GET_MANIFEST, agent_service_pb2.GetManifestRequest(), NO_OPTIONS)
        )
        for _ in range(stage):
            await asyncio.sleep(0)  # let the attempt get a little further each round
        await channel.close()
        [outcome] = await asyncio.gather(call, return_exceptions=True)
        outcomes.add(type(outcome).__name__)
        # Closed before the call began: InvalidState; during the attempt: ConnectionLost.
        assert isinstance(outcome, Reply | errors.ConnectionLost | errors.InvalidState), outcome
        with pytest.raises(errors.InvalidState):
            await channel.unary(SEND, kit.send_request("echo"), NO_OPTIONS)
    await server.stop(0)
    assert asyncio.all_tasks() == before
    assert {"ConnectionLost", "Reply"} <= outcomes
