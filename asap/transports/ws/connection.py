"""The I/O pump both sides of the bridge share: one websockets connection ↔ one protocol session.

Theory of operation (python-websockets' split between ``protocol.py`` and ``asyncio/``). The rules of
bridge.proto live in :mod:`asap.protocol.session`; this module only moves data. A connection has:

- a *reader* that awaits each WebSocket message, feeds it to the session and acts on the events
  (the server and client subclasses say how);
- a *flush* that writes whatever the session queued (:meth:`BridgeConnection.flush`), called by
  whichever task queued something: a handler writing a response, a caller starting a call, the
  reader answering a Ping or a malformed frame.

Ordering. The session queues frames in the order the bridge needs them (CallStart ids increasing,
the frames of one stream in order), so the queue must reach the socket in that order. One task at a
time flushes: a task that finds a flush already running returns at once, and the running flush
keeps writing until the queue is empty, so whatever the latecomer queued goes out behind what was
there before it.

Writing. A flush often has several frames (the calls several tasks started or answered while one
flush was writing; a streamed response and its CallStatus). A unary call itself is one frame each
way (bridge.proto "Combined frames"). ``ws.send()`` would write each with its own transport write
(one system call each); instead the flush hands every queued frame to websockets' sans-I/O protocol
(``ws.protocol``, exactly what ``send()`` does inside), writes all the resulting WebSocket frames
with one ``transport.writelines()``, then waits for the write buffer to drain as ``send()`` does.
Nothing is awaited before everything taken from the session is written, so a cancelled flush (a
cancelled handler) loses no frame of another stream, and no extra task is needed.

Lifetime. Every task a connection starts (handlers on the server, stream pumps on the client, the
background flush) belongs to a :class:`~asap.core.tasks.TaskOwner`, which cancels and awaits them
all when the connection ends; :meth:`BridgeConnection.close` also waits for websockets' own
keepalive task, so nothing a connection started outlives it.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

from websockets.asyncio.connection import Connection
from websockets.protocol import State

from asap.core.tasks import TaskOwner
from asap.protocol.session import Session


S = TypeVar("S", bound=Session)

MAX_CLOSE_REASON_BYTES = 123
"""A close frame's reason is at most 123 UTF-8 bytes (RFC 6455 §5.5)."""


def close_reason(text: str) -> str:
    """Cut ``text`` to fit a close frame, at a character boundary."""
    return text.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


def peer_of(ws: Connection) -> str:
    """The peer address in gRPC's notation: ``ipv4:1.2.3.4:5`` or ``ipv6:[::1]:5``."""
    address: object = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:  # (host, port[, flow, scope])
        host, port = address[0], address[1]
        if ":" in str(host):
            return f"ipv6:[{host}]:{port}"
        return f"ipv4:{host}:{port}"
    return "unknown"


class BridgeConnection(Generic[S]):
    """A websockets connection and the session that holds its bridge state.

    Args:
        ws: The open WebSocket connection.
        session: The session of the negotiated subprotocol.
        name: Names the connection's tasks (for logs).
    """

    def __init__(self, ws: Connection, session: S, name: str) -> None:
        self.ws = ws
        """The WebSocket connection."""
        self.session = session
        """The bridge state machine."""
        self.name = name
        """Names the connection's tasks."""
        self.tasks = TaskOwner(name)
        """Owns every task this connection starts."""
        self.keepalive = ws.keepalive_task
        """websockets' ping task (it drops the reference when the connection is lost)."""
        self.flushing = False
        """Whether a flush is writing now (another one returns at once)."""
        self._flush_task: asyncio.Task[None] | None = None

    async def flush(self) -> None:
        """Write every queued frame, in order, and wait while the peer is not reading.

        When another flush is running it writes these frames too; this one only waits, like it,
        for the write buffer to drain (so a producer cannot outrun a slow peer). A closed or
        closing connection drops the frames (the reader reports the close). Never raises except
        CancelledError, and a cancelled flush has already written everything it took (only the
        wait for the buffer is cancelled; frames queued meanwhile go out in the background).
        """
        if self.flushing:
            await self._drain()
            return
        self.flushing = True
        session = self.session
        ws = self.ws
        protocol = ws.protocol
        try:
            while session.outgoing:
                data = session.data_to_send()
                if protocol.state is not State.OPEN:
                    return  # closing: websockets would refuse the frames too
                # Each item becomes one WebSocket message, framed by websockets' sans-I/O protocol;
                # all of them reach the socket in one transport write.
                for item in data:
                    if isinstance(item, bytes):
                        protocol.send_binary(item)
                    else:
                        protocol.send_text(item.encode())
                ws.transport.writelines(protocol.data_to_send())
                await self._drain()
        except asyncio.CancelledError:
            self.flushing = False
            self.flush_soon()
            raise
        finally:
            self.flushing = False

    async def _drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        try:
            await self.ws.drain()
        except Exception:  # noqa: BLE001 - the connection failed: the reader reports it
            return

    def flush_soon(self) -> None:
        """Flush in a background task owned by the connection (for paths that must not wait)."""
        if self.flushing or not self.session.outgoing:
            return
        if self._flush_task is not None and not self._flush_task.done():
            return
        if self.tasks.closed:
            return  # shutting down: whoever closes the connection flushes what is left
        self._flush_task = self.tasks.spawn(self.flush(), name=self.name)

    async def close(self, code: int, reason: str) -> None:
        """Close the WebSocket with ``code`` (a no-op once closed) and wait until it is gone."""
        await self.ws.close(code, close_reason(reason))
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the WebSocket is closed and websockets' keepalive task has finished."""
        await self.ws.wait_closed()
        if self.keepalive is not None:
            await asyncio.wait({self.keepalive})
