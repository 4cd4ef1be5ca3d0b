"""asap.transports.grpc.status: AsapError ↔ gRPC status, without a network."""

from __future__ import annotations

from typing import cast

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from asap import errors
from asap._typing import Metadata
from asap.transports.grpc.status import DETAILS_KEY, GRPC_CODES, error_from_rpc, to_grpc_status
from asap.v1 import status_pb2


def rpc_error(
    code: grpc.StatusCode, details: str, trailing_metadata: Metadata = ()
) -> grpc.aio.AioRpcError:
    """The error grpc.aio raises for a call that ended with this status."""
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing_metadata), details
    )


def sent(error: errors.AsapError, trailing_metadata: Metadata = ()) -> grpc.aio.AioRpcError:
    """What a client receives when a server aborts with ``error``."""
    code, details, trailers = to_grpc_status(error, trailing_metadata)
    return rpc_error(code, details, trailers)


def test_every_code_maps_to_the_grpc_code_with_its_number() -> None:
    """The gRPC mapping is the identity on code numbers and covers every Code."""
    assert set(GRPC_CODES) == set(errors.Code)
    for code, status in GRPC_CODES.items():
        assert status.value[0] == code


@pytest.mark.parametrize("cls", errors.ERROR_CLASSES[1:], ids=lambda cls: cls.__name__)
def test_every_error_class_round_trips(cls: type[errors.AsapError]) -> None:
    """Each AsapError subclass arrives as the same class, message, reason, metadata and details."""
    detail = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="x")]
    )
    error = cls("it failed", details=[detail], metadata={"k": "v"})
    received = error_from_rpc(sent(error, (("x-trailer", "1"),)))
    assert type(received) is cls
    assert (received.code, received.reason, received.message) == (
        cls.code,
        error.reason,
        "it failed",
    )
    assert received.metadata == {"k": "v"}
    assert received.details == (detail,)
    assert received.trailing_metadata == (("x-trailer", "1"),)


def test_rate_limited_keeps_retry_after() -> None:
    """RateLimited's retry_after travels as RetryInfo and comes back."""
    received = error_from_rpc(sent(errors.RateLimited("slow down", retry_after=2.5)))
    assert isinstance(received, errors.RateLimited)
    assert received.retry_after == pytest.approx(2.5)


def test_specific_reason_selects_the_subclass() -> None:
    """A registered reason other than the default still selects its class (INVALID_URN)."""
    received = error_from_rpc(sent(errors.InvalidEnvelope("bad urn", reason="INVALID_URN")))
    assert type(received) is errors.InvalidEnvelope
    assert received.reason == "INVALID_URN"


def test_status_details_are_grpc_standard() -> None:
    """The details trailer is google.rpc.Status as grpcio-status reads it."""
    error = errors.FailedPrecondition("not ready", metadata={"task": "t"})
    code, details, trailers = to_grpc_status(error)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details == "not ready"
    assert [key for key, _ in trailers] == [DETAILS_KEY]
    status = rpc_status.from_call(
        cast("grpc.Call", rpc_error(code, details, trailers))
    )  # aio errors quack like Call
    assert (status.code, status.message) == (code.value[0], "not ready")
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.domain, info.reason) == ("asap", "FAILED_PRECONDITION")


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (grpc.StatusCode.UNIMPLEMENTED, errors.Unimplemented),
        (grpc.StatusCode.UNKNOWN, errors.Unknown),
        (grpc.StatusCode.INTERNAL, errors.Internal),
    ],
)
def test_grpc_own_statuses_map_by_code(code: grpc.StatusCode, cls: type[errors.AsapError]) -> None:
    """A status without details (produced by gRPC itself) becomes the class for its code."""
    received = error_from_rpc(rpc_error(code, "from grpc", (("x", "y"),)))
    assert type(received) is cls
    assert received.message == "from grpc"
    assert received.trailing_metadata == (("x", "y"),)


