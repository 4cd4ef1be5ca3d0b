"""GrpcServerTransport: health, reflection, keepalive, graceful stop, and foreign gRPC clients.

TLS is tested on every transport in ``tests/transports/test_transport_security.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

import grpc
import pytest
import pytest_asyncio
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status

from asap import errors
from asap.core.dispatch import Dispatcher
from asap.core.health import HealthState
from asap.core.method import SERVICE_NAME, method
from asap.protocol.limits import Limits
from asap.server import Server
from asap.transports.base import CallOptions
from asap.transports.grpc.client import GrpcChannel
from asap.transports.grpc.server import GrpcServerTransport
from asap.v1 import agent_service_pb2, manifest_pb2


if TYPE_CHECKING:
    from tests.transports.conftest import Kit, Probe
    from tests.transports.grpc.conftest import ChannelFactory


NO_OPTIONS = CallOptions()
SEND = method("Send")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
IDLE_SECONDS = 4.0
"""How long the keepalive test holds an idle connection. Against a server with grpc's default ping
policy (5 min, 2 strikes) the same channel gets GOAWAY too_many_pings after about 3 s."""


@pytest_asyncio.fixture
async def raw_channel(server: Server, kit: Kit) -> AsyncIterator[grpc.aio.Channel]:
    """A plain grpc.aio channel to the server, as a foreign gRPC client would use."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{kit.port(server)}") as channel:
        yield channel


@pytest.mark.asyncio
async def test_endpoint_is_the_bound_grpc_url(server: Server, kit: Kit) -> None:
    """The endpoint is grpc://host:port with the port the OS picked."""
    (endpoint,) = server.endpoints()
    assert endpoint.transport == manifest_pb2.TRANSPORT_GRPC
    assert kit.port(server) > 0
    assert endpoint.url == f"grpc://127.0.0.1:{kit.port(server)}"


@pytest.mark.asyncio
async def test_ipv6_listener_and_channel(
    open_channel: ChannelFactory, kit: Kit, probe: Probe
) -> None:
    """An IPv6 listener advertises a bracketed URL and a channel to [::1] reaches it."""
    server = Server(kit.agent(probe), limits=Limits(rate_limit_per_second=0))
    transport = server.add_grpc("[::1]:0")
    await server.start()
    try:
        url = transport.endpoint.url
        assert url.startswith("grpc://[::1]:")
        channel = open_channel(int(url.rsplit(":", 1)[1]), host="::1")
        assert channel.url == url
        reply = await channel.unary(SEND, kit.send_request("echo"), NO_OPTIONS)
        assert isinstance(reply.message, agent_service_pb2.SendResponse)
    finally:
        await server.stop(0)


@pytest.mark.asyncio
async def test_binding_a_port_in_use_fails(server: Server, kit: Kit) -> None:
    """A second listener on a port in use fails to start instead of sharing it (no SO_REUSEPORT)."""
    transport = GrpcServerTransport(
        Dispatcher(server.service),
        HealthState(),
        host="127.0.0.1",
        port=kit.port(server),
        limits=Limits(),
        tls=None,
    )
    with pytest.raises(RuntimeError):
        await transport.start()
    await transport.stop(0)


@pytest.mark.asyncio
async def test_endpoint_before_start_and_second_start_are_invalid(server: Server) -> None:
    """endpoint before start() and a second start() raise InvalidState."""
    transport = GrpcServerTransport(
        server.dispatcher, HealthState(), host="127.0.0.1", port=0, limits=Limits(), tls=None
    )
    with pytest.raises(errors.InvalidState):
        _ = transport.endpoint
    await transport.start()
    try:
        with pytest.raises(errors.InvalidState):
            await transport.start()
    finally:
        await transport.stop(0)
        await transport.stop(0)


@pytest.mark.asyncio
async def test_health_serving_then_not_serving_while_draining(
    server: Server,
    raw_channel: grpc.aio.Channel,
    open_channel: ChannelFactory,
    probe: Probe,
    kit: Kit,
) -> None:
    """The standard health service reports SERVING, then NOT_SERVING once the server drains."""
    stub = health_pb2_grpc.HealthStub(raw_channel)
    for service in ("", SERVICE_NAME):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))  # type: ignore[attr-defined]  # stub methods are untyped
        assert response.status == SERVING
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))  # type: ignore[attr-defined]
    assert (await watch.read()).status == SERVING

    channel = open_channel(kit.port(server))
    in_flight = asyncio.create_task(channel.unary(SEND, kit.send_request("block"), NO_OPTIONS))
    await probe.entered.wait()
    stopping = asyncio.create_task(server.stop(grace=30))
    assert (await watch.read()).status == NOT_SERVING
    watch.cancel()
    probe.release.set()
    await in_flight
    await stopping


