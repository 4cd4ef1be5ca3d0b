"""One accepted bridge connection: handshake, session events, and the calls running on it.

Every CallStart becomes a handler task, owned by the connection, that builds a
:class:`~asap.core.context.CallContext` and awaits :meth:`Dispatcher.handle
<asap.core.dispatch.Dispatcher.handle>` with a :class:`~asap.transports.ws.server_call.BridgeServerCall`.
Handlers, middleware, deadlines and the error boundary are the core's, so a call behaves as it does
over gRPC. This module only turns session events into calls and calls' outcomes into frames.

Credentials. The handshake's ``Authorization`` header, or for browsers (which cannot set headers)
the ``access_token`` query parameter, is added as ``authorization: Bearer <token>`` metadata to every
call on the connection whose own CallStart metadata carries none, so the core's
:class:`~asap.core.middleware.BearerAuth` checks it exactly as it checks gRPC metadata. With
handshake authentication (:mod:`asap.transports.ws.handshake_auth`) they are verified before the
upgrade as well, in a task, while the connection is not read.

Admission. A connection takes a slot of the listener's global and per-peer caps once its handshake
completes (1013 when there is none), and is closed (GoAway, then 1001) once it has carried no call
for :attr:`~asap.protocol.limits.Limits.connection_idle_timeout`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING, Final

from google.protobuf.message import Message
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from asap.core.context import ANONYMOUS_PREFIX, CallContext, Identity
from asap.core.health import HEALTH_CHECK
from asap.core.method import METHODS
from asap.core.middleware import AUTHORIZATION
from asap.core.tasks import IdleSignal, TaskOwner, start_eagerly
from asap.errors import (
    AsapError,
    DeadlineExceeded,
    Internal,
    MessageTooLarge,
    RateLimited,
    ShuttingDown,
    Unauthenticated,
    UnknownMethod,
    to_status,
)
from asap.protocol.admission import peer_key
from asap.protocol.events import (
    CallCancelled,
    CallStarted,
    CreditAvailable,
    HalfClosed,
    MessageReceived,
    ProtocolViolation,
    StreamError,
)
from asap.protocol.frames import OK, CloseCode, Codec
from asap.protocol.metadata import Metadata
from asap.protocol.proxies import FORWARDED_FOR, parse_peer, peer_string
from asap.protocol.session import ServerSession
from asap.transports.ws.handshake import credentials
from asap.transports.ws.handshake_auth import check_credentials
from asap.transports.ws.pump import BridgePump
from asap.transports.ws.server_call import BridgeServerCall


if TYPE_CHECKING:
    from asap.transports.ws.server import WebSocketServerTransport


_log = logging.getLogger("asap.server")

# Bound once: compiled, a module attribute is looked up at every use (per read, per call).
_thread_time: Final = time.thread_time
_perf_counter: Final = time.perf_counter

TRANSPORT: Final = "ws"
"""The ``CallContext.transport`` of calls this transport serves (for logs only)."""

GOAWAY_REASON: Final = "server shutting down"
"""The GoAway and close reason of a graceful stop."""

CALL_TASK: Final = "asap.ws.server.call"
"""The name of a call's task."""

HANDSHAKE_TASK: Final = "asap.ws.server.handshake"
"""The name of the task that verifies a handshake's credentials."""

_VERIFYING: Final = object()
"""The read hold while a handshake's credentials are verified."""

USER_AGENT: Final = "user-agent"
"""The metadata key of the client's user agent (gRPC's header; the bridge's handshake header)."""
_MAX_USER_AGENT: Final = 512
_TEXT_CHARS: Final = frozenset(chr(c) for c in range(0x20, 0x7F))
_NO_RESPONSE: Final = "the method produced no response"
IDLE_REASON: Final = "idle timeout"
"""The GoAway and close (1001) reason of a connection closed for carrying no call."""


def _has_authorization(metadata: Metadata) -> bool:
    return any(key == AUTHORIZATION for key, _ in metadata)


