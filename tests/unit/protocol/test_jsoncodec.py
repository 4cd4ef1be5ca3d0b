"""The fast proto3 JSON converter (asap.protocol.jsoncodec) against protobuf's json_format.

Seeded random messages of every asap.v1 type (and the google.rpc details the bridge carries), with
every field kind: the writer's output equals ``MessageToDict(use_integers_for_enums=True)`` (as
text, so field order too) and fails where it fails; the reader, on those documents and on mutated
ones (other spellings, wrong types, nulls, unknown members), either builds exactly what
``ParseDict`` builds or declines — never a different message — and declines nothing canonical. The
codec as a whole decodes and encodes random Frames as the json_format path does, errors included.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.protobuf import (
    any_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    json_format,
    message_factory,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from asap.protocol import frames, jsoncodec, jsonwire
from asap.protocol.frames import FrameError, JsonCodec
from asap.v1 import agent_service_pb2, bridge_pb2, envelope_pb2, opaque_pb2, status_pb2


POOL = descriptor_pool.Default()
FILES = (
    agent_service_pb2.DESCRIPTOR,
    bridge_pb2.DESCRIPTOR,
    envelope_pb2.DESCRIPTOR,
    opaque_pb2.DESCRIPTOR,
    status_pb2.DESCRIPTOR,
    error_details_pb2.DESCRIPTOR,
    *(POOL.FindFileByName(f"asap/v1/{name}.proto") for name in ("error", "manifest", "part")),
    *(POOL.FindFileByName(f"asap/v1/{name}.proto") for name in ("payload", "task")),
)
PER_TYPE = 25
"""Random messages per type."""
MUTATIONS = 4
"""Mutated documents per message."""


def _walk(descriptor: Descriptor) -> Iterator[Descriptor]:
    if not descriptor.GetOptions().map_entry:
        yield descriptor
    for nested in descriptor.nested_types:
        yield from _walk(nested)


TYPES = sorted(
    {
        d.full_name: d for f in FILES for t in f.message_types_by_name.values() for d in _walk(t)
    }.items()
)
WELL_KNOWN = [
    timestamp_pb2.Timestamp.DESCRIPTOR,
    duration_pb2.Duration.DESCRIPTOR,
    struct_pb2.Struct.DESCRIPTOR,
    struct_pb2.Value.DESCRIPTOR,
    struct_pb2.ListValue.DESCRIPTOR,
    any_pb2.Any.DESCRIPTOR,
    empty_pb2.Empty.DESCRIPTOR,
    *(getattr(wrappers_pb2, name).DESCRIPTOR for name in ("Int64Value", "UInt32Value")),
    *(getattr(wrappers_pb2, name).DESCRIPTOR for name in ("BoolValue", "StringValue")),
    *(getattr(wrappers_pb2, name).DESCRIPTOR for name in ("BytesValue", "DoubleValue")),
]
ALL = [*(d for _, d in TYPES), *WELL_KNOWN]
ANY_TYPES = [d for _, d in TYPES[:: max(1, len(TYPES) // 12)]] + WELL_KNOWN
"""What random Anys hold."""


class Gen:
    """A seeded generator of random messages (every field kind, edge values, valid WKTs)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - reproducible test data

    def message(self, descriptor: Descriptor, depth: int = 3) -> Message:
        message = message_factory.GetMessageClass(descriptor)()
        self.fill(message, descriptor, depth)
        return message

    def fill(self, message: Message, descriptor: Descriptor, depth: int) -> None:
        special = {
            "google.protobuf.Timestamp": self._timestamp,
            "google.protobuf.Duration": self._duration,
            "google.protobuf.Struct": self._struct,
            "google.protobuf.Value": self._value,
            "google.protobuf.ListValue": self._list,
            "google.protobuf.Any": self._any,
            "google.protobuf.FieldMask": self._field_mask,
        }.get(descriptor.full_name)
        if special is not None:
            special(message, depth)
            return
        for field in descriptor.fields:
            if self.rng.random() < 0.45:
                continue
            self._field(message, field, depth)

    def _field(self, message: Message, field: FieldDescriptor, depth: int) -> None:
        target = getattr(message, field.name)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
            for _ in range(self.rng.randint(0, 3)):
                key = self.scalar(key_field)
                if value_field.message_type is None:
                    target[key] = self.scalar(value_field)
                elif depth > 0:
                    self.fill(target[key], value_field.message_type, depth - 1)
        elif field.is_repeated:
            for _ in range(self.rng.randint(0, 3)):
                if entry is None:
                    target.append(self.scalar(field))
                elif depth > 0:
                    self.fill(target.add(), entry, depth - 1)
        elif entry is not None:
            if depth > 0:
                target.SetInParent()
                self.fill(target, entry, depth - 1)
        else:
            setattr(message, field.name, self.scalar(field))

    def scalar(self, field: FieldDescriptor) -> object:
        rng, c = self.rng, FieldDescriptor
        kind = field.cpp_type
        if kind == c.CPPTYPE_INT32:
            return rng.choice([0, 1, -1, 2**31 - 1, -(2**31), rng.randint(-1000, 1000)])
        if kind == c.CPPTYPE_UINT32:
            return rng.choice([0, 1, 2**32 - 1, rng.randint(0, 10**6)])
        if kind == c.CPPTYPE_INT64:
            return rng.choice(
                [0, -1, 2**63 - 1, -(2**63), 2**53 + 1, rng.randint(-(10**12), 10**12)]
            )
        if kind == c.CPPTYPE_UINT64:
            return rng.choice([0, 1, 2**64 - 1, 2**53 + 1, rng.randint(0, 10**12)])
        if kind == c.CPPTYPE_DOUBLE:
            return rng.choice(
                [0.0, -0.0, 1.5, -2.25e-300, 1e300, math.nan, math.inf, -math.inf, rng.random()]
            )
        if kind == c.CPPTYPE_BOOL:
            return rng.random() < 0.5
        if kind == c.CPPTYPE_ENUM:
            enum_type = field.enum_type
            assert enum_type is not None
            return rng.choice([*(value.number for value in enum_type.values), 77])
        if field.type == c.TYPE_BYTES:
            return rng.randbytes(rng.choice([0, 1, 2, 3, 4, 17]))
        return self.text()

    def text(self) -> str:
        alphabet = 'abcXYZ019 _-"\\/\n\t\u00e9\u4e2d\U0001f600\u2028\x00'
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(0, 8)))

    def _timestamp(self, message: Message, _depth: int) -> None:
        assert isinstance(message, timestamp_pb2.Timestamp)
        message.seconds = self.rng.choice(
            [0, -62135596800, 253402300799, self.rng.randint(-(10**10), 10**10)]
        )
        message.nanos = self._nanos()

    def _nanos(self) -> int:
        return self.rng.choice(
            [0, 1, 999_999_999, 5_000_000, 123_456_000, self.rng.randint(0, 10**9 - 1)]
        )

    def _duration(self, message: Message, _depth: int) -> None:
        assert isinstance(message, duration_pb2.Duration)
        seconds = self.rng.choice([0, 1, 30, 315576000000, self.rng.randint(0, 10**6)])
        nanos = self._nanos()
        sign = self.rng.choice([1, -1])
        message.seconds, message.nanos = sign * seconds, sign * nanos

    def json_value(self, depth: int) -> Any:
        choices: list[Callable[[], Any]] = [
            lambda: None,
            lambda: self.rng.random() < 0.5,
            lambda: self.rng.choice([0, 1.5, -3, 1e20, 2**60]),
            self.text,
        ]
        if depth > 0:
            choices.append(
                lambda: [self.json_value(depth - 1) for _ in range(self.rng.randint(0, 3))]
            )
            choices.append(
                lambda: {
                    self.text(): self.json_value(depth - 1) for _ in range(self.rng.randint(0, 3))
                }
            )
        return self.rng.choice(choices)()

    def _struct(self, message: Message, depth: int) -> None:
        assert isinstance(message, struct_pb2.Struct)
        for _ in range(self.rng.randint(0, 3)):
            json_format.ParseDict(self.json_value(depth), message.fields[self.text()])

    def _value(self, message: Message, depth: int) -> None:
        assert isinstance(message, struct_pb2.Value)
        if self.rng.random() < 0.05:
            message.number_value = math.nan  # json_format refuses to write it
        elif self.rng.random() < 0.05:
            return  # no kind: written as null
        else:
            json_format.ParseDict(self.json_value(depth), message)

    def _list(self, message: Message, depth: int) -> None:
        assert isinstance(message, struct_pb2.ListValue)
        items: Any = [self.json_value(depth) for _ in range(self.rng.randint(0, 3))]
        json_format.ParseDict(items, message)

    def _any(self, message: Message, depth: int) -> None:
        assert isinstance(message, any_pb2.Any)
        if depth <= 0 or self.rng.random() < 0.1:
            return  # an empty Any
        message.Pack(self.message(self.rng.choice(ANY_TYPES), depth - 1))

    def _field_mask(self, message: Message, _depth: int) -> None:
        paths = ["a", "skill_id", "b.c_d", "x2"]
        message.paths.extend(self.rng.sample(paths, self.rng.randint(0, 3)))  # type: ignore[attr-defined]


