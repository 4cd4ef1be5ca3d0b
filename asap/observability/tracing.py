"""OpenTelemetry tracing for ASAP servers and clients (``pip install 'asap-protocol[otel]'``).

Usage (the application configures the SDK; this module needs only ``opentelemetry-api``)::

    tracing = Tracing()                      # the global TracerProvider and propagator
    server = Server(agent, interceptors=[tracing.server])
    client = connect(url, interceptors=[tracing.client])

Spans follow the OpenTelemetry RPC semantic conventions:

- one SERVER span per call and one CLIENT span per call attempt, named
  ``asap.v1.AgentService/<Method>``;
- ``rpc.system`` is ``"asap"`` on both transports: the same service with the same semantics, so one
  query finds every call; ``asap.transport`` says which carried it (``grpc`` or ``ws``);
- ``rpc.service`` ``asap.v1.AgentService``, ``rpc.method`` the method name;
- ``rpc.asap.status_code``: the status code number (ASAP's codes are gRPC's, on both transports),
  plus ``error.type`` (the code name) when it is not OK;
- the peer: ``network.peer.address``/``network.peer.port`` on the server, ``server.address``/
  ``server.port`` on the client;
- span status ERROR on the client for every code but OK; on the server for UNKNOWN,
  DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and DATA_LOSS (the caller's own
  mistakes are not server errors), as the conventions say for gRPC.

Context propagation: the client injects W3C ``traceparent`` / ``tracestate`` (and ``baggage``, with
the default global propagator) into the call's metadata; the server extracts them, so both
transports carry the trace the same way. The server span is current while the handler runs, so a
handler's own calls through a client with ``tracing.client`` continue the trace (contextvars).

``Envelope.trace_id``: the client interceptor fills an empty ``trace_id`` of every envelope it
sends with the trace id of the call's span (32 lowercase hex digits, the W3C trace-id), and the
server copies the request's ``trace_id`` into its answers, so the envelopes of one piece of work
carry the id of its trace. A ``trace_id`` the caller set itself is kept, and the server span
records it as ``asap.envelope.trace_id`` when it is not the span's own trace id.

Sampling is the tracer provider's (head sampling with ``ParentBased`` follows the caller's
decision); a span that is not sampled costs only the context propagation here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from urllib.parse import urlsplit

from google.protobuf.message import Message

from asap.core.context import CallContext
from asap.core.interceptors import CallNext, Interceptor, outcome_of
from asap.core.method import METHODS, SERVICE_NAME
from asap.core.service import ServerCall, nowait_writer, read_wait_probe
from asap.errors import AsapError, Code
from asap.interceptors import (
    ClientCallInfo,
    ClientInterceptor,
    ForwardingStream,
    StreamNext,
    UnaryNext,
)
from asap.transports.base import Reply, ResponseStream
from asap.v1 import envelope_pb2


try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without the extra
    message = (
        "asap.observability.tracing needs opentelemetry-api: pip install 'asap-protocol[otel]'"
    )
    raise ImportError(message) from exc


__all__ = ["RPC_SYSTEM", "Tracing", "current_trace_id"]

RPC_SYSTEM = "asap"
"""The ``rpc.system`` of every ASAP span, whichever transport carried the call."""

_SERVER_ERRORS = frozenset(
    {
        Code.UNKNOWN,
        Code.DEADLINE_EXCEEDED,
        Code.UNIMPLEMENTED,
        Code.INTERNAL,
        Code.UNAVAILABLE,
        Code.DATA_LOSS,
    }
)
"""Codes that mark a server span as failed (semantic conventions for gRPC servers)."""

Attributes = dict[str, str | int]

_PEER_CACHE = 1024
"""Peers (server) and targets (client) whose parsed attributes are kept; the cache then restarts."""


def _split_peer(peer: str) -> tuple[str, int | None]:
    """``ipv4:1.2.3.4:5`` / ``ipv6:[::1]:5`` (gRPC notation, both transports) → host and port."""
    address = peer
    for prefix in ("ipv4:", "ipv6:"):
        address = address.removeprefix(prefix)
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address, None
    return host.strip("[]").replace("%5B", "").replace("%5D", ""), int(port)


def _first_envelope(message: Message) -> envelope_pb2.Envelope | None:
    envelope = getattr(message, "envelope", None)
    if isinstance(envelope, envelope_pb2.Envelope):
        return envelope
    envelopes = getattr(message, "envelopes", None)
    if envelopes:
        first = envelopes[0]
        return first if isinstance(first, envelope_pb2.Envelope) else None
    return None


def _stamp(message: Message, trace_id: str) -> None:
    """Fill the empty ``trace_id`` of the envelope(s) a request carries."""
    envelope = getattr(message, "envelope", None)
    if isinstance(envelope, envelope_pb2.Envelope):
        if not envelope.trace_id:
            envelope.trace_id = trace_id
        return
    for each in getattr(message, "envelopes", ()):
        if isinstance(each, envelope_pb2.Envelope) and not each.trace_id:
            each.trace_id = trace_id


def _finish(span: Span, code: Code, *, server: bool) -> None:
    span.set_attribute("rpc.asap.status_code", int(code))
    if code is not Code.OK:
        span.set_attribute("error.type", code.name)
        if not server or code in _SERVER_ERRORS:
            span.set_status(Status(StatusCode.ERROR, code.name))


class _TracedServerCall:
    """Records the first request's envelope trace id on the span when it is not the span's own."""

    __slots__ = ("inner", "inner_read_would_wait", "inner_try_write", "span", "trace_id", "traced")

    def __init__(self, inner: ServerCall, span: Span, trace_id: str) -> None:
        self.inner = inner
        self.inner_try_write = nowait_writer(inner)
        self.inner_read_would_wait = read_wait_probe(inner)
        self.span = span
        self.trace_id = trace_id
        self.traced = False

    async def read(self) -> Message | None:
        message = await self.inner.read()
        if not self.traced and message is not None:
            self.traced = True
            envelope = _first_envelope(message)
            if envelope is not None and envelope.trace_id and envelope.trace_id != self.trace_id:
                self.span.set_attribute("asap.envelope.trace_id", envelope.trace_id)
        return message

    async def write(self, message: Message) -> None:
        await self.inner.write(message)

    def read_would_wait(self) -> bool:
        inner = self.inner_read_would_wait
        return inner is not None and inner()

    def try_write(self, message: Message) -> bool:
        inner = self.inner_try_write
        return inner is not None and inner(message)


class _ServerTracing(Interceptor):
    eager_safe = True
    """Nothing here needs a task: the span's context is a contextvar, and an eager call that
    suspends goes on in a task of the same Context (asap.core.tasks.start_eagerly), so the
    token is detached where it was attached."""

    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing
        self._names = {spec.name: f"{SERVICE_NAME}/{spec.name}" for spec in METHODS.values()}
        self._peers: dict[str, tuple[str, int | None]] = {}

    def _peer(self, peer: str) -> tuple[str, int | None]:
        split = self._peers.get(peer)
        if split is None:
            if len(self._peers) >= _PEER_CACHE:
                self._peers.clear()
            split = self._peers[peer] = _split_peer(peer)
        return split

    async def intercept(self, ctx: CallContext, call: ServerCall, call_next: CallNext) -> None:
        tracing = self._tracing
        propagator, fields = tracing.propagation()
        carrier = {
            key: value for key, value in ctx.metadata if key in fields and isinstance(value, str)
        }
        parent = propagator.extract(carrier) if carrier else None
        host, port = self._peer(ctx.peer)
        method = ctx.method.name
        attributes: Attributes = {
            "rpc.system": RPC_SYSTEM,
            "rpc.service": SERVICE_NAME,
            "rpc.method": method,
            "asap.transport": ctx.transport,
            "network.peer.address": host,
        }
        if port is not None:
            attributes["network.peer.port"] = port
        span = tracing.tracer.start_span(
            self._names.get(method) or f"{SERVICE_NAME}/{method}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        if not span.is_recording():  # not sampled: only the context travels on
            try:
                await call_next(ctx, call)
            finally:
                otel_context.detach(token)
            return
        trace_id = trace.format_trace_id(span.get_span_context().trace_id)
        try:
            await call_next(ctx, _TracedServerCall(call, span, trace_id))
        except BaseException as exc:
            _finish(span, outcome_of(ctx, exc).code, server=True)
            raise
        else:
            _finish(span, Code.OK, server=True)
        finally:
            otel_context.detach(token)
            span.end()


class _StampedRequests:
    """A client's request iterable that stamps each envelope with the trace id."""

    def __init__(self, requests: AsyncIterable[Message], trace_id: str) -> None:
        self._requests = requests
        self._trace_id = trace_id

    async def __aiter__(self) -> AsyncIterator[Message]:
        async for message in self._requests:
            _stamp(message, self._trace_id)
            yield message


