"""The client side of one bridge connection: per-call inboxes and the reader that fills them.

The reader feeds every received WebSocket message to the
:class:`~asap.protocol.client_session.ClientSession` and routes its events: response messages and
the final status to the call's :class:`ClientCall`, a broken stream's error to that call (logged),
a protocol violation to a close with its code (logged), and the end of the connection to every call
still open as :class:`~asap.errors.ConnectionLost` with the close code.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from google.protobuf.message import Message
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from asap._typing import Metadata
from asap.core.method import MethodSpec
from asap.errors import AsapError, ConnectionLost, from_status
from asap.protocol.client_session import ClientSession
from asap.protocol.events import (
    CallEnded,
    ClientEvent,
    GoAwayReceived,
    MessageReceived,
    ProtocolViolation,
    StreamError,
)
from asap.protocol.frames import CloseCode
from asap.transports.ws.connection import BridgeConnection
from asap.v1 import bridge_pb2, status_pb2


_log = logging.getLogger("asap.client")


class ClientCall:
    """One call's inbox: response messages, then the final status or an error (reader side).

    Args:
        stream_id: The call's stream.
    """

    __slots__ = ("error", "frames", "on_end", "status", "stream_id", "trailers", "waiter")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.frames: deque[bridge_pb2.MessageFrame] = deque()
        self.status: status_pb2.Status | None = None
        self.trailers: Metadata = ()
        self.error: AsapError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.on_end: Callable[[], None] | None = None

    @property
    def over(self) -> bool:
        """Whether the call has its final status or error."""
        return self.status is not None or self.error is not None

    def push(self, frame: bridge_pb2.MessageFrame) -> None:
        """A response message arrived."""
        self.frames.append(frame)
        self._wake()

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
        self._wake()
        if self.on_end is not None:
            self.on_end()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> bridge_pb2.MessageFrame | None:
        """The next response message; None when the call ended with OK.

        Raises:
            AsapError: The call failed; the error carries the trailers.
        """
        frames = self.frames
        while not frames:
            if self.error is not None:
                raise self.error
            status = self.status
            if status is not None:
                if status.code == 0:
                    return None
                error = from_status(status)
                error.trailing_metadata = self.trailers
                self.error = error
                raise error
            waiter = self.waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        return frames.popleft()


class ClientBridgeConnection(BridgeConnection[ClientSession]):
    """One bridge connection of a channel: its session, its calls and its reader.

    Args:
        ws: The open WebSocket connection.
        session: The client session of the negotiated subprotocol.
        url: The bridge URL (for logs).
    """

    def __init__(self, ws: ClientConnection, session: ClientSession, url: str) -> None:
        super().__init__(ws, session, "asap.ws.client")
        self.url = url
        self.calls: dict[int, ClientCall] = {}
        self.open = True
        """False once the reader has ended (the connection is closed or closing)."""
        self.violation: ProtocolViolation | None = None

    @property
    def accepting(self) -> bool:
        """Whether a new call may start on this connection (open, no GoAway)."""
        return self.open and self.session.accepting_calls

    def start_call(
        self,
        method: MethodSpec,
        metadata: Metadata,
        timeout: float | None,
        request: Message | None,
        *,
        half_close: bool,
    ) -> ClientCall:
        """Queue CallStart, carrying the request and HalfClose when given; flush afterwards.

        A unary or server-streaming call is then one frame (bridge.proto "Combined frames").

        Raises:
            asap.errors.MessageTooLarge: The request is over ``max_message_bytes``; no call was
                opened.
            ValueError: Malformed metadata.
        """
        stream_id = self.session.send_start(
            method.path, metadata, timeout, message=request, half_close=half_close
        )
        call = ClientCall(stream_id)
        self.calls[stream_id] = call
        return call

    def abandon(self, call: ClientCall, reason: str) -> None:
        """Send Cancel for a call that is still open (in the background) and forget it."""
        self.calls.pop(call.stream_id, None)
        if self.open and self.session.send_cancel(call.stream_id, reason):
            self.flush_soon()

    async def read(self) -> None:
        """Read frames until the connection ends; then fail every call still open on it."""
        ws, session = self.ws, self.session
        clock = asyncio.get_running_loop().time
        try:
            while self.violation is None:
                try:
                    data = await ws.recv()
                except ConnectionClosed:
                    break
                session.receive_data(data, clock())
                for event in session.events_received():
                    self._on_event(event)
                if session.outgoing:
                    # Never wait for writes here: a reader blocked on a full socket while the
                    # peer is blocked on ours would deadlock both.
                    self.flush_soon()
                if session.goaway_reason is not None and not self.calls:
                    break  # drained after a GoAway: nothing more will happen here
            self.open = False
            if self.violation is not None:
                await self.close(self.violation.close_code, self.violation.reason)
            else:
                await self.close(CloseCode.NORMAL_CLOSURE, "")
        finally:
            self.open = False
            code = ws.close_code if self.violation is None else int(self.violation.close_code)
            session.receive_eof(code)
            for event in session.events_received():
                self._on_event(event)
            calls, self.calls = self.calls, {}
            for call in calls.values():
                call.fail(ConnectionLost("the connection closed", close_code=code))
            await self.tasks.close()

    def _on_event(self, event: ClientEvent) -> None:
        if isinstance(event, MessageReceived):
            call = self.calls.get(event.stream_id)
            if call is not None:
                call.push(event.message_frame)
        elif isinstance(event, CallEnded):
            call = self.calls.pop(event.stream_id, None)
            if call is not None:
                call.end(event.status, event.trailers)
        elif isinstance(event, StreamError):
            call = self.calls.pop(event.stream_id, None)
            if call is not None:
                call.fail(event.error)
            if not isinstance(event.error, ConnectionLost):
                _log.warning(
                    "%s: the server broke stream %d: %s", self.url, event.stream_id, event.error
                )
        elif isinstance(event, ProtocolViolation):
            _log.warning(
                "%s: closing the connection (%d): %s",
                self.url,
                event.close_code,
                event.reason,
            )
            self.violation = event
        elif isinstance(event, GoAwayReceived):
            _log.info("%s: the server is draining (%s)", self.url, event.reason)


def remaining(deadline: float | None, loop: asyncio.AbstractEventLoop) -> float | None:
    """Seconds left until ``deadline`` (on ``loop.time()``), never negative; None without one."""
    return None if deadline is None else max(0.0, deadline - loop.time())
