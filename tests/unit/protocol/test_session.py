"""Unit tests for asap.protocol.session: the server side of a bridge connection, fed bytes."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from google.protobuf import duration_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asap.errors import (
    AsapError,
    Cancelled,
    Code,
    InvalidState,
    MalformedFrame,
    MessageTooLarge,
    NotFound,
    ShuttingDown,
    TooManyCalls,
    from_status,
)
from asap.protocol.events import (
    CallCancelled,
    CallStarted,
    HalfClosed,
    MessageReceived,
    PongReceived,
    ProtocolViolation,
    ServerEvent,
    StreamError,
)
from asap.protocol.frames import (
    LEGACY_SUBPROTOCOL_JSON,
    LEGACY_SUBPROTOCOL_PROTO,
    SUBPROTOCOL_JSON,
    CloseCode,
    Codec,
    JsonCodec,
    ProtoCodec,
)
from asap.protocol.limits import Limits
from asap.protocol.session import ServerSession
from asap.protocol.stream import StreamState
from asap.v1 import agent_service_pb2, bridge_pb2, envelope_pb2, opaque_pb2, status_pb2


LEGACY: dict[type[Codec], str] = {
    ProtoCodec: LEGACY_SUBPROTOCOL_PROTO,
    JsonCodec: LEGACY_SUBPROTOCOL_JSON,
}


METHOD = "/asap.v1.AgentService/Send"
CODECS = [ProtoCodec, JsonCodec]


@pytest.fixture(params=CODECS, ids=["proto", "json"])
def codec(request: pytest.FixtureRequest) -> Codec:
    cls: type[Codec] = request.param
    # These tests hold the rules both revisions share; revision 2 (Settings and credit) has its
    # own tests in test_session_flow.py. A revision 1 session sends nothing unasked.
    return cls(subprotocol=LEGACY[cls])


@pytest.fixture
def server(codec: Codec) -> ServerSession:
    return ServerSession(codec)


def start(
    stream_id: int,
    *,
    metadata: Iterable[bridge_pb2.MetadataEntry] = (),
    timeout: duration_pb2.Duration | None = None,
) -> bridge_pb2.Frame:
    call_start = bridge_pb2.CallStart(method=METHOD, metadata=metadata, timeout=timeout)
    return bridge_pb2.Frame(stream_id=stream_id, start=call_start)


def message(session: ServerSession, stream_id: int, envelope_id: str = "e1") -> bridge_pb2.Frame:
    request = agent_service_pb2.SendRequest(envelope=envelope_pb2.Envelope(id=envelope_id))
    return bridge_pb2.Frame(stream_id=stream_id, message=session.codec.pack_message(request))


def combined_start(
    session: ServerSession,
    stream_id: int,
    *,
    with_message: bool = True,
    half_close: bool = True,
    body: bridge_pb2.MessageFrame | None = None,
) -> bridge_pb2.Frame:
    """A CallStart carrying the first message and/or the HalfClose ("Combined frames")."""
    frame = start(stream_id)
    if body is not None:
        frame.start.message.CopyFrom(body)
    elif with_message:
        frame.start.message.CopyFrom(message(session, stream_id).message)
    frame.start.half_close = half_close
    return frame


def half_close(stream_id: int) -> bridge_pb2.Frame:
    return bridge_pb2.Frame(stream_id=stream_id, half_close=bridge_pb2.HalfClose())


def cancel(stream_id: int, reason: str = "") -> bridge_pb2.Frame:
    return bridge_pb2.Frame(stream_id=stream_id, cancel=bridge_pb2.Cancel(reason=reason))


def feed(session: ServerSession, *frames: bridge_pb2.Frame, now: float = 0.0) -> list[ServerEvent]:
    for frame in frames:
        session.receive_data(session.codec.encode(frame), now)
    return session.events_received()


def sent(session: ServerSession) -> list[bridge_pb2.Frame]:
    return [session.codec.decode(data) for data in session.data_to_send()]


def statuses(frames: Iterable[bridge_pb2.Frame]) -> dict[int, AsapError]:
    return {f.stream_id: from_status(f.status.status) for f in frames if f.HasField("status")}


def assert_stream_error(
    session: ServerSession, events: list[ServerEvent], stream_id: int, cls: type[AsapError]
) -> None:
    """The events are one StreamError of ``cls`` and the matching CallStatus was queued."""
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, StreamError)
    assert event.stream_id == stream_id
    assert type(event.error) is cls
    answered = statuses(sent(session))
    assert type(answered[stream_id]) is cls
    assert not session.is_open(stream_id)


def assert_violation(events: list[ServerEvent], code: CloseCode) -> None:
    assert len(events) == 1
    assert isinstance(events[0], ProtocolViolation)
    assert events[0].close_code is code


def test_call_start(server: ServerSession) -> None:
    """CallStart becomes CallStarted with metadata, timeout and deadline from receipt."""
    timeout = duration_pb2.Duration(seconds=2, nanos=500_000_000)
    entries = [bridge_pb2.MetadataEntry(key="authorization", text="Bearer t")]
    events = feed(server, start(1, metadata=entries, timeout=timeout), now=100.0)
    assert events == [CallStarted(1, METHOD, (("authorization", "Bearer t"),), 2.5, 102.5)]
    assert server.is_open(1)
    assert sent(server) == []


def test_call_start_without_timeout(server: ServerSession) -> None:
    """A CallStart without timeout has no deadline."""
    (event,) = feed(server, start(1))
    assert isinstance(event, CallStarted)
    assert (event.timeout, event.deadline) == (None, None)


def test_unary_call(server: ServerSession) -> None:
    """A unary call's message and half-close are reported; the responses go out in order."""
    events = feed(server, start(1), message(server, 1), half_close(1))
    assert isinstance(events[1], MessageReceived)
    assert events[2] == HalfClosed(1)
    request = server.codec.unpack_message(events[1].message_frame, agent_service_pb2.SendRequest)
    assert request.envelope.id == "e1"
    assert server.send_headers(1, [("x", "y")])
    assert server.send_message(1, agent_service_pb2.SendResponse())
    assert server.send_status(1, status_pb2.Status(), [("t-bin", b"\x01")])
    kinds = [frame.WhichOneof("kind") for frame in sent(server)]
    assert kinds == ["headers", "message", "status"]
    assert not server.is_open(1)


