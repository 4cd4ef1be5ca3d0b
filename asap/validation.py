"""Envelope validation, defaults and payload helpers: pure functions with the clock injected.

Nothing here does I/O or touches an event loop, and nothing reads the clock: every function that
needs the time takes ``now`` (Unix seconds, as from ``time.time()``) so callers and tests decide it.

Rules :func:`validate` enforces, in this order (the first broken rule is the one reported, as an
:class:`~asap.errors.InvalidEnvelope` whose ``reason`` names it):

0. ``asap_version`` is empty or has major version :data:`~asap.schema.SUPPORTED_MAJOR`
   (otherwise :class:`~asap.errors.UnsupportedVersion`, ``UNIMPLEMENTED``/``UNSUPPORTED_VERSION``);
   any minor is accepted, since minor versions only add to the schema (docs/versioning.md).
1. A payload is set (``MISSING_PAYLOAD``). When none is set but the envelope carries an unknown
   field in the payload range (20 to 99), the payload is a kind added by a newer schema: that is
   :class:`~asap.errors.UnknownPayload` (``UNIMPLEMENTED``/``UNKNOWN_PAYLOAD``) instead.
2. The id is non-empty and at most :data:`MAX_ID_LENGTH` characters (``INVALID_ID``). An empty id
   is refused because the id is the idempotency key; :func:`fill_defaults` gives outgoing
   envelopes one.
3. ``sender`` and ``recipient`` are both present and are agent URNs (``INVALID_URN``): at most
   :data:`MAX_URN_LENGTH` characters matching :data:`AGENT_URN_PATTERN`, that is
   ``urn:asap:agent:<name>`` where the name is one or more ASCII letters, digits, ``-``, ``.``,
   ``_`` or ``:`` and starts with a letter or digit. The prefix is matched exactly (lowercase), so
   one agent has one spelling and identities compare as plain strings.
4. Answers (:data:`CORRELATED_KINDS`: TaskResponse, McpToolResult, McpResourceData) carry a
   ``correlation_id`` (``MISSING_CORRELATION_ID``).
5. The timestamp is at most ``policy.max_age`` seconds old (``STALE_TIMESTAMP``) and at most
   ``policy.future_skew`` seconds ahead of ``now`` (``FUTURE_TIMESTAMP``); both bounds are
   inclusive. An unset timestamp counts as the Unix epoch and is therefore stale: accepting it would
   let an envelope bypass the replay window that bounds deduplication.

Every error carries a ``google.rpc.BadRequest`` detail naming the offending field.

The payload helpers (:func:`payload_kind`, :func:`payload_of`, :func:`wrap`, :data:`PAYLOAD_KINDS`,
:data:`PAYLOAD_TYPES`) sit on the dispatcher's hot path, so they are dictionary lookups over
tables built once at import.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal, TypeAlias, TypedDict, Unpack

from google.protobuf import struct_pb2, timestamp_pb2, unknown_fields
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from asap import schema
from asap.errors import InvalidEnvelope, UnknownPayload, UnsupportedVersion
from asap.v1 import envelope_pb2, payload_pb2


__all__ = [
    "AGENT_URN_PATTERN",
    "AGENT_URN_PREFIX",
    "ASAP_VERSION",
    "CORRELATED_KINDS",
    "DEFAULT_POLICY",
    "MAX_ID_LENGTH",
    "MAX_REMEMBERED_URNS",
    "MAX_URN_LENGTH",
    "PAYLOAD_FIELD_NUMBERS",
    "PAYLOAD_KINDS",
    "PAYLOAD_TYPES",
    "EnvelopeFields",
    "EnvelopeHead",
    "Payload",
    "PayloadKind",
    "ValidationPolicy",
    "check_version",
    "fill_defaults",
    "is_agent_urn",
    "new_envelope_id",
    "payload_kind",
    "payload_of",
    "validate",
    "validated_head",
    "wrap",
]

ASAP_VERSION: Final = schema.protocol_version()
"""The protocol version :func:`fill_defaults` writes into ``Envelope.asap_version``: ``MAJOR.MINOR``
of the schema version (docs/versioning.md)."""

PAYLOAD_FIELD_NUMBERS: Final = range(20, 100)
"""``Envelope`` field numbers reserved for payload kinds (envelope.proto)."""

_JSON_DROPPED_MARK: Final = 99
_VERSION_PATTERN: Final = re.compile(r"(\d{1,9})(?:\.\d{1,9}){1,2}")

MAX_ID_LENGTH: Final = 128
"""The longest envelope id accepted, in characters."""

MAX_URN_LENGTH: Final = 256
"""The longest sender or recipient URN accepted, in characters (prefix included)."""

AGENT_URN_PREFIX: Final = "urn:asap:agent:"
"""The prefix every agent URN starts with."""

AGENT_URN_PATTERN: Final = re.compile(r"urn:asap:agent:[A-Za-z0-9][A-Za-z0-9._:-]*")
"""What an agent URN must match in full (see the module docstring); length is checked separately."""

Payload: TypeAlias = (
    payload_pb2.TaskRequest
    | payload_pb2.TaskResponse
    | payload_pb2.TaskUpdate
    | payload_pb2.TaskCancel
    | payload_pb2.MessageSend
    | payload_pb2.StateQuery
    | payload_pb2.StateRestore
    | payload_pb2.ArtifactNotify
    | payload_pb2.McpToolCall
    | payload_pb2.McpToolResult
    | payload_pb2.McpResourceFetch
    | payload_pb2.McpResourceData
    | payload_pb2.MessageAck
)
"""Any message that can be an envelope's payload."""

