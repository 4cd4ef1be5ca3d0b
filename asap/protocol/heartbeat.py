"""The liveness schedule of one connection, from timestamps only (no timers, no I/O).

The I/O layer calls :meth:`Heartbeat.poll` whenever its timer fires (at :meth:`next_deadline`) and
does what it says: send a ping with the given payload, close the connection because the last ping
went unanswered, or nothing. :meth:`pong` records an answer.
"""

from __future__ import annotations

import enum


class Beat(enum.Enum):
    """What :meth:`Heartbeat.poll` asks the I/O layer to do."""

    __hash__ = object.__hash__

    NOTHING = "nothing"
    """Not due yet."""
    PING = "ping"
    """Send a ping whose payload is :attr:`Heartbeat.payload`."""
    DEAD = "dead"
    """The last ping was not answered in time: close the connection (1011)."""


class Heartbeat:
    """Pings every ``interval`` seconds; a ping unanswered after ``timeout`` seconds is fatal.

    Args:
        interval: Seconds between pings (already jittered by the caller if wanted).
        timeout: Seconds to wait for the answer to a ping.
        now: The current time on the caller's monotonic clock.
    """

    __slots__ = ("_count", "interval", "next_ping", "payload", "pong_deadline", "timeout")

    def __init__(self, interval: float, timeout: float, now: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.next_ping = now + interval
        """When the next ping is due."""
        self.pong_deadline: float | None = None
        """When the outstanding ping must have been answered; ``None`` when none is outstanding."""
        self.payload = b""
        """The payload of the outstanding ping."""
        self._count = 0

    def next_deadline(self) -> float:
        """When :meth:`poll` next has something to do."""
        if self.pong_deadline is not None:
            return min(self.pong_deadline, self.next_ping)
        return self.next_ping

    def poll(self, now: float) -> Beat:
        """Decide what to do at ``now``."""
        if self.pong_deadline is not None and now >= self.pong_deadline:
            return Beat.DEAD
        if now < self.next_ping or self.pong_deadline is not None:
            return Beat.NOTHING
        self._count += 1
        self.payload = self._count.to_bytes(4, "big")
        self.pong_deadline = now + self.timeout
        self.next_ping = now + self.interval
        return Beat.PING

    def pong(self, payload: bytes) -> None:
        """Record a pong; only the answer to the outstanding ping counts."""
        if self.pong_deadline is not None and payload == self.payload:
            self.pong_deadline = None
