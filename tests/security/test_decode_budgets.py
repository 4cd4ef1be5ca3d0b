"""Item 1 on the bridge: metadata floods, reserved keys, the JSON frame cap, subprotocols switched
off, and the decode-amplification canary (one peer sending maximal frames vs an honest client)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from asap import Limits
from asap.core.method import method
from asap.errors import Code
from asap.protocol.frames import SUBPROTOCOL_JSON, SUBPROTOCOL_PROTO
from asap.v1 import bridge_pb2
from tests.security.conftest import Canary, RawWs, ServeFactory


pytestmark = pytest.mark.asyncio


def _start(stream_id: int, entries: list[bridge_pb2.MetadataEntry]) -> bytes:
    start = bridge_pb2.CallStart(method=method("GetManifest").path, metadata=entries)
    start.message.binary = b""
    start.half_close = True
    return bridge_pb2.Frame(stream_id=stream_id, start=start).SerializeToString()


async def _status(ws: object, stream_id: int) -> int:
    assert hasattr(ws, "recv")
    while True:
        frame = bridge_pb2.Frame.FromString(await ws.recv())
        if frame.stream_id == stream_id and frame.WhichOneof("kind") == "status":
            return frame.status.status.code


async def test_a_flood_of_metadata_entries_is_resource_exhausted(
    serve: ServeFactory, raw_ws: RawWs
) -> None:
    """380,000 empty metadata entries (2.6 MB) fail the call with RESOURCE_EXHAUSTED, nothing else."""
    served = await serve()
    ws = await raw_ws(served.ws_url)
    flood = [bridge_pb2.MetadataEntry(key="a", text="")] * 380_000
    await ws.send(_start(1, flood))
    assert await _status(ws, 1) == Code.RESOURCE_EXHAUSTED
    await ws.send(_start(3, []))
    assert await _status(ws, 3) == Code.OK


async def test_reserved_grpc_metadata_keys_are_refused(serve: ServeFactory, raw_ws: RawWs) -> None:
    """A raw peer's ``grpc-*`` key is INVALID_ARGUMENT, as gRPC clients cannot send one."""
    served = await serve()
    ws = await raw_ws(served.ws_url)
    await ws.send(_start(1, [bridge_pb2.MetadataEntry(key="grpc-timeout", text="1S")]))
    assert await _status(ws, 1) == Code.INVALID_ARGUMENT


async def test_json_frames_have_their_own_smaller_cap(serve: ServeFactory, raw_ws: RawWs) -> None:
    """A JSON frame over ``max_json_frame_bytes`` closes with 1009; a binary one that size is fine."""
    served = await serve(limits=Limits(rate_limit_per_second=0, max_json_frame_bytes=64 * 1024))
    ws = await raw_ws(served.ws_url, subprotocols=[SUBPROTOCOL_JSON])
    await ws.send(json.dumps({"streamId": 0, "ping": {"nonce": "1"}, "pad": "x" * 70_000}))
    with pytest.raises(ConnectionClosed):
        await ws.recv()
    assert ws.protocol.close_rcvd is not None
    assert ws.protocol.close_rcvd.code == 1009
    binary = await raw_ws(served.ws_url)
    ping = bridge_pb2.Frame(ping=bridge_pb2.Ping(nonce=7)).SerializeToString()
    unknown_field = (
        b"\xfa\x07" + bytes((0xF0, 0xA2, 0x04)) + b"x" * 70_000
    )  # field 127, 70,000 bytes
    await binary.send(ping + unknown_field)
    answer = await binary.recv()
    assert isinstance(answer, bytes)
    pong = bridge_pb2.Frame.FromString(answer)
    assert pong.pong.nonce == 7