class ServerBridgeConnection(BridgePump[ServerSession]):
    """The server side of one bridge connection.

    Args:
        listener: The transport that accepted it (dispatcher, health, limits, policy, registry).
        ws: websockets' server protocol for the connection.
    """

    def __init__(self, listener: WebSocketServerTransport, ws: ServerProtocol) -> None:
        limits = listener.limits
        super().__init__(ws, close_timeout=limits.heartbeat_timeout)
        self.server_ws = ws
        self.listener = listener
        self.tasks = TaskOwner("asap.ws.server.call")
        """Owns every handler task of this connection."""
        self.calls: dict[int, BridgeServerCall] = {}
        """Calls whose handler runs, by stream id."""
        self.authorization: str | None = None
        self.user_agent: str | None = None
        self._connection_metadata: Metadata = ()
        """What a call without metadata of its own sees: the handshake's credentials and
        user-agent (set once the handshake is accepted)."""
        """The handshake's User-Agent header, given to calls as ``user-agent`` metadata."""
        self.tls_identity: Identity | None = None
        """The identity of the verified client certificate (mTLS), given to every call."""
        self.call_peer: str | None = None
        """The client a trusted proxy forwarded this connection for: the peer calls see."""
        self._handler_time = 0.0
        """CPU seconds the current read spent running calls eagerly (not charged to the decode
        budget)."""
        self.idle = IdleSignal()
        """Idle while no handler runs (graceful stop waits for it)."""
        self._running = 0
        self._handshake_timer: asyncio.TimerHandle | None = None
        self.peer_key = "unknown"
        """The peer for per-peer limits: its IPv4 address or IPv6 /64 (behind a trusted proxy,
        the forwarded client's)."""
        self._idle_since = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._verifying: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the handshake deadline and join the listener's registry."""
        super().connection_made(transport)
        address: object = transport.get_extra_info("peername")
        if isinstance(address, tuple) and address:
            self.peer_key = peer_key(str(address[0]))
        self.listener.connection_made(self)
        self._handshake_timer = self.loop.call_later(
            self.listener.limits.handshake_timeout, self._handshake_expired
        )

    def data_received(self, data: bytes) -> None:
        """Decode what arrived, then stop reading for a while if that took over the decode slice.

        The per-connection decode budget (:attr:`Limits.decode_slice`): a connection whose bytes
        took more than the slice of loop time is not read for ``decode_pause_factor`` times what
        it used, so a peer sending expensive frames gets a bounded share of the event loop and the
        other connections, gRPC's included, keep theirs. The time is the loop thread's CPU time:
        while the thread waits (another process on the core, another thread holding the GIL) the
        loop runs nobody's frames, so that wait is not the peer's to pay.
        """
        started = _thread_time()
        self._handler_time = 0.0
        super().data_received(data)
        # Only decoding counts: calls that ran eagerly inside this read did the peer's legitimate
        # (rate-limited) work, and charging it would throttle a busy, honest connection.
        used = _thread_time() - started - self._handler_time
        limits = self.listener.limits
        if used > limits.decode_slice and not self.closed:
            self.pause_reading_for(used * limits.decode_pause_factor)

    def _handshake_expired(self) -> None:
        if self.session is None:
            _log.info("%s: no WebSocket handshake in time", self.peer)
            self.abort()

    def on_handshake(self, event: Request | Response) -> None:
        """Check the request against the policy (and its credentials), then accept or refuse it."""
        if not isinstance(event, Request):  # pragma: no cover - a server receives requests only
            return
        listener = self.listener
        if listener.trusted_proxies:
            # Calls see the client a trusted proxy names, and per-peer limits count it.
            forwarded = event.headers.get_all(FORWARDED_FOR)
            client = listener.trusted_proxies.client_of(parse_peer(self.peer), forwarded)
            if client is not None:
                self.peer_key = peer_key(str(client))
                self.call_peer = peer_string(client)
        response = listener.policy.check(self.server_ws, event)
        if response is None and listener.handshake_auth is not None:
            # The verifier is async: answer when it returns. Nothing is read meanwhile (a client
            # sends no frame before the 101), and the handshake deadline still runs.
            self._hold(_VERIFYING)
            self._verifying = self.tasks.spawn(self._verify(event), name=HANDSHAKE_TASK)
            return
        self._answer(event, response)

    async def _verify(self, request: Request) -> None:
        auth = self.listener.handshake_auth
        if auth is None:  # pragma: no cover - only started with one
            return
        charge = self.listener.handshake_charge
        response = await check_credentials(
            auth,
            self.server_ws,
            request,
            None if charge is None else functools.partial(charge, ANONYMOUS_PREFIX + self.peer_key),
        )
        self._verifying = None
        if self.closed:
            return
        self._release(_VERIFYING)
        self._answer(request, response)
        self.flush()

    def _answer(self, event: Request, response: Response | None) -> None:
        """Send the handshake's response: the refusal, or the upgrade and the session's start."""
        ws = self.server_ws
        listener = self.listener
        if response is None:
            response = ws.accept(event)
        ws.send_response(response)
        if response.status_code != 101:
            return
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        limits = listener.limits
        # accept() chose one of SUBPROTOCOLS (select_subprotocol refuses the rest).
        session = ServerSession.for_subprotocol(ws.subprotocol or "", limits)
        self.session = session
        # websockets reads max_message_size for every frame: JSON messages are refused (1009) as
        # soon as they pass their own, smaller cap, not after buffering max_frame_bytes of them.
        ws.max_message_size = session.codec.max_frame_bytes
        self.authorization = credentials(event)
        if self.transport is not None:
            self.tls_identity = listener.client_identity(self.transport)
        user_agent = event.headers.get("User-Agent")
        if user_agent and set(user_agent) <= _TEXT_CHARS:
            # gRPC handlers see the client's user-agent header; bridge handlers see the handshake's.
            self.user_agent = user_agent[:_MAX_USER_AGENT]
        if self.authorization is not None:
            self._connection_metadata += ((AUTHORIZATION, self.authorization),)
        if self.user_agent is not None:
            self._connection_metadata += ((USER_AGENT, self.user_agent),)
        if listener.closing:
            self.close(CloseCode.GOING_AWAY, GOAWAY_REASON)
            return
        refused = listener.bridge_opened(self)
        if refused is not None:
            self.close(CloseCode.TRY_AGAIN_LATER, refused)
            return
        self.start_heartbeat(listener.heartbeat_period(), limits.heartbeat_timeout)
        self._became_idle()
        if listener.draining:  # calls on it are refused with SHUTTING_DOWN, as on gRPC
            session.send_goaway(GOAWAY_REASON)

    def on_closed(self) -> None:
        """The connection ended: every call still running is cancelled."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._verifying is not None:
            self._verifying.cancel()  # the handshake deadline passed, or the peer left
        session = self.session
        if session is not None:
            session.receive_eof(self.close_code)
            for event in session.events_received():
                self.on_event(event)
        for call in list(self.calls.values()):
            if call.task is not None:
                call.task.cancel()
            elif call.ctx is not None:
                self._forget(call)
        self.listener.connection_lost(self)

    async def finish(self) -> None:
        """Cancel every handler, then wait for them (after the connection has ended)."""
        await self.tasks.close()

    @property
    def codec(self) -> Codec:
        """The negotiated subprotocol's codec."""
        return self._session().codec

    def _session(self) -> ServerSession:
        session = self.session
        if session is None:  # pragma: no cover - calls exist only after the handshake
            message = "no session before the handshake"
            raise RuntimeError(message)
        return session

    # -- events --------------------------------------------------------------------------

    def on_event(self, event: object) -> None:
        """Act on one session event."""
        if isinstance(event, MessageReceived):
            call = self.calls.get(event.stream_id)
            if call is not None:
                call.feed(event.message_frame, event.size)
                self.hold_reading(call, len(call.inbox))
        elif isinstance(event, CallStarted):
            self._start(event)
        elif isinstance(event, CreditAvailable):
            call = self.calls.get(event.stream_id)
            if call is not None:
                call.credit_available()
        elif isinstance(event, HalfClosed):
            call = self.calls.get(event.stream_id)
            if call is not None:
                call.end_input()
                if call.task is None:
                    self._launch(call, eager=True)
        elif isinstance(event, CallCancelled | StreamError):
            # The session has queued the CallStatus (CANCELLED, or the stream's error).
            call = self.calls.pop(event.stream_id, None)
            if call is not None:
                # A write waiting for credit must see the stream end (its send is then dropped):
                # the delivery it belongs to may run on, and would otherwise wait forever.
                call.credit_available()
                if isinstance(event, CallCancelled) and event.deadline_exceeded and call.ctx:
                    call.ctx.deadline_reached()
                if call.task is not None:
                    call.task.cancel()
                elif call.ctx is not None:
                    self._forget(call)
            if isinstance(event, StreamError):
                _log.debug("stream %d from %s failed: %s", event.stream_id, self.peer, event.error)
        elif isinstance(event, ProtocolViolation):
            _log.info("closing %s: %s", self.peer, event.reason)
            self.close(event.close_code, event.reason)

    def consumed(self, call: BridgeServerCall, size: int) -> None:
        """A handler took a request message: grant the client credit back (or resume reading)."""
        session = self._session()
        if size:
            session.consume(call.stream_id, size)
            if session.outgoing:
                self.flush_soon()
        else:
            self.release_reading(call, len(call.inbox))

    def session_can_send(self, stream_id: int) -> bool:
        """Whether the stream has credit (``True`` once it ended: the send is dropped)."""
        session = self.session
        return session is None or session.closed or session.can_send(stream_id)

    def send_message(self, stream_id: int, message: Message) -> bool:
        """Queue one streamed response message and schedule the write."""
        if self._session().send_message(stream_id, message):
            self.flush_soon()
            return True
        return False

    # -- calls ---------------------------------------------------------------------------

    def _start(self, event: CallStarted) -> None:
        session = self._session()
        stream_id = event.stream_id
        spec = METHODS.get(event.method)
        if spec is None and event.method == HEALTH_CHECK.path:
            spec = HEALTH_CHECK
        if spec is None:
            session.send_error(stream_id, UnknownMethod(f"unknown method {event.method[:200]!r}"))
            return
        if self.tasks.closed:  # the connection is shutting down
            session.send_error(stream_id, ShuttingDown())
            return
        metadata = event.metadata
        if not metadata:
            metadata = self._connection_metadata  # most calls carry none of their own
        else:
            if self.authorization is not None and not _has_authorization(metadata):
                metadata = ((AUTHORIZATION, self.authorization), *metadata)
            if self.user_agent is not None and not any(key == USER_AGENT for key, _ in metadata):
                metadata = (*metadata, (USER_AGENT, self.user_agent))
        ctx = CallContext(
            method=spec,
            metadata=metadata,
            peer=self.call_peer or self.peer,
            transport=TRANSPORT,
            timeout=event.timeout,
            deadline_enforced_by_transport=True,  # one timer per connection: watch_deadline
            clock=self.clock,
        )
        if self.tls_identity is not None:
            ctx.identity = ctx.tls_identity = self.tls_identity
        call = BridgeServerCall(self, stream_id, spec)
        call.ctx = ctx
        if event.message is not None:
            call.inbox.append((event.message, event.message_size))
        call.half_closed = event.half_closed
        self.calls[stream_id] = call
        if not self._running:
            self.idle.busy()
        self._running += 1
        if spec.client_streaming:
            self._launch(call)
        elif event.half_closed:
            # A unary request starts when it is complete (here, for a combined CallStart; else at
            # its HalfClose): it runs eagerly, to the end unless it suspends, before this read is
            # written back. One that finishes so needs no deadline watch at all.
            self._launch(call, eager=True)
        if ctx.deadline is not None and call.running():
            self.watch_deadline(call, ctx.deadline)

    def _launch(self, call: BridgeServerCall, *, eager: bool = False) -> None:
        """Start the call's handler: in a task, or eagerly (see asap.core.tasks.start_eagerly)."""
        ctx = call.ctx
        if ctx is None or call.task is not None:
            return
        coro = self._run_call(ctx, call)
        if not eager:
            call.task = self.tasks.spawn(coro, name=CALL_TASK)
            return
        ctx.eager = True
        # The wall clock, not the thread's CPU time as data_received reads it: a tenth of the
        # cost, paid per call. It can only overstate what the handler used (time the thread was
        # preempted), so an honest connection is never charged more decode time for it.
        started = _perf_counter()
        call.task = start_eagerly(self.tasks, coro, name=CALL_TASK)
        self._handler_time += _perf_counter() - started
        ctx.eager = False  # finished, or suspended and now continuing in call.task

    def _forget(self, call: BridgeServerCall) -> None:
        """A call that ended before its handler started (its stream failed or timed out)."""
        self.calls.pop(call.stream_id, None)
        self.forget_deadline(call)
        call.ctx = None
        self._call_done()

    def _call_done(self) -> None:
        self._running -= 1
        if self._running == 0:
            self.idle.idle()
            self._became_idle()

    # -- idle timeout: Limits.connection_idle_timeout, as gRPC's max_connection_idle -------

    def _became_idle(self) -> None:
        """No call is open from now: close the connection if it stays so for the idle timeout.

        One timer at most per connection: a busy connection only moves ``_idle_since``, and the
        timer, when it fires early, re-arms itself for the remaining time.
        """
        timeout = self.listener.limits.connection_idle_timeout
        self._idle_since = self.clock()
        if timeout and self._idle_timer is None and not self.closed:
            self._idle_timer = self.loop.call_at(self._idle_since + timeout, self._idle_due)

    def _idle_due(self) -> None:
        self._idle_timer = None
        if self._running or not self.is_open:
            return  # a call is open: the next _call_done re-arms the timer
        due = self._idle_since + self.listener.limits.connection_idle_timeout
        if self.clock() < due:
            self._idle_timer = self.loop.call_at(due, self._idle_due)
            return
        _log.debug("closing %s: no call for the idle timeout", self.peer)
        # GoAway first, as gRPC's GOAWAY: a client stops starting calls here and reconnects for
        # its next one; a CallStart already on its way is refused with SHUTTING_DOWN (retried).
        self._session().send_goaway(IDLE_REASON)
        self.close(CloseCode.GOING_AWAY, IDLE_REASON)

    def on_deadline(self, call: object) -> None:
        """A call's deadline passed: cancel its handler (DEADLINE_EXCEEDED), or answer it."""
        if not isinstance(call, BridgeServerCall):  # pragma: no cover - only calls are watched
            return
        call.deadline_hit = True
        if call.task is not None:
            call.task.cancel()
        elif call.ctx is not None:  # its request never completed
            self._forget(call)
            self._session().send_error(call.stream_id, DeadlineExceeded())
            self.flush_soon()

    async def _run_call(self, ctx: CallContext, call: BridgeServerCall) -> None:
        try:
            try:
                try:
                    if call.spec is HEALTH_CHECK:
                        error = await self._health_check(call)
                    else:
                        error = await self.listener.dispatcher.handle(ctx, call)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if not call.deadline_hit or task is None:
                        raise
                    task.uncancel()  # our own deadline timer cancelled it: answer, do not die
                    error = DeadlineExceeded()
            finally:
                self.calls.pop(call.stream_id, None)
                self.forget_deadline(call)
                self.release_reading(call)
            await self._finish(ctx, call, error)
        finally:
            call.ctx = None
            self._call_done()

    async def _health_check(self, call: BridgeServerCall) -> AsapError | None:
        try:
            return await self.listener.health.check(call)
        except AsapError as error:  # a malformed request: INVALID_ARGUMENT, never silence
            return error

    async def _finish(
        self, ctx: CallContext, call: BridgeServerCall, error: AsapError | None
    ) -> None:
        """Send the call's status and trailers (a unary response with them); count strikes."""
        session = self._session()
        stream_id = call.stream_id
        trailers = ctx.trailing_metadata
        response: Message | None = None
        if error is None and not call.spec.server_streaming:
            response = call.response
            if response is None:
                error = Internal(_NO_RESPONSE)
            else:
                await call.wait_credit()
        try:
            try:
                # A unary answer rides in the CallStatus: one frame (bridge.proto "Combined
                # frames"); on error the response is dropped, as gRPC sends it with OK only.
                status = OK if error is None else to_status(error)
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
        self.flush_soon()
        if error is None and call.spec is not HEALTH_CHECK:
            # A free call (health) does not wipe the strikes: one Check after every 19 refused
            # calls would otherwise keep a peer calling past its rate limit forever.
            session.record_call_ok()
        elif isinstance(error, RateLimited | Unauthenticated) and session.record_rate_limited():
            # A refused credential is a strike too: guessing tokens ends the connection (1008).
            for event in session.events_received():
                self.on_event(event)

    async def shutdown(self, code: int, reason: str) -> None:
        """Cancel every handler, write what is queued, and close the connection."""
        await self.tasks.close()
        self.flush()
        self.close(code, reason)
        await self.wait_closed()
