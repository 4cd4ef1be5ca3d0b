"""Unit tests for asap.protocol.client_session: the client side of a bridge connection."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asap.errors import (
    Code,
    ConnectionLost,
    InvalidState,
    MalformedFrame,
    MessageTooLarge,
    NotFound,
    from_status,
    to_status,
)
from asap.protocol.client_session import _MAX_CACHED_STARTS, ClientSession
from asap.protocol.events import (
    CallCancelled,
    CallEnded,
    CallStarted,
    ClientEvent,
    GoAwayReceived,
    HalfClosed,
    HeadersReceived,
    MessageReceived,
    PongReceived,
    ProtocolViolation,
    StreamError,
)
from asap.protocol.frames import (
    LEGACY_SUBPROTOCOL_JSON,
    LEGACY_SUBPROTOCOL_PROTO,
    MAX_STREAM_ID,
    CloseCode,
    Codec,
    JsonCodec,
    ProtoCodec,
)
from asap.protocol.limits import Limits
from asap.protocol.session import ServerSession
from asap.protocol.stream import StreamState
from asap.v1 import agent_service_pb2, bridge_pb2, status_pb2


LEGACY: dict[type[Codec], str] = {
    ProtoCodec: LEGACY_SUBPROTOCOL_PROTO,
    JsonCodec: LEGACY_SUBPROTOCOL_JSON,
}


METHOD = "/asap.v1.AgentService/Send"


@pytest.fixture(params=[ProtoCodec, JsonCodec], ids=["proto", "json"])
def codec(request: pytest.FixtureRequest) -> Codec:
    cls: type[Codec] = request.param
    # These tests hold the rules both revisions share; revision 2 (Settings and credit) has its
    # own tests in test_session_flow.py. A revision 1 session sends nothing unasked.
    return cls(subprotocol=LEGACY[cls])


@pytest.fixture
def client(codec: Codec) -> ClientSession:
    return ClientSession(codec)


def feed(session: ClientSession, *frames: bridge_pb2.Frame) -> list[ClientEvent]:
    for frame in frames:
        session.receive_data(session.codec.encode(frame), 0.0)
    return session.events_received()


def sent(session: ClientSession) -> list[bridge_pb2.Frame]:
    return [session.codec.decode(data) for data in session.data_to_send()]


def headers(stream_id: int, *entries: bridge_pb2.MetadataEntry) -> bridge_pb2.Frame:
    return bridge_pb2.Frame(stream_id=stream_id, headers=bridge_pb2.HeadersFrame(metadata=entries))


def status(stream_id: int, *trailers: bridge_pb2.MetadataEntry) -> bridge_pb2.Frame:
    call_status = bridge_pb2.CallStatus(status=to_status(NotFound("gone")), trailers=trailers)
    return bridge_pb2.Frame(stream_id=stream_id, status=call_status)


def response(session: ClientSession, stream_id: int, size: int = 1) -> bridge_pb2.Frame:
    body = session.codec.pack_message(agent_service_pb2.EnvelopeError(envelope_id="x" * size))
    return bridge_pb2.Frame(stream_id=stream_id, message=body)


def status_with_response(
    session: ClientSession,
    stream_id: int,
    *,
    code: int = 0,
    size: int = 1,
    body: bridge_pb2.MessageFrame | None = None,
    trailers: tuple[bridge_pb2.MetadataEntry, ...] = (),
) -> bridge_pb2.Frame:
    """A CallStatus carrying the last response ("Combined frames")."""
    if body is None:
        body = response(session, stream_id, size).message
    call_status = bridge_pb2.CallStatus(
        status=status_pb2.Status(code=code), trailers=trailers, message=body
    )
    return bridge_pb2.Frame(stream_id=stream_id, status=call_status)


def assert_failed(
    session: ClientSession, events: list[ClientEvent], stream_id: int, cls: type
) -> None:
    """One StreamError of ``cls``; the client cancelled the stream."""
    assert len(events) == 1
    assert isinstance(events[0], StreamError)
    assert events[0].stream_id == stream_id
    assert type(events[0].error) is cls
    (frame,) = sent(session)
    assert frame.stream_id == stream_id
    assert frame.HasField("cancel")
    assert not session.is_open(stream_id)


def test_send_start_allocates_increasing_ids(client: ClientSession) -> None:
    """Calls get stream ids 1, 2, 3 and a CallStart with method, metadata and timeout."""
    assert client.send_start(METHOD, [("k", "v"), ("k-bin", b"\x00")], timeout=1.25) == 1
    assert client.send_start(METHOD) == 2
    first, second = sent(client)
    assert first.start.method == METHOD
    assert [(e.key, e.WhichOneof("value")) for e in first.start.metadata] == [
        ("k", "text"),
        ("k-bin", "binary"),
    ]
    assert first.start.timeout.ToNanoseconds() == 1_250_000_000
    assert not second.start.HasField("timeout")
    assert client.next_stream_id() == 3


def test_call_starts_are_shared_per_timeout_and_bounded(client: ClientSession) -> None:
    """Calls without metadata share one CallStart per (method, timeout); the cache stays bounded."""
    assert client._start_head(METHOD, (), 2.0) is client._start_head(METHOD, (), 2.0)
    assert client._start_head(METHOD, [("k", "v")], 2.0) is not client._start_head(METHOD, (), 2.0)
    timeouts = [1 + i / 1000 for i in range(3 * _MAX_CACHED_STARTS)]
    for timeout in timeouts:
        client.send_start(METHOD, timeout=timeout)
        assert len(client._starts) <= _MAX_CACHED_STARTS
    client.send_start(METHOD, timeout=timeouts[0])  # evicted meanwhile: built again, the same
    frames = sent(client)
    millis = [math.ceil(timeout * 1000) for timeout in [*timeouts, timeouts[0]]]
    assert [frame.start.timeout.ToMilliseconds() for frame in frames] == millis


@pytest.mark.parametrize("timeout", [-1.0, float("inf"), float("nan")])
def test_send_start_rejects_bad_timeout(client: ClientSession, timeout: float) -> None:
    """A negative or non-finite timeout raises ValueError and opens nothing."""
    with pytest.raises(ValueError, match="timeout"):
        client.send_start(METHOD, timeout=timeout)
    assert client.send_start(METHOD) == 1


def test_call_round_trip(client: ClientSession) -> None:
    """Headers, a message and the status are reported in order; the call then ends."""
    stream_id = client.send_start(METHOD)
    client.send_message(stream_id, agent_service_pb2.SendRequest())
    client.send_half_close(stream_id)
    assert [f.WhichOneof("kind") for f in sent(client)] == ["start", "message", "half_close"]
    events = feed(
        client,
        headers(1, bridge_pb2.MetadataEntry(key="h", text="v")),
        response(client, 1),
        status(1, bridge_pb2.MetadataEntry(key="t", text="w")),
    )
    assert events[0] == HeadersReceived(1, (("h", "v"),))
    assert isinstance(events[1], MessageReceived)
    assert isinstance(events[2], CallEnded)
    assert events[2].trailers == (("t", "w"),)
    assert from_status(events[2].status).code is Code.NOT_FOUND
    assert not client.is_open(1)


def test_message_after_half_close_is_misuse(client: ClientSession) -> None:
    """Sending a message or HalfClose after HalfClose raises InvalidState."""
    stream_id = client.send_start(METHOD)
    client.send_half_close(stream_id)
    with pytest.raises(InvalidState, match="half-closed"):
        client.send_message(stream_id, agent_service_pb2.SendRequest())
    with pytest.raises(InvalidState):
        client.send_half_close(stream_id)


def test_send_message_too_large(codec: Codec) -> None:
    """A request over max_message_bytes raises MessageTooLarge and sends nothing."""
    client = ClientSession(codec, Limits(max_message_bytes=5))
    stream_id = client.send_start(METHOD)
    sent(client)
    with pytest.raises(MessageTooLarge):
        client.send_message(stream_id, agent_service_pb2.EnvelopeError(envelope_id="x" * 10))
    assert sent(client) == []


def test_cancel_ends_the_call_locally(client: ClientSession) -> None:
    """Cancel is sent once; later frames for the call are ignored and sends dropped."""
    stream_id = client.send_start(METHOD)
    sent(client)
    assert client.send_cancel(stream_id, "bored")
    assert sent(client) == [bridge_pb2.Frame(stream_id=1, cancel=bridge_pb2.Cancel(reason="bored"))]
    assert not client.send_cancel(stream_id)
    assert not client.send_message(stream_id, agent_service_pb2.SendRequest())
    assert not client.send_half_close(stream_id)
    assert feed(client, response(client, 1), status(1)) == []
    assert sent(client) == []


def test_send_on_unopened_stream_is_misuse(client: ClientSession) -> None:
    """Sending on a stream the client never opened raises InvalidState."""
    with pytest.raises(InvalidState, match="never opened"):
        client.send_cancel(1)


def test_headers_twice_fails_the_call(client: ClientSession) -> None:
    """A second HeadersFrame fails the call with MALFORMED_FRAME and cancels it."""
    client.send_start(METHOD)
    sent(client)
    feed(client, headers(1))
    assert_failed(client, feed(client, headers(1)), 1, MalformedFrame)


def test_headers_after_message_fails_the_call(client: ClientSession) -> None:
    """HeadersFrame after a response message fails the call."""
    client.send_start(METHOD)
    sent(client)
    feed(client, response(client, 1))
    assert_failed(client, feed(client, headers(1)), 1, MalformedFrame)


@pytest.mark.parametrize(
    "frame",
    [
        headers(1, bridge_pb2.MetadataEntry(key="BAD", text="v")),
        status(1, bridge_pb2.MetadataEntry(key="x-bin", text="v")),
        bridge_pb2.Frame(stream_id=1, start=bridge_pb2.CallStart()),
        bridge_pb2.Frame(stream_id=1, half_close=bridge_pb2.HalfClose()),
        bridge_pb2.Frame(stream_id=1, cancel=bridge_pb2.Cancel()),
        bridge_pb2.Frame(stream_id=1, goaway=bridge_pb2.GoAway()),
        bridge_pb2.Frame(stream_id=1),
    ],
    ids=["bad-headers", "bad-trailers", "start", "half_close", "cancel", "goaway", "empty"],
)
def test_broken_server_frame_fails_the_call(client: ClientSession, frame: bridge_pb2.Frame) -> None:
    """A server frame that breaks the stream's rules fails that call and cancels it."""
    client.send_start(METHOD)
    sent(client)
    assert_failed(client, feed(client, frame), 1, MalformedFrame)


