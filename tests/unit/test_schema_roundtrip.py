"""Schema tests: payload round trips, unknown-field preservation, and the ErrorReason registry.

Every payload kind round-trips through binary and canonical proto3 JSON unchanged; fields and kinds
from a newer schema survive an older reader; the ErrorReason registry agrees with the error classes.

Example envelopes are built from the descriptors, so a payload kind, field or Part kind added to the
schema later is covered without touching this file.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping

import pytest
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    json_format,
    message_factory,
    unknown_fields,
)
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import Message

from asap import errors, validation
from asap.v1 import envelope_pb2, error_pb2, part_pb2


PAYLOAD_ONEOF = envelope_pb2.Envelope.DESCRIPTOR.oneofs_by_name["payload"]
PAYLOAD_FIELDS = list(PAYLOAD_ONEOF.fields)
PAYLOAD_KIND_NAMES = [field.name for field in PAYLOAD_FIELDS]

SAMPLE_STRUCT: dict[str, object] = {
    "text": "hello, wörld",
    "count": 3.0,
    "ratio": 0.25,
    "flag": True,
    "nothing": None,
    "list": [1.0, "two", False, None, {"deep": []}],
    "nested": {"a": {"b": "c"}, "empty": {}},
}
SAMPLE_TIMESTAMP = "2024-05-01T12:34:56.789012345Z"
SAMPLE_BYTES = base64.b64encode(b"\x00\x01binary\xfe\xff").decode("ascii")
WELL_KNOWN_SAMPLES: Mapping[str, object] = {
    "google.protobuf.Struct": SAMPLE_STRUCT,
    "google.protobuf.Timestamp": SAMPLE_TIMESTAMP,
    "google.protobuf.Duration": "1.500s",
}
INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


# --- building examples from the descriptors -----------------------------------------------------


def _is_map(field: FieldDescriptor) -> bool:
    """Return whether the field is a map field."""
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _sample_scalar(field: FieldDescriptor) -> object:
    """Return a non-default JSON value for a singular field."""
    if field.message_type is not None:
        full_name = field.message_type.full_name
        if full_name in WELL_KNOWN_SAMPLES:
            return WELL_KNOWN_SAMPLES[full_name]
        if full_name.startswith("google.protobuf."):
            pytest.fail(f"add a sample value for {full_name} to WELL_KNOWN_SAMPLES")
        return _sample_message(field.message_type)
    if field.enum_type is not None:
        return next(value.name for value in field.enum_type.values if value.number != 0)
    if field.type == FieldDescriptor.TYPE_STRING:
        return f"{field.name} ✓ value"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return SAMPLE_BYTES
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type in {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}:
        return 42.5
    if field.type in INTEGER_TYPES:
        return 7
    pytest.fail(f"no sample for field {field.full_name} of type {field.type}")


def _sample_field(field: FieldDescriptor) -> object:
    """Return a non-default JSON value for any field: singular, repeated or map."""
    if _is_map(field) and field.message_type is not None:
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        is_string_key = key_field.type == FieldDescriptor.TYPE_STRING
        keys = ["name", "topic"] if is_string_key else ["1", "2"]
        return {key: _sample_scalar(value_field) for key in keys}
    if field.is_repeated:
        element = field.message_type
        if element is not None and element.oneofs:
            # One element per member of the element's oneof: for Part, a part of every kind.
            oneof = element.oneofs[0]
            return [_sample_message(element, {oneof.name: member.name}) for member in oneof.fields]
        return [_sample_scalar(field), _sample_scalar(field)]
    return _sample_scalar(field)


def _sample_message(
    descriptor: Descriptor, chosen: Mapping[str, str] | None = None
) -> dict[str, object]:
    """Return canonical JSON (as a dict) setting every field; ``chosen`` picks oneof members."""
    picks = dict(chosen or {})
    sample: dict[str, object] = {}
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and picks.setdefault(oneof.name, oneof.fields[0].name) != field.name:
            continue
        sample[field.json_name] = _sample_field(field)
    return sample


def _example(kind: str) -> envelope_pb2.Envelope:
    """Return an envelope with every field populated and the given payload kind."""
    sample = _sample_message(envelope_pb2.Envelope.DESCRIPTOR, {"payload": kind})
    sample.update(
        id="0f8b6c1e5a8d4c4f9a3e2b1c0d9e8f7a",
        asapVersion=validation.ASAP_VERSION,
        sender="urn:asap:agent:coordinator",
        recipient="urn:asap:agent:research",
        correlationId="9a3e2b1c0d9e8f7a0f8b6c1e5a8d4c4f",
        traceId="4bf92f3577b34da6a3ce929d0e0e4736",
    )
    return json_format.ParseDict(sample, envelope_pb2.Envelope())


def _unpopulated(message: Message, path: str = "") -> list[str]:
    """Return the paths of fields (and Part kinds) the example left unset, recursively."""
    present = {field.name for field, _ in message.ListFields()}
    missing: list[str] = []
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None:
            if message.WhichOneof(oneof.name) is None:
                missing.append(path + oneof.name)
        elif field.name not in present:
            missing.append(path + field.name)
    for field, value in message.ListFields():
        element = field.message_type
        if element is None or _is_map(field) or element.full_name.startswith("google.protobuf."):
            continue
        items: list[Message] = list(value) if field.is_repeated else [value]
        if field.is_repeated and element.oneofs:
            oneof = element.oneofs[0]
            kinds = {item.WhichOneof(oneof.name) for item in items}
            missing.extend(
                f"{path}{field.name}[{member.name}]"
                for member in oneof.fields
                if member.name not in kinds
            )
        for item in items:
            missing.extend(_unpopulated(item, f"{path}{field.name}."))
    return missing


# --- round trips --------------------------------------------------------------------------------


def test_payload_oneof_has_thirteen_kinds() -> None:
    """The Envelope payload oneof has the 13 kinds of schema v1."""
    assert len(PAYLOAD_FIELDS) == 13
    assert set(PAYLOAD_KIND_NAMES) == set(validation.PAYLOAD_TYPES)


@pytest.mark.parametrize("kind", PAYLOAD_KIND_NAMES)
def test_example_is_fully_populated(kind: str) -> None:
    """The example sets every field, nested field and Part kind, so the round trips are thorough."""
    example = _example(kind)
    assert example.WhichOneof("payload") == kind
    assert _unpopulated(example) == []
    assert example.timestamp.nanos == 789_012_345


def test_population_check_reports_gaps() -> None:
    """The completeness check itself notices unset fields and missing Part kinds."""
    example = _example("message_send")
    del example.message_send.parts[-1]
    example.ClearField("trace_id")
    assert _unpopulated(example) == ["trace_id", "message_send.parts[template]"]
    assert "payload" in _unpopulated(envelope_pb2.Envelope())


@pytest.mark.parametrize("kind", PAYLOAD_KIND_NAMES)
def test_binary_round_trip(kind: str) -> None:
    """Binary serialization of every payload kind parses back to an identical message."""
    example = _example(kind)
    parsed = envelope_pb2.Envelope.FromString(example.SerializeToString())
    assert parsed == example
    assert parsed.SerializeToString(deterministic=True) == example.SerializeToString(
        deterministic=True
    )


@pytest.mark.parametrize("kind", PAYLOAD_KIND_NAMES)
def test_canonical_json_round_trip(kind: str) -> None:
    """Canonical proto3 JSON of every payload kind parses back to an identical message."""
    example = _example(kind)
    text = json_format.MessageToJson(example)
    parsed = json_format.Parse(text, envelope_pb2.Envelope())
    assert parsed == example
    document = json.loads(text)
    assert json.loads(json_format.MessageToJson(parsed)) == document
    payload_json_name = envelope_pb2.Envelope.DESCRIPTOR.fields_by_name[kind].json_name
    assert set(document) >= {payload_json_name, "correlationId", "requiresAck", "timestamp"}
    assert document["timestamp"] == "2024-05-01T12:34:56.789012345Z"


# --- unknown fields from a newer schema ---------------------------------------------------------

_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_UINT32 = descriptor_pb2.FieldDescriptorProto.TYPE_UINT32
_INT32 = descriptor_pb2.FieldDescriptorProto.TYPE_INT32
_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL


def _files_in_dependency_order(root: FileDescriptor) -> list[FileDescriptor]:
    """Return ``root`` and its transitive imports, every file after the files it imports."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            visit(dependency)
        ordered.append(file)

    visit(root)
    return ordered


