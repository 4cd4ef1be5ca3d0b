"""Client: typed AgentService calls over any :class:`~asap.transports.base.Channel`.

Everything a caller relies on (envelope defaults, deadlines, credentials, retries, ack tracking)
is implemented here once, above the transport, so it is the same on gRPC and on the WebSocket
bridge. Build one with :func:`asap.connect` from a URL, or from a channel directly.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias, TypeVar

from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from asap import compat, validation
from asap._typing import Metadata
from asap.core.health import HEALTH_CHECK
from asap.core.method import MethodSpec, method
from asap.errors import AsapError, InvalidArgument, InvalidState, ShuttingDown, Unavailable
from asap.interceptors import ClientInterceptor, InterceptedChannel
from asap.protocol.acks import AckTracker
from asap.transports.base import CallOptions, Channel, Reply, ResponseStream
from asap.v1 import agent_service_pb2, envelope_pb2, manifest_pb2


_log = logging.getLogger("asap.client")

M = TypeVar("M", bound=Message)

TokenSource = str | Callable[[], Awaitable[str]]
"""A bearer token, or a coroutine function returning a current one (called before each call)."""


class NoDeadline(enum.Enum):
    """The type of :data:`NO_DEADLINE`."""

    NO_DEADLINE = "no deadline"


NO_DEADLINE: Final = NoDeadline.NO_DEADLINE
"""Pass as ``timeout=`` for a call without a deadline (``None`` means "the default").

Unary calls default to the client's ``timeout``; ``timeout=NO_DEADLINE`` removes it for one call.
Streaming calls (subscribe, publish, stream) have no deadline unless one is given."""

Timeout: TypeAlias = float | NoDeadline | None
"""A call's ``timeout=``: seconds, :data:`NO_DEADLINE`, or None for the default."""

SEND_BUFFER = 16
"""Envelopes a DuplexStream queues for the transport; :meth:`DuplexStream.send` waits beyond it."""

_SEND = method("Send")
_SEND_BATCH = method("SendBatch")
_SUBSCRIBE = method("Subscribe")
_PUBLISH = method("Publish")
_STREAM = method("Stream")
_GET_MANIFEST = method("GetManifest")

_MAX_CACHED_OPTIONS = 16
"""Timeouts whose CallOptions a client keeps (then it starts over)."""


