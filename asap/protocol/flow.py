"""Per-stream flow-control credit of the WebSocket bridge (bridge.proto "Flow control"), without I/O.

Theory of operation (RFC 9113 §5.2 and §6.9, in bytes of whole bridge frames). Each stream has
one :class:`StreamCredit` per connection side, holding both directions:

- **send**: how many bytes this side may still send on the stream. It starts at the peer's initial
  window and grows with each WindowUpdate the peer sends. A flow-controlled frame may be sent
  while it is above zero and costs its size, so one frame may overdraw it (rule 2): messages
  larger than the window need no splitting, and the peer buffers at most one window plus one frame.
- **receive**: how many bytes the peer may still send. A flow-controlled frame arriving while it is
  zero or less breaks rule 4. It shrinks as frames arrive and grows only when this side *grants*
  credit back, which it does as the application consumes messages, in batches of at least half a
  window (rule 3), so a slow reader pushes back on the remote writer and WindowUpdates stay rare.

The receive side never needs to know the sender's view: the sender only sends while its credit is
above zero and the receiver's view is never below it (grants in flight only add to the sender's
credit later), so rule 4 is checked against the receiver's own count.
"""

from __future__ import annotations

from typing import Final

from asap.errors import FlowControlViolation, MalformedFrame


DEFAULT_WINDOW_BYTES: Final = 65_536
"""A stream's initial window until the peer's Settings say otherwise (bridge.proto "Settings")."""

MAX_WINDOW_BYTES: Final = 2**31 - 1
"""No credit may grow past this (as HTTP/2's flow-control windows)."""


def wire_size(data: bytes | str) -> int:
    """The flow-control cost of one WebSocket message: its bytes, UTF-8 for text."""
    if isinstance(data, bytes):
        return len(data)
    return len(data) if data.isascii() else len(data.encode("utf-8", "surrogatepass"))


class StreamCredit:
    """Both directions of one stream's credit, as seen from one side.

    Args:
        send_window: The peer's initial window (what this side may send before a WindowUpdate).
        receive_window: This side's initial window (what the peer may send before a grant).
    """

    __slots__ = ("initial_receive", "receive", "send", "ungranted")

    def __init__(self, send_window: int, receive_window: int) -> None:
        self.send = send_window
        """Bytes this side may still send; may be negative after an overdraw."""
        self.receive = receive_window
        """Bytes the peer may still send before it must wait for a grant."""
        self.initial_receive = receive_window
        """This side's window for the stream: grants are batched at half of it."""
        self.ungranted = 0
        """Bytes consumed by the application and not yet granted back to the peer."""

    def __repr__(self) -> str:
        return f"StreamCredit(send={self.send}, receive={self.receive}, ungranted={self.ungranted})"

    @property
    def can_send(self) -> bool:
        """Whether a flow-controlled frame may be sent now (rule 2)."""
        return self.send > 0

    def sent(self, size: int) -> None:
        """Charge a flow-controlled frame of ``size`` bytes that this side sent."""
        self.send -= size

    def received(self, size: int) -> None:
        """Charge a flow-controlled frame of ``size`` bytes that the peer sent.

        Raises:
            asap.errors.FlowControlViolation: The peer had no credit left (rule 4).
        """
        if self.receive <= 0:
            msg = f"a {size}-byte message arrived with no credit left on the stream"
            raise FlowControlViolation(msg)
        self.receive -= size

    def window_update(self, increment: int) -> bool:
        """Apply a WindowUpdate the peer sent.

        Returns:
            ``True`` if the stream could not send before and can now (wake its writer).

        Raises:
            asap.errors.MalformedFrame: ``increment`` is 0 or the credit would pass
                :data:`MAX_WINDOW_BYTES` (rule 5).
        """
        if increment <= 0:
            msg = "window_update increment must be above 0"
            raise MalformedFrame(msg)
        if self.send + increment > MAX_WINDOW_BYTES:
            msg = "window_update takes the stream's credit past 2^31 - 1"
            raise MalformedFrame(msg)
        blocked = self.send <= 0
        self.send += increment
        return blocked and self.send > 0

    def adjust_send(self, delta: int) -> bool:
        """Apply a change of the peer's initial window to this open stream (bridge.proto "Settings").

        Returns:
            ``True`` if the stream could not send before and can now.
        """
        blocked = self.send <= 0
        self.send = min(self.send + delta, MAX_WINDOW_BYTES)
        return blocked and self.send > 0

    def consumed(self, size: int) -> int:
        """Record that the application took a message of ``size`` bytes off the stream.

        Returns:
            The increment to grant now in a WindowUpdate (and already added to :attr:`receive`),
            or 0 while less than half a window waits to be granted.
        """
        self.ungranted += size
        if self.ungranted < max(1, self.initial_receive // 2) and self.receive > 0:
            return 0
        increment = min(self.ungranted, MAX_WINDOW_BYTES - max(self.receive, 0))
        self.ungranted = 0
        self.receive += increment
        return increment