def test_frame_for_never_opened_stream_closes(client: ClientSession) -> None:
    """A server frame for a stream id the client never chose closes the connection with 1002."""
    client.send_start(METHOD)
    events = feed(client, status(2))
    assert events == [
        ProtocolViolation(CloseCode.PROTOCOL_ERROR, "frame for a stream the client never opened")
    ]
    assert client.closed


def test_client_only_frame_on_stream_zero_closes(client: ClientSession) -> None:
    """A call frame on stream 0 closes the connection with 1002."""
    (event,) = feed(client, bridge_pb2.Frame(headers=bridge_pb2.HeadersFrame()))
    assert isinstance(event, ProtocolViolation)
    assert event.close_code is CloseCode.PROTOCOL_ERROR


def test_message_too_large_fails_the_call(codec: Codec) -> None:
    """A response over max_message_bytes fails the call with MESSAGE_TOO_LARGE and cancels it."""
    client = ClientSession(codec, Limits(max_message_bytes=10))
    client.send_start(METHOD)
    sent(client)
    assert_failed(client, feed(client, response(client, 1, size=20)), 1, MessageTooLarge)


def test_goaway(client: ClientSession) -> None:
    """GoAway is reported; the session then refuses new calls but open ones go on."""
    client.send_start(METHOD)
    assert feed(client, bridge_pb2.Frame(goaway=bridge_pb2.GoAway(reason="bye"))) == [
        GoAwayReceived("bye")
    ]
    assert not client.accepting_calls
    with pytest.raises(InvalidState, match="no new calls"):
        client.send_start(METHOD)
    assert isinstance(feed(client, status(1))[0], CallEnded)