def _reference_write(message: Message) -> tuple[str, object]:
    try:
        return "ok", json_format.MessageToDict(message, use_integers_for_enums=True)
    except Exception as exc:  # noqa: BLE001 - the class is what is compared
        return "error", type(exc)


def _fast_write(message: Message) -> tuple[str, object]:
    try:
        return "ok", jsoncodec.to_json(message)
    except Exception as exc:  # noqa: BLE001
        return "error", type(exc)


def _text(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _messages(seed: int) -> Iterator[tuple[Descriptor, Message]]:
    gen = Gen(seed)
    for descriptor in ALL:
        for _ in range(PER_TYPE):
            yield descriptor, gen.message(descriptor)


def test_the_writer_matches_json_format_for_every_type() -> None:
    """Same JSON text as MessageToDict where it succeeds; a failure where it fails."""
    checked = failed = 0
    for _, message in _messages(1):
        expected, fast = _reference_write(message), _fast_write(message)
        if expected[0] == "error":
            assert fast[0] == "error", (message, fast)
            failed += 1
            continue
        assert fast[0] == "ok", (message, fast)
        assert _text(fast[1]) == _text(expected[1])
        checked += 1
    assert checked > 10 * len(ALL)
    assert failed > 0  # NaN in a Value: json_format refuses, and so does the writer


def test_packed_json_is_the_json_of_the_packed_any() -> None:
    """packed_json(m) equals MessageToDict of Any.Pack(m), without packing."""
    gen = Gen(2)
    for descriptor in ALL:
        message = gen.message(descriptor)
        packed = any_pb2.Any()
        packed.Pack(message)
        expected = _reference_write(packed)
        try:
            got: tuple[str, object] = ("ok", jsoncodec.packed_json(message))
        except Exception as exc:  # noqa: BLE001
            got = ("error", type(exc))
        assert (got[0] == "ok") == (expected[0] == "ok")
        if got[0] == "ok":
            assert got[1] == expected[1]


_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")
_ODD_VALUES: list[object] = [
    None, 0, 1, -1, 1.0, 1.5, 1e400, "", "x", "1", "-7", " 1", "1e3", "1.0", "NaN", "Infinity",
    "nan", True, False, [], [None], {}, {"a": None}, 2**70, "0x10", "AAAA", "YQ", "_-8=",
    "1972-01-01T10:00:20.021-05:00", "1972-01-01T10:00:20Z", "1972-02-30T10:00:20Z",
    "2020-01-01T24:00:00Z", "2020-01-01T23:59:60Z", "0000-01-01T00:00:00Z", "2020-13-01T00:00:00Z",
    "2024-02-29T00:00:00Z", "2023-02-29T00:00:00Z", "9999-12-31T23:59:59.999999999Z",
    "1.5s", "-0.5s", "1.0000000001s", "30s", "-7s", "+5s", "315576000001s", "-315576000000s",
    "ACK_STATUS_PROCESSED", "NOPE_NAME",
    {"@type": "type.googleapis.com/asap.v1.Nope"},
    {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "1s"},
    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "R"},
]  # fmt: skip


