"""The client side of one bridge connection: the handshake, per-call inboxes, stream slots, credit.

Every received WebSocket message goes through the
:class:`~asap.protocol.client_session.ClientSession` where it arrives (:mod:`asap.transports.ws.pump`),
and its events are routed: response messages and the final status to the call's
:class:`ClientCall`, credit to the call's writer, a broken stream's error to that call (logged), a
protocol violation to a close with its code (logged), and the end of the connection to every call
still open as :class:`~asap.errors.ConnectionLost` with the close code.

A call's inbox holds what the server sent and the caller has not yet taken; taking a message grants
the server its credit back (bridge.proto "Flow control"), so an inbox never holds more than a window
plus one message. Calls beyond the server's ``max_concurrent_streams`` wait for a free stream, as
gRPC queues streams beyond HTTP/2's limit, instead of failing.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Callable
from typing import Final

from google.protobuf.message import Message
from websockets.client import ClientProtocol
from websockets.http11 import Request, Response
from websockets.version import version as websockets_version

from asap._typing import Metadata
from asap.core import probes
from asap.core.method import MethodSpec
from asap.errors import AsapError, ConnectionLost, DeadlineExceeded, from_status
from asap.protocol.client_session import ClientSession
from asap.protocol.events import (
    CallEnded,
    CreditAvailable,
    GoAwayReceived,
    MessageReceived,
    ProtocolViolation,
    SettingsReceived,
    StreamError,
)
from asap.protocol.frames import MessageBody
from asap.protocol.limits import Limits
from asap.transports.ws.pump import BridgePump
from asap.v1 import status_pb2


USER_AGENT: Final = f"asap-python websockets/{websockets_version}"
"""The User-Agent header of the bridge client's handshake."""

_log = logging.getLogger("asap.client")


class Pending(enum.Enum):
    """The type of :data:`PENDING`."""

    PENDING = "pending"


PENDING: Final = Pending.PENDING
""":meth:`ClientCall.poll`: nothing has arrived yet (await :meth:`ClientCall.next`)."""


