"""The events a bridge session reports after :meth:`~asap.protocol.session.Session.receive_data`.

Events are slotted dataclasses (as h11's) whose fields are ``Final``: read-only to a type checker,
set by an ``__init__`` written out (a frozen dataclass's generated one costs a tenth of a
microsecond per field, per event, on the hot path). Each names the stream it concerns, except the
connection-level ones (:class:`ProtocolViolation`, :class:`PongReceived`, :class:`GoAwayReceived`).
A server sees :data:`ServerEvent` values, a client :data:`ClientEvent` values; both see
:class:`StreamError` and :class:`ProtocolViolation`, after which the session reports nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from asap.errors import AsapError
from asap.protocol.frames import CloseCode, MessageBody
from asap.protocol.metadata import Metadata
from asap.v1 import status_pb2


@dataclass(slots=True, init=False)
class CallStarted:
    """Server: the client opened a call (CallStart). Look up ``method`` and start its handler."""

    stream_id: Final[int]
    """The call's stream."""
    method: Final[str]
    """The gRPC method path, for example ``"/asap.v1.AgentService/Send"``; not validated here."""
    metadata: Final[Metadata]
    """Request metadata, held to gRPC's rules (:func:`~asap.protocol.metadata.metadata_from_entries`)."""
    timeout: Final[float | None]
    """Seconds the caller will wait, or ``None`` for no deadline."""
    deadline: Final[float | None]
    """``now + timeout`` on the clock passed to ``receive_data`` (timeouts run from receipt)."""
    message: Final[MessageBody | None]
    """The first request message, when the CallStart carried one (bridge.proto "Combined
    frames"): checked exactly as a MessageFrame, and reported here rather than as a
    :class:`MessageReceived` of its own."""
    message_size: Final[int]
    """The flow-control cost of :attr:`message` (see :attr:`MessageReceived.size`)."""
    half_closed: Final[bool]
    """The CallStart carried ``half_close``: no request follows (no :class:`HalfClosed` then).
    A unary call whose CallStart has both is complete in this one event."""

    def __init__(
        self,
        stream_id: int,
        method: str,
        metadata: Metadata,
        timeout: float | None,
        deadline: float | None,
        message: MessageBody | None = None,
        message_size: int = 0,
        half_closed: bool = False,
    ) -> None:
        self.stream_id = stream_id
        self.method = method
        self.metadata = metadata
        self.timeout = timeout
        self.deadline = deadline
        self.message = message
        self.message_size = message_size
        self.half_closed = half_closed


@dataclass(slots=True, init=False)
class MessageReceived:
    """Either side: one call message arrived, within the size limit and with the right body kind.

    It came in a MessageFrame, or inside a CallStart or CallStatus (bridge.proto "Combined
    frames"); the event is the same. The session does not know the message type; unpack it with
    :meth:`Codec.unpack_message <asap.protocol.frames.Codec.unpack_message>`.
    """

    stream_id: Final[int]
    """The call's stream."""
    message_frame: Final[MessageBody]
    """The message as received: its MessageFrame, or the bytes of its binary body."""
    size: Final[int]
    """Its flow-control cost: pass it to :meth:`~asap.protocol.session.Session.consume` when the
    application takes the message (bridge.proto "Flow control"); 0 on revision 1."""

    def __init__(
        self,
        stream_id: int,
        message_frame: MessageBody,
        size: int = 0,
    ) -> None:
        self.stream_id = stream_id
        self.message_frame = message_frame
        self.size = size


@dataclass(slots=True, init=False)
class HalfClosed:
    """Server: the client will send no more messages on this call (HalfClose)."""

    stream_id: Final[int]
    """The call's stream."""

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


@dataclass(slots=True, init=False)
class CallCancelled:
    """Server: the call is over without a handler result; cancel its handler.

    Either the client sent Cancel (the session has already answered CANCELLED) or the connection
    ended (:meth:`~asap.protocol.session.Session.receive_eof`). Sends on the stream are dropped.
    """

    stream_id: Final[int]
    """The call's stream."""
    reason: Final[str]
    """The client's reason, for logs; or why the connection ended."""
    deadline_exceeded: Final[bool]
    """The client cancelled because the call's deadline passed (``Cancel.deadline_exceeded``)."""

    def __init__(self, stream_id: int, reason: str, deadline_exceeded: bool = False) -> None:
        self.stream_id = stream_id
        self.reason = reason
        self.deadline_exceeded = deadline_exceeded


