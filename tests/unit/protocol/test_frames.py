"""Unit tests for asap.protocol.frames: both subprotocols' codecs, errors and metadata rules."""

from __future__ import annotations

import contextlib
import json

import pytest
from google.protobuf import duration_pb2, struct_pb2
from google.protobuf.message import Message
from hypothesis import example, given
from hypothesis import strategies as st

from asap.errors import (
    AsapError,
    MalformedFrame,
    MessageTooLarge,
    RateLimited,
    from_status,
    to_status,
)
from asap.protocol.frames import (
    DEFAULT_PATH,
    FLOW_CONTROLLED,
    LEGACY_SUBPROTOCOL_JSON,
    MAX_STREAM_ID,
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_PROTO,
    SUBPROTOCOLS,
    CloseCode,
    Codec,
    FrameError,
    JsonCodec,
    ProtoCodec,
    codec_for,
    varint,
)
from asap.v1 import agent_service_pb2, bridge_pb2, envelope_pb2, status_pb2


CODECS = [ProtoCodec, JsonCodec]


@pytest.fixture(params=CODECS, ids=["proto", "json"])
def codec(request: pytest.FixtureRequest) -> Codec:
    cls: type[Codec] = request.param
    return cls()


def _request() -> agent_service_pb2.SendRequest:
    return agent_service_pb2.SendRequest(
        envelope=envelope_pb2.Envelope(id="e1", sender="urn:asap:agent:a", requires_ack=True)
    )


FRAMES = [
    bridge_pb2.Frame(
        stream_id=1,
        start=bridge_pb2.CallStart(
            method="/asap.v1.AgentService/Send",
            metadata=[
                bridge_pb2.MetadataEntry(key="k", text="v"),
                bridge_pb2.MetadataEntry(key="k-bin", binary=b"\x00\xff"),
            ],
            timeout=duration_pb2.Duration(seconds=1, nanos=500_000_000),
        ),
    ),
    bridge_pb2.Frame(stream_id=2, half_close=bridge_pb2.HalfClose()),
    bridge_pb2.Frame(stream_id=3, cancel=bridge_pb2.Cancel(reason="bored")),
    bridge_pb2.Frame(stream_id=4, headers=bridge_pb2.HeadersFrame()),
    bridge_pb2.Frame(stream_id=5, status=bridge_pb2.CallStatus(status=to_status(RateLimited()))),
    bridge_pb2.Frame(ping=bridge_pb2.Ping(nonce=2**64 - 1)),
    bridge_pb2.Frame(pong=bridge_pb2.Pong(nonce=7)),
    bridge_pb2.Frame(goaway=bridge_pb2.GoAway(reason="draining")),
    bridge_pb2.Frame(
        stream_id=6,
        start=bridge_pb2.CallStart(
            method="/asap.v1.AgentService/Send",
            message=bridge_pb2.MessageFrame(binary=b"\x0a\x00"),
            half_close=True,
        ),
    ),
    bridge_pb2.Frame(
        stream_id=7,
        status=bridge_pb2.CallStatus(message=bridge_pb2.MessageFrame(binary=b"\x0a\x00")),
    ),
]


def test_constants() -> None:
    """Subprotocol names, preference order and the default path match bridge.proto."""
    assert SUBPROTOCOLS == (
        "asap.v1.1.proto",
        "asap.v1.1.json",
        "asap.v1.proto",
        "asap.v1.json",
    )
    assert SUBPROTOCOLS[:2] == (SUBPROTOCOL_PROTO, SUBPROTOCOL_JSON)
    assert frozenset(SUBPROTOCOLS[:2]) == FLOW_CONTROLLED
    assert DEFAULT_PATH == "/asap/v1/ws"


def test_close_codes() -> None:
    """CloseCode has exactly the codes bridge.proto lists."""
    assert sorted(int(code) for code in CloseCode) == [
        1000,
        1001,
        1002,
        1007,
        1008,
        1009,
        1011,
        1013,
    ]


