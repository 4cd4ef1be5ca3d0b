"""Raw gRPC callers get the same typed errors a bridge caller gets for bad bytes and unknown paths."""

from __future__ import annotations

import grpc
import pytest

from asap import Server
from asap.errors import MalformedFrame, UnknownMethod
from asap.example import agent
from asap.transports.grpc.status import error_from_rpc


def _raw(data: bytes) -> bytes:
    return data


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/asap.v1.AgentService/Send", b"\xff\xff\xff", MalformedFrame),
        ("/grpc.health.v1.Health/Check", b"\xff\xff\xff", MalformedFrame),
        ("/asap.v1.AgentService/Nope", b"", UnknownMethod),
        ("/other.v1.Service/Method", b"", UnknownMethod),
    ],
)
async def test_raw_bytes_and_unknown_paths_map_like_the_bridge(
    path: str, body: bytes, expected: type[Exception]
) -> None:
    """Undecodable requests are MALFORMED_FRAME and unknown paths UNKNOWN_METHOD, not grpc's own statuses."""
    server = Server(agent)
    server.add_grpc("127.0.0.1:0")
    async with server:
        target = server.endpoints()[0].url.removeprefix("grpc://")
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.unary_unary(path, request_serializer=_raw, response_deserializer=_raw)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(body)
    assert isinstance(error_from_rpc(raised.value), expected)


@pytest.mark.asyncio
async def test_undecodable_health_watch_is_malformed_frame() -> None:
    """Health Watch with bytes that do not parse is INVALID_ARGUMENT (MALFORMED_FRAME), not UNKNOWN."""
    server = Server(agent)
    server.add_grpc("127.0.0.1:0")
    async with server:
        target = server.endpoints()[0].url.removeprefix("grpc://")
        async with grpc.aio.insecure_channel(target) as channel:
            watch = channel.unary_stream(
                "/grpc.health.v1.Health/Watch", request_serializer=_raw, response_deserializer=_raw
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for _ in watch(b"\xff\xff\xff"):
                    pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(error_from_rpc(raised.value), MalformedFrame)
