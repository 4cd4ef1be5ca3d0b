"""WebSocketServerTransport: the WebSocket bridge (bridge.proto) in front of the core's Dispatcher.

Theory of operation. A websockets asyncio server accepts connections at one path. The opening
handshake is checked before anything else runs: another path gets HTTP 404, an Origin outside the
allow-list 403, and a handshake that offers neither ``asap.v1.proto`` nor ``asap.v1.json`` 400 with
the reason in the body. Each accepted connection gets a :class:`~asap.protocol.session.ServerSession`
and a reader (:class:`_ServerConnection`); every CallStart becomes a handler task, owned by the
connection, that builds a :class:`~asap.core.context.CallContext` and awaits
:meth:`Dispatcher.handle <asap.core.dispatch.Dispatcher.handle>` with a small
:class:`~asap.core.service.ServerCall` adapter (:class:`_Call`). Handlers, middleware, deadlines and
the error boundary are the core's, so a call behaves as it does over gRPC.

Credentials. The handshake's ``Authorization`` header, or for browsers (which cannot set headers)
the ``access_token`` query parameter, is added as ``authorization: Bearer <token>`` metadata to every
call on the connection whose own CallStart metadata carries none, so the core's
:class:`~asap.core.middleware.BearerAuth` checks it exactly as it checks gRPC metadata.

Close codes (bridge.proto "Close codes"; each has a test in ``tests/transports/ws``):

====  ===============================================================================
1000  the client closed the connection
1001  the server stopped: GoAway when the server starts draining (its health turns to not
      serving), in-flight calls finish (up to the grace period), then the close
1002  a frame that cannot be attributed to a stream, or a text message on asap.v1.proto
1007  text that is not JSON on asap.v1.json (invalid UTF-8 is caught by websockets, also 1007)
1008  :attr:`Limits.rate_limit_strikes_before_close` rate-limited calls in a row
1009  a WebSocket message over :attr:`Limits.max_frame_bytes` (websockets' ``max_size``)
1011  no pong within :attr:`Limits.heartbeat_timeout` of a ping (websockets' keepalive)
1013  :attr:`Limits.max_connections` connections already open: the handshake completes and the
      connection is closed at once with 1013, so clients see the bridge's code rather than an
      HTTP error and retry later
====  ===============================================================================
"""

from __future__ import annotations

import asyncio
import http
import logging
import random
from collections import deque
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from google.protobuf.message import Message
from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from asap.core.context import CallContext
from asap.core.dispatch import Dispatcher
from asap.core.health import HEALTH_CHECK, HealthState
from asap.core.method import METHODS, MethodSpec
from asap.core.middleware import AUTHORIZATION
from asap.errors import (
    AsapError,
    Internal,
    InvalidState,
    MessageTooLarge,
    RateLimited,
    ShuttingDown,
    UnknownMethod,
    to_status,
)
from asap.protocol.events import (
    CallCancelled,
    CallStarted,
    HalfClosed,
    MessageReceived,
    ProtocolViolation,
    ServerEvent,
    StreamError,
)
from asap.protocol.frames import SUBPROTOCOLS, CloseCode
from asap.protocol.limits import Limits
from asap.protocol.metadata import Metadata
from asap.protocol.session import ServerSession
from asap.tls import ServerTLS
from asap.transports.base import ServerTransport, listener_url
from asap.transports.ws.connection import BridgeConnection, peer_of
from asap.v1 import bridge_pb2, manifest_pb2, status_pb2


_log = logging.getLogger("asap.server")

TRANSPORT = "ws"
"""The ``CallContext.transport`` of calls this transport serves (for logs only)."""

INBOX_HIGH_WATER = 64
"""Request messages buffered for one call before the connection stops reading (backpressure)."""

GOAWAY_REASON = "server shutting down"
"""The GoAway and close reason of a graceful stop."""

HEARTBEAT_JITTER = 0.2
"""Each connection's heartbeat period is ``heartbeat_interval`` times a random factor in 1 +- this."""
_JITTER = random.Random()  # noqa: S311 - spreading timers, not cryptography

HEALTH_PATH = "/healthz"
"""A plain HTTP GET here answers 200 SERVING or 503 NOT_SERVING (the state gRPC's health service reports)."""

