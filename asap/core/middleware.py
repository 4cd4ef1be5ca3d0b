"""Middleware that every transport runs: authentication, sender binding, rate limiting.

Middleware are guards with two hooks, both called by the core so they behave identically on every
transport: :meth:`Middleware.on_call` once when a call starts (before any message is read) and
:meth:`Middleware.on_envelopes` for each group of envelopes the call delivers (one for ``Send`` and
each stream message, all of them at once for ``SendBatch``). A hook refuses by raising an
:class:`~asap.errors.AsapError`; it may also enrich the context (authentication sets the identity).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from asap.core.context import CallContext, Identity
from asap.errors import RateLimited, ResourceExhausted, SenderMismatch, Unauthenticated
from asap.protocol.ratelimit import RateLimiter
from asap.v1 import envelope_pb2


class Middleware(Protocol):
    """A guard run by the core on every call, whichever transport carries it."""

    async def on_call(self, ctx: CallContext) -> None:
        """Inspect a call before it runs; raise an AsapError to refuse it."""
        ...

    async def on_envelopes(
        self, ctx: CallContext, envelopes: Sequence[envelope_pb2.Envelope]
    ) -> None:
        """Inspect envelopes before they are processed; raise an AsapError to refuse them all."""
        ...


TokenVerifier = Callable[[str], Awaitable[Identity | None]]
"""Checks a bearer token; returns the identity, or None when the token is not valid."""

AUTHORIZATION = "authorization"
"""The metadata key (and HTTP header) that carries ``Bearer <token>``."""


class BearerAuth:
    """Require ``authorization: Bearer <token>`` and put the verified identity in the context.

    Raises UNAUTHENTICATED (reason MISSING_CREDENTIALS or INVALID_TOKEN). A verifier may raise
    :class:`~asap.errors.PermissionDenied` itself for a valid token that may not call this agent.
    """

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    @classmethod
    def static(cls, tokens: Mapping[str, str]) -> BearerAuth:
        """Accept a fixed set of tokens, each mapped to the subject it authenticates.

        Tokens are compared with :func:`hmac.compare_digest` (constant time).
        """
        # Compared in constant time, each against every known token: neither a match's position nor
        # a prefix leaks through timing (a dict lookup hashes and compares as soon as it can).
        known = [(token.encode(), subject) for token, subject in tokens.items()]

        async def verify(token: str) -> Identity | None:
            offered = token.encode()
            found: str | None = None
            for candidate, subject in known:
                if hmac.compare_digest(candidate, offered) and found is None:
                    found = subject
            return None if found is None else Identity(found)

        return cls(verify)

    async def on_call(self, ctx: CallContext) -> None:
        """Verify the bearer token."""
        value = ctx.metadata_value(AUTHORIZATION)
        if not isinstance(value, str) or not value.strip():
            raise Unauthenticated(_MISSING, reason="MISSING_CREDENTIALS")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(_NOT_BEARER, reason="MISSING_CREDENTIALS")
        identity = await self._verifier(token.strip())
        if identity is None:
            raise Unauthenticated(_INVALID, reason="INVALID_TOKEN")
        ctx.identity = identity

    async def on_envelopes(
        self, ctx: CallContext, envelopes: Sequence[envelope_pb2.Envelope]
    ) -> None:
        """Nothing to check per envelope."""


_MISSING = "missing authorization metadata"
_NOT_BEARER = "authorization must be 'Bearer <token>'"
_INVALID = "the bearer token is not valid"


class SenderBinding:
    """Refuse envelopes whose sender is not the authenticated identity (PERMISSION_DENIED)."""

    async def on_call(self, ctx: CallContext) -> None:
        """Nothing to check per call."""

    async def on_envelopes(
        self, ctx: CallContext, envelopes: Sequence[envelope_pb2.Envelope]
    ) -> None:
        """Check every sender against the identity."""
        if ctx.identity is None:
            return
        for envelope in envelopes:
            if envelope.sender != ctx.identity.subject:
                message = f"sender {envelope.sender!r} is not the caller {ctx.identity.subject!r}"
                raise SenderMismatch(message)


class RateLimit:
    """A token bucket per principal (the identity, else the peer's address).

    Each envelope costs one token; a call that carries no envelope (GetManifest) costs one.
    Refusals are RESOURCE_EXHAUSTED (reason RATE_LIMITED) with google.rpc.RetryInfo.

    Args:
        rate: Tokens added per second.
        burst: Bucket size.
        clock: Monotonic clock, injectable for tests.
    """

    def __init__(
        self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limiter = RateLimiter(rate, burst)
        self._clock = clock

    async def on_call(self, ctx: CallContext) -> None:
        """Charge calls that carry no envelopes."""
        if ctx.method.name == "GetManifest":
            self._charge(ctx, 1)

    async def on_envelopes(
        self, ctx: CallContext, envelopes: Sequence[envelope_pb2.Envelope]
    ) -> None:
        """Charge one token per envelope, all or nothing (an empty batch still costs one)."""
        self._charge(ctx, max(1, len(envelopes)))

    def _charge(self, ctx: CallContext, cost: int) -> None:
        if self._limiter.enabled and cost > self._limiter.burst:
            # The bucket can never hold this many tokens: retrying would not help (and the
            # limiter refuses such a cost with ValueError, which would become INTERNAL).
            message = f"{cost} envelopes exceed the rate-limit burst of {self._limiter.burst:g}"
            raise ResourceExhausted(message)
        retry_after = self._limiter.try_acquire(ctx.principal, self._clock(), cost)
        if retry_after > 0:
            message = f"rate limit exceeded for {ctx.principal}; retry in {retry_after:.3f}s"
            raise RateLimited(message, retry_after=retry_after)
