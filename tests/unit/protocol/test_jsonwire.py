"""The asap.v1.json codec under schema skew (asap.protocol.jsonwire), with real frames.

Unknown Any types are kept as OpaqueAny and the real error still decodes; unknown fields are
ignored (and an envelope that lost its payload that way is UNKNOWN_PAYLOAD); enum values are
written as numbers, unknown numbers kept, unknown names refused; call messages with unknown fields
travel in MessageFrame.binary, and a server answers in the form the call used.
"""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2

from asap import errors, validation
from asap.protocol import jsonwire
from asap.protocol.frames import CloseCode, FrameError, JsonCodec, ProtoCodec
from asap.v1 import (
    agent_service_pb2,
    bridge_pb2,
    envelope_pb2,
    opaque_pb2,
    payload_pb2,
    status_pb2,
    task_pb2,
)


QUOTA_URL = "type.googleapis.com/acme.v9.QuotaDetail"
QUOTA_JSON = {"limit": "10", "window": "60s", "tiers": ["a", "b"], "nested": {"deep": True}}


def _not_found_status_frame() -> dict[str, object]:
    """A CallStatus as a newer server writes it: NOT_FOUND, ErrorInfo, then a detail type we lack."""
    info = error_details_pb2.ErrorInfo(reason="NOT_FOUND", domain="asap", metadata={"task": "t-1"})
    status = status_pb2.Status(code=5, message="no task t-1")
    status.details.add().Pack(info)
    frame = bridge_pb2.Frame(stream_id=3, status=bridge_pb2.CallStatus(status=status))
    document = json_format.MessageToDict(frame)
    details = document["status"]["status"]["details"]
    details.append({"@type": QUOTA_URL, **QUOTA_JSON})
    return document


def test_status_with_an_unknown_detail_type_decodes_and_raises_the_real_error() -> None:
    """The frame decodes, the unknown detail is kept as OpaqueAny in place, the error is NotFound."""
    frame = JsonCodec().decode(json.dumps(_not_found_status_frame()))
    status = frame.status.status
    assert [detail.type_url for detail in status.details] == [
        "type.googleapis.com/google.rpc.ErrorInfo",
        jsonwire.OPAQUE_TYPE_URL,
    ]
    error = errors.from_status(status)
    assert type(error) is errors.NotFound
    assert (error.reason, error.message, error.metadata) == (
        "NOT_FOUND",
        "no task t-1",
        {"task": "t-1"},
    )
    [opaque] = error.details
    assert isinstance(opaque, opaque_pb2.OpaqueAny)
    assert opaque.type_url == QUOTA_URL
    assert json_format.MessageToDict(opaque.json) == QUOTA_JSON
    assert errors.detail_type_url(opaque) == QUOTA_URL


def test_opaque_detail_is_written_back_as_itself() -> None:
    """A relayed OpaqueAny stays an OpaqueAny: nothing is invented, nothing lost."""
    codec = JsonCodec()
    frame = codec.decode(json.dumps(_not_found_status_frame()))
    again = codec.decode(codec.encode(frame))
    # Compare unpacked: a Struct's map entries may serialize in any order inside Any.value.
    before, after = (errors.from_status(f.status.status) for f in (frame, again))
    assert (type(after), after.metadata, after.details) == (
        type(before),
        before.metadata,
        before.details,
    )
    assert isinstance(after.details[0], opaque_pb2.OpaqueAny)


def test_unknown_type_in_message_frame_typed_decodes() -> None:
    """A call message of a type the reader lacks no longer fails the frame; unpacking it as the
    expected type is what fails (MalformedFrame, a call-level error)."""
    text = json.dumps(
        {
            "streamId": 9,
            "message": {"typed": {"@type": "type.googleapis.com/asap.v1.FutureRequest", "x": 1}},
        }
    )
    frame = JsonCodec().decode(text)
    assert frame.message.typed.type_url == jsonwire.OPAQUE_TYPE_URL
    with pytest.raises(errors.MalformedFrame, match=r"got asap\.v1\.OpaqueAny"):
        JsonCodec().unpack_message(frame.message, agent_service_pb2.SendRequest)