_OK = status_pb2.Status()
_NO_RESPONSE = "the method produced no response"


def _select_subprotocol(ws: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Pick the first of :data:`SUBPROTOCOLS` the client offers; refuse the handshake otherwise."""
    for name in SUBPROTOCOLS:
        if name in offered:
            return Subprotocol(name)
    wanted = " or ".join(SUBPROTOCOLS)
    if not offered:
        message = f"no subprotocol offered; offer {wanted} in Sec-WebSocket-Protocol"
        raise NegotiationError(message)
    shown = ", ".join(offered)[:100]
    message = f"unsupported subprotocol {shown}; offer {wanted}"
    raise NegotiationError(message)


def _credentials(request: Request) -> str | None:
    """The handshake's ``Authorization`` header, else ``Bearer <access_token query parameter>``."""
    headers = request.headers.get_all("Authorization")  # more than one is refused at handshake
    if headers and headers[0]:
        return headers[0]
    tokens = parse_qs(urlsplit(request.path).query).get("access_token")
    if tokens and tokens[0]:
        return f"Bearer {tokens[0]}"
    return None


def _has_authorization(metadata: Metadata) -> bool:
    return any(key == AUTHORIZATION for key, _ in metadata)


class _Call:
    """The ServerCall adapter of one bridge call: an inbox fed by the reader, writes to the session."""

    __slots__ = (
        "conn",
        "half_closed",
        "inbox",
        "request_type",
        "response",
        "space",
        "spec",
        "stream_id",
        "task",
        "waiter",
    )

    def __init__(self, conn: _ServerConnection, stream_id: int, spec: MethodSpec) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.spec = spec
        self.request_type = spec.request_type
        self.inbox: deque[bridge_pb2.MessageFrame] = deque()
        self.half_closed = False
        self.waiter: asyncio.Future[None] | None = None
        self.space: asyncio.Future[None] | None = None
        """Set while the reader waits for this call to drain its inbox."""
        self.response: Message | None = None
        """A unary response, kept until the handler succeeds (as gRPC sends it with OK only)."""
        self.task: asyncio.Task[None] | None = None

    def feed(self, frame: bridge_pb2.MessageFrame) -> None:
        """Queue a request message (reader side)."""
        self.inbox.append(frame)
        self._wake()

    def end_input(self) -> None:
        """Record HalfClose (reader side)."""
        self.half_closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def release(self) -> None:
        """Let a reader waiting for inbox space go on."""
        space = self.space
        if space is not None and not space.done():
            space.set_result(None)

    async def read(self) -> Message | None:
        """The next request message, or None after HalfClose.

        Raises:
            asap.errors.MalformedFrame: The message does not parse as the method's request type
                (this call fails with INVALID_ARGUMENT; the connection goes on).
        """
        inbox = self.inbox
        while not inbox:
            if self.half_closed:
                return None
            waiter = self.waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        frame = inbox.popleft()
        if self.space is not None and len(inbox) < INBOX_HIGH_WATER // 2:
            self.release()
        return self.conn.session.codec.unpack_message(frame, self.request_type)

    async def write(self, message: Message) -> None:
        """Send one response message; a unary response is kept and sent with the OK status.

        Raises:
            asap.errors.MessageTooLarge: A streamed message over ``max_message_bytes``; the call
                is still open.
        """
        if self.spec.server_streaming:
            conn = self.conn
            if conn.session.send_message(self.stream_id, message):
                await conn.flush()
        else:
            self.response = message


class _ServerConnection(BridgeConnection[ServerSession]):
    """One accepted bridge connection: its reader, its calls and their tasks."""

    def __init__(
        self,
        transport: WebSocketServerTransport,
        ws: ServerConnection,
        session: ServerSession,
    ) -> None:
        super().__init__(ws, session, "asap.ws.server.call")
        self.dispatcher = transport.dispatcher
        self.health = transport.health
        self.peer = peer_of(ws)
        request = ws.request
        self.authorization = None if request is None else _credentials(request)
        self.calls: dict[int, _Call] = {}
        """Calls whose handler runs, by stream id."""
        self.running = 0
        self.idle = asyncio.Event()
        """Set while no handler runs (graceful stop waits for it)."""
        self.idle.set()
        self.violation: ProtocolViolation | None = None

    async def run(self) -> None:
        """Read frames until the connection ends; then cancel and await every handler."""
        ws, session = self.ws, self.session
        clock = asyncio.get_running_loop().time
        try:
            while self.violation is None:
                try:
                    data = await ws.recv()
                except ConnectionClosed:
                    break
                session.receive_data(data, clock())
                blocked: _Call | None = None
                for event in session.events_received():
                    blocked = self._on_event(event) or blocked
                if session.outgoing:
                    await self.flush()
                if blocked is not None:
                    await self._wait_for_space(blocked)
        except Exception:  # noqa: BLE001 - a bug here must still close the connection
            _log.exception("the bridge connection from %s failed", self.peer)
            self.violation = ProtocolViolation(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            await self.tasks.close()
            violation = self.violation
            if violation is not None:
                _log.info("closing %s: %s", self.peer, violation.reason)
                await self.close(violation.close_code, violation.reason)
            else:  # the peer closed: this only waits for the TCP connection to end
                await self.close(CloseCode.NORMAL_CLOSURE, "")

    def _on_event(self, event: ServerEvent) -> _Call | None:
        """Act on one session event; returns a call whose inbox is over the high-water mark."""
        if isinstance(event, MessageReceived):
            call = self.calls.get(event.stream_id)
            if call is not None:
                call.feed(event.message_frame)
                if len(call.inbox) >= INBOX_HIGH_WATER:
                    return call
        elif isinstance(event, CallStarted):
            self._start(event)
        elif isinstance(event, HalfClosed):
            call = self.calls.get(event.stream_id)
            if call is not None:
                call.end_input()
        elif isinstance(event, CallCancelled | StreamError):
            # The session has queued the CallStatus (CANCELLED, or the stream's error).
            call = self.calls.pop(event.stream_id, None)
            if call is not None and call.task is not None:
                call.task.cancel()
            if isinstance(event, StreamError):
                _log.debug("stream %d from %s failed: %s", event.stream_id, self.peer, event.error)
        elif isinstance(event, ProtocolViolation):
            self.violation = event
        return None

    def _start(self, event: CallStarted) -> None:
        stream_id = event.stream_id
        spec = METHODS.get(event.method)
        if spec is None and event.method == HEALTH_CHECK.path:
            spec = HEALTH_CHECK
        if spec is None:
            message = f"unknown method {event.method[:200]!r}"
            self.session.send_error(stream_id, UnknownMethod(message))
            return
        if self.tasks.closed:  # the connection is shutting down
            self.session.send_error(stream_id, ShuttingDown())
            return
        metadata = event.metadata
        if self.authorization is not None and not _has_authorization(metadata):
            metadata = ((AUTHORIZATION, self.authorization), *metadata)
        ctx = CallContext(
            method=spec,
            metadata=metadata,
            peer=self.peer,
            transport=TRANSPORT,
            timeout=event.timeout,
        )
        call = _Call(self, stream_id, spec)
        self.calls[stream_id] = call
        self.running += 1
        self.idle.clear()
        call.task = self.tasks.spawn(self._run_call(ctx, call), name=self.name)

    async def _wait_for_space(self, call: _Call) -> None:
        if call.task is None or call.task.done() or len(call.inbox) < INBOX_HIGH_WATER:
            return
        call.space = asyncio.get_running_loop().create_future()
        try:
            await call.space
        finally:
            call.space = None

    async def _run_call(self, ctx: CallContext, call: _Call) -> None:
        try:
            try:
                if call.spec is HEALTH_CHECK:
                    error = await self.health.check(call)
                else:
                    error = await self.dispatcher.handle(ctx, call)
            finally:
                self.calls.pop(call.stream_id, None)
                call.release()
            await self._finish(ctx, call, error)
        finally:
            self.running -= 1
            if self.running == 0:
                self.idle.set()

    async def _finish(self, ctx: CallContext, call: _Call, error: AsapError | None) -> None:
        """Send the call's status and trailers (a unary response with them); count strikes."""
        session = self.session
        stream_id = call.stream_id
        trailers = ctx.trailing_metadata
        response: Message | None = None
        if error is None and not call.spec.server_streaming:
            response = call.response
            if response is None:
                error = Internal(_NO_RESPONSE)
        try:
            try:
                # A unary answer rides in the CallStatus: one frame (bridge.proto "Combined
                # frames"); on error the response is dropped, as gRPC sends it with OK only.
                status = _OK if error is None else to_status(error)
                sent = session.send_status(stream_id, status, trailers, message=response)
            except MessageTooLarge as exc:
                error = exc  # nothing was queued: the call fails with this instead
                sent = session.send_status(stream_id, to_status(exc), trailers)
        except (ValueError, TypeError):
            # Trailers that break the metadata rules, or (JSON) a detail type the pool lacks.
            _log.exception("cannot encode the status of %s", ctx.method.path)
            sent = session.send_status(stream_id, to_status(Internal()))
        if not sent:
            return
        await self.flush()
        if error is None:
            session.record_call_ok()
        elif isinstance(error, RateLimited) and session.record_rate_limited():
            for event in session.events_received():
                if isinstance(event, ProtocolViolation):
                    _log.info("closing %s: %s", self.peer, event.reason)
                    await self.close(event.close_code, event.reason)

    async def shutdown(self, code: int, reason: str) -> None:
        """Cancel every handler, write what is queued, and close the connection."""
        await self.tasks.close()
        await self.flush()
        await self.close(code, reason)


class WebSocketServerTransport(ServerTransport):
    """Serves AgentService over the WebSocket bridge on one address and path.

    Args:
        dispatcher: Runs every call.
        health: The serving state: when it turns to not serving (the server has begun to drain)
            every connection, and each one opened later, gets GoAway; their new calls are refused
            with SHUTTING_DOWN while the calls in flight finish.
        host: The address to bind (an IP address or a host name).
        port: The port; 0 picks a free one (``endpoint`` shows the real one after start).
        limits: Frame and message sizes, streams per connection, connections, handshake
            timeout, heartbeats and rate-limit strikes.
        tls: Certificate and key (``wss://``); with ``client_ca`` clients must present a
            certificate (mTLS). None serves plaintext ``ws://``.
        path: The URL path of the bridge; other paths are answered with HTTP 404.
        allowed_origins: Origins a browser may connect from (exact ``scheme://host[:port]``);
            another Origin is refused with HTTP 403. A handshake without an Origin header (not a
            browser, so not a cross-site request) is accepted. None accepts every origin.
    """

    reuse_port: bool = False
    """wt-redis: bind with SO_REUSEPORT (set by Server.add_websocket for ``asap serve --workers``)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        health: HealthState,
        *,
        host: str,
        port: int,
        limits: Limits,
        tls: ServerTLS | None,
        path: str,
        allowed_origins: Sequence[str] | None,
    ) -> None:
        if not path.startswith("/"):
            message = f"path must start with '/', got {path!r}"
            raise ValueError(message)
        self.dispatcher = dispatcher
        self.health = health
        self._health = health
        self._host = host
        self._port = port
        self._limits = limits
        self._tls = tls
        self._path = path
        self._origins = None if allowed_origins is None else frozenset(allowed_origins)
        self._server: WsServer | None = None
        self._connections: set[_ServerConnection] = set()
        self._served = False
        self._draining = False
        self._closing = False
        self._stopping: asyncio.Task[None] | None = None

    @property
    def connections(self) -> int:
        """How many bridge connections are open."""
        return len(self._connections)

    async def start(self) -> None:
        """Bind and start serving.

        Raises:
            InvalidState: The transport was already started or stopped.
            OSError: The address cannot be bound.
        """
        if self._server is not None or self._stopping is not None:
            message = "the WebSocket transport was already started"
            raise InvalidState(message)
        limits = self._limits
        server = await serve(
            self._serve,
            self._host,
            self._port,
            subprotocols=[Subprotocol(name) for name in SUBPROTOCOLS],
            select_subprotocol=_select_subprotocol,
            process_request=self._process_request,
            compression=None,
            max_size=limits.max_frame_bytes,
            open_timeout=limits.handshake_timeout,
            ping_interval=limits.heartbeat_interval,
            ping_timeout=limits.heartbeat_timeout,
            close_timeout=limits.heartbeat_timeout,
            server_header=None,
            ssl=None if self._tls is None else self._tls.ssl_context(),
            reuse_port=self.reuse_port,  # wt-redis: asap serve --workers shares the port
        )
        self._server = server
        self._port = server.sockets[0].getsockname()[1]
        self._health.subscribe(self._on_health)

    @property
    def endpoint(self) -> manifest_pb2.Endpoint:
        """``ws://host:port/path`` (or ``wss://``) with the bound port.

        Raises:
            InvalidState: Before :meth:`start`.
        """
        if self._server is None:
            message = "the WebSocket transport has not been started"
            raise InvalidState(message)
        scheme = "ws" if self._tls is None else "wss"
        return manifest_pb2.Endpoint(
            transport=manifest_pb2.TRANSPORT_WEBSOCKET,
            url=listener_url(scheme, self._host, self._port, self._path),
        )

    def _on_health(self, serving: bool) -> None:
        """Start draining when the server stops serving (its drain begins before stop())."""
        if serving:
            self._served = True
        elif self._served and not self._draining:
            self._drain()

    def _drain(self) -> None:
        """Send GoAway on every connection, and on each one opened from now on."""
        self._draining = True
        for conn in self._connections:
            conn.session.send_goaway(GOAWAY_REASON)
            conn.flush_soon()

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """Answer health probes; refuse other paths (404), foreign Origins (403), two credentials (400)."""
        path = urlsplit(request.path).path
        if path == HEALTH_PATH and "Upgrade" not in request.headers:
            # Load balancers and probes that cannot speak gRPC health read the same state here.
            if self._health.serving:
                return ws.respond(http.HTTPStatus.OK, "SERVING\n")
            return ws.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "NOT_SERVING\n")
        if path != self._path:
            text = f"no WebSocket bridge at this path; use {self._path}\n"
            return ws.respond(http.HTTPStatus.NOT_FOUND, text)
        if len(request.headers.get_all("Authorization")) > 1:
            return ws.respond(http.HTTPStatus.BAD_REQUEST, "more than one Authorization header\n")
        if self._origins is not None:
            origins = request.headers.get_all("Origin")
            if len(origins) > 1 or (origins and origins[0] not in self._origins):
                return ws.respond(http.HTTPStatus.FORBIDDEN, "origin not allowed\n")
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        """Run one connection (websockets' connection handler)."""
        if self._closing:
            await ws.close(CloseCode.GOING_AWAY, GOAWAY_REASON)
            return
        if len(self._connections) >= self._limits.max_connections:
            await ws.close(CloseCode.TRY_AGAIN_LATER, "connection limit reached")
            return
        if ws.ping_interval is not None:
            # websockets pings at a fixed period from the handshake, so connections opened together
            # (a reconnect storm, a benchmark) would ping in phase forever; jitter spreads them.
            ws.ping_interval *= _JITTER.uniform(1 - HEARTBEAT_JITTER, 1 + HEARTBEAT_JITTER)
        # select_subprotocol accepted only the two the session supports.
        session = ServerSession.for_subprotocol(ws.subprotocol or "", self._limits)
        conn = _ServerConnection(self, ws, session)
        self._connections.add(conn)
        if self._draining:  # calls on it are refused with SHUTTING_DOWN, as on gRPC
            session.send_goaway(GOAWAY_REASON)
            conn.flush_soon()
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)

    async def stop(self, grace: float | None) -> None:
        """Stop accepting, send GoAway, let calls finish for ``grace`` seconds, then close (1001).

        Idempotent; concurrent callers all wait for the same shutdown. When it returns every
        connection is closed and every task the transport started has finished.
        """
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop(grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float | None) -> None:
        server = self._server
        if server is None:
            return
        if not self._draining:
            self._drain()
        self._closing = True
        # Closes the listening sockets; handshakes still in progress are refused with 503.
        server.close(close_connections=False)
        connections = list(self._connections)
        for conn in connections:
            await conn.flush()
        try:
            async with asyncio.timeout(grace):
                for conn in connections:
                    await conn.idle.wait()
        except TimeoutError:
            _log.info("grace period over; cancelling the calls still running")
        await asyncio.gather(
            *(conn.shutdown(CloseCode.GOING_AWAY, GOAWAY_REASON) for conn in connections)
        )
        await server.wait_closed()
