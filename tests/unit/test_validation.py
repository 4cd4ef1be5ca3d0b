"""Unit tests for asap.validation: envelope rules and boundaries, defaults, payload helpers."""

from __future__ import annotations

import dataclasses
import os
import string
from collections.abc import Iterator

import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from hypothesis import example, given
from hypothesis import strategies as st

from asap import errors, schema, validation
from asap.v1 import envelope_pb2, payload_pb2


NOW = 1_700_000_000.0
SENDER = "urn:asap:agent:coordinator"
RECIPIENT = "urn:asap:agent:research"
PREFIX = validation.AGENT_URN_PREFIX
NAME_CHARS = string.ascii_letters + string.digits + "-._:"


def _stamp(seconds_from_now: float = 0.0, *, nanos: int = 0) -> timestamp_pb2.Timestamp:
    """Return a timestamp ``seconds_from_now`` (whole seconds) after NOW, plus ``nanos``."""
    return timestamp_pb2.Timestamp(seconds=int(NOW + seconds_from_now), nanos=nanos)


def _envelope(
    kind: validation.PayloadKind = "task_request", /, **overrides: str
) -> envelope_pb2.Envelope:
    """Return an envelope of the given kind that passes every rule at NOW, with string overrides."""
    envelope = validation.wrap(
        validation.PAYLOAD_TYPES[kind](),
        id="0f8b6c1e5a8d4c4f9a3e2b1c0d9e8f7a",
        asap_version=validation.ASAP_VERSION,
        timestamp=_stamp(),
        sender=SENDER,
        recipient=RECIPIENT,
        correlation_id="request-1",
    )
    for field, value in overrides.items():
        setattr(envelope, field, value)
    return envelope


def _reject(
    envelope: envelope_pb2.Envelope,
    reason: str,
    policy: validation.ValidationPolicy = validation.DEFAULT_POLICY,
    *,
    now: float = NOW,
) -> errors.InvalidEnvelope:
    """Validate, expecting InvalidEnvelope with ``reason``; return the error."""
    with pytest.raises(errors.InvalidEnvelope) as caught:
        validation.validate(envelope, policy, now=now)
    assert caught.value.reason == reason
    return caught.value


def _violated_fields(error: errors.AsapError) -> list[str]:
    """Return the fields named by the error's BadRequest details."""
    return [
        violation.field
        for detail in errors.details_of(error, error_details_pb2.BadRequest)
        for violation in detail.field_violations
    ]


def _oracle_is_agent_urn(value: str) -> bool:
    """Decide URN validity independently of the module's regex."""
    if len(value) > validation.MAX_URN_LENGTH or not value.startswith(PREFIX):
        return False
    name = value[len(PREFIX) :]
    return (
        bool(name)
        and name[0] in string.ascii_letters + string.digits
        and all(char in NAME_CHARS for char in name)
    )


# --- the whole rule set -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(validation.PAYLOAD_TYPES))
def test_valid_envelope_of_every_kind_passes(kind: validation.PayloadKind) -> None:
    """A complete envelope of any payload kind passes validation."""
    validation.validate(_envelope(kind), validation.DEFAULT_POLICY, now=NOW)


@pytest.mark.parametrize("kind", sorted(validation.PAYLOAD_TYPES))
def test_validated_head_holds_the_fields_it_read(kind: validation.PayloadKind) -> None:
    """What a delivery reuses instead of reading the envelope again: exactly its fields."""
    envelope = _envelope(kind)
    head = validation.validated_head(envelope, now=NOW)
    assert (head.id, head.sender, head.recipient, head.kind) == (
        envelope.id,
        envelope.sender,
        envelope.recipient,
        kind,
    )
    assert validation.payload_of(envelope, head.kind) is not None
    assert type(validation.payload_of(envelope, head.kind)) is validation.PAYLOAD_TYPES[kind]


def test_validated_head_refuses_what_validate_refuses() -> None:
    """One rule set: an envelope validate refuses, validated_head refuses with the same error."""
    envelope = _envelope()
    envelope.sender = "not a urn"
    with pytest.raises(errors.InvalidEnvelope) as by_validate:
        validation.validate(envelope, now=NOW)
    with pytest.raises(errors.InvalidEnvelope) as by_head:
        validation.validated_head(envelope, now=NOW)
    assert by_head.value.reason == by_validate.value.reason == "INVALID_URN"
    with pytest.raises(errors.InvalidEnvelope):
        validation.validated_head(_envelope(), now=NOW + 301)  # the timestamp rule too
    validation.validated_head(_envelope(), now=NOW + 301, timestamp=False)


