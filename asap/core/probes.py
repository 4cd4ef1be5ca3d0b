"""Probes: neutral hooks for events that happen below the call level, for metrics.

The core and the transports report a few events that no interceptor can see (a connection opened
or closed, a write that waited for flow-control credit, a dedupe hit or eviction, a rate-limit
refusal) by calling :data:`PROBES`. Nothing listens by default, and each report then costs one
attribute check; :class:`asap.observability.metrics.PrometheusMetrics` adds itself as a listener.
Keeping this here means neither the core nor a transport imports a metrics library.

Labels passed are from small fixed sets (transport ``"grpc"``/``"ws"``, side ``"server"``/
``"client"``, close codes), never per-caller values.
"""

from __future__ import annotations

from typing import Protocol


class ProbeListener(Protocol):
    """Receives probe events (every method is called synchronously, in the event loop)."""

    def connection_opened(self, transport: str) -> None:
        """A connection passed its handshake and holds a slot (server side)."""
        ...

    def connection_closed(self, transport: str, code: int | None, *, was_open: bool) -> None:
        """A connection past its handshake ended with close ``code`` (None: no close frame).

        ``was_open`` is False for one closed at once without taking a slot (1013, 1001).
        """
        ...

    def flow_stalled(self, transport: str, side: str) -> None:
        """A streamed write had to wait for the peer's flow-control credit."""
        ...

    def dedupe_hit(self) -> None:
        """An envelope was answered from the dedupe store (a retransmission)."""
        ...

    def dedupe_evicted(self, count: int) -> None:
        """``count`` outcomes were evicted from an in-memory dedupe store."""
        ...

    def rate_limited(self) -> None:
        """A call or an envelope was refused by the rate limit."""
        ...


class Probes:
    """The registry of listeners; ``active`` is None while there is none (the common case)."""

    __slots__ = ("_listeners", "active")

    def __init__(self) -> None:
        self._listeners: list[ProbeListener] = []
        self.active: tuple[ProbeListener, ...] | None = None
        """The listeners, or None when there are none (callers check this before reporting)."""

    def add(self, listener: ProbeListener) -> None:
        """Start reporting to ``listener`` (idempotent)."""
        if listener not in self._listeners:
            self._listeners.append(listener)
            self.active = tuple(self._listeners)

    def remove(self, listener: ProbeListener) -> None:
        """Stop reporting to ``listener`` (idempotent)."""
        if listener in self._listeners:
            self._listeners.remove(listener)
            self.active = tuple(self._listeners) or None


PROBES = Probes()
"""The process-wide probe registry."""


def connection_opened(transport: str) -> None:
    """Report a connection opened."""
    if (active := PROBES.active) is not None:
        for listener in active:
            listener.connection_opened(transport)


def connection_closed(transport: str, code: int | None, *, was_open: bool) -> None:
    """Report a connection closed after its handshake."""
    if (active := PROBES.active) is not None:
        for listener in active:
            listener.connection_closed(transport, code, was_open=was_open)


def flow_stalled(transport: str, side: str) -> None:
    """Report a write that waits for credit."""
    if (active := PROBES.active) is not None:
        for listener in active:
            listener.flow_stalled(transport, side)


def dedupe_hit() -> None:
    """Report a dedupe hit."""
    if (active := PROBES.active) is not None:
        for listener in active:
            listener.dedupe_hit()


def dedupe_evicted(count: int) -> None:
    """Report dedupe evictions."""
    if count and (active := PROBES.active) is not None:
        for listener in active:
            listener.dedupe_evicted(count)


def rate_limited() -> None:
    """Report a rate-limit refusal."""
    if (active := PROBES.active) is not None:
        for listener in active:
            listener.rate_limited()
