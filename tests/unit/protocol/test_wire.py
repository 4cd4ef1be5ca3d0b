"""The hand reader of unary frames (asap.protocol.wire) against protobuf's own parser.

Two properties: whatever the reader accepts, protobuf parses to the same values (it never reads a
frame differently, and never accepts one protobuf refuses); and what our own encoders write for a
unary call is always accepted (the fast path does not silently stop being taken).
"""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from asap.protocol.client_session import ClientSession
from asap.protocol.frames import OK, OK_CALL_STATUS, ProtoCodec
from asap.protocol.session import ServerSession
from asap.protocol.wire import StartFields, StatusFields, read_start, read_status
from asap.v1 import agent_service_pb2, bridge_pb2, envelope_pb2, status_pb2


def parsed(data: bytes) -> bridge_pb2.Frame | None:
    try:
        return bridge_pb2.Frame.FromString(data)
    except DecodeError:
        return None


def assert_same_start(fields: StartFields, data: bytes) -> None:
    frame = parsed(data)
    assert frame is not None, "the reader accepted a frame protobuf refuses"
    assert frame.WhichOneof("kind") == "start"
    start = frame.start
    assert fields.stream_id == frame.stream_id
    assert fields.method == start.method
    assert not start.metadata
    if start.HasField("timeout"):
        assert fields.timeout == (start.timeout.seconds, start.timeout.nanos)
    else:
        assert fields.timeout is None
    if start.HasField("message"):
        assert start.message.WhichOneof("body") == "binary"
        assert fields.body == start.message.binary
    else:
        assert fields.body is None
    assert fields.half_close == start.half_close


def assert_same_status(fields: StatusFields, data: bytes) -> None:
    frame = parsed(data)
    assert frame is not None, "the reader accepted a frame protobuf refuses"
    assert frame.WhichOneof("kind") == "status"
    call_status = frame.status
    assert fields.stream_id == frame.stream_id
    assert call_status.status == status_pb2.Status()
    assert not call_status.trailers
    if call_status.HasField("message"):
        assert call_status.message.WhichOneof("body") == "binary"
        assert fields.body == call_status.message.binary
    else:
        assert fields.body is None


def request(size: int) -> agent_service_pb2.SendRequest:
    return agent_service_pb2.SendRequest(envelope=envelope_pb2.Envelope(id="e" * size))


# -- what our encoders write is read by hand -------------------------------------------------


@pytest.mark.parametrize("stream_id", [1, 127, 128, 2**31, 2**32 - 1])
@pytest.mark.parametrize("timeout", [None, 0.0, 0.5, 29.999, 86400.0 * 365])
@pytest.mark.parametrize("size", [0, 100, 20_000])
@pytest.mark.parametrize("half_close", [True, False])
def test_a_clients_unary_call_start_is_read_by_hand(
    stream_id: int, timeout: float | None, size: int, half_close: bool
) -> None:
    """ClientSession's combined CallStart, however long its fields, takes the hand reader."""
    session = ClientSession(ProtoCodec())
    session.data_to_send()  # Settings
    session.highest_stream_id = stream_id - 1
    session.send_start(
        "/asap.v1.AgentService/Send",
        (),
        timeout,
        message=request(size),
        half_close=half_close,
    )
    [data] = session.data_to_send()
    assert isinstance(data, bytes)
    fields = read_start(data)
    assert fields is not None
    assert_same_start(fields, data)
    assert fields.body == request(size).SerializeToString()


@pytest.mark.parametrize("size", [0, 100, 20_000])
def test_a_servers_unary_answer_is_read_by_hand(size: int) -> None:
    """ServerSession's OK CallStatus carrying the response takes the hand reader."""
    session = ServerSession(ProtoCodec())
    session.data_to_send()  # Settings
    # A client that sent a combined CallStart gets the combined answer.
    start = bridge_pb2.CallStart(method="/m", half_close=True)
    start.message.binary = request(1).SerializeToString()
    session.receive_data(bridge_pb2.Frame(stream_id=7, start=start).SerializeToString(), 0.0)
    response = agent_service_pb2.SendResponse(envelope=envelope_pb2.Envelope(id="r" * size))
    session.data_to_send()
    assert session.send_status(7, OK, message=response)
    [data] = session.data_to_send()
    assert isinstance(data, bytes)
    fields = read_status(data)
    assert fields is not None
    assert_same_status(fields, data)
    assert fields.body == response.SerializeToString()


def test_a_status_without_a_message_or_with_an_absent_status_is_read() -> None:
    for call_status in (OK_CALL_STATUS, bridge_pb2.CallStatus()):
        data = bridge_pb2.Frame(stream_id=3, status=call_status).SerializeToString()
        fields = read_status(data)
        assert fields is not None
        assert_same_status(fields, data)
        assert fields.body is None


# -- what is not canonical is left to protobuf ------------------------------------------------


