"""Schema skew on ``asap.v1.json``: what a JSON reader or writer does with what its schema lacks.

The rules (docs/versioning.md, "Over asap.v1.json"):

- **An Any of an unknown type** (in ``Status.details``, ``MessageFrame.typed`` or anywhere else) does
  not fail the frame. The reader keeps it, in place, as an ``asap.v1.OpaqueAny`` holding the original
  type URL and JSON members (``json``); the writer that holds an Any of a type it lacks in binary
  writes it as an OpaqueAny holding the bytes (``binary``). So an error's ErrorInfo, and the error
  class, survive a detail type the client does not know.
- **Unknown fields** are ignored (dropped) by the reader: proto3 JSON cannot carry a field without
  its schema. An ``asap.v1.Envelope`` that loses a member this way and has no payload the reader
  knows is marked with an empty field 99 (reserved in envelope.proto) so that validation answers
  ``UNKNOWN_PAYLOAD`` (the member was probably a newer payload kind) and not ``MISSING_PAYLOAD``.
- **Enum values** are written as numbers, which every proto3 JSON parser accepts, so a reader that
  lacks a newer value keeps its number (as binary readers do). A value *name* the reader does not
  know is refused (:class:`UnknownEnumName`), never read as 0.
- **Keeping unknown fields**: a call message travels in ``MessageFrame.binary`` (base64 in JSON)
  instead of ``typed`` when it carries fields its writer's schema does not know, and the server
  answers a call in the form the call's requests used (:class:`BodyForms`).

:func:`parse_frame` and :func:`frame_to_dict` are the codec's slow paths: it tries protobuf's own
strict conversion first and comes here only when that fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Final

from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory, unknown_fields
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from asap.v1 import bridge_pb2, opaque_pb2


__all__ = [
    "ENVELOPE_DROPPED_MARK",
    "OPAQUE_TYPE_URL",
    "BodyForms",
    "UnknownEnumName",
    "frame_to_dict",
    "has_unknown_fields",
    "parse_frame",
]

OPAQUE_TYPE_URL: Final = "type.googleapis.com/" + opaque_pb2.OpaqueAny.DESCRIPTOR.full_name
"""The type URL of the Any that carries an :class:`~asap.v1.opaque_pb2.OpaqueAny`."""

ENVELOPE_DROPPED_MARK: Final = b"\x9a\x06\x00"
"""``Envelope`` field 99 (reserved), length-delimited and empty: "a JSON hop dropped members"."""

_ENVELOPE: Final = "asap.v1.Envelope"
_ANY: Final = any_pb2.Any.DESCRIPTOR.full_name
_WELL_KNOWN_PREFIX: Final = "google.protobuf."
_BOOL_KEYS: Final = {"true": True, "false": False}


class UnknownEnumName(json_format.ParseError):
    """A JSON enum value is a name the reader's schema does not have (refused, not read as 0)."""


def parse_frame(
    document: Mapping[str, object], pool: descriptor_pool.DescriptorPool
) -> bridge_pb2.Frame:
    """Build a Frame from its JSON object under the rules above.

    Raises:
        json_format.ParseError: The JSON is not a Frame (:class:`UnknownEnumName` for an enum
            value name the schema lacks).
        ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError,
            OverflowError: As ``json_format.ParseDict`` raises them for malformed values.
    """
    frame = bridge_pb2.Frame()
    _Reader(pool).merge(document, frame)
    return frame


def frame_to_dict(message: Message, pool: descriptor_pool.DescriptorPool) -> dict[str, object]:
    """Convert a message to its JSON object, writing each Any of an unknown type as an OpaqueAny."""
    return _Writer(pool).message(message)


def has_unknown_fields(message: Message) -> bool:
    """Whether the message, or any message inside it, holds fields its schema does not know.

    Well-known types (``google.protobuf.*``) are not searched: they never gain fields.
    """
    if len(unknown_fields.UnknownFieldSet(message)):
        return True
    searched = _searched_fields(message.DESCRIPTOR)
    if not searched:
        return False
    for field, value in message.ListFields():
        kind = searched.get(field)
        if kind is None:
            continue
        if kind is _MAP:
            if any(has_unknown_fields(item) for item in value.values()):
                return True
        elif kind is _REPEATED:
            if any(has_unknown_fields(item) for item in value):
                return True
        elif has_unknown_fields(value):
            return True
    return False


_SINGLE: Final = "single"
_REPEATED: Final = "repeated"
_MAP: Final = "map"


