"""WebSocket bridge frames: ``asap.v1.Frame`` ↔ one WebSocket message, for each subprotocol.

The bridge (``proto/asap/v1/bridge.proto``, "Connecting") has two subprotocols. Under
``asap.v1.proto`` every WebSocket message is binary and holds one serialized Frame, and call
messages travel serialized in ``MessageFrame.binary``. Under ``asap.v1.json`` every WebSocket
message is text holding one Frame in canonical proto3 JSON, and call messages travel as a
``google.protobuf.Any`` in ``MessageFrame.typed``. A :class:`Codec` implements one of them.

Decoding failures follow bridge.proto "Errors": a WebSocket message of the wrong type (binary under
JSON, text under proto) is a protocol error (close 1002, RFC 6455 §7.4.1); text that is not JSON is
invalid payload data (1007); a WebSocket message over the frame cap is too big (1009); bytes or JSON
that do not form a Frame are a protocol error unless the stream id can still be read, in which case
the session fails only that stream. All of these raise :class:`FrameError`, a connection-level
condition and therefore not an :class:`~asap.errors.AsapError`. A call message that does not parse
as the expected type is the call's own fault and raises :class:`~asap.errors.MalformedFrame`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from enum import IntEnum
from typing import ClassVar, Final, Literal, TypeVar

import orjson
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2
from mypy_extensions import mypyc_attr

from asap.errors import MalformedFrame, MessageTooLarge
from asap.protocol import jsoncodec, jsonwire
from asap.protocol.limits import Limits
from asap.protocol.pbmethods import has_field, serialize
from asap.v1 import agent_service_pb2, bridge_pb2, opaque_pb2, status_pb2


SUBPROTOCOL_PROTO: Final = "asap.v1.1.proto"
"""Binary subprotocol, bridge revision 2 (flow-controlled): serialized Frames in binary messages."""
SUBPROTOCOL_JSON: Final = "asap.v1.1.json"
"""JSON subprotocol, bridge revision 2 (flow-controlled): canonical proto3 JSON Frames in text."""
LEGACY_SUBPROTOCOL_PROTO: Final = "asap.v1.proto"
"""Binary subprotocol, bridge revision 1: no Settings, WindowUpdate or credit (bridge.proto "Older peers")."""
LEGACY_SUBPROTOCOL_JSON: Final = "asap.v1.json"
"""JSON subprotocol, bridge revision 1."""
SUBPROTOCOLS: Final = (
    SUBPROTOCOL_PROTO,
    SUBPROTOCOL_JSON,
    LEGACY_SUBPROTOCOL_PROTO,
    LEGACY_SUBPROTOCOL_JSON,
)
"""Supported subprotocols, most preferred first."""
FLOW_CONTROLLED: Final = frozenset({SUBPROTOCOL_PROTO, SUBPROTOCOL_JSON})
"""The subprotocols of bridge revision 2, which have Settings, WindowUpdate and per-stream credit."""
JSON_SUBPROTOCOLS: Final = frozenset({SUBPROTOCOL_JSON, LEGACY_SUBPROTOCOL_JSON})
"""The subprotocols whose frames are JSON text (capped at ``Limits.max_json_frame_bytes``)."""
DEFAULT_PATH: Final = "/asap/v1/ws"
"""The bridge's default URL path."""

MAX_STREAM_ID: Final = 2**32 - 1
"""Stream ids are ``uint32``."""

# Importing these modules registers their message types in the default descriptor pool, so the
# JSON codec can resolve the "@type" of every Any the bridge carries: AgentService requests and
# responses in MessageFrame.typed and google.rpc details in Status.details.
_REGISTERED_FILES: Final = (
    agent_service_pb2.DESCRIPTOR,
    error_details_pb2.DESCRIPTOR,
    opaque_pb2.DESCRIPTOR,
)

_M = TypeVar("_M", bound=Message)

MessageBody = bridge_pb2.MessageFrame | bytes
"""A received call message: its MessageFrame, or the bytes of ``MessageFrame.binary`` when the
frame was read straight off the wire (:mod:`asap.protocol.wire`)."""
_DEFAULT_MAX_FRAME_BYTES: Final = Limits().max_frame_bytes


