"""Cancellation: a caller that goes away stops waiting, but the handler it started runs to completion.

A call whose task is cancelled, whose subscription or stream is cancelled, or whose client is closed
ends for the caller at once. Its envelope handlers are *not* cancelled: from the server's side that
is indistinguishable from a cut connection (gRPC reports both the same way), and cancelling a
handler halfway would make the caller's retransmission run its side effects a second time. The
handler runs to completion, its outcome is stored, and the retransmission gets it. Only the call's
deadline cancels handlers (``test_deadlines.py``).
"""

from __future__ import annotations

import asyncio

import pytest

from asap import errors
from tests.conformance._service import Harness, as_dict, envelope


pytestmark = pytest.mark.asyncio


async def test_cancelling_a_send_leaves_the_handler_running(harness: Harness) -> None:
    """Cancelling the task awaiting a Send ends it with CancelledError; the handler completes."""
    request = harness.client.prepare(envelope("park", {"key": "send"}))
    call = asyncio.create_task(harness.client.send(request))
    await harness.probe.entered("send")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    harness.probe.release("send")
    await harness.probe.finished("send")
    assert not harness.probe.was_cancelled("send")


async def test_cancelled_send_is_answered_from_the_store_when_resent(harness: Harness) -> None:
    """The retransmission of a cancelled Send gets the outcome of its one run."""
    request = harness.client.prepare(envelope("park", {"key": "resend"}))
    call = asyncio.create_task(harness.client.send(request))
    await harness.probe.entered("resend")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    retransmission = asyncio.create_task(harness.connect().send(request))
    harness.probe.release("resend")
    response = await retransmission
    assert as_dict(response.envelope.task_response.result) == {"key": "resend"}
    assert harness.probe.runs["park:resend"] == 1
    assert not harness.probe.was_cancelled("resend")


async def test_cancelling_a_subscription_leaves_the_handler_running(harness: Harness) -> None:
    """Subscription.cancel() fails a pending read with Cancelled; the handler completes."""
    updates = await harness.client.subscribe(envelope("park", {"key": "subscribe"}))
    reader = asyncio.create_task(anext(updates))
    await harness.probe.entered("subscribe")
    await updates.cancel()
    with pytest.raises(errors.Cancelled):
        await reader
    harness.probe.release("subscribe")
    await harness.probe.finished("subscribe")
    assert not harness.probe.was_cancelled("subscribe")


async def test_cancelling_a_stream_leaves_its_handlers_running(harness: Harness) -> None:
    """DuplexStream.cancel() ends the stream; every handler still running for it completes."""
    async with await harness.client.stream() as stream:
        await stream.send(envelope("park", {"key": "one"}))
        await stream.send(envelope("park", {"key": "two"}))
        await harness.probe.entered("one")
        await harness.probe.entered("two")
    harness.probe.release("one")
    harness.probe.release("two")
    await harness.probe.finished("one")
    await harness.probe.finished("two")


async def test_cancelling_a_publish_leaves_the_handler_running(harness: Harness) -> None:
    """Cancelling the task awaiting a Publish ends it; the handler completes."""
    call = asyncio.create_task(harness.client.publish([envelope("park", {"key": "publish"})]))
    await harness.probe.entered("publish")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    harness.probe.release("publish")
    await harness.probe.finished("publish")


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
    """close() mid-call fails it with ConnectionLost; the handler completes; a resend gets its outcome."""
    client = harness.connect()
    request = client.prepare(envelope("park", {"key": "closed"}))
    call = asyncio.create_task(client.send(request))
    await harness.probe.entered("closed")
    await client.close()
    with pytest.raises(errors.ConnectionLost) as caught:
        await call
    assert caught.value.code == errors.Code.UNAVAILABLE
    retransmission = asyncio.create_task(harness.connect().send(request))
    harness.probe.release("closed")
    response = await retransmission
    assert as_dict(response.envelope.task_response.result) == {"key": "closed"}
    assert harness.probe.runs["park:closed"] == 1
    assert not harness.probe.was_cancelled("closed")


async def test_closing_the_client_ends_subscriptions_with_connection_lost(
    harness: Harness,
) -> None:
    """close() during a subscription fails its reader with ConnectionLost; the handler completes."""
    client = harness.connect()
    updates = await client.subscribe(envelope("park", {"key": "sub-closed"}))
    reader = asyncio.create_task(anext(updates))
    await harness.probe.entered("sub-closed")
    await client.close()
    with pytest.raises(errors.ConnectionLost):
        await reader
    harness.probe.release("sub-closed")
    await harness.probe.finished("sub-closed")
