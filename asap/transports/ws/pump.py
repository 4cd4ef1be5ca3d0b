"""The bridge's I/O layer: a buffered asyncio protocol pumping websockets' sans-I/O protocol and a session.

Theory of operation (the shape python-websockets gives its own asyncio layer, and the design note in
``shared/design/flow-control.md``). A connection is one :class:`BridgePump`:

``data_received(bytes)`` (the transport reads into the thread's :func:`read_buffer`; what it read is
copied out as ``bytes`` at once)
  → ``websockets`` ``Protocol.receive_data`` → WebSocket frames (messages, pings, pongs, close)
  → :meth:`~asap.protocol.session.Session.receive_data` for each message → bridge events
  → :meth:`BridgePump.on_event` (subclasses start calls, feed readers, apply credit, cancel)
  → everything this read produced, bridge frames and WebSocket control frames, is written with
  **one** ``transport.writelines``.

Reading has a fast lane. Most frames are whole binary (or, for JSON, text) messages; once the
handshake is done (the bridge offers no WebSocket extension, so none is ever negotiated),
:meth:`BridgePump.data_received` decodes
those itself (:mod:`~asap.transports.ws.dataframes`) and hands every other frame — ping, close, a
fragment, reserved bits, wrong masking, too big — *whole* to websockets, which answers it as before. Whole
frames only is what keeps websockets' parser at a frame boundary: the handshake's HTTP head is fed
up to its end, a partial frame waits here (at most one frame: its header is checked against
``max_size`` first), and once websockets is closing every byte goes to it. Writing has the same
lane: the session's messages are framed here (a client masks them with keys from a
:class:`~asap.transports.ws.dataframes.MaskPool`) after websockets' own pending frames.

There is no reader task and no per-message future: frames are decoded where the data arrives, and
the reader never waits on a stream, so Cancel, Ping, GoAway, credit and the peer's close are seen
whatever any stream is doing. Frames queued outside ``data_received`` (a handler's answer, a
client's request) are written by :meth:`BridgePump.flush`, either at once or, with
:meth:`BridgePump.flush_soon`, once per loop iteration for everything queued in it. Writing never
waits; :meth:`BridgePump.wait_writable` lets a producer wait while the transport's buffer is over its
high-water mark (``pause_writing``/``resume_writing``), which is how a revision 1 peer pushes back.

Closing follows RFC 6455 §7 through websockets' protocol: :meth:`BridgePump.close` sends the close
frame; once the protocol expects the TCP connection to end, a timer aborts it if the peer does not
close it within ``close_timeout``. :meth:`BridgePump.wait_closed` returns when the transport is gone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Final, Generic, TypeVar, cast

from mypy_extensions import mypyc_attr
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidState as WsInvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import SEND_EOF, State
from websockets.server import ServerProtocol

from asap.core.tasks import loop_clock
from asap.protocol.deadlines import DeadlineQueue
from asap.protocol.frames import CloseCode
from asap.protocol.heartbeat import Beat, Heartbeat
from asap.protocol.session import Session
from asap.transports.ws.dataframes import (
    BINARY,
    TEXT,
    MaskPool,
    apply_mask,
    frame_header,
    parse_header,
)


S = TypeVar("S", bound=Session)

# websockets' states as this module's constants: compiled, a C variable each, read on every frame
# (an imported name is looked up in the module's namespace at every use).
CONNECTING: Final = State.CONNECTING
OPEN: Final = State.OPEN

LEGACY_INBOX_HIGH_WATER: Final = 64
"""Revision 1 only: unread messages of one call before its connection stops reading (no credit)."""

_PAUSED: Final = object()
"""The read hold of :meth:`BridgePump.pause_reading_for`."""

_log = logging.getLogger("asap.ws")

_HEAD_END: Final = b"\r\n\r\n"

# How data_received reads (see "Reading" in the module docstring).
_READ_HEAD: Final = 0
"""Feeding websockets the opening handshake, up to the end of its HTTP head."""
_READ_BOUNDARY: Final = 1
"""The head was fed whole: websockets waits for a frame's first byte, nothing buffered."""
_READ_DIRECT: Final = 2
"""Whole data frames decoded here, every other frame handed whole to websockets."""
_READ_WEBSOCKETS: Final = 3
"""Every byte to websockets (closing, refused, or a peer that sent frames before the 101)."""

MAX_CLOSE_REASON_BYTES: Final = 123
"""A close frame's reason is at most 123 UTF-8 bytes (RFC 6455 §5.5)."""