def _message(file: descriptor_pb2.FileDescriptorProto, name: str) -> descriptor_pb2.DescriptorProto:
    """Return the top-level message ``name`` of a file descriptor proto."""
    return next(message for message in file.message_type if message.name == name)


def _add_oneof_member(
    message: descriptor_pb2.DescriptorProto, oneof: str, name: str, number: int, type_name: str
) -> None:
    """Add a message-typed field to one of ``message``'s oneofs."""
    index = [decl.name for decl in message.oneof_decl].index(oneof)
    message.field.add(
        name=name,
        number=number,
        label=_OPTIONAL,
        type=_MESSAGE,
        type_name=type_name,
        oneof_index=index,
    )


def _evolve_envelope_file(file: descriptor_pb2.FileDescriptorProto) -> None:
    """Add Envelope.priority (field 10) and a new payload kind Handoff (field 33)."""
    handoff = file.message_type.add(name="Handoff")
    handoff.field.add(name="target", number=1, label=_OPTIONAL, type=_STRING)
    handoff.field.add(name="note", number=2, label=_OPTIONAL, type=_STRING)
    envelope = _message(file, "Envelope")
    envelope.field.add(name="priority", number=10, label=_OPTIONAL, type=_INT32)
    _add_oneof_member(envelope, "payload", "handoff", 33, ".asap.v1.Handoff")


