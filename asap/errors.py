"""The ASAP error model: status codes, the exception tree, and the wire status they travel as.

Every error a peer can see is an :class:`AsapError`. It carries a :class:`Code` (gRPC's numbers), a
reason from the schema's ``ErrorReason`` registry, a message and optional detail messages. On
the wire it becomes an ``asap.v1.Status`` (byte-compatible with ``google.rpc.Status``) whose
details start with a ``google.rpc.ErrorInfo`` (domain ``asap``); :func:`from_status` turns that
back into the same class with the same details, whichever transport carried it.

Exception tree::

    AsapError
    ├── Cancelled
    ├── Unknown
    ├── InvalidArgument
    │   ├── InvalidEnvelope        (MISSING_PAYLOAD, INVALID_URN, MISSING_CORRELATION_ID, …)
    │   └── MalformedFrame
    ├── DeadlineExceeded
    ├── NotFound
    │   ├── SkillNotFound
    │   └── UnknownRecipient       (the envelope is addressed to another agent)
    ├── AlreadyExists
    │   └── IdempotencyKeyReused   (an envelope id reused for different content)
    ├── PermissionDenied
    │   ├── SenderMismatch
    │   └── IdentityMismatch       (a token and a client certificate name different subjects)
    ├── ResourceExhausted
    │   ├── RateLimited            (carries retry_after, sent as google.rpc.RetryInfo)
    │   ├── MessageTooLarge
    │   ├── TooManyCalls
    │   ├── PrincipalQuotaExceeded (one principal's calls in flight, over every connection)
    │   ├── FlowControlViolation   (a bridge peer sent beyond its credit)
    │   └── TooManyEnvelopes
    ├── FailedPrecondition
    ├── Aborted
    ├── OutOfRange
    ├── Unimplemented
    │   ├── NoHandler
    │   ├── UnknownMethod
    │   ├── UnknownPayload         (a payload kind newer than the recipient's schema)
    │   └── UnsupportedVersion     (an asap_version major the recipient does not speak)
    ├── Internal
    ├── Unavailable
    │   ├── ShuttingDown
    │   ├── ConnectionLost         (carries the WebSocket close code when there was one)
    │   └── StoreUnavailable       (the shared dedupe / rate-limit store cannot be reached)
    ├── DataLoss
    └── Unauthenticated            (MISSING_CREDENTIALS, INVALID_TOKEN)

Errors that are the caller's own misuse and never travel: :class:`InsecureTransportError`
(a ``ValueError``) and :class:`InvalidState` (a ``RuntimeError``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from enum import IntEnum
from typing import ClassVar, TypeVar

from google.protobuf import any_pb2, descriptor_pool, duration_pb2, message_factory
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from asap._typing import Metadata
from asap.v1 import error_pb2, opaque_pb2, status_pb2


DOMAIN = "asap"
"""The ``ErrorInfo.domain`` of every error ASAP raises."""

_REASON_PREFIX = "ERROR_REASON_"
_M = TypeVar("_M", bound=Message)


class Code(IntEnum):
    """Status codes with gRPC's numbers (``google.rpc.Code``): the gRPC mapping is the identity."""

    OK = 0
    """Not an error."""
    CANCELLED = 1
    """The call was cancelled, usually by the caller."""
    UNKNOWN = 2
    """An error with no better code."""
    INVALID_ARGUMENT = 3
    """The request is invalid regardless of the system's state."""
    DEADLINE_EXCEEDED = 4
    """The deadline passed before the call completed."""
    NOT_FOUND = 5
    """A requested entity does not exist."""
    ALREADY_EXISTS = 6
    """The entity a request would create already exists."""
    PERMISSION_DENIED = 7
    """The caller is authenticated but not allowed to do this."""
    RESOURCE_EXHAUSTED = 8
    """A quota, rate or size limit was exhausted."""
    FAILED_PRECONDITION = 9
    """The system is not in a state that allows the operation."""
    ABORTED = 10
    """The operation was aborted, for example by a concurrency conflict."""
    OUT_OF_RANGE = 11
    """A value was past its valid range."""
    UNIMPLEMENTED = 12
    """The operation is not implemented or supported."""
    INTERNAL = 13
    """An internal error; the details are in the server's logs."""
    UNAVAILABLE = 14
    """The service is unavailable for now; retrying with backoff may succeed."""
    DATA_LOSS = 15
    """Unrecoverable data loss or corruption."""
    UNAUTHENTICATED = 16
    """No valid credentials were presented."""


def _reason_codes() -> dict[str, Code]:
    """Read the ErrorReason registry and each reason's gRPC code from the schema's descriptor."""
    codes: dict[str, Code] = {}
    for value in error_pb2.ErrorReason.DESCRIPTOR.values:
        if value.number == 0:
            continue
        code = value.GetOptions().Extensions[error_pb2.grpc_code]
        codes[value.name.removeprefix(_REASON_PREFIX)] = Code(code)
    return codes


