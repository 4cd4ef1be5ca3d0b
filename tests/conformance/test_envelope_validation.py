"""Invalid envelopes are refused with the same InvalidEnvelope reason on every transport.

The envelopes are hand-built and sent with ``Client.invoke`` (which, unlike ``send``, fills no
defaults), so the server's validation is what refuses them. (Named ``test_envelope_validation``:
``tests/unit/test_validation.py`` exists and test basenames must be unique.)
"""

from __future__ import annotations

import pytest
from google.rpc import error_details_pb2

from asap import errors
from asap.v1 import agent_service_pb2, envelope_pb2, payload_pb2
from tests.conformance._service import Harness, envelope, stamped


pytestmark = pytest.mark.asyncio


def _bad_recipient(built: envelope_pb2.Envelope) -> None:
    built.recipient = "not-a-urn"


def _bad_sender(built: envelope_pb2.Envelope) -> None:
    built.sender = "urn:asap:agent:"


def _no_payload(built: envelope_pb2.Envelope) -> None:
    built.ClearField("task_request")


def _no_id(built: envelope_pb2.Envelope) -> None:
    built.id = ""


def _long_id(built: envelope_pb2.Envelope) -> None:
    built.id = "x" * 129


def _stale(built: envelope_pb2.Envelope) -> None:
    built.timestamp.seconds -= 3600


def _future(built: envelope_pb2.Envelope) -> None:
    built.timestamp.seconds += 3600


def _no_timestamp(built: envelope_pb2.Envelope) -> None:
    built.ClearField("timestamp")


def _uncorrelated_answer(built: envelope_pb2.Envelope) -> None:
    built.task_response.CopyFrom(payload_pb2.TaskResponse(task_id="t"))


CASES = [
    (_bad_recipient, "INVALID_URN", "recipient"),
    (_bad_sender, "INVALID_URN", "sender"),
    (_no_payload, "MISSING_PAYLOAD", "payload"),
    (_no_id, "INVALID_ID", "id"),
    (_long_id, "INVALID_ID", "id"),
    (_stale, "STALE_TIMESTAMP", "timestamp"),
    (_future, "FUTURE_TIMESTAMP", "timestamp"),
    (_no_timestamp, "STALE_TIMESTAMP", "timestamp"),
    (_uncorrelated_answer, "MISSING_CORRELATION_ID", "correlation_id"),
]


@pytest.mark.parametrize(
    ("breaks", "reason", "field"), CASES, ids=[case[0].__name__.strip("_") for case in CASES]
)
async def test_invalid_envelope_is_refused_with_its_reason(
    harness: Harness,
    breaks: object,
    reason: str,
    field: str,
) -> None:
    """A hand-built invalid envelope fails with InvalidEnvelope, its reason and a BadRequest field."""
    built = stamped(envelope("count", {"gate": "never"}))
    assert callable(breaks)
    breaks(built)
    request = agent_service_pb2.SendRequest(envelope=built)
    with pytest.raises(errors.InvalidEnvelope) as caught:
        await harness.client.invoke("Send", request)
    error = caught.value
    assert error.code == errors.Code.INVALID_ARGUMENT
    assert error.reason == reason
    (bad_request,) = errors.details_of(error, error_details_pb2.BadRequest)
    assert [violation.field for violation in bad_request.field_violations] == [field]
    assert [violation.reason for violation in bad_request.field_violations] == [reason]
    assert not harness.probe.event("entered:never").is_set()


async def test_invalid_envelope_with_requires_ack_is_rejected(harness: Harness) -> None:
    """An invalid envelope with requires_ack carries a REJECTED ack among its error details."""
    built = stamped(envelope("echo", requires_ack=True))
    built.recipient = "not-a-urn"
    with pytest.raises(errors.InvalidEnvelope) as caught:
        await harness.client.invoke("Send", agent_service_pb2.SendRequest(envelope=built))
    (ack,) = errors.details_of(caught.value, payload_pb2.MessageAck)
    assert ack.status == payload_pb2.ACK_STATUS_REJECTED
    assert ack.original_envelope_id == built.id


async def test_invalid_envelope_is_not_remembered_as_processed(harness: Harness) -> None:
    """After an invalid envelope is refused, a valid one with the same id is processed normally."""
    built = stamped(envelope("count"))
    built.recipient = "not-a-urn"
    with pytest.raises(errors.InvalidEnvelope):
        await harness.client.invoke("Send", agent_service_pb2.SendRequest(envelope=built))
    built.recipient = harness.agent_id
    reply = await harness.client.invoke("Send", agent_service_pb2.SendRequest(envelope=built))
    assert isinstance(reply.message, agent_service_pb2.SendResponse)
    assert harness.probe.runs[f"count:{built.id}"] == 1


async def test_missing_request_envelope_is_invalid(harness: Harness) -> None:
    """A SendRequest without an envelope fails with InvalidArgument (an empty envelope)."""
    with pytest.raises(errors.InvalidArgument):
        await harness.client.invoke("Send", agent_service_pb2.SendRequest())