@dataclass(slots=True, init=False)
class HeadersReceived:
    """Client: the server sent response headers (initial metadata)."""

    stream_id: Final[int]
    """The call's stream."""
    metadata: Final[Metadata]
    """Response metadata."""

    def __init__(self, stream_id: int, metadata: Metadata) -> None:
        self.stream_id = stream_id
        self.metadata = metadata


@dataclass(slots=True, init=False)
class CallEnded:
    """Client: the server ended the call with this status (code 0 is success)."""

    stream_id: Final[int]
    """The call's stream."""
    status: Final[status_pb2.Status]
    """The final status; decode an error with :func:`asap.errors.from_status`."""
    trailers: Final[Metadata]
    """Trailing metadata."""

    def __init__(self, stream_id: int, status: status_pb2.Status, trailers: Metadata) -> None:
        self.stream_id = stream_id
        self.status = status
        self.trailers = trailers


@dataclass(slots=True, init=False)
class StreamError:
    """Either side: the session ended a call itself; ``error`` is what the call fails with.

    Server: the client broke the rules for this stream (MALFORMED_FRAME), sent a message over the
    size limit (MESSAGE_TOO_LARGE), or opened a call beyond a limit or while draining
    (TOO_MANY_CALLS, SHUTTING_DOWN). The session has already queued the CallStatus and closed the
    stream; if a handler was started for it, cancel it.

    Client: the server broke the rules for this stream, sent a message over the size limit, or the
    connection ended (CONNECTION_LOST). The session has queued a Cancel (if the connection is still
    up) and closed the stream; fail the call with ``error``.
    """

    stream_id: Final[int]
    """The call's stream."""
    error: Final[AsapError]
    """Why the call failed."""

    def __init__(self, stream_id: int, error: AsapError) -> None:
        self.stream_id = stream_id
        self.error = error


@dataclass(slots=True, init=False)
class ProtocolViolation:
    """Either side: the connection must be closed with ``close_code``; no events follow.

    Write out :meth:`~asap.protocol.session.Session.data_to_send` first, then close.
    """

    close_code: Final[CloseCode]
    """The WebSocket close code."""
    reason: Final[str]
    """The close reason, at most 123 UTF-8 bytes (RFC 6455 §5.5)."""

    def __init__(self, close_code: CloseCode, reason: str) -> None:
        self.close_code = close_code
        self.reason = reason


@dataclass(slots=True, init=False)
class PongReceived:
    """Either side: the peer answered a Ping frame."""

    nonce: Final[int]
    """The nonce of the Ping it answers."""

    def __init__(self, nonce: int) -> None:
        self.nonce = nonce


@dataclass(slots=True, init=False)
class CreditAvailable:
    """Either side: a stream that had no send credit has some again; wake its writer."""

    stream_id: Final[int]
    """The stream."""

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


@dataclass(slots=True, init=False)
class SettingsReceived:
    """Either side: the peer's Settings arrived (bridge revision 2)."""

    initial_window_bytes: Final[int]
    """The peer's initial window now in force."""
    max_concurrent_streams: Final[int]
    """Server → client: the calls the server runs at once on this connection."""

    def __init__(self, initial_window_bytes: int, max_concurrent_streams: int) -> None:
        self.initial_window_bytes = initial_window_bytes
        self.max_concurrent_streams = max_concurrent_streams


@dataclass(slots=True, init=False)
class GoAwayReceived:
    """Client: the server is draining; start no new calls on this connection."""

    reason: Final[str]
    """Why, for logs."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


ServerEvent = (
    CallStarted
    | MessageReceived
    | HalfClosed
    | CallCancelled
    | StreamError
    | ProtocolViolation
    | PongReceived
    | CreditAvailable
    | SettingsReceived
)
"""What a :class:`~asap.protocol.session.ServerSession` reports."""

ClientEvent = (
    HeadersReceived
    | MessageReceived
    | CallEnded
    | StreamError
    | ProtocolViolation
    | PongReceived
    | GoAwayReceived
    | CreditAvailable
    | SettingsReceived
)
"""What a :class:`~asap.protocol.session.ClientSession` reports."""

Event = ServerEvent | ClientEvent
"""Any session event."""
