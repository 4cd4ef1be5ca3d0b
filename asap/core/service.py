"""AgentService's RPCs, written once over :class:`~asap.core.delivery.Deliverer`.

Each RPC is a coroutine over a :class:`ServerCall`, the one interface a transport implements for a
call: read the next request message, write a response message. Transports never see handlers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from google.protobuf.message import Message

from asap.core.context import CallContext
from asap.core.delivery import Deliverer
from asap.errors import AsapError, InvalidArgument, from_status
from asap.v1 import agent_service_pb2, envelope_pb2, manifest_pb2


class ServerCall(Protocol):
    """One call as a transport presents it to the core.

    ``read`` returns the next request message, or None once the caller half-closed. ``write`` sends
    one response message; the core never calls it concurrently for the same call.
    """

    async def read(self) -> Message | None:
        """Return the next request message, or None at the end of the request stream."""
        ...

    async def write(self, message: Message) -> None:
        """Send one response message."""
        ...


M = TypeVar("M", bound=Message)

STREAM_WINDOW = 64
"""How many envelopes of one Stream call are processed concurrently; reading pauses beyond it."""


async def _read_one(call: ServerCall, kind: type[M]) -> M:
    message = await call.read()
    if not isinstance(message, kind):
        text = f"expected one {kind.DESCRIPTOR.name}"
        raise InvalidArgument(text)
    return message


async def _read_all(call: ServerCall, kind: type[M]) -> AsyncIterator[M]:
    while (message := await call.read()) is not None:
        if not isinstance(message, kind):
            text = f"expected {kind.DESCRIPTOR.name}"
            raise InvalidArgument(text)
        yield message


def _raise_for(result: agent_service_pb2.DeliveryResult) -> None:
    """Raise the error a failed delivery recorded, with its REJECTED ack among the details."""
    if result.HasField("error"):
        error = from_status(result.error)
        if result.HasField("ack"):
            error.details = (*error.details, result.ack)
        raise error


class AgentServiceCore:
    """The RPCs of ``asap.v1.AgentService``.

    Args:
        deliverer: Delivers envelopes to the agent.
        endpoints: Returns the endpoints to advertise in the manifest (the server's listeners).
    """

    def __init__(
        self,
        deliverer: Deliverer,
        endpoints: Callable[[], Sequence[manifest_pb2.Endpoint]] = tuple,
    ) -> None:
        self._deliverer = deliverer
        self._endpoints = endpoints
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
        result = await self._deliverer.deliver(ctx, envelope)
        _raise_for(result)
        response = agent_service_pb2.SendResponse()
        if result.HasField("envelope"):
            response.envelope.CopyFrom(result.envelope)
        if result.HasField("ack"):
            response.ack.CopyFrom(result.ack)
        await call.write(response)

    async def send_batch(self, ctx: CallContext, call: ServerCall) -> None:
        """SendBatch: admit the whole batch, then deliver each envelope in order."""
        request = await _read_one(call, agent_service_pb2.SendBatchRequest)
        await self._deliverer.admit(ctx, request.envelopes)
        response = agent_service_pb2.SendBatchResponse()
        for envelope in request.envelopes:
            response.results.append(await self._deliverer.deliver(ctx, envelope))
        await call.write(response)

    async def subscribe(self, ctx: CallContext, call: ServerCall) -> None:
        """Subscribe: deliver one envelope and stream everything produced for it."""
        request = await _read_one(call, agent_service_pb2.SubscribeRequest)
        envelope = request.envelope
        await self._deliverer.admit(ctx, (envelope,))

        async def emit(item: envelope_pb2.Envelope) -> None:
            await call.write(agent_service_pb2.SubscribeResponse(envelope=item))

        _raise_for(await self._deliverer.deliver(ctx, envelope, emit))

    async def publish(self, ctx: CallContext, call: ServerCall) -> None:
        """Publish: deliver each streamed envelope in order; answer with every outcome."""
        response = agent_service_pb2.PublishResponse()
        async for request in _read_all(call, agent_service_pb2.PublishRequest):
            try:
                await self._deliverer.admit(ctx, (request.envelope,))
            except AsapError as refusal:
                response.results.append(self._deliverer.refused(request.envelope, refusal))
                continue
            response.results.append(await self._deliverer.deliver(ctx, request.envelope))
        await call.write(response)

    async def stream(self, ctx: CallContext, call: ServerCall) -> None:
        """Stream: deliver envelopes concurrently; push acks, updates and answers as they happen."""
        outbox: asyncio.Queue[agent_service_pb2.StreamResponse | None] = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)

        async def push(item: envelope_pb2.Envelope) -> None:
            await outbox.put(agent_service_pb2.StreamResponse(envelope=item))

        async def process(envelope: envelope_pb2.Envelope) -> None:
            try:
                try:
                    await self._deliverer.admit(ctx, (envelope,))
                except AsapError as refusal:
                    result = self._deliverer.refused(envelope, refusal)
                else:
                    result = await self._deliverer.deliver(ctx, envelope, push, ack_received=True)
                if result.HasField("error"):
                    error = agent_service_pb2.EnvelopeError(
                        envelope_id=envelope.id, status=result.error
                    )
                    await outbox.put(agent_service_pb2.StreamResponse(error=error))
                if result.HasField("ack"):
                    await push(self._deliverer.ack_envelope(envelope, result.ack))
            finally:
                window.release()

        async def read_requests(group: asyncio.TaskGroup) -> None:
            async for request in _read_all(call, agent_service_pb2.StreamRequest):
                await window.acquire()
                group.create_task(process(request.envelope))

        async def pump() -> None:
            async with asyncio.TaskGroup() as group:
                await read_requests(group)
            await outbox.put(None)

        async with asyncio.TaskGroup() as outer:
            outer.create_task(pump())
            while (item := await outbox.get()) is not None:
                await call.write(item)

    async def get_manifest(self, ctx: CallContext, call: ServerCall) -> None:
        """GetManifest: the agent's manifest with the server's endpoints."""
        await _read_one(call, agent_service_pb2.GetManifestRequest)
        manifest = self._deliverer.agent.manifest(self._endpoints())
        await call.write(agent_service_pb2.GetManifestResponse(manifest=manifest))