def test_frame_error_is_not_an_asap_error() -> None:
    """FrameError is connection-level: it never travels as a call status."""
    error = FrameError(CloseCode.PROTOCOL_ERROR, "bad", stream_id=3)
    assert not isinstance(error, AsapError)
    assert (error.code, error.reason, error.stream_id) == (CloseCode.PROTOCOL_ERROR, "bad", 3)
    assert repr(error) == "FrameError(<CloseCode.PROTOCOL_ERROR: 1002>, 'bad', stream_id=3)"


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f.WhichOneof("kind"))
def test_round_trip(codec: Codec, frame: bridge_pb2.Frame) -> None:
    """Every frame kind survives encode then decode."""
    assert codec.decode(codec.encode(frame)) == frame


def test_proto_encodes_binary_and_json_text() -> None:
    """The proto codec produces bytes and the JSON codec str."""
    frame = FRAMES[1]
    assert isinstance(ProtoCodec().encode(frame), bytes)
    assert JsonCodec().encode(frame) == '{"streamId":2,"halfClose":{}}'


def test_json_is_canonical_with_typed_messages() -> None:
    """JSON frames use lowerCamelCase names and an Any with "@type" for the message."""
    codec = JsonCodec()
    data = json.loads(codec.encode_message(9, _request()))
    typed = data["message"]["typed"]
    assert data["streamId"] == 9
    assert typed["@type"] == "type.googleapis.com/asap.v1.SendRequest"
    assert typed["envelope"]["requiresAck"] is True


def test_json_status_details_resolve() -> None:
    """Status details (google.rpc ErrorInfo, RetryInfo) encode and decode through JSON."""
    codec = JsonCodec()
    status = to_status(RateLimited(retry_after=2.5))
    frame = codec.decode(
        codec.encode(bridge_pb2.Frame(stream_id=1, status=bridge_pb2.CallStatus(status=status)))
    )
    error = from_status(frame.status.status)
    assert isinstance(error, RateLimited)
    assert error.retry_after == 2.5


def test_json_ignores_unknown_fields() -> None:
    """Unknown JSON fields are ignored, as unknown binary fields are."""
    frame = JsonCodec().decode('{"streamId": 1, "halfClose": {}, "futureField": 3}')
    assert frame == bridge_pb2.Frame(stream_id=1, half_close=bridge_pb2.HalfClose())


def test_text_on_proto_is_protocol_error() -> None:
    """A text message under asap.v1.proto raises FrameError 1002."""
    with pytest.raises(FrameError) as info:
        ProtoCodec().decode("{}")
    assert info.value.code is CloseCode.PROTOCOL_ERROR
    assert info.value.stream_id is None


def test_binary_on_json_is_protocol_error() -> None:
    """A binary message under asap.v1.json raises FrameError 1002."""
    with pytest.raises(FrameError) as info:
        JsonCodec().decode(b"{}")
    assert info.value.code is CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize("text", ["{", "not json", "[" * 100_000, '{"a": 1}}'])
def test_invalid_json_is_invalid_payload(text: str) -> None:
    """Text that is not JSON raises FrameError 1007."""
    with pytest.raises(FrameError) as info:
        JsonCodec().decode(text)
    assert info.value.code is CloseCode.INVALID_PAYLOAD


@pytest.mark.parametrize("text", ["[]", "3", '"x"', "null"])
def test_json_that_is_not_an_object(text: str) -> None:
    """JSON that is not an object raises FrameError 1002."""
    with pytest.raises(FrameError) as info:
        JsonCodec().decode(text)
    assert info.value.code is CloseCode.PROTOCOL_ERROR
    assert info.value.stream_id is None


@pytest.mark.parametrize(
    ("text", "stream_id"),
    [
        ('{"streamId": 5, "ping": {"nonce": "x"}}', 5),
        ('{"streamId": "6", "message": {"typed": {"value": "no @type"}}}', 6),
        ('{"stream_id": 7, "cancel": 3}', 7),
        ('{"streamId": 0, "cancel": 3}', None),
        ('{"streamId": true, "cancel": 3}', None),
        ('{"streamId": 4294967296, "cancel": 3}', None),
        ('{"cancel": 3}', None),
        ('{"streamId": 1, "message": {"typed": {"@type": 5}}}', 1),
    ],
)
def test_json_not_a_frame_recovers_stream_id(text: str, stream_id: int | None) -> None:
    """JSON that is not a Frame raises 1002 and names its stream when streamId is readable."""
    with pytest.raises(FrameError) as info:
        JsonCodec().decode(text)
    assert info.value.code is CloseCode.PROTOCOL_ERROR
    assert info.value.stream_id == stream_id