def test_streams_interleave(server: ServerSession) -> None:
    """Frames of different streams may interleave."""
    events = feed(server, start(1), start(3), message(server, 3), message(server, 1), half_close(1))
    assert [(type(e).__name__, getattr(e, "stream_id", 0)) for e in events] == [
        ("CallStarted", 1),
        ("CallStarted", 3),
        ("MessageReceived", 3),
        ("MessageReceived", 1),
        ("HalfClosed", 1),
    ]


@pytest.mark.parametrize("kind", ["start", "message", "half_close", "cancel"])
def test_call_frame_on_stream_zero_closes_connection(server: ServerSession, kind: str) -> None:
    """A call frame on stream 0 cannot be attributed: the connection closes with 1002."""
    frames = {"start": start(0), "message": message(server, 0), "half_close": half_close(0)}
    assert_violation(feed(server, frames.get(kind, cancel(0))), CloseCode.PROTOCOL_ERROR)


def test_nothing_after_violation(server: ServerSession) -> None:
    """After a violation, data is ignored, sends are dropped and no events follow."""
    feed(server, start(1))
    feed(server, start(0))
    assert feed(server, start(2), message(server, 1)) == []
    assert server.closed
    assert not server.send_status(1, status_pb2.Status())
    server.send_ping(1)
    server.send_goaway()
    assert sent(server) == []


def test_reused_open_stream_id_fails_that_stream(server: ServerSession) -> None:
    """A CallStart reusing an open id fails that stream with MALFORMED_FRAME."""
    feed(server, start(1))
    assert_stream_error(server, feed(server, start(1)), 1, MalformedFrame)


def test_lower_stream_id_closes_connection(server: ServerSession) -> None:
    """A CallStart with an id below the highest seen and not open closes the connection with 1002."""
    feed(server, start(5))
    assert_violation(feed(server, start(3)), CloseCode.PROTOCOL_ERROR)


def test_finished_stream_id_closes_connection(server: ServerSession) -> None:
    """A CallStart reusing a finished id closes with 1002 rather than answer the id twice."""
    feed(server, start(1))
    server.send_status(1, status_pb2.Status())
    sent(server)
    assert_violation(feed(server, start(1)), CloseCode.PROTOCOL_ERROR)
    assert sent(server) == []


@pytest.mark.parametrize("kind", ["message", "half_close", "cancel"])
def test_frame_for_unopened_stream(server: ServerSession, kind: str) -> None:
    """A frame for an id above any opened one fails that id with MALFORMED_FRAME."""
    frames = {"message": message(server, 4), "half_close": half_close(4), "cancel": cancel(4)}
    assert_stream_error(server, feed(server, frames[kind]), 4, MalformedFrame)
    assert feed(server, frames[kind]) == []
    assert_violation(feed(server, start(4)), CloseCode.PROTOCOL_ERROR)


