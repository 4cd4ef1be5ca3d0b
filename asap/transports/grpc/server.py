"""GrpcServerTransport: a grpc.aio server whose one generic handler feeds the core's Dispatcher.

Theory of operation: every AgentService method gets a grpc method handler of its arity whose
behaviour builds a :class:`~asap.core.context.CallContext` from the grpc servicer context, wraps the
call in a small :class:`~asap.core.service.ServerCall` adapter (``read()`` / ``write()``), and
awaits :meth:`Dispatcher.handle <asap.core.dispatch.Dispatcher.handle>`. The outcome is either OK
(the handler's trailing metadata is set and the response returned) or an AsapError, which aborts
the call with its code, message and ``grpc-status-details-bin`` (:mod:`.status`). Handlers,
middleware, validation and the error boundary all live in the core, so the WebSocket bridge runs
exactly the same code; the generated ``add_AgentServiceServicer_to_server`` is deliberately unused.

Next to AgentService the server runs gRPC's standard health service (``grpc.health.v1.Health``:
Check answered by :meth:`HealthState.check <asap.core.health.HealthState.check>`, as on the
bridge; Watch by grpcio-health-checking's servicer, following the same state) and server
reflection. Every method decodes its own request bytes, so bad bytes are INVALID_ARGUMENT
(MALFORMED_FRAME) everywhere, never grpc's UNKNOWN.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import NoReturn, cast

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import _async as health_aio  # = grpc_health.v1.health.aio, which has no stubs
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from asap.core.certificates import certificate_identity
from asap.core.context import CallContext
from asap.core.dispatch import Dispatcher
from asap.core.health import HealthState
from asap.core.method import METHODS, SERVICE_NAME, Arity, MethodSpec
from asap.core.tasks import TaskOwner, loop_clock
from asap.errors import (
    AsapError,
    Cancelled,
    Internal,
    InvalidState,
    MalformedFrame,
    MessageTooLarge,
    TooManyCalls,
    UnknownMethod,
)
from asap.protocol.limits import DEFAULT_MAX_MESSAGE_BYTES, Limits
from asap.protocol.proxies import FORWARDED_FOR, TrustedProxies, parse_peer, peer_string
from asap.tls import PeerCertificate, ServerTLS
from asap.transports.base import TLSListener, listener_url
from asap.transports.grpc.detached import Detached
from asap.transports.grpc.status import to_grpc_status
from asap.v1 import manifest_pb2


TRANSPORT = "grpc"
"""The ``CallContext.transport`` of calls this transport serves (for logs only)."""

HEALTH_SERVICES = ("", SERVICE_NAME)
"""The health service names reported: the whole server ("") and AgentService."""

MIN_PING_INTERVAL_MS = 500
"""The shortest interval between client pings that the server accepts without a strike.