def test_validate_uses_default_policy() -> None:
    """Validate works without an explicit policy and applies the default bounds."""
    validation.validate(_envelope(), now=NOW)
    with pytest.raises(errors.InvalidEnvelope):
        validation.validate(_envelope(), now=NOW + 301)


def test_validate_does_not_modify_envelope() -> None:
    """Validation leaves the envelope byte-for-byte unchanged."""
    envelope = _envelope()
    before = envelope.SerializeToString(deterministic=True)
    validation.validate(envelope, now=NOW)
    assert envelope.SerializeToString(deterministic=True) == before


def test_first_broken_rule_is_reported() -> None:
    """When several rules break, the error names the first in the documented order."""
    envelope = envelope_pb2.Envelope(id="x" * 500, sender="bad", recipient="bad")
    _reject(envelope, "MISSING_PAYLOAD")
    envelope.task_request.skill_id = "s"
    _reject(envelope, "INVALID_ID")
    envelope.id = "ok"
    error = _reject(envelope, "INVALID_URN")
    assert _violated_fields(error) == ["sender"]
    envelope.sender = SENDER
    error = _reject(envelope, "INVALID_URN")
    assert _violated_fields(error) == ["recipient"]
    envelope.recipient = RECIPIENT
    _reject(envelope, "STALE_TIMESTAMP")


def test_error_is_invalid_argument_with_bad_request_detail() -> None:
    """Errors are INVALID_ARGUMENT InvalidEnvelope carrying a BadRequest naming the field."""
    error = _reject(_envelope(recipient="nope"), "INVALID_URN")
    assert isinstance(error, errors.InvalidArgument)
    assert error.code is errors.Code.INVALID_ARGUMENT
    [detail] = errors.details_of(error, error_details_pb2.BadRequest)
    [violation] = detail.field_violations
    assert violation.field == "recipient"
    assert violation.reason == "INVALID_URN"
    assert violation.description == error.message
    assert "'nope'" in error.message


def test_error_survives_the_wire_status() -> None:
    """An InvalidEnvelope decodes from its wire status with the same reason and BadRequest."""
    error = _reject(_envelope(sender=""), "INVALID_URN")
    decoded = errors.from_status(errors.to_status(error))
    assert type(decoded) is errors.InvalidEnvelope
    assert decoded.reason == "INVALID_URN"
    assert _violated_fields(decoded) == ["sender"]


# --- payload ------------------------------------------------------------------------------------


def test_missing_payload_fails() -> None:
    """An envelope without a payload is refused with MISSING_PAYLOAD."""
    envelope = _envelope()
    envelope.ClearField("payload")
    error = _reject(envelope, "MISSING_PAYLOAD")
    assert _violated_fields(error) == ["payload"]


def test_empty_payload_message_counts_as_set() -> None:
    """A payload set to an empty message is present (presence, not content, is checked)."""
    envelope = _envelope()
    envelope.state_query.SetInParent()
    validation.validate(envelope, now=NOW)


# --- id -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 36, validation.MAX_ID_LENGTH])
def test_id_up_to_max_length_passes(length: int) -> None:
    """Ids of 1 to 128 characters are accepted."""
    validation.validate(_envelope(id="a" * length), now=NOW)


def test_id_length_counts_characters_not_bytes() -> None:
    """128 non-ASCII characters (more than 128 UTF-8 bytes) are still accepted."""
    validation.validate(_envelope(id="é" * validation.MAX_ID_LENGTH), now=NOW)


def test_id_over_max_length_fails() -> None:
    """A 129-character id is refused with INVALID_ID."""
    error = _reject(_envelope(id="a" * (validation.MAX_ID_LENGTH + 1)), "INVALID_ID")
    assert _violated_fields(error) == ["id"]
    assert "129" in error.message


def test_empty_id_fails() -> None:
    """An empty id (the idempotency key) is refused with INVALID_ID."""
    _reject(_envelope(id=""), "INVALID_ID")


# --- sender and recipient URNs ------------------------------------------------------------------


VALID_URNS = [
    "urn:asap:agent:a",
    "urn:asap:agent:research",
    "urn:asap:agent:Research-2.eu_west:pool:7",
    "urn:asap:agent:9lives",
    "urn:asap:agent:a:",
    "urn:asap:agent:a-",
]

