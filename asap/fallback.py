"""A Channel over several endpoints of one agent that falls back at run time.

Calls go to the first endpoint that works. When the current endpoint is unreachable at the
transport level (:func:`is_transport_failure`: it cannot be connected to, or its connection was
lost), the channel logs why, moves to the next endpoint in preference order and retries the call
there, within what is left of the caller's one deadline. An answer is never a reason to fall back:
UNAVAILABLE raised by a handler, or a bridge close for what this client sent (1008, 1009, …),
goes back to the caller and leaves the endpoint in use. Unary calls carry the same envelope ids on
every attempt, so the agent's dedupe keeps processing exactly-once even when the first attempt did
reach the agent. A failed endpoint is skipped for ``cooldown`` seconds, then tried again, so the
channel returns to the preferred transport once it recovers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import Message

from asap.core.method import MethodSpec
from asap.errors import (
    AsapError,
    ConnectionLost,
    DeadlineExceeded,
    InvalidState,
    ShuttingDown,
    Unavailable,
)
from asap.protocol.frames import CloseCode
from asap.transports.base import CallOptions, Channel, Reply, ResponseStream
from asap.v1 import manifest_pb2


_log = logging.getLogger("asap.client")

ChannelFactory = Callable[[str], Channel]
"""Opens a channel for an endpoint URL (for example :func:`asap.connect.open_channel`)."""


ANSWER_CLOSE_CODES = frozenset(
    {
        CloseCode.PROTOCOL_ERROR,
        CloseCode.INVALID_PAYLOAD,
        CloseCode.POLICY_VIOLATION,
        CloseCode.MESSAGE_TOO_BIG,
    }
)
"""Bridge close codes that answer what this client sent (1002, 1007, 1008, 1009): another
endpoint of the same agent would answer the same, so they never cause a fallback."""


def is_transport_failure(error: AsapError) -> bool:
    """Whether ``error`` says the endpoint is unreachable, rather than that it answered.

    True for UNAVAILABLE raised locally or by the transport library (cannot connect, the
    connection was lost or closed by the server for its own reasons: 1001, 1006, 1011, 1012,
    1013, none), false for a status an ASAP server sent (a handler's ``Unavailable``, a draining
    server's ``ShuttingDown``) and for the close codes in :data:`ANSWER_CLOSE_CODES`.
    """
    if not isinstance(error, Unavailable) or isinstance(error, ShuttingDown) or error.from_peer:
        return False
    return not (isinstance(error, ConnectionLost) and error.close_code in ANSWER_CLOSE_CODES)


@dataclass(slots=True)
class _Endpoint:
    url: str
    channel: Channel | None = None
    failed_until: float = 0.0
    failures: list[str] = field(default_factory=list)


class FallbackChannel(Channel):
    """Try endpoints in order; fall back to the next one when a transport is unreachable.

    Args:
        urls: Endpoint URLs in order of preference (at least one).
        factory: Opens a channel for a URL.
        cooldown: Seconds a failed endpoint is skipped before it is tried again.
        clock: Monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        urls: Sequence[str],
        factory: ChannelFactory,
        *,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            message = "FallbackChannel needs at least one endpoint URL"
            raise ValueError(message)
        self._endpoints = [_Endpoint(url) for url in dict.fromkeys(urls)]
        self._factory = factory
        self._cooldown = cooldown
        self._clock = clock
        self._closed = False

    @property
    def transport(self) -> manifest_pb2.Transport.ValueType:  # type: ignore[override]
        """The transport of the endpoint currently preferred."""
        current = self._candidates()[0]
        if current.channel is None:
            return manifest_pb2.TRANSPORT_UNSPECIFIED
        return current.channel.transport

    @property
    def current_url(self) -> str:
        """The URL calls go to first."""
        return self._candidates()[0].url

    def _candidates(self) -> list[_Endpoint]:
        """Endpoints to try, healthy ones first (each group in preference order)."""
        now = self._clock()
        healthy = [e for e in self._endpoints if e.failed_until <= now]
        cooling = [e for e in self._endpoints if e.failed_until > now]
        return healthy + cooling

    def _channel(self, endpoint: _Endpoint) -> Channel:
        if self._closed:
            message = "the channel is closed"
            raise InvalidState(message)
        if endpoint.channel is None:
            endpoint.channel = self._factory(endpoint.url)
        return endpoint.channel

    def _failed(self, endpoint: _Endpoint, error: Unavailable, following: _Endpoint | None) -> None:
        endpoint.failed_until = self._clock() + self._cooldown
        endpoint.failures.append(str(error))
        if following is not None:
            _log.warning("%s failed (%s); falling back to %s", endpoint.url, error, following.url)

    async def unary(self, method: MethodSpec, request: Message, options: CallOptions) -> Reply:
        """Make the call on the first endpoint that is reachable, all within ``options.timeout``.

        Each attempt after the first gets only the time left of the caller's deadline.

        Raises:
            AsapError: The endpoint's answer; the last endpoint's transport failure; or
                DeadlineExceeded when the deadline passed before the next endpoint was tried.
        """
        loop = asyncio.get_running_loop()
        deadline = None if options.timeout is None else loop.time() + options.timeout
        candidates = self._candidates()
        attempt = options
        for index, endpoint in enumerate(candidates):
            try:
                return await self._channel(endpoint).unary(method, request, attempt)
            except Unavailable as error:
                if not is_transport_failure(error):
                    raise
                following = candidates[index + 1] if index + 1 < len(candidates) else None
                self._failed(endpoint, error, following)
                if following is None:
                    raise
                if deadline is not None:
                    left = deadline - loop.time()
                    if left <= 0:
                        message = (
                            f"the deadline passed before {following.url} could be tried "
                            f"({endpoint.url}: {error.message})"
                        )
                        raise DeadlineExceeded(message) from error
                    attempt = dataclasses.replace(options, timeout=left)
        message = "no endpoint"  # unreachable: the loop returns or raises
        raise InvalidState(message)

    def open_stream(
        self,
        method: MethodSpec,
        requests: Message | AsyncIterable[Message],
        options: CallOptions,
    ) -> ResponseStream:
        """Open the stream on the currently preferred endpoint.

        Streams are not moved between endpoints mid-call (their requests may already be consumed);
        a stream that ends with a transport failure (:func:`is_transport_failure`) marks its
        endpoint failed, so the next stream opens on the next endpoint.
        :meth:`asap.client.DuplexStream.unsettled` lists what to re-send.
        """
        endpoint = self._candidates()[0]
        return _TrackedStream(
            self, endpoint, self._channel(endpoint).open_stream(method, requests, options)
        )

    async def close(self) -> None:
        """Close every channel opened so far; idempotent."""
        self._closed = True
        for endpoint in self._endpoints:
            if endpoint.channel is not None:
                channel, endpoint.channel = endpoint.channel, None
                await channel.close()


class _TrackedStream(ResponseStream):
    """A stream that reports its endpoint as failed when it ends with a transport failure."""

    def __init__(self, owner: FallbackChannel, endpoint: _Endpoint, inner: ResponseStream) -> None:
        self._owner = owner
        self._endpoint = endpoint
        self._inner = inner

    async def __anext__(self) -> Message:
        try:
            return await anext(self._inner)
        except Unavailable as error:
            if is_transport_failure(error):
                self._owner._failed(self._endpoint, error, None)  # noqa: SLF001 - same module
            raise

    @property
    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """Trailing metadata of the inner stream."""
        return self._inner.trailing_metadata

    async def cancel(self) -> None:
        """Cancel the inner stream."""
        await self._inner.cancel()
