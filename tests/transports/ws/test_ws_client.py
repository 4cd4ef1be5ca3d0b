"""WebSocketChannel end to end against a real Server: every RPC shape on both subprotocols, errors,
limits, deadlines, cancellation, the plaintext rule, and the close/connect race."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from asap import errors
from asap.core.method import method
from asap.protocol.limits import Limits
from asap.server import Server
from asap.transports.base import CallOptions, Reply
from asap.transports.ws.client import WebSocketChannel
from asap.v1 import agent_service_pb2, manifest_pb2


if TYPE_CHECKING:
    from tests.transports.ws.conftest import ChannelFactory, Kit, Probe, ServerFactory


NO_OPTIONS = CallOptions()
SEND = method("Send")
SUBSCRIBE = method("Subscribe")
GET_MANIFEST = method("GetManifest")


async def messages(*items: Message) -> AsyncIterator[Message]:
    for item in items:
        yield item


@pytest.mark.asyncio
async def test_send_returns_the_answer_envelope(channel: WebSocketChannel, kit: Kit) -> None:
    """Send answers with a TaskResponse envelope correlated to the request."""
    request = kit.send_request("echo", greeting="hello")
    reply = await channel.unary(SEND, request, NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.SendResponse)
    answer = reply.message.envelope
    assert answer.correlation_id == request.envelope.id
    assert answer.sender == kit.AGENT_ID
    assert answer.task_response.result["greeting"] == "hello"
    assert reply.trailing_metadata == ()


@pytest.mark.asyncio
async def test_send_batch_returns_one_result_per_envelope(
    channel: WebSocketChannel, kit: Kit
) -> None:
    """SendBatch answers each envelope in order; a failing one reports its error in place."""
    envelopes = [kit.envelope("echo", n=1), kit.envelope("fail"), kit.envelope("echo", n=3)]
    request = agent_service_pb2.SendBatchRequest(envelopes=envelopes)
    reply = await channel.unary(method("SendBatch"), request, NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.SendBatchResponse)
    outcomes = [result.WhichOneof("outcome") for result in reply.message.results]
    assert outcomes == ["envelope", "error", "envelope"]
    assert reply.message.results[1].error.code == errors.Code.FAILED_PRECONDITION
    assert reply.message.results[2].envelope.task_response.result["n"] == 3


@pytest.mark.asyncio
async def test_subscribe_streams_updates_in_order_then_the_answer(
    channel: WebSocketChannel, kit: Kit
) -> None:
    """Subscribe yields every TaskUpdate in order, then the TaskResponse, then ends."""
    request = agent_service_pb2.SubscribeRequest(envelope=kit.envelope("progress"))
    stream = channel.open_stream(SUBSCRIBE, request, NO_OPTIONS)
    items = [item async for item in stream]
    assert all(isinstance(item, agent_service_pb2.SubscribeResponse) for item in items)
    envelopes = [item.envelope for item in items]  # type: ignore[attr-defined]
    kinds = [envelope.WhichOneof("payload") for envelope in envelopes]
    assert kinds == ["task_update"] * kit.UPDATES + ["task_response"]
    progress = [envelope.task_update.progress_percent for envelope in envelopes[: kit.UPDATES]]
    assert progress == sorted(progress)
    assert stream.trailing_metadata == ()


@pytest.mark.asyncio
async def test_publish_reports_the_outcome_of_each_envelope(
    channel: WebSocketChannel, kit: Kit
) -> None:
    """Publish (client streaming) yields one response with an outcome per envelope, in order."""
    envelopes = [kit.envelope("echo", n=1), kit.envelope("fail"), kit.envelope("echo", n=2)]
    requests = messages(*(agent_service_pb2.PublishRequest(envelope=e) for e in envelopes))
    stream = channel.open_stream(method("Publish"), requests, NO_OPTIONS)
    items = [item async for item in stream]
    assert len(items) == 1
    response = items[0]
    assert isinstance(response, agent_service_pb2.PublishResponse)
    outcomes = [result.WhichOneof("outcome") for result in response.results]
    assert outcomes == ["envelope", "error", "envelope"]


@pytest.mark.asyncio
async def test_stream_pushes_an_answer_or_error_per_envelope(
    channel: WebSocketChannel, kit: Kit
) -> None:
    """Stream (duplex) answers every envelope and reports failures without ending the stream."""
    ok_a, failing, ok_b = kit.envelope("echo"), kit.envelope("fail"), kit.envelope("echo")
    requests = messages(
        *(agent_service_pb2.StreamRequest(envelope=e) for e in (ok_a, failing, ok_b))
    )
    stream = channel.open_stream(method("Stream"), requests, NO_OPTIONS)
    answers: set[str] = set()
    failed: list[str] = []
    async for item in stream:
        assert isinstance(item, agent_service_pb2.StreamResponse)
        if item.HasField("error"):
            failed.append(item.error.envelope_id)
        else:
            answers.add(item.envelope.correlation_id)
    assert answers == {ok_a.id, ok_b.id}
    assert failed == [failing.id]


@pytest.mark.asyncio
async def test_get_manifest_lists_the_ws_endpoint(
    server: Server, channel: WebSocketChannel, kit: Kit
) -> None:
    """GetManifest returns the agent's manifest with the real ws:// endpoint."""
    reply = await channel.unary(GET_MANIFEST, agent_service_pb2.GetManifestRequest(), NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.GetManifestResponse)
    manifest = reply.message.manifest
    assert manifest.id == kit.AGENT_ID
    assert list(manifest.endpoints) == [
        manifest_pb2.Endpoint(transport=manifest_pb2.TRANSPORT_WEBSOCKET, url=kit.url(server))
    ]
    assert kit.url(server).startswith("ws://127.0.0.1:")
    assert kit.url(server).endswith("/asap/v1/ws")