PayloadKind: TypeAlias = Literal[
    "task_request",
    "task_response",
    "task_update",
    "task_cancel",
    "message_send",
    "state_query",
    "state_restore",
    "artifact_notify",
    "mcp_tool_call",
    "mcp_tool_result",
    "mcp_resource_fetch",
    "mcp_resource_data",
    "message_ack",
]
"""The name of a field of the ``Envelope.payload`` oneof."""

# One row per payload kind: (class, oneof field name, accessor of that field on an Envelope).
# The accessors let wrap() and payload_of() reach the field without per-call reflection or Any.
_PAYLOAD_TABLE: Final[
    tuple[tuple[type[Payload], PayloadKind, Callable[[envelope_pb2.Envelope], Payload]], ...]
] = (
    (payload_pb2.TaskRequest, "task_request", lambda e: e.task_request),
    (payload_pb2.TaskResponse, "task_response", lambda e: e.task_response),
    (payload_pb2.TaskUpdate, "task_update", lambda e: e.task_update),
    (payload_pb2.TaskCancel, "task_cancel", lambda e: e.task_cancel),
    (payload_pb2.MessageSend, "message_send", lambda e: e.message_send),
    (payload_pb2.StateQuery, "state_query", lambda e: e.state_query),
    (payload_pb2.StateRestore, "state_restore", lambda e: e.state_restore),
    (payload_pb2.ArtifactNotify, "artifact_notify", lambda e: e.artifact_notify),
    (payload_pb2.McpToolCall, "mcp_tool_call", lambda e: e.mcp_tool_call),
    (payload_pb2.McpToolResult, "mcp_tool_result", lambda e: e.mcp_tool_result),
    (payload_pb2.McpResourceFetch, "mcp_resource_fetch", lambda e: e.mcp_resource_fetch),
    (payload_pb2.McpResourceData, "mcp_resource_data", lambda e: e.mcp_resource_data),
    (payload_pb2.MessageAck, "message_ack", lambda e: e.message_ack),
)

PAYLOAD_KINDS: Final[Mapping[type[Payload], PayloadKind]] = MappingProxyType(
    {cls: kind for cls, kind, _ in _PAYLOAD_TABLE}
)
"""Payload message class → the ``Envelope.payload`` oneof field that holds it."""

PAYLOAD_TYPES: Final[Mapping[PayloadKind, type[Payload]]] = MappingProxyType(
    {kind: cls for cls, kind, _ in _PAYLOAD_TABLE}
)
"""``Envelope.payload`` oneof field name → the payload message class it holds."""

