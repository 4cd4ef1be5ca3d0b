"""AsapError ↔ gRPC status: code, message and ``grpc-status-details-bin`` trailers.

An error travels as a gRPC status whose code is the error's :class:`~asap.errors.Code` (the mapping
is the identity), whose message is the error's message, and whose trailing metadata carries the
serialized ``asap.v1.Status`` under ``grpc-status-details-bin``. ``asap.v1.Status`` is
byte-identical to ``google.rpc.Status``, so this is gRPC's standard "richer error model": any gRPC
client (``grpc_status.rpc_status.from_call`` in Python) reads the same ErrorInfo ASAP reads.

Statuses produced by gRPC itself carry no details. :func:`error_from_rpc` maps them by code
(``DEADLINE_EXCEEDED`` → DeadlineExceeded, ``UNAVAILABLE`` → Unavailable, …), except gRPC's own
message-size failures, which become :class:`~asap.errors.MessageTooLarge` so that a gRPC caller
sees the same class as a WebSocket caller, and its INTERNAL/UNKNOWN reports of a broken stream or
connection ("Internal error from Core", RST_STREAM, …), which become
:class:`~asap.errors.ConnectionLost` (UNAVAILABLE, retried) as on the bridge.
"""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError

from asap._typing import Metadata, MetadataValue
from asap.errors import (
    AsapError,
    Code,
    ConnectionLost,
    MessageTooLarge,
    ShuttingDown,
    from_status,
    to_status,
)
from asap.v1 import status_pb2


DETAILS_KEY = "grpc-status-details-bin"
"""The trailing metadata key of the serialized ``google.rpc.Status`` (gRPC's richer error model)."""

GRPC_CODES: dict[Code, grpc.StatusCode] = {
    Code(status.value[0]): status for status in grpc.StatusCode
}
"""Each ASAP code and the grpc StatusCode with the same number."""

_CODES: dict[grpc.StatusCode, Code] = {status: code for code, status in GRPC_CODES.items()}

# grpc core's own messages when a message exceeds grpc.max_{receive,send}_message_length, after a
# "SERVER: " or "CLIENT: " prefix saying which side refused: "Received message larger than max
# (N vs. M)".
_SIZE_MESSAGES = ("Received message larger than max", "Sent message larger than max")

# grpc core's own messages when the HTTP/2 stream or connection under a call broke (a cut TCP
# connection, a reset stream): it reports some of those as INTERNAL or UNKNOWN without details, yet
# they are transport failures the caller should retry, so they become ConnectionLost (UNAVAILABLE).
_TRANSPORT_MESSAGES = (
    "Internal error from Core",
    "RST_STREAM",
    "Stream removed",
    "Socket closed",
    "Connection reset",
    "GOAWAY",
    "Broken pipe",
)


def to_grpc_status(
    error: AsapError, trailing_metadata: Metadata = ()
) -> tuple[grpc.StatusCode, str, Metadata]:
    """Encode an error as the (code, details, trailing metadata) a gRPC server aborts with.

    Args:
        error: The error to send.
        trailing_metadata: Trailing metadata the handler set; the status details are appended.

    Returns:
        The gRPC code, the status message, and the trailers including ``grpc-status-details-bin``.
    """
    details = to_status(error).SerializeToString()
    return (
        GRPC_CODES[error.code],
        error.message,
        (*trailing_metadata, (DETAILS_KEY, details)),
    )


def error_from_rpc(exc: grpc.aio.AioRpcError, *, cancelled_locally: bool = False) -> AsapError:
    """Decode a failed gRPC call into the AsapError the server raised.

    The error's ``trailing_metadata`` is the call's trailers without ``grpc-status-details-bin``.
    Details whose code disagrees with the call's code (a proxy rewrote the status) are ignored.
    CANCELLED without ASAP details that the caller did not ask for is grpc core's answer to a call
    that reached a server while it shut down, or was still running when its grace ended:
    ShuttingDown, which the client retries elsewhere.

    Args:
        exc: The error grpc.aio raised.
        cancelled_locally: The caller cancelled this call itself.

    Returns:
        The decoded error (never raised here).
    """
    code = _CODES.get(exc.code(), Code.UNKNOWN)
    message = exc.details() or ""
    status: status_pb2.Status | None = None
    trailing: list[tuple[str, MetadataValue]] = []
    for key, value in exc.trailing_metadata() or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                status = None
        else:
            trailing.append((key, value))
    error: AsapError
    if status is not None and status.code == code:
        error = from_status(status)
    elif code == Code.RESOURCE_EXHAUSTED and any(text in message for text in _SIZE_MESSAGES):
        error = MessageTooLarge(message)
    elif code in (Code.INTERNAL, Code.UNKNOWN) and any(
        text in message for text in _TRANSPORT_MESSAGES
    ):
        error = ConnectionLost(f"the connection failed: {message}")
    elif code == Code.CANCELLED and status is None and not cancelled_locally:
        error = ShuttingDown(f"the server cancelled the call (it is shutting down): {message}")
    else:
        error = from_status(status_pb2.Status(code=code, message=message))
    error.trailing_metadata = tuple(trailing)
    return error
