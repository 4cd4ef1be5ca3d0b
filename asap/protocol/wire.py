"""Reading the two frames of every unary call straight off the wire (``asap.v1.proto`` only).

A unary call is one combined CallStart from the client and one CallStatus carrying the response
from the server (bridge.proto "Combined frames"). Parsing them with protobuf builds a Frame, a
CallStart or CallStatus, a MessageFrame and a Duration, copies the body out of the Frame twice,
and looks every field up by name. :func:`read_start` and :func:`read_status` read the few fields
these frames have from the bytes, in one pass, and slice the body out once.

They read a narrow, canonical form only: the fields in field-number order, each at most once,
of the expected wire types, with no metadata, trailers, status details or unknown fields, and
nothing past the end. That is what every encoder writes for these calls (protobuf serializes in
field-number order), so the form is the common case, not an assumption: for anything else they
return ``None`` and the caller parses the frame with protobuf, which gives the full semantics and
the errors. They never decide a frame is bad; values a checker must refuse (a negative timeout,
say) are read as protobuf would and left to the same checks as a parsed frame.
"""

from __future__ import annotations

from typing import Final

from asap.protocol.frames import MAX_STREAM_ID


_LEN: Final = 2
"""Wire type of length-delimited fields."""
_MAX_INT64: Final = 2**63 - 1
_MAX_INT32: Final = 2**31 - 1


class StartFields:
    """A combined CallStart with no metadata, as :func:`read_start` read it."""

    __slots__ = ("body", "half_close", "method", "stream_id", "timeout")

    stream_id: Final[int]
    method: Final[str]
    timeout: Final[tuple[int, int] | None]
    """``CallStart.timeout`` as (seconds, nanos); ``None`` when unset."""
    body: Final[bytes | None]
    """``CallStart.message.binary``; ``None`` when the CallStart carries no message."""
    half_close: Final[bool]

    def __init__(
        self,
        stream_id: int,
        method: str,
        timeout: tuple[int, int] | None,
        body: bytes | None,
        half_close: bool,
    ) -> None:
        self.stream_id = stream_id
        self.method = method
        self.timeout = timeout
        self.body = body
        self.half_close = half_close


class StatusFields:
    """A CallStatus with an OK status and no trailers, as :func:`read_status` read it."""

    __slots__ = ("body", "stream_id")

    stream_id: Final[int]
    body: Final[bytes | None]
    """``CallStatus.message.binary``; ``None`` when the CallStatus carries no message."""

    def __init__(self, stream_id: int, body: bytes | None) -> None:
        self.stream_id = stream_id
        self.body = body


def read_start(data: bytes) -> StartFields | None:
    """Read ``Frame{stream_id, start: CallStart{method, timeout, message{binary}, half_close}}``.

    Returns:
        The fields, or ``None`` when ``data`` is not in the canonical form (parse it instead).
    """
    pos, end, stream_id = _frame_kind(data, 0x12)  # Frame.start: field 2, LEN
    method = ""
    timeout: tuple[int, int] | None = None
    body: bytes | None = None
    half_close = False
    last = 0
    while 0 <= pos < end:
        tag = data[pos]
        if tag >> 3 <= last or tag & 0x80:  # out of order, repeated, or field 16 and up
            return None
        last = tag >> 3
        pos += 1
        if tag == 0x0A:  # method: field 1, LEN
            pos, stop = _length(data, pos, end)
            if pos < 0:
                return None
            try:
                method = data[pos:stop].decode()
            except UnicodeDecodeError:
                return None
            pos = stop
        elif tag == 0x1A:  # timeout: field 3, LEN (google.protobuf.Duration)
            pos, stop = _length(data, pos, end)
            if pos < 0:
                return None
            timeout = _duration(data, pos, stop)
            if timeout is None:
                return None
            pos = stop
        elif tag == 0x22:  # message: field 4, LEN (MessageFrame)
            pos, body = _message(data, pos, end)
        elif tag == 0x28:  # half_close: field 5, varint
            pos, value = _varint(data, pos, end)
            if pos < 0 or value > 1:
                return None
            half_close = value == 1
        else:  # metadata (field 2), or a field this reader does not know
            return None
    if pos < 0 or pos != end:  # not this kind, or a field that did not read
        return None
    return StartFields(stream_id, method, timeout, body, half_close)


