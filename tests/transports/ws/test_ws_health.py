"""The bridge listener answers plain HTTP health probes with the server's serving state."""

from __future__ import annotations

import asyncio

import pytest

from asap import Server
from asap.example import agent


async def http_get(host: str, port: int, path: str) -> str:
    """One HTTP/1.1 GET; returns the status line."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    status = (await reader.readline()).decode().strip()
    writer.close()
    await writer.wait_closed()
    return status


@pytest.mark.asyncio
async def test_healthz_is_200_while_serving_and_503_while_draining() -> None:
    """GET /healthz: 200 while serving, 503 once stop() has begun draining."""
    server = Server(agent)
    listener = server.add_websocket("127.0.0.1:0")
    await server.start()
    port = int(listener.endpoint.url.split(":")[2].split("/")[0])
    assert await http_get("127.0.0.1", port, "/healthz") == "HTTP/1.1 200 OK"
    server.health.set_serving(False)  # what stop() does first, before it waits for calls to drain
    assert await http_get("127.0.0.1", port, "/healthz") == "HTTP/1.1 503 Service Unavailable"
    await server.stop(0)