gRPC servers count a ping that arrives sooner than ``grpc.http2.min_ping_interval_without_data_ms``
after the previous one as a strike and, after ``grpc.http2.max_ping_strikes`` strikes, close the
connection with GOAWAY ``too_many_pings`` (gRPC A8/doc/keepalive.md). The grpc default is 5 minutes,
which a client keeping an idle connection alive (GrpcChannel pings every 30 s by default, and at
most every 1 s) would break. Half of GrpcChannel's fastest keepalive leaves room for timer jitter;
a client pinging more than twice a second while idle is still refused.
"""

Servicer = grpc.aio.ServicerContext[Message, Message]


class _Undecodable:
    """What the request deserializer returns for bytes that do not parse as the request type.

    grpc would otherwise answer UNKNOWN from inside its own deserializer; this way the core fails
    the call with INVALID_ARGUMENT (MALFORMED_FRAME), exactly as the bridge does.
    """

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def error(self) -> MalformedFrame:
        return MalformedFrame(f"the request does not parse as {self.type_name}")


Deserializer = Callable[[bytes], Message | _Undecodable]


def _deserializer(kind: type[Message]) -> Deserializer:
    parse = kind.FromString
    undecodable = _Undecodable(kind.DESCRIPTOR.full_name)

    def deserialize(data: bytes) -> Message | _Undecodable:
        try:
            return parse(data)
        except DecodeError:
            return undecodable

    return deserialize


def _checked(message: object) -> Message | None:
    """A request read from grpc: the message, None at the end of the stream, or raise if undecodable."""
    if isinstance(message, Message):
        return message
    if isinstance(message, _Undecodable):
        raise message.error()
    return None  # grpc.aio.EOF


Behaviour = Callable[..., Awaitable[Message | None]]


def server_options(limits: Limits, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    """The grpc server channel arguments for ``limits``.

    - Message size: ``limits.max_message_bytes`` both ways; grpc core refuses a larger message with
      RESOURCE_EXHAUSTED, which the client maps to MessageTooLarge.
    - Keepalive from the server: a ping after ``heartbeat_interval`` without activity and a close
      when it is not answered within ``heartbeat_timeout`` (the bridge's liveness rule), also on
      idle connections and without a limit on pings without data, so dead peers are noticed.
    - Keepalive from clients: pings are permitted without calls and every
      :data:`MIN_PING_INTERVAL_MS` (see there); three early pings in a row still get GOAWAY.
    - ``grpc.so_reuseport`` off unless ``reuse_port`` (``asap serve --workers``): binding a port
      another server holds fails instead of sharing it.
    - Metadata: at most ``limits.max_metadata_bytes`` (soft and hard limit alike), RESOURCE_EXHAUSTED
      beyond, the bridge's rule.
    - Connections: closed after ``connection_idle_timeout`` without calls, and (when set) asked
      to go away after ``connection_max_age``, with ``connection_max_age_grace`` for their calls.
    - ``maximum_concurrent_rpcs`` is deliberately unset: the Dispatcher enforces
      ``max_concurrent_calls`` with an ErrorInfo, so both transports report the same error.
    """
    return [
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.keepalive_time_ms", round(limits.heartbeat_interval * 1000)),
        ("grpc.keepalive_timeout_ms", round(limits.heartbeat_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # Metadata: refused over limits.max_metadata_bytes, as on the bridge. Soft = hard removes
        # grpc core's band in which it refuses calls at random.
        ("grpc.max_metadata_size", limits.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", limits.max_metadata_bytes),
        *_connection_lifetime(limits),
    ]


def _connection_lifetime(limits: Limits) -> list[tuple[str, int]]:
    """Grpc's connection idle and age limits (absent when 0: grpc's own default, none)."""
    options = []
    if limits.connection_idle_timeout:
        options.append(
            ("grpc.max_connection_idle_ms", round(limits.connection_idle_timeout * 1000))
        )
    if limits.connection_max_age:
        options.append(("grpc.max_connection_age_ms", round(limits.connection_max_age * 1000)))
        grace = round(limits.connection_max_age_grace * 1000)
        options.append(("grpc.max_connection_age_grace_ms", grace))
    return options


class _UnaryCall:
    """ServerCall of a unary-request, unary-response call: one request in, one response kept."""

    __slots__ = ("request", "response")

    def __init__(self, request: Message) -> None:
        self.request: Message | None = request
        self.response: Message | None = None

    async def read(self) -> Message | None:
        request, self.request = self.request, None
        return _checked(request)

    async def write(self, message: Message) -> None:
        self.response = message


class _UnaryRequestCall:
    """ServerCall of a unary-request, unary-response call: the request grpc read, then the stream.

    grpc.aio's unary handlers get the first request message and would drop a second one unseen;
    the core's second ``read`` goes on to ``context.read()``, which returns the next message
    (undecoded: grpc.aio gives a unary-request handler's context no deserializer) or EOF once
    the caller half-closed. The same two receives as a streaming-request handler makes, on
    grpc's unary path (measured: no cheaper for a unary caller, whose request and half-close
    arrive together; cheaper for one that sends through a request stream).

    That second receive is the one grpc core batch a Send makes beyond a raw grpc.aio unary
    handler (request, receive, receive-close, final send), and each batch is a round trip
    through grpc.aio's poller thread and a loop turn: measured 30-75 µs of server CPU per call
    at 64 in flight on a loaded 2-core machine, the largest cost this transport adds to
    grpc.aio (building the CallContext: ~10 µs). grpc.aio tells a handler that the caller
    half-closed only through such a receive, so it stays while a second request must be refused.
    """

    __slots__ = ("context", "deserialize", "request", "response")

    def __init__(self, request: Message, context: Servicer, deserialize: Deserializer) -> None:
        self.request: Message | None = request
        self.context = context
        self.deserialize = deserialize
        self.response: Message | None = None

    async def read(self) -> Message | None:
        request = self.request
        if request is None:
            following: object = await self.context.read()
            if isinstance(following, bytes):
                following = self.deserialize(following)
            return _checked(following)
        self.request = None
        return _checked(request)

    async def write(self, message: Message) -> None:
        self.response = message


class _Writes:
    """The streamed writes of one call, so the final status is sent only once none is in flight.

    grpc core allows one send operation at a time per call. When a Stream's reader fails (a bad
    request after valid ones) its task group cancels the writer while ``context.write`` is still in
    core; aborting then would fail with ``GRPC_CALL_ERROR_TOO_MANY_OPERATIONS`` and the caller
    would get no status at all. Each write therefore runs :class:`.Detached` (out of the writer's
    reach), and the status is sent once :meth:`settle` has seen the last one end.
    """

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: Detached | None = None

    async def settle(self) -> None:
        """Wait until no write is in flight (its own outcome does not matter any more)."""
        pending = self.pending
        if pending is not None and pending.running:
            await pending.ended()


async def _write_streamed(
    context: Servicer, message: Message, max_bytes: int, writes: _Writes
) -> None:
    """Write one streamed response, refusing one over ``max_bytes`` with the call still open.

    grpc core would fail the whole call (and ``write`` with an error of its own) for it; the core
    answers MessageTooLarge per item instead, as on the bridge.
    """
    size = message.ByteSize()
    if size > max_bytes:
        text = f"message larger than max ({size} vs. {max_bytes})"
        raise MessageTooLarge(text)
    # Out of the call task's reach: cancelling the call leaves the write in flight for settle().
    writes.pending = pending = Detached(context.write(message))
    try:
        await pending.done
    except grpc.aio.BaseError:
        # grpc core refuses the write of a call that has ended (the caller cancelled it, its deadline
        # passed, the server is stopping) before grpc.aio cancels the handler: no bug, the call is
        # over. Its status no longer reaches anyone.
        text = "the call ended while a response was being written"
        raise Cancelled(text) from None


class _ClientStreamCall:
    """ServerCall of a unary-response call (unary or streaming request), read from the stream."""

    __slots__ = ("context", "response")

    def __init__(self, context: Servicer) -> None:
        self.context = context
        self.response: Message | None = None

    async def read(self) -> Message | None:
        return _checked(await self.context.read())

    async def write(self, message: Message) -> None:
        self.response = message


class _BidiCall:
    """ServerCall of a streaming-response call; ``first`` is a unary request grpc already read."""

    __slots__ = ("context", "first", "max_bytes", "writes")

    def __init__(self, context: Servicer, max_bytes: int, first: Message | None = None) -> None:
        self.context = context
        self.first = first
        self.max_bytes = max_bytes
        self.writes = _Writes()

    async def read(self) -> Message | None:
        first = self.first
        if first is None:
            return _checked(await self.context.read())
        self.first = None
        return _checked(first)

    async def write(self, message: Message) -> None:
        await _write_streamed(self.context, message, self.max_bytes, self.writes)


async def _fail(context: Servicer, error: AsapError, ctx: CallContext) -> NoReturn:
    """End the call with ``error`` and the handler's trailing metadata."""
    code, message, trailing = to_grpc_status(error, ctx.trailing_metadata)
    await context.abort(code, message, trailing)