class _TracedStream(ForwardingStream):
    """A client stream whose span ends with the stream (for client streaming: its response)."""

    def __init__(self, inner: ResponseStream, span: Span, *, single: bool) -> None:
        super().__init__(inner)
        self._span: Span | None = span
        self._single = single

    def _end(self, code: Code) -> None:
        span, self._span = self._span, None
        if span is not None:
            if span.is_recording():
                _finish(span, code, server=False)
            span.end()

    async def __anext__(self) -> Message:
        try:
            message = await anext(self.inner)
        except StopAsyncIteration:
            self._end(Code.OK)
            raise
        except AsapError as error:
            self._end(error.code)
            raise
        except asyncio.CancelledError:
            self._end(Code.CANCELLED)
            raise
        if self._single:
            self._end(Code.OK)
        return message

    async def cancel(self) -> None:
        self._end(Code.CANCELLED)
        await self.inner.cancel()


class _ClientTracing(ClientInterceptor):
    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing
        self._targets: dict[tuple[str, str], Attributes] = {}

    def _attributes(self, info: ClientCallInfo) -> Attributes:
        key = (info.transport, info.target)
        base = self._targets.get(key)
        if base is None:
            base = {"rpc.system": RPC_SYSTEM, "rpc.service": SERVICE_NAME}
            base["asap.transport"] = info.transport
            if info.target:
                parts = urlsplit(info.target)
                if parts.hostname:
                    base["server.address"] = parts.hostname
                if parts.port is not None:
                    base["server.port"] = parts.port
            if len(self._targets) >= _PEER_CACHE:
                self._targets.clear()
            self._targets[key] = base
        return {**base, "rpc.method": info.method.name}

    def _start(self, info: ClientCallInfo) -> Span:
        return self._tracing.tracer.start_span(
            f"{SERVICE_NAME}/{info.method.name}",
            kind=SpanKind.CLIENT,
            attributes=self._attributes(info),
            record_exception=False,
            set_status_on_exception=False,
        )

    def _propagate(self, info: ClientCallInfo, context: otel_context.Context) -> ClientCallInfo:
        carrier: dict[str, str] = {}
        self._tracing.propagation()[0].inject(carrier, context=context)
        return info.with_metadata(*carrier.items()) if carrier else info

    async def intercept_unary(
        self, info: ClientCallInfo, request: Message, call_next: UnaryNext
    ) -> Reply:
        span = self._start(info)
        _stamp(request, trace.format_trace_id(span.get_span_context().trace_id))
        context = trace.set_span_in_context(span)
        token = otel_context.attach(context)
        if not span.is_recording():  # not sampled: only the context travels on
            try:
                return await call_next(self._propagate(info, context), request)
            finally:
                otel_context.detach(token)
        try:
            reply = await call_next(self._propagate(info, context), request)
        except AsapError as error:
            _finish(span, error.code, server=False)
            raise
        except asyncio.CancelledError:
            _finish(span, Code.CANCELLED, server=False)
            raise
        else:
            _finish(span, Code.OK, server=False)
            return reply
        finally:
            otel_context.detach(token)
            span.end()

    def intercept_stream(
        self,
        info: ClientCallInfo,
        requests: Message | AsyncIterable[Message],
        call_next: StreamNext,
    ) -> ResponseStream:
        span = self._start(info)
        trace_id = trace.format_trace_id(span.get_span_context().trace_id)
        if isinstance(requests, Message):
            _stamp(requests, trace_id)
        else:
            requests = _StampedRequests(requests, trace_id)
        # The transport may start tasks for the call (its request pump): they copy the current
        # context, which is the span's while the call is opened.
        context = trace.set_span_in_context(span)
        token = otel_context.attach(context)
        try:
            stream = call_next(self._propagate(info, context), requests)
        except BaseException:
            span.end()
            raise
        finally:
            otel_context.detach(token)
        return _TracedStream(stream, span, single=not info.method.server_streaming)