_MEMBERS = [
    "zzUnknown", "streamId", "stream_id", "ping", "pong", "typed", "binary", "text", "taskRequest",
    "task_request", "messageAck", "halfClose", "stringValue", "listValue", "nullValue", "value",
]  # fmt: skip


def _slots(document: object) -> list[tuple[Any, Any]]:
    """Every (container, key-or-index) in a JSON document."""
    out: list[tuple[Any, Any]] = []
    if isinstance(document, dict):
        for key, value in document.items():
            out.append((document, key))
            out.extend(_slots(value))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            out.append((document, index))
            out.extend(_slots(value))
    return out


def _mutate(original: object, rng: random.Random) -> object:
    """Another spelling of, or a fault in, one member of ``document`` (a deep copy)."""
    document = copy.deepcopy(original)
    slots = _slots(document)
    if not slots:
        return rng.choice([None, [], "x", {"zzUnknown": 1}])
    container, key = rng.choice(slots)
    value = container[key]
    roll = rng.random()
    if isinstance(container, dict) and isinstance(key, str) and roll < 0.15:
        snake = _CAMEL.sub(lambda m: "_" + m.group(1).lower(), key)
        container[snake] = container.pop(key)  # the proto name (or the same key)
    elif isinstance(container, dict) and roll < 0.22:
        # An unknown member, or a known one: a second member of a oneof, a field twice.
        container[rng.choice(_MEMBERS)] = copy.deepcopy(rng.choice(_ODD_VALUES))
    elif isinstance(value, str) and roll < 0.4:
        if re.fullmatch(r"-?[0-9]+", value):
            container[key] = int(value)
        elif value.endswith("Z"):
            container[key] = value[:-1] + rng.choice(["+00:00", "-01:30", ".5Z", "z"])
        else:  # base64 in the other alphabet, unpadded
            container[key] = value.replace("+", "-").replace("/", "_").rstrip("=")
    elif isinstance(value, int) and not isinstance(value, bool) and roll < 0.5:
        container[key] = rng.choice([str(value), float(value), value + 2**64])
    else:
        container[key] = copy.deepcopy(rng.choice(_ODD_VALUES))
    return document


