"""WebSocketServerTransport: the handshake checks, credentials, per-stream failures, graceful stop,
and one test per entry of the close-code table (bridge.proto "Close codes").

TLS is tested on every transport in ``tests/transports/test_transport_security.py``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from typing import TYPE_CHECKING

import pytest
import trustme
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from websockets.exceptions import InvalidStatus

from asap import errors
from asap.core.dispatch import Dispatcher
from asap.core.health import HealthState
from asap.core.method import method
from asap.protocol.frames import SUBPROTOCOL_JSON, SUBPROTOCOL_PROTO
from asap.protocol.limits import Limits
from asap.server import Server
from asap.transports.base import CallOptions
from asap.transports.ws.server import WebSocketServerTransport
from asap.v1 import agent_service_pb2, bridge_pb2, manifest_pb2


if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from tests.transports.conftest import Kit, Probe
    from tests.transports.ws.conftest import ChannelFactory, RawFactory, ServerFactory, Wire


NO_OPTIONS = CallOptions()
SEND = method("Send")
GET_MANIFEST = method("GetManifest")
MANIFEST_REQUEST = agent_service_pb2.GetManifestRequest()


# -- the opening handshake -----------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("offered", "reason"),
    [(["chat", "asap.v2.proto"], "unsupported subprotocol chat"), ([], "no subprotocol offered")],
    ids=["unknown", "missing"],
)
async def test_handshake_without_a_supported_subprotocol_is_refused_with_400(
    server: Server, raw: RawFactory, kit: Kit, offered: list[str], reason: str
) -> None:
    """A handshake offering no supported subprotocol gets HTTP 400 with the reason in the body."""
    with pytest.raises(InvalidStatus) as caught:
        await raw(kit.url(server), subprotocols=offered)
    assert caught.value.response.status_code == 400
    body = caught.value.response.body.decode()
    assert reason in body
    assert "asap.v1.proto or asap.v1.json" in body


@pytest.mark.asyncio
async def test_the_server_prefers_the_binary_subprotocol(
    server: Server, raw: RawFactory, kit: Kit
) -> None:
    """Offered both subprotocols, the server picks asap.v1.proto."""
    ws = await raw(kit.url(server), subprotocols=[SUBPROTOCOL_JSON, SUBPROTOCOL_PROTO])
    assert ws.subprotocol == SUBPROTOCOL_PROTO


@pytest.mark.asyncio
async def test_refused_handshake_maps_to_an_asap_error(
    server: Server, open_channel: ChannelFactory, kit: Kit
) -> None:
    """A channel to another path gets HTTP 404, raised as Unimplemented with the status."""
    channel = open_channel(kit.url(server).replace("/asap/v1/ws", "/elsewhere"))
    with pytest.raises(errors.Unimplemented, match="HTTP 404"):
        await channel.unary(GET_MANIFEST, MANIFEST_REQUEST, NO_OPTIONS)


@pytest.mark.asyncio
async def test_other_paths_are_answered_with_404(server: Server, raw: RawFactory, kit: Kit) -> None:
    """A WebSocket handshake on any other path gets HTTP 404."""
    with pytest.raises(InvalidStatus) as caught:
        await raw(kit.url(server).replace("/asap/v1/ws", "/asap/v1/wsx"))
    assert caught.value.response.status_code == 404


@pytest.mark.asyncio
async def test_origin_allow_list(start_server: ServerFactory, raw: RawFactory, kit: Kit) -> None:
    """A listed Origin and no Origin (not a browser) are accepted; another Origin gets 403."""
    server = await start_server(allowed_origins=["https://app.example"])
    url = kit.url(server)
    accepted = await raw(url, origin="https://app.example")
    assert accepted.subprotocol == SUBPROTOCOL_PROTO
    without = await raw(url)
    assert without.subprotocol == SUBPROTOCOL_PROTO
    with pytest.raises(InvalidStatus) as caught:
        await raw(url, origin="https://evil.example")
    assert caught.value.response.status_code == 403


# -- credentials ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_token_in_the_handshake_header_authenticates_every_call(
    start_server: ServerFactory, open_channel: ChannelFactory, kit: Kit
) -> None:
    """The handshake's Authorization header reaches BearerAuth as metadata on each call."""
    server = await start_server(auth=True)
    channel = open_channel(kit.url(server), token=kit.TOKEN)
    for _ in range(2):
        reply = await channel.unary(SEND, kit.send_request("meta"), NO_OPTIONS)
        assert isinstance(reply.message, agent_service_pb2.SendResponse)
        assert reply.message.envelope.task_response.result["subject"] == kit.CALLER_ID


