"""Interceptors see the same sequence of events for the same call on every transport."""

from __future__ import annotations

import pytest

from asap import BearerAuth, errors
from asap.v1 import agent_service_pb2
from tests.conformance._recorders import (
    REJECT_KEY,
    ClientRecorder,
    Rejecter,
    ServerRecorder,
)
from tests.conformance._service import GOOD_TOKEN, TESTER, HarnessFactory, envelope, kinds


pytestmark = pytest.mark.asyncio


async def test_unary_call_events(make_harness: HarnessFactory) -> None:
    """A Send is start, one message in, one out, OK; metadata and trailers added by interceptors arrive."""
    server, client = ServerRecorder(), ClientRecorder()
    harness = await make_harness(interceptors=[server], client_interceptors=[client])
    request = agent_service_pb2.SendRequest(envelope=harness.client.prepare(envelope("echo")))
    reply = await harness.client.invoke("Send", request)
    assert isinstance(reply.message, agent_service_pb2.SendResponse)
    assert server.events == [
        ("start", "Send", "deadline", "1"),
        ("in", "SendRequest"),
        ("in", "end"),  # a unary request is read to its end: a second message would be refused
        ("out", "SendResponse"),
        ("end", "OK"),
    ]
    assert client.events == [
        ("start", "Send"),
        ("out", "SendRequest"),
        ("in", "SendResponse"),
        ("end", "OK", "yes"),
    ]


async def test_server_streaming_call_events(make_harness: HarnessFactory) -> None:
    """A Subscribe is start, its request, every streamed response in order, then OK."""
    server, client = ServerRecorder(), ClientRecorder()
    harness = await make_harness(interceptors=[server], client_interceptors=[client])
    async with await harness.client.subscribe(envelope("updates", {"count": 2})) as items:
        received = [item async for item in items]
    assert kinds(received) == ["task_update", "task_update", "task_response"]
    assert server.events == [
        ("start", "Subscribe", "no deadline", "1"),
        ("in", "SubscribeRequest"),
        ("in", "end"),  # a unary request is read to its end: a second message would be refused
        ("out", "SubscribeResponse"),
        ("out", "SubscribeResponse"),
        ("out", "SubscribeResponse"),
        ("end", "OK"),
    ]
    assert client.events == [
        ("start", "Subscribe"),
        ("out", "SubscribeRequest"),
        ("in", "SubscribeResponse"),
        ("in", "SubscribeResponse"),
        ("in", "SubscribeResponse"),
        ("end", "OK", "yes"),
    ]


async def test_client_streaming_call_events(make_harness: HarnessFactory) -> None:
    """A Publish is start, each request, the end of input, then its one response and OK."""
    server, client = ServerRecorder(), ClientRecorder()
    harness = await make_harness(interceptors=[server], client_interceptors=[client])
    results = await harness.client.publish([envelope("echo"), envelope("echo")])
    assert len(results) == 2
    assert server.events == [
        ("start", "Publish", "no deadline", "1"),
        ("in", "PublishRequest"),
        ("in", "PublishRequest"),
        ("in", "end"),
        ("out", "PublishResponse"),
        ("end", "OK"),
    ]
    assert client.events == [
        ("start", "Publish"),
        ("out", "PublishRequest"),
        ("out", "PublishRequest"),
        ("in", "PublishResponse"),
    ]


async def test_bidi_call_events(make_harness: HarnessFactory) -> None:
    """A Stream is start, a request, its answer, the half-close, then OK, on both ends."""
    server, client = ServerRecorder(), ClientRecorder()
    harness = await make_harness(interceptors=[server], client_interceptors=[client])
    async with await harness.client.stream() as stream:
        await stream.send(envelope("echo"))
        answer = await anext(stream)
        await stream.done_sending()
        rest = [item async for item in stream]
    assert answer.HasField("envelope")
    assert rest == []
    assert server.events == [
        ("start", "Stream", "no deadline", "1"),
        ("in", "StreamRequest"),
        ("out", "StreamResponse"),
        ("in", "end"),
        ("end", "OK"),
    ]
    assert client.events == [
        ("start", "Stream"),
        ("out", "StreamRequest"),
        ("in", "StreamResponse"),
        ("end", "OK", "yes"),
    ]


async def test_failed_call_events(make_harness: HarnessFactory) -> None:
    """A handler's error ends the call with its code for both interceptors, with the trailer."""
    server, client = ServerRecorder(), ClientRecorder()
    harness = await make_harness(interceptors=[server], client_interceptors=[client])
    with pytest.raises(errors.NotFound):
        await harness.client.send(envelope("raise", {"class": "NotFound"}))
    assert server.events == [
        ("start", "Send", "deadline", "1"),
        ("in", "SendRequest"),
        ("in", "end"),  # a unary request is read to its end: a second message would be refused
        ("end", "NOT_FOUND"),
    ]
    assert client.events == [
        ("start", "Send"),
        ("out", "SendRequest"),
        ("end", "NOT_FOUND", "yes"),
    ]


async def test_rejected_call_events(make_harness: HarnessFactory) -> None:
    """An interceptor's AsapError refuses the call before any message is read; the handler never runs."""
    server, client = ServerRecorder(), ClientRecorder()
    harness = await make_harness(interceptors=[server, Rejecter()], client_interceptors=[client])
    with pytest.raises(errors.PermissionDenied) as caught:
        await harness.client.send(
            envelope("count", {"gate": "never"}), metadata=((REJECT_KEY, "1"),)
        )
    assert caught.value.message == "rejected by an interceptor"
    assert not harness.probe.event("entered:never").is_set()
    assert server.events == [("start", "Send", "deadline", "1"), ("end", "PERMISSION_DENIED")]
    assert client.events == [
        ("start", "Send"),
        ("out", "SendRequest"),
        ("end", "PERMISSION_DENIED", "yes"),
    ]


async def test_authentication_rides_the_interceptor_chain(make_harness: HarnessFactory) -> None:
    """Bearer authentication refuses inside the chain: an interceptor before it sees the refusal."""
    server = ServerRecorder()
    harness = await make_harness(
        auth=BearerAuth.static({GOOD_TOKEN: TESTER}), interceptors=[server]
    )
    with pytest.raises(errors.Unauthenticated):
        await harness.client.send(envelope("echo"))
    client = harness.connect(token=GOOD_TOKEN)
    await client.send(envelope("echo"))
    assert server.events == [
        ("start", "Send", "deadline", "None"),
        ("end", "UNAUTHENTICATED"),
        ("start", "Send", "deadline", "None"),
        ("in", "SendRequest"),
        ("in", "end"),  # a unary request is read to its end: a second message would be refused
        ("out", "SendResponse"),
        ("end", "OK"),
    ]
