"""A duplex Stream whose connection is cut ends with UNAVAILABLE (ConnectionLost), never INTERNAL.

A caller that retries UNAVAILABLE re-sends its unsettled envelopes on a new stream; INTERNAL would
not be retried. The proxy cuts each connection after a few KB; every run must end UNAVAILABLE.
"""

from __future__ import annotations

import pytest

from asap import Server, connect, errors
from tests.conformance._service import Probe, envelope, make_agent
from tests.proxy import Proxy


CUTS = 5


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.parametrize("reset", [True, False], ids=["rst", "fin"])
@pytest.mark.parametrize("scheme", ["grpc", "ws"])
async def test_cut_streams_end_unavailable(scheme: str, reset: bool) -> None:
    """Five streams cut mid-flight: each ends with an Unavailable error, none with Internal."""
    server = Server(make_agent(Probe()))
    if scheme == "grpc":
        server.add_grpc("127.0.0.1:0")
    else:
        server.add_websocket("127.0.0.1:0")
    await server.start()
    port = int(server.endpoints()[0].url.split(":")[2].split("/")[0])
    proxy = await Proxy([port], cut_between=(4_000, 12_000), reset=reset).start()
    url = (
        f"grpc://127.0.0.1:{proxy.port}"
        if scheme == "grpc"
        else f"ws://127.0.0.1:{proxy.port}/asap/v1/ws"
    )
    client = connect(url, sender="urn:asap:agent:tester", timeout=20.0)
    endings: list[type[errors.AsapError]] = []
    try:
        for _ in range(CUTS):
            async with await client.stream() as stream:
                try:
                    for number in range(2000):
                        await stream.send(envelope("echo", {"n": number, "pad": "x" * 200}))
                        await anext(stream)
                except errors.AsapError as error:
                    endings.append(type(error))
    finally:
        await client.close()
        await proxy.close()
        await server.stop(0)
    assert len(endings) == CUTS
    assert all(issubclass(ending, errors.Unavailable) for ending in endings), endings