_ACCESSOR_BY_TYPE: Final[dict[type[Payload], Callable[[envelope_pb2.Envelope], Payload]]] = {
    cls: accessor for cls, _, accessor in _PAYLOAD_TABLE
}
_ACCESSOR_BY_KIND: Final[dict[PayloadKind, Callable[[envelope_pb2.Envelope], Payload]]] = {
    kind: accessor for _, kind, accessor in _PAYLOAD_TABLE
}

CORRELATED_KINDS: Final[frozenset[PayloadKind]] = frozenset(
    {"task_response", "mcp_tool_result", "mcp_resource_data"}
)
"""Payload kinds that answer another envelope and so must carry ``correlation_id``."""

_PREVIEW_LENGTH: Final = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationPolicy:
    """The recipient-side tunables of :func:`validate`.

    Attributes:
        max_age: How old (seconds before ``now``) a timestamp may be and still be accepted.
        future_skew: How far (seconds after ``now``) a timestamp may be ahead of the recipient's
            clock and still be accepted.
    """

    max_age: float = 300.0
    future_skew: float = 30.0

    def __post_init__(self) -> None:
        """Refuse bounds that are negative or not finite.

        Raises:
            ValueError: When ``max_age`` or ``future_skew`` is negative, infinite or NaN.
        """
        for name, value in (("max_age", self.max_age), ("future_skew", self.future_skew)):
            if not math.isfinite(value) or value < 0:
                text = f"ValidationPolicy.{name} must be a finite number >= 0, got {value!r}"
                raise ValueError(text)


DEFAULT_POLICY: Final = ValidationPolicy()
"""The policy with the protocol's recommended bounds (300 s max age, 30 s future skew)."""


class EnvelopeFields(TypedDict, total=False):
    """The envelope fields other than the payload that :func:`wrap` accepts as keywords."""

    id: str
    asap_version: str
    timestamp: timestamp_pb2.Timestamp
    sender: str
    recipient: str
    correlation_id: str
    trace_id: str
    requires_ack: bool
    extensions: struct_pb2.Struct


class _RandomIds:
    """Envelope ids cut from one ``os.urandom`` read of :data:`_IDS_PER_READ` ids' worth of bits.

    One system call per id was a visible part of each call's cost (every answer needs an id).
    The bits are the same kernel randomness; a forked child starts a fresh read, so a parent and
    its child never hand out the same ids.
    """

    __slots__ = ("_hex", "_next")

    def __init__(self) -> None:
        self._hex = ""
        self._next = 0

    def reset(self) -> None:
        """Forget the unread bits (after ``fork``)."""
        self._hex, self._next = "", 0

    def take(self) -> str:
        """32 lowercase hex digits no other call returns."""
        start = self._next
        if start >= len(self._hex):
            self._hex, start = os.urandom(16 * _IDS_PER_READ).hex(), 0
        self._next = start + 32
        return self._hex[start : start + 32]


_IDS_PER_READ: Final = 256
_random_ids = _RandomIds()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_random_ids.reset)


def new_envelope_id() -> str:
    """Return a fresh envelope id: 128 random bits as 32 lowercase hex digits (like a UUID4's hex)."""
    return _random_ids.take()


def is_agent_urn(value: str) -> bool:
    """Return whether ``value`` is a valid agent URN.

    Args:
        value: The candidate, for example ``"urn:asap:agent:research"``.

    Returns:
        True when ``value`` is at most :data:`MAX_URN_LENGTH` characters and fully matches
        :data:`AGENT_URN_PATTERN`.
    """
    return len(value) <= MAX_URN_LENGTH and AGENT_URN_PATTERN.fullmatch(value) is not None


