"""BridgeConnection.flush against a scripted websockets connection: one transport write per flush,
queue order kept across concurrent writers, backpressure, and no frame lost to a cancellation."""

from __future__ import annotations

import asyncio

import pytest
from websockets.protocol import State

from asap.protocol.frames import ProtoCodec
from asap.protocol.session import ServerSession
from asap.transports.ws.connection import BridgeConnection, close_reason, peer_of


class FakeProtocol:
    """Records the WebSocket messages "framed" by websockets' sans-I/O protocol."""

    def __init__(self) -> None:
        self.state = State.OPEN
        self.pending: list[bytes] = []

    def send_binary(self, data: bytes) -> None:
        self.pending.append(b"B" + data)

    def send_text(self, data: bytes) -> None:
        self.pending.append(b"T" + data)

    def data_to_send(self) -> list[bytes]:
        pending, self.pending = self.pending, []
        return pending


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []

    def writelines(self, chunks: list[bytes]) -> None:
        self.writes.append(list(chunks))


class FakeWs:
    """A websockets connection whose write buffer the test fills and drains by hand."""

    def __init__(self) -> None:
        self.protocol = FakeProtocol()
        self.transport = FakeTransport()
        self.keepalive_task = None
        self.remote_address = ("127.0.0.1", 4242)
        self.full: asyncio.Future[None] | None = None

    async def drain(self) -> None:
        if self.full is not None:
            await asyncio.shield(self.full)


def connection() -> tuple[BridgeConnection[ServerSession], FakeWs]:
    ws = FakeWs()
    conn = BridgeConnection(ws, ServerSession(ProtoCodec()), "test")  # type: ignore[arg-type]
    return conn, ws


@pytest.mark.asyncio
async def test_one_transport_write_per_flush() -> None:
    """Every frame queued before a flush goes out in one transport write, in order."""
    conn, ws = connection()
    conn.session.outgoing.extend([b"1", "two", b"3"])
    await conn.flush()
    assert ws.transport.writes == [[b"B1", b"Ttwo", b"B3"]]
    await conn.flush()
    assert len(ws.transport.writes) == 1


@pytest.mark.asyncio
async def test_writers_wait_while_the_peer_is_not_reading_and_order_is_kept() -> None:
    """A second writer's frames follow the first's; it waits for the buffer like the first."""
    conn, ws = connection()
    ws.full = asyncio.get_running_loop().create_future()
    conn.session.outgoing.append(b"a")
    first = asyncio.create_task(conn.flush())
    await asyncio.wait({first}, timeout=0)  # one turn: it wrote, then waits for the buffer
    conn.session.outgoing.append(b"b")
    second = asyncio.create_task(conn.flush())
    await asyncio.wait({second}, timeout=0)
    assert not first.done()
    assert not second.done()
    assert ws.transport.writes == [[b"Ba"]]
    ws.full.set_result(None)
    ws.full = None
    await asyncio.gather(first, second)
    assert ws.transport.writes == [[b"Ba"], [b"Bb"]]


@pytest.mark.asyncio
async def test_cancelled_flush_loses_no_frame() -> None:
    """Cancelling the flushing task while it waits hands later frames to a background flush."""
    conn, ws = connection()
    ws.full = asyncio.get_running_loop().create_future()
    conn.session.outgoing.append(b"a")
    flushing = asyncio.create_task(conn.flush())
    await asyncio.wait({flushing}, timeout=0)
    conn.session.outgoing.append(b"b")  # queued by a writer that left the flush to the first
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    ws.full.set_result(None)
    ws.full = None
    await conn.tasks.close()  # waits for the background flush
    assert ws.transport.writes == [[b"Ba"], [b"Bb"]]


@pytest.mark.asyncio
async def test_closing_connection_drops_frames() -> None:
    """Once websockets is closing, queued frames are dropped rather than written."""
    conn, ws = connection()
    ws.protocol.state = State.CLOSING
    conn.session.outgoing.append(b"a")
    await conn.flush()
    assert ws.transport.writes == []
    assert not conn.flushing


def test_peer_notation() -> None:
    """Peers are written as gRPC writes them; an unknown address is "unknown"."""
    for address, peer in (
        (("10.0.0.1", 5), "ipv4:10.0.0.1:5"),
        (("::1", 7, 0, 0), "ipv6:[::1]:7"),
        (None, "unknown"),
    ):
        ws = FakeWs()
        ws.remote_address = address  # type: ignore[assignment]
        assert peer_of(ws) == peer  # type: ignore[arg-type]


def test_close_reason_fits_a_close_frame() -> None:
    """Close reasons are cut to 123 UTF-8 bytes without splitting a character."""
    assert close_reason("short") == "short"
    cut = close_reason("é" * 100)
    assert len(cut.encode()) <= 123
    assert cut == "é" * 61
