"""Bridge revision 2 in the sessions, without sockets: Settings, credit, WindowUpdate, violations,
older peers and unknown frame kinds (bridge.proto "Settings", "Flow control", "Older peers",
"Extensions")."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asap.errors import FlowControlViolation, InvalidState, MalformedFrame
from asap.protocol.client_session import ClientSession
from asap.protocol.events import (
    CallCancelled,
    CallStarted,
    CreditAvailable,
    Event,
    MessageReceived,
    ProtocolViolation,
    SettingsReceived,
    StreamError,
)
from asap.protocol.flow import DEFAULT_WINDOW_BYTES
from asap.protocol.frames import (
    LEGACY_SUBPROTOCOL_PROTO,
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_PROTO,
    CloseCode,
)
from asap.protocol.limits import Limits
from asap.protocol.session import ServerSession, Session
from asap.v1 import agent_service_pb2, bridge_pb2


STREAM = "/asap.v1.AgentService/Stream"
SUBSCRIBE = "/asap.v1.AgentService/Subscribe"
WINDOW = 1000


def request(size: int) -> agent_service_pb2.StreamRequest:
    """A StreamRequest of about ``size`` bytes."""
    message = agent_service_pb2.StreamRequest()
    message.envelope.id = "x" * size
    return message


def response(size: int) -> agent_service_pb2.SubscribeResponse:
    """A SubscribeResponse of about ``size`` bytes."""
    message = agent_service_pb2.SubscribeResponse()
    message.envelope.id = "y" * size
    return message


def deliver(source: Session, target: Session) -> list[Event]:
    """Move everything ``source`` queued to ``target`` and return what ``target`` reported."""
    for data in source.data_to_send():
        target.receive_data(data, 0.0)
    return list(target.events_received())


@pytest.fixture(params=[SUBPROTOCOL_PROTO, SUBPROTOCOL_JSON])
def pair(request: pytest.FixtureRequest) -> tuple[ClientSession, ServerSession]:
    """A connected client and server of revision 2 with 1,000-byte windows, Settings exchanged."""
    limits = Limits(stream_window_bytes=WINDOW)
    client = ClientSession.for_subprotocol(request.param, limits)
    server = ServerSession.for_subprotocol(request.param, limits)
    assert deliver(client, server) == [SettingsReceived(WINDOW, 100)]
    assert deliver(server, client) == [SettingsReceived(WINDOW, limits.max_concurrent_streams)]
    return client, server


def test_each_side_sends_settings_first() -> None:
    """Revision 2: a new session's first frame is its Settings; revision 1 sends nothing."""
    limits = Limits(stream_window_bytes=4096, max_concurrent_streams=7, max_message_bytes=9999)
    server = ServerSession.for_subprotocol(SUBPROTOCOL_PROTO, limits)
    [data] = server.data_to_send()
    assert isinstance(data, bytes)
    frame = bridge_pb2.Frame.FromString(data)
    assert frame.settings == bridge_pb2.Settings(
        initial_window_bytes=4096, max_concurrent_streams=7, max_message_bytes=9999
    )
    client = ClientSession.for_subprotocol(SUBPROTOCOL_PROTO, limits)
    assert client.codec.decode(client.data_to_send()[0]).settings.initial_window_bytes == 4096
    assert ServerSession.for_subprotocol(LEGACY_SUBPROTOCOL_PROTO).data_to_send() == []


def test_client_is_held_to_the_servers_window(pair: tuple[ClientSession, ServerSession]) -> None:
    """The client may overdraw once, then must wait; consuming grants credit back."""
    client, server = pair
    stream_id = client.send_start(STREAM)
    client.send_message(stream_id, request(600))
    client.send_message(stream_id, request(600))  # credit was still positive: overdraw
    assert not client.can_send(stream_id)
    with pytest.raises(InvalidState, match="credit"):
        client.send_message(stream_id, request(10))
    events = deliver(client, server)
    received = [event for event in events if isinstance(event, MessageReceived)]
    assert len(received) == 2
    assert server.buffered_bytes() == sum(event.size for event in received)
    assert deliver(server, client) == []  # nothing consumed: nothing granted
    for event in received:
        server.consume(stream_id, event.size)
    assert server.buffered_bytes() == 0
    assert deliver(server, client) == [CreditAvailable(stream_id)]
    assert client.can_send(stream_id)