def _reference_parse(document: Any, descriptor: Descriptor) -> tuple[str, object]:
    message = message_factory.GetMessageClass(descriptor)()
    try:
        json_format.ParseDict(copy.deepcopy(document), message)
    except Exception as exc:  # noqa: BLE001
        return "error", type(exc)
    return "ok", message


def _fast_parse(document: object, descriptor: Descriptor) -> tuple[str, object]:
    message = message_factory.GetMessageClass(descriptor)()
    snapshot = copy.deepcopy(document)
    try:
        jsoncodec.parse(document, message)
    except Exception as exc:  # noqa: BLE001
        return "declined", type(exc)
    finally:
        assert document == snapshot or document != document  # never modifies its input (NaN aside)
    return "ok", message


def test_the_reader_builds_what_parse_dict_builds_or_declines() -> None:
    """Canonical documents all read as ParseDict reads them; mutated ones the same, or declined."""
    rng = random.Random(3)  # noqa: S311
    accepted = declined = refused = 0
    for descriptor, message in _messages(4):
        written = _reference_write(message)
        if written[0] == "error":
            continue
        canonical = json.loads(_text(written[1]))
        expected, fast = _reference_parse(canonical, descriptor), _fast_parse(canonical, descriptor)
        assert expected[0] == "ok"
        assert fast == expected, (descriptor.full_name, canonical)
        for _ in range(MUTATIONS):
            mutated = _mutate(canonical, rng)
            expected, fast = _reference_parse(mutated, descriptor), _fast_parse(mutated, descriptor)
            if fast[0] == "ok":
                assert expected == fast, (descriptor.full_name, mutated)
                accepted += 1
            else:
                declined += 1
                refused += expected[0] == "error"
    # The mutations reach both sides: accepted other spellings, and faults json_format refuses.
    assert accepted > 1000
    assert refused > 1000
    assert declined > refused