@pytest.mark.parametrize("kind", ["message", "half_close", "cancel"])
def test_frame_for_finished_stream_is_ignored(server: ServerSession, kind: str) -> None:
    """Frames for a stream that has finished are ignored."""
    feed(server, start(1), start(2))
    server.send_status(1, status_pb2.Status())
    sent(server)
    frames = {"message": message(server, 1), "half_close": half_close(1), "cancel": cancel(1)}
    assert feed(server, frames[kind]) == []
    assert sent(server) == []


def test_frame_without_kind(server: ServerSession) -> None:
    """A frame with no kind fails its stream, or closes the connection on stream 0."""
    feed(server, start(1))
    assert_stream_error(server, feed(server, bridge_pb2.Frame(stream_id=1)), 1, MalformedFrame)
    assert_violation(feed(server, bridge_pb2.Frame()), CloseCode.PROTOCOL_ERROR)


@pytest.mark.parametrize(
    "frame",
    [
        bridge_pb2.Frame(stream_id=1, headers=bridge_pb2.HeadersFrame()),
        bridge_pb2.Frame(stream_id=1, status=bridge_pb2.CallStatus()),
        bridge_pb2.Frame(stream_id=1, goaway=bridge_pb2.GoAway()),
        bridge_pb2.Frame(stream_id=1, ping=bridge_pb2.Ping()),
        bridge_pb2.Frame(stream_id=1, pong=bridge_pb2.Pong()),
    ],
    ids=lambda f: f.WhichOneof("kind"),
)
def test_server_or_connection_frame_on_a_stream(
    server: ServerSession, frame: bridge_pb2.Frame
) -> None:
    """Server-only or connection-level frames on a call's stream fail that stream."""
    feed(server, start(1))
    assert_stream_error(server, feed(server, frame), 1, MalformedFrame)


@pytest.mark.parametrize(
    "frame",
    [
        bridge_pb2.Frame(headers=bridge_pb2.HeadersFrame()),
        bridge_pb2.Frame(status=bridge_pb2.CallStatus()),
        bridge_pb2.Frame(goaway=bridge_pb2.GoAway()),
    ],
    ids=lambda f: f.WhichOneof("kind"),
)
def test_server_only_frame_on_stream_zero(server: ServerSession, frame: bridge_pb2.Frame) -> None:
    """Server-only frames from a client on stream 0 close the connection with 1002."""
    assert_violation(feed(server, frame), CloseCode.PROTOCOL_ERROR)


def test_message_after_half_close(server: ServerSession) -> None:
    """A message after HalfClose fails the stream."""
    feed(server, start(1), half_close(1))
    assert_stream_error(server, feed(server, message(server, 1)), 1, MalformedFrame)


def test_double_half_close(server: ServerSession) -> None:
    """A second HalfClose fails the stream."""
    feed(server, start(1), half_close(1))
    assert_stream_error(server, feed(server, half_close(1)), 1, MalformedFrame)


def test_cancel(server: ServerSession) -> None:
    """Cancel is reported, answered CANCELLED by the session, and later sends are dropped."""
    feed(server, start(1))
    assert feed(server, cancel(1, "user gave up")) == [CallCancelled(1, "user gave up")]
    assert type(statuses(sent(server))[1]) is Cancelled
    assert not server.send_message(1, agent_service_pb2.SendResponse())
    assert not server.send_status(1, status_pb2.Status())
    assert sent(server) == []


def test_too_many_streams(codec: Codec) -> None:
    """A call beyond max_concurrent_streams is answered TOO_MANY_CALLS; others go on."""
    server = ServerSession(codec, Limits(max_concurrent_streams=2))
    feed(server, start(1), start(2))
    assert_stream_error(server, feed(server, start(3)), 3, TooManyCalls)
    assert server.is_open(1)
    server.send_status(1, status_pb2.Status())
    sent(server)
    assert isinstance(feed(server, start(4))[0], CallStarted)


def test_message_too_large(codec: Codec) -> None:
    """A message over max_message_bytes fails its call with MESSAGE_TOO_LARGE; the connection goes on."""
    server = ServerSession(codec, Limits(max_message_bytes=10))
    feed(server, start(1), start(2))
    big = message(server, 1, envelope_id="x" * 20)
    assert_stream_error(server, feed(server, big), 1, MessageTooLarge)
    assert isinstance(feed(server, message(server, 2, envelope_id="x"))[0], MessageReceived)


