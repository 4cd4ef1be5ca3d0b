"""Cancellation: a caller that gives up cancels the handler, on every transport."""

from __future__ import annotations

import asyncio

import pytest

from asap import errors
from tests.conformance._service import Harness, as_dict, envelope


pytestmark = pytest.mark.asyncio


async def test_cancelling_a_send_cancels_the_handler(harness: Harness) -> None:
    """Cancelling the task awaiting a Send cancels the handler; the task ends CancelledError."""
    call = asyncio.create_task(harness.client.send(envelope("park", {"key": "send"})))
    await harness.probe.entered("send")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await harness.probe.cancelled("send")


async def test_cancelling_a_subscription_cancels_the_handler(harness: Harness) -> None:
    """Subscription.cancel() cancels the handler; a pending read raises Cancelled."""
    updates = await harness.client.subscribe(envelope("park", {"key": "subscribe"}))
    reader = asyncio.create_task(anext(updates))
    await harness.probe.entered("subscribe")
    await updates.cancel()
    with pytest.raises(errors.Cancelled):
        await reader
    await harness.probe.cancelled("subscribe")


async def test_cancelling_the_subscription_reader_cancels_the_handler(harness: Harness) -> None:
    """Cancelling the task iterating a subscription, then the subscription, cancels the handler."""
    updates = await harness.client.subscribe(envelope("park", {"key": "reader"}))
    reader = asyncio.create_task(anext(updates))
    await harness.probe.entered("reader")
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await updates.cancel()
    await harness.probe.cancelled("reader")


async def test_leaving_a_subscription_early_cancels_the_handler(harness: Harness) -> None:
    """Leaving ``async with`` while the handler runs cancels it; a pending read raises Cancelled."""
    async with await harness.client.subscribe(envelope("park", {"key": "early"})) as updates:
        reader = asyncio.create_task(anext(updates))
        await harness.probe.entered("early")
    await harness.probe.cancelled("early")
    with pytest.raises(errors.Cancelled):
        await reader


async def test_cancelling_a_stream_cancels_its_handlers(harness: Harness) -> None:
    """DuplexStream.cancel() cancels every handler still running for it."""
    async with await harness.client.stream() as stream:
        await stream.send(envelope("park", {"key": "one"}))
        await stream.send(envelope("park", {"key": "two"}))
        await harness.probe.entered("one")
        await harness.probe.entered("two")
    await harness.probe.cancelled("one")
    await harness.probe.cancelled("two")


async def test_cancelling_a_publish_cancels_the_handler(harness: Harness) -> None:
    """Cancelling the task awaiting a Publish cancels the handler."""
    call = asyncio.create_task(harness.client.publish([envelope("park", {"key": "publish"})]))
    await harness.probe.entered("publish")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await harness.probe.cancelled("publish")


async def test_cancelled_envelope_is_processed_again_when_resent(harness: Harness) -> None:
    """A cancelled delivery is not remembered: re-sending the envelope runs the handler again."""
    request = envelope("park", {"key": "resend"})
    call = asyncio.create_task(harness.client.send(request))
    await harness.probe.entered("resend")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await harness.probe.cancelled("resend")
    harness.probe.release("resend")
    response = await harness.client.send(request)
    assert as_dict(response.envelope.task_response.result) == {"key": "resend"}
    assert harness.probe.runs["park:resend"] == 2


async def test_other_calls_survive_a_cancellation(harness: Harness) -> None:
    """Cancelling one call leaves the connection and the client's other calls working."""
    call = asyncio.create_task(harness.client.send(envelope("park", {"key": "victim"})))
    await harness.probe.entered("victim")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    response = await harness.client.send(envelope("echo", {"still": "here"}))
    assert as_dict(response.envelope.task_response.result) == {"still": "here"}


async def test_closing_the_client_fails_calls_in_flight_with_connection_lost(
    harness: Harness,
) -> None:
    """close() during a call fails it with ConnectionLost (UNAVAILABLE); the handler is cancelled."""
    client = harness.connect()
    call = asyncio.create_task(client.send(envelope("park", {"key": "closed"})))
    await harness.probe.entered("closed")
    await client.close()
    with pytest.raises(errors.ConnectionLost) as caught:
        await call
    assert caught.value.code == errors.Code.UNAVAILABLE
    await harness.probe.cancelled("closed")


async def test_closing_the_client_ends_subscriptions_with_connection_lost(
    harness: Harness,
) -> None:
    """close() during a subscription fails its reader with ConnectionLost; the handler is cancelled."""
    client = harness.connect()
    updates = await client.subscribe(envelope("park", {"key": "sub-closed"}))
    reader = asyncio.create_task(anext(updates))
    await harness.probe.entered("sub-closed")
    await client.close()
    with pytest.raises(errors.ConnectionLost):
        await reader
    await harness.probe.cancelled("sub-closed")