def payload_kind(envelope: envelope_pb2.Envelope) -> PayloadKind:
    """Return the name of the envelope's payload oneof field, for example ``"task_request"``.

    Args:
        envelope: The envelope.

    Returns:
        The set field's name; one of the keys of :data:`PAYLOAD_TYPES`.

    Raises:
        InvalidEnvelope: ``MISSING_PAYLOAD`` when no payload is set.
        UnknownPayload: ``UNKNOWN_PAYLOAD`` when the payload is a kind added by a newer schema,
            which this reader keeps only as an unknown field (so it does not know what to do).
    """
    kind = envelope.WhichOneof("payload")
    if kind is None:
        numbers = _unknown_payload_numbers(envelope)
        if numbers:
            # Field 99 is the mark a JSON reader leaves (envelope.proto): the number is not known.
            where = "" if numbers == [_JSON_DROPPED_MARK] else f" (field {numbers[0]})"
            text = (
                f"the envelope's payload{where} is a kind this agent's schema "
                f"{schema.schema_version()} does not know; the agent is older than the sender"
            )
            raise UnknownPayload(text, metadata={"schema_version": schema.schema_version()})
        text = "the envelope has no payload set"
        raise _invalid(text, reason="MISSING_PAYLOAD", field="payload")
    return kind


def _unknown_payload_numbers(envelope: envelope_pb2.Envelope) -> list[int]:
    """The field numbers in the payload range among the envelope's unknown fields, sorted."""
    unknown = unknown_fields.UnknownFieldSet(envelope)
    numbers: set[int] = set()
    for index in range(len(unknown)):
        number: int = unknown[index].field_number
        if number in PAYLOAD_FIELD_NUMBERS:
            numbers.add(number)
    return sorted(numbers)


def payload_of(envelope: envelope_pb2.Envelope, kind: PayloadKind | None = None) -> Payload:
    """Return the envelope's payload message (the message itself, not a copy).

    Args:
        envelope: The envelope.
        kind: Its payload kind, if the caller has it already (:attr:`EnvelopeHead.kind`).

    Returns:
        The message in the set payload field; ``PAYLOAD_KINDS[type(result)]`` is its kind.

    Raises:
        InvalidEnvelope: ``MISSING_PAYLOAD`` when no payload is set, as :func:`payload_kind`.
        UnknownPayload: The payload is of a kind this schema does not know, as :func:`payload_kind`.
    """
    return _ACCESSOR_BY_KIND[payload_kind(envelope) if kind is None else kind](envelope)


def wrap(payload: Payload, **fields: Unpack[EnvelopeFields]) -> envelope_pb2.Envelope:
    """Put a payload into a new envelope.

    The envelope holds a copy of ``payload``; later changes to ``payload`` do not reach it. Nothing
    is defaulted or validated: see :func:`fill_defaults` and :func:`validate`.

    Args:
        payload: The payload message, one of the :data:`Payload` types.
        **fields: Other envelope fields to set, for example ``sender`` or ``correlation_id``.

    Returns:
        The new envelope.

    Raises:
        TypeError: When ``payload`` is not one of the payload message types.
    """
    envelope = envelope_pb2.Envelope(**fields)
    put_payload(envelope, payload)
    return envelope


def put_payload(envelope: envelope_pb2.Envelope, payload: Payload) -> None:
    """Set a copy of ``payload`` as the envelope's payload, in place (see :func:`wrap`).

    Raises:
        TypeError: When ``payload`` is not one of the payload message types.
    """
    accessor = _ACCESSOR_BY_TYPE.get(type(payload))
    if accessor is None:
        text = f"{type(payload).__name__} is not an envelope payload type"
        raise TypeError(text)
    field: Message = accessor(envelope)  # as Message: CopyFrom then accepts the whole union
    field.CopyFrom(payload)


