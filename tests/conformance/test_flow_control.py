"""Flow control and isolation, the same on every transport: a slow consumer holds back its own
producer and nothing else; many calls on one client wait for streams instead of failing.

gRPC gets this from HTTP/2 windows; the bridge from its per-stream credit (bridge.proto "Flow
control"). The bounds asserted here are loose on purpose: they hold for HTTP/2's larger, growing
windows too, and fail by an order of magnitude when nothing pushes back.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conformance._service import Harness, envelope


FLOOD = 20_000
"""Updates the ``flood`` producer offers: far more than any window holds."""
PRODUCED_BOUND = FLOOD // 2
"""At most this many may be produced while the consumer has read one."""
STALL_SECONDS = 1.5
"""How long the producer gets to run ahead before its bound is checked."""


@pytest.mark.asyncio
async def test_a_slow_consumer_blocks_its_producer(harness: Harness) -> None:
    """A subscriber reading one update holds its producer to a bound; reading on loses nothing."""
    probe = harness.probe
    flood = envelope("flood", {"count": FLOOD, "size": 1000})
    async with await harness.client.subscribe(flood, timeout=60) as updates:
        received = [await anext(updates)]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(probe.event("done:flood").wait(), STALL_SECONDS)
        stalled_at = probe.runs["flood:produced"]
        assert 1 <= stalled_at <= PRODUCED_BOUND
        received.extend([item async for item in updates])
    assert probe.runs["flood:produced"] == FLOOD
    assert len(received) == FLOOD + 1
    assert received[-1].WhichOneof("payload") == "task_response"


@pytest.mark.asyncio
async def test_a_unary_call_completes_beside_a_saturated_stream(harness: Harness) -> None:
    """A Send completes at once on a client whose other stream is full and unread (no HOL)."""
    flood = envelope("flood", {"count": FLOOD, "size": 1000})
    async with await harness.client.subscribe(flood, timeout=60) as updates:
        await anext(updates)
        with pytest.raises(TimeoutError):  # the stream is saturated: its producer is blocked
            await asyncio.wait_for(harness.probe.event("done:flood").wait(), STALL_SECONDS)
        async with asyncio.timeout(1.0):
            answer = await harness.client.send(envelope("echo", {"text": "beside"}))
        assert answer.envelope.task_response.result["text"] == "beside"
        await updates.cancel()


@pytest.mark.asyncio
async def test_150_concurrent_calls_on_one_client_all_succeed(harness: Harness) -> None:
    """More calls than one connection's stream limit (100) wait for streams; none is refused."""
    probe = harness.probe
    calls = [
        asyncio.create_task(harness.client.send(envelope("park", {"key": "many"})))
        for _ in range(150)
    ]
    await probe.entered("many")
    probe.release("many")
    answers = await asyncio.gather(*calls)
    assert len(answers) == 150
    assert all(answer.envelope.WhichOneof("payload") == "task_response" for answer in answers)
    assert probe.runs["park:many"] == 150