@pytest.mark.asyncio
async def test_access_token_query_parameter_authenticates(
    start_server: ServerFactory, open_channel: ChannelFactory, kit: Kit
) -> None:
    """Browsers' access_token query parameter works like the Authorization header."""
    server = await start_server(auth=True)
    channel = open_channel(f"{kit.url(server)}?access_token={kit.TOKEN}")
    reply = await channel.unary(SEND, kit.send_request("meta"), NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.SendResponse)
    assert reply.message.envelope.task_response.result["subject"] == kit.CALLER_ID


@pytest.mark.asyncio
async def test_call_metadata_overrides_the_handshake_token(
    start_server: ServerFactory, open_channel: ChannelFactory, kit: Kit
) -> None:
    """A call's own authorization metadata wins over the handshake's; without any, it is refused."""
    server = await start_server(auth=True)
    bad = CallOptions(metadata=(("authorization", "Bearer wrong"),))
    channel = open_channel(kit.url(server), token=kit.TOKEN)
    with pytest.raises(errors.Unauthenticated) as caught:
        await channel.unary(SEND, kit.send_request("meta"), bad)
    assert caught.value.reason == "INVALID_TOKEN"
    anonymous = open_channel(kit.url(server))
    with pytest.raises(errors.Unauthenticated) as missing:
        await anonymous.unary(SEND, kit.send_request("meta"), NO_OPTIONS)
    assert missing.value.reason == "MISSING_CREDENTIALS"


# -- calls on one connection ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_malformed_frame_fails_only_its_stream(
    server: Server, raw: RawFactory, probe: Probe, kit: Kit, wire: Wire
) -> None:
    """A frame breaking the rules of stream 3 fails it (MALFORMED_FRAME); stream 1 completes."""
    ws = await raw(kit.url(server))
    for data in wire.start_frames(1, "Send", kit.send_request("block")):
        await ws.send(data)
    await probe.entered.wait()
    start = bridge_pb2.CallStart(method=GET_MANIFEST.path)
    await ws.send(wire.frame(3, start=start))
    wrong_body = bridge_pb2.MessageFrame()
    wrong_body.typed.Pack(MANIFEST_REQUEST)  # asap.v1.proto carries messages in 'binary'
    await ws.send(wire.frame(3, message=wrong_body))
    failed = await wire.next_frame(ws)
    assert failed.stream_id == 3
    assert failed.status.status.code == errors.Code.INVALID_ARGUMENT
    assert errors.from_status(failed.status.status).reason == "MALFORMED_FRAME"
    probe.release.set()
    response = await wire.next_frame(ws)
    assert (response.stream_id, response.WhichOneof("kind")) == (1, "message")
    status = await wire.next_frame(ws)
    assert (status.stream_id, status.status.status.code) == (1, 0)


@pytest.mark.asyncio
async def test_request_that_does_not_parse_fails_only_its_call(
    server: Server, raw: RawFactory, kit: Kit, wire: Wire
) -> None:
    """A request body that is not the method's request type fails that call with MALFORMED_FRAME."""
    ws = await raw(kit.url(server))
    start = bridge_pb2.CallStart(method=SEND.path)
    await ws.send(wire.frame(1, start=start))
    await ws.send(wire.frame(1, message=bridge_pb2.MessageFrame(binary=b"\xff\xff\xff")))
    await ws.send(wire.frame(1, half_close=bridge_pb2.HalfClose()))
    status = await wire.next_frame(ws)
    assert status.stream_id == 1
    assert errors.from_status(status.status.status).reason == "MALFORMED_FRAME"
    for data in wire.start_frames(3, "GetManifest", MANIFEST_REQUEST):
        await ws.send(data)
    assert (await wire.next_frame(ws)).WhichOneof("kind") == "message"
    assert (await wire.next_frame(ws)).status.status.code == 0


@pytest.mark.asyncio
async def test_unknown_method_is_unimplemented(
    server: Server, raw: RawFactory, kit: Kit, wire: Wire
) -> None:
    """A CallStart for a method the service lacks gets UNIMPLEMENTED (UNKNOWN_METHOD)."""
    ws = await raw(kit.url(server))
    start = bridge_pb2.CallStart(method="/asap.v1.AgentService/Nope")
    await ws.send(wire.frame(1, start=start))
    status = await wire.next_frame(ws)
    error = errors.from_status(status.status.status)
    assert isinstance(error, errors.UnknownMethod)