def test_stream_ids_run_out(client: ClientSession) -> None:
    """When the uint32 ids are used up the session accepts no new calls."""
    client.highest_stream_id = MAX_STREAM_ID - 1
    assert client.send_start(METHOD) == MAX_STREAM_ID
    assert client.next_stream_id() == 0
    assert not client.accepting_calls


def test_eof_fails_open_calls(client: ClientSession) -> None:
    """receive_eof fails every open call with CONNECTION_LOST carrying the close code."""
    client.send_start(METHOD)
    client.receive_eof(1011)
    (event,) = client.events_received()
    assert isinstance(event, StreamError)
    assert isinstance(event.error, ConnectionLost)
    assert event.error.close_code == 1011
    with pytest.raises(InvalidState):
        client.send_start(METHOD)


def test_ping_pong(client: ClientSession) -> None:
    """The client answers Ping with Pong and reports Pong."""
    assert feed(client, bridge_pb2.Frame(ping=bridge_pb2.Ping(nonce=3))) == []
    assert sent(client) == [bridge_pb2.Frame(pong=bridge_pb2.Pong(nonce=3))]
    assert feed(client, bridge_pb2.Frame(pong=bridge_pb2.Pong(nonce=4))) == [PongReceived(4)]


def test_client_and_server_sessions_interoperate(codec: Codec) -> None:
    """A call runs end to end between a ClientSession and a ServerSession."""
    client = ClientSession(codec)
    server = ServerSession(type(codec)(subprotocol=codec.subprotocol))
    stream_id = client.send_start(METHOD, [("a", "b")], timeout=5.0)
    client.send_message(stream_id, agent_service_pb2.SendRequest())
    client.send_half_close(stream_id)
    for data in client.data_to_send():
        server.receive_data(data, 10.0)
    started, received, closed = server.events_received()
    assert started == CallStarted(1, METHOD, (("a", "b"),), 5.0, 15.0)
    assert isinstance(received, MessageReceived)
    assert closed == HalfClosed(1)
    server.send_message(1, agent_service_pb2.SendResponse())
    server.send_error(1, NotFound("missing"))
    for data in server.data_to_send():
        client.receive_data(data, 10.0)
    message, ended = client.events_received()
    assert isinstance(message, MessageReceived)
    client.codec.unpack_message(message.message_frame, agent_service_pb2.SendResponse)
    assert isinstance(ended, CallEnded)
    assert isinstance(from_status(ended.status), NotFound)


