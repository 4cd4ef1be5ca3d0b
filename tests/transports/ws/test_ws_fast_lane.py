"""The bridge's fast lane for data frames (asap.transports.ws.pump, asap.transports.ws.dataframes).

Whole data frames are decoded by the pump, every other frame by websockets. These tests drive a real
server with websockets' own sans-I/O client over a raw TCP stream, so they choose exactly how the
bytes are cut: one byte per write (every header and the handshake's head split at every point), a
call pipelined behind the handshake, a ping between data frames, a fragmented message, and the
frames the fast lane must leave to websockets (wrong masking, too big, cut by EOF). Between two
writes the client yields to the loop once, so the server reads them separately; how the bytes are
cut changes what the test covers, never what it asserts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from asap.core.method import method
from asap.protocol.frames import CloseCode
from asap.protocol.limits import Limits
from asap.server import Server
from asap.transports.base import CallOptions
from asap.v1 import agent_service_pb2, bridge_pb2
from tests.transports.conftest import UPDATES, task_envelope


if TYPE_CHECKING:
    from tests.transports.conftest import Kit
    from tests.transports.ws.conftest import ChannelFactory, ServerFactory, Wire


SEND = method("Send")
SUBSCRIBE = method("Subscribe")
OPTIONS = CallOptions()


class SplitClient:
    """websockets' sans-I/O client over a TCP stream, writing ``chunk`` bytes at a time."""

    def __init__(
        self,
        protocol: ClientProtocol,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        chunk: int,
    ) -> None:
        self.protocol = protocol
        self.reader = reader
        self.writer = writer
        self.chunk = chunk
        self._frames: list[Frame] = []

    async def write(self, data: bytes) -> None:
        """Write ``data`` in pieces of ``chunk`` bytes, yielding to the loop after each."""
        for start in range(0, len(data), self.chunk):
            self.writer.write(data[start : start + self.chunk])
            await self.writer.drain()
            await asyncio.sleep(0)  # one loop turn: the server reads this piece on its own

    async def flush(self) -> None:
        """Write what the protocol queued (requests, pongs, close echoes)."""
        for data in self.protocol.data_to_send():
            if data:
                await self.write(data)

    async def send(self, *messages: bytes) -> None:
        """Send binary messages, one frame each."""
        for message in messages:
            self.protocol.send_binary(message)
        await self.flush()

    async def _read(self) -> bool:
        data = await self.reader.read(65536)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                self._frames.append(event)
        await self.flush()
        return bool(data)

    async def _next(self, opcode: Opcode) -> bytes:
        """The payload of the next frame with ``opcode`` (reading as needed)."""
        while True:
            while self._frames:
                frame = self._frames.pop(0)
                if frame.opcode is opcode:
                    return bytes(frame.data)
            if not await self._read():
                message = "the server ended the connection"
                raise ConnectionError(message)

    async def next_frame(self) -> bridge_pb2.Frame:
        """The next bridge frame the server sent (skipping its Settings)."""
        while True:
            decoded = bridge_pb2.Frame.FromString(await self._next(Opcode.BINARY))
            if decoded.WhichOneof("kind") != "settings":
                return decoded

    async def pong(self) -> bytes:
        """The payload of the next pong."""
        return await self._next(Opcode.PONG)

    async def close_code(self) -> int | None:
        """Read until the server ends the connection; the code of the close frame it sent."""
        while await self._read():
            pass
        close = self.protocol.close_rcvd
        return None if close is None else close.code

    def close(self) -> None:
        """Drop the TCP connection."""
        self.writer.close()


SplitFactory = Callable[..., Awaitable[SplitClient]]


@pytest_asyncio.fixture
async def split() -> AsyncIterator[SplitFactory]:
    """Open SplitClients (closed at teardown); ``pipeline`` goes out with the handshake request."""
    opened: list[SplitClient] = []

    async def open_(url: str, *, chunk: int = 1, pipeline: Sequence[bytes] = ()) -> SplitClient:
        protocol = ClientProtocol(parse_uri(url), subprotocols=[Subprotocol("asap.v1.proto")])
        uri = parse_uri(url)
        reader, writer = await asyncio.open_connection(uri.host, uri.port)
        client = SplitClient(protocol, reader, writer, chunk)
        opened.append(client)
        protocol.send_request(protocol.connect())
        head = b"".join(protocol.data_to_send())
        frames = b"".join(
            Frame(Opcode.BINARY, message).serialize(mask=True, extensions=[])
            for message in pipeline
        )
        await client.write(head + frames)
        while protocol.handshake_exc is None and protocol.state.name == "CONNECTING":
            await client._read()
        return client

    yield open_
    for client in opened:
        client.close()