INVALID_URNS = [
    "",
    "research",
    "urn:asap:agent:",
    "urn:asap:agent:-leading-dash",
    "urn:asap:agent::colon-first",
    "urn:asap:agent:.dot-first",
    "urn:asap:agent:has space",
    "urn:asap:agent:slash/no",
    "urn:asap:agent:tab\t",
    "urn:asap:agent:newline\n",
    "urn:asap:agent:ünïcode",
    "urn:asap:agent:٣",
    "URN:ASAP:AGENT:upper-prefix",
    "urn:asap:agents:plural",
    "urn:asap:tool:not-an-agent",
    " urn:asap:agent:leading-space",
]


@pytest.mark.parametrize("urn", VALID_URNS)
@pytest.mark.parametrize("field", ["sender", "recipient"])
def test_valid_urn_passes(field: str, urn: str) -> None:
    """Well-formed agent URNs are accepted as sender and recipient."""
    assert validation.is_agent_urn(urn)
    validation.validate(_envelope(**{field: urn}), now=NOW)


@pytest.mark.parametrize("urn", INVALID_URNS)
@pytest.mark.parametrize("field", ["sender", "recipient"])
def test_invalid_urn_fails(field: str, urn: str) -> None:
    """Malformed or empty sender/recipient values are refused with INVALID_URN naming the field."""
    assert not validation.is_agent_urn(urn)
    error = _reject(_envelope(**{field: urn}), "INVALID_URN")
    assert _violated_fields(error) == [field]


@pytest.mark.parametrize("field", ["sender", "recipient"])
def test_urn_of_exactly_max_length_passes(field: str) -> None:
    """A URN of exactly 256 characters is accepted."""
    urn = PREFIX + "a" * (validation.MAX_URN_LENGTH - len(PREFIX))
    assert len(urn) == validation.MAX_URN_LENGTH
    validation.validate(_envelope(**{field: urn}), now=NOW)


@pytest.mark.parametrize("field", ["sender", "recipient"])
def test_urn_over_max_length_fails(field: str) -> None:
    """A URN of 257 characters is refused with INVALID_URN even though its shape is right."""
    urn = PREFIX + "a" * (validation.MAX_URN_LENGTH + 1 - len(PREFIX))
    assert len(urn) == validation.MAX_URN_LENGTH + 1
    assert validation.AGENT_URN_PATTERN.fullmatch(urn)
    error = _reject(_envelope(**{field: urn}), "INVALID_URN")
    assert "257" in error.message


def test_remembered_urns_stay_bounded_and_never_include_a_bad_one() -> None:
    """A peer sending a new valid URN every time only makes the memory start over; a refused
    URN is refused again every time (it is never remembered)."""
    for number in range(3 * validation.MAX_REMEMBERED_URNS):
        validation.validate(_envelope(sender=f"{PREFIX}caller-{number}"), now=NOW)
        assert len(validation._VALID_URNS) <= validation.MAX_REMEMBERED_URNS
    for _ in range(2):
        for urn in INVALID_URNS:
            error = _reject(_envelope(sender=urn), "INVALID_URN")
            assert _violated_fields(error) == ["sender"]
            assert urn not in validation._VALID_URNS
    long_urn = PREFIX + "a" * (validation.MAX_URN_LENGTH + 1 - len(PREFIX))
    for _ in range(2):
        _reject(_envelope(recipient=long_urn), "INVALID_URN")


def test_huge_invalid_urn_is_not_echoed_in_full() -> None:
    """The error message quotes at most a short preview of a bad value."""
    urn = "x" * 200
    error = _reject(_envelope(sender=urn), "INVALID_URN")
    assert urn not in error.message
    assert len(error.message) < 250


@given(name=st.text(alphabet=NAME_CHARS, min_size=1, max_size=300))
@example(name="a" * (validation.MAX_URN_LENGTH - len(PREFIX)))
@example(name="a" * (validation.MAX_URN_LENGTH - len(PREFIX) + 1))
def test_urn_rule_matches_oracle_for_allowed_alphabet(name: str) -> None:
    """For names over the allowed alphabet, validate accepts exactly what the oracle accepts."""
    urn = PREFIX + name
    expected = _oracle_is_agent_urn(urn)
    assert validation.is_agent_urn(urn) is expected
    envelope = _envelope(sender=urn)
    if expected:
        validation.validate(envelope, now=NOW)
    else:
        _reject(envelope, "INVALID_URN")


