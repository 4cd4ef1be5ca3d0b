"""Connecting a WebSocketChannel: the reconnect backoff and what a refused handshake raises."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from websockets.exceptions import InvalidStatus

from asap.errors import (
    AsapError,
    Internal,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)


HTTP_STATUS_ERRORS: dict[int, type[AsapError]] = {
    400: Internal,
    401: Unauthenticated,
    403: PermissionDenied,
    404: Unimplemented,
    429: Unavailable,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}
"""The error a refused handshake raises, by HTTP status (gRPC's HTTP-to-status mapping); any
other status is :class:`~asap.errors.Unknown`."""


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How long to wait before a connection attempt after failed ones (exponential backoff).

    The first attempt after a connection was lost starts at once; after ``n`` failed attempts in a
    row the next waits ``min(max_backoff, initial_backoff * multiplier ** (n - 1))``, shortened by
    a random fraction of up to ``jitter`` so that many clients do not reconnect in step.

    Raises:
        ValueError: A negative or non-finite backoff, ``multiplier`` below 1, or ``jitter``
            outside [0, 1].
    """

    initial_backoff: float = 0.1
    """Seconds before the second attempt in a row."""
    max_backoff: float = 10.0
    """The longest wait between attempts."""
    multiplier: float = 2.0
    """Growth of the wait per failed attempt."""
    jitter: float = 0.5
    """The largest fraction of the wait that is randomly taken off."""

    def __post_init__(self) -> None:
        for name in ("initial_backoff", "max_backoff"):
            value: float = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                message = f"{name} must be 0 or more and finite"
                raise ValueError(message)
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            message = "multiplier must be at least 1"
            raise ValueError(message)
        if not 0 <= self.jitter <= 1:
            message = "jitter must be between 0 and 1"
            raise ValueError(message)

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait before the next attempt, after ``failures`` failed attempts in a row."""
        if failures <= 0:
            return 0.0
        try:
            growth = self.multiplier ** (failures - 1)
        except OverflowError:
            growth = math.inf
        bound = min(self.max_backoff, self.initial_backoff * growth)
        return bound * (1.0 - self.jitter * rng.random())


def connection_error(url: str, exc: Exception) -> AsapError:
    """The AsapError a failed connection attempt raises (see :data:`HTTP_STATUS_ERRORS`)."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        body = exc.response.body.decode(errors="replace").strip()[:200]
        cls = HTTP_STATUS_ERRORS.get(status, Unknown)
        message = f"{url} refused the WebSocket handshake: HTTP {status}: {body}"
        if cls is Unauthenticated:
            # RFC 6750 §3: a refused token says error="invalid_token"; no error, no credentials.
            challenge = exc.response.headers.get("WWW-Authenticate", "")
            invalid = 'error="invalid_token"' in challenge
            return cls(message, reason="INVALID_TOKEN" if invalid else "MISSING_CREDENTIALS")
        return cls(message)
    return Unavailable(f"cannot connect to {url}: {str(exc) or type(exc).__name__}")
