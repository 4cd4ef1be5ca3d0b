"""AgentService's RPCs, written once over :class:`~asap.core.delivery.Deliverer`.

Each RPC is a coroutine over a :class:`ServerCall`, the one interface a transport implements for a
call: read the next request message, write a response message. Transports never see handlers.

Every buffer here is bounded. SendBatch and Publish take at most ``Limits.max_batch_envelopes``
envelopes and fail with MessageTooLarge as soon as their accumulated response would exceed
``Limits.max_message_bytes``. A Stream has at most :data:`STREAM_WINDOW` envelopes in progress and
:data:`STREAM_OUTBOX` answers queued; an envelope's window slot is freed only once all of its
answers have been written, so a caller that stops reading stops the server reading its requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol, TypeVar, cast

from google.protobuf.message import Message

from asap.core.context import CallContext
from asap.core.delivery import Deliverer
from asap.core.tasks import start_eagerly_in
from asap.errors import (
    AsapError,
    InvalidArgument,
    MalformedFrame,
    MessageTooLarge,
    TooManyEnvelopes,
    from_status,
    to_status,
)
from asap.protocol.limits import Limits
from asap.protocol.pbmethods import has_field
from asap.v1 import agent_service_pb2, envelope_pb2, manifest_pb2


class ServerCall(Protocol):
    """One call as a transport presents it to the core.

    ``read`` returns the next request message, or None once the caller half-closed. ``write`` sends
    one response message and returns once the transport has taken it (waiting for the peer's flow
    control window on a streaming call); it raises :class:`~asap.errors.MessageTooLarge`, with
    the call still open, for a streamed message over the transport's maximum message size. The
    core never calls ``write`` concurrently for the same call.

    A transport (and a wrapper, forwarding it) may also offer ``try_write(message) -> bool``: send
    a streamed response message at once if nothing has to be waited for, and return True; else
    return False, and the core uses ``write``. It raises what ``write`` raises. The core then
    writes a Stream answer where it is produced instead of handing it to the writer task (one
    task step and one loop turn less per batch of answers); without it nothing changes but that.

    It may also offer ``read_would_wait() -> bool``: True when the coming ``read`` will wait for
    the peer (nothing has arrived, the caller has not half-closed), so the loop gets a turn there.
    The core counts that wait as the loop turn a streaming call's writes owe every
    :data:`~asap.core.tasks.YIELD_INTERVAL`, so a Stream that reads between its batches of answers
    keeps writing them at once; without it its writes pay that turn themselves.
    """

    async def read(self) -> Message | None:
        """Return the next request message, or None at the end of the request stream."""
        ...

    async def write(self, message: Message) -> None:
        """Send one response message."""
        ...


TryWrite = Callable[[Message], bool]
"""A call's ``try_write`` (see :class:`ServerCall`)."""


def nowait_writer(call: object) -> TryWrite | None:
    """The ``try_write`` of ``call`` (see :class:`ServerCall`), or None if it offers none."""
    method = getattr(call, "try_write", None)
    return cast("TryWrite", method) if callable(method) else None


ReadWouldWait = Callable[[], bool]
"""A call's ``read_would_wait`` (see :class:`ServerCall`)."""


def read_wait_probe(call: object) -> ReadWouldWait | None:
    """The ``read_would_wait`` of ``call`` (see :class:`ServerCall`), or None if it offers none."""
    method = getattr(call, "read_would_wait", None)
    return cast("ReadWouldWait", method) if callable(method) else None


M = TypeVar("M", bound=Message)

STREAM_WINDOW: Final = 64
"""Envelopes of one Stream call in progress at once: read, and not yet all answers written.

Reading requests pauses while the window is full, so a caller that sends without reading makes the
server stop reading after ``STREAM_WINDOW`` envelopes plus those whose answers the transport has
taken (what its flow-control window buffers)."""

