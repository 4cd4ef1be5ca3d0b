"""The server enforces deadlines and Cancel on a handler that never awaits, for a raw gRPC caller.

The example agent's ``stream`` skill yields its updates without awaiting. These tests call it with
a plain grpc.aio channel (no ASAP client, so no client-side timer) whose receive window is small
(no BDP probing), so the handler cannot finish while the caller reads nothing; a wrapper around
the server's Subscribe RPC records what reached the transport and how the handler ended.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import pytest
import pytest_asyncio
from google.protobuf.message import Message

from asap import Server, task_envelope, validation
from asap.core.context import CallContext
from asap.core.service import ServerCall
from asap.example import agent
from asap.protocol.limits import Limits
from asap.v1 import agent_service_pb2


STEPS = 1000
"""The largest ``steps`` the example's stream skill takes: 1,001 messages in all."""
SUBSCRIBE = "/asap.v1.AgentService/Subscribe"
SMALL_WINDOW = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
"""A caller that grants the server little HTTP/2 window and never grows it."""
WAIT = 10.0
"""A bound on waiting for the server's handler to end (a bound on a hang, never a delay)."""


@dataclass
class Record:
    """What the server's Subscribe did for one call."""

    writes: int = 0
    outcome: str = ""
    """"ok" when the RPC returned, else the name of what it raised."""
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class _Counting:
    """A ServerCall that counts the messages handed to the transport."""

    def __init__(self, call: ServerCall, record: Record) -> None:
        self._call = call
        self._record = record

    async def read(self) -> Message | None:
        return await self._call.read()

    async def write(self, message: Message) -> None:
        await self._call.write(message)
        self._record.writes += 1


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[str, list[Record]]]:
    """The example agent on gRPC, its Subscribe wrapped; yields the target and the records."""
    server = Server(agent, limits=Limits(rate_limit_per_second=0))
    server.add_grpc("127.0.0.1:0")
    records: list[Record] = []
    subscribe: Callable[[CallContext, ServerCall], Awaitable[None]] = server.service.rpcs[
        "Subscribe"
    ]

    async def recorded(ctx: CallContext, call: ServerCall) -> None:
        record = Record()
        records.append(record)
        try:
            await subscribe(ctx, _Counting(call, record))
        except BaseException as exc:
            record.outcome = type(exc).__name__
            raise
        else:
            record.outcome = "ok"
        finally:
            record.ended.set()

    server.service.rpcs["Subscribe"] = recorded
    async with server:
        yield server.endpoints()[0].url.removeprefix("grpc://"), records


def _request() -> agent_service_pb2.SubscribeRequest:
    envelope = task_envelope(agent.id, "stream", {"steps": STEPS})
    envelope.sender = "urn:asap:agent:raw-caller"
    validation.fill_defaults(envelope, now=time.time())
    return agent_service_pb2.SubscribeRequest(envelope=envelope)


async def _ended(record: Record) -> Record:
    async with asyncio.timeout(WAIT):
        await record.ended.wait()
    return record


@pytest.mark.asyncio
async def test_one_millisecond_deadline_is_deadline_exceeded_from_the_server(
    served: tuple[str, list[Record]],
) -> None:
    """steps=1000 with a 1 ms deadline: DEADLINE_EXCEEDED, and the server's handler stopped early."""
    target, records = served
    async with grpc.aio.insecure_channel(target, options=SMALL_WINDOW) as channel:
        subscribe = channel.unary_stream(
            SUBSCRIBE,
            request_serializer=agent_service_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=agent_service_pb2.SubscribeResponse.FromString,
        )
        call = subscribe(_request(), timeout=0.001)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in call:
                pass
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # A later call on the same connection is served after this one reached the server.
        get_manifest = channel.unary_unary(
            "/asap.v1.AgentService/GetManifest",
            request_serializer=agent_service_pb2.GetManifestRequest.SerializeToString,
            response_deserializer=agent_service_pb2.GetManifestResponse.FromString,
        )
        await get_manifest(agent_service_pb2.GetManifestRequest())
    # grpc may drop a call that is past its deadline on arrival; one that ran must not have ended OK.
    assert len(records) <= 1
    for record in records:
        await _ended(record)
        assert record.outcome != "ok"
        assert record.writes < STEPS + 1


@pytest.mark.asyncio
async def test_short_deadline_stops_the_handler_on_the_server(
    served: tuple[str, list[Record]],
) -> None:
    """steps=1000 with a 50 ms deadline and a caller that stops reading: the handler is stopped."""
    target, records = served
    async with grpc.aio.insecure_channel(target, options=SMALL_WINDOW) as channel:
        subscribe = channel.unary_stream(
            SUBSCRIBE,
            request_serializer=agent_service_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=agent_service_pb2.SubscribeResponse.FromString,
        )
        call = subscribe(_request(), timeout=0.05)
        assert isinstance(await call.read(), agent_service_pb2.SubscribeResponse)
        record = await _ended(records[0])
        assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert record.outcome != "ok"
    assert record.writes < STEPS + 1


@pytest.mark.asyncio
async def test_cancel_after_the_first_item_stops_the_handler(
    served: tuple[str, list[Record]],
) -> None:
    """Cancelling a raw Subscribe after its first item cancels the handler before it is done."""
    target, records = served
    async with grpc.aio.insecure_channel(target, options=SMALL_WINDOW) as channel:
        subscribe = channel.unary_stream(
            SUBSCRIBE,
            request_serializer=agent_service_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=agent_service_pb2.SubscribeResponse.FromString,
        )
        call = subscribe(_request())
        first = await call.read()
        assert isinstance(first, agent_service_pb2.SubscribeResponse)
        assert first.envelope.task_update.message == f"step 1 of {STEPS}"
        call.cancel()
        record = await _ended(records[0])
    assert record.outcome in {"CancelledError", "Cancelled"}
    assert record.writes < STEPS + 1