def fill_defaults(
    envelope: envelope_pb2.Envelope,
    *,
    now: float,
    new_id: Callable[[], str] | None = None,
) -> None:
    """Fill the fields a sender may leave for the library to choose, in place.

    Sets ``id`` when empty, ``timestamp`` when unset and ``asap_version`` (to
    :data:`ASAP_VERSION`) when empty. Fields already set are left as they are, so filling twice (for
    example before a retransmission) keeps the id and timestamp.

    Args:
        envelope: The envelope to complete; it is modified.
        now: The current time in Unix seconds (as ``time.time()`` returns).
        new_id: Makes a fresh envelope id; called only when the id is empty (default:
            :func:`new_envelope_id`).
    """
    if not envelope.id:
        # Called directly when it is the default: compiled, a native call, not a generic one.
        envelope.id = new_envelope_id() if new_id is None else new_id()
    if not envelope.HasField("timestamp"):
        seconds = int(now)  # math.floor, as native float arithmetic (a call to math is generic)
        if seconds > now:
            seconds -= 1
        stamp = envelope.timestamp  # one sub-message wrapper, not one per field set
        stamp.seconds = seconds
        stamp.nanos = min(round((now - seconds) * 1e9), 999_999_999)
    if not envelope.asap_version:
        envelope.asap_version = ASAP_VERSION


class EnvelopeHead:
    """The fields :func:`validated_head` read, for its caller to reuse instead of reading again.

    On upb every read of a string field makes a new ``str`` (and searches the message's names
    first), so a delivery that needs the id, sender, recipient and payload kind after validating
    takes them from here.
    """

    __slots__ = ("id", "kind", "recipient", "sender")

    def __init__(self, envelope_id: str, sender: str, recipient: str, kind: PayloadKind) -> None:
        self.id: Final = envelope_id
        self.sender: Final = sender
        self.recipient: Final = recipient
        self.kind: Final = kind


def validate(
    envelope: envelope_pb2.Envelope,
    policy: ValidationPolicy = DEFAULT_POLICY,
    *,
    now: float,
    timestamp: bool = True,
) -> None:
    """Check an envelope against every rule, in the order the module docstring lists.

    Args:
        envelope: The envelope as received; it is not modified.
        policy: The timestamp bounds to apply.
        now: The recipient's current time in Unix seconds (as ``time.time()`` returns).
        timestamp: False leaves out rule 5 (the delivery checks it with :func:`check_timestamp`
            after looking for a stored outcome, so a late retransmission still gets its answer).

    Raises:
        UnsupportedVersion: ``asap_version`` has a major version other than
            :data:`~asap.schema.SUPPORTED_MAJOR` (or is not a version).
        UnknownPayload: The payload is a kind added by a newer schema.
        InvalidEnvelope: For the first rule broken, with ``reason`` ``MISSING_PAYLOAD``,
            ``INVALID_ID``, ``INVALID_URN``, ``MISSING_CORRELATION_ID``, ``STALE_TIMESTAMP`` or
            ``FUTURE_TIMESTAMP`` and a ``google.rpc.BadRequest`` detail naming the field.
    """
    validated_head(envelope, policy, now=now, timestamp=timestamp)


def validated_head(
    envelope: envelope_pb2.Envelope,
    policy: ValidationPolicy = DEFAULT_POLICY,
    *,
    now: float,
    timestamp: bool = True,
) -> EnvelopeHead:
    """:func:`validate`, returning the fields it read (see :class:`EnvelopeHead`)."""
    check_version(envelope.asap_version)
    kind = payload_kind(envelope)
    envelope_id = envelope.id
    _check_id(envelope_id)
    sender = envelope.sender
    _check_urn(sender, "sender")
    recipient = envelope.recipient
    _check_urn(recipient, "recipient")
    if kind in CORRELATED_KINDS and not envelope.correlation_id:
        text = f"a {kind} envelope must carry the id of the envelope it answers in correlation_id"
        raise _invalid(text, reason="MISSING_CORRELATION_ID", field="correlation_id")
    if timestamp:
        check_timestamp(envelope, policy, now)
    return EnvelopeHead(envelope_id, sender, recipient, kind)