class Tracing:
    """Server and client interceptors that trace every call.

    Args:
        tracer_provider: Where spans go (the global provider by default).
        propagator: How the context travels in metadata (the global propagator by default,
            W3C trace context and baggage unless configured otherwise).
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self.tracer = trace.get_tracer("asap", tracer_provider=tracer_provider)
        self._propagator = propagator
        self._fields: tuple[TextMapPropagator, frozenset[str]] | None = None
        self.server: Interceptor = _ServerTracing(self)
        """The server interceptor: ``Server(agent, interceptors=[tracing.server])``."""
        self.client: ClientInterceptor = _ClientTracing(self)
        """The client interceptor: ``connect(url, interceptors=[tracing.client])``."""

    def propagator(self) -> TextMapPropagator:
        """The propagator in use (the global one unless one was given)."""
        return self._propagator if self._propagator is not None else propagate.get_global_textmap()

    def propagation(self) -> tuple[TextMapPropagator, frozenset[str]]:
        """The propagator and the metadata keys it reads (cached per propagator)."""
        propagator = self.propagator()
        cached = self._fields
        if cached is None or cached[0] is not propagator:
            cached = self._fields = (propagator, frozenset(propagator.fields))
        return cached


def current_trace_id() -> str:
    """The W3C trace id of the current span (32 hex digits), or "" outside any span."""
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else ""