def test_message_at_the_limit_is_accepted(codec: Codec) -> None:
    """A message of exactly max_message_bytes is accepted, as gRPC accepts it."""
    request = agent_service_pb2.SendRequest(envelope=envelope_pb2.Envelope(id="e1"))
    server = ServerSession(codec, Limits(max_message_bytes=request.ByteSize()))
    assert isinstance(feed(server, start(1), message(server, 1))[1], MessageReceived)


def test_websocket_message_over_frame_cap(codec: Codec) -> None:
    """A WebSocket message over max_frame_bytes closes the connection with 1009."""
    limits = Limits(max_message_bytes=50, max_frame_bytes=60)
    server = ServerSession.for_subprotocol(codec.subprotocol, limits)
    assert_violation(feed(server, message(server, 1, "x" * 100)), CloseCode.MESSAGE_TOO_BIG)


def test_wrong_websocket_message_type(server: ServerSession) -> None:
    """Text under asap.v1.proto or binary under asap.v1.json closes with 1002."""
    server.receive_data(b"\x08\x01" if isinstance(server.codec, JsonCodec) else "{}", 0.0)
    assert_violation(server.events_received(), CloseCode.PROTOCOL_ERROR)


def test_invalid_json_closes_with_1007() -> None:
    """Text that is not JSON closes the connection with 1007."""
    server = ServerSession(JsonCodec(subprotocol=LEGACY_SUBPROTOCOL_JSON))
    server.receive_data("{nope", 0.0)
    assert_violation(server.events_received(), CloseCode.INVALID_PAYLOAD)


def test_undecodable_frame_with_stream_id(server: ServerSession) -> None:
    """A frame that does not parse but names its stream fails only that stream."""
    feed(server, start(1))
    bad: bytes | str = (
        b"\x08\x01\xff"
        if isinstance(server.codec, ProtoCodec)
        else '{"streamId":1,"ping":{"nonce":"x"}}'
    )
    server.receive_data(bad, 0.0)
    assert_stream_error(server, server.events_received(), 1, MalformedFrame)


def test_wrong_body_kind(server: ServerSession) -> None:
    """A body kind the subprotocol does not take fails the stream (asap.v1.proto: ``typed``;
    asap.v1.json takes ``typed`` and ``binary``, so there: no body)."""
    if isinstance(server.codec, ProtoCodec):
        body = JsonCodec().pack_message(agent_service_pb2.SendRequest())
    else:
        body = bridge_pb2.MessageFrame()
    feed(server, start(1))
    frame = bridge_pb2.Frame(stream_id=1, message=body)
    assert_stream_error(server, feed(server, frame), 1, MalformedFrame)


@pytest.mark.parametrize(
    ("entry", "timeout"),
    [
        (bridge_pb2.MetadataEntry(key="Bad", text="v"), None),
        (bridge_pb2.MetadataEntry(key="x-bin", text="v"), None),
        (None, duration_pb2.Duration(seconds=-1)),
        (None, duration_pb2.Duration(nanos=-1)),
    ],
)
def test_malformed_call_start(
    server: ServerSession,
    entry: bridge_pb2.MetadataEntry | None,
    timeout: duration_pb2.Duration | None,
) -> None:
    """Bad metadata or a negative timeout fails the call with MALFORMED_FRAME."""
    frame = start(1, metadata=[entry] if entry is not None else [], timeout=timeout)
    assert_stream_error(server, feed(server, frame), 1, MalformedFrame)


def test_ping_is_answered(server: ServerSession) -> None:
    """A Ping on stream 0 is answered with a Pong with its nonce, without an event."""
    assert feed(server, bridge_pb2.Frame(ping=bridge_pb2.Ping(nonce=42))) == []
    assert sent(server) == [bridge_pb2.Frame(pong=bridge_pb2.Pong(nonce=42))]


def test_pong_is_reported(server: ServerSession) -> None:
    """A Pong on stream 0 is reported with its nonce."""
    server.send_ping(9)
    assert sent(server) == [bridge_pb2.Frame(ping=bridge_pb2.Ping(nonce=9))]
    assert feed(server, bridge_pb2.Frame(pong=bridge_pb2.Pong(nonce=9))) == [PongReceived(9)]


def test_goaway_refuses_new_calls(server: ServerSession) -> None:
    """After GoAway new calls get SHUTTING_DOWN; open calls go on; GoAway is sent once."""
    feed(server, start(1))
    server.send_goaway("restart")
    server.send_goaway("again")
    assert sent(server) == [bridge_pb2.Frame(goaway=bridge_pb2.GoAway(reason="restart"))]
    assert_stream_error(server, feed(server, start(2)), 2, ShuttingDown)
    assert isinstance(feed(server, message(server, 1))[0], MessageReceived)