STREAM_OUTBOX: Final = 2 * STREAM_WINDOW
"""Answers of one Stream call queued for writing; a handler's emit waits beyond it. Twice the
window, so envelopes that give one or two answers each (the usual case) never wait to queue them;
a handler streaming many updates still waits once this many are queued."""

_ENVELOPE: Final = "asap.stream.envelope"
"""The name of the task that goes on delivering a Stream envelope once it suspends."""

_RESULT_TAG_BYTES: Final = 1
"""The tag of ``results`` (field 1) in SendBatchResponse and PublishResponse."""


async def _read_one(call: ServerCall, kind: type[M]) -> M:
    """The one request message of a unary-request method; the request stream must end after it.

    A second message is refused (INVALID_ARGUMENT, MALFORMED_FRAME) on every transport rather
    than dropped unseen (bridge.proto "Calls (streams)"), so the handler runs once the caller has
    half-closed (a unary gRPC request carries END_STREAM; a bridge CallStart carries half_close).
    """
    message = await call.read()
    if not isinstance(message, kind):
        text = f"expected one {kind.DESCRIPTOR.name}"
        raise InvalidArgument(text)
    if await call.read() is not None:
        text = f"more than one {kind.DESCRIPTOR.name} on a unary-request method"
        raise MalformedFrame(text)
    return message


async def _read_next(call: ServerCall, kind: type[M]) -> M | None:
    """The next request of a client stream, or None at its end.

    A coroutine, not an async generator: mypyc, which compiles this module (scripts/compile.py),
    has no async generators.
    """
    message = await call.read()
    if message is not None and not isinstance(message, kind):
        text = f"expected {kind.DESCRIPTOR.name}"
        raise InvalidArgument(text)
    return message


def _result_bytes(result: agent_service_pb2.DeliveryResult) -> int:
    """What one entry of a ``repeated DeliveryResult results = 1`` field adds to its message."""
    size = result.ByteSize()
    return _RESULT_TAG_BYTES + _varint_bytes(size) + size


def _varint_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


class _Results:
    """The results of a SendBatch or Publish, refused once their message would be too large."""

    __slots__ = ("_bytes", "_limit", "_method", "response")

    def __init__(
        self,
        response: agent_service_pb2.SendBatchResponse | agent_service_pb2.PublishResponse,
        method: str,
        max_message_bytes: int,
    ) -> None:
        self.response = response
        self._method = method
        self._limit = max_message_bytes
        self._bytes = 0

    def append(self, result: agent_service_pb2.DeliveryResult) -> None:
        """Add one result; raises MessageTooLarge (no further envelope runs) past the limit."""
        self._bytes += _result_bytes(result)
        if self._bytes > self._limit:
            text = (
                f"the {self._method} response would exceed {self._limit} bytes; "
                "send fewer envelopes per call"
            )
            raise MessageTooLarge(text)
        self.response.results.append(result)


class _Slot:
    """One envelope of a Stream call: its window slot and the task delivering it (if it has one)."""

    __slots__ = ("envelope_id", "finished", "queued", "released", "task")

    def __init__(self, envelope_id: str) -> None:
        self.envelope_id = envelope_id
        self.task: asyncio.Task[None] | None = None
        """The task delivering it; ``None`` while it runs in the reader, or once it ended there."""
        self.released = False
        """True once the window slot is free again (its answers written, or the envelope failed)."""
        self.queued = 0
        """Answers queued and not yet written."""
        self.finished = False
        """True once the envelope's delivery has queued its last answer."""


_Outgoing = tuple[_Slot, agent_service_pb2.StreamResponse]
"""An answer of a Stream call, with the envelope it belongs to."""