def test_other_spellings_read_on_the_fast_path() -> None:
    """Proto names, enum names, int64 numbers, urlsafe unpadded base64, null, NaN words."""
    document = {
        "stream_id": 7,
        "start": {
            "method": "/asap.v1.AgentService/Send",
            "metadata": [{"key": "k", "binary": "-_8"}, {"key": "n", "text": None}],
            "timeout": "1.5s",
            "message": {
                "typed": {
                    "@type": "type.googleapis.com/asap.v1.SendRequest",
                    "envelope": {
                        "timestamp": "2024-02-29T23:59:59.5Z",
                        "messageAck": {"status": "ACK_STATUS_PROCESSED"},
                        "extensions": {"x": [1, None, "NaN", {"y": False}]},
                    },
                }
            },
            "half_close": True,
        },
    }
    expected = _reference_parse(document, bridge_pb2.Frame.DESCRIPTOR)
    assert expected[0] == "ok"
    assert _fast_parse(document, bridge_pb2.Frame.DESCRIPTOR) == expected
    ping = {"ping": {"nonce": 2**64 - 1}}  # a uint64 as a JSON number
    assert _fast_parse(ping, bridge_pb2.Frame.DESCRIPTOR) == _reference_parse(
        ping, bridge_pb2.Frame.DESCRIPTOR
    )


def _reference_decode(text: str) -> tuple[str, object]:
    """The codec's decode before the fast path: json_format, then jsonwire's lenient reader."""
    codec = JsonCodec()
    try:
        return "ok", codec._parse_slowly(json.loads(text))  # the reference
    except FrameError as exc:
        return "error", (exc.code, exc.reason, exc.stream_id)


def _decode(text: str) -> tuple[str, object]:
    try:
        return "ok", JsonCodec().decode(text)
    except FrameError as exc:
        return "error", (exc.code, exc.reason, exc.stream_id)


def test_the_codec_decodes_and_refuses_frames_as_before() -> None:
    """Random and mutated Frames: the same Frame, or the same FrameError (code, reason, stream)."""
    gen, rng = Gen(5), random.Random(6)  # noqa: S311
    outcomes = {"ok": 0, "error": 0}
    for _ in range(400):
        frame = gen.message(bridge_pb2.Frame.DESCRIPTOR, depth=5)
        written = _reference_write(frame)
        if written[0] == "error":
            continue
        for document in (written[1], _mutate(written[1], rng), _mutate(written[1], rng)):
            text = _text(document)
            expected = _reference_decode(text)
            assert _decode(text) == expected, text
            outcomes[expected[0]] += 1
    assert min(outcomes.values()) > 50


def test_the_codec_encodes_frames_as_before() -> None:
    """encode, encode_start, encode_status and encode_message write json_format's JSON."""
    gen = Gen(7)
    codec = JsonCodec()
    for _ in range(300):
        frame = gen.message(bridge_pb2.Frame.DESCRIPTOR, depth=5)
        assert isinstance(frame, bridge_pb2.Frame)
        written = _reference_write(frame)
        if written[0] == "ok":
            assert json.loads(codec.encode(frame)) == json.loads(_text(written[1]))
    for descriptor in (agent_service_pb2.SendRequest.DESCRIPTOR, status_pb2.Status.DESCRIPTOR):
        for stream_id in (0, 1, 2**32 - 1):
            message = gen.message(descriptor)
            start = bridge_pb2.CallStart(method="/asap.v1.AgentService/Send")
            start.metadata.add(key="k", text="v")
            start.timeout.FromMilliseconds(1500)
            status = bridge_pb2.CallStatus(status=status_pb2.Status(code=5, message="m"))
            packed = bridge_pb2.MessageFrame()
            packed.typed.Pack(message)
            full_start = bridge_pb2.CallStart()
            full_start.CopyFrom(start)
            full_start.message.CopyFrom(packed)
            full_start.half_close = True
            full_status = bridge_pb2.CallStatus()
            full_status.CopyFrom(status)
            full_status.message.CopyFrom(packed)
            pairs = [
                (
                    codec.encode_start(stream_id, start, message, half_close=True),
                    bridge_pb2.Frame(stream_id=stream_id, start=full_start),
                ),
                (
                    codec.encode_status(stream_id, status, message),
                    bridge_pb2.Frame(stream_id=stream_id, status=full_status),
                ),
                (
                    codec.encode_message(stream_id, message),
                    bridge_pb2.Frame(stream_id=stream_id, message=packed),
                ),
            ]
            for text, reference in pairs:
                expected = _reference_write(reference)
                if expected[0] == "ok":
                    assert json.loads(text) == json.loads(_text(expected[1]))


