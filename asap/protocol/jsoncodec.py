"""A fast proto3 JSON converter for ``asap.v1.json``, exact or not at all.

``google.protobuf.json_format`` is pure Python and re-derives everything for every value (it builds
a dict of a message's fields per message parsed, parses each Timestamp with ``strptime``). Here a
*plan* per message type (its fields by JSON and proto name, each with a converter) is built once,
on first use, and cached by descriptor, so the caches hold at most one entry per message type of
the descriptor pool (an Any's type is resolved by name in the pool and never cached when missing).

The converter is exact or declines: :func:`to_json` returns what
``json_format.MessageToDict(message, use_integers_for_enums=True)`` returns, and :func:`parse`
builds what ``json_format.ParseDict`` builds, or either raises (:class:`Unsupported`, or whatever
protobuf raised on the way). Only the common, canonical forms are handled here; anything else — an
unknown field or Any type, a non-canonical spelling (an integral float for an integer, ``"1e3"``,
an offset timestamp), a ``float`` field, extensions, JSON over :data:`MAX_DEPTH` deep — declines,
and the caller runs json_format (and the schema-skew rules of :mod:`asap.protocol.jsonwire`) on the
same input, which decides. So a value either converts exactly as json_format would, or costs one
aborted attempt more; it never converts differently.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timedelta
from typing import Final, cast

from google.protobuf import (
    any_pb2,
    descriptor_pool,
    duration_pb2,
    field_mask_pb2,
    message_factory,
    struct_pb2,
    timestamp_pb2,
)
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message


__all__ = [
    "MAX_DEPTH",
    "Unsupported",
    "cache_sizes",
    "packed_json",
    "parse",
    "to_json",
    "to_json_object",
]

MAX_DEPTH: Final = 64
"""Nesting (messages inside messages) past which :func:`parse` declines; json_format allows 100."""


class Unsupported(Exception):
    """The fast converter does not handle this value: use ``json_format`` instead."""


# Converters of field values (scalars, containers, messages). Those of one value type are
# registered with cast(): the plan that picks one knows the value's type, which mypy cannot see.
_Write = Callable[[object], object]
_Read = Callable[[object], object]
_Merge = Callable[[object, Message, int], None]
_StringForm = timestamp_pb2.Timestamp | duration_pb2.Duration | field_mask_pb2.FieldMask

_POOL: Final = descriptor_pool.Default()
_TYPE_URL_PREFIX: Final = "type.googleapis.com/"
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_WHOLE_SECONDS: Final = re.compile(r"-?[0-9]+s", re.ASCII)
_MAX_DURATION: Final = 315_576_000_000
"""Seconds in 10,000 years: the longest Duration protobuf accepts."""
_NAIVE_EPOCH: Final = datetime(1970, 1, 1)  # naive, as protobuf: its isoformat has no offset
_MIN_SECONDS: Final = -62135596800
"""0001-01-01T00:00:00Z, the earliest Timestamp."""
_MAX_SECONDS: Final = 253402300799
"""9999-12-31T23:59:59Z, the latest Timestamp."""
_NANOS: Final = 1_000_000_000
_DIGITS: Final = re.compile(r"-?[0-9]+", re.ASCII)
_TIMESTAMP: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?Z"
)
# json_format's check for strings (lone UTF-16 surrogates), which json.loads lets through. The
# escapes are re's, not the literal's: mypyc (scripts/compile.py) refuses surrogates in literals.
_UNPAIRED_SURROGATE: Final = re.compile(
    r"[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]"
)
_FLOAT_WORDS: Final = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_ANY: Final = any_pb2.Any.DESCRIPTOR.full_name
_VALUE: Final = "google.protobuf.Value"
_NULL_VALUE: Final = "google.protobuf.NullValue"
_WRAPPERS: Final = frozenset(
    "google.protobuf." + name
    for name in (
        "DoubleValue",
        "FloatValue",
        "Int64Value",
        "UInt64Value",
        "Int32Value",
        "UInt32Value",
        "BoolValue",
        "StringValue",
        "BytesValue",
    )
)
_STRING_FORM: Final = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)
_SPECIAL: Final = frozenset(
    {_ANY, _VALUE, "google.protobuf.Struct", "google.protobuf.ListValue"} | _STRING_FORM
)

_C: Final = FieldDescriptor
_INTEGERS: Final = frozenset({_C.CPPTYPE_INT32, _C.CPPTYPE_UINT32})
_INTEGERS64: Final = frozenset({_C.CPPTYPE_INT64, _C.CPPTYPE_UINT64})


def to_json(message: Message) -> object:
    """``json_format.MessageToDict(message, use_integers_for_enums=True)``, or :class:`Unsupported`.

    Raises:
        Unsupported: A value this converter leaves to json_format (e.g. an Any of an unknown type).
        ValueError, KeyError, TypeError, DecodeError: As protobuf raises them on the way (an Any
            whose bytes do not parse, say); json_format decides.
    """
    return _writer(_descriptor(message))(message)


def _descriptor(message: Message) -> Descriptor:
    # The stubs type DESCRIPTOR as the pure-Python or the upb class: the same API.
    return cast("Descriptor", message.DESCRIPTOR)


def packed_json(message: Message) -> dict[str, object]:
    """:func:`to_json` of ``Any.Pack(message)``, without packing (serializing) it first.

    Raises:
        Unsupported: As :func:`to_json`; also when the pool's type of that name is another.
    """
    descriptor = _descriptor(message)
    type_url = _TYPE_URL_PREFIX + descriptor.full_name
    if _any_type(type_url) is not descriptor:
        raise Unsupported  # json_format resolves the name in the pool, which has another type
    converted = _writer(descriptor)(message)
    if descriptor.full_name in _WRAPPERS or descriptor.full_name in _SPECIAL:
        return {"@type": type_url, "value": converted}
    if not isinstance(converted, dict):  # pragma: no cover - regular messages write objects
        raise Unsupported
    return {"@type": type_url, **converted}


def to_json_object(message: Message) -> dict[str, object]:
    """:func:`to_json` of a message that converts to a JSON object (not a well-known scalar form)."""
    converted = to_json(message)
    if not isinstance(converted, dict):
        raise Unsupported
    return converted


def parse(document: object, message: Message) -> None:
    """``json_format.ParseDict(document, message)`` for a fresh ``message``, or decline.

    On any exception ``message`` is left part-filled: parse again into a fresh one.

    Raises:
        Unsupported: A value this converter leaves to json_format (an unknown field, a
            non-canonical form, a value json_format refuses).
        ValueError, KeyError, TypeError, AttributeError, OverflowError: As protobuf raises them.
    """
    _merger(_descriptor(message))(document, message, 0)


# -- plans ------------------------------------------------------------------------------------

_WRITERS: Final[dict[Descriptor, _Write]] = {}
_MERGERS: Final[dict[Descriptor, _Merge]] = {}
_ANY_MERGERS: Final[dict[Descriptor, _Merge]] = {}
"""Regular messages inside an Any: their members and ``@type``."""
_TYPES: Final[dict[str, Descriptor]] = {}
"""Any type names (the part of a type URL after its last ``/``) found in the pool."""


def cache_sizes() -> dict[str, int]:
    """Entries in each plan cache (each is bounded by the message types of the pool)."""
    return {
        "writers": len(_WRITERS),
        "mergers": len(_MERGERS),
        "any_mergers": len(_ANY_MERGERS),
        "types": len(_TYPES),
    }


def _writer(descriptor: Descriptor) -> _Write:
    writer = _WRITERS.get(descriptor)
    if writer is None:
        writer = _WRITERS[descriptor] = _build_writer(descriptor)
    return writer


def _merger(descriptor: Descriptor) -> _Merge:
    merger = _MERGERS.get(descriptor)
    if merger is None:
        merger = _MERGERS[descriptor] = _build_merger(descriptor, in_any=False)
    return merger


def _any_merger(descriptor: Descriptor) -> _Merge:
    merger = _ANY_MERGERS.get(descriptor)
    if merger is None:
        merger = _ANY_MERGERS[descriptor] = _build_merger(descriptor, in_any=True)
    return merger


def _any_type(type_url: object) -> Descriptor:
    if type(type_url) is not str:
        raise Unsupported
    name = type_url.split("/")[-1]
    descriptor = _TYPES.get(name)
    if descriptor is None:
        try:
            descriptor = _POOL.FindMessageTypeByName(name)
        except KeyError:
            raise Unsupported from None
        _TYPES[name] = descriptor
    return descriptor


def _map_entry(field: FieldDescriptor) -> Descriptor | None:
    """The entry type of a map field; ``None`` for other fields."""
    message_type = field.message_type
    if message_type is not None and message_type.GetOptions().map_entry:
        return message_type
    return None


# -- writing ----------------------------------------------------------------------------------


def _build_writer(descriptor: Descriptor) -> _Write:
    name = descriptor.full_name
    if name in _WRAPPERS:
        convert = _scalar_writer(descriptor.fields_by_name["value"])
        if convert is None:
            return _wrapped
        return lambda message: convert(_wrapped(message))
    special = _SPECIAL_WRITERS.get(name)
    if special is not None:
        return special
    plan: dict[FieldDescriptor, tuple[str, _Write | None]] = {}
    for field in descriptor.fields:
        plan[field] = (field.json_name, _field_writer(field))

    def write(message: Message) -> object:
        out: dict[str, object] = {}
        for field, value in message.ListFields():
            name, convert = plan[field]  # KeyError for an extension: json_format decides
            out[name] = value if convert is None else convert(value)
        return out

    return cast("_Write", write)


def _wrapped(message: object) -> object:
    """The ``value`` of a wrapper message (``google.protobuf.Int64Value`` and the rest)."""
    return getattr(message, "value")  # noqa: B009 - any of nine types


def _field_writer(field: FieldDescriptor) -> _Write | None:
    """The converter of a field's value (``None``: the value is its own JSON)."""
    entry = _map_entry(field)
    if entry is not None:
        key_bool = entry.fields_by_name["key"].cpp_type == _C.CPPTYPE_BOOL
        value_field = entry.fields_by_name["value"]
        item = _value_writer(value_field)

        def write_map(value: Mapping[object, object]) -> object:
            if key_bool:
                return {
                    ("true" if key else "false"): (v if item is None else item(v))
                    for key, v in value.items()
                }
            if item is None:
                return {str(key): v for key, v in value.items()}
            return {str(key): item(v) for key, v in value.items()}

        return cast("_Write", write_map)
    single = _value_writer(field)
    if not field.is_repeated:
        return single
    if single is None:
        return cast("_Write", list)

    def write_list(value: Iterable[object]) -> object:
        return [convert(item) for item in value]

    convert = single
    return cast("_Write", write_list)