@pytest.mark.asyncio
async def test_call_context_carries_metadata_peer_and_deadline(
    channel: WebSocketChannel, kit: Kit
) -> None:
    """The handler's CallContext has the request metadata, an ipv4 peer, "ws" and the deadline."""
    options = CallOptions(timeout=30.0, metadata=(("x-request-id", "r-42"),))
    reply = await channel.unary(SEND, kit.send_request("meta"), options)
    assert isinstance(reply.message, agent_service_pb2.SendResponse)
    result = reply.message.envelope.task_response.result
    assert result["request_id"] == "r-42"
    assert result["transport"] == "ws"
    assert str(result["peer"]).startswith("ipv4:127.0.0.1:")
    remaining = result["remaining"]
    assert isinstance(remaining, float)
    assert 0 < remaining <= 30.0


@pytest.mark.asyncio
async def test_handler_error_arrives_as_the_same_class_with_details(
    channel: WebSocketChannel, kit: Kit
) -> None:
    """An AsapError subclass with details and trailers arrives as the same class with both."""
    with pytest.raises(errors.FailedPrecondition) as caught:
        await channel.unary(SEND, kit.send_request("fail"), NO_OPTIONS)
    error = caught.value
    assert error.message == "the task is not ready"
    assert error.metadata == {"task": "t-1"}
    [failure] = errors.details_of(error, error_details_pb2.PreconditionFailure)
    assert failure.violations[0].description == "not ready"
    assert ("x-test-trailer", "kept") in error.trailing_metadata
    assert ("x-test-bin", b"\x00\x01") in error.trailing_metadata


@pytest.mark.asyncio
async def test_streaming_error_is_raised_by_iteration(channel: WebSocketChannel, kit: Kit) -> None:
    """A Subscribe whose handler fails raises the same class from iteration, with trailers."""
    request = agent_service_pb2.SubscribeRequest(envelope=kit.envelope("fail"))
    stream = channel.open_stream(SUBSCRIBE, request, NO_OPTIONS)
    with pytest.raises(errors.FailedPrecondition):
        await anext(stream)
    assert ("x-test-trailer", "kept") in stream.trailing_metadata
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


@pytest.mark.asyncio
async def test_unexpected_exception_becomes_generic_internal(
    channel: WebSocketChannel, kit: Kit
) -> None:
    """An unexpected exception reaches the caller as Internal without its text."""
    with pytest.raises(errors.Internal) as caught:
        await channel.unary(SEND, kit.send_request("crash"), NO_OPTIONS)
    assert kit.SECRET not in str(caught.value)


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
async def test_oversized_response_is_message_too_large(
    start_server: ServerFactory, open_channel: ChannelFactory, kit: Kit
) -> None:
    """A response over the server's max_message_bytes fails as MessageTooLarge."""
    server = await start_server(limits=Limits(max_message_bytes=4096, rate_limit_per_second=0))
    channel = open_channel(kit.url(server))
    with pytest.raises(errors.MessageTooLarge):
        await channel.unary(SEND, kit.send_request("big", size=8192), NO_OPTIONS)
    reply = await channel.unary(SEND, kit.send_request("big", size=10), NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.SendResponse)


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
async def test_too_many_streams_on_one_connection(
    start_server: ServerFactory, open_channel: ChannelFactory, probe: Probe, kit: Kit
) -> None:
    """A call beyond max_concurrent_streams fails with TooManyCalls; the first call goes on."""
    limits = Limits(max_concurrent_streams=1, rate_limit_per_second=0)
    server = await start_server(limits=limits)
    channel = open_channel(kit.url(server))
    first = asyncio.create_task(channel.unary(SEND, kit.send_request("block"), NO_OPTIONS))
    await probe.entered.wait()
    with pytest.raises(errors.TooManyCalls):
        await channel.unary(SEND, kit.send_request("echo"), NO_OPTIONS)
    probe.release.set()
    reply = await first
    assert isinstance(reply.message, agent_service_pb2.SendResponse)


