"""Delivery of one envelope: validation, idempotency, the handler, acks and the answer envelope.

Every RPC that carries envelopes (Send, SendBatch, Subscribe, Publish, Stream) delivers each of
them through :class:`Deliverer.deliver`, so validation, dedupe and acks behave the same whatever the
RPC and whatever the transport.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import cast

from asap import validation
from asap.core import probes
from asap.core.agent import Agent, Incoming, Reply
from asap.core.boundary import as_asap_error
from asap.core.context import CallContext
from asap.core.dedupe import DedupeStore
from asap.core.middleware import Middleware
from asap.errors import AsapError, Code, to_status
from asap.v1 import agent_service_pb2, envelope_pb2, payload_pb2


Emit = Callable[[envelope_pb2.Envelope], Awaitable[None]]
"""Receives each envelope a delivery produces (acks, updates, the answer) as it is produced."""

_TRANSIENT = frozenset(
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


class Deliverer:
    """Delivers envelopes to an agent's handlers exactly once per (sender, id).

    Args:
        agent: The handlers.
        store: Where outcomes are remembered.
        middleware: Guards run on every group of envelopes.
        policy: Validation limits (timestamp window).
        clock: Wall clock for timestamps and validation, injectable for tests.
    """

    def __init__(
        self,
        agent: Agent,
        store: DedupeStore,
        middleware: Sequence[Middleware],
        policy: validation.ValidationPolicy,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.agent = agent
        self._store = store
        self._middleware = tuple(middleware)
        self._policy = policy
        self._clock = clock

    async def admit(self, ctx: CallContext, envelopes: Sequence[envelope_pb2.Envelope]) -> None:
        """Run the middleware on a group of envelopes; raises the first refusal."""
        for guard in self._middleware:
            await guard.on_envelopes(ctx, envelopes)

    async def deliver(
        self,
        ctx: CallContext,
        envelope: envelope_pb2.Envelope,
        emit: Emit | None = None,
        *,
        ack_received: bool = False,
    ) -> agent_service_pb2.DeliveryResult:
        """Validate and process one admitted envelope and return its outcome; never raises AsapError.

        With ``emit``, every envelope the handler produces is passed on as it is produced (and,
        with ``ack_received``, a RECEIVED ack first). A repeated (sender, id) returns the stored
        outcome without calling the handler; nothing but the final answer is emitted then.
        """
        try:
            validation.validate(envelope, self._policy, now=self._clock())
        except AsapError as error:
            return self.refused(envelope, error)
        key = f"{envelope.sender}\x00{envelope.id}"
        stored = await self._store.claim(key)
        if stored is not None:
            probes.dedupe_hit()
            result = agent_service_pb2.DeliveryResult.FromString(stored)
            if emit is not None and result.HasField("envelope"):
                await emit(result.envelope)
            return result
        completed = False
        try:
            if ack_received and emit is not None and envelope.requires_ack:
                await emit(self._ack(envelope, payload_pb2.ACK_STATUS_RECEIVED))
            result = await self._run(ctx, envelope, emit)
            if not (result.HasField("error") and Code(result.error.code) in _TRANSIENT):
                await self._store.complete(key, result.SerializeToString())
                completed = True
            return result
        finally:
            if not completed:
                await self._store.abandon(key)

    async def _run(
        self, ctx: CallContext, envelope: envelope_pb2.Envelope, emit: Emit | None
    ) -> agent_service_pb2.DeliveryResult:
        try:
            payload = validation.payload_of(envelope)
            route = self.agent.route_for(payload)
            incoming = Incoming(envelope=envelope, payload=payload, call=ctx)
            answer: envelope_pb2.Envelope | None = None
            if route.streaming:
                # Closed here, in the call's task, when emit fails or the call is cancelled: left
                # to GC, the handler's finally would run later, in a task of the loop's choosing.
                stream = cast("AsyncGenerator[Reply, None]", route.handler(incoming))
                async with contextlib.aclosing(stream):
                    async for item in stream:
                        answer = self._answer(envelope, item)
                        if emit is not None:
                            await emit(answer)
            else:
                reply = await route.handler(incoming)  # type: ignore[misc]
                if reply is not None:
                    answer = self._answer(envelope, reply)
                    if emit is not None:
                        await emit(answer)
        except Exception as exc:  # noqa: BLE001 - the delivery boundary: every failure becomes a status
            return self.refused(envelope, as_asap_error(exc, where=f"handler for {envelope.id}"))
        result = agent_service_pb2.DeliveryResult()
        if answer is not None:
            result.envelope.CopyFrom(answer)
        if envelope.requires_ack:
            result.ack.CopyFrom(self._ack_payload(envelope, payload_pb2.ACK_STATUS_PROCESSED, ""))
        return result

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

    def _answer(self, request: envelope_pb2.Envelope, reply: Reply) -> envelope_pb2.Envelope:
        """Wrap a handler's reply in an envelope addressed back to the request's sender."""
        if isinstance(reply, envelope_pb2.Envelope):
            answer = reply
            if not answer.correlation_id:
                answer.correlation_id = request.id
        else:
            answer = validation.wrap(
                reply,
                sender=request.recipient or self.agent.id,
                recipient=request.sender,
                correlation_id=request.id,
                trace_id=request.trace_id,
            )
        validation.fill_defaults(answer, now=self._clock(), new_id=validation.new_envelope_id)
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
