"""GrpcChannel end to end against a real Server: every RPC shape, errors, limits, cancellation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from asap import errors
from asap.core.method import method
from asap.protocol.limits import Limits
from asap.server import Server
from asap.transports.base import CallOptions
from asap.transports.grpc import client as grpc_client
from asap.transports.grpc.client import GrpcChannel
from asap.v1 import agent_service_pb2, manifest_pb2


if TYPE_CHECKING:
    from tests.transports.grpc.conftest import ChannelFactory, Kit, Probe, ServerFactory


NO_OPTIONS = CallOptions()
SEND = method("Send")
SUBSCRIBE = method("Subscribe")


async def messages(*items: Message) -> AsyncIterator[Message]:
    for item in items:
        yield item


@pytest.mark.asyncio
async def test_send_returns_the_answer_envelope(channel: GrpcChannel, kit: Kit) -> None:
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
async def test_send_batch_returns_one_result_per_envelope(channel: GrpcChannel, kit: Kit) -> None:
    """SendBatch answers each envelope in order; a failing one reports its error in place."""
    envelopes = [kit.envelope("echo", n=1), kit.envelope("fail"), kit.envelope("echo", n=3)]
    request = agent_service_pb2.SendBatchRequest(envelopes=envelopes)
    reply = await channel.unary(method("SendBatch"), request, NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.SendBatchResponse)
    outcomes = [result.WhichOneof("outcome") for result in reply.message.results]
    assert outcomes == ["envelope", "error", "envelope"]
    assert reply.message.results[0].envelope.correlation_id == envelopes[0].id
    assert reply.message.results[1].error.code == errors.Code.FAILED_PRECONDITION
    assert reply.message.results[2].envelope.task_response.result["n"] == 3


@pytest.mark.asyncio
async def test_subscribe_streams_updates_in_order_then_the_answer(
    channel: GrpcChannel, kit: Kit
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
async def test_publish_reports_the_outcome_of_each_envelope(channel: GrpcChannel, kit: Kit) -> None:
    """Publish (client streaming) yields one response with an outcome per envelope, in order."""
    envelopes = [kit.envelope("echo", n=1), kit.envelope("fail"), kit.envelope("echo", n=2)]
    requests = messages(*(agent_service_pb2.PublishRequest(envelope=e) for e in envelopes))
    stream = channel.open_stream(method("Publish"), requests, NO_OPTIONS)
    items = [item async for item in stream]
    assert len(items) == 1
    response = items[0]
    assert isinstance(response, agent_service_pb2.PublishResponse)
    assert [result.WhichOneof("outcome") for result in response.results] == [
        "envelope",
        "error",
        "envelope",
    ]
    assert [r.envelope.correlation_id for r in response.results if r.HasField("envelope")] == [
        envelopes[0].id,
        envelopes[2].id,
    ]


@pytest.mark.asyncio
async def test_stream_pushes_an_answer_or_error_per_envelope(
    channel: GrpcChannel, kit: Kit
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
async def test_get_manifest_lists_the_grpc_endpoint(
    server: Server, channel: GrpcChannel, kit: Kit
) -> None:
    """GetManifest returns the agent's manifest with the real grpc:// endpoint."""
    request = agent_service_pb2.GetManifestRequest()
    reply = await channel.unary(method("GetManifest"), request, NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.GetManifestResponse)
    manifest = reply.message.manifest
    assert manifest.id == kit.AGENT_ID
    assert [skill.id for skill in manifest.skills][:2] == ["echo", "progress"]
    assert list(manifest.endpoints) == [
        manifest_pb2.Endpoint(
            transport=manifest_pb2.TRANSPORT_GRPC, url=f"grpc://127.0.0.1:{kit.port(server)}"
        )
    ]


@pytest.mark.asyncio
async def test_call_context_carries_metadata_peer_and_deadline(
    channel: GrpcChannel, kit: Kit
) -> None:
    """The handler's CallContext has the request metadata, the peer, "grpc" and the deadline."""
    options = CallOptions(metadata=(("x-request-id", "r-1"),), timeout=30.0)
    reply = await channel.unary(SEND, kit.send_request("meta"), options)
    assert isinstance(reply.message, agent_service_pb2.SendResponse)
    result = reply.message.envelope.task_response.result
    assert result["request_id"] == "r-1"
    assert result["transport"] == "grpc"
    assert str(result["peer"]).startswith("ipv4:127.0.0.1:")
    remaining = result["remaining"]
    assert isinstance(remaining, float)
    assert 0 < remaining <= 31.0  # grpc-timeout travels rounded up (gRPC PROTOCOL-HTTP2)
    reply = await channel.unary(SEND, kit.send_request("meta"), NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.SendResponse)
    assert reply.message.envelope.task_response.result["remaining"] == -1.0  # no deadline


@pytest.mark.asyncio
async def test_handler_error_arrives_as_the_same_class_with_details(
    channel: GrpcChannel, kit: Kit
) -> None:
    """An AsapError subclass with details and trailers arrives as the same class with both."""
    with pytest.raises(errors.FailedPrecondition) as caught:
        await channel.unary(SEND, kit.send_request("fail"), NO_OPTIONS)
    error = caught.value
    assert type(error) is errors.FailedPrecondition
    assert error.message == "the task is not ready"
    assert error.metadata == {"task": "t-1"}
    (detail,) = errors.details_of(error, error_details_pb2.PreconditionFailure)
    assert detail.violations[0].description == "not ready"
    assert error.trailing_metadata == (("x-test-trailer", "kept"), ("x-test-bin", b"\x00\x01"))