def _value_writer(field: FieldDescriptor) -> _Write | None:
    message_type = field.message_type
    if message_type is None:
        return _scalar_writer(field)
    cache = _WRITERS
    # Looked up when called: the plan of a recursive type is being built right now.
    return lambda value: (cache.get(message_type) or _writer(message_type))(value)


def _scalar_writer(field: FieldDescriptor) -> _Write | None:
    cpp_type = field.cpp_type
    if cpp_type in _INTEGERS64:
        return str
    if cpp_type == _C.CPPTYPE_DOUBLE:
        return cast("_Write", _write_double)
    if cpp_type == _C.CPPTYPE_FLOAT:
        return _unsupported  # json_format rounds to the shortest float: left to it
    if field.type == _C.TYPE_BYTES:
        return cast("_Write", _write_bytes)
    return None  # strings, bools, 32-bit integers, enums (as numbers)


def _unsupported(_value: object) -> object:
    raise Unsupported


def _write_double(value: float) -> object:
    if value - value == 0.0:  # finite (inf - inf and nan - nan are nan)
        return value
    if value != value:  # NaN
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _write_bytes(value: bytes) -> object:
    return base64.b64encode(value).decode("utf-8")


def _write_value(message: struct_pb2.Value) -> object:
    kind = message.WhichOneof("kind")
    if kind == "string_value":
        return message.string_value
    if kind == "number_value":
        number: float = message.number_value
        if number - number != 0.0:
            raise Unsupported  # json_format refuses NaN and Infinity here
        return number
    if kind == "struct_value":
        return _write_struct(message.struct_value)
    if kind == "bool_value":
        return message.bool_value
    if kind == "list_value":
        return [_write_value(item) for item in message.list_value.values]
    return None  # null_value, or no kind


