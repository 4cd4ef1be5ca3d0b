"""Resource limits shared by both transports, with secure defaults.

One :class:`Limits` value configures a server (and, for the sizes, a client): the gRPC transport maps
the sizes onto its channel options and the WebSocket bridge enforces all of them through
:mod:`asap.protocol.session`. The defaults follow gRPC's where gRPC has one (4 MiB messages,
100 concurrent streams per connection, as HTTP/2's usual ``SETTINGS_MAX_CONCURRENT_STREAMS``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final


MIB: Final = 1024 * 1024
"""One mebibyte."""

FRAME_OVERHEAD_BYTES: Final = 64 * 1024
"""Room for a frame's own fields (metadata, type URL, JSON quoting) on top of the message it carries."""

DEFAULT_MAX_MESSAGE_BYTES: Final = 4 * MIB
"""gRPC's default maximum received message size."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of a server or client; every field has a safe default.

    Construct it with keyword arguments and override only what you need::

        Limits(max_message_bytes=16 * MIB, rate_limit_per_second=0)

    Raises:
        ValueError: A field is out of range (sizes and counts must be positive, durations positive
            and finite, ``max_frame_bytes`` at least ``max_message_bytes``).
    """

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest serialized request or response message; a larger one fails its call with
    RESOURCE_EXHAUSTED (reason ``MESSAGE_TOO_LARGE``) and the connection goes on."""

    max_frame_bytes: int = 0
    """Hard cap on one WebSocket message; a larger one closes the connection with 1009.
    0 (the default) means ``max_message_bytes + FRAME_OVERHEAD_BYTES``."""

    max_concurrent_streams: int = 100
    """Calls open at once on one connection; a call beyond it fails with RESOURCE_EXHAUSTED
    (reason ``TOO_MANY_CALLS``)."""

    max_connections: int = 1000
    """Connections a server accepts at once; beyond it the WebSocket bridge refuses with 1013."""

    max_connections_per_peer: int = 100
    """Bridge connections one peer may hold open at once (an IPv4 address, or an IPv6 /64);
    beyond it the bridge refuses with 1013, as at ``max_connections``. 0 disables it (behind a
    reverse proxy every connection comes from the proxy's address)."""

    max_concurrent_calls: int = 1000
    """Calls in flight on the whole server, over every connection and transport."""

    max_calls_per_principal: int = 250
    """Calls one principal (an identity, else an anonymous peer: IPv4 address or IPv6 /64) may
    have in flight on the whole server, over every connection and transport; beyond it a call
    fails with RESOURCE_EXHAUSTED (reason ``PRINCIPAL_QUOTA_EXCEEDED``). 0 disables it. The
    default is a quarter of ``max_concurrent_calls``: no principal can take every slot, and one
    busy client with several connections (more than one connection's 100 streams) still fits."""

    max_health_watchers: int = 100
    """Health ``Watch`` streams open at once on one server (they take no credentials, for load
    balancers); beyond it a Watch fails with RESOURCE_EXHAUSTED (reason ``TOO_MANY_CALLS``)."""

    handshake_timeout: float = 10.0
    """Seconds a client has to complete the WebSocket opening handshake."""

    heartbeat_interval: float = 20.0
    """Seconds between liveness pings on an idle connection."""

    heartbeat_timeout: float = 20.0
    """Seconds to wait for the answer to a ping before closing the connection (1011)."""

    rate_limit_per_second: float = 100.0
    """Calls per second each principal may start, on average; 0 disables rate limiting."""

    rate_limit_burst: int = 200
    """Calls a principal may start back to back before the average rate applies."""

    rate_limit_max_principals: int = 10_000
    """Authenticated principals whose rate-limit state is remembered; the least recently seen are
    forgotten."""

    rate_limit_max_anonymous: int = 10_000
    """Anonymous principals (peer addresses, IPv6 by /64) with a rate-limit bucket of their own,
    kept apart from the authenticated ones; when all of them are in use, further anonymous peers
    share one overflow bucket instead of evicting anyone (rotating addresses buys no fresh burst)."""

    rate_limit_strikes_before_close: int = 20
    """Consecutive rate-limited calls on one WebSocket connection before it is closed with 1008;
    0 never closes the connection for this."""

    stream_window_bytes: int = 65_536
    """Bridge revision 2: bytes of call messages a peer may send on one stream before this side
    has consumed them (the initial window it announces in Settings; bridge.proto "Flow control").
    A slow reader holds a writer to about this much plus one message per stream."""

    max_batch_envelopes: int = 1000
    """Envelopes one SendBatch or Publish call may carry; past it the call fails with
    RESOURCE_EXHAUSTED (reason ``TOO_MANY_ENVELOPES``): a SendBatch before any envelope is
    delivered, a Publish when the envelope after the cap arrives (nothing after the cap runs)."""

    max_metadata_bytes: int = 16 * 1024
    """Request metadata a call may carry, counted as HTTP/2 does (RFC 7541 §4.1: key + value + 32
    per entry, ``-bin`` values base64-encoded); more fails the call with RESOURCE_EXHAUSTED on every
    transport. gRPC's own default hard limit; the gRPC listener sets its soft limit to the same
    value so neither transport refuses at random below it. The per-entry overhead also bounds the
    count: at most ``max_metadata_bytes // 33`` entries."""

    max_json_frame_bytes: int = 256 * 1024
    """Hard cap on one WebSocket message under a JSON subprotocol (1009 beyond it). Decoding JSON
    costs the event loop far more per byte than binary frames, so its default is smaller than
    ``max_frame_bytes``; raise it to carry larger messages over JSON (browsers), or use binary."""

    connection_idle_timeout: float = 300.0
    """Seconds a connection may stay open with no call before the server closes it; clients
    reconnect when they next call. gRPC sends GOAWAY (``grpc.max_connection_idle_ms``), the bridge
    GoAway and then closes with 1001. 0 disables it."""

    connection_max_age: float = 0.0
    """gRPC: seconds after which the server asks a connection to go away (GOAWAY; calls in flight
    then get ``connection_max_age_grace``), so clients rebalance over replicas. 0 (the default)
    never ages connections out, since long-lived streams would be cut."""

    connection_max_age_grace: float = 300.0
    """gRPC: seconds calls may still run on a connection past ``connection_max_age``."""

    decode_slice: float = 0.004
    """Seconds of the event loop's CPU time (its thread's, so not the time it waits for a core or
    the GIL) one bridge connection may spend decoding in one read before it stops being read for a
    while (``decode_pause_factor`` times what it used): one peer sending expensive
    frames cannot take more than about ``1 / (1 + decode_pause_factor)`` of the loop."""

    decode_pause_factor: float = 8.0
    """How long a connection over its ``decode_slice`` is not read, as a multiple of the time it used.

    8 since the JSON decoder got about twice as fast (issue 12): at 4, a peer sending maximal JSON
    frames read twice as often, each read half as long, and an honest client's p99 caught them."""

    def __post_init__(self) -> None:
        for name in (
            "max_message_bytes",
            "max_concurrent_streams",
            "max_connections",
            "max_concurrent_calls",
            "rate_limit_burst",
            "rate_limit_max_principals",
            "rate_limit_max_anonymous",
            "max_health_watchers",
            "stream_window_bytes",
            "max_batch_envelopes",
            "max_metadata_bytes",
            "max_json_frame_bytes",
        ):
            _require(getattr(self, name) >= 1, f"{name} must be at least 1")
        for name in (
            "handshake_timeout",
            "heartbeat_interval",
            "heartbeat_timeout",
            "decode_slice",
            "decode_pause_factor",
        ):
            value: float = getattr(self, name)
            _require(math.isfinite(value) and value > 0, f"{name} must be positive and finite")
        rate = self.rate_limit_per_second
        _require(math.isfinite(rate) and rate >= 0, "rate_limit_per_second must be 0 or more")
        _require(
            self.rate_limit_strikes_before_close >= 0,
            "rate_limit_strikes_before_close must be 0 or more",
        )
        for name in ("max_connections_per_peer", "max_calls_per_principal"):
            _require(getattr(self, name) >= 0, f"{name} must be 0 (off) or more")
        _require(self.stream_window_bytes <= 2**31 - 1, "stream_window_bytes must be below 2^31")
        for name in ("connection_idle_timeout", "connection_max_age", "connection_max_age_grace"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value >= 0, f"{name} must be 0 or more and finite")
        if self.max_frame_bytes == 0:
            # The dataclass is frozen; filling in a derived default is the one write it allows.
            object.__setattr__(
                self, "max_frame_bytes", self.max_message_bytes + FRAME_OVERHEAD_BYTES
            )
        _require(
            self.max_frame_bytes >= self.max_message_bytes,
            "max_frame_bytes must be at least max_message_bytes",
        )

    @property
    def rate_limit_enabled(self) -> bool:
        """Whether calls are rate limited per principal."""
        return self.rate_limit_per_second > 0


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
