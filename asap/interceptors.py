"""Interceptors on both ends of a call, one API for every transport.

Server side: :class:`~asap.core.interceptors.Interceptor` (re-exported here), passed to
:class:`~asap.server.Server` as ``interceptors=``. Client side: :class:`ClientInterceptor`, passed
to :class:`~asap.client.Client` or :func:`asap.connect` as ``interceptors=``. Both are continuation
style (``call_next``), run in the calling task (so :mod:`contextvars` such as the current
OpenTelemetry span flow through), and see the same things whatever carries the call.

A client interceptor sees each *attempt*: the client's retries of UNAVAILABLE run the chain again.
It may add request metadata (:meth:`ClientCallInfo.with_metadata`), change the timeout, look at or
replace the request, observe the reply, its trailers and the outcome (``call_next`` raises the
call's :class:`~asap.errors.AsapError`), fail the call by raising, or wrap a stream (subclass
:class:`ForwardingStream`). Health checks (:meth:`Client.check_health
<asap.client.Client.check_health>`) are not intercepted, as they are not on the server.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from google.protobuf.message import Message

from asap._typing import Metadata, MetadataValue
from asap.core.interceptors import CallNext, Interceptor, build_chain, outcome_of
from asap.core.method import MethodSpec
from asap.transports.base import CallOptions, Channel, Reply, ResponseStream
from asap.v1 import manifest_pb2


__all__ = [
    "CallNext",
    "ClientCallInfo",
    "ClientInterceptor",
    "ForwardingStream",
    "InterceptedChannel",
    "Interceptor",
    "StreamNext",
    "UnaryNext",
    "build_chain",
    "outcome_of",
    "transport_name",
]

_TRANSPORT_NAMES = {
    manifest_pb2.TRANSPORT_GRPC: "grpc",
    manifest_pb2.TRANSPORT_WEBSOCKET: "ws",
}


def transport_name(channel: Channel) -> str:
    """``"grpc"`` or ``"ws"``: the name servers use for ``CallContext.transport`` too."""
    return _TRANSPORT_NAMES.get(channel.transport, "unknown")


@dataclass(frozen=True, slots=True)
class ClientCallInfo:
    """One client call attempt as interceptors see it."""

    method: MethodSpec
    """The method."""
    options: CallOptions
    """Timeout and request metadata (credentials included)."""
    transport: str
    """``"grpc"`` or ``"ws"``."""
    target: str
    """The URL the channel connects to ("" when the channel does not say)."""

    def with_metadata(self, *entries: tuple[str, MetadataValue]) -> ClientCallInfo:
        """The same call with ``entries`` appended to its request metadata."""
        options = self.options
        metadata: Metadata = (*options.metadata, *entries)
        return ClientCallInfo(
            self.method, CallOptions(options.timeout, metadata), self.transport, self.target
        )


UnaryNext: TypeAlias = Callable[[ClientCallInfo, Message], Awaitable[Reply]]
"""The rest of a unary chain: returns the reply or raises the call's AsapError."""
StreamNext: TypeAlias = Callable[[ClientCallInfo, Message | AsyncIterable[Message]], ResponseStream]
"""The rest of a streaming chain: starts the call and returns its response stream."""


class ClientInterceptor:
    """A hook around each client call; override either method or both."""

    async def intercept_unary(
        self, info: ClientCallInfo, request: Message, call_next: UnaryNext
    ) -> Reply:
        """Run a unary call (by default, unchanged)."""
        return await call_next(info, request)

    def intercept_stream(
        self,
        info: ClientCallInfo,
        requests: Message | AsyncIterable[Message],
        call_next: StreamNext,
    ) -> ResponseStream:
        """Start a streaming call (by default, unchanged); return its (possibly wrapped) stream."""
        return call_next(info, requests)


class ForwardingStream(ResponseStream):
    """A ResponseStream that forwards to another; subclass it to observe or change a stream."""

    def __init__(self, inner: ResponseStream) -> None:
        self.inner = inner

    async def __anext__(self) -> Message:
        return await anext(self.inner)

    @property
    def trailing_metadata(self) -> Metadata:
        """The inner stream's trailing metadata."""
        return self.inner.trailing_metadata

    async def cancel(self) -> None:
        """Cancel the inner stream."""
        await self.inner.cancel()


class InterceptedChannel(Channel):
    """A Channel whose calls run through client interceptors (the first outermost).

    The chains are built once; closing closes the wrapped channel.
    """

    def __init__(self, channel: Channel, interceptors: Sequence[ClientInterceptor]) -> None:
        self.inner = channel
        self.transport = channel.transport
        target = getattr(channel, "url", "")
        self._target = target if isinstance(target, str) else ""
        unary: UnaryNext = self._unary_end
        stream: StreamNext = self._stream_end
        for interceptor in reversed(interceptors):
            unary = _unary_link(interceptor, unary)
            stream = _stream_link(interceptor, stream)
        self._unary = unary
        self._stream = stream

    def _info(self, method: MethodSpec, options: CallOptions) -> ClientCallInfo:
        return ClientCallInfo(method, options, transport_name(self.inner), self._target)

    async def _unary_end(self, info: ClientCallInfo, request: Message) -> Reply:
        return await self.inner.unary(info.method, request, info.options)

    def _stream_end(
        self, info: ClientCallInfo, requests: Message | AsyncIterable[Message]
    ) -> ResponseStream:
        return self.inner.open_stream(info.method, requests, info.options)

    async def unary(self, method: MethodSpec, request: Message, options: CallOptions) -> Reply:
        """See :meth:`Channel.unary`."""
        return await self._unary(self._info(method, options), request)

    def open_stream(
        self,
        method: MethodSpec,
        requests: Message | AsyncIterable[Message],
        options: CallOptions,
    ) -> ResponseStream:
        """See :meth:`Channel.open_stream`."""
        return self._stream(self._info(method, options), requests)

    async def close(self) -> None:
        """Close the wrapped channel."""
        await self.inner.close()


def _unary_link(interceptor: ClientInterceptor, call_next: UnaryNext) -> UnaryNext:
    if type(interceptor).intercept_unary is ClientInterceptor.intercept_unary:
        return call_next
    intercept = interceptor.intercept_unary

    async def link(info: ClientCallInfo, request: Message) -> Reply:
        return await intercept(info, request, call_next)

    return link


def _stream_link(interceptor: ClientInterceptor, call_next: StreamNext) -> StreamNext:
    if type(interceptor).intercept_stream is ClientInterceptor.intercept_stream:
        return call_next
    intercept = interceptor.intercept_stream

    def link(info: ClientCallInfo, requests: Message | AsyncIterable[Message]) -> ResponseStream:
        return intercept(info, requests, call_next)

    return link