@pytest.mark.parametrize(
    ("data", "stream_id"),
    [
        (b"\xff\xff\xff", None),
        (b"\x08\x05\xff", 5),
        (b"\x08\x80\x01\xff", 128),
        (b"\x08\x00\xff", None),
        (b"\x08\x80\x80\x80\x80\x10\xff", None),
        (b"\x08\x80", None),
    ],
)
def test_undecodable_binary_recovers_stream_id(data: bytes, stream_id: int | None) -> None:
    """Bytes that are not a Frame raise 1002 and name a leading stream id when there is one."""
    with pytest.raises(FrameError) as info:
        ProtoCodec().decode(data)
    assert info.value.code is CloseCode.PROTOCOL_ERROR
    assert info.value.stream_id == stream_id


def test_oversized_binary_message() -> None:
    """A binary message over the frame cap raises FrameError 1009."""
    codec = ProtoCodec(max_frame_bytes=10)
    assert codec.decode(b"\x08\x01" + b"\x22\x00" * 4) is not None
    with pytest.raises(FrameError) as info:
        codec.decode(b"\x08\x01" + b"\x22\x00" * 5)
    assert info.value.code is CloseCode.MESSAGE_TOO_BIG


@pytest.mark.parametrize(
    ("padding", "too_big"), [("a" * 10, False), ("é" * 5, False), ("é" * 6, True)]
)
def test_oversized_text_counts_utf8_bytes(padding: str, too_big: bool) -> None:
    """The JSON frame cap counts UTF-8 bytes, not characters."""
    text = '{"goaway":{"reason":"%s"}}' % padding  # noqa: UP031
    codec = JsonCodec(max_frame_bytes=len(text.encode()) - (2 if too_big else 0))
    if too_big:
        with pytest.raises(FrameError) as info:
            codec.decode(text)
        assert info.value.code is CloseCode.MESSAGE_TOO_BIG
    else:
        assert codec.decode(text).goaway.reason == padding


def test_text_longer_than_cap_in_characters() -> None:
    """Text with more characters than the cap has bytes is refused without measuring it."""
    with pytest.raises(FrameError) as info:
        JsonCodec(max_frame_bytes=4).decode("{   }")
    assert info.value.code is CloseCode.MESSAGE_TOO_BIG


def test_pack_unpack_round_trip(codec: Codec) -> None:
    """A message packed by a codec unpacks to an equal message."""
    body = codec.pack_message(_request())
    assert body.WhichOneof("body") == codec.body_kind
    assert codec.unpack_message(body, agent_service_pb2.SendRequest) == _request()


def test_unpack_typed_body_under_proto() -> None:
    """asap.v1.proto takes only ``binary`` bodies: a ``typed`` one raises MalformedFrame."""
    with pytest.raises(MalformedFrame):
        ProtoCodec().unpack_message(
            JsonCodec().pack_message(_request()), agent_service_pb2.SendRequest
        )


def test_unpack_binary_body_under_json() -> None:
    """asap.v1.json also takes ``binary`` bodies (the form that keeps unknown fields)."""
    body = ProtoCodec().pack_message(_request())
    assert JsonCodec().unpack_message(body, agent_service_pb2.SendRequest) == _request()


def test_unpack_missing_body(codec: Codec) -> None:
    """A MessageFrame with no body raises MalformedFrame."""
    with pytest.raises(MalformedFrame):
        codec.unpack_message(bridge_pb2.MessageFrame(), agent_service_pb2.SendRequest)


def test_unpack_wrong_type_in_json() -> None:
    """A typed body of another message type raises MalformedFrame."""
    body = JsonCodec().pack_message(struct_pb2.Value(string_value="x"))
    with pytest.raises(MalformedFrame, match=r"expected a asap\.v1\.SendRequest"):
        JsonCodec().unpack_message(body, agent_service_pb2.SendRequest)