READ_BUFFER_BYTES: Final = 256 * 1024
"""The most one read takes from the socket: asyncio's own (``max_size`` of its socket transports)."""

_read_buffers: Final = threading.local()


def read_buffer() -> memoryview:
    """The buffer this thread's transports read into, :data:`READ_BUFFER_BYTES`, made once.

    A plain ``asyncio.Protocol`` gets every read as a fresh ``bytes`` of asyncio's 256 KiB read
    size, cut down to what arrived: over glibc's mmap threshold, each read was an ``mmap``, page
    faults, an ``mremap`` and a ``munmap`` (measured: three system calls per read on the bridge
    server). A :class:`BridgePump` instead lends its transport this buffer and copies the bytes
    read out of it before returning (:meth:`BridgePump.buffer_updated`), so every connection a
    thread serves can share one: a loop runs in one thread, and nothing keeps a view of the buffer.
    """
    view: memoryview | None = getattr(_read_buffers, "view", None)
    if view is None:
        view = _read_buffers.view = memoryview(bytearray(READ_BUFFER_BYTES))
    return view


def close_reason(text: str) -> str:
    """Cut ``text`` to fit a close frame, at a character boundary."""
    return text.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


def peer_of(transport: asyncio.BaseTransport) -> str:
    """The peer address in gRPC's notation: ``ipv4:1.2.3.4:5`` or ``ipv6:[::1]:5``."""
    address: object = transport.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:  # (host, port[, flow, scope])
        host, port = address[0], address[1]
        if ":" in str(host):
            return f"ipv6:[{host}]:{port}"
        return f"ipv4:{host}:{port}"
    return "unknown"