def test_client_cancel_reaches_the_server(codec: Codec) -> None:
    """A client Cancel is reported by the server, whose CANCELLED answer the client ignores."""
    client = ClientSession(codec)
    server = ServerSession(type(codec)(subprotocol=codec.subprotocol))
    stream_id = client.send_start(METHOD)
    client.send_cancel(stream_id, "stop")
    for data in client.data_to_send():
        server.receive_data(data, 0.0)
    assert server.events_received()[1] == CallCancelled(1, "stop")
    for data in server.data_to_send():
        client.receive_data(data, 0.0)
    assert client.events_received() == []


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.one_of(st.binary(max_size=64), st.text(max_size=64)), max_size=8))
def test_arbitrary_input_never_raises(codec: Codec, chunks: list[bytes | str]) -> None:
    """Arbitrary data only ever produces events, with any violation last."""
    client = ClientSession(type(codec)(subprotocol=codec.subprotocol))
    client.send_start(METHOD)
    client.send_start(METHOD)
    for chunk in chunks:
        client.receive_data(chunk, 0.0)
    events = client.events_received()
    violations = [i for i, e in enumerate(events) if isinstance(e, ProtocolViolation)]
    assert violations in ([], [len(events) - 1])


_KINDS = [
    "start",
    "message",
    "status+",
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
        st.tuples(st.sampled_from(_KINDS), st.integers(min_value=0, max_value=3)), max_size=30
    )
)
def test_server_frame_sequences_never_raise(
    codec: Codec, script: list[tuple[str | None, int]]
) -> None:
    """Any server frame sequence is handled without raising; nothing is sent after Cancel."""
    client = ClientSession(type(codec)(subprotocol=codec.subprotocol))
    for _ in range(3):
        client.send_start(METHOD)
    sent(client)
    cancelled: set[int] = set()
    for kind, stream_id in script:
        frame = bridge_pb2.Frame(stream_id=stream_id)
        if kind == "message":
            frame = response(client, stream_id)
        elif kind == "status+":
            frame = status_with_response(client, stream_id)
        elif kind is not None:
            getattr(frame, kind).SetInParent()
        feed(client, frame)
        for out in sent(client):
            assert out.stream_id not in cancelled
            if out.HasField("cancel"):
                cancelled.add(out.stream_id)