class _Outbox:
    """The answers of one Stream call queued for its one writer, at most ``limit`` of them.

    A put beyond the bound waits, in order, until the writer takes an answer; the writer waits
    while nothing is queued. (asyncio.Queue does the same at about forty times the cost per
    answer: it also counts unfinished tasks and keeps a deque of waiting getters.)
    """

    __slots__ = ("_getter", "_items", "_limit", "_loop", "_putters")

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop  # asyncio.get_running_loop() costs a getpid() system call each time
        self._items: deque[_Outgoing | None] = deque()
        self._limit = limit
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[tuple[asyncio.Future[None], _Outgoing | None]] = deque()
        """Puts waiting for room, each with its answer (queued for it when room is made)."""

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: _Outgoing | None) -> None:
        """Queue ``item`` (None: the end), waiting while ``limit`` answers are queued."""
        if not self._putters and len(self._items) < self._limit:
            self._items.append(item)
            self._wake_getter()
            return
        entry = (self._loop.create_future(), item)
        self._putters.append(entry)
        try:
            await entry[0]
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):  # absent: its answer was queued already
                self._putters.remove(entry)
            self._admit()
            raise

    async def get(self) -> _Outgoing | None:
        """The next queued item, waiting while there is none."""
        items = self._items
        while not items:
            getter = self._getter = self._loop.create_future()
            try:
                await getter
            finally:
                self._getter = None
        item = items.popleft()
        if self._putters:
            self._admit()
        return item

    def _admit(self) -> None:
        """Queue the answers of waiting puts while there is room, and wake those puts."""
        items, putters = self._items, self._putters
        while putters and len(items) < self._limit:
            waiter, item = putters.popleft()
            if waiter.done():  # its put was cancelled
                continue
            items.append(item)
            waiter.set_result(None)
        self._wake_getter()

    def _wake_getter(self) -> None:
        getter = self._getter
        if getter is not None and self._items and not getter.done():
            getter.set_result(None)


class _Window:
    """The window of one Stream call: envelopes in progress, taken by its one reader."""

    __slots__ = ("_loop", "_waiter", "free")

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.free = size
        """Envelopes that may still start; never above the size."""
        self._waiter: asyncio.Future[None] | None = None

    async def take(self) -> None:
        """Take a slot, waiting while the window is full."""
        while self.free <= 0:
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        self.free -= 1

    def give(self) -> None:
        """Give a slot back (once per slot taken)."""
        self.free += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _raise_for(result: agent_service_pb2.DeliveryResult) -> None:
    """Raise the error a failed delivery recorded, with its REJECTED ack among the details."""
    if has_field(result, "error"):
        error = from_status(result.error)
        if has_field(result, "ack"):
            error.details = (*error.details, result.ack)
        raise error