@pytest.mark.parametrize(
    "details",
    [
        "SERVER: Received message larger than max (8192 vs. 4096)",
        "CLIENT: Sent message larger than max (8192 vs. 4096)",
        "Received message larger than max (8192 vs. 4096)",
    ],
)
def test_grpc_size_errors_become_message_too_large(details: str) -> None:
    """gRPC's own message-size RESOURCE_EXHAUSTED becomes MessageTooLarge, as on the bridge."""
    received = error_from_rpc(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, details))
    assert type(received) is errors.MessageTooLarge
    assert received.reason == "MESSAGE_TOO_LARGE"
    assert received.message == details


def test_other_resource_exhausted_without_details_stays_generic() -> None:
    """RESOURCE_EXHAUSTED without details and without the size text is plain ResourceExhausted."""
    received = error_from_rpc(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota"))
    assert type(received) is errors.ResourceExhausted


def test_asap_details_win_over_the_size_text() -> None:
    """A status with ASAP details is decoded from them even if its message mentions sizes."""
    error = errors.TooManyCalls("Received message larger than max, and too many calls")
    assert type(error_from_rpc(sent(error))) is errors.TooManyCalls


def test_details_with_a_different_code_are_ignored() -> None:
    """Details whose code disagrees with the call's code (rewritten by a proxy) are not trusted."""
    _, _, trailers = to_grpc_status(errors.NotFound("gone"))
    received = error_from_rpc(rpc_error(grpc.StatusCode.UNAVAILABLE, "proxy", trailers))
    assert type(received) is errors.Unavailable
    assert received.message == "proxy"
    assert received.trailing_metadata == ()


def test_undecodable_details_are_ignored() -> None:
    """A details trailer that is not a Status falls back to the code."""
    received = error_from_rpc(
        rpc_error(grpc.StatusCode.NOT_FOUND, "nope", ((DETAILS_KEY, b"\xff\xff\xff"),))
    )
    assert type(received) is errors.NotFound


def test_foreign_status_without_error_info_maps_by_code() -> None:
    """Details from a foreign server (no ASAP ErrorInfo) keep their details and map by code."""
    status = status_pb2.Status(code=grpc.StatusCode.ABORTED.value[0], message="conflict")
    status.details.add().Pack(error_details_pb2.DebugInfo(detail="retry"))
    received = error_from_rpc(
        rpc_error(grpc.StatusCode.ABORTED, "conflict", ((DETAILS_KEY, status.SerializeToString()),))
    )
    assert type(received) is errors.Aborted
    assert received.details == (error_details_pb2.DebugInfo(detail="retry"),)


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.INTERNAL, "Internal error from Core"),
        (grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2"),
        (grpc.StatusCode.UNKNOWN, "Stream removed"),
        (grpc.StatusCode.INTERNAL, "Socket closed"),
    ],
)
def test_grpc_transport_failures_become_connection_lost(
    code: grpc.StatusCode, details: str
) -> None:
    """grpc core's INTERNAL/UNKNOWN for a cut stream is ConnectionLost (UNAVAILABLE), retried."""
    received = error_from_rpc(rpc_error(code, details))
    assert type(received) is errors.ConnectionLost
    assert received.code == errors.Code.UNAVAILABLE


def test_an_asap_internal_error_stays_internal() -> None:
    """A server's own INTERNAL (with ASAP details) is not mistaken for a transport failure."""
    error = errors.Internal("Internal error from Core, says the handler")
    assert type(error_from_rpc(sent(error))) is errors.Internal


def test_a_cancel_the_caller_did_not_ask_for_is_shutting_down() -> None:
    """CANCELLED from grpc itself (a server shutting down) is ShuttingDown unless it was ours."""
    received = error_from_rpc(rpc_error(grpc.StatusCode.CANCELLED, "CANCELLED"))
    assert type(received) is errors.ShuttingDown
    ours = error_from_rpc(rpc_error(grpc.StatusCode.CANCELLED, "CANCELLED"), cancelled_locally=True)
    assert type(ours) is errors.Cancelled