def test_server_is_held_to_the_clients_window(pair: tuple[ClientSession, ServerSession]) -> None:
    """A streaming response waits for the client's credit, which it grants as it consumes."""
    client, server = pair
    stream_id = client.send_start(SUBSCRIBE, message=request(10), half_close=True)
    deliver(client, server)
    while server.can_send(stream_id):
        server.send_message(stream_id, response(300))
    events = [event for event in deliver(server, client) if isinstance(event, MessageReceived)]
    sizes = [event.size for event in events]
    assert len(sizes) >= 2
    assert sum(sizes[:-1]) < WINDOW <= sum(sizes)  # the last one overdrew the window
    # The window is exhausted, so the first message consumed is granted back at once (batching
    # at half a window applies while the peer still has credit: test_flow.py).
    client.consume(stream_id, sizes[0])
    assert deliver(client, server) == [CreditAvailable(stream_id)]
    assert server.can_send(stream_id)


def test_a_message_beyond_credit_fails_only_its_stream(
    pair: tuple[ClientSession, ServerSession],
) -> None:
    """Rule 4: the server fails the stream with FLOW_CONTROL_VIOLATION; other streams go on."""
    client, server = pair
    victim = client.send_start(STREAM)
    other = client.send_start(STREAM)
    deliver(client, server)
    data = client.codec.encode_message(victim, request(2000))
    for _ in range(2):  # the second arrives with the window already overdrawn
        server.receive_data(data, 0.0)
    events = list(server.events_received())
    errors = [event for event in events if isinstance(event, StreamError)]
    assert len(errors) == 1
    assert errors[0].stream_id == victim
    assert isinstance(errors[0].error, FlowControlViolation)
    assert errors[0].error.reason == "FLOW_CONTROL_VIOLATION"
    assert server.is_open(other)
    assert not server.closed
    status = server.codec.decode(server.data_to_send()[-1])
    assert status.stream_id == victim
    assert status.status.status.code == 8  # RESOURCE_EXHAUSTED


@pytest.mark.parametrize("increment", [0, 2**31])
def test_bad_window_update_fails_the_stream(
    pair: tuple[ClientSession, ServerSession], increment: int
) -> None:
    """Rule 5: increment 0, or credit past 2^31 - 1, fails the stream with MALFORMED_FRAME."""
    client, server = pair
    stream_id = client.send_start(SUBSCRIBE, message=request(1), half_close=True)
    deliver(client, server)
    update = bridge_pb2.WindowUpdate(increment_bytes=min(increment, 2**32 - 1))
    server.receive_data(
        server.codec.encode(bridge_pb2.Frame(stream_id=stream_id, window_update=update)), 0.0
    )
    [error] = [event for event in server.events_received() if isinstance(event, StreamError)]
    assert isinstance(error.error, MalformedFrame)
    assert not server.closed


def test_window_updates_for_finished_streams_and_stream_zero_are_ignored(
    pair: tuple[ClientSession, ServerSession],
) -> None:
    """Rule 5: late updates and stream 0 (a reserved connection window) change nothing."""
    _, server = pair
    update = bridge_pb2.WindowUpdate(increment_bytes=10)
    for stream_id in (0, 5):
        frame = bridge_pb2.Frame(stream_id=stream_id, window_update=update)
        server.receive_data(server.codec.encode(frame), 0.0)
    events = server.events_received()
    assert [e for e in events if not isinstance(e, StreamError)] == []
    assert not server.closed


def test_no_grant_after_the_peer_can_no_longer_send(
    pair: tuple[ClientSession, ServerSession],
) -> None:
    """A unary request (sent with HalfClose) is consumed without a WindowUpdate."""
    client, server = pair
    stream_id = client.send_start(SUBSCRIBE, message=request(900), half_close=True)
    [started] = deliver(client, server)
    assert isinstance(started, CallStarted)
    assert started.message is not None
    assert started.half_closed
    server.consume(stream_id, started.message_size)
    assert server.data_to_send() == []


def test_settings_change_moves_every_open_stream(
    pair: tuple[ClientSession, ServerSession],
) -> None:
    """A larger initial window from the peer raises the credit of streams already open."""
    client, _ = pair
    stream_id = client.send_start(STREAM)
    client.send_message(stream_id, request(1500))
    assert not client.can_send(stream_id)
    bigger = bridge_pb2.Frame(settings=bridge_pb2.Settings(initial_window_bytes=4 * WINDOW))
    client.receive_data(client.codec.encode(bigger), 0.0)
    assert list(client.events_received()) == [
        CreditAvailable(stream_id),
        SettingsReceived(4 * WINDOW, 100),
    ]
    assert client.peer_window == 4 * WINDOW