def read_status(data: bytes) -> StatusFields | None:
    """Read ``Frame{stream_id, status: CallStatus{status: OK, message{binary}}}``.

    The status must be OK with nothing else set: absent or an empty ``Status``.

    Returns:
        The fields, or ``None`` when ``data`` is not in the canonical form (parse it instead).
    """
    pos, end, stream_id = _frame_kind(data, 0x3A)  # Frame.status: field 7, LEN
    body: bytes | None = None
    last = 0
    while 0 <= pos < end:
        tag = data[pos]
        if tag >> 3 <= last or tag & 0x80:  # out of order, repeated, or field 16 and up
            return None
        last = tag >> 3
        pos += 1
        if tag == 0x0A:  # status: field 1, LEN; only an empty Status (code 0, no details)
            if pos >= end or data[pos] != 0:
                return None
            pos += 1
        elif tag == 0x1A:  # message: field 3, LEN (MessageFrame)
            pos, body = _message(data, pos, end)
        else:  # trailers (field 2), or a field this reader does not know
            return None
    if pos < 0 or pos != end:  # not this kind, or a field that did not read
        return None
    return StatusFields(stream_id, body)


def _frame_kind(data: bytes, kind_tag: int) -> tuple[int, int, int]:
    """``Frame{stream_id, kind}`` with the kind last: (start, end, stream id) of the kind's bytes.

    The start is -1 unless the frame is a non-zero stream id, then ``kind_tag`` and its length,
    reaching exactly the end of ``data``.
    """
    if not data or data[0] != 0x08:
        return -1, -1, 0
    pos, stream_id = _varint(data, 1, len(data))
    if pos < 0 or not 0 < stream_id <= MAX_STREAM_ID or pos >= len(data) or data[pos] != kind_tag:
        return -1, -1, 0
    start, end = _length(data, pos + 1, len(data))
    if start < 0 or end != len(data):
        return -1, -1, 0
    return start, end, stream_id


def _message(data: bytes, pos: int, end: int) -> tuple[int, bytes | None]:
    """A length-prefixed MessageFrame at ``pos`` holding exactly ``binary`` (field 1, LEN).

    Returns:
        (position after it, the binary body); position -1 if it is anything else.
    """
    start, stop = _length(data, pos, end)
    if start < 0 or start >= stop or data[start] != 0x0A:
        return -1, None
    body_start, body_stop = _length(data, start + 1, stop)
    if body_start < 0 or body_stop != stop:
        return -1, None
    return stop, data[body_start:body_stop]


def _duration(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """(seconds, nanos) of a Duration in data[pos:end]; ``None`` when not canonical."""
    seconds = 0
    nanos = 0
    if pos < end and data[pos] == 0x08:  # seconds: field 1, varint (int64)
        pos, seconds = _varint(data, pos + 1, end)
        if pos < 0 or seconds > _MAX_INT64:  # a negative int64: leave it to protobuf
            return None
    if pos < end and data[pos] == 0x10:  # nanos: field 2, varint (int32)
        pos, nanos = _varint(data, pos + 1, end)
        if pos < 0 or nanos > _MAX_INT32:
            return None
    if pos != end:
        return None
    return seconds, nanos


def _length(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """A length prefix at ``pos``: (start, end) of the field's bytes; start -1 past ``end``."""
    pos, size = _varint(data, pos, end)
    if pos < 0 or size > end - pos:
        return -1, -1
    return pos, pos + size


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """A base-128 varint at ``pos``: (position after it, value); position -1 if cut or too long."""
    value = 0
    shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return pos, value
        shift += 7
    return -1, 0
