"""Redis-backed stores shared by replicas: delivery outcomes with leased claims, and rate limits.

Needs the ``asap[redis]`` extra (redis-py's asyncio client); works on Redis 7+ and Valkey.

Delivery outcomes (:class:`RedisDedupeStore`). One Redis string per idempotency key, under
``<prefix>d:<sha256 of the key>`` (so a key costs a fixed 32 bytes whatever its principal and id):

- a claim is ``P`` + claim token (8 bytes) + fingerprint (32 bytes), set with ``SET NX PX lease GET``
  (atomic: whoever finds no value owns the key). The lease is renewed by the process holding it
  every ``lease / 3`` seconds, all its claims in one script call; when that process dies, the lease
  expires and a waiting duplicate takes the key over.
- an outcome is ``D`` + fingerprint + outcome bytes with a TTL; it replaces the claim only if the
  claim is still the caller's (a Lua script compares the token), as does releasing it.

Waiting duplicates poll with a short exponential backoff (waiters in the process that holds the
claim are woken at once instead). Memory in Redis is bounded by the TTL: every key expires.

Rate limits (:class:`RedisRateLimiter`): one token bucket per principal in a Redis hash, refilled
and charged by a Lua script on Redis's own clock, so every replica sees the same buckets.

Loss of Redis is never hidden: every operation that cannot reach it raises
:class:`~asap.errors.StoreUnavailable` (UNAVAILABLE, retryable); there is no in-memory fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from asap.core.dedupe import FINGERPRINT_BYTES, ClaimResult, Owned, Reused, Stored
from asap.errors import StoreUnavailable


_log = logging.getLogger("asap.stores.redis")

_T = TypeVar("_T")

TOKEN_BYTES = 8
_PENDING = b"P"
_DONE = b"D"
_HEADER = 1 + TOKEN_BYTES  # b"P" + token

DEFAULT_PREFIX = "asap:"
DEFAULT_LEASE = 10.0
"""Seconds a claim lives without renewal (the holder renews every third of it)."""
DEFAULT_TTL = 600.0
"""Seconds an outcome is kept (longer than the 330 s replay window)."""
POLL_INITIAL = 0.002
POLL_MAX = 0.05
"""Bounds of the delay between two looks at a key another process is processing, in seconds."""

_COMPLETE = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 9) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
_ABANDON = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 9) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""
_RENEW = """
local lost = 0
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v and string.sub(v, 1, 9) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
  else
    lost = lost + 1
  end
end
return lost
"""
_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
if now > at then tokens = math.min(burst, tokens + (now - at) * rate) else now = at end
local retry = 0
if tokens + 1e-9 >= cost then tokens = math.max(0, tokens - cost) else retry = (cost - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(retry)
"""


def connect(url: str, *, timeout: float = 2.0) -> aioredis.Redis:
    """A redis-py asyncio client for ``redis://``, ``rediss://`` (TLS) or ``unix://`` URLs.

    Socket operations time out after ``timeout`` seconds and a dropped connection is retried once
    (so a restarted Redis is reconnected to), so a Redis outage fails calls within seconds.
    """
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
        health_check_interval=30,
    )


async def _guard(operation: Awaitable[_T], what: str) -> _T:
    """Await a Redis operation; any Redis failure becomes StoreUnavailable."""
    try:
        return await operation
    except (RedisError, OSError) as exc:
        message = f"the Redis store is unavailable ({what}: {type(exc).__name__})"
        raise StoreUnavailable(message) from exc


def _as_bytes(value: object) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    message = f"unexpected reply from Redis: {type(value).__name__}"
    raise StoreUnavailable(message)


@dataclass(slots=True)
class RedisStoreStats:
    """Counters of a :class:`RedisDedupeStore`."""

    takeovers: int = 0
    """Claims this process took over after another holder's lease expired."""
    leases_lost: int = 0
    """Claims this process held whose lease expired before it completed them."""


@dataclass(slots=True)
class _Held:
    token: bytes
    fingerprint: bytes
    done: asyncio.Event


