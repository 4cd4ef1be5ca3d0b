"""Prometheus metrics for ASAP servers and clients (``pip install 'asap-protocol[prometheus]'``).

Usage::

    metrics = PrometheusMetrics()
    server = Server(agent, metrics=metrics, metrics_address="127.0.0.1:9464")
    client = connect(url, interceptors=[metrics.client])

A server with ``metrics=`` serves them at ``GET /metrics`` on every bridge listener and, with
``metrics_address``, on a port of its own (for gRPC-only servers; ``asap serve --metrics``).

Every metric is in :attr:`PrometheusMetrics.registry` (a registry of its own unless one is given):

======================================  ============================  ===============================
metric                                  labels                        what
======================================  ============================  ===============================
``asap_server_started_total``           method, transport             calls started
``asap_server_handled_total``           method, transport, code       calls finished, by status code
``asap_server_handling_seconds``        method, transport             call duration (histogram)
``asap_server_in_flight``               method, transport             calls running now
``asap_server_msg_received_total``      method, transport             request messages of streams
``asap_server_msg_sent_total``          method, transport             response messages of streams
``asap_client_started_total``           method, transport             client call attempts
``asap_client_handled_total``           method, transport, code       attempts finished, by code
``asap_client_handling_seconds``        method, transport             attempt duration (histogram)
``asap_client_msg_received_total``      method, transport             responses of streams
``asap_client_msg_sent_total``          method, transport             requests of client streams
``asap_bridge_connections``             (none)                        bridge connections open now
``asap_bridge_connection_closes_total`` code                          bridge connections closed
``asap_flow_control_stalls_total``      transport, side               writes that waited for credit
``asap_dedupe_hits_total``              (none)                        envelopes answered from dedupe
``asap_dedupe_evictions_total``         (none)                        outcomes evicted from memory
``asap_rate_limited_total``             (none)                        rate-limit refusals
======================================  ============================  ===============================

Label values come from fixed sets, so cardinality is bounded: ``method`` is an AgentService method
name (any other name is ``"unknown"``), ``transport`` is ``grpc`` or ``ws``, ``code`` a status code
name (``OK``, ``NOT_FOUND``…) or a close code number (``"none"`` without a close frame), ``side``
``server`` or ``client``. No label carries a principal, a peer or an id.

Streams count messages; unary calls do not (they have exactly one each way), and pay nothing for it.
The counters of connections, stalls, dedupe and rate limiting come from :mod:`asap.core.probes`
while a server with these metrics runs (or between :meth:`PrometheusMetrics.attach` and
``detach``); those probes are process-wide.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator
from wsgiref.simple_server import WSGIServer

from google.protobuf.message import Message

from asap.core import probes
from asap.core.context import CallContext
from asap.core.interceptors import CallNext, Interceptor, outcome_of
from asap.core.method import METHODS
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


try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
        start_http_server,
    )
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without the extra
    message = "asap.observability.metrics needs prometheus-client: pip install 'asap-protocol[prometheus]'"
    raise ImportError(message) from exc


__all__ = ["LATENCY_BUCKETS", "PrometheusMetrics"]

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Histogram buckets in seconds: sub-millisecond loopback calls up to a minute-long stream."""

_KNOWN_METHODS = frozenset(spec.name for spec in METHODS.values())
UNKNOWN_METHOD = "unknown"
"""The ``method`` label of any method name that is not an AgentService method."""


def _method_label(name: str) -> str:
    return name if name in _KNOWN_METHODS else UNKNOWN_METHOD


class _CallMetrics:
    """The label children of one (method, transport) pair on one side, resolved once."""

    __slots__ = (
        "family",
        "handled",
        "in_flight",
        "labels",
        "received",
        "seconds",
        "sent",
        "started",
    )

    def __init__(self, family: _Family, method: str, transport: str) -> None:
        self.family = family
        self.labels = (method, transport)
        self.started = family.started.labels(method, transport)
        self.seconds = family.seconds.labels(method, transport)
        self.received = family.received.labels(method, transport)
        self.sent = family.sent.labels(method, transport)
        self.in_flight = family.in_flight.labels(method, transport) if family.in_flight else None
        self.handled: dict[Code, Counter] = {}

    def finished(self, code: Code, seconds: float) -> None:
        counter = self.handled.get(code)
        if counter is None:
            counter = self.handled[code] = self.family.handled.labels(*self.labels, code.name)
        counter.inc()
        self.seconds.observe(seconds)


