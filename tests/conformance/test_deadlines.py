"""Deadlines: the caller's timeout bounds the call on both ends, on every transport."""

from __future__ import annotations

import pytest

from asap import errors
from tests.conformance._service import Harness, as_dict, envelope


pytestmark = pytest.mark.asyncio

SHORT = 0.2
"""A deadline the parked handler is sure to miss (it waits until released, which never happens)."""
CLOCK_SLACK = 0.5
"""How far past the caller's timeout a propagated deadline may land (receiver clock re-basing)."""


async def test_send_past_its_deadline_is_deadline_exceeded(harness: Harness) -> None:
    """A Send whose handler outlives the deadline fails with DeadlineExceeded; the handler is cancelled."""
    with pytest.raises(errors.DeadlineExceeded) as caught:
        await harness.client.send(envelope("park", {"key": "send"}), timeout=SHORT)
    assert caught.value.code == errors.Code.DEADLINE_EXCEEDED
    assert caught.value.reason == "DEADLINE_EXCEEDED"
    await harness.probe.cancelled("send")


async def test_client_default_timeout_applies(harness: Harness) -> None:
    """The client's default timeout is the deadline of calls that pass none."""
    client = harness.connect(timeout=SHORT)
    with pytest.raises(errors.DeadlineExceeded):
        await client.send(envelope("park", {"key": "default"}))
    await harness.probe.cancelled("default")


async def test_subscribe_past_its_deadline_is_deadline_exceeded(harness: Harness) -> None:
    """A subscription past its deadline raises DeadlineExceeded from iteration; the handler is cancelled."""
    async with await harness.client.subscribe(
        envelope("park", {"key": "subscribe"}), timeout=SHORT
    ) as updates:
        with pytest.raises(errors.DeadlineExceeded):
            async for _ in updates:
                pass
    await harness.probe.cancelled("subscribe")


async def test_stream_past_its_deadline_is_deadline_exceeded(harness: Harness) -> None:
    """A duplex stream past its deadline raises DeadlineExceeded; its handlers are cancelled."""
    async with await harness.client.stream(timeout=SHORT) as stream:
        await stream.send(envelope("park", {"key": "stream"}))
        with pytest.raises(errors.DeadlineExceeded):
            async for _ in stream:
                pass
    await harness.probe.cancelled("stream")


async def test_publish_past_its_deadline_is_deadline_exceeded(harness: Harness) -> None:
    """A Publish whose handler outlives the deadline fails with DeadlineExceeded."""
    with pytest.raises(errors.DeadlineExceeded):
        await harness.client.publish([envelope("park", {"key": "publish"})], timeout=SHORT)
    await harness.probe.cancelled("publish")


async def test_handler_sees_the_remaining_time(harness: Harness) -> None:
    """The handler's context carries the caller's deadline (remaining time within the timeout)."""
    response = await harness.client.send(envelope("inspect"), timeout=5.0)
    remaining = as_dict(response.envelope.task_response.result)["remaining"]
    assert isinstance(remaining, float)
    # Propagated deadlines are re-based on the receiver's clock; gRPC's can come out a few
    # milliseconds past the caller's timeout under load, hence the slack.
    assert 0 < remaining <= 5.0 + CLOCK_SLACK


async def test_no_timeout_means_no_deadline(harness: Harness) -> None:
    """A client without a timeout sends calls without a deadline."""
    client = harness.connect(timeout=None)
    response = await client.send(envelope("inspect"))
    assert as_dict(response.envelope.task_response.result)["remaining"] == -1.0


async def test_deadline_exceeded_is_not_remembered(harness: Harness) -> None:
    """A timed-out envelope is processed again when re-sent (the handler ran twice)."""
    request = envelope("park", {"key": "again"})
    with pytest.raises(errors.DeadlineExceeded):
        await harness.client.send(request, timeout=SHORT)
    await harness.probe.cancelled("again")
    harness.probe.release("again")
    response = await harness.client.send(request, timeout=5.0)
    assert as_dict(response.envelope.task_response.result) == {"key": "again"}
    assert harness.probe.runs["park:again"] == 2