def test_rate_limit_strikes_close_the_connection(codec: Codec) -> None:
    """The Nth consecutive rate-limited call queues a 1008 violation."""
    server = ServerSession(codec, Limits(rate_limit_strikes_before_close=3))
    assert not server.record_rate_limited()
    assert not server.record_rate_limited()
    assert server.events_received() == []
    assert server.record_rate_limited()
    assert_violation(server.events_received(), CloseCode.POLICY_VIOLATION)
    assert not server.record_rate_limited()


def test_successful_call_resets_strikes(codec: Codec) -> None:
    """A call that passes the rate limit starts the strike count over."""
    server = ServerSession(codec, Limits(rate_limit_strikes_before_close=2))
    server.record_rate_limited()
    server.record_call_ok()
    assert not server.record_rate_limited()
    assert server.events_received() == []


def test_zero_strikes_never_closes(codec: Codec) -> None:
    """With rate_limit_strikes_before_close=0 the connection is never closed for it."""
    server = ServerSession(codec, Limits(rate_limit_strikes_before_close=0))
    assert not any(server.record_rate_limited() for _ in range(100))


def test_headers_twice_is_misuse(server: ServerSession) -> None:
    """Sending headers twice, or after a message, raises InvalidState."""
    feed(server, start(1), start(2))
    server.send_headers(1)
    with pytest.raises(InvalidState):
        server.send_headers(1)
    server.send_message(2, agent_service_pb2.SendResponse())
    with pytest.raises(InvalidState):
        server.send_headers(2)


def test_send_on_unopened_stream_is_misuse(server: ServerSession) -> None:
    """Sending on a stream id never opened raises InvalidState."""
    with pytest.raises(InvalidState, match="never opened"):
        server.send_message(1, agent_service_pb2.SendResponse())
    with pytest.raises(InvalidState):
        server.send_status(0, status_pb2.Status())


def test_nothing_is_sent_after_status(server: ServerSession) -> None:
    """Once CallStatus is sent every send on that stream is dropped."""
    feed(server, start(1))
    server.send_error(1, NotFound("nope"))
    (frame,) = sent(server)
    assert from_status(frame.status.status).code is Code.NOT_FOUND
    assert not server.send_headers(1)
    assert not server.send_message(1, agent_service_pb2.SendResponse())
    assert not server.send_status(1, status_pb2.Status())
    assert sent(server) == []


def test_send_message_too_large(codec: Codec) -> None:
    """A response over max_message_bytes raises MessageTooLarge and leaves the call open."""
    server = ServerSession(codec, Limits(max_message_bytes=5))
    feed(server, start(1))
    response = agent_service_pb2.EnvelopeError(envelope_id="x" * 10)
    with pytest.raises(MessageTooLarge):
        server.send_message(1, response)
    assert server.is_open(1)
    assert sent(server) == []


def test_send_headers_rejects_bad_metadata(server: ServerSession) -> None:
    """Malformed outgoing metadata raises ValueError and sends nothing."""
    feed(server, start(1))
    with pytest.raises(ValueError, match="-bin"):
        server.send_headers(1, [("x-bin", "text")])
    assert server.send_headers(1)


def test_eof_cancels_open_calls(server: ServerSession) -> None:
    """receive_eof reports every open call cancelled and ends the session."""
    feed(server, start(1), start(2))
    server.send_status(1, status_pb2.Status())
    server.receive_eof(1001)
    server.receive_eof()
    assert server.events_received() == [CallCancelled(2, "the connection closed")]
    assert feed(server, start(3)) == []
    assert not server.send_status(2, status_pb2.Status())


def test_for_subprotocol_uses_the_limits_cap() -> None:
    """for_subprotocol builds the negotiated codec capped at limits.max_frame_bytes."""
    server = ServerSession.for_subprotocol(SUBPROTOCOL_JSON, Limits(max_message_bytes=100))
    assert isinstance(server.codec, JsonCodec)
    assert server.codec.max_frame_bytes == Limits(max_message_bytes=100).max_frame_bytes


def test_last_received_tracks_time(server: ServerSession) -> None:
    """Each received message updates last_received."""
    feed(server, bridge_pb2.Frame(ping=bridge_pb2.Ping()), now=7.5)
    assert server.last_received == 7.5