MAX_DRAIN_RETRIES = 8
"""Retries of a unary call refused by draining servers (ShuttingDown), on top of the retry budget."""
MAX_DRAIN_BACKOFF = 0.25
"""Upper bound of the delay before such a retry, in seconds (another server is usually ready)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of unary calls that failed with UNAVAILABLE (exponential backoff, full jitter).

    Retrying is safe because envelope ids are fixed before the first attempt and the server
    deduplicates them. A refusal by a draining server (ShuttingDown) is retried on a fresh
    connection or the next endpoint without spending these attempts (at most
    :data:`MAX_DRAIN_RETRIES` times).
    """

    max_attempts: int = 4
    """Attempts in all, the first included; 1 disables retries."""
    initial_backoff: float = 0.05
    """Upper bound of the first delay, in seconds."""
    max_backoff: float = 2.0
    """Upper bound of any delay."""
    multiplier: float = 2.0
    """Growth of the bound per attempt."""

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The delay before retry number ``attempt`` (1-based)."""
        try:
            growth = self.multiplier ** (attempt - 1)
        except OverflowError:  # float ** int raises instead of returning inf (attempt > ~1000)
            growth = float("inf")
        bound = min(self.max_backoff, self.initial_backoff * growth)
        return rng.uniform(0, bound)


_METADATA_KEY_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyz_.-")
_METADATA_TEXT_CHARS = frozenset(chr(c) for c in range(0x20, 0x7F))


def check_metadata(metadata: Metadata) -> None:
    """Refuse request metadata that a gRPC peer could not send, the same way on every transport.

    gRPC's rules (PROTOCOL-HTTP2 "Custom-Metadata"): keys are non-empty lowercase ``[0-9a-z_.-]`` and
    do not start with the reserved ``grpc-``; keys ending in ``-bin`` take bytes, all others
    printable-ASCII str. Checked here, before any transport sees the call, because grpc.aio fails
    such metadata with its own exception type or silently drops or converts it, while the bridge
    would fail the call on the server.

    Raises:
        ValueError: An entry breaks these rules.
    """
    for key, value in metadata:
        if not key or not set(key) <= _METADATA_KEY_CHARS or key.startswith("grpc-"):
            message = f"metadata key {key!r} must be lowercase [0-9a-z_.-] and not start with grpc-"
            raise ValueError(message)
        if key.endswith("-bin"):
            if not isinstance(value, bytes):
                message = f"metadata key {key!r} ends in -bin and takes bytes"
                raise ValueError(message)
        elif not isinstance(value, str) or not set(value) <= _METADATA_TEXT_CHARS:
            message = f"metadata key {key!r} takes a printable ASCII str (use a -bin key for bytes)"
            raise ValueError(message)


class Client:
    """Typed calls to one agent.

    Deadlines: every method takes ``timeout=`` (seconds). A unary call (send, send_batch,
    get_manifest, check_health, request_task) without one gets the client's ``timeout``; a
    streaming call (subscribe, publish, stream) without one has no deadline, so a long-lived
    stream is not cut off by the unary default. ``timeout=NO_DEADLINE`` means no deadline for
    one unary call.

    Args:
        channel: The transport connection (closed by :meth:`close`).
        sender: Default ``Envelope.sender`` for envelopes that have none.
        timeout: Default deadline of unary calls, in seconds (None or :data:`NO_DEADLINE`: none).
        token: Bearer token or token provider sent as ``authorization`` metadata.
        metadata: Metadata sent with every call.
        retry: Retry policy for unary calls.
        interceptors: Run around every call attempt, the first outermost
            (:class:`~asap.interceptors.ClientInterceptor`).
    """

    def __init__(
        self,
        channel: Channel,
        *,
        sender: str = "",
        timeout: float | NoDeadline | None = 30.0,
        token: TokenSource | None = None,
        metadata: Metadata = (),
        retry: RetryPolicy | None = None,
        interceptors: Sequence[ClientInterceptor] = (),
    ) -> None:
        self.channel = channel
        self._calls: Channel = (
            InterceptedChannel(channel, interceptors) if interceptors else channel
        )
        self.sender = sender
        self.timeout: float | None = None if timeout is NO_DEADLINE else timeout
        """The default deadline of unary calls, in seconds (None: none)."""
        self._token = token
        check_metadata(metadata)
        self._metadata = metadata
        self._retry_policy = retry or RetryPolicy()
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography
        self._closed = False
        self._plain_options: dict[float | None, CallOptions] = {}
        """The CallOptions of calls that add no metadata, by timeout (a constant token included);
        at most :data:`_MAX_CACHED_OPTIONS`."""

    # -- plumbing ---------------------------------------------------------------------------

    def _cached_options(
        self, timeout: Timeout, metadata: Metadata, *, streaming: bool = False
    ) -> CallOptions | None:
        """The call's options without awaiting, or None when a token provider must be asked.

        Calls that add no metadata (nearly all) share one CallOptions per timeout: building and
        checking it was a visible part of each call's cost.

        Raises:
            InvalidState: The client is closed.
            ValueError: Malformed metadata (see :func:`check_metadata`).
        """
        if self._closed:
            message = "the client is closed"
            raise InvalidState(message)
        token = self._token
        if token is not None and not isinstance(token, str):
            return None
        seconds = self._timeout_for(timeout, streaming=streaming)
        if metadata:
            check_metadata(metadata)
            return CallOptions(timeout=seconds, metadata=self._entries(token, metadata))
        options = self._plain_options.get(seconds)
        if options is None:
            options = CallOptions(timeout=seconds, metadata=self._entries(token, ()))
            if len(self._plain_options) >= _MAX_CACHED_OPTIONS:
                self._plain_options.clear()
            self._plain_options[seconds] = options
        return options

    async def _options(
        self, timeout: Timeout, metadata: Metadata, *, streaming: bool = False
    ) -> CallOptions:
        options = self._cached_options(timeout, metadata, streaming=streaming)
        return options or await self._provided_options(timeout, metadata, streaming=streaming)

    async def _provided_options(
        self, timeout: Timeout, metadata: Metadata, *, streaming: bool = False
    ) -> CallOptions:
        """The options of a call whose token comes from a provider (asked before each call)."""
        if metadata:
            check_metadata(metadata)
        provider = self._token
        token = provider if provider is None or isinstance(provider, str) else await provider()
        seconds = self._timeout_for(timeout, streaming=streaming)
        return CallOptions(timeout=seconds, metadata=self._entries(token, metadata))

    def _timeout_for(self, timeout: Timeout, *, streaming: bool) -> float | None:
        """The call's deadline in seconds: ``timeout``, or the unary default, or none."""
        if timeout is NO_DEADLINE:
            return None
        if timeout is None and not streaming:
            return self.timeout
        return timeout

    def _entries(self, token: str | None, metadata: Metadata) -> Metadata:
        """The call's metadata: ``authorization`` (with a token), the client's, then the call's."""
        entries = self._metadata + metadata if metadata else self._metadata
        if token is None:
            return entries
        authorization = (("authorization", f"Bearer {token}"),)
        check_metadata(authorization)
        return authorization + entries

    def prepare(self, envelope: envelope_pb2.Envelope) -> envelope_pb2.Envelope:
        """Fill the envelope's id, timestamp, version and sender when empty (in place)."""
        if not envelope.sender and self.sender:
            envelope.sender = self.sender
        validation.fill_defaults(envelope, now=time.time())
        return envelope

    async def invoke(
        self,
        name: str,
        request: Message,
        *,
        timeout: Timeout = None,
        metadata: Metadata = (),
    ) -> Reply:
        """Make a unary call by method name, with retries; returns the reply and its trailers."""
        spec = method(name)
        options = self._cached_options(timeout, metadata) or await self._provided_options(
            timeout, metadata
        )
        return await self._unary(spec, request, options)

    async def _unary(self, spec: MethodSpec, request: Message, options: CallOptions) -> Reply:
        """Make a unary call, retrying UNAVAILABLE as the retry policy says."""
        started = time.monotonic()
        try:
            return await self._calls.unary(spec, request, options)
        except Unavailable as error:
            return await self._retry(spec, request, options, error, started)

    async def _retry(
        self,
        spec: MethodSpec,
        request: Message,
        options: CallOptions,
        error: Unavailable,
        started: float,
    ) -> Reply:
        """Retry a unary call whose first attempt (at ``started``) failed with ``error``."""
        deadline = None if options.timeout is None else started + options.timeout
        attempt = 1
        drained = 0
        while True:
            if self._closed:
                # After close() the channel refuses every call: a retry could only turn the
                # call's real error (ConnectionLost) into InvalidState.
                raise error
            if isinstance(error, ShuttingDown) and drained < MAX_DRAIN_RETRIES:
                # The server is draining (a rolling deploy): the channel moves to a fresh
                # connection or the next endpoint. Not the call's fault, so it does not spend the
                # retry budget; bounded, in case every server keeps draining.
                drained += 1
                delay = min(MAX_DRAIN_BACKOFF, self._retry_policy.delay(drained, self._rng))
            elif attempt >= self._retry_policy.max_attempts:
                raise error
            else:
                delay = self._retry_policy.delay(attempt, self._rng)
                attempt += 1
            if deadline is not None:
                remaining = deadline - time.monotonic() - delay
                if remaining <= 0:
                    raise error
                options = CallOptions(timeout=remaining, metadata=options.metadata)
            _log.info("%s failed (%s); retry in %.3fs", spec.name, error, delay)
            await asyncio.sleep(delay)
            try:
                return await self._calls.unary(spec, request, options)
            except Unavailable as again:
                error = again

    # -- the RPCs ---------------------------------------------------------------------------

    def open_stream(
        self,
        spec: MethodSpec,
        requests: Message | AsyncIterable[Message],
        options: CallOptions,
    ) -> ResponseStream:
        """Start a streaming call through the client's interceptors (the typed methods use it)."""
        return self._calls.open_stream(spec, requests, options)

    async def send(
        self,
        envelope: envelope_pb2.Envelope,
        *,
        timeout: Timeout = None,
        metadata: Metadata = (),
    ) -> agent_service_pb2.SendResponse:
        """Deliver one envelope and return the agent's answer.

        Raises:
            AsapError: the subclass the agent (or a limit) raised, with its details.
        """
        request = agent_service_pb2.SendRequest()
        request.envelope.CopyFrom(self.prepare(envelope))  # cheaper than SendRequest(envelope=)
        options = self._cached_options(timeout, metadata) or await self._provided_options(
            timeout, metadata
        )
        started = time.monotonic()
        try:  # the first attempt inline: one coroutine less on every call's path
            reply = await self._calls.unary(_SEND, request, options)
        except Unavailable as error:
            reply = await self._retry(_SEND, request, options, error, started)
        return _expect(reply.message, agent_service_pb2.SendResponse)

    async def send_batch(
        self,
        envelopes: Iterable[envelope_pb2.Envelope],
        *,
        timeout: Timeout = None,
        metadata: Metadata = (),
    ) -> list[agent_service_pb2.DeliveryResult]:
        """Deliver many envelopes in one call; one result (answer or error) per envelope, in order."""
        request = agent_service_pb2.SendBatchRequest(
            envelopes=[self.prepare(envelope) for envelope in envelopes]
        )
        reply = await self.invoke("SendBatch", request, timeout=timeout, metadata=metadata)
        return list(_expect(reply.message, agent_service_pb2.SendBatchResponse).results)

    async def get_manifest(
        self, *, timeout: Timeout = None, metadata: Metadata = ()
    ) -> manifest_pb2.Manifest:
        """Return the agent's manifest."""
        reply = await self.invoke(
            "GetManifest",
            agent_service_pb2.GetManifestRequest(),
            timeout=timeout,
            metadata=metadata,
        )
        return _expect(reply.message, agent_service_pb2.GetManifestResponse).manifest

    async def check_supported(
        self, envelope: envelope_pb2.Envelope, *, timeout: float | None = None
    ) -> manifest_pb2.Manifest:
        """Fetch the agent's manifest and fail locally if it says the agent cannot take ``envelope``.

        See :func:`asap.compat.check_supported`: an agent too old for the payload kind raises
        :class:`~asap.errors.UnknownPayload` here, before anything is sent.

        Returns:
            The manifest, for callers that check several envelopes.
        """
        manifest = await self.get_manifest(timeout=timeout)
        compat.check_supported(manifest, envelope)
        return manifest

    async def subscribe(
        self,
        envelope: envelope_pb2.Envelope,
        *,
        timeout: Timeout = None,
        metadata: Metadata = (),
    ) -> Subscription:
        """Deliver an envelope and iterate over everything the agent produces for it.

        No deadline unless ``timeout`` is given (the client's default is for unary calls).
        """
        request = agent_service_pb2.SubscribeRequest(envelope=self.prepare(envelope))
        options = await self._options(timeout, metadata, streaming=True)
        return Subscription(self._calls.open_stream(_SUBSCRIBE, request, options))

    async def publish(
        self,
        envelopes: AsyncIterable[envelope_pb2.Envelope] | Iterable[envelope_pb2.Envelope],
        *,
        timeout: Timeout = None,
        metadata: Metadata = (),
    ) -> list[agent_service_pb2.DeliveryResult]:
        """Stream envelopes to the agent; one result per envelope, in order.

        No deadline unless ``timeout`` is given (the client's default is for unary calls). The
        server takes at most ``Limits.max_batch_envelopes`` envelopes per call (``TooManyEnvelopes``
        past it; the outcomes of those that ran are kept, so re-publishing them is safe).
        """
        options = await self._options(timeout, metadata, streaming=True)

        async def requests() -> AsyncIterator[Message]:
            if isinstance(envelopes, AsyncIterable):
                async for envelope in envelopes:
                    yield agent_service_pb2.PublishRequest(envelope=self.prepare(envelope))
            else:
                for envelope in envelopes:
                    yield agent_service_pb2.PublishRequest(envelope=self.prepare(envelope))

        stream = self._calls.open_stream(_PUBLISH, requests(), options)
        try:
            response = await anext(stream)
        finally:
            await stream.cancel()
        return list(_expect(response, agent_service_pb2.PublishResponse).results)

    async def stream(self, *, timeout: Timeout = None, metadata: Metadata = ()) -> DuplexStream:
        """Open a duplex stream: send envelopes any time, receive acks, updates and answers.

        No deadline unless ``timeout`` is given (the client's default is for unary calls).
        """
        options = await self._options(timeout, metadata, streaming=True)
        return DuplexStream(self, options)

    async def check_health(self, service: str = "", *, timeout: Timeout = None) -> bool:
        """Ask the standard health service whether the agent serves (False while it drains).

        ``service`` is ``""`` for the whole server or ``"asap.v1.AgentService"``.

        Raises:
            NotFound: the server does not report on ``service``.
        """
        options = await self._options(timeout, ())
        request = health_pb2.HealthCheckRequest(service=service)
        reply = await self.channel.unary(HEALTH_CHECK, request, options)
        response = _expect(reply.message, health_pb2.HealthCheckResponse)
        return response.status == health_pb2.HealthCheckResponse.SERVING

    # -- conveniences -----------------------------------------------------------------------

    async def request_task(
        self,
        recipient: str,
        skill_id: str,
        task_input: dict[str, object] | None = None,
        *,
        timeout: Timeout = None,
    ) -> envelope_pb2.Envelope:
        """Ask ``recipient`` to run a skill and return the answer envelope (a TaskResponse)."""
        envelope = task_envelope(recipient, skill_id, task_input)
        response = await self.send(envelope, timeout=timeout)
        return response.envelope

    async def close(self) -> None:
        """Close the channel; idempotent."""
        if not self._closed:
            self._closed = True
            await self.channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def task_envelope(
    recipient: str, skill_id: str, task_input: dict[str, object] | None = None
) -> envelope_pb2.Envelope:
    """Build an envelope carrying a TaskRequest for ``skill_id``."""
    envelope = envelope_pb2.Envelope(recipient=recipient)
    envelope.task_request.skill_id = skill_id
    if task_input:
        # Struct.update sets the fields in C; ParseDict walks the JSON machinery for the same result.
        envelope.task_request.input.update(task_input)  # type: ignore[arg-type]  # JSON-like values
    return envelope


