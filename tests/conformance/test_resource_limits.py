"""Rate, size and concurrency limits fail calls the same way on every transport.

(Named ``test_resource_limits``: ``tests/unit/protocol/test_limits.py`` exists and test basenames
must be unique in the rootless test tree.)
"""

from __future__ import annotations

import asyncio

import pytest

from asap import Limits, errors
from tests.conformance._service import Harness, HarnessFactory, as_dict, envelope


pytestmark = pytest.mark.asyncio

BIG = 32 * 1024
"""Twice the ``small_message_harness`` limit."""


async def test_rate_limit_is_rate_limited_with_retry_after(rate_limited_harness: Harness) -> None:
    """Past the burst a call fails with RateLimited carrying retry_after (from RetryInfo)."""
    client = rate_limited_harness.client
    await client.send(envelope("echo"))
    await client.send(envelope("echo"))
    with pytest.raises(errors.RateLimited) as caught:
        await client.send(envelope("count", {"gate": "never"}))
    error = caught.value
    assert error.code == errors.Code.RESOURCE_EXHAUSTED
    assert error.reason == "RATE_LIMITED"
    assert 0 < error.retry_after <= 10.0
    assert not rate_limited_harness.probe.event("entered:never").is_set()


async def test_rate_limit_applies_to_every_rpc(rate_limited_harness: Harness) -> None:
    """Every envelope (and GetManifest) costs a token, whatever RPC carries it."""
    client = rate_limited_harness.client
    await client.get_manifest()
    async with await client.subscribe(envelope("echo")) as updates:
        assert len([item async for item in updates]) == 1
    with pytest.raises(errors.RateLimited):
        await client.get_manifest()
    async with await client.subscribe(envelope("echo")) as updates:
        with pytest.raises(errors.RateLimited):
            await anext(updates)
    with pytest.raises(errors.RateLimited):
        await client.send_batch([envelope("echo")])


async def test_rate_limited_envelopes_on_a_stream_are_envelope_errors(
    rate_limited_harness: Harness,
) -> None:
    """On Stream, an envelope over the rate limit gets a RateLimited EnvelopeError; the stream goes on."""
    async with await rate_limited_harness.client.stream() as stream:
        sent = [await stream.send(envelope("echo", {"i": i})) for i in range(3)]
        await stream.done_sending()
        items = [item async for item in stream]
    failures = {
        item.error.envelope_id: item.error.status for item in items if item.HasField("error")
    }
    answers = {item.envelope.correlation_id for item in items if item.HasField("envelope")}
    assert len(failures) == 1
    assert len(answers) == 2
    assert set(failures) | answers == {request.id for request in sent}
    (status,) = failures.values()
    error = errors.from_status(status)
    assert isinstance(error, errors.RateLimited)
    assert error.retry_after > 0


async def test_batch_larger_than_the_burst_is_resource_exhausted(
    rate_limited_harness: Harness,
) -> None:
    """A batch that could never fit the bucket is ResourceExhausted, not RateLimited (no retry helps)."""
    with pytest.raises(errors.ResourceExhausted) as caught:
        await rate_limited_harness.client.send_batch([envelope("echo") for _ in range(3)])
    assert type(caught.value) is errors.ResourceExhausted


async def test_request_over_max_message_bytes_is_message_too_large(
    small_message_harness: Harness,
) -> None:
    """A request over max_message_bytes fails with MessageTooLarge; the next call still works."""
    client = small_message_harness.client
    with pytest.raises(errors.MessageTooLarge) as caught:
        await client.send(envelope("echo", {"blob": "x" * BIG}))
    assert caught.value.code == errors.Code.RESOURCE_EXHAUSTED
    assert caught.value.reason == "MESSAGE_TOO_LARGE"
    response = await client.send(envelope("echo", {"small": "ok"}))
    assert as_dict(response.envelope.task_response.result) == {"small": "ok"}


async def test_response_over_max_message_bytes_is_message_too_large(
    small_message_harness: Harness,
) -> None:
    """A response over the server's max_message_bytes fails the call with MessageTooLarge."""
    client = small_message_harness.client
    with pytest.raises(errors.MessageTooLarge):
        await client.send(envelope("blob", {"size": BIG}))
    response = await client.send(envelope("blob", {"size": 10}))
    assert as_dict(response.envelope.task_response.result) == {"blob": "x" * 10}


async def test_streamed_message_over_the_limit_fails_the_stream(
    small_message_harness: Harness,
) -> None:
    """A too-large message on a Stream fails that call with MessageTooLarge; the client goes on."""
    client = small_message_harness.client
    async with await client.stream() as stream:
        await stream.send(envelope("echo", {"blob": "x" * BIG}))
        with pytest.raises(errors.MessageTooLarge):
            async for _ in stream:
                pass
    response = await client.send(envelope("echo", {"after": "stream"}))
    assert as_dict(response.envelope.task_response.result) == {"after": "stream"}


async def test_too_many_concurrent_calls_is_too_many_calls(make_harness: HarnessFactory) -> None:
    """Past max_concurrent_calls a new call fails with TooManyCalls; in-flight calls go on."""
    harness = await make_harness(limits=Limits(max_concurrent_calls=1))
    parked = asyncio.create_task(harness.client.send(envelope("park", {"key": "busy"})))
    await harness.probe.entered("busy")
    with pytest.raises(errors.TooManyCalls) as caught:
        await harness.connect().send(envelope("echo"))
    assert caught.value.reason == "TOO_MANY_CALLS"
    harness.probe.release("busy")
    response = await parked
    assert as_dict(response.envelope.task_response.result) == {"key": "busy"}