def test_close_reason_fits_a_close_frame(server: ServerSession) -> None:
    """A violation's reason is cut to 123 UTF-8 bytes."""
    server._violation(CloseCode.INTERNAL_ERROR, "é" * 100)
    (event,) = server.events_received()
    assert isinstance(event, ProtocolViolation)
    assert len(event.reason.encode()) <= 123


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.one_of(st.binary(max_size=64), st.text(max_size=64)), max_size=8))
def test_arbitrary_input_never_raises(codec: Codec, chunks: list[bytes | str]) -> None:
    """Arbitrary data only ever produces events; a violation is the last one."""
    server = ServerSession(type(codec)(subprotocol=codec.subprotocol))
    for chunk in chunks:
        server.receive_data(chunk, 0.0)
    events = server.events_received()
    violations = [i for i, e in enumerate(events) if isinstance(e, ProtocolViolation)]
    assert violations in ([], [len(events) - 1])


_KINDS = [
    "start",
    "start+",
    "message",
    "half_close",
    "cancel",
    "headers",
    "status",
    "ping",
    "pong",
    "goaway",
    None,
]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    script=st.lists(
        st.tuples(st.sampled_from(_KINDS), st.integers(min_value=0, max_value=6), st.booleans()),
        max_size=30,
    )
)
def test_frame_sequences_keep_the_invariants(
    codec: Codec, script: list[tuple[str | None, int, bool]]
) -> None:
    """Any frame sequence yields at most one CallStatus per stream and nothing after it."""
    server = ServerSession(
        type(codec)(subprotocol=codec.subprotocol), Limits(max_concurrent_streams=2)
    )
    out: list[bridge_pb2.Frame] = []
    for kind, stream_id, respond in script:
        frame = bridge_pb2.Frame(stream_id=stream_id)
        if kind == "message":
            frame = message(server, stream_id)
        elif kind == "start+":
            frame = combined_start(server, stream_id)
        elif kind is not None:
            getattr(frame, kind).SetInParent()
        feed(server, frame)
        if respond and server.is_open(stream_id):
            response = agent_service_pb2.SendResponse() if stream_id % 2 else None
            server.send_status(stream_id, status_pb2.Status(), message=response)
        out.extend(sent(server))
    ended: set[int] = set()
    for frame in out:
        assert frame.stream_id not in ended
        if frame.HasField("status"):
            ended.add(frame.stream_id)


def test_status_with_a_detail_of_an_unknown_type_is_sent() -> None:
    """Under JSON a detail whose type the server lacks travels as an OpaqueAny with its bytes
    (asap.protocol.jsonwire), instead of making the status unencodable."""
    server = ServerSession(JsonCodec(subprotocol=LEGACY_SUBPROTOCOL_JSON))
    feed(server, start(1))
    status = status_pb2.Status(code=2)
    status.details.add(type_url="type.googleapis.com/no.such.Detail", value=b"\x08\x01")
    assert server.send_status(1, status)
    [data] = server.data_to_send()
    [detail] = JsonCodec().decode(data).status.status.details
    opaque = opaque_pb2.OpaqueAny()
    assert detail.Unpack(opaque)
    assert opaque == opaque_pb2.OpaqueAny(
        type_url="type.googleapis.com/no.such.Detail", binary=b"\x08\x01"
    )


# -- combined frames (bridge.proto "Combined frames") ---------------------------------------


def test_combined_start_is_the_three_frames_in_one_event(codec: Codec) -> None:
    """A CallStart with a message and half_close: one CallStarted carrying what the three frames do.

    The separate frames give CallStarted, MessageReceived and HalfClosed; the combined one gives
    the same call, message, cost and end of input in a single event, and the same stream state.
    """
    combined, separate = (
        ServerSession(codec),
        ServerSession(type(codec)(subprotocol=codec.subprotocol)),
    )
    events = feed(combined, combined_start(combined, 1), now=5.0)
    started, received, closed = feed(
        separate, start(1), message(separate, 1), half_close(1), now=5.0
    )
    assert isinstance(started, CallStarted)
    assert isinstance(received, MessageReceived)
    assert closed == HalfClosed(1)
    (event,) = events
    assert isinstance(event, CallStarted)
    assert event.message is not None
    # The body may be the MessageFrame or, read off the wire, its bytes: the same message.
    request = codec.unpack_message(event.message, agent_service_pb2.SendRequest)
    assert request == codec.unpack_message(received.message_frame, agent_service_pb2.SendRequest)
    assert request.envelope.id == "e1"
    assert codec.body_size(event.message) == codec.body_size(received.message_frame)
    assert events == [
        CallStarted(
            1,
            started.method,
            started.metadata,
            started.timeout,
            started.deadline,
            event.message,
            received.size,
            half_closed=True,
        )
    ]
    assert combined.streams[1].state is StreamState.HALF_CLOSED_REMOTE
    assert combined.streams[1].state is separate.streams[1].state
    assert sent(combined) == []