def test_unpack_bytes_that_do_not_parse(codec: Codec) -> None:
    """A body whose bytes do not parse as the type raises MalformedFrame."""
    body = codec.pack_message(_request())
    if codec.body_kind == "binary":
        body.binary = b"\xff\xff"
    else:
        body.typed.value = b"\xff\xff"
    with pytest.raises(MalformedFrame, match="does not parse"):
        codec.unpack_message(body, agent_service_pb2.SendRequest)


@given(
    stream_id=st.integers(min_value=0, max_value=MAX_STREAM_ID),
    payload=st.binary(max_size=300),
)
def test_fast_binary_encoding_matches_protobuf(stream_id: int, payload: bytes) -> None:
    """The hand-framed binary message frame is byte-for-byte protobuf's own encoding."""
    message = struct_pb2.Value(string_value=payload.hex())
    expected = bridge_pb2.Frame(
        stream_id=stream_id, message=bridge_pb2.MessageFrame(binary=message.SerializeToString())
    ).SerializeToString()
    assert ProtoCodec().encode_message(stream_id, message) == expected


@pytest.mark.parametrize("size", [0, 127, 128, 16_383, 16_384, 2_000_000])
def test_fast_binary_encoding_at_varint_boundaries(size: int) -> None:
    """The hand framing is right where varint lengths grow a byte."""
    message = agent_service_pb2.EnvelopeError(envelope_id="x" * size)
    encoded = ProtoCodec().encode_message(300, message)
    frame = ProtoCodec(max_frame_bytes=len(encoded)).decode(encoded)
    assert frame.stream_id == 300
    assert agent_service_pb2.EnvelopeError.FromString(frame.message.binary) == message


def test_encode_message_refuses_large_messages(codec: Codec) -> None:
    """encode_message raises MessageTooLarge over the limit and allows exactly the limit."""
    message = agent_service_pb2.EnvelopeError(envelope_id="x" * 100)
    size = message.ByteSize()
    assert codec.encode_message(1, message, max_message_bytes=size)
    with pytest.raises(MessageTooLarge, match=f"{size} vs. {size - 1}"):
        codec.encode_message(1, message, max_message_bytes=size - 1)


_METADATA = [
    bridge_pb2.MetadataEntry(key="authorization", text="Bearer t"),
    bridge_pb2.MetadataEntry(key="k-bin", binary=b"\x00\xff"),
]


def _start(*, timeout: bool = True) -> bridge_pb2.CallStart:
    return bridge_pb2.CallStart(
        method="/asap.v1.AgentService/Send",
        metadata=_METADATA,
        timeout=duration_pb2.Duration(seconds=3, nanos=7) if timeout else None,
    )


def _protobuf_start(
    stream_id: int, start: bridge_pb2.CallStart, message: Message | None, *, half_close: bool
) -> bytes:
    """What protobuf itself serializes for a combined CallStart (the reference)."""
    combined = bridge_pb2.CallStart()
    combined.CopyFrom(start)
    if message is not None:
        combined.message.binary = message.SerializeToString()
    combined.half_close = half_close
    return bridge_pb2.Frame(stream_id=stream_id, start=combined).SerializeToString()


def _protobuf_status(
    stream_id: int, call_status: bridge_pb2.CallStatus, message: Message | None
) -> bytes:
    combined = bridge_pb2.CallStatus()
    combined.CopyFrom(call_status)
    if message is not None:
        combined.message.binary = message.SerializeToString()
    return bridge_pb2.Frame(stream_id=stream_id, status=combined).SerializeToString()


@given(
    stream_id=st.integers(min_value=0, max_value=MAX_STREAM_ID),
    payload=st.binary(max_size=300),
    half_close=st.booleans(),
    timeout=st.booleans(),
)
def test_combined_start_matches_protobuf(
    stream_id: int, payload: bytes, half_close: bool, timeout: bool
) -> None:
    """The hand-spliced CallStart with a message is byte-for-byte protobuf's own encoding."""
    message = struct_pb2.Value(string_value=payload.hex())
    start = _start(timeout=timeout)
    encoded = ProtoCodec().encode_start(stream_id, start, message, half_close=half_close)
    assert encoded == _protobuf_start(stream_id, start, message, half_close=half_close)