# -- combined frames (bridge.proto "Combined frames") ---------------------------------------


def test_send_start_with_the_request_is_one_frame(client: ClientSession) -> None:
    """send_start(message=..., half_close=True) queues one CallStart carrying both."""
    request = agent_service_pb2.SendRequest()
    request.envelope.id = "e1"
    stream_id = client.send_start(
        METHOD, [("k", "v")], timeout=2.0, message=request, half_close=True
    )
    (frame,) = sent(client)
    assert frame.stream_id == stream_id == 1
    assert frame.start.method == METHOD
    assert [entry.key for entry in frame.start.metadata] == ["k"]
    assert frame.start.timeout.ToNanoseconds() == 2_000_000_000
    assert frame.start.half_close
    assert client.codec.unpack_message(frame.start.message, type(request)) == request
    assert client.streams[stream_id].state is StreamState.HALF_CLOSED_REMOTE
    with pytest.raises(InvalidState, match="half-closed"):
        client.send_message(stream_id, request)
    with pytest.raises(InvalidState):
        client.send_half_close(stream_id)


def test_send_start_with_a_first_message_only(client: ClientSession) -> None:
    """Without half_close, more messages and a HalfClose may follow the combined CallStart."""
    stream_id = client.send_start(METHOD, message=agent_service_pb2.SendRequest())
    assert client.send_message(stream_id, agent_service_pb2.SendRequest())
    assert client.send_half_close(stream_id)
    kinds = [frame.WhichOneof("kind") for frame in sent(client)]
    assert kinds == ["start", "message", "half_close"]


def test_send_start_with_a_request_too_large(codec: Codec) -> None:
    """A first message over the limit raises MessageTooLarge: no call opened, nothing queued."""
    client = ClientSession(codec, Limits(max_message_bytes=5))
    big = agent_service_pb2.EnvelopeError(envelope_id="x" * 10)
    with pytest.raises(MessageTooLarge):
        client.send_start(METHOD, message=big, half_close=True)
    assert sent(client) == []
    assert client.streams == {}
    assert client.next_stream_id() == 1


def test_status_with_a_response(client: ClientSession) -> None:
    """A CallStatus carrying a message is a MessageReceived, then the CallEnded."""
    client.send_start(METHOD, message=agent_service_pb2.SendRequest(), half_close=True)
    sent(client)
    trailer = bridge_pb2.MetadataEntry(key="t", text="w")
    message, ended = feed(client, status_with_response(client, 1, trailers=(trailer,)))
    assert isinstance(message, MessageReceived)
    body = client.codec.unpack_message(message.message_frame, agent_service_pb2.EnvelopeError)
    assert body.envelope_id == "x"
    assert isinstance(ended, CallEnded)
    assert (ended.status.code, ended.trailers) == (0, (("t", "w"),))
    assert not client.is_open(1)
    assert sent(client) == []


def test_status_with_a_response_after_headers_and_messages(client: ClientSession) -> None:
    """The combined CallStatus may follow headers and other messages (a streamed answer)."""
    client.send_start(METHOD)
    events = feed(client, headers(1), response(client, 1), status_with_response(client, 1))
    assert [type(event) for event in events] == [
        HeadersReceived,
        MessageReceived,
        MessageReceived,
        CallEnded,
    ]