@pytest.mark.asyncio
async def test_ping_frame_is_answered_with_pong(
    server: Server, raw: RawFactory, kit: Kit, wire: Wire
) -> None:
    """A bridge Ping (for browsers) is answered with a Pong carrying the same nonce."""
    ws = await raw(kit.url(server))
    await ws.send(wire.frame(0, ping=bridge_pb2.Ping(nonce=77)))
    pong = await wire.next_frame(ws)
    assert pong.pong.nonce == 77


@pytest.mark.asyncio
async def test_json_subprotocol_speaks_canonical_json(
    server: Server, raw: RawFactory, kit: Kit
) -> None:
    """Under asap.v1.json frames are JSON text and messages carry their @type."""
    ws = await raw(kit.url(server), subprotocols=[SUBPROTOCOL_JSON])
    await ws.send(json.dumps({"streamId": 1, "start": {"method": GET_MANIFEST.path}}))
    body = {"@type": "type.googleapis.com/asap.v1.GetManifestRequest"}
    await ws.send(json.dumps({"streamId": 1, "message": {"typed": body}}))
    await ws.send(json.dumps({"streamId": 1, "halfClose": {}}))
    message = json.loads(await ws.recv())
    assert message["message"]["typed"]["@type"].endswith("asap.v1.GetManifestResponse")
    status = json.loads(await ws.recv())
    assert status["streamId"] == 1
    assert "status" in status


# -- the close-code table ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_close_1000_when_the_client_closes(
    server: Server, open_channel: ChannelFactory, kit: Kit, wire: Wire
) -> None:
    """1000: a channel's close() ends its connection with normal closure; the server forgets it."""
    channel = open_channel(kit.url(server))
    await channel.unary(GET_MANIFEST, MANIFEST_REQUEST, NO_OPTIONS)
    [conn] = wire.connections(server)
    await channel.close()
    await conn.wait_closed()
    assert conn.close_code == 1000
    assert wire.transport(server).connections == 0


@pytest.mark.asyncio
async def test_close_1001_after_draining_on_graceful_stop(
    server: Server, raw: RawFactory, probe: Probe, kit: Kit, wire: Wire
) -> None:
    """1001: stop() sends GoAway, lets the in-flight call finish, then closes with going away."""
    ws = await raw(kit.url(server))
    for data in wire.start_frames(1, "Send", kit.send_request("block")):
        await ws.send(data)
    await probe.entered.wait()
    stopping = asyncio.create_task(server.stop(30))
    goaway = await wire.next_frame(ws)
    assert goaway.WhichOneof("kind") == "goaway"
    for data in wire.start_frames(3, "GetManifest", MANIFEST_REQUEST):
        await ws.send(data)  # refused while draining
    refused = await wire.next_frame(ws)
    assert (refused.stream_id, refused.status.status.code) == (3, errors.Code.UNAVAILABLE)
    probe.release.set()
    answer = await wire.next_frame(ws)
    assert (answer.stream_id, answer.WhichOneof("kind")) == (1, "message")
    status = await wire.next_frame(ws)
    assert (status.stream_id, status.status.status.code) == (1, 0)
    assert await wire.close_of(ws) == (1001, "server shutting down")
    await stopping
    assert not probe.cancelled.is_set()


@pytest.mark.asyncio
async def test_connection_opened_while_draining_refuses_calls_with_shutting_down(
    server: Server, open_channel: ChannelFactory, probe: Probe, kit: Kit
) -> None:
    """While the server drains, a new connection gets GoAway and its calls SHUTTING_DOWN."""
    busy = open_channel(kit.url(server))
    call = asyncio.create_task(busy.unary(SEND, kit.send_request("block"), NO_OPTIONS))
    await probe.entered.wait()
    stopping = asyncio.create_task(server.stop(30))
    late = open_channel(kit.url(server))
    with pytest.raises(errors.ShuttingDown):
        await late.unary(GET_MANIFEST, MANIFEST_REQUEST, NO_OPTIONS)
    probe.release.set()
    reply = await call
    assert isinstance(reply.message, agent_service_pb2.SendResponse)
    await stopping


