"""Unit tests for asap.protocol.acks.AckTracker: what settles a pending envelope."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from asap.protocol.acks import AckTracker
from asap.v1 import envelope_pb2, payload_pb2


if TYPE_CHECKING:
    from tests.unit.core.conftest import Kit


def _sent(kit: Kit, envelope_id: str, *, requires_ack: bool = True) -> envelope_pb2.Envelope:
    return kit.envelope(envelope_id=envelope_id, requires_ack=requires_ack)


def _ack(
    kit: Kit, envelope_id: str, status: payload_pb2.AckStatus.ValueType
) -> envelope_pb2.Envelope:
    ack = payload_pb2.MessageAck(original_envelope_id=envelope_id, status=status)
    return kit.envelope(ack, envelope_id=f"ack-{envelope_id}-{status}")


def test_envelope_without_requires_ack_is_not_tracked(kit: Kit) -> None:
    """Only envelopes that ask for an ack are pending."""
    tracker = AckTracker()
    tracker.sent(_sent(kit, "a", requires_ack=False))
    assert len(tracker) == 0
    assert tracker.pending() == []


def test_received_does_not_settle(kit: Kit) -> None:
    """A RECEIVED ack leaves the envelope pending."""
    tracker = AckTracker()
    tracker.sent(_sent(kit, "a"))
    assert tracker.received(_ack(kit, "a", payload_pb2.ACK_STATUS_RECEIVED)) is False
    assert [e.id for e in tracker.pending()] == ["a"]


@pytest.mark.parametrize(
    "status", [payload_pb2.ACK_STATUS_PROCESSED, payload_pb2.ACK_STATUS_REJECTED]
)
def test_final_ack_settles(kit: Kit, status: payload_pb2.AckStatus.ValueType) -> None:
    """PROCESSED and REJECTED settle the envelope they name."""
    tracker = AckTracker()
    tracker.sent(_sent(kit, "a"))
    tracker.sent(_sent(kit, "b"))
    assert tracker.received(_ack(kit, "a", status)) is True
    assert [e.id for e in tracker.pending()] == ["b"]


def test_unspecified_status_does_not_settle(kit: Kit) -> None:
    """An ack without a status is not final."""
    tracker = AckTracker()
    tracker.sent(_sent(kit, "a"))
    assert tracker.received(_ack(kit, "a", payload_pb2.ACK_STATUS_UNSPECIFIED)) is False
    assert len(tracker) == 1


def test_non_ack_envelope_is_ignored(kit: Kit) -> None:
    """An envelope that is not a MessageAck settles nothing."""
    tracker = AckTracker()
    tracker.sent(_sent(kit, "a"))
    assert tracker.received(kit.envelope(envelope_id="a")) is False
    assert len(tracker) == 1


def test_ack_for_unknown_envelope_returns_false(kit: Kit) -> None:
    """A final ack naming nothing pending reports that it settled nothing."""
    tracker = AckTracker()
    assert tracker.received(_ack(kit, "ghost", payload_pb2.ACK_STATUS_PROCESSED)) is False


def test_duplicate_final_ack_settles_once(kit: Kit) -> None:
    """A second final ack for the same envelope is a no-op."""
    tracker = AckTracker()
    tracker.sent(_sent(kit, "a"))
    assert tracker.received(_ack(kit, "a", payload_pb2.ACK_STATUS_PROCESSED)) is True
    assert tracker.received(_ack(kit, "a", payload_pb2.ACK_STATUS_PROCESSED)) is False
    assert tracker.received(_ack(kit, "a", payload_pb2.ACK_STATUS_REJECTED)) is False


def test_pending_keeps_first_send_order_across_resends(kit: Kit) -> None:
    """Pending envelopes come back in first-sent order; re-sending does not move one."""
    tracker = AckTracker()
    for envelope_id in ("a", "b", "c"):
        tracker.sent(_sent(kit, envelope_id))
    tracker.sent(_sent(kit, "a"))
    assert len(tracker) == 3
    assert [e.id for e in tracker.pending()] == ["a", "b", "c"]
    tracker.received(_ack(kit, "b", payload_pb2.ACK_STATUS_PROCESSED))
    tracker.sent(_sent(kit, "d"))
    assert [e.id for e in tracker.pending()] == ["a", "c", "d"]


def test_settle_forgets_and_tolerates_unknown_ids(kit: Kit) -> None:
    """settle() drops a pending envelope; an unknown id is ignored."""
    tracker = AckTracker()
    tracker.sent(_sent(kit, "a"))
    tracker.settle("a")
    tracker.settle("never-sent")
    assert tracker.pending() == []


def test_pending_returns_a_copy(kit: Kit) -> None:
    """Mutating the pending() list does not change the tracker."""
    tracker = AckTracker()
    tracker.sent(_sent(kit, "a"))
    tracker.pending().clear()
    assert len(tracker) == 1