@given(
    stream_id=st.integers(min_value=0, max_value=MAX_STREAM_ID),
    payload=st.binary(max_size=300),
    code=st.integers(min_value=0, max_value=16),
)
def test_combined_status_matches_protobuf(stream_id: int, payload: bytes, code: int) -> None:
    """The hand-spliced CallStatus with a message is byte-for-byte protobuf's own encoding."""
    message = struct_pb2.Value(string_value=payload.hex())
    call_status = bridge_pb2.CallStatus(status=status_pb2.Status(code=code), trailers=_METADATA)
    encoded = ProtoCodec().encode_status(stream_id, call_status, message)
    assert encoded == _protobuf_status(stream_id, call_status, message)


@pytest.mark.parametrize("size", [0, 127, 128, 16_383, 16_384, 2_000_000])
def test_combined_frames_at_varint_boundaries(size: int) -> None:
    """The splice is right where the message's and the outer lengths grow a byte."""
    message = agent_service_pb2.EnvelopeError(envelope_id="x" * size)
    codec = ProtoCodec(max_frame_bytes=10_000_000)
    start = codec.encode_start(300, _start(), message, half_close=True)
    assert start == _protobuf_start(300, _start(), message, half_close=True)
    call_status = bridge_pb2.CallStatus(status=status_pb2.Status())
    assert codec.encode_status(300, call_status, message) == _protobuf_status(
        300, call_status, message
    )


def test_combined_start_without_a_message(codec: Codec) -> None:
    """encode_start without a message is the plain CallStart, with half_close when asked."""
    start = _start()
    assert codec.decode(codec.encode_start(1, start)) == bridge_pb2.Frame(stream_id=1, start=start)
    frame = codec.decode(codec.encode_start(1, start, half_close=True))
    assert frame.start.half_close
    assert not frame.start.HasField("message")


def test_combined_frames_round_trip(codec: Codec) -> None:
    """Both codecs carry the message in their own body kind; the arguments are left unchanged."""
    start = _start()
    frame = codec.decode(codec.encode_start(9, start, _request(), half_close=True))
    assert frame.stream_id == 9
    assert frame.start.method == start.method
    assert list(frame.start.metadata) == list(start.metadata)
    assert frame.start.half_close
    assert frame.start.message.WhichOneof("body") == codec.body_kind
    assert codec.unpack_message(frame.start.message, agent_service_pb2.SendRequest) == _request()
    assert start == _start()

    call_status = bridge_pb2.CallStatus(status=status_pb2.Status(code=5), trailers=_METADATA)
    response = agent_service_pb2.SendResponse(envelope=_request().envelope)
    frame = codec.decode(codec.encode_status(9, call_status, response))
    assert frame.status.status.code == 5
    assert list(frame.status.trailers) == _METADATA
    assert codec.unpack_message(frame.status.message, agent_service_pb2.SendResponse) == response
    assert not call_status.HasField("message")


def test_combined_frames_refuse_large_messages(codec: Codec) -> None:
    """Both combined encoders apply max_message_bytes to the message, as encode_message does."""
    message = agent_service_pb2.EnvelopeError(envelope_id="x" * 100)
    size = message.ByteSize()
    call_status = bridge_pb2.CallStatus()
    assert codec.encode_start(1, _start(), message, max_message_bytes=size)
    assert codec.encode_status(1, call_status, message, max_message_bytes=size)
    with pytest.raises(MessageTooLarge, match=f"{size} vs. {size - 1}"):
        codec.encode_start(1, _start(), message, max_message_bytes=size - 1)
    with pytest.raises(MessageTooLarge, match=f"{size} vs. {size - 1}"):
        codec.encode_status(1, call_status, message, max_message_bytes=size - 1)