@pytest.mark.asyncio
async def test_stop_cancels_calls_still_running_after_the_grace_period(
    server: Server, open_channel: ChannelFactory, probe: Probe, kit: Kit
) -> None:
    """After the grace period the handler is cancelled and the caller gets ConnectionLost (1001)."""
    channel = open_channel(kit.url(server))
    call = asyncio.create_task(channel.unary(SEND, kit.send_request("block"), NO_OPTIONS))
    await probe.entered.wait()
    await server.stop(0.05)
    assert probe.cancelled.is_set()
    with pytest.raises(errors.ConnectionLost) as caught:
        await call
    assert caught.value.close_code == 1001


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "data", [b"\xff\xfe garbage", "text on the binary subprotocol"], ids=["garbage", "text"]
)
async def test_close_1002_for_a_frame_no_stream_can_own(
    server: Server, raw: RawFactory, kit: Kit, wire: Wire, data: bytes | str
) -> None:
    """1002: a binary message that is no Frame, or text under asap.v1.proto, closes the connection."""
    ws = await raw(kit.url(server))
    await ws.send(data)
    code, _ = await wire.close_of(ws)
    assert code == 1002


@pytest.mark.asyncio
async def test_close_1007_for_invalid_json(
    server: Server, raw: RawFactory, kit: Kit, wire: Wire
) -> None:
    """1007: text that is not JSON under asap.v1.json closes the connection."""
    ws = await raw(kit.url(server), subprotocols=[SUBPROTOCOL_JSON])
    await ws.send("{not json")
    assert await wire.close_of(ws) == (1007, "text is not valid JSON")


@pytest.mark.asyncio
async def test_close_1008_after_rate_limit_strikes(
    start_server: ServerFactory, open_channel: ChannelFactory, kit: Kit, wire: Wire
) -> None:
    """1008: strikes_before_close rate-limited calls in a row close the connection."""
    limits = Limits(
        rate_limit_per_second=0.001, rate_limit_burst=1, rate_limit_strikes_before_close=2
    )
    server = await start_server(limits=limits)
    channel = open_channel(kit.url(server))
    await channel.unary(GET_MANIFEST, MANIFEST_REQUEST, NO_OPTIONS)
    [conn] = wire.connections(server)
    for _ in range(2):
        with pytest.raises(errors.RateLimited):
            await channel.unary(GET_MANIFEST, MANIFEST_REQUEST, NO_OPTIONS)
    await conn.wait_closed()
    assert conn.close_code == 1008
    assert conn.close_reason == "kept calling past the rate limit"


@pytest.mark.asyncio
async def test_close_1009_for_a_message_over_the_frame_cap(
    start_server: ServerFactory, raw: RawFactory, kit: Kit, wire: Wire
) -> None:
    """1009: a WebSocket message over max_frame_bytes closes the connection."""
    limits = Limits(max_message_bytes=1024, max_frame_bytes=2048, rate_limit_per_second=0)
    server = await start_server(limits=limits)
    ws = await raw(kit.url(server))
    await ws.send(b"\x08\x01" + b"\x00" * 4096)
    code, _ = await wire.close_of(ws)
    assert code == 1009


@pytest.mark.asyncio
async def test_close_1011_when_heartbeats_go_unanswered(
    start_server: ServerFactory, raw: RawFactory, kit: Kit, wire: Wire
) -> None:
    """1011: a peer that stops answering pings is closed after heartbeat_timeout."""
    # The raw client pauses reading its socket, so its websockets protocol never sees the server's
    # pings and never sends pongs; it resumes once the server has given up, and reads the close.
    limits = Limits(heartbeat_interval=0.05, heartbeat_timeout=0.05, rate_limit_per_second=0)
    server = await start_server(limits=limits)
    ws = await raw(kit.url(server))
    await ws.send(wire.frame(0, ping=bridge_pb2.Ping(nonce=1)))
    await wire.next_frame(ws)  # the server has registered the connection
    [conn] = wire.connections(server)
    ws.transport.pause_reading()
    await conn.wait_closed()
    ws.transport.resume_reading()
    assert await wire.close_of(ws) == (1011, "keepalive ping timeout")