class AgentServiceCore:
    """The RPCs of ``asap.v1.AgentService``.

    Args:
        deliverer: Delivers envelopes to the agent.
        endpoints: Returns the endpoints to advertise in the manifest (the server's listeners).
        limits: ``max_batch_envelopes`` and ``max_message_bytes`` bound SendBatch and Publish.
    """

    def __init__(
        self,
        deliverer: Deliverer,
        endpoints: Callable[[], Sequence[manifest_pb2.Endpoint]] = tuple,
        *,
        limits: Limits | None = None,
    ) -> None:
        self._deliverer = deliverer
        self._endpoints = endpoints
        limits = limits or Limits()
        self._max_envelopes = limits.max_batch_envelopes
        self._max_bytes = limits.max_message_bytes
        self.rpcs: dict[str, Callable[[CallContext, ServerCall], Awaitable[None]]] = {
            "Send": self.send,
            "SendBatch": self.send_batch,
            "Subscribe": self.subscribe,
            "Publish": self.publish,
            "Stream": self.stream,
            "GetManifest": self.get_manifest,
        }
        """Each RPC by method name."""

    async def send(self, ctx: CallContext, call: ServerCall) -> None:
        """Send: deliver one envelope; answer, or fail with the delivery's error."""
        request = await _read_one(call, agent_service_pb2.SendRequest)
        envelope = request.envelope
        await self._deliverer.admit(ctx, (envelope,))
        response = agent_service_pb2.SendResponse()
        result = await self._deliverer.deliver(ctx, envelope, answer_into=response.envelope)
        _raise_for(result)
        if has_field(result, "envelope"):  # a stored outcome (the new answer is in place already)
            response.envelope.CopyFrom(result.envelope)
        if has_field(result, "ack"):
            response.ack.CopyFrom(result.ack)
        await call.write(response)

    async def send_batch(self, ctx: CallContext, call: ServerCall) -> None:
        """SendBatch: admit the whole batch, then deliver each envelope in order.

        A batch over ``max_batch_envelopes`` fails with TooManyEnvelopes before anything runs. Once
        the results would exceed ``max_message_bytes`` the call fails with MessageTooLarge and no
        further envelope runs; the outcomes of those that ran are kept by dedupe, so re-sending
        them returns the same results without running the handlers again.
        """
        request = await _read_one(call, agent_service_pb2.SendBatchRequest)
        if len(request.envelopes) > self._max_envelopes:
            text = f"SendBatch takes at most {self._max_envelopes} envelopes per call"
            raise TooManyEnvelopes(text)
        await self._deliverer.admit(ctx, request.envelopes)
        results = _Results(agent_service_pb2.SendBatchResponse(), "SendBatch", self._max_bytes)
        for envelope in request.envelopes:
            results.append(await self._deliverer.deliver(ctx, envelope))
        await call.write(results.response)

    async def subscribe(self, ctx: CallContext, call: ServerCall) -> None:
        """Subscribe: deliver one envelope and stream everything produced for it."""
        request = await _read_one(call, agent_service_pb2.SubscribeRequest)
        envelope = request.envelope
        await self._deliverer.admit(ctx, (envelope,))

        # The answer is built inside the response that carries it (no copy of it for the write).
        final = agent_service_pb2.SubscribeResponse()
        placed = final.envelope

        async def emit(item: envelope_pb2.Envelope) -> None:
            response = (
                final if item is placed else agent_service_pb2.SubscribeResponse(envelope=item)
            )
            await call.write(response)

        _raise_for(await self._deliverer.deliver(ctx, envelope, emit, answer_into=placed))

    async def publish(self, ctx: CallContext, call: ServerCall) -> None:
        """Publish: deliver each streamed envelope in order; answer with every outcome.

        Reading envelope number ``max_batch_envelopes + 1`` fails the call with TooManyEnvelopes,
        and results past ``max_message_bytes`` fail it with MessageTooLarge; in both cases nothing
        after that point runs, and the outcomes of the envelopes that ran are kept by dedupe (a
        caller re-publishes them in smaller calls and gets the same results, handlers not re-run).
        """
        results = _Results(agent_service_pb2.PublishResponse(), "Publish", self._max_bytes)
        count = 0
        while (request := await _read_next(call, agent_service_pb2.PublishRequest)) is not None:
            count += 1
            if count > self._max_envelopes:
                text = f"Publish takes at most {self._max_envelopes} envelopes per call"
                raise TooManyEnvelopes(text)
            try:
                await self._deliverer.admit(ctx, (request.envelope,))
            except AsapError as refusal:
                results.append(self._deliverer.refused(request.envelope, refusal))
                continue
            results.append(await self._deliverer.deliver(ctx, request.envelope))
        await call.write(results.response)

    async def stream(self, ctx: CallContext, call: ServerCall) -> None:
        """Stream: deliver envelopes concurrently; push acks, updates and answers as they happen.

        One task writes, in order, the answers the envelopes queue. An answer over the
        maximum message size fails only its envelope: an EnvelopeError (MESSAGE_TOO_LARGE) is
        written instead, the envelope's handler is cancelled and its later answers (and ack) are
        dropped; the Stream goes on.

        Each envelope starts eagerly, in the reader, exactly as a unary call does on the bridge
        (:func:`~asap.core.tasks.start_eagerly`): one whose delivery never suspends (a plain
        handler behind the built-in guards and the in-memory store) needs no task at all; one
        that suspends goes on in a task of its own from there.
        """
        loop = asyncio.get_running_loop()
        outbox = _Outbox(STREAM_OUTBOX, loop)
        window = _Window(STREAM_WINDOW, loop)
        deliverer = self._deliverer

        def release(slot: _Slot) -> None:
            if not slot.released:
                slot.released = True
                window.give()

        try_write = nowait_writer(call)
        writing = False  # the writer task is inside call.write: answers queue behind it

        async def queue(slot: _Slot, response: agent_service_pb2.StreamResponse) -> None:
            if try_write is not None and not writing and not outbox and not slot.released:
                # Nothing is queued before it: write it here, now, if that needs no waiting.
                try:
                    if try_write(response):
                        return
                except AsapError:
                    pass  # too large, or the call is over: the writer meets it, as for any answer
            slot.queued += 1
            await outbox.put((slot, response))

        async def process(envelope: envelope_pb2.Envelope, slot: _Slot) -> None:
            # The answer is built inside the response that carries it (no copy of it to queue).
            final = agent_service_pb2.StreamResponse()
            placed = final.envelope

            async def push(item: envelope_pb2.Envelope) -> None:
                if item is placed:
                    await queue(slot, final)
                else:
                    await queue(slot, agent_service_pb2.StreamResponse(envelope=item))

            try:
                try:
                    await deliverer.admit(ctx, (envelope,))
                except AsapError as refusal:
                    result = deliverer.refused(envelope, refusal)
                else:
                    result = await deliverer.deliver(
                        ctx, envelope, push, ack_received=True, answer_into=placed
                    )
                if has_field(result, "error"):
                    error = agent_service_pb2.EnvelopeError(
                        envelope_id=envelope.id, status=result.error
                    )
                    await queue(slot, agent_service_pb2.StreamResponse(error=error))
                if has_field(result, "ack"):
                    await push(deliverer.ack_envelope(envelope, result.ack))
            finally:
                slot.finished = True
                if not slot.queued:  # everything it queued is written: free its slot now
                    release(slot)

        async def read_requests(group: asyncio.TaskGroup) -> None:
            while True:
                await window.take()
                request = await call.read()
                if request is None:
                    return
                if not isinstance(request, agent_service_pb2.StreamRequest):
                    text = f"expected {agent_service_pb2.StreamRequest.DESCRIPTOR.name}"
                    raise InvalidArgument(text)
                envelope = request.envelope
                slot = _Slot(envelope.id)
                # The core hands off to a task before anything that needs one (ctx.eager).
                ctx.eager = True
                try:
                    slot.task = start_eagerly_in(group, process(envelope, slot), name=_ENVELOPE)
                finally:
                    ctx.eager = False

        async def pump() -> None:
            async with asyncio.TaskGroup() as group:
                await read_requests(group)
            await outbox.put(None)

        async with asyncio.TaskGroup() as outer:
            outer.create_task(pump())
            while (item := await outbox.get()) is not None:
                slot, response = item
                if not slot.released:
                    writing = True
                    try:
                        await call.write(response)
                    except MessageTooLarge as exc:
                        release(slot)
                        if slot.task is not None:
                            slot.task.cancel()
                        error = agent_service_pb2.EnvelopeError(
                            envelope_id=slot.envelope_id, status=to_status(exc)
                        )
                        await call.write(agent_service_pb2.StreamResponse(error=error))
                    finally:
                        writing = False
                # Counted down only once written: the slot holds while its answer is in the write.
                slot.queued -= 1
                if slot.finished and not slot.queued:
                    release(slot)

    async def get_manifest(self, ctx: CallContext, call: ServerCall) -> None:
        """GetManifest: the agent's manifest with the server's endpoints."""
        await _read_one(call, agent_service_pb2.GetManifestRequest)
        manifest = self._deliverer.agent.manifest(self._endpoints())
        await call.write(agent_service_pb2.GetManifestResponse(manifest=manifest))