def start_frame(**fields: object) -> bytes:
    return bridge_pb2.Frame(stream_id=1, start=bridge_pb2.CallStart(**fields)).SerializeToString()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("metadata", start_frame(metadata=[bridge_pb2.MetadataEntry(key="k", text="v")])),
        (
            "typed body",
            start_frame(message=bridge_pb2.MessageFrame(typed=any_pb2.Any(type_url="x/y"))),
        ),
        ("empty body", start_frame(message=bridge_pb2.MessageFrame())),
        ("stream 0", bridge_pb2.Frame(start=bridge_pb2.CallStart()).SerializeToString()),
        (
            "another kind",
            bridge_pb2.Frame(stream_id=1, cancel=bridge_pb2.Cancel()).SerializeToString(),
        ),
        ("negative timeout", start_frame(timeout={"seconds": -1})),
        ("negative nanos", start_frame(timeout={"nanos": -1})),
        ("invalid UTF-8 method", b"\x08\x01\x12\x03\x0a\x01\xff"),
        ("fields out of order", b"\x08\x01\x12\x05\x28\x01\x0a\x01m"),
        ("a field twice", b"\x08\x01\x12\x06\x0a\x01m\x0a\x01n"),
        ("trailing bytes", start_frame(method="m") + b"\x00"),
        ("an unknown field", b"\x08\x01\x12\x02\x30\x01"),
        ("a cut length", b"\x08\x01\x12\x05\x0a\x09m"),
        ("a cut varint", b"\x08\x81"),
        ("stream id last", b"\x12\x00\x08\x01"),
        ("half_close of 2", b"\x08\x01\x12\x02\x28\x02"),
        ("empty", b""),
    ],
)
def test_other_call_starts_are_left_to_protobuf(name: str, data: bytes) -> None:
    assert read_start(data) is None, name


def status_frame(call_status: bridge_pb2.CallStatus) -> bytes:
    return bridge_pb2.Frame(stream_id=1, status=call_status).SerializeToString()


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("an error", status_frame(bridge_pb2.CallStatus(status=status_pb2.Status(code=5)))),
        (
            "OK with a message",
            status_frame(bridge_pb2.CallStatus(status=status_pb2.Status(message="m"))),
        ),
        (
            "trailers",
            status_frame(
                bridge_pb2.CallStatus(trailers=[bridge_pb2.MetadataEntry(key="k", text="v")])
            ),
        ),
        (
            "typed body",
            status_frame(
                bridge_pb2.CallStatus(
                    message=bridge_pb2.MessageFrame(typed=any_pb2.Any(type_url="a/b"))
                )
            ),
        ),
        ("a start", start_frame(method="m")),
    ],
)
def test_other_statuses_are_left_to_protobuf(name: str, data: bytes) -> None:
    assert read_status(data) is None, name


# -- anything the reader accepts, protobuf reads the same way ---------------------------------


metadata_entries = st.lists(
    st.builds(bridge_pb2.MetadataEntry, key=st.text(max_size=4), text=st.text(max_size=4)),
    max_size=2,
)


@st.composite
def call_starts(draw: st.DrawFn) -> bytes:
    start = bridge_pb2.CallStart(
        method=draw(st.text(max_size=30)),
        metadata=draw(metadata_entries),
        half_close=draw(st.booleans()),
    )
    if draw(st.booleans()):
        start.timeout.seconds = draw(st.integers(-(2**40), 2**40))
        start.timeout.nanos = draw(st.integers(-(2**31), 2**31 - 1))
    body = draw(st.sampled_from(["none", "binary", "typed", "empty"]))
    if body == "binary":
        start.message.binary = draw(st.binary(max_size=300))
    elif body == "typed":
        start.message.typed.type_url = "type.googleapis.com/x"
    elif body == "empty":
        start.message.SetInParent()
    frame = bridge_pb2.Frame(stream_id=draw(st.integers(0, 2**32 - 1)), start=start)
    return frame.SerializeToString()


@st.composite
def call_statuses(draw: st.DrawFn) -> bytes:
    call_status = bridge_pb2.CallStatus()
    if draw(st.booleans()):
        call_status.status.code = draw(st.sampled_from([0, 0, 2, 5]))
        call_status.status.message = draw(st.sampled_from(["", "", "bad"]))
    call_status.trailers.extend(draw(metadata_entries))
    if draw(st.booleans()):
        call_status.message.binary = draw(st.binary(max_size=300))
    frame = bridge_pb2.Frame(stream_id=draw(st.integers(0, 2**32 - 1)), status=call_status)
    return frame.SerializeToString()


def mutated(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for index, value in edits:
        if out:
            out[index % len(out)] = value
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=3)


@given(data=call_starts(), edits=edits, cut=st.integers(0, 5))
def test_a_start_read_by_hand_is_read_alike_by_protobuf(
    data: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    for candidate in (data, mutated(data, edits), data[: len(data) - cut]):
        fields = read_start(candidate)
        if fields is not None:
            assert_same_start(fields, candidate)


@given(data=call_statuses(), edits=edits, cut=st.integers(0, 5))
def test_a_status_read_by_hand_is_read_alike_by_protobuf(
    data: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    for candidate in (data, mutated(data, edits), data[: len(data) - cut]):
        fields = read_status(candidate)
        if fields is not None:
            assert_same_status(fields, candidate)


@given(data=st.binary(max_size=64))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    for reader in (read_start, read_status):
        fields = reader(data)
        if isinstance(fields, StartFields):
            assert_same_start(fields, data)
        elif isinstance(fields, StatusFields):
            assert_same_status(fields, data)