@pytest.mark.asyncio
async def test_close_1013_at_the_connection_limit(
    start_server: ServerFactory, open_channel: ChannelFactory, raw: RawFactory, kit: Kit, wire: Wire
) -> None:
    """1013: beyond max_connections the handshake completes and the connection closes at once."""
    server = await start_server(limits=Limits(max_connections=1, rate_limit_per_second=0))
    channel = open_channel(kit.url(server))
    await channel.unary(GET_MANIFEST, MANIFEST_REQUEST, NO_OPTIONS)
    ws = await raw(kit.url(server))
    assert await wire.close_of(ws) == (1013, "connection limit reached")
    second = open_channel(kit.url(server))
    with pytest.raises(errors.ConnectionLost) as caught:
        await second.unary(GET_MANIFEST, MANIFEST_REQUEST, NO_OPTIONS)
    assert caught.value.close_code == 1013


# -- addresses -----------------------------------------------------------------------------


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe_socket:
            probe_socket.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.asyncio
@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_listener_endpoint_and_peer(
    start_server: ServerFactory, open_channel: ChannelFactory, kit: Kit
) -> None:
    """On [::1] the endpoint brackets the address and handlers see an ipv6:[::1]:port peer."""
    server = await start_server(host="[::1]")
    url = kit.url(server)
    assert url.startswith("ws://[::1]:")
    channel = open_channel(url)
    reply = await channel.unary(SEND, kit.send_request("meta"), NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.SendResponse)
    peer = reply.message.envelope.task_response.result["peer"]
    assert isinstance(peer, str)
    assert peer.startswith("ipv6:[::1]:")


# -- lifecycle -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_endpoint_and_restart_rules() -> None:
    """endpoint needs start(); it has the real port and path; a transport starts only once."""
    transport = WebSocketServerTransport(
        Dispatcher(_NoService()),  # type: ignore[arg-type]
        HealthState(),
        host="127.0.0.1",
        port=0,
        limits=Limits(),
        tls=None,
        path="/bridge",
        allowed_origins=None,
    )
    with pytest.raises(errors.InvalidState):
        _ = transport.endpoint
    await transport.start()
    try:
        endpoint = transport.endpoint
        assert endpoint.transport == manifest_pb2.TRANSPORT_WEBSOCKET
        assert endpoint.url.startswith("ws://127.0.0.1:")
        assert not endpoint.url.startswith("ws://127.0.0.1:0/")
        assert endpoint.url.endswith("/bridge")
        with pytest.raises(errors.InvalidState):
            await transport.start()
    finally:
        await transport.stop(0)
        await transport.stop(0)


def test_path_must_be_absolute() -> None:
    """A path that does not start with "/" is refused."""
    with pytest.raises(ValueError, match="path"):
        WebSocketServerTransport(
            Dispatcher(_NoService()),  # type: ignore[arg-type]
            HealthState(),
            host="127.0.0.1",
            port=0,
            limits=Limits(),
            tls=None,
            path="bridge",
            allowed_origins=None,
        )


class _NoService:
    def __init__(self) -> None:
        self.rpcs: dict[str, object] = {}


@pytest.mark.asyncio
async def test_stop_leaves_no_task(
    start_server: ServerFactory, open_channel: ChannelFactory, probe: Probe, kit: Kit
) -> None:
    """After stop() no task the server started is left, even with calls and streams in flight."""
    before = asyncio.all_tasks()
    server = await start_server()
    channel = open_channel(kit.url(server))
    call = asyncio.create_task(channel.unary(SEND, kit.send_request("block"), NO_OPTIONS))
    await probe.entered.wait()
    await server.stop(0)
    await channel.close()
    with pytest.raises(errors.ConnectionLost):
        await call
    assert asyncio.all_tasks() == before


@pytest.mark.asyncio
async def test_ssl_context_is_tls_1_2_or_later(ca: trustme.CA, kit: Kit) -> None:
    """The server's TLS context refuses anything older than TLS 1.2."""
    context = kit.server_tls(ca).ssl_context()
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


# -- combined frames (bridge.proto "Combined frames") --------------------------------------


def combined_start(
    stream_id: int, name: str, request: Message, *, half_close: bool = True
) -> bytes:
    """One CallStart carrying the request and the HalfClose, under asap.v1.proto."""
    body = bridge_pb2.MessageFrame(binary=request.SerializeToString())
    start = bridge_pb2.CallStart(method=method(name).path, message=body, half_close=half_close)
    return bridge_pb2.Frame(stream_id=stream_id, start=start).SerializeToString()