@cache
def _searched_fields(descriptor: Descriptor) -> Mapping[FieldDescriptor, str]:
    """The fields :func:`has_unknown_fields` looks into (messages not of a well-known type)."""
    searched: dict[FieldDescriptor, str] = {}
    for field in descriptor.fields:
        element = _element_type(field)
        if element is None or element.full_name.startswith(_WELL_KNOWN_PREFIX):
            continue
        searched[field] = _MAP if _is_map(field) else _REPEATED if field.is_repeated else _SINGLE
    return searched


class BodyForms:
    """Which form (``typed`` or ``binary``) each call message of one connection travels in.

    On the server side (streams whose CallStart this codec decoded) a call is answered in the form
    its requests used: ``binary`` once any request came in ``MessageFrame.binary``. On the client
    side a request goes in ``binary`` only when it carries unknown fields, which JSON would drop.
    A stream is forgotten when its CallStatus is encoded.
    """

    def __init__(self) -> None:
        self._served: dict[int, bool] = {}

    def observe(self, frame: bridge_pb2.Frame) -> None:
        """Note the body form of a decoded CallStart or request MessageFrame."""
        kind = frame.WhichOneof("kind")
        if kind == "start":
            start = frame.start
            binary = start.HasField("message") and start.message.WhichOneof("body") == "binary"
            self._served[frame.stream_id] = binary
        elif (
            kind == "message"
            and frame.stream_id in self._served
            and frame.message.WhichOneof("body") == "binary"
        ):
            self._served[frame.stream_id] = True

    def binary(self, stream_id: int, message: Message) -> bool:
        """Whether ``message``, sent on ``stream_id``, goes in ``MessageFrame.binary``."""
        served = self._served.get(stream_id)
        if served is not None:
            return served
        return has_unknown_fields(message)

    def forget(self, frame: bridge_pb2.Frame) -> None:
        """Drop a stream whose CallStatus is being encoded."""
        if frame.WhichOneof("kind") == "status":
            self._served.pop(frame.stream_id, None)

    def forget_stream(self, stream_id: int) -> None:
        """Drop a stream whose CallStatus is being encoded (the frame is not built)."""
        self._served.pop(stream_id, None)


@cache
def _fields_by_json_key(descriptor: Descriptor) -> Mapping[str, FieldDescriptor]:
    """A message's fields by JSON name and by proto name (proto3 JSON parsers accept both)."""
    fields: dict[str, FieldDescriptor] = {field.name: field for field in descriptor.fields}
    fields.update({field.json_name: field for field in descriptor.fields})
    return fields


def _entry_field(field: FieldDescriptor, name: str) -> FieldDescriptor:
    """The ``key`` or ``value`` field of a map field's entry type."""
    entry = field.message_type
    if entry is None:  # pragma: no cover - callers check _is_map first
        msg = f"{field.full_name} is not a map"
        raise TypeError(msg)
    return entry.fields_by_name[name]


def _is_map(field: FieldDescriptor) -> bool:
    message_type = field.message_type
    return message_type is not None and message_type.GetOptions().map_entry


def _element_type(field: FieldDescriptor) -> Descriptor | None:
    """The message type a field holds (a map's value type); ``None`` for scalars and enums."""
    if _is_map(field):
        return _entry_field(field, "value").message_type
    return field.message_type


def _walked(descriptor: Descriptor | None) -> bool:
    """Whether values of this type are converted here (they may hold an Any) or by protobuf."""
    if descriptor is None:
        return False
    return descriptor.full_name == _ANY or not descriptor.full_name.startswith(_WELL_KNOWN_PREFIX)


def _map_key(field: FieldDescriptor, key: str) -> object:
    """A JSON object key as the map's key type."""
    key_type = _entry_field(field, "key").type
    if key_type == FieldDescriptor.TYPE_STRING:
        return key
    if key_type == FieldDescriptor.TYPE_BOOL:
        if key not in _BOOL_KEYS:
            msg = f"invalid bool map key {key!r}"
            raise json_format.ParseError(msg)
        return _BOOL_KEYS[key]
    return int(key)