@given(
    prefix=st.sampled_from([PREFIX, "", "urn:asap:", "urn:asap:agent", "URN:asap:agent:"]),
    name=st.text(max_size=40),
)
def test_urn_rule_matches_oracle_for_arbitrary_text(prefix: str, name: str) -> None:
    """For arbitrary text (any Unicode), is_agent_urn and validate agree with the oracle."""
    urn = prefix + name
    expected = _oracle_is_agent_urn(urn)
    assert validation.is_agent_urn(urn) is expected
    envelope = _envelope(recipient=urn)
    if expected:
        validation.validate(envelope, now=NOW)
    else:
        _reject(envelope, "INVALID_URN")


# --- correlation id -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(validation.CORRELATED_KINDS))
def test_answer_without_correlation_id_fails(kind: validation.PayloadKind) -> None:
    """TaskResponse, McpToolResult and McpResourceData need a correlation_id."""
    error = _reject(_envelope(kind, correlation_id=""), "MISSING_CORRELATION_ID")
    assert _violated_fields(error) == ["correlation_id"]
    assert kind in error.message


@pytest.mark.parametrize("kind", sorted(validation.CORRELATED_KINDS))
def test_answer_with_correlation_id_passes(kind: validation.PayloadKind) -> None:
    """An answer that names the envelope it answers is accepted."""
    validation.validate(_envelope(kind, correlation_id="x"), now=NOW)


@pytest.mark.parametrize(
    "kind", sorted(set(validation.PAYLOAD_TYPES) - validation.CORRELATED_KINDS)
)
def test_other_kinds_need_no_correlation_id(kind: validation.PayloadKind) -> None:
    """Payload kinds that are not answers may omit correlation_id."""
    validation.validate(_envelope(kind, correlation_id=""), now=NOW)


def test_correlated_kinds_are_the_three_answers() -> None:
    """Exactly the three answer payloads require a correlation id."""
    expected = {"task_response", "mcp_tool_result", "mcp_resource_data"}
    assert expected == validation.CORRELATED_KINDS


# --- timestamp window ---------------------------------------------------------------------------


def _at(seconds_from_now: float, *, nanos: int = 0) -> envelope_pb2.Envelope:
    """Return a valid envelope stamped ``seconds_from_now`` after NOW."""
    envelope = _envelope()
    envelope.timestamp.CopyFrom(_stamp(seconds_from_now, nanos=nanos))
    return envelope


@pytest.mark.parametrize("offset", [-300, -299, -1, 0, 1, 29, 30])
def test_timestamp_inside_window_passes(offset: int) -> None:
    """Timestamps from exactly max age in the past to exactly the skew in the future pass."""
    validation.validate(_at(offset), now=NOW)


def test_timestamp_just_past_max_age_fails() -> None:
    """A timestamp 300.001 s old is refused with STALE_TIMESTAMP."""
    error = _reject(_at(-301, nanos=999_000_000), "STALE_TIMESTAMP")
    assert _violated_fields(error) == ["timestamp"]


def test_timestamp_far_in_past_fails() -> None:
    """A timestamp an hour old is refused with STALE_TIMESTAMP."""
    _reject(_at(-3600), "STALE_TIMESTAMP")


def test_timestamp_just_past_skew_fails() -> None:
    """A timestamp 30.001 s ahead is refused with FUTURE_TIMESTAMP."""
    error = _reject(_at(30, nanos=1_000_000), "FUTURE_TIMESTAMP")
    assert _violated_fields(error) == ["timestamp"]


def test_timestamp_sub_second_precision_is_used() -> None:
    """Nanoseconds count: 300 s minus 1 ms old passes, 30 s plus 1 ms ahead fails."""
    validation.validate(_at(-300, nanos=1_000_000), now=NOW)
    _reject(_at(30, nanos=1_000_000), "FUTURE_TIMESTAMP")


def test_unset_timestamp_is_stale() -> None:
    """An envelope without a timestamp is refused with STALE_TIMESTAMP saying it is not set."""
    envelope = _envelope()
    envelope.ClearField("timestamp")
    error = _reject(envelope, "STALE_TIMESTAMP")
    assert "not set" in error.message


