"""The client side of a WebSocket bridge connection (the mirror of :class:`ServerSession`).

Theory of operation: as :mod:`asap.protocol.session`, with the directions swapped (bridge.proto,
"Calls (streams)"). The client picks stream ids 1, 2, 3, … (non-zero, strictly increasing) and
sends CallStart, MessageFrame, HalfClose and Cancel; it receives HeadersFrame, MessageFrame,
CallStatus and GoAway. A CallStart may carry the first request and the HalfClose, and a CallStatus
the last response ("Combined frames"), so that a unary call is one frame each way. A server frame
that breaks a stream's rules fails that call locally (:class:`~asap.protocol.events.StreamError`)
and the client sends Cancel so the server stops too. A server frame for a stream id the client never
opened cannot be attributed to a call and closes the connection (1002). Frames for calls the client
has already cancelled are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import ClassVar, Final, cast

from google.protobuf.message import Message

from asap.errors import AsapError, ConnectionLost, InvalidState, MalformedFrame
from asap.protocol.events import (
    CallEnded,
    ClientEvent,
    GoAwayReceived,
    HeadersReceived,
    StreamError,
)
from asap.protocol.frames import (
    MAX_STREAM_ID,
    CloseCode,
    Codec,
    MessageBody,
)
from asap.protocol.limits import Limits
from asap.protocol.metadata import metadata_from_entries, metadata_to_entries
from asap.protocol.session import Session
from asap.protocol.stream import Stream, StreamEvent
from asap.protocol.wire import read_status
from asap.v1 import bridge_pb2, status_pb2


_DEFAULT_LIMITS: Final = Limits()


_MAX_CACHED_STARTS: Final = 64
"""(method, timeout) pairs whose CallStart a client session keeps (then it starts over)."""


class ClientSession(Session):
    """The client side of one bridge connection.

    Args:
        codec: The negotiated subprotocol's codec.
        limits: ``max_message_bytes`` applies to messages both sent and received.
    """

    peer_message: ClassVar[StreamEvent] = StreamEvent.SERVER_MESSAGE

    def __init__(self, codec: Codec, limits: Limits = _DEFAULT_LIMITS) -> None:
        super().__init__(codec, limits)
        self.goaway_reason: str | None = None
        """The server's GoAway reason once it sent one; no new calls after that."""
        self.handlers.update(headers=self._on_headers, status=self._on_status)
        self._starts: dict[tuple[str, float | None], bridge_pb2.CallStart] = {}
        """CallStarts without metadata by (method, timeout), at most _MAX_CACHED_STARTS."""

    @property
    def accepting_calls(self) -> bool:
        """Whether :meth:`send_start` may be called (open, no GoAway, stream ids left)."""
        return not self.closed and self.goaway_reason is None and self.next_stream_id() > 0

    def next_stream_id(self) -> int:
        """The id the next call will get; 0 when the ids are used up (open a new connection)."""
        candidate = self.highest_stream_id + 1
        return candidate if candidate <= MAX_STREAM_ID else 0

    def events_received(self) -> list[ClientEvent]:
        """Return and forget the events received since the last call, in order."""
        # The client side only ever appends client events.
        return cast("list[ClientEvent]", self._take_events())

    def send_start(
        self,
        method: str,
        metadata: Iterable[tuple[str, str | bytes]] = (),
        timeout: float | None = None,
        *,
        message: Message | None = None,
        half_close: bool = False,
    ) -> int:
        """Open a call and queue its CallStart, carrying the first request and HalfClose if given.

        A unary or server-streaming call passes its request and ``half_close=True``, so the
        whole call is one frame (bridge.proto "Combined frames"); the server answers exactly as
        it would the CallStart, the MessageFrame and the HalfClose sent apart.

        Args:
            method: The gRPC method path, for example ``"/asap.v1.AgentService/Send"``.
            metadata: Request metadata.
            timeout: Seconds the caller will wait (from when the server receives the frame).
            message: The first request message, sent inside the CallStart.
            half_close: Whether no more request messages follow (after ``message``).

        Returns:
            The new call's stream id.

        Raises:
            asap.errors.InvalidState: The connection is closed, the server sent GoAway, or the
                stream ids are used up (see :attr:`accepting_calls`).
            asap.errors.MessageTooLarge: ``message`` is over ``limits.max_message_bytes``; no call
                was opened and nothing was queued.
            ValueError: Malformed metadata, or a negative or non-finite timeout.
        """
        if not self.accepting_calls:
            msg = "this connection accepts no new calls"
            raise InvalidState(msg)
        start = self._start_head(method, metadata, timeout)
        stream_id = self.next_stream_id()
        # Encode before opening: a message over the limit leaves no call behind to cancel.
        data = self.codec.encode_start(
            stream_id,
            start,
            message,
            half_close=half_close,
            max_message_bytes=self.limits.max_message_bytes,
        )
        stream = Stream(stream_id)
        stream.advance(StreamEvent.START)
        self._open_credit(stream)
        if message is not None:
            self._charge(stream, data)
            stream.advance(StreamEvent.CLIENT_MESSAGE)
        if half_close:
            stream.advance(StreamEvent.HALF_CLOSE)
        self.streams[stream_id] = stream
        self.highest_stream_id = stream_id
        self.outgoing.append(data)
        return stream_id

    def _start_head(
        self, method: str, metadata: Iterable[tuple[str, str | bytes]], timeout: float | None
    ) -> bridge_pb2.CallStart:
        """The CallStart for a call (never modified: the codec copies or serializes it).

        Calls without metadata reuse one per (method, timeout): most calls of a client share both,
        and building the message and its Duration (and checking the timeout) was a visible part of
        each call's cost.
        """
        key = (method, timeout)
        plain = not metadata and isinstance(metadata, tuple | list)
        if plain:
            cached = self._starts.get(key)
            if cached is not None:
                return cached
        if timeout is not None and not (math.isfinite(timeout) and timeout >= 0):
            msg = "timeout must be 0 or more and finite"
            raise ValueError(msg)
        start = bridge_pb2.CallStart(method=method, metadata=metadata_to_entries(metadata))
        if timeout is not None:
            # Whole milliseconds, rounded up (as gRPC rounds its grpc-timeout header up to a
            # unit): the caller enforces its own deadline.
            start.timeout.FromMilliseconds(math.ceil(timeout * 1000))
        if plain:
            if len(self._starts) >= _MAX_CACHED_STARTS:
                self._starts.clear()
            self._starts[key] = start
        return start

    def send_message(self, stream_id: int, message: Message) -> bool:
        """Queue one request message.

        Returns:
            ``True`` if queued; ``False`` if the call has already ended.

        Raises:
            asap.errors.MessageTooLarge: The message is over ``limits.max_message_bytes``; nothing
                was queued.
            asap.errors.InvalidState: The call was half-closed or never opened.
        """
        stream = self._sendable(stream_id)
        if stream is None:
            return False
        if stream.next_state(StreamEvent.CLIENT_MESSAGE) is None:
            msg = f"stream {stream_id} is half-closed"
            raise InvalidState(msg)
        data = self.codec.encode_message(
            stream_id, message, max_message_bytes=self.limits.max_message_bytes
        )
        self._charge(stream, data)
        stream.handle(StreamEvent.CLIENT_MESSAGE)
        self.outgoing.append(data)
        return True

    def send_half_close(self, stream_id: int) -> bool:
        """Queue HalfClose: no more request messages.

        Returns:
            ``True`` if queued; ``False`` if the call has already ended.

        Raises:
            asap.errors.InvalidState: The call was already half-closed, or never opened.
        """
        stream = self._sendable(stream_id)
        if stream is None:
            return False
        stream.handle(StreamEvent.HALF_CLOSE)
        self._queue(bridge_pb2.Frame(stream_id=stream_id, half_close=bridge_pb2.HalfClose()))
        return True

    def send_cancel(
        self, stream_id: int, reason: str = "", *, deadline_exceeded: bool = False
    ) -> bool:
        """Queue Cancel and end the call locally; later frames for it are ignored.

        Returns:
            ``True`` if queued; ``False`` if the call had already ended.

        Raises:
            asap.errors.InvalidState: The call was never opened.
        """
        stream = self._sendable(stream_id)
        if stream is None:
            return False
        self._cancel(stream_id, reason, deadline_exceeded=deadline_exceeded)
        return True

    def _on_goaway(self, reason: str) -> None:
        self.goaway_reason = reason
        self.events.append(GoAwayReceived(reason))

    def _on_headers(self, stream_id: int, frame: bridge_pb2.Frame, now: float) -> None:
        stream = self._stream_for(stream_id, "headers")
        if stream is None:
            return
        if stream.next_state(StreamEvent.HEADERS) is None:
            self._fail(stream_id, MalformedFrame("headers frame not allowed now"))
            return
        try:
            metadata = metadata_from_entries(frame.headers.metadata)
        except MalformedFrame as exc:
            self._fail(stream_id, exc)
            return
        stream.handle(StreamEvent.HEADERS)
        self.events.append(HeadersReceived(stream_id, metadata))

    def _on_status(self, stream_id: int, frame: bridge_pb2.Frame, now: float) -> None:
        call_status = frame.status
        self._end(
            stream_id,
            call_status.status,
            call_status.trailers,
            call_status.message if call_status.HasField("message") else None,
        )

    def _read_unary_frame(self, data: bytes, now: float) -> bool:
        status = read_status(data)
        if status is None:
            return False
        self._end(status.stream_id, status_pb2.Status(), (), status.body)
        return True

    def _end(
        self,
        stream_id: int,
        status: status_pb2.Status,
        trailers: Sequence[bridge_pb2.MetadataEntry],
        body: MessageBody | None,
    ) -> None:
        """End a call from a CallStatus's fields, however the frame was read."""
        stream = self._stream_for(stream_id, "status")
        if stream is None:
            return
        # bridge.proto "Combined frames": a message in the CallStatus is a MessageFrame received
        # just before it, with the same checks; the status is then applied as usual.
        if body is not None and not self._accept_message(stream, body):
            return
        try:
            pairs = metadata_from_entries(trailers) if trailers else ()
        except MalformedFrame as exc:
            self._fail(stream_id, exc)
            return
        stream.handle(StreamEvent.STATUS)
        del self.streams[stream_id]
        self.events.append(CallEnded(stream_id, status, pairs))

    def _unknown_stream(self, stream_id: int, error: AsapError) -> None:
        # The server wrote on a stream id the client never chose: no call to blame it on.
        self._violation(CloseCode.PROTOCOL_ERROR, "frame for a stream the client never opened")

    def _fail(self, stream_id: int, error: AsapError) -> None:
        self._cancel(stream_id, error.message)
        self.events.append(StreamError(stream_id, error))

    def _lost(self, stream_id: int, close_code: int | None) -> None:
        error = ConnectionLost("the connection closed", close_code=close_code)
        self.events.append(StreamError(stream_id, error))

    def _cancel(self, stream_id: int, reason: str, *, deadline_exceeded: bool = False) -> None:
        self.streams[stream_id].handle(StreamEvent.CANCEL)
        del self.streams[stream_id]
        cancel = bridge_pb2.Cancel(reason=reason, deadline_exceeded=deadline_exceeded)
        self._queue(bridge_pb2.Frame(stream_id=stream_id, cancel=cancel))