class ClientCall:
    """One call's inbox: response messages, then the final status or an error.

    Args:
        conn: The connection the call runs on.
        stream_id: The call's stream.
    """

    __slots__ = (
        "conn",
        "credit_waiter",
        "error",
        "frames",
        "on_end",
        "status",
        "stream_id",
        "trailers",
        "waiter",
    )

    def __init__(self, conn: ClientBridgeConnection, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.frames: deque[tuple[MessageBody, int]] = deque()
        self.status: status_pb2.Status | None = None
        self.trailers: Metadata = ()
        self.error: AsapError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.credit_waiter: asyncio.Future[None] | None = None
        self.on_end: Callable[[], None] | None = None

    @property
    def over(self) -> bool:
        """Whether the call has its final status or error."""
        return self.status is not None or self.error is not None

    def push(self, frame: MessageBody, size: int) -> None:
        """A response message arrived."""
        self.frames.append((frame, size))
        _wake(self.waiter)

    def end(self, status: status_pb2.Status, trailers: Metadata) -> None:
        """The server ended the call."""
        if not self.over:
            self.status, self.trailers = status, trailers
            self._ended()

    def fail(self, error: AsapError) -> None:
        """The call failed here (connection lost, malformed frame, cancelled, deadline)."""
        if not self.over:
            self.error = error
            self._ended()

    def _ended(self) -> None:
        _wake(self.waiter)
        _wake(self.credit_waiter)
        self.conn.call_ended(self)
        if self.on_end is not None:
            self.on_end()

    def poll(self) -> MessageBody | Pending | None:
        """The next response message if one is here; None when the call ended with OK; else PENDING.

        Raises:
            AsapError: The call failed; the error carries the trailers.
        """
        frames = self.frames
        if frames:
            frame, size = frames.popleft()
            if self.status is None and self.error is None:  # an ended call's credit is moot
                self.conn.consumed(self, size)
            return frame
        if self.error is not None:
            raise self.error
        status = self.status
        if status is None:
            return PENDING
        if status.code == 0:
            return None
        error = from_status(status)
        error.trailing_metadata = self.trailers
        self.error = error
        raise error

    async def next(self) -> MessageBody | None:
        """The next response message; None when the call ended with OK.

        Raises:
            AsapError: The call failed; the error carries the trailers.
        """
        while (item := self.poll()) is PENDING:
            # The connection's loop: asyncio.get_running_loop() costs a getpid() system call.
            waiter = self.waiter = self.conn.loop.create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        return item

    async def wait_credit(self) -> None:
        """Wait until a request message may be sent (the server granted credit, or the call ended)."""
        conn = self.conn
        if not self.over and not conn.session_can_send(self.stream_id):
            probes.flow_stalled("ws", "client")
        while not self.over and not conn.session_can_send(self.stream_id):
            waiter = self.credit_waiter = self.conn.loop.create_future()
            try:
                await waiter
            finally:
                self.credit_waiter = None
        if not conn.writable:
            await conn.wait_writable()


class ClientBridgeConnection(BridgePump[ClientSession]):
    """One bridge connection of a channel: handshake, session, calls and stream slots.

    Args:
        ws: websockets' client protocol, before the handshake.
        url: The bridge URL (for logs).
        limits: Sizes, windows, heartbeats.
        headers: Extra handshake headers (``Authorization``).
    """

    def __init__(
        self,
        ws: ClientProtocol,
        url: str,
        limits: Limits,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(ws, close_timeout=limits.heartbeat_timeout)
        self.client_ws = ws
        self.url = url
        self.limits = limits
        self._headers = headers or {}
        self.calls: dict[int, ClientCall] = {}
        self.opened: asyncio.Future[None] = self.loop.create_future()
        """Resolves when the handshake succeeds; fails with its error otherwise."""
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self.on_lost: Callable[[ClientBridgeConnection], None] | None = None
        """Called once when the connection has ended (the channel forgets it)."""

    # -- handshake and lifecycle ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the opening handshake."""
        super().connection_made(transport)
        ws = self.client_ws
        request = ws.connect()
        for name, value in self._headers.items():
            request.headers[name] = value
        if "User-Agent" not in request.headers:  # handlers see it as user-agent, as on gRPC
            request.headers["User-Agent"] = USER_AGENT
        ws.send_request(request)
        self.flush()

    def on_handshake(self, event: Request | Response) -> None:
        """The server answered the handshake."""
        ws = self.client_ws
        if self.opened.done():  # pragma: no cover - one response per connection
            return
        if ws.handshake_exc is not None:
            self.opened.set_exception(ws.handshake_exc)
            self.abort()
            return
        session = ClientSession.for_subprotocol(ws.subprotocol or "", self.limits)
        self.session = session
        self.start_heartbeat(self.limits.heartbeat_interval, self.limits.heartbeat_timeout)
        if not session.flow_controlled:
            self.opened.set_result(None)
        # On revision 2 the server's Settings (its stream limit and window) come right behind the
        # handshake response; calls start once they are known.

    def on_closed(self) -> None:
        """Fail every call still open with ConnectionLost (carrying the close code)."""
        code = self.close_code
        if not self.opened.done():
            self.opened.set_exception(ConnectionLost("the connection closed during the handshake"))
        session = self.session
        if session is not None:
            session.receive_eof(code)
            for event in session.events_received():
                self.on_event(event)
        calls, self.calls = self.calls, {}
        for call in calls.values():
            call.fail(ConnectionLost("the connection closed", close_code=code))
        self._wake_slots()
        if self.on_lost is not None:
            self.on_lost(self)

    @property
    def open(self) -> bool:
        """False once the connection is closing or closed."""
        return self.is_open

    @property
    def accepting(self) -> bool:
        """Whether a new call may start on this connection (open, no GoAway, ids left)."""
        session = self.session
        return self.is_open and session is not None and session.accepting_calls

    def client_session(self) -> ClientSession:
        """The session (after the handshake)."""
        session = self.session
        if session is None:
            message = "the handshake has not completed"
            raise ConnectionLost(message)
        return session

    # -- events ----------------------------------------------------------------------

    def on_event(self, event: object) -> None:
        """Route one session event to its call."""
        if isinstance(event, MessageReceived):
            call = self.calls.get(event.stream_id)
            if call is not None:
                call.push(event.message_frame, event.size)
                self.hold_reading(call, len(call.frames))
        elif isinstance(event, CallEnded):
            call = self.calls.pop(event.stream_id, None)
            if call is not None:
                call.end(event.status, event.trailers)
        elif isinstance(event, CreditAvailable):
            call = self.calls.get(event.stream_id)
            if call is not None:
                _wake(call.credit_waiter)
        elif isinstance(event, StreamError):
            call = self.calls.pop(event.stream_id, None)
            if call is not None:
                call.fail(event.error)
            if not isinstance(event.error, ConnectionLost):
                _log.warning(
                    "%s: the server broke stream %d: %s", self.url, event.stream_id, event.error
                )
        elif isinstance(event, SettingsReceived):
            if not self.opened.done():
                self.opened.set_result(None)
            self._wake_slots()
        elif isinstance(event, ProtocolViolation):
            _log.warning(
                "%s: closing the connection (%d): %s", self.url, event.close_code, event.reason
            )
            self.close(event.close_code, event.reason)
        elif isinstance(event, GoAwayReceived):
            _log.info("%s: the server is draining (%s)", self.url, event.reason)
            self._wake_slots()
            if not self.calls:
                self.close(1000, "")

    def consumed(self, call: ClientCall, size: int) -> None:
        """The caller took a response: grant the server credit back (or resume reading)."""
        session = self.session
        if session is None:
            return
        if size:
            session.consume(call.stream_id, size)
            if session.outgoing:
                self.flush()
        else:
            self.release_reading(call, len(call.frames))

    def session_can_send(self, stream_id: int) -> bool:
        """Whether the stream has credit (``True`` once it ended: sends are then dropped)."""
        session = self.session
        return session is None or session.closed or session.can_send(stream_id)

    # -- calls -------------------------------------------------------------------------

    async def acquire_stream(self) -> None:
        """Wait until the server's ``max_concurrent_streams`` leaves room for one more call."""
        session = self.client_session()
        while self.accepting and len(session.streams) >= session.peer_max_streams:
            waiter = self.loop.create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._slot_waiters:
                    self._slot_waiters.remove(waiter)

    @property
    def ready(self) -> bool:
        """Whether a call can start at once: :attr:`accepting`, and a stream is free."""
        session = self.session
        return (
            session is not None
            and self.is_open
            and session.accepting_calls
            and len(session.streams) < session.peer_max_streams
        )

    @property
    def streams_full(self) -> bool:
        """Whether a new call would have to wait for a stream (see :meth:`acquire_stream`)."""
        session = self.session
        return session is None or len(session.streams) >= session.peer_max_streams

    def on_deadline(self, call: object) -> None:
        """A unary call's deadline passed: fail it with DeadlineExceeded and Cancel it."""
        if isinstance(call, ClientCall) and not call.over:
            self.abandon(call, "deadline exceeded", deadline_exceeded=True)
            call.fail(DeadlineExceeded())

    def call_ended(self, call: ClientCall) -> None:
        """A call ended: its stream is free for the next waiting call."""
        self.forget_deadline(call)
        self.release_reading(call)
        if self._slot_waiters:
            self._wake_slots(1)
        session = self.session
        if session is not None and session.goaway_reason is not None and not self.calls:
            self.close(1000, "")  # drained after a GoAway: nothing more will happen here

    def _wake_slots(self, count: int | None = None) -> None:
        woken = 0
        while self._slot_waiters and (count is None or woken < count):
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                woken += 1

    def start_call(
        self,
        method: MethodSpec,
        metadata: Metadata,
        timeout: float | None,
        request: Message | None,
        *,
        half_close: bool,
    ) -> ClientCall:
        """Queue CallStart, carrying the request and HalfClose when given, and write it at once.

        A unary or server-streaming call is then one frame (bridge.proto "Combined frames").

        Raises:
            asap.errors.MessageTooLarge: The request is over ``max_message_bytes``; no call was
                opened.
            ValueError: Malformed metadata.
        """
        stream_id = self.client_session().send_start(
            method.path, metadata, timeout, message=request, half_close=half_close
        )
        call = ClientCall(self, stream_id)
        self.calls[stream_id] = call
        self.flush()
        return call

    def abandon(self, call: ClientCall, reason: str, *, deadline_exceeded: bool = False) -> None:
        """Send Cancel for a call that is still open and forget it.

        ``deadline_exceeded`` says the call's deadline passed (``Cancel.deadline_exceeded``), so
        the server treats it as such even if its own copy of the deadline has not passed yet.
        """
        self.calls.pop(call.stream_id, None)
        session = self.session
        if (
            session is not None
            and self.is_open
            and session.send_cancel(call.stream_id, reason, deadline_exceeded=deadline_exceeded)
        ):
            self.flush()
        self.call_ended(call)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def remaining(deadline: float | None, loop: asyncio.AbstractEventLoop) -> float | None:
    """Seconds left until ``deadline`` (on ``loop.time()``), never negative; None without one."""
    return None if deadline is None else max(0.0, deadline - loop.time())
