"""WebSocketResponseStream: a streaming call over the bridge, as a ResponseStream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable

from google.protobuf.message import Message

from asap._typing import Metadata
from asap.core.method import MethodSpec
from asap.core.tasks import TaskOwner
from asap.errors import (
    AsapError,
    Cancelled,
    ConnectionLost,
    DeadlineExceeded,
    InvalidState,
    MalformedFrame,
    MessageTooLarge,
)
from asap.protocol.frames import MessageBody
from asap.transports.base import CallOptions, ResponseStream
from asap.transports.ws.client_connection import (
    PENDING,
    ClientBridgeConnection,
    ClientCall,
    remaining,
)


_log = logging.getLogger("asap.client")

_CLOSED_MESSAGE = "the channel is closed"


class WebSocketResponseStream(ResponseStream):
    """The responses of a streaming bridge call (for client streaming: its one response).

    A pump task, owned by the channel (``tasks``), opens the call and writes the requests;
    iteration reads the responses. The call's timeout is enforced while iterating, as in
    :meth:`WebSocketChannel.unary <asap.transports.ws.client.WebSocketChannel.unary>`.

    Args:
        connection: Returns a connection that accepts calls (the channel's).
        tasks: Owns the pump task.
        url: The bridge URL (for logs).
        method: The streaming method.
        requests: One message (server streaming) or an async iterable (client streaming).
        options: Timeout and metadata.
    """

    def __init__(
        self,
        connection: Callable[[], Awaitable[ClientBridgeConnection]],
        tasks: TaskOwner,
        url: str,
        method: MethodSpec,
        requests: Message | AsyncIterable[Message],
        options: CallOptions,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._connection = connection
        self._url = url
        self._method = method
        self._deadline = None if options.timeout is None else loop.time() + options.timeout
        self._conn: ClientBridgeConnection | None = None
        self._call: ClientCall | None = None
        self._error: AsapError | None = None
        self._ready = asyncio.Event()
        self._done = False
        self._cancelled = False
        self._trailing: Metadata = ()
        self._pump = tasks.spawn(self._run(requests, options.metadata), name="asap.ws.stream")

    @property
    def trailing_metadata(self) -> Metadata:
        """Trailing metadata, once the call has ended (empty before)."""
        return self._trailing

    async def _run(self, requests: Message | AsyncIterable[Message], metadata: Metadata) -> None:
        """Open the call, then (client streaming) write each request and HalfClose."""
        method = self._method
        loop = asyncio.get_running_loop()
        single = requests if isinstance(requests, Message) else None
        try:
            try:
                async with asyncio.timeout_at(self._deadline):
                    conn = await self._connection()
                    await conn.acquire_stream()
                call = conn.start_call(
                    method,
                    metadata,
                    remaining(self._deadline, loop),
                    single,
                    half_close=single is not None,
                )
                self._conn, self._call = conn, call
                call.on_end = self._stop_pump
            except TimeoutError:
                self._error = DeadlineExceeded()
                return
            except AsapError as exc:
                self._error = exc
                return
            except InvalidState:
                self._error = ConnectionLost("the channel was closed before the call started")
                return
            finally:
                self._ready.set()
            if single is None and not isinstance(requests, Message):
                await self._pump_requests(conn, call, requests)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the request iterator is the caller's code
            _log.exception("%s: the request iterator of %s failed", self._url, method.path)
            error = Cancelled("the request iterator failed")
            error.__cause__ = exc
            self._abandon(error)

    async def _pump_requests(
        self, conn: ClientBridgeConnection, call: ClientCall, requests: AsyncIterable[Message]
    ) -> None:
        session = conn.client_session()
        stream_id = call.stream_id
        iterator = aiter(requests)
        try:
            async for message in iterator:
                # bridge.proto "Flow control": wait for the server's credit (and the socket),
                # so a server that stops reading stops this iterator being pulled.
                await call.wait_credit()
                if call.over or not session.send_message(stream_id, message):
                    return
                conn.flush()
        except MessageTooLarge as exc:
            self._abandon(exc)
            return
        finally:
            if isinstance(iterator, AsyncGenerator):
                # Finish the caller's generator here rather than in the loop's finalizer task.
                await iterator.aclose()
        if not call.over and session.send_half_close(stream_id):
            conn.flush()

    def _stop_pump(self) -> None:
        if self._pump is not asyncio.current_task():
            self._pump.cancel()

    def _abandon(self, error: AsapError) -> None:
        """End the call here with ``error`` and tell the server (Cancel)."""
        call, conn = self._call, self._conn
        if call is not None and conn is not None and not call.over:
            conn.abandon(call, error.message, deadline_exceeded=isinstance(error, DeadlineExceeded))
            call.fail(error)

    async def __anext__(self) -> Message:
        """Return the next response.

        Raises:
            StopAsyncIteration: The call ended with OK.
            AsapError: The call failed (Cancelled after :meth:`cancel`, DeadlineExceeded after the
                timeout, ConnectionLost when the connection ended).
        """
        if self._done:
            raise StopAsyncIteration
        scope: asyncio.Timeout | None = None
        try:
            if self._deadline is None:
                # No deadline (the streaming default): no timeout scope to enter per response.
                frame = await self._next_frame()
            else:
                async with asyncio.timeout_at(self._deadline) as scope:
                    frame = await self._next_frame()
            if frame is None:
                self._done = True
                raise StopAsyncIteration
            return self._unpack(frame)
        except TimeoutError:
            if scope is None or not scope.expired():
                raise
            self._finish(DeadlineExceeded())
            raise DeadlineExceeded from None
        except AsapError as error:
            self._finish(error)
            self._trailing = error.trailing_metadata
            raise
        except asyncio.CancelledError:
            self._finish(Cancelled("the caller cancelled the call"))
            raise

    async def _next_frame(self) -> MessageBody | None:
        """The next response message (None once the call ended with OK), once the call started."""
        call = self._call
        if call is None:
            await self._ready.wait()
            call = self._call
            if call is None:
                raise self._error or Cancelled()
        frame = call.poll()  # a response already here needs no await
        if frame is PENDING:
            frame = await call.next()
        if frame is None:
            self._trailing = call.trailers
        return frame

    def _unpack(self, frame: MessageBody) -> Message:
        conn = self._conn
        if conn is None:  # pragma: no cover - a frame implies a started call
            raise InvalidState(_CLOSED_MESSAGE)
        try:
            return conn.client_session().codec.unpack_message(frame, self._method.response_type)
        except MalformedFrame as exc:
            _log.warning("%s: bad response to %s: %s", self._url, self._method.path, exc)
            raise

    def _finish(self, error: AsapError) -> None:
        self._done = True
        self._abandon(error)
        self._stop_pump()

    async def cancel(self) -> None:
        """Abandon the call: the server cancels its handler; iteration raises Cancelled. Idempotent."""
        if self._cancelled:
            return
        self._cancelled = True
        self._abandon(Cancelled("the call was cancelled by the caller"))
        pump = self._pump
        if pump is not asyncio.current_task():
            pump.cancel()
            await asyncio.wait({pump})
        if self._call is None:
            self._error = self._error or Cancelled("the call was cancelled by the caller")
