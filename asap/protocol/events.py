"""The events a bridge session reports after :meth:`~asap.protocol.session.Session.receive_data`.

Events are frozen, slotted dataclasses (as h11's). Each names the stream it concerns, except the
connection-level ones (:class:`ProtocolViolation`, :class:`PongReceived`, :class:`GoAwayReceived`).
A server sees :data:`ServerEvent` values, a client :data:`ClientEvent` values; both see
:class:`StreamError` and :class:`ProtocolViolation`, after which the session reports nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass

from asap.errors import AsapError
from asap.protocol.frames import CloseCode
from asap.protocol.metadata import Metadata
from asap.v1 import bridge_pb2, status_pb2


@dataclass(frozen=True, slots=True)
class CallStarted:
    """Server: the client opened a call (CallStart). Look up ``method`` and start its handler."""

    stream_id: int
    """The call's stream."""
    method: str
    """The gRPC method path, for example ``"/asap.v1.AgentService/Send"``; not validated here."""
    metadata: Metadata
    """Request metadata, held to gRPC's rules (:func:`~asap.protocol.metadata.metadata_from_entries`)."""
    timeout: float | None
    """Seconds the caller will wait, or ``None`` for no deadline."""
    deadline: float | None
    """``now + timeout`` on the clock passed to ``receive_data`` (timeouts run from receipt)."""
    message: bridge_pb2.MessageFrame | None = None
    """The first request message, when the CallStart carried one (bridge.proto "Combined
    frames"): checked exactly as a MessageFrame, and reported here rather than as a
    :class:`MessageReceived` of its own."""
    message_size: int = 0
    """The flow-control cost of :attr:`message` (see :attr:`MessageReceived.size`)."""
    half_closed: bool = False
    """The CallStart carried ``half_close``: no request follows (no :class:`HalfClosed` then).
    A unary call whose CallStart has both is complete in this one event."""


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """Either side: one call message arrived, within the size limit and with the right body kind.

    It came in a MessageFrame, or inside a CallStart or CallStatus (bridge.proto "Combined
    frames"); the event is the same. The session does not know the message type; unpack it with
    :meth:`Codec.unpack_message <asap.protocol.frames.Codec.unpack_message>`.
    """

    stream_id: int
    """The call's stream."""
    message_frame: bridge_pb2.MessageFrame
    """The MessageFrame as received."""
    size: int = 0
    """Its flow-control cost: pass it to :meth:`~asap.protocol.session.Session.consume` when the
    application takes the message (bridge.proto "Flow control"); 0 on revision 1."""


@dataclass(frozen=True, slots=True)
class HalfClosed:
    """Server: the client will send no more messages on this call (HalfClose)."""

    stream_id: int
    """The call's stream."""


@dataclass(frozen=True, slots=True)
class CallCancelled:
    """Server: the call is over without a handler result; cancel its handler.

    Either the client sent Cancel (the session has already answered CANCELLED) or the connection
    ended (:meth:`~asap.protocol.session.Session.receive_eof`). Sends on the stream are dropped.
    """

    stream_id: int
    """The call's stream."""
    reason: str
    """The client's reason, for logs; or why the connection ended."""
    deadline_exceeded: bool = False
    """The client cancelled because the call's deadline passed (``Cancel.deadline_exceeded``)."""


@dataclass(frozen=True, slots=True)
class HeadersReceived:
    """Client: the server sent response headers (initial metadata)."""

    stream_id: int
    """The call's stream."""
    metadata: Metadata
    """Response metadata."""


@dataclass(frozen=True, slots=True)
class CallEnded:
    """Client: the server ended the call with this status (code 0 is success)."""

    stream_id: int
    """The call's stream."""
    status: status_pb2.Status
    """The final status; decode an error with :func:`asap.errors.from_status`."""
    trailers: Metadata
    """Trailing metadata."""


@dataclass(frozen=True, slots=True)
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

    stream_id: int
    """The call's stream."""
    error: AsapError
    """Why the call failed."""


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """Either side: the connection must be closed with ``close_code``; no events follow.

    Write out :meth:`~asap.protocol.session.Session.data_to_send` first, then close.
    """

    close_code: CloseCode
    """The WebSocket close code."""
    reason: str
    """The close reason, at most 123 UTF-8 bytes (RFC 6455 §5.5)."""


@dataclass(frozen=True, slots=True)
class PongReceived:
    """Either side: the peer answered a Ping frame."""

    nonce: int
    """The nonce of the Ping it answers."""


@dataclass(frozen=True, slots=True)
class CreditAvailable:
    """Either side: a stream that had no send credit has some again; wake its writer."""

    stream_id: int
    """The stream."""


@dataclass(frozen=True, slots=True)
class SettingsReceived:
    """Either side: the peer's Settings arrived (bridge revision 2)."""

    initial_window_bytes: int
    """The peer's initial window now in force."""
    max_concurrent_streams: int
    """Server → client: the calls the server runs at once on this connection."""


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """Client: the server is draining; start no new calls on this connection."""

    reason: str
    """Why, for logs."""


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