def _answered(frames: list[bridge_pb2.Frame], stream_id: int) -> None:
    kinds = [(frame.stream_id, frame.WhichOneof("kind")) for frame in frames]
    assert kinds == [(stream_id, "message"), (stream_id, "status")], kinds
    assert frames[1].status.status.code == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("chunk", [1, 3, 7, 4096])
async def test_calls_split_at_every_byte_are_answered(
    server: Server, split: SplitFactory, kit: Kit, wire: Wire, chunk: int
) -> None:
    """Handshake and frames cut into 1, 3 or 7-byte writes (or whole): every call is answered."""
    client = await split(kit.url(server), chunk=chunk)
    for stream_id in (1, 3):
        await client.send(
            *wire.start_frames(stream_id, "Send", kit.send_request("echo", n=stream_id))
        )
        _answered([await client.next_frame(), await client.next_frame()], stream_id)


@pytest.mark.asyncio
async def test_call_pipelined_behind_the_handshake_is_answered(
    server: Server, split: SplitFactory, kit: Kit, wire: Wire
) -> None:
    """Frames in the same write as the handshake request (before the 101) are not lost."""
    frames = wire.start_frames(1, "Send", kit.send_request("echo"))
    client = await split(kit.url(server), chunk=65536, pipeline=frames)
    _answered([await client.next_frame(), await client.next_frame()], 1)


@pytest.mark.asyncio
async def test_ping_between_data_frames_is_answered_and_the_call_too(
    server: Server, split: SplitFactory, kit: Kit, wire: Wire
) -> None:
    """A ping cut in pieces between two data frames gets its pong; the call still completes."""
    client = await split(kit.url(server), chunk=2)
    start, message, half_close = wire.start_frames(1, "Send", kit.send_request("echo"))
    client.protocol.send_binary(start)
    client.protocol.send_ping(b"between")
    client.protocol.send_binary(message)
    client.protocol.send_binary(half_close)
    await client.flush()
    assert await client.pong() == b"between"
    _answered([await client.next_frame(), await client.next_frame()], 1)


@pytest.mark.asyncio
async def test_fragmented_message_is_reassembled(
    server: Server, split: SplitFactory, kit: Kit, wire: Wire
) -> None:
    """A message in three fragments (websockets' path) between whole frames (the fast lane)."""
    client = await split(kit.url(server), chunk=5)
    start, message, half_close = wire.start_frames(1, "Send", kit.send_request("echo"))
    third = len(message) // 3
    protocol = client.protocol
    protocol.send_binary(start)
    protocol.send_binary(message[:third], fin=False)
    protocol.send_continuation(message[third : 2 * third], fin=False)
    protocol.send_continuation(message[2 * third :], fin=True)
    protocol.send_binary(half_close)
    await client.flush()
    _answered([await client.next_frame(), await client.next_frame()], 1)


@pytest.mark.asyncio
async def test_data_frame_inside_a_fragmented_message_is_a_protocol_error(
    server: Server, split: SplitFactory, kit: Kit, wire: Wire
) -> None:
    """A whole data frame while a fragmented message is open is refused with 1002, as RFC 6455
    §5.4 says: the fast lane leaves it to websockets."""
    client = await split(kit.url(server))
    start, message, _ = wire.start_frames(1, "Send", kit.send_request("echo"))
    first = Frame(Opcode.BINARY, start, fin=False).serialize(mask=True, extensions=[])
    whole = Frame(Opcode.BINARY, message).serialize(mask=True, extensions=[])
    await client.write(first + whole)
    assert await client.close_code() == CloseCode.PROTOCOL_ERROR


@pytest.mark.asyncio
async def test_unmasked_client_frame_is_a_protocol_error(
    server: Server, split: SplitFactory, kit: Kit, wire: Wire
) -> None:
    """A client's data frame without a mask is refused with 1002 (RFC 6455 §5.1)."""
    client = await split(kit.url(server))
    start = wire.start_frames(1, "Send", kit.send_request("echo"))[0]
    await client.write(Frame(Opcode.BINARY, start).serialize(mask=False, extensions=[]))
    assert await client.close_code() == CloseCode.PROTOCOL_ERROR


