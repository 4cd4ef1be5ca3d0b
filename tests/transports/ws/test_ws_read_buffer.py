"""The bridge reads into one buffer per thread (asap.transports.ws.pump.read_buffer).

Every connection a thread serves lends its transport the same buffer, and each read is copied out
of it before the next one can land there. These tests show the sharing and that the copy is what a
connection keeps: messages larger than the buffer, cut across many reads, and interleaved with
another connection's reads into the same buffer, arrive intact on both sides.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

import pytest

from asap.core.method import method
from asap.protocol.limits import Limits
from asap.transports.base import CallOptions
from asap.transports.ws.pump import READ_BUFFER_BYTES, read_buffer
from asap.v1 import agent_service_pb2


if TYPE_CHECKING:
    from asap.transports.ws.client import WebSocketChannel
    from tests.transports.conftest import Kit
    from tests.transports.ws.conftest import ChannelFactory, ServerFactory, Wire


SEND = method("Send")
OPTIONS = CallOptions()


def test_one_buffer_per_thread() -> None:
    here = read_buffer()
    assert read_buffer() is here
    assert len(here) == READ_BUFFER_BYTES
    assert not here.readonly

    other: list[memoryview] = []
    thread = threading.Thread(target=lambda: other.append(read_buffer()))
    thread.start()
    thread.join()
    assert other[0] is not here
    assert len(other[0]) == READ_BUFFER_BYTES


@pytest.mark.asyncio
async def test_messages_larger_than_the_buffer_arrive_whole_beside_another_connection(
    start_server: ServerFactory, open_channel: ChannelFactory, wire: Wire, kit: Kit
) -> None:
    size = 3 * READ_BUFFER_BYTES  # every message spans several reads into the shared buffer
    limits = Limits(max_message_bytes=4 * READ_BUFFER_BYTES)
    server = await start_server(limits=limits)
    first = open_channel(kit.url(server), limits=limits)
    second = open_channel(kit.url(server), limits=limits)

    async def echo(channel: WebSocketChannel, fill: str, index: int) -> None:
        text = f"{fill}{index}:" + fill * size
        request = kit.send_request("echo", text=text)
        reply = await channel.unary(SEND, request, OPTIONS)
        response = reply.message
        assert isinstance(response, agent_service_pb2.SendResponse)
        assert response.envelope.task_response.result["text"] == text

    # Both connections' reads land in the one buffer of this loop's thread, alternately.
    await asyncio.gather(
        *(echo(first, "a", index) for index in range(3)),
        *(echo(second, "b", index) for index in range(3)),
    )
    connections = wire.connections(server)
    assert len(connections) == 2
    views = {id(connection.get_buffer(-1)) for connection in connections}
    assert views == {id(read_buffer())}
