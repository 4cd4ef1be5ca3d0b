"""The WebSocket bridge transport (``proto/asap/v1/bridge.proto``): server, channel and pool.

This package is the only part of ASAP that imports ``websockets``; the bridge's rules themselves
live in the sans-I/O :mod:`asap.protocol` package.
"""

from __future__ import annotations

from asap.transports.ws.client import ReconnectPolicy, WebSocketChannel, WebSocketResponseStream
from asap.transports.ws.pool import WebSocketPool
from asap.transports.ws.server import WebSocketServerTransport


__all__ = [
    "ReconnectPolicy",
    "WebSocketChannel",
    "WebSocketPool",
    "WebSocketResponseStream",
    "WebSocketServerTransport",
]