@pytest.mark.asyncio
async def test_frame_over_the_limit_is_refused_from_its_header(
    start_server: ServerFactory, split: SplitFactory, kit: Kit
) -> None:
    """A header announcing more than max_frame_bytes closes with 1009 before any payload is
    buffered: the fast lane never holds more than one frame's allowed size."""
    server = await start_server(limits=Limits(max_frame_bytes=4096, max_message_bytes=4096))
    client = await split(kit.url(server), chunk=65536)
    header = Frame(Opcode.BINARY, b"").serialize(mask=True, extensions=[])
    # 127: a 64-bit length follows; announce 1 GiB and send only the header and its mask.
    announced = bytes((header[0], 0x80 | 127)) + (1 << 30).to_bytes(8, "big") + b"\x00" * 4
    await client.write(announced)
    assert await client.close_code() == CloseCode.MESSAGE_TOO_BIG


@pytest.mark.asyncio
async def test_connection_cut_inside_a_frame_leaves_the_server_serving(
    server: Server, split: SplitFactory, kit: Kit, wire: Wire
) -> None:
    """EOF in the middle of a frame ends that connection; the next one is served."""
    client = await split(kit.url(server))
    start = Frame(Opcode.BINARY, wire.start_frames(1, "Send", kit.send_request("echo"))[0])
    data = start.serialize(mask=True, extensions=[])
    await client.write(data[: len(data) // 2])
    client.writer.write_eof()
    assert await client.close_code() in (None, CloseCode.PROTOCOL_ERROR)
    other = await split(kit.url(server), chunk=4096)
    await other.send(*wire.start_frames(1, "Send", kit.send_request("echo")))
    _answered([await other.next_frame(), await other.next_frame()], 1)


@pytest.mark.asyncio
async def test_text_frame_on_the_binary_subprotocol_is_a_typed_protocol_error(
    server: Server, split: SplitFactory, kit: Kit
) -> None:
    """A whole text frame on asap.v1.proto takes the fast lane to the session, which closes the
    connection with 1002 and says why."""
    client = await split(kit.url(server))
    client.protocol.send_text(b"{}")
    await client.flush()
    assert await client.close_code() == CloseCode.PROTOCOL_ERROR
    close = client.protocol.close_rcvd
    assert isinstance(close, Close)
    assert close.reason == "text message on asap.v1.proto"


class CuttingProxy:
    """A loopback TCP proxy that forwards every read in pieces of ``chunk`` bytes, both ways."""

    def __init__(self, backend_port: int, chunk: int) -> None:
        self.backend_port = backend_port
        self.chunk = chunk
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on 127.0.0.1 (an ephemeral port)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.backend_port
        )
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                for start in range(0, len(data), self.chunk):
                    sink.write(data[start : start + self.chunk])
                    await sink.drain()
                    await asyncio.sleep(0)  # one loop turn: the server reads this piece on its own
        except ConnectionError:
            pass
        finally:
            sink.close()

    async def close(self) -> None:
        """Stop listening and end every forwarded connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.mark.asyncio
@pytest.mark.parametrize("chunk", [1, 5])
async def test_real_client_and_server_through_cut_bytes_both_ways(
    server: Server, open_channel: ChannelFactory, kit: Kit, subprotocol: str, chunk: int
) -> None:
    """WebSocketChannel and the server, every byte of theirs cut into pieces both ways (the
    client's fast lane reads split frames too): unary calls and a stream keep their answers."""
    port = int(kit.url(server).split(":")[2].split("/")[0])
    proxy = CuttingProxy(port, chunk)
    await proxy.start()
    try:
        url = kit.url(server).replace(f":{port}/", f":{proxy.port}/")
        channel = open_channel(url, subprotocol=subprotocol)
        for n in range(3):
            reply = await channel.unary(SEND, kit.send_request("echo", n=n), OPTIONS)
            assert isinstance(reply.message, agent_service_pb2.SendResponse)
            result = reply.message.envelope.task_response.result
            assert result.fields["n"].number_value == n
        request = agent_service_pb2.SubscribeRequest(envelope=task_envelope("progress"))
        answers = [answer async for answer in channel.open_stream(SUBSCRIBE, request, OPTIONS)]
        assert len(answers) == UPDATES + 1  # the updates, then the final response
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_no_extension_is_negotiated_so_every_data_frame_is_plain(
    server: Server, kit: Kit
) -> None:
    """A client offering permessage-deflate gets no extension back: the fast lane's frames (no
    reserved bits, no compression) are the only data frames a bridge connection carries."""
    async with connect(kit.url(server), subprotocols=[Subprotocol("asap.v1.proto")]) as ws:
        assert ws.request is not None
        assert "permessage-deflate" in ws.request.headers.get("Sec-WebSocket-Extensions", "")
        assert ws.response is not None
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        assert ws.protocol.extensions == []
