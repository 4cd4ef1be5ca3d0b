"""asap.protocol.pbmethods: protobuf's methods as functions give what the methods give."""

from __future__ import annotations

import pytest
from google.protobuf.internal import api_implementation

from asap.protocol import pbmethods
from asap.v1 import agent_service_pb2, envelope_pb2, payload_pb2


def _envelope() -> envelope_pb2.Envelope:
    envelope = envelope_pb2.Envelope(id="e")
    envelope.extensions.update({"b": "2", "a": "1", "c": "3"})  # a map: deterministic orders it
    envelope.timestamp.seconds = 5
    envelope.task_request.skill_id = "echo"
    return envelope


def test_the_functions_answer_as_the_methods_do() -> None:
    """On any message type, not only the one whose class they were taken from."""
    envelope = _envelope()
    result = agent_service_pb2.DeliveryResult(ack=payload_pb2.MessageAck(original_envelope_id="e"))
    assert pbmethods.has_field(envelope, "timestamp")
    assert pbmethods.has_field(result, "ack")
    assert not pbmethods.has_field(result, "error")
    assert pbmethods.serialize(result) == result.SerializeToString()
    assert pbmethods.serialize(envelope, deterministic=True) == envelope.SerializeToString(
        deterministic=True
    )
    with pytest.raises(ValueError, match="no_such_field"):
        pbmethods.has_field(envelope, "no_such_field")


def test_without_upb_they_call_the_message_s_own_method(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under protobuf's pure-Python implementation each function calls the method by name."""
    monkeypatch.setattr(api_implementation, "Type", lambda: "python")
    has_field = pbmethods._method("HasField")
    serialize = pbmethods._method("SerializeToString")
    assert callable(has_field)
    assert callable(serialize)
    envelope = _envelope()
    assert has_field(envelope, "timestamp") is True
    assert serialize(envelope, deterministic=True) == envelope.SerializeToString(deterministic=True)