class _Reader:
    """JSON → message, resolving each Any against ``pool`` and keeping the ones it cannot."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self.pool = pool

    def merge(self, document: object, message: Message) -> None:
        if not isinstance(document, dict):
            msg = f"expected a JSON object for {message.DESCRIPTOR.full_name}"
            raise json_format.ParseError(msg)
        descriptor = message.DESCRIPTOR
        plain: dict[str, object] = {}
        dropped = False
        oneofs: set[str] = set()
        for key, value in document.items():
            field = _fields_by_json_key(descriptor).get(key)
            if field is None:
                dropped = True
                continue
            oneof = field.containing_oneof
            if oneof is not None and value is not None:
                if oneof.name in oneofs:
                    msg = f"{descriptor.full_name} has more than one {oneof.name} member"
                    raise json_format.ParseError(msg)
                oneofs.add(oneof.name)
            if not _walked(_element_type(field)):
                plain[key] = value
            elif value is not None:
                self._field(message, field, value)
        if plain:
            self._plain(plain, message)
        if dropped and descriptor.full_name == _ENVELOPE and message.WhichOneof("payload") is None:
            message.MergeFromString(ENVELOPE_DROPPED_MARK)

    def _plain(self, plain: dict[str, object], message: Message) -> None:
        """Let protobuf convert scalars, enums and well-known types (strictly)."""
        try:
            json_format.ParseDict(plain, message, descriptor_pool=self.pool)
        except json_format.ParseError as exc:
            if "Invalid enum value" in str(exc):
                raise UnknownEnumName(str(exc)) from None
            raise

    def _field(self, message: Message, field: FieldDescriptor, value: object) -> None:
        container = getattr(message, field.name)
        if _is_map(field):
            if not isinstance(value, dict):
                msg = f"expected a JSON object for map {field.full_name}"
                raise json_format.ParseError(msg)
            for key, item in value.items():
                self._value(container[_map_key(field, key)], item)
        elif field.is_repeated:
            if not isinstance(value, list):
                msg = f"expected a JSON array for {field.full_name}"
                raise json_format.ParseError(msg)
            for item in value:
                self._value(container.add(), item)
        else:
            container.SetInParent()
            self._value(container, value)

    def _value(self, target: Message, value: object) -> None:
        if isinstance(target, any_pb2.Any):
            self._any(target, value)
        else:
            self.merge(value, target)

    def _any(self, target: any_pb2.Any, value: object) -> None:
        if not isinstance(value, dict):
            msg = "expected a JSON object for google.protobuf.Any"
            raise json_format.ParseError(msg)
        type_url = value.get("@type")
        if not isinstance(type_url, str) or not type_url:
            msg = "google.protobuf.Any without @type"
            raise json_format.ParseError(msg)
        try:
            descriptor = self.pool.FindMessageTypeByName(type_url.rpartition("/")[2])
        except KeyError:
            opaque = opaque_pb2.OpaqueAny(type_url=type_url)
            members = {key: item for key, item in value.items() if key != "@type"}
            json_format.ParseDict(members, opaque.json)
            target.Pack(opaque)
            return
        if descriptor.full_name.startswith(_WELL_KNOWN_PREFIX):
            self._plain(value, target)  # {"@type", "value"}: protobuf's own form
            return
        inner = message_factory.GetMessageClass(descriptor)()
        self.merge({key: item for key, item in value.items() if key != "@type"}, inner)
        target.type_url = type_url
        target.value = inner.SerializeToString()


class _Writer:
    """Message → JSON, writing an Any whose type ``pool`` lacks as an OpaqueAny with its bytes."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self.pool = pool

    def _protobuf(self, message: Message) -> object:
        return json_format.MessageToDict(
            message, descriptor_pool=self.pool, use_integers_for_enums=True
        )

    def message(self, message: Message) -> dict[str, object]:
        shallow = type(message)()
        shallow.CopyFrom(message)
        walked: dict[str, object] = {}
        for field, value in message.ListFields():
            if not _walked(_element_type(field)):
                continue
            shallow.ClearField(field.name)
            if _is_map(field):
                walked[field.json_name] = {
                    _json_key(key): self._value(item) for key, item in value.items()
                }
            elif field.is_repeated:
                walked[field.json_name] = [self._value(item) for item in value]
            else:
                walked[field.json_name] = self._value(value)
        converted = self._protobuf(shallow)
        out: dict[str, object] = dict(converted) if isinstance(converted, dict) else {}
        out.update(walked)
        return out

    def _value(self, value: Message) -> object:
        if isinstance(value, any_pb2.Any):
            return self._any(value)
        return self.message(value)

    def _any(self, packed: any_pb2.Any) -> dict[str, object]:
        try:
            descriptor = self.pool.FindMessageTypeByName(packed.TypeName())
            inner = message_factory.GetMessageClass(descriptor)()
            inner.ParseFromString(packed.value)
        except (KeyError, DecodeError):
            opaque = opaque_pb2.OpaqueAny(type_url=packed.type_url, binary=packed.value)
            return {"@type": OPAQUE_TYPE_URL, **self.message(opaque)}
        if descriptor.full_name.startswith(_WELL_KNOWN_PREFIX):
            return {"@type": packed.type_url, "value": self._protobuf(inner)}
        return {"@type": packed.type_url, **self.message(inner)}


def _json_key(key: object) -> str:
    """A map key as proto3 JSON writes it."""
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)