@pytest.mark.asyncio
async def test_graceful_stop_lets_an_in_flight_call_finish(
    server: Server, channel: GrpcChannel, probe: Probe, kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While grpc's stop(grace) runs, a call in flight completes with OK."""
    grpc_server = server._transports[0]._server  # type: ignore[attr-defined]
    stopping_grpc = asyncio.Event()
    original_stop = grpc_server.stop

    async def stop_spy(grace: float | None) -> None:
        stopping_grpc.set()
        await original_stop(grace)

    monkeypatch.setattr(grpc_server, "stop", stop_spy)
    in_flight = asyncio.create_task(channel.unary(SEND, kit.send_request("block"), NO_OPTIONS))
    await probe.entered.wait()
    stopping = asyncio.create_task(server.stop(grace=30))
    await stopping_grpc.wait()
    assert not stopping.done()
    probe.release.set()
    reply = await in_flight
    assert isinstance(reply.message, agent_service_pb2.SendResponse)
    assert reply.message.envelope.task_response.task_id == "t-block"
    await stopping
    assert not probe.cancelled.is_set()


@pytest.mark.asyncio
async def test_reflection_lists_the_services(raw_channel: grpc.aio.Channel) -> None:
    """Server reflection lists AgentService, health and reflection itself."""
    reflect = raw_channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [response async for response in reflect(iter([request]))]
    names = {service.name for service in responses[0].list_services_response.service}
    assert names == {
        SERVICE_NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def _send_types_by_reflection(port: int) -> tuple[type[Message], type[Message]]:
    """Fetch Send's request and response types from the server's reflection service only.

    ProtoReflectionDescriptorDatabase is synchronous (it blocks on a grpc.Channel), so this runs
    in a worker thread with a blocking channel; the dynamic classes are then used over grpc.aio.
    """
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        send = pool.FindServiceByName(SERVICE_NAME).methods_by_name["Send"]
        request = message_factory.GetMessageClass(send.input_type)
        response = message_factory.GetMessageClass(send.output_type)
    assert request is not agent_service_pb2.SendRequest
    return request, response


@pytest.mark.asyncio
async def test_foreign_client_calls_send_with_reflected_descriptors(
    server: Server, raw_channel: grpc.aio.Channel, kit: Kit
) -> None:
    """A client with only reflected descriptors builds a SendRequest and gets the answer."""
    request_type, response_type = await asyncio.to_thread(
        _send_types_by_reflection, kit.port(server)
    )
    request = request_type()
    envelope = request.envelope  # type: ignore[attr-defined]  # a dynamic message class
    envelope.id = "foreign-1"
    envelope.sender = kit.CALLER_ID
    envelope.recipient = kit.AGENT_ID
    envelope.timestamp.seconds = int(time.time())
    envelope.task_request.skill_id = "echo"
    envelope.task_request.input.fields["hello"].string_value = "world"
    send = raw_channel.unary_unary(
        SEND.path,
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    response = await send(request)
    answer = response.envelope  # type: ignore[attr-defined]
    assert answer.correlation_id == "foreign-1"
    assert answer.task_response.result.fields["hello"].string_value == "world"


@pytest.mark.asyncio
async def test_foreign_client_reads_error_details_with_grpc_status(
    raw_channel: grpc.aio.Channel, kit: Kit
) -> None:
    """grpcio-status decodes the error trailers as google.rpc.Status with ASAP's ErrorInfo."""
    send = raw_channel.unary_unary(
        SEND.path,
        request_serializer=agent_service_pb2.SendRequest.SerializeToString,
        response_deserializer=agent_service_pb2.SendResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await send(kit.send_request("fail"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = rpc_status.from_call(cast("grpc.Call", caught.value))  # aio errors quack like Call
    assert status.message == "the task is not ready"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.domain, info.reason, dict(info.metadata)) == (
        "asap",
        "FAILED_PRECONDITION",
        {"task": "t-1"},
    )
    assert status.details[1].Is(error_details_pb2.PreconditionFailure.DESCRIPTOR)


@pytest.mark.asyncio
async def test_aggressive_keepalive_does_not_get_too_many_pings(
    server: Server, open_channel: ChannelFactory, kit: Kit
) -> None:
    """A channel pinging every second stays READY across an idle period (no GOAWAY)."""
    channel = open_channel(kit.port(server), keepalive_interval=1.0)
    await channel.unary(SEND, kit.send_request("echo"), NO_OPTIONS)
    connection = channel._channel
    assert connection.get_state() == grpc.ChannelConnectivity.READY
    # The behaviour under test is that nothing happens while idle: wait for a state change
    # (GOAWAY too_many_pings turns READY into IDLE) and expect none within the window.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            connection.wait_for_state_change(grpc.ChannelConnectivity.READY), IDLE_SECONDS
        )
    reply = await channel.unary(SEND, kit.send_request("echo"), NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.SendResponse)


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["Send", "Subscribe", "GetManifest"])
async def test_second_request_on_a_unary_request_method_is_malformed(
    raw_channel: grpc.aio.Channel, kit: Kit, name: str
) -> None:
    """Two request messages on a unary-request method fail the call (INVALID_ARGUMENT,
    MALFORMED_FRAME) instead of the second being dropped unseen, as on the bridge."""
    spec = method(name)
    if name == "GetManifest":
        request: Message = agent_service_pb2.GetManifestRequest()
    elif name == "Send":
        request = kit.send_request("echo")
    else:
        request = agent_service_pb2.SubscribeRequest(envelope=kit.envelope("echo"))
    call = raw_channel.stream_stream(
        spec.path,
        request_serializer=type(request).SerializeToString,
        response_deserializer=spec.response_type.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call(iter([request, request])):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(cast("grpc.Call", caught.value))
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "MALFORMED_FRAME"