class RedisDedupeStore:
    """A :class:`~asap.core.dedupe.DedupeStore` in Redis, shared by every replica that uses it.

    Args:
        client: A redis-py asyncio client (see :func:`connect`); closed by :meth:`aclose` when
            ``owns_client``.
        prefix: Prepended to every key (several agents can share one Redis).
        ttl: Seconds an outcome is kept.
        lease: Seconds a claim lives without renewal.
        owns_client: Close ``client`` in :meth:`aclose`.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: float = DEFAULT_TTL,
        lease: float = DEFAULT_LEASE,
        owns_client: bool = True,
    ) -> None:
        if ttl <= 0 or lease <= 0:
            message = "ttl and lease must be positive"
            raise ValueError(message)
        self._client = client
        self._prefix = prefix.encode()
        self._ttl_ms = max(1, round(ttl * 1000))
        self._lease = lease
        self._lease_ms = max(1, round(lease * 1000))
        self._owns_client = owns_client
        self._complete = client.register_script(_COMPLETE)
        self._abandon = client.register_script(_ABANDON)
        self._renew = client.register_script(_RENEW)
        self._held: dict[bytes, _Held] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False
        self.stats = RedisStoreStats()

    @classmethod
    def from_url(cls, url: str, **options: float | str) -> RedisDedupeStore:
        """A store on a new client for ``url`` (``redis://``, ``rediss://`` or ``unix://``)."""
        prefix = str(options.get("prefix", DEFAULT_PREFIX))
        ttl = float(options.get("ttl", DEFAULT_TTL))
        lease = float(options.get("lease", DEFAULT_LEASE))
        return cls(connect(url), prefix=prefix, ttl=ttl, lease=lease)

    def _key(self, key: str) -> bytes:
        return self._prefix + b"d:" + hashlib.sha256(key.encode()).digest()

    async def claim(self, key: str, fingerprint: bytes) -> ClaimResult:
        """See :meth:`DedupeStore.claim`."""
        name = self._key(key)
        delay = POLL_INITIAL
        seen: bytes | None = None
        while True:
            token = os.urandom(TOKEN_BYTES)
            value = _PENDING + token + fingerprint
            existing = _as_bytes(
                await _guard(
                    self._client.set(name, value, nx=True, px=self._lease_ms, get=True), "claim"
                )
            )
            if existing is None:
                if seen is not None:
                    self.stats.takeovers += 1
                    _log.warning("took over a claim whose holder stopped renewing its lease")
                self._hold(name, token, fingerprint)
                return Owned(token)
            kind = existing[:1]
            stored_fingerprint = (
                existing[1 : 1 + FINGERPRINT_BYTES]
                if kind == _DONE
                else existing[_HEADER : _HEADER + FINGERPRINT_BYTES]
            )
            if stored_fingerprint != fingerprint:
                return Reused()
            if kind == _DONE:
                return Stored(existing[1 + FINGERPRINT_BYTES :])
            seen = existing
            held = self._held.get(name)
            if held is not None:
                await held.done.wait()  # held by this process: woken when it ends
                continue
            await asyncio.sleep(delay)
            delay = min(POLL_MAX, delay * 2)

    async def lookup(self, key: str, fingerprint: bytes) -> Stored | Reused | None:
        """See :meth:`DedupeStore.lookup`."""
        value = _as_bytes(await _guard(self._client.get(self._key(key)), "lookup"))
        if value is None or value[:1] != _DONE:
            return None
        if value[1 : 1 + FINGERPRINT_BYTES] != fingerprint:
            return Reused()
        return Stored(value[1 + FINGERPRINT_BYTES :])

    async def complete(self, key: str, claim: Owned, outcome: bytes) -> None:
        """See :meth:`DedupeStore.complete`. Logs (and counts) a claim whose lease was lost."""
        name = self._key(key)
        held = self._held.get(name)
        if held is None or held.token != claim.token:
            _log.warning("complete() of a claim this store does not hold; not stored")
            return
        try:
            done = _DONE + held.fingerprint + outcome
            won = await _guard(
                self._complete(keys=[name], args=[_PENDING + claim.token, done, self._ttl_ms]),
                "complete",
            )
        finally:
            self._release(name, claim.token)
        if won != 1:
            self.stats.leases_lost += 1
            _log.warning("a claim's lease expired before its outcome was stored (not stored)")

    async def abandon(self, key: str, claim: Owned) -> None:
        """See :meth:`DedupeStore.abandon`."""
        name = self._key(key)
        try:
            await _guard(self._abandon(keys=[name], args=[_PENDING + claim.token]), "abandon")
        finally:
            self._release(name, claim.token)

    def _hold(self, name: bytes, token: bytes, fingerprint: bytes) -> None:
        previous = self._held.get(name)
        if previous is not None:
            # The previous holder's claim is already gone from Redis (this claim won the key),
            # but its release may not have run yet: it would then find this entry, not its own,
            # and never wake the waiters parked on it. Wake them now; they re-read the key.
            previous.done.set()
        self._held[name] = _Held(token, fingerprint, asyncio.Event())
        if self._renewer is None and not self._closed:
            self._renewer = asyncio.get_running_loop().create_task(
                self._renew_forever(), name="asap.redis.lease-renewer"
            )

    def _release(self, name: bytes, token: bytes) -> None:
        held = self._held.get(name)
        if held is not None and held.token == token:
            del self._held[name]
            held.done.set()

    async def _renew_forever(self) -> None:
        """Extend the lease of every claim this process holds, every third of the lease."""
        while True:
            await asyncio.sleep(self._lease / 3)
            if not self._held:
                continue
            names = list(self._held)
            tokens = [_PENDING + self._held[name].token for name in names]
            try:
                lost = await _guard(
                    self._renew(keys=names, args=[self._lease_ms, *tokens]), "renew"
                )
            except StoreUnavailable as error:
                _log.warning("could not renew %d claim leases: %s", len(names), error)
                continue
            if isinstance(lost, int) and lost > 0:
                # Completed or abandoned in the meantime, or expired (logged when completed).
                _log.debug("%d claims were no longer held when renewed", lost)

    async def ping(self) -> None:
        """Check that Redis answers; raises StoreUnavailable otherwise."""
        await _guard(self._client.ping(), "ping")

    async def aclose(self) -> None:
        """Stop renewing leases and close the client (when owned)."""
        self._closed = True
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self._owns_client:
            await self._client.aclose()


class RedisRateLimiter:
    """Token buckets in Redis, one per principal, shared by every replica.

    Args:
        client: A redis-py asyncio client.
        prefix: Prepended to every key.
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self._prefix = prefix
        self._bucket = client.register_script(_BUCKET)

    async def aclose(self) -> None:
        """Close the client."""
        await self._client.aclose()

    async def acquire(self, principal: str, rate: float, burst: float, cost: int) -> float:
        """Take ``cost`` tokens from ``principal``'s bucket; 0.0, or the seconds to wait."""
        name = self._prefix + "r:" + hashlib.sha256(principal.encode()).hexdigest()
        reply = await _guard(self._bucket(keys=[name], args=[rate, burst, cost]), "rate limit")
        try:
            retry_after = float(_as_bytes(reply) or b"0")
        except ValueError as exc:
            message = "unexpected rate-limit reply from Redis"
            raise StoreUnavailable(message) from exc
        return retry_after if math.isfinite(retry_after) else 0.0