async def _abort(context: Servicer, error: AsapError) -> NoReturn:
    """End a call that has no CallContext (health) with ``error``."""
    code, message, trailing = to_grpc_status(error, ())
    await context.abort(code, message, trailing)


Prepare = Callable[[CallContext, Servicer], None]
"""Completes a call's context from the connection (client certificate, forwarded peer)."""


def certificate_of(auth_context: Mapping[str, Iterable[bytes]]) -> PeerCertificate | None:
    """The verified client certificate grpc's ``auth_context()`` describes, or None."""
    pem = tuple(auth_context.get("x509_pem_cert", ()))
    if not pem:
        return None

    def texts(key: str) -> tuple[str, ...]:
        return tuple(value.decode("utf-8", "replace") for value in auth_context.get(key, ()))

    names = texts("x509_common_name")
    return PeerCertificate(
        texts("peer_uri"), texts("peer_dns"), names[0] if names else None, pem[0]
    )


def _context(
    spec: MethodSpec, context: Servicer, prepare: Prepare | None, clock: Callable[[], float]
) -> CallContext:
    # invocation_metadata() is a tuple of (key, value) pairs at run time; the stubs say Metadata.
    metadata = context.invocation_metadata()
    ctx = CallContext(
        method=spec,
        metadata=tuple(metadata) if metadata else (),
        peer=context.peer(),
        transport=TRANSPORT,
        timeout=context.time_remaining(),
        deadline_enforced_by_transport=True,  # grpc cancels at the deadline and answers DEADLINE_EXCEEDED
        clock=clock,
    )
    if prepare is not None:
        prepare(ctx, context)
    return ctx


