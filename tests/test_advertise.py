"""A server listening on a wildcard address advertises a usable URL, never 0.0.0.0 or ::."""

from __future__ import annotations

import socket

import pytest

from asap import Server, connect
from asap.v1 import manifest_pb2
from tests.conformance._service import Probe, make_agent


@pytest.mark.asyncio
async def test_wildcard_listeners_advertise_the_host_name() -> None:
    """0.0.0.0 (and :: where available) become the machine's host name in endpoints and manifest."""
    server = Server(make_agent(Probe()))
    server.add_grpc("0.0.0.0:0")
    server.add_websocket("0.0.0.0:0")
    await server.start()
    try:
        urls = [endpoint.url for endpoint in server.endpoints()]
        assert all("0.0.0.0" not in url and "[::]" not in url for url in urls)
        assert all(socket.gethostname() in url for url in urls)
        port = int(urls[0].rsplit(":", 1)[1])
        async with connect(f"grpc://127.0.0.1:{port}", sender="urn:asap:agent:tester") as client:
            manifest = await client.get_manifest()
        assert [endpoint.url for endpoint in manifest.endpoints] == urls
    finally:
        await server.stop(0)


@pytest.mark.asyncio
async def test_advertise_overrides_the_listeners() -> None:
    """advertise() lists exactly what it was given."""
    server = Server(make_agent(Probe()))
    server.add_grpc("0.0.0.0:0")
    await server.start()
    try:
        public = manifest_pb2.Endpoint(
            transport=manifest_pb2.TRANSPORT_GRPC, url="grpcs://agents.example.com:443"
        )
        server.advertise([public])
        assert list(server.endpoints()) == [public]
    finally:
        await server.stop(0)
