"""WebSocketChannel when things go wrong: server restarts, reconnect backoff, GoAway, a server that
breaks the bridge rules, many concurrent calls, and request streams that outrun their handler."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from asap import errors
from asap.client import Client, RetryPolicy
from asap.core.dedupe import ClaimResult, InMemoryDedupeStore, Owned, Reused, Stored
from asap.core.method import method
from asap.protocol.frames import LEGACY_SUBPROTOCOL_PROTO
from asap.server import Server
from asap.transports.base import CallOptions
from asap.transports.ws.client import ReconnectPolicy
from asap.transports.ws.pump import LEGACY_INBOX_HIGH_WATER as INBOX_HIGH_WATER
from asap.v1 import agent_service_pb2, bridge_pb2, manifest_pb2, payload_pb2, status_pb2


if TYPE_CHECKING:
    from tests.transports.conftest import Kit, Probe
    from tests.transports.ws.conftest import ChannelFactory, ServerFactory, Wire


NO_OPTIONS = CallOptions()
SEND = method("Send")
GET_MANIFEST = method("GetManifest")
MANIFEST_REQUEST = agent_service_pb2.GetManifestRequest()
PROCESSED = payload_pb2.ACK_STATUS_PROCESSED


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


class SharedStore:
    """One InMemoryDedupeStore shared by two servers, as a replicated store would be.

    (A wrapper, because Server treats an empty store, which has ``len() == 0``, as no store.)
    """

    def __init__(self) -> None:
        self.store = InMemoryDedupeStore()

    async def claim(self, key: str, fingerprint: bytes) -> ClaimResult:
        return await self.store.claim(key, fingerprint)

    async def lookup(self, key: str, fingerprint: bytes) -> Stored | Reused | None:
        return await self.store.lookup(key, fingerprint)

    async def complete(self, key: str, claim: Owned, outcome: bytes) -> None:
        await self.store.complete(key, claim, outcome)

    async def abandon(self, key: str, claim: Owned) -> None:
        await self.store.abandon(key, claim)


# -- restarts and backoff ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_reconnect_after_restart_resends_unsettled_envelopes_processed_once(
    start_server: ServerFactory, open_channel: ChannelFactory, probe: Probe, kit: Kit
) -> None:
    """After a restart on the same port the channel reconnects; re-sent envelopes run once each."""
    store = SharedStore()
    first = await start_server(dedupe=store)
    url = kit.url(first)
    client = Client(open_channel(url), sender=kit.CALLER_ID, retry=RetryPolicy(max_attempts=1))
    stream = await client.stream()
    settled = kit.envelope("count", requires_ack=True)
    pending = kit.envelope("gate", requires_ack=True)
    await stream.send(settled)
    await stream.send(pending)
    async for item in stream:
        ack = item.envelope.message_ack
        if ack.original_envelope_id == settled.id and ack.status == PROCESSED:
            break
    await probe.entered.wait()
    await first.stop(0)  # the "gate" handler is cancelled before it counts
    with pytest.raises(errors.ConnectionLost) as lost:
        async for _ in stream:
            pass
    assert lost.value.close_code == 1001
    assert [envelope.id for envelope in stream.unsettled()] == [pending.id]

    probe.release.set()
    await start_server(dedupe=store, port=port_of(url))
    retry = await client.stream()
    for envelope in (settled, *stream.unsettled()):  # a duplicate of the settled one as well
        await retry.send(envelope)
    await retry.done_sending()
    finals = set()
    async for item in retry:
        ack = item.envelope.message_ack
        if ack.status == PROCESSED:
            finals.add(ack.original_envelope_id)
    assert finals == {settled.id, pending.id}
    assert probe.processed == {settled.id: 1, pending.id: 1}
    assert retry.unsettled() == []


@pytest.mark.asyncio
async def test_client_retries_a_unary_call_across_a_restart(
    start_server: ServerFactory, open_channel: ChannelFactory, probe: Probe, kit: Kit
) -> None:
    """A Send whose connection dropped is retried by Client on a new connection, processed once."""
    store = SharedStore()
    first = await start_server(dedupe=store)
    url = kit.url(first)
    channel = open_channel(url)
    client = Client(channel, sender=kit.CALLER_ID, retry=RetryPolicy(initial_backoff=0.01))
    envelope = kit.envelope("count")
    await client.send(envelope)
    await first.stop(0)
    await start_server(dedupe=store, port=port_of(url))
    response = await client.send(envelope)  # the old connection is gone: a new one is made
    assert response.envelope.correlation_id == envelope.id
    assert probe.processed == {envelope.id: 1}


@pytest.mark.asyncio
async def test_reconnects_with_backoff_after_failed_attempts(
    start_server: ServerFactory, open_channel: ChannelFactory, kit: Kit
) -> None:
    """Attempts to a server that is down fail with Unavailable; once it is back a call connects."""
    server = await start_server()
    url = kit.url(server)
    policy = ReconnectPolicy(initial_backoff=0.01, max_backoff=0.02)
    channel = open_channel(url, reconnect=policy)
    await channel.unary(GET_MANIFEST, MANIFEST_REQUEST, NO_OPTIONS)
    await server.stop(0)
    for failures in (1, 2):
        with pytest.raises(errors.Unavailable, match="cannot connect"):
            await channel.unary(GET_MANIFEST, MANIFEST_REQUEST, NO_OPTIONS)
        assert channel._failures == failures
    assert not channel.alive
    await start_server(port=port_of(url))
    reply = await channel.unary(GET_MANIFEST, MANIFEST_REQUEST, NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.GetManifestResponse)
    assert channel._failures == 0
    assert channel.alive


def test_reconnect_policy_backs_off_exponentially_with_jitter() -> None:
    """The wait is 0 at first, then grows by the multiplier up to the cap, less the jitter."""
    exact = ReconnectPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter=0.0)
    rng = random.Random(7)  # noqa: S311 - jitter, not cryptography
    assert [exact.delay(n, rng) for n in range(6)] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert exact.delay(10_000, rng) == 1.0
    jittered = ReconnectPolicy(initial_backoff=0.1, max_backoff=1.0, jitter=0.5)
    assert all(0.05 <= jittered.delay(1, rng) <= 0.1 for _ in range(100))
    for bad in (
        {"initial_backoff": -1.0},
        {"max_backoff": float("inf")},
        {"multiplier": 0.5},
        {"jitter": 1.5},
    ):
        with pytest.raises(ValueError, match="must be"):
            ReconnectPolicy(**bad)


# -- many calls on one connection ----------------------------------------------------------


@pytest.mark.asyncio
async def test_concurrent_first_calls_share_one_connection(
    server: Server, open_channel: ChannelFactory, kit: Kit, wire: Wire
) -> None:
    """Fifty calls started at once share one connection attempt and are multiplexed on it."""
    channel = open_channel(kit.url(server))
    requests = [kit.send_request("echo", n=index) for index in range(50)]
    replies = await asyncio.gather(
        *(channel.unary(SEND, request, NO_OPTIONS) for request in requests)
    )
    numbers = [reply.message.envelope.task_response.result["n"] for reply in replies]  # type: ignore[attr-defined]
    assert numbers == list(range(50))
    assert len(wire.connections(server)) == 1
    assert len(channel._connections) == 1


@pytest.mark.asyncio
async def test_request_stream_longer_than_the_inbox_is_delivered_in_full(
    server: Server, open_channel: ChannelFactory, kit: Kit, subprotocol: str
) -> None:
    """A Publish of several inboxes' worth of envelopes is read with backpressure, none lost."""
    channel = open_channel(kit.url(server), subprotocol=subprotocol)
    count = 3 * INBOX_HIGH_WATER

    async def requests() -> AsyncIterator[agent_service_pb2.PublishRequest]:
        for index in range(count):
            yield agent_service_pb2.PublishRequest(envelope=kit.envelope("echo", n=index))

    stream = channel.open_stream(method("Publish"), requests(), NO_OPTIONS)
    [response] = [item async for item in stream]
    assert isinstance(response, agent_service_pb2.PublishResponse)
    numbers = [result.envelope.task_response.result["n"] for result in response.results]
    assert numbers == list(range(count))


