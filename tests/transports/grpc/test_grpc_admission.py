"""gRPC admission defaults: connection idle and age limits, and reflection behind auth."""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from asap import BearerAuth, Server
from asap.example import agent
from asap.protocol.limits import Limits
from asap.transports.grpc.server import server_options


REFLECT = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def test_idle_connections_are_closed_and_ageing_is_opt_in() -> None:
    """By default idle connections close after 300 s; max age is set only when asked for."""
    default = dict(server_options(Limits()))
    assert default["grpc.max_connection_idle_ms"] == 300_000
    assert "grpc.max_connection_age_ms" not in default
    aged = dict(server_options(Limits(connection_max_age=3600, connection_max_age_grace=60)))
    assert aged["grpc.max_connection_age_ms"] == 3_600_000
    assert aged["grpc.max_connection_age_grace_ms"] == 60_000
    assert "grpc.max_connection_idle_ms" not in dict(
        server_options(Limits(connection_idle_timeout=0))
    )
    with pytest.raises(ValueError, match="connection_max_age"):
        Limits(connection_max_age=-1)


async def _list_services(port: int) -> grpc.StatusCode | set[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reflect = channel.stream_stream(
            REFLECT,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        try:
            responses = [response async for response in reflect(iter([request]))]
        except grpc.aio.AioRpcError as error:
            return error.code()
        return {service.name for service in responses[0].list_services_response.service}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("auth", "reflection", "served"),
    [(False, None, True), (True, None, False), (True, True, True), (False, False, False)],
)
async def test_reflection_is_off_behind_auth_unless_asked(
    auth: bool, reflection: bool | None, served: bool
) -> None:
    """Reflection takes no credentials: a server with auth serves it only when asked to."""
    server = Server(
        agent,
        auth=BearerAuth.static({"t": "urn:asap:agent:x"}) if auth else None,
        reflection=reflection,
    )
    listener = server.add_grpc("127.0.0.1:0")
    async with server:
        port = int(listener.endpoint.url.rsplit(":", 1)[1])
        outcome = await _list_services(port)
    if served:
        assert isinstance(outcome, set)
        assert "asap.v1.AgentService" in outcome
    else:
        assert outcome == grpc.StatusCode.UNIMPLEMENTED
