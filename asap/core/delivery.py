"""Delivery of one envelope: validation, idempotency, the handler, acks and the answer envelope.

Every RPC that carries envelopes (Send, SendBatch, Subscribe, Publish, Stream) delivers each of
them through :class:`Deliverer.deliver`, so validation, dedupe and acks behave the same whatever the
RPC and whatever the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, cast

from asap import validation
from asap.core import probes
from asap.core.agent import Agent, Incoming, Reply, Route
from asap.core.boundary import as_asap_error
from asap.core.context import CallContext, CancelReason
from asap.core.dedupe import DedupeStore, Owned, Reused, Stored, dedupe_key_of, fingerprint
from asap.core.middleware import Middleware
from asap.core.tasks import YIELD_INTERVAL, Finished, leave_eager, start_eagerly_for_result
from asap.errors import (
    AsapError,
    Code,
    ConnectionLost,
    DeadlineExceeded,
    IdempotencyKeyReused,
    ShuttingDown,
    UnknownRecipient,
    to_status,
)
from asap.protocol.frames import varint
from asap.protocol.pbmethods import has_field, serialize
from asap.v1 import agent_service_pb2, envelope_pb2, payload_pb2


_log = logging.getLogger("asap.delivery")

_monotonic: Final = time.monotonic
"""``time.monotonic``, bound once: compiled, a module attribute is looked up at every use."""

Emit = Callable[[envelope_pb2.Envelope], Awaitable[None]]
"""Receives each envelope a delivery produces (acks, updates, the answer) as it is produced."""

_TRANSIENT: Final = frozenset(
    {
        Code.CANCELLED,
        Code.UNKNOWN,
        Code.DEADLINE_EXCEEDED,
        Code.RESOURCE_EXHAUSTED,
        Code.ABORTED,
        Code.INTERNAL,
        Code.UNAVAILABLE,
    }
)
"""Failures that are not remembered: a retransmission of the envelope is processed again."""

_PREVIEW: Final = 64
"""Characters of a refused recipient quoted in the error message."""


def _envelope_field(data: bytes) -> bytes:
    """``data`` (a serialized Envelope) as DeliveryResult field 1: tag, length, bytes."""
    return b"".join((b"\x0a", varint(len(data)), data))


class _Sink:
    """Where a delivery's envelopes go while its call is there; dropped once it is gone.

    A failed write does not fail the handler: it keeps running to completion (its outcome is
    stored), later envelopes are dropped, and :attr:`error` keeps the failure for the call. The
    exceptions are the two things that do stop a handler (:class:`CancelReason`): the call's
    deadline has passed, or its caller cancelled it explicitly; then the write's error reaches the
    handler, also one that never awaits (the core checks both at every streamed write).
    """

    __slots__ = ("_ctx", "_emit", "_yielded_at", "detached", "error")

    def __init__(self, emit: Emit | None, ctx: CallContext) -> None:
        self._emit = emit
        self._ctx = ctx
        self.error: Exception | None = None
        self.detached = False
        """True once the call went away (its task was cancelled) while the delivery ran."""
        self._yielded_at = _monotonic()

    @property
    def attached(self) -> bool:
        return self._emit is not None

    def detach(self) -> None:
        self._emit = None
        self.detached = True

    async def __call__(self, item: envelope_pb2.Envelope) -> None:
        emit = self._emit
        if emit is None:
            if not self.detached:
                return  # a call with nothing to stream (Send takes the result instead)
            # Detached: nothing is written, but a handler that never awaits must still meet its
            # own cancellation (requested on this task) and its deadline here.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            if self._ctx.cancel_reason() is CancelReason.DEADLINE:
                raise DeadlineExceeded
            # Nothing is written, so nothing suspends: give the loop a turn once per
            # YIELD_INTERVAL, or a handler that never awaits would hold every other call up.
            now = _monotonic()
            if now - self._yielded_at >= YIELD_INTERVAL:
                self._yielded_at = now
                await asyncio.sleep(0)
            return
        try:
            await emit(item)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this delivery itself is being cancelled
            self.error, self._emit = ConnectionLost(f"the call went away: {exc!r}"), None
        except Exception as exc:
            if self._ctx.cancel_reason() is not CancelReason.TRANSPORT:
                raise  # past the deadline, or cancelled by the caller: the handler stops
            self.error, self._emit = exc, None


@dataclass(slots=True)
class DeliveryStats:
    """Counters of a :class:`Deliverer`."""

    detached: int = 0
    """Deliveries that went on after their call's transport failed."""
    cancelled_over_bound: int = 0
    """Deliveries cancelled with their call because :attr:`Deliverer.max_detached` were running."""


