"""Fixtures for the WebSocket bridge tests: the test agent of ``tests/transports/conftest.py``
served by a real Server on a WebSocket listener on 127.0.0.1, and WebSocketChannels to it.

``raw`` opens plain websockets clients that speak the bridge frame by frame, for the tests that must
send what WebSocketChannel never would; the ``wire`` fixture hands tests the frame builders and
readers for them, and the server's bridge connections.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
from google.protobuf import json_format
from google.protobuf.message import Message
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from asap.core.dedupe import DedupeStore
from asap.core.method import method
from asap.core.middleware import BearerAuth
from asap.protocol.frames import (
    FLOW_CONTROLLED,
    LEGACY_SUBPROTOCOL_PROTO,
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_PROTO,
)
from asap.protocol.limits import Limits
from asap.server import Server
from asap.transports.ws.client import ReconnectPolicy, WebSocketChannel
from asap.transports.ws.server import WebSocketServerTransport
from asap.transports.ws.server_connection import ServerBridgeConnection
from asap.v1 import bridge_pb2


if TYPE_CHECKING:
    from tests.transports.conftest import Closing, Kit, Launch


def transport_of(server: Server) -> WebSocketServerTransport:
    """The server's WebSocket listener."""
    transport = server._transports[0]
    assert isinstance(transport, WebSocketServerTransport)
    return transport


def server_connections(server: Server) -> list[ServerBridgeConnection]:
    """The server's open bridge connections."""
    return transport_of(server).open_connections()


def frame_bytes(stream_id: int = 0, **kind: Message) -> bytes:
    """A serialized bridge Frame, e.g. ``frame_bytes(1, half_close=bridge_pb2.HalfClose())``."""
    return bridge_pb2.Frame(stream_id=stream_id, **kind).SerializeToString()  # type: ignore[arg-type]


def start_frames(
    stream_id: int, name: str, request: Message, metadata: Sequence[tuple[str, str]] = ()
) -> list[bytes]:
    """CallStart, the request and HalfClose of a call, as the binary subprotocol carries them."""
    entries = [bridge_pb2.MetadataEntry(key=key, text=value) for key, value in metadata]
    start = bridge_pb2.CallStart(method=method(name).path, metadata=entries)
    body = bridge_pb2.MessageFrame(binary=request.SerializeToString())
    return [
        frame_bytes(stream_id, start=start),
        frame_bytes(stream_id, message=body),
        frame_bytes(stream_id, half_close=bridge_pb2.HalfClose()),
    ]


async def next_frame(ws: ClientConnection) -> bridge_pb2.Frame:
    """Receive one binary frame."""
    data = await ws.recv()
    assert isinstance(data, bytes)
    return bridge_pb2.Frame.FromString(data)


async def close_of(ws: ClientConnection) -> tuple[int | None, str]:
    """Read until the server closes the connection; return the close code and reason it sent."""
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as closed:
        if closed.rcvd is None:
            return None, ""
        return closed.rcvd.code, closed.rcvd.reason


class Wire:
    """The bridge-level helpers of this conftest, handed to tests by the ``wire`` fixture."""

    transport = staticmethod(transport_of)
    connections = staticmethod(server_connections)
    frame = staticmethod(frame_bytes)
    start_frames = staticmethod(start_frames)
    next_frame = staticmethod(next_frame)
    close_of = staticmethod(close_of)


@pytest.fixture
def wire() -> Wire:
    """Frame builders and readers for ``raw`` clients, and the server's bridge connections."""
    return Wire()


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
def start_server(launch: Launch, kit: Kit) -> ServerFactory:
    """Start a Server for the test agent on a WebSocket listener (127.0.0.1, port 0 by default);
    with ``auth``, it accepts :data:`~tests.transports.conftest.TOKEN` for the caller."""

    async def start(
        *,
        limits: Limits | None = None,
        auth: bool = False,
        allowed_origins: Sequence[str] | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        dedupe: DedupeStore | None = None,
    ) -> Server:
        return await launch(
            lambda server: server.add_websocket(f"{host}:{port}", allowed_origins=allowed_origins),
            limits=limits,
            auth=BearerAuth.static({kit.TOKEN: kit.CALLER_ID}) if auth else None,
            dedupe=dedupe,
        )

    return start


@pytest_asyncio.fixture
async def server(start_server: ServerFactory) -> Server:
    """A plaintext server on 127.0.0.1 with default limits (rate limiting off)."""
    return await start_server()


ChannelFactory = Callable[..., WebSocketChannel]


@pytest.fixture
def open_channel(closing: Closing) -> ChannelFactory:
    """Open WebSocketChannels; every channel opened is closed at teardown."""

    def open_(
        url: str,
        *,
        subprotocol: str = SUBPROTOCOL_PROTO,
        token: str | None = None,
        limits: Limits | None = None,
        reconnect: ReconnectPolicy | None = None,
    ) -> WebSocketChannel:
        return closing(
            WebSocketChannel(
                url, subprotocol=subprotocol, token=token, limits=limits, reconnect=reconnect
            )
        )

    return open_


@pytest.fixture(params=[SUBPROTOCOL_PROTO, SUBPROTOCOL_JSON, LEGACY_SUBPROTOCOL_PROTO])
def subprotocol(request: pytest.FixtureRequest) -> str:
    """Each subprotocol in turn: both encodings of revision 2, and revision 1 (an older peer)."""
    value: str = request.param
    return value


@pytest_asyncio.fixture
async def channel(
    server: Server, open_channel: ChannelFactory, subprotocol: str, kit: Kit
) -> WebSocketChannel:
    """A plaintext channel to the default server, once per subprotocol."""
    return open_channel(kit.url(server), subprotocol=subprotocol)


RawFactory = Callable[..., Awaitable[ClientConnection]]


@pytest_asyncio.fixture
async def raw() -> AsyncIterator[RawFactory]:
    """Open plain websockets clients (no keepalive); every one is closed at teardown.

    On a revision 2 subprotocol the server's first frame is its Settings: ``open_`` reads it (and
    checks it is one) unless ``read_settings=False``, so tests start at the first call frame. Such a
    client sends no Settings of its own, so it gets the default window of 65,536 bytes per stream.
    """
    opened: list[ClientConnection] = []

    async def open_(
        url: str,
        *,
        subprotocols: Sequence[str] = (SUBPROTOCOL_PROTO,),
        read_settings: bool = True,
        **kwargs: Any,
    ) -> ClientConnection:
        ws = await connect(
            url,
            subprotocols=list(subprotocols) or None,  # type: ignore[arg-type]
            compression=None,
            ping_interval=None,
            **kwargs,
        )
        opened.append(ws)
        if read_settings and ws.subprotocol in FLOW_CONTROLLED:
            first = await ws.recv()
            frame = (
                bridge_pb2.Frame.FromString(first)
                if isinstance(first, bytes)
                else json_format.Parse(first, bridge_pb2.Frame())
            )
            assert frame.WhichOneof("kind") == "settings", frame
        return ws

    yield open_
    for ws in opened:
        ws.transport.resume_reading()
        await ws.close()
