"""The server enforces deadlines and Cancel for every handler, and answers every health Check,
seen by a raw bridge client (no Python client timer to hide it): issue 9, deliverables 5 and 7."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2
from websockets.asyncio.client import ClientConnection, connect

from asap import Server, errors, task_envelope, validation
from asap.core.method import method
from asap.example import agent
from asap.protocol.frames import SUBPROTOCOL_PROTO
from asap.v1 import agent_service_pb2, bridge_pb2


SUBSCRIBE = method("Subscribe")
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
STEPS = 1000
BIG_WINDOW = 64 * 1024 * 1024
"""A window no stream fills, so the handler is never held back by credit, only by the checks."""


@pytest_asyncio.fixture
async def bridge() -> AsyncIterator[ClientConnection]:
    """A raw revision 2 client of the example agent, granting a window it never exhausts."""
    server = Server(agent)
    server.add_websocket("127.0.0.1:0")
    async with server:
        url = server.endpoints()[0].url
        async with connect(url, subprotocols=[SUBPROTOCOL_PROTO], ping_interval=None) as ws:  # type: ignore[list-item]
            settings = bridge_pb2.Settings(initial_window_bytes=BIG_WINDOW)
            await ws.send(bridge_pb2.Frame(settings=settings).SerializeToString())
            first = await recv(ws)
            assert first.WhichOneof("kind") == "settings"
            yield ws


async def recv(ws: ClientConnection) -> bridge_pb2.Frame:
    data = await ws.recv()
    assert isinstance(data, bytes)
    return bridge_pb2.Frame.FromString(data)


def stream_call(stream_id: int, timeout: duration_pb2.Duration | None = None) -> bytes:
    """A combined Subscribe to the example's ``stream`` skill with 1,000 steps."""
    envelope = task_envelope(agent.id, "stream", {"steps": STEPS})
    envelope.sender = "urn:asap:agent:raw"
    envelope.id = f"raw-{stream_id}"
    validation.fill_defaults(envelope, now=time.time())
    request = agent_service_pb2.SubscribeRequest(envelope=envelope)
    start = bridge_pb2.CallStart(
        method=SUBSCRIBE.path,
        message=bridge_pb2.MessageFrame(binary=request.SerializeToString()),
        half_close=True,
    )
    if timeout is not None:
        start.timeout.CopyFrom(timeout)
    return bridge_pb2.Frame(stream_id=stream_id, start=start).SerializeToString()


async def until_status(ws: ClientConnection, stream_id: int) -> tuple[int, bridge_pb2.Frame]:
    """Count the stream's messages until its CallStatus; return the count and the status frame."""
    messages = 0
    while True:
        frame = await recv(ws)
        if frame.stream_id != stream_id:
            continue
        if frame.WhichOneof("kind") == "status":
            return messages, frame
        messages += 1


@pytest.mark.asyncio
async def test_a_1ms_deadline_stops_the_stream_skill_on_the_server(
    bridge: ClientConnection,
) -> None:
    """1,000 steps under a 1 ms deadline end in DEADLINE_EXCEEDED from the server, not OK."""
    await bridge.send(stream_call(1, duration_pb2.Duration(nanos=1_000_000)))
    messages, status = await until_status(bridge, 1)
    assert status.status.status.code == errors.Code.DEADLINE_EXCEEDED
    assert messages < STEPS + 1


@pytest.mark.asyncio
async def test_cancel_after_the_first_item_stops_the_stream_skill(bridge: ClientConnection) -> None:
    """A Cancel sent after the first update stops the handler: CANCELLED, most steps never run."""
    await bridge.send(stream_call(1))
    first = await recv(bridge)
    assert (first.stream_id, first.WhichOneof("kind")) == (1, "message")
    await bridge.send(bridge_pb2.Frame(stream_id=1, cancel=bridge_pb2.Cancel()).SerializeToString())
    messages, status = await until_status(bridge, 1)
    assert status.status.status.code == errors.Code.CANCELLED
    assert 1 + messages < STEPS + 1


@pytest.mark.asyncio
async def test_a_malformed_health_check_is_invalid_argument_and_frees_its_stream(
    bridge: ClientConnection,
) -> None:
    """Bad Check bytes get INVALID_ARGUMENT (not silence); the next Check is answered."""
    bad = bridge_pb2.CallStart(
        method=HEALTH_CHECK, message=bridge_pb2.MessageFrame(binary=b"\xff\xff"), half_close=True
    )
    await bridge.send(bridge_pb2.Frame(stream_id=1, start=bad).SerializeToString())
    _, status = await until_status(bridge, 1)
    assert status.status.status.code == errors.Code.INVALID_ARGUMENT
    good = bridge_pb2.CallStart(
        method=HEALTH_CHECK,
        message=bridge_pb2.MessageFrame(binary=health_pb2.HealthCheckRequest().SerializeToString()),
        half_close=True,
    )
    await bridge.send(bridge_pb2.Frame(stream_id=3, start=good).SerializeToString())
    _, status = await until_status(bridge, 3)
    assert status.status.status.code == 0
    answer = health_pb2.HealthCheckResponse.FromString(status.status.message.binary)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