@pytest.mark.asyncio
async def test_failing_request_iterator_cancels_the_call(
    server: Server, open_channel: ChannelFactory, kit: Kit
) -> None:
    """An exception in a client-streaming request iterator cancels the call (Cancelled, logged)."""
    channel = open_channel(kit.url(server))

    async def requests() -> AsyncIterator[agent_service_pb2.PublishRequest]:
        yield agent_service_pb2.PublishRequest(envelope=kit.envelope("echo"))
        message = "the producer broke"
        raise RuntimeError(message)

    stream = channel.open_stream(method("Publish"), requests(), NO_OPTIONS)
    with pytest.raises(errors.Cancelled) as caught:
        await anext(stream)
    assert isinstance(caught.value.__cause__, RuntimeError)
    reply = await channel.unary(GET_MANIFEST, MANIFEST_REQUEST, NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.GetManifestResponse)


# -- a server that breaks the rules (a plain websockets server scripted frame by frame) ------

Script = Callable[[ServerConnection, bridge_pb2.Frame, int], Awaitable[None]]


async def answer_manifest(ws: ServerConnection, start: bridge_pb2.Frame, connection: int) -> None:
    """A correct answer: the response message, then status OK."""
    body = bridge_pb2.MessageFrame(
        binary=agent_service_pb2.GetManifestResponse().SerializeToString()
    )
    await ws.send(bridge_pb2.Frame(stream_id=start.stream_id, message=body).SerializeToString())
    status = bridge_pb2.CallStatus(status=status_pb2.Status())
    await ws.send(bridge_pb2.Frame(stream_id=start.stream_id, status=status).SerializeToString())