class _Family:
    """The call metrics of one side (server or client)."""

    def __init__(self, registry: CollectorRegistry, side: str, *, in_flight: bool) -> None:
        labels = ("method", "transport")
        what = "calls" if side == "server" else "call attempts"
        self.started = Counter(
            f"asap_{side}_started", f"{side.title()} {what} started.", labels, registry=registry
        )
        self.handled = Counter(
            f"asap_{side}_handled",
            f"{side.title()} {what} finished, by status code.",
            (*labels, "code"),
            registry=registry,
        )
        self.seconds = Histogram(
            f"asap_{side}_handling_seconds",
            f"Duration of {side} {what}, in seconds.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = (
            Gauge(f"asap_{side}_in_flight", "Calls running now.", labels, registry=registry)
            if in_flight
            else None
        )
        self.received = Counter(
            f"asap_{side}_msg_received",
            "Stream messages received.",
            labels,
            registry=registry,
        )
        self.sent = Counter(
            f"asap_{side}_msg_sent", "Stream messages sent.", labels, registry=registry
        )
        self._children: dict[tuple[str, str], _CallMetrics] = {}

    def of(self, method: str, transport: str) -> _CallMetrics:
        children = self._children.get((method, transport))
        if children is None:
            children = _CallMetrics(self, _method_label(method), transport)
            self._children[(method, transport)] = children
        return children


class _CountingServerCall:
    """A streaming ServerCall that counts messages read and written."""

    __slots__ = ("inner", "inner_read_would_wait", "inner_try_write", "metrics")

    def __init__(self, inner: ServerCall, metrics: _CallMetrics) -> None:
        self.inner = inner
        self.inner_try_write = nowait_writer(inner)
        self.inner_read_would_wait = read_wait_probe(inner)
        self.metrics = metrics

    async def read(self) -> Message | None:
        message = await self.inner.read()
        if message is not None:
            self.metrics.received.inc()
        return message

    async def write(self, message: Message) -> None:
        self.metrics.sent.inc()
        await self.inner.write(message)

    def read_would_wait(self) -> bool:
        inner = self.inner_read_would_wait
        return inner is not None and inner()

    def try_write(self, message: Message) -> bool:
        inner = self.inner_try_write
        if inner is None or not inner(message):
            return False
        self.metrics.sent.inc()
        return True


class _ServerInterceptor(Interceptor):
    eager_safe = True
    """Counters and a clock, nothing that needs a task: a call may run eagerly through it."""

    def __init__(self, family: _Family) -> None:
        self._family = family

    async def intercept(self, ctx: CallContext, call: ServerCall, call_next: CallNext) -> None:
        method = ctx.method
        metrics = self._family.of(method.name, ctx.transport)
        metrics.started.inc()
        in_flight = metrics.in_flight
        if in_flight is not None:
            in_flight.inc()
        if method.client_streaming or method.server_streaming:
            call = _CountingServerCall(call, metrics)
        started = time.perf_counter()
        code = Code.OK
        try:
            await call_next(ctx, call)
        except BaseException as exc:
            code = outcome_of(ctx, exc).code
            raise
        finally:
            if in_flight is not None:
                in_flight.dec()
            metrics.finished(code, time.perf_counter() - started)


class _CountedRequests:
    """A client's request iterable that counts the messages it yields."""

    def __init__(self, requests: AsyncIterable[Message], metrics: _CallMetrics) -> None:
        self._requests = requests
        self._metrics = metrics

    async def __aiter__(self) -> AsyncIterator[Message]:
        sent = self._metrics.sent
        async for message in self._requests:
            sent.inc()
            yield message


class _ObservedStream(ForwardingStream):
    """A client stream that counts responses and records its outcome once.

    A client-streaming call (one response) is over, OK, once its response arrived: the client
    cancels such a stream after reading it, which is no failure.
    """

    def __init__(self, inner: ResponseStream, metrics: _CallMetrics, *, single: bool) -> None:
        super().__init__(inner)
        self._metrics = metrics
        self._started = time.perf_counter()
        self._done = False
        self._single = single

    def _finish(self, code: Code) -> None:
        if not self._done:
            self._done = True
            self._metrics.finished(code, time.perf_counter() - self._started)

    async def __anext__(self) -> Message:
        try:
            message = await anext(self.inner)
        except StopAsyncIteration:
            self._finish(Code.OK)
            raise
        except AsapError as error:
            self._finish(error.code)
            raise
        except asyncio.CancelledError:
            self._finish(Code.CANCELLED)
            raise
        self._metrics.received.inc()
        if self._single:
            self._finish(Code.OK)
        return message

    async def cancel(self) -> None:
        self._finish(Code.CANCELLED)
        await self.inner.cancel()


