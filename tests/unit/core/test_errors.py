"""Round trips of every AsapError class through the wire status (asap.errors.to_status/from_status)."""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2

from asap import errors
from asap.v1 import status_pb2


def _bad_request() -> error_details_pb2.BadRequest:
    violation = error_details_pb2.BadRequest.FieldViolation(field="envelope.id", description="bad")
    return error_details_pb2.BadRequest(field_violations=[violation])


_CASES = [
    pytest.param(cls, reason, id=f"{cls.__name__}-{reason}")
    for cls in errors.ERROR_CLASSES
    if cls is not errors.AsapError
    for reason in (cls.default_reason, *sorted(cls.reasons - {cls.default_reason}))
]


def _make(cls: type[errors.AsapError], reason: str) -> errors.AsapError:
    details = [_bad_request()]
    metadata = {"key": "value"}
    if cls is errors.RateLimited:
        return errors.RateLimited(
            "a message", retry_after=2.5, reason=reason, details=details, metadata=metadata
        )
    return cls("a message", reason=reason, details=details, metadata=metadata)


@pytest.mark.parametrize(("cls", "reason"), _CASES)
def test_round_trip_keeps_class_reason_message_details(
    cls: type[errors.AsapError], reason: str
) -> None:
    """from_status(to_status(e)) is the same class with the same reason, message and details."""
    original = _make(cls, reason)
    status = errors.to_status(original)
    assert status.code == int(cls.code)
    decoded = errors.from_status(status_pb2.Status.FromString(status.SerializeToString()))
    assert type(decoded) is cls
    assert decoded.code == cls.code
    assert decoded.reason == reason
    assert decoded.message == "a message"
    assert decoded.details == (_bad_request(),)
    assert decoded.metadata == {"key": "value"}
    if isinstance(original, errors.RateLimited):
        assert isinstance(decoded, errors.RateLimited)
        assert decoded.retry_after == 2.5


def test_every_class_reason_is_registered_with_its_code() -> None:
    """Each class's reasons are in the ErrorReason registry under the class's code."""
    for cls in errors.ERROR_CLASSES[1:]:
        for reason in (cls.default_reason, *cls.reasons):
            assert errors.REASON_CODES[reason] == cls.code, (cls, reason)


def test_every_registered_reason_has_a_class() -> None:
    """Every reason of the registry decodes to a class that claims it."""
    for reason, code in errors.REASON_CODES.items():
        cls = errors.error_class_for(code, reason)
        assert reason in {cls.default_reason, *cls.reasons}, reason


def test_rate_limited_status_carries_retry_info() -> None:
    """A RateLimited status carries google.rpc.RetryInfo with the delay."""
    status = errors.to_status(errors.RateLimited(retry_after=0.25))
    retry = [
        info for packed in status.details if packed.Unpack(info := error_details_pb2.RetryInfo())
    ]
    assert len(retry) == 1
    assert retry[0].retry_delay.ToNanoseconds() == 250_000_000


def test_rate_limited_without_retry_info_defaults_to_one_second() -> None:
    """A RATE_LIMITED status without RetryInfo decodes with a 1 s retry_after."""
    status = status_pb2.Status(code=errors.Code.RESOURCE_EXHAUSTED, message="slow down")
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="RATE_LIMITED", domain="asap"))
    decoded = errors.from_status(status)
    assert isinstance(decoded, errors.RateLimited)
    assert decoded.retry_after == 1.0


def test_connection_lost_takes_close_code_from_the_caller() -> None:
    """The close code is not in the status; from_status takes it as an argument."""
    status = errors.to_status(errors.ConnectionLost("gone", close_code=1006))
    decoded = errors.from_status(status, close_code=1011)
    assert isinstance(decoded, errors.ConnectionLost)
    assert decoded.close_code == 1011


def test_unknown_code_becomes_unknown() -> None:
    """A status code outside google.rpc.Code decodes as Unknown."""
    decoded = errors.from_status(status_pb2.Status(code=99, message="what"))
    assert type(decoded) is errors.Unknown
    assert decoded.reason == "UNKNOWN"
    assert decoded.message == "what"


@pytest.mark.parametrize("code", [c for c in errors.Code if c != errors.Code.OK])
def test_status_without_error_info_uses_the_code(code: errors.Code) -> None:
    """A status without ASAP's ErrorInfo becomes the code's class with the generic reason."""
    decoded = errors.from_status(status_pb2.Status(code=code, message="m"))
    assert decoded.code == code
    assert type(decoded).__base__ is errors.AsapError
    assert decoded.reason == type(decoded).default_reason


def test_foreign_error_info_is_kept_in_details() -> None:
    """An ErrorInfo of another domain is a plain detail, before or after ASAP's own."""
    foreign_first = error_details_pb2.ErrorInfo(reason="QUOTA", domain="example.com")
    foreign_last = error_details_pb2.ErrorInfo(reason="OTHER", domain="example.org")
    status = status_pb2.Status(code=errors.Code.NOT_FOUND, message="m")
    status.details.add().Pack(foreign_first)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="SKILL_NOT_FOUND", domain="asap"))
    status.details.add().Pack(foreign_last)
    decoded = errors.from_status(status)
    assert type(decoded) is errors.SkillNotFound
    assert decoded.reason == "SKILL_NOT_FOUND"
    assert decoded.details == (foreign_first, foreign_last)


def test_reason_registered_under_another_code_is_replaced() -> None:
    """A reason whose registered code disagrees with the status code falls back to the code."""
    status = status_pb2.Status(code=errors.Code.NOT_FOUND, message="m")
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="RATE_LIMITED", domain="asap"))
    decoded = errors.from_status(status)
    assert type(decoded) is errors.NotFound
    assert decoded.reason == "NOT_FOUND"


def test_unregistered_reason_is_kept() -> None:
    """A reason from a newer registry is kept, and the class follows the code."""
    status = status_pb2.Status(code=errors.Code.NOT_FOUND, message="m")
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="TASK_GONE", domain="asap"))
    decoded = errors.from_status(status)
    assert type(decoded) is errors.NotFound
    assert decoded.reason == "TASK_GONE"


def test_unknown_detail_type_is_kept_as_any() -> None:
    """A detail of an unregistered type is kept packed."""
    packed = any_pb2.Any(type_url="type.example.com/x.Unknown", value=b"\x08\x01")
    status = status_pb2.Status(code=errors.Code.INTERNAL, message="m")
    status.details.append(packed)
    decoded = errors.from_status(status)
    assert decoded.details == (packed,)


def test_reason_with_the_wrong_code_is_refused() -> None:
    """Constructing an error with a reason registered under another code is a ValueError."""
    with pytest.raises(ValueError, match="registered with code"):
        errors.NotFound(reason="RATE_LIMITED")


def test_details_of_filters_by_type() -> None:
    """details_of returns the details of one message type."""
    info = error_details_pb2.ErrorInfo(reason="x", domain="y")
    error = errors.Internal(details=[_bad_request(), info])
    assert errors.details_of(error, error_details_pb2.ErrorInfo) == [info]
    assert errors.details_of(error, error_details_pb2.BadRequest) == [_bad_request()]
