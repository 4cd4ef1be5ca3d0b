"""The ServerCall adapter of one bridge call: what the core reads from and writes to.

Reading takes request messages from the call's inbox, which the connection fills as frames
arrive, and reports each one consumed to the session, which grants the client credit back
(bridge.proto "Flow control" rule 3): the client can never have more than a window plus one message
waiting here. Writing a streamed response waits for the client's credit first, exactly where a gRPC
handler's write waits for HTTP/2 window, so a slow consumer slows its own call and nothing else.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from google.protobuf.message import Message

from asap.core import probes
from asap.core.context import CallContext
from asap.core.method import MethodSpec
from asap.protocol.frames import MessageBody


if TYPE_CHECKING:
    from asap.transports.ws.server_connection import ServerBridgeConnection


class BridgeServerCall:
    """One bridge call as the core sees it (:class:`~asap.core.service.ServerCall`).

    Args:
        conn: The connection the call runs on.
        stream_id: The call's stream.
        spec: The method.
    """

    __slots__ = (
        "conn",
        "credit_waiter",
        "ctx",
        "deadline_hit",
        "half_closed",
        "inbox",
        "reader",
        "response",
        "spec",
        "stream_id",
        "task",
    )

    def __init__(self, conn: ServerBridgeConnection, stream_id: int, spec: MethodSpec) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.spec = spec
        self.inbox: deque[tuple[MessageBody, int]] = deque()
        self.half_closed = False
        self.reader: asyncio.Future[None] | None = None
        self.credit_waiter: asyncio.Future[None] | None = None
        self.response: Message | None = None
        """A unary response, kept until the handler succeeds (gRPC sends it with OK only)."""
        self.task: asyncio.Task[None] | None = None
        self.ctx: CallContext | None = None
        """The call's context from CallStart until it ends (None once it has)."""
        self.deadline_hit = False
        """Set when the connection's deadline timer cancelled the call (DEADLINE_EXCEEDED)."""

    def running(self) -> bool:
        """Whether the call has not ended yet."""
        return self.ctx is not None

    def feed(self, frame: MessageBody, size: int) -> None:
        """Queue a request message (connection side)."""
        self.inbox.append((frame, size))
        _wake(self.reader)

    def end_input(self) -> None:
        """Record HalfClose (connection side)."""
        self.half_closed = True
        _wake(self.reader)

    def credit_available(self) -> None:
        """The client granted credit (connection side)."""
        _wake(self.credit_waiter)

    async def read(self) -> Message | None:
        """The next request message, or None after HalfClose.

        Raises:
            asap.errors.MalformedFrame: The message does not parse as the method's request type
                (this call fails with INVALID_ARGUMENT; the connection goes on).
        """
        while self.read_would_wait():
            # Nothing more to read: what this call's handler wrote goes out now, not a turn later.
            self.conn.flush_if_pending()
            reader = self.reader = self.conn.loop.create_future()  # no getpid() per wait
            try:
                await reader
            finally:
                self.reader = None
        inbox = self.inbox
        if not inbox:
            return None  # HalfClose, and everything before it was read
        frame, size = inbox.popleft()
        conn = self.conn
        conn.consumed(self, size)
        return conn.codec.unpack_message(frame, self.spec.request_type)

    def read_would_wait(self) -> bool:
        """Whether :meth:`read` waits for the client now (see :class:`~asap.core.service.ServerCall`)."""
        return not self.inbox and not self.half_closed

    async def write(self, message: Message) -> None:
        """Send one response message; a unary response is kept and sent with the OK status.

        A streamed message waits for the client's credit, then for the transport's buffer.

        Raises:
            asap.errors.MessageTooLarge: A streamed message over ``max_message_bytes``; the call
                is still open.
        """
        if not self.spec.server_streaming:
            self.response = message
            return
        conn = self.conn
        if not conn.session_can_send(self.stream_id):
            await self.wait_credit()
        if conn.send_message(self.stream_id, message) and not conn.writable:
            await conn.wait_writable()

    def try_write(self, message: Message) -> bool:
        """Send a streamed response now if credit and the transport's buffer allow it (True).

        Else False: the core uses :meth:`write` (see :class:`~asap.core.service.ServerCall`).

        Raises:
            asap.errors.MessageTooLarge: As :meth:`write`.
        """
        if not self.spec.server_streaming:
            return False
        conn = self.conn
        if not conn.writable or not conn.session_can_send(self.stream_id):
            return False
        conn.send_message(self.stream_id, message)
        return True

    async def wait_credit(self) -> None:
        """Wait until the session lets this stream send a call message."""
        can_send = self.conn.session_can_send
        if can_send(self.stream_id):
            return
        probes.flow_stalled("ws", "server")
        while not can_send(self.stream_id):
            waiter = self.credit_waiter = self.conn.loop.create_future()
            try:
                await waiter
            finally:
                self.credit_waiter = None


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