REASON_CODES: Mapping[str, Code] = _reason_codes()
"""Every registered reason (without the ``ERROR_REASON_`` prefix) and the code it always carries."""


class AsapError(Exception):
    """Base class of every error that travels between peers.

    Subclasses set ``code`` and a default ``reason`` (and message); construct them with a message
    and, optionally, a more specific registered ``reason`` and extra ``details`` messages.

    Attributes:
        code: The status code.
        reason: The ErrorReason name without its prefix, for example ``"RATE_LIMITED"``.
        message: A developer-facing message.
        details: Extra detail messages (beyond the ErrorInfo ASAP adds), in order.
        metadata: ``ErrorInfo.metadata``: small string facts about the error.
    """

    code: ClassVar[Code] = Code.UNKNOWN
    default_reason: ClassVar[str] = "UNKNOWN"
    default_message: ClassVar[str] = "unknown error"
    reasons: ClassVar[frozenset[str]] = frozenset()
    """Further registered reasons that map back to this class."""

    def __init__(
        self,
        message: str | None = None,
        *,
        reason: str | None = None,
        details: Iterable[Message] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message if message is not None else self.default_message
        self.reason = reason if reason is not None else self.default_reason
        if REASON_CODES.get(self.reason, self.code) != self.code:
            text = f"reason {self.reason} is registered with code {REASON_CODES[self.reason].name}"
            raise ValueError(text)
        self.details: tuple[Message, ...] = tuple(details)
        self.metadata: dict[str, str] = dict(metadata or {})
        self.trailing_metadata: Metadata = ()
        """Trailing metadata of the failed call (set on the client side)."""
        self.from_peer = False
        """True when decoded from a status carrying ASAP's ErrorInfo: an ASAP server answered.
        False for errors raised locally, by a transport library or by a proxy."""
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.code.name} ({self.reason}): {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class Cancelled(AsapError):
    """The call was cancelled."""

    code = Code.CANCELLED
    default_reason = "CANCELLED"
    default_message = "the call was cancelled"


class Unknown(AsapError):
    """An error with no better classification (also what a status without a known code becomes)."""


class InvalidArgument(AsapError):
    """The request is invalid."""

    code = Code.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"
    default_message = "invalid argument"


class InvalidEnvelope(InvalidArgument):
    """An envelope broke a validation rule; ``reason`` says which."""

    default_reason = "MISSING_PAYLOAD"
    default_message = "invalid envelope"
    reasons = frozenset(
        {
            "MISSING_PAYLOAD",
            "INVALID_URN",
            "MISSING_CORRELATION_ID",
            "STALE_TIMESTAMP",
            "FUTURE_TIMESTAMP",
            "INVALID_ID",
        }
    )


class MalformedFrame(InvalidArgument):
    """A WebSocket bridge frame could not be decoded or broke the framing rules."""

    default_reason = "MALFORMED_FRAME"
    default_message = "malformed frame"


class DeadlineExceeded(AsapError):
    """The call's deadline passed before it completed."""

    code = Code.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"
    default_message = "deadline exceeded"


class NotFound(AsapError):
    """A requested entity does not exist."""

    code = Code.NOT_FOUND
    default_reason = "NOT_FOUND"
    default_message = "not found"


class SkillNotFound(NotFound):
    """The TaskRequest names a skill the agent does not offer."""

    default_reason = "SKILL_NOT_FOUND"
    default_message = "no such skill"


class UnknownRecipient(NotFound):
    """The envelope's recipient is not the agent this server serves."""

    default_reason = "UNKNOWN_RECIPIENT"
    default_message = "the envelope is addressed to another agent"


class AlreadyExists(AsapError):
    """The entity a request would create already exists."""

    code = Code.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"
    default_message = "already exists"


class IdempotencyKeyReused(AlreadyExists):
    """The envelope id was already used by this caller for an envelope with different content."""

    default_reason = "IDEMPOTENCY_KEY_REUSED"
    default_message = "the envelope id was already used for an envelope with different content"


class PermissionDenied(AsapError):
    """The caller may not do this."""

    code = Code.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"
    default_message = "permission denied"


class SenderMismatch(PermissionDenied):
    """The envelope's sender is not the authenticated identity."""

    default_reason = "SENDER_MISMATCH"
    default_message = "the envelope sender is not the authenticated identity"


class IdentityMismatch(PermissionDenied):
    """The bearer token's subject is not the identity of the connection's client certificate."""

    default_reason = "IDENTITY_MISMATCH"
    default_message = "the bearer token and the client certificate name different identities"


class ResourceExhausted(AsapError):
    """A quota, rate or size limit was exhausted."""

    code = Code.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"
    default_message = "resource exhausted"


class RateLimited(ResourceExhausted):
    """The caller is over its rate limit; retry after ``retry_after`` seconds."""

    default_reason = "RATE_LIMITED"
    default_message = "rate limit exceeded"

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float = 1.0,
        reason: str | None = None,
        details: Iterable[Message] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, details=details, metadata=metadata)
        self.retry_after = retry_after


