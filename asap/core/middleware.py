"""The guards every transport runs: authentication, sender binding, rate limiting.

They are :class:`~asap.core.interceptors.Interceptor` subclasses, so they ride the one extension
point every call passes through: :meth:`~asap.core.interceptors.Interceptor.on_call` once when a
call starts (before any message is read) and
:meth:`~asap.core.interceptors.Interceptor.on_envelopes` for each group of envelopes the call
delivers (one for ``Send`` and each stream message, all of them at once for ``SendBatch``). A hook
refuses by raising an :class:`~asap.errors.AsapError`; it may also enrich the context
(authentication sets the identity).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final, Protocol

from asap._typing import MetadataValue
from asap.core import probes
from asap.core.context import AUTHORIZATION as AUTHORIZATION  # re-exported, its former home
from asap.core.context import CallContext, Identity
from asap.core.interceptors import Interceptor
from asap.errors import RateLimited, ResourceExhausted, SenderMismatch, Unauthenticated
from asap.protocol.ratelimit import RateLimiter
from asap.v1 import envelope_pb2


Middleware = Interceptor
"""The former name of :class:`~asap.core.interceptors.Interceptor` (one extension point)."""


TokenVerifier = Callable[[str], Awaitable[Identity | None]]
"""Checks a bearer token; returns the identity, or None when the token is not valid."""


class BearerAuth(Interceptor):
    """Require ``authorization: Bearer <token>`` and put the verified identity in the context.

    The token is read from :attr:`CallContext.credentials` (``ctx.metadata`` holds it redacted).

    Raises UNAUTHENTICATED (reason MISSING_CREDENTIALS or INVALID_TOKEN). A verifier may raise
    :class:`~asap.errors.PermissionDenied` itself for a valid token that may not call this agent.
    """

    def __init__(self, verifier: TokenVerifier, *, eager_safe: bool = False) -> None:
        self._verifier = verifier
        self.eager_safe = eager_safe
        """Whether the verifier never needs a current task (the built-in static one), so a call
        may run eagerly through it (see :func:`asap.core.tasks.start_eagerly`)."""
        self.on_failure: Callable[[CallContext], Awaitable[None]] | None = None
        """Run before a call is refused for its credentials; it may raise another AsapError
        instead (the server's rate limit charges failed attempts: see :meth:`charging`)."""

    def charging(self, on_failure: Callable[[CallContext], Awaitable[None]]) -> BearerAuth:
        """A copy of this guard that runs ``on_failure`` for every call it refuses.

        The server passes :meth:`RateLimit.charge_failure`, so failed attempts cost the caller's
        (anonymous) principal a token and token guessing is rate limited like any call.
        """
        charged = BearerAuth(self._verifier, eager_safe=self.eager_safe)
        charged.on_failure = on_failure
        return charged

    async def authenticate(self, value: MetadataValue | None) -> Identity:
        """The identity of an ``authorization`` value (``Bearer <token>``).

        Raises:
            Unauthenticated: Missing, not a bearer token (MISSING_CREDENTIALS), or a token the
                verifier refuses (INVALID_TOKEN).
        """
        if not isinstance(value, str) or not value.strip():
            raise Unauthenticated(_MISSING, reason="MISSING_CREDENTIALS")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(_NOT_BEARER, reason="MISSING_CREDENTIALS")
        identity = await self._verifier(token.strip())
        if identity is None:
            raise Unauthenticated(_INVALID, reason="INVALID_TOKEN")
        return identity

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

        return cls(verify, eager_safe=True)

    async def on_call(self, ctx: CallContext) -> None:
        """Verify the bearer token."""
        try:
            ctx.identity = await self.authenticate(ctx.credentials)
        except Unauthenticated:
            if self.on_failure is not None:
                await self.on_failure(ctx)
            raise


_MISSING: Final = "missing authorization metadata"
_NOT_BEARER: Final = "authorization must be 'Bearer <token>'"
_INVALID: Final = "the bearer token is not valid"


class SenderBinding(Interceptor):
    """Refuse envelopes whose sender is not the authenticated identity (PERMISSION_DENIED)."""

    eager_safe = True
    """Never suspends: calls may run eagerly through it."""

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


class SharedBuckets(Protocol):
    """Token buckets kept outside the process (Redis), so every replica charges the same ones."""

    async def acquire(self, principal: str, rate: float, burst: float, cost: int) -> float:
        """Take ``cost`` tokens from ``principal``'s bucket: 0.0, or the seconds until possible.

        Raises:
            StoreUnavailable: the buckets cannot be reached (the call fails UNAVAILABLE).
        """
        ...


class RateLimit(Interceptor):
    """A token bucket per principal (the identity, else the peer's address: IPv4, or IPv6 /64).

    Each envelope costs one token; a call that carries no envelope (GetManifest) costs one, and so
    does a call refused for its credentials (:meth:`charge_failure`).
    Refusals are RESOURCE_EXHAUSTED (reason RATE_LIMITED) with google.rpc.RetryInfo, the same
    whether the buckets are in this process or shared (``shared``, e.g.
    :class:`~asap.stores.redis.RedisRateLimiter`); shared buckets that cannot be reached fail the
    call UNAVAILABLE (STORE_UNAVAILABLE), never fall back to local ones.

    Args:
        rate: Tokens added per second.
        burst: Bucket size.
        clock: Monotonic clock, injectable for tests.
        shared: Buckets shared by replicas; None keeps them in this process.
        max_principals: In-process buckets of authenticated principals kept at most.
        max_anonymous: In-process buckets of anonymous principals kept at most (beyond them,
            new anonymous principals share one overflow bucket; see
            :class:`~asap.protocol.ratelimit.RateLimiter`).
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedBuckets | None = None,
        max_principals: int = 10_000,
        max_anonymous: int = 10_000,
    ) -> None:
        self._limiter = RateLimiter(
            rate, burst, max_principals=max_principals, max_anonymous=max_anonymous
        )
        self._clock = clock
        self._shared = shared
        self.eager_safe = shared is None
        """In-memory buckets never suspend, so calls may run eagerly through this guard; shared
        ones do I/O (see :func:`asap.core.tasks.start_eagerly`)."""

    async def on_call(self, ctx: CallContext) -> None:
        """Charge calls that carry no envelopes."""
        if ctx.method.name == "GetManifest":
            await self._charge(ctx, 1)

    async def on_envelopes(
        self, ctx: CallContext, envelopes: Sequence[envelope_pb2.Envelope]
    ) -> None:
        """Charge one token per envelope, all or nothing (an empty batch still costs one)."""
        await self._charge(ctx, max(1, len(envelopes)))

    async def charge_failure(self, ctx: CallContext) -> None:
        """Charge a call refused for its credentials one token (RateLimited once there is none).

        Without this a caller could try tokens on one connection at line rate: each try would
        fail before any envelope is charged.
        """
        await self._charge(ctx, 1)

    async def charge_anonymous(self, principal: str) -> float:
        """Charge an anonymous ``principal`` one token outside any call (a refused bridge handshake).

        Returns:
            0.0, or the seconds until it may try again (nothing was taken).
        """
        return await self._acquire(principal, 1, anonymous=True)

    async def _acquire(self, principal: str, cost: int, *, anonymous: bool) -> float:
        if not self._limiter.enabled:
            return 0.0
        if self._shared is not None:
            return await self._shared.acquire(
                principal, self._limiter.rate, self._limiter.burst, cost
            )
        return self._limiter.try_acquire(principal, self._clock(), cost, anonymous=anonymous)

    async def _charge(self, ctx: CallContext, cost: int) -> None:
        if self._limiter.enabled and cost > self._limiter.burst:
            # The bucket can never hold this many tokens: retrying would not help (and the
            # limiter refuses such a cost with ValueError, which would become INTERNAL).
            message = f"{cost} envelopes exceed the rate-limit burst of {self._limiter.burst:g}"
            raise ResourceExhausted(message)
        if not self._limiter.enabled:
            return
        retry_after = await self._acquire(ctx.principal, cost, anonymous=ctx.identity is None)
        if retry_after > 0:
            probes.rate_limited()
            message = f"rate limit exceeded for {ctx.principal}; retry in {retry_after:.3f}s"
            raise RateLimited(message, retry_after=retry_after)