def test_error_status_with_a_response(client: ClientSession) -> None:
    """An error status may carry a message too: it is delivered, then the error."""
    client.send_start(METHOD)
    message, ended = feed(client, status_with_response(client, 1, code=Code.NOT_FOUND))
    assert isinstance(message, MessageReceived)
    assert isinstance(ended, CallEnded)
    assert from_status(ended.status).code is Code.NOT_FOUND


def test_status_with_a_response_too_large(codec: Codec) -> None:
    """The size limit applies to the message in a CallStatus; the status is not reported."""
    client = ClientSession(codec, Limits(max_message_bytes=10))
    client.send_start(METHOD)
    sent(client)
    assert_failed(
        client, feed(client, status_with_response(client, 1, size=20)), 1, MessageTooLarge
    )


def test_status_with_a_response_of_the_wrong_body_kind(client: ClientSession) -> None:
    """The message in a CallStatus must use a body kind of the subprotocol (asap.v1.proto: only
    ``binary``; asap.v1.json takes both, so there an empty body is the wrong kind)."""
    wrong = bridge_pb2.MessageFrame()
    if client.codec.body_kind == "binary":
        wrong.typed.Pack(agent_service_pb2.EnvelopeError())
    client.send_start(METHOD)
    sent(client)
    assert_failed(
        client, feed(client, status_with_response(client, 1, body=wrong)), 1, MalformedFrame
    )


def test_status_with_a_response_and_bad_trailers(client: ClientSession) -> None:
    """As with the separate frames: the message is delivered, then the bad trailers fail the call."""
    client.send_start(METHOD)
    sent(client)
    bad = bridge_pb2.MetadataEntry(key="x-bin", text="v")
    events = feed(client, status_with_response(client, 1, trailers=(bad,)))
    assert isinstance(events[0], MessageReceived)
    assert_failed(client, events[1:], 1, MalformedFrame)


@pytest.mark.parametrize("combine", [True, False], ids=["combined", "separate"])
def test_sessions_interoperate_in_both_forms(codec: Codec, combine: bool) -> None:
    """A unary call end to end: one frame each way when the client combines, else three and two."""
    client = ClientSession(codec)
    server = ServerSession(type(codec)(subprotocol=codec.subprotocol))
    request = agent_service_pb2.SendRequest()
    request.envelope.id = "e1"
    if combine:
        stream_id = client.send_start(METHOD, timeout=5.0, message=request, half_close=True)
    else:
        stream_id = client.send_start(METHOD, timeout=5.0)
        client.send_message(stream_id, request)
        client.send_half_close(stream_id)
    requests = client.data_to_send()
    assert len(requests) == (1 if combine else 3)
    for data in requests:
        server.receive_data(data, 10.0)
    events = server.events_received()
    if combine:  # one event: the call arrives complete
        (started,) = events
        assert isinstance(started, CallStarted)
        assert started.message is not None
        assert started.half_closed
        body = started.message
    else:
        started, received, closed = events
        assert isinstance(received, MessageReceived)
        assert closed == HalfClosed(1)
        body = received.message_frame
    assert isinstance(started, CallStarted)
    assert (started.stream_id, started.method, started.timeout, started.deadline) == (
        1,
        METHOD,
        5.0,
        15.0,
    )
    assert server.codec.unpack_message(body, type(request)) == request
    answer = agent_service_pb2.SendResponse()
    answer.envelope.id = "r1"
    assert server.send_status(stream_id, status_pb2.Status(), message=answer)
    responses = server.data_to_send()
    assert len(responses) == (1 if combine else 2)
    for data in responses:
        client.receive_data(data, 10.0)
    message, ended = client.events_received()
    assert isinstance(message, MessageReceived)
    assert client.codec.unpack_message(message.message_frame, type(answer)) == answer
    assert isinstance(ended, CallEnded)
    assert ended.status.code == 0
