"""WebSocketChannel: the Channel contract over the WebSocket bridge (bridge.proto).

Theory of operation. A channel holds at most one usable connection at a time. It connects lazily,
on the first call; concurrent first calls share one connection attempt. Each connection has a
:class:`~asap.protocol.client_session.ClientSession` and a reader task that feeds the session and
routes its events to per-call inboxes
(:class:`~asap.transports.ws.client_connection.ClientCall`). A call is a stream: ``unary()`` sends
one CallStart carrying the request and the HalfClose (bridge.proto "Combined frames"), then waits
for the CallStatus, which from an ASAP server carries the response too; ``open_stream()`` returns a
:class:`WebSocketResponseStream` whose pump task opens the call (for server-streaming methods the
same single CallStart) and, for client-streaming methods, writes the request iterator out, then
HalfClose.

Failures. A call fails with the AsapError the server's CallStatus carries (the same class the
handler raised, with its details and trailers). A connection that ends fails every call on it with
:class:`~asap.errors.ConnectionLost` (UNAVAILABLE) carrying the close code; the next call opens a new
connection after a backoff (:class:`ReconnectPolicy`) that grows with each failed attempt in a row.
The :class:`~asap.client.Client` retries unary calls that fail with UNAVAILABLE, and the server's
dedupe keeps that exactly-once. A frame from the server that breaks the bridge rules is logged
and fails the call it belongs to (MalformedFrame) or, when it belongs to none, closes the
connection (ConnectionLost with the close code); nothing is dropped silently. A GoAway lets the
calls on its connection finish while new calls go to a new connection.

Deadlines and cancellation. ``CallOptions.timeout`` goes to the server in CallStart and is enforced
here too: on expiry the call sends Cancel and raises DeadlineExceeded. Cancelling the task awaiting a
call sends Cancel, so the server cancels the handler. :meth:`WebSocketChannel.close` cancels a
connection attempt in progress, closes every connection with 1000 and awaits every task the channel
started; afterwards every call raises InvalidState.

Liveness relies on websockets' pings (``Limits.heartbeat_interval`` / ``heartbeat_timeout``); the
bridge's Ping frame exists for browsers, which cannot send WebSocket pings.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterable
from typing import Final
from urllib.parse import urlsplit

from google.protobuf.message import Message
from websockets.client import ClientProtocol
from websockets.exceptions import WebSocketException
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from asap.core.method import METHODS, Arity, MethodSpec
from asap.core.tasks import TaskOwner
from asap.errors import (
    AsapError,
    ConnectionLost,
    DeadlineExceeded,
    Internal,
    InvalidState,
    MalformedFrame,
    ShuttingDown,
    Unavailable,
)
from asap.protocol.frames import (
    LEGACY_SUBPROTOCOL_JSON,
    LEGACY_SUBPROTOCOL_PROTO,
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_PROTO,
    SUBPROTOCOLS,
    CloseCode,
)
from asap.protocol.limits import Limits
from asap.protocol.metadata import metadata_to_entries
from asap.tls import ClientTLS, check_plaintext_allowed
from asap.transports.base import CallOptions, Channel, Reply
from asap.transports.ws.client_connection import (
    PENDING,
    ClientBridgeConnection,
    ClientCall,
    remaining,
)
from asap.transports.ws.protocol_logger import CLIENT_LOGGER
from asap.transports.ws.reconnect import ReconnectPolicy, connection_error
from asap.transports.ws.stream import WebSocketResponseStream
from asap.v1 import manifest_pb2


_log = logging.getLogger("asap.client")

_CLOSED_MESSAGE: Final = "the channel is closed"

_LEGACY_OF: Final = {
    SUBPROTOCOL_PROTO: LEGACY_SUBPROTOCOL_PROTO,
    SUBPROTOCOL_JSON: LEGACY_SUBPROTOCOL_JSON,
}
"""The revision 1 name offered after each revision 2 one, so a server that predates it still answers."""

__all__ = ["ReconnectPolicy", "WebSocketChannel", "WebSocketResponseStream"]


class _Attempt:
    """One connection attempt, shared by every caller that waits for it."""

    __slots__ = ("error", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.error: AsapError | None = None


def _not_accepting(conn: ClientBridgeConnection | None) -> AsapError:
    """Why a connection just made takes no call: the server sent GoAway, or it closed."""
    session = None if conn is None else conn.session
    if session is not None and session.goaway_reason is not None:
        return ShuttingDown(f"the server is shutting down ({session.goaway_reason})")
    code = None if conn is None else conn.close_code
    if code == CloseCode.GOING_AWAY:
        # A draining server closes new connections at once; gRPC callers see SHUTTING_DOWN then.
        return ShuttingDown("the server is shutting down (it closed the connection with 1001)")
    return ConnectionLost("the connection closed before the call started", close_code=code)


class WebSocketChannel(Channel):
    """A Channel to one agent over the WebSocket bridge.

    Args:
        url: ``ws://host:port/path`` or ``wss://host:port/path`` (the bridge's default path is
            ``/asap/v1/ws``).
        tls: What to trust and, for mTLS, the client certificate; None uses the system trust
            store. Only ``wss://`` uses it: a ``ws://`` URL is plaintext whatever ``tls`` says.
        allow_insecure: Permit ``ws://`` (plaintext) to a host that is not loopback.
        subprotocol: ``asap.v1.proto`` (binary, the default) or ``asap.v1.json``.
        token: A bearer token sent in the handshake's ``Authorization`` header; the server applies
            it to every call on the connection that carries no ``authorization`` metadata.
        limits: Message and frame sizes, handshake timeout and heartbeats (defaults if None).
        reconnect: Backoff between connection attempts (defaults if None).

    Raises:
        ValueError: Not a ws:// or wss:// URL, no host, or an unknown subprotocol.
        InsecureTransportError: ``ws://`` to a host that is not loopback without
            ``allow_insecure``; nothing is connected.
    """

    transport = manifest_pb2.TRANSPORT_WEBSOCKET

    def __init__(
        self,
        url: str,
        *,
        tls: ClientTLS | None = None,
        allow_insecure: bool = False,
        subprotocol: str = SUBPROTOCOL_PROTO,
        token: str | None = None,
        limits: Limits | None = None,
        reconnect: ReconnectPolicy | None = None,
    ) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("ws", "wss"):
            message = f"a WebSocket bridge URL starts with ws:// or wss://, got {url!r}"
            raise ValueError(message)
        host = parts.hostname
        if not host:
            message = f"no host in {url!r}"
            raise ValueError(message)
        if subprotocol not in SUBPROTOCOLS:
            message = f"unknown subprotocol {subprotocol!r}; use one of {', '.join(SUBPROTOCOLS)}"
            raise ValueError(message)
        if scheme == "ws":
            # The URL decides: ws:// is plaintext whatever ``tls`` says (and is checked as such).
            if check_plaintext_allowed(url, host, allow_insecure=allow_insecure):
                _log.warning("plaintext WebSocket to %s: calls are not encrypted", url)
            self._ssl = None
        else:
            self._ssl = (tls or ClientTLS()).ssl_context()
        self.url = url
        """The bridge URL."""
        self.subprotocol = subprotocol
        """The subprotocol offered in the handshake."""
        self._limits = limits or Limits()
        self._reconnect = reconnect or ReconnectPolicy()
        self._headers = {"Authorization": f"Bearer {token}"} if token else None
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography
        self._tasks = TaskOwner("asap.ws.channel")
        self._current: ClientBridgeConnection | None = None
        self._connections: set[ClientBridgeConnection] = set()
        self._attempt: _Attempt | None = None
        self._failures = 0
        self._closed = False
        self._close_done = asyncio.Event()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def alive(self) -> bool:
        """False once closed, or once its current connection was lost (pools discard it then)."""
        current = self._current
        return not self._closed and (current is None or current.open)

    # -- connections ------------------------------------------------------------------------

    async def _connection(self) -> ClientBridgeConnection:
        """A connection that accepts calls: the current one, or a new one (one attempt at a time).

        Raises:
            InvalidState: The channel is closed.
            AsapError: The connection attempt failed (see :func:`connection_error`); or
                ConnectionLost when the channel was closed during it, or the new connection
                closed at once; or ShuttingDown when it brought a GoAway.
        """
        attempted = False
        while True:
            if self._closed:
                raise InvalidState(_CLOSED_MESSAGE)
            current = self._current
            if current is not None and current.accepting:
                return current
            if attempted:
                # The new connection was refused before this call could start on it; another
                # attempt would be refused the same way (and a draining server would see a storm).
                raise _not_accepting(current)
            attempt = self._attempt
            if attempt is None or attempt.task is None or attempt.task.done():
                attempt = self._attempt = _Attempt()
                attempt.task = self._tasks.spawn(self._connect(attempt), name="asap.ws.connect")
            task = attempt.task
            if task is None:  # pragma: no cover - set just above
                raise InvalidState(_CLOSED_MESSAGE)
            # wait(), not shield(): the attempt is shared, so one caller's cancellation must
            # not cancel it, and close() cancelling it must not look like ours.
            await asyncio.wait({task})
            if attempt.error is not None:
                error = attempt.error
                raise type(error)(error.message, reason=error.reason)
            if task.cancelled():
                message = "the channel was closed while connecting"
                raise ConnectionLost(message)
            attempted = True

    async def _connect(self, attempt: _Attempt) -> None:
        delay = self._reconnect.delay(self._failures, self._rng)
        if delay > 0:
            await asyncio.sleep(delay)
        limits = self._limits
        offered = [self.subprotocol]
        if self.subprotocol in _LEGACY_OF:
            offered.append(_LEGACY_OF[self.subprotocol])
        # websockets' sans-I/O client refuses to follow redirects by construction: a 3xx is just
        # a failed handshake (a redirect could lead ws:// off loopback, carrying the token).
        uri = parse_uri(self.url)
        ws = ClientProtocol(
            uri,
            subprotocols=[Subprotocol(name) for name in offered],
            max_size=limits.max_frame_bytes,
            logger=CLIENT_LOGGER,
        )
        conn = ClientBridgeConnection(ws, self.url, limits, self._headers)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limits.handshake_timeout):
                await loop.create_connection(
                    lambda: conn,
                    uri.host,
                    uri.port,
                    ssl=self._ssl,
                    server_hostname=uri.host if self._ssl is not None else None,
                )
                await conn.opened
        except (OSError, TimeoutError, WebSocketException, AsapError) as exc:
            self._failures += 1
            if isinstance(exc, AsapError):
                attempt.error = Unavailable(f"cannot connect to {self.url}: {exc.message}")
            else:
                attempt.error = connection_error(self.url, exc)
            _log.info("%s", attempt.error.message)
            await _discard(conn)
            return
        except asyncio.CancelledError:
            await _discard(conn)
            raise
        self._failures = 0
        conn.on_lost = self._connections.discard
        self._current = conn
        self._connections.add(conn)

    # -- calls ------------------------------------------------------------------------------

    async def unary(self, method: MethodSpec, request: Message, options: CallOptions) -> Reply:
        """Make a unary call.

        Raises:
            AsapError: The call failed: the class the server raised, DeadlineExceeded when the
                timeout passed, ConnectionLost when the connection ended first.
            InvalidState: The channel is closed.
            ValueError: ``method`` is not unary.
        """
        if method.arity is not Arity.UNARY_UNARY or self._closed:
            raise self._misuse(method)
        timeout = options.timeout
        conn = self._current
        call: ClientCall | None = None
        try:
            if conn is not None and conn.ready:
                deadline = None if timeout is None else conn.clock() + timeout
            else:
                # The slow path (connecting, or waiting for a stream) is the only one that needs
                # its own timer; a call on a ready connection uses the connection's (see below).
                loop = asyncio.get_running_loop()
                deadline = None if timeout is None else loop.time() + timeout
                async with asyncio.timeout_at(deadline):
                    if conn is None or not conn.accepting:
                        conn = await self._connection()
                    await conn.acquire_stream()
                    if not conn.accepting:
                        conn = await self._connection()
                timeout = remaining(deadline, loop)
            call = conn.start_call(method, options.metadata, timeout, request, half_close=True)
            if deadline is not None:
                conn.watch_deadline(call, deadline)
            frame = await call.next()
            if frame is None:
                message = "the server ended the call without a response"
                raise Internal(message)
            try:
                response = conn.client_session().codec.unpack_message(frame, method.response_type)
                # From an ASAP server the status came with the response (one frame): no await.
                rest = call.poll()
                if rest is PENDING:
                    rest = await call.next()
                if rest is not None:
                    message = "more than one response to a unary call"
                    raise MalformedFrame(message)
            except MalformedFrame as exc:
                _log.warning("%s: bad response to %s: %s", self.url, method.path, exc)
                conn.abandon(call, exc.message)
                raise
            return Reply(response, call.trailers)
        except TimeoutError:
            raise DeadlineExceeded from None
        except asyncio.CancelledError:
            if call is not None and conn is not None:
                conn.abandon(call, "the caller cancelled the call")
            raise

    def open_stream(
        self,
        method: MethodSpec,
        requests: Message | AsyncIterable[Message],
        options: CallOptions,
    ) -> WebSocketResponseStream:
        """Start a streaming call (see :meth:`Channel.open_stream`).

        Raises:
            InvalidState: The channel is closed.
            ValueError: ``method`` is unary.
            TypeError: An iterable for a server-streaming method, or one message for a
                client-streaming one.
        """
        if method.arity is Arity.UNARY_UNARY or self._closed:
            raise self._misuse(method)
        if method.client_streaming:
            if isinstance(requests, Message):
                message = f"{method.name} takes an async iterable of request messages"
                raise TypeError(message)
        elif not isinstance(requests, Message):
            message = f"{method.name} takes one request message"
            raise TypeError(message)
        metadata_to_entries(options.metadata)  # malformed metadata fails here, not later
        return WebSocketResponseStream(
            self._connection, self._tasks, self.url, method, requests, options
        )

    async def close(self) -> None:
        """Close every connection (1000); calls in flight fail with ConnectionLost. Idempotent.

        A connection attempt in progress is cancelled; when this returns no task the channel
        started is left.
        """
        if self._closed:
            await self._close_done.wait()
            return
        self._closed = True
        try:
            attempt = self._attempt
            if attempt is not None and attempt.task is not None:
                attempt.task.cancel()
            connections = list(self._connections)
            for conn in connections:
                conn.close(CloseCode.NORMAL_CLOSURE, "")
            await self._tasks.close()
            for conn in connections:
                await conn.wait_closed()
        finally:
            self._close_done.set()

    def _misuse(self, method: MethodSpec) -> Exception:
        if self._closed:
            return InvalidState(_CLOSED_MESSAGE)
        if METHODS.get(method.path) != method:
            return ValueError(f"unknown method {method.path}")
        kind = "streaming" if method.arity is Arity.UNARY_UNARY else "unary"
        return ValueError(f"{method.name} is not a {kind} method")


async def _discard(conn: ClientBridgeConnection) -> None:
    """Drop a connection whose handshake failed (or never began) and wait until it is gone."""
    if conn.transport is not None:
        conn.abort()
        await conn.wait_closed()