@mypyc_attr(allow_interpreted_subclasses=True)
class BridgePump(asyncio.BufferedProtocol, Generic[S]):
    """One WebSocket connection: websockets' sans-I/O protocol, the bridge session, the transport.

    Subclasses handle the opening handshake (:meth:`on_handshake`) and the session's events
    (:meth:`on_event`), and learn of the end in :meth:`on_closed`.

    Args:
        ws: websockets' protocol for this side, still in its opening handshake.
        close_timeout: Seconds the peer gets to finish the closing handshake.
    """

    session: S | None
    """The bridge state machine, once the handshake has chosen a subprotocol."""

    def __init__(self, ws: ServerProtocol | ClientProtocol, close_timeout: float) -> None:
        self.ws = ws
        """websockets' sans-I/O protocol."""
        self.session = None
        self.loop = asyncio.get_running_loop()
        self.clock = loop_clock(self.loop)
        """The loop's clock (``loop.time``, as a C function on asyncio's loops)."""
        self.transport: asyncio.Transport | None = None
        self.close_timeout = close_timeout
        self.peer = "unknown"
        """The peer's address (gRPC notation)."""
        self.heartbeat: Heartbeat | None = None
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._fragments: list[bytes] | None = None
        self._fragment_text = False
        self._writable = True
        self._write_waiters: list[asyncio.Future[None]] = []
        self._lost: asyncio.Future[None] = self.loop.create_future()
        self.close_code: int | None = None
        """The close code received or sent (received first), once the connection is closing."""
        self.close_reason: str | None = None
        """The close reason that goes with :attr:`close_code`."""
        self.deadlines: DeadlineQueue[object] = DeadlineQueue()
        """Deadlines of this connection's calls, served by one timer (see :meth:`watch_deadline`)."""
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._held_by: object | None = None
        self._read_holds: set[object] = set()
        """Why reading is paused (a revision 1 call's full inbox, the decode budget); read when empty."""
        self._pause_timer: asyncio.TimerHandle | None = None
        self._reading = _READ_HEAD
        self._head_tail = b""
        """The last bytes of the HTTP head fed so far (its end may straddle two reads)."""
        self._partial = bytearray()
        """The start of a frame that has not fully arrived (fast lane only; at most one frame)."""
        self._partial_needs = 0
        """Bytes :attr:`_partial` must hold before its frame is whole (0: its header is partial)."""
        self._client_side = isinstance(ws, ClientProtocol)
        self._masks: MaskPool | None = MaskPool() if self._client_side else None
        self._read_view = read_buffer()

    # -- asyncio.BufferedProtocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Take the transport (an ``asyncio.Transport`` for TCP and TLS)."""
        # A stream transport (TCP or TLS). Not checked with isinstance: uvloop's transports
        # implement asyncio.Transport's methods without subclassing it.
        self.transport = cast("asyncio.Transport", transport)
        self.peer = peer_of(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the transport reads to: the thread's shared :func:`read_buffer`."""
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        """The transport read ``nbytes`` into the buffer: take them out, then handle them."""
        self.data_received(self._read_view[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        """Feed the network's bytes through both protocols and write what they produced."""
        reading = self._reading
        if reading == _READ_DIRECT:
            self._read_frames(data)
        elif reading == _READ_WEBSOCKETS:
            self._feed_ws(data)
        elif reading == _READ_HEAD:
            self._read_head(data)
        else:
            self._read_after_head(data)
        self.flush()

    def eof_received(self) -> bool | None:
        """The peer closed its side: let websockets conclude, then close ours."""
        partial = self._partial
        if partial:  # a frame cut short: websockets reports the abnormal end
            self._reading = _READ_WEBSOCKETS
            self._partial = bytearray()
            self._feed_ws(bytes(partial))
        self.ws.receive_eof()
        self._process(self.ws.events_received())
        self._write_ws()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is gone: stop timers, wake waiting writers, report the end once."""
        for timer in (
            self._heartbeat_timer,
            self._close_timer,
            self._flush_handle,
            self._deadline_timer,
            self._pause_timer,
        ):
            if timer is not None:
                timer.cancel()
        self.ws.receive_eof()  # idempotent; settles websockets' state as CLOSED
        self._record_close()
        self._writable = True
        self._wake_writers()
        if not self._lost.done():
            self._lost.set_result(None)
            self.on_closed()

    def pause_writing(self) -> None:
        """The transport's buffer is over its high-water mark."""
        self._writable = False

    def resume_writing(self) -> None:
        """The transport's buffer drained below its low-water mark."""
        self._writable = True
        self._wake_writers()

    # -- hooks -------------------------------------------------------------------------

    def on_handshake(self, event: Request | Response) -> None:
        """The peer's handshake request (server) or response (client) arrived."""

    def on_event(self, event: object) -> None:
        """A session event (see :mod:`asap.protocol.events`)."""

    def on_closed(self) -> None:
        """The connection has ended (called once, from ``connection_lost``)."""

    def on_deadline(self, call: object) -> None:
        """A call's deadline (from :meth:`watch_deadline`) has passed."""

    # -- deadlines: one timer for every call of the connection -------------------------

    def watch_deadline(self, call: object, deadline: float) -> None:
        """Call :meth:`on_deadline` for ``call`` at ``deadline`` unless :meth:`forget_deadline` first.

        Calls that finish before their deadline (nearly all) cost a heap entry, not a loop timer.
        """
        if self.deadlines.add(call, deadline):
            self._arm_deadlines()

    def forget_deadline(self, call: object) -> None:
        """The call ended: stop watching its deadline."""
        self.deadlines.discard(call)

    def _arm_deadlines(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        deadline = self.deadlines.next_deadline()
        if deadline is not None and not self._lost.done():
            self._deadline_timer = self.loop.call_at(deadline, self._deadlines_due)

    def _deadlines_due(self) -> None:
        self._deadline_timer = None
        for call in self.deadlines.expired(self.clock()):
            self.on_deadline(call)
        self._arm_deadlines()

    # -- revision 1 backpressure: no credit, so stop reading ---------------------------

    def hold_reading(self, call: object, unread: int) -> None:
        """On revision 1, stop reading while ``call`` has :data:`LEGACY_INBOX_HIGH_WATER` unread."""
        session = self.session
        if session is None or session.flow_controlled or unread < LEGACY_INBOX_HIGH_WATER:
            return
        if self._held_by is None:
            self._held_by = call
            self._hold(call)

    def release_reading(self, call: object, unread: int = 0) -> None:
        """Read again once the call that held reading is down to half the high-water mark."""
        if self._held_by is call and unread < LEGACY_INBOX_HIGH_WATER // 2:
            self._held_by = None
            self._release(call)

    def pause_reading_for(self, seconds: float) -> None:
        """Stop reading for ``seconds`` (the decode budget), whatever else holds reading."""
        if self._pause_timer is not None:
            self._pause_timer.cancel()
        self._hold(_PAUSED)
        self._pause_timer = self.loop.call_later(seconds, self._pause_over)

    def _pause_over(self) -> None:
        self._pause_timer = None
        self._release(_PAUSED)

    def _hold(self, reason: object) -> None:
        if not self._read_holds and self.transport is not None and not self._lost.done():
            self.transport.pause_reading()
        self._read_holds.add(reason)

    def _release(self, reason: object) -> None:
        if reason not in self._read_holds:
            return
        self._read_holds.discard(reason)
        if not self._read_holds and self.transport is not None and not self._lost.done():
            self.transport.resume_reading()

    # -- reading -------------------------------------------------------------------------

    def _feed_ws(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        self._process(ws.events_received())

    def _read_head(self, data: bytes) -> None:
        """Feed websockets the handshake up to the end of its HTTP head, and not a byte further."""
        if self.ws.state is not CONNECTING:  # pragma: no cover - the head comes first
            self._reading = _READ_WEBSOCKETS
            self._feed_ws(data)
            return
        seen = self._head_tail + data
        end = seen.find(_HEAD_END)
        if end < 0:
            self._head_tail = seen[-3:]
            self._feed_ws(data)  # websockets bounds the head's lines and headers
            return
        cut = end + len(_HEAD_END) - len(self._head_tail)
        self._head_tail = b""
        self._reading = _READ_BOUNDARY
        self._feed_ws(data[:cut])
        if cut < len(data):
            self._read_after_head(data[cut:])

    def _read_after_head(self, data: bytes) -> None:
        """The head is in and nothing buffered: take the fast lane if the connection allows it."""
        if self._plain_frames:
            self._reading = _READ_DIRECT
            self._read_frames(data)
        else:  # refused, or still verifying (a peer that sent frames before the 101)
            self._to_websockets(data)

    def _read_frames(self, data: bytes) -> None:
        """The fast lane: decode whole data frames; hand any other frame, whole, to websockets."""
        partial = self._partial
        if partial:
            partial += data
            if len(partial) < self._partial_needs:
                return
            data = bytes(partial)
            self._partial = bytearray()
        self._partial_needs = 0
        ws = self.ws
        limit = ws.max_message_size
        expect_mask = not self._client_side
        size = len(data)
        pos = 0
        while pos < size:
            first, head, length, masked = parse_header(data, pos)
            if head == 0:
                break
            if limit is not None and length > limit:  # websockets refuses it (1009) from the header
                self._to_websockets(data[pos:])
                return
            end = pos + head + length
            if end > size:
                self._partial_needs = end - pos
                break
            if (
                first in (BINARY, TEXT)
                and masked == expect_mask
                and ws.current_size is None
                and ws.state is OPEN
            ):
                payload = data[pos + head : end]
                if masked:
                    payload = apply_mask(payload, data[pos + head - 4 : pos + head])
                self._on_message(payload, first == TEXT)
            else:
                self._feed_ws(data[pos:end])
            pos = end
            if ws.state is not OPEN:  # closing: websockets reads the rest
                self._to_websockets(data[pos:])
                return
        if pos < size:
            self._partial = bytearray(memoryview(data)[pos:])

    def _to_websockets(self, data: bytes) -> None:
        self._reading = _READ_WEBSOCKETS
        if data:
            self._feed_ws(data)

    @property
    def _plain_frames(self) -> bool:
        """Whether the connection is open with unextended frames, the fast lane's frames."""
        ws = self.ws
        return ws.state is OPEN and not ws.extensions

    def _process(self, events: list[Request | Response | Frame]) -> None:
        for event in events:
            if isinstance(event, Frame):
                self._on_frame(event)
            else:
                self.on_handshake(event)

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        data = bytes(frame.data)
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:  # websockets caps the whole message at max_size
                self._fragments = [data]
                self._fragment_text = opcode is Opcode.TEXT
                return
            self._on_message(data, opcode is Opcode.TEXT)
        elif opcode is Opcode.CONT:
            fragments = self._fragments
            if fragments is None:  # pragma: no cover - websockets refuses a stray continuation
                return
            fragments.append(data)
            if frame.fin:
                self._fragments = None
                self._on_message(b"".join(fragments), self._fragment_text)
        elif opcode is Opcode.PONG:
            if self.heartbeat is not None:
                self.heartbeat.pong(data)
        elif opcode is Opcode.CLOSE:
            self._record_close()

    def _on_message(self, data: bytes, text: bool) -> None:
        session = self.session
        if session is None or session.closed:
            return
        if text:
            try:
                decoded: bytes | str = data.decode()
            except UnicodeDecodeError:
                self.close(CloseCode.INVALID_PAYLOAD, "invalid UTF-8")
                return
        else:
            decoded = data
        session.receive_data(decoded, self.clock())
        for event in session.events_received():
            self.on_event(event)

    def _record_close(self) -> None:
        if self.close_code is not None:
            return
        ws = self.ws
        close = ws.close_rcvd or ws.close_sent
        if close is not None:
            self.close_code, self.close_reason = close.code, close.reason

    # -- writing -------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every frame the session queued, with websockets' own, in one transport write."""
        handle = self._flush_handle
        if handle is not None:
            handle.cancel()
            self._flush_handle = None
        session = self.session
        frames: list[bytes] = []
        if session is not None and session.outgoing:
            data = session.data_to_send()
            ws = self.ws
            if self._plain_frames:
                masks = self._masks
                for item in data:
                    if isinstance(item, bytes):
                        first, payload = BINARY, item
                    else:
                        first, payload = TEXT, item.encode()
                    if masks is None:
                        frames.append(frame_header(first, len(payload), b""))
                        frames.append(payload)
                    else:
                        mask = masks.take()
                        frames.append(frame_header(first, len(payload), mask))
                        frames.append(apply_mask(payload, mask))
            elif ws.state is OPEN:  # pragma: no cover - no extension is offered, so none is agreed
                try:
                    for item in data:
                        if isinstance(item, bytes):
                            ws.send_binary(item)
                        else:
                            ws.send_text(item.encode())
                except WsInvalidState:  # pragma: no cover - checked just above
                    pass
        self._write_ws(frames)

    def flush_if_pending(self) -> None:
        """Flush now if a flush is scheduled (what was queued need not wait for the next turn)."""
        if self._flush_handle is not None:
            self.flush()

    def flush_soon(self) -> None:
        """Flush once, at the end of this loop iteration (batches what several tasks queue)."""
        if self._flush_handle is None and not self._lost.done():
            self._flush_handle = self.loop.call_soon(self.flush)

    def _write_ws(self, frames: list[bytes] | None = None) -> None:
        """Write websockets' pending bytes, then ``frames`` (data frames framed here), at once."""
        data = self.ws.data_to_send()
        transport = self.transport
        if (data or frames) and transport is not None and not transport.is_closing():
            eof = SEND_EOF in data
            chunks = [chunk for chunk in data if chunk]
            if frames:
                chunks.extend(frames)
            if chunks:
                transport.writelines(chunks)
            if eof:
                if transport.can_write_eof():
                    transport.write_eof()
                else:
                    transport.close()
        if self._close_timer is None and self.ws.close_expected() and transport is not None:
            self._close_timer = self.loop.call_later(self.close_timeout, transport.abort)

    @property
    def writable(self) -> bool:
        """Whether the transport takes more data without going over its high-water mark."""
        return self._writable

    async def wait_writable(self) -> None:
        """Wait until the transport's buffer is below its high-water mark (or the connection ended)."""
        if self._writable or self._lost.done():
            return
        waiter = self.loop.create_future()
        self._write_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._write_waiters:
                self._write_waiters.remove(waiter)

    def _wake_writers(self) -> None:
        waiters, self._write_waiters = self._write_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- liveness and closing ----------------------------------------------------------

    def start_heartbeat(self, interval: float, timeout: float) -> None:
        """Ping every ``interval`` seconds; close with 1011 when a ping goes unanswered."""
        self.heartbeat = Heartbeat(interval, timeout, self.clock())
        self._schedule_heartbeat()

    def _schedule_heartbeat(self) -> None:
        heartbeat = self.heartbeat
        if heartbeat is not None and not self._lost.done():
            self._heartbeat_timer = self.loop.call_at(heartbeat.next_deadline(), self._beat)

    def _beat(self) -> None:
        heartbeat = self.heartbeat
        if heartbeat is None or self.ws.state is not OPEN:
            return
        beat = heartbeat.poll(self.clock())
        if beat is Beat.DEAD:
            self.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            return
        if beat is Beat.PING:
            self.ws.send_ping(heartbeat.payload)
            self._write_ws()
        self._schedule_heartbeat()

    @property
    def is_open(self) -> bool:
        """Whether the WebSocket is open (handshake done, no close frame sent or received)."""
        return self.ws.state is OPEN and not self._lost.done()

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake with ``code`` (after writing what is queued); idempotent."""
        if self.ws.state is OPEN:
            self.flush()
            self.ws.send_close(code, close_reason(reason))
            self._record_close()
            self._write_ws()
        elif self.transport is not None and not self._lost.done() and self._close_timer is None:
            self.transport.close()  # no WebSocket to close (handshake not done): just the TCP

    def abort(self) -> None:
        """Drop the TCP connection at once."""
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        """Wait until the transport is gone."""
        await asyncio.shield(self._lost)

    @property
    def closed(self) -> bool:
        """Whether the transport is gone."""
        return self._lost.done()