def _behaviour(
    dispatcher: Dispatcher,
    spec: MethodSpec,
    max_bytes: int,
    deserialize: Deserializer,
    prepare: Prepare | None,
    clock: Callable[[], float],
) -> Behaviour:
    """Build the grpc behaviour of one method; each is a closure so the hot path looks up nothing.

    Unary-request methods get grpc's unary-request handlers (grpc reads the request as part of
    the call); the core's check that no second request follows reads on from the stream (see
    :class:`_UnaryRequestCall`), so a second message is refused, never dropped unseen.
    """
    handle = dispatcher.handle
    missing = Internal("the method produced no response")

    async def answer(
        ctx: CallContext,
        call: _UnaryRequestCall | _ClientStreamCall,
        context: Servicer,
    ) -> Message:
        error = await handle(ctx, call)
        if error is None and call.response is not None:
            if trailing := ctx.trailing_metadata:
                context.set_trailing_metadata(trailing)
            return call.response
        return await _fail(context, error or missing, ctx)

    async def stream_answers(ctx: CallContext, call: _BidiCall, context: Servicer) -> None:
        error = await handle(ctx, call)
        await call.writes.settle()
        if error is None:
            if trailing := ctx.trailing_metadata:
                context.set_trailing_metadata(trailing)
            return
        await _fail(context, error, ctx)

    if not spec.server_streaming:
        if not spec.client_streaming:

            async def unary_unary(request: Message, context: Servicer) -> Message:
                return await answer(
                    _context(spec, context, prepare, clock),
                    _UnaryRequestCall(request, context, deserialize),
                    context,
                )

            return unary_unary

        async def stream_unary(_requests: object, context: Servicer) -> Message:
            return await answer(
                _context(spec, context, prepare, clock), _ClientStreamCall(context), context
            )

        return stream_unary

    if not spec.client_streaming:

        async def unary_stream(request: Message, context: Servicer) -> None:
            call = _BidiCall(context, max_bytes, request)
            await stream_answers(_context(spec, context, prepare, clock), call, context)

        return unary_stream

    async def stream_stream(_requests: object, context: Servicer) -> None:
        await stream_answers(
            _context(spec, context, prepare, clock), _BidiCall(context, max_bytes), context
        )

    return stream_stream


_HANDLER_FACTORIES = {
    Arity.UNARY_UNARY: grpc.unary_unary_rpc_method_handler,
    Arity.UNARY_STREAM: grpc.unary_stream_rpc_method_handler,
    Arity.STREAM_UNARY: grpc.stream_unary_rpc_method_handler,
    Arity.STREAM_STREAM: grpc.stream_stream_rpc_method_handler,
}


def method_handlers(
    dispatcher: Dispatcher,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    *,
    prepare: Prepare | None = None,
    clock: Callable[[], float] | None = None,
) -> dict[str, grpc.RpcMethodHandler[Message, Message]]:
    """One grpc method handler per AgentService method, by method name.

    Streamed responses over ``max_message_bytes`` raise MessageTooLarge from the call's ``write``;
    ``prepare`` completes each call's context from its connection. ``clock`` is the serving
    loop's (:func:`~asap.core.tasks.loop_clock`); None takes the running loop's, so the
    handlers are built inside the loop that serves them.
    """
    if clock is None:
        clock = loop_clock(asyncio.get_running_loop())
    handlers: dict[str, grpc.RpcMethodHandler[Message, Message]] = {}
    for spec in METHODS.values():
        deserialize = _deserializer(spec.request_type)
        handlers[spec.name] = _HANDLER_FACTORIES[spec.arity](
            _behaviour(dispatcher, spec, max_message_bytes, deserialize, prepare, clock),
            # The handler's reads accept the _Undecodable marker too (see _checked).
            request_deserializer=cast("Callable[[bytes], Message]", deserialize),
            response_serializer=spec.response_type.SerializeToString,
        )
    return handlers


HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
"""``grpc.health.v1.Health``."""

HealthServicer = grpc.aio.ServicerContext[
    health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
]