def _evolve_part_file(file: descriptor_pb2.FileDescriptorProto) -> None:
    """Add a new Part kind VideoPart (field 6)."""
    video = file.message_type.add(name="VideoPart")
    video.field.add(name="uri", number=1, label=_OPTIONAL, type=_STRING)
    video.field.add(name="seconds", number=2, label=_OPTIONAL, type=_UINT32)
    _add_oneof_member(_message(file, "Part"), "kind", "video", 6, ".asap.v1.VideoPart")


@pytest.fixture(scope="module")
def newer_envelope() -> type[Message]:
    """The Envelope class of a simulated newer schema, built in a private descriptor pool."""
    evolutions: dict[str, Callable[[descriptor_pb2.FileDescriptorProto], None]] = {
        envelope_pb2.DESCRIPTOR.name: _evolve_envelope_file,
        part_pb2.DESCRIPTOR.name: _evolve_part_file,
    }
    pool = descriptor_pool.DescriptorPool()
    for file in _files_in_dependency_order(envelope_pb2.DESCRIPTOR):
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        evolve = evolutions.get(file.name)
        if evolve is not None:
            evolve(proto)
        pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("asap.v1.Envelope"))


def _newer(cls: type[Message], document: dict[str, object]) -> Message:
    """Build a newer-schema envelope from its canonical JSON form."""
    base: dict[str, object] = {
        "id": "e-1",
        "sender": "urn:asap:agent:future",
        "recipient": "urn:asap:agent:past",
        "timestamp": SAMPLE_TIMESTAMP,
    }
    return json_format.ParseDict(base | document, cls())


def _through_older_reader(newer: Message) -> tuple[envelope_pb2.Envelope, Message]:
    """Parse a newer envelope with our Envelope, re-serialize, parse that with the newer type."""
    older = envelope_pb2.Envelope.FromString(newer.SerializeToString())
    again = type(newer).FromString(older.SerializeToString())
    return older, again