async def assert_nothing_more(ws: ClientConnection, wire: Wire) -> None:
    """The server sent nothing else for now: a Ping's Pong is the very next frame."""
    await ws.send(wire.frame(0, ping=bridge_pb2.Ping(nonce=9)))
    assert (await wire.next_frame(ws)).pong.nonce == 9


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["GetManifest", "Send"])
async def test_combined_unary_call_is_answered_in_one_frame(
    server: Server, raw: RawFactory, kit: Kit, wire: Wire, name: str
) -> None:
    """One CallStart with the request and half_close gets one CallStatus carrying the response."""
    ws = await raw(kit.url(server))
    request = MANIFEST_REQUEST if name == "GetManifest" else kit.send_request("echo")
    await ws.send(combined_start(1, name, request))
    answer = await wire.next_frame(ws)
    assert (answer.stream_id, answer.WhichOneof("kind")) == (1, "status")
    assert answer.status.status.code == 0
    response = method(name).response_type.FromString(answer.status.message.binary)
    if name == "Send":
        assert isinstance(response, agent_service_pb2.SendResponse)
        assert response.envelope.task_response.task_id == "t-echo"
    await assert_nothing_more(ws, wire)


@pytest.mark.asyncio
async def test_separate_frames_are_answered_with_message_then_status(
    server: Server, raw: RawFactory, kit: Kit, wire: Wire
) -> None:
    """A client that sends CallStart, the request and HalfClose apart gets two frames back (it may
    predate combined frames)."""
    ws = await raw(kit.url(server))
    for data in wire.start_frames(1, "Send", kit.send_request("echo")):
        await ws.send(data)
    message = await wire.next_frame(ws)
    assert (message.stream_id, message.WhichOneof("kind")) == (1, "message")
    agent_service_pb2.SendResponse.FromString(message.message.binary)
    status = await wire.next_frame(ws)
    assert (status.stream_id, status.status.status.code) == (1, 0)
    assert not status.status.HasField("message")


@pytest.mark.asyncio
async def test_combined_json_call_is_answered_in_one_frame(
    server: Server, raw: RawFactory, kit: Kit
) -> None:
    """Under asap.v1.json the combined CallStart and CallStatus carry typed messages."""
    ws = await raw(kit.url(server), subprotocols=[SUBPROTOCOL_JSON])
    body = {"@type": "type.googleapis.com/asap.v1.GetManifestRequest"}
    start = {"method": GET_MANIFEST.path, "message": {"typed": body}, "halfClose": True}
    await ws.send(json.dumps({"streamId": 1, "start": start}))
    answer = json.loads(await ws.recv())
    assert answer["streamId"] == 1
    typed = answer["status"]["message"]["typed"]
    assert typed["@type"].endswith("asap.v1.GetManifestResponse")
    await ws.send(json.dumps({"ping": {"nonce": "4"}}))
    assert json.loads(await ws.recv()) == {"pong": {"nonce": "4"}}


@pytest.mark.asyncio
async def test_failed_combined_call_is_answered_with_the_status_only(
    server: Server, raw: RawFactory, kit: Kit, wire: Wire
) -> None:
    """A unary call that fails gets one CallStatus with the error and no message."""
    ws = await raw(kit.url(server))
    await ws.send(combined_start(1, "Send", kit.send_request("fail")))
    answer = await wire.next_frame(ws)
    assert answer.stream_id == 1
    assert isinstance(errors.from_status(answer.status.status), errors.FailedPrecondition)
    assert not answer.status.HasField("message")
    assert [entry.key for entry in answer.status.trailers][:1] == ["x-test-trailer"]
    await assert_nothing_more(ws, wire)


@pytest.mark.asyncio
async def test_oversized_combined_response_is_message_too_large(
    start_server: ServerFactory, raw: RawFactory, kit: Kit, wire: Wire
) -> None:
    """A unary response over the limit fails the call: one CallStatus, no message."""
    server = await start_server(limits=Limits(rate_limit_per_second=0, max_message_bytes=4096))
    ws = await raw(kit.url(server))
    await ws.send(combined_start(1, "Send", kit.send_request("big", size=8192)))
    answer = await wire.next_frame(ws)
    assert isinstance(errors.from_status(answer.status.status), errors.MessageTooLarge)
    assert not answer.status.HasField("message")
    await assert_nothing_more(ws, wire)