def health_handlers(
    health: HealthState, servicer: health_aio.HealthServicer
) -> dict[str, grpc.RpcMethodHandler[Message, Message]]:
    """The methods of ``grpc.health.v1.Health``: Check from ``health``, Watch from ``servicer``.

    Each decodes its request itself: grpc would answer bytes that do not parse with UNKNOWN.
    """
    undecodable_health: Callable[[bytes], Message] = cast(
        "Callable[[bytes], Message]", _deserializer(health_pb2.HealthCheckRequest)
    )

    async def check(request: Message, context: Servicer) -> Message:
        call = _UnaryCall(request)
        error = await health.check(call)
        if error is None and call.response is not None:
            return call.response
        return await _abort(context, error or Internal())

    async def watch(request: object, context: Servicer) -> None:
        if isinstance(request, _Undecodable):
            await _abort(context, request.error())
        if not isinstance(request, health_pb2.HealthCheckRequest):
            await _abort(context, Internal())
        # Watch takes no credentials (load balancers use it) and lasts: bounded per server.
        if not health.try_watch():
            await _abort(context, TooManyCalls(f"more than {health.max_watchers} health watchers"))
        try:
            await servicer.Watch(request, cast("HealthServicer", context))
        finally:
            health.unwatch()

    return {
        "Check": grpc.unary_unary_rpc_method_handler(
            check,
            request_deserializer=undecodable_health,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        ),
        "Watch": grpc.unary_stream_rpc_method_handler(
            watch,
            request_deserializer=undecodable_health,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        ),
    }


class _UnknownMethods(grpc.GenericRpcHandler):
    """Answers every path no other handler serves with UNIMPLEMENTED (UNKNOWN_METHOD), as the bridge does."""

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes]:
        error = UnknownMethod(f"unknown method {handler_call_details.method}")

        async def reject(
            _requests: object, context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> None:
            code, message, trailing = to_grpc_status(error, ())
            await context.abort(code, message, trailing)

        return grpc.stream_stream_rpc_method_handler(reject)


def _certificate_configuration(tls: ServerTLS) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(tls.private_key, tls.cert_chain)], root_certificates=tls.client_ca
    )


