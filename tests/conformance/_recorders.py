"""Interceptors that record what they see of each call, for the interceptor conformance tests.

Events are tuples of strings, so a test compares whole sequences: the same call must produce the
same sequence on every transport.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from google.protobuf.message import Message

from asap import AsapError, CallContext
from asap.core.service import ServerCall
from asap.errors import PermissionDenied
from asap.interceptors import (
    CallNext,
    ClientCallInfo,
    ClientInterceptor,
    ForwardingStream,
    Interceptor,
    StreamNext,
    UnaryNext,
    outcome_of,
)
from asap.transports.base import Reply, ResponseStream


Event = tuple[str, ...]

ADDED_KEY = "x-added-by-client"
"""Metadata the recording client interceptor adds to every call."""
TRAILER_KEY = "x-added-by-server"
"""A trailer the recording server interceptor adds to every call."""
REJECT_KEY = "x-reject"
"""Request metadata that makes :class:`Rejecter` refuse the call."""


def _name(message: Message) -> str:
    return type(message).__name__


class _RecordingCall:
    def __init__(self, inner: ServerCall, events: list[Event]) -> None:
        self.inner = inner
        self.events = events

    async def read(self) -> Message | None:
        message = await self.inner.read()
        self.events.append(("in", "end" if message is None else _name(message)))
        return message

    async def write(self, message: Message) -> None:
        self.events.append(("out", _name(message)))
        await self.inner.write(message)


class ServerRecorder(Interceptor):
    """Records start (method, deadline set?, the client's added metadata), messages and the end."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def intercept(self, ctx: CallContext, call: ServerCall, call_next: CallNext) -> None:
        added = ctx.metadata_value(ADDED_KEY)
        deadline = "deadline" if ctx.deadline is not None else "no deadline"
        self.events.append(("start", ctx.method.name, deadline, str(added)))
        ctx.set_trailing_metadata((TRAILER_KEY, "yes"))
        try:
            await call_next(ctx, _RecordingCall(call, self.events))
        except BaseException as exc:
            self.events.append(("end", outcome_of(ctx, exc).code.name))
            raise
        self.events.append(("end", "OK"))


class Rejecter(Interceptor):
    """Refuses calls that carry :data:`REJECT_KEY` metadata with PermissionDenied."""

    async def on_call(self, ctx: CallContext) -> None:
        """Refuse a marked call."""
        if ctx.metadata_value(REJECT_KEY) is not None:
            message = "rejected by an interceptor"
            raise PermissionDenied(message)


class _RecordingStream(ForwardingStream):
    def __init__(self, inner: ResponseStream, events: list[Event]) -> None:
        super().__init__(inner)
        self.events = events

    async def __anext__(self) -> Message:
        try:
            message = await anext(self.inner)
        except StopAsyncIteration:
            self.events.append(("end", "OK", _trailer(self.inner.trailing_metadata)))
            raise
        except AsapError as error:
            self.events.append(("end", error.code.name))
            raise
        self.events.append(("in", _name(message)))
        return message


class _RecordingRequests:
    def __init__(self, requests: AsyncIterable[Message], events: list[Event]) -> None:
        self.requests = requests
        self.events = events

    async def __aiter__(self) -> AsyncIterator[Message]:
        async for message in self.requests:
            self.events.append(("out", _name(message)))
            yield message


def _trailer(trailers: tuple[tuple[str, str | bytes], ...]) -> str:
    return str(dict(trailers).get(TRAILER_KEY))


class ClientRecorder(ClientInterceptor):
    """Adds :data:`ADDED_KEY` metadata and records start, messages, the end and the trailer."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def intercept_unary(
        self, info: ClientCallInfo, request: Message, call_next: UnaryNext
    ) -> Reply:
        """Record a unary call."""
        self.events.append(("start", info.method.name))
        self.events.append(("out", _name(request)))
        try:
            reply = await call_next(info.with_metadata((ADDED_KEY, "1")), request)
        except AsapError as error:
            self.events.append(("end", error.code.name, _trailer(error.trailing_metadata)))
            raise
        self.events.append(("in", _name(reply.message)))
        self.events.append(("end", "OK", _trailer(reply.trailing_metadata)))
        return reply

    def intercept_stream(
        self,
        info: ClientCallInfo,
        requests: Message | AsyncIterable[Message],
        call_next: StreamNext,
    ) -> ResponseStream:
        """Record a streaming call."""
        self.events.append(("start", info.method.name))
        if isinstance(requests, Message):
            self.events.append(("out", _name(requests)))
        else:
            requests = _RecordingRequests(requests, self.events)
        stream = call_next(info.with_metadata((ADDED_KEY, "1")), requests)
        return _RecordingStream(stream, self.events)