def _expect(message: Message, kind: type[M]) -> M:
    if not isinstance(message, kind):
        text = f"expected {kind.DESCRIPTOR.name}, got {message.DESCRIPTOR.name}"
        raise InvalidArgument(text)
    return message


class Subscription:
    """The envelopes an agent produces for a subscribed envelope, in order; the last is the answer."""

    def __init__(self, stream: ResponseStream) -> None:
        self._stream = stream

    def __aiter__(self) -> AsyncIterator[envelope_pb2.Envelope]:
        return self

    async def __anext__(self) -> envelope_pb2.Envelope:
        return _expect(await anext(self._stream), agent_service_pb2.SubscribeResponse).envelope

    @property
    def trailing_metadata(self) -> Metadata:
        """Trailing metadata, once the subscription ended."""
        return self._stream.trailing_metadata

    async def cancel(self) -> None:
        """Stop the subscription; the agent's handler is cancelled."""
        await self._stream.cancel()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cancel()


class _RequestQueue:
    """The bounded FIFO between :meth:`DuplexStream.send` and the transport's request iterator.

    ``put`` waits while ``capacity`` requests are queued; after :meth:`close` the queued ones are
    still taken, then ``get`` returns None, and ``put`` fails.
    """

    __slots__ = ("_capacity", "_closed", "_getter", "_items", "_putters")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: deque[Message] = deque()
        self._closed = False
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()

    async def put(self, item: Message) -> None:
        """Queue ``item``, waiting for room.

        Raises:
            InvalidState: The queue was closed (the stream is done sending or over).
        """
        while len(self._items) >= self._capacity and not self._closed:
            room = asyncio.get_running_loop().create_future()
            self._putters.append(room)
            try:
                await room
            finally:
                if room in self._putters:
                    self._putters.remove(room)
        if self._closed:
            message = "the stream takes no more envelopes"
            raise InvalidState(message)
        self._items.append(item)
        _wake(self._getter)

    async def get(self) -> Message | None:
        """The next request, or None once closed and empty."""
        while not self._items:
            if self._closed:
                return None
            ready = self._getter = asyncio.get_running_loop().create_future()
            try:
                await ready
            finally:
                self._getter = None
        item = self._items.popleft()
        if self._putters:
            _wake(self._putters.popleft())
        return item

    def close(self) -> None:
        """Take no more requests; wake everyone waiting."""
        self._closed = True
        _wake(self._getter)
        while self._putters:
            _wake(self._putters.popleft())


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class DuplexStream:
    """A duplex Stream call: :meth:`send` envelopes; iterate to receive what the agent pushes.

    Envelopes sent with ``requires_ack`` are tracked until their PROCESSED or REJECTED ack (or
    error) arrives; :meth:`unsettled` lists the others, which a caller re-sends on a new stream
    after a connection loss (the agent's dedupe keeps that exactly-once).

    At most :data:`SEND_BUFFER` envelopes wait for the transport; beyond that :meth:`send` waits,
    so a server (or network) that takes requests slower than they are sent slows the sender.
    """

    def __init__(self, client: Client, options: CallOptions) -> None:
        self._client = client
        self._outbox = _RequestQueue(SEND_BUFFER)
        self._acks = AckTracker()
        self._stream = client.open_stream(_STREAM, self._requests(), options)
        self._done_sending = False

    async def _requests(self) -> AsyncIterator[Message]:
        try:
            while (item := await self._outbox.get()) is not None:
                yield item
        finally:
            # The transport stopped taking requests (the call is over): release waiting senders.
            self._outbox.close()

    async def send(self, envelope: envelope_pb2.Envelope) -> envelope_pb2.Envelope:
        """Queue an envelope for sending (filled with defaults) and return it.

        Waits while :data:`SEND_BUFFER` envelopes are queued and the transport takes no more.

        Raises:
            InvalidState: After :meth:`done_sending` or :meth:`cancel`, or once the call is over.
        """
        if self._done_sending:
            message = "done_sending() was called on this stream"
            raise InvalidState(message)
        request = agent_service_pb2.StreamRequest()
        request.envelope.CopyFrom(self._client.prepare(envelope))
        await self._outbox.put(request)
        self._acks.sent(envelope)
        return envelope

    async def done_sending(self) -> None:
        """Half-close: no more envelopes; the agent finishes what it has, then ends the stream."""
        self._end_requests()

    def _end_requests(self) -> None:
        """End the request iterator once the queued requests are taken (idempotent).

        Also called when the call is over: the transport consumes the request iterator in a task
        of its own (grpc.aio does), which would otherwise wait on the outbox forever.
        """
        self._done_sending = True
        self._outbox.close()

    def __aiter__(self) -> AsyncIterator[agent_service_pb2.StreamResponse]:
        return self

    async def __anext__(self) -> agent_service_pb2.StreamResponse:
        try:
            item = _expect(await anext(self._stream), agent_service_pb2.StreamResponse)
        except (StopAsyncIteration, AsapError):
            self._end_requests()  # the call is over
            raise
        if item.HasField("envelope"):
            self._acks.received(item.envelope)
        elif item.HasField("error"):
            self._acks.settle(item.error.envelope_id)
        return item

    def unsettled(self) -> Sequence[envelope_pb2.Envelope]:
        """Envelopes sent with requires_ack whose final ack has not arrived, in send order."""
        return self._acks.pending()

    async def cancel(self) -> None:
        """Abandon the stream."""
        await self._stream.cancel()
        self._end_requests()

    async def __aenter__(self) -> DuplexStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cancel()


class RefreshingToken:
    """A token provider that fetches a token with its lifetime and refreshes it before it expires.

    Pass an instance as ``token=`` to :class:`Client` or :func:`asap.connect`. Concurrent callers
    share one refresh.

    Args:
        fetch: Returns ``(token, seconds_until_expiry)``.
        margin: Refresh this many seconds before expiry.
        clock: Monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[tuple[str, float]]],
        *,
        margin: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._margin = margin
        self._clock = clock
        self._token = ""
        self._refresh_at = float("-inf")
        self._lock = asyncio.Lock()

    async def __call__(self) -> str:
        """Return a token that is valid for at least ``margin`` more seconds."""
        if self._clock() < self._refresh_at:
            return self._token
        async with self._lock:
            if self._clock() >= self._refresh_at:
                token, lifetime = await self._fetch()
                self._token = token
                self._refresh_at = self._clock() + max(0.0, lifetime - self._margin)
        return self._token