def test_unknown_detail_nested_in_a_known_typed_message_is_kept() -> None:
    """An Any inside a typed message (a batch result's error details) is resolved the same way."""
    result = {"error": {"code": 5, "details": [{"@type": QUOTA_URL, "limit": "3"}]}}
    typed = {"@type": "type.googleapis.com/asap.v1.SendBatchResponse", "results": [result]}
    frame = JsonCodec().decode(json.dumps({"streamId": 1, "message": {"typed": typed}}))
    response = JsonCodec().unpack_message(frame.message, agent_service_pb2.SendBatchResponse)
    [detail] = response.results[0].error.details
    opaque = opaque_pb2.OpaqueAny()
    assert detail.Unpack(opaque)
    assert opaque.type_url == QUOTA_URL


def test_writer_keeps_a_binary_detail_of_an_unknown_type_as_opaque_bytes() -> None:
    """A status holding an Any the writer cannot resolve is encoded (OpaqueAny with the bytes);
    the reader turns it back into the original Any."""
    status = errors.to_status(errors.NotFound("gone"))
    status.details.add(type_url=QUOTA_URL, value=b"\x08\x0a")
    text = JsonCodec().encode(
        bridge_pb2.Frame(stream_id=1, status=bridge_pb2.CallStatus(status=status))
    )
    assert json.loads(text)["status"]["status"]["details"][1] == {
        "@type": jsonwire.OPAQUE_TYPE_URL,
        "typeUrl": QUOTA_URL,
        "binary": "CAo=",
    }
    error = errors.from_status(JsonCodec().decode(text).status.status)
    assert type(error) is errors.NotFound
    assert [(d.type_url, d.value) for d in error.details] == [(QUOTA_URL, b"\x08\x0a")]  # type: ignore[attr-defined]


def test_unknown_fields_are_ignored() -> None:
    """Members the reader's schema lacks, at any depth, are dropped; the rest is read."""
    request = {
        "@type": "type.googleapis.com/asap.v1.SendRequest",
        "envelope": {"id": "e-1", "tenant": "x", "taskRequest": {"skillId": "s", "priority": 3}},
        "hint": 1,
    }
    text = json.dumps({"streamId": 1, "future": True, "message": {"typed": request}})
    frame = JsonCodec().decode(text)
    got = JsonCodec().unpack_message(frame.message, agent_service_pb2.SendRequest)
    assert got == agent_service_pb2.SendRequest(
        envelope=envelope_pb2.Envelope(id="e-1", task_request=payload_pb2.TaskRequest(skill_id="s"))
    )


def test_envelope_that_lost_an_unknown_member_and_has_no_payload_is_unknown_payload() -> None:
    """A newer payload kind arrives as an unknown member: validation says UNKNOWN_PAYLOAD."""
    envelope = {"id": "e-1", "taskArchive": {"taskId": "t"}}
    typed = {"@type": "type.googleapis.com/asap.v1.SendRequest", "envelope": envelope}
    frame = JsonCodec().decode(json.dumps({"streamId": 1, "message": {"typed": typed}}))
    got = JsonCodec().unpack_message(frame.message, agent_service_pb2.SendRequest).envelope
    with pytest.raises(errors.UnknownPayload):
        validation.payload_kind(got)


def test_envelope_with_no_payload_and_nothing_unknown_is_missing_payload() -> None:
    """Truly empty stays MISSING_PAYLOAD, also when another unknown member sits elsewhere."""
    typed = {"@type": "type.googleapis.com/asap.v1.SendRequest", "envelope": {"id": "e-1"}, "x": 1}
    frame = JsonCodec().decode(json.dumps({"streamId": 1, "message": {"typed": typed}}))
    got = JsonCodec().unpack_message(frame.message, agent_service_pb2.SendRequest).envelope
    with pytest.raises(errors.InvalidEnvelope, match="no payload"):
        validation.payload_kind(got)


def _task_response_frame(status: object) -> str:
    typed = {
        "@type": "type.googleapis.com/asap.v1.SendResponse",
        "envelope": {"taskResponse": {"status": status}},
    }
    return json.dumps({"streamId": 1, "message": {"typed": typed}})


def test_enum_values_are_written_as_numbers() -> None:
    """The writer uses numbers, so a reader without a newer value still has its number."""
    response = agent_service_pb2.SendResponse()
    response.envelope.task_response.status = task_pb2.TASK_STATUS_COMPLETED
    text = JsonCodec().encode_message(1, response)
    assert json.loads(text)["message"]["typed"]["envelope"]["taskResponse"]["status"] == 4