class _ClientInterceptor(ClientInterceptor):
    def __init__(self, family: _Family) -> None:
        self._family = family

    async def intercept_unary(
        self, info: ClientCallInfo, request: Message, call_next: UnaryNext
    ) -> Reply:
        metrics = self._family.of(info.method.name, info.transport)
        metrics.started.inc()
        started = time.perf_counter()
        code = Code.OK
        try:
            return await call_next(info, request)
        except AsapError as error:
            code = error.code
            raise
        except asyncio.CancelledError:
            code = Code.CANCELLED
            raise
        finally:
            metrics.finished(code, time.perf_counter() - started)

    def intercept_stream(
        self,
        info: ClientCallInfo,
        requests: Message | AsyncIterable[Message],
        call_next: StreamNext,
    ) -> ResponseStream:
        metrics = self._family.of(info.method.name, info.transport)
        metrics.started.inc()
        if not isinstance(requests, Message):
            requests = _CountedRequests(requests, metrics)
        single = not info.method.server_streaming
        return _ObservedStream(call_next(info, requests), metrics, single=single)


class PrometheusMetrics:
    """The metrics of the module docstring, with a server and a client interceptor.

    Args:
        registry: Where the metrics are registered (a new registry by default; pass
            ``prometheus_client.REGISTRY`` to share the process-wide one).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        registry = self.registry
        self._server = _Family(registry, "server", in_flight=True)
        self._client = _Family(registry, "client", in_flight=False)
        self.interceptor: Interceptor = _ServerInterceptor(self._server)
        """The server interceptor (a Server with ``metrics=`` adds it itself)."""
        self.client: ClientInterceptor = _ClientInterceptor(self._client)
        """The client interceptor: ``connect(url, interceptors=[metrics.client])``."""
        self._connections = Gauge(
            "asap_bridge_connections", "Bridge connections open now.", registry=registry
        )
        self._closes = Counter(
            "asap_bridge_connection_closes",
            "Bridge connections closed, by close code.",
            ("code",),
            registry=registry,
        )
        self._stalls = Counter(
            "asap_flow_control_stalls",
            "Streamed writes that had to wait for the peer's flow-control credit.",
            ("transport", "side"),
            registry=registry,
        )
        self._dedupe_hits = Counter(
            "asap_dedupe_hits", "Envelopes answered from the dedupe store.", registry=registry
        )
        self._dedupe_evictions = Counter(
            "asap_dedupe_evictions",
            "Outcomes evicted from an in-memory dedupe store.",
            registry=registry,
        )
        self._rate_limited = Counter(
            "asap_rate_limited", "Calls or envelopes refused by the rate limit.", registry=registry
        )
        self._attached = 0
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    # -- probes (asap.core.probes.ProbeListener) ------------------------------------------

    def attach(self) -> None:
        """Listen to the process-wide probes (counted: each attach needs a detach)."""
        self._attached += 1
        probes.PROBES.add(self)

    def detach(self) -> None:
        """Undo one :meth:`attach`."""
        self._attached = max(0, self._attached - 1)
        if not self._attached:
            probes.PROBES.remove(self)

    def connection_opened(self, transport: str) -> None:
        """See :class:`~asap.core.probes.ProbeListener`."""
        self._connections.inc()

    def connection_closed(self, transport: str, code: int | None, *, was_open: bool) -> None:
        """See :class:`~asap.core.probes.ProbeListener`."""
        if was_open:
            self._connections.dec()
        self._closes.labels("none" if code is None else str(code)).inc()

    def flow_stalled(self, transport: str, side: str) -> None:
        """See :class:`~asap.core.probes.ProbeListener`."""
        self._stalls.labels(transport, side).inc()

    def dedupe_hit(self) -> None:
        """See :class:`~asap.core.probes.ProbeListener`."""
        self._dedupe_hits.inc()

    def dedupe_evicted(self, count: int) -> None:
        """See :class:`~asap.core.probes.ProbeListener`."""
        self._dedupe_evictions.inc(count)

    def rate_limited(self) -> None:
        """See :class:`~asap.core.probes.ProbeListener`."""
        self._rate_limited.inc()

    # -- exposition --------------------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The registry in the Prometheus text format, and its Content-Type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    async def serve_http(self, host: str, port: int) -> int:
        """Serve ``GET /metrics`` on ``host:port`` in a thread of prometheus-client; the bound port."""
        if self._http is not None:
            return self._http[0].server_port
        self._http = start_http_server(port, addr=host, registry=self.registry)
        return self._http[0].server_port

    async def stop_http(self) -> None:
        """Stop the HTTP server of :meth:`serve_http` and join its thread (idempotent)."""
        http, self._http = self._http, None
        if http is not None:
            server, thread = http
            await asyncio.to_thread(server.shutdown)
            server.server_close()
            await asyncio.to_thread(thread.join)