def test_combined_start_with_only_a_message(server: ServerSession) -> None:
    """A CallStart with a message and no half_close: more messages and a HalfClose may follow."""
    events = feed(server, combined_start(server, 1, half_close=False))
    assert [type(event) for event in events] == [CallStarted]
    assert isinstance(events[0], CallStarted)
    assert events[0].message is not None
    assert not events[0].half_closed
    events = feed(server, message(server, 1, "e2"), half_close(1))
    assert [type(event) for event in events] == [MessageReceived, HalfClosed]
    assert sent(server) == []


def test_combined_start_with_only_half_close(server: ServerSession) -> None:
    """A CallStart with half_close and no message is a CallStart then a HalfClose."""
    events = feed(server, combined_start(server, 1, with_message=False))
    assert events == [CallStarted(1, METHOD, (), None, None, half_closed=True)]


def test_half_close_after_a_half_closing_start_fails_the_stream(server: ServerSession) -> None:
    """A HalfClose after CallStart.half_close is a second HalfClose: MALFORMED_FRAME."""
    feed(server, combined_start(server, 1))
    assert_stream_error(server, feed(server, half_close(1)), 1, MalformedFrame)


def test_message_after_a_half_closing_start_fails_the_stream(server: ServerSession) -> None:
    """A MessageFrame after CallStart.half_close is a message after HalfClose: MALFORMED_FRAME."""
    feed(server, combined_start(server, 1, with_message=False))
    assert_stream_error(server, feed(server, message(server, 1)), 1, MalformedFrame)


def test_combined_message_too_large(codec: Codec) -> None:
    """The size limit applies to a message in a CallStart; the call is refused, never reported."""
    server = ServerSession(codec, Limits(max_message_bytes=4))
    assert_stream_error(server, feed(server, combined_start(server, 1)), 1, MessageTooLarge)


def test_combined_message_with_the_wrong_body_kind(server: ServerSession) -> None:
    """A message in a CallStart must use a body kind of the subprotocol, as a MessageFrame must
    (asap.v1.json takes both kinds: there an empty body is the wrong one)."""
    wrong = bridge_pb2.MessageFrame()
    if server.codec.body_kind == "binary":
        wrong.typed.Pack(agent_service_pb2.SendRequest())
    events = feed(server, combined_start(server, 1, body=wrong))
    assert_stream_error(server, events, 1, MalformedFrame)


def test_combined_message_without_a_body(server: ServerSession) -> None:
    """An empty MessageFrame in a CallStart (no body at all) fails the stream."""
    events = feed(server, combined_start(server, 1, body=bridge_pb2.MessageFrame()))
    assert_stream_error(server, events, 1, MalformedFrame)


def test_refused_combined_start_reports_only_the_refusal(codec: Codec) -> None:
    """A combined CallStart refused (limit, draining) reports no message or HalfClose."""
    server = ServerSession(codec, Limits(max_concurrent_streams=1))
    feed(server, start(1))
    assert_stream_error(server, feed(server, combined_start(server, 2)), 2, TooManyCalls)
    server.send_goaway()
    sent(server)
    assert_stream_error(server, feed(server, combined_start(server, 3)), 3, ShuttingDown)


def test_send_status_with_the_response_is_one_frame(server: ServerSession) -> None:
    """On a combined call, send_status(message=...) puts the response inside the CallStatus."""
    feed(server, combined_start(server, 1))
    response = agent_service_pb2.SendResponse(envelope=envelope_pb2.Envelope(id="r1"))
    assert server.send_status(1, status_pb2.Status(), [("t", "v")], message=response)
    (frame,) = sent(server)
    assert frame.stream_id == 1
    assert frame.status.status.code == 0
    assert [entry.key for entry in frame.status.trailers] == ["t"]
    assert server.codec.unpack_message(frame.status.message, type(response)) == response
    assert not server.is_open(1)


def test_send_status_with_the_response_to_a_separate_frame_client(server: ServerSession) -> None:
    """A client that sent separate frames may predate combined ones: it gets two frames."""
    feed(server, start(1), message(server, 1), half_close(1))
    response = agent_service_pb2.SendResponse(envelope=envelope_pb2.Envelope(id="r1"))
    assert server.send_status(1, status_pb2.Status(), message=response)
    first, second = sent(server)
    assert server.codec.unpack_message(first.message, type(response)) == response
    assert second.HasField("status")
    assert not second.status.HasField("message")
    assert not server.is_open(1)