def _write_struct(message: struct_pb2.Struct) -> object:
    return {key: _write_value(value) for key, value in message.fields.items()}


def _write_list(message: struct_pb2.ListValue) -> object:
    return [_write_value(item) for item in message.values]


class _Day:
    """The last calendar day converted, each way: timestamps of one run are mostly of one day.

    One tuple each, replaced whole, so a reader never sees one day's number with another's text.
    """

    __slots__ = ("read", "written")

    def __init__(self) -> None:
        self.written: tuple[int, str] = (0, "1970-01-01T")
        """(days since the epoch, ``YYYY-MM-DDT``) of the last timestamp written."""
        self.read: tuple[str, int] = ("1970-01-01", 0)
        """(``YYYY-MM-DD``, days since the epoch) of the last timestamp read."""


_DAY: Final = _Day()
_TWO_DIGITS: Final = tuple(f"{number:02d}" for number in range(100))


def _write_timestamp(message: timestamp_pb2.Timestamp) -> object:
    """``Timestamp.ToJsonString``'s text, without its float arithmetic."""
    seconds, nanos = message.seconds, message.nanos
    if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < _NANOS):
        raise Unsupported  # protobuf raises: let it
    days, second_of_day = divmod(seconds, 86_400)
    written = _DAY.written
    if written[0] == days:
        day_text = written[1]
    else:
        day_text = (_NAIVE_EPOCH + timedelta(days=days)).date().isoformat() + "T"
        _DAY.written = (days, day_text)
    hours, rest = divmod(second_of_day, 3600)
    minutes, second = divmod(rest, 60)
    two = _TWO_DIGITS
    text = day_text + two[hours] + ":" + two[minutes] + ":" + two[second]
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{text}.{nanos // 1000:06d}Z"
    return f"{text}.{nanos:09d}Z"


def _write_string_form(message: _StringForm) -> object:
    text: str = message.ToJsonString()  # what json_format calls
    return text


def _write_any(message: any_pb2.Any) -> object:
    if not message.ListFields():
        return {}
    type_url: str = message.type_url
    descriptor = _any_type(type_url)
    inner = message_factory.GetMessageClass(descriptor).FromString(message.value)
    converted = _writer(descriptor)(inner)
    if descriptor.full_name in _WRAPPERS or descriptor.full_name in _SPECIAL:
        return {"@type": type_url, "value": converted}
    if not isinstance(converted, dict):  # pragma: no cover - regular messages write objects
        raise Unsupported
    return {"@type": type_url, **converted}


_SPECIAL_WRITERS: Final[dict[str, _Write]] = {
    _ANY: cast("_Write", _write_any),
    _VALUE: cast("_Write", _write_value),
    "google.protobuf.Struct": cast("_Write", _write_struct),
    "google.protobuf.ListValue": cast("_Write", _write_list),
    **dict.fromkeys(_STRING_FORM, cast("_Write", _write_string_form)),
    "google.protobuf.Timestamp": cast("_Write", _write_timestamp),
}


# -- reading ----------------------------------------------------------------------------------


_Clear = Callable[[Message], None]
_Entry = tuple[str | None, _Merge | None, _Clear, str, _Read]
"""A field's plan for reading: its oneof, how to merge a value (``None``: a singular scalar, set
to ``convert(value)``), what ``null`` does, its name, and that scalar's ``convert``."""


def _ignore(_document: object, _message: object, _depth: int) -> None:
    """``@type`` in a regular message inside an Any: the Any's, not a field."""


def _build_merger(descriptor: Descriptor, *, in_any: bool) -> _Merge:
    name = descriptor.full_name
    if name in _WRAPPERS:
        convert = _scalar_reader(descriptor.fields_by_name["value"])

        def merge_wrapper(document: object, message: Message, _depth: int) -> None:
            setattr(message, "value", convert(document))  # noqa: B010 - the wrapper's field

        return merge_wrapper
    special = _SPECIAL_MERGERS.get(name)
    if special is not None:
        return special
    plan: dict[str, _Entry] = {}
    oneof_names = {oneof.name for oneof in descriptor.oneofs}
    entries: dict[FieldDescriptor, _Entry] = {}
    for field in descriptor.fields:
        if field.is_extension or field.name in oneof_names or field.json_name in oneof_names:
            return _decline  # json_format mixes field and oneof names in one list: left to it
        oneof = field.containing_oneof
        group = None if oneof is None else oneof.name
        clear = _null_clearer(field)
        if field.message_type is None and not field.is_repeated:  # set here, without a call
            entries[field] = (group, None, clear, field.name, _scalar_reader(field))
        else:
            entries[field] = (group, _field_merger(field), clear, field.name, _unsupported)
    for field, entry in entries.items():
        plan[field.name] = entry
    for field, entry in entries.items():  # a JSON name wins over another field's proto name
        plan[field.json_name] = entry
    if in_any:
        plan["@type"] = _TYPE_ENTRY

    def merge_message(document: object, message: Message, depth: int) -> None:
        if type(document) is not dict or depth > MAX_DEPTH:
            raise Unsupported
        oneofs: set[object] | None = None
        for key, value in document.items():
            entry = plan.get(key)
            if entry is None:
                raise Unsupported  # an unknown field: jsonwire's rules apply
            # A field under both its names is merged twice, in document order, as json_format does.
            group, merge, clear, name, convert = entry
            if value is None:
                clear(message)
                continue
            if group is not None:
                if oneofs is None:
                    oneofs = {group}
                elif group in oneofs:
                    raise Unsupported  # two members of a oneof: json_format refuses
                else:
                    oneofs.add(group)
            if merge is None:
                setattr(message, name, convert(value))
            else:
                merge(value, message, depth)

    return merge_message


def _decline(_document: object, _message: object, _depth: int) -> None:
    raise Unsupported


def _null_clearer(field: FieldDescriptor) -> _Clear:
    """What json_format does with ``null`` for this field."""
    name = field.name
    message_type = field.message_type
    if message_type is not None and message_type.full_name == _VALUE:
        if field.is_repeated:
            return _decline_null

        def null_value(message: Message) -> None:
            getattr(message, name).null_value = 0

        return null_value
    enum_type = field.enum_type
    if enum_type is not None and enum_type.full_name == _NULL_VALUE:
        if field.is_repeated:
            return _decline_null
        return lambda message: setattr(message, name, 0)
    return lambda message: message.ClearField(name)


def _decline_null(_message: object) -> None:
    raise Unsupported


_TYPE_ENTRY: Final[_Entry] = (None, _ignore, _decline_null, "", _unsupported)


def _field_merger(field: FieldDescriptor) -> _Merge:
    name = field.name
    if _map_entry(field) is not None:
        return _map_merger(field)
    message_type = field.message_type
    if message_type is None:
        convert = _scalar_reader(field)
        if not field.is_repeated:

            def merge_scalar(value: object, message: Message, _depth: int) -> None:
                setattr(message, name, convert(value))

            return merge_scalar

        def merge_scalars(value: object, message: Message, _depth: int) -> None:
            if type(value) is not list:
                raise Unsupported
            message.ClearField(name)
            getattr(message, name).extend([convert(item) for item in value])

        return merge_scalars
    cache = _MERGERS
    if not field.is_repeated:

        def merge_one(value: object, message: Message, depth: int) -> None:
            inner = getattr(message, name)
            inner.SetInParent()
            (cache.get(message_type) or _merger(message_type))(value, inner, depth + 1)

        return merge_one
    nullable = message_type.full_name == _VALUE

    def merge_many(value: object, message: Message, depth: int) -> None:
        if type(value) is not list:
            raise Unsupported
        message.ClearField(name)
        container = getattr(message, name)
        merge = cache.get(message_type) or _merger(message_type)
        for item in value:
            if item is None and not nullable:
                raise Unsupported  # json_format refuses null in a repeated field
            merge(item, container.add(), depth + 1)

    return merge_many


def _map_merger(field: FieldDescriptor) -> _Merge:
    name = field.name
    entry = _map_entry(field)
    if entry is None:  # pragma: no cover - callers check _map_entry first
        raise Unsupported
    key_field = entry.fields_by_name["key"]
    value_field = entry.fields_by_name["value"]
    key_type = key_field.cpp_type
    if key_type == _C.CPPTYPE_STRING:
        convert_key = _read_string
    elif key_type == _C.CPPTYPE_BOOL:
        convert_key = _read_bool_key
    else:
        convert_key = _read_integer
    value_type = value_field.message_type
    if value_type is None:
        convert = _scalar_reader(value_field)

        def merge_scalar_map(value: object, message: Message, _depth: int) -> None:
            if type(value) is not dict:
                raise Unsupported
            message.ClearField(name)
            container = getattr(message, name)
            for key, item in value.items():
                container[convert_key(key)] = convert(item)

        return merge_scalar_map
    cache = _MERGERS

    def merge_message_map(value: object, message: Message, depth: int) -> None:
        if type(value) is not dict:
            raise Unsupported
        message.ClearField(name)
        container = getattr(message, name)
        merge = cache.get(value_type) or _merger(value_type)
        for key, item in value.items():
            merge(item, container[convert_key(key)], depth + 1)

    return merge_message_map


def _scalar_reader(field: FieldDescriptor) -> _Read:
    cpp_type = field.cpp_type
    if cpp_type in _INTEGERS or cpp_type in _INTEGERS64:
        return _read_integer
    if cpp_type == _C.CPPTYPE_DOUBLE:
        return _read_double
    if cpp_type == _C.CPPTYPE_BOOL:
        return _read_bool
    enum_type = field.enum_type
    if enum_type is not None:
        return _enum_reader(enum_type)
    if field.type == _C.TYPE_BYTES:
        return _read_bytes
    if cpp_type == _C.CPPTYPE_STRING:
        return _read_string
    return _unsupported  # float: json_format checks its range


def _read_integer(value: object) -> object:
    if type(value) is int:
        return value
    if type(value) is str and _DIGITS.fullmatch(value):
        return int(value)
    raise Unsupported  # bools, integral floats, "1e3", " 1": left to json_format


def _read_double(value: object) -> object:
    if type(value) is float:
        if value - value == 0.0:
            return value
        raise Unsupported  # a bare NaN or Infinity, which json_format refuses
    if type(value) is int:
        return float(value)
    if type(value) is str and value in _FLOAT_WORDS:
        return _FLOAT_WORDS[value]
    raise Unsupported


def _read_bool(value: object) -> object:
    if type(value) is bool:
        return value
    raise Unsupported


def _read_bool_key(value: object) -> object:
    if value == "true":
        return True
    if value == "false":
        return False
    raise Unsupported


def _read_string(value: object) -> object:
    if type(value) is not str or (not value.isascii() and _UNPAIRED_SURROGATE.search(value)):
        raise Unsupported
    return value


def _read_bytes(value: object) -> object:
    if type(value) is not str:
        raise Unsupported
    encoded = value.encode("utf-8")
    # json_format's own expression: both base64 alphabets, padding optional.
    return base64.urlsafe_b64decode(encoded + b"=" * (4 - len(encoded) % 4))


def _enum_reader(enum_type: EnumDescriptor) -> _Read:
    by_name = {value.name: value.number for value in enum_type.values}
    known = frozenset(value.number for value in enum_type.values)
    closed = enum_type.is_closed

    def read_enum(value: object) -> object:
        if type(value) is int:
            if closed and value not in known:
                raise Unsupported
            return value
        if type(value) is str:
            number = by_name.get(value)
            if number is not None:
                return number
        raise Unsupported  # an unknown name (jsonwire refuses it), a numeric string, a bool

    return read_enum


def _merge_value(document: object, message: struct_pb2.Value, depth: int) -> None:
    if type(document) is str:
        message.string_value = document
    elif type(document) is dict:
        _merge_struct(document, message.struct_value, depth + 1)
    elif type(document) is int or type(document) is float:
        message.number_value = document
    elif type(document) is bool:
        message.bool_value = document
    elif document is None:
        message.null_value = struct_pb2.NULL_VALUE
    elif type(document) is list:
        _merge_list(document, message.list_value, depth + 1)
    else:
        raise Unsupported


def _merge_struct(document: object, message: struct_pb2.Struct, depth: int) -> None:
    if type(document) is not dict or depth > MAX_DEPTH:
        raise Unsupported
    message.Clear()
    fields = message.fields
    for key, item in document.items():
        _merge_value(item, fields[key], depth + 1)


def _merge_list(document: object, message: struct_pb2.ListValue, depth: int) -> None:
    if type(document) is not list or depth > MAX_DEPTH:
        raise Unsupported
    message.ClearField("values")
    values = message.values
    for item in document:
        _merge_value(item, values.add(), depth + 1)


def _merge_timestamp(document: object, message: timestamp_pb2.Timestamp, _depth: int) -> None:
    if type(document) is not str:
        raise Unsupported
    match = _TIMESTAMP.fullmatch(document)
    if match is None:
        message.FromJsonString(document)  # other offsets and forms: protobuf's own parser
        return
    year, month, day, hour, minute, second, fraction = match.groups()
    hours, minutes, seconds = int(hour), int(minute), int(second)
    if hours > 23 or minutes > 59 or seconds > 59:
        raise Unsupported  # protobuf refuses these (strptime and datetime)
    day_text = document[:10]
    read = _DAY.read
    if read[0] == day_text:
        days = read[1]
    else:
        # date() refuses what strptime refuses: month 0 or 13, February 30, year 0.
        days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
        _DAY.read = (day_text, days)
    message.seconds = days * 86_400 + hours * 3600 + minutes * 60 + seconds
    # Protobuf's own rounding of the fraction.
    message.nanos = round(float("0." + fraction) * 1e9) if fraction else 0


def _merge_duration(document: object, message: duration_pb2.Duration, _depth: int) -> None:
    if type(document) is not str:
        raise Unsupported
    if _WHOLE_SECONDS.fullmatch(document) is None:
        message.FromJsonString(document)  # fractions: protobuf's own parser
        return
    seconds = int(document[:-1])
    if not -_MAX_DURATION <= seconds <= _MAX_DURATION:
        raise Unsupported  # protobuf refuses it
    message.seconds = seconds
    message.nanos = 0


def _merge_string_form(document: object, message: _StringForm, _depth: int) -> None:
    if type(document) is not str:
        raise Unsupported
    message.FromJsonString(document)  # FieldMask: protobuf's own (cheap) parser


def _merge_any(document: object, message: any_pb2.Any, depth: int) -> None:
    if type(document) is not dict or depth > MAX_DEPTH:
        raise Unsupported
    if not document:
        return
    type_url = document["@type"]
    descriptor = _any_type(type_url)
    inner = message_factory.GetMessageClass(descriptor)()
    full_name = descriptor.full_name
    if full_name in _WRAPPERS or full_name in _SPECIAL:
        _merger(descriptor)(document["value"], inner, depth + 1)
    else:
        _any_merger(descriptor)(document, inner, depth + 1)
    message.value = inner.SerializeToString()
    message.type_url = type_url


_SPECIAL_MERGERS: Final[dict[str, _Merge]] = {
    _ANY: cast("_Merge", _merge_any),
    _VALUE: cast("_Merge", _merge_value),
    "google.protobuf.Struct": cast("_Merge", _merge_struct),
    "google.protobuf.ListValue": cast("_Merge", _merge_list),
    "google.protobuf.Timestamp": cast("_Merge", _merge_timestamp),
    "google.protobuf.Duration": cast("_Merge", _merge_duration),
    "google.protobuf.FieldMask": cast("_Merge", _merge_string_form),
}
