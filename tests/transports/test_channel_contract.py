"""What every Channel does the same way below the Client (grpc, ws-proto, ws-json): the call
context it gives handlers, how a stream ends and is cancelled, close(), and wrong call shapes.

(The behaviour a Client sees through a Channel is the conformance suite's, in tests/conformance.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from google.protobuf.message import Message

from asap import errors
from asap.core.method import method
from asap.transports.base import CallOptions
from asap.v1 import agent_service_pb2


if TYPE_CHECKING:
    from tests.transports.conftest import AnyChannel, Kit, Probe


NO_OPTIONS = CallOptions()
SEND = method("Send")
SUBSCRIBE = method("Subscribe")


async def messages(*items: Message) -> AsyncIterator[Message]:
    for item in items:
        yield item


@pytest.mark.asyncio
async def test_call_context_names_the_transport_and_the_peer(channel: AnyChannel, kit: Kit) -> None:
    """The handler's CallContext names the transport ("grpc" or "ws") and an ipv4 peer."""
    reply = await channel.unary(SEND, kit.send_request("meta"), NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.SendResponse)
    result = reply.message.envelope.task_response.result
    assert result["transport"] == urlsplit(channel.url).scheme
    assert str(result["peer"]).startswith("ipv4:127.0.0.1:")


@pytest.mark.asyncio
async def test_streaming_error_is_raised_by_iteration_then_the_stream_ends(
    channel: AnyChannel, kit: Kit
) -> None:
    """A Subscribe whose handler fails raises the same class from iteration, with trailers, once."""
    request = agent_service_pb2.SubscribeRequest(envelope=kit.envelope("fail"))
    stream = channel.open_stream(SUBSCRIBE, request, NO_OPTIONS)
    with pytest.raises(errors.FailedPrecondition):
        await anext(stream)
    assert ("x-test-trailer", "kept") in stream.trailing_metadata
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


@pytest.mark.asyncio
async def test_stream_cancel_ends_the_call_and_is_idempotent(
    channel: AnyChannel, probe: Probe, kit: Kit
) -> None:
    """ResponseStream.cancel() ends the call (iteration raises Cancelled); the handler completes."""
    request = agent_service_pb2.SubscribeRequest(envelope=kit.envelope("block"))
    stream = channel.open_stream(SUBSCRIBE, request, NO_OPTIONS)
    reading = asyncio.create_task(anext(stream))
    await probe.entered.wait()
    await stream.cancel()
    with pytest.raises(errors.Cancelled):
        await reading
    await stream.cancel()
    probe.release.set()
    await probe.finished.wait()
    assert not probe.cancelled.is_set()


@pytest.mark.asyncio
async def test_calls_after_close_raise_invalid_state(channel: AnyChannel, kit: Kit) -> None:
    """close() is idempotent and every later call raises InvalidState."""
    await channel.unary(SEND, kit.send_request("echo"), NO_OPTIONS)
    await channel.close()
    await channel.close()
    assert channel.closed
    with pytest.raises(errors.InvalidState):
        await channel.unary(SEND, kit.send_request("echo"), NO_OPTIONS)
    request = agent_service_pb2.SubscribeRequest(envelope=kit.envelope("echo"))
    with pytest.raises(errors.InvalidState):
        channel.open_stream(SUBSCRIBE, request, NO_OPTIONS)


@pytest.mark.asyncio
async def test_wrong_call_shape_is_refused(channel: AnyChannel, kit: Kit) -> None:
    """unary() refuses streaming methods and open_stream() refuses unary ones or wrong requests."""
    subscribe = agent_service_pb2.SubscribeRequest(envelope=kit.envelope("echo"))
    with pytest.raises(ValueError, match="not a unary"):
        await channel.unary(SUBSCRIBE, subscribe, NO_OPTIONS)
    with pytest.raises(ValueError, match="not a streaming"):
        channel.open_stream(SEND, kit.send_request("echo"), NO_OPTIONS)
    with pytest.raises(TypeError):
        channel.open_stream(SUBSCRIBE, messages(subscribe), NO_OPTIONS)
    with pytest.raises(TypeError):
        channel.open_stream(method("Publish"), agent_service_pb2.PublishRequest(), NO_OPTIONS)
