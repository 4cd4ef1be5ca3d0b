"""Unit tests for asap.protocol.limits: secure defaults and validation."""

from __future__ import annotations

import dataclasses
import math

import pytest

from asap.protocol.limits import FRAME_OVERHEAD_BYTES, MIB, Limits


def test_defaults() -> None:
    """The defaults are gRPC's 4 MiB messages, 100 streams and the documented limits."""
    limits = Limits()
    assert limits.max_message_bytes == 4 * MIB
    assert limits.max_frame_bytes == 4 * MIB + 64 * 1024
    assert limits.max_concurrent_streams == 100
    assert limits.max_connections == 1000
    assert limits.max_concurrent_calls == 1000
    assert limits.handshake_timeout == 10.0
    assert limits.heartbeat_interval == 20.0
    assert limits.heartbeat_timeout == 20.0
    assert limits.rate_limit_per_second == 100.0
    assert limits.rate_limit_burst == 200
    assert limits.rate_limit_max_principals == 10_000
    assert limits.rate_limit_strikes_before_close == 20
    assert limits.rate_limit_enabled
    assert limits.max_connections_per_peer == 100
    assert limits.max_calls_per_principal == 250
    assert limits.max_health_watchers == 100
    assert limits.rate_limit_max_anonymous == 10_000
    assert limits.connection_idle_timeout == 300.0


def test_frame_cap_follows_message_size() -> None:
    """An unset frame cap is the message size plus the framing overhead."""
    assert Limits(max_message_bytes=1000).max_frame_bytes == 1000 + FRAME_OVERHEAD_BYTES


def test_explicit_frame_cap_is_kept() -> None:
    """An explicit frame cap is used as given."""
    assert Limits(max_message_bytes=1000, max_frame_bytes=1000).max_frame_bytes == 1000


def test_frozen() -> None:
    """Limits cannot be changed after construction."""
    limits = Limits()
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_message_bytes = 1  # type: ignore[misc]


def test_zero_rate_disables_rate_limiting() -> None:
    """A rate of 0 disables rate limiting."""
    assert not Limits(rate_limit_per_second=0).rate_limit_enabled


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_message_bytes": 0},
        {"max_frame_bytes": -1},
        {"max_message_bytes": 100, "max_frame_bytes": 99},
        {"max_concurrent_streams": 0},
        {"max_connections": 0},
        {"max_connections_per_peer": -1},
        {"max_calls_per_principal": -1},
        {"max_health_watchers": 0},
        {"rate_limit_max_anonymous": 0},
        {"max_concurrent_calls": 0},
        {"rate_limit_burst": 0},
        {"rate_limit_max_principals": 0},
        {"handshake_timeout": 0.0},
        {"heartbeat_interval": -1.0},
        {"heartbeat_timeout": math.inf},
        {"heartbeat_timeout": math.nan},
        {"rate_limit_per_second": -1.0},
        {"rate_limit_per_second": math.inf},
        {"rate_limit_strikes_before_close": -1},
    ],
)
def test_invalid_values_raise(overrides: dict[str, float]) -> None:
    """An out-of-range field raises ValueError."""
    with pytest.raises(ValueError, match="must be"):
        Limits(**overrides)  # type: ignore[arg-type]


def test_zero_strikes_is_allowed() -> None:
    """Zero strikes (never close for the rate limit) is a valid setting."""
    assert Limits(rate_limit_strikes_before_close=0).rate_limit_strikes_before_close == 0