class Deliverer:
    """Delivers envelopes to an agent's handlers exactly once per (principal, sender, id).

    Each claimed envelope is processed in a task the Deliverer owns, so a transport failure of the
    call (the connection is cut, the peer is gone: the transport cancels the call's task) does not
    cancel the handler: it runs to completion and its outcome is stored, and the caller's
    retransmission waits for it and gets that outcome. Only an explicit cancel by the caller or the
    call's deadline (:meth:`CallContext.cancel_reason`) cancels it. At most ``max_detached``
    deliveries outlive their calls; beyond that a delivery is cancelled with its call (counted).

    Args:
        agent: The handlers.
        store: Where outcomes are remembered.
        middleware: Guards run on every group of envelopes.
        policy: Validation limits (timestamp window).
        clock: Wall clock for timestamps and validation, injectable for tests.
        max_detached: How many deliveries may go on after their calls ended.
    """

    def __init__(
        self,
        agent: Agent,
        store: DedupeStore,
        middleware: Sequence[Middleware],
        policy: validation.ValidationPolicy,
        *,
        clock: Callable[[], float] = time.time,
        max_detached: int = 1000,
    ) -> None:
        self.agent = agent
        self._store = store
        self._middleware = tuple(middleware)
        self._policy = policy
        self._clock = clock
        self.max_detached = max_detached
        self._running: set[asyncio.Task[agent_service_pb2.DeliveryResult]] = set()
        self._detached: set[asyncio.Task[agent_service_pb2.DeliveryResult]] = set()
        self._closed = False
        self.stats = DeliveryStats()

    @property
    def detached(self) -> int:
        """How many deliveries are running after their calls ended."""
        return len(self._detached)

    async def admit(self, ctx: CallContext, envelopes: Sequence[envelope_pb2.Envelope]) -> None:
        """Run the middleware on a group of envelopes; raises the first refusal."""
        for guard in self._middleware:
            if ctx.eager and not getattr(guard, "eager_safe", False):
                await leave_eager(ctx)
            await guard.on_envelopes(ctx, envelopes)

    async def deliver(
        self,
        ctx: CallContext,
        envelope: envelope_pb2.Envelope,
        emit: Emit | None = None,
        *,
        ack_received: bool = False,
        answer_into: envelope_pb2.Envelope | None = None,
    ) -> agent_service_pb2.DeliveryResult:
        """Validate and process one admitted envelope and return its outcome; never raises AsapError.

        With ``emit``, every envelope the handler produces is passed on as it is produced (and,
        with ``ack_received``, a RECEIVED ack first). A repeated (principal, sender, id) with the
        same content returns the stored outcome without calling the handler (nothing but the final
        answer is emitted then); with different content it fails IDEMPOTENCY_KEY_REUSED. The
        stored outcome is looked up before the timestamp window is applied, so a late
        retransmission still gets its answer.

        With ``answer_into`` (an empty envelope: the field of the response the caller sends), the
        answer is built (or, from a streaming handler, its last one copied) there instead of in
        the result, which then has neither envelope nor error; a plain reply's answer reaches
        ``emit`` as that very object, so the caller can tell it from the others. A stored
        outcome's answer is in the result as always. Either way the stored outcome holds it.
        """
        try:
            head = validation.validated_head(
                envelope, self._policy, now=self._clock(), timestamp=False
            )
        except AsapError as error:
            return self.refused(envelope, error)
        if head.recipient != self.agent.id:
            # An agent answers only for itself: served for another URN, it would sign its answer
            # with whatever the caller claims it is.
            return self.refused(envelope, self._unknown_recipient(envelope))
        key = dedupe_key_of(ctx.principal, head.sender, head.id)
        digest = fingerprint(envelope)
        store_is_local = getattr(self._store, "eager_safe", False)
        if ctx.eager and not store_is_local:
            await leave_eager(ctx)  # a shared store does I/O
        try:
            try:
                validation.check_timestamp(envelope, self._policy, self._clock())
            except AsapError as error:
                found = await self._store.lookup(key, digest)
                if isinstance(found, Stored):
                    return await self._replay(found, emit)
                return self.refused(envelope, error)
            claim = await self._store.claim(key, digest)
        except AsapError as error:  # the store is unreachable (StoreUnavailable)
            return self.refused(envelope, error)
        if isinstance(claim, Stored):
            return await self._replay(claim, emit)
        if isinstance(claim, Reused):
            message = f"envelope id {envelope.id!r} was already used for different content"
            return self.refused(envelope, IdempotencyKeyReused(message))
        sink = _Sink(emit, ctx)
        if self._closed:
            await self._store.abandon(key, claim)
            return self.refused(envelope, ShuttingDown())
        # validated_head() has read and checked the payload's kind, so payload_of cannot fail here.
        payload = validation.payload_of(envelope, head.kind)
        route = self._route(payload)
        process = self._process(
            ctx, envelope, head, payload, key, claim, sink, ack_received, route, answer_into
        )
        # A plain function (or none will run: the envelope fails in _run).
        synchronous = store_is_local and (route is None or route.synchronous)
        if synchronous and emit is None:
            # Nothing in it can suspend (a plain handler, the in-memory store, nothing to
            # stream), so nothing can cancel it half-way either: no task is needed to outlive
            # the call, and running it in place saves a context, a future and a task.
            return await process
        name = f"asap.delivery {envelope.id}"
        if synchronous:
            # No user code can suspend in it: run it at once, in a task only if a write waits.
            started = start_eagerly_for_result(process, name=name)
            if isinstance(started, Finished):
                if sink.error is not None:
                    return self.refused(
                        envelope, as_asap_error(sink.error, where=f"answer to {envelope.id}")
                    )
                return started.result()
            task = started  # it suspended: the task that continues it
        else:
            task = asyncio.get_running_loop().create_task(process, name=name)
        self._running.add(task)
        task.add_done_callback(self._finished)
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if self._on_call_cancelled(ctx, task, sink):
                # Cancelled with its call: the call ends once the handler has seen it and the
                # claim is released (so a retry claims it afresh).
                await asyncio.wait({task})
            raise
        if sink.error is not None:
            return self.refused(
                envelope, as_asap_error(sink.error, where=f"answer to {envelope.id}")
            )
        return result

    def _route(self, payload: validation.Payload) -> Route | None:
        """The payload's route, or None when it has none (``_run`` then reports why)."""
        try:
            return self.agent.route_for(payload)
        except AsapError:
            return None

    def _finished(self, task: asyncio.Task[agent_service_pb2.DeliveryResult]) -> None:
        self._running.discard(task)
        self._detached.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("delivery task %s failed", task.get_name(), exc_info=task.exception())

    def _on_call_cancelled(
        self,
        ctx: CallContext,
        task: asyncio.Task[agent_service_pb2.DeliveryResult],
        sink: _Sink,
    ) -> bool:
        """The call's task was cancelled while its delivery ran: cancel it (True), or let it go on."""
        sink.detach()
        if task.done():
            return False
        if ctx.cancel_reason() is not CancelReason.TRANSPORT or self._closed:
            task.cancel()
            return True
        if len(self._detached) >= self.max_detached:
            self.stats.cancelled_over_bound += 1
            _log.warning(
                "%d deliveries already outlive their calls; cancelling %s with its call",
                len(self._detached),
                task.get_name(),
            )
            task.cancel()
            return True
        self.stats.detached += 1
        self._detached.add(task)
        return False

    async def wait_idle(self) -> None:
        """Wait until no delivery is running (including those that outlived their calls)."""
        while self._running:
            await asyncio.wait(set(self._running))

    async def close(self) -> None:
        """Cancel every running delivery and wait for them; later deliveries are refused."""
        self._closed = True
        while self._running:
            pending = set(self._running)
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)

    async def _replay(self, found: Stored, emit: Emit | None) -> agent_service_pb2.DeliveryResult:
        probes.dedupe_hit()
        result = agent_service_pb2.DeliveryResult.FromString(found.outcome)
        if emit is not None and result.HasField("envelope"):
            await emit(result.envelope)
        return result

    async def _process(
        self,
        ctx: CallContext,
        envelope: envelope_pb2.Envelope,
        head: validation.EnvelopeHead,
        payload: validation.Payload,
        key: str,
        claim: Owned,
        sink: _Sink,
        ack_received: bool,
        route: Route | None,
        answer_into: envelope_pb2.Envelope | None,
    ) -> agent_service_pb2.DeliveryResult:
        """Run the handler, record the outcome at once, then pass the answer on."""
        completed = False
        try:
            if ack_received and envelope.requires_ack:
                await sink(self._ack(envelope, payload_pb2.ACK_STATUS_RECEIVED))
            result, answered, placed = await self._run(
                ctx, envelope, head, payload, sink, route, answer_into
            )
            if not (has_field(result, "error") and Code(result.error.code) in _TRANSIENT):
                outcome = serialize(result)
                if placed is not None:
                    # DeliveryResult.envelope is field 1, as the answer would be serialized there.
                    outcome = _envelope_field(serialize(placed)) + outcome
                try:
                    await self._store.complete(key, claim, outcome)
                except AsapError as error:
                    _log.error("could not store the outcome of %s: %s", envelope.id, error)
                completed = True
            if (
                not answered
                and sink.attached
                and (placed is not None or has_field(result, "envelope"))
            ):
                # Only to a call still there: a detached delivery has nobody to answer, and
                # its sink's loop turn would only delay the end (and its bookkeeping) at random.
                await sink(result.envelope if placed is None else placed)
            return result
        finally:
            if not completed:
                try:
                    await self._store.abandon(key, claim)
                except AsapError as error:
                    _log.error("could not release the claim of %s: %s", envelope.id, error)

    async def _run(
        self,
        ctx: CallContext,
        envelope: envelope_pb2.Envelope,
        head: validation.EnvelopeHead,
        payload: validation.Payload,
        emit: _Sink,
        route: Route | None,
        answer_into: envelope_pb2.Envelope | None = None,
    ) -> tuple[agent_service_pb2.DeliveryResult, bool, envelope_pb2.Envelope | None]:
        """The handler's outcome, whether its answer was emitted already, and where the answer is.

        The third item is ``answer_into`` if the answer was built there, else None (the answer,
        if any, is in the outcome). ``route`` is the envelope's route if already known, else None
        (looked up here, where a failure becomes the outcome).
        """
        answered = False
        result = agent_service_pb2.DeliveryResult()
        into = result.envelope if answer_into is None else answer_into
        try:
            if route is None:  # raises why the envelope has no route
                route = self.agent.route_for(payload)
            incoming = Incoming(envelope=envelope, payload=payload, call=ctx)
            answer: envelope_pb2.Envelope | None = None
            if ctx.eager and not route.synchronous:
                await leave_eager(ctx)  # user coroutines may need a current task
            if route.streaming:
                # Closed here, in this task, when emit fails or the delivery is cancelled: left
                # to GC, the handler's finally would run later, in a task of the loop's choosing.
                stream = cast("AsyncGenerator[Reply, None]", route.handler(incoming))
                async with contextlib.aclosing(stream):
                    async for item in stream:
                        answer = self._answer(envelope, item, head=head)
                        await emit(answer)
                answered = True
            else:
                if route.synchronous:
                    reply = cast("Reply | None", route.handler(incoming))
                else:
                    reply = await route.handler(incoming)  # type: ignore[misc]
                if reply is not None:
                    # Built where it is sent from (or kept): no copy of the answer.
                    answer = self._answer(envelope, reply, into=into, head=head)
        except Exception as exc:  # noqa: BLE001 - the delivery boundary: every failure becomes a status
            error = as_asap_error(exc, where=f"handler for {envelope.id}")
            if answer_into is not None:
                answer_into.Clear()  # a half-built answer must not be sent
            return self.refused(envelope, error), answered, None
        placed: envelope_pb2.Envelope | None = None
        if answer is not None:
            if answer is not into:
                into.CopyFrom(answer)  # an envelope the handler built, or a stream's last answer
            placed = answer_into
        if envelope.requires_ack:
            result.ack.CopyFrom(self._ack_payload(envelope, payload_pb2.ACK_STATUS_PROCESSED, ""))
        return result, answered, placed

    def refused(
        self, envelope: envelope_pb2.Envelope, error: AsapError
    ) -> agent_service_pb2.DeliveryResult:
        """The outcome of an envelope that failed with ``error`` (with a REJECTED ack if asked)."""
        result = agent_service_pb2.DeliveryResult(error=to_status(error))
        if envelope.requires_ack:
            reason = f"{error.reason}: {error.message}"
            result.ack.CopyFrom(
                self._ack_payload(envelope, payload_pb2.ACK_STATUS_REJECTED, reason)
            )
        return result

    def _unknown_recipient(self, envelope: envelope_pb2.Envelope) -> UnknownRecipient:
        preview = envelope.recipient[:_PREVIEW]
        message = f"this server is {self.agent.id}, not the envelope's recipient {preview!r}"
        return UnknownRecipient(message, metadata={"recipient": self.agent.id})

    def _answer(
        self,
        request: envelope_pb2.Envelope,
        reply: Reply,
        *,
        into: envelope_pb2.Envelope | None = None,
        head: validation.EnvelopeHead | None = None,
    ) -> envelope_pb2.Envelope:
        """Wrap a handler's reply in an envelope from the agent back to the request's sender.

        The sender is always the agent's own id, also on an envelope the handler built: a server
        never answers as anyone else. With ``into`` (an empty envelope), a payload reply is
        wrapped there, in place, and ``into`` is returned; an envelope reply is returned as is.
        ``head`` is the request's, if validated already (its fields are not read again).
        """
        request_id = request.id if head is None else head.id
        if isinstance(reply, envelope_pb2.Envelope):
            answer = reply
            answer.sender = self.agent.id
            if not answer.correlation_id:
                answer.correlation_id = request_id
        else:
            answer = envelope_pb2.Envelope() if into is None else into
            answer.sender = self.agent.id
            answer.recipient = request.sender if head is None else head.sender
            answer.correlation_id = request_id
            answer.trace_id = request.trace_id
            validation.put_payload(answer, reply)
        validation.fill_defaults(answer, now=self._clock())
        return answer

    @staticmethod
    def _ack_payload(
        request: envelope_pb2.Envelope, status: payload_pb2.AckStatus.ValueType, reason: str
    ) -> payload_pb2.MessageAck:
        return payload_pb2.MessageAck(original_envelope_id=request.id, status=status, reason=reason)

    def _ack(
        self, request: envelope_pb2.Envelope, status: payload_pb2.AckStatus.ValueType
    ) -> envelope_pb2.Envelope:
        return self._answer(request, self._ack_payload(request, status, ""))

    def ack_envelope(
        self, request: envelope_pb2.Envelope, ack: payload_pb2.MessageAck
    ) -> envelope_pb2.Envelope:
        """Wrap an ack from a DeliveryResult as an envelope for the request's sender."""
        return self._answer(request, ack)
