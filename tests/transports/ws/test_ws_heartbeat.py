"""Heartbeats of connections opened together are spread out, not fired in phase."""

from __future__ import annotations

import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from asap import Limits, Server
from asap.example import agent
from asap.transports.ws.server import HEARTBEAT_JITTER, WebSocketServerTransport
from asap.v1 import bridge_pb2


@pytest.mark.asyncio
async def test_each_connection_gets_a_jittered_heartbeat_period() -> None:
    """Every connection pings within heartbeat_interval x (1 +- jitter), and the periods differ."""
    server = Server(agent, limits=Limits(heartbeat_interval=10.0))
    listener = server.add_websocket("127.0.0.1:0")
    async with server:
        url = listener.endpoint.url
        clients = [
            await connect(url, subprotocols=[Subprotocol("asap.v1.proto")], ping_interval=None)
            for _ in range(8)
        ]
        for client in clients:
            # A bridge Ping answered proves the server's handler registered the connection.
            await client.send(bridge_pb2.Frame(ping=bridge_pb2.Ping(nonce=7)).SerializeToString())
            answer = await client.recv(decode=False)
            assert bridge_pb2.Frame.FromString(answer).pong.nonce == 7
        assert isinstance(listener, WebSocketServerTransport)
        connections = listener.open_connections()
        periods = [conn.heartbeat.interval for conn in connections if conn.heartbeat is not None]
        for client in clients:
            await client.close()
    assert len(periods) == 8
    assert all(10.0 * (1 - HEARTBEAT_JITTER) <= p <= 10.0 * (1 + HEARTBEAT_JITTER) for p in periods)
    assert len(set(periods)) > 1