class MessageTooLarge(ResourceExhausted):
    """A message exceeded the maximum message size."""

    default_reason = "MESSAGE_TOO_LARGE"
    default_message = "message too large"


class TooManyCalls(ResourceExhausted):
    """Too many calls are in flight on the server or on one connection."""

    default_reason = "TOO_MANY_CALLS"
    default_message = "too many concurrent calls"


class PrincipalQuotaExceeded(ResourceExhausted):
    """One principal has ``Limits.max_calls_per_principal`` calls in flight already."""

    default_reason = "PRINCIPAL_QUOTA_EXCEEDED"
    default_message = "too many calls in flight for this principal"


class FlowControlViolation(ResourceExhausted):
    """A bridge peer sent a call message beyond the stream's flow-control credit."""

    default_reason = "FLOW_CONTROL_VIOLATION"
    default_message = "message sent beyond the stream's flow-control window"


class TooManyEnvelopes(ResourceExhausted):
    """A SendBatch or Publish carried more envelopes than ``Limits.max_batch_envelopes``."""

    default_reason = "TOO_MANY_ENVELOPES"
    default_message = "too many envelopes in one call"


class FailedPrecondition(AsapError):
    """The system is not in a state that allows the operation."""

    code = Code.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"
    default_message = "failed precondition"


class Aborted(AsapError):
    """The operation was aborted."""

    code = Code.ABORTED
    default_reason = "ABORTED"
    default_message = "aborted"


class OutOfRange(AsapError):
    """A value was past its valid range."""

    code = Code.OUT_OF_RANGE
    default_reason = "OUT_OF_RANGE"
    default_message = "out of range"


class Unimplemented(AsapError):
    """The operation is not implemented."""

    code = Code.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"
    default_message = "not implemented"


class NoHandler(Unimplemented):
    """The agent has no handler for this payload kind."""

    default_reason = "NO_HANDLER"
    default_message = "no handler for this payload"


class UnknownMethod(Unimplemented):
    """The RPC method is not part of the service."""

    default_reason = "UNKNOWN_METHOD"
    default_message = "unknown method"


class UnknownPayload(Unimplemented):
    """The envelope's payload is a kind the recipient's schema does not know: it is too old."""

    default_reason = "UNKNOWN_PAYLOAD"
    default_message = "the recipient does not know this payload kind"


class UnsupportedVersion(Unimplemented):
    """The envelope's ``asap_version`` has a major version the recipient does not speak."""

    default_reason = "UNSUPPORTED_VERSION"
    default_message = "unsupported ASAP major version"


class Internal(AsapError):
    """An internal error; its message never contains the original exception's text."""

    code = Code.INTERNAL
    default_reason = "INTERNAL"
    default_message = "internal error"


class Unavailable(AsapError):
    """The service is unavailable for now; retry with backoff."""

    code = Code.UNAVAILABLE
    default_reason = "UNAVAILABLE"
    default_message = "unavailable"


class ShuttingDown(Unavailable):
    """The server is draining and accepts no new calls."""

    default_reason = "SHUTTING_DOWN"
    default_message = "the server is shutting down"


class ConnectionLost(Unavailable):
    """The connection was lost before the call completed."""

    default_reason = "CONNECTION_LOST"
    default_message = "connection lost"

    def __init__(
        self,
        message: str | None = None,
        *,
        close_code: int | None = None,
        reason: str | None = None,
        details: Iterable[Message] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, details=details, metadata=metadata)
        self.close_code = close_code


class StoreUnavailable(Unavailable):
    """The shared store (Redis) that keeps delivery outcomes or rate limits cannot be reached."""

    default_reason = "STORE_UNAVAILABLE"
    default_message = "the server's shared store is unavailable"


class DataLoss(AsapError):
    """Unrecoverable data loss or corruption."""

    code = Code.DATA_LOSS
    default_reason = "DATA_LOSS"
    default_message = "data loss"


class Unauthenticated(AsapError):
    """No valid credentials were presented."""

    code = Code.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"
    default_message = "unauthenticated"
    reasons = frozenset({"MISSING_CREDENTIALS", "INVALID_TOKEN"})


class InsecureTransportError(ValueError):
    """Plaintext to a host that is not loopback was refused (``allow_insecure=True`` permits it)."""