@pytest.mark.asyncio
async def test_half_close_after_a_half_closing_start_fails_the_call(
    server: Server, raw: RawFactory, probe: Probe, kit: Kit, wire: Wire
) -> None:
    """A HalfClose after CallStart.half_close is MALFORMED_FRAME; the handler still completes."""
    ws = await raw(kit.url(server))
    await ws.send(combined_start(1, "Send", kit.send_request("block")))
    await probe.entered.wait()
    await ws.send(wire.frame(1, half_close=bridge_pb2.HalfClose()))
    failed = await wire.next_frame(ws)
    assert failed.stream_id == 1
    assert errors.from_status(failed.status.status).reason == "MALFORMED_FRAME"
    probe.release.set()  # a peer's protocol error is not an explicit cancel
    await probe.finished.wait()
    assert not probe.cancelled.is_set()


@pytest.mark.asyncio
async def test_combined_start_then_separate_half_close(
    server: Server, raw: RawFactory, kit: Kit, wire: Wire
) -> None:
    """A CallStart with the request but no half_close may be followed by a separate HalfClose."""
    ws = await raw(kit.url(server))
    await ws.send(combined_start(1, "GetManifest", MANIFEST_REQUEST, half_close=False))
    await ws.send(wire.frame(1, half_close=bridge_pb2.HalfClose()))
    answer = await wire.next_frame(ws)
    assert (answer.stream_id, answer.status.status.code) == (1, 0)
    agent_service_pb2.GetManifestResponse.FromString(answer.status.message.binary)


@pytest.mark.asyncio
async def test_server_streaming_responses_stay_separate_frames(
    server: Server, raw: RawFactory, kit: Kit, wire: Wire
) -> None:
    """A combined Subscribe gets each response in its own MessageFrame, then a bare CallStatus."""
    ws = await raw(kit.url(server))
    request = agent_service_pb2.SubscribeRequest(envelope=kit.envelope("progress"))
    await ws.send(combined_start(1, "Subscribe", request))
    kinds = [(await wire.next_frame(ws)).WhichOneof("kind") for _ in range(kit.UPDATES + 1)]
    assert kinds == ["message"] * (kit.UPDATES + 1)
    status = await wire.next_frame(ws)
    assert (status.stream_id, status.status.status.code) == (1, 0)
    assert not status.status.HasField("message")


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["Send", "Subscribe", "GetManifest"])
async def test_second_request_on_a_unary_request_method_is_malformed(
    server: Server, raw: RawFactory, kit: Kit, wire: Wire, name: str
) -> None:
    """A second request message on a unary or server-streaming call fails it (MALFORMED_FRAME)
    instead of being dropped unseen, as over gRPC; the connection goes on."""
    ws = await raw(kit.url(server))
    if name == "GetManifest":
        request: Message = MANIFEST_REQUEST
    elif name == "Send":
        request = kit.send_request("echo")
    else:
        request = agent_service_pb2.SubscribeRequest(envelope=kit.envelope("echo"))
    await ws.send(combined_start(1, name, request, half_close=False))
    body = bridge_pb2.MessageFrame(binary=request.SerializeToString())
    await ws.send(wire.frame(1, message=body))
    await ws.send(wire.frame(1, half_close=bridge_pb2.HalfClose()))
    failed = await wire.next_frame(ws)
    assert (failed.stream_id, failed.WhichOneof("kind")) == (1, "status")
    assert errors.from_status(failed.status.status).reason == "MALFORMED_FRAME"
    await ws.send(combined_start(3, "GetManifest", MANIFEST_REQUEST))
    answer = await wire.next_frame(ws)
    assert (answer.stream_id, answer.status.status.code) == (3, 0)


@pytest.mark.asyncio
async def test_second_health_check_request_is_malformed(
    server: Server, raw: RawFactory, kit: Kit, wire: Wire
) -> None:
    """The health Check over the bridge takes exactly one request too."""
    ws = await raw(kit.url(server))
    request = health_pb2.HealthCheckRequest()
    body = bridge_pb2.MessageFrame(binary=request.SerializeToString())
    start = bridge_pb2.CallStart(method="/grpc.health.v1.Health/Check", message=body)
    await ws.send(wire.frame(1, start=start))
    await ws.send(wire.frame(1, message=body))
    await ws.send(wire.frame(1, half_close=bridge_pb2.HalfClose()))
    failed = await wire.next_frame(ws)
    assert errors.from_status(failed.status.status).reason == "MALFORMED_FRAME"