def check_version(asap_version: str) -> None:
    """Accept an empty ``asap_version`` or one of the supported major with any minor.

    Raises:
        UnsupportedVersion: Another major version, or text that is not ``MAJOR.MINOR``; its
            metadata names the version received and the supported major.
    """
    if not asap_version or asap_version == ASAP_VERSION:  # ours: the usual case, no regex
        return
    match = _VERSION_PATTERN.fullmatch(asap_version)
    if match is not None and int(match.group(1)) == schema.SUPPORTED_MAJOR:
        return
    what = "a newer or older major version" if match is not None else "not MAJOR.MINOR"
    text = (
        f"asap_version {_preview(asap_version)} is {what}; this agent speaks "
        f"{schema.SUPPORTED_MAJOR}.x (schema {schema.schema_version()})"
    )
    raise UnsupportedVersion(
        text,
        metadata={
            "asap_version": asap_version[:_PREVIEW_LENGTH],
            "supported": str(schema.SUPPORTED_MAJOR),
        },
    )


def _check_id(value: str) -> None:
    """Raise INVALID_ID unless the id is non-empty and not too long."""
    if not value:
        text = "the envelope id is empty"
        raise _invalid(text, reason="INVALID_ID", field="id")
    if len(value) > MAX_ID_LENGTH:
        text = (
            f"the envelope id is {len(value)} characters long; at most {MAX_ID_LENGTH} are allowed"
        )
        raise _invalid(text, reason="INVALID_ID", field="id")


MAX_REMEMBERED_URNS: Final = 1024
"""How many URNs :func:`validate` remembers as valid (then it forgets them all and starts over)."""
_VALID_URNS: Final[set[str]] = set()
"""URNs already found valid. Callers send the same few over and over (their own, the agent's),
so most checks are a set lookup instead of a regular expression; bounded, so a peer that sends a
new URN every time only makes it start over."""


def _check_urn(value: str, field: str) -> None:
    """Raise INVALID_URN unless ``value`` is an agent URN."""
    if value in _VALID_URNS:
        return
    if not value:
        text = f"{field} is empty; an agent URN is required"
        raise _invalid(text, reason="INVALID_URN", field=field)
    if len(value) > MAX_URN_LENGTH:
        text = f"{field} is {len(value)} characters long; at most {MAX_URN_LENGTH} are allowed"
        raise _invalid(text, reason="INVALID_URN", field=field)
    if AGENT_URN_PATTERN.fullmatch(value) is None:
        text = (
            f"{field} {_preview(value)} is not an agent URN ({AGENT_URN_PREFIX}NAME, NAME being "
            "ASCII letters, digits and -._: starting with a letter or digit)"
        )
        raise _invalid(text, reason="INVALID_URN", field=field)
    if len(_VALID_URNS) >= MAX_REMEMBERED_URNS:
        _VALID_URNS.clear()
    _VALID_URNS.add(value)


def check_timestamp(envelope: envelope_pb2.Envelope, policy: ValidationPolicy, now: float) -> None:
    """Raise STALE_TIMESTAMP or FUTURE_TIMESTAMP when the timestamp is outside the policy window."""
    stamp = envelope.timestamp
    age = now - (stamp.seconds + stamp.nanos / 1e9)
    if age > policy.max_age:
        what = f"is {age:.3f} s old" if envelope.HasField("timestamp") else "is not set"
        text = f"the envelope timestamp {what}; at most {policy.max_age:g} s is accepted"
        raise _invalid(text, reason="STALE_TIMESTAMP", field="timestamp")
    if -age > policy.future_skew:
        text = (
            f"the envelope timestamp is {-age:.3f} s in the future; at most "
            f"{policy.future_skew:g} s of clock skew is accepted"
        )
        raise _invalid(text, reason="FUTURE_TIMESTAMP", field="timestamp")


def _preview(value: str) -> str:
    """Quote a value for an error message, cut short so a huge value cannot bloat the error."""
    if len(value) <= _PREVIEW_LENGTH:
        return repr(value)
    return repr(value[:_PREVIEW_LENGTH]) + "…"


def _invalid(message: str, *, reason: str, field: str) -> InvalidEnvelope:
    """Build an InvalidEnvelope with ``reason`` and a BadRequest detail naming ``field``."""
    violation = error_details_pb2.BadRequest.FieldViolation(
        field=field, description=message, reason=reason
    )
    detail = error_details_pb2.BadRequest(field_violations=[violation])
    return InvalidEnvelope(message, reason=reason, details=[detail])