class CloseCode(IntEnum):
    """The WebSocket close codes the bridge uses (RFC 6455 §7.4.1; bridge.proto "Close codes")."""

    NORMAL_CLOSURE = 1000
    """The client closed the connection normally."""
    GOING_AWAY = 1001
    """The server is shutting down, after draining its calls."""
    PROTOCOL_ERROR = 1002
    """A frame broke the bridge protocol and could not be attributed to a stream."""
    INVALID_PAYLOAD = 1007
    """A text message was not valid UTF-8 JSON."""
    POLICY_VIOLATION = 1008
    """The peer kept calling past its rate limit, or authentication was refused."""
    MESSAGE_TOO_BIG = 1009
    """A WebSocket message exceeded the hard frame cap (:attr:`Limits.max_frame_bytes`)."""
    INTERNAL_ERROR = 1011
    """The server failed, or the peer missed its heartbeats."""
    TRY_AGAIN_LATER = 1013
    """The server is at its connection limit."""


class FrameError(Exception):
    """A WebSocket message could not be decoded into a Frame.

    This is a connection-level condition, not an :class:`~asap.errors.AsapError`: it never
    travels as a call status. When ``stream_id`` is set (non-zero), the broken frame could still be
    attributed to that stream and the session fails only the stream; otherwise the connection
    must be closed with ``code``.

    Attributes:
        code: The close code to use when the connection is closed for this.
        reason: A short, fixed explanation (fits a close frame's 123-byte reason).
        stream_id: The stream the frame was for, when it could be recovered; else ``None``.
    """

    def __init__(self, code: CloseCode, reason: str, *, stream_id: int | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.stream_id = stream_id

    def __repr__(self) -> str:
        return f"FrameError({self.code!r}, {self.reason!r}, stream_id={self.stream_id!r})"


@mypyc_attr(allow_interpreted_subclasses=True)
class Codec(ABC):
    """Encodes and decodes Frames for one subprotocol; stateless apart from its size cap.

    Args:
        max_frame_bytes: Largest WebSocket message :meth:`decode` accepts, in bytes.
    """

    subprotocol: str
    """The Sec-WebSocket-Protocol name."""
    flow_controlled: bool
    """Whether the subprotocol is bridge revision 2 (Settings, WindowUpdate, per-stream credit)."""
    text: ClassVar[bool]
    """Whether frames travel as text WebSocket messages (else binary)."""
    body_kind: ClassVar[Literal["binary", "typed"]]
    """Which ``MessageFrame.body`` field carries call messages under this subprotocol."""
    body_kinds: ClassVar[tuple[str, ...]]
    """Every ``MessageFrame.body`` field a receiver accepts under this subprotocol."""
    wire_readable: ClassVar[bool] = False
    """Whether a session may read a unary call's frames with :mod:`asap.protocol.wire`."""

    default_subprotocol: ClassVar[str]

    def __init__(
        self, max_frame_bytes: int = _DEFAULT_MAX_FRAME_BYTES, subprotocol: str | None = None
    ) -> None:
        if max_frame_bytes < 1:
            msg = "max_frame_bytes must be at least 1"
            raise ValueError(msg)
        self.max_frame_bytes = max_frame_bytes
        self.subprotocol = subprotocol or self.default_subprotocol
        self.flow_controlled = self.subprotocol in FLOW_CONTROLLED

    @abstractmethod
    def encode(self, frame: bridge_pb2.Frame) -> bytes | str:
        """Encode a frame as the data of one WebSocket message (bytes: binary, str: text)."""

    @abstractmethod
    def decode(self, data: bytes | str) -> bridge_pb2.Frame:
        """Decode the data of one received WebSocket message.

        Args:
            data: ``bytes`` for a binary message, ``str`` for a text message.

        Raises:
            FrameError: The message is of the wrong type, too big, or not a Frame.
        """

    @abstractmethod
    def pack_message(self, message: Message) -> bridge_pb2.MessageFrame:
        """Put a call message into a MessageFrame's body field for this subprotocol."""

    @abstractmethod
    def unpack_message(self, frame: MessageBody, cls: type[_M]) -> _M:
        """Get a call message of type ``cls`` out of a received message body.

        Raises:
            asap.errors.MalformedFrame: The body is missing, of the other subprotocol's kind, of
                another message type, or does not parse.
        """

    @abstractmethod
    def body_size(self, frame: MessageBody) -> int:
        """The serialized size of the message a body carries, as gRPC counts it."""

    def encode_message(
        self, stream_id: int, message: Message, *, max_message_bytes: int | None = None
    ) -> bytes | str:
        """Encode a whole ``Frame{stream_id, message}`` carrying ``message``.

        Args:
            stream_id: The call's stream.
            message: The call message.
            max_message_bytes: When given, refuse a message whose serialization is larger.

        Raises:
            asap.errors.MessageTooLarge: The message is over ``max_message_bytes``; nothing was
                encoded.
        """
        body = self._pack_for(stream_id, message)
        _check_size(self.body_size(body), max_message_bytes)
        return self.encode(bridge_pb2.Frame(stream_id=stream_id, message=body))

    def encode_start(
        self,
        stream_id: int,
        start: bridge_pb2.CallStart,
        message: Message | None = None,
        *,
        half_close: bool = False,
        max_message_bytes: int | None = None,
    ) -> bytes | str:
        """Encode ``Frame{stream_id, start}``, carrying the first request and HalfClose if given.

        bridge.proto "Combined frames": ``CallStart.message`` and ``CallStart.half_close`` stand
        for a MessageFrame and a HalfClose right after the CallStart. ``start`` is not modified.

        Args:
            stream_id: The call's stream.
            start: The CallStart (method, metadata, timeout).
            message: The first request message, or ``None``.
            half_close: Whether no more request messages follow.
            max_message_bytes: When given, refuse a ``message`` whose serialization is larger.

        Raises:
            asap.errors.MessageTooLarge: ``message`` is over ``max_message_bytes``; nothing was
                encoded.
        """
        return self.encode(
            self._start_frame(stream_id, start, message, half_close, max_message_bytes)
        )

    def encode_status(
        self,
        stream_id: int,
        call_status: bridge_pb2.CallStatus,
        message: Message | None = None,
        *,
        max_message_bytes: int | None = None,
    ) -> bytes | str:
        """Encode ``Frame{stream_id, status}``, carrying a last response message if given.

        bridge.proto "Combined frames": ``CallStatus.message`` stands for a MessageFrame right
        before the CallStatus. ``call_status`` is not modified.

        Args:
            stream_id: The call's stream.
            call_status: The status and trailers.
            message: The last response message, or ``None``.
            max_message_bytes: When given, refuse a ``message`` whose serialization is larger.

        Raises:
            asap.errors.MessageTooLarge: ``message`` is over ``max_message_bytes``; nothing was
                encoded.
            TypeError: (JSON) An Any in the frame names a type the descriptor pool does not know.
        """
        return self.encode(self._status_frame(stream_id, call_status, message, max_message_bytes))

    def _start_frame(
        self,
        stream_id: int,
        start: bridge_pb2.CallStart,
        message: Message | None,
        half_close: bool,
        max_message_bytes: int | None,
    ) -> bridge_pb2.Frame:
        """The Frame :meth:`encode_start` encodes (the Frame holds a copy of ``start``)."""
        frame = bridge_pb2.Frame(stream_id=stream_id, start=start)
        if message is not None:
            self._set_body(frame.start.message, message, max_message_bytes, stream_id)
        if half_close:
            frame.start.half_close = True
        return frame

    def _status_frame(
        self,
        stream_id: int,
        call_status: bridge_pb2.CallStatus,
        message: Message | None,
        max_message_bytes: int | None,
    ) -> bridge_pb2.Frame:
        """The Frame :meth:`encode_status` encodes (the Frame holds a copy of ``call_status``)."""
        frame = bridge_pb2.Frame(stream_id=stream_id, status=call_status)
        if message is not None:
            self._set_body(frame.status.message, message, max_message_bytes, stream_id)
        return frame

    def _set_body(
        self,
        target: bridge_pb2.MessageFrame,
        message: Message,
        max_message_bytes: int | None,
        stream_id: int = 0,
    ) -> None:
        """Put ``message`` into ``target`` for this subprotocol, within ``max_message_bytes``."""
        target.CopyFrom(self._pack_for(stream_id, message))
        _check_size(self.body_size(target), max_message_bytes)

    def _pack_for(self, stream_id: int, message: Message) -> bridge_pb2.MessageFrame:
        """:meth:`pack_message` for a message sent on ``stream_id`` (a codec may choose per call)."""
        return self.pack_message(message)


class ProtoCodec(Codec):
    """The ``asap.v1.proto`` subprotocol: binary messages, ``MessageFrame.binary`` bodies."""

    default_subprotocol = SUBPROTOCOL_PROTO
    text = False
    body_kind = "binary"
    body_kinds = ("binary",)
    wire_readable = True

    def encode(self, frame: bridge_pb2.Frame) -> bytes:
        """Serialize a frame (see :meth:`Codec.encode`)."""
        return frame.SerializeToString()

    def decode(self, data: bytes | str) -> bridge_pb2.Frame:
        """Parse a binary message into a frame (see :meth:`Codec.decode`)."""
        if isinstance(data, str):
            raise FrameError(CloseCode.PROTOCOL_ERROR, "text message on asap.v1.proto")
        if len(data) > self.max_frame_bytes:
            raise FrameError(CloseCode.MESSAGE_TOO_BIG, "message over the frame size limit")
        try:
            return bridge_pb2.Frame.FromString(data)
        except DecodeError:
            stream_id = _leading_stream_id(data)
            raise FrameError(
                CloseCode.PROTOCOL_ERROR, "frame does not parse", stream_id=stream_id
            ) from None

    def pack_message(self, message: Message) -> bridge_pb2.MessageFrame:
        """Serialize a message into ``MessageFrame.binary``."""
        return bridge_pb2.MessageFrame(binary=message.SerializeToString())

    def unpack_message(self, frame: MessageBody, cls: type[_M]) -> _M:
        """Parse ``MessageFrame.binary`` as ``cls`` (see :meth:`Codec.unpack_message`)."""
        if body_kind(frame) != "binary":
            msg = "asap.v1.proto message frames carry the message in 'binary'"
            raise MalformedFrame(msg)
        try:
            return cls.FromString(binary_of(frame))
        except DecodeError:
            msg = f"message does not parse as {cls.DESCRIPTOR.full_name}"
            raise MalformedFrame(msg) from None

    def body_size(self, frame: MessageBody) -> int:
        """Length of ``MessageFrame.binary`` (0 when another body is set)."""
        return len(binary_of(frame))

    def encode_message(
        self, stream_id: int, message: Message, *, max_message_bytes: int | None = None
    ) -> bytes:
        """Encode ``Frame{stream_id, message{binary}}`` by hand: the hot path of every response.

        Building the Frame through protobuf would copy the body three more times; the wire format
        of these two fields is fixed, so the message is serialized once and framed with a
        six-to-sixteen-byte header. The result is byte-for-byte what protobuf would produce.
        """
        prefix = _stream_prefix(stream_id)
        body = message.SerializeToString()
        size = len(body)
        _check_size(size, max_message_bytes)
        header = varint(size)
        # Frame.stream_id (field 1, varint; omitted when 0), Frame.message (field 3,
        # length-delimited) holding MessageFrame.binary (field 1, length-delimited).
        inner = 1 + len(header) + size
        return b"".join((prefix, b"\x1a", varint(inner), b"\x0a", header, body))

    def encode_start(
        self,
        stream_id: int,
        start: bridge_pb2.CallStart,
        message: Message | None = None,
        *,
        half_close: bool = False,
        max_message_bytes: int | None = None,
    ) -> bytes:
        """Encode a CallStart by hand around the request (see :meth:`Codec.encode_start`).

        The hot path of every unary call: protobuf would copy the serialized request into a
        MessageFrame, the CallStart and the Frame; here it is serialized once and spliced in.
        """
        if message is None or start.HasField("message") or start.half_close:
            # Nothing to splice, or fields already set that the splice would duplicate.
            return self.encode(
                self._start_frame(stream_id, start, message, half_close, max_message_bytes)
            )
        # CallStart.message is field 4 and half_close field 5, after every field of ``start``, so
        # appending them gives protobuf's own field order, byte for byte.
        tail = _START_HALF_CLOSE if half_close else b""
        return _spliced(
            stream_id,
            _FRAME_START,
            start.SerializeToString(),
            _START_MESSAGE,
            message,
            tail,
            max_message_bytes,
        )

    def encode_status(
        self,
        stream_id: int,
        call_status: bridge_pb2.CallStatus,
        message: Message | None = None,
        *,
        max_message_bytes: int | None = None,
    ) -> bytes:
        """Encode a CallStatus by hand around the response (see :meth:`Codec.encode_status`)."""
        ok = call_status is OK_CALL_STATUS  # shared and never modified: no message in it
        if message is None or (not ok and has_field(call_status, "message")):
            return self.encode(
                self._status_frame(stream_id, call_status, message, max_message_bytes)
            )
        # CallStatus.message is field 3, after status (1) and trailers (2): protobuf's order.
        head = _OK_CALL_STATUS_BYTES if ok else serialize(call_status)
        return _spliced(
            stream_id, _FRAME_STATUS, head, _STATUS_MESSAGE, message, b"", max_message_bytes
        )


class JsonCodec(Codec):
    """The ``asap.v1.json`` subprotocol: proto3 JSON text, ``MessageFrame.typed`` bodies.

    Schema skew follows :mod:`asap.protocol.jsonwire`: an Any of an unknown type is kept as an
    ``asap.v1.OpaqueAny``, unknown fields are ignored, enum values are written as numbers and an
    unknown enum name is refused; ``MessageFrame.binary`` bodies are accepted too, and a call is
    answered in the form its requests used.
    """

    default_subprotocol = SUBPROTOCOL_JSON
    text = True
    body_kind = "typed"
    body_kinds = ("typed", "binary")
    pool: ClassVar[descriptor_pool.DescriptorPool] = descriptor_pool.Default()
    """The types an Any may name: every generated module imported so far."""

    def __init__(
        self, max_frame_bytes: int = _DEFAULT_MAX_FRAME_BYTES, subprotocol: str | None = None
    ) -> None:
        super().__init__(max_frame_bytes, subprotocol)
        self._forms = jsonwire.BodyForms()

    def encode(self, frame: bridge_pb2.Frame) -> str:
        """Encode a frame as compact proto3 JSON (enum values as numbers; see the class)."""
        self._forms.forget(frame)
        try:
            data = jsoncodec.to_json(frame)
        except _FAST_WRITE_DECLINED:  # json_format decides (and raises what it raises)
            return _JSON_ENCODER.encode(self._frame_to_dict(frame))
        return _dump_json(data)

    def _frame_to_dict(self, frame: bridge_pb2.Frame) -> object:
        """The frame as protobuf's json_format converts it (the slow path)."""
        try:
            return json_format.MessageToDict(
                frame, descriptor_pool=self.pool, use_integers_for_enums=True
            )
        except TypeError:  # an Any of a type the pool lacks: written as an OpaqueAny
            return jsonwire.frame_to_dict(frame, self.pool)

    def decode(self, data: bytes | str) -> bridge_pb2.Frame:
        """Parse a text message into a frame (see :meth:`Codec.decode`)."""
        if not isinstance(data, str):
            raise FrameError(CloseCode.PROTOCOL_ERROR, "binary message on asap.v1.json")
        # Each character is one to four UTF-8 bytes: measure only when the bounds disagree.
        if len(data) > self.max_frame_bytes or (
            4 * len(data) > self.max_frame_bytes
            and len(data.encode("utf-8", "surrogatepass")) > self.max_frame_bytes
        ):
            raise FrameError(CloseCode.MESSAGE_TOO_BIG, "message over the frame size limit")
        try:
            parsed = _load_json(data)
        except (ValueError, RecursionError):
            raise FrameError(CloseCode.INVALID_PAYLOAD, "text is not valid JSON") from None
        if not isinstance(parsed, dict):
            raise FrameError(CloseCode.PROTOCOL_ERROR, "frame is not a JSON object")
        frame = bridge_pb2.Frame()
        try:
            jsoncodec.parse(parsed, frame)
        except _FAST_READ_DECLINED:  # json_format and jsonwire decide, from a fresh Frame
            frame = self._parse_slowly(parsed)
        self._forms.observe(frame)
        return frame

    def _parse_slowly(self, parsed: dict[str, object]) -> bridge_pb2.Frame:
        """The frame as protobuf's json_format parses it, else under jsonwire's skew rules."""
        frame = bridge_pb2.Frame()
        try:
            json_format.ParseDict(parsed, frame, descriptor_pool=self.pool)
        except _JSON_ERRORS:  # unknown fields, types or enum names: the lenient reader decides
            try:
                frame = jsonwire.parse_frame(parsed, self.pool)
            except _JSON_ERRORS as exc:
                stream_id = _json_stream_id(parsed)
                reason = (
                    "unknown enum value name (send enum numbers)"
                    if isinstance(exc, jsonwire.UnknownEnumName)
                    else "JSON is not a Frame"
                )
                raise FrameError(CloseCode.PROTOCOL_ERROR, reason, stream_id=stream_id) from None
        return frame

    def encode_message(
        self, stream_id: int, message: Message, *, max_message_bytes: int | None = None
    ) -> str:
        """Encode ``Frame{stream_id, message{typed}}`` from the message itself (not packed first)."""
        if self._typed_ok(stream_id, message):
            _check_size(message.ByteSize(), max_message_bytes)
            try:
                typed = jsoncodec.packed_json(message)
            except _FAST_WRITE_DECLINED:
                pass
            else:
                return self._dump(stream_id, _JSON_MESSAGE, {_JSON_TYPED: typed})
        return self.encode(
            bridge_pb2.Frame(
                stream_id=stream_id,
                message=self._checked_body(stream_id, message, max_message_bytes),
            )
        )

    def encode_start(
        self,
        stream_id: int,
        start: bridge_pb2.CallStart,
        message: Message | None = None,
        *,
        half_close: bool = False,
        max_message_bytes: int | None = None,
    ) -> str:
        """Encode a CallStart around the request's own JSON (see :meth:`Codec.encode_start`)."""
        if (
            message is not None
            and not start.HasField("message")
            and not start.half_close
            and self._typed_ok(stream_id, message)
        ):
            _check_size(message.ByteSize(), max_message_bytes)
            try:
                head = jsoncodec.to_json_object(start)
                typed = jsoncodec.packed_json(message)
            except _FAST_WRITE_DECLINED:
                pass
            else:
                # CallStart.message (4) and half_close (5) follow every other field: field order.
                head[_JSON_START_MESSAGE] = {_JSON_TYPED: typed}
                if half_close:
                    head[_JSON_HALF_CLOSE] = True
                return self._dump(stream_id, _JSON_START, head)
        return self.encode(
            self._start_frame(stream_id, start, message, half_close, max_message_bytes)
        )

    def encode_status(
        self,
        stream_id: int,
        call_status: bridge_pb2.CallStatus,
        message: Message | None = None,
        *,
        max_message_bytes: int | None = None,
    ) -> str:
        """Encode a CallStatus around the response's own JSON (see :meth:`Codec.encode_status`)."""
        if (
            message is not None
            and not call_status.HasField("message")
            and self._typed_ok(stream_id, message)
        ):
            _check_size(message.ByteSize(), max_message_bytes)
            try:
                head = jsoncodec.to_json_object(call_status)
                typed = jsoncodec.packed_json(message)
            except _FAST_WRITE_DECLINED:
                pass
            else:
                self._forms.forget_stream(stream_id)
                # CallStatus.message (3) follows status (1) and trailers (2): field order.
                head[_JSON_STATUS_MESSAGE] = {_JSON_TYPED: typed}
                return self._dump(stream_id, _JSON_STATUS, head)
        return self.encode(self._status_frame(stream_id, call_status, message, max_message_bytes))

    def _typed_ok(self, stream_id: int, message: Message) -> bool:
        """Whether ``message`` goes in ``typed`` on a valid stream id (the JSON built directly)."""
        return 0 <= stream_id <= MAX_STREAM_ID and not self._forms.binary(stream_id, message)

    def _checked_body(
        self, stream_id: int, message: Message, max_message_bytes: int | None
    ) -> bridge_pb2.MessageFrame:
        body = self._pack_for(stream_id, message)
        _check_size(self.body_size(body), max_message_bytes)
        return body

    @staticmethod
    def _dump(stream_id: int, kind: str, value: dict[str, object]) -> str:
        """``Frame{stream_id, kind: value}`` as JSON text (``streamId`` omitted when 0, as protobuf)."""
        frame: dict[str, object] = (
            {_JSON_STREAM_ID: stream_id, kind: value} if stream_id else {kind: value}
        )
        return _dump_json(frame)

    def pack_message(self, message: Message) -> bridge_pb2.MessageFrame:
        """Pack a message into ``MessageFrame.typed``."""
        frame = bridge_pb2.MessageFrame()
        frame.typed.Pack(message)
        return frame

    def _pack_for(self, stream_id: int, message: Message) -> bridge_pb2.MessageFrame:
        """``binary`` when the call's requests used it, or a request holds unknown fields."""
        if self._forms.binary(stream_id, message):
            return bridge_pb2.MessageFrame(binary=message.SerializeToString())
        return self.pack_message(message)

    def unpack_message(self, frame: MessageBody, cls: type[_M]) -> _M:
        """Unpack ``MessageFrame.typed`` (or ``binary``) as ``cls`` (see :meth:`Codec.unpack_message`)."""
        name = cls.DESCRIPTOR.full_name
        kind = body_kind(frame)
        if kind == "binary":
            try:
                return cls.FromString(binary_of(frame))
            except DecodeError:
                msg = f"message does not parse as {name}"
                raise MalformedFrame(msg) from None
        if isinstance(frame, bytes) or kind != "typed":  # (wire bytes are always binary)
            msg = "asap.v1.json message frames carry the message in 'typed' or 'binary'"
            raise MalformedFrame(msg)
        if frame.typed.TypeName() != name:
            msg = f"expected a {name}, got {frame.typed.TypeName() or 'no type'}"
            raise MalformedFrame(msg)
        try:
            return cls.FromString(frame.typed.value)
        except DecodeError:
            msg = f"message does not parse as {name}"
            raise MalformedFrame(msg) from None

    def body_size(self, frame: MessageBody) -> int:
        """Length of the serialized message inside ``MessageFrame.typed`` or ``binary``."""
        if isinstance(frame, bytes) or frame.WhichOneof("body") == "binary":
            return len(binary_of(frame))
        return len(frame.typed.value)


def codec_for(subprotocol: str, *, max_frame_bytes: int = _DEFAULT_MAX_FRAME_BYTES) -> Codec:
    """Return the codec of a negotiated subprotocol.

    Raises:
        ValueError: ``subprotocol`` is not one of :data:`SUBPROTOCOLS`.
    """
    if subprotocol in (SUBPROTOCOL_PROTO, LEGACY_SUBPROTOCOL_PROTO):
        return ProtoCodec(max_frame_bytes, subprotocol)
    if subprotocol in (SUBPROTOCOL_JSON, LEGACY_SUBPROTOCOL_JSON):
        return JsonCodec(max_frame_bytes, subprotocol)
    msg = f"unsupported subprotocol {subprotocol!r}"
    raise ValueError(msg)


_JSON_ERRORS: Final = (
    json_format.ParseError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    RecursionError,
    ArithmeticError,  # OverflowError: an integer like 10**400 where protobuf wants a double
)
_JSON_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""Compact proto3 JSON text of json_format's dicts (one encoder, not one per frame)."""


def _dump_json(document: object) -> str:
    """Compact JSON text of a document :mod:`jsoncodec` wrote, with orjson.

    The same text as :data:`_JSON_ENCODER` but for how floats are spelled (``1e-7``, not
    ``1e-07``: the same number), in a tenth of the time. Only for jsoncodec's documents: they hold
    no NaN or infinite float (it writes those as proto3 JSON's strings, or declines), which orjson
    would write as ``null``; json_format's dicts go through :data:`_JSON_ENCODER`.
    """
    return orjson.dumps(document).decode()


def _load_json(text: str) -> object:
    """Parse JSON text: orjson, and the standard library for what orjson refuses.

    orjson is strict RFC 8259, where ``json.loads`` also takes ``NaN`` literals, numbers beyond
    a double (``10**400``) and lone surrogate escapes; those are left to ``json.loads`` so that
    jsoncodec and json_format see them and answer as they always did (a typed error for the call,
    not a closed connection). orjson reads integers beyond 64 bits as floats: no protobuf integer
    field holds one (both are out of range), and a Struct number is a double either way.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


_FRAME_FIELDS: Final = bridge_pb2.Frame.DESCRIPTOR.fields_by_name
_JSON_STREAM_ID: Final = _FRAME_FIELDS["stream_id"].json_name
_JSON_START: Final = _FRAME_FIELDS["start"].json_name
_JSON_MESSAGE: Final = _FRAME_FIELDS["message"].json_name
_JSON_STATUS: Final = _FRAME_FIELDS["status"].json_name
_JSON_START_MESSAGE: Final = bridge_pb2.CallStart.DESCRIPTOR.fields_by_name["message"].json_name
_JSON_HALF_CLOSE: Final = bridge_pb2.CallStart.DESCRIPTOR.fields_by_name["half_close"].json_name
_JSON_STATUS_MESSAGE: Final = bridge_pb2.CallStatus.DESCRIPTOR.fields_by_name["message"].json_name
_JSON_TYPED: Final = bridge_pb2.MessageFrame.DESCRIPTOR.fields_by_name["typed"].json_name
_FAST_READ_DECLINED: Final = (jsoncodec.Unsupported, *_JSON_ERRORS)
"""What :func:`jsoncodec.parse` raises when it leaves a frame to json_format."""
_FAST_WRITE_DECLINED: Final = (jsoncodec.Unsupported, ValueError, TypeError, KeyError, DecodeError)
"""What :func:`jsoncodec.to_json` raises when it leaves a frame to json_format."""


OK: Final = status_pb2.Status()
"""The OK status (code 0, nothing else); never modified."""
OK_CALL_STATUS: Final = bridge_pb2.CallStatus(status=OK)
"""The CallStatus of nearly every call (OK, no trailers), built once; never modified."""
_OK_CALL_STATUS_BYTES: Final = OK_CALL_STATUS.SerializeToString()


def body_kind(body: MessageBody) -> str | None:
    """Which ``MessageFrame.body`` field a received body is in (``binary`` for wire bytes)."""
    return "binary" if isinstance(body, bytes) else body.WhichOneof("body")


def binary_of(body: MessageBody) -> bytes:
    """The ``MessageFrame.binary`` bytes of a received body (empty when another field is set)."""
    return body if isinstance(body, bytes) else body.binary


def _check_size(size: int, limit: int | None) -> None:
    if limit is not None and size > limit:
        msg = f"message larger than max ({size} vs. {limit})"
        raise MessageTooLarge(msg)


# Tags (field number << 3 | wire type 2, length-delimited) of the fields spliced by hand.
_FRAME_START: Final = b"\x12"  # Frame.start = 2
_FRAME_STATUS: Final = b"\x3a"  # Frame.status = 7
_START_MESSAGE: Final = b"\x22"  # CallStart.message = 4
_STATUS_MESSAGE: Final = b"\x1a"  # CallStatus.message = 3
_MESSAGE_BINARY: Final = b"\x0a"  # MessageFrame.binary = 1
_START_HALF_CLOSE: Final = b"\x28\x01"  # CallStart.half_close = 5 (varint), true


def _stream_prefix(stream_id: int) -> bytes:
    """``Frame.stream_id`` (field 1, varint) as protobuf writes it: nothing when 0.

    Raises:
        ValueError: ``stream_id`` is not a uint32.
    """
    if not 0 <= stream_id <= MAX_STREAM_ID:
        msg = f"stream id out of range: {stream_id}"
        raise ValueError(msg)
    return b"\x08" + varint(stream_id) if stream_id else b""


def _spliced(
    stream_id: int,
    kind_tag: bytes,
    head_bytes: bytes,
    body_tag: bytes,
    message: Message,
    tail: bytes,
    max_message_bytes: int | None,
) -> bytes:
    """``Frame{stream_id, kind: head + body_tag: MessageFrame{binary: message} + tail}``, by hand.

    ``head_bytes`` is the serialized head; the message is serialized once and joined in with its
    two length-delimited headers, so its bytes are copied once rather than once per nesting level.
    """
    prefix = _stream_prefix(stream_id)
    body = serialize(message)
    size = len(body)
    _check_size(size, max_message_bytes)
    size_varint = varint(size)
    message_frame = 1 + len(size_varint) + size
    message_frame_varint = varint(message_frame)
    kind = len(head_bytes) + len(body_tag) + len(message_frame_varint) + message_frame + len(tail)
    return b"".join(
        (
            prefix,
            kind_tag,
            varint(kind),
            head_bytes,
            body_tag,
            message_frame_varint,
            _MESSAGE_BINARY,
            size_varint,
            body,
            tail,
        )
    )


_ONE_BYTE_VARINTS: Final = tuple(bytes((value,)) for value in range(0x80))


def varint(value: int) -> bytes:
    """Encode a non-negative int as a protobuf base-128 varint (also the core's, for stored bytes)."""
    # Stream ids and frame lengths are mostly one or two varint bytes: skip the loop for them.
    if value < 0x80:
        return _ONE_BYTE_VARINTS[value]
    if value < 0x4000:
        # One int method call; bytes((a, b)) builds a tuple and goes through the type's call.
        return ((value >> 7) << 8 | (value & 0x7F) | 0x80).to_bytes(2, "little")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _leading_stream_id(data: bytes) -> int | None:
    """Read ``Frame.stream_id`` from the front of a frame that does not parse as a whole.

    Encoders write fields in field-number order, so a stream id sits first: tag 0x08 then a varint.
    """
    if not data or data[0] != 0x08:
        return None
    value = 0
    for shift, byte in zip(range(0, 35, 7), data[1:6], strict=False):
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value if 0 < value <= MAX_STREAM_ID else None
    return None


def _json_stream_id(parsed: Mapping[str, object]) -> int | None:
    """Read ``streamId`` (or ``stream_id``) from a JSON object that is not a valid Frame."""
    value = parsed.get("streamId", parsed.get("stream_id"))
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_STREAM_ID:
        return value
    return None
