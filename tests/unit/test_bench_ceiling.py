"""scripts/bench.py's gRPC ceiling: ``UnaryToEnd`` echoes a unary request and refuses a second one.

The row "raw gRPC unary, read to the end" claims to be the least a unary handler that refuses a
second request costs on grpc.aio; these tests hold the raw server to that behaviour, over a real
channel to the real ``_bench_servers.py raw-grpc`` process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from scripts import bench


@pytest.fixture(scope="module")
def raw_grpc_port() -> Iterator[int]:
    server = bench.ServerProcess("raw-grpc", cpus=set(), uvloop=False)
    try:
        yield server.value
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_ceiling_driver_echoes_its_payload(raw_grpc_port: int) -> None:
    """The scenario's own driver gets its payload back (its check() raises otherwise)."""
    driver = await bench._raw_grpc_unary_to_end(raw_grpc_port)
    try:
        await driver.check()
    finally:
        await driver.close()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_second_request_to_the_ceiling_method_is_refused(raw_grpc_port: int) -> None:
    """Two messages on the unary method: INVALID_ARGUMENT, as ASAP's own unary methods answer."""
    async with grpc.aio.insecure_channel(f"{bench.HOST}:{raw_grpc_port}") as channel:
        call: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(
            f"/{bench.RAW_SERVICE}/UnaryToEnd"
        )

        async def two() -> AsyncIterator[bytes]:
            yield bench.PAYLOAD
            yield bench.PAYLOAD

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(two())
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