def test_defaults_apply_before_the_peers_settings() -> None:
    """Until Settings arrive, a stream starts with 65,536 bytes of credit."""
    client = ClientSession.for_subprotocol(SUBPROTOCOL_PROTO)
    stream_id = client.send_start(STREAM)
    credit = client.streams[stream_id].credit
    assert credit is not None
    assert credit.send == DEFAULT_WINDOW_BYTES


def test_unknown_frame_kinds_are_ignored_on_revision_2_only() -> None:
    """bridge.proto "Extensions": a frame of a later kind is ignored; revision 1 refuses it."""
    # Field 99 of Frame, a length-delimited value: a kind from some later revision.
    later = b"\x08\x00\x9a\x06\x00"
    server = ServerSession.for_subprotocol(SUBPROTOCOL_PROTO)
    server.data_to_send()
    server.receive_data(later, 0.0)
    assert server.events_received() == []
    assert not server.closed
    legacy = ServerSession.for_subprotocol(LEGACY_SUBPROTOCOL_PROTO)
    legacy.receive_data(later, 0.0)
    [violation] = legacy.events_received()
    assert isinstance(violation, ProtocolViolation)
    assert violation.close_code == CloseCode.PROTOCOL_ERROR


def test_revision_2_frames_are_refused_on_revision_1() -> None:
    """A revision 1 connection never negotiated Settings: one on stream 0 closes it (1002)."""
    legacy = ServerSession.for_subprotocol(LEGACY_SUBPROTOCOL_PROTO)
    legacy.receive_data(bridge_pb2.Frame(settings=bridge_pb2.Settings()).SerializeToString(), 0.0)
    [violation] = legacy.events_received()
    assert isinstance(violation, ProtocolViolation)


def test_cancel_is_never_flow_controlled(pair: tuple[ClientSession, ServerSession]) -> None:
    """A stream with no credit left can still be cancelled, and the server sees it."""
    client, server = pair
    stream_id = client.send_start(STREAM)
    client.send_message(stream_id, request(1500))
    assert not client.can_send(stream_id)
    client.send_cancel(stream_id, "enough")
    events = deliver(client, server)
    assert isinstance(events[-1], CallCancelled)


def test_buffered_bytes_are_bounded_by_window_plus_one_frame_per_stream() -> None:
    """However a compliant client sends, the server buffers at most window + one frame per stream."""
    limits = Limits(stream_window_bytes=WINDOW, max_message_bytes=5000)
    client = ClientSession.for_subprotocol(SUBPROTOCOL_PROTO, limits)
    server = ServerSession.for_subprotocol(SUBPROTOCOL_PROTO, limits)
    deliver(client, server)
    deliver(server, client)
    streams = [client.send_start(STREAM) for _ in range(10)]
    largest = 0
    for stream_id in streams:
        while client.can_send(stream_id):
            client.send_message(stream_id, request(700))
        data = client.data_to_send()
        largest = max([largest, *(len(item) for item in data)])
        for item in data:
            server.receive_data(item, 0.0)
    assert 0 < server.buffered_bytes() <= len(streams) * (WINDOW + largest)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(
    script=st.lists(
        st.tuples(
            st.sampled_from(["window_update", "settings", "message", "cancel"]),
            st.integers(min_value=0, max_value=3),
            st.integers(min_value=0, max_value=2**32 - 1),
        ),
        max_size=30,
    )
)
def test_flow_frames_in_any_order_never_raise(script: list[tuple[str, int, int]]) -> None:
    """Any mix of credit frames, messages and cancels only ever produces events."""
    server = ServerSession.for_subprotocol(SUBPROTOCOL_PROTO, Limits(stream_window_bytes=100))
    server.receive_data(
        bridge_pb2.Frame(stream_id=1, start=bridge_pb2.CallStart()).SerializeToString(), 0.0
    )
    for kind, stream_id, value in script:
        if kind == "window_update":
            frame = bridge_pb2.Frame(
                stream_id=stream_id, window_update=bridge_pb2.WindowUpdate(increment_bytes=value)
            )
        elif kind == "settings":
            frame = bridge_pb2.Frame(
                stream_id=stream_id, settings=bridge_pb2.Settings(initial_window_bytes=value)
            )
        elif kind == "message":
            body = bridge_pb2.MessageFrame(binary=b"x" * (value % 300))
            frame = bridge_pb2.Frame(stream_id=stream_id, message=body)
        else:
            frame = bridge_pb2.Frame(stream_id=stream_id, cancel=bridge_pb2.Cancel())
        server.receive_data(frame.SerializeToString(), 0.0)
    events = server.events_received()
    violations = [i for i, e in enumerate(events) if isinstance(e, ProtocolViolation)]
    assert violations in ([], [len(events) - 1])