@pytest.mark.asyncio
async def test_streaming_error_is_raised_by_iteration(channel: GrpcChannel, kit: Kit) -> None:
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
    channel: GrpcChannel, kit: Kit
) -> None:
    """An unexpected exception reaches the caller as Internal without its text."""
    with pytest.raises(errors.Internal) as caught:
        await channel.unary(SEND, kit.send_request("crash"), NO_OPTIONS)
    assert caught.value.message == "internal error"
    assert kit.SECRET not in str(caught.value)
    assert all(kit.SECRET not in repr(detail) for detail in caught.value.details)


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


@pytest.mark.asyncio
async def test_deadline_exceeded(channel: GrpcChannel, probe: Probe, kit: Kit) -> None:
    """A call that outlives its timeout fails with DeadlineExceeded and the handler is cancelled."""
    with pytest.raises(errors.DeadlineExceeded):
        await channel.unary(SEND, kit.send_request("block"), CallOptions(timeout=0.2))
    await probe.cancelled.wait()


@pytest.mark.asyncio
async def test_cancelling_the_calling_task_cancels_the_handler(
    channel: GrpcChannel, probe: Probe, kit: Kit
) -> None:
    """Cancelling the task awaiting a unary call cancels the server's handler."""
    call = asyncio.create_task(channel.unary(SEND, kit.send_request("block"), NO_OPTIONS))
    await probe.entered.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await probe.cancelled.wait()


@pytest.mark.asyncio
async def test_stream_cancel_reaches_the_handler(
    channel: GrpcChannel, probe: Probe, kit: Kit
) -> None:
    """ResponseStream.cancel() cancels the RPC; the handler sees it and iteration raises Cancelled."""
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
    channel: GrpcChannel, probe: Probe, kit: Kit
) -> None:
    """Closing the channel fails a call in flight with ConnectionLost (UNAVAILABLE)."""
    call = asyncio.create_task(channel.unary(SEND, kit.send_request("block"), NO_OPTIONS))
    await probe.entered.wait()
    await channel.close()
    with pytest.raises(errors.ConnectionLost):
        await call
    await probe.cancelled.wait()


@pytest.mark.asyncio
async def test_calls_after_close_raise_invalid_state(channel: GrpcChannel, kit: Kit) -> None:
    """close() is idempotent and every later call raises InvalidState."""
    await channel.close()
    await channel.close()
    assert channel.closed
    with pytest.raises(errors.InvalidState):
        await channel.unary(SEND, kit.send_request("echo"), NO_OPTIONS)
    request = agent_service_pb2.SubscribeRequest(envelope=kit.envelope("echo"))
    with pytest.raises(errors.InvalidState):
        channel.open_stream(SUBSCRIBE, request, NO_OPTIONS)


@pytest.mark.asyncio
async def test_wrong_call_shape_is_refused(channel: GrpcChannel, kit: Kit) -> None:
    """unary() refuses streaming methods and open_stream() refuses unary ones or wrong requests."""
    subscribe = agent_service_pb2.SubscribeRequest(envelope=kit.envelope("echo"))
    with pytest.raises(ValueError, match="not a unary method"):
        await channel.unary(SUBSCRIBE, subscribe, NO_OPTIONS)
    with pytest.raises(ValueError, match="not a streaming method"):
        channel.open_stream(SEND, kit.send_request("echo"), NO_OPTIONS)
    with pytest.raises(TypeError):
        channel.open_stream(SUBSCRIBE, messages(subscribe), NO_OPTIONS)
    with pytest.raises(TypeError):
        channel.open_stream(method("Publish"), agent_service_pb2.PublishRequest(), NO_OPTIONS)


@pytest.mark.asyncio
async def test_plaintext_to_a_remote_host_is_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Plaintext to a non-loopback host raises InsecureTransportError and creates no channel."""

    def no_channel(*args: object, **kwargs: object) -> grpc.aio.Channel:
        pytest.fail("a channel was created")

    monkeypatch.setattr(grpc.aio, "insecure_channel", no_channel)
    with pytest.raises(errors.InsecureTransportError):
        GrpcChannel("example.com", 50051)


@pytest.mark.asyncio
async def test_plaintext_to_loopback_logs_a_warning(
    server: Server, caplog: pytest.LogCaptureFixture, kit: Kit
) -> None:
    """Plaintext to loopback is allowed, with a WARNING log record."""
    with caplog.at_level(logging.WARNING, logger="asap.client"):
        channel = GrpcChannel("127.0.0.1", kit.port(server))
    try:
        assert any("plaintext" in record.getMessage() for record in caplog.records)
        reply = await channel.unary(SEND, kit.send_request("echo"), NO_OPTIONS)
        assert isinstance(reply.message, agent_service_pb2.SendResponse)
    finally:
        await channel.close()


@pytest.mark.asyncio
async def test_allow_insecure_permits_plaintext_to_a_remote_host() -> None:
    """allow_insecure=True permits plaintext to a non-loopback host (nothing connects yet)."""
    channel = GrpcChannel("example.com", 50051, allow_insecure=True)
    assert channel.url == "grpc://example.com:50051"
    await channel.close()


def test_keepalive_interval_below_the_minimum_is_refused() -> None:
    """A keepalive interval the server would treat as abuse is refused up front."""
    with pytest.raises(ValueError, match="keepalive_interval"):
        GrpcChannel("127.0.0.1", 1, keepalive_interval=grpc_client.MIN_KEEPALIVE_INTERVAL / 2)


def test_channel_transport_is_grpc() -> None:
    """The channel reports the gRPC transport."""
    assert GrpcChannel.transport == manifest_pb2.TRANSPORT_GRPC
