"""Ack bookkeeping: which sent envelopes still await their final acknowledgement.

An envelope sent with ``requires_ack`` is pending until a MessageAck with status PROCESSED or
REJECTED names it (RECEIVED does not settle it). After a reconnect the sender re-sends every
pending envelope, in the order first sent; the recipient's dedupe makes that exactly-once.
Pure bookkeeping: no I/O, no clock.
"""

from __future__ import annotations

from collections import OrderedDict

from asap.v1 import envelope_pb2, payload_pb2


_FINAL = frozenset({payload_pb2.ACK_STATUS_PROCESSED, payload_pb2.ACK_STATUS_REJECTED})


class AckTracker:
    """Tracks envelopes awaiting a final ack, in send order."""

    def __init__(self) -> None:
        self._pending: OrderedDict[str, envelope_pb2.Envelope] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def sent(self, envelope: envelope_pb2.Envelope) -> None:
        """Record a sent envelope; ignored unless it requires an ack (re-sending keeps its place)."""
        if envelope.requires_ack and envelope.id not in self._pending:
            self._pending[envelope.id] = envelope

    def received(self, envelope: envelope_pb2.Envelope) -> bool:
        """Process an incoming envelope; True when it was a final ack that settled a pending one."""
        if envelope.WhichOneof("payload") != "message_ack":
            return False
        ack = envelope.message_ack
        if ack.status not in _FINAL:
            return False
        return self._pending.pop(ack.original_envelope_id, None) is not None

    def settle(self, envelope_id: str) -> None:
        """Forget an envelope whose outcome arrived some other way (for example as an error)."""
        self._pending.pop(envelope_id, None)

    def pending(self) -> list[envelope_pb2.Envelope]:
        """The envelopes still awaiting a final ack, in the order they were first sent."""
        return list(self._pending.values())