@pytest.mark.parametrize(
    "text",
    [
        '{"a":[NaN,Infinity,-Infinity]}',  # literals json.loads takes and orjson refuses
        '{"n":' + str(10**400) + "}",  # beyond a double
        '{"s":"\\ud800"}',  # a lone surrogate escape
        '{"n":' + str(2**70) + ',"m":-1.5e-7,"t":"\u00e9"}',  # orjson takes these
    ],
)
def test_json_text_reads_as_the_standard_library_reads_it(text: str) -> None:
    """Whatever orjson refuses is read by json.loads (so jsoncodec and json_format decide, as
    before); what it reads is the same document, an integer beyond 64 bits aside (a float)."""
    expected = json.loads(text)
    document = frames._load_json(text)
    if "NaN" in text:
        assert repr(document) == repr(expected)
    elif str(2**70) in text:
        assert document == {**expected, "n": float(2**70)}
    else:
        assert document == expected


def test_a_frame_orjson_would_refuse_is_answered_as_before() -> None:
    """10**400 in a Struct: the frame still decodes, and the call fails typed, not the connection."""
    text = (
        '{"streamId":1,"start":{"method":"/asap.v1.AgentService/Send","message":{"typed":'
        '{"@type":"type.googleapis.com/asap.v1.SendRequest","envelope":{"taskRequest":'
        '{"input":{"n":' + str(10**400) + "}}}}}}}"
    )
    assert _decode(text) == _reference_decode(text)


def test_jsoncodec_documents_are_written_as_the_standard_library_writes_them() -> None:
    """Same text as json.dumps (compact, UTF-8) for the documents jsoncodec writes; floats are
    the same numbers."""
    gen = Gen(11)
    for _ in range(300):
        frame = gen.message(bridge_pb2.Frame.DESCRIPTOR, depth=5)
        try:
            document = jsoncodec.to_json(frame)
        except (jsoncodec.Unsupported, ValueError, TypeError, KeyError):
            continue
        reference = frames._JSON_ENCODER.encode(document)
        text = frames._dump_json(document)
        assert json.loads(text) == json.loads(reference)
        if "e-" not in reference and "e+" not in reference:
            assert text == reference


def test_plan_caches_are_bounded_by_the_pool() -> None:
    """One plan per message type at most; type URLs are cached by the type name they resolve to."""
    gen = Gen(8)
    for descriptor in ALL:
        message = gen.message(descriptor)
        written = _fast_write(message)
        if written[0] == "ok":
            _fast_parse(json.loads(_text(written[1])), descriptor)
    names = jsoncodec.cache_sizes()["types"]
    for index in range(500):  # many URLs for one type, and names the pool lacks
        prefix = f"example.com/{index}/"
        _fast_parse({"@type": prefix + "google.rpc.ErrorInfo"}, any_pb2.Any.DESCRIPTOR)
        _fast_parse({"@type": prefix + f"acme.v{index}.Missing"}, any_pb2.Any.DESCRIPTOR)
    sizes = jsoncodec.cache_sizes()
    assert sizes["types"] <= names + 1
    message_types = sum(
        1 for f in FILES for t in f.message_types_by_name.values() for _ in _walk_all(t)
    )
    bound = message_types + len(WELL_KNOWN) + 10  # the rest of google.protobuf's types
    assert max(sizes.values()) <= bound, sizes


def _walk_all(descriptor: Descriptor) -> Iterator[Descriptor]:
    yield descriptor
    for nested in descriptor.nested_types:
        yield from _walk_all(nested)