async def test_subprotocols_can_be_switched_off(serve: ServeFactory, raw_ws: RawWs) -> None:
    """``add_websocket(subprotocols=[binary])`` refuses a JSON handshake with HTTP 400."""
    served = await serve(websocket={"subprotocols": [SUBPROTOCOL_PROTO]})
    with pytest.raises(InvalidStatus) as caught:
        await raw_ws(served.ws_url, subprotocols=[SUBPROTOCOL_JSON])
    assert caught.value.response.status_code == 400
    ws = await raw_ws(served.ws_url, subprotocols=[SUBPROTOCOL_JSON, SUBPROTOCOL_PROTO])
    assert ws.subprotocol == SUBPROTOCOL_PROTO


CANARY_CALLS = 300
"""Calls the canary makes for each measurement."""


def expensive_json_frame(members: int, stream_id: int = 1) -> str:
    """A unary Send CallStart whose Struct has ``members`` tiny members: as costly to decode as
    JSON gets (about 12 bytes per member)."""
    start = {
        "method": method("Send").path,
        "halfClose": True,
        "message": {
            "typed": {
                "@type": "type.googleapis.com/asap.v1.SendRequest",
                "envelope": {"taskRequest": {"input": {f"k{i}": i for i in range(members)}}},
            }
        },
    }
    return json.dumps({"streamId": stream_id, "start": start}, separators=(",", ":"))


def _expensive_json(size: int) -> str:
    """A JSON frame of about ``size`` bytes that is as costly to decode as JSON gets."""
    return expensive_json_frame(size // 12)


class Attack:
    """Peers sending maximal, expensive JSON frames (each on a new stream) as fast as they can."""

    def __init__(self) -> None:
        self.sent = 0
        self.closes: list[int | None] = []
        self.sockets: list[ClientConnection] = []

    async def run(self, raw_ws: RawWs, url: str) -> None:
        limit = Limits().max_json_frame_bytes
        size = limit
        text = _expensive_json(size)
        while len(text.encode()) > limit:
            size = size * limit // len(text.encode()) - 64
            text = _expensive_json(size)
        template = text.replace('"streamId":1', '"streamId":{}', 1)
        ws = await raw_ws(url, subprotocols=[SUBPROTOCOL_JSON])
        self.sockets.append(ws)
        stream_id = 1
        try:
            while True:
                await ws.send(template.replace("{}", str(stream_id), 1))
                self.sent += 1
                stream_id += 2
        except ConnectionClosed:
            rcvd = ws.protocol.close_rcvd
            self.closes.append(None if rcvd is None else rcvd.code)


@pytest.mark.timeout(60)
async def test_decode_amplification_canary_p99_stays_within_3x_of_idle(
    serve: ServeFactory, raw_ws: RawWs, canary: Callable[[str], Canary]
) -> None:
    """A peer sending maximal JSON frames leaves an honest client's p99 within 3x of idle."""
    served = await serve()
    idle = canary(served.ws_url)
    await idle.run(CANARY_CALLS)
    attack = Attack()
    attackers = [asyncio.create_task(attack.run(raw_ws, served.ws_url)) for _ in range(2)]
    loaded = canary(served.ws_url)
    await loaded.run(CANARY_CALLS)
    for task in attackers:
        task.cancel()
    await asyncio.gather(*attackers, return_exceptions=True)
    for ws in attack.sockets:
        ws.transport.abort()  # its backlog of frames would hold up a closing handshake
    idle_p99, loaded_p99 = idle.p99(), loaded.p99()
    print(  # noqa: T201 - the measured figure, shown with -s
        f"canary p99 idle {idle_p99 * 1000:.2f} ms, under attack {loaded_p99 * 1000:.2f} ms "
        f"({attack.sent} frames of {Limits().max_json_frame_bytes} bytes)"
    )
    assert attack.sent > 0
    assert attack.closes == []
    assert idle.errors == []
    assert loaded.errors == []
    # Loose: 3x idle, with 5 ms of room for a shared, noisy machine.
    assert loaded_p99 <= 3 * idle_p99 + 0.005, (idle_p99, loaded_p99, attack.sent)