def test_custom_policy_bounds_apply() -> None:
    """A stricter policy moves both edges of the window."""
    policy = validation.ValidationPolicy(max_age=10, future_skew=2)
    validation.validate(_at(-10), policy, now=NOW)
    validation.validate(_at(2), policy, now=NOW)
    _reject(_at(-11), "STALE_TIMESTAMP", policy)
    _reject(_at(3), "FUTURE_TIMESTAMP", policy)
    validation.validate(_at(-11), now=NOW)


def test_zero_width_policy_accepts_only_now() -> None:
    """With max_age and future_skew 0 only a timestamp equal to now passes."""
    policy = validation.ValidationPolicy(max_age=0, future_skew=0)
    validation.validate(_at(0), policy, now=NOW)
    _reject(_at(-1), "STALE_TIMESTAMP", policy)
    _reject(_at(1), "FUTURE_TIMESTAMP", policy)


def test_default_policy_values() -> None:
    """The default policy allows 300 s of age and 30 s of future skew."""
    assert validation.ValidationPolicy() == validation.DEFAULT_POLICY
    assert validation.DEFAULT_POLICY.max_age == 300
    assert validation.DEFAULT_POLICY.future_skew == 30


def test_policy_is_frozen() -> None:
    """ValidationPolicy cannot be changed after construction."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        validation.DEFAULT_POLICY.max_age = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "bounds",
    [
        {"max_age": -1.0},
        {"future_skew": -0.5},
        {"max_age": float("nan")},
        {"future_skew": float("inf")},
    ],
)
def test_policy_refuses_bad_bounds(bounds: dict[str, float]) -> None:
    """Negative, NaN or infinite bounds are refused at construction."""
    with pytest.raises(ValueError, match="ValidationPolicy"):
        validation.ValidationPolicy(**bounds)


# --- fill_defaults ------------------------------------------------------------------------------


def _ids(*values: str) -> Iterator[str]:
    """Return an iterator of ids for a new_id stub."""
    return iter(values)


def test_fill_defaults_fills_empty_fields() -> None:
    """Empty id, unset timestamp and empty asap_version are filled from the injected sources."""
    envelope = validation.wrap(payload_pb2.TaskCancel(task_id="t"))
    ids = _ids("id-1")
    validation.fill_defaults(envelope, now=NOW + 0.25, new_id=lambda: next(ids))
    assert envelope.id == "id-1"
    assert envelope.timestamp == timestamp_pb2.Timestamp(seconds=int(NOW), nanos=250_000_000)
    assert envelope.asap_version == validation.ASAP_VERSION == schema.protocol_version()


@pytest.mark.parametrize(
    ("now", "seconds", "nanos"),
    [(-1.25, -2, 750_000_000), (-2.0, -2, 0), (0.0, 0, 0), (7.999_999_999_9, 7, 999_999_999)],
)
def test_fill_defaults_floors_the_seconds(now: float, seconds: int, nanos: int) -> None:
    """Timestamp's rule: seconds rounded down, also before 1970; nanos in [0, 1e9)."""
    envelope = validation.wrap(payload_pb2.TaskCancel(task_id="t"))
    validation.fill_defaults(envelope, now=now)
    assert len(envelope.id) == 32  # the default id source
    assert (envelope.timestamp.seconds, envelope.timestamp.nanos) == (seconds, nanos)


def test_fill_defaults_keeps_set_fields() -> None:
    """Fields already set are kept and new_id is not called."""
    stamp = timestamp_pb2.Timestamp(seconds=5, nanos=6)
    envelope = validation.wrap(
        payload_pb2.TaskCancel(), id="mine", timestamp=stamp, asap_version="1.7"
    )

    def fail() -> str:
        text = "new_id must not be called"
        raise AssertionError(text)

    validation.fill_defaults(envelope, now=NOW, new_id=fail)
    assert (envelope.id, envelope.timestamp, envelope.asap_version) == ("mine", stamp, "1.7")


def test_fill_defaults_keeps_epoch_timestamp_that_is_set() -> None:
    """A timestamp explicitly set to the epoch is present and left alone."""
    envelope = validation.wrap(payload_pb2.TaskCancel(), timestamp=timestamp_pb2.Timestamp())
    validation.fill_defaults(envelope, now=NOW)
    assert envelope.timestamp.seconds == 0