async def answer_manifest_in_one_frame(
    ws: ServerConnection, start: bridge_pb2.Frame, connection: int
) -> None:
    """A correct answer in one frame: the CallStatus carries the response ("Combined frames")."""
    body = bridge_pb2.MessageFrame(
        binary=agent_service_pb2.GetManifestResponse(
            manifest=manifest_pb2.Manifest(name="fake")
        ).SerializeToString()
    )
    status = bridge_pb2.CallStatus(status=status_pb2.Status(), message=body)
    await ws.send(bridge_pb2.Frame(stream_id=start.stream_id, status=status).SerializeToString())


class FakeBridge:
    """A bridge server that answers each call with the next scripted behaviour."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = list(scripts)
        self.connections = 0
        self.close_codes: list[int | None] = []
        self.received: list[bridge_pb2.Frame] = []
        """Every frame received, in order (so tests can count WebSocket messages)."""

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        connection = self.connections
        try:
            async for data in ws:
                assert isinstance(data, bytes)
                frame = bridge_pb2.Frame.FromString(data)
                self.received.append(frame)
                # The request is complete at a HalfClose, alone or inside the CallStart.
                kind = frame.WhichOneof("kind")
                if kind == "half_close" or (kind == "start" and frame.start.half_close):
                    await self.scripts.pop(0)(ws, frame, connection)
        except ConnectionClosed:
            pass
        self.close_codes.append(ws.close_code)


async def fake_bridge(bridge: FakeBridge) -> AsyncIterator[str]:
    async with serve(
        bridge.handler,
        "127.0.0.1",
        0,
        # A scripted server of bridge revision 1: the channel, which offers revision 2 first and
        # revision 1 after it, falls back to what such an older server speaks.
        subprotocols=[Subprotocol(LEGACY_SUBPROTOCOL_PROTO)],
        compression=None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/asap/v1/ws"


@pytest.mark.asyncio
async def test_malformed_response_fails_the_call_and_is_logged(
    open_channel: ChannelFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A response that does not parse fails that call with MalformedFrame, logged; others go on."""

    async def bad_body(ws: ServerConnection, start: bridge_pb2.Frame, connection: int) -> None:
        body = bridge_pb2.MessageFrame(binary=b"\xff\xff\xff")
        await ws.send(bridge_pb2.Frame(stream_id=start.stream_id, message=body).SerializeToString())

    bridge = FakeBridge(bad_body, answer_manifest)
    async for url in fake_bridge(bridge):
        channel = open_channel(url)
        with (
            caplog.at_level(logging.WARNING, logger="asap.client"),
            pytest.raises(errors.MalformedFrame),
        ):
            await channel.unary(GET_MANIFEST, MANIFEST_REQUEST, NO_OPTIONS)
        assert any("bad response" in record.getMessage() for record in caplog.records)
        reply = await channel.unary(GET_MANIFEST, MANIFEST_REQUEST, NO_OPTIONS)
        assert isinstance(reply.message, agent_service_pb2.GetManifestResponse)
        await channel.close()