def test_combined_encoding_falls_back_when_fields_are_set() -> None:
    """A CallStart or CallStatus that already has the fields is encoded by protobuf, not spliced.

    Splicing would append a second ``message`` field; the argument wins as in the other codec.
    """
    codec = ProtoCodec()
    start = _start()
    start.message.binary = b"old"
    start.half_close = True
    frame = codec.decode(codec.encode_start(1, start, _request(), half_close=True))
    assert codec.unpack_message(frame.start.message, agent_service_pb2.SendRequest) == _request()
    call_status = bridge_pb2.CallStatus(message=bridge_pb2.MessageFrame(binary=b"old"))
    frame = codec.decode(codec.encode_status(1, call_status, _request()))
    assert codec.unpack_message(frame.status.message, agent_service_pb2.SendRequest) == _request()


def test_combined_frames_stream_id_range() -> None:
    """A stream id outside uint32 raises ValueError."""
    with pytest.raises(ValueError, match="out of range"):
        ProtoCodec().encode_start(MAX_STREAM_ID + 1, _start(), _request())
    with pytest.raises(ValueError, match="out of range"):
        ProtoCodec().encode_status(MAX_STREAM_ID + 1, bridge_pb2.CallStatus(), _request())


@given(value=st.integers(min_value=0, max_value=2**64 - 1))
@example(value=0x7F)
@example(value=0x80)
@example(value=0x3FFF)
@example(value=0x4000)
def test_varint_matches_protobuf(value: int) -> None:
    """varint (with its one- and two-byte fast paths) is protobuf's varint encoding."""
    encoded = bridge_pb2.Ping(nonce=value).SerializeToString()
    assert (b"\x08" + varint(value) if value else b"") == encoded


def test_encode_message_stream_id_range() -> None:
    """A stream id outside uint32 raises ValueError."""
    with pytest.raises(ValueError, match="out of range"):
        ProtoCodec().encode_message(MAX_STREAM_ID + 1, _request())


def test_body_size_is_the_message_size(codec: Codec) -> None:
    """body_size is the serialized size of the carried message."""
    assert codec.body_size(codec.pack_message(_request())) == _request().ByteSize()
    assert codec.body_size(bridge_pb2.MessageFrame()) == 0


def test_codec_for() -> None:
    """codec_for returns each subprotocol's codec with the given cap, and refuses others."""
    proto = codec_for(SUBPROTOCOL_PROTO, max_frame_bytes=5)
    assert isinstance(proto, ProtoCodec)
    assert proto.max_frame_bytes == 5
    assert proto.flow_controlled
    assert isinstance(codec_for(SUBPROTOCOL_JSON), JsonCodec)
    legacy = codec_for(LEGACY_SUBPROTOCOL_JSON)
    assert isinstance(legacy, JsonCodec)
    assert legacy.subprotocol == LEGACY_SUBPROTOCOL_JSON
    assert not legacy.flow_controlled
    with pytest.raises(ValueError, match="unsupported"):
        codec_for("asap.v2.proto")


def test_codec_rejects_zero_cap() -> None:
    """A frame cap below 1 raises ValueError."""
    with pytest.raises(ValueError, match="at least 1"):
        ProtoCodec(max_frame_bytes=0)


@given(data=st.binary(max_size=200))
def test_proto_decode_raises_only_frame_error(data: bytes) -> None:
    """Arbitrary bytes either decode or raise FrameError."""
    with contextlib.suppress(FrameError):
        ProtoCodec().decode(data)


@given(
    data=st.one_of(
        st.text(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        ["streamId", "start", "message", "typed", "@type", "ping", "x"]
                    ),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=20,
        ).map(json.dumps),
    )
)
def test_json_decode_raises_only_frame_error(data: str) -> None:
    """Arbitrary text or JSON either decodes or raises FrameError."""
    with contextlib.suppress(FrameError):
        JsonCodec().decode(data)


def test_json_integer_too_large_for_a_double_is_a_stream_error() -> None:
    """``10**400`` where protobuf wants a double (a Struct value) fails the frame's stream only."""
    text = (
        '{"streamId":5,"start":{"method":"/asap.v1.AgentService/Send","message":{"typed":'
        '{"@type":"type.googleapis.com/asap.v1.SendRequest","envelope":{"taskRequest":'
        '{"input":{"n":' + str(10**400) + "}}}}}}}"
    )
    with pytest.raises(FrameError) as caught:
        JsonCodec().decode(text)
    assert (caught.value.code, caught.value.stream_id) == (CloseCode.PROTOCOL_ERROR, 5)