def test_fill_defaults_is_idempotent() -> None:
    """Filling twice (as before a retransmission) keeps the first id and timestamp."""
    envelope = validation.wrap(payload_pb2.TaskCancel())
    ids = _ids("first", "second")
    validation.fill_defaults(envelope, now=NOW, new_id=lambda: next(ids))
    once = envelope.SerializeToString(deterministic=True)
    validation.fill_defaults(envelope, now=NOW + 60, new_id=lambda: next(ids))
    assert envelope.SerializeToString(deterministic=True) == once
    assert envelope.id == "first"


def test_fill_defaults_rounds_nanos_into_range() -> None:
    """A time a hair below a whole second never produces nanos of 1e9."""
    envelope = validation.wrap(payload_pb2.TaskCancel())
    validation.fill_defaults(envelope, now=5.9999999999)
    assert envelope.timestamp.seconds == 5
    assert 0 <= envelope.timestamp.nanos <= 999_999_999


def test_default_ids_are_unique_hex() -> None:
    """The default id generator gives distinct 32-digit lowercase hex ids within MAX_ID_LENGTH."""
    count = 3 * validation._IDS_PER_READ + 7  # across several reads of the random pool
    ids = {validation.new_envelope_id() for _ in range(count)}
    assert len(ids) == count
    for value in ids:
        assert len(value) == 32
        assert set(value) <= set(string.hexdigits.lower())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    """Ids come from a pool of random bits; a child forked mid-pool reads fresh bits of its own."""
    validation.new_envelope_id()  # the pool now holds unread ids
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, validation.new_envelope_id().encode())
        os._exit(0)
    os.close(write)
    try:
        child = os.read(read, 64).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert len(child) == 32
    assert child != validation.new_envelope_id()


def test_filled_envelope_validates() -> None:
    """An envelope completed by fill_defaults at the same clock passes validation."""
    envelope = validation.wrap(
        payload_pb2.TaskRequest(skill_id="s"), sender=SENDER, recipient=RECIPIENT
    )
    validation.fill_defaults(envelope, now=NOW)
    validation.validate(envelope, now=NOW)


# --- payload helpers ----------------------------------------------------------------------------


def test_payload_tables_match_the_descriptor() -> None:
    """PAYLOAD_KINDS and PAYLOAD_TYPES list exactly the Envelope.payload oneof, with its types."""
    oneof = envelope_pb2.Envelope.DESCRIPTOR.oneofs_by_name["payload"]
    from_descriptor = {field.name: field.message_type for field in oneof.fields}
    assert {kind: cls.DESCRIPTOR for kind, cls in validation.PAYLOAD_TYPES.items()} == (
        from_descriptor
    )
    assert {cls: kind for kind, cls in validation.PAYLOAD_TYPES.items()} == dict(
        validation.PAYLOAD_KINDS
    )


@pytest.mark.parametrize("kind", sorted(validation.PAYLOAD_TYPES))
def test_wrap_places_each_payload_in_its_field(kind: validation.PayloadKind) -> None:
    """wrap puts every payload type in its oneof field and payload_kind names it."""
    payload = validation.PAYLOAD_TYPES[kind]()
    envelope = validation.wrap(payload)
    assert validation.payload_kind(envelope) == kind
    assert envelope.HasField(kind)


def test_wrap_copies_payload_and_sets_fields() -> None:
    """wrap copies the payload (later edits do not leak in) and sets the given envelope fields."""
    payload = payload_pb2.TaskRequest(skill_id="summarize")
    payload.input.update({"text": "hello"})
    extensions = struct_pb2.Struct()
    extensions.update({"x": 1})
    envelope = validation.wrap(
        payload,
        id="e1",
        sender=SENDER,
        recipient=RECIPIENT,
        correlation_id="c",
        trace_id="t",
        requires_ack=True,
        timestamp=_stamp(),
        extensions=extensions,
    )
    payload.skill_id = "changed"
    assert envelope.task_request.skill_id == "summarize"
    assert envelope.task_request.input["text"] == "hello"
    assert (envelope.id, envelope.sender, envelope.recipient) == ("e1", SENDER, RECIPIENT)
    assert (envelope.correlation_id, envelope.trace_id, envelope.requires_ack) == ("c", "t", True)
    assert envelope.timestamp == _stamp()
    assert envelope.extensions == extensions


def test_wrap_without_fields_leaves_defaults_empty() -> None:
    """wrap neither fills defaults nor validates."""
    envelope = validation.wrap(payload_pb2.MessageAck())
    assert envelope.id == ""
    assert not envelope.HasField("timestamp")
    assert envelope.asap_version == ""