@pytest.mark.asyncio
async def test_unattributable_frame_closes_the_connection_with_1002(
    open_channel: ChannelFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage from the server closes the connection (1002, logged); calls get ConnectionLost."""

    async def garbage(ws: ServerConnection, start: bridge_pb2.Frame, connection: int) -> None:
        await ws.send(b"\xff\xfe not a frame")

    bridge = FakeBridge(garbage)
    async for url in fake_bridge(bridge):
        channel = open_channel(url)
        with (
            caplog.at_level(logging.WARNING, logger="asap.client"),
            pytest.raises(errors.ConnectionLost) as caught,
        ):
            await channel.unary(GET_MANIFEST, MANIFEST_REQUEST, NO_OPTIONS)
        assert caught.value.close_code == 1002
        assert any("1002" in record.getMessage() for record in caplog.records)
        await channel.close()
    assert bridge.close_codes == [1002]


@pytest.mark.asyncio
async def test_goaway_sends_new_calls_to_a_new_connection(open_channel: ChannelFactory) -> None:
    """After GoAway the call in flight finishes on its connection; the next call opens another."""

    async def goaway_then_answer(
        ws: ServerConnection, start: bridge_pb2.Frame, connection: int
    ) -> None:
        goaway = bridge_pb2.Frame(goaway=bridge_pb2.GoAway(reason="draining"))
        await ws.send(goaway.SerializeToString())
        await answer_manifest(ws, start, connection)

    bridge = FakeBridge(goaway_then_answer, answer_manifest)
    async for url in fake_bridge(bridge):
        channel = open_channel(url)
        await channel.unary(GET_MANIFEST, MANIFEST_REQUEST, NO_OPTIONS)
        drained = channel._current
        assert drained is not None
        assert not drained.accepting
        await channel.unary(GET_MANIFEST, MANIFEST_REQUEST, NO_OPTIONS)
        assert channel._current is not drained
        await drained.wait_closed()  # the client closed it once its last call ended
        assert drained.close_code == 1000
        await channel.close()
    assert bridge.connections == 2


# -- combined frames (bridge.proto "Combined frames") --------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "answer", [answer_manifest_in_one_frame, answer_manifest], ids=["combined", "separate"]
)
async def test_unary_call_is_one_frame_and_reads_either_answer(
    open_channel: ChannelFactory, answer: Script
) -> None:
    """unary() sends one CallStart carrying the request and half_close; both answer forms work."""
    bridge = FakeBridge(answer)
    async for url in fake_bridge(bridge):
        channel = open_channel(url)
        reply = await channel.unary(GET_MANIFEST, MANIFEST_REQUEST, CallOptions(timeout=5.0))
        assert isinstance(reply.message, agent_service_pb2.GetManifestResponse)
        if answer is answer_manifest_in_one_frame:
            assert reply.message.manifest.name == "fake"
        [frame] = bridge.received
        assert frame.start.method == GET_MANIFEST.path
        assert frame.start.half_close
        assert frame.start.timeout.ToNanoseconds() > 0
        request = agent_service_pb2.GetManifestRequest.FromString(frame.start.message.binary)
        assert request == MANIFEST_REQUEST
        await channel.close()


@pytest.mark.asyncio
async def test_server_streaming_call_is_one_frame(open_channel: ChannelFactory, kit: Kit) -> None:
    """open_stream() for a server-streaming method sends one combined CallStart; the last response
    may come inside the CallStatus."""

    async def two_updates(ws: ServerConnection, start: bridge_pb2.Frame, connection: int) -> None:
        def body(n: int) -> bridge_pb2.MessageFrame:
            response = agent_service_pb2.SubscribeResponse(envelope=kit.envelope("echo", n=n))
            return bridge_pb2.MessageFrame(binary=response.SerializeToString())

        await ws.send(
            bridge_pb2.Frame(stream_id=start.stream_id, message=body(0)).SerializeToString()
        )
        status = bridge_pb2.CallStatus(status=status_pb2.Status(), message=body(1))
        await ws.send(
            bridge_pb2.Frame(stream_id=start.stream_id, status=status).SerializeToString()
        )

    bridge = FakeBridge(two_updates)
    async for url in fake_bridge(bridge):
        channel = open_channel(url)
        request = agent_service_pb2.SubscribeRequest(envelope=kit.envelope("echo"))
        stream = channel.open_stream(method("Subscribe"), request, NO_OPTIONS)
        items = [item async for item in stream]
        numbers = [item.envelope.task_request.input["n"] for item in items]  # type: ignore[attr-defined]
        assert numbers == [0, 1]
        [frame] = bridge.received
        assert frame.start.half_close
        assert agent_service_pb2.SubscribeRequest.FromString(frame.start.message.binary) == request
        await channel.close()