class InvalidState(RuntimeError):
    """An object was used in a state that does not allow the operation (for example after close)."""


def _all_subclasses(cls: type[AsapError]) -> list[type[AsapError]]:
    found: list[type[AsapError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


ERROR_CLASSES: tuple[type[AsapError], ...] = (AsapError, *_all_subclasses(AsapError))
"""Every AsapError class, base first."""

_CLASS_BY_CODE: dict[Code, type[AsapError]] = {
    cls.code: cls for cls in ERROR_CLASSES if cls.__base__ is AsapError
}
_CLASS_BY_CODE[Code.UNKNOWN] = Unknown
_CLASS_BY_REASON: dict[str, type[AsapError]] = {}
for _cls in ERROR_CLASSES[1:]:
    for _reason in (_cls.default_reason, *_cls.reasons):
        _CLASS_BY_REASON.setdefault(_reason, _cls)


def error_class_for(code: Code, reason: str | None) -> type[AsapError]:
    """Return the class a status with this code and reason is raised as."""
    if reason is not None:
        cls = _CLASS_BY_REASON.get(reason)
        if cls is not None and cls.code == code:
            return cls
    return _CLASS_BY_CODE.get(code, Unknown)


def to_status(error: AsapError) -> status_pb2.Status:
    """Encode an error as the wire status both transports carry."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    status = status_pb2.Status(code=int(error.code), message=error.message)
    status.details.add().Pack(info)
    if isinstance(error, RateLimited):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(math.ceil(error.retry_after * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    for detail in error.details:
        if isinstance(detail, any_pb2.Any):  # a detail kept opaque (unknown type) stays as it was
            status.details.add().CopyFrom(detail)
        else:
            status.details.add().Pack(detail)
    return status


def from_status(status: status_pb2.Status, *, close_code: int | None = None) -> AsapError:
    """Decode a wire status into the error class the sender raised, with the same details.

    A status without ASAP's ErrorInfo (for example one that gRPC itself produced for a deadline)
    becomes the class for its code with that code's generic reason.
    """
    try:
        code = Code(status.code)
    except ValueError:
        code = Code.UNKNOWN
    reason: str | None = None
    metadata: dict[str, str] = {}
    retry_after: float | None = None
    details: list[Message] = []
    for packed in status.details:
        info = error_details_pb2.ErrorInfo()
        if reason is None and packed.Unpack(info) and info.domain == DOMAIN:
            reason, metadata = info.reason, dict(info.metadata)
            continue
        retry = error_details_pb2.RetryInfo()
        if retry_after is None and packed.Unpack(retry):
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
            continue
        details.append(_unpack(packed))
    from_peer = reason is not None
    cls = error_class_for(code, reason)
    if reason is None or REASON_CODES.get(reason, cls.code) != cls.code:
        reason = cls.default_reason
    error: AsapError
    if cls is RateLimited:
        error = RateLimited(
            status.message,
            retry_after=retry_after if retry_after is not None else 1.0,
            reason=reason,
            details=details,
            metadata=metadata,
        )
    elif cls is ConnectionLost:
        error = ConnectionLost(
            status.message, close_code=close_code, reason=reason, details=details, metadata=metadata
        )
    else:
        error = cls(status.message, reason=reason, details=details, metadata=metadata)
    error.from_peer = from_peer
    return error


def _unpack(packed: any_pb2.Any) -> Message:
    """Unpack a detail into its registered message type; keep the Any when the type is unknown.

    An ``asap.v1.OpaqueAny`` (a detail a JSON hop could not resolve, see docs/versioning.md) that
    holds the original bytes becomes the original Any again, unpacked if this reader knows its type,
    so the caller sees what a binary transport would have given it.
    """
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(packed.TypeName())
    except KeyError:
        return packed
    message = message_factory.GetMessageClass(descriptor)()
    packed.Unpack(message)
    if isinstance(message, opaque_pb2.OpaqueAny) and message.WhichOneof("content") == "binary":
        return _unpack(any_pb2.Any(type_url=message.type_url, value=message.binary))
    return message


def detail_type_url(detail: Message) -> str:
    """The type URL a detail travelled under, also for details kept opaque.

    An ``Any`` (a detail of a type this reader does not know, as binary transports keep it) and an
    ``asap.v1.OpaqueAny`` (the same over asap.v1.json) give the original type URL; any other
    message gives ``type.googleapis.com/`` and its full name.
    """
    if isinstance(detail, any_pb2.Any | opaque_pb2.OpaqueAny):
        return detail.type_url
    return f"type.googleapis.com/{detail.DESCRIPTOR.full_name}"


def details_of(error: AsapError, kind: type[_M]) -> list[_M]:
    """Return the detail messages of one type that an error carries."""
    return [detail for detail in error.details if isinstance(detail, kind)]
