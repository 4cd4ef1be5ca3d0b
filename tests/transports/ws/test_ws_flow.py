"""Bridge revision 2 on the wire, frame by frame (bridge.proto "Settings", "Flow control", "Older
peers"): what a third-party client sees, without the Python client's own bookkeeping."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from asap import Server, errors
from asap.core.method import method
from asap.protocol.frames import LEGACY_SUBPROTOCOL_PROTO
from asap.protocol.limits import Limits
from asap.transports.ws.server_connection import ServerBridgeConnection
from asap.v1 import agent_service_pb2, bridge_pb2


if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from tests.transports.conftest import Kit, Probe
    from tests.transports.ws.conftest import RawFactory, ServerFactory, Wire


SEND = method("Send")
SUBSCRIBE = method("Subscribe")
PUBLISH = method("Publish")
WINDOW = 4096


def combined(stream_id: int, name: str, request: agent_service_pb2.SendRequest) -> bytes:
    """A CallStart carrying its request and HalfClose."""
    body = bridge_pb2.MessageFrame(binary=request.SerializeToString())
    start = bridge_pb2.CallStart(method=method(name).path, message=body, half_close=True)
    return bridge_pb2.Frame(stream_id=stream_id, start=start).SerializeToString()


def subscribe_flood(stream_id: int, kit: Kit, count: int, size: int) -> bytes:
    """A combined Subscribe to the flood skill."""
    request = agent_service_pb2.SubscribeRequest(
        envelope=kit.envelope("flood", count=count, size=size)
    )
    body = bridge_pb2.MessageFrame(binary=request.SerializeToString())
    start = bridge_pb2.CallStart(method=SUBSCRIBE.path, message=body, half_close=True)
    return bridge_pb2.Frame(stream_id=stream_id, start=start).SerializeToString()


async def recv_bytes(ws: ClientConnection) -> bytes:
    data = await ws.recv()
    assert isinstance(data, bytes)
    return data


def only_connection(wire: Wire, server: Server) -> ServerBridgeConnection:
    [conn] = wire.connections(server)
    return conn


@pytest.mark.asyncio
async def test_server_never_sends_beyond_the_clients_credit(
    server: Server, raw: RawFactory, kit: Kit, probe: Probe, wire: Wire
) -> None:
    """With a 4 KiB window, the server stops at the window (plus one message) until WindowUpdate;
    then the rest follows, nothing lost."""
    ws = await raw(kit.url(server))
    settings = bridge_pb2.Settings(initial_window_bytes=WINDOW)
    await ws.send(wire.frame(settings=settings))
    count, size = 200, 500
    await ws.send(subscribe_flood(1, kit, count, size))
    received = 0
    frames = 0
    while received < WINDOW:
        data = await recv_bytes(ws)
        frame = bridge_pb2.Frame.FromString(data)
        assert frame.WhichOneof("kind") == "message"
        received += len(data)
        frames += 1
    # The window is spent: a Ping is answered before any further message could come.
    await ws.send(wire.frame(ping=bridge_pb2.Ping(nonce=9)))
    pong = bridge_pb2.Frame.FromString(await recv_bytes(ws))
    assert pong.pong.nonce == 9
    assert probe.produced < count  # the handler waits in its write
    session = only_connection(wire, server).session
    assert session is not None
    credit = session.streams[1].credit
    assert credit is not None
    assert credit.send <= 0
    update = bridge_pb2.WindowUpdate(increment_bytes=10 * count * size)
    await ws.send(wire.frame(1, window_update=update))
    while True:
        frame = bridge_pb2.Frame.FromString(await recv_bytes(ws))
        if frame.WhichOneof("kind") == "status":
            break
        frames += 1
    assert frame.status.status.code == 0
    assert frames == count + 1


@pytest.mark.asyncio
async def test_a_handler_waiting_for_credit_runs_on_after_cancel(
    server: Server, raw: RawFactory, kit: Kit, probe: Probe, wire: Wire
) -> None:
    """Cancel while the handler waits for credit: the wait ends with the stream (its later
    writes are dropped), so the delivery runs on to completion instead of waiting forever."""
    ws = await raw(kit.url(server))
    await ws.send(wire.frame(settings=bridge_pb2.Settings(initial_window_bytes=WINDOW)))
    count, size = 200, 500
    await ws.send(subscribe_flood(1, kit, count, size))
    received = 0
    while received < WINDOW:
        received += len(await recv_bytes(ws))
    await ws.send(wire.frame(ping=bridge_pb2.Ping(nonce=3)))
    assert bridge_pb2.Frame.FromString(await recv_bytes(ws)).pong.nonce == 3
    assert probe.produced < count  # the handler waits in its write, for credit
    await ws.send(wire.frame(1, cancel=bridge_pb2.Cancel(reason="enough")))
    async with asyncio.timeout(10):
        await probe.flood_done.wait()
    assert probe.produced == count  # ran on to the end (exactly-once), nothing sent after


@pytest.mark.asyncio
async def test_a_message_beyond_credit_fails_only_its_stream(
    start_server: ServerFactory, raw: RawFactory, kit: Kit, probe: Probe, wire: Wire
) -> None:
    """A client that ignores the server's window loses that call (FLOW_CONTROL_VIOLATION); the
    connection and its other calls go on."""
    server = await start_server(limits=Limits(stream_window_bytes=1024, rate_limit_per_second=0))
    ws = await raw(kit.url(server))
    await ws.send(wire.frame(1, start=bridge_pb2.CallStart(method=PUBLISH.path)))
    blocking = agent_service_pb2.PublishRequest(envelope=kit.envelope("block"))
    await ws.send(
        wire.frame(1, message=bridge_pb2.MessageFrame(binary=blocking.SerializeToString()))
    )
    await probe.entered.wait()  # Publish read the first request; its handler blocks
    filler = agent_service_pb2.PublishRequest(envelope=kit.envelope("echo", pad="x" * 2000))
    body = bridge_pb2.MessageFrame(binary=filler.SerializeToString())
    for _ in range(3):  # the first may overdraw what is left; the next arrives with none
        await ws.send(wire.frame(1, message=body))
    failed = await wire.next_frame(ws)
    while failed.WhichOneof("kind") != "status":  # a WindowUpdate for the consumed request
        failed = await wire.next_frame(ws)
    assert failed.stream_id == 1
    error = errors.from_status(failed.status.status)
    assert (error.code, error.reason) == (errors.Code.RESOURCE_EXHAUSTED, "FLOW_CONTROL_VIOLATION")
    probe.release.set()  # the delivery it started runs on to completion (exactly-once)
    await ws.send(combined(3, "Send", kit.send_request("echo", text="still here")))
    answer = await wire.next_frame(ws)
    assert (answer.stream_id, answer.status.status.code) == (3, 0)


@pytest.mark.asyncio
async def test_cancel_and_ping_pass_a_full_stream(
    server: Server, raw: RawFactory, kit: Kit, probe: Probe, wire: Wire
) -> None:
    """A stream whose handler reads nothing and whose credit is spent does not hold up Cancel,
    Ping or another call on the connection: the reader never waits on a stream."""
    ws = await raw(kit.url(server))
    await ws.send(wire.frame(1, start=bridge_pb2.CallStart(method=PUBLISH.path)))
    blocking = agent_service_pb2.PublishRequest(envelope=kit.envelope("block"))
    await ws.send(
        wire.frame(1, message=bridge_pb2.MessageFrame(binary=blocking.SerializeToString()))
    )
    await probe.entered.wait()
    filler = agent_service_pb2.PublishRequest(envelope=kit.envelope("echo", pad="x" * 8000))
    body = wire.frame(1, message=bridge_pb2.MessageFrame(binary=filler.SerializeToString()))
    for _ in range(70_000 // len(body) + 1):  # the default window of 65,536 bytes, all spent
        await ws.send(body)
    await ws.send(combined(3, "Send", kit.send_request("echo", text="beside")))
    await ws.send(wire.frame(ping=bridge_pb2.Ping(nonce=5)))
    await ws.send(wire.frame(1, cancel=bridge_pb2.Cancel(reason="enough")))
    seen: dict[str, bridge_pb2.Frame] = {}
    while len(seen) < 3:
        frame = await wire.next_frame(ws)
        kind = frame.WhichOneof("kind")
        if kind == "window_update":
            continue
        key = "pong" if kind == "pong" else f"status:{frame.stream_id}"
        seen[key] = frame
    assert seen["pong"].pong.nonce == 5
    assert seen["status:3"].status.status.code == 0
    assert seen["status:1"].status.status.code == errors.Code.CANCELLED
    probe.release.set()  # the delivery it started runs on to completion (exactly-once)


@pytest.mark.asyncio
async def test_an_older_peer_gets_no_settings_and_still_works(
    server: Server, raw: RawFactory, kit: Kit, wire: Wire
) -> None:
    """A revision 1 client (asap.v1.proto) sees no Settings or WindowUpdate: its first frame is
    its answer, and the server's stream limits and calls work as before."""
    ws = await raw(kit.url(server), subprotocols=[LEGACY_SUBPROTOCOL_PROTO])
    assert ws.subprotocol == LEGACY_SUBPROTOCOL_PROTO
    await ws.send(subscribe_flood(1, kit, 100, 1000))
    kinds = []
    while True:
        frame = await wire.next_frame(ws)
        kinds.append(frame.WhichOneof("kind"))
        if kinds[-1] == "status":
            break
    assert kinds == ["message"] * 101 + ["status"]
    assert frame.status.status.code == 0


@pytest.mark.asyncio
async def test_the_server_announces_its_settings_first(
    start_server: ServerFactory, raw: RawFactory, kit: Kit
) -> None:
    """The server's first frame on revision 2 states its window, stream limit and message size."""
    limits = Limits(stream_window_bytes=12_345, max_concurrent_streams=7, max_message_bytes=99_999)
    server = await start_server(limits=limits)
    ws = await raw(kit.url(server), read_settings=False)
    first = bridge_pb2.Frame.FromString(await recv_bytes(ws))
    assert first.settings == bridge_pb2.Settings(
        initial_window_bytes=12_345, max_concurrent_streams=7, max_message_bytes=99_999
    )