@pytest.mark.parametrize("depth", [10, 31, 33, 49, 51, 300])
def test_deep_documents_decline_or_read_exactly(depth: int) -> None:
    """Nesting near and past json_format's limit of 100: never a different answer."""
    document: object = 1
    for _ in range(depth):
        document = {"a": document}
    expected = _reference_parse(document, struct_pb2.Struct.DESCRIPTOR)
    fast = _fast_parse(document, struct_pb2.Struct.DESCRIPTOR)
    assert fast == expected or fast[0] == "declined"
    # A level is a Struct and a Value: the fast reader takes 33 levels, json_format 50.
    assert (fast[0] == "ok") == (2 * (depth - 1) <= jsoncodec.MAX_DEPTH)


def test_skew_still_goes_through_jsonwire() -> None:
    """An unknown member is declined by the fast reader and handled by jsonwire's rules."""
    document = {
        "streamId": 1,
        "start": {
            "message": {
                "typed": {
                    "@type": "type.googleapis.com/asap.v1.SendRequest",
                    "envelope": {"futurePayload": {"x": 1}},
                }
            }
        },
    }
    assert _fast_parse(document, bridge_pb2.Frame.DESCRIPTOR)[0] == "declined"
    frame = JsonCodec().decode(json.dumps(document))
    request = agent_service_pb2.SendRequest.FromString(frame.start.message.typed.value)
    assert request.envelope.SerializeToString() == jsonwire.ENVELOPE_DROPPED_MARK


TIME_TEXTS = [
    "1970-01-01T00:00:00Z", "2024-02-29T23:59:59.5Z", "2023-02-29T00:00:00Z", "0001-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z", "2020-01-01T24:00:00Z",
    "2020-01-01T23:60:00Z", "2020-01-01T23:59:60Z", "2020-13-01T00:00:00Z", "2020-00-10T00:00:00Z",
    "2020-01-01T00:00:00.1234567891Z", "2020-01-01T00:00:00.Z", "2020-01-01t00:00:00Z",
    "2020-01-01T00:00:00+01:00", "2020-01-01T00:00:00z", "2020-1-01T00:00:00Z", "", "Z",
    "2020-01-01T00:00:00.000000001Z", "2020-01-01T00:00:00.100Z", "\u0662020-01-01T00:00:00Z",
    "0s", "30s", "-7s", "+5s", "1.5s", "-0.5s", "315576000000s", "315576000001s",
    "-315576000001s", "1.0000000001s", "s", "5", "1e3s", " 5s", "\u0665s",
]  # fmt: skip


@pytest.mark.parametrize("text", TIME_TEXTS)
@pytest.mark.parametrize(
    "descriptor", [timestamp_pb2.Timestamp.DESCRIPTOR, duration_pb2.Duration.DESCRIPTOR]
)
def test_timestamps_and_durations_read_as_protobuf_reads_them(
    text: str, descriptor: Descriptor
) -> None:
    """Every spelling: the same seconds and nanos as protobuf, or declined where it refuses."""
    expected, fast = _reference_parse(text, descriptor), _fast_parse(text, descriptor)
    assert fast == expected or (fast[0] == "declined" and expected[0] == "error"), (text, fast)
    canonical = text.endswith("Z") and "T" in text and "." not in text and "+" not in text
    if expected[0] == "ok" and (canonical or re.fullmatch(r"-?[0-9]+s", text)):
        assert fast[0] == "ok"  # the common forms stay on the fast path


def test_timestamps_of_alternating_days_write_and_read_as_protobuf() -> None:
    """The converter remembers the last day each way: days that alternate, and times within
    one day, still give protobuf's text and protobuf's seconds and nanos."""
    day = 86_400
    seconds = [1_700_000_000, 1_700_000_001, 1_700_000_000 + day, 1_700_000_002, -1, 0, day - 1]
    seconds += [-62135596800, 253402300799, 1_700_000_000 + 3 * day, 1_700_000_000 + 3 * day + 7]
    for index, second in enumerate(seconds):
        stamp = timestamp_pb2.Timestamp(seconds=second, nanos=(index * 123_000_000) % 10**9)
        text = jsoncodec.to_json(stamp)
        assert text == json_format.MessageToJson(stamp).strip('"'), second
        read = timestamp_pb2.Timestamp()
        jsoncodec.parse(text, read)
        assert read == stamp, text