def test_unknown_envelope_field_survives_older_reader(newer_envelope: type[Message]) -> None:
    """A new Envelope field is kept as an unknown field and re-serialized intact."""
    newer = _newer(newer_envelope, {"priority": 7, "taskRequest": {"skillId": "summarize"}})
    older, again = _through_older_reader(newer)
    assert validation.payload_kind(older) == "task_request"
    assert older.task_request.skill_id == "summarize"
    assert len(unknown_fields.UnknownFieldSet(older)) == 1
    assert again == newer
    assert json_format.MessageToDict(again)["priority"] == 7


def test_unknown_payload_kind_survives_older_reader(newer_envelope: type[Message]) -> None:
    """A new payload kind reads as no known payload, is refused as UNKNOWN_PAYLOAD (not
    MISSING_PAYLOAD), yet is re-serialized intact."""
    newer = _newer(newer_envelope, {"handoff": {"target": "urn:asap:agent:other", "note": "hi"}})
    older, again = _through_older_reader(newer)
    assert older.WhichOneof("payload") is None
    with pytest.raises(errors.UnknownPayload) as caught:
        validation.payload_kind(older)
    assert caught.value.code == errors.Code.UNIMPLEMENTED
    assert caught.value.reason == "UNKNOWN_PAYLOAD"
    handoff = newer_envelope.DESCRIPTOR.fields_by_name["handoff"].number
    assert f"(field {handoff})" in caught.value.message
    assert again == newer
    assert again.WhichOneof("payload") == "handoff"
    assert json_format.MessageToDict(again)["handoff"] == {
        "target": "urn:asap:agent:other",
        "note": "hi",
    }


def test_unknown_part_kind_survives_older_reader(newer_envelope: type[Message]) -> None:
    """A Part of a new kind is kept in place among known parts and re-serialized intact."""
    parts = [{"text": {"content": "see video"}}, {"video": {"uri": "s3://v.mp4", "seconds": 90}}]
    newer = _newer(newer_envelope, {"messageSend": {"conversationId": "c-1", "parts": parts}})
    older, again = _through_older_reader(newer)
    kinds = [part.WhichOneof("kind") for part in older.message_send.parts]
    assert kinds == ["text", None]
    assert again == newer
    assert json_format.MessageToDict(again)["messageSend"]["parts"] == parts


# --- the ErrorReason registry -------------------------------------------------------------------


def test_every_reason_has_a_grpc_code() -> None:
    """Every ErrorReason value except UNSPECIFIED carries a grpc_code option with a valid code."""
    for value in error_pb2.ErrorReason.DESCRIPTOR.values:
        options = value.GetOptions()
        if value.number == 0:
            assert not options.HasExtension(error_pb2.grpc_code)
            continue
        assert options.HasExtension(error_pb2.grpc_code), value.name
        code = options.Extensions[error_pb2.grpc_code]
        assert errors.Code.CANCELLED <= code <= errors.Code.UNAUTHENTICATED, value.name
        if value.number <= errors.Code.UNAUTHENTICATED:
            assert code == value.number, f"generic reason {value.name} must carry its own code"


def test_reason_codes_mirror_the_descriptor() -> None:
    """REASON_CODES holds exactly the registry's reasons (prefix removed) and their codes."""
    expected = {
        value.name.removeprefix("ERROR_REASON_"): value.GetOptions().Extensions[error_pb2.grpc_code]
        for value in error_pb2.ErrorReason.DESCRIPTOR.values
        if value.number != 0
    }
    assert dict(errors.REASON_CODES) == expected


@pytest.mark.parametrize("cls", errors.ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_error_class_reasons_are_registered_with_its_code(cls: type[errors.AsapError]) -> None:
    """Each AsapError class's default reason and extra reasons are registered with its code."""
    for reason in (cls.default_reason, *cls.reasons):
        assert reason in errors.REASON_CODES, reason
        assert errors.REASON_CODES[reason] == cls.code, reason


@pytest.mark.parametrize("reason", sorted(errors.REASON_CODES))
def test_every_reason_decodes_to_a_class_that_claims_it(reason: str) -> None:
    """A status with any registered reason decodes to a class whose reasons include it."""
    cls = errors.error_class_for(errors.REASON_CODES[reason], reason)
    assert reason in {cls.default_reason, *cls.reasons}