class GrpcServerTransport(TLSListener):
    """Serves AgentService, health and reflection over gRPC on one address.

    Args:
        dispatcher: Runs every call.
        health: The serving state the health service reports.
        host: The address to bind (an IP address or a host name).
        port: The port; 0 picks a free one (``endpoint`` shows the real one after start).
        limits: Message size and keepalive settings (see :func:`server_options`).
        tls: Certificate and key; with ``client_ca`` clients must present certificates (mTLS).
            None serves plaintext.
        reuse_port: Bind with SO_REUSEPORT so several processes share the port.
        reflection: Serve grpc server reflection (it lists every service and message type).
        trusted_proxies: Peers whose ``x-forwarded-for`` metadata names the client (the peer
            the core sees); from any other peer it is ignored.
    """

    _name = "this gRPC"

    def __init__(
        self,
        dispatcher: Dispatcher,
        health: HealthState,
        *,
        host: str,
        port: int,
        limits: Limits,
        tls: ServerTLS | None,
        reuse_port: bool = False,
        reflection: bool = True,
        trusted_proxies: TrustedProxies | None = None,
    ) -> None:
        self._proxies = trusted_proxies or TrustedProxies(())
        self._reuse_port = reuse_port
        self._reflection = reflection
        self._dispatcher = dispatcher
        self._health = health
        self._host = host
        self._port = port
        self._limits = limits
        self._tls = tls
        self._pending_certificates: grpc.ServerCertificateConfiguration | None = None
        """A configuration reload_tls() set that grpc has not fetched yet."""
        self._server: grpc.aio.Server | None = None
        self._health_servicer = health_aio.HealthServicer()
        self._health_update: asyncio.Task[None] | None = None
        self._tasks = TaskOwner("asap.grpc.server")
        self._stopping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind and start serving.

        Raises:
            InvalidState: The transport was already started or stopped.
            RuntimeError: grpc could not bind the address.
        """
        if self._server is not None or self._stopping is not None:
            message = "the gRPC transport was already started"
            raise InvalidState(message)
        server = grpc.aio.server(options=server_options(self._limits, reuse_port=self._reuse_port))
        mutual = self._tls is not None and self._tls.client_ca is not None
        handlers = method_handlers(
            self._dispatcher,
            self._limits.max_message_bytes,
            prepare=self._prepare if mutual or self._proxies else None,
        )
        # Generic handlers only, deliberately not add_registered_method_handlers (which the
        # generated add_*_to_server uses): grpc.aio's accept loop keeps one pending request
        # task per registered method and asyncio.wait()s on all of them for every call it
        # accepts, so eight registered methods cost 43,800 instructions per Send (703,824 ->
        # 660,048, scripts/bench_instructions.py); a dict lookup by path costs a few hundred.
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
        )
        health = health_handlers(self._health, self._health_servicer)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(HEALTH_SERVICE_NAME, health),)
        )
        if self._reflection:
            reflection.enable_server_reflection(
                (SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server
            )
        # Last, so it only sees paths that nothing above serves.
        server.add_generic_rpc_handlers((_UnknownMethods(),))
        address = (
            f"[{self._host}]:{self._port}" if ":" in self._host else f"{self._host}:{self._port}"
        )
        if self._tls is None:
            self._port = server.add_insecure_port(address)
        else:
            # Dynamic credentials: grpc asks _fetch_certificates at every new handshake, so
            # reload_tls() takes effect for new connections while existing ones go on.
            credentials = grpc.dynamic_ssl_server_credentials(
                _certificate_configuration(self._tls),
                # grpc takes None as "unchanged" (the stubs do not say so).
                cast("Callable[[], grpc.ServerCertificateConfiguration]", self._fetch_certificates),
                require_client_authentication=mutual,
            )
            self._port = server.add_secure_port(address, credentials)
        self._server = server
        # Report the current state before the first call can ask; later changes arrive by listener.
        await self._set_health(self._health.serving, None)
        await server.start()
        self._health.subscribe(self._on_health)

    def _prepare(self, ctx: CallContext, context: Servicer) -> None:
        """The call's client-certificate identity, and its client behind a trusted proxy."""
        tls = self._tls
        if tls is not None and tls.client_ca is not None:
            certificate = certificate_of(context.auth_context())
            if certificate is not None:
                ctx.identity = ctx.tls_identity = certificate_identity(
                    tls.client_identity(certificate)
                )
        if self._proxies:
            forwarded = [
                value
                for key, value in ctx.metadata
                if key == FORWARDED_FOR and isinstance(value, str)
            ]
            client = self._proxies.client_of(parse_peer(ctx.peer), forwarded) if forwarded else None
            if client is not None:
                ctx.peer = peer_string(client)

    def _fetch_certificates(self) -> grpc.ServerCertificateConfiguration | None:
        """Answer grpc's per-handshake question: a configuration newer than the last, else None."""
        pending, self._pending_certificates = self._pending_certificates, None
        return pending

    def _apply_tls(self, current: ServerTLS, tls: ServerTLS) -> None:
        current.check_reload(tls)  # parses it: grpc would only fail at the next handshake
        self._pending_certificates = _certificate_configuration(tls)

    @property
    def endpoint(self) -> manifest_pb2.Endpoint:
        """``grpc://host:port`` (or ``grpcs://``) with the bound port.

        Raises:
            InvalidState: Before :meth:`start`.
        """
        if self._server is None:
            message = "the gRPC transport has not been started"
            raise InvalidState(message)
        scheme = "grpc" if self._tls is None else "grpcs"
        return manifest_pb2.Endpoint(
            transport=manifest_pb2.TRANSPORT_GRPC, url=listener_url(scheme, self._host, self._port)
        )

    def _on_health(self, serving: bool) -> None:
        if self._tasks.closed:
            return
        self._health_update = self._tasks.spawn(
            self._set_health(serving, self._health_update), name="asap.grpc.health"
        )

    async def _set_health(self, serving: bool, previous: asyncio.Task[None] | None) -> None:
        # The aio HealthServicer's set() is a coroutine; chaining keeps updates in order.
        if previous is not None:
            await previous
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in HEALTH_SERVICES:
            await self._health_servicer.set(service, status)

    async def stop(self, grace: float | None) -> None:
        """Stop accepting calls, let in-flight calls finish for ``grace`` seconds, then cancel them.

        Idempotent; concurrent callers all wait for the same shutdown. Health watchers see
        NOT_SERVING before the server stops (when the Server set it first).
        """
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop(grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float | None) -> None:
        try:
            if self._health_update is not None:
                await self._health_update
            if self._server is not None:
                await self._server.stop(grace)
        finally:
            await self._tasks.close()