def test_send_status_with_a_response_too_large(codec: Codec) -> None:
    """A response over the limit raises MessageTooLarge; nothing is queued, the call stays open."""
    server = ServerSession(codec, Limits(max_message_bytes=4))
    feed(server, combined_start(server, 1, with_message=False))
    big = agent_service_pb2.SendResponse(envelope=envelope_pb2.Envelope(id="x" * 10))
    with pytest.raises(MessageTooLarge):
        server.send_status(1, status_pb2.Status(), message=big)
    assert sent(server) == []
    assert server.is_open(1)
    assert server.send_error(1, MessageTooLarge())
    assert type(statuses(sent(server))[1]) is MessageTooLarge


def test_send_status_with_a_response_after_the_stream_ended(server: ServerSession) -> None:
    """A response for a stream that has already ended is dropped like any other send."""
    feed(server, combined_start(server, 1), cancel(1))
    sent(server)
    assert not server.send_status(1, status_pb2.Status(), message=agent_service_pb2.SendResponse())
    assert sent(server) == []


def test_send_status_with_a_response_after_headers(server: ServerSession) -> None:
    """Headers, then the response with the status: two frames, in that order."""
    feed(server, combined_start(server, 1))
    assert server.send_headers(1, [("h", "v")])
    assert server.send_status(1, status_pb2.Status(), message=agent_service_pb2.SendResponse())
    assert [frame.WhichOneof("kind") for frame in sent(server)] == ["headers", "status"]


_FOLLOW_UPS = ["message", "half_close", "cancel", "respond"]


def comparable(event: ServerEvent) -> list[object]:
    """An event as values: errors (which do not compare equal) by class and message, and a combined
    CallStarted as the events of the separate frames it stands for."""
    if isinstance(event, StreamError):
        return [(StreamError, event.stream_id, type(event.error), event.error.message)]
    if isinstance(event, MessageReceived) and isinstance(event.message_frame, bytes):
        # A body read off the wire is the bytes of MessageFrame.binary: the same message.
        frame = bridge_pb2.MessageFrame(binary=event.message_frame)
        return [MessageReceived(event.stream_id, frame, event.size)]
    if isinstance(event, CallStarted) and (event.message is not None or event.half_closed):
        stream_id = event.stream_id
        out: list[object] = [
            CallStarted(stream_id, event.method, event.metadata, event.timeout, event.deadline)
        ]
        if event.message is not None:
            out.extend(comparable(MessageReceived(stream_id, event.message, event.message_size)))
        if event.half_closed:
            out.append(HalfClosed(stream_id))
        return out
    return [event]


def comparable_all(events: list[ServerEvent]) -> list[object]:
    """:func:`comparable` of each event, flattened."""
    return [value for event in events for value in comparable(event)]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    with_message=st.booleans(),
    half_closing=st.booleans(),
    follow_ups=st.lists(st.sampled_from(_FOLLOW_UPS), max_size=6),
    limit=st.sampled_from([4, 1000]),
)
def test_combined_and_separate_forms_are_equivalent(
    codec: Codec, with_message: bool, half_closing: bool, follow_ups: list[str], limit: int
) -> None:
    """Whatever follows, a combined CallStart and its separate frames give the same events and
    the same answers (the response comes in one frame or two, with the same content)."""
    sessions = [
        ServerSession(type(codec)(subprotocol=codec.subprotocol), Limits(max_message_bytes=limit))
        for _ in range(2)
    ]
    combined, separate = sessions
    seen: list[list[object]] = [[], []]
    answers: list[list[tuple[int, int]]] = [[], []]
    feeds = [
        [combined_start(combined, 1, with_message=with_message, half_close=half_closing)],
        [start(1)]
        + ([message(separate, 1)] if with_message else [])
        + ([half_close(1)] if half_closing else []),
    ]
    for index, session in enumerate(sessions):
        first = feed(session, *feeds[index])
        if any(isinstance(event, StreamError) for event in first):
            # A combined start whose message fails is refused before the call is reported.
            first = [event for event in first if isinstance(event, StreamError)]
        seen[index].extend(comparable_all(first))
        for step in follow_ups:
            if step == "respond":
                if session.is_open(1):
                    session.send_status(1, status_pb2.Status(code=5), message=status_pb2.Status())
            else:
                frames = {"message": message(session, 1), "half_close": half_close(1)}
                seen[index].extend(comparable_all(feed(session, frames.get(step, cancel(1)))))
        for frame in sent(session):
            if frame.HasField("status"):
                if frame.status.HasField("message"):
                    answers[index].append((frame.stream_id, -1))
                answers[index].append((frame.stream_id, frame.status.status.code))
            elif frame.HasField("message"):
                answers[index].append((frame.stream_id, -1))
    assert seen[0] == seen[1]
    assert answers[0] == answers[1]