@pytest.mark.asyncio
async def test_deadline_exceeded(channel: WebSocketChannel, probe: Probe, kit: Kit) -> None:
    """A call that outlives its timeout fails with DeadlineExceeded and the handler is cancelled."""
    with pytest.raises(errors.DeadlineExceeded):
        await channel.unary(SEND, kit.send_request("block"), CallOptions(timeout=0.2))
    await probe.cancelled.wait()


@pytest.mark.asyncio
async def test_streaming_deadline_exceeded(
    channel: WebSocketChannel, probe: Probe, kit: Kit
) -> None:
    """A stream that outlives its timeout raises DeadlineExceeded from iteration."""
    request = agent_service_pb2.SubscribeRequest(envelope=kit.envelope("block"))
    stream = channel.open_stream(SUBSCRIBE, request, CallOptions(timeout=0.2))
    with pytest.raises(errors.DeadlineExceeded):
        await anext(stream)
    await probe.cancelled.wait()


@pytest.mark.asyncio
async def test_cancelling_the_calling_task_cancels_the_handler(
    channel: WebSocketChannel, probe: Probe, kit: Kit
) -> None:
    """Cancelling the task awaiting a unary call sends Cancel: the server's handler is cancelled."""
    call = asyncio.create_task(channel.unary(SEND, kit.send_request("block"), NO_OPTIONS))
    await probe.entered.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await probe.cancelled.wait()


@pytest.mark.asyncio
async def test_stream_cancel_reaches_the_handler(
    channel: WebSocketChannel, probe: Probe, kit: Kit
) -> None:
    """ResponseStream.cancel() cancels the call; the handler sees it and iteration raises Cancelled."""
    request = agent_service_pb2.SubscribeRequest(envelope=kit.envelope("block"))
    stream = channel.open_stream(SUBSCRIBE, request, NO_OPTIONS)
    reading = asyncio.create_task(anext(stream))
    await probe.entered.wait()
    await stream.cancel()
    await probe.cancelled.wait()
    with pytest.raises(errors.Cancelled):
        await reading
    await stream.cancel()


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
    await probe.cancelled.wait()


@pytest.mark.asyncio
async def test_calls_after_close_raise_invalid_state(channel: WebSocketChannel, kit: Kit) -> None:
    """close() is idempotent and every later call raises InvalidState."""
    await channel.unary(SEND, kit.send_request("echo"), NO_OPTIONS)
    await channel.close()
    await channel.close()
    assert channel.closed
    assert not channel.alive
    with pytest.raises(errors.InvalidState):
        await channel.unary(SEND, kit.send_request("echo"), NO_OPTIONS)
    request = agent_service_pb2.SubscribeRequest(envelope=kit.envelope("echo"))
    with pytest.raises(errors.InvalidState):
        channel.open_stream(SUBSCRIBE, request, NO_OPTIONS)


@pytest.mark.asyncio
async def test_wrong_call_shape_is_refused(channel: WebSocketChannel, kit: Kit) -> None:
    """unary() refuses streaming methods and open_stream() refuses unary ones or wrong requests."""
    request = agent_service_pb2.SubscribeRequest(envelope=kit.envelope("echo"))
    with pytest.raises(ValueError, match="not a unary"):
        await channel.unary(SUBSCRIBE, request, NO_OPTIONS)
    with pytest.raises(ValueError, match="not a streaming"):
        channel.open_stream(SEND, kit.send_request("echo"), NO_OPTIONS)
    with pytest.raises(TypeError):
        channel.open_stream(SUBSCRIBE, messages(request), NO_OPTIONS)
    with pytest.raises(TypeError):
        channel.open_stream(method("Publish"), request, NO_OPTIONS)


@pytest.mark.asyncio
async def test_plaintext_to_a_remote_host_is_refused_before_connecting() -> None:
    """ws:// to a non-loopback host raises InsecureTransportError before any connection or task."""
    before = asyncio.all_tasks()
    with pytest.raises(errors.InsecureTransportError):
        WebSocketChannel("ws://example.com/asap/v1/ws")
    assert asyncio.all_tasks() == before


@pytest.mark.asyncio
async def test_plaintext_to_loopback_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """ws:// to loopback is allowed, with a WARNING log record (not a Python warning)."""
    with caplog.at_level(logging.WARNING, logger="asap.client"):
        channel = WebSocketChannel("ws://127.0.0.1:1/asap/v1/ws")
    await channel.close()
    assert any(record.levelno == logging.WARNING for record in caplog.records)


@pytest.mark.asyncio
async def test_allow_insecure_permits_plaintext_to_a_remote_host() -> None:
    """allow_insecure=True permits ws:// to a non-loopback host (nothing connects yet)."""
    channel = WebSocketChannel("ws://example.com/asap/v1/ws", allow_insecure=True)
    await channel.close()


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
