"""What a peer with another schema revision meets, identically on every transport.

An envelope whose payload is a kind this server's schema lacks (an unknown field in the payload
range) is UNIMPLEMENTED/UNKNOWN_PAYLOAD, not MISSING_PAYLOAD; another asap_version major is
UNIMPLEMENTED/UNSUPPORTED_VERSION, a newer minor is accepted; an error detail of a type nobody here
knows keeps its type URL and the error its class; the manifest reports the schema version and the
payload kinds, and ``Client.check_supported`` refuses locally what the agent could not take.
(Cross-schema runs, with a real "next" schema in another process: ``tests/skew``.)
"""

from __future__ import annotations

import pytest

from asap import errors, schema
from asap.v1 import agent_service_pb2
from tests.conformance._service import UNKNOWN_DETAIL_URL, Harness, envelope, stamped


pytestmark = pytest.mark.asyncio

NEWER_PAYLOAD = b"\x8a\x02\x02\x08\x01"
"""Envelope field 33 (a payload kind from a newer schema) holding a message with field 1 = 1."""


async def test_unknown_payload_kind_is_unknown_payload(harness: Harness) -> None:
    """No payload this schema knows, but an unknown one present: UNIMPLEMENTED/UNKNOWN_PAYLOAD."""
    built = stamped(envelope("count", {"gate": "never"}))
    built.ClearField("task_request")
    built.MergeFromString(NEWER_PAYLOAD)
    with pytest.raises(errors.UnknownPayload) as caught:
        await harness.client.invoke("Send", agent_service_pb2.SendRequest(envelope=built))
    error = caught.value
    assert (error.code, error.reason) == (errors.Code.UNIMPLEMENTED, "UNKNOWN_PAYLOAD")
    assert error.metadata == {"schema_version": schema.schema_version()}
    assert not harness.probe.event("entered:never").is_set()


async def test_truly_empty_envelope_is_still_missing_payload(harness: Harness) -> None:
    """The same envelope without the unknown field: INVALID_ARGUMENT/MISSING_PAYLOAD."""
    built = stamped(envelope("count"))
    built.ClearField("task_request")
    with pytest.raises(errors.InvalidEnvelope) as caught:
        await harness.client.invoke("Send", agent_service_pb2.SendRequest(envelope=built))
    assert caught.value.reason == "MISSING_PAYLOAD"


async def test_unknown_payload_in_a_batch_fails_only_its_item(harness: Harness) -> None:
    """Per envelope, as any refusal: the known envelope next to it is answered."""
    newer = stamped(envelope("echo"))
    newer.ClearField("task_request")
    newer.MergeFromString(NEWER_PAYLOAD)
    results = await harness.client.send_batch([newer, stamped(envelope("echo"))])
    assert [result.WhichOneof("outcome") for result in results] == ["error", "envelope"]
    error = errors.from_status(results[0].error)
    assert type(error) is errors.UnknownPayload


async def test_other_major_version_is_refused(harness: Harness) -> None:
    """asap_version 2.0 on a 1.x agent: UNIMPLEMENTED/UNSUPPORTED_VERSION, handler not run."""
    built = stamped(envelope("count", {"gate": "never"}))
    built.asap_version = "2.0"
    with pytest.raises(errors.UnsupportedVersion) as caught:
        await harness.client.invoke("Send", agent_service_pb2.SendRequest(envelope=built))
    assert caught.value.metadata == {"asap_version": "2.0", "supported": "1"}
    assert not harness.probe.event("entered:never").is_set()


async def test_newer_minor_version_is_accepted(harness: Harness) -> None:
    """asap_version 1.99 is served: minors only add to the schema."""
    built = stamped(envelope("echo", {"text": "hi"}))
    built.asap_version = "1.99"
    answer = await harness.client.send(built)
    assert answer.envelope.task_response.result["text"] == "hi"


async def test_error_detail_of_an_unknown_type_keeps_the_error_and_its_type_url(
    harness: Harness,
) -> None:
    """The real class, reason, message and ErrorInfo arrive; the unknown detail keeps its bytes."""
    with pytest.raises(errors.NotFound) as caught:
        await harness.client.send(envelope("opaque-detail"))
    error = caught.value
    assert type(error) is errors.NotFound
    assert (error.reason, error.message, error.metadata) == (
        "NOT_FOUND",
        "no such task",
        {"task_id": "t-9"},
    )
    assert [errors.detail_type_url(detail) for detail in error.details] == [UNKNOWN_DETAIL_URL]
    assert [detail.SerializeToString() for detail in error.details] == [
        errors.to_status(errors.NotFound(details=error.details)).details[1].SerializeToString()
    ]


async def test_manifest_reports_schema_version_and_payload_kinds(harness: Harness) -> None:
    """Capabilities: schema version, handled kinds, known kinds (every transport)."""
    capabilities = (await harness.client.get_manifest()).capabilities
    assert capabilities.schema_version == schema.schema_version()
    assert capabilities.asap_version == schema.protocol_version()
    assert list(capabilities.known_payload_kinds) == list(schema.known_payload_kinds())
    assert list(capabilities.payload_kinds) == ["task_request", "mcp_tool_call"]


async def test_check_supported_refuses_locally(harness: Harness) -> None:
    """The client reads the manifest and raises what the agent would answer, sending nothing."""
    await harness.client.check_supported(stamped(envelope("echo")))
    cancel = stamped(envelope("echo"))
    cancel.task_cancel.task_id = "t-1"
    with pytest.raises(errors.NoHandler):
        await harness.client.check_supported(cancel)
    major = stamped(envelope("echo"))
    major.asap_version = "2.0"
    with pytest.raises(errors.UnsupportedVersion):
        await harness.client.check_supported(major)