def test_unknown_enum_number_is_kept() -> None:
    """A number the reader's enum lacks is kept, as binary readers keep it."""
    frame = JsonCodec().decode(_task_response_frame(9))
    got = JsonCodec().unpack_message(frame.message, agent_service_pb2.SendResponse)
    assert got.envelope.task_response.status == 9
    assert json.loads(JsonCodec().encode_message(1, got))["message"]["typed"]["envelope"] == {
        "taskResponse": {"status": 9}
    }


def test_known_enum_name_is_read() -> None:
    """Names (what canonical writers send) are still accepted."""
    frame = JsonCodec().decode(_task_response_frame("TASK_STATUS_FAILED"))
    got = JsonCodec().unpack_message(frame.message, agent_service_pb2.SendResponse)
    assert got.envelope.task_response.status == task_pb2.TASK_STATUS_FAILED


def test_unknown_enum_name_is_refused_not_zeroed() -> None:
    """An enum name the reader lacks fails the frame's stream, with a reason that says why."""
    with pytest.raises(FrameError) as caught:
        JsonCodec().decode(_task_response_frame("TASK_STATUS_ARCHIVED"))
    assert caught.value.code is CloseCode.PROTOCOL_ERROR
    assert caught.value.stream_id == 1
    assert "enum" in caught.value.reason


def test_lenient_reader_reads_known_frames_as_protobuf_does() -> None:
    """On frames with nothing unknown the slow path agrees with json_format (maps, repeated, WKTs)."""
    start = bridge_pb2.CallStart(method="/m", half_close=True)
    start.metadata.add(key="k", text="v")
    start.metadata.add(key="k-bin", binary=b"\x00")
    start.timeout.FromMilliseconds(1500)
    request = agent_service_pb2.SendRequest()
    request.envelope.message_send.parts.add().template.variables["name"] = "x"
    request.envelope.extensions.update({"a": [1, "b", None]})
    request.envelope.timestamp.FromSeconds(1_700_000_000)
    start.message.typed.Pack(request)
    frame = bridge_pb2.Frame(stream_id=7, start=start)
    document = json_format.MessageToDict(frame)
    assert jsonwire.parse_frame(document, JsonCodec.pool) == frame


def test_request_with_unknown_fields_travels_in_binary() -> None:
    """A client request holding unknown fields goes in MessageFrame.binary, which keeps them."""
    request = agent_service_pb2.SendRequest()
    request.envelope.MergeFromString(b"\x8a\x02\x00")  # field 33: a payload kind we lack
    codec = JsonCodec()
    text = codec.encode_start(1, bridge_pb2.CallStart(method="/m"), request, half_close=True)
    body = json.loads(text)["start"]["message"]
    assert set(body) == {"binary"}
    assert (
        ProtoCodec().unpack_message(codec.decode(text).start.message, agent_service_pb2.SendRequest)
        == request
    )
    plain = codec.encode_start(
        2, bridge_pb2.CallStart(method="/m"), agent_service_pb2.SendRequest()
    )
    assert set(json.loads(plain)["start"]["message"]) == {"typed"}


@pytest.mark.parametrize("binary", [True, False], ids=["binary-call", "typed-call"])
def test_server_answers_in_the_form_the_call_used(binary: bool) -> None:
    """After decoding a CallStart, the codec answers that stream in the same body form."""
    client, server = JsonCodec(), JsonCodec()
    request = agent_service_pb2.SendRequest()
    if binary:
        request.envelope.MergeFromString(b"\x8a\x02\x00")
    server.decode(
        client.encode_start(5, bridge_pb2.CallStart(method="/m"), request, half_close=True)
    )
    response = agent_service_pb2.SendResponse()
    response.envelope.MergeFromString(b"\xd2\x02\x00")  # unknown field 42 in the response too
    text = server.encode_status(5, bridge_pb2.CallStatus(), response)
    assert set(json.loads(text)["status"]["message"]) == ({"binary"} if binary else {"typed"})
    # The stream is forgotten with its status: a later stream with that id would start afresh.
    assert not server._forms._served
