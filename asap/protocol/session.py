"""The connection-level state machines of the WebSocket bridge: one per connection and side.

Theory of operation (the python-websockets sans-I/O shape). The I/O layer owns the socket and the
clock; a session owns every rule of bridge.proto. The I/O layer loops:

1. on each received WebSocket message, :meth:`Session.receive_data` (``bytes`` for binary,
   ``str`` for text) with the current time;
2. :meth:`ServerSession.events_received` / :meth:`ClientSession.events_received`, and acts on
   each event (start a handler, deliver a message, cancel, fail a call, close the connection);
3. :meth:`Session.data_to_send`, writing each item as one WebSocket message, in order.

The ``send_*`` methods queue frames the same way; call :meth:`Session.data_to_send` after them.

Combined frames (bridge.proto): a CallStart may carry the call's first message and its HalfClose,
and a CallStatus a last response. A session applies exactly the checks and stream states of the
separate frames (every received message goes through one method, ``Session._admit_message``). A
combined CallStart is reported as one :class:`~asap.protocol.events.CallStarted` carrying its
message and HalfClose, so a unary call arrives complete in one event; otherwise the events are
those of the separate frames.

Failures follow bridge.proto "Errors". A frame that breaks the rules for a stream it can be
attributed to fails only that stream (:class:`~asap.protocol.events.StreamError`): the server
answers CallStatus INVALID_ARGUMENT/MALFORMED_FRAME, the client sends Cancel. Frames for streams that
have already finished are ignored, since the peer may not have known (ids strictly increase, so
every id up to the highest one seen that is not open has finished). A frame that cannot be
attributed (stream 0, or an undecodable message with no readable stream id) ends the connection
(:class:`~asap.protocol.events.ProtocolViolation` with a close code from RFC 6455 §7.4.1); after
that the session ignores received data, drops sends and reports nothing more. Per-stream rules live
in :mod:`asap.protocol.stream`; this module applies them and the per-connection limits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar, Final, Self, cast

from google.protobuf import unknown_fields
from google.protobuf.message import Message
from mypy_extensions import mypyc_attr

from asap._typing import Metadata
from asap.errors import (
    AsapError,
    Cancelled,
    FlowControlViolation,
    InvalidState,
    MalformedFrame,
    MessageTooLarge,
    ResourceExhausted,
    ShuttingDown,
    TooManyCalls,
    to_status,
)
from asap.protocol.events import (
    CallCancelled,
    CallStarted,
    CreditAvailable,
    Event,
    HalfClosed,
    MessageReceived,
    PongReceived,
    ProtocolViolation,
    ServerEvent,
    SettingsReceived,
    StreamError,
)
from asap.protocol.flow import DEFAULT_WINDOW_BYTES, StreamCredit, wire_size
from asap.protocol.frames import (
    JSON_SUBPROTOCOLS,
    OK,
    OK_CALL_STATUS,
    CloseCode,
    Codec,
    FrameError,
    MessageBody,
    body_kind,
    codec_for,
)
from asap.protocol.limits import Limits
from asap.protocol.metadata import metadata_from_entries, metadata_to_entries
from asap.protocol.stream import Stream, StreamEvent
from asap.protocol.wire import read_start
from asap.v1 import bridge_pb2, status_pb2


_DEFAULT_LIMITS: Final = Limits()
_MAX_CLOSE_REASON_BYTES: Final = (
    123  # RFC 6455 §5.5: a control frame's payload is at most 125 bytes.
)
_Handler = Callable[[int, bridge_pb2.Frame, float], None]
_MetadataIn = Iterable[tuple[str, str | bytes]]


@mypyc_attr(allow_interpreted_subclasses=True)
class Session(ABC):
    """What both sides share: decoding, ping/pong, stream lookup, failure handling, the queues.

    Args:
        codec: The negotiated subprotocol's codec; its ``max_frame_bytes`` is the hard cap.
        limits: Message size and concurrency limits.
    """

    peer_message: ClassVar[StreamEvent]
    """The stream event a received MessageFrame is."""

    def __init__(self, codec: Codec, limits: Limits = _DEFAULT_LIMITS) -> None:
        self.codec = codec
        """The subprotocol's codec."""
        self.limits = limits
        """The limits in force."""
        self.streams: dict[int, Stream] = {}
        """Open streams by id."""
        self.highest_stream_id = 0
        """The highest stream id opened or answered so far."""
        self.closed = False
        """Whether the connection is over (a violation, or :meth:`receive_eof`)."""
        self.last_received: float | None = None
        """When data was last received (for liveness checks)."""
        self.events: list[Event] = []
        """Events not yet returned by ``events_received``."""
        self.outgoing: list[bytes | str] = []
        """WebSocket messages not yet returned by :meth:`data_to_send`."""
        self.handlers: dict[str, _Handler] = {
            "message": self._on_message,
            "window_update": self._on_window_update,
        }
        """Call frame kinds this side receives, and what handles each."""
        self.flow_controlled = codec.flow_controlled
        """Whether this is bridge revision 2: Settings, WindowUpdate and per-stream credit."""
        self.peer_window = DEFAULT_WINDOW_BYTES
        """The peer's initial window: the send credit each new stream starts with."""
        self.peer_max_streams = 100
        """The calls the peer runs at once (from a server's Settings)."""
        self._received_size = 0
        """The cost of the WebSocket message being processed (bridge.proto "Flow control")."""
        if self.flow_controlled:
            self._queue(bridge_pb2.Frame(settings=self._settings()))

    def _settings(self) -> bridge_pb2.Settings:
        """The Settings this side announces first on a revision 2 connection."""
        return bridge_pb2.Settings(
            initial_window_bytes=self.limits.stream_window_bytes,
            max_message_bytes=self.limits.max_message_bytes,
        )

    @classmethod
    def for_subprotocol(cls, subprotocol: str, limits: Limits = _DEFAULT_LIMITS) -> Self:
        """Build a session for a negotiated subprotocol, capped at ``limits.max_frame_bytes``.

        A server also caps JSON subprotocols at ``limits.max_json_frame_bytes``.

        Raises:
            ValueError: The subprotocol is not supported.
        """
        return cls(
            codec_for(subprotocol, max_frame_bytes=cls._frame_cap(subprotocol, limits)), limits
        )

    @classmethod
    def _frame_cap(cls, subprotocol: str, limits: Limits) -> int:
        """The largest WebSocket message this side accepts under ``subprotocol``."""
        return limits.max_frame_bytes

    def receive_data(self, data: bytes | str, now: float) -> None:
        """Process one received WebSocket message; then read the events and the data to send.

        Never raises on bad input: every problem becomes an event. Ignored once closed.

        Args:
            data: The message: ``bytes`` if it was binary, ``str`` if it was text.
            now: The current time in seconds (any monotonic clock).
        """
        if self.closed:
            return
        self.last_received = now
        self._received_size = wire_size(data) if self.flow_controlled else 0
        codec = self.codec
        if (
            codec.wire_readable
            and isinstance(data, bytes)
            and len(data) <= codec.max_frame_bytes
            and self._read_unary_frame(data, now)
        ):
            return
        try:
            frame = codec.decode(data)
        except FrameError as exc:
            if exc.stream_id:
                self._stream_violation(exc.stream_id, MalformedFrame(exc.reason))
            else:
                self._violation(exc.code, exc.reason)
            return
        kind = frame.WhichOneof("kind")
        stream_id = frame.stream_id
        if stream_id == 0 and kind in ("ping", "pong", "goaway", "settings", "window_update"):
            self._on_connection_frame(frame)
            return
        if kind is None and self.flow_controlled and _has_unknown_fields(frame):
            return  # bridge.proto "Extensions": a frame of a kind from a later revision
        handler = self.handlers.get(kind or "")
        if stream_id == 0:
            self._violation(CloseCode.PROTOCOL_ERROR, f"{kind or 'empty'} frame on stream 0")
        elif handler is None:
            self._stream_violation(stream_id, MalformedFrame(f"unexpected {kind or 'empty'} frame"))
        else:
            handler(stream_id, frame, now)

    def _read_unary_frame(self, data: bytes, now: float) -> bool:
        """Handle ``data`` if it is this side's unary frame in canonical form (:mod:`~asap.protocol.wire`).

        Returns:
            ``True`` if handled, exactly as the parsed frame would have been; ``False`` to parse it.
        """
        return False

    def receive_eof(self, close_code: int | None = None) -> None:
        """Record that the connection has ended; every open call ends with it.

        Args:
            close_code: The close code received, if any.
        """
        if self.closed:
            return
        self.closed = True
        for stream_id in list(self.streams):
            del self.streams[stream_id]
            self._lost(stream_id, close_code)

    def data_to_send(self) -> list[bytes | str]:
        """Return and forget the WebSocket messages to write, in order (bytes: binary, str: text)."""
        data, self.outgoing = self.outgoing, []
        return data

    def send_ping(self, nonce: int) -> None:
        """Queue a Ping frame (for peers that cannot send WebSocket pings); no-op once closed."""
        if not self.closed:
            self._queue(bridge_pb2.Frame(ping=bridge_pb2.Ping(nonce=nonce)))

    def is_open(self, stream_id: int) -> bool:
        """Whether a stream is open (started and not yet ended)."""
        return stream_id in self.streams

    def can_send(self, stream_id: int) -> bool:
        """Whether a call message may be sent on the stream now (bridge.proto "Flow control").

        Always ``True`` on revision 1 and for streams that have ended (their sends are dropped).
        """
        stream = self.streams.get(stream_id)
        if stream is None or stream.credit is None:
            return True
        return stream.credit.send > 0

    def consume(self, stream_id: int, size: int) -> None:
        """Record that the application took a message of ``size`` bytes (``MessageReceived.size``).

        Queues a WindowUpdate once enough has been consumed (call :meth:`data_to_send` after),
        unless the peer can no longer send on the stream.
        """
        stream = self.streams.get(stream_id)
        if stream is None or stream.credit is None or not size or not self._peer_may_send(stream):
            return
        increment = stream.credit.consumed(size)
        if increment:
            update = bridge_pb2.WindowUpdate(increment_bytes=increment)
            self._queue(bridge_pb2.Frame(stream_id=stream_id, window_update=update))

    def buffered_bytes(self) -> int:
        """Bytes of call messages received and not yet consumed, over every open stream."""
        total = 0
        for stream in self.streams.values():
            credit = stream.credit
            if credit is not None:
                total += credit.initial_receive - credit.receive - credit.ungranted
        return max(total, 0)

    def _peer_may_send(self, stream: Stream) -> bool:
        """Whether the peer may still send call messages on ``stream`` (grants are useless after)."""
        return stream.next_state(self.peer_message) is not None

    def _open_credit(self, stream: Stream) -> None:
        """Give a new stream its credit (revision 2 only)."""
        if self.flow_controlled:
            stream.credit = StreamCredit(self.peer_window, self.limits.stream_window_bytes)

    def _charge(self, stream: Stream, data: bytes | str) -> None:
        """Charge a flow-controlled frame this side is sending.

        Raises:
            asap.errors.InvalidState: The stream has no credit (wait for :meth:`can_send`).
        """
        self._check_credit(stream)
        if stream.credit is not None:
            stream.credit.sent(wire_size(data))

    @staticmethod
    def _check_credit(stream: Stream) -> None:
        """Raise InvalidState if the stream has no credit left (wait for :meth:`can_send`)."""
        credit = stream.credit
        if credit is not None and credit.send <= 0:
            msg = f"no flow-control credit on stream {stream.stream_id}; wait for can_send()"
            raise InvalidState(msg)

    # Receiving.

    def _on_connection_frame(self, frame: bridge_pb2.Frame) -> None:
        kind = frame.WhichOneof("kind")
        if kind == "ping":
            self._queue(bridge_pb2.Frame(pong=bridge_pb2.Pong(nonce=frame.ping.nonce)))
        elif kind == "pong":
            self.events.append(PongReceived(frame.pong.nonce))
        elif kind == "goaway":
            self._on_goaway(frame.goaway.reason)
        elif not self.flow_controlled:
            self._violation(CloseCode.PROTOCOL_ERROR, f"{kind} frame on a revision 1 subprotocol")
        elif kind == "settings":
            self._on_settings(frame.settings)
        # A WindowUpdate on stream 0 is reserved for a connection window and ignored.

    def _on_settings(self, settings: bridge_pb2.Settings) -> None:
        """Apply the peer's Settings: a new initial window changes every open stream's credit."""
        if settings.initial_window_bytes:
            window = min(settings.initial_window_bytes, 2**31 - 1)
            delta, self.peer_window = window - self.peer_window, window
            for stream in self.streams.values():
                if stream.credit is not None and stream.credit.adjust_send(delta):
                    self.events.append(CreditAvailable(stream.stream_id))
        if settings.max_concurrent_streams:
            self.peer_max_streams = settings.max_concurrent_streams
        self.events.append(SettingsReceived(self.peer_window, self.peer_max_streams))

    def _on_window_update(self, stream_id: int, frame: bridge_pb2.Frame, now: float) -> None:
        if not self.flow_controlled:
            self._stream_violation(stream_id, MalformedFrame("window_update on revision 1"))
            return
        stream = self.streams.get(stream_id)
        if stream is None or stream.credit is None:
            return  # a finished stream (or one never opened): nothing to credit
        try:
            woke = stream.credit.window_update(frame.window_update.increment_bytes)
        except MalformedFrame as exc:
            self._fail(stream_id, exc)
            return
        if woke:
            self.events.append(CreditAvailable(stream_id))

    def _on_goaway(self, reason: str) -> None:
        self._violation(CloseCode.PROTOCOL_ERROR, "unexpected goaway frame")

    def _on_message(self, stream_id: int, frame: bridge_pb2.Frame, now: float) -> None:
        stream = self._stream_for(stream_id, "message")
        if stream is not None:
            self._accept_message(stream, frame.message)

    def _accept_message(self, stream: Stream, body: MessageBody) -> bool:
        """Apply the rules of one received call message, alone or inside a combined frame.

        Every form of bridge.proto ("Combined frames") goes through here, so a message in a
        CallStart or CallStatus gets exactly the checks and state change of a MessageFrame.

        Returns:
            ``True`` if reported as :class:`~asap.protocol.events.MessageReceived`; ``False`` if
            the stream failed instead.
        """
        cost = self._admit_message(stream, body)
        if cost is None:
            return False
        self.events.append(MessageReceived(stream.stream_id, body, cost))
        return True

    def _admit_message(self, stream: Stream, body: MessageBody) -> int | None:
        """Check one received call message and advance the stream; fail the stream if it breaks a rule.

        Returns:
            The message's flow-control cost, or ``None`` if the stream failed instead.
        """
        codec = self.codec
        error: AsapError
        if stream.next_state(self.peer_message) is None:
            error = MalformedFrame("message frame not allowed now")
        elif body_kind(body) not in codec.body_kinds:
            error = MalformedFrame(f"{codec.subprotocol} carries messages in '{codec.body_kind}'")
        elif (size := codec.body_size(body)) > self.limits.max_message_bytes:
            limit = self.limits.max_message_bytes
            error = MessageTooLarge(f"received message larger than max ({size} vs. {limit})")
        else:
            cost = self._received_size
            if stream.credit is not None:
                try:
                    stream.credit.received(cost)
                except FlowControlViolation as exc:
                    self._fail(stream.stream_id, exc)
                    return None
            stream.advance(self.peer_message)
            return cost
        self._fail(stream.stream_id, error)
        return None

    def _stream_for(self, stream_id: int, kind: str) -> Stream | None:
        """The open stream a frame is for; ``None`` when the frame was ignored or failed."""
        stream = self.streams.get(stream_id)
        if stream is None and stream_id > self.highest_stream_id:
            self._unknown_stream(stream_id, MalformedFrame(f"{kind} frame for an unopened stream"))
        return stream

    def _stream_violation(self, stream_id: int, error: AsapError) -> None:
        if stream_id in self.streams:
            self._fail(stream_id, error)
        elif stream_id > self.highest_stream_id:
            self._unknown_stream(stream_id, error)
        # Otherwise the stream has finished and the peer may not know yet: ignore the frame.

    def _unknown_stream(self, stream_id: int, error: AsapError) -> None:
        self._fail(stream_id, error)

    @abstractmethod
    def _fail(self, stream_id: int, error: AsapError) -> None:
        """End a stream because of ``error`` and report it (each side answers differently)."""

    @abstractmethod
    def _lost(self, stream_id: int, close_code: int | None) -> None:
        """Report an open stream ended by the connection closing."""

    def _violation(self, code: CloseCode, reason: str) -> None:
        reason = reason.encode()[:_MAX_CLOSE_REASON_BYTES].decode(errors="ignore")
        self.events.append(ProtocolViolation(code, reason))
        self.closed = True
        self.streams.clear()

    # Sending.

    def _sendable(self, stream_id: int) -> Stream | None:
        """The open stream to send on; ``None`` if it has finished (the send is dropped)."""
        stream = self.streams.get(stream_id)
        if stream is not None or self.closed or 0 < stream_id <= self.highest_stream_id:
            return stream
        msg = f"stream {stream_id} was never opened"
        raise InvalidState(msg)

    def _queue(self, frame: bridge_pb2.Frame) -> None:
        self.outgoing.append(self.codec.encode(frame))

    def events_received(self) -> Sequence[Event]:
        """Return and forget the events received since the last call, in order."""
        return self._take_events()

    def _take_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events