def test_wrap_refuses_non_payload_message() -> None:
    """wrap raises TypeError for a message that is not a payload type."""
    with pytest.raises(TypeError, match="Envelope is not an envelope payload type"):
        validation.wrap(envelope_pb2.Envelope())  # type: ignore[arg-type]


def test_payload_kind_of_empty_envelope_fails() -> None:
    """payload_kind raises MISSING_PAYLOAD when no payload is set."""
    with pytest.raises(errors.InvalidEnvelope) as caught:
        validation.payload_kind(envelope_pb2.Envelope())
    assert caught.value.reason == "MISSING_PAYLOAD"


@pytest.mark.parametrize("number", [33, 99])
def test_payload_kind_of_unknown_payload_field_is_unknown_payload(number: int) -> None:
    """An unknown field in the payload range (a newer kind) is UNKNOWN_PAYLOAD, not MISSING."""
    envelope = envelope_pb2.Envelope(id="e-1")
    tag = bytes([((number << 3) | 2) & 0x7F | 0x80, (number << 3) >> 7])
    envelope.MergeFromString(tag + b"\x00")
    with pytest.raises(errors.UnknownPayload) as caught:
        validation.payload_kind(envelope)
    assert caught.value.code == errors.Code.UNIMPLEMENTED
    assert caught.value.reason == "UNKNOWN_PAYLOAD"
    assert caught.value.metadata == {"schema_version": schema.schema_version()}
    assert (f"(field {number})" in caught.value.message) == (number != 99)


def test_payload_kind_ignores_unknown_fields_outside_the_payload_range() -> None:
    """An unknown non-payload field (number 10 or 100) leaves a missing payload missing."""
    envelope = envelope_pb2.Envelope(id="e-1")
    envelope.MergeFromString(b"\x52\x00" + b"\xa2\x06\x00")  # fields 10 and 100, empty
    with pytest.raises(errors.InvalidEnvelope) as caught:
        validation.payload_kind(envelope)
    assert caught.value.reason == "MISSING_PAYLOAD"


@pytest.mark.parametrize("version", ["", "1.0", "1.1", "1.99", "1.2.3"])
def test_supported_major_with_any_minor_is_accepted(version: str) -> None:
    """asap_version 1.x (or none) passes: minors only add to the schema."""
    envelope = _envelope()
    envelope.asap_version = version
    validation.validate(envelope, now=NOW)


@pytest.mark.parametrize("version", ["2.0", "0.9", "10.1", "v1", "1", "1.x", "1.0-beta"])
def test_other_major_or_garbage_version_is_unsupported_version(version: str) -> None:
    """Another major, or no MAJOR.MINOR at all, is UNIMPLEMENTED/UNSUPPORTED_VERSION, first."""
    envelope = envelope_pb2.Envelope(asap_version=version)  # no payload either: version wins
    with pytest.raises(errors.UnsupportedVersion) as caught:
        validation.validate(envelope, now=NOW)
    assert caught.value.code == errors.Code.UNIMPLEMENTED
    assert caught.value.reason == "UNSUPPORTED_VERSION"
    assert caught.value.metadata == {"asap_version": version, "supported": "1"}


@pytest.mark.parametrize("kind", sorted(validation.PAYLOAD_TYPES))
def test_payload_of_returns_the_set_message(kind: validation.PayloadKind) -> None:
    """payload_of returns the payload message itself, of the type PAYLOAD_TYPES names."""
    envelope = _envelope(kind)
    payload = validation.payload_of(envelope)
    assert type(payload) is validation.PAYLOAD_TYPES[kind]
    assert validation.PAYLOAD_KINDS[type(payload)] == kind


def test_payload_of_is_not_a_copy() -> None:
    """Changes made through payload_of's result show in the envelope."""
    envelope = validation.wrap(payload_pb2.TaskCancel(task_id="a"))
    payload = validation.payload_of(envelope)
    assert isinstance(payload, payload_pb2.TaskCancel)
    payload.task_id = "b"
    assert envelope.task_cancel.task_id == "b"


def test_payload_of_empty_envelope_fails() -> None:
    """payload_of raises MISSING_PAYLOAD when no payload is set."""
    with pytest.raises(errors.InvalidEnvelope) as caught:
        validation.payload_of(envelope_pb2.Envelope())
    assert caught.value.reason == "MISSING_PAYLOAD"