class ServerSession(Session):
    """The server side of one bridge connection.

    Receives CallStart (which may carry the first message and the HalfClose), MessageFrame,
    HalfClose, Cancel, Ping and Pong; sends HeadersFrame, MessageFrame, CallStatus (which may carry
    a unary response, see :meth:`send_status`), GoAway, Ping and Pong. Stream ids must be non-zero
    and strictly increase: a CallStart that reuses the id of an open call fails that call with
    MALFORMED_FRAME; one with any other id not above the highest seen closes the connection (1002),
    since that stream has already had its CallStatus. The session answers by itself, reporting a
    :class:`~asap.protocol.events.StreamError`: malformed frames, calls beyond
    ``limits.max_concurrent_streams`` (TOO_MANY_CALLS), calls after :meth:`send_goaway`
    (SHUTTING_DOWN), messages over ``limits.max_message_bytes`` (MESSAGE_TOO_LARGE), and Cancel
    (CANCELLED, reported as :class:`~asap.protocol.events.CallCancelled`).
    """

    peer_message: ClassVar[StreamEvent] = StreamEvent.CLIENT_MESSAGE

    def __init__(self, codec: Codec, limits: Limits = _DEFAULT_LIMITS) -> None:
        super().__init__(codec, limits)
        self.draining = False
        """Whether GoAway was sent: new calls are refused with SHUTTING_DOWN."""
        self.rate_limit_strikes = 0
        """Consecutive rate-limited calls on this connection."""
        self.handlers.update(
            start=self._on_start, half_close=self._on_half_close, cancel=self._on_cancel
        )

    @classmethod
    def _frame_cap(cls, subprotocol: str, limits: Limits) -> int:
        """JSON frames from clients have their own, smaller cap: they cost far more to decode."""
        if subprotocol in JSON_SUBPROTOCOLS:
            return min(limits.max_frame_bytes, limits.max_json_frame_bytes)
        return limits.max_frame_bytes

    def _settings(self) -> bridge_pb2.Settings:
        settings = super()._settings()
        settings.max_concurrent_streams = self.limits.max_concurrent_streams
        return settings

    def events_received(self) -> list[ServerEvent]:
        """Return and forget the events received since the last call, in order."""
        # The server side only ever appends server events.
        return cast("list[ServerEvent]", self._take_events())

    def send_headers(self, stream_id: int, metadata: _MetadataIn = ()) -> bool:
        """Queue response headers; allowed once, before any message.

        Returns:
            ``True`` if queued; ``False`` if the stream has already ended (nothing is sent).

        Raises:
            asap.errors.InvalidState: Headers or a message were already sent, or the stream was
                never opened.
            ValueError: Malformed metadata (see :func:`~asap.protocol.metadata.metadata_to_entries`).
        """
        stream = self._sendable(stream_id)
        if stream is None:
            return False
        headers = bridge_pb2.HeadersFrame(metadata=metadata_to_entries(metadata))
        data = self.codec.encode(bridge_pb2.Frame(stream_id=stream_id, headers=headers))
        stream.handle(StreamEvent.HEADERS)
        self.outgoing.append(data)
        return True

    def send_message(self, stream_id: int, message: Message) -> bool:
        """Queue one response message.

        Returns:
            ``True`` if queued; ``False`` if the stream has already ended.

        Raises:
            asap.errors.MessageTooLarge: The message is over ``limits.max_message_bytes``; nothing
                was queued and the call is still open (end it with that error's status).
            asap.errors.InvalidState: The stream was never opened.
        """
        stream = self._sendable(stream_id)
        if stream is None:
            return False
        data = self.codec.encode_message(
            stream_id, message, max_message_bytes=self.limits.max_message_bytes
        )
        # Credit is checked before the state changes, so a refused send leaves the stream as it was.
        credit = stream.credit
        if credit is not None and credit.send <= 0:
            self._check_credit(stream)  # raises InvalidState
        if not stream.advance(StreamEvent.SERVER_MESSAGE):
            stream.handle(StreamEvent.SERVER_MESSAGE)  # raises InvalidState
        if credit is not None:
            credit.sent(wire_size(data))
        self.outgoing.append(data)
        return True

    def send_status(
        self,
        stream_id: int,
        status: status_pb2.Status,
        trailers: _MetadataIn = (),
        *,
        message: Message | None = None,
    ) -> bool:
        """Queue the call's final status and trailers, after a last response if given.

        With ``message`` (a unary call's response) the answer takes one frame, the message
        inside the CallStatus (bridge.proto "Combined frames"), when the client's CallStart used
        combined frames itself; a client that sent the separate frames may predate them, so it
        gets a MessageFrame and then the CallStatus. The stream is over after this.

        Returns:
            ``True`` if queued; ``False`` if the stream had already ended.

        Raises:
            asap.errors.MessageTooLarge: ``message`` is over ``limits.max_message_bytes``; nothing
                was queued and the call is still open (end it with that error's status).
            asap.errors.InvalidState: The stream was never opened.
            ValueError: Malformed trailers.
            TypeError: Under asap.v1.json, a status detail or message whose type is not in the
                descriptor pool; nothing was queued and the call is still open.
        """
        stream = self._sendable(stream_id)
        if stream is None:
            return False
        # Encode everything first: if that fails (too large, an Any the JSON codec cannot resolve,
        # bad trailers) nothing is queued and the call is still open.
        call_status = (
            OK_CALL_STATUS
            if not trailers and (status is OK or status == OK)
            else bridge_pb2.CallStatus(status=status, trailers=metadata_to_entries(trailers))
        )
        codec = self.codec
        limit = self.limits.max_message_bytes
        if message is None or stream.combined:
            data = [codec.encode_status(stream_id, call_status, message, max_message_bytes=limit)]
        else:
            data = [
                codec.encode_message(stream_id, message, max_message_bytes=limit),
                codec.encode(bridge_pb2.Frame(stream_id=stream_id, status=call_status)),
            ]
        if message is not None:
            self._charge(stream, data[0])
            stream.handle(StreamEvent.SERVER_MESSAGE)
        stream.handle(StreamEvent.STATUS)
        del self.streams[stream_id]
        self.outgoing.extend(data)
        return True

    def send_error(self, stream_id: int, error: AsapError, trailers: _MetadataIn = ()) -> bool:
        """Queue ``error`` as the call's final status (see :meth:`send_status`)."""
        return self.send_status(stream_id, to_status(error), trailers)

    def send_goaway(self, reason: str = "") -> None:
        """Queue GoAway once and refuse calls from now on; open calls go on."""
        if not self.closed and not self.draining:
            self.draining = True
            self._queue(bridge_pb2.Frame(goaway=bridge_pb2.GoAway(reason=reason)))

    def record_rate_limited(self) -> bool:
        """Count a call refused for the rate limit (after sending its RATE_LIMITED status).

        Returns:
            ``True`` when this was strike ``limits.rate_limit_strikes_before_close`` in a row: a
            :class:`~asap.protocol.events.ProtocolViolation` (1008) is now queued in the events.
        """
        self.rate_limit_strikes += 1
        limit = self.limits.rate_limit_strikes_before_close
        if limit and self.rate_limit_strikes >= limit and not self.closed:
            self._violation(CloseCode.POLICY_VIOLATION, "kept calling past the rate limit")
            return True
        return False

    def record_call_ok(self) -> None:
        """Count a call that passed the rate limit: the strikes start over."""
        self.rate_limit_strikes = 0

    def _on_start(self, stream_id: int, frame: bridge_pb2.Frame, now: float) -> None:
        start = frame.start
        timeout = start.timeout if start.HasField("timeout") else None
        self._start(
            stream_id,
            start.method,
            start.metadata,
            None if timeout is None else (timeout.seconds, timeout.nanos),
            start.message if start.HasField("message") else None,
            start.half_close,
            now,
        )

    def _read_unary_frame(self, data: bytes, now: float) -> bool:
        start = read_start(data)
        if start is None:
            return False
        self._start(
            start.stream_id, start.method, (), start.timeout, start.body, start.half_close, now
        )
        return True

    def _start(
        self,
        stream_id: int,
        method: str,
        entries: Sequence[bridge_pb2.MetadataEntry],
        timeout_fields: tuple[int, int] | None,
        body: MessageBody | None,
        half_close: bool,
        now: float,
    ) -> None:
        """Open a call from a CallStart's fields, however the frame was read."""
        if stream_id <= self.highest_stream_id:
            # Reusing an open id is attributable to that call. Any other id is a finished stream
            # (or one skipped over): answering it would send a second CallStatus for the id.
            if stream_id in self.streams:
                self._fail(stream_id, MalformedFrame("stream ids must strictly increase"))
            else:
                self._violation(CloseCode.PROTOCOL_ERROR, "stream ids must strictly increase")
            return
        try:
            metadata: Metadata = (
                metadata_from_entries(entries, max_bytes=self.limits.max_metadata_bytes)
                if entries
                else ()
            )
            timeout = None if timeout_fields is None else _timeout(*timeout_fields)
        except (MalformedFrame, ResourceExhausted) as exc:
            self._fail(stream_id, exc)
            return
        if self.draining:
            self._fail(stream_id, ShuttingDown())
        elif len(self.streams) >= self.limits.max_concurrent_streams:
            limit = self.limits.max_concurrent_streams
            self._fail(stream_id, TooManyCalls(f"more than {limit} calls on one connection"))
        else:
            stream = Stream(stream_id)
            stream.handle(StreamEvent.START)
            self._open_credit(stream)
            self.streams[stream_id] = stream
            self.highest_stream_id = stream_id
            deadline = None if timeout is None else now + timeout
            # bridge.proto "Combined frames": the same checks and states as a MessageFrame and a
            # HalfClose received right after this CallStart, reported in the one CallStarted (a
            # unary call is then complete in one event). A message that fails its checks fails
            # the stream before the call is reported at all.
            if body is None and not half_close:
                self.events.append(CallStarted(stream_id, method, metadata, timeout, deadline))
                return
            stream.combined = True
            cost = 0
            if body is not None:
                admitted = self._admit_message(stream, body)
                if admitted is None:
                    return
                cost = admitted
            if half_close:
                stream.advance(StreamEvent.HALF_CLOSE)  # always allowed right after the start
            self.events.append(
                CallStarted(stream_id, method, metadata, timeout, deadline, body, cost, half_close)
            )

    def _on_half_close(self, stream_id: int, frame: bridge_pb2.Frame, now: float) -> None:
        stream = self._stream_for(stream_id, "half_close")
        if stream is not None:
            self._half_close(stream)

    def _half_close(self, stream: Stream) -> None:
        """Apply a HalfClose, sent alone or as ``CallStart.half_close``."""
        if stream.advance(StreamEvent.HALF_CLOSE):
            self.events.append(HalfClosed(stream.stream_id))
        else:
            self._fail(stream.stream_id, MalformedFrame("half_close frame not allowed now"))

    def _on_cancel(self, stream_id: int, frame: bridge_pb2.Frame, now: float) -> None:
        stream = self._stream_for(stream_id, "cancel")
        if stream is None:
            return
        stream.handle(StreamEvent.CANCEL)
        del self.streams[stream_id]
        error = Cancelled("the client cancelled the call")
        self.outgoing.append(self._status_data(stream_id, to_status(error), []))
        cancel = frame.cancel
        self.events.append(CallCancelled(stream_id, cancel.reason, cancel.deadline_exceeded))

    def _fail(self, stream_id: int, error: AsapError) -> None:
        self.streams.pop(stream_id, None)
        self.highest_stream_id = max(self.highest_stream_id, stream_id)
        self.outgoing.append(self._status_data(stream_id, to_status(error), []))
        self.events.append(StreamError(stream_id, error))

    def _lost(self, stream_id: int, close_code: int | None) -> None:
        self.events.append(CallCancelled(stream_id, "the connection closed"))

    def _status_data(
        self, stream_id: int, status: status_pb2.Status, trailers: list[bridge_pb2.MetadataEntry]
    ) -> bytes | str:
        call_status = bridge_pb2.CallStatus(status=status, trailers=trailers)
        return self.codec.encode(bridge_pb2.Frame(stream_id=stream_id, status=call_status))


def _timeout(seconds: int, nanos: int) -> float:
    """CallStart.timeout (its seconds and nanos) in seconds."""
    if seconds < 0 or not 0 <= nanos < 1_000_000_000:
        msg = "timeout must be a non-negative duration"
        raise MalformedFrame(msg)
    return seconds + nanos / 1e9


def _has_unknown_fields(frame: bridge_pb2.Frame) -> bool:
    """Whether a frame with no known kind carries fields this revision does not know."""
    return bool(unknown_fields.UnknownFieldSet(frame))
